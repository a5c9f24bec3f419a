"""cat-tokenizer: content-adaptive image tokenization (CAT) with a nested 8x/16x/32x VAE."""

from cat_tokenizer.lit.datamodule import CATDataModule
from cat_tokenizer.lit.vae_module import NestedVAEModule
from cat_tokenizer.losses.vae_loss import VAELoss
from cat_tokenizer.models.nested_vae import NESTED_VAE_PRESETS, LatentPosterior, NestedVAE
from cat_tokenizer.ratios import DEFAULT_RATIOS

__all__ = ["NestedVAE", "LatentPosterior", "NESTED_VAE_PRESETS", "NestedVAEModule", "VAELoss", "CATDataModule", "DEFAULT_RATIOS"]
__version__ = "0.1.0"
