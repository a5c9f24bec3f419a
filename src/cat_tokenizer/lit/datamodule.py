"""The shared DataModule: image folders -> batches of one compression ratio each.

It sits in ``lit`` because it composes the data layer with the complexity evaluator (scores are
precomputed per image to assign ratios), both of which sit below it.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from functools import partial
from pathlib import Path
from typing import Literal

import lightning as L
import numpy as np
from torch.utils.data import DataLoader

from cat_tokenizer.complexity.cache import default_score_cache
from cat_tokenizer.complexity.evaluator import ComplexityEvaluator
from cat_tokenizer.complexity.spec import EvaluatorSpec
from cat_tokenizer.data.annotations import class_labels, read_captions
from cat_tokenizer.data.assign import ratios_from_csv, ratios_from_evaluator
from cat_tokenizer.data.dataset import ImageFileDataset, collate_skipping, kind_of, stratified_split
from cat_tokenizer.data.default_data import ensure_default_data
from cat_tokenizer.data.flat import FlatFields
from cat_tokenizer.data.images import UnreadableImage, list_images, partition_readable
from cat_tokenizer.data.latent_cache import LatentCache
from cat_tokenizer.data.sampler import BucketBatchSampler, balanced_weights, bucket_loader, trained_batches, world_and_rank
from cat_tokenizer.data.transforms import CropPolicy, image_transform
from cat_tokenizer.errors import InputNotFound, UserInputError
from cat_tokenizer.ratios import DEFAULT_RATIOS, RatioAssignment, check_ratio

__all__ = ["CATDataModule"]

log = logging.getLogger(__name__)


def _check_settings(root: str | None, crop: str, balance: str, max_downscale: float, val_fraction: float, num_workers: int,
                    flat_share: float, kind_shares: dict | None, sizes: dict[str, int]) -> None:
    """One line per bad DataModule setting, naming its --data option."""
    if root is not None and not Path(root).expanduser().is_dir():
        raise InputNotFound(f"--data.root: image folder not found: {root}")
    if crop not in ("resize", "native"):
        raise UserInputError(f"--data.crop must be 'resize' or 'native', got {crop!r}")
    if balance not in ("none", "kind"):
        raise UserInputError(f"--data.balance must be 'none' or 'kind', got {balance!r}")
    if max_downscale < 1:
        raise UserInputError(f"--data.max_downscale must be >= 1, got {max_downscale}")
    if not 0.0 <= val_fraction < 1.0:
        raise UserInputError(f"val_fraction must be in [0, 1), got {val_fraction}")
    if bad := {k: v for k, v in sizes.items() if not isinstance(v, int) or v < 1}:
        raise UserInputError(f"--data.{next(iter(bad))} must be a positive integer, got {next(iter(bad.values()))}")
    if num_workers < 0:
        raise UserInputError(f"--data.num_workers must be >= 0, got {num_workers}")
    if not 0.0 <= flat_share <= 1.0:
        raise UserInputError(f"--data.flat_share must be in [0, 1], got {flat_share}")
    if kind_shares and balance != "kind":
        raise UserInputError("--data.kind_shares needs --data.balance kind")


class CATDataModule(L.LightningDataModule):
    """Image folder (recursive) or the embedded default data, in batches of one ratio each.

    One DataModule serves the VAE, the DiT and the probe: optional class labels (subfolders) and
    captions, and a ratio per batch from a sampling rule or per image from content complexity.

    Args:
        root: folder of images (searched recursively); None uses the embedded default data.
        image_size: side of the square crops (training and evaluation).
        crop: how an image becomes a crop (``cat_tokenizer.data.transforms``): ``resize`` (short side to
            ``image_size``, then crop: the whole image) or ``native`` (crops at or near the image's own
            resolution, so text stays legible; images no larger than ``image_size`` are resized whole).
            Evaluation uses the same policy (native: centred crops at native resolution).
        max_downscale: with ``crop: native``, the largest random downscale in training.
        balance: ``kind`` draws training images so that every top-level folder (content kind or
            class) gets the same share per epoch (with replacement; epoch length unchanged);
            ``none`` samples every file equally often.
        kind_shares: with ``balance: kind``, each kind's relative share of an epoch instead of equal
            shares, e.g. ``{natural: 2, text: 2}`` (kinds not named get 1): more of the kinds a model is
            worst at. Names must be top-level folders of ``root``.
        flat_share: the expected share of each training batch replaced by synthetic flat colour
            fields (``cat_tokenizer.data.flat``): real data holds too few exactly uniform areas for a
            tokenizer to learn to return one colour exactly. Evaluation never sees them.
        batch_size: images per training batch.
        val_batch_size: images per validation batch (default: ``batch_size``).
        num_workers: DataLoader worker processes.
        val_fraction: share of files held out for validation, chosen by a hash of the path within each
            top-level subfolder, at least one per subfolder. Adding files never moves a training file to
            validation; only a folder's at-least-one pick (while none of its files hashes under the
            fraction) goes back to training once one does.
        ratios: compression ratios in play.
        ratio_assignment: a ``RatioAssignment`` or its short spelling: ``uniform`` (each batch draws a
            ratio), ``fixed:<r>``, ``complexity`` (each image at the ratio the evaluator assigns, scored
            once in ``prepare_data`` and cached) or ``csv:<path>`` (columns ``path,ratio``, e.g. written
            by ``cat-tokenizer score``).
        evaluator: the complexity evaluator for ``complexity``, or its name (``EvaluatorSpec``: a preset such
            as ``default``, ``rubric``, ``distilled:D``, ``auto:D``, or a YAML path), read here and built on
            first use. Default: ``default``.
        score_cache: the score cache file (default: one per dataset under ``$CAT_TOKENIZER_CACHE/scores``).
        labels: add ``label`` (index of the top-level subfolder, sorted names) to every batch.
        captions: a captions file (CSV ``path,caption``, JSON ``{path: caption}``, or COCO captions);
            adds ``caption`` (a list of strings) to every batch.
        hflip: random horizontal flips in training (off by default: mirrored text is not text).
        verify_images: check every file's header at setup and drop unreadable ones up front.
        seed: base seed of the per-epoch shuffles.
        drop_last: drop partial training batches.
        skip_encoded: a latent cache folder (``cat_tokenizer.data.latent_cache``): ``predict`` covers
            only the images not yet encoded there under this ratio assignment (resuming an encode).
    """

    def __init__(
        self,
        root: str | None = None,
        image_size: int = 256,
        crop: CropPolicy = "resize",
        max_downscale: float = 2.0,
        balance: Literal["none", "kind"] = "none",
        kind_shares: dict[str, float] | None = None,
        flat_share: float = 0.0,
        batch_size: int = 8,
        val_batch_size: int | None = None,
        num_workers: int = 4,
        val_fraction: float = 0.1,
        ratios: Sequence[int] = DEFAULT_RATIOS,
        ratio_assignment: RatioAssignment | str = "uniform",
        evaluator: ComplexityEvaluator | str | None = None,
        score_cache: str | None = None,
        labels: bool = False,
        captions: str | None = None,
        hflip: bool = False,
        verify_images: bool = True,
        seed: int = 0,
        drop_last: bool = True,
        skip_encoded: str | None = None,
    ):
        super().__init__()
        self.ratios = tuple(check_ratio(r, DEFAULT_RATIOS) for r in ratios)
        self.assignment = RatioAssignment.parse(ratio_assignment, self.ratios)
        _check_settings(root, crop, balance, max_downscale, val_fraction, num_workers, flat_share, kind_shares,
                        dict(image_size=image_size, batch_size=batch_size, val_batch_size=val_batch_size or batch_size))
        self.root, self.image_size, self.batch_size = root, image_size, batch_size
        self.crop, self.max_downscale, self.balance = crop, max_downscale, balance
        self.kind_shares = dict(kind_shares or {})
        self.flat_share = flat_share
        self.val_batch_size = val_batch_size or batch_size
        self.num_workers, self.val_fraction, self.hflip = num_workers, val_fraction, hflip
        self.verify_images, self.seed, self.drop_last = verify_images, seed, drop_last
        self._evaluator = evaluator if isinstance(evaluator, ComplexityEvaluator) else EvaluatorSpec.parse(evaluator)
        self.score_cache = score_cache
        self.labels, self.captions = labels, captions
        self.skip_encoded = skip_encoded
        self.classes: list[str] = []
        self.train_set: ImageFileDataset | None = None
        self.val_set: ImageFileDataset | None = None
        self.predict_set: ImageFileDataset | None = None
        self.skipped: list[UnreadableImage] = []

    @property
    def fixed_ratio(self) -> int | None:
        """The one ratio of a ``fixed:<r>`` assignment (None otherwise)."""
        return self.assignment.ratio

    @property
    def evaluator(self) -> ComplexityEvaluator:
        if isinstance(self._evaluator, EvaluatorSpec):
            self._evaluator = ComplexityEvaluator.from_config(self._evaluator)
        return self._evaluator

    def data_root(self) -> Path:
        return Path(self.root).expanduser() if self.root is not None else ensure_default_data()

    def score_cache_path(self) -> Path:
        return Path(self.score_cache).expanduser() if self.score_cache else default_score_cache(self.data_root())

    def _readable_files(self, root: Path, report: bool) -> list[Path]:
        files = list_images(root)
        if not self.verify_images:
            return files
        files, skipped = partition_readable(files)
        if report:
            self.skipped = skipped
            for err in skipped:
                log.warning("skipping unreadable image %s", err)
            if skipped:
                log.warning("skipped %d unreadable of %d files under %s", len(skipped), len(files) + len(skipped), root)
        if not files:
            raise UserInputError(f"no readable images under {root}")
        return files

    def prepare_data(self) -> None:
        """Build the default data; for ``complexity``, score every image once into the cache
        (local rank 0 of each node; the other ranks read the cache in ``setup``)."""
        root = self.data_root()
        if self.assignment.mode == "complexity":
            files = self._readable_files(root, report=False)
            ratios_from_evaluator(self.evaluator, files, self.score_cache_path(), progress=True)

    def _item_ratios(self, files: list[Path], root: Path) -> tuple[list[Path], np.ndarray | None]:
        if self.assignment.mode == "csv":
            return files, ratios_from_csv(self.assignment.csv, files, root, self.ratios)
        if self.assignment.mode != "complexity":
            return files, None
        ratios, errors = ratios_from_evaluator(self.evaluator, files, self.score_cache_path())
        for e in errors:
            log.warning("no complexity score, dropped: %s", e)
        bad = sorted(set(int(r) for r in ratios[ratios > 0]) - set(self.ratios))
        if bad:
            raise UserInputError(f"the evaluator assigns ratios {bad} outside data.ratios {list(self.ratios)}")
        keep = ratios > 0
        return [f for f, k in zip(files, keep) if k], ratios[keep]

    def setup(self, stage: str | None = None) -> None:
        if self.train_set is not None:
            return
        root = self.data_root()
        files, item_ratios = self._item_ratios(self._readable_files(root, report=True), root)
        labels = None
        if self.labels:
            labels, self.classes = class_labels(files, root)
        captions = None
        if self.captions:
            table = read_captions(self.captions, root)
            captions = [table.get(f.relative_to(root).as_posix(), []) for f in files]
            missing = sum(not c for c in captions)
            if missing:
                log.warning("%d of %d images have no caption in %s (they get an empty caption)", missing, len(files), self.captions)
        val = set(stratified_split(files, root, self.val_fraction))
        train_idx = [i for i, f in enumerate(files) if f not in val] or list(range(len(files)))
        val_idx = [i for i, f in enumerate(files) if f in val]

        def subset(idx: list[int], train: bool) -> ImageFileDataset:
            return ImageFileDataset(
                [files[i] for i in idx],
                image_transform(self.image_size, train, self.hflip and train, self.crop, self.max_downscale),
                labels=None if labels is None else [labels[i] for i in idx],
                captions=None if captions is None else [captions[i] for i in idx],
                ratios=None if item_ratios is None else item_ratios[idx], train=train, root=root,
            )

        self.train_set, self.val_set = subset(train_idx, True), subset(val_idx, False)
        self.train_kinds = [kind_of(files[i], root) for i in train_idx]
        # per-image sampling weights, computed here so a misspelt kind fails in setup, not in the first epoch
        self.train_weights = balanced_weights(self.train_kinds, self.kind_shares) if self.balance == "kind" else None
        self.predict_set = subset(self._to_encode(files, root), False)
        log.info("data: %d train / %d val images from %s", len(train_idx), len(val_idx), root)

    def _to_encode(self, files: list[Path], root: Path) -> list[int]:
        """Indices of the files ``predict`` should cover (all, or those not yet in ``skip_encoded``)."""
        if not self.skip_encoded:
            return list(range(len(files)))
        done = LatentCache(self.skip_encoded).done_keys(self.assignment)
        todo = [i for i, f in enumerate(files) if f.relative_to(root).as_posix() not in done]
        if done:
            log.info("latent cache %s: %d of %d images already encoded, %d to go", self.skip_encoded,
                     len(files) - len(todo), len(files), len(todo))
        return todo

    def _loader(self, dataset: ImageFileDataset, sampler: BucketBatchSampler, flat_share: float = 0.0) -> DataLoader:
        collate = FlatFields(collate_skipping, flat_share, self.seed) if flat_share > 0 else collate_skipping
        return bucket_loader(dataset, sampler, self.num_workers, collate)

    def train_dataloader(self) -> DataLoader:
        world, rank = world_and_rank(self)
        sampler = BucketBatchSampler(
            len(self.train_set), self.batch_size, self.ratios, item_ratios=self.train_set.ratios,
            fixed_ratio=self.fixed_ratio, shuffle=True, weights=self.train_weights,
            drop_last=self.drop_last and len(self.train_set) >= self.batch_size * world,
            seed=self.seed, num_replicas=world, rank=rank, position=partial(trained_batches, self),
        )
        return self._loader(self.train_set, sampler, self.flat_share)

    def _ordered(self, dataset: ImageFileDataset, fixed_ratio: int | None) -> DataLoader:
        world, rank = world_and_rank(self)
        sampler = BucketBatchSampler(
            len(dataset), self.val_batch_size, self.ratios, item_ratios=dataset.ratios, fixed_ratio=fixed_ratio,
            shuffle=False, drop_last=False, seed=self.seed, num_replicas=world, rank=rank,
        )
        return self._loader(dataset, sampler)

    def val_dataloader(self) -> DataLoader:
        # Per-image ratios when assigned by content; otherwise the smallest ratio (the VAE module
        # evaluates every ratio on each held-out batch anyway).
        return self._ordered(self.val_set, self.fixed_ratio or self.ratios[0])

    def test_dataloader(self) -> DataLoader:
        """The held-out split (this DataModule keeps no separate test split)."""
        return self._ordered(self.val_set, self.fixed_ratio or self.ratios[0])

    def predict_dataloader(self) -> DataLoader | list:
        """Every image (train + held out, centre crops, in file order, bucketed by ratio when
        assigned per image). Under DDP the last step may repeat a few images on one rank."""
        if not len(self.predict_set):  # everything already encoded (skip_encoded)
            return []
        return self._ordered(self.predict_set, self.fixed_ratio)
