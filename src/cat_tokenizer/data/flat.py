"""Flat colour fields mixed into training batches.

Real photos, pages and screenshots hold few exactly uniform areas, so a tokenizer trained on them
alone never learns to return one colour exactly (docs/experiments.md, "v2: why flat colours shift").
``FlatFields`` wraps a collate function and replaces a share of each training batch's images with
synthetic flat content: a whole image of one colour, or a rectangle of one colour on another.

Each replacement is drawn from a generator seeded by the batch's item indices, so a resumed run
sees the same batches it would have seen.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

__all__ = ["FlatFields", "flat_image", "random_colour"]


def random_colour(gen: torch.Generator) -> Tensor:
    """An RGB colour in [-1, 1] (3,): uniform over the cube, a fifth of them greys."""
    if torch.rand((), generator=gen) < 0.2:
        return (torch.rand((), generator=gen) * 2 - 1).expand(3).clone()
    return torch.rand(3, generator=gen) * 2 - 1


def flat_image(size: tuple[int, int], gen: torch.Generator) -> Tensor:
    """A synthetic flat image (3, H, W) in [-1, 1]: half are one colour, half a rectangle on a background."""
    h, w = size
    img = random_colour(gen)[:, None, None].expand(3, h, w).clone()
    if torch.rand((), generator=gen) < 0.5:
        y0, y1 = sorted(torch.randint(0, h + 1, (2,), generator=gen).tolist())
        x0, x1 = sorted(torch.randint(0, w + 1, (2,), generator=gen).tolist())
        img[:, y0:y1, x0:x1] = random_colour(gen)[:, None, None]
    return img


class FlatFields:
    """A collate wrapper: each image of a batch is replaced by ``flat_image`` with probability ``share``.

    Args:
        collate: the collate function to wrap (returns a dict with ``image`` (B, 3, H, W) and ``index``).
        share: the expected share of flat images per batch, in [0, 1].
        seed: mixed into each batch's generator seed.
    """

    def __init__(self, collate: Callable, share: float, seed: int = 0):
        self.collate, self.share, self.seed = collate, float(share), int(seed)

    def __call__(self, items: list) -> dict | None:
        batch = self.collate(items)
        if batch is None or self.share <= 0 or "image" not in batch:
            return batch
        images: Tensor = batch["image"]  # (B, 3, H, W)
        key = batch["index"].tolist() if "index" in batch else [images.shape[0]]
        gen = torch.Generator().manual_seed(hash((self.seed, *key)) & 0x7FFF_FFFF_FFFF_FFFF)
        pick = torch.rand(images.shape[0], generator=gen) < self.share  # (B,)
        if pick.any():
            images = images.clone()
            for i in pick.nonzero().flatten().tolist():
                images[i] = flat_image(tuple(images.shape[-2:]), gen)
            batch["image"] = images
        return batch
