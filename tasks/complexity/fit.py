"""``cat-tokenizer fit-rubric DATA --out FILE.yaml``: fit the evaluator's scorer to labelled folders.

Labels (the target is pluggable):
* ``kinds`` (default): the top-level folder of each image, mapped to a class by ``kind_map``
  (real-v1: text and charts -> 2 (8x), natural -> 1 (16x), flat -> 0 (32x)): weak labels;
* ``csv:FILE``: a CSV with ``path`` (relative to DATA) and a ratio column (``--ratio-column``, default
  ``ratio``; 8 -> 2, 16 -> 1, 32 -> 0), e.g. ``analyse``'s per_image.csv with ``max_ratio``: the
  tokenizer's own maximum acceptable ratios.

The figures say what happens on a new source: leave-one-source-out cross-validation, where a source is
the second folder (``KIND/SOURCE/...``; the first when there is no second). Reported on the pooled
out-of-fold scores, and on ``--eval`` (a held-out folder such as real-v1 ``dev/``) with the model fitted
on all of DATA: AUC of the score for (text + charts) over natural and over flat, natural over flat, and
the share of each kind at 8x / 16x / 32x with the thresholds 4 and 7.

Probe facts are cached per file content in ``<out>.facts.csv`` (a rerun or a refit reads them).
"""

from __future__ import annotations

import csv
import json
import logging
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import yaml
from torchmetrics.functional.classification import binary_auroc
from tqdm import tqdm

from cat_tokenizer.complexity import ComplexityEvaluator, ProbeDescriber, RatioMapper
from cat_tokenizer.complexity.cache import content_hash, default_score_cache
from cat_tokenizer.complexity.fitted import DEFAULT_FEATURES, fit_facts
from cat_tokenizer.complexity.probe import probe_facts
from cat_tokenizer.data.dataset import kind_of
from cat_tokenizer.data.images import UnreadableImage, list_images, load_rgb
from cat_tokenizer.errors import InputNotFound, UserInputError
from cat_tokenizer.markdown import md_header, md_records
from cat_tokenizer.ratios import DEFAULT_THRESHOLDS

__all__ = ["FitRubricOptions", "collect_facts", "cross_validate", "evaluate_scores", "label_agreement", "per_source", "run_fit_rubric",
           "REAL_V1_KINDS"]

log = logging.getLogger(__name__)

REAL_V1_KINDS = {"text": 2, "charts": 2, "natural": 1, "flat": 0}
RATIO_CLASS = {8: 2, 16: 1, 32: 0}
CLASS_RATIO = {c: r for r, c in RATIO_CLASS.items()}


def _probe_settings(probe: ProbeDescriber) -> dict:
    return {"ocr": probe.ocr, "faces": probe.faces, "layout": probe.layout, "faces_on": probe.faces_on}


def collect_facts(files: Sequence[Path], probe: ProbeDescriber, cache: Path, workers: int = 2,
                  progress: bool = True) -> list[dict | None]:
    """Probe facts per file (None for unreadable files), cached in ``cache`` by content hash and probe settings."""
    key = json.dumps(probe.fingerprint(), sort_keys=True)
    known: dict[str, dict] = {}
    if cache.is_file():
        with cache.open(newline="") as fh:
            for row in csv.DictReader(fh):
                if row.pop("probe") == key:
                    h = row.pop("hash")
                    known[h] = {k: float(v) for k, v in row.items() if v != ""}
    hashes = [content_hash(f) for f in files]
    todo = [i for i, h in enumerate(hashes) if h not in known]

    def one(i: int) -> tuple[int, dict | None]:
        try:
            return i, probe_facts(load_rgb(files[i]), probe)
        except UnreadableImage as err:
            log.warning("skipping %s", err)
            return i, None

    fresh: dict[int, dict | None] = {}
    if todo:
        cache.parent.mkdir(parents=True, exist_ok=True)
        bar = tqdm(total=len(todo), desc="probe facts", unit="img", disable=not progress)
        with ThreadPoolExecutor(max(1, workers)) as pool:
            rows = []
            for i, facts in pool.map(one, todo):
                fresh[i] = facts
                bar.update()
                if facts is not None:
                    rows.append((hashes[i], facts))
                if len(rows) >= 200 or (rows and len(fresh) == len(todo)):
                    _append(cache, key, rows)
                    rows = []
        bar.close()
    return [known.get(h) if i not in fresh else fresh[i] for i, h in enumerate(hashes)]


def _append(cache: Path, key: str, rows: list[tuple[str, dict]]) -> None:
    names = sorted({k for _, f in rows for k in f})
    existing = None
    if cache.is_file():
        with cache.open(newline="") as fh:
            existing = next(csv.reader(fh), None)
    columns = existing or ["hash", "probe", *names]
    if existing and set(names) - set(existing):  # new facts: rewrite with the wider header
        with cache.open(newline="") as fh:
            old = list(csv.DictReader(fh))
        columns = ["hash", "probe", *sorted(set(existing[2:]) | set(names))]
        with cache.open("w", newline="") as fh:
            w = csv.DictWriter(fh, fieldnames=columns)
            w.writeheader()
            w.writerows(old)
    with cache.open("a", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=columns, extrasaction="ignore")
        if not existing:
            w.writeheader()
        for h, f in rows:
            w.writerow({"hash": h, "probe": key, **f})


def source_of(path: Path, root: Path) -> str:
    parts = path.relative_to(root).parts
    return "/".join(parts[:2]) if len(parts) > 2 else parts[0] if len(parts) > 1 else ""


def _labels(files: list[Path], root: Path, target: str, kind_map: dict[str, int], ratio_column: str) -> list[int | None]:
    if target == "kinds":
        unknown = sorted({kind_of(f, root) for f in files} - set(kind_map))
        if unknown:
            raise UserInputError(f"no class for the folders {unknown}; give --kind-map, e.g. "
                                 "text=8,charts=8,natural=16,flat=32")
        return [kind_map[kind_of(f, root)] for f in files]
    if not target.startswith("csv:"):
        raise UserInputError(f"--target must be kinds or csv:FILE, got {target!r}")
    path = Path(target[4:]).expanduser()
    if not path.is_file():
        raise InputNotFound(f"label file not found: {path}")
    with path.open(newline="") as fh:
        rows = list(csv.DictReader(fh))
    if not rows or "path" not in rows[0] or ratio_column not in rows[0]:
        raise UserInputError(f"{path} needs the columns path and {ratio_column}")
    table = {r["path"]: RATIO_CLASS.get(int(float(r[ratio_column]))) for r in rows if r[ratio_column]}
    return [table.get(f.relative_to(root).as_posix()) for f in files]


def cross_validate(facts: list[dict], labels: np.ndarray, groups: list[str], **fit_kw) -> np.ndarray:
    """Out-of-fold scores, holding out one group (source) at a time."""
    scores = np.full(len(facts), np.nan)
    groups_arr = np.asarray(groups)
    for g in sorted(set(groups)):
        test = groups_arr == g
        train = ~test
        if len(set(labels[train].tolist())) < 2:
            continue
        model = fit_facts([facts[i] for i in np.flatnonzero(train)], labels[train], **fit_kw)
        scores[test] = model.score_facts([facts[i] for i in np.flatnonzero(test)])
    return scores


def _auc(pos: np.ndarray, neg: np.ndarray) -> float:
    if not len(pos) or not len(neg):
        return float("nan")
    s = torch.tensor(np.concatenate([pos, neg]), dtype=torch.float64)
    y = torch.tensor([1] * len(pos) + [0] * len(neg))
    return float(binary_auroc(s, y))


def evaluate_scores(scores: np.ndarray, kinds: list[str], thresholds: Sequence[float] = DEFAULT_THRESHOLDS,
                    high: Sequence[str] = ("text", "charts"), mid: Sequence[str] = ("natural",),
                    low: Sequence[str] = ("flat",)) -> dict:
    """AUCs between kind groups and each kind's shares at 8x / 16x / 32x under ``thresholds``."""
    k = np.asarray(kinds)
    ok = ~np.isnan(scores)
    s, k = scores[ok], k[ok]
    hi, md, lo = np.isin(k, high), np.isin(k, mid), np.isin(k, low)
    ratios = RatioMapper(thresholds)(s)
    shares = {kind: {int(r): float((ratios[k == kind] == r).mean()) for r in (8, 16, 32)} for kind in sorted(set(k))}
    tokens = RatioMapper.tokens(ratios, 256)
    return {"auc_high_vs_natural": _auc(s[hi], s[md]), "auc_high_vs_flat": _auc(s[hi], s[lo]),
            "auc_natural_vs_flat": _auc(s[md], s[lo]), "shares": shares, "images": int(ok.sum()),
            "mean_tokens_256px": float(tokens.mean()) if len(tokens) else float("nan")}


def label_agreement(scores: np.ndarray, labels: np.ndarray, thresholds: Sequence[float] = DEFAULT_THRESHOLDS) -> dict:
    """How well scores match class labels (2: 8x, 1: 16x, 0: 32x): the share mapped to the label's ratio, the
    share the most common label alone would get, and Spearman's rho between score and label."""
    from scipy.stats import spearmanr

    ok = ~np.isnan(scores)
    s, y = scores[ok], labels[ok]
    ratios = RatioMapper(thresholds)(s)
    want = np.array([CLASS_RATIO[int(c)] for c in y])
    rho = spearmanr(s, y).statistic if len(set(y.tolist())) > 1 else float("nan")
    return {"agreement": float((ratios == want).mean()), "majority": float(np.bincount(y).max() / len(y)),
            "spearman": float(rho)}


def per_source(scores: np.ndarray, labels: np.ndarray, groups: Sequence[str], kinds: Sequence[str],
               thresholds: Sequence[float] = DEFAULT_THRESHOLDS) -> list[dict]:
    """Per source: its kind, images, shares at 8x / 16x / 32x and the share at the ratio its label asks for."""
    ratios = RatioMapper(thresholds)(np.nan_to_num(scores, nan=-1.0))
    want = np.array([CLASS_RATIO[int(c)] for c in labels])
    g, ok = np.asarray(groups), ~np.isnan(scores)
    rows = []
    for src in sorted(set(groups)):
        m = (g == src) & ok
        if m.any():
            rows.append({"source": src, "kind": kinds[int(np.flatnonzero(g == src)[0])], "images": int(m.sum()),
                         **{f"{r}x": float((ratios[m] == r).mean()) for r in (8, 16, 32)},
                         "at_label": float((ratios[m] == want[m]).mean())})
    return rows


def _score_table(name: str, m: dict) -> list[str]:
    lines = [f"**{name}** ({m['images']} images): AUC text+charts > natural {m['auc_high_vs_natural']:.3f}, "
             f"text+charts > flat {m['auc_high_vs_flat']:.3f}, natural > flat {m['auc_natural_vs_flat']:.3f}; "
             f"mean {m['mean_tokens_256px']:.0f} tokens per 256-px image (fixed 16x: 256).", "",
             *md_header("kind", "8x", "16x", "32x")]
    for kind, sh in m["shares"].items():
        lines.append(f"| {kind} | " + " | ".join(f"{100 * sh[r]:.0f}%" for r in (8, 16, 32)) + " |")
    return lines + [""]


@dataclass(frozen=True)
class FitRubricOptions:
    """The options of ``cat-tokenizer fit-rubric`` (and of ``run_fit_rubric``).

    Args:
        out: evaluator YAML to write (a .md report, .json and .facts.csv cache go beside it)
        eval: a held-out folder to report on with the final model (e.g. real-v1 dev/)
        target: kinds (top-level folders as weak labels) or csv:FILE (path + ratio column)
        kind_map: kind=ratio pairs (default text=8,charts=8,natural=16,flat=32)
        ratio_column: with csv:FILE, the column holding 8/16/32 (analyse: max_ratio)
        ocr: add Tesseract facts (slow: about 5 img/s here)
        no_faces: no face detection
        c: inverse L2 strength of the logistic regression
        face_points: score points a detected face adds (1.5 lifts a typical photo, 5.5, to the 8x threshold 7)
        max_files: fit on a seeded sample of this many files
        seed: sample seed
        quiet: no progress bar
    """

    out: str
    eval: str | None = None
    target: str = "kinds"
    kind_map: str | None = None
    ratio_column: str = "ratio"
    ocr: bool = False
    no_faces: bool = False
    c: float = 1.0
    face_points: float = 1.5
    max_files: int | None = None
    seed: int = 0
    quiet: bool = False

    def kind_classes(self) -> dict[str, int]:
        """``kind_map`` as kind -> class (0: 32x, 1: 16x, 2: 8x); real-v1's when not given."""
        if not self.kind_map:
            return REAL_V1_KINDS
        try:
            return {k: RATIO_CLASS[int(v)] for k, v in (item.split("=") for item in self.kind_map.split(","))}
        except (ValueError, KeyError):
            raise UserInputError(f"--kind-map takes kind=ratio pairs with ratios 8, 16, 32, e.g. text=8,natural=16,flat=32; "
                                 f"got {self.kind_map!r}") from None


def run_fit_rubric(data: str, o: FitRubricOptions) -> dict:
    """Fit on ``data``, cross-validate by source, evaluate on ``o.eval``; write ``o.out`` (YAML) and
    ``o.out`` with .md / .json beside it. Returns the report dict."""
    root, out_path, progress = Path(data).expanduser(), Path(o.out), not o.quiet
    kind_map = o.kind_classes()
    probe = ProbeDescriber(ocr=o.ocr, faces=not o.no_faces, layout=True, faces_on="photo")
    files = list_images(root)
    if o.max_files and len(files) > o.max_files:
        rng = np.random.default_rng(o.seed)
        files = sorted(files[i] for i in rng.choice(len(files), o.max_files, replace=False))
    labels = _labels(files, root, o.target, kind_map, o.ratio_column)
    t0 = time.perf_counter()
    facts = collect_facts(files, probe, out_path.with_suffix(".facts.csv"), progress=progress)
    keep = [i for i, (f, y) in enumerate(zip(facts, labels)) if f is not None and y is not None]
    if len(keep) < 10:
        raise UserInputError(f"need at least 10 labelled, readable images to fit, found {len(keep)} under {root}")
    files = [files[i] for i in keep]
    facts = [facts[i] for i in keep]
    y = np.array([labels[i] for i in keep])
    kinds = [kind_of(f, root) for f in files]
    groups = [source_of(f, root) for f in files]
    fit_kw = {"c": o.c, "face_points": o.face_points}
    cv_scores = cross_validate(facts, y, groups, **fit_kw)
    report = {"data": str(root), "images": len(files), "target": o.target, "kind_map": kind_map if o.target == "kinds" else None,
              "sources": sorted(set(groups)), "probe": _probe_settings(probe), "c": o.c, "face_points": o.face_points,
              "cv": evaluate_scores(cv_scores, kinds), "cv_labels": label_agreement(cv_scores, y),
              "cv_sources": per_source(cv_scores, y, groups, kinds),
              "fitted": time.strftime("%Y-%m-%d")}
    model = fit_facts(facts, y, **fit_kw)
    if o.eval:
        ev_root = Path(o.eval).expanduser()
        ev_files = list_images(ev_root)
        ev_facts = collect_facts(ev_files, probe, out_path.with_suffix(".facts.csv"), progress=progress)
        ok = [i for i, f in enumerate(ev_facts) if f is not None]
        ev_scores = np.full(len(ev_files), np.nan)
        ev_scores[ok] = model.score_facts([ev_facts[i] for i in ok])
        report["eval"] = {"data": str(ev_root), **evaluate_scores(ev_scores, [kind_of(f, ev_root) for f in ev_files])}
    report["seconds"] = round(time.perf_counter() - t0, 1)
    _write_fit(out_path, data, report, model, probe)
    return report


def _write_fit(out_path: Path, data: str, report: dict, model, probe: ProbeDescriber) -> None:
    """The evaluator YAML (with provenance), the .json report and the .md report of a fit."""
    model.provenance = {k: report[k] for k in ("data", "images", "target", "fitted")} | {
        "cv_auc_high_vs_natural": round(report["cv"]["auc_high_vs_natural"], 4),
        "cv_auc_high_vs_flat": round(report["cv"]["auc_high_vs_flat"], 4)}
    config = {"class_path": "cat_tokenizer.complexity.ComplexityEvaluator", "init_args": {
        "describer": {"class_path": "cat_tokenizer.complexity.ProbeDescriber", "init_args": _probe_settings(probe)},
        "scorer": {"class_path": "cat_tokenizer.complexity.FittedScorer", "init_args": model.init_args()},
        "thresholds": list(DEFAULT_THRESHOLDS)}}
    out_path.parent.mkdir(parents=True, exist_ok=True)
    header = (f"# Fitted by `cat-tokenizer fit-rubric {data}` on {report['fitted']} ({report['images']} images, target {report['target']}).\n"
              f"# Source-held-out CV: AUC text+charts > natural {report['cv']['auc_high_vs_natural']:.3f}, "
              f"> flat {report['cv']['auc_high_vs_flat']:.3f}. Full report: {out_path.with_suffix('.md').name}\n")
    out_path.write_text(header + yaml.safe_dump(config, sort_keys=False, width=120))
    out_path.with_suffix(".json").write_text(json.dumps(report, indent=2))
    lines = [f"# Fitted complexity scorer: {out_path.name}", "",
             f"Fitted on {report['images']} images of {report['data']} (target {report['target']}; probe: {_probe_settings(probe)}), "
             f"{len(report['sources'])} sources; class-balanced multinomial logistic regression (C={report['c']}) over "
             f"{len(DEFAULT_FEATURES)} probe facts; faces add {report['face_points']} points. {report['seconds']} s "
             f"(probe facts already in {out_path.with_suffix('.facts.csv').name} are not recomputed).", "",
             "## Leave-one-source-out cross-validation (pooled out-of-fold scores)", "",
             f"Against the labels: {report['cv_labels']['agreement']:.0%} at the label's ratio (the most common label "
             f"alone: {report['cv_labels']['majority']:.0%}); Spearman rho of score and label "
             f"{report['cv_labels']['spearman']:+.2f}.", "", *_score_table("CV", report["cv"]),
             "Each source scored by the model fitted without it (at label: the share at the ratio its label asks for):", "",
             *md_records(report["cv_sources"], ["source", "kind", "images", "8x", "16x", "32x", "at_label"], "{:.0%}"), ""]
    if "eval" in report:
        lines += [f"## Held-out folder {report['eval']['data']} (model fitted on all of the data)", "",
                  *_score_table("eval", report["eval"])]
    lines += ["## Weights (standardised facts; rows: 32x, 16x, 8x class)", "",
              *md_header("fact", "transform", "32x", "16x", "8x")]
    for j, name in enumerate(model.features):
        lines.append(f"| {name} | {model.transforms[j]} | " + " | ".join(f"{model.coef[k, j]:+.2f}" for k in range(3)) + " |")
    out_path.with_suffix(".md").write_text("\n".join(lines) + "\n")


def run_evaluate_kinds(data: str, evaluators: Sequence[str], high: Sequence[str] = ("text", "charts"),
                       mid: Sequence[str] = ("natural",), low: Sequence[str] = ("flat",), cache: str | None = None,
                       progress: bool = True) -> str:
    """Score a KIND/... folder with each evaluator; a markdown table of AUCs and per-kind ratio shares."""

    root = Path(data).expanduser()
    files = list_images(root)
    kinds = [kind_of(f, root) for f in files]
    lines = [f"# Evaluators on {len(files)} images of {root}", "",
             f"High: {', '.join(high)}; middle: {', '.join(mid)}; low: {', '.join(low)}. Shares at the evaluator's "
             "own thresholds; AUC of the score.", "",
             *md_header("evaluator", "img/s", "AUC high > middle", "AUC high > low", "AUC middle > low", "mean tokens (256 px)",
                        *(f"{k} 8/16/32x" for k in sorted(set(kinds))))]
    for spec in evaluators:
        ev = ComplexityEvaluator.from_config(spec)
        t0 = time.perf_counter()
        res = ev.score_images(files, cache=cache or default_score_cache(root), progress=progress)
        fresh = sum(not r.cached for r in res)
        speed = f"{fresh / (time.perf_counter() - t0):.1f}" if fresh else "cached"
        s = np.array([np.nan if r.score is None else r.score for r in res])
        m = evaluate_scores(s, kinds, ev.mapper.thresholds, high, mid, low)
        shares = " | ".join("/".join(f"{100 * m['shares'][k][r]:.0f}" for r in (8, 16, 32)) for k in sorted(m["shares"]))
        lines.append(f"| {spec} ({ev.name}) | {speed} | {m['auc_high_vs_natural']:.3f} | {m['auc_high_vs_flat']:.3f} | "
                     f"{m['auc_natural_vs_flat']:.3f} | {m['mean_tokens_256px']:.0f} | {shares} |")
    return "\n".join(lines) + "\n"
