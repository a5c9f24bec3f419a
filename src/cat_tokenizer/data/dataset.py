"""Image files as a Dataset of one-ratio items, their collate, and the stable hash split."""

from __future__ import annotations

import hashlib
import random
import warnings
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset
from torchvision.transforms import v2

from cat_tokenizer.data.images import UnreadableImage, load_rgb

__all__ = ["ImageFileDataset", "collate_skipping", "kind_of", "stratified_split", "stratified_val_keys", "hash_fraction"]


class ImageFileDataset(Dataset):
    """Images from a list of files; items are dicts ``{image, ratio, index[, key][, label][, caption[, captions]]}``.

    Indexed by ``(index, ratio)`` pairs from ``BucketBatchSampler`` (or a plain index: ratio 0).
    A file that fails to decode returns ``None`` with one warning; ``collate_skipping`` drops it.

    Args:
        files: image paths.
        transform: PIL image -> (3, S, S) tensor in [-1, 1].
        labels: one class index per file, or None.
        captions: one list of captions per file, or None; training draws one at random, evaluation takes the first
            (and gets them all as ``captions``).
        ratios: one assigned ratio per file (content-adaptive modes), or None.
        train: draw random captions.
        root: the folder the files are under; items then carry ``key``, the file's path relative to it
            (what the latent cache and score tables are keyed by).
    """

    def __init__(self, files: Sequence[Path], transform: v2.Compose, labels: Sequence[int] | None = None,
                 captions: Sequence[list[str]] | None = None, ratios: np.ndarray | None = None, train: bool = False,
                 root: Path | None = None):
        self.files, self.transform, self.train, self.root = list(files), transform, train, root
        self.labels, self.captions, self.ratios = labels, captions, ratios

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, key: int | tuple[int, int]) -> dict | None:
        index, ratio = key if isinstance(key, tuple) else (key, 0)
        try:
            img = load_rgb(self.files[index])
        except UnreadableImage as err:
            warnings.warn(f"skipping unreadable image {err}", stacklevel=1)
            return None
        item = {"image": self.transform(img), "ratio": ratio, "index": index}
        if self.root is not None:
            item["key"] = self.files[index].relative_to(self.root).as_posix()
        if self.labels is not None:
            item["label"] = self.labels[index]
        if self.captions is not None:
            caps = self.captions[index] or [""]
            item["caption"] = random.choice(caps) if self.train else caps[0]
            if not self.train:  # evaluation and encoding see every caption (the latent cache embeds them all)
                item["captions"] = list(self.captions[index])
        return item


def collate_skipping(items: list[dict | None]) -> dict | None:
    """Collate the readable items of one ratio: tensors stacked (``image`` (B, 3, S, S), or ``latent``),
    ints as a tensor (``index``, ``label``), strings as a list (``caption``), ``ratio`` one int."""
    items = [it for it in items if it is not None]
    if not items:
        return None
    ratios = {it["ratio"] for it in items}
    if len(ratios) != 1:
        raise RuntimeError(f"a batch mixes ratios {sorted(ratios)}; batches must hold one ratio")
    batch = {"ratio": ratios.pop()}
    for key in items[0]:
        if key == "ratio" or not all(key in it for it in items):
            continue
        values = [it[key] for it in items]
        if isinstance(values[0], torch.Tensor):
            batch[key] = torch.stack(values)
        elif isinstance(values[0], int):
            batch[key] = torch.tensor(values)
        else:
            batch[key] = values
    return batch



def kind_of(path: Path, root: Path) -> str:
    """The top-level folder of ``path`` under ``root`` (its content kind or class); ``""`` at the top."""
    parts = path.relative_to(root).parts
    return parts[0] if len(parts) > 1 else ""


def stratified_split(files: list[Path], root: Path, fraction: float) -> list[Path]:
    """Validation files (``stratified_val_keys`` of their paths relative to ``root``); never empty."""
    by_key = {f.relative_to(root).as_posix(): f for f in files}
    return sorted(by_key[k] for k in stratified_val_keys(list(by_key), fraction)) or files[:1]


def stratified_val_keys(keys: list[str], fraction: float) -> set[str]:
    """Held-out keys (relative paths, ``/``-separated): those whose hash falls under ``fraction``,
    per top-level folder (a class or content kind), with at least one from every folder of 3+ keys."""
    groups: dict[str, list[str]] = {}
    for k in keys:
        groups.setdefault(k.split("/")[0] if "/" in k else "", []).append(k)
    val: set[str] = set()
    for members in groups.values():
        keyed = sorted(members, key=hash_fraction)
        chosen = [k for k in keyed if hash_fraction(k) < fraction]
        if not chosen and fraction > 0 and len(members) >= 3:
            chosen = keyed[:1]
        val.update(chosen)
    return val


def hash_fraction(key: str) -> float:
    """A stable number in [0, 1) from a relative path."""
    return int(hashlib.sha1(key.encode()).hexdigest()[:8], 16) / 2**32
