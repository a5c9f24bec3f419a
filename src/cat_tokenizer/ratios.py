"""Compression ratios: validation, token counts, score -> ratio, and the ratio assignment of a dataset."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import numpy as np

from cat_tokenizer.errors import UserInputError

__all__ = ["DEFAULT_RATIOS", "DEFAULT_THRESHOLDS", "check_ratio", "ratio_level", "RatioAssignment", "token_count", "ratios_from_scores"]

DEFAULT_RATIOS: tuple[int, ...] = (8, 16, 32)
DEFAULT_THRESHOLDS: tuple[float, ...] = (4.0, 7.0)  # complexity score cut points: >= 7 -> 8x, >= 4 -> 16x, else 32x


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


@dataclass(frozen=True)
class RatioAssignment:
    """How each image gets its compression ratio: one type for the image DataModule (VAE training,
    encoding, the probe) and the latent DataModule (which latents a DiT trains on).

    In a YAML config either the fields (``ratio_assignment: {mode: fixed, ratio: 16}``) or the short
    spelling (``ratio_assignment: fixed:16``), which ``parse`` turns into the same object.

    Args:
        mode: ``uniform`` (each batch draws a ratio: tokenizer training), ``fixed`` (every image at
            ``ratio``), ``complexity`` (each image at the evaluator's ratio), ``csv`` (each image at the
            ratio in the ``path,ratio`` table ``csv``, e.g. from ``cat-tokenizer score``).
        ratio: the ratio of ``fixed``.
        csv: the table of ``csv``.
    """

    mode: Literal["uniform", "fixed", "complexity", "csv"] = "uniform"
    ratio: int | None = None
    csv: str | None = None

    def __post_init__(self):
        if self.mode not in ("uniform", "fixed", "complexity", "csv"):
            raise UserInputError(f"ratio assignment mode must be uniform, fixed, complexity or csv; got {self.mode!r}")
        if (self.mode == "fixed") != (self.ratio is not None) or (self.mode == "csv") != bool(self.csv):
            raise UserInputError(f"ratio assignment {self.mode}: 'ratio' goes with fixed and 'csv' with csv only; got {self!r}")

    @classmethod
    def parse(cls, spec: str | RatioAssignment | dict, valid: Sequence[int] = DEFAULT_RATIOS) -> RatioAssignment:
        """The object for a short spelling (``uniform``, ``fixed:<r>``, ``complexity`` or its alias
        ``adaptive``, ``csv:<path>``), a dict of fields or an object; ``fixed`` is checked against ``valid``."""
        if isinstance(spec, dict):
            spec = cls(**spec)
        if isinstance(spec, str):
            head, _, tail = spec.partition(":")
            if head == "fixed" and tail.isdigit():
                spec = cls("fixed", ratio=int(tail))
            elif head == "csv" and tail:
                spec = cls("csv", csv=tail)
            elif spec in ("uniform", "complexity", "adaptive"):
                spec = cls("complexity" if spec == "adaptive" else spec)
            else:
                raise UserInputError(f"ratio assignment must be uniform, fixed:<r> (r in {sorted(valid)}), complexity "
                                     f"(alias adaptive) or csv:<path>; got {spec!r}")
        if spec.mode == "fixed":
            check_ratio(spec.ratio, valid)
        return spec

    @property
    def cache_mode(self) -> str:
        """The latent cache's name for latents made under this assignment: ``fixed:<r>`` or ``adaptive``."""
        return f"fixed:{self.ratio}" if self.mode == "fixed" else "adaptive"

    def __str__(self) -> str:
        return {"fixed": f"fixed:{self.ratio}", "csv": f"csv:{self.csv}"}.get(self.mode, self.mode)


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
