"""Ratio predictors distilled from a teacher: the tokenizer's ratio head on images (``distill``) and a
text-only student for prompts (``distill-text``)."""

from cat_tasks.distill.ratio_head import RatioHeadModule, run_distill
from cat_tasks.distill.text import run_distill_text

__all__ = ["RatioHeadModule", "run_distill", "run_distill_text"]
