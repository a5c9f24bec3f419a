"""The shared DataModule: image folders -> batches of one compression ratio each."""

from __future__ import annotations

import hashlib
import logging
import warnings
from collections.abc import Sequence
from pathlib import Path

import lightning as L
import torch
from torch.utils.data import DataLoader, Dataset
from torchvision.transforms import v2

from cat_tokenizer.data.default_data import ensure_default_data
from cat_tokenizer.data.images import UnreadableImage, list_images, load_rgb, partition_readable
from cat_tokenizer.data.sampler import RatioBatchSampler
from cat_tokenizer.errors import InputNotFound, UserInputError
from cat_tokenizer.ratios import DEFAULT_RATIOS, check_ratio, parse_ratio_spec

__all__ = ["CATDataModule", "ImageFileDataset", "collate_skipping"]

log = logging.getLogger(__name__)


def image_transform(size: int, train: bool, hflip: bool = False) -> v2.Compose:
    """Resize the short side to ``size``, crop ``size x size`` (random for training), map to [-1, 1]."""
    crop = v2.RandomCrop(size) if train else v2.CenterCrop(size)
    flips = [v2.RandomHorizontalFlip()] if (train and hflip) else []
    return v2.Compose([
        v2.ToImage(),
        v2.Resize(size, antialias=True),
        crop,
        *flips,
        v2.ToDtype(torch.float32, scale=True),
        v2.Normalize([0.5, 0.5, 0.5], [0.5, 0.5, 0.5]),  # (3, size, size) in [-1, 1]
    ])


class ImageFileDataset(Dataset):
    """Images from a list of files; items are dicts ``{image, ratio, index}``.

    Indexed by ``(index, ratio)`` pairs from ``RatioBatchSampler`` (or a plain index: ratio 0).
    A file that fails to decode returns ``None`` with one warning; ``collate_skipping`` drops it.
    """

    def __init__(self, files: Sequence[Path], transform: v2.Compose):
        self.files, self.transform = list(files), transform

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, key: int | tuple[int, int]) -> dict | None:
        index, ratio = key if isinstance(key, tuple) else (key, 0)
        try:
            img = load_rgb(self.files[index])
        except UnreadableImage as err:
            warnings.warn(f"skipping unreadable image {err}", stacklevel=1)
            return None
        return {"image": self.transform(img), "ratio": ratio, "index": index}


def collate_skipping(items: list[dict | None]) -> dict | None:
    """Default collate over the readable items; ``ratio`` becomes one int for the whole batch."""
    items = [it for it in items if it is not None]
    if not items:
        return None
    ratios = {it["ratio"] for it in items}
    if len(ratios) != 1:
        raise RuntimeError(f"a batch mixes ratios {sorted(ratios)}; batches must hold one ratio")
    return {
        "image": torch.stack([it["image"] for it in items]),  # (B, 3, S, S)
        "index": torch.tensor([it["index"] for it in items]),
        "ratio": ratios.pop(),
    }


class CATDataModule(L.LightningDataModule):
    """Image folder (recursive) or the embedded default data, in batches of one ratio each.

    Args:
        root: folder of images (searched recursively); None uses the embedded default data.
        image_size: training resolution (short side resized, then a square crop).
        batch_size: images per training batch.
        val_batch_size: images per validation batch (default: ``batch_size``).
        num_workers: DataLoader worker processes.
        val_fraction: share of files held out for validation, chosen by a hash of the path (stable
            when files are added) within each top-level subfolder, at least one per subfolder.
        ratios: compression ratios in play.
        ratio_sampling: ``uniform`` (each batch draws a ratio) or ``fixed:<r>``.
        hflip: random horizontal flips in training (off by default: mirrored text is not text).
        verify_images: check every file's header at setup and drop unreadable ones up front.
        seed: base seed of the per-epoch shuffles.
        drop_last: drop partial training batches.
    """

    def __init__(
        self,
        root: str | None = None,
        image_size: int = 256,
        batch_size: int = 8,
        val_batch_size: int | None = None,
        num_workers: int = 4,
        val_fraction: float = 0.1,
        ratios: Sequence[int] = DEFAULT_RATIOS,
        ratio_sampling: str = "uniform",
        hflip: bool = False,
        verify_images: bool = True,
        seed: int = 0,
        drop_last: bool = True,
    ):
        super().__init__()
        self.ratios = tuple(check_ratio(r, DEFAULT_RATIOS) for r in ratios)
        self.fixed_ratio = parse_ratio_spec(ratio_sampling, self.ratios)
        if root is not None and not Path(root).expanduser().is_dir():
            raise InputNotFound(f"--data.root: image folder not found: {root}")
        if not 0.0 <= val_fraction < 1.0:
            raise UserInputError(f"val_fraction must be in [0, 1), got {val_fraction}")
        self.root, self.image_size, self.batch_size = root, image_size, batch_size
        self.val_batch_size = val_batch_size or batch_size
        self.num_workers, self.val_fraction, self.hflip = num_workers, val_fraction, hflip
        self.verify_images, self.seed, self.drop_last = verify_images, seed, drop_last
        self.train_set: ImageFileDataset | None = None
        self.val_set: ImageFileDataset | None = None
        self.predict_set: ImageFileDataset | None = None
        self.skipped: list[UnreadableImage] = []

    def prepare_data(self) -> None:
        if self.root is None:
            ensure_default_data()

    def data_root(self) -> Path:
        return Path(self.root).expanduser() if self.root is not None else ensure_default_data()

    def setup(self, stage: str | None = None) -> None:
        if self.train_set is not None:
            return
        root = self.data_root()
        files = list_images(root)
        if self.verify_images:
            files, self.skipped = partition_readable(files)
            for err in self.skipped:
                log.warning("skipping unreadable image %s", err)
            if self.skipped:
                log.warning("skipped %d unreadable of %d files under %s", len(self.skipped), len(files) + len(self.skipped), root)
            if not files:
                raise UserInputError(f"no readable images under {root}")
        val = _stratified_split(files, root, self.val_fraction)
        held_out = set(val)
        train = [f for f in files if f not in held_out] or files
        self.train_set = ImageFileDataset(train, image_transform(self.image_size, True, self.hflip))
        self.val_set = ImageFileDataset(val, image_transform(self.image_size, False))
        self.predict_set = ImageFileDataset(files, image_transform(self.image_size, False))
        log.info("data: %d train / %d val images from %s", len(train), len(val), root)

    def _rank(self) -> tuple[int, int]:
        trainer = getattr(self, "trainer", None)
        return (trainer.world_size, trainer.global_rank) if trainer is not None else (1, 0)

    def _loader(self, dataset: ImageFileDataset, sampler: RatioBatchSampler) -> DataLoader:
        return DataLoader(
            dataset, batch_sampler=sampler, num_workers=self.num_workers, collate_fn=collate_skipping,
            pin_memory=torch.cuda.is_available(), persistent_workers=self.num_workers > 0,
        )

    def train_dataloader(self) -> DataLoader:
        world, rank = self._rank()
        sampler = RatioBatchSampler(
            len(self.train_set), self.batch_size, self.ratios, fixed_ratio=self.fixed_ratio,
            shuffle=True, drop_last=self.drop_last and len(self.train_set) >= self.batch_size * world,
            seed=self.seed, num_replicas=world, rank=rank,
        )
        return self._loader(self.train_set, sampler)

    def _ordered(self, dataset: ImageFileDataset, fixed_ratio: int | None) -> DataLoader:
        world, rank = self._rank()
        sampler = RatioBatchSampler(
            len(dataset), self.val_batch_size, self.ratios, fixed_ratio=fixed_ratio,
            shuffle=False, drop_last=False, seed=self.seed, num_replicas=world, rank=rank,
        )
        return self._loader(dataset, sampler)

    def val_dataloader(self) -> DataLoader:
        # The module evaluates every ratio on each held-out batch; the batch's own ratio is the first.
        return self._ordered(self.val_set, self.ratios[0])

    def test_dataloader(self) -> DataLoader:
        """The held-out split (this DataModule keeps no separate test split)."""
        return self._ordered(self.val_set, self.ratios[0])

    def predict_dataloader(self) -> DataLoader:
        """Every image (train + held out, centre crops, in file order) at the ratio from
        ``ratio_sampling``. Under DDP the last step may repeat a few images on one rank."""
        return self._ordered(self.predict_set, self.fixed_ratio)


def _stratified_split(files: list[Path], root: Path, fraction: float) -> list[Path]:
    """Validation files: those whose path hash falls under ``fraction``, per top-level subfolder
    (a class or content kind), with at least one from every subfolder of 3+ files."""
    groups: dict[str, list[Path]] = {}
    for f in files:
        rel = f.relative_to(root)
        groups.setdefault(rel.parts[0] if len(rel.parts) > 1 else "", []).append(f)
    val = []
    for members in groups.values():
        keyed = sorted(members, key=lambda f: _hash_fraction(f.relative_to(root)))
        chosen = [f for f in keyed if _hash_fraction(f.relative_to(root)) < fraction]
        if not chosen and fraction > 0 and len(members) >= 3:
            chosen = keyed[:1]
        val += chosen
    return sorted(val) or files[:1]


def _hash_fraction(rel: Path) -> float:
    """A stable number in [0, 1) from a relative path."""
    return int(hashlib.sha1(rel.as_posix().encode()).hexdigest()[:8], 16) / 2**32
