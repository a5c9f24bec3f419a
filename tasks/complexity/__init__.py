"""Fitting and measuring the complexity evaluator on labelled folders (``cat-tokenizer fit-rubric``)."""

from cat_tasks.complexity.fit import collect_facts, cross_validate, evaluate_scores, run_fit_rubric

__all__ = ["collect_facts", "cross_validate", "evaluate_scores", "run_fit_rubric"]
