"""Callbacks: the model draws (``log_images``), these decide when and where it goes."""

from __future__ import annotations

import logging
from pathlib import Path

import lightning as L
from lightning.pytorch.callbacks import BasePredictionWriter, ModelCheckpoint, RichProgressBar, Timer
from lightning.pytorch.utilities import rank_zero_only
from torchvision.utils import save_image

from cat_tokenizer.io import save_latent

__all__ = ["ReconstructionGridLogger", "ExportPretrained", "ResumableCheckpoint", "SessionTimer", "LatentWriter", "StepProgressBar"]

log = logging.getLogger(__name__)


def _log_dir(trainer: L.Trainer) -> Path:
    """The run's folder. ``trainer.log_dir`` broadcasts under DDP: call it on every rank (in
    ``setup``), never inside a rank-zero-only hook, or rank 0 waits forever."""
    return Path(trainer.log_dir or trainer.default_root_dir)


class ReconstructionGridLogger(L.Callback):
    """After each validation run, draws ``pl_module.log_images(first_val_batch)`` per ratio.

    Grids go to ``<log_dir>/images/<name>_step<global_step>.png`` and, when the logger has an
    ``add_image`` (TensorBoard), to the logger too.

    Args:
        max_images: images per grid (originals on top, reconstructions below).
    """

    def __init__(self, max_images: int = 4):
        self.max_images = max_images
        self._batch = None
        self._out: Path | None = None

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        self._out = _log_dir(trainer) / "images"

    def on_validation_batch_end(self, trainer, pl_module, outputs, batch, batch_idx, dataloader_idx=0) -> None:
        if batch_idx == 0 and batch is not None:
            self._batch = {"image": batch["image"][: self.max_images].detach()}

    @rank_zero_only
    def on_validation_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self._batch is None or trainer.sanity_checking:
            return
        grids = pl_module.log_images(self._batch, self.max_images)
        out = self._out
        out.mkdir(parents=True, exist_ok=True)
        experiment = getattr(trainer.logger, "experiment", None)
        for name, grid in grids.items():
            save_image(grid, out / f"{name}_step{trainer.global_step:06d}.png")
            if hasattr(experiment, "add_image"):
                experiment.add_image(name, grid, trainer.global_step)
        self._batch = None


class ExportPretrained(L.Callback):
    """Writes the EMA weights as a ``NestedVAE.from_pretrained`` folder at the end of training
    (and after every validation when ``every_validation``).

    Args:
        dirpath: output folder; default ``<log_dir>/pretrained``.
        every_validation: also export after each validation run.
    """

    def __init__(self, dirpath: str | None = None, every_validation: bool = False):
        self.dirpath, self.every_validation = dirpath, every_validation
        self._out: Path | None = None

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        self._out = Path(self.dirpath) if self.dirpath else _log_dir(trainer) / "pretrained"

    @rank_zero_only
    def _export(self, trainer: L.Trainer, pl_module, final: bool = False) -> None:
        if trainer.fast_dev_run:  # a smoke test has no run folder (log_dir is None): nothing worth keeping
            if final:
                log.info("fast_dev_run: EMA weights not exported")
            return
        path = pl_module.export_pretrained(self._out)
        (log.info if final else log.debug)("exported NestedVAE (EMA weights) to %s", path.resolve())

    def on_validation_end(self, trainer, pl_module) -> None:
        if self.every_validation and not trainer.sanity_checking:
            self._export(trainer, pl_module)

    def on_train_end(self, trainer, pl_module) -> None:
        self._export(trainer, pl_module, final=True)


class ResumableCheckpoint(ModelCheckpoint):
    """``ModelCheckpoint`` whose ``last.ckpt`` is written when training ends, whatever ended it.

    Lightning 2.6's ``on_train_end`` writes ``last.ckpt`` only if no checkpoint was saved during the
    run, so a run stopped by ``--trainer.max_time`` resumed from its last periodic save: the cat-small
    v2 run lost 181 of 681 batches that way. Here the final step is saved unless it already was.
    """

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self.save_last and trainer.global_step and self._last_global_step_saved != trainer.global_step:
            self._save_last_checkpoint(trainer, self._monitor_candidates(trainer))


class SessionTimer(Timer):
    """``Timer`` whose ``duration`` counts this process only: a resumed run trains that long again.

    Lightning's ``--trainer.max_time`` restores the elapsed time from the checkpoint, so it limits the whole
    run: resuming a run that already trained 2:35 with ``max_time 00:02:35:00`` trains no step, and the v2
    run stopped an hour early that way. The whole run's time is still recorded (under
    the ``Timer`` key, so checkpoints of either kind carry it on).
    ``--trainer.callbacks+=cat_tokenizer.callbacks.SessionTimer --trainer.callbacks.duration 00:02:30:00``
    (``make train-small TRAIN_TIME=00:02:30:00``).
    """

    def __init__(self, duration: str = "00:02:30:00", interval: str = "step", verbose: bool = True):
        super().__init__(duration=duration, interval=interval, verbose=verbose)
        self._before = 0.0  # training seconds of the run before this process

    @property
    def state_key(self) -> str:
        return "Timer"

    def state_dict(self) -> dict:
        state = super().state_dict()
        state["time_elapsed"]["train"] = self._before + state["time_elapsed"]["train"]
        return state

    def load_state_dict(self, state_dict: dict) -> None:
        self._before = float(state_dict.get("time_elapsed", {}).get("train", 0.0))  # recorded, not counted


class LatentWriter(BasePredictionWriter):
    """Writes each latent from ``lightning predict`` as ``<output_dir>/<image path>.safetensors``
    (mirroring the data folder), with ratio and size metadata, on every rank as it goes.

    Args:
        output_dir: where the latent files go.
    """

    def __init__(self, output_dir: str):
        super().__init__(write_interval="batch")
        self.output_dir = Path(output_dir)

    def write_on_batch_end(self, trainer, pl_module, prediction, batch_indices, batch, batch_idx, dataloader_idx=0):
        if prediction is None:
            return
        data = trainer.datamodule
        root, files = data.data_root(), data.predict_set.files
        size = tuple(batch["image"].shape[-2:])
        for latent, index in zip(prediction["latent"], prediction["index"].tolist()):
            rel = files[index].relative_to(root)
            save_latent(self.output_dir / rel.with_suffix(".safetensors"), latent, prediction["ratio"], size, source=str(files[index]))


class StepProgressBar(RichProgressBar):
    """Lightning's rich progress bar, labelled ``Epoch N`` when training runs by steps: the stock
    label divides by ``max_epochs - 1`` and reads ``Epoch 0/-2`` for ``max_epochs = -1``.
    The ``lightning`` command uses it unless a config names another progress bar."""

    def _get_train_description(self, current_epoch: int) -> str:
        max_epochs = self.trainer.max_epochs
        if max_epochs is None or max_epochs < 0:
            label = f"Epoch {current_epoch}"
            return f"{label:{len(self.validation_description)}}" if len(self.validation_description) > len(label) else label
        return super()._get_train_description(current_epoch)
