"""Pilot: encoder-side optimisation of the sent latents, for region latents and for fixed 16x alike.

A region decode loses 0.2-0.5 dB to its pasted estimate because the region fill guesses the cells each
ratio's grid lacks (docs/regions.md, "On v3 the fill is the gap again"). The decoder is fixed and known to the
encoder, so the encoder can choose the cells it sends for the decode they will get: a few steps of Adam on the
sent cells against the decode's pixel error (iterative / semi-amortised inference in learned compression). The
tokens stay the same; only encoding costs more. The same optimisation applies to a fixed-ratio latent, so both
arms are run at equal steps: the question is whether region latents gain more than fixed 16x does.

    .venv/bin/python scripts/pilots/latent_opt.py ../shared/data/real-v1/dev --per-kind 12 --steps 0,10,30 \\
        [--report docs/reports/latent-opt-pilot-128.md]

PSNR per kind after each number of steps for fixed 16x and for each image's oracle map at 64 tokens (the map chosen
from whole-image decodes before any optimisation, as ``region-decodes`` chooses it), the region map's gain over fixed
16x at equal steps, and how far the sent cells moved (RMS change over the latent's RMS). About 10 minutes on two cores
(``scripts/reports.sh latent-opt``).
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch
import torch.nn.functional as F

from cat_tasks.reconstruction.regions import oracle_region_latent
from cat_tokenizer.files import write_text_atomic
from cat_tokenizer.io import load_vae
from cat_tokenizer.lit.kind_eval import load_kind_sample
from cat_tokenizer.metrics.image import psnr_per_image
from cat_tokenizer.regions import block_tokens
from cat_tokenizer.regions.latent import RegionLatent
from cat_tokenizer.regions.maps import block_distortion, maps_from_distortion


def optimise(decode, grids: dict[int, torch.Tensor], masks: dict[int, torch.Tensor], x: torch.Tensor, steps: int,
             lr: float, record: list[int], keep: int | None = None) -> tuple[dict[int, torch.Tensor], torch.Tensor, dict]:
    """Adam on the sent cells of ``grids`` against mean squared error of ``decode(grids)``. Returns PSNR (B,) at each
    step in ``record``, the sent cells' RMS change over their RMS (B,) at the end, and the cells after ``keep`` steps
    (the last step's when None)."""
    params = {r: g.detach().clone().requires_grad_(True) for r, g in grids.items()}
    opt = torch.optim.Adam(params.values(), lr=lr)
    out, kept = {}, None
    for step in range(steps + 1):
        if step == keep:
            kept = {r: p.detach().clone() for r, p in params.items()}
        y = decode({r: p * masks[r] for r, p in params.items()})
        if step in record:
            out[step] = psnr_per_image(y.detach().clamp(-1, 1).float(), x)
        if step == steps:
            break
        loss = F.mse_loss(y, x, reduction="none").flatten(1).mean(1).sum()  # per image: images do not interact
        opt.zero_grad()
        loss.backward()
        opt.step()
    with torch.no_grad():
        moved = sum(((params[r] - g) * masks[r]).square().flatten(1).sum(1) for r, g in grids.items())
        size = sum((g * masks[r]).square().flatten(1).sum(1) for r, g in grids.items())
    return out, (moved / size).sqrt(), kept if kept is not None else {r: p.detach() for r, p in params.items()}


ARMS = ("fixed 16x", "oracle map", "oracle map of optimised decodes")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("data")
    ap.add_argument("--ckpt", default="cat-small")
    ap.add_argument("--per-kind", type=int, default=12)
    ap.add_argument("--budget", type=float, default=64)
    ap.add_argument("--steps", default="0,10,30")
    ap.add_argument("--lr", type=float, default=0.05)
    ap.add_argument("--batch", type=int, default=12)
    ap.add_argument("--report", help="also write the table to this markdown file")
    a = ap.parse_args()
    torch.manual_seed(0)
    record = [int(s) for s in a.steps.split(",")]
    vae = load_vae(a.ckpt).eval().requires_grad_(False)
    sample = load_kind_sample(a.data, a.per_kind, 128, "native")
    kinds = np.array(sample.kinds)
    res: dict[str, dict[int, list]] = {arm: {} for arm in ARMS}
    moved: dict[str, list] = {arm: [] for arm in ARMS}
    t0 = time.time()
    for s in range(0, len(kinds), a.batch):
        x = sample.images[s : s + a.batch]
        for arm, (got, m) in batch_arms(vae, x, a.budget, max(record), a.lr, record).items():
            for k, v in got.items():
                res[arm].setdefault(k, []).append(v)
            moved[arm].append(m)
        print(f"{s + len(x)}/{len(kinds)} images, {time.time() - t0:.0f} s", flush=True)
    text = "\n".join(report(res, moved, kinds, a, vae.fingerprint()))
    print(text)
    if a.report:
        write_text_atomic(a.report, text)
        print(f"wrote {a.report}")


def batch_arms(vae, x: torch.Tensor, budget: float, steps: int, lr: float, record: list[int]) -> dict[str, tuple]:
    """Each arm of ``ARMS`` on one batch: (PSNR per step recorded, counting every step its cells had, cells moved).
    The last arm's cells had ``steps`` steps in their whole decodes before the region decode's: its steps are
    ``steps + k``, and fixed 16x runs to ``2 * steps`` so that every arm is compared at equal steps."""
    ratios, block, size = sorted(vae.ratios), max(vae.ratios), tuple(x.shape[-2:])
    whole, out = {}, {}

    def fixed(r: int, n: int, rec: list[int]) -> tuple:
        with torch.no_grad():
            z = vae.encode(x, r).mode()
        return optimise(lambda g: vae.decode(g[r], r, size=size), {r: z}, {r: torch.ones_like(z)}, x, n, lr, rec, keep=steps)

    for r in ratios:  # each ratio's whole latent after ``steps`` steps: the errors the last arm's map is chosen from
        n, rec = (2 * steps, sorted({*record, *(steps + k for k in record)})) if r == 16 else (steps, [])
        got, m, kept = fixed(r, n, rec)  # fixed 16x's arm runs on past ``steps``: its cells at ``steps`` are kept
        whole[r] = kept[r]
        if r == 16:
            out["fixed 16x"] = (got, m)
    _, lat, _ = oracle_region_latent(vae, x, budget)
    with torch.no_grad():
        recons = [vae.decode(whole[r], r, size=size).clamp(-1, 1) for r in ratios]
        d = block_distortion(x, recons, block)
        rmap = maps_from_distortion(d, ratios, [block_tokens(r, block) for r in ratios], size[0] * size[1], budget)
    for arm, start, offset in (("oracle map", lat, 0),
                               ("oracle map of optimised decodes", RegionLatent.from_full(rmap, whole, lat.size, block), steps)):
        masks = {r: start.mask(r, block // r) for r in start.grids}

        def region(g, start=start):
            return vae.decode_regions(RegionLatent(start.ratio_map, g, start.size, start.block))

        got, m, _ = optimise(region, start.grids, masks, x, steps, lr, record)
        out[arm] = ({k + offset: v for k, v in got.items()}, m)
    return out


def report(res: dict, moved: dict, kinds: np.ndarray, a, fingerprint: str) -> list[str]:
    """The pilot's table: PSNR per arm and step, per kind; the oracle map's gain over fixed 16x at equal steps."""
    ks = sorted(set(kinds))
    n = len(kinds)
    lines = [f"# Encoder-side latent optimisation: fixed 16x and region latents at equal steps ({a.ckpt}, {fingerprint})", "",
             f"{n} images of {a.data} at 128 px ({a.per_kind} per kind), each image's oracle map at {a.budget:g} tokens; Adam on "
             f"the sent cells, lr {a.lr:g}, against each decode's mean squared error (fixed 16x: `decode`; the map: "
             f"`decode_regions`' default). Written by `scripts/pilots/latent_opt.py`.", "",
             "| arm | steps | PSNR dB | " + " | ".join(ks) + " | map - fixed 16x |", "|---|---|---|" + "---|" * len(ks) + "---|"]
    p = {arm: {st: torch.cat(parts).numpy() for st, parts in by.items()} for arm, by in res.items()}
    lines[4:4] = ["The last arm chooses each image's map from the whole-image decodes after the same optimisation at every "
                 "ratio, starts its cells from those optimised latents, and goes on optimising them in the region decode; "
                 "steps count every step its cells had (its first row: the map decoded from the optimised cells as they are). "
                 "Fixed 16x runs as long, so each gain is at equal steps.", ""]
    for arm, by in p.items():
        for st, v in by.items():
            gain = v.mean() - p["fixed 16x"][st].mean() if st in p["fixed 16x"] else float("nan")
            lines.append(f"| {arm} | {st} | {v.mean():.2f} | " + " | ".join(f"{v[kinds == k].mean():.2f}" for k in ks)
                         + (f" | {gain:+.2f} |" if arm != "fixed 16x" else " | |"))
    lines += ["", "Sent cells moved by each arm's steps (RMS change over RMS): "
              + "; ".join(f"{arm} {torch.cat(m).mean():.2f}" for arm, m in moved.items()) + ".", ""]
    return lines


if __name__ == "__main__":
    main()
