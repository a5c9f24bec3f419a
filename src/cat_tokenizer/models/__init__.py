from cat_tokenizer.models.nested_vae import NESTED_VAE_PRESETS, LatentPosterior, NestedVAE

__all__ = ["NestedVAE", "LatentPosterior", "NESTED_VAE_PRESETS"]
