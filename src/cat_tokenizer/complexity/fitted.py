"""The rubric fitted instead of set by hand: a multinomial logistic model over probe facts.

Three classes (0: simple -> 32x, 1: middle -> 16x, 2: detailed -> 8x). The score is the expected
class score under the model, ``sum_k p_k * class_scores[k]`` with class scores (2.5, 5.5, 8.5), so the
usual thresholds (4, 7) send an image where its most probable class is, and ``--budget`` can move them.
A face adds ``face_points`` (the paper's perceptual question: faces need detail, which folder labels
cannot teach); the fit's default, 1.5, is what lifts a typical photo (5.5, the middle class) to the
8x threshold 7, and no more, so a face decides the ratio without ranking the photo above every page.
Prompts (text only) are scored by the rule rubric's keywords.

``fit_facts`` fits one from a table of facts and labels; ``cat-tokenizer fit-rubric`` writes it as a
normal evaluator config (class_path / init_args), with its provenance and cross-validation figures.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from cat_tokenizer.complexity.base import SCORE_MAX, SCORE_MIN, Description, Scorer
from cat_tokenizer.complexity.rubric import RubricScorer
from cat_tokenizer.errors import UserInputError

__all__ = ["FittedScorer", "fit_facts", "transform_facts", "DEFAULT_FEATURES"]

# Probe facts the model reads, and how each is transformed before standardising.
DEFAULT_FEATURES = {
    "edge_density": "id", "entropy": "id", "colours": "log1p", "jpeg_bpp": "id",
    "bg_share": "id", "sat_share": "id", "h_lines": "log1p", "v_lines": "log1p", "glyphs": "log1p",
    "glyph_rows": "id", "ink_share": "id", "h_faint_lines": "log1p", "v_faint_lines": "log1p", "flat_share": "id",
    "soft_gradients": "id", "axis_edges": "id",
}


def transform_facts(facts: Sequence[dict], features: Sequence[str], transforms: Sequence[str]) -> np.ndarray:
    """(N, F) matrix of the named facts, transformed (``id`` or ``log1p``); a missing fact is an error."""
    out = np.zeros((len(facts), len(features)))
    for j, (name, tf) in enumerate(zip(features, transforms)):
        try:
            col = np.array([float(f[name]) for f in facts])
        except KeyError:
            raise UserInputError(f"the fitted scorer needs the probe fact {name!r}; is the describer's layout/ocr/faces "
                                 "setting the one it was fitted with?") from None
        out[:, j] = np.log1p(np.maximum(col, 0)) if tf == "log1p" else col
    return out


class FittedScorer(Scorer):
    """Expected class score of a multinomial logistic model over probe facts (see the module docstring).

    Args:
        features: fact names, in the order of the coefficients' columns.
        transforms: per feature, ``id`` or ``log1p``.
        mean: per feature, the mean of the transformed fact on the fitting data.
        scale: per feature, its standard deviation there.
        coef: (classes, features) logistic coefficients on the standardised facts.
        intercept: (classes,) intercepts.
        class_scores: the score of each class, simplest first.
        face_points: points added when the probe found a face.
        provenance: where the weights came from (data, target, cross-validation figures); not used to score.
    """

    def __init__(self, features: Sequence[str], transforms: Sequence[str], mean: Sequence[float], scale: Sequence[float],
                 coef: Sequence[Sequence[float]], intercept: Sequence[float], class_scores: Sequence[float] = (2.5, 5.5, 8.5),
                 face_points: float = 0.0, provenance: dict | None = None):
        super().__init__()
        self.features, self.transforms = list(features), list(transforms)
        self.mean, self.scale = np.asarray(mean, np.float64), np.asarray(scale, np.float64)
        self.coef, self.intercept = np.asarray(coef, np.float64), np.asarray(intercept, np.float64)
        self.class_scores, self.face_points = np.asarray(class_scores, np.float64), float(face_points)
        self.provenance = provenance or {}
        f, k = len(self.features), len(self.class_scores)
        if not (len(self.transforms) == len(self.mean) == len(self.scale) == f and self.coef.shape == (k, f)
                and self.intercept.shape == (k,)):
            raise UserInputError(f"fitted scorer: inconsistent shapes ({f} features, {k} classes, coef {self.coef.shape})")
        if bad := sorted(set(self.transforms) - {"id", "log1p"}):
            raise UserInputError(f"fitted scorer: unknown transforms {bad} (id, log1p)")
        self._prompts = RubricScorer()

    def fingerprint(self) -> dict:
        return {"scorer": "fitted/v1", "features": self.features, "transforms": self.transforms,
                "mean": self.mean.round(8).tolist(), "scale": self.scale.round(8).tolist(),
                "coef": self.coef.round(8).tolist(), "intercept": self.intercept.round(8).tolist(),
                "class_scores": self.class_scores.tolist(), "face_points": self.face_points}

    def probabilities(self, facts: Sequence[dict]) -> np.ndarray:
        """(N, classes) class probabilities."""
        z = (transform_facts(facts, self.features, self.transforms) - self.mean) / self.scale
        logits = z @ self.coef.T + self.intercept
        logits -= logits.max(axis=1, keepdims=True)
        p = np.exp(logits)
        return p / p.sum(axis=1, keepdims=True)

    def score_facts(self, facts: Sequence[dict]) -> np.ndarray:
        """(N,) scores of images from their probe facts."""
        s = self.probabilities(facts) @ self.class_scores
        s += self.face_points * np.array([float(f.get("faces", 0.0) >= 1) for f in facts])
        return np.clip(s, SCORE_MIN, SCORE_MAX)

    def init_args(self) -> dict:
        """Constructor arguments as plain lists (a YAML config re-creates this scorer exactly)."""
        return {"features": self.features, "transforms": self.transforms, "mean": self.mean.tolist(),
                "scale": self.scale.tolist(), "coef": self.coef.tolist(), "intercept": self.intercept.tolist(),
                "class_scores": self.class_scores.tolist(), "face_points": self.face_points, "provenance": self.provenance}

    def score(self, descriptions: list[Description]) -> list[float]:
        out: list[float | None] = [None] * len(descriptions)
        image = [i for i, d in enumerate(descriptions) if not d.facts.get("prompt_only") and "jpeg_bpp" in d.facts]
        for i, d in enumerate(descriptions):
            if i not in image:
                out[i] = self._prompts.score_one(d)
        if image:
            for i, v in zip(image, self.score_facts([descriptions[i].facts for i in image])):
                out[i] = float(v)
        return out


def fit_facts(facts: Sequence[dict], labels: Sequence[int], features: dict[str, str] | None = None, c: float = 1.0,
              face_points: float = 1.5, provenance: dict | None = None) -> FittedScorer:
    """Fit a ``FittedScorer`` (class-balanced multinomial logistic regression, L2 strength ``1/c``)."""
    from sklearn.linear_model import LogisticRegression

    features = features or DEFAULT_FEATURES
    names, tfs = list(features), list(features.values())
    y = np.asarray(labels)
    if len(set(y.tolist())) < 2:
        raise UserInputError(f"need labels of at least two classes to fit, got {sorted(set(y.tolist()))}")
    x = transform_facts(facts, names, tfs)
    mean, scale = x.mean(0), x.std(0)
    scale[scale == 0] = 1.0
    model = LogisticRegression(C=c, class_weight="balanced", max_iter=2000)
    model.fit((x - mean) / scale, y)
    coef, intercept = np.zeros((3, len(names))), np.full(3, -1e3)  # a class never seen is never predicted
    for row, cls in enumerate(model.classes_):
        coef[cls], intercept[cls] = (model.coef_[row], model.intercept_[row]) if len(model.classes_) > 2 else (
            (model.coef_[0], model.intercept_[0]) if row == 1 else (np.zeros(len(names)), 0.0))
    return FittedScorer(names, tfs, mean.tolist(), scale.tolist(), coef.tolist(), intercept.tolist(),
                        face_points=face_points, provenance=provenance)
