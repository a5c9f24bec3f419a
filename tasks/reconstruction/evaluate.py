"""``make eval-recon DATA=DIR CKPT=D``: reconstruct every image at 8x, 16x, 32x and at the ratio
the complexity evaluator assigns, and report per row: mean tokens, PSNR, SSIM, rFID (torchmetrics
FID, offline Inception), LPIPS (when its backbone weights are on disk) and OCR confidence on the
text-bearing images (Tesseract word confidence averaged per image, then over images; an image is
text-bearing when OCR reads at least ``min_words`` words in the original crop).
"""

from __future__ import annotations

import csv
import logging
from pathlib import Path

import numpy as np
import torch

from cat_tokenizer.complexity import ComplexityEvaluator
from cat_tokenizer.data.images import UnreadableImage, list_images, load_rgb
from cat_tokenizer.data.transforms import image_transform
from cat_tokenizer.devices import resolve_device
from cat_tokenizer.errors import UserInputError
from cat_tokenizer.losses.lpips import LPIPS
from cat_tokenizer.markdown import md_table
from cat_tokenizer.metrics import build_fid, ocr_confidence, psnr_ssim, to_pil
from cat_tokenizer.models.nested_vae import NestedVAE
from cat_tokenizer.ratios import token_count

__all__ = ["evaluate_reconstruction"]

log = logging.getLogger(__name__)


@torch.no_grad()
def evaluate_reconstruction(root: str | Path, vae: NestedVAE, out_dir: str | Path, image_size: int = 256,
                            evaluator: ComplexityEvaluator | None = None, inception: str = "auto",
                            lpips_weights: str | None = None, min_words: int = 3, device: str = "auto",
                            score_cache: str | Path | None = None) -> Path:
    """Write ``recon.md`` / ``recon.csv`` (one row per tokenizer setting); returns recon.md."""
    root, out_dir, dev = Path(root), Path(out_dir), resolve_device(device)
    files = list_images(root)
    evaluator = evaluator or ComplexityEvaluator.default(image_size)
    assigned = {r.key: r.ratio for r in evaluator.score_images(files, cache=score_cache, progress=True) if r.ratio}
    vae = vae.to(dev).eval()
    lpips = None
    if lpips_weights:

        lpips = LPIPS(backbone_weights=lpips_weights).to(dev).eval()
    rows = [f"{r}x" for r in vae.ratios] + ["CAT adaptive"]
    fids = {name: build_fid(inception).to(dev) for name in rows}
    acc = {name: {"tokens": [], "psnr": [], "ssim": [], "lpips": [], "ocr": []} for name in ["original", *rows]}
    tf = image_transform(image_size, train=False)
    n = 0
    for f in files:
        if str(f) not in assigned:
            continue
        try:
            x = tf(load_rgb(f))[None].to(dev)  # (1, 3, S, S) in [-1, 1]
        except UnreadableImage as err:
            log.warning("skipping %s", err)
            continue
        n += 1
        conf, words = ocr_confidence(to_pil(x[0]))
        text_bearing = words >= min_words
        if text_bearing:
            acc["original"]["ocr"].append(conf)
        recon = {}
        for r in vae.ratios:
            recon[f"{r}x"] = (vae.reconstruct(x, r), r)
        recon["CAT adaptive"] = recon[f"{assigned[str(f)]}x"]
        real = (x + 1) / 2
        for name, (x_hat, r) in recon.items():
            fake = (x_hat + 1) / 2
            a = acc[name]
            a["tokens"].append(token_count(image_size, image_size, r))
            psnr, ssim = psnr_ssim(x_hat, x)
            a["psnr"].append(psnr)
            a["ssim"].append(ssim)
            if lpips is not None:
                a["lpips"].append(float(lpips(x_hat, x).mean()))
            if text_bearing:
                a["ocr"].append(ocr_confidence(to_pil(x_hat[0]))[0])
            fids[name].update(real, real=True)
            fids[name].update(fake, real=False)
    if n < 2:
        raise UserInputError(f"need at least 2 readable images for rFID, found {n} under {root}")
    table = []
    for name in ["original", *rows]:
        a = acc[name]
        mean = lambda k: float(np.mean(a[k])) if a[k] else float("nan")  # noqa: E731
        table.append({"tokenizer": name, "mean_tokens": round(mean("tokens"), 1) if name != "original" else "",
                      "psnr": round(mean("psnr"), 2) if name != "original" else "",
                      "ssim": round(mean("ssim"), 4) if name != "original" else "",
                      "rfid": round(float(fids[name].compute()), 2) if name != "original" else "",
                      "lpips": round(mean("lpips"), 4) if lpips is not None and name != "original" else "n/a",
                      "ocr_conf": round(mean("ocr"), 1) if a["ocr"] else "n/a"})
    out_dir.mkdir(parents=True, exist_ok=True)
    with open(out_dir / "recon.csv", "w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=list(table[0]))
        w.writeheader()
        w.writerows(table)
    n_text = len(acc["original"]["ocr"])
    cols = list(table[0])
    lines = [f"# Reconstruction benchmark: {n} images from {root} at {image_size}px (ratios: {evaluator.name})", "",
             *md_table(cols, ([r[c] for c in cols] for r in table))]
    lines += ["", f"rFID over {n} images (few images make FID biased upward: compare rows, not papers). OCR confidence: "
              f"mean Tesseract word confidence on the {n_text} text-bearing images ({min_words}+ words read in the original); "
              "the 'original' row is the ceiling." + ("" if lpips is not None else " LPIPS: pass --lpips-weights (VGG16 file)."), ""]
    (out_dir / "recon.md").write_text("\n".join(lines))
    return out_dir / "recon.md"
