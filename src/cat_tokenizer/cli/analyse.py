"""``cat-tokenizer analyse``: the paper's Section 3.1 on a folder (``tasks.reconstruction.analysis``)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from cat_tokenizer.complexity import ComplexityEvaluator
from cat_tokenizer.devices import resolve_device
from cat_tokenizer.io import load_vae

__all__ = ["analyse_folder"]


def _evaluator(spec: str) -> tuple[str, ComplexityEvaluator]:
    from tasks.reconstruction.analysis import SMOLLM2_EVALUATOR

    if spec == "default":
        return "default evaluator", ComplexityEvaluator.default()
    if spec == "smollm2":
        return "smollm2", ComplexityEvaluator.from_config(SMOLLM2_EVALUATOR)
    return (Path(spec).stem if spec.endswith((".yaml", ".yml")) else spec), ComplexityEvaluator.from_config(spec)


def analyse_folder(root: str, ckpt: str = "cat-small", out: str = "outputs/analysis", evaluators: Sequence[str] = ("default", "smollm2"),
                   image_size: int = 128, crop: str = "native", tolerance_db: float = 1.0, ocr_tolerance: float = 10.0,
                   features: bool | None = True, recon_cache: str | None = None, cache: str | None = None,
                   device: str = "auto", progress: bool = True) -> str:
    """Measure (cached), score, correlate; returns the markdown table."""
    from tasks.reconstruction.analysis import run_analysis
    from tasks.reconstruction.table import measure_folder

    out_dir, root_p = Path(out), Path(root).expanduser()
    named = [_evaluator(e) for e in evaluators]  # bad configs fail before the long part
    vae = load_vae(ckpt).to(resolve_device(device))
    table = measure_folder(root_p, vae, recon_cache or out_dir / "recon_cache", image_size, crop, features=features, progress=progress)
    return run_analysis(table, root_p, named, out_dir, tolerance_db, ocr_tolerance, Path(cache) if cache else out_dir / "scores.sqlite")
