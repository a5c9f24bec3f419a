"""cat-tokenizer: content-adaptive image tokenization (CAT) with a nested 8x/16x/32x VAE.

The names below load on first use (PEP 562), so ``import cat_tokenizer`` and the ``cat-tokenizer``
commands that never train do not import Lightning.
"""

from importlib import import_module

__all__ = ["NestedVAE", "LatentPosterior", "NESTED_VAE_PRESETS", "NestedVAEModule", "VAELoss", "CATDataModule", "DEFAULT_RATIOS"]
__version__ = "0.1.0"

_HOME = {
    "NestedVAE": "cat_tokenizer.models.nested_vae",
    "LatentPosterior": "cat_tokenizer.models.nested_vae",
    "NESTED_VAE_PRESETS": "cat_tokenizer.models.nested_vae",
    "NestedVAEModule": "cat_tokenizer.lit.vae_module",
    "VAELoss": "cat_tokenizer.losses.vae_loss",
    "CATDataModule": "cat_tokenizer.lit.datamodule",
    "DEFAULT_RATIOS": "cat_tokenizer.ratios",
}


def __getattr__(name: str):
    if name not in _HOME:
        raise AttributeError(f"module 'cat_tokenizer' has no attribute {name!r}")
    value = getattr(import_module(_HOME[name]), name)
    globals()[name] = value  # next time a plain attribute
    return value


def __dir__() -> list[str]:
    return sorted([*globals(), *__all__])
