"""Rate control: the fewest tokens that meet a quality target, per image (ElasticTok, ALIT, KARL; the
paper's Section 3.1 "maximum acceptable ratio").

For a target (PSNR >= 22 dB, say) an allocation is judged by two numbers: the share of images whose
chosen reconstruction meets the target, and its mean tokens. Each method traces a curve of them:

* ``fixed r``: one point per ratio;
* a scored method (CAT's evaluator, JPEG size, random): the equal-token view's allocations (its
  thresholds shifted together), each read as a (tokens, share) point;
* a predicted-quality method (the distortion head): the oracle's rule on its *predictions*, made
  cautious both ways by one margin m: an image is given up (the fewest tokens) only when even its
  most-token ratio is predicted below the target minus m; otherwise its cheapest ratio predicted to
  meet the target plus m, or the most-token ratio when none is; images are bought in order of what
  that costs until a token budget is spent. Budgets and margins are swept, and the shares counted on
  the measured qualities. With exact predictions and m = 0 it is the oracle. (Giving up only on a
  confident prediction is what lets a head reach fixed 8x's share, which counts every image the
  tokenizer can bring to the target: one wrongly abandoned image and that share is out of reach);
* a predicted-quality method with an error model (Laplace scales per image and ratio; the distortion
  head's are one per ratio):
  each image's chance of meeting the target at each ratio, and the token budget spent where it buys
  the most expected images (a multiple-choice knapsack, greedy on each image's upper hull of (tokens,
  chance): exact for the expected share up to the last purchase). An image the head knows well is cut
  close to the target, an uncertain one is given a margin of its own; the scales are widened by a
  swept factor (the knob) in case they are too tight;
* ``oracle``: the measured frontier. With one point of value per image that meets the target, the
  most images meet it within a token budget when images are bought in order of what meeting costs
  them (their cheapest meeting ratio's tokens), the rest left at the cheapest ratio: greedy by cost is
  exact for unit values.

Headline per target: the tokens a method needs to meet the target on the share of images fixed 16x
meets (and fixed 8x meets), against that fixed ratio's tokens.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

from cat_tasks.reconstruction.heads import HeadPrediction
from cat_tasks.reconstruction.table import ReconTable
from cat_tokenizer.models.ratio_head import meet_probability, ssim_db

__all__ = ["Target", "DEFAULT_PSNR_TARGETS", "DEFAULT_SSIM_TARGETS", "oracle_frontier", "expected_frontier",
           "cautious_claims", "rate_curves", "tokens_at_share", "rate_headline", "head_capture", "capture_markdown"]

DEFAULT_PSNR_TARGETS = (22.0, 24.0, 26.0, 28.0)
DEFAULT_SSIM_TARGETS = (0.7, 0.8, 0.9)
MARGINS_DB = (-2.0, -1.0, -0.5, 0.0, 0.5, 1.0, 2.0, 3.0, 4.0)  # margins swept, in the head's units (dB; ssim_db for SSIM)
WIDEN = (0.75, 1.0, 1.5, 2.0, 3.0)  # error-model scales widened by these factors (the expected-share rule's knob)
POINTS_PER_CURVE = 48  # a frontier's purchases thinned to about this many (tokens, share) points


@dataclass(frozen=True)
class Target:
    """``metric`` (``psnr`` or ``ssim``) >= ``value``."""

    metric: str
    value: float

    @property
    def name(self) -> str:
        return f"PSNR {self.value:g} dB" if self.metric == "psnr" else f"SSIM {self.value:g}"

    @property
    def head_value(self) -> float:
        """The target in a distortion head's units: dB for PSNR, ``ssim_db`` for SSIM."""
        return self.value if self.metric == "psnr" else float(ssim_db(self.value))

    def met(self, table: ReconTable) -> np.ndarray:
        """(N, R) whether each image's reconstruction at each ratio meets the target."""
        return getattr(table, self.metric) >= self.value


def oracle_frontier(met: np.ndarray, costs: Sequence[int]) -> list[tuple[float, float, np.ndarray]]:
    """``[(mean tokens, share meeting, idx)]``: the most images meeting the target at each spend.

    Args:
        met: (N, R) bool, ratios ascending (index 0 the most tokens).
        costs: (R,) tokens per image at each ratio.
    """
    met, costs = np.asarray(met, bool), np.asarray(costs, np.int64)
    n, r = met.shape
    cheapest = int(np.argmin(costs))
    # each image's cheapest meeting ratio (or none)
    cost_if_met = np.where(met, costs[None, :], np.iinfo(np.int64).max)
    best = np.argmin(cost_if_met, axis=1)
    reachable = met[np.arange(n), best]
    extra = np.where(reachable, costs[best] - costs[cheapest], np.inf)
    order = np.argsort(extra, kind="stable")
    idx = np.full(n, cheapest)
    points = [(float(costs[idx].mean()), float(met[np.arange(n), idx].mean()), idx.copy())]
    for i in order:
        if not np.isfinite(extra[i]):
            break
        if idx[i] != best[i]:
            idx[i] = best[i]
            points.append((float(costs[idx].mean()), float(met[np.arange(n), idx].mean()), idx.copy()))
    return points


def expected_frontier(chance: np.ndarray, costs: Sequence[int]) -> list[np.ndarray]:
    """Allocations (N,) of ratio indices, one per purchase, from all images at the cheapest ratio to the
    end of the budget: each purchase the step (tokens, chance) on some image's upper hull with the
    most chance per token.

    Args:
        chance: (N, R) probability that each image meets the target at each ratio.
        costs: (R,) tokens per image at each ratio.
    """
    chance, costs = np.asarray(chance, np.float64), np.asarray(costs, np.float64)
    by_cost = np.argsort(costs, kind="stable")
    steps = []  # (chance per token, image, ratio index)
    for i, p in enumerate(chance):
        hull = [by_cost[0]]
        for j in by_cost[1:]:
            if p[j] <= p[hull[-1]]:
                continue  # dearer and no likelier
            hull.append(j)
            while len(hull) >= 3 and _slope(p, costs, hull[-2], hull[-1]) >= _slope(p, costs, hull[-3], hull[-2]):
                hull.pop(-2)  # not on the upper hull: skipped by a steeper step
        steps += [(_slope(p, costs, a, b), i, b) for a, b in zip(hull, hull[1:])]
    steps.sort(key=lambda t: -t[0])  # within an image the hull's slopes fall, so its steps stay in order
    idx = np.full(len(chance), by_cost[0])
    out = [idx.copy()]
    for _, i, j in steps:
        idx[i] = j
        out.append(idx.copy())
    return out


def _slope(p: np.ndarray, costs: np.ndarray, a: int, b: int) -> float:
    return float((p[b] - p[a]) / (costs[b] - costs[a]))


def cautious_claims(pred: np.ndarray, target: Target, margin: float, costs: Sequence[int]) -> np.ndarray:
    """(N, R) the ratios an allocator claims meet ``target`` from predicted values (N, R) in a distortion
    head's units (``Target.head_value``): those predicted at least the target plus ``margin``, and the
    most-token ratio of every image not predicted hopeless there (below the target minus ``margin``)."""
    pred = np.asarray(pred, np.float64)
    claimed = pred >= target.head_value + margin
    most = int(np.argmax(costs))
    claimed[:, most] |= pred[:, most] >= target.head_value - margin
    return claimed


def rate_curves(table: ReconTable, target: Target, allocations: dict[tuple[str, float], np.ndarray],
                predicted: dict[str, np.ndarray] | None = None, spreads: dict[str, np.ndarray] | None = None,
                rule: str = "both") -> list[dict]:
    """Rows ``{target, method, margin_or_budget, mean_tokens, share, share_<kind>..., tokens_<kind>...}``.

    Args:
        table: the measured reconstructions.
        target: the quality target.
        allocations: the equal-token view's ``{(method, budget): idx}`` (fixed, scored methods, random);
            its oracle is replaced by this view's own frontier.
        predicted: ``{method: (N, R) predicted values of target.metric}`` for margin-swept allocators, in a
            distortion head's units (``Target.head_value``).
        spreads: ``{method: (N, R) log Laplace scales of those predictions}`` (an error model): such a
            method allocates by expected share (``rule`` expected), by margins (margin), or both, the
            margin curve then named ``<method> (margin rule)``.
    """
    met = target.met(table)
    costs = table.tokens(np.arange(len(table.ratios)))
    rows = []

    def add(method: str, knob: float, idx: np.ndarray) -> None:
        ok = met[np.arange(len(idx)), idx]
        row = {"target": target.name, "method": method, "knob": knob, "mean_tokens": float(costs[idx].mean()), "share": float(ok.mean())}
        kinds = np.asarray(table.kinds)
        for k in sorted(set(table.kinds)):
            sel = kinds == k
            row[f"share_{k}"], row[f"tokens_{k}"] = float(ok[sel].mean()), float(costs[idx[sel]].mean())
        rows.append(row)

    for (method, budget), idx in allocations.items():
        if method != "oracle":
            add(method, budget, idx)
    for name, pred in (predicted or {}).items():
        log_scale = (spreads or {}).get(name)
        if log_scale is not None and rule in ("expected", "both"):
            for w in WIDEN:
                chance = meet_probability(torch.from_numpy(np.asarray(pred, np.float64)),
                                          torch.from_numpy(np.exp(np.asarray(log_scale, np.float64))) * w, target.head_value).numpy()
                for idx in _thin(expected_frontier(chance, costs)):
                    add(name, w, idx)
        if log_scale is None or rule in ("margin", "both"):
            margin_name = f"{name} (margin rule)" if log_scale is not None and rule == "both" else name
            for m in MARGINS_DB:
                for _, _, idx in _thin(oracle_frontier(cautious_claims(pred, target, m, costs), costs)):
                    add(margin_name, float(m), idx)
    for _, _, idx in _thin(oracle_frontier(met, costs)):
        add("oracle", float("nan"), idx)
    return rows


def _thin(points: list, keep: int = POINTS_PER_CURVE) -> list:
    """About ``keep`` of a frontier's points, evenly spaced, first and last kept."""
    if len(points) <= keep:
        return points
    return [points[int(round(i))] for i in np.linspace(0, len(points) - 1, keep)]


def tokens_at_share(points: Sequence[tuple[float, float]], share: float) -> float:
    """The fewest mean tokens at which a curve of (tokens, share) points reaches ``share``: the cheapest
    point that does, or a linear interpolation towards it from the cheaper point before it; NaN if none."""
    pts = sorted(points)
    best = float("nan")
    for j, (t, s) in enumerate(pts):
        if s >= share - 1e-12:
            cand = t
            lower = [(tt, ss) for tt, ss in pts[:j] if ss < share]
            if lower:
                tt, ss = max(lower, key=lambda p: (p[1], -p[0]))  # the best-share cheaper point
                if s > ss and t > tt:
                    cand = tt + (share - ss) / (s - ss) * (t - tt)
            best = cand if np.isnan(best) else min(best, cand)
    return best


def rate_headline(rows: list[dict], ratios: Sequence[int], refs: Sequence[int] = (16, 8)) -> list[dict]:
    """Per target, reference fixed ratio and method: the tokens to meet the target on the reference's
    share, the saving against the reference's tokens, and the share of the oracle's saving captured."""
    out = []
    for target in dict.fromkeys(r["target"] for r in rows):
        mine = [r for r in rows if r["target"] == target]
        methods = list(dict.fromkeys(r["method"] for r in mine if not r["method"].startswith("fixed ")))
        for ref in refs:
            if ref not in ratios:
                continue
            fixed = next(r for r in mine if r["method"] == f"fixed {ref}x")
            found = {}
            for m in methods:
                t = tokens_at_share([(r["mean_tokens"], r["share"]) for r in mine if r["method"] == m], fixed["share"])
                found[m] = t
            oracle_saving = 1 - found.get("oracle", float("nan")) / fixed["mean_tokens"]
            for m, t in found.items():
                saving = 1 - t / fixed["mean_tokens"]
                out.append({"target": target, "ref": f"fixed {ref}x", "ref_share": fixed["share"], "ref_tokens": fixed["mean_tokens"],
                            "method": m, "tokens": t, "saving": saving,
                            "oracle_capture": saving / oracle_saving if oracle_saving > 0 else float("nan")})
    return out


def head_capture(table: ReconTable, head: HeadPrediction, targets: Sequence[Target], name: str = "distortion head") -> list[dict]:
    """``rate_headline`` of one distortion head's predictions against the fixed ratios and the oracle (no scored
    methods): what it captures of the oracle's saving, per target; targets of a metric it does not predict are
    left out."""
    n = len(table)
    fixed = {(f"fixed {r}x", float(table.tokens(np.full(n, i))[0])): np.full(n, i) for i, r in enumerate(table.ratios)}
    rows = []
    for t in targets:
        values, log_scale = head.of(t.metric)
        if values is not None:
            rows += rate_curves(table, t, fixed, {name: values}, {name: log_scale} if log_scale is not None else {})
    return [h for h in rate_headline(rows, table.ratios) if h["method"] != "oracle"] if rows else []


def capture_markdown(heads: list[dict], where: str) -> list[str]:
    """A table of ``head_capture``'s rows: per target and reference, each rule's tokens, saving and capture."""
    return [f"## {where}: rate control (tokens to meet a target on a fixed ratio's share of images; "
            "saving against its tokens, and the share of the oracle's saving captured)", "", *_headline_table(heads), ""]


def _headline_table(heads: list[dict]) -> list[str]:
    """``rate_headline``'s rows as a table: per target and reference, each method's tokens, saving and capture."""
    methods = list(dict.fromkeys(h["method"] for h in heads))
    lines = ["| target | reference | meets | tokens | " + " | ".join(methods) + " |", "|---|---|---|---|" + "---|" * len(methods)]
    for (target, ref), group in _grouped(heads):
        cells = []
        for m in methods:
            h = next((g for g in group if g["method"] == m), None)
            cells.append("" if h is None or np.isnan(h["tokens"]) else
                         f"{h['tokens']:.1f} ({_signed_pct(h['saving'])}{'' if m == 'oracle' else ', ' + _pct(h['oracle_capture'])})")
        lines.append(f"| {target} | {ref} | {100 * group[0]['ref_share']:.0f}% | {group[0]['ref_tokens']:.0f} | " + " | ".join(cells) + " |")
    return lines


def _operating_point(rows: list[dict], method: str, share: float) -> dict | None:
    """The method's cheapest row that meets ``share`` (None when its curve never does)."""
    ok = [r for r in rows if r["method"] == method and r["share"] >= share - 1e-12]
    return min(ok, key=lambda r: r["mean_tokens"]) if ok else None


def rate_markdown(rows: list[dict], heads: list[dict], kinds: Sequence[str], ratios: Sequence[int]) -> list[str]:
    """rd.md's rate-control sections: the headline table, then each kind at fixed 16x's share."""
    methods = list(dict.fromkeys(h["method"] for h in heads))
    lines = ["## Rate control: the fewest tokens that meet a target", "",
             "Each method gives every image the cheapest ratio its scores (or predictions) say meets the target; "
             "shifting its thresholds (margin) traces share meeting vs mean tokens (rate_control.png). A cell is the "
             "mean tokens at which the method meets the target on the reference's share of images, and the saving "
             "against the reference's tokens (the share of the oracle's saving it captures).", "", *_headline_table(heads)]
    lines += ["", "Per content kind, at the margin where each method meets the PSNR target on fixed 16x's share of all "
              "images (share of the kind meeting it @ mean tokens of the kind):", ""]
    fixed16 = "fixed 16x" if 16 in ratios else None
    psnr_targets = [t for t in dict.fromkeys(r["target"] for r in rows) if t.startswith("PSNR")]
    lines += ["| target | kind | " + " | ".join(["fixed 16x", *methods]) + " |", "|---|---|" + "---|" * (len(methods) + 1)]
    for target in psnr_targets:
        mine = [r for r in rows if r["target"] == target]
        ref = next((r for r in mine if r["method"] == fixed16), None)
        if ref is None:
            continue
        points = [ref] + [_operating_point(mine, m, ref["share"]) for m in methods]
        for k in kinds:
            cells = ["" if p is None else f"{100 * p[f'share_{k}']:.0f}% @ {p[f'tokens_{k}']:.0f}" for p in points]
            lines.append(f"| {target} | {k} | " + " | ".join(cells) + " |")
    return lines + [""]


def rate_headline_line(heads: list[dict]) -> str:
    """rd.md's one line for this view: each CAT curve and the oracle against fixed 16x at two targets."""
    parts = []
    for target in ("PSNR 22 dB", "PSNR 26 dB"):
        group = [h for h in heads if h["target"] == target and h["ref"] == "fixed 16x"]
        if not group:
            continue
        said = [f"{h['method']} {h['tokens']:.0f} ({_signed_pct(h['saving'])})" for h in group
                if (h["method"].startswith("CAT") or h["method"] in ("oracle", "distortion head")) and not np.isnan(h["tokens"])]
        parts.append(f"to meet {target} on fixed 16x's {100 * group[0]['ref_share']:.0f}% of images "
                     f"(at {group[0]['ref_tokens']:.0f} tokens): " + ", ".join(said))
    return "**Rate control**: " + "; ".join(parts) + "." if parts else ""


def plot_rate(rows: list[dict], path, image_size: int) -> None:
    """Share meeting each PSNR target vs mean tokens, one panel per target."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    targets = [t for t in dict.fromkeys(r["target"] for r in rows) if t.startswith("PSNR")]
    fig, axes = plt.subplots(1, max(1, len(targets)), figsize=(3.4 * max(1, len(targets)), 3.4), squeeze=False)
    for ax, target in zip(axes[0], targets):
        mine = [r for r in rows if r["target"] == target]
        for m in dict.fromkeys(r["method"] for r in mine):
            pts = sorted((r["mean_tokens"], r["share"]) for r in mine if r["method"] == m)
            x, y = [p[0] for p in pts], [100 * p[1] for p in pts]
            if m.startswith("fixed "):
                ax.scatter(x, y, s=40, marker="s", color="black", zorder=5)
                ax.annotate(m.removeprefix("fixed "), (x[0], y[0]), textcoords="offset points", xytext=(5, -9), fontsize=8)
            else:
                style = {"oracle": dict(ls="--", color="grey"), "random": dict(ls=":", color="tab:red")}.get(m, {})
                ax.plot(x, y, label=m, lw=1.2, **style)
        ax.set_xscale("log", base=2)
        ax.set_title(target, fontsize=9)
        ax.set_xlabel(f"mean tokens ({image_size} px)", fontsize=8)
        ax.grid(alpha=0.3)
    axes[0][0].set_ylabel("images meeting the target (%)", fontsize=8)
    axes[0][0].legend(fontsize=6)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _grouped(heads: list[dict]):
    keys = list(dict.fromkeys((h["target"], h["ref"]) for h in heads))
    return [(k, [h for h in heads if (h["target"], h["ref"]) == k]) for k in keys]


def _pct(v: float) -> str:
    return "" if v is None or np.isnan(v) else f"{100 * v:.0f}% of the oracle's"


def _signed_pct(v: float) -> str:
    return "" if v is None or np.isnan(v) else (f"{100 * v:.0f}% fewer" if v >= 0 else f"{-100 * v:.0f}% more")
