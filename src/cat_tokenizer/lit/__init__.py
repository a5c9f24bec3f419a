from cat_tokenizer.lit.vae_module import NestedVAEModule

__all__ = ["NestedVAEModule"]
