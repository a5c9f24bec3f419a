"""Batches of cached latents, one ratio per batch (the shared ``BucketBatchSampler``)."""

from __future__ import annotations

import logging
import random
from functools import partial
from pathlib import Path

import lightning as L
import numpy as np
import torch
from safetensors.torch import load_file
from torch.utils.data import DataLoader, Dataset

from cat_tokenizer.data.dataset import collate_skipping, stratified_val_keys
from cat_tokenizer.data.latent_cache import LatentCache, LatentEntry
from cat_tokenizer.data.sampler import BucketBatchSampler, bucket_loader, trained_batches, world_and_rank
from cat_tokenizer.errors import InputNotFound, UserInputError
from cat_tokenizer.ratios import RatioAssignment

__all__ = ["LatentDataModule", "LatentDataset", "collate_latents"]

log = logging.getLogger(__name__)


class LatentDataset(Dataset):
    """Items ``{latent (C, h, w) float32, ratio, index[, label][, caption[, text_emb (D,)]]}`` from cache entries.

    Args:
        root: the cache folder.
        entries: the latents of this split.
        train: draw one of an image's captions at random (else the first), and the mirrored latent
            half the time when the cache has one.
    """

    def __init__(self, root: Path, entries: list[LatentEntry], train: bool = False):
        self.root, self.entries, self.train = root, entries, train
        self.ratios = np.array([e.ratio for e in entries], dtype=np.int64)

    def __len__(self) -> int:
        return len(self.entries)

    def __getitem__(self, key: int | tuple[int, int]) -> dict | None:
        index = key[0] if isinstance(key, tuple) else key
        e = self.entries[index]
        try:
            tensors = load_file(str(self.root / e.file))
            flip = self.train and "latent_flip" in tensors and random.random() < 0.5
            latent = tensors["latent_flip" if flip else "latent"].float()
        except Exception as err:  # a file deleted or damaged since it was indexed
            log.warning("skipping unreadable latent %s: %s", e.file, err)
            return None
        item = {"latent": latent, "ratio": e.ratio, "index": index}
        if e.label is not None:
            item["label"] = e.label
        if e.captions is not None:
            caps = e.captions or [""]
            j = random.randrange(len(caps)) if self.train else 0
            item["caption"] = caps[j]
            if "text_emb" in tensors:  # that caption, embedded at encode time: (D,)
                item["text_emb"] = tensors["text_emb"][min(j, len(tensors["text_emb"]) - 1)].float()
        return item


collate_latents = collate_skipping  # {latent (B, C, h, w), ratio, index (B,)[, label (B,)][, caption]}


class LatentDataModule(L.LightningDataModule):
    """A latent cache (from ``lightning predict -c configs/dit_encode.yaml``) as train / val batches.

    Args:
        cache_dir: the latent cache folder.
        ratio_mode: which latents to train on, a ``RatioAssignment`` or its short spelling: ``adaptive``
            (alias of ``complexity``: each image at its CAT ratio) or ``fixed:<r>`` (every image at r:
            the baselines).
        batch_size: latents per training batch (per device).
        val_batch_size: latents per validation batch (default ``batch_size``).
        num_workers: DataLoader worker processes.
        val_fraction: share held out for the validation loss (hash of the path, per class folder).
        seed: base seed of the per-epoch shuffles.
        drop_last: drop partial training batches.
    """

    def __init__(self, cache_dir: str, ratio_mode: RatioAssignment | str = "adaptive", batch_size: int = 32,
                 val_batch_size: int | None = None, num_workers: int = 4,
                 val_fraction: float = 0.01, seed: int = 0, drop_last: bool = True):
        super().__init__()
        self.cache = LatentCache(cache_dir)
        if not self.cache.root.is_dir():
            raise InputNotFound(f"--data.cache_dir: latent cache not found: {cache_dir} "
                                "(encode first: lightning predict -c configs/dit_encode.yaml)")
        if not 0.0 <= val_fraction < 1.0:
            raise UserInputError(f"val_fraction must be in [0, 1), got {val_fraction}")
        self.batch_size, self.val_batch_size = batch_size, val_batch_size or batch_size
        self.num_workers, self.val_fraction, self.seed, self.drop_last = num_workers, val_fraction, seed, drop_last
        self.ratio_mode = RatioAssignment.parse(ratio_mode)
        if self.ratio_mode.mode == "uniform":
            raise UserInputError("--data.ratio_mode: latents are trained at their assigned ratio (adaptive) or one ratio (fixed:<r>), not uniform")
        self.train_set: LatentDataset | None = None
        self.val_set: LatentDataset | None = None

    # ------------------------------------------------------------------ what the model reads
    @property
    def meta(self) -> dict:
        return self.cache.meta()

    @property
    def classes(self) -> list[str]:
        return list(self.meta.get("classes", []))

    @property
    def image_size(self) -> int:
        return int(self.meta.get("image_size", 0))

    def setup(self, stage: str | None = None) -> None:
        """Build the train / val splits from the latents of ``ratio_mode`` (once)."""
        if self.train_set is not None:
            return
        entries = self.cache.select(self.ratio_mode)
        val = stratified_val_keys([e.key for e in entries], self.val_fraction)  # as the image DataModule splits files
        train = [e for e in entries if e.key not in val] or entries
        held = [e for e in entries if e.key in val]
        self.train_set = LatentDataset(self.cache.root, train, train=True)
        self.val_set = LatentDataset(self.cache.root, held)
        counts = {int(r): int(c) for r, c in zip(*np.unique(self.train_set.ratios, return_counts=True))}
        log.info("latents (%s): %d train / %d val from %s; train per ratio %s", self.ratio_mode.cache_mode, len(train), len(held),
                 self.cache.root, {f"{r}x": c for r, c in counts.items()})

    def latent_ratios(self) -> list[int]:
        """Ratios present in the chosen latents (train or held out)."""
        return sorted({int(r) for ds in (self.train_set, self.val_set) if ds is not None for r in ds.ratios})

    def latent_std(self, ratio: int, max_items: int = 256) -> tuple[float, int]:
        """Standard deviation of the latents at ``ratio`` over up to ``max_items`` of them (a seeded
        sample; training latents first, held-out ones when training has too few), and how many were read."""
        pool = [(ds, int(i)) for ds in (self.train_set, self.val_set) if ds is not None for i in np.flatnonzero(ds.ratios == ratio)]
        if not pool:
            return 0.0, 0
        n_train = sum(ds is self.train_set for ds, _ in pool)
        chosen = random.Random(self.seed).sample(pool[:n_train], min(max_items, n_train))
        chosen += pool[n_train:][: max_items - len(chosen)]
        zs = [it["latent"] for it in (ds[i] for ds, i in chosen) if it is not None]
        return float(torch.stack(zs).float().std()), len(zs)

    def example(self) -> dict:
        """One training item (its shape tells the latent channels)."""
        for i in range(len(self.train_set)):
            item = self.train_set[i]
            if item is not None:
                return item
        raise UserInputError(f"no readable latent in {self.cache.root}")

    # ------------------------------------------------------------------ loaders
    def _loader(self, ds: LatentDataset, batch_size: int, train: bool) -> DataLoader:
        if ds is None:
            raise UserInputError("LatentDataModule: call setup() before asking for a loader")
        world, rank = world_and_rank(self)
        sampler = BucketBatchSampler(len(ds), batch_size, item_ratios=ds.ratios, shuffle=train,
                                     drop_last=train and self.drop_last and len(ds) >= batch_size * world,
                                     seed=self.seed, num_replicas=world, rank=rank,
                                     position=partial(trained_batches, self) if train else None)
        return bucket_loader(ds, sampler, self.num_workers, collate_latents)

    def train_dataloader(self) -> DataLoader:
        return self._loader(self.train_set, self.batch_size, train=True)

    def val_dataloader(self) -> DataLoader | list:
        return self._loader(self.val_set, self.val_batch_size, train=False) if self.val_set else []
