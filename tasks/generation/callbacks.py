"""Callbacks for DiT training: sample grids after validation, images/s and tokens/s."""

from __future__ import annotations

import logging
from pathlib import Path

import lightning as L
from lightning.pytorch.callbacks import ThroughputMonitor
from lightning.pytorch.utilities import rank_zero_only
from torchvision.utils import save_image

__all__ = ["SampleGridLogger", "TokenThroughput"]

log = logging.getLogger(__name__)


class SampleGridLogger(L.Callback):
    """After each validation run, draws ``pl_module.log_images()`` (one grid per trained ratio)
    into ``<log_dir>/images/samples_<r>x_step<N>.png`` and TensorBoard. Needs ``model.tokenizer``
    to decode; without it, logs once and draws nothing.

    Args:
        num_images: samples per ratio (default the module's ``grid_images``).
        seed: noise seed (the same every time, so grids are comparable across steps).
    """

    def __init__(self, num_images: int | None = None, seed: int = 0):
        self.num_images, self.seed = num_images, seed
        self._out: Path | None = None

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        self._out = Path(trainer.log_dir or trainer.default_root_dir) / "images"  # on every rank (broadcasts)

    @rank_zero_only
    def on_validation_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.sanity_checking:
            return
        if not pl_module.hparams.get("tokenizer"):
            log.info("no model.tokenizer: sample grids are not drawn")
            return
        self._out.mkdir(parents=True, exist_ok=True)
        experiment = getattr(trainer.logger, "experiment", None)
        for name, grid in pl_module.log_images(self.num_images, seed=self.seed).items():
            save_image(grid, self._out / f"{name}_step{trainer.global_step:07d}.png")
            if hasattr(experiment, "add_image"):
                experiment.add_image(name, grid, trainer.global_step)


def _batch_size(batch: dict) -> int:
    return 0 if batch is None else int(batch["latent"].shape[0])


class TokenThroughput(ThroughputMonitor):
    """Lightning's ``ThroughputMonitor`` counting images (``samples_per_sec``) and DiT tokens
    (``items_per_sec`` = latent cells / patch_size^2) of the variable-size batches.

    Args:
        patch_size: the DiT's patch size.
        window_size: batches in the moving average.
    """

    def __init__(self, patch_size: int = 2, window_size: int = 50):
        def tokens(batch: dict) -> int:
            if batch is None:
                return 0
            b, _, h, w = batch["latent"].shape
            return b * (h // patch_size) * (w // patch_size)

        super().__init__(batch_size_fn=_batch_size, length_fn=tokens, window_size=window_size)
