"""``cat-tokenizer score``: images or prompts -> complexity score, ratio and description (CSV)."""

from __future__ import annotations

import csv
import hashlib
import logging
import os
import tempfile
from collections.abc import Sequence
from pathlib import Path

from cat_tokenizer.complexity import ComplexityEvaluator, RatioMapper, ScoreResult, summarize
from cat_tokenizer.data.default_data import cache_dir
from cat_tokenizer.data.images import list_images
from cat_tokenizer.errors import InputNotFound, UserInputError

__all__ = ["default_score_cache", "read_overrides", "write_rows", "run_score", "format_summary"]

log = logging.getLogger(__name__)
COLUMNS = ("path", "score", "ratio", "description", "evaluator")


def default_score_cache(root: str | Path) -> Path:
    """One SQLite score cache per dataset folder, under the project cache."""
    key = hashlib.sha1(str(Path(root).expanduser().resolve()).encode()).hexdigest()[:16]
    return cache_dir() / "scores" / f"{Path(root).name or 'root'}-{key}.sqlite"


def read_overrides(path: str | Path, root: Path) -> dict[str, int]:
    """``{absolute path: ratio}`` from a CSV with columns ``path,ratio`` (paths relative to ``root`` or absolute)."""
    p = Path(path).expanduser()
    if not p.is_file():
        raise InputNotFound(f"overrides CSV not found: {path}")
    with p.open(newline="") as f:
        reader = csv.DictReader(f)
        if not reader.fieldnames or not {"path", "ratio"} <= set(reader.fieldnames):
            raise UserInputError(f"{path}: needs columns 'path' and 'ratio', found {reader.fieldnames}")
        out = {}
        for i, row in enumerate(reader, start=2):
            if not (row["ratio"] or "").strip():
                continue
            try:
                ratio = int(row["ratio"])
            except ValueError:
                raise UserInputError(f"{path}:{i}: ratio {row['ratio']!r} is not an integer") from None
            f_ = Path(row["path"])
            out[str(f_ if f_.is_absolute() else root / f_)] = ratio
    return out


def write_rows(rows: Sequence[dict], out: str | Path, columns: Sequence[str] = COLUMNS) -> Path:
    """Write a CSV atomically (temp file + rename: a killed run never leaves half a file)."""
    out = Path(out).expanduser()
    out.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{out.name}.", dir=out.parent)
    with os.fdopen(fd, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(columns), extrasaction="ignore")
        w.writeheader()
        w.writerows(rows)
    os.replace(tmp, out)
    return out


def format_summary(results: Sequence[ScoreResult], evaluator: ComplexityEvaluator) -> str:
    s = summarize(results, evaluator.image_size, evaluator.mapper.ratios)
    lines = [f"scored {s['scored']} ({sum(r.cached for r in results)} from cache), {s['failed']} failed; evaluator {evaluator.name}"]
    lines += [f"  {r:>2}x: {n:5d} images" for r, n in s["per_ratio"].items()]
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
    budget: float | None = None,
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
        evaluator.target_mean_tokens = budget
    name = evaluator.name
    if texts:
        results = evaluator.score_texts(list(texts), cache=cache, ratio=ratio)
        rows = [{"path": r.key, "score": f"{r.score:.3f}", "ratio": r.ratio, "description": r.description, "evaluator": name}
                for r in results]
    else:
        base = Path(root).expanduser()
        files = list_images(base)
        store = Path(cache) if cache else default_score_cache(base)
        log.info("score cache: %s", store)
        manual = read_overrides(overrides, base) if overrides else None
        results = evaluator.score_images(files, cache=store, overrides=manual, ratio=ratio, progress=progress)
        rows = [{"path": str(Path(r.key).relative_to(base)), "score": "" if r.score is None else f"{r.score:.3f}",
                 "ratio": r.ratio if r.ratio is not None else "", "description": r.description or (r.error or ""),
                 "evaluator": name} for r in results]
    summary = format_summary(results, evaluator)
    failed = [r for r in results if r.error]
    if failed:
        summary += f"\n{len(failed)} unreadable file(s), not scored:\n" + "\n".join(f"  {r.error}" for r in failed)
    if out:
        write_rows(rows, out)
        summary += f"\nwrote {out}"
    return results, summary
