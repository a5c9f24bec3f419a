"""Per-image compression ratios for a dataset: from the complexity evaluator (cached) or a CSV."""

from __future__ import annotations

import csv
import logging
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from cat_tokenizer.errors import InputNotFound, UserInputError
from cat_tokenizer.ratios import check_ratio

__all__ = ["read_ratio_csv", "ratios_from_csv", "ratios_from_evaluator"]

log = logging.getLogger(__name__)


def read_ratio_csv(path: str | Path, root: Path, ratios: Sequence[int]) -> dict[str, int]:
    """``{absolute path: ratio}`` from a CSV with columns ``path`` (relative to ``root`` or absolute)
    and ``ratio``; rows with an empty ratio (unreadable images in a score CSV) are skipped.

    Raises:
        InputNotFound / UserInputError: no such file, missing columns, a ratio outside ``ratios``, or a
            path outside ``root`` (it could never match an image of this folder).
    """
    p = Path(path).expanduser()
    if not p.is_file():
        raise InputNotFound(f"ratio CSV not found: {path}")
    table: dict[str, int] = {}
    with p.open(newline="") as f:
        reader = csv.DictReader(f)
        if not reader.fieldnames or not {"path", "ratio"} <= set(reader.fieldnames):
            raise UserInputError(f"{path}: needs columns 'path' and 'ratio', found {reader.fieldnames}")
        for i, row in enumerate(reader, start=2):
            if not (row["ratio"] or "").strip():
                continue
            try:
                r = check_ratio(int(row["ratio"]), ratios)
            except ValueError:
                raise UserInputError(f"{path}:{i}: bad ratio {row['ratio']!r} (valid: {sorted(ratios)})") from None
            q = Path(row["path"])
            full = q if q.is_absolute() else root / q
            if not full.resolve().is_relative_to(root.resolve()):
                raise UserInputError(f"{path}:{i}: {row['path']} is outside {root}; paths are relative to the scored folder")
            table[str(full)] = r
    return table


def ratios_from_csv(path: str | Path, files: Sequence[Path], root: Path, ratios: Sequence[int]) -> np.ndarray:
    """(N,) ratios for ``files`` from a ``path,ratio`` CSV (e.g. from ``cat-tokenizer score``).

    Raises:
        UserInputError: as ``read_ratio_csv``, or files the CSV does not cover.
    """
    table = read_ratio_csv(path, root, ratios)
    missing = [f for f in files if str(f) not in table]
    if missing:
        raise UserInputError(f"{path} gives no ratio for {len(missing)} of {len(files)} images (first: {missing[0]}); "
                             f"rescore with `cat-tokenizer score {root} --out {path}`")
    return np.array([table[str(f)] for f in files], dtype=np.int64)


def ratios_from_evaluator(evaluator, files: Sequence[Path], cache: Path, progress: bool = False) -> tuple[np.ndarray, list[str]]:
    """(N,) ratios from the evaluator (through the score cache) and the errors of files it could not score."""
    results = evaluator.score_images(files, cache=cache, progress=progress)
    ratios = np.array([r.ratio if r.ratio is not None else 0 for r in results], dtype=np.int64)
    errors = [r.error for r in results if r.error]
    counts = {int(r): int((ratios == r).sum()) for r in np.unique(ratios[ratios > 0])}
    log.info("complexity ratios (%s): %s", evaluator.name, ", ".join(f"{r}x: {n}" for r, n in counts.items()))
    return ratios, errors
