"""``cat-tokenizer analyse``: the paper's Section 3.1 on any folder.

Per image (the cached measurements of ``table.measure_folder``): the *maximum acceptable ratio* is
the largest ratio whose PSNR is within ``tolerance_db`` of the 8x reconstruction's and, for a
text-bearing crop, whose OCR word confidence is within ``ocr_tolerance`` points of the 8x one's.
Its detail level is ``log2(32 / ratio)`` (0: 32x is fine ... 2: needs 8x).

Candidate complexity scores, each against that level: Pearson r, Spearman rho, and agreement (the
share of images whose ratio it gets right) when mapped to ratios by rank with the true histogram
(so agreement measures ranking, not calibration) and, for evaluators, by their own thresholds:

* MSE of the 16x reconstruction; JPEG bits per pixel of the crop (the paper's baselines);
* the L2 distance of Inception pool features between the crop and its 16x reconstruction: the offline
  stand-in for the paper's LPIPS (LPIPS weights are not available offline);
* each evaluator given (default: the offline default and the SmolLM2 LLM path; a distilled head with
  ``distilled:D``).

The paper (CAT, Sec. 3.1, ImageNet): 56% of images tolerate 16x or more; MSE, JPEG size and LPIPS
correlate with the acceptable ratio at Pearson r <= 0.36; the LLM score at r = 0.55 with 62% agreement.
"""

from __future__ import annotations

import csv
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
from scipy import stats

from cat_tasks.reconstruction.rd import head_predictions
from cat_tasks.reconstruction.table import ReconTable, measure_folder
from cat_tokenizer.complexity import ComplexityEvaluator, EvaluatorSpec
from cat_tokenizer.devices import resolve_device
from cat_tokenizer.errors import UserInputError
from cat_tokenizer.io import load_vae
from cat_tokenizer.markdown import md_header
from cat_tokenizer.options import FEATURES
from cat_tokenizer.outputs import publish_report

__all__ = ["max_acceptable_ratio", "max_acceptable_ratios", "quantile_matched_ratios", "signal_table", "run_analysis", "analyse_folder",
           "PAPER"]

log = logging.getLogger(__name__)

# Section 3.1 of the paper (ImageNet, its tokenizer): what each row is compared with.
PAPER = {"MSE (16x)": "r <= 0.36", "JPEG size": "r <= 0.36", "Inception distance (16x)": "LPIPS: r <= 0.36",
         "LLM": "r = 0.55, 62% agreement"}


def max_acceptable_ratio(psnr: dict[int, float], tolerance_db: float, ocr: dict[int, float] | None = None,
                         ocr_tolerance: float = 10.0) -> int:
    """Largest ratio whose PSNR is within ``tolerance_db`` of the smallest ratio's (and, with ``ocr``,
    whose OCR confidence is within ``ocr_tolerance`` points of the smallest ratio's)."""
    ratios = sorted(psnr)
    ok = [r for r in ratios if psnr[r] >= psnr[ratios[0]] - tolerance_db
          and (ocr is None or ocr[r] >= ocr[ratios[0]] - ocr_tolerance)]
    return max(ok)


def max_acceptable_ratios(table: ReconTable, tolerance_db: float = 1.0, ocr_tolerance: float = 10.0,
                          mse_tolerance: float | None = None) -> np.ndarray:
    """``max_acceptable_ratio`` for every image of the table: (N,) ratios. With ``mse_tolerance`` the
    paper's absolute form: MSE (pixels in [0, 1]) at most that much above 8x's, instead of a PSNR drop."""
    if mse_tolerance is not None:
        ok = table.mse <= table.mse[:, :1] + mse_tolerance  # (N, R)
    else:
        ok = table.psnr >= table.psnr[:, :1] - tolerance_db  # (N, R)
    text = table.text_bearing
    ok[text] &= table.ocr[text] >= table.ocr[text, :1] - ocr_tolerance
    return _largest(ok, table.ratios)


def _largest(ok: np.ndarray, ratios: Sequence[int]) -> np.ndarray:
    """(N, R) acceptable ratios -> (N,) the largest acceptable ratio of each image."""
    return np.array([np.asarray(ratios)[np.flatnonzero(row)].max() for row in ok])


def quantile_matched_ratios(signal: np.ndarray, target_ratios: np.ndarray, higher_is_complex: bool = True) -> np.ndarray:
    """Ratios from a signal, by ranking: the most complex images get the smallest ratios, in the
    same proportions as ``target_ratios`` (so agreement measures ranking, not calibration)."""
    order = np.argsort(-signal if higher_is_complex else signal, kind="stable")
    out = np.empty_like(target_ratios)
    out[order] = np.sort(target_ratios)
    return out


def signal_table(signals: dict[str, np.ndarray], target: np.ndarray, own: dict[str, np.ndarray] | None = None) -> list[dict]:
    """Per signal: Pearson r and Spearman rho with the detail level, agreement rank-matched and with its own ratios."""
    level = np.log2(32 / target)
    rows = []
    for name, v in signals.items():
        v = np.asarray(v, np.float64)
        if np.ptp(v) == 0 or np.ptp(level) == 0:
            pr = sr = float("nan")
        else:
            pr, sr = float(stats.pearsonr(v, level)[0]), float(stats.spearmanr(v, level)[0])
        mine = own.get(name) if own else None
        rows.append({"signal": name, "pearson": pr, "spearman": sr,
                     "agreement_ranked": float((quantile_matched_ratios(v, target) == target).mean()),
                     "agreement_own": float((mine == target).mean()) if mine is not None else float("nan")})
    return rows


def _r(v: float) -> str:
    """A correlation, or "undefined" where the target (or the signal) is one value for every image."""
    return "undefined" if np.isnan(v) else f"{v:+.2f}"


def _pct(v: float) -> str:
    return "-" if np.isnan(v) else f"{100 * v:.0f}%"


def run_analysis(table: ReconTable, root: Path, evaluators: Sequence[tuple[str, ComplexityEvaluator]], out_dir: Path,
                 tolerance_db: float = 1.0, ocr_tolerance: float = 10.0, cache: Path | None = None,
                 mse_tolerance: float = 0.001, predicted: np.ndarray | None = None) -> str:
    """The table as markdown; writes analysis.md, per_image.csv, scatter.png. ``predicted``: a distortion
    head's (N, R) PSNRs, a candidate signal (its predicted 8x - 32x drop; its own ratios: the maximum
    acceptable ratio of the predictions)."""
    if len(table) < 3:
        raise UserInputError(f"need at least 3 readable images to correlate, found {len(table)} under {root}")
    target = max_acceptable_ratios(table, tolerance_db, ocr_tolerance)
    absolute = max_acceptable_ratios(table, tolerance_db, ocr_tolerance, mse_tolerance)
    signals, own = _signals(table, root, evaluators, cache, predicted, tolerance_db)
    rows = signal_table(signals, target, own)
    signals_abs, own_abs = dict(signals), {}
    if predicted is not None:
        signals_abs["distortion head"], own_abs["distortion head"] = head_signal(predicted, table.ratios, mse_tolerance=mse_tolerance)
    rows_abs = signal_table(signals_abs, absolute, own_abs)
    lines = [f"# Section 3.1 on {len(table)} images of {root} ({table.image_size} px)", "",
             f"Maximum acceptable ratio: the largest ratio within {tolerance_db:g} dB PSNR of 8x (and, on the "
             f"{int(table.text_bearing.sum())} text-bearing crops, within {ocr_tolerance:g} points of 8x's OCR confidence).", "",
             *_histogram(table, target), "",
             f"{100 * float((target >= 16).mean()):.0f}% of images tolerate 16x or more (paper, ImageNet: 56%).", "",
             *md_header("signal", "Pearson r", "Spearman rho", "agreement (rank-matched)", "agreement (own thresholds)", "paper")]
    for r in rows:
        paper = PAPER.get(r["signal"], PAPER["LLM"] if r["signal"] in ("smollm2",) else "")
        lines.append(f"| {r['signal']} | {_r(r['pearson'])} | {_r(r['spearman'])} | {_pct(r['agreement_ranked'])} | "
                     f"{_pct(r['agreement_own'])} | {paper} |")
    kind_arr, kinds = np.array(table.kinds), sorted(set(table.kinds))
    lines += ["", f"The paper's absolute form: the largest ratio whose MSE (pixels in [0, 1]) is at most {mse_tolerance:g} above "
              f"8x's (same OCR rule): {100 * float((absolute >= 16).mean()):.0f}% of images tolerate 16x or more; "
              + ", ".join(f"{k} {int((absolute[kind_arr == k] >= 16).sum())}/{int((kind_arr == k).sum())}" for k in kinds) + ".", "",
              *md_header("signal", "Pearson r", "Spearman rho", "agreement (rank-matched)", "agreement (own ratios)")]
    for r in rows_abs:
        lines.append(f"| {r['signal']} | {_r(r['pearson'])} | {_r(r['spearman'])} | {_pct(r['agreement_ranked'])} | "
                     f"{_pct(r['agreement_own'])} |")
    lines += ["", "Positive r: the signal rises with the detail an image needs. Inception distance is the offline "
              "stand-in for the paper's LPIPS (no LPIPS weights offline). Rank-matched agreement gives every signal the "
              "true ratio histogram; own thresholds are the evaluator's ratios as it would assign them.", "",
              "Files: analysis.md, per_image.csv, scatter.png", ""]
    text = "\n".join(lines)
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "analysis.md").write_text(text)
    _write_per_image(table, target, signals, out_dir / "per_image.csv")
    _scatter(signals, np.log2(32 / target), out_dir / "scatter.png")
    return text


def _signals(table: ReconTable, root: Path, evaluators: Sequence[tuple[str, ComplexityEvaluator]], cache: Path | None,
             predicted: np.ndarray | None, tolerance_db: float) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
    """Every candidate signal per image (measured distortions, JPEG size, Inception distance, each evaluator's
    score, the distortion head's predicted drop) and, where a signal has them, its own ratios."""
    j16 = list(table.ratios).index(16) if 16 in table.ratios else len(table.ratios) // 2
    signals: dict[str, np.ndarray] = {"MSE (16x)": table.mse[:, j16], "JPEG size": table.jpeg_bpp}
    if table.feats is not None:
        d = table.feats[:, j16].astype(np.float32) - table.feats_orig.astype(np.float32)
        signals["Inception distance (16x)"] = np.linalg.norm(d, axis=1)
    own: dict[str, np.ndarray] = {}
    paths = [root / p for p in table.paths]
    for name, ev in evaluators:
        res = ev.score_images(paths, cache=cache, progress=True)
        s = np.array([np.nan if r.score is None else r.score for r in res])
        if np.isnan(s).all():
            log.warning("evaluator %s scored no image; left out", name)
            continue
        signals[name] = np.where(np.isnan(s), np.nanmedian(s), s)
        own[name] = np.array([r.ratio or 0 for r in res])
    if predicted is not None:
        signals["distortion head"], own["distortion head"] = head_signal(predicted, table.ratios, tolerance_db=tolerance_db)
    return signals, own


def head_signal(predicted: np.ndarray, ratios: Sequence[int], tolerance_db: float | None = None,
                mse_tolerance: float | None = None) -> tuple[np.ndarray, np.ndarray]:
    """A distortion head's (N, R) predicted PSNRs as a signal of either form of Section 3.1, with its own ratios:
    the relative form's predicted dB drop from 8x to the coarsest ratio and the largest ratio predicted within
    ``tolerance_db``; the absolute form's (``mse_tolerance``) predicted MSE increase, so that a flat image whose
    PSNR falls far from a high 8x (a small MSE) is not read as needing detail."""
    mse = 10.0 ** (-np.asarray(predicted, np.float64) / 10)  # pixels in [0, 1]
    if mse_tolerance is not None:
        signal, ok = mse[:, -1] - mse[:, 0], mse <= mse[:, :1] + mse_tolerance
    else:
        signal, ok = predicted[:, 0] - predicted[:, -1], predicted >= predicted[:, :1] - tolerance_db
    return signal, _largest(ok, ratios)


def _histogram(table: ReconTable, target: np.ndarray) -> list[str]:
    """Markdown: images per maximum acceptable ratio, per kind and overall."""
    kind_arr = np.array(table.kinds)
    lines = md_header("kind", "images", *(f"{r}x" for r in table.ratios), "16x or more")
    for kind in [*sorted(set(table.kinds)), "all"]:
        sel = np.ones(len(target), bool) if kind == "all" else kind_arr == kind
        hist = " | ".join(f"{int((target[sel] == r).sum())}" for r in table.ratios)
        lines.append(f"| {kind} | {int(sel.sum())} | {hist} | {_pct(float((target[sel] >= 16).mean()))} |")
    return lines


def _write_per_image(table: ReconTable, target: np.ndarray, signals: dict[str, np.ndarray], path: Path) -> None:
    ratios = table.ratios
    with open(path, "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["path", "kind", "max_ratio", *(f"psnr_{r}x" for r in ratios), *(f"ocr_{r}x" for r in ratios), *signals])
        for i, p in enumerate(table.paths):
            w.writerow([p, table.kinds[i], int(target[i]), *(f"{v:.3f}" for v in table.psnr[i]),
                        *("" if np.isnan(v) else f"{v:.1f}" for v in table.ocr[i]), *(f"{signals[s][i]:.5g}" for s in signals)])


def _scatter(signals: dict[str, np.ndarray], level: np.ndarray, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(signals), figsize=(3.2 * len(signals), 3.0), squeeze=False)
    jitter = np.random.default_rng(0).uniform(-0.12, 0.12, len(level))
    for ax, (name, v) in zip(axes[0], signals.items()):
        ax.scatter(v, level + jitter, s=10, alpha=0.6)
        ax.set_xlabel(name, fontsize=8)
        ax.set_yticks([0, 1, 2], ["32x", "16x", "8x"])
    axes[0][0].set_ylabel("max acceptable ratio")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


@dataclass(frozen=True)
class AnalyseOptions:
    """The options of ``cat-tokenizer analyse`` (and of ``analyse_folder``).

    Args:
        ckpt: the nested VAE: cat-small (shipped), a folder, .ckpt or hub id
        evaluator: evaluator whose score is a signal: default, smollm2, a YAML, distilled:D (repeatable; default: default
            and smollm2)
        out: output folder
        image_size: image side in pixels
        crop: crop policy (as in training)
        tolerance_db: PSNR drop vs 8x still acceptable (dB)
        ocr_tolerance: OCR confidence drop vs 8x still acceptable (points)
        mse_tolerance: the paper's absolute form, reported beside: MSE increase vs 8x still acceptable (pixels in [0, 1])
        features: Inception features (the LPIPS stand-in)
        recon_cache: reconstruction cache folder (default OUT/recon_cache; rd's works too)
        cache: score cache file
        distortion_head: a tokenizer folder with a distortion head, as a candidate signal
        device: auto, cpu, cuda ...
        quiet: no progress bars
        report: also copy analysis.md and scatter.png into this folder, e.g. docs/reports/analyse-dev-128
    """

    ckpt: str = "cat-small"
    evaluator: list[EvaluatorSpec] | None = None
    out: str = "outputs/analysis"
    image_size: int = 128
    crop: Literal["native", "resize"] = "native"
    tolerance_db: float = 1.0
    ocr_tolerance: float = 10.0
    mse_tolerance: float = 0.001
    features: Literal["auto", "on", "off"] = "on"
    recon_cache: str | None = None
    cache: str | None = None
    distortion_head: str | None = None
    device: str = "auto"
    quiet: bool = False
    report: str | None = None


def analyse_folder(root: str, o: AnalyseOptions = AnalyseOptions()) -> str:
    """Measure (cached), score, correlate; returns the markdown table."""

    out_dir, root_p = Path(o.out), Path(root).expanduser()
    specs = o.evaluator or [EvaluatorSpec("default"), EvaluatorSpec("smollm2")]
    named = [(spec.name, ComplexityEvaluator.from_config(spec)) for spec in specs]  # bad configs fail before the long part
    vae = load_vae(o.ckpt).to(resolve_device(o.device))
    table = measure_folder(root_p, vae, o.recon_cache or out_dir / "recon_cache", o.image_size, o.crop,
                           features=FEATURES[o.features], progress=not o.quiet)
    predicted = head_predictions(o.distortion_head, vae, table, root_p).psnr if o.distortion_head else None
    text = run_analysis(table, root_p, named, out_dir, o.tolerance_db, o.ocr_tolerance,
                        Path(o.cache) if o.cache else out_dir / "scores.sqlite", o.mse_tolerance, predicted)
    if o.report is not None:
        publish_report(out_dir, ("analysis.md", "scatter.png"), o.report)
    return text
