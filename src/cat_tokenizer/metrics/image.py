"""Per-image quality and conversion helpers for tensors in the project's [-1, 1] convention."""

from __future__ import annotations

from PIL import Image
from torch import Tensor
from torchmetrics.functional.image import peak_signal_noise_ratio, structural_similarity_index_measure
from torchvision.transforms.v2 import functional as TF

__all__ = ["psnr_ssim", "psnr_per_image", "to_pil"]


def psnr_ssim(x_hat: Tensor, x: Tensor) -> tuple[float, float]:
    """(PSNR dB, SSIM) of (B, 3, H, W) reconstructions against originals, both in [-1, 1] (torchmetrics)."""
    a, b = (x_hat + 1) / 2, (x + 1) / 2
    return float(peak_signal_noise_ratio(a, b, data_range=1.0)), float(structural_similarity_index_measure(a, b, data_range=1.0))


def psnr_per_image(x_hat: Tensor, x: Tensor) -> Tensor:
    """(B,) PSNR dB of each (3, H, W) reconstruction against its original, both in [-1, 1] (torchmetrics)."""
    return peak_signal_noise_ratio((x_hat.float() + 1) / 2, (x.float() + 1) / 2, data_range=1.0, reduction="none", dim=(1, 2, 3))


def to_pil(x: Tensor) -> Image.Image:
    """(3, H, W) in [-1, 1] -> an 8-bit RGB PIL image."""
    return TF.to_pil_image(((x.clamp(-1, 1) + 1) / 2).cpu())
