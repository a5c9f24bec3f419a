"""The complexity commands of ``cat-tokenizer``: score images or prompts, fit and evaluate the evaluator, and
the JPEG re-encoding check.

Each is a typed function (``cat_tokenizer.cli.typed`` builds its options and help from the signature and
docstring), registered under the ``cat_tokenizer.commands`` entry-point group in pyproject.toml."""

from __future__ import annotations

from pathlib import Path

from cat_tasks.complexity.bench import bench_default_and_cache, bench_scorers, spread
from cat_tasks.complexity.fit import FitRubricOptions, run_evaluate_kinds, run_fit_rubric
from cat_tasks.complexity.reencode import reencode_folder
from cat_tasks.complexity.score import ScoreOptions, run_score
from cat_tokenizer.complexity.spec import EvaluatorSpec
from cat_tokenizer.data.default_data import ensure_default_data
from cat_tokenizer.data.images import list_images
from cat_tokenizer.options import print_table

__all__ = ["score", "bench_score", "fit_rubric", "evaluate_kinds", "reencode"]


def score(dir: str | None = None, *, options: ScoreOptions) -> int:
    """complexity score, ratio and description per image (or prompt) -> CSV

    Args:
        dir: image folder (searched recursively)
    """
    results, summary = run_score(dir, options)
    if not options.out:
        for r in results:
            print(f"{r.score if r.score is not None else 'n/a':>6.6}  {r.ratio or '-':>2}x  {r.key}")
    print(summary)
    return 0 if any(r.score is not None for r in results) else 1


def bench_score(*, n: int = 16, llm: str = "builtin:smollm2", data: str | None = None, files: int = 1000, n_eval: int = 200,
                batch: int = 8, device: str = "cpu") -> int:
    """images/s of each describer and scorer; LLM batching and prefix-cache gains

    Args:
        n: embedded images to use
        llm: causal LM for LLMScorer (hub id, folder, builtin:smollm2; none: skip those rows)
        data: image folder for the default-evaluator and cache rows (default: the embedded data)
        files: files for the cache rows (spread over the folder)
        n_eval: files for the default evaluator's images/s
        batch: LLM batch size
        device: cpu, cuda ...
    """
    cols, formats = ["component", "setting", "items", "items_per_s", "s_per_item", "speed_vs"], {"s_per_item": "{:.4f}"}
    if llm != "none":
        print(f"complexity evaluator throughput on {n} embedded images, {device} (speed_vs: against the naive LLM row)")
        print_table(bench_scorers(n, llm, batch, device), cols, formats)
    chosen = spread(list_images(data or ensure_default_data()), files)
    print(f"\nthe default evaluator and the score cache on {len(chosen)} files of {data or 'the embedded data'} "
          f"(speed_vs: against the row above it)")
    print_table(bench_default_and_cache(chosen, n_eval), cols, formats)
    return 0


def fit_rubric(data: str, *, options: FitRubricOptions) -> int:
    """fit the evaluator's scorer to labelled folders; source-held-out CV figures

    Args:
        data: folder of KIND/SOURCE/... images (e.g. real-v1 train/)
        options: the command's options (``FitRubricOptions``)
    """
    options.kind_classes()  # a bad --kind-map fails before the (slow) probe
    report = run_fit_rubric(data, options)
    out = options.out
    md = Path(out).with_suffix(".md")
    print(md.read_text())
    print(f"wrote {out} (use it with --evaluator {out}), {md}, {Path(out).with_suffix('.json')}")
    return 0 if report else 1


def evaluate_kinds(data: str, *, evaluator: list[EvaluatorSpec] | None = None, high: str = "text,charts", mid: str = "natural",
                   low: str = "flat", cache: str | None = None, quiet: bool = False) -> int:
    """AUC and per-kind ratio shares of evaluators on a KIND/... folder

    Args:
        data: folder whose top-level subfolders are content kinds (e.g. real-v1 dev/)
        evaluator: default, rubric, a YAML, distilled:D ... (repeatable)
        high: kinds that need the most tokens
        mid: kinds in the middle
        low: kinds that need the fewest tokens
        cache: score cache file
        quiet: no progress bar
    """
    kinds = lambda t: [x for x in t.split(",") if x]  # noqa: E731
    print(run_evaluate_kinds(data, evaluator or [EvaluatorSpec()], kinds(high), kinds(mid), kinds(low), cache, not quiet))
    return 0


def reencode(src: str, dst: str, *, quality: int = 75, scale: float = 1.0, quiet: bool = False) -> int:
    """copy a folder's images as JPEG (same KIND/SOURCE tree): does an evaluator read the file format?

    Args:
        src: folder of images (e.g. real-v1 dev/)
        dst: the copy (outside src); then: cat-tokenizer evaluate-kinds DST
        quality: JPEG quality, 1..95
        scale: resize factor (Lanczos), e.g. 0.5
        quiet: no progress bar
    """
    written, skipped = reencode_folder(src, dst, quality, scale, progress=not quiet)
    print(f"wrote {written} JPEG images (quality {quality}, scale {scale}) to {dst}; {skipped} unreadable skipped")
    return 0 if written else 1
