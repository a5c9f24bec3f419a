"""Pilot: which share of each kind's training images a run's sampler reaches, with one draw reused every epoch
(every cat-small run before 2026-12-05: Lightning never called ``set_epoch`` on the batch sampler) and with a new
draw every epoch (``position``). Reads the data section of a LightningCLI config. Prints one markdown table.

    .venv/bin/python scripts/pilots/epoch_coverage.py ../shared/data/real-v1/train [--config configs/vae_small.yaml]

A few seconds (file listing only; docs/experiments.md, "Every epoch was epoch 0").
"""

from __future__ import annotations

import argparse

import numpy as np
import yaml

from cat_tokenizer import CATDataModule
from cat_tokenizer.data.sampler import BucketBatchSampler
from cat_tokenizer.markdown import md_header, md_row


def _drawn(sampler: BucketBatchSampler, epochs: range) -> dict[int, set[int]]:
    """Each image reached in these epochs -> the ratios it was trained at."""
    seen: dict[int, set[int]] = {}
    for epoch in epochs:
        sampler.set_epoch(epoch)
        for batch in sampler:
            for i, ratio in batch:
                seen.setdefault(i, set()).add(ratio)
    return seen


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("train", help="the training folder (real-v1/train)")
    ap.add_argument("--config", default="configs/vae_small.yaml")
    ap.add_argument("--epochs", type=int, default=10, help="epochs of new draws to count")
    args = ap.parse_args()
    init = yaml.safe_load(open(args.config))["data"]["init_args"]
    keep = ("image_size", "crop", "balance", "kind_shares", "batch_size", "val_fraction", "seed", "drop_last")
    dm = CATDataModule(root=args.train, verify_images=False, **{k: init[k] for k in keep if k in init})
    dm.setup("fit")
    kinds = np.asarray(dm.train_kinds)
    sampler = dm.train_dataloader().batch_sampler  # the run's own sampler; without a trainer set_epoch decides
    reused, fresh = _drawn(sampler, range(1)), _drawn(sampler, range(args.epochs))
    one_ratio = sum(len(r) == 1 for r in reused.values()) / len(reused)
    print(f"{len(kinds)} training images, {len(sampler)} batches an epoch ({args.config}: balance "
          f"{dm.balance}, kind shares {dm.kind_shares}); with one draw every epoch {one_ratio:.0%} of the images "
          f"reached are only ever trained at one ratio\n")
    print("\n".join(md_header("kind", "images", "reached: one draw every epoch", f"a new draw each of {args.epochs} epochs")))
    for kind in [*sorted(set(kinds.tolist())), "all"]:
        ids = set(np.flatnonzero((kinds == kind) | (kind == "all")).tolist())
        print(md_row(kind, len(ids), f"{len(ids & reused.keys()) / len(ids):.1%}", f"{len(ids & fresh.keys()) / len(ids):.1%}"))


if __name__ == "__main__":
    main()
