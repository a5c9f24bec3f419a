"""``cat-tokenizer encode`` / ``decode``: images <-> latent files."""

from __future__ import annotations

import logging
import os
from pathlib import Path

import torch
from torchvision.transforms.v2 import functional as TF
from torchvision.utils import save_image

from cat_tokenizer.data.images import UnreadableImage, load_rgb
from cat_tokenizer.devices import resolve_device
from cat_tokenizer.errors import UserInputError
from cat_tokenizer.io import check_latent, load_latent, load_vae, save_latent

__all__ = ["encode_files", "decode_files"]

log = logging.getLogger(__name__)


def output_names(inputs: list[str], suffix: str) -> list[Path]:
    """Output paths relative to the inputs' common folder, with ``suffix`` (``d1/a.png`` and ``d2/a.png``
    become ``d1/a<suffix>`` and ``d2/a<suffix>``).

    Raises:
        UserInputError: two inputs would write the same output (e.g. ``a.png`` and ``a.jpg``); nothing is written.
    """
    resolved = [Path(p).resolve() for p in inputs]
    root = Path(os.path.commonpath([p.parent for p in resolved])) if resolved else Path(".")
    names = [p.relative_to(root).with_suffix(suffix) for p in resolved]
    seen: dict[Path, str] = {}
    for src, name in zip(inputs, names):
        if name in seen and Path(seen[name]).resolve() != Path(src).resolve():
            raise UserInputError(f"{seen[name]} and {src} would both be written as {name}; rename one or encode them "
                                 "in separate runs (nothing was written)")
        seen.setdefault(name, src)
    return names


@torch.no_grad()
def encode_files(images: list[str], ratio: int | str, ckpt: str, out: str, sample: bool = False, device: str = "auto") -> list[Path]:
    """Encode each image at ``ratio`` (or ``"auto"``: the tokenizer's ratio head picks it); writes
    ``<out>/<path relative to the inputs' common folder>.safetensors``. Unreadable files are skipped;
    inputs whose outputs would collide are refused before anything is written.

    Returns:
        The latent files written.
    """
    names = output_names(images, ".safetensors")
    dev = resolve_device(device)
    vae = load_vae(ckpt).to(dev)
    written, skipped = [], []
    for path, name in zip(images, names):
        try:
            img = load_rgb(path)
        except UnreadableImage as err:
            log.warning("skipping %s", err)
            skipped.append(path)
            continue
        x = TF.to_dtype(TF.to_image(img), torch.float32, scale=True).mul(2).sub(1)[None].to(dev)  # (1, 3, H, W)
        post = vae.encode(x, ratio)
        post = post[0] if isinstance(post, list) else post  # "auto": one posterior per image
        z = post.sample() if sample else post.mode()  # (1, C, h, w)
        target = Path(out) / name
        written.append(save_latent(target, z[0], post.ratio, post.input_size, source=str(path)))
        log.info("%s -> %s  %dx latent %s (%d tokens)", path, target, post.ratio, tuple(z.shape[1:]), z.shape[-1] * z.shape[-2])
    if skipped:
        log.warning("skipped %d unreadable file(s): %s", len(skipped), ", ".join(skipped))
    return written


@torch.no_grad()
def decode_files(latents: list[str], ckpt: str, out: str, device: str = "auto") -> list[Path]:
    """Decode latent files to PNGs at their original size (``<out>/<path relative to the inputs'
    common folder>.png``); every latent is checked against its metadata before anything is written.

    Returns:
        The PNGs written.
    """
    names = output_names(latents, ".png")
    dev = resolve_device(device)
    vae = load_vae(ckpt).to(dev)
    loaded = [load_latent(p) for p in latents]
    for path, lat in zip(latents, loaded):
        check_latent(lat, vae, path)
    written = []
    for path, name, lat in zip(latents, names, loaded):
        x = vae.decode(lat.latent[None].to(dev), lat.ratio, size=(lat.height, lat.width))  # (1, 3, H, W)
        target = Path(out) / name
        target.parent.mkdir(parents=True, exist_ok=True)
        save_image(x.clamp(-1, 1).add(1).div(2), target)
        written.append(target)
        log.info("%s -> %s (%dx%d, ratio %d)", path, target, lat.height, lat.width, lat.ratio)
    return written
