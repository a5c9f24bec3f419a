"""Compression ratios: validation and the ratio-spec strings used in configs."""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

from cat_tokenizer.errors import UserInputError

__all__ = ["DEFAULT_RATIOS", "check_ratio", "ratio_level", "parse_ratio_spec", "token_count", "ratios_from_scores"]

DEFAULT_RATIOS: tuple[int, ...] = (8, 16, 32)


def ratios_from_scores(scores, thresholds: Sequence[float], ratios: Sequence[int]) -> np.ndarray:
    """Complexity scores -> ratios: (N,) floats -> (N,) ints. ``thresholds`` ascending, one fewer than
    ``ratios``; scores below the first get the largest ratio (fewest tokens), above the last the smallest."""
    bins = np.searchsorted(np.asarray(thresholds, dtype=np.float64), np.asarray(scores, dtype=np.float64), side="right")
    return np.asarray(sorted(int(r) for r in ratios)[::-1])[bins]


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


def parse_budget(spec: str | float, image_size: int, valid: Sequence[int] = DEFAULT_RATIOS) -> float:
    """Mean tokens per image from a number or a ratio-relative spec: ``"16x-18%"`` is fixed 16x's
    token count minus 18% (the paper's CAT on ImageNet), ``"8x+0%"`` fixed 8x's.

    Raises:
        UserInputError: anything else.
    """
    import re

    if isinstance(spec, (int, float)):
        return float(spec)
    text = str(spec).strip().replace(" ", "")
    try:
        return float(text)
    except ValueError:
        pass
    m = re.fullmatch(r"(\d+)x(?:([+-]\d+(?:\.\d+)?)%)?", text)
    if m is None or int(m.group(1)) not in valid:
        raise UserInputError(f"--budget takes mean tokens (e.g. 210) or <ratio>x[+-<percent>%] with ratio in {list(valid)} "
                             f"(e.g. 16x-18%); got {spec!r}")
    return token_count(image_size, image_size, int(m.group(1))) * (1 + float(m.group(2) or 0) / 100)
