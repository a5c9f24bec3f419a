"""The ``lightning`` console script: LightningCLI for fit / validate / test / predict.

Lightning 2.x installs no ``lightning`` command, so this project provides one. Any other first
word (``lightning login``, ``lightning run ...``) is handed to the ``lightning-sdk`` CLI when that
package is installed.
"""

from __future__ import annotations

import logging
import sys
from importlib.metadata import PackageNotFoundError, distribution
from pathlib import Path

import lightning as L
import torch
from lightning.pytorch.callbacks import ProgressBar
from lightning.pytorch.cli import LightningCLI

from cat_tokenizer.callbacks import StepProgressBar
from cat_tokenizer.cli import silence_known_warnings
from cat_tokenizer.devices import cpu_has_native_bf16
from cat_tokenizer.errors import UserInputError, find_user_error

__all__ = ["main", "cli", "CATLightningCLI", "TRAIN_COMMANDS"]

log = logging.getLogger(__name__)

TRAIN_COMMANDS = ("fit", "validate", "test", "predict")


class CATLightningCLI(LightningCLI):
    """LightningCLI with one policy: mixed precision asked for on a CPU-only run falls back to
    ``32-true`` with a warning, unless it is ``bf16-mixed`` on a CPU with native bfloat16 (AMX /
    AVX512-BF16), where it is about twice as fast as fp32. CPUs without it emulate bfloat16, which
    made one base-preset training step take over 10 minutes instead of a few; configs stay GPU-first."""

    def before_instantiate_classes(self) -> None:
        cfg = self.config[self.subcommand] if self.subcommand else self.config
        trainer = cfg.trainer
        on_cpu = trainer.accelerator == "cpu" or (trainer.accelerator == "auto" and not torch.cuda.is_available())
        ckpt = cfg.get("ckpt_path")
        if ckpt and str(ckpt) not in ("last", "best", "hpc", "registry") and "://" not in str(ckpt) and not Path(ckpt).is_file():
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
        trainer_defaults={"use_distributed_sampler": False},
        save_config_kwargs={"overwrite": True},
    )


def _hand_to_sdk(argv: list[str]) -> int:
    try:
        scripts = [ep for ep in distribution("lightning-sdk").entry_points if ep.group == "console_scripts" and ep.name == "lightning"]
    except PackageNotFoundError:
        scripts = []
    if not scripts:
        print(
            f"lightning: '{argv[0]}' is not a training command ({', '.join(TRAIN_COMMANDS)}). "
            "Other commands belong to the Lightning SDK CLI: pip install lightning-sdk",
            file=sys.stderr,
        )
        return 2
    sys.argv = ["lightning", *argv]
    return scripts[0].load()() or 0


def main(argv: list[str] | None = None) -> int:
    words = sys.argv[1:] if argv is None else list(argv)
    if words and words[0] not in TRAIN_COMMANDS and not words[0].startswith("-"):
        return _hand_to_sdk(words)
    silence_known_warnings()
    for name in ("cat_tokenizer", "tasks"):  # the project's own INFO lines (data split, scoring, latent scales) on stderr
        ours = logging.getLogger(name)
        if not ours.handlers:
            handler = logging.StreamHandler()
            handler.setFormatter(logging.Formatter("%(levelname)s %(name)s: %(message)s"))
            ours.addHandler(handler)
            ours.setLevel(logging.INFO)
    try:
        cli(None if argv is None else words)  # None: LightningCLI reads sys.argv itself
    except Exception as err:
        user_err = find_user_error(err)  # jsonargparse wraps constructor errors; show ours as one line
        if user_err is None:
            raise
        print(f"lightning {words[0] if words else ''}: error: {user_err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
