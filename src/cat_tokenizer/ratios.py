"""Compression ratios: validation and the ratio-spec strings used in configs."""

from __future__ import annotations

import math
from collections.abc import Sequence

from cat_tokenizer.errors import UserInputError

__all__ = ["DEFAULT_RATIOS", "check_ratio", "ratio_level", "parse_ratio_spec", "token_count"]

DEFAULT_RATIOS: tuple[int, ...] = (8, 16, 32)


def check_ratio(ratio: int, valid: Sequence[int] = DEFAULT_RATIOS) -> int:
    """Return ``ratio`` as an int, or raise a ValueError that lists the valid ratios."""
    try:
        r = int(ratio)
    except (TypeError, ValueError):
        r = None
    if r is None or r != ratio or r not in valid:
        raise UserInputError(f"invalid compression ratio {ratio!r}; valid ratios are {sorted(valid)}")
    return r


def ratio_level(ratio: int) -> int:
    """Index of the encoder stage whose features sit at ``ratio`` (8 -> 3, 16 -> 4, 32 -> 5)."""
    level = int(math.log2(ratio))
    if 2**level != ratio:
        raise UserInputError(f"compression ratio must be a power of two, got {ratio}")
    return level


def parse_ratio_spec(spec: str, valid: Sequence[int] = DEFAULT_RATIOS) -> int | None:
    """Parse ``"uniform"`` (-> None) or ``"fixed:<r>"`` (-> r).

    Raises:
        ValueError: on any other string, or a fixed ratio outside ``valid``.
    """
    if spec == "uniform":
        return None
    if spec.startswith("fixed:"):
        tail = spec[len("fixed:") :]
        return check_ratio(int(tail) if tail.isdigit() else tail, valid)
    raise UserInputError(f"ratio_assignment must be 'uniform' or 'fixed:<r>' with r in {sorted(valid)}, got {spec!r}")


def token_count(height: int, width: int, ratio: int) -> int:
    """Latent tokens for an image of ``height x width`` at ``ratio`` (sides padded up to a multiple)."""
    return math.ceil(height / ratio) * math.ceil(width / ratio)
