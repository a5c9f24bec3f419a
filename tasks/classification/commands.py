"""The classification command of ``cat-tokenizer``: linear probes on frozen latents.

Each is a typed function (``cat_tokenizer.cli.typed`` builds its options and help from the signature and
docstring), registered under the ``cat_tokenizer.commands`` entry-point group in pyproject.toml."""

from __future__ import annotations

from cat_tasks.classification.benchmark import run_benchmark
from cat_tokenizer.complexity import ComplexityEvaluator

__all__ = ["classify"]


def classify(*, ckpt: str, datasets: tuple[str, ...] = ("mnist", "digits", "lfw"), out: str = "outputs/classify",
             image_size: int = 64, epochs: int = 15, batch_size: int = 64, lr: float = 3e-3, max_per_class: int = 100,
             evaluator: str | None = None, accelerator: str = "auto") -> int:
    """linear-probe benchmark: CAT adaptive vs fixed ratios on labelled image folders

    Args:
        ckpt: the frozen nested VAE (folder, .ckpt or hub id)
        datasets: bundled sets (mnist, digits, lfw) or folders with class subfolders
        out: output folder
        image_size: image side in pixels
        epochs: probe epochs
        batch_size: probe batch size
        lr: probe learning rate
        max_per_class: images per class (0: all)
        evaluator: evaluator YAML for the adaptive ratios (default: the fitted default evaluator; 'rubric' for the hand rubric)
        accelerator: Lightning accelerator
    """
    report = run_benchmark(ckpt, datasets, out, image_size, epochs, batch_size, lr, None if max_per_class <= 0 else max_per_class,
                           ComplexityEvaluator.from_config(evaluator, image_size), accelerator=accelerator)
    print(report.read_text())
    print(f"wrote {report} and {report.with_suffix('.csv')}")
    return 0
