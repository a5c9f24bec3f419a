from cat_tokenizer.lit.scoring import ComplexityScoringModule, ScoreFilesDataModule
from cat_tokenizer.lit.vae_module import NestedVAEModule

__all__ = ["NestedVAEModule", "ComplexityScoringModule", "ScoreFilesDataModule"]
