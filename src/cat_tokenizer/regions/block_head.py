"""A block-level distortion head: each 32-px block's error at every ratio, predicted from the encoder's trunk.

The oracle region map needs three whole-image decodes to know what each block loses; the cheap signals
(pixel variance, edge density) know nothing of this tokenizer. ``BlockHead`` reads what the encoder
computes anyway for any ratio (the trunk stages down to 8x, as the image-level distortion head does) and
summarises each stage *per block* (per-channel mean, std, max and neighbour difference over the block's
cells), next to the same summary of the whole image (context: a block's error depends on what the
decoder's attention sees). An MLP regresses log10 of the block's summed squared error at each ratio
(``cat_tokenizer.regions.maps.block_distortion``'s units). ``cat-tokenizer block-head`` trains it;
saved with the tokenizer, it is the ``head`` region-map policy.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from cat_tokenizer.errors import UserInputError
from cat_tokenizer.models.ratio_head import NORMS, Standardize

__all__ = ["BlockHead", "block_statistics"]

STATS = 4


def block_statistics(taps: Sequence[Tensor], block: int) -> Tensor:
    """Trunk stage outputs [(B, C_s, H/2^s, W/2^s)] of images padded to whole blocks -> (B, bh, bw, 4 * sum C_s):
    per block and channel the mean, std, max and mean |neighbour difference| of the block's cells."""
    out = []
    for s, h in enumerate(taps):
        k = max(1, block // 2**s)  # cells per block side at stage s
        h = h.float()
        b, c, hh, ww = h.shape
        bh, bw = hh // k, ww // k
        cells = h[..., : bh * k, : bw * k].reshape(b, c, bh, k, bw, k).permute(0, 2, 4, 1, 3, 5).reshape(b, bh, bw, c, k * k)
        mean = cells.mean(-1)
        std = cells.std(-1, correction=0)
        mx = cells.amax(-1)
        dx = (h[..., :, 1:] - h[..., :, :-1]).abs()
        dy = (h[..., 1:, :] - h[..., :-1, :]).abs()
        grad = F.avg_pool2d(F.pad(dx, (0, 1)) + F.pad(dy, (0, 0, 0, 1)), k)[..., :bh, :bw].permute(0, 2, 3, 1)  # (B, bh, bw, C)
        out += [mean, std, mx, grad]
    return torch.cat(out, -1)


class BlockHead(nn.Module):
    """Trunk stage outputs -> (B, bh, bw, R) predicted log10 summed squared error of each block at each ratio.

    Args:
        stage_channels: channels of each trunk stage, full resolution first.
        ratios: the tokenizer's ratios, ascending (one output each).
        block: the block side in pixels (the largest ratio).
        hidden: width of the MLP.
        image_size: the image side it was trained at.
        crop: the crop policy of its training images.
        report: how it was trained (held-out error), saved with it.
        norm: ``layer`` (a LayerNorm across the statistics: heads saved before ``norm`` existed) or
            ``standard`` (each statistic by its training mean and std: ``fit_standardization``).
    """

    def __init__(self, stage_channels: Sequence[int], ratios: Sequence[int] = (8, 16, 32), block: int = 32, hidden: int = 256,
                 image_size: int | None = None, crop: str = "native", report: dict | None = None, norm: str = "layer"):
        super().__init__()
        if norm not in NORMS:
            raise UserInputError(f"block head norm must be one of {', '.join(NORMS)}, got {norm!r}")
        self.config = {"stage_channels": [int(c) for c in stage_channels], "ratios": [int(r) for r in ratios], "block": int(block),
                       "hidden": int(hidden), "image_size": image_size, "crop": crop, "report": report, "norm": norm}
        dim = 2 * STATS * sum(stage_channels)  # the block's statistics and the image's mean of them
        self.standardize = Standardize(dim) if norm == "standard" else None
        self.mlp = nn.Sequential(nn.LayerNorm(dim) if norm == "layer" else nn.Identity(), nn.Linear(dim, hidden), nn.SiLU(),
                                 nn.Linear(hidden, hidden), nn.SiLU())
        self.out = nn.Linear(hidden, len(ratios))

    def set_report(self, report: dict) -> None:
        self.config["report"] = dict(report)

    def fit_standardization(self, features: Tensor) -> None:
        """Fix a ``norm="standard"`` head's per-statistic mean and std from training features (N, D)."""
        if self.standardize is not None:
            self.standardize.fit(features)

    def features(self, taps: Sequence[Tensor]) -> Tensor:
        """(B, bh, bw, 2 * 4 * sum C): each block's statistics beside its image's mean of them."""
        stats = block_statistics(taps, self.config["block"])
        return torch.cat([stats, stats.mean((1, 2), keepdim=True).expand_as(stats)], -1)

    def score(self, features: Tensor) -> Tensor:
        """(..., D) features -> (..., R) predicted log10 block distortions."""
        if self.standardize is not None:
            features = self.standardize(features)
        return self.out(self.mlp(features))

    def forward(self, taps: Sequence[Tensor]) -> Tensor:
        return self.score(self.features(taps))
