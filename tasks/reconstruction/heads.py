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

__all__ = ["trunk_inputs", "predict_psnr", "mae_table"]


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
def predict_psnr(vae, files: list[Path], device: torch.device) -> np.ndarray:
    """(N, R) PSNRs the tokenizer's distortion head predicts for ``files`` (its own crop and size)."""
    head = vae.ratio_head
    if head is None or not head.predicts_psnr:
        raise UserInputError("this tokenizer has no distortion head: make one with `cat-tokenizer distortion-head`")
    inputs = trunk_inputs(vae, head, files, head.config["image_size"], device, crop=head.config["crop"])
    return head.score(*[t.to(device) for t in inputs]).cpu().numpy()


def mae_table(pred: np.ndarray, true: np.ndarray, kinds: list[str], ratios) -> list[dict]:
    """Rows ``{kind, images, mae_8x, ..., bias_8x, ...}`` (bias: mean predicted - measured), all kinds first."""
    kinds_arr = np.asarray(kinds)
    rows = []
    for kind in ["all", *sorted(set(kinds))]:
        sel = np.ones(len(kinds), bool) if kind == "all" else kinds_arr == kind
        err = pred[sel] - true[sel]
        rows.append({"kind": kind, "images": int(sel.sum()),
                     **{f"mae_{r}x": float(np.abs(err[:, j]).mean()) for j, r in enumerate(ratios)},
                     **{f"bias_{r}x": float(err[:, j].mean()) for j, r in enumerate(ratios)}})
    return rows


