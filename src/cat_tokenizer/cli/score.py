"""``cat-tokenizer score``: images or prompts -> complexity score, ratio and description (CSV)."""

from __future__ import annotations

import csv
import logging
import os
import tempfile
from collections.abc import Sequence
from pathlib import Path

from cat_tokenizer.complexity import ComplexityEvaluator, RatioMapper, ScoreResult, summarize
from cat_tokenizer.complexity.cache import default_score_cache
from cat_tokenizer.data.assign import read_ratio_csv
from cat_tokenizer.data.images import list_images
from cat_tokenizer.errors import UserInputError
from cat_tokenizer.io import apply_umask
from cat_tokenizer.ratios import parse_budget

__all__ = ["write_rows", "result_rows", "run_score", "format_summary"]

log = logging.getLogger(__name__)
COLUMNS = ("path", "score", "ratio", "description", "evaluator")


def write_rows(rows: Sequence[dict], out: str | Path, columns: Sequence[str] = COLUMNS) -> Path:
    """Write a CSV atomically (temp file + rename: a killed run never leaves half a file)."""
    out = Path(out).expanduser()
    out.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{out.name}.", dir=out.parent)
    with os.fdopen(fd, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(columns), extrasaction="ignore")
        w.writeheader()
        w.writerows(rows)
    apply_umask(tmp)  # mkstemp makes 0600 files
    os.replace(tmp, out)
    return out


def result_rows(results: Sequence[ScoreResult], root: Path | None, evaluator_name: str) -> list[dict]:
    """CSV rows; image paths relative to ``root`` (None: keys as they are, e.g. prompts)."""
    return [{"path": r.key if root is None else str(Path(r.key).relative_to(root)),
             "score": "" if r.score is None else f"{r.score:.3f}", "ratio": r.ratio if r.ratio is not None else "",
             "description": r.description or (r.error or ""), "evaluator": evaluator_name} for r in results]


def format_summary(results: Sequence[ScoreResult], evaluator: ComplexityEvaluator, root: Path | None = None) -> str:
    s = summarize(results, evaluator.image_size, evaluator.mapper.ratios)
    lines = [f"scored {s['scored']} ({sum(r.cached for r in results)} from cache), {s['failed']} failed; evaluator {evaluator.name}"]
    lines += [f"  {r:>2}x: {n:5d} images" for r, n in s["per_ratio"].items()]
    kinds: dict[str, list[int]] = {}
    for r in results:
        rel = Path(r.key).relative_to(root).parts if root is not None and r.ratio else ()
        if len(rel) > 1:
            kinds.setdefault(rel[0], []).append(r.ratio)
    if len(kinds) > 1:  # shares per top-level folder (content kind)
        ratios = evaluator.mapper.ratios
        lines.append("per kind (" + " / ".join(f"{q}x" for q in ratios) + "): " + "; ".join(
            f"{k} " + "/".join(f"{100 * v.count(q) / len(v):.0f}%" for q in ratios) for k, v in sorted(kinds.items())))
    if s["scored"]:
        fixed = s["fixed_tokens"]
        base = fixed.get(16, next(iter(fixed.values())))
        lines.append(f"mean tokens at {evaluator.image_size}px: {s['mean_tokens']:.1f} vs {base} at fixed 16x "
                     f"({100 * (s['mean_tokens'] / base - 1):+.1f}%); fixed " + ", ".join(f"{r}x {t}" for r, t in fixed.items()))
    return "\n".join(lines)


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
) -> tuple[list[ScoreResult], str]:
    """Score a folder (or prompts) and write the CSV; returns the results and the summary text."""
    if (root is None) == (not texts):
        raise UserInputError("give an image folder or --text prompts (one of the two)")
    evaluator = ComplexityEvaluator.from_config(evaluator_config)
    if image_size is not None:
        evaluator.image_size = image_size
    if thresholds is not None:
        evaluator.mapper = RatioMapper(thresholds, evaluator.mapper.ratios)
    if budget is not None:
        evaluator.target_mean_tokens = parse_budget(budget, evaluator.image_size, evaluator.mapper.ratios)
    name = evaluator.name
    if texts:
        results = evaluator.score_texts(list(texts), cache=cache, ratio=ratio)
        rows = result_rows(results, None, name)
    else:
        base = Path(root).expanduser()
        files = list_images(base)
        store = Path(cache) if cache else default_score_cache(base)
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
