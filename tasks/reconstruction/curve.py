"""A training run's per-kind dev curve as a table, and the release check against the shipped tokenizer.

``KindEvaluator`` measures PSNR / SSIM per content kind and ratio on a fixed dev sample every 1000 batches into
``kind_eval.csv`` (a shipped tokenizer keeps its own as ``training_curve.csv``). ``cat-tokenizer curve`` renders
it, batches down, kinds across, so the curve the docs quote is written by a command; with ``--compare`` the last
row is set beside another curve's last row (the shipped tokenizer's, measured on the same sample), which is the
release rule of docs/training.md: ship only when the new run is at least as good at 8x and 16x on every kind.
"""

from __future__ import annotations

import csv
from dataclasses import dataclass
from pathlib import Path

from cat_tokenizer.errors import InputNotFound, UserInputError
from cat_tokenizer.models.hub import BUNDLED_TOKENIZERS, bundled_path

__all__ = ["Curve", "read_curve", "read_demo_report", "curve_table", "release_check", "release_verdict"]

CURVE_NAMES = ("kind_eval.csv", "training_curve.csv")


@dataclass(frozen=True)
class Curve:
    """``psnr[batch][(kind, ratio)]`` of one run, and where it was read from."""

    source: str
    psnr: dict[int, dict[tuple[str, int], float]]

    @property
    def last(self) -> int:
        return max(self.psnr)

    def kinds(self) -> list[str]:
        """Kinds of the last evaluation, ``all`` first."""
        names = sorted({k for k, _ in self.psnr[self.last]} - {"all"})
        return ["all", *names]


def _curve_file(where: str) -> Path:
    """A curve CSV, a folder holding one (a run's log folder, a tokenizer folder), or a bundled tokenizer's name."""
    path = bundled_path(where) if where in BUNDLED_TOKENIZERS else Path(where).expanduser()
    if path.is_file():
        return path
    for name in CURVE_NAMES:
        if (path / name).is_file():
            return path / name
    raise InputNotFound(f"{where}: no {' or '.join(CURVE_NAMES)} there (a run's OUT/run/version_0, a tokenizer folder, "
                        f"or {', '.join(BUNDLED_TOKENIZERS)})")


def read_curve(where: str) -> Curve:
    path = _curve_file(where)
    psnr: dict[int, dict[tuple[str, int], float]] = {}
    try:
        with open(path, newline="") as f:
            for row in csv.DictReader(f):
                psnr.setdefault(int(row["step"]), {})[(row["kind"], int(row["ratio"]))] = float(row["psnr"])
    except (KeyError, ValueError) as err:
        raise UserInputError(f"{path}: not a per-kind curve (columns step, kind, ratio, psnr; {err})") from None
    if not psnr:
        raise UserInputError(f"{path}: the curve has no rows yet")
    return Curve(f"{where} (shipped)" if where in BUNDLED_TOKENIZERS else where, psnr)


def read_demo_report(path: str | Path) -> Curve:
    """The per-kind table of a ``cat-tokenizer demo`` report (``| kind | images | 8x (256 tokens) | ...``, cells
    ``PSNR / SSIM``) as a one-evaluation curve (batch 0): ``release_check`` on two of them is the release rule on
    every dev image rather than on the training curve's sample."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise InputNotFound(f"{path}: no such demo report")
    lines = path.read_text().splitlines()
    head = next((i for i, line in enumerate(lines) if line.startswith("| kind | images |") and "tokens)" in line), None)
    if head is None:
        raise UserInputError(f"{path}: not a demo report (no '| kind | images | 8x (... tokens) |' table)")
    ratios = [int(c.strip().split("x")[0]) for c in lines[head].strip("|").split("|")[2:]]
    values: dict[tuple[str, int], float] = {}
    for line in lines[head + 2:]:
        if not line.startswith("|"):
            break
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        values |= {(cells[0], r): float(c.split("/")[0]) for r, c in zip(ratios, cells[2:])}
    return Curve(str(path), {0: values})


def _cell(values: dict[tuple[str, int], float], key: tuple[str, int]) -> str:
    return f"{values[key]:.2f}" if key in values else ""


def curve_table(curve: Curve, ratio: int = 8, every: int = 1000, compare: Curve | None = None) -> list[str]:
    """Markdown lines: a row per evaluation whose batch is a multiple of ``every`` (and the last); columns ``all`` at
    every ratio, then each kind at ``ratio``; with ``compare``, its last row and the difference."""
    kinds = curve.kinds()
    ratios = sorted({r for (_, r) in curve.psnr[curve.last]})
    cols = [("all", r) for r in ratios] + [(k, ratio) for k in kinds if k != "all"]
    lines = ["| batch | " + " | ".join(f"{k} {r}x" for k, r in cols) + " |", "|---" * (len(cols) + 1) + "|"]
    shown = [b for b in sorted(curve.psnr) if b % every == 0 or b == curve.last]
    lines += [f"| {b} | " + " | ".join(_cell(curve.psnr[b], c) for c in cols) + " |" for b in shown]
    if compare is not None:
        theirs, ours = compare.psnr[compare.last], curve.psnr[curve.last]
        lines.append(f"| {compare.source} at {compare.last} | " + " | ".join(_cell(theirs, c) for c in cols) + " |")
        diff = [f"{ours[c] - theirs[c]:+.2f}" if c in ours and c in theirs else "" for c in cols]
        lines.append(f"| difference at {curve.last} | " + " | ".join(diff) + " |")
    return lines


def release_check(curve: Curve, shipped: Curve, ratios: tuple[int, ...] = (8, 16)) -> list[str]:
    """Where the run's last evaluation is below the shipped one's (kind at ratio, both values); empty: it may ship."""
    ours, theirs = curve.psnr[curve.last], shipped.psnr[shipped.last]
    return [f"{k} {r}x {ours[(k, r)]:.2f} < {theirs[(k, r)]:.2f}" for (k, r) in sorted(theirs)
            if r in ratios and (k, r) in ours and ours[(k, r)] < theirs[(k, r)]]


def release_verdict(below: list[str]) -> str:
    """``release_check``'s answer in words."""
    return "below on " + "; ".join(below) if below else "at least as good everywhere"
