"""Batches of one compression ratio each, shuffled per epoch and sharded across DDP ranks."""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping, Sequence

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Sampler

from cat_tokenizer.errors import UserInputError

__all__ = ["BucketBatchSampler", "balanced_weights", "bucket_loader", "trained_batches", "world_and_rank"]


class BucketBatchSampler(Sampler[list[tuple[int, int]]]):
    """Yields batches ``[(index, ratio), ...]`` in which every item has the same ratio.

    Two modes:
      * ``item_ratios`` given (one ratio per item, e.g. assigned by content): items are bucketed
        by ratio, each bucket shuffled and cut into batches, and the batch order shuffled.
      * ``item_ratios=None``: items are shuffled and batched, and each batch draws its ratio
        uniformly from ``ratios`` (or always ``fixed_ratio``).

    Under DDP, batches are grouped into global steps of ``num_replicas`` batches that share one
    ratio, so all ranks run the same ratio at the same step (no rank waits on a slower ratio)
    and get the same number of batches. An incomplete step is dropped (``drop_last``) or filled
    by repeating batches of the same ratio. The order depends only on ``seed`` and the epoch, so every rank
    computes the same global plan. The epoch comes from ``set_epoch`` or, in a Lightning fit, from ``position``:
    Lightning calls ``set_epoch`` only on a loader's ``sampler`` or ``batch_sampler.sampler``, never on a batch
    sampler, so without ``position`` every epoch repeats epoch 0's order (and its weighted draw), and a resumed
    run starts that order again.

    Args:
        num_items: dataset length.
        batch_size: items per batch.
        ratios: the ratios to draw from in uniform mode.
        item_ratios: per-item ratios (bucketed mode), or None.
        fixed_ratio: in uniform mode, use this ratio for every batch.
        shuffle: shuffle items and batches every epoch.
        drop_last: drop partial batches (and surplus batches when sharding).
        seed: base seed; epoch ``e`` uses ``seed + e``.
        num_replicas: DDP world size.
        rank: this process's rank.
        weights: per-item sampling weights (e.g. ``balanced_weights(kinds)``), or None.
        position: asked when a pass begins: how many batches (per rank) the run has trained, ``T``. The pass is
            the rest of epoch ``T // len(self)``, from its batch ``T % len(self)``: epoch after epoch, and a run
            stopped anywhere and resumed sees the batches of one uninterrupted run. ``None`` (outside a fit):
            ``set_epoch`` decides. ``partial(trained_batches, datamodule)`` in a train loader.
    """

    def __init__(
        self,
        num_items: int,
        batch_size: int,
        ratios: Sequence[int] = (8, 16, 32),
        item_ratios: Sequence[int] | None = None,
        fixed_ratio: int | None = None,
        shuffle: bool = True,
        drop_last: bool = False,
        seed: int = 0,
        num_replicas: int = 1,
        rank: int = 0,
        weights: Sequence[float] | None = None,
        position: Callable[[], int | None] | None = None,
    ):
        if batch_size < 1 or num_items < 1:
            raise UserInputError(f"need batch_size >= 1 and a non-empty dataset (got {batch_size}, {num_items})")
        if not 0 <= rank < num_replicas:
            raise ValueError(f"rank {rank} outside [0, {num_replicas})")
        if item_ratios is not None and len(item_ratios) != num_items:
            raise ValueError(f"item_ratios has {len(item_ratios)} entries for {num_items} items")
        if weights is not None and (len(weights) != num_items or min(weights) < 0 or sum(weights) <= 0):
            raise ValueError(f"weights must be {num_items} non-negative numbers with a positive sum")
        # Private names: Lightning re-instantiates anything with public batch_size/drop_last attributes.
        self.num_items, self._batch_size, self.ratios = num_items, batch_size, tuple(ratios)
        self.item_ratios = None if item_ratios is None else np.asarray(item_ratios, dtype=np.int64)
        self.fixed_ratio, self.shuffle, self._drop_last = fixed_ratio, shuffle, drop_last
        self.seed, self.num_replicas, self.rank, self.epoch = seed, num_replicas, rank, 0
        self.weights = None if weights is None else np.asarray(weights, dtype=np.float64)
        self.position = position

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def _chunks(self, idx: np.ndarray) -> list[np.ndarray]:
        chunks = [idx[i : i + self._batch_size] for i in range(0, len(idx), self._batch_size)]
        if self._drop_last and chunks and len(chunks[-1]) < self._batch_size:
            chunks.pop()
        return chunks

    def _steps(self, chunks: list[np.ndarray]) -> list[list[np.ndarray]]:
        """Group batches into global steps of ``num_replicas`` batches (one per rank); an
        incomplete last step is dropped (``drop_last``) or filled by repeating earlier batches."""
        k = self.num_replicas
        steps = [chunks[i : i + k] for i in range(0, len(chunks), k)]
        if steps and len(steps[-1]) < k:
            if self._drop_last:
                steps.pop()
            else:
                steps[-1] = steps[-1] + [chunks[i % len(chunks)] for i in range(k - len(steps[-1]))]
        return steps

    def _order(self, idx: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        """This epoch's order of the items ``idx``: as given, shuffled, or drawn by weight."""
        if not self.shuffle:
            return idx
        if self.weights is None or not self.weights[idx].sum() > 0:
            return rng.permutation(idx)
        p = self.weights[idx] / self.weights[idx].sum()
        return rng.choice(idx, size=len(idx), replace=True, p=p)

    def _global_steps(self) -> list[tuple[int, list[np.ndarray]]]:
        """``[(ratio, [batch for rank 0, batch for rank 1, ...]), ...]`` for this epoch."""
        rng = np.random.default_rng(self.seed + self.epoch)
        if self.item_ratios is None:
            order = self._order(np.arange(self.num_items), rng)
            steps = self._steps(self._chunks(order))
            if self.fixed_ratio is not None:
                return [(self.fixed_ratio, st) for st in steps]
            return [(int(r), st) for r, st in zip(rng.choice(self.ratios, size=len(steps)), steps)]
        out = []
        for r in np.unique(self.item_ratios):
            idx = np.flatnonzero(self.item_ratios == r)
            out += [(int(r), st) for st in self._steps(self._chunks(self._order(idx, rng)))]
        return [out[i] for i in rng.permutation(len(out))] if self.shuffle else out

    def _start(self) -> int:
        """Set this pass's epoch from ``position``; the batches of it the run already trained on."""
        trained = None if self.position is None else self.position()
        if trained is None or not len(self):  # not in a fit (set_epoch decides), or an empty epoch
            return 0
        self.epoch, done = divmod(max(0, int(trained)), len(self))
        return done

    def __iter__(self) -> Iterator[list[tuple[int, int]]]:
        start = self._start()  # before the plan: it sets the epoch
        for ratio, step in self._global_steps()[start:]:
            yield [(int(i), ratio) for i in step[self.rank]]

    def _num_steps(self, n_items: int) -> int:
        chunks = n_items // self._batch_size if self._drop_last else -(-n_items // self._batch_size)
        return chunks // self.num_replicas if self._drop_last else -(-chunks // self.num_replicas)

    def __len__(self) -> int:
        if self.item_ratios is None:
            return self._num_steps(self.num_items)
        # Bucket sizes do not depend on the epoch's shuffle.
        return sum(self._num_steps(int(c)) for c in np.unique(self.item_ratios, return_counts=True)[1])


def balanced_weights(groups: Sequence[str], shares: Mapping[str, float] | None = None) -> np.ndarray:
    """Per-item weights that give every group the same total weight (1 / group size each), or, with
    ``shares``, a total weight proportional to the group's share (groups not named get share 1)."""
    names, inverse, counts = np.unique(np.asarray(groups, dtype=object).astype(str), return_inverse=True, return_counts=True)
    shares = dict(shares or {})
    unknown = sorted(set(shares) - set(names))
    if unknown:
        raise UserInputError(f"kind shares name {unknown}, not among the kinds {names.tolist()}")
    if any(not v >= 0 for v in shares.values()) or not any(shares.get(n, 1.0) > 0 for n in names):
        raise UserInputError(f"kind shares must be >= 0 with at least one kind above 0, got {shares}")
    group_share = np.array([float(shares.get(n, 1.0)) for n in names])
    return group_share[inverse] / counts[inverse]


def world_and_rank(datamodule) -> tuple[int, int]:
    """``(world_size, global_rank)`` of the trainer a DataModule is attached to; ``(1, 0)`` without one."""
    trainer = getattr(datamodule, "trainer", None)
    return (trainer.world_size, trainer.global_rank) if trainer is not None else (1, 0)


def trained_batches(datamodule) -> int | None:
    """How many batches the fit of the trainer a DataModule is attached to has trained, over all its epochs and
    resumes (None without a trainer): ``BucketBatchSampler(position=...)`` reads it when a train loader's pass begins.

    Lightning restores this count before it makes a resumed run's first iterator, and it runs the epoch it resumes
    in to the batch count ``len(loader)``: that is the rest of the epoch the count falls in, so the sampler's epochs
    and Lightning's stay aligned even though Lightning numbers an epoch that a stop cut short as finished.
    """
    trainer = getattr(datamodule, "trainer", None)
    return None if trainer is None else int(trainer.fit_loop.epoch_loop.batch_progress.total.processed)


def bucket_loader(dataset: Dataset, sampler: BucketBatchSampler, num_workers: int, collate_fn) -> DataLoader:
    """A DataLoader over one-ratio batches (the sampler shards by rank itself), workers kept alive."""
    return DataLoader(dataset, batch_sampler=sampler, num_workers=num_workers, collate_fn=collate_fn,
                      pin_memory=torch.cuda.is_available(), persistent_workers=num_workers > 0)
