"""Score results as CSV rows and as the printed summary (ratio counts, per-kind shares, tokens vs fixed 16x)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from cat_tokenizer.complexity.evaluator import ComplexityEvaluator, ScoreResult, summarize
from cat_tokenizer.files import write_csv

__all__ = ["COLUMNS", "write_rows", "result_rows", "format_summary"]

COLUMNS = ("path", "score", "ratio", "description", "evaluator")


def write_rows(rows: Sequence[dict], out: str | Path, columns: Sequence[str] = COLUMNS) -> Path:
    """Write a CSV atomically (temp file + rename: a killed run never leaves half a file)."""
    return write_csv(out, rows, columns)


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
