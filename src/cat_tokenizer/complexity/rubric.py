"""The rubric applied by rules: deterministic, fast, no model. Reads the probe facts.

The same ranking the LLM rubric (prompts/rubric.txt) asks for: legible text and faces push the
score up, detail (JPEG bits per pixel, edge density) adds, flat colour stays low. For text-only
descriptions (prompts) it matches keywords. Every weight is a constructor argument.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from cat_tokenizer.complexity.base import SCORE_MAX, SCORE_MIN, Description, Scorer

__all__ = ["RubricScorer"]

HIGH_WORDS = ("text", "document", "page", "screenshot", "slide", "chart", "graph", "plot", "table", "diagram", "map",
              "sign", "label", "menu", "newspaper", "book", "face", "portrait", "person", "people", "crowd", "texture",
              "fabric", "grass", "gravel", "crowded", "city", "street", "detailed", "intricate")
LOW_WORDS = ("plain", "flat", "simple", "minimal", "logo", "icon", "circle", "square", "solid", "empty", "sky",
             "gradient", "silhouette", "background", "blank", "shape")


class RubricScorer(Scorer):
    """Score = base + detail + text + faces (clipped to 1..9); prompts by keywords.

    Args:
        base: the score of an empty image.
        bpp_per_point: JPEG bits per pixel (at the probe's statistics size) worth one point.
        max_detail: cap on the JPEG detail points.
        edge_weight: points per unit of edge density (fraction of edge pixels).
        max_edge: cap on the edge points.
        min_words: legible words needed to count as text.
        text_points: points for legible text (text must be preserved, whatever its amount).
        words_per_point: extra point per this many words (capped at one point).
        face_points: points when at least one face is found.
        prompt_base: the score of a prompt with no keyword.
        prompt_step: points per high keyword (added) or low keyword (subtracted).
        high_words: prompt keywords that mean detail.
        low_words: prompt keywords that mean simplicity.
    """

    def __init__(
        self,
        base: float = 1.0,
        bpp_per_point: float = 0.4,
        max_detail: float = 5.0,
        edge_weight: float = 8.0,
        max_edge: float = 2.0,
        min_words: int = 3,
        text_points: float = 4.0,
        words_per_point: float = 100.0,
        face_points: float = 2.5,
        prompt_base: float = 5.0,
        prompt_step: float = 2.0,
        high_words: Sequence[str] = HIGH_WORDS,
        low_words: Sequence[str] = LOW_WORDS,
    ):
        super().__init__()
        self.base, self.bpp_per_point, self.max_detail = base, bpp_per_point, max_detail
        self.edge_weight, self.max_edge, self.min_words = edge_weight, max_edge, min_words
        self.text_points, self.words_per_point, self.face_points = text_points, words_per_point, face_points
        self.prompt_base, self.prompt_step = prompt_base, prompt_step
        self.high_words, self.low_words = tuple(high_words), tuple(low_words)

    def fingerprint(self) -> dict:
        return {"scorer": "rubric/v1", **{k: v for k, v in vars(self).items() if not k.startswith("_") and k != "training"}}

    def score_one(self, d: Description) -> float:
        f = d.facts
        if f.get("prompt_only") or "jpeg_bpp" not in f:
            words = [w.strip(".,;:!?\"'()").lower() for w in d.text.split()]
            s = self.prompt_base + self.prompt_step * (
                sum(any(w.startswith(h) for h in self.high_words) for w in words)
                - sum(any(w.startswith(lw) for lw in self.low_words) for w in words))
        else:
            s = self.base + min(self.max_detail, f["jpeg_bpp"] / self.bpp_per_point)
            s += min(self.max_edge, self.edge_weight * f.get("edge_density", 0.0))
            if f.get("text_words", 0.0) >= self.min_words:
                s += self.text_points + min(1.0, f["text_words"] / self.words_per_point)
            if f.get("faces", 0.0) >= 1:
                s += self.face_points
        return float(np.clip(s, SCORE_MIN, SCORE_MAX))

    def score(self, descriptions: list[Description]) -> list[float]:
        return [self.score_one(d) for d in descriptions]
