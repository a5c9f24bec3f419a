"""The evaluator's parts: describers (image -> text) and scorers (text -> score in 1..9).

Each part is an ``nn.Module`` (so Lightning moves its networks to the device of a ``predict``
run) with a ``fingerprint()``: the settings that change its output. The evaluator hashes the
fingerprints to key the score cache, so changing any of them rescores.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from PIL import Image
from torch import nn

__all__ = ["Description", "Describer", "Scorer", "text_description", "SCORE_MIN", "SCORE_MAX"]

SCORE_MIN, SCORE_MAX = 1, 9


@dataclass
class Description:
    """What a describer says about one image (or a prompt, for text-only scoring).

    Attributes:
        text: the description a scorer reads (caption, answers to perceptual questions, facts).
        facts: measured quantities (word count, faces, edge density ...) for rule-based scoring.
        score: a score the describer produced itself (the one-VLM pipeline), else None.
    """

    text: str
    facts: dict[str, float] = field(default_factory=dict)
    score: float | None = None


def text_description(prompt: str) -> Description:
    """A prompt or class name as a description (generation: no image exists yet)."""
    return Description(text=f"Image to be generated from the prompt: {prompt.strip()}", facts={"prompt_only": 1.0})


class _Part(nn.Module):
    """What describers and scorers share: lazy loading, a fingerprint, a device."""

    def load(self):
        """Load weights now (neural parts load on first use otherwise); returns self."""
        return self

    def fingerprint(self) -> dict:
        """The settings that change this part's output (hashed into the score cache key)."""
        raise NotImplementedError

    @property
    def device(self):
        p = next(iter(self.parameters()), None)
        return p.device if p is not None else "cpu"


class Describer(_Part):
    """Images -> descriptions. Subclasses implement ``describe`` and ``fingerprint``; one that
    sets ``scores_itself`` puts a score in every description (no scorer needed)."""

    scores_itself: bool = False

    def describe(self, images: list[Image.Image]) -> list[Description]:
        raise NotImplementedError


class Scorer(_Part):
    """Descriptions -> scores in [SCORE_MIN, SCORE_MAX] (higher = more detail = more tokens)."""

    def score(self, descriptions: list[Description]) -> list[float]:
        raise NotImplementedError
