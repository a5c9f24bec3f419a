"""Pilot: region maps allocated from block errors measured in *mixed* decodes instead of whole-image decodes.

A block's error in a region decode depends on its neighbours' ratios; the oracle map allocates from errors in
whole-image decodes, which miss that. This pilot compares, on a per-kind sample of a dev folder, real decodes
of maps allocated (shared budget, fixed 16x's tokens) from: whole-image errors (today's oracle), errors in
three Latin maps (each block at each ratio once, its neighbours at the others), their mean and max, and
whole-image errors corrected round by round by the decodes of the maps themselves (``refined_choice``), starting
from the oracle or from the block head, and each image held to the budget. Prints one markdown table.

    .venv/bin/python scripts/pilots/region_refine.py ../shared/data/real-v1/dev --per-kind 24 \
        --report docs/reports/region-refine-pilot-128.md [--ckpt cat-small]

~10 minutes on one thread for 96 images (docs/regions.md has its table).
"""

from __future__ import annotations

import argparse

import numpy as np
import torch

from cat_tokenizer import NestedVAE
from cat_tokenizer.lit.kind_eval import load_kind_sample
from cat_tokenizer.metrics.image import psnr_per_image
from cat_tokenizer.regions import block_tokens
from cat_tokenizer.regions.maps import (
    allocate,
    allocate_mean_psnr,
    block_distortion,
    context_distortion,
    predicted_distortion,
    probe_choices,
    refined_choice,
)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("dev")
    ap.add_argument("--per-kind", type=int, default=24)
    ap.add_argument("--ckpt", default="cat-small")
    ap.add_argument("--rounds", type=int, default=4)
    ap.add_argument("--probes", type=int, default=0, choices=(0, 2, 4),
                    help="also refine with probe decodes (probe_choices: 4 = 2x2 cosets, 2 = checkerboard)")
    ap.add_argument("--only-refined", action="store_true", help="skip the Latin-map rows")
    ap.add_argument("--report", help="also write the table (with the command line) to this markdown file")
    a = ap.parse_args()
    lines: list[str] = []

    def emit(line: str) -> None:
        print(line, flush=True)
        lines.append(line)

    torch.set_num_threads(1)
    vae = NestedVAE.from_pretrained(a.ckpt).eval()
    sample = load_kind_sample(a.dev, a.per_kind, 128, "native")
    x, kinds = sample.images, np.array(sample.kinds)
    ratios, block, n, side = sorted(vae.ratios), max(vae.ratios), len(sample.images), 128 // max(vae.ratios)
    cost = np.array([block_tokens(r, block) for r in ratios], float)
    budget = cost[ratios.index(16)] * side * side

    @torch.no_grad()
    def decode(idx: np.ndarray) -> torch.Tensor:  # (N, nb) ratio indices -> (N, 3, 128, 128)
        maps = torch.as_tensor(np.asarray(ratios)[idx]).reshape(n, side, side)
        return torch.cat([vae.decode_regions(vae.encode_regions(x[i : i + 16], maps[i : i + 16])).clamp(-1, 1)
                          for i in range(0, n, 16)])

    def blocks(y: torch.Tensor) -> np.ndarray:
        return block_distortion(x, [y], block)[..., 0].reshape(n, -1).numpy()

    with torch.no_grad():
        recons = [torch.cat([vae.reconstruct(x[i : i + 16], r) for i in range(0, n, 16)]) for r in ratios]
        head = (torch.cat([predicted_distortion(vae, x[i : i + 16]) for i in range(0, n, 16)]).reshape(n, -1, 3).double().numpy()
                if vae.block_head is not None else None)
    whole = block_distortion(x, recons, block).reshape(n, -1, 3).numpy()
    latin = (None if a.only_refined else
             torch.cat([context_distortion(vae, x[i : i + 16]) for i in range(0, n, 16)]).reshape(n, -1, 3).numpy())
    fixed16 = psnr_per_image(recons[ratios.index(16)], x).numpy()
    names = sorted(set(kinds))
    emit(f"# Region maps from errors in mixed decodes: {n} images of {a.dev} ({a.per_kind} per kind), 128 px, "
         f"tokenizer {a.ckpt} ({vae.fingerprint()}), budget {budget:g} tokens per image")
    emit("")
    emit("PSNR of the real region decode against fixed 16x (dB), mean over images and per kind.")
    emit("")
    emit("| map allocated from | mean tokens | vs fixed 16x | " + " | ".join(names) + " |")
    emit("|---" * (3 + len(names)) + "|")

    def show(name: str, idx: np.ndarray) -> np.ndarray:
        y = decode(idx)
        g = psnr_per_image(y, x).numpy() - fixed16
        emit(f"| {name} | {cost[idx].sum(1).mean():.1f} | {g.mean():+.3f} | "
             + " | ".join(f"{g[kinds == k].mean():+.3f}" for k in names) + " |")
        return blocks(y)

    shared = lambda d: allocate_mean_psnr(d, cost, budget)  # noqa: E731
    per_image = lambda d: np.stack([allocate(d[i], cost, budget) for i in range(n)])  # noqa: E731
    for name, d in () if a.only_refined else (("Latin maps", latin), ("mean of whole and Latin", (whole + latin) / 2),
                    ("max of whole and Latin", np.maximum(whole, latin))):
        show(name, shared(d))
    starts = [("whole-image errors", whole, shared), ("whole-image errors, each image held to the budget", whole, per_image)]
    starts += [("block head", head, shared)] if head is not None else []
    def observe(name: str, c: np.ndarray, k: int, probe: int | None = None) -> np.ndarray:  # probes are decoded silently
        return blocks(decode(c)) if probe else show(f"{name}, {k} round(s) of real decodes", c)

    probe = (lambda c: probe_choices(c, (side, side), len(ratios), a.probes)) if a.probes else None
    for name, d, alloc in starts:
        name += f", probes {a.probes}" if a.probes else ""
        idx = refined_choice(d, alloc, lambda c, *at, name=name: observe(name, c, *at), a.rounds, probe)
        show(f"{name}, {a.rounds} round(s) of real decodes", idx)
    if a.report:
        emit("")
        emit(f"Written by `scripts/pilots/region_refine.py {a.dev} --per-kind {a.per_kind} --ckpt {a.ckpt} --rounds {a.rounds}"
             f"{f' --probes {a.probes}' if a.probes else ''}{' --only-refined' if a.only_refined else ''}`.")
        with open(a.report, "w") as fh:
            fh.write("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
