"""The complexity commands of ``cat-tokenizer``: score images or prompts, fit and evaluate the evaluator, and
the JPEG re-encoding check.

Each is a typed function (``cat_tokenizer.cli.typed`` builds its options and help from the signature and
docstring), registered under the ``cat_tokenizer.commands`` entry-point group in pyproject.toml."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from cat_tasks.complexity.bench import bench_default_and_cache, bench_scorers, spread
from cat_tasks.complexity.fit import RATIO_CLASS, run_evaluate_kinds, run_fit_rubric
from cat_tasks.complexity.reencode import reencode_folder
from cat_tasks.complexity.score import run_score
from cat_tokenizer.data.default_data import ensure_default_data
from cat_tokenizer.data.images import list_images
from cat_tokenizer.errors import UserInputError
from cat_tokenizer.options import parse_numbers, print_table

__all__ = ["score", "bench_score", "fit_rubric", "evaluate_kinds", "reencode"]


def score(dir: str | None = None, *, text: list[str] | None = None, out: str | None = None, evaluator: str | None = None,
          cache: str | None = None, budget: str | None = None, image_size: int | None = None, thresholds: str | None = None,
          overrides: str | None = None, ratio: Literal[8, 16, 32] | None = None, quiet: bool = False,
          overwrite: bool = False) -> int:
    """complexity score, ratio and description per image (or prompt) -> CSV

    Args:
        dir: image folder (searched recursively)
        text: score this prompt or class name instead (repeatable)
        out: CSV to write (path, score, ratio, description, evaluator)
        evaluator: evaluator YAML (class_path/init_args); default: probe describer + rule rubric
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
    results, summary = run_score(dir, text or [], out, evaluator, cache, budget, image_size,
                                 parse_numbers(thresholds, "--thresholds", float), overrides, ratio, progress=not quiet,
                                 overwrite=overwrite)
    if not out:
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


def fit_rubric(data: str, *, out: str, eval: str | None = None, target: str = "kinds", kind_map: str | None = None,
               ratio_column: str = "ratio", ocr: bool = False, no_faces: bool = False, c: float = 1.0,
               face_points: float = 1.5, max_files: int | None = None, quiet: bool = False) -> int:
    """fit the evaluator's scorer to labelled folders; source-held-out CV figures

    Args:
        data: folder of KIND/SOURCE/... images (e.g. real-v1 train/)
        out: evaluator YAML to write (a .md report, .json and .facts.csv cache go beside it)
        eval: a held-out folder to report on with the final model (e.g. real-v1 dev/)
        target: kinds (top-level folders as weak labels) or csv:FILE (path + ratio column)
        kind_map: kind=ratio pairs (default text=8,charts=8,natural=16,flat=32)
        ratio_column: with csv:FILE, the column holding 8/16/32 (analyse: max_ratio)
        ocr: add Tesseract facts (slow: about 5 img/s here)
        no_faces: no face detection
        c: inverse L2 strength of the logistic regression
        face_points: score points a detected face adds (1.5 lifts a typical photo, 5.5, to the 8x threshold 7)
        max_files: fit on a seeded sample of this many files
        quiet: no progress bar
    """
    mapping = None
    if kind_map:
        try:
            mapping = {k: RATIO_CLASS[int(v)] for k, v in (item.split("=") for item in kind_map.split(","))}
        except (ValueError, KeyError):
            raise UserInputError(f"--kind-map takes kind=ratio pairs with ratios 8, 16, 32, e.g. text=8,natural=16,flat=32; "
                                 f"got {kind_map!r}") from None
    report = run_fit_rubric(data, out, eval, target, mapping, ratio_column, ocr, not no_faces, c, face_points, max_files,
                            progress=not quiet)
    md = Path(out).with_suffix(".md")
    print(md.read_text())
    print(f"wrote {out} (use it with --evaluator {out}), {md}, {Path(out).with_suffix('.json')}")
    return 0 if report else 1


def evaluate_kinds(data: str, *, evaluator: list[str] | None = None, high: str = "text,charts", mid: str = "natural",
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
    print(run_evaluate_kinds(data, evaluator or ["default"], kinds(high), kinds(mid), kinds(low), cache, not quiet))
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
