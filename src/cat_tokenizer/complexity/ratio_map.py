"""Map complexity scores (1..9, higher = more detail) to compression ratios.

Two ways: fixed thresholds on the score, or thresholds calibrated on a dataset's scores so the
mean token count hits a budget. Higher scores get smaller ratios (more tokens).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

from cat_tokenizer.errors import UserInputError
from cat_tokenizer.ratios import DEFAULT_RATIOS, DEFAULT_THRESHOLDS, ratios_from_scores

__all__ = ["RatioMapper"]


class RatioMapper:
    """Scores -> ratios by thresholds.

    Args:
        thresholds: ascending score cut points, one fewer than ``ratios``. With the defaults
            ``DEFAULT_THRESHOLDS`` (4, 7) and ratios (8, 16, 32): score >= 7 -> 8x, 4 <= score < 7 -> 16x, < 4 -> 32x.
        ratios: the ratios, ascending (the smallest goes to the most complex images).
    """

    def __init__(self, thresholds: Sequence[float] = DEFAULT_THRESHOLDS, ratios: Sequence[int] = DEFAULT_RATIOS):
        self.ratios = tuple(sorted(int(r) for r in ratios))
        self.thresholds = tuple(float(t) for t in thresholds)
        if not all(math.isfinite(t) for t in self.thresholds):
            raise UserInputError(f"thresholds must be finite numbers, got {list(thresholds)}")
        if len(self.thresholds) != len(self.ratios) - 1 or list(self.thresholds) != sorted(self.thresholds):
            raise UserInputError(f"need {len(self.ratios) - 1} ascending thresholds for ratios {self.ratios}, got {thresholds}")

    def __call__(self, scores: Sequence[float] | np.ndarray) -> np.ndarray:
        """Ratios for ``scores``: (N,) floats -> (N,) ints."""
        return ratios_from_scores(scores, self.thresholds, self.ratios)

    @staticmethod
    def tokens(ratios: np.ndarray, image_size: int) -> np.ndarray:
        """Latent tokens per image of ``image_size`` x ``image_size`` at each ratio."""
        return (np.ceil(image_size / np.asarray(ratios)) ** 2).astype(np.int64)

    @classmethod
    def calibrate(cls, scores: Sequence[float], target_mean_tokens: float, image_size: int,
                  ratios: Sequence[int] = DEFAULT_RATIOS) -> RatioMapper:
        """Thresholds on these scores whose mean token count comes closest to the target.

        Cuts fall between distinct observed scores (ties stay together, so an image's ratio depends
        only on its score); O(U log U) in the number U of distinct scores. Three ratios only.

        Raises:
            UserInputError: no scores, all-equal scores, or a target outside what the ratios allow.
        """
        s = np.asarray(scores, dtype=np.float64)
        rs = tuple(sorted(ratios))
        if len(rs) != 3:
            raise UserInputError(f"budget calibration supports three ratios, got {rs}")
        if s.size == 0:
            raise UserInputError("cannot calibrate ratio thresholds on an empty score list")
        if np.ptp(s) == 0:
            raise UserInputError(f"cannot calibrate thresholds: all {s.size} scores equal {s[0]:g}; set thresholds by hand")
        t_small, t_mid, t_big = (float(t) for t in cls.tokens(np.asarray(rs), image_size))  # tokens at 8x, 16x, 32x
        if not t_big <= target_mean_tokens <= t_small:
            raise UserInputError(f"target_mean_tokens={target_mean_tokens:g} outside [{t_big:g}, {t_small:g}] for {image_size}px")
        values, counts = np.unique(s, return_counts=True)
        # A cut at position p sends the p lowest scores below it; cuts fall between distinct values.
        pos = np.concatenate([[0], np.cumsum(counts)])  # (U+1,)
        cut_value = np.concatenate([values, [values[-1] + 1.0]])  # threshold giving each position
        n = s.size
        best, best_err = (0, 0), np.inf
        for a, p_lo in enumerate(pos):  # p_lo scores get the largest ratio
            # mean(p_hi) = (p_lo*t_big + (p_hi - p_lo)*t_mid + (n - p_hi)*t_small) / n is linear in p_hi.
            want = (target_mean_tokens * n - p_lo * (t_big - t_mid) - n * t_small) / (t_mid - t_small)
            k = int(np.searchsorted(pos, want))
            for b in {max(a, min(k, len(pos) - 1)), max(a, min(k - 1, len(pos) - 1))}:
                mean = (p_lo * t_big + (pos[b] - p_lo) * t_mid + (n - pos[b]) * t_small) / n
                if abs(mean - target_mean_tokens) < best_err - 1e-9:
                    best, best_err = (a, b), abs(mean - target_mean_tokens)
        return cls((float(cut_value[best[0]]), float(cut_value[best[1]])), rs)

    @classmethod
    def calibrate_shift(cls, scores: Sequence[float], target_mean_tokens: float, image_size: int,
                        anchor: Sequence[float], ratios: Sequence[int] = DEFAULT_RATIOS) -> RatioMapper:
        """The ``anchor`` thresholds moved together by one offset so the mean token count comes
        closest to the target: the evaluator's own spacing between its cut points is kept, so a budget
        keeps a spread over every ratio (``calibrate`` may put everything at one ratio when that hits
        the target exactly, e.g. all 16x at 16x's budget). Lowering the offset by one breakpoint moves
        one image (or one group of equal scores) up one ratio, so the result is within one image's
        worth of tokens of the target whenever scores are distinct.

        Raises:
            UserInputError: no scores, or a target outside what the ratios allow.
        """
        s = np.asarray(scores, dtype=np.float64)
        rs = tuple(sorted(ratios))
        a = np.asarray(sorted(float(t) for t in anchor))
        if len(a) != len(rs) - 1:
            raise UserInputError(f"need {len(rs) - 1} anchor thresholds for ratios {rs}, got {list(anchor)}")
        if s.size == 0:
            raise UserInputError("cannot calibrate ratio thresholds on an empty score list")
        tokens = cls.tokens(np.asarray(rs), image_size)
        if not tokens.min() <= target_mean_tokens <= tokens.max():
            raise UserInputError(f"target_mean_tokens={target_mean_tokens:g} outside [{tokens.min():g}, {tokens.max():g}] "
                                 f"for {image_size}px")
        # Offsets at which some score meets some shifted threshold (score == a_k + d), plus both extremes.
        breaks = np.unique((s[:, None] - a[None, :]).ravel())
        span = float(np.ptp(s)) + float(np.ptp(a)) + 1.0
        candidates = np.concatenate([[breaks[0] - span], breaks, [breaks[-1] + span]])
        best, best_err = candidates[0], np.inf
        for d in candidates:  # a threshold at exactly a score sends that score up (side="right")
            mean = cls(tuple(a + d), rs).tokens(cls(tuple(a + d), rs)(s), image_size).mean()
            err = abs(mean - target_mean_tokens)
            if err < best_err - 1e-9:
                best, best_err = d, err
        return cls(tuple(a + best), rs)

