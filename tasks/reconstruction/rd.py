"""``cat-tokenizer rd``: rate-distortion of token allocations on a folder, CAT against its baselines.

Every image is reconstructed once at every ratio (``table.measure_folder``, cached). An *allocation*
gives each image one ratio; its rate is the mean token count and its distortion the mean PSNR / SSIM
(and OCR confidence on text-bearing images, rFID at a few budgets) of the chosen reconstructions.
Compared at matched mean tokens, sweeping the budget from the 32x mean to the 8x mean:

* ``fixed 8x / 16x / 32x``: one point each;
* ``CAT (<evaluator>)``: the evaluator's scores, its own thresholds shifted together until the mean
  tokens match each budget (``RatioMapper.calibrate_shift``: the spread over the three ratios is kept);
* ``JPEG size``: JPEG bits per pixel of the crop as the score (the naive baseline), anchored at its terciles;
* ``random``: random scores, anchored at their terciles, shifted to the budget (mean of 5 seeds);
* ``oracle``: the allocation with the highest mean PSNR within the budget given the measured
  PSNRs (an exact multiple-choice knapsack; Lagrangian relaxation for very large folders): the upper
  bound any evaluator can reach.
"""

from __future__ import annotations

import csv
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from cat_tasks.reconstruction.table import ReconTable
from cat_tokenizer.complexity import ComplexityEvaluator, RatioMapper
from cat_tokenizer.errors import UserInputError
from cat_tokenizer.markdown import md_header

__all__ = ["Allocation", "oracle_allocation", "score_allocation", "rd_curves", "headline", "write_rd", "RD_COLUMNS"]

log = logging.getLogger(__name__)

RD_COLUMNS = ["method", "budget", "mean_tokens", "psnr", "ssim", "ocr_conf", "rfid", "share_8x", "share_16x", "share_32x"]


@dataclass
class Allocation:
    """Per-image ratio indices (into the table's ratios) chosen by ``method`` for ``budget``."""

    method: str
    budget: float
    idx: np.ndarray  # (N,) int


def oracle_allocation(values: np.ndarray, costs: Sequence[int], budget_mean: float, exact_limit: float = 5e7) -> np.ndarray:
    """Per-image choices maximising ``sum(values[i, choice_i])`` with mean cost <= ``budget_mean``.

    Args:
        values: (N, R) value of each choice (e.g. PSNR at each ratio).
        costs: (R,) integer cost of each choice (tokens).
        budget_mean: allowed mean cost per image.
        exact_limit: above N * budget units, use the Lagrangian relaxation instead of the exact DP.

    Returns:
        (N,) choice indices.
    """
    values = np.asarray(values, np.float64)
    costs = np.asarray(costs, np.int64)
    n, r = values.shape
    if budget_mean < costs.min():
        raise UserInputError(f"budget {budget_mean:g} is below the cheapest choice ({costs.min()})")
    unit = int(np.gcd.reduce(costs))
    units = costs // unit
    total = int(np.floor(budget_mean * n / unit + 1e-9))
    total = min(total, int(units.max()) * n)
    if n * (total + 1) > exact_limit:
        return _lagrangian(values, costs, budget_mean)
    neg = -np.inf
    dp = np.zeros(total + 1)  # best value of the images so far with cost <= b (the empty set costs 0)
    choice = np.zeros((n, total + 1), np.int8)
    for i in range(n):
        best = np.full(total + 1, neg)
        for c in range(r):
            u = int(units[c])
            if u > total:
                continue
            cand = np.full(total + 1, neg)
            cand[u:] = dp[: total + 1 - u] + values[i, c]
            better = cand > best
            best[better], choice[i, better] = cand[better], c
        dp = best
    out = np.zeros(n, np.int64)
    b = total
    for i in range(n - 1, -1, -1):  # backtrack
        out[i] = choice[i, b]
        b -= int(units[out[i]])
    return out


def _lagrangian(values: np.ndarray, costs: np.ndarray, budget_mean: float) -> np.ndarray:
    """Each image maximises value - lam * cost; lam bisected until the mean cost fits the budget."""
    lo, hi = 0.0, float(np.ptp(values) + 1) * 10
    pick = lambda lam: np.argmax(values - lam * costs[None, :], axis=1)  # noqa: E731
    for _ in range(60):
        mid = (lo + hi) / 2
        if costs[pick(mid)].mean() > budget_mean:
            lo = mid
        else:
            hi = mid
    return pick(hi)


def score_allocation(scores: np.ndarray, budget: float, image_size: int, ratios: Sequence[int],
                     anchor: Sequence[float] | None = None) -> np.ndarray:
    """Ratio indices from complexity scores: the ``anchor`` thresholds (default: the scores' terciles)
    shifted together until the mean tokens match ``budget``."""
    if anchor is None:
        anchor = np.quantile(scores, np.linspace(0, 1, len(ratios) + 1)[1:-1]).tolist()
    mapped = RatioMapper.calibrate_shift(scores, budget, image_size, anchor, ratios)(scores)
    return np.searchsorted(np.asarray(ratios), mapped)


class _Features(nn.Module):
    """Pass-through 'extractor' so torchmetrics' FID can take precomputed Inception features."""

    num_features = 2048

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x


def _rfid(table: ReconTable, idx: np.ndarray) -> float:
    from torchmetrics.image.fid import FrechetInceptionDistance

    fid = FrechetInceptionDistance(feature=_Features(), normalize=False)
    fid.update(torch.from_numpy(table.feats_orig.astype(np.float32)), real=True)
    fid.update(torch.from_numpy(table.feats[np.arange(len(idx)), idx].astype(np.float32)), real=False)
    return float(fid.compute())


def _metrics(table: ReconTable, idx: np.ndarray, rfid: bool) -> dict:
    rows = np.arange(len(table))
    text = table.text_bearing
    out = {"mean_tokens": float(table.tokens(idx).mean()), "psnr": float(table.psnr[rows, idx].mean()),
           "ssim": float(table.ssim[rows, idx].mean()),
           "ocr_conf": float(np.mean(table.ocr[rows, idx][text])) if text.any() else float("nan"),
           "rfid": _rfid(table, idx) if rfid and table.feats is not None else float("nan")}
    for j, r in enumerate(table.ratios):
        out[f"share_{r}x"] = float((idx == j).mean())
    return out


def default_budgets(table: ReconTable, points: int = 13) -> list[float]:
    """Evenly spaced from the largest ratio's tokens to the smallest's, plus each fixed ratio's."""
    fixed = [float(t) for t in table.tokens(np.arange(len(table.ratios)))]
    return sorted(set(np.round(np.linspace(min(fixed), max(fixed), points), 1).tolist()) | set(fixed))


def rd_curves(table: ReconTable, scores: dict[str, tuple[np.ndarray, Sequence[float] | None]],
              budgets: Sequence[float] | None = None, seeds: int = 5) -> tuple[list[dict], dict[tuple[str, float], np.ndarray]]:
    """Rows of ``RD_COLUMNS`` for fixed ratios, each scored method (``{name: (scores, anchor thresholds
    or None)}``), JPEG size, random and oracle at each budget.

    Returns ``(rows, allocations)`` with allocations keyed by (method, budget) (random: seed 0).
    """
    budgets = list(budgets or default_budgets(table))
    ratios, n = table.ratios, len(table)
    costs = table.tokens(np.arange(len(ratios)))
    ref = float(costs[list(ratios).index(16)]) if 16 in ratios else float(np.median(costs))
    fid_at = set(float(c) for c in costs) | {ref}
    rows, allocs = [], {}

    def add(method: str, budget: float, idx: np.ndarray, metrics: dict | None = None) -> None:
        allocs[(method, budget)] = idx
        m = metrics or _metrics(table, idx, rfid=budget in fid_at)
        rows.append({"method": method, "budget": budget, **m})

    for j, r in enumerate(ratios):
        add(f"fixed {r}x", float(costs[j]), np.full(n, j))
    methods = {**scores, "JPEG size": (table.jpeg_bpp.astype(np.float64), None)}
    for name, (s, anchor) in methods.items():
        s = np.asarray(s, np.float64)
        if np.ptp(s) == 0:
            log.warning("%s: every image has the same score (%g); it cannot rank them, left out of the curves", name, s[0])
            continue
        for b in budgets:
            add(name, b, score_allocation(s, b, table.image_size, ratios, anchor))
    for b in budgets:
        runs = [score_allocation(np.random.default_rng(seed).random(n), b, table.image_size, ratios) for seed in range(seeds)]
        per_seed = [_metrics(table, idx, rfid=False) for idx in runs]
        mean = {k: float(np.mean([m[k] for m in per_seed])) for k in per_seed[0]}
        if b in fid_at and table.feats is not None:
            mean["rfid"] = _rfid(table, runs[0])
        add("random", b, runs[0], mean)
        add("oracle", b, oracle_allocation(table.psnr, costs, b))
    return rows, allocs


def _interp(x: np.ndarray, y: np.ndarray, at: float) -> float:
    order = np.argsort(x)
    x, y = x[order], y[order]
    return float(np.interp(at, x, y)) if x[0] <= at <= x[-1] else float("nan")


def headline(rows: list[dict], ratios: Sequence[int], ref_ratio: int = 16) -> dict[str, dict[str, float]]:
    """Per method: PSNR gain over fixed ``ref_ratio`` at its mean tokens, token saving at its PSNR,
    and the share of the oracle's gain it captures."""
    ref = next(r for r in rows if r["method"] == f"fixed {ref_ratio}x")
    curves: dict[str, list[dict]] = {}
    for r in rows:
        if not r["method"].startswith("fixed "):
            curves.setdefault(r["method"], []).append(r)
    out = {}
    for name, pts in curves.items():
        t = np.array([p["mean_tokens"] for p in pts])
        p = np.array([p["psnr"] for p in pts])
        gain = _interp(t, p, ref["mean_tokens"]) - ref["psnr"]
        # tokens where the curve reaches the reference PSNR (the curve rises with tokens)
        order = np.argsort(p)
        t_eq = float(np.interp(ref["psnr"], p[order], t[order])) if p.min() <= ref["psnr"] <= p.max() else float("nan")
        out[name] = {"psnr_gain_db": gain, "token_saving": 1 - t_eq / ref["mean_tokens"], "tokens_at_equal_psnr": t_eq}
    oracle_gain = out.get("oracle", {}).get("psnr_gain_db", float("nan"))
    for v in out.values():
        v["oracle_capture"] = v["psnr_gain_db"] / oracle_gain if oracle_gain and oracle_gain > 0 else float("nan")
    return out


def _fmt(v, digits: int = 2) -> str:
    return "" if v is None or (isinstance(v, float) and np.isnan(v)) else (f"{v:.{digits}f}" if isinstance(v, float) else str(v))


def write_rd(out: Path, table: ReconTable, rows: list[dict], allocs: dict, root: Path, ckpt: str) -> Path:
    """Write rd.csv, rd.png and rd.md; returns rd.md."""
    out.mkdir(parents=True, exist_ok=True)
    with open(out / "rd.csv", "w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=RD_COLUMNS, extrasaction="ignore")
        w.writeheader()
        for r in rows:
            w.writerow({k: (round(v, 4) if isinstance(v, float) and not np.isnan(v) else ("" if isinstance(v, float) else v))
                        for k, v in r.items()})
    _plot(rows, out / "rd.png", table)
    ratios = table.ratios
    ref_ratio = 16 if 16 in ratios else ratios[len(ratios) // 2]
    heads = headline(rows, ratios, ref_ratio)
    ref = next(r for r in rows if r["method"] == f"fixed {ref_ratio}x")
    cats = [m for m in heads if m.startswith("CAT")]
    n_text = int(table.text_bearing.sum())
    lines = [f"# Rate-distortion on {len(table)} images of {root} ({table.image_size} px, tokenizer {ckpt})", ""]
    for m in cats:
        h = heads[m]
        lines.append(f"**{m}**: at fixed {ref_ratio}x's {ref['mean_tokens']:.0f} tokens, {h['psnr_gain_db']:+.2f} dB PSNR "
                     f"({_pct(h['oracle_capture'])} of the oracle's gain); at fixed {ref_ratio}x's PSNR "
                     f"({ref['psnr']:.2f} dB) it uses {_fmt(h['tokens_at_equal_psnr'], 1)} tokens ({_saving(h['token_saving'])}).")
    lines += ["", f"## At fixed {ref_ratio}x's budget ({ref['mean_tokens']:.0f} tokens per image)", "",
              *md_header("method", "mean tokens", "PSNR", "SSIM", "OCR conf", "rFID", "8x / 16x / 32x", "gain vs 16x", "share of oracle gain")]
    at_ref = [r for r in rows if r["budget"] == ref["mean_tokens"] or r["method"].startswith("fixed ")]
    for r in at_ref:
        h = heads.get(r["method"], {})
        shares = " / ".join(f"{100 * r[f'share_{q}x']:.0f}%" for q in ratios)
        lines.append(f"| {r['method']} | {r['mean_tokens']:.1f} | {r['psnr']:.2f} | {r['ssim']:.3f} | {_fmt(r['ocr_conf'], 1)} | "
                     f"{_fmt(r['rfid'])} | {shares} | {_fmt(h.get('psnr_gain_db'))} | {_pct(h.get('oracle_capture'))} |")
    lines += ["", f"OCR conf: mean Tesseract word confidence of the reconstructions of the {n_text} text-bearing images "
              f"(original crops: {_fmt(float(np.nanmean(table.ocr_orig)) if n_text else float('nan'), 1)}). "
              "rFID (offline Inception) at the fixed ratios' budgets only.", "",
              "## Per content kind at that budget (PSNR dB; share at " + " / ".join(f"{q}x" for q in ratios) + ")", ""]
    kinds = sorted(set(table.kinds))
    methods = [r["method"] for r in at_ref]
    lines += md_header("kind", "images", *methods)
    kind_arr = np.array(table.kinds)
    for kind in kinds:
        sel = kind_arr == kind
        cells = []
        for r in at_ref:
            idx = allocs[(r["method"], r["budget"])]
            psnr = table.psnr[np.arange(len(table)), idx][sel].mean()
            shares = "/".join(f"{100 * (idx[sel] == j).mean():.0f}" for j in range(len(ratios)))
            cells.append(f"{psnr:.2f} ({shares})")
        lines.append(f"| {kind} | {int(sel.sum())} | " + " | ".join(cells) + " |")
    text = table.text_bearing
    if text.any():
        lines += ["", "## OCR on text-bearing crops per kind (mean Tesseract word confidence; share of the original's)", "",
                  *md_header("kind", "text-bearing crops", "original", *(f"{q}x" for q in ratios))]
        for kind in kinds:
            sel = (kind_arr == kind) & text
            if not sel.any():
                continue
            orig = float(table.ocr_orig[sel].mean())
            cells = [f"{table.ocr[sel, j].mean():.1f} ({100 * table.ocr[sel, j].mean() / orig:.0f}%)" for j in range(len(ratios))]
            lines.append(f"| {kind} | {int(sel.sum())} | {orig:.1f} | " + " | ".join(cells) + " |")
    lines += ["", "## Every budget", "", *md_header(*RD_COLUMNS)]
    for r in rows:
        lines.append("| " + " | ".join(_fmt(r[c], 3) if isinstance(r[c], float) else str(r[c]) for c in RD_COLUMNS) + " |")
    lines += ["", "Files: rd.csv, rd.png (PSNR vs mean tokens), recon_cache/ (per-image measurements, reused by reruns).", ""]
    (out / "rd.md").write_text("\n".join(lines))
    return out / "rd.md"


def _saving(v: float) -> str:
    if v is None or np.isnan(v):
        return "its curve does not reach that PSNR"
    return f"{100 * v:.0f}% fewer" if v >= 0 else f"{-100 * v:.0f}% more"


def _pct(v) -> str:
    return "" if v is None or np.isnan(v) else f"{100 * v:.0f}%"


def _plot(rows: list[dict], path: Path, table: ReconTable) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    curves: dict[str, list[dict]] = {}
    for r in rows:
        curves.setdefault(r["method"], []).append(r)
    for name, pts in curves.items():
        pts = sorted(pts, key=lambda p: p["mean_tokens"])
        x, y = [p["mean_tokens"] for p in pts], [p["psnr"] for p in pts]
        if name.startswith("fixed "):
            ax.scatter(x, y, s=60, marker="s", color="black", zorder=5)
            ax.annotate(name.removeprefix("fixed "), (x[0], y[0]), textcoords="offset points", xytext=(6, -10), fontsize=9)
        else:
            style = {"oracle": dict(ls="--", color="grey"), "random": dict(ls=":", color="tab:red")}.get(name, {})
            ax.plot(x, y, marker=".", label=name, **style)
    ax.set_xscale("log", base=2)
    ax.set_xlabel(f"mean tokens per image ({table.image_size} px)")
    ax.set_ylabel("mean PSNR (dB)")
    ax.set_title(f"Rate-distortion, {len(table)} images")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def evaluator_scores(evaluators: Sequence[tuple[str, ComplexityEvaluator]], table: ReconTable, root: Path,
                     cache: Path) -> dict[str, tuple[np.ndarray, tuple[float, ...]]]:
    """Each evaluator's (score per image of the table, its thresholds); images it cannot score get its median."""
    out = {}
    for name, ev in evaluators:
        res = ev.score_images([root / p for p in table.paths], cache=cache, progress=True, map_ratios=False)
        s = np.array([np.nan if r.score is None else r.score for r in res], np.float64)
        if np.isnan(s).all():
            log.warning("%s scored no image; left out", name)
            continue
        out[f"CAT ({name})"] = (np.where(np.isnan(s), np.nanmedian(s), s), ev.mapper.thresholds)
    return out


def run_rd(data: str | Path, ckpt: str = "cat-small", out: str | Path = "outputs/rd", evaluators: Sequence[str | None] = (None,),
           image_size: int = 128, crop: str = "native", budgets: Sequence[float] | None = None, features: bool | None = None,
           device: str = "auto", progress: bool = True) -> Path:
    """Measure (cached), score, allocate, write rd.csv / rd.png / rd.md; returns rd.md."""
    from cat_tasks.reconstruction.table import measure_folder
    from cat_tokenizer.devices import resolve_device
    from cat_tokenizer.io import load_vae

    root, out = Path(data).expanduser(), Path(out)
    vae = load_vae(ckpt).to(resolve_device(device))
    table = measure_folder(root, vae, out / "recon_cache", image_size, crop, features=features, progress=progress)
    if len(table) < 3:
        raise UserInputError(f"need at least 3 readable images for a rate-distortion curve, found {len(table)} under {root}")
    named = []
    for spec in evaluators:
        ev = ComplexityEvaluator.from_config(spec)
        named.append(("default" if spec is None else Path(str(spec)).stem if str(spec).endswith(".yaml") else str(spec), ev))
    scores = evaluator_scores(named, table, root, out / "scores.sqlite")
    rows, allocs = rd_curves(table, scores, budgets)
    return write_rd(out, table, rows, allocs, root, str(ckpt))
