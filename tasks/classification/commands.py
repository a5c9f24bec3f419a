"""The classification command of ``cat-tokenizer``: linear probes on frozen latents.

Each is a typed function (``cat_tokenizer.cli.typed`` builds its options and help from the signature and
docstring), registered under the ``cat_tokenizer.commands`` entry-point group in pyproject.toml."""

from __future__ import annotations

from cat_tasks.classification.benchmark import ClassifyOptions, run_benchmark

__all__ = ["classify"]


def classify(*, options: ClassifyOptions) -> int:
    """linear-probe benchmark: CAT adaptive vs fixed ratios on labelled image folders

    Args:
        options: the command's options (``ClassifyOptions``)
    """
    report = run_benchmark(options)
    print(report.read_text())
    print(f"wrote {report} and {report.with_suffix('.csv')}")
    return 0
