"""Pilot: why region maps cost rFID over fixed 16x, and an allocation that weighs images differently.

``allocate_mean_psnr`` maximises the mean PSNR over images: a block's error counts in proportion to one over its
image's error, so tokens flow to images already decoded well (flat art gains 4.9 dB per halving at 32x) and away
from photos and text, whose blurred blocks Inception notices. Its ``beta`` weights a block's error by its image's
error to the power ``-beta``: beta 1 is the mean-PSNR allocator, beta 0 the total squared error (tokens go where
the error is), between them a family. For each beta, at fixed 16x's tokens, on every image of a folder:
the pasted-block estimate (each ratio's whole decode, blocks pasted by the map; cheap) per kind and its rFID; then,
for the betas asked, the maps decoded for real (``decode_regions``' default). It also apportions each map's rFID
over kinds (that kind's images decoded by the map, the rest by fixed 16x).

    .venv/bin/python scripts/pilots/region_fid.py ../shared/data/real-v1/dev --ckpt cat-small --real 1,0.5 \\
        [--betas 1,0.75,0.5,0.25,0] [--cache outputs/reports/rd128/recon_cache] [--report docs/reports/region-fid-pilot-128.md]

About 2 minutes for the pasted estimates of 445 images on two cores, then about 4 minutes per real decode
(``scripts/reports.sh region-fid``: every beta decoded for real).
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import torch

from cat_tasks.reconstruction.regions import RegionDecode, _decode, _images
from cat_tasks.reconstruction.table import measure_folder
from cat_tokenizer.io import load_vae
from cat_tokenizer.markdown import md_header, md_row
from cat_tokenizer.metrics.fid import InceptionFeatures, frechet_distance
from cat_tokenizer.metrics.image import psnr_per_image
from cat_tokenizer.regions.latent import block_tokens, default_context, default_merge
from cat_tokenizer.regions.maps import allocate_mean_psnr, block_distortion


def paste(recons: list[torch.Tensor], choice: np.ndarray, block: int) -> torch.Tensor:
    """Each block from its chosen ratio's whole decode."""
    n, _, h, w = recons[0].shape
    side = w // block
    m = torch.as_tensor(choice).reshape(n, h // block, side).repeat_interleave(block, 1).repeat_interleave(block, 2)
    return sum(torch.where((m == i)[:, None], rec, 0.0) for i, rec in enumerate(recons))


@torch.no_grad()
def features(inception, y: torch.Tensor, batch: int = 32) -> np.ndarray:
    return np.concatenate([inception((y[s : s + batch] + 1) / 2).numpy() for s in range(0, len(y), batch)]).astype(np.float64)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("data")
    ap.add_argument("--ckpt", default="cat-small")
    ap.add_argument("--cache", default="outputs/reports/rd128/recon_cache")
    ap.add_argument("--betas", default="1,0.75,0.5,0.25,0")
    ap.add_argument("--real", default="", help="betas whose maps are decoded for real")
    ap.add_argument("--report", help="also write the table to this markdown file")
    a = ap.parse_args()
    lines: list[str] = []

    def say(line: str = "") -> None:
        print(line, flush=True)
        lines.append(line)

    torch.set_grad_enabled(False)
    vae = load_vae(a.ckpt).eval()
    table = measure_folder(a.data, vae, a.cache, 128, "native", features=True, progress=False)
    x = _images(Path(a.data), table, "native")
    ratios, block = list(vae.ratios), max(vae.ratios)
    recons = [torch.cat([vae.reconstruct(x[s : s + 16], r) for s in range(0, len(x), 16)]) for r in ratios]
    d = block_distortion(x, recons, block).numpy().reshape(len(x), -1, len(ratios))
    cost = np.array([block_tokens(r, block) for r in ratios], float)
    budget = cost[ratios.index(16)] * d.shape[1]
    kinds = np.array(table.kinds)
    names = sorted(set(kinds))
    inception = InceptionFeatures().eval()
    fo = table.feats_orig.astype(np.float64)
    ref = recons[ratios.index(16)]
    p16, f16 = psnr_per_image(ref, x).numpy(), features(inception, ref)
    fid16 = frechet_distance(fo, f16)

    def row(label: str, p: np.ndarray, f: np.ndarray, choice: np.ndarray) -> list:  # per-image PSNR and Inception features
        per_kind = [f"{(p - p16)[kinds == k].mean():+.2f}" for k in names]
        by_kind = [f"{frechet_distance(fo, np.where((kinds == k)[:, None], f, f16)) - fid16:+.1f}" for k in names]
        tokens = cost[choice].sum(1).mean()
        return [label, f"{tokens:.1f}", f"{(p - p16).mean():+.2f}", " / ".join(per_kind), f"{frechet_distance(fo, f) - fid16:+.1f}",
                " / ".join(by_kind)]

    say(f"# Region maps' rFID against the shared budget's image weight ({a.ckpt}, {a.data}, {table.image_size} px)")
    say()
    say(f"Written by `scripts/pilots/region_fid.py` (module doc). Fixed 16x: {budget:.0f} tokens, {p16.mean():.2f} dB, rFID "
        f"{fid16:.1f}; {len(x)} images ({', '.join(f'{k} {int((kinds == k).sum())}' for k in names)}). Oracle maps from "
        "whole-image errors, budget shared, the image weight one over its error to the power beta (1: mean PSNR, "
        "`allocate_mean_psnr`); real decodes by `decode_regions`' default; the last column: that kind's images by the map, "
        "the rest by fixed 16x.")
    say()
    for line in md_header("map", "mean tokens", "PSNR vs 16x", f"{' / '.join(names)}", "rFID vs 16x",
                          f"rFID vs 16x from {' / '.join(names)} alone"):
        say(line)
    real = {float(b) for b in a.real.split(",") if b}
    decode = RegionDecode(default_merge(vae), default_context(vae))  # decode_regions' default, as rd --regions runs it
    for beta in (float(b) for b in a.betas.split(",")):
        choice = allocate_mean_psnr(d, cost, budget, beta=beta)
        y = paste(recons, choice, block)
        say(md_row(*row(f"beta {beta:g}, pasted", psnr_per_image(y, x).numpy(), features(inception, y), choice)))
        if beta in real:
            res = _decode(vae, x, choice, ratios, inception, decode)  # rd's real decodes: PSNR, Inception features, ...
            say(md_row(*row(f"beta {beta:g}, real decode", res["psnr"], res["feats"].astype(np.float64), choice)))
    if a.report:
        Path(a.report).parent.mkdir(parents=True, exist_ok=True)
        Path(a.report).write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
