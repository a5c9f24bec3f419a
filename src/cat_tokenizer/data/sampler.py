"""Batches of one compression ratio each, shuffled per epoch and sharded across DDP ranks."""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import numpy as np
from torch.utils.data import Sampler

from cat_tokenizer.errors import UserInputError

__all__ = ["RatioBatchSampler"]


class RatioBatchSampler(Sampler[list[tuple[int, int]]]):
    """Yields batches ``[(index, ratio), ...]`` in which every item has the same ratio.

    Two modes:
      * ``item_ratios`` given (one ratio per item, e.g. assigned by content): items are bucketed
        by ratio, each bucket shuffled and cut into batches, and the batch order shuffled.
      * ``item_ratios=None``: items are shuffled and batched, and each batch draws its ratio
        uniformly from ``ratios`` (or always ``fixed_ratio``).

    Every rank gets the same number of batches: with ``drop_last`` the surplus batches are
    dropped, otherwise the list is padded by repeating batches from its start. The order
    depends only on ``seed`` and the epoch set by ``set_epoch`` (Lightning calls it), so every
    rank computes the same global list and takes its own slice ``[rank::num_replicas]``.

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
    ):
        if batch_size < 1 or num_items < 1:
            raise UserInputError(f"need batch_size >= 1 and a non-empty dataset (got {batch_size}, {num_items})")
        if not 0 <= rank < num_replicas:
            raise ValueError(f"rank {rank} outside [0, {num_replicas})")
        if item_ratios is not None and len(item_ratios) != num_items:
            raise ValueError(f"item_ratios has {len(item_ratios)} entries for {num_items} items")
        self.num_items, self.batch_size, self.ratios = num_items, batch_size, tuple(ratios)
        self.item_ratios = None if item_ratios is None else np.asarray(item_ratios, dtype=np.int64)
        self.fixed_ratio, self.shuffle, self.drop_last = fixed_ratio, shuffle, drop_last
        self.seed, self.num_replicas, self.rank, self.epoch = seed, num_replicas, rank, 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def _chunks(self, idx: np.ndarray) -> list[np.ndarray]:
        chunks = [idx[i : i + self.batch_size] for i in range(0, len(idx), self.batch_size)]
        if self.drop_last and chunks and len(chunks[-1]) < self.batch_size:
            chunks.pop()
        return chunks

    def _global_batches(self) -> list[list[tuple[int, int]]]:
        rng = np.random.default_rng(self.seed + self.epoch)
        if self.item_ratios is None:
            order = rng.permutation(self.num_items) if self.shuffle else np.arange(self.num_items)
            chunks = self._chunks(order)
            if self.fixed_ratio is not None:
                ratios = [self.fixed_ratio] * len(chunks)
            else:
                ratios = rng.choice(self.ratios, size=len(chunks)).tolist()
            batches = [[(int(i), int(r)) for i in c] for c, r in zip(chunks, ratios)]
        else:
            batches = []
            for r in np.unique(self.item_ratios):
                idx = np.flatnonzero(self.item_ratios == r)
                if self.shuffle:
                    idx = rng.permutation(idx)
                batches += [[(int(i), int(r)) for i in c] for c in self._chunks(idx)]
            if self.shuffle:
                batches = [batches[i] for i in rng.permutation(len(batches))]
        return batches

    def _per_rank(self, total: int) -> int:
        if self.drop_last:
            return total // self.num_replicas
        return -(-total // self.num_replicas)

    def __iter__(self) -> Iterator[list[tuple[int, int]]]:
        batches = self._global_batches()
        n = self._per_rank(len(batches)) * self.num_replicas
        if n > len(batches):  # pad so every rank has the same count
            batches = (batches * (-(-n // max(len(batches), 1))))[:n]
        yield from batches[:n][self.rank :: self.num_replicas]

    def _num_chunks(self, n: int) -> int:
        return n // self.batch_size if self.drop_last else -(-n // self.batch_size)

    def __len__(self) -> int:
        if self.item_ratios is None:
            total = self._num_chunks(self.num_items)
        else:  # bucket sizes do not depend on the epoch's shuffle
            total = sum(self._num_chunks(int(c)) for c in np.unique(self.item_ratios, return_counts=True)[1])
        return self._per_rank(total)
