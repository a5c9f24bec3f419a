"""A ratio head on the nested VAE's shared trunk: the complexity decision without an LLM.

Every ratio's encoding runs the encoder down to the 8x stage, so the features there are free.
The head (1x1 conv, SiLU, average + max pooling, linear) regresses the teacher evaluator's score
(1..9); the score maps to a ratio with the teacher's thresholds. Distilled from the LLM/rubric
evaluator by ``cat-tokenizer distill`` (the reviewers' suggestion: a small dedicated predictor).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from torch import Tensor, nn

__all__ = ["RatioHead"]


class RatioHead(nn.Module):
    """Trunk features (B, C, H/8, W/8) -> complexity score (B,).

    Args:
        in_channels: channels of the trunk features (the encoder's width at the 8x stage).
        hidden: width of the 1x1 projection.
        thresholds: score cut points, ascending (the teacher's).
        ratios: the ratios, ascending; the highest scores get the smallest ratio.
        image_size: the image side it was trained at (images are scored after resizing to it).
    """

    def __init__(self, in_channels: int, hidden: int = 64, thresholds: Sequence[float] = (4.0, 7.0),
                 ratios: Sequence[int] = (8, 16, 32), image_size: int | None = None):
        super().__init__()
        self.config = {"in_channels": in_channels, "hidden": hidden, "thresholds": [float(t) for t in thresholds],
                       "ratios": [int(r) for r in ratios], "image_size": image_size}
        self.proj = nn.Conv2d(in_channels, hidden, 1)
        self.out = nn.Linear(2 * hidden, 1)
        nn.init.zeros_(self.out.weight)
        nn.init.constant_(self.out.bias, 5.0)  # start at the middle of the 1..9 scale

    def forward(self, feats: Tensor) -> Tensor:
        h = torch.nn.functional.silu(self.proj(feats))  # (B, hidden, h, w)
        pooled = torch.cat([h.mean((-2, -1)), h.amax((-2, -1))], 1)  # (B, 2*hidden)
        return self.out(pooled).squeeze(-1)  # (B,)

    def ratios_for(self, scores: Tensor) -> list[int]:
        """Scores -> ratios with the stored thresholds (same rule as ``RatioMapper``)."""
        bins = np.searchsorted(np.asarray(self.config["thresholds"]), scores.detach().float().cpu().numpy(), side="right")
        return [int(r) for r in np.asarray(self.config["ratios"][::-1])[bins]]
