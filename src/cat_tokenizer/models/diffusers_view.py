"""``NestedVAE.at_ratio(r)``: the tokenizer at one ratio with diffusers' ``AutoencoderKL`` surface.

A generator that already trains on an SD-style VAE (``vae.encode(x).latent_dist.sample() *
vae.config.scaling_factor``, ``vae.decode(z / scaling_factor).sample``) takes CAT's tokenizer at a
fixed ratio without a line changed, and so do diffusers' pipelines (``DiTPipeline`` reads
``vae.config.scaling_factor`` and ``vae.decode(z).sample``). The view shares the nested VAE's weights.

``config.block_out_channels`` lists the stages this ratio runs (log2(r) + 1 of them), so the
``2 ** (len(block_out_channels) - 1)`` that pipelines use as the VAE's scale factor is ``r``.
"""

from __future__ import annotations

import logging

import torch
from diffusers import ConfigMixin, ModelMixin
from diffusers.configuration_utils import register_to_config
from diffusers.models.autoencoders.autoencoder_kl import AutoencoderKLOutput
from diffusers.models.autoencoders.vae import DecoderOutput
from torch import Tensor

from cat_tokenizer.errors import UserInputError
from cat_tokenizer.ratios import check_ratio, ratio_level

__all__ = ["RatioVAE", "stored_factors"]

log = logging.getLogger(__name__)


def stored_factors(config, ratio: int) -> tuple[float, float] | None:
    """``(scaling_factor, shift_factor)`` at ``ratio`` from a tokenizer config's ``latent_stats``, or None."""
    got = ((config.get("latent_stats") or {}).get("ratios") or {}).get(str(ratio))
    return None if got is None else (float(got["scaling_factor"]), float(got["shift_factor"]))


class RatioVAE(ModelMixin, ConfigMixin):
    """A ``NestedVAE`` at one ratio, shaped like diffusers' ``AutoencoderKL``.

    Args (config): ``ratio``; ``in_channels``, ``out_channels``, ``latent_channels``; ``block_out_channels``
    (the stages this ratio runs); ``scaling_factor`` and ``shift_factor`` from the tokenizer's
    ``latent_stats`` (1.0 and 0.0, with a warning, when it has none: run ``cat-tokenizer latent-stats``).
    A latent enters a diffusion model as ``(z - shift_factor) * scaling_factor``; ``DiTPipeline`` knows only
    ``scaling_factor``, so a DiT meant for it trains on ``z * scaling_factor``.
    """

    @register_to_config
    def __init__(self, ratio: int, in_channels: int, out_channels: int, latent_channels: int,
                 block_out_channels: tuple[int, ...], scaling_factor: float = 1.0, shift_factor: float = 0.0):
        super().__init__()
        self.nested = None  # set by from_nested

    @classmethod
    def from_nested(cls, vae, ratio: int) -> RatioVAE:
        ratio = check_ratio(ratio, vae.ratios)
        factors = stored_factors(vae.config, ratio)
        if factors is None:
            log.warning("this tokenizer has no latent statistics at %dx: scaling_factor 1.0, shift_factor 0.0 "
                        "(measure them with `cat-tokenizer latent-stats`)", ratio)
        scale, shift = factors or (1.0, 0.0)
        cfg = vae.config
        view = cls(ratio=ratio, in_channels=cfg["in_channels"], out_channels=cfg["out_channels"],
                   latent_channels=cfg["latent_channels"], block_out_channels=tuple(cfg["block_out_channels"][: ratio_level(ratio) + 1]),
                   scaling_factor=scale, shift_factor=shift)
        view.nested = vae  # a submodule: .to(), .half(), parameters() and dtype reach the shared weights
        view.use_slicing = False
        return view

    # ------------------------------------------------------------------ AutoencoderKL's surface
    def encode(self, x: Tensor, return_dict: bool = True) -> AutoencoderKLOutput | tuple:
        """(B, 3, H, W) in [-1, 1] -> ``latent_dist`` over (B, C, ceil(H/r), ceil(W/r)); one image at a
        time with slicing (same result, less memory)."""
        r = self.config.ratio
        if self.use_slicing and x.shape[0] > 1:
            parts = [self.nested.encode(xi, r) for xi in x.split(1)]
            post = type(parts[0])(torch.cat([p.parameters for p in parts]), r, parts[0].input_size)
        else:
            post = self.nested.encode(x, r)
        return AutoencoderKLOutput(latent_dist=post) if return_dict else (post,)

    def decode(self, z: Tensor, return_dict: bool = True, generator: torch.Generator | None = None) -> DecoderOutput | tuple:
        """(B, C, h, w) -> ``sample`` (B, 3, h*r, w*r) in about [-1, 1] (not clamped, as diffusers' VAEs)."""
        r = self.config.ratio
        if self.use_slicing and z.shape[0] > 1:
            x = torch.cat([self.nested.decode(zi, r) for zi in z.split(1)])
        else:
            x = self.nested.decode(z, r)
        return DecoderOutput(sample=x) if return_dict else (x,)

    def forward(self, sample: Tensor, sample_posterior: bool = False, return_dict: bool = True,
                generator: torch.Generator | None = None) -> DecoderOutput | tuple:
        post = self.encode(sample).latent_dist
        z = post.sample(generator=generator) if sample_posterior else post.mode()
        x = self.decode(z).sample[..., : sample.shape[-2], : sample.shape[-1]]
        return DecoderOutput(sample=x) if return_dict else (x,)

    def enable_slicing(self) -> None:
        """Encode and decode one image of a batch at a time (same output, peak memory of one image)."""
        self.use_slicing = True

    def disable_slicing(self) -> None:
        self.use_slicing = False

    def enable_tiling(self, use_tiling: bool = True) -> None:
        """Not available: the shared mid block attends over the whole latent, so tiles would not decode
        as the whole image does. Use ``enable_slicing`` to bound memory per image."""
        if use_tiling:
            raise UserInputError("tiling is not supported by CAT's tokenizer: its mid block attends over the whole latent, "
                                 "so a tiled decode differs from the whole one; use enable_slicing() to save memory")

    def disable_tiling(self) -> None:
        """Tiling is never on."""

    def save_pretrained(self, *args, **kwargs):
        raise UserInputError("save the tokenizer itself (NestedVAE.save_pretrained): a ratio view shares its weights "
                             "and is rebuilt with vae.at_ratio(r)")
