"""Reading a ratio or distortion head's inputs from the tokenizer's trunk, and scoring a distortion head.

Shared by the heads' training (``cat_tasks.distill``) and the reconstruction reports that use them
(``rd --distortion-head``, ``analyse --distortion-head``).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from cat_tokenizer.data.images import load_rgb
from cat_tokenizer.data.transforms import image_transform
from cat_tokenizer.errors import UserInputError
from cat_tokenizer.models.ratio_head import RatioHead

__all__ = ["trunk_inputs", "predict_psnr", "predict_distortion", "mae_table", "coverage_table"]

INTERVAL = 0.8  # the central interval coverage_table checks
LAPLACE_HALF_WIDTH = float(np.log(1 / (1 - INTERVAL)))  # in scales: P(|error| <= t * scale) = 1 - exp(-t)


@torch.no_grad()
def trunk_inputs(vae, head: RatioHead, files: list[Path], image_size: int, device: torch.device,
           batch: int = 16, crop: str = "resize") -> list[torch.Tensor]:
    """[(N, D) the head's trunk statistics] + [(N, C, S/8, S/8) 8x maps] when it has a conv branch."""
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


@torch.no_grad()
def predict_distortion(vae, files: list[Path], device: torch.device) -> tuple[np.ndarray, np.ndarray | None]:
    """(N, R) PSNRs the tokenizer's distortion head predicts for ``files`` (its own crop and size), and
    (N, R) its error model's log Laplace scales (None when the head has none)."""
    head = vae.ratio_head
    if head is None or not head.predicts_psnr:
        raise UserInputError("this tokenizer has no distortion head: make one with `cat-tokenizer distortion-head`")
    inputs = [t.to(device) for t in trunk_inputs(vae, head, files, head.config["image_size"], device, crop=head.config["crop"])]
    spread = head.log_scale(inputs[0]).cpu().numpy() if head.has_error_model else None
    return head.score(*inputs).cpu().numpy(), spread


def predict_psnr(vae, files: list[Path], device: torch.device) -> np.ndarray:
    """(N, R) PSNRs the tokenizer's distortion head predicts for ``files``."""
    return predict_distortion(vae, files, device)[0]


def mae_table(pred: np.ndarray, true: np.ndarray, kinds: list[str], ratios) -> list[dict]:
    """Rows ``{kind, images, mae_8x, ..., bias_8x, ...}`` (bias: mean predicted - measured), all kinds first."""
    err = pred - true
    return _per_kind(kinds, lambda sel: {**{f"mae_{r}x": float(np.abs(err[sel, j]).mean()) for j, r in enumerate(ratios)},
                                         **{f"bias_{r}x": float(err[sel, j].mean()) for j, r in enumerate(ratios)}})


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
