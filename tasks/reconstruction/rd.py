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

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np

from cat_tasks.reconstruction.heads import HeadPrediction, head_error_markdown, head_errors, predict_distortion
from cat_tasks.reconstruction.rate_control import (
    DEFAULT_PSNR_TARGETS,
    DEFAULT_SSIM_TARGETS,
    Target,
    plot_rate,
    rate_curves,
    rate_headline,
    rate_headline_line,
    rate_markdown,
)
from cat_tasks.reconstruction.regions import (
    REGION_METHODS,
    RegionDecode,
    examples_figure,
    parse_region_methods,
    plot_regions,
    region_markdown,
    region_rows,
)
from cat_tasks.reconstruction.table import ReconTable, measure_folder
from cat_tokenizer.complexity import ComplexityEvaluator, EvaluatorSpec, RatioMapper
from cat_tokenizer.devices import resolve_device
from cat_tokenizer.errors import UserInputError
from cat_tokenizer.files import write_csv
from cat_tokenizer.io import load_vae
from cat_tokenizer.markdown import md_header
from cat_tokenizer.metrics.fid import bias_corrected_interval, bootstrap_fids, frechet_distance
from cat_tokenizer.options import FEATURES, parse_numbers
from cat_tokenizer.outputs import publish_report
from cat_tokenizer.regions.latent import check_refine_ratios, default_context, default_merge

__all__ = ["Allocation", "oracle_allocation", "score_allocation", "rd_curves", "headline", "write_rd", "run_rd", "RD_COLUMNS"]

log = logging.getLogger(__name__)

REPORT_FILES = ("rd.md", "rd.csv", "rd.png", "rate_control.csv", "rate_control.png", "regions.csv", "regions.png",
                "regions_examples.png")
DEFAULT_REGION_BUDGETS = (32.0, 64.0, 128.0)  # mean tokens per image (at 128 px: 16x's 64, and half and twice it)
RD_COLUMNS = ["method", "budget", "mean_tokens", "psnr", "ssim", "ocr_conf", "rfid", "share_8x", "share_16x", "share_32x"]
MIN_ORACLE_GAIN_DB = 0.05  # below it the oracle's gain is within noise: no method's share of it is reported


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


def _rfid(table: ReconTable, idx: np.ndarray, sel: np.ndarray | None = None) -> float:
    """rFID of the allocation ``idx`` (on the images ``sel``): originals' vs chosen reconstructions' features."""
    sel = np.arange(len(idx)) if sel is None else np.flatnonzero(sel)
    return frechet_distance(table.feats_orig[sel], table.feats[sel, idx[sel]])


def _metrics(table: ReconTable, idx: np.ndarray, rfid: bool) -> dict:
    rows = np.arange(len(table))
    text = table.text_bearing
    out = {"mean_tokens": float(table.tokens(idx).mean()), "psnr": float(table.psnr[rows, idx].mean()),
           "ssim": float(table.ssim[rows, idx].mean()),
           "ocr_conf": float(np.mean(table.ocr[rows, idx][text])) if text.any() else float("nan"),
           "rfid": _rfid(table, idx) if rfid and table.feats is not None else float("nan")}
    for kind in sorted(set(table.kinds)) if rfid and table.feats is not None else ():
        out[f"rfid_{kind}"] = _rfid(table, idx, np.asarray(table.kinds) == kind)
    for j, r in enumerate(table.ratios):
        out[f"share_{r}x"] = float((idx == j).mean())
    return out


def default_budgets(table: ReconTable, points: int = 13) -> list[float]:
    """Evenly spaced from the largest ratio's tokens to the smallest's, plus each fixed ratio's."""
    fixed = [float(t) for t in table.tokens(np.arange(len(table.ratios)))]
    return sorted(set(np.round(np.linspace(min(fixed), max(fixed), points), 1).tolist()) | set(fixed))


def rd_curves(table: ReconTable, scores: dict[str, tuple[np.ndarray, Sequence[float] | None]],
              budgets: Sequence[float] | None = None, seeds: int = 5,
              predicted: dict[str, np.ndarray] | None = None) -> tuple[list[dict], dict[tuple[str, float], np.ndarray]]:
    """Rows of ``RD_COLUMNS`` for fixed ratios, each scored method (``{name: (scores, anchor thresholds
    or None)}``), each predicted-PSNR method (``{name: (N, R) predicted PSNR}``: the oracle's knapsack
    on its predictions), JPEG size, random and oracle at each budget.

    Returns ``(rows, allocations)`` with allocations keyed by (method, budget) (random: seed 0).
    """
    budgets = list(budgets or default_budgets(table))
    ratios, n = table.ratios, len(table)
    costs = table.tokens(np.arange(len(ratios)))
    rows, allocs = [], {}

    def add(method: str, budget: float, idx: np.ndarray, metrics: dict | None = None) -> None:
        allocs[(method, budget)] = idx
        m = metrics or _metrics(table, idx, rfid=True)
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
        if table.feats is not None:
            mean.update({k: v for k, v in _metrics(table, runs[0], rfid=True).items() if k.startswith("rfid")})
        add("random", b, runs[0], mean)
        for name, pred in (predicted or {}).items():
            add(name, b, oracle_allocation(pred, costs, b))
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
    for v in out.values():  # a share of a gain within noise of zero (256 px: +0.00 dB) is no figure
        v["oracle_capture"] = v["psnr_gain_db"] / oracle_gain if oracle_gain >= MIN_ORACLE_GAIN_DB else float("nan")
    return out


def _fmt(v, digits: int = 2) -> str:
    return "" if v is None or (isinstance(v, float) and np.isnan(v)) else (f"{v:.{digits}f}" if isinstance(v, float) else str(v))


def write_rd(out: Path, table: ReconTable, rows: list[dict], allocs: dict, root: Path, ckpt: str,
             rate_rows: list[dict] | None = None, rfid_boots: int = 100) -> Path:
    """Write rd.csv, rd.png, rate_control.csv / .png and rd.md; returns rd.md."""
    out.mkdir(parents=True, exist_ok=True)
    write_csv(out / "rd.csv", [_rounded(r) for r in rows], RD_COLUMNS)
    _plot(rows, out / "rd.png", table)
    ratios = table.ratios
    ref_ratio = 16 if 16 in ratios else ratios[len(ratios) // 2]
    heads = headline(rows, ratios, ref_ratio)
    ref = next(r for r in rows if r["method"] == f"fixed {ref_ratio}x")
    at_ref = [r for r in rows if r["budget"] == ref["mean_tokens"] or r["method"].startswith("fixed ")]
    kinds = sorted(set(table.kinds))
    lines = [f"# Rate-distortion on {len(table)} images of {root} ({table.image_size} px, tokenizer {ckpt})", ""]
    for m in (m for m in heads if m.startswith("CAT") or m == "distortion head"):
        h = heads[m]
        share = (f"{_pct(h['oracle_capture'])} of the oracle's gain" if not np.isnan(h["oracle_capture"]) else
                 f"the oracle gains {heads.get('oracle', {}).get('psnr_gain_db', float('nan')):+.2f} dB: no share to state")
        lines.append(f"**Equal tokens, {m}**: at fixed {ref_ratio}x's {ref['mean_tokens']:.0f} tokens, {h['psnr_gain_db']:+.2f} dB PSNR "
                     f"({share}); at fixed {ref_ratio}x's PSNR "
                     f"({ref['psnr']:.2f} dB) it uses {_fmt(h['tokens_at_equal_psnr'], 1)} tokens ({_saving(h['token_saving'])}).")
    rate_heads = rate_headline(rate_rows, ratios) if rate_rows else []
    if rate_heads:
        lines += ["", rate_headline_line(rate_heads)]
    lines += ["", *_budget_lines(table, at_ref, heads, ref, ref_ratio)]
    lines += _kind_lines(table, at_ref, allocs, kinds)
    if table.feats is not None:
        lines += _rfid_lines(table, at_ref, allocs, kinds, ref, rfid_boots)
    lines += _ocr_lines(table, kinds)
    if rate_rows:
        write_csv(out / "rate_control.csv", [_rounded(r) for r in rate_rows])
        plot_rate(rate_rows, out / "rate_control.png", table.image_size)
        lines += rate_markdown(rate_rows, rate_heads, kinds, ratios)
    lines += ["## Every budget", "", *md_header(*RD_COLUMNS)]
    for r in rows:
        lines.append("| " + " | ".join(_fmt(r[c], 3) if isinstance(r[c], float) else str(r[c]) for c in RD_COLUMNS) + " |")
    lines += ["", "Files: rd.csv, rd.png (PSNR vs mean tokens), rate_control.csv / .png (share meeting each target vs mean "
              "tokens), recon_cache/ (per-image measurements, reused by reruns).", ""]
    (out / "rd.md").write_text("\n".join(lines))
    return out / "rd.md"


def _rounded(row: dict) -> dict:
    return {k: (round(v, 4) if isinstance(v, float) and not np.isnan(v) else ("" if isinstance(v, float) else v)) for k, v in row.items()}


def _budget_lines(table: ReconTable, at_ref: list[dict], heads: dict, ref: dict, ref_ratio: int) -> list[str]:
    lines = [f"## At fixed {ref_ratio}x's budget ({ref['mean_tokens']:.0f} tokens per image)", "",
             *md_header("method", "mean tokens", "PSNR", "SSIM", "OCR conf", "rFID", "8x / 16x / 32x", "gain vs 16x", "share of oracle gain")]
    for r in at_ref:
        h = heads.get(r["method"], {})
        shares = " / ".join(f"{100 * r[f'share_{q}x']:.0f}%" for q in table.ratios)
        lines.append(f"| {r['method']} | {r['mean_tokens']:.1f} | {r['psnr']:.2f} | {r['ssim']:.3f} | {_fmt(r['ocr_conf'], 1)} | "
                     f"{_fmt(r['rfid'])} | {shares} | {_fmt(h.get('psnr_gain_db'))} | {_pct(h.get('oracle_capture'))} |")
    n_text = int(table.text_bearing.sum())
    orig = _fmt(float(np.nanmean(table.ocr_orig)) if n_text else float("nan"), 1)
    return lines + ["", f"OCR conf: mean Tesseract word confidence of the reconstructions of the {n_text} text-bearing images "
                    f"(original crops: {orig}). rFID: offline Inception features, every budget in rd.csv.", ""]


def _kind_lines(table: ReconTable, at_ref: list[dict], allocs: dict, kinds: list[str]) -> list[str]:
    ratios, kind_arr = table.ratios, np.array(table.kinds)
    lines = ["## Per content kind at that budget (PSNR dB; share at " + " / ".join(f"{q}x" for q in ratios) + ")", "",
             *md_header("kind", "images", *[r["method"] for r in at_ref])]
    for kind in kinds:
        sel = kind_arr == kind
        cells = []
        for r in at_ref:
            idx = allocs[(r["method"], r["budget"])]
            psnr = table.psnr[np.arange(len(table)), idx][sel].mean()
            cells.append(f"{psnr:.2f} (" + "/".join(f"{100 * (idx[sel] == j).mean():.0f}" for j in range(len(ratios))) + ")")
        lines.append(f"| {kind} | {int(sel.sum())} | " + " | ".join(cells) + " |")
    return lines + [""]


def _rfid_lines(table: ReconTable, at_ref: list[dict], allocs: dict, kinds: list[str], ref: dict, boots: int) -> list[str]:
    """rFID per kind at the reference budget, with a bias-corrected bootstrap interval over images (every
    method on the same resamples) and each method's difference from the reference on those resamples."""
    kind_arr = np.array(table.kinds)
    methods = [r["method"] for r in at_ref]
    idx = {r["method"]: allocs[(r["method"], r["budget"])] for r in at_ref}
    cells: dict[str, list[str]] = {m: [] for m in methods}
    for col, sel in enumerate([np.ones(len(table), bool)] + [kind_arr == k for k in kinds]):
        i = np.flatnonzero(sel)
        fakes = [table.feats[i, idx[m][i]] for m in methods]
        full = [frechet_distance(table.feats_orig[i], f) for f in fakes]
        vals = bootstrap_fids(table.feats_orig[i], fakes, boots) if boots and len(i) > 2 else None
        r0 = methods.index(ref["method"])
        for k, m in enumerate(methods):
            lo, hi = bias_corrected_interval(vals[k], full[k]) if vals is not None else (np.nan, np.nan)
            cells[m].append(f"{full[k]:.1f}" + (f" [{lo:.1f}, {hi:.1f}]" if vals is not None else ""))
            if col == 0:  # the paired difference from the reference, on all images
                if k == r0 or vals is None:
                    cells[m].append("")
                else:
                    dlo, dhi = bias_corrected_interval(vals[k] - vals[r0], full[k] - full[r0])
                    cells[m].append(f"{full[k] - full[r0]:+.1f} [{dlo:+.1f}, {dhi:+.1f}]")
    lines = [f"## rFID at that budget, overall and per kind (95% bootstrap interval over images, {boots} resamples)", "",
             "rFID on a few hundred images is noisy and biased upwards by small samples (compare within a column, not "
             f"across kinds); 'vs {ref['method']}' is the difference on the same resamples: an interval that holds 0 is no "
             "difference.", "", *md_header("method", "all", f"vs {ref['method']}", *kinds)]
    lines += [f"| {m} | " + " | ".join(cells[m]) + " |" for m in methods]
    return lines + [""]


def _ocr_lines(table: ReconTable, kinds: list[str]) -> list[str]:
    text, kind_arr = table.text_bearing, np.array(table.kinds)
    if not text.any():
        return []
    lines = ["## OCR on text-bearing crops per kind (mean Tesseract word confidence; share of the original's)", "",
             *md_header("kind", "text-bearing crops", "original", *(f"{q}x" for q in table.ratios))]
    for kind in kinds:
        sel = (kind_arr == kind) & text
        if not sel.any():
            continue
        orig = float(table.ocr_orig[sel].mean())
        cells = [f"{table.ocr[sel, j].mean():.1f} ({100 * table.ocr[sel, j].mean() / orig:.0f}%)" for j in range(len(table.ratios))]
        lines.append(f"| {kind} | {int(sel.sum())} | {orig:.1f} | " + " | ".join(cells) + " |")
    return lines + [""]


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
                     cache: Path, progress: bool = True) -> dict[str, tuple[np.ndarray, tuple[float, ...]]]:
    """Each evaluator's (score per image of the table, its thresholds); images it cannot score get its median."""
    out = {}
    for name, ev in evaluators:
        res = ev.score_images([root / p for p in table.paths], cache=cache, progress=progress, map_ratios=False)
        s = np.array([np.nan if r.score is None else r.score for r in res], np.float64)
        if np.isnan(s).all():
            log.warning("%s scored no image; left out", name)
            continue
        out[f"CAT ({name})"] = (np.where(np.isnan(s), np.nanmedian(s), s), ev.mapper.thresholds)
    return out


def head_predictions(path: str, vae, table: ReconTable, root: Path) -> HeadPrediction:
    """What the distortion head saved at ``path`` predicts for the table's images (PSNRs, with SSIMs and
    error-model scales when it has them); refused in one line unless its tokenizer is the one being
    measured (the head predicts that tokenizer's errors)."""

    headed = load_vae(path).to(next(vae.parameters()).device)
    if headed.fingerprint(with_head=False) != vae.fingerprint(with_head=False):
        raise UserInputError(f"--distortion-head {path} was trained on another tokenizer's errors; train one for this "
                             "tokenizer with `cat-tokenizer distortion-head --ckpt ...`")
    if headed.ratio_head is None or not headed.ratio_head.predicts_psnr:
        raise UserInputError(f"--distortion-head {path} has no distortion head (`cat-tokenizer distortion-head` makes one)")
    if headed.ratio_head.config["image_size"] != table.image_size:
        log.warning("the distortion head was trained at %s px; rd measures at %d px: its PSNRs are of another view",
                    headed.ratio_head.config["image_size"], table.image_size)
    return predict_distortion(headed, [root / p for p in table.paths], next(vae.parameters()).device)


@dataclass(frozen=True)
class RDOptions:
    """The options of ``cat-tokenizer rd`` (and of ``run_rd``).

    Args:
        ckpt: the tokenizer: cat-small (shipped), a folder, .ckpt or hub id
        out: output folder (recon_cache/ inside is reused by reruns)
        evaluator: evaluator for a CAT curve (a preset: default, rubric, smollm2, distilled:D, auto:D; or a YAML; repeatable; default: default)
        image_size: image side in pixels
        crop: crop policy (as in training)
        budgets: mean-token budgets, e.g. 16,40,64,128,256 (default: 13 points from 32x to 8x)
        features: Inception features for rFID (auto: when the folder has 200+ images)
        target_psnr: rate-control targets in dB (each image: the fewest tokens that meet it)
        target_ssim: rate-control SSIM targets
        rfid_boots: bootstrap resamples for rFID's intervals (0: none)
        distortion_head: a tokenizer folder with a distortion head (cat-tokenizer distortion-head): allocates in both views
        rate_rule: how a distortion head with an error model meets a target: expected (the budget where it buys the most
            expected images), margin (one margin for all images), or both (two curves)
        report: also copy the report files (no caches) into this folder, e.g. docs/reports/rd-dev-128
        regions: also region-adaptive CAT (one ratio per 32-px block), decoded for real: oracle, oracle refined by real decodes, per-image oracle, the block
            head when the tokenizer has one, variance, edges
        region_budgets: comma-separated mean tokens per image for --regions (default: fixed 16x's, half and twice it)
        region_methods: the region rows to run, semicolon-separated as rd.md names them ("regions: " optional), e.g.
            "oracle, probed; head, probed; oracle, per image" (default: every row; fixed 16x always)
        region_merge: how --regions decodes a map: features (one decode, the paths merged at the shared 8x stages, with
            the region fill's adapter and tail), pixels (each ratio present decoded whole, blended by the map), or auto
            (the merge the tokenizer's region fill was trained for: decode_regions' default)
        region_context: comma-separated ratios whose grids one context pass refills after the region fill (re-encoding
            the first decode; under the pixel merge only those grids are decoded again), e.g. 32; none: no pass; auto:
            the fill's own context (decode_regions' default; cat-small: 32)
        device: auto, cpu, cuda ...
        quiet: no progress bars
    """

    ckpt: str = "cat-small"
    out: str = "outputs/rd"
    evaluator: list[EvaluatorSpec] | None = None
    image_size: int = 128
    crop: Literal["native", "resize"] = "native"
    budgets: str | None = None
    features: Literal["auto", "on", "off"] = "auto"
    target_psnr: tuple[float, ...] = DEFAULT_PSNR_TARGETS
    target_ssim: tuple[float, ...] = DEFAULT_SSIM_TARGETS
    rfid_boots: int = 100
    distortion_head: str | None = None
    rate_rule: Literal["expected", "margin", "both"] = "both"
    report: str | None = None
    regions: bool = False
    region_budgets: str | None = None
    region_methods: str | None = None
    region_merge: Literal["auto", "features", "pixels"] = "auto"
    region_context: str = "auto"
    device: str = "auto"
    quiet: bool = False


def run_rd(data: str | Path, o: RDOptions = RDOptions()) -> Path:
    """Measure (cached), score, allocate, write rd.csv / rd.png / rate_control.* / rd.md; returns rd.md.
    ``o.report``: a folder (under docs/, say) that gets a copy of those files, without the caches.
    ``o.regions``: also region-adaptive maps, decoded for real (``cat_tasks.reconstruction.regions``)."""

    progress, crop = not o.quiet, o.crop
    root, out = Path(data).expanduser(), Path(o.out)
    budgets = parse_numbers(o.budgets, "--budgets", float)
    region_budgets = parse_numbers(o.region_budgets, "--region-budgets", float)
    methods = parse_region_methods(o.region_methods)
    vae = load_vae(o.ckpt).to(resolve_device(o.device))
    decode = _region_decode(vae, o)  # checked before hours of work
    table = measure_folder(root, vae, out / "recon_cache", o.image_size, crop, features=FEATURES[o.features], progress=progress)
    if len(table) < 3:
        raise UserInputError(f"need at least 3 readable images for a rate-distortion curve, found {len(table)} under {root}")
    named = [(spec.name, ComplexityEvaluator.from_config(spec)) for spec in o.evaluator or [EvaluatorSpec()]]
    head = head_predictions(o.distortion_head, vae, table, root) if o.distortion_head else None
    predicted = {"distortion head": head.psnr} if head is not None else {}
    scores = evaluator_scores(named, table, root, out / "scores.sqlite", progress)
    rows, allocs = rd_curves(table, scores, budgets, predicted=predicted)
    targets = [Target("psnr", float(t)) for t in o.target_psnr] + [Target("ssim", float(t)) for t in o.target_ssim]
    rate_rows = [row for t in targets for row in rate_curves(table, t, allocs, *_head_for(head, t.metric), o.rate_rule)]
    for name in REPORT_FILES:  # an earlier run's files (its region figure, say) are not this run's
        (out / name).unlink(missing_ok=True)
    md = write_rd(out, table, rows, allocs, root, f"{o.ckpt}, fingerprint {vae.fingerprint(with_head=False)}", rate_rows, o.rfid_boots)
    if head is not None:
        _append_head_error(md, head, table)
    if o.regions:
        _add_regions(md, vae, table, root, out, crop, rows, region_budgets, progress, decode, o.rfid_boots, methods)
    if o.report is not None:
        publish_report(out, REPORT_FILES, o.report)
    return md


def _region_decode(vae, o: RDOptions) -> RegionDecode:
    """How ``--regions`` decodes a map, from ``--region-merge`` and ``--region-context``; a one-line error for a ratio
    the tokenizer lacks."""
    merge = default_merge(vae) if o.region_merge == "auto" else o.region_merge
    if o.region_context in ("auto", "none"):
        return RegionDecode(merge, default_context(vae) if o.region_context == "auto" else ())
    context = check_refine_ratios(vae, parse_numbers(o.region_context, "--region-context", int) or (), "--region-context")
    return RegionDecode(merge, context)


def _head_for(head: HeadPrediction | None, metric: str) -> tuple[dict, dict]:
    """rate_curves' ``predicted`` and ``spreads`` for a target of ``metric``: empty when the head does not
    predict that metric (its SSIM targets then use the head's equal-token allocations)."""
    values, log_scale = head.of(metric) if head is not None else (None, None)
    if values is None:
        return {}, {}
    return {"distortion head": values}, ({"distortion head": log_scale} if log_scale is not None else {})


def _add_regions(md: Path, vae, table: ReconTable, root: Path, out: Path, crop: str, image_rows: list[dict],
                 budgets: Sequence[float] | None, progress: bool, decode: RegionDecode = RegionDecode(), boots: int = 100,
                 methods: Sequence[str] = REGION_METHODS) -> None:
    """Region-adaptive rows (real decodes), regions.csv / .png / _examples.png, and their section of rd.md
    (the headline line under the title)."""

    scale = (table.image_size / 128) ** 2  # the default budgets are per 128-px image
    budgets = list(budgets) if budgets else [b * scale for b in DEFAULT_REGION_BUDGETS]
    rows, per_image = region_rows(vae, table, root, out, crop, budgets, methods, progress, decode)
    write_csv(out / "regions.csv", [_rounded(r) for r in rows])
    plot_regions(rows, image_rows, out / "regions.png", table.image_size)
    ref = next(r for r in rows if r["method"] == "fixed 16x")
    if ("regions: oracle", ref["budget"]) in per_image:
        examples_figure(vae, table, root, crop, per_image, ref["budget"], out / "regions_examples.png", decode)
    section = region_markdown(rows, per_image, table, image_rows, decode, boots)
    lines = md.read_text().split("\n")
    lines[2:2] = [section[0], ""]
    text = "\n".join(lines)
    cut = text.index("## Every budget") if "## Every budget" in text else len(text)
    md.write_text(text[:cut] + "\n".join(section[2:]) + "\n" + text[cut:])


def _append_head_error(report: Path, head: HeadPrediction, table: ReconTable) -> None:
    """The distortion head's PSNR (and SSIM) error on these images, per ratio and kind, at the end of rd.md."""

    lines = head_error_markdown(head_errors(head, table.psnr, table.ssim, table.kinds, table.ratios), table.ratios, "these images")
    report.write_text(report.read_text() + "\n".join(lines) + "\n")
