"""Distributed complexity scoring as a Lightning ``predict``.

    lightning predict -c configs/score.yaml --data.root DIR --trainer.devices 8 --trainer.num_nodes 4

Each rank scores its own slice of the files into its own shard cache
(``<score_cache>.shards/rank<k>.sqlite``: one writer per file, safe on network filesystems where
SQLite locking is not), skipping images already in the main cache or in its shard (a killed run
resumes). At the end rank 0 merges the shards into the main cache and writes the CSV. On one
CPU it is the same code path with one shard.
"""

from __future__ import annotations

import logging
from pathlib import Path

import lightning as L
from torch.utils.data import DataLoader, Dataset

from cat_tokenizer.complexity.cache import ScoreCache, default_score_cache, merge_shards
from cat_tokenizer.complexity.evaluator import ComplexityEvaluator, ScoreResult
from cat_tokenizer.complexity.report import format_summary, result_rows, write_rows
from cat_tokenizer.data.default_data import ensure_default_data
from cat_tokenizer.data.images import list_images
from cat_tokenizer.data.sampler import world_and_rank
from cat_tokenizer.errors import InputNotFound

__all__ = ["ScoreFilesDataModule", "ComplexityScoringModule"]

log = logging.getLogger(__name__)


class _Paths(Dataset):
    def __init__(self, paths: list[str]):
        self.paths = paths

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int) -> str:
        return self.paths[i]


class ScoreFilesDataModule(L.LightningDataModule):
    """The image files under ``root``, as batches of paths, sliced by rank (rank k takes files k, k+W, ...).

    Images are decoded by the evaluator at full resolution (OCR needs it), not resized here.

    Args:
        root: image folder (recursive); None: the embedded default data.
        batch_size: paths per predict step (the evaluator batches its models within it).
    """

    def __init__(self, root: str | None = None, batch_size: int = 32):
        super().__init__()
        if root is not None and not Path(root).expanduser().is_dir():
            raise InputNotFound(f"--data.root: image folder not found: {root}")
        self.root, self.batch_size = root, batch_size
        self.files: list[Path] = []

    def data_root(self) -> Path:
        return Path(self.root).expanduser() if self.root is not None else ensure_default_data()

    def setup(self, stage: str | None = None) -> None:
        self.files = list_images(self.data_root())

    def predict_dataloader(self) -> DataLoader:
        world, rank = world_and_rank(self)
        mine = [str(f) for f in self.files[rank::world]]
        return DataLoader(_Paths(mine), batch_size=self.batch_size, shuffle=False, collate_fn=list)


class ComplexityScoringModule(L.LightningModule):
    """Runs the evaluator over path batches; shards in, merged cache and CSV out.

    Args:
        evaluator: the complexity evaluator (default: the ``default`` preset, the scorer fitted on real-v1).
        score_cache: the main cache file (default: the dataset's cache under ``$CAT_TOKENIZER_CACHE/scores``).
        output_csv: where rank 0 writes ``path, score, ratio, description, evaluator`` at the end (None: no CSV).
    """

    def __init__(self, evaluator: ComplexityEvaluator | None = None, score_cache: str | None = None,
                 output_csv: str | None = None):
        super().__init__()
        self.evaluator = evaluator if evaluator is not None else ComplexityEvaluator.default()
        self.score_cache, self.output_csv = score_cache, output_csv
        self._main: ScoreCache | None = None
        self._shard: ScoreCache | None = None
        self.scored = 0

    def _cache_path(self) -> Path:
        if self.score_cache:
            return Path(self.score_cache).expanduser()
        return default_score_cache(self.trainer.datamodule.data_root())

    def on_predict_start(self) -> None:
        self.evaluator.load().to(self.device)  # lazily loaded networks go to this rank's device
        main = self._cache_path()
        if self.global_rank == 0:
            self._main = ScoreCache(main)  # rank 0 creates the file; the others open it once it exists
        self.trainer.strategy.barrier()
        if self.global_rank != 0:
            self._main = ScoreCache(main)
        self._shard = ScoreCache(Path(f"{main}.shards") / f"rank{self.global_rank}.sqlite")

    def predict_step(self, batch: list[str], batch_idx: int) -> list[ScoreResult]:
        # Ratios are mapped at the end over all scores (a token budget is calibrated on the whole set).
        results = self.evaluator.score_images(batch, cache=self._shard, read_also=[self._main], map_ratios=False)
        self.scored += sum(not r.cached and r.error is None for r in results)
        return results

    def on_predict_end(self) -> None:
        log.info("rank %d scored %d new image(s)", self.global_rank, self.scored)
        self._shard.close()
        self.trainer.strategy.barrier()  # every rank's shard is complete
        if self.global_rank == 0:
            shards = sorted(Path(f"{self._main.path}.shards").glob("rank*.sqlite"))
            merged = merge_shards(self._main, shards)
            files = self.trainer.datamodule.files
            results = self.evaluator.score_images(files, cache=self._main)  # all cached now: ratios + summary
            log.info("merged %d scores from %d shard(s) into %s\n%s", merged, len(shards), self._main.path,
                     format_summary(results, self.evaluator))
            if self.output_csv:
                write_rows(result_rows(results, self.trainer.datamodule.data_root(), self.evaluator.name), self.output_csv)
                log.info("wrote %s", self.output_csv)
        self._main.close()
        self.trainer.strategy.barrier()
