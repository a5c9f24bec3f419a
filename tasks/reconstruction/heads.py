"""Reading a ratio or distortion head's inputs from the tokenizer's trunk, and scoring a distortion head.

Shared by the heads' training (``cat_tasks.distill``) and the reconstruction reports that use them
(``rd --distortion-head``, ``analyse --distortion-head``).
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import torch

from cat_tokenizer.data.images import load_rgb
from cat_tokenizer.data.transforms import image_transform
from cat_tokenizer.errors import UserInputError
from cat_tokenizer.markdown import md_header
from cat_tokenizer.models.ratio_head import RatioHead, ssim_from_db

__all__ = ["trunk_inputs", "HeadPrediction", "predict_distortion", "split_outputs", "mae_table", "coverage_table", "head_errors", "head_error_markdown"]

INTERVAL = 0.8  # the central interval coverage_table checks
LAPLACE_HALF_WIDTH = float(np.log(1 / (1 - INTERVAL)))  # in scales: P(|error| <= t * scale) = 1 - exp(-t)


CHUNK = 512  # images per file of a statistics cache: a killed run loses at most one chunk's work


@torch.no_grad()
def trunk_inputs(vae, head: RatioHead, files: list[Path], image_size: int, device: torch.device,
                 batch: int = 16, crop: str = "resize", cache: Path | None = None) -> list[torch.Tensor]:
    """[(N, D) the head's trunk statistics] + [(N, C, S/8, S/8) 8x maps] when it has a conv branch.

    ``cache``: a folder where the statistics are kept in chunks of ``CHUNK`` images, each named by a hash of
    the tokenizer's fingerprint, what the head reads (stages, row strides, pixel statistics), the view (size,
    crop) and the chunk's files: arms of one comparison and reruns read them instead of the trunk. Heads
    with a conv branch (which need the 8x maps) are not cached."""
    if cache is None or head.conv is not None:
        return _trunk_inputs(vae, head, files, image_size, device, batch, crop)
    from safetensors.torch import load_file, save_file

    reads = {k: head.config[k] for k in ("stages", "row_stride", "pixel_stats", "stage_channels")}
    key = json.dumps([vae.fingerprint(with_head=False), reads, image_size, crop])
    cache.mkdir(parents=True, exist_ok=True)
    chunks = []
    for i in range(0, len(files), CHUNK):
        part = files[i : i + CHUNK]
        name = hashlib.sha1("\n".join([key, *map(str, part)]).encode()).hexdigest()[:16]
        path = cache / f"{name}.safetensors"
        if path.is_file():
            chunks.append(load_file(path)["stats"])
            continue
        stats = _trunk_inputs(vae, head, part, image_size, device, batch, crop)[0]
        save_file({"stats": stats.contiguous()}, path.with_suffix(".tmp"))
        path.with_suffix(".tmp").replace(path)  # whole chunks only
        chunks.append(stats)
    return [torch.cat(chunks) if chunks else torch.zeros(0, 0)]


def _trunk_inputs(vae, head: RatioHead, files: list[Path], image_size: int, device: torch.device, batch: int,
                  crop: str) -> list[torch.Tensor]:
    tf = image_transform(image_size, train=False, crop=crop)
    stats, last = [], []
    keep_last = head.conv is not None
    for i in range(0, len(files), batch):
        x = torch.stack([tf(load_rgb(f)) for f in files[i : i + batch]]).to(device)  # (b, 3, S, S)
        taps = vae.trunk(x)
        stats.append(head.statistics(taps, x).cpu())
        if keep_last:
            last.append(taps[-1].cpu())
    return [torch.cat(stats)] + ([torch.cat(last)] if keep_last else [])


@dataclass(frozen=True)
class HeadPrediction:
    """What a distortion head predicts for N images, in its own units (PSNR dB; SSIM as ``ssim_db``), with its
    error model's log Laplace scales (None without one) and the SSIMs only when the head predicts them.

    ``of(metric)`` gives ``(values (N, R), log scales (N, R) or None)`` for ``psnr`` or ``ssim`` (None, None
    when the head does not predict it): what rate control reads for a target of that metric."""

    psnr: np.ndarray  # (N, R)
    psnr_log_scale: np.ndarray | None = None
    ssim_db: np.ndarray | None = None
    ssim_log_scale: np.ndarray | None = None
    members: list[HeadPrediction] | None = None  # an ensemble head's members, each alone (with the ensemble's scales)

    def of(self, metric: str) -> tuple[np.ndarray | None, np.ndarray | None]:
        return (self.psnr, self.psnr_log_scale) if metric == "psnr" else (self.ssim_db, self.ssim_log_scale)


@torch.no_grad()
def predict_distortion(vae, files: list[Path], device: torch.device) -> HeadPrediction:
    """What the tokenizer's distortion head predicts for ``files`` (read at its own crop and size)."""
    head = vae.ratio_head
    if head is None or not head.predicts_psnr:
        raise UserInputError("this tokenizer has no distortion head: make one with `cat-tokenizer distortion-head`")
    inputs = [t.to(device) for t in trunk_inputs(vae, head, files, head.config["image_size"], device, crop=head.config["crop"])]
    scores = [m.cpu().numpy() for m in head.member_scores(*inputs)]  # each (N, R) or (N, 2R)
    spread = head.log_scale(inputs[0]).cpu().numpy() if head.has_error_model else None
    r = len(head.config["ratios"])
    pred = split_outputs(np.mean(scores, 0), spread, r)
    return replace(pred, members=[split_outputs(m, spread, r) for m in scores]) if len(scores) > 1 else pred


def split_outputs(out: np.ndarray, spread: np.ndarray | None, n_ratios: int) -> HeadPrediction:
    """A head's raw outputs (N, R) or (N, 2R) [and log scales of the same shape] -> ``HeadPrediction``."""
    r = n_ratios
    ssim = out.shape[1] > r
    return HeadPrediction(out[:, :r], None if spread is None else spread[:, :r], out[:, r:] if ssim else None,
                          None if spread is None or not ssim else spread[:, r:])


def mae_table(pred: np.ndarray, true: np.ndarray, kinds: list[str], ratios) -> list[dict]:
    """Rows ``{kind, images, mae_8x, ..., bias_8x, ...}`` (bias: mean predicted - measured), all kinds first."""
    err = pred - true
    return _per_kind(kinds, lambda sel: {**{f"mae_{r}x": float(np.abs(err[sel, j]).mean()) for j, r in enumerate(ratios)},
                                         **{f"bias_{r}x": float(err[sel, j].mean()) for j, r in enumerate(ratios)}})


def head_errors(head: HeadPrediction, psnr: np.ndarray, ssim: np.ndarray, kinds: list[str], ratios) -> dict[str, list[dict]]:
    """``{"psnr": mae_table rows (dB)[, "ssim": mae_table rows in SSIM units]}`` of a head's predictions."""
    found = {"psnr": mae_table(head.psnr, psnr, kinds, ratios)}
    if head.ssim_db is not None:
        found["ssim"] = mae_table(ssim_from_db(head.ssim_db), ssim, kinds, ratios)
    return found


def head_error_markdown(errors: dict[str, list[dict]], ratios, where: str) -> list[str]:
    """rd.md's and distortion.md's tables of ``head_errors``: MAE and bias per ratio and kind."""
    lines = []
    for metric, unit, fmt in (("psnr", "dB", ".2f"), ("ssim", "SSIM", ".3f")):
        if metric not in errors:
            continue
        lines += [f"## The distortion head's {metric.upper()} error on {where} (MAE {unit}; bias = predicted - measured)", "",
                  *md_header("kind", "images", *(f"MAE {r}x" for r in ratios), *(f"bias {r}x" for r in ratios))]
        for row in errors[metric]:
            lines.append(f"| {row['kind']} | {row['images']} | " + " | ".join(f"{row[f'mae_{r}x']:{fmt}}" for r in ratios) + " | "
                         + " | ".join(f"{row[f'bias_{r}x']:+{fmt}}" for r in ratios) + " |")
        lines.append("")
    return lines


def _per_kind(kinds: list[str], row) -> list[dict]:
    """``[{kind, images, **row(selection)}]`` for all images, then each kind."""
    kinds_arr = np.asarray(kinds)
    sels = [("all", np.ones(len(kinds), bool))] + [(k, kinds_arr == k) for k in sorted(set(kinds))]
    return [{"kind": k, "images": int(sel.sum()), **row(sel)} for k, sel in sels]




def coverage_table(pred: np.ndarray, log_scale: np.ndarray, true: np.ndarray, kinds: list[str], ratios) -> list[dict]:
    """Rows ``{kind, images, inside_8x, ..., halfwidth_8x, ...}``: the share of measured PSNRs inside the
    error model's central ``INTERVAL`` (a calibrated model holds that share) and its mean half-width (dB)."""
    half = LAPLACE_HALF_WIDTH * np.exp(log_scale)
    inside = np.abs(pred - true) <= half
    return _per_kind(kinds, lambda sel: {**{f"inside_{r}x": float(inside[sel, j].mean()) for j, r in enumerate(ratios)},
                                         **{f"halfwidth_{r}x": float(half[sel, j].mean()) for j, r in enumerate(ratios)}})
