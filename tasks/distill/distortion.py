"""``cat-tokenizer distortion-head``: predict each image's PSNR at every ratio from the tokenizer's trunk.

CAT's evaluator predicts what people find complex; an allocator needs what *this tokenizer* loses.
The distortion head is the ratio head's trunk reader (per-channel statistics of every trunk stage,
``RatioHead``) with one output per ratio, regressed (L1) on measured PSNRs; beside the trunk it reads
weight-free statistics of the image (``pixel_statistics``) and standardises every statistic by its
training mean and std:

1. Reconstruct a seeded sample of ``data`` at every ratio (``measure_folder`` without OCR or
   Inception: PSNR and SSIM only; cached and resumable like ``rd``'s).
2. Read each image's trunk statistics once with the frozen tokenizer (cached too, in chunks:
   ``trunk_cache/`` beside ``recon_cache/``).
3. Train on the training split; whole sources are held out (``KIND/SOURCE/...`` folders, as real-v1
   is laid out), so the error is on sources the head never saw.
4. Report the held-out MAE per ratio and kind (and on ``--dev`` when given: the saved head's, which by
   default is trained again on every sampled image).
5. With ``--spread folds`` (default), give the head an error model: k heads, each trained without one
   fold of sources, predict that fold's images; their mean absolute error per ratio is the scale of a
   Laplace error around the saved head's predictions, and ``--dev`` reports whether its 80% intervals
   hold 80% of the errors there.
6. Save the tokenizer with the head to ``--out``:
   ``encode --ratio auto [--target-psnr T]`` picks the cheapest ratio predicted to reach the target,
   and ``rd --distortion-head OUT`` allocates with it in both views.
"""

from __future__ import annotations

import json
import logging
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import lightning as L
import torch

from cat_tasks.distill.ratio_head import _grouped_split, _HeadOnStatistics, _read_groups, fit_regressor, grouped_folds
from cat_tasks.reconstruction.heads import coverage_table, head_error_markdown, head_errors, predict_distortion, split_outputs, trunk_inputs
from cat_tasks.reconstruction.rate_control import DEFAULT_PSNR_TARGETS, DEFAULT_SSIM_TARGETS, Target, capture_markdown, head_capture
from cat_tasks.reconstruction.table import measure_folder
from cat_tokenizer.data.dataset import stratified_split
from cat_tokenizer.data.images import list_images, partition_readable
from cat_tokenizer.devices import resolve_device
from cat_tokenizer.errors import UserInputError
from cat_tokenizer.files import write_csv
from cat_tokenizer.io import load_vae
from cat_tokenizer.lit.cli import silence_known_warnings
from cat_tokenizer.markdown import md_header
from cat_tokenizer.models.ratio_head import RatioHead, ssim_db

__all__ = ["HeadOptions", "DistortionHeadOptions", "run_distortion_head"]

log = logging.getLogger(__name__)


def _sample(root: Path, max_images: int | None, seed: int) -> list[Path]:
    files = list_images(root)
    if max_images and len(files) > max_images:
        files = sorted(random.Random(seed).sample(files, max_images))
    files, bad = partition_readable(files)
    for err in bad:
        log.warning("skipping unreadable image %s", err)
    return files


@dataclass(frozen=True)
class HeadOptions:
    """The options every head trained on the tokenizer's trunk takes (``distortion-head``, ``block-head``).

    Args:
        out: folder for the tokenizer with its head and the head's report
        ckpt: the nested VAE whose errors the head learns
        dev: a second folder to report the error on (e.g. real-v1 dev/)
        image_size: image side in pixels
        crop: crop policy (native: as rd measures)
        max_images: a seeded sample of at most this many training images (0: all)
        epochs: epochs of the head (on precomputed trunk statistics: fast)
        batch_size: head batch size
        lr: head learning rate
        hidden: width of the head's MLP
        val_fraction: share of sources held out
        groups: folder (KIND/SOURCE/...), auto (sources.csv), a CSV path, or none
        device: auto, cpu, cuda ...
        seed: sample and split seed
    """

    out: str
    ckpt: str = "cat-small"
    dev: str | None = None
    image_size: int = 128
    crop: Literal["native", "resize"] = "native"
    max_images: int = 3000
    epochs: int = 150
    batch_size: int = 64
    lr: float = 3e-3
    hidden: int = 256
    val_fraction: float = 0.2
    groups: str = "folder"
    device: str = "auto"
    seed: int = 0


@dataclass(frozen=True)
class DistortionHeadOptions(HeadOptions):
    """The options of ``cat-tokenizer distortion-head`` (and of ``run_distortion_head``).

    Args:
        max_images: a seeded sample of at most this many training images (0: all; the error falls with
            every doubling of them: 0.83 / 0.70 / 0.63 dB at 8x from 558 / 1116 / 2233)
        target_psnr: the head's default target for encode --ratio auto
        loss: regression loss on the measured PSNRs
        reads: what the head reads: the trunk's statistics and weight-free statistics of the image
            (detail energy per scale, edges), or the trunk alone
        norm: standard (each statistic by its training mean and std) or layer (a LayerNorm across them,
            as heads before 2026-12 were made)
        final: the head saved: trained again on all sampled images after the held-out measurement (all;
            more data is worth 0.07 dB of error here), or the one measured (train)
        recon_cache: the folder holding the measured reconstructions and trunk statistics (recon_cache/, dev_cache/,
            trunk_cache/) when
            not OUT: arms of one comparison share one measurement
        spread: folds (an error model from out-of-fold errors: encode --confidence and rd's rate control use it)
            or none
        folds: folds of sources for the error model's out-of-fold errors (each image's out-of-fold prediction
            is written to out_of_fold.csv)
        predicts: what the head predicts at every ratio: PSNR and SSIM (rd's SSIM targets use it), or PSNR alone
        ensemble: the head saved: the mean of the final head and the error model's fold heads (folds, with --spread
            folds: no more training; the error model keeps the single heads' out-of-fold scales, an upper bound on the
            mean's; on dev 0.02-0.03 dB less error than the final head alone and captures that vary less), or the
            final head alone (none, and whenever --spread none leaves no fold heads)
    """

    max_images: int = 0
    target_psnr: float = 24.0
    loss: Literal["l1", "mse"] = "l1"
    reads: Literal["trunk+pixels", "trunk"] = "trunk+pixels"
    final: Literal["all", "train"] = "all"
    recon_cache: str | None = None
    norm: Literal["standard", "layer"] = "standard"
    spread: Literal["folds", "none"] = "folds"
    folds: int = 5
    predicts: Literal["psnr+ssim", "psnr"] = "psnr+ssim"
    ensemble: Literal["folds", "none"] = "folds"

    @property
    def ssim(self) -> bool:
        return self.predicts == "psnr+ssim"


def run_distortion_head(data: str | Path, o: DistortionHeadOptions) -> dict:
    """Train, report and save; returns the metrics (also ``out/distortion.json`` and ``distortion.md``)."""
    image_size, crop = o.image_size, o.crop
    silence_known_warnings()
    L.seed_everything(o.seed, workers=True)
    root, out_dir, dev = Path(data).expanduser(), Path(o.out), resolve_device(o.device)
    group_of, split_from = _read_groups(root, o.groups)  # a bad groups file fails before the (slow) measuring
    vae = load_vae(o.ckpt).eval().to(dev)
    cache = Path(o.recon_cache).expanduser() if o.recon_cache else out_dir
    table = measure_folder(root, vae, cache / "recon_cache", image_size, crop, features=False, ocr=False,
                           only=_sample(root, o.max_images or None, o.seed))
    files = [root / p for p in table.paths]
    target = torch.tensor(table.psnr, dtype=torch.float32)  # (N, R) what the head regresses: PSNR dB [, then SSIM as ssim_db]
    if o.ssim:
        target = torch.cat([target, torch.tensor(ssim_db(table.ssim), dtype=torch.float32)], 1)  # (N, 2R)
    val = _grouped_split(files, root, o.val_fraction, group_of) if group_of else set(stratified_split(files, root, o.val_fraction))
    tr = [i for i, f in enumerate(files) if f not in val]
    va = [i for i, f in enumerate(files) if f in val]
    if len(tr) < 4 or not va:
        raise UserInputError(f"the split left {len(tr)} training and {len(va)} held-out images; add images or change val_fraction")
    head = _new_head(vae, o, dev)
    inputs = trunk_inputs(vae, head, files, image_size, dev, crop=crop, cache=cache / "trunk_cache")  # [(N, D) trunk (and pixel) statistics]
    head = _train_head(head, inputs, target, tr, o, dev)
    with torch.no_grad():
        pred = split_outputs(head.score(*[t[va].to(dev) for t in inputs]).cpu().numpy(), None, len(vae.ratios))
    held = head_errors(pred, table.psnr[va], table.ssim[va], [table.kinds[i] for i in va], vae.ratios)
    split = "random" if group_of is None else f"by source ({split_from})"
    metrics = {"tokenizer": str(o.ckpt), "images": len(files), "train": len(tr), "held_out": len(va), "split": split,
               "image_size": image_size, "crop": crop, "epochs": o.epochs, "loss": o.loss, "target_psnr": o.target_psnr,
               "head_params": sum(p.numel() for p in head.parameters()), "pixel_stats": o.reads == "trunk+pixels", "norm": o.norm,
               "final": o.final, "ssim": o.ssim, "held_out_mae": held["psnr"]}
    if "ssim" in held:
        metrics["held_out_ssim_mae"] = held["ssim"]
    if o.final == "all":  # the held-out error above is the 80% head's; the saved one learns from every image
        head = _train_head(_new_head(vae, o, dev), inputs, target, tr + va, o, dev)
    if o.spread == "folds":
        found, fold_heads = _fit_error_model(head, vae, table, inputs, target, tr + va if o.final == "all" else tr, root, group_of, o, dev)
        metrics |= found | {"ensemble": o.ensemble}
        head = RatioHead.average([head, *fold_heads]) if o.ensemble == "folds" else head
    head.set_report({k: metrics[k] for k in ("images", "held_out", "split", "final")}
                    | {"mae_all": {k: round(v, 3) for k, v in held["psnr"][0].items() if k.startswith("mae_")}})
    vae.attach_ratio_head(head)
    if o.dev is not None:
        metrics |= _dev_errors(vae, Path(o.dev).expanduser(), cache / "dev_cache", o, dev)
    out_dir.mkdir(parents=True, exist_ok=True)
    vae.save_pretrained(out_dir)
    (out_dir / "distortion.json").write_text(json.dumps(metrics, indent=2))
    (out_dir / "distortion.md").write_text(_report(metrics, vae.ratios))
    return metrics


def _fit_error_model(head: RatioHead, vae, table, inputs: list[torch.Tensor], target: torch.Tensor, keep: list[int], root: Path,
                     group_of, o: DistortionHeadOptions, dev: torch.device) -> tuple[dict, list[RatioHead]]:
    """Give ``head`` its error model from out-of-fold errors over ``keep`` (written to out_of_fold.csv); its metrics
    and the fold heads."""
    files = [root / table.paths[i] for i in keep]
    fold = grouped_folds(files, root, o.folds, group_of)
    errors, heads = _out_of_fold_errors(vae, inputs, target, keep, fold, o, dev)  # (len(keep), R or 2R)
    scale = errors.abs().mean(0)  # the Laplace scale's maximum-likelihood estimate, per output
    head.set_error_scale(scale)
    r = len(vae.ratios)
    found = {"out_of_fold_mae": [round(float(v), 3) for v in scale[:r]], "folds": o.folds}
    if o.ssim:
        found["out_of_fold_ssim_db_mae"] = [round(float(v), 3) for v in scale[r:]]
    Path(o.out).mkdir(parents=True, exist_ok=True)
    write_csv(Path(o.out) / "out_of_fold.csv", _out_of_fold_rows(table, keep, fold, target, errors, vae.ratios))
    return found, heads


def _out_of_fold_rows(table, keep: list[int], fold: list[int], target: torch.Tensor, errors: torch.Tensor, ratios) -> list[dict]:
    """out_of_fold.csv: per image its fold, and per output the measured value and the out-of-fold prediction
    (PSNR dB; SSIM as ssim_db): what the error model was fitted on, kept for studying it."""
    names = [f"psnr_{r}x" for r in ratios] + [f"ssim_db_{r}x" for r in ratios][: target.shape[1] - len(ratios)]
    rows = []
    for j, i in enumerate(keep):
        row = {"path": table.paths[i], "kind": table.kinds[i], "fold": fold[j]}
        for c, name in enumerate(names):
            row[name] = round(float(target[i, c]), 4)
            row[f"pred_{name}"] = round(float(target[i, c] + errors[j, c]), 4)
        rows.append(row)
    return rows


def _dev_errors(vae, dev_root: Path, cache: Path, o: DistortionHeadOptions, dev: torch.device) -> dict:
    """The saved head's error on a second folder (and its error model's coverage there)."""
    dev_table = measure_folder(dev_root, vae, cache, o.image_size, o.crop, features=False, ocr=False)
    pred = predict_distortion(vae, [dev_root / p for p in dev_table.paths], dev)
    errors = head_errors(pred, dev_table.psnr, dev_table.ssim, dev_table.kinds, vae.ratios)
    found = {"dev": str(dev_root), "dev_mae": errors["psnr"]}
    if "ssim" in errors:
        found["dev_ssim_mae"] = errors["ssim"]
    if pred.psnr_log_scale is not None:
        found["dev_coverage"] = coverage_table(pred.psnr, pred.psnr_log_scale, dev_table.psnr, dev_table.kinds, vae.ratios)
    targets = [Target("psnr", t) for t in DEFAULT_PSNR_TARGETS] + [Target("ssim", t) for t in DEFAULT_SSIM_TARGETS]
    found["dev_capture"] = head_capture(dev_table, pred, targets)  # rd's rate control, head only
    if pred.members:  # an ensemble: each member alone, to see what averaging bought
        found["dev_member_mae"] = [head_errors(p, dev_table.psnr, dev_table.ssim, dev_table.kinds, vae.ratios)["psnr"][0] for p in pred.members]
        found["dev_member_capture"] = [head_capture(dev_table, p, targets) for p in pred.members]
    return found


def _new_head(vae, o: DistortionHeadOptions, dev: torch.device, spread: bool | None = None) -> RatioHead:
    return RatioHead(vae.trunk_channels(), o.hidden, ratios=vae.ratios, image_size=o.image_size, crop=o.crop, predicts="psnr",
                     target_psnr=o.target_psnr, pixel_stats=o.reads == "trunk+pixels", norm=o.norm,
                     spread=o.spread == "folds" if spread is None else spread, ssim=o.ssim).to(dev)


def _out_of_fold_errors(vae, inputs: list[torch.Tensor], target: torch.Tensor, keep: list[int], fold: list[int],
                        o: DistortionHeadOptions, dev: torch.device) -> tuple[torch.Tensor, list[RatioHead]]:
    """(len(keep), R or 2R) predicted - measured value of each image ``keep[j]`` by a head trained without its fold,
    and those heads."""
    errors, heads = torch.zeros(len(keep), target.shape[1]), []
    for f in sorted(set(fold)):
        out = [j for j, g in enumerate(fold) if g == f]
        if len(out) == len(keep):
            raise UserInputError(f"--folds {o.folds}: every image fell in one fold; add sources or lower --folds")
        head = _train_head(_new_head(vae, o, dev, spread=False), inputs, target, [keep[j] for j in range(len(keep)) if fold[j] != f], o, dev)
        heads.append(head)
        with torch.no_grad():
            rows = [keep[j] for j in out]
            errors[out] = head.score(*[t[rows].to(dev) for t in inputs]).cpu() - target[rows]
        log.info("error model: fold %d of %d, %d images out, PSNR MAE %s dB", f + 1, len(set(fold)), len(out),
                 " / ".join(f"{v:.2f}" for v in errors[out, : len(vae.ratios)].abs().mean(0).tolist()))
    return errors, heads


def _train_head(head: RatioHead, inputs: list[torch.Tensor], target: torch.Tensor, idx: list[int], o: DistortionHeadOptions,
                dev: torch.device) -> RatioHead:
    """Fit ``head`` (standardisation, then L1 / MSE regression on ``target`` (N, outputs)) on the images ``idx``; eval mode."""
    head.fit_standardization(inputs[0][idx].to(dev))
    fit_regressor(_HeadOnStatistics(head), head.finals, [t[idx] for t in inputs], target[idx], o.epochs, o.batch_size, o.lr, dev, o.loss,
                  init_bias=target[idx].mean(0))
    return head.eval()


def _report(m: dict, ratios) -> str:
    saved = f"trained again on all {m['images']} images" if m.get("final") == "all" else "the one measured on the held-out sources"
    lines = [f"# Distortion head on {m['tokenizer']}'s trunk", "",
             f"{m['images']} images ({m['train']} train / {m['held_out']} held out, split {m['split']}) at {m['image_size']} px "
             f"({m['crop']} crops); head {m['head_params']} params, {m['epochs']} epochs, {m['loss']} loss; reads the trunk"
             f"{' and pixel statistics' if m.get('pixel_stats') else ''}, {m.get('norm', 'layer')} normalisation; predicts PSNR"
             f"{' and SSIM' if m.get('ssim') else ''} at every ratio. The head saved (and measured on dev): {saved}"
             + (f", averaged with the error model's {m.get('folds')} fold heads (--ensemble folds)" if m.get("ensemble") == "folds" else "")
             + ".", ""]
    if "out_of_fold_mae" in m:
        lines += [f"Error model: Laplace scales {' / '.join(f'{v:.2f}' for v in m['out_of_fold_mae'])} dB at "
                  f"{' / '.join(f'{r}x' for r in ratios)}, the out-of-fold MAE ({m.get('folds', '')} folds of sources; each "
                  "image's out-of-fold prediction in out_of_fold.csv)"
                  + (f"; for SSIM (as -10 log10(1 - SSIM)) {' / '.join(f'{v:.2f}' for v in m['out_of_fold_ssim_db_mae'])}"
                     if "out_of_fold_ssim_db_mae" in m else "") + ".", ""]
    for where, prefix in (("held-out sources", "held_out"), (m.get("dev", ""), "dev")):
        errors = {metric: m[key] for metric, key in (("psnr", f"{prefix}_mae"), ("ssim", f"{prefix}_ssim_mae")) if key in m}
        lines += head_error_markdown(errors, ratios, where) if errors else []
    if "dev_coverage" in m:
        lines += [f"## {m['dev']}: the error model's 80% intervals (share of measured PSNRs inside; 80% is calibrated) "
                  "and mean interval width (dB)", "", *md_header("kind", "images", *(f"{r}x" for r in ratios))]
        for row in m["dev_coverage"]:
            lines.append(f"| {row['kind']} | {row['images']} | " + " | ".join(
                f"{100 * row[f'inside_{r}x']:.0f}% (±{row[f'halfwidth_{r}x']:.2f})" for r in ratios) + " |")
        lines.append("")
    if m.get("dev_capture"):
        lines += capture_markdown(m["dev_capture"], m["dev"])
    if m.get("dev_member_capture"):
        lines += _members_markdown(m, ratios)
    return "\n".join(lines)


def _members_markdown(m: dict, ratios) -> list[str]:
    """An ensemble's members alone on dev: their PSNR MAE (all kinds) and the range of their captures per cell."""
    lines = [f"## {m['dev']}: the ensemble's {len(m['dev_member_mae'])} members alone", "",
             "PSNR MAE (all kinds) per member: " + "; ".join(" / ".join(f"{row[f'mae_{r}x']:.2f}" for r in ratios)
                                                              for row in m["dev_member_mae"]) + " dB.", "",
             "| target | reference | rule | ensemble's capture | members' captures (min - max) |", "|---|---|---|---|---|"]
    for h in m["dev_capture"]:
        alone = [g["oracle_capture"] for caps in m["dev_member_capture"] for g in caps
                 if (g["target"], g["ref"], g["method"]) == (h["target"], h["ref"], h["method"])]
        alone = [100 * a for a in alone if a == a]  # NaN: that member never reaches the share
        span = f"{min(alone):.0f} - {max(alone):.0f}%" if alone else ""
        lines.append(f"| {h['target']} | {h['ref']} | {h['method']} | {100 * h['oracle_capture']:.0f}% | {span} |")
    return lines + [""]
