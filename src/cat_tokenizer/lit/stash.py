"""A training run's resumable state, small enough to commit: what survives when ``outputs/`` does not.

A long run spans sessions on machines whose scratch folders may not outlive them (the first cat-small v2
run lost 13 hours of training that way: its 36,000-batch checkpoint lived only in ``outputs/``). A stash
is the run's ``last.ckpt`` at about 40% of its size, plus its per-kind dev curve:

- weights and buffers in float16 (one rounding, 5e-4 relative, far below one optimizer step; any tensor
  that float16 cannot hold stays float32);
- Adam's second moments in bfloat16 (float16 would flush their 1e-12-sized entries to zero);
- Adam's first moments dropped, restored as zeros: with ``step`` kept, bias correction leaves the first
  updates after a resume smaller, never larger, than the run's own, for about 1 / (1 - beta1) batches.

``unstash`` writes an ordinary Lightning checkpoint back (float32, first moments zero), so
``--ckpt_path`` resumes it with the loops, schedulers, callbacks and global step of the stashed run.
``make train-small`` does that by itself when the run folder is gone and ``STASH`` holds one.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import torch

from cat_tokenizer.errors import UserInputError
from cat_tokenizer.files import atomic_write

__all__ = ["STASH_NAME", "CURVE_NAME", "slim_checkpoint", "full_checkpoint", "stash_run", "unstash_run"]

STASH_NAME = "resume.pt"       # not *.ckpt: .gitignore keeps checkpoints out of the repo, stashes go in
CURVE_NAME = "kind_eval.csv"
_FORMAT = 1
_DROPPED = ("exp_avg",)        # rebuilt as zeros
_MOMENTS = torch.bfloat16


def _half(t: Any) -> Any:
    if not (torch.is_tensor(t) and t.is_floating_point() and t.dtype == torch.float32):
        return t
    half = t.to(torch.float16)
    return half if torch.isfinite(half).all() or not torch.isfinite(t).all() else t


def _slim_state(state: dict) -> dict:
    return {k: (v.to(_MOMENTS) if torch.is_tensor(v) and v.is_floating_point() and v.dim() else v)
            for k, v in state.items() if k not in _DROPPED}


def slim_checkpoint(ckpt: dict) -> dict:
    """A Lightning checkpoint dict -> its stash (narrower dtypes, first moments dropped)."""
    if "state_dict" not in ckpt or "optimizer_states" not in ckpt:
        raise UserInputError("not a Lightning training checkpoint (no state_dict / optimizer_states to stash)")
    slim = dict(ckpt)
    slim["state_dict"] = {k: _half(v) for k, v in ckpt["state_dict"].items()}
    slim["optimizer_states"] = [
        {**opt, "state": {i: _slim_state(s) for i, s in opt["state"].items()}} for opt in ckpt["optimizer_states"]]
    slim["cat_stash"] = {"format": _FORMAT, "dropped": list(_DROPPED),
                         "float32": [k for k, v in ckpt["state_dict"].items()
                                     if torch.is_tensor(v) and v.dtype == torch.float32]}
    return slim


def _full_state(state: dict, dropped: list[str]) -> dict:
    full = {k: (v.float() if torch.is_tensor(v) and v.is_floating_point() and v.dim() else v) for k, v in state.items()}
    for key in dropped if "exp_avg_sq" in full else ():  # Adam / AdamW: the first moment has the second's shape
        full[key] = torch.zeros_like(full["exp_avg_sq"])
    return full


def full_checkpoint(slim: dict) -> dict:
    """A stash -> an ordinary Lightning checkpoint dict (float32 where the run had it, dropped moments zero)."""
    meta = slim.get("cat_stash")
    if not isinstance(meta, dict) or meta.get("format") != _FORMAT:
        raise UserInputError(f"not a run stash of format {_FORMAT} (written by `cat-tokenizer stash`)")
    was32 = set(meta["float32"])
    full = {k: v for k, v in slim.items() if k != "cat_stash"}
    full["state_dict"] = {k: (v.float() if k in was32 else v) for k, v in slim["state_dict"].items()}
    full["optimizer_states"] = [
        {**opt, "state": {i: _full_state(s, meta["dropped"]) for i, s in opt["state"].items()}}
        for opt in slim["optimizer_states"]]
    return full


def _run_files(run: Path) -> tuple[Path, Path]:
    return run / "checkpoints" / "last.ckpt", run / CURVE_NAME


def stash_run(run: str | Path, out: str | Path) -> Path:
    """``run``'s last.ckpt (and kind_eval.csv) -> ``out``/resume.pt (and its copy of the curve)."""
    ckpt, curve = _run_files(Path(run))
    if not ckpt.is_file():
        raise UserInputError(f"{run} holds no checkpoints/last.ckpt to stash")
    slim = slim_checkpoint(torch.load(ckpt, map_location="cpu", weights_only=False))
    target = Path(out)
    target.mkdir(parents=True, exist_ok=True)
    with atomic_write(target / STASH_NAME) as tmp:
        torch.save(slim, tmp)
    if curve.is_file():
        shutil.copyfile(curve, target / CURVE_NAME)
    return target / STASH_NAME


def unstash_run(stash: str | Path, run: str | Path) -> Path:
    """``stash``/resume.pt -> ``run``/checkpoints/last.ckpt (and the curve), for ``--ckpt_path``.

    Never replaces a checkpoint that is there: a run folder that still has one resumes from it."""
    source = Path(stash) / STASH_NAME
    ckpt, curve = _run_files(Path(run))
    if not source.is_file():
        raise UserInputError(f"{stash} holds no {STASH_NAME} (write one with `cat-tokenizer stash RUN --out {stash}`)")
    if ckpt.exists():
        raise UserInputError(f"{ckpt} exists already; resume from it (a stash never replaces a checkpoint)")
    full = full_checkpoint(torch.load(source, map_location="cpu", weights_only=False))
    ckpt.parent.mkdir(parents=True, exist_ok=True)
    with atomic_write(ckpt) as tmp:
        torch.save(full, tmp)
    if (Path(stash) / CURVE_NAME).is_file() and not curve.exists():
        shutil.copyfile(Path(stash) / CURVE_NAME, curve)
    return ckpt
