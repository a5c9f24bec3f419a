"""``cat-tokenizer score``: images or prompts -> complexity score, ratio and description (CSV)."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path

from cat_tokenizer.complexity import ComplexityEvaluator, RatioMapper, ScoreResult
from cat_tokenizer.complexity.cache import default_score_cache
from cat_tokenizer.complexity.report import format_summary, result_rows, write_rows
from cat_tokenizer.data.assign import read_ratio_csv
from cat_tokenizer.data.images import list_images
from cat_tokenizer.errors import UserInputError
from cat_tokenizer.outputs import check_out_file
from cat_tokenizer.ratios import parse_budget

__all__ = ["run_score"]

log = logging.getLogger(__name__)


def run_score(
    root: str | None,
    texts: Sequence[str],
    out: str | None,
    evaluator_config: str | None = None,
    cache: str | None = None,
    budget: float | str | None = None,
    image_size: int | None = None,
    thresholds: Sequence[float] | None = None,
    overrides: str | None = None,
    ratio: int | None = None,
    progress: bool = True,
    overwrite: bool = False,
) -> tuple[list[ScoreResult], str]:
    """Score a folder (or prompts) and write the CSV; returns the results and the summary text.

    ``out`` is checked before anything is scored: an existing file is refused unless ``overwrite``,
    and an input image or the score cache itself is refused always (``cat_tokenizer.outputs``)."""
    if (root is None) == (not texts):
        raise UserInputError("give an image folder or --text prompts (one of the two)")
    files: list[Path] = []
    store = Path(cache).expanduser() if cache else None
    if root is not None:
        base = Path(root).expanduser()
        files = list_images(base)
        store = store or default_score_cache(base)
    if out:
        check_out_file(out, overwrite, inputs=[*files, *([store] if store else [])])
    evaluator = ComplexityEvaluator.from_config(evaluator_config, image_size)
    if thresholds is not None:
        evaluator.mapper = RatioMapper(thresholds, evaluator.mapper.ratios)
    if budget is not None:
        evaluator.target_mean_tokens = parse_budget(budget, evaluator.image_size, evaluator.mapper.ratios)
    name = evaluator.name
    if texts:
        results = evaluator.score_texts(list(texts), cache=cache, ratio=ratio)
        rows = result_rows(results, None, name)
    else:
        log.info("score cache: %s", store)
        manual = read_ratio_csv(overrides, base, evaluator.mapper.ratios) if overrides else None
        results = evaluator.score_images(files, cache=store, overrides=manual, ratio=ratio, progress=progress)
        rows = result_rows(results, base, name)
    summary = format_summary(results, evaluator, None if texts else base)
    failed = [r for r in results if r.error]
    if failed:
        summary += f"\n{len(failed)} unreadable file(s), not scored:\n" + "\n".join(f"  {r.error}" for r in failed)
    if out:
        write_rows(rows, out)
        summary += f"\nwrote {out}"
    return results, summary
