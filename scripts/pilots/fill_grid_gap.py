"""Pilot: where the pixel merge loses to its true-latents bound, one ratio's filled grid at a time.

Each image's oracle map at a budget is decoded with the pixel merge (each ratio's grid decoded whole, blended by
the map) from the region fill's grids, from every ratio's true full latents (the bound: not transmittable), and
from the fill's grids with one ratio's grid swapped for its true latents. What each swap wins is what that grid's
fill costs. Then one context pass (re-encode the first decode, fill the missing cells from it: ``decode_regions(...,
refine=1)``) on every grid, and on one grid at a time: a pass that re-decodes one ratio costs one encode and one
decode instead of one encode and a decode per ratio. Prints one markdown table, per kind.

    .venv/bin/python scripts/pilots/fill_grid_gap.py ../shared/data/real-v1/dev --ckpt cat-small [--per-kind 12]

About a minute on two cores for 48 images (docs/regions.md, "A larger fill is not the lever either").
"""

from __future__ import annotations

import argparse

import numpy as np
import torch

from cat_tasks.reconstruction.regions import oracle_region_latent
from cat_tokenizer.io import load_vae
from cat_tokenizer.lit.kind_eval import load_kind_sample
from cat_tokenizer.markdown import md_header, md_row
from cat_tokenizer.metrics.image import psnr_per_image
from cat_tokenizer.regions.latent import exit_latents, pixel_merge_decode


@torch.no_grad()
def grid_gap(vae, x: torch.Tensor, budget: float, batch: int = 16) -> dict[str, np.ndarray]:
    """Per image PSNR of the pixel merge: the fill's grids, the true grids, and each ratio's true grid alone."""
    rows: dict[str, list] = {}
    for s in range(0, len(x), batch):
        xb = x[s : s + batch]
        h, w = xb.shape[-2:]
        _, lat, true = oracle_region_latent(vae, xb, budget)
        filled = vae.region_fill(lat)
        first = pixel_merge_decode(vae, lat, filled).clamp(-1, 1)
        context = {r: lat.filled(r, c) for r, c in exit_latents(vae, first, lat.ratios()).items()}
        grids = {"region fill": filled, "true full latents (bound)": true}
        grids.update({f"region fill, true {r}x grid": {**filled, r: true[r]} for r in lat.ratios()})
        grids["region fill + 1 context pass"] = context
        grids.update({f"region fill + 1 context pass on the {r}x grid": {**filled, r: context[r]} for r in lat.ratios()})
        for name, g in grids.items():
            y = pixel_merge_decode(vae, lat, g)[..., :h, :w].clamp(-1, 1)
            rows.setdefault(name, []).append(psnr_per_image(y, xb).cpu())
    return {k: torch.cat(v).numpy() for k, v in rows.items()}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("dev")
    ap.add_argument("--ckpt", default="cat-small", help="a tokenizer with a region fill")
    ap.add_argument("--per-kind", type=int, default=12)
    ap.add_argument("--budget", type=float, default=64.0, help="tokens per image of each oracle map")
    args = ap.parse_args()
    vae = load_vae(args.ckpt).eval()
    if vae.region_fill is None:
        raise SystemExit(f"fill_grid_gap: {args.ckpt} has no region fill")
    sample = load_kind_sample(args.dev, args.per_kind, 128, "native")
    got = grid_gap(vae, sample.images, args.budget)
    kinds = np.array(sample.kinds)
    names = sorted(set(sample.kinds))
    print(f"Pixel merge on {len(kinds)} images of {args.dev}, oracle maps at {args.budget:g} tokens; {args.ckpt}\n")
    print("\n".join(md_header("grids", "PSNR dB", *names)))
    for name, p in got.items():
        print(md_row(name, f"{p.mean():.2f}", *(f"{p[kinds == k].mean():.2f}" for k in names)))


if __name__ == "__main__":
    main()
