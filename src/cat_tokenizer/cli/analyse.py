"""``cat-tokenizer analyse`` (the paper's Section 3.1): how well does each complexity signal
predict the largest compression ratio an image tolerates?

Per image (centre crop at ``image_size``): reconstruct at every ratio; the *max acceptable
ratio* is the largest ratio whose PSNR stays within ``tolerance_db`` of the 8x reconstruction's
PSNR. The required detail level is ``log2(32 / max ratio)`` (0: 32x is fine ... 2: needs 8x).
Signals: JPEG bits per pixel, reconstruction MSE at 16x, LPIPS at 16x (when its weights are on
disk), and the score of each evaluator given (rubric, LLM ...). For each: Pearson and Spearman
correlation with the detail level, and agreement (share of images whose ratio it gets right)
when the signal is mapped to ratios by thresholds matched to the max-ratio histogram (quantile
matching; evaluators also by their own thresholds).
"""

from __future__ import annotations

import csv
import logging
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from scipy import stats

from cat_tokenizer.complexity import ComplexityEvaluator
from cat_tokenizer.complexity.probe import jpeg_bits_per_pixel
from cat_tokenizer.data.datamodule import image_transform
from cat_tokenizer.devices import resolve_device
from cat_tokenizer.data.images import UnreadableImage, list_images, load_rgb
from cat_tokenizer.errors import UserInputError
from cat_tokenizer.metrics.image import to_pil
from cat_tokenizer.models.nested_vae import NestedVAE

__all__ = ["max_acceptable_ratio", "quantile_matched_ratios", "run_analysis"]

log = logging.getLogger(__name__)


def max_acceptable_ratio(psnr: dict[int, float], tolerance_db: float) -> int:
    """Largest ratio whose PSNR is within ``tolerance_db`` of the smallest ratio's PSNR."""
    ratios = sorted(psnr)
    ok = [r for r in ratios if psnr[r] >= psnr[ratios[0]] - tolerance_db]
    return max(ok)


def quantile_matched_ratios(signal: np.ndarray, target_ratios: np.ndarray, higher_is_complex: bool = True) -> np.ndarray:
    """Ratios from a signal, by ranking: the most complex images get the smallest ratios, in the
    same proportions as ``target_ratios`` (so agreement measures ranking, not calibration)."""
    order = np.argsort(-signal if higher_is_complex else signal, kind="stable")
    out = np.empty_like(target_ratios)
    out[order] = np.sort(target_ratios)
    return out


@torch.no_grad()
def _reconstruction_errors(vae: NestedVAE, x: torch.Tensor, lpips=None) -> dict[int, dict[str, float]]:
    out = {}
    for r in vae.ratios:
        x_hat = vae.reconstruct(x, r)
        mse = float(((x_hat - x) / 2).pow(2).mean())
        out[r] = {"mse": mse, "psnr": float(10 * np.log10(1.0 / max(mse, 1e-12)))}
        if lpips is not None:
            out[r]["lpips"] = float(lpips(x_hat, x).mean())
    return out


def run_analysis(
    root: str | Path,
    vae: NestedVAE,
    evaluators: Sequence[tuple[str, ComplexityEvaluator]],
    out_dir: str | Path,
    image_size: int = 256,
    tolerance_db: float = 1.0,
    lpips_weights: str | None = None,
    cache: str | Path | None = None,
    device: str = "cpu",
) -> str:
    """Compute the table, write ``analysis.md``, ``per_image.csv`` and ``scatter.png``; return the table."""
    out_dir = Path(out_dir)
    device = resolve_device(device)
    files = list_images(root)
    out_dir.mkdir(parents=True, exist_ok=True)
    lpips = None
    if lpips_weights:
        from cat_tokenizer.losses.lpips import LPIPS

        lpips = LPIPS(backbone_weights=lpips_weights).to(device).eval()
    vae = vae.to(device).eval()
    tf = image_transform(image_size, train=False)
    rows = []
    for f in files:
        try:
            img = load_rgb(f)
        except UnreadableImage as err:
            log.warning("skipping %s", err)
            continue
        x = tf(img)[None].to(device)  # (1, 3, S, S)
        err = _reconstruction_errors(vae, x, lpips)
        crop = to_pil(x[0])
        row = {"path": f.relative_to(root).as_posix(), "max_ratio": max_acceptable_ratio({r: e["psnr"] for r, e in err.items()}, tolerance_db),
               "jpeg_bpp": jpeg_bits_per_pixel(crop), "mse_16x": err[16]["mse"] if 16 in err else err[vae.ratios[1]]["mse"]}
        if lpips is not None:
            row["lpips_16x"] = err[16]["lpips"]
        row.update({f"psnr_{r}x": e["psnr"] for r, e in err.items()})
        rows.append(row)
    if len(rows) < 3:
        raise UserInputError(f"need at least 3 readable images to correlate, found {len(rows)} under {root}")
    paths = [Path(root) / r["path"] for r in rows]
    own: dict[str, np.ndarray] = {}
    for name, ev in evaluators:
        res = ev.score_images(paths, cache=cache, progress=True)
        for row, r in zip(rows, res):
            row[f"score_{name}"] = r.score
            row[f"ratio_{name}"] = r.ratio
        own[name] = np.array([r.ratio for r in res])
    target = np.array([r["max_ratio"] for r in rows])
    level = np.log2(32 / target)
    signals = ["jpeg_bpp", "mse_16x"] + (["lpips_16x"] if lpips is not None else []) + [f"score_{n}" for n, _ in evaluators]
    lines = [f"# Complexity signals vs max acceptable ratio ({len(rows)} images, {image_size}px, tolerance {tolerance_db:g} dB PSNR)",
             "", "Max acceptable ratio histogram: " + ", ".join(f"{r}x {int((target == r).sum())}" for r in sorted(set(vae.ratios))),
             "", "| signal | Pearson r | Spearman rho | agreement (rank-matched) | agreement (own thresholds) |", "|---|---|---|---|---|"]
    for s in signals:
        v = np.array([r[s] for r in rows], dtype=np.float64)
        if np.ptp(v) == 0 or np.ptp(level) == 0:
            pr = sr = float("nan")
        else:
            pr, sr = stats.pearsonr(v, level)[0], stats.spearmanr(v, level)[0]
        agree = float((quantile_matched_ratios(v, target) == target).mean())
        name = s.removeprefix("score_")
        mine = f"{100 * float((own[name] == target).mean()):.0f}%" if name in own else "-"
        lines.append(f"| {s} | {pr:+.2f} | {sr:+.2f} | {100 * agree:.0f}% | {mine} |")
    lines += ["", "Positive correlation = the signal rises with the detail an image needs. Files: per_image.csv, scatter.png", ""]
    table = "\n".join(lines)
    (out_dir / "analysis.md").write_text(table)
    with open(out_dir / "per_image.csv", "w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    _scatter(rows, signals, level, out_dir / "scatter.png")
    return table


def _scatter(rows: list[dict], signals: list[str], level: np.ndarray, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(signals), figsize=(3.2 * len(signals), 3.0), squeeze=False)
    jitter = np.random.default_rng(0).uniform(-0.12, 0.12, len(level))
    for ax, s in zip(axes[0], signals):
        ax.scatter([r[s] for r in rows], level + jitter, s=12, alpha=0.7)
        ax.set_xlabel(s)
        ax.set_yticks([0, 1, 2], ["32x", "16x", "8x"])
    axes[0][0].set_ylabel("max acceptable ratio")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
