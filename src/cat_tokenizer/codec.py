"""``cat-tokenizer encode`` / ``decode``: images <-> latent files."""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import torch
from torchvision.transforms.v2 import functional as TF
from torchvision.utils import save_image

from cat_tokenizer.data.images import UnreadableImage, load_rgb
from cat_tokenizer.devices import resolve_device
from cat_tokenizer.errors import UserInputError
from cat_tokenizer.files import atomic_write
from cat_tokenizer.io import RegionFile, check_latent, load_any_latent, load_vae, save_latent, save_region_latent
from cat_tokenizer.outputs import check_out_dir, refuse_inputs, resolved, split_existing
from cat_tokenizer.regions.maps import region_maps

__all__ = ["EncodeOptions", "encode_files", "decode_files", "output_names"]

log = logging.getLogger(__name__)


def output_names(inputs: list[str], suffix: str) -> list[Path]:
    """Output paths relative to the inputs' common folder, with ``suffix`` (``d1/a.png`` and ``d2/a.png``
    become ``d1/a<suffix>`` and ``d2/a<suffix>``).

    Raises:
        UserInputError: two inputs would write the same output (e.g. ``a.png`` and ``a.jpg``); nothing is written.
    """
    paths = [resolved(p) for p in inputs]
    root = Path(os.path.commonpath([p.parent for p in paths])) if paths else Path(".")
    names = [p.relative_to(root).with_suffix(suffix) for p in paths]
    seen: dict[Path, str] = {}
    for src, name in zip(inputs, names):
        if name in seen and resolved(seen[name]) != resolved(src):
            raise UserInputError(f"{seen[name]} and {src} would both be written as {name}; rename one or encode them "
                                 "in separate runs (nothing was written)")
        seen.setdefault(name, src)
    return names


@dataclass(frozen=True)
class EncodeOptions:
    """The options of ``cat-tokenizer encode`` (and of ``encode_files``).

    Args:
        ratio: compression per side, auto (the tokenizer's ratio head picks it: `cat-tokenizer distill`), or regions
            (one ratio per 32-px block: --region-budget or --target-psnr)
        out: output folder
        ckpt: save_pretrained folder, lightning .ckpt, or hub repo id
        sample: sample the posterior instead of taking its mean
        device: auto, cpu, cuda, cuda:1 ...
        overwrite: rewrite latents that exist already (default: keep them, so a rerun resumes)
        target_psnr: with --ratio auto and a distortion head: each image's cheapest ratio predicted to reach this PSNR;
            with --ratio regions: the fewest tokens whose map is predicted to reach it
        confidence: with --ratio auto, --target-psnr and a distortion head with an error model: the cheapest ratio that
            reaches the target with at least this probability (0.9: fewer images miss it, more tokens)
        region_budget: with --ratio regions: tokens per image
        region_map: with --ratio regions: oracle (measured in three decodes), head (the tokenizer's block head), variance
            or edges (cheap, from the pixels)
        region_refine: with --ratio regions: rounds that decode the map for real and correct each block's error at its
            ratio by the measured one before allocating again (one decode each; 3 took the oracle map at 64 tokens from
            +0.15 to +0.22 dB over fixed 16x on 96 dev images: docs/regions.md)
        region_probes: with --region-refine: each round also decodes the map with each 2x2 coset (4) or checkerboard
            half (2) of the blocks moved to each other ratio, so the errors of the ratios not chosen are measured in
            context too (2 * probes more decodes a round: docs/regions.md)
    """

    ratio: Literal["8", "16", "32", "auto", "regions"]
    out: str
    ckpt: str = "cat-small"
    sample: bool = False
    device: str = "auto"
    overwrite: bool = False
    target_psnr: float | None = None
    confidence: float | None = None
    region_budget: float | None = None
    region_map: Literal["oracle", "head", "variance", "edges"] = "oracle"
    region_refine: int = 0
    region_probes: Literal[0, 2, 4] = 0


@torch.no_grad()
def encode_files(images: list[str], o: EncodeOptions) -> list[Path]:
    """Encode each image at ``o.ratio`` (or ``"auto"``: the tokenizer's ratio head picks it; with a
    distortion head and ``target_psnr``, the cheapest ratio predicted to reach that PSNR; or
    ``"regions"``: one ratio per 32-px block, the map from ``region_map`` under ``region_budget`` tokens
    per image or the fewest tokens that reach ``target_psnr``: ``cat_tokenizer.regions``); writes
    ``<out>/<path relative to the inputs' common folder>.safetensors``. Unreadable files are skipped;
    inputs whose outputs would collide are refused before anything is written. Latents that exist
    already are kept (a rerun resumes) unless ``overwrite``; an output that is one of the inputs is
    refused (``cat_tokenizer.outputs``).

    Returns:
        The latent files written.
    """
    names = output_names(images, ".safetensors")
    targets = [check_out_dir(o.out) / name for name in names]
    for t in targets:
        refuse_inputs(t, images, "encode: output", "one of the input images")
    todo, kept = split_existing(targets, o.overwrite)
    if kept:
        log.info("kept %d existing latent(s) in %s (pass --overwrite to rewrite them)", kept, o.out)
    dev = resolve_device(o.device)
    vae = load_vae(o.ckpt).to(dev)
    ratio = o.ratio if o.ratio in ("auto", "regions") else int(o.ratio)
    _check_ratio_options(vae, ratio, o)
    fingerprint = vae.fingerprint(with_head=False)  # heads and a region fill change no latent
    written, skipped = [], []
    for i in todo:
        path = images[i]
        try:
            img = load_rgb(path)
        except UnreadableImage as err:
            log.warning("skipping %s", err)
            skipped.append(path)
            continue
        x = TF.to_dtype(TF.to_image(img), torch.float32, scale=True).mul(2).sub(1)[None].to(dev)  # (1, 3, H, W)
        target, source = targets[i], str(resolved(path))
        if ratio == "regions":
            written.append(_encode_regions(vae, x, target, source, fingerprint, o))
            continue
        post = vae.encode(x, ratio, o.target_psnr, o.confidence)
        post = post[0] if isinstance(post, list) else post  # "auto": one posterior per image
        z = post.sample() if o.sample else post.mode()  # (1, C, h, w)
        written.append(save_latent(target, z[0], post.ratio, post.input_size, source=source, tokenizer=fingerprint))
        log.info("%s -> %s  %dx latent %s (%d tokens)", path, target, post.ratio, tuple(z.shape[1:]), z.shape[-1] * z.shape[-2])
    if skipped:
        log.warning("skipped %d unreadable file(s): %s", len(skipped), ", ".join(skipped))
    return written


def _check_ratio_options(vae, ratio: int | str, o: EncodeOptions) -> None:
    """--target-psnr, --confidence and the --region-* options only where the ratio and the tokenizer's heads give
    them a meaning."""
    target_psnr, region_budget = o.target_psnr, o.region_budget
    if o.confidence is not None and (ratio != "auto" or target_psnr is None):
        raise UserInputError("--confidence goes with --ratio auto and --target-psnr")
    if o.region_refine and ratio != "regions" or o.region_refine < 0:
        raise UserInputError(f"--region-refine takes 0 or more rounds, with --ratio regions (got {o.region_refine})")
    if o.region_probes and not o.region_refine:
        raise UserInputError("--region-probes corrects refinement rounds: give --region-refine N too")
    if ratio == "regions":
        if (region_budget is None) == (target_psnr is None):
            raise UserInputError("--ratio regions needs --region-budget TOKENS or --target-psnr DB (one of the two)")
    elif region_budget is not None:
        raise UserInputError("--region-budget is for --ratio regions")
    elif target_psnr is not None and (ratio != "auto" or vae.ratio_head is None or not vae.ratio_head.predicts_psnr):
        raise UserInputError("--target-psnr needs --ratio auto and a tokenizer with a distortion head "
                             "(`cat-tokenizer distortion-head` makes one), or --ratio regions")


def _encode_regions(vae, x: torch.Tensor, target: Path, source: str, fingerprint: str, o: EncodeOptions) -> Path:
    """One image as a region latent file; logs its map and tokens."""
    ratio_map = region_maps(vae, x, o.region_map, o.region_budget, o.target_psnr, o.region_refine, o.region_probes)  # (1, bh, bw)
    lat = vae.encode_regions(x, ratio_map, o.sample)
    save_region_latent(target, lat.pack()[0], lat.size, lat.block, source=source, tokenizer=fingerprint)
    shares = ", ".join(f"{r}x {int((ratio_map == r).sum())}" for r in lat.ratios())
    log.info("%s -> %s  region latent, %d blocks (%s), %d tokens", source, target, ratio_map[0].numel(), shares,
             int(lat.tokens()[0]))
    return target


@torch.no_grad()
def decode_files(latents: list[str], ckpt: str, out: str, device: str = "auto", overwrite: bool = False) -> list[Path]:
    """Decode latent files to PNGs at their original size (``<out>/<path relative to the inputs'
    common folder>.png``); every latent is checked against its metadata and the tokenizer's
    fingerprint before anything is written. A PNG that would replace a latent's source image (or
    any input) is refused, even with ``overwrite``; other existing PNGs are kept unless ``overwrite``.

    Returns:
        The PNGs written.
    """
    names = output_names(latents, ".png")
    dev = resolve_device(device)
    vae = load_vae(ckpt).to(dev)
    fingerprint = vae.fingerprint(with_head=False)  # heads and a region fill change no latent
    loaded = [load_any_latent(p) for p in latents]
    regions = {}
    for i, (path, lat) in enumerate(zip(latents, loaded)):
        if isinstance(lat, RegionFile):
            regions[i] = lat.to_latent(vae, path, fingerprint)
        else:
            check_latent(lat, vae, path, fingerprint)
    targets = [check_out_dir(out) / name for name in names]
    sources = [lat.source for lat in loaded if lat.source]
    for t in targets:
        refuse_inputs(t, [*latents, *sources], "decode: output", "an input latent or the source image of one")
    todo, kept = split_existing(targets, overwrite)
    if kept:
        log.info("kept %d existing image(s) in %s (pass --overwrite to rewrite them)", kept, out)
    written = []
    for i in todo:
        path, lat, target = latents[i], loaded[i], targets[i]
        if i in regions:
            x = vae.decode_regions(regions[i].to(dev))  # (1, 3, H, W)
            what = f"regions, {int(regions[i].tokens()[0])} tokens"
        else:
            x = vae.decode(lat.latent[None].to(dev), lat.ratio, size=(lat.height, lat.width))  # (1, 3, H, W)
            what = f"ratio {lat.ratio}"
        _save_png(x.clamp(-1, 1).add(1).div(2), target)
        written.append(target)
        log.info("%s -> %s (%dx%d, %s)", path, target, lat.height, lat.width, what)
    return written


def _save_png(x: torch.Tensor, target: Path) -> None:
    """Write (1, 3, H, W) in [0, 1] as a PNG atomically (``atomic_write``)."""
    with atomic_write(target) as tmp:
        save_image(x, tmp, format="png")
