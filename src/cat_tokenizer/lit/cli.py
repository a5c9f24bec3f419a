"""The project's LightningCLI: CPU precision policy, a step-based progress bar, and known false-alarm warnings silenced."""

from __future__ import annotations

import logging
import re
import sys
import warnings
from pathlib import Path

import lightning as L
import torch
from lightning.pytorch.callbacks import Callback, ModelCheckpoint, ProgressBar
from lightning.pytorch.cli import LightningArgumentParser, LightningCLI

from cat_tokenizer.callbacks import ExportPretrained, StepProgressBar
from cat_tokenizer.devices import cpu_has_native_bf16
from cat_tokenizer.errors import UserInputError

__all__ = ["CATLightningCLI", "KeepCheckpoints", "OneLineErrorParser", "cli", "silence_known_warnings"]


class KeepCheckpoints(Callback):
    """Refuse to start a run whose checkpoint folder holds another run's checkpoints (policy 3 of
    ``cat_tokenizer.outputs``): ``ModelCheckpoint(save_last=True)`` would replace that run's
    ``last.ckpt``, the one ``--ckpt_path last`` resumes from. Resuming (any ``ckpt_path``) is fine."""

    def on_fit_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.ckpt_path is not None or trainer.fast_dev_run:
            return
        for cb in trainer.checkpoint_callbacks:
            folder = Path(cb.dirpath) if cb.dirpath else None
            if folder is not None and folder.is_dir() and (found := sorted(folder.glob("*.ckpt"))):
                raise UserInputError(
                    f"{folder} holds checkpoints of an earlier run ({found[-1].name}); resume it with --ckpt_path "
                    f"{found[-1]}, or start a new run in another --trainer.default_root_dir (nothing was overwritten)")


def _local_ckpt(ckpt) -> Path | None:
    """``--ckpt_path`` as a local file path, or None for Lightning's names (last, best, ...) and URLs."""
    if not ckpt or str(ckpt) in ("last", "best", "hpc", "registry") or "://" in str(ckpt):
        return None
    return Path(ckpt)


def _check_ckpt_file(path: Path) -> None:
    """A ``--ckpt_path`` that exists but is no checkpoint (empty, truncated, another file): one line."""
    import zipfile

    if path.stat().st_size == 0 or not zipfile.is_zipfile(path):
        raise UserInputError(f"--ckpt_path {path} is not a readable checkpoint (empty, truncated or another kind of file)")

log = logging.getLogger(__name__)


def condense_parser_error(message: str) -> str:
    """jsonargparse's nested validation report -> one line: the dotted key path down to the deepest
    ``Parser key`` and the reason given there (e.g. ``--data.crop: Expected a typing.Literal['resize',
    'native']. Got value: squash``); other messages keep their first line."""
    lines = [line.strip() for line in message.splitlines() if line.strip()]
    keys, reason = [], None
    for i, line in enumerate(lines):
        found = re.match(r'Parser key "([^"]+)":\s*(.*)', line.lstrip("- "))
        if found:
            keys.append(found[1])
            reason = found[2] or (lines[i + 1].lstrip("- ") if i + 1 < len(lines) else "")
    if not keys:
        return lines[0] if lines else message
    return f"--{'.'.join(keys)}: {reason}"


class OneLineErrorParser(LightningArgumentParser):
    """A LightningCLI parser whose usage errors are one line on stderr and exit code 2 (as the
    project's own errors are), instead of the usage text plus a nested validation report."""

    def error(self, message: str, ex: Exception | None = None):
        if not self.exit_on_error:
            return super().error(message, ex)
        sys.stderr.write(f"{self.prog.replace(' [options]', '')}: error: {condense_parser_error(message)} (see --help)\n")
        sys.exit(2)


class CATLightningCLI(LightningCLI):
    """LightningCLI with one policy: mixed precision asked for on a CPU-only run falls back to
    ``32-true`` with a warning, unless it is ``bf16-mixed`` on a CPU with native bfloat16 (AMX /
    AVX512-BF16), where it is about twice as fast as fp32. CPUs without it emulate bfloat16, which
    made one base-preset training step take over 10 minutes instead of a few; configs stay GPU-first."""

    def _parse_ckpt_path(self) -> None:
        """Resuming (``--ckpt_path``) with a config that names the model: the config and command line
        win over the hyperparameters stored in the checkpoint, and each difference is logged.

        Lightning's default applies the checkpoint's hyperparameters over the config, so an edited
        config (say a shorter ``decay_steps``) would be silently ignored on resume. Without a model
        in the config, Lightning's behaviour (rebuild the model from the checkpoint) stays."""
        sub = self.config.get("subcommand")
        ckpt = _local_ckpt((self.config[sub] if sub else self.config).get("ckpt_path"))
        if ckpt is not None and ckpt.is_file():
            _check_ckpt_file(ckpt)  # before Lightning reads its hyperparameters (an EOFError deep in torch.load)
        before = self.config.clone() if sub else None
        super()._parse_ckpt_path()
        if before is None or not before[sub].get("model") or not getattr(before[sub].model, "class_path", None):
            return
        old = before[sub].model.init_args.as_dict() if before[sub].model.get("init_args") else {}
        new = self.config[sub].model.init_args.as_dict() if self.config[sub].model.get("init_args") else {}
        changed = {k: (new.get(k), v) for k, v in old.items() if k in new and new[k] != v}
        for key, (stored, given) in sorted(changed.items()):
            log.warning("--ckpt_path: model.%s is %r in the checkpoint, %r in the config: the config wins", key, stored, given)
        self.config = before

    def before_instantiate_classes(self) -> None:
        cfg = self.config[self.subcommand] if self.subcommand else self.config
        trainer = cfg.trainer
        on_cpu = trainer.accelerator == "cpu" or (trainer.accelerator == "auto" and not torch.cuda.is_available())
        ckpt = _local_ckpt(cfg.get("ckpt_path"))
        if ckpt is not None and not ckpt.is_file():
            raise UserInputError(f"--ckpt_path: checkpoint not found: {ckpt}")
        precision = str(trainer.precision)
        if not on_cpu or precision not in ("bf16-mixed", "16-mixed", "bf16", "16"):
            return
        if precision in ("bf16-mixed", "bf16") and cpu_has_native_bf16():
            log.info("precision %s on a CPU with native bfloat16: kept", precision)
            return
        log.warning("precision %s on a CPU-only run without native bfloat16: using 32-true instead", precision)
        trainer.precision = "32-true"


    def _instantiate_trainer(self, config: dict, callbacks: list) -> L.Trainer:
        if config.get("fast_dev_run"):  # a smoke run writes no checkpoint and no export (outputs policy 3)
            lasting = (ModelCheckpoint, ExportPretrained)
            dropped = [type(c).__name__ for c in [*(config.get("callbacks") or []), *callbacks] if isinstance(c, lasting)]
            config["callbacks"] = [c for c in config.get("callbacks") or [] if not isinstance(c, lasting)]
            callbacks = [c for c in callbacks if not isinstance(c, lasting)]
            config["enable_checkpointing"] = False
            if dropped:
                log.info("fast_dev_run: %s dropped; a smoke run writes no checkpoint or export", ", ".join(dropped))
        callbacks = [*callbacks, KeepCheckpoints()]
        listed = [*(config.get("callbacks") or []), *callbacks]
        if config.get("enable_progress_bar", True) is not False and not any(isinstance(c, ProgressBar) for c in listed):
            callbacks = [*callbacks, StepProgressBar()]  # not "Epoch 0/-2" when training by steps
        return super()._instantiate_trainer(config, callbacks)


def cli(args: list[str] | None = None, run: bool = True) -> LightningCLI:
    """Build (and by default run) the LightningCLI; model and data are chosen by ``class_path``.

    The batch samplers shard themselves across ranks, so Lightning's own distributed sampler
    is off by default (``trainer.use_distributed_sampler=false``).
    """
    return CATLightningCLI(
        args=args,
        run=run,
        parser_class=OneLineErrorParser,
        trainer_defaults={"use_distributed_sampler": False},
        save_config_kwargs={"overwrite": True},
    )


def silence_known_warnings() -> None:
    """Hide Lightning warnings that are false alarms for this project's modules."""
    # The VAE checkpoints the state after both optimizer steps on purpose.
    warnings.filterwarnings("ignore", message="Using ModelCheckpoint with manual optimization")
    # The EMA copy (and a frozen LPIPS) stay in eval mode by design.
    warnings.filterwarnings("ignore", message=r"Found \d+ module\(s\) in eval mode")
    # BucketBatchSampler's predict loader never drops items; Lightning cannot see that.
    warnings.filterwarnings("ignore", message="You are using a custom batch sampler")
    # BucketBatchSampler(position=trained_batches) resumes a train loader in place from the loop's restored count.
    warnings.filterwarnings("ignore", message="You're resuming from a checkpoint that ended before the epoch ended")
