"""The learning-rate schedule the project's LightningModules share: linear warm-up, then constant or cosine to a floor."""

from __future__ import annotations

import math
from typing import Literal

from cat_tokenizer.errors import UserInputError

__all__ = ["Schedule", "check_schedule", "lr_factor"]

Schedule = Literal["constant", "cosine"]


def check_schedule(schedule: str, warmup_steps: int, decay_steps: int | None) -> None:
    """One-line errors for a schedule that cannot run."""
    if schedule not in ("constant", "cosine"):
        raise UserInputError(f"lr_schedule must be 'constant' or 'cosine', got {schedule!r}")
    if schedule == "cosine" and not (decay_steps and decay_steps > warmup_steps):
        raise UserInputError(f"lr_schedule 'cosine' needs decay_steps > warmup_steps ({warmup_steps}), got {decay_steps}")


def lr_factor(step: int, warmup_steps: int, schedule: Schedule = "constant", decay_steps: int | None = None,
              min_lr_ratio: float = 0.1) -> float:
    """LR multiplier at ``step``: linear warm-up over ``warmup_steps``, then 1 (``constant``) or a cosine
    that reaches ``min_lr_ratio`` at ``decay_steps`` and holds there (a run resumed past it stays at the floor)."""
    if warmup_steps > 0 and step < warmup_steps:
        return (step + 1) / warmup_steps
    if schedule == "constant":
        return 1.0
    t = min(1.0, (step - warmup_steps) / (decay_steps - warmup_steps))
    return min_lr_ratio + (1 - min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * t))
