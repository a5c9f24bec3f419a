"""``cat-tokenizer score``: images or prompts -> complexity score, ratio and description (CSV)."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from cat_tokenizer.complexity import ComplexityEvaluator, RatioMapper, ScoreResult
from cat_tokenizer.complexity.cache import default_score_cache
from cat_tokenizer.complexity.report import format_summary, result_rows, write_rows
from cat_tokenizer.complexity.spec import EvaluatorSpec
from cat_tokenizer.data.assign import read_ratio_csv
from cat_tokenizer.data.images import list_images
from cat_tokenizer.errors import UserInputError
from cat_tokenizer.options import parse_numbers
from cat_tokenizer.outputs import check_out_file
from cat_tokenizer.ratios import parse_budget

__all__ = ["ScoreOptions", "run_score"]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ScoreOptions:
    """The options of ``cat-tokenizer score`` (and of ``run_score``).

    Args:
        text: score this prompt or class name instead (repeatable)
        out: CSV to write (path, score, ratio, description, evaluator)
        evaluator: a preset (default, rubric, smollm2, distilled:D, distilled-text:D, auto:D) or an evaluator YAML (default: default)
        cache: score cache file (default: one per folder under $CAT_TOKENIZER_CACHE/scores)
        budget: target mean tokens (e.g. 210) or relative to a fixed ratio (e.g. 16x-18%): the evaluator's thresholds
            are shifted together on these scores until the mean matches
        image_size: side the token counts refer to (default: the evaluator's, 256)
        thresholds: score cut points, e.g. 4,7 (score >= 7 -> 8x, >= 4 -> 16x, else 32x)
        overrides: CSV with path,ratio columns: ratios set by hand for some images
        ratio: one ratio for every image (global override)
        quiet: no progress bar
        overwrite: replace an existing --out CSV
    """

    text: list[str] | None = None
    out: str | None = None
    evaluator: EvaluatorSpec | None = None
    cache: str | None = None
    budget: str | None = None
    image_size: int | None = None
    thresholds: str | None = None
    overrides: str | None = None
    ratio: Literal[8, 16, 32] | None = None
    quiet: bool = False
    overwrite: bool = False


def run_score(root: str | None, o: ScoreOptions = ScoreOptions()) -> tuple[list[ScoreResult], str]:
    """Score a folder (or prompts) and write the CSV; returns the results and the summary text.

    ``out`` is checked before anything is scored: an existing file is refused unless ``overwrite``,
    and an input image or the score cache itself is refused always (``cat_tokenizer.outputs``)."""
    texts, out, cache = o.text or [], o.out, o.cache
    if (root is None) == (not texts):
        raise UserInputError("give an image folder or --text prompts (one of the two)")
    files: list[Path] = []
    store = Path(cache).expanduser() if cache else None
    if root is not None:
        base = Path(root).expanduser()
        files = list_images(base)
        store = store or default_score_cache(base)
    if out:
        check_out_file(out, o.overwrite, inputs=[*files, *([store] if store else [])])
    evaluator = ComplexityEvaluator.from_config(o.evaluator, o.image_size)
    thresholds = parse_numbers(o.thresholds, "--thresholds", float)
    if thresholds is not None:
        evaluator.mapper = RatioMapper(thresholds, evaluator.mapper.ratios)
    if o.budget is not None:
        evaluator.target_mean_tokens = parse_budget(o.budget, evaluator.image_size, evaluator.mapper.ratios)
    name = evaluator.name
    if texts:
        results = evaluator.score_texts(list(texts), cache=cache, ratio=o.ratio)
        rows = result_rows(results, None, name)
    else:
        log.info("score cache: %s", store)
        manual = read_ratio_csv(o.overrides, base, evaluator.mapper.ratios) if o.overrides else None
        results = evaluator.score_images(files, cache=store, overrides=manual, ratio=o.ratio, progress=not o.quiet)
        rows = result_rows(results, base, name)
    summary = format_summary(results, evaluator, None if texts else base)
    failed = [r for r in results if r.error]
    if failed:
        summary += f"\n{len(failed)} unreadable file(s), not scored:\n" + "\n".join(f"  {r.error}" for r in failed)
    if out:
        write_rows(rows, out)
        summary += f"\nwrote {out}"
    return results, summary
