"""Per-image reconstruction measurements at every ratio, computed once and cached (resumable).

For each image of a folder (crop policy and size as in training; default native 128 px crops) and
each ratio: PSNR, SSIM and MSE of the posterior-mean reconstruction; Tesseract word confidence of
the reconstruction when the original crop is text-bearing (``min_words`` words read on a 3x upscaled
view: at 128 px, text is a few pixels high); JPEG bits per pixel of the original crop; optionally
Inception pool features of the original and of each reconstruction (for rFID of any allocation and
an Inception-feature distance).

The cache is a folder of ``chunk_*.npz`` files under ``<cache>/<tokenizer fingerprint>-<settings>/``,
each written atomically: a killed run keeps every finished chunk and the next run measures only the
images not yet in a chunk. Another tokenizer or crop setting gets its own subfolder.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torchmetrics.functional.image import peak_signal_noise_ratio, structural_similarity_index_measure
from tqdm import tqdm

from cat_tokenizer.complexity.probe import jpeg_bits_per_pixel
from cat_tokenizer.data.images import UnreadableImage, list_images, load_rgb
from cat_tokenizer.data.transforms import CropPolicy, image_transform
from cat_tokenizer.metrics.fid import InceptionFeatures
from cat_tokenizer.metrics.image import to_pil
from cat_tokenizer.metrics.ocr import ocr_confidence
from cat_tokenizer.models.nested_vae import NestedVAE

__all__ = ["ReconTable", "measure_folder", "ocr_upscaled"]

log = logging.getLogger(__name__)


@dataclass
class ReconTable:
    """Measurements of N images at R ratios (rows in path order).

    ``ocr[i, j]`` is NaN unless image i is text-bearing (``ocr_orig[i]`` is then the original's
    confidence); ``feats`` / ``feats_orig`` are None when features were not computed.
    """

    paths: list[str]
    kinds: list[str]
    ratios: tuple[int, ...]
    image_size: int
    psnr: np.ndarray  # (N, R)
    ssim: np.ndarray  # (N, R)
    mse: np.ndarray  # (N, R)
    ocr: np.ndarray  # (N, R), NaN where not text-bearing
    ocr_orig: np.ndarray  # (N,), NaN where not text-bearing
    jpeg_bpp: np.ndarray  # (N,)
    feats: np.ndarray | None = None  # (N, R, 2048) float16
    feats_orig: np.ndarray | None = None  # (N, 2048) float16
    extra: dict = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.paths)

    @property
    def text_bearing(self) -> np.ndarray:
        return ~np.isnan(self.ocr_orig)

    def tokens(self, ratio_idx: np.ndarray) -> np.ndarray:
        """Tokens per image for per-image ratio indices (into ``ratios``)."""
        r = np.asarray(self.ratios)[ratio_idx]
        return (np.ceil(self.image_size / r) ** 2).astype(np.int64)


def ocr_upscaled(img: Image.Image, factor: int = 3) -> tuple[float, int]:
    """Tesseract (mean word confidence, words) on a bicubic ``factor``x view of a small crop."""
    return ocr_confidence(img.resize((img.width * factor, img.height * factor), Image.Resampling.BICUBIC))


def _settings_key(vae: NestedVAE, image_size: int, crop: str, ocr_words: int, features: bool, ocr: bool = True) -> str:
    fp = vae.fingerprint(with_head=False)  # a ratio or distortion head does not change a reconstruction
    settings = {"size": image_size, "crop": crop, "ocr_words": ocr_words, "features": features, "v": 1}
    tag = json.dumps(settings if ocr else {**settings, "ocr": False}, sort_keys=True)  # caches made before the flag keep their key
    return f"{fp}-{hashlib.sha1(tag.encode()).hexdigest()[:8]}"


@torch.no_grad()
def _measure(vae: NestedVAE, x: torch.Tensor, inception, min_words: int, ocr: bool = True) -> dict[str, np.ndarray]:
    """Measurements of one batch x (B, 3, S, S) in [-1, 1] (no Tesseract at all when ``ocr`` is off)."""
    b, ratios = len(x), vae.ratios
    out = {k: np.zeros((b, len(ratios)), np.float32) for k in ("psnr", "ssim", "mse")}
    out["ocr"] = np.full((b, len(ratios)), np.nan, np.float32)
    out["ocr_orig"] = np.full(b, np.nan, np.float32)
    crops = [to_pil(x[i]) for i in range(b)]
    out["jpeg_bpp"] = np.array([jpeg_bits_per_pixel(c) for c in crops], np.float32)
    originals = [ocr_upscaled(c) for c in crops] if ocr else []
    for i, (conf, words) in enumerate(originals):
        if words >= min_words:
            out["ocr_orig"][i] = conf
    real = (x.float() + 1) / 2
    if inception is not None:
        out["feats_orig"] = inception(real).cpu().numpy().astype(np.float16)
        out["feats"] = np.zeros((b, len(ratios), inception.num_features), np.float16)
    for j, r in enumerate(ratios):
        fake = (vae.reconstruct(x, r).float() + 1) / 2  # (B, 3, S, S) in [0, 1]
        out["psnr"][:, j] = peak_signal_noise_ratio(fake, real, data_range=1.0, reduction="none", dim=(1, 2, 3)).cpu().numpy()
        out["ssim"][:, j] = structural_similarity_index_measure(fake, real, data_range=1.0, reduction="none").cpu().numpy()
        out["mse"][:, j] = (fake - real).pow(2).mean(dim=(1, 2, 3)).cpu().numpy()
        for i in np.flatnonzero(~np.isnan(out["ocr_orig"])):
            out["ocr"][i, j] = ocr_upscaled(to_pil(fake[i] * 2 - 1))[0]
        if inception is not None:
            out["feats"][:, j] = inception(fake).cpu().numpy().astype(np.float16)
    return out


def _read_chunks(folder: Path) -> dict[str, dict]:
    """Every cached image's measurements, by path relative to the root, from the folder's chunk files."""
    done: dict[str, dict] = {}
    for f in sorted(folder.glob("chunk_*.npz")):
        with np.load(f, allow_pickle=False) as z:
            arrays = {k: z[k] for k in z.files}
        for i, p in enumerate(arrays.pop("paths")):
            done[str(p)] = {k: v[i] for k, v in arrays.items()}
    return done


def measure_folder(root: str | Path, vae: NestedVAE, cache: str | Path, image_size: int = 128, crop: CropPolicy = "native",
                   min_words: int = 3, features: bool | None = None, chunk: int = 32, progress: bool = True,
                   only: list[Path] | None = None, ocr: bool = True) -> ReconTable:
    """Measure every image under ``root`` (or the files ``only``; cached in ``cache``); ``features=None``
    computes Inception features when there are at least 200 images (enough for rFID to mean something);
    ``ocr=False`` skips Tesseract (PSNR / SSIM only, for training a distortion head on many images)."""
    root, vae = Path(root).expanduser(), vae.eval()
    files = sorted(Path(f) for f in only) if only is not None else list_images(root)
    if features is None:
        features = len(files) >= 200
    folder = Path(cache) / _settings_key(vae, image_size, crop, min_words, features, ocr)
    folder.mkdir(parents=True, exist_ok=True)
    done = _read_chunks(folder)
    rel = [f.relative_to(root).as_posix() for f in files]
    todo = [i for i, p in enumerate(rel) if p not in done]
    if done:
        log.info("reconstruction cache %s: %d of %d images measured, %d to go", folder, len(rel) - len(todo), len(rel), len(todo))
    inception = InceptionFeatures().eval().to(next(vae.parameters()).device) if features and todo else None
    tf = image_transform(image_size, train=False, crop=crop)
    n_chunks = len(list(folder.glob("chunk_*.npz")))
    bar = tqdm(total=len(todo), desc="reconstruct", unit="img", disable=not progress or not todo)
    for s in range(0, len(todo), chunk):
        idx, xs = [], []
        for i in todo[s : s + chunk]:
            try:
                xs.append(tf(load_rgb(files[i])))
                idx.append(i)
            except UnreadableImage as err:
                log.warning("skipping %s", err)
        if xs:
            m = _measure(vae, torch.stack(xs).to(next(vae.parameters()).device), inception, min_words, ocr)
            target = folder / f"chunk_{n_chunks:05d}.npz"
            tmp = folder / f".{target.name}.tmp.npz"
            np.savez(tmp, paths=np.array([rel[i] for i in idx]), **m)
            os.replace(tmp, target)  # atomic: a kill never leaves half a chunk
            n_chunks += 1
            for j, i in enumerate(idx):
                done[rel[i]] = {k: v[j] for k, v in m.items()}
        bar.update(len(todo[s : s + chunk]))
    bar.close()
    keep = [p for p in rel if p in done]
    stack = lambda k: np.stack([done[p][k] for p in keep]) if keep and k in done[keep[0]] else None  # noqa: E731
    return ReconTable(
        paths=keep, kinds=[p.split("/")[0] if "/" in p else "" for p in keep], ratios=tuple(vae.ratios), image_size=image_size,
        psnr=stack("psnr"), ssim=stack("ssim"), mse=stack("mse"), ocr=stack("ocr"), ocr_orig=stack("ocr_orig"),
        jpeg_bpp=stack("jpeg_bpp"), feats=stack("feats"), feats_orig=stack("feats_orig"),
    )
