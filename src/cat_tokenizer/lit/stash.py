"""A training run's resumable state, small enough to commit: what survives when ``outputs/`` does not.

A long run spans sessions on machines whose scratch folders may not outlive them (the first cat-small v2
run lost 13 hours of training that way: its 36,000-batch checkpoint lived only in ``outputs/``). A stash
is the run's ``last.ckpt`` at about a fifth of its size (cat-small: 19 MB against 88 MB), plus its per-kind
dev curve. Format 2:

- weights and buffers in float16 (one rounding, 5e-4 relative, far below one optimizer step; any tensor
  that float16 cannot hold stays float32);
- an EMA copy as int8 codes of its difference from the weights it follows (per output row, scale
  max|delta| / 127: 5.5e-4 relative RMS on cat-small against float16's 2e-4; the EMA forgets it at its own
  rate as training goes on);
- Adam's second moments as uint8 codes of log2(v) over each tensor's range (0.3% mean error in sqrt(v),
  the quantity Adam divides by); first moments dropped, restored as zeros: with ``step`` kept, bias
  correction leaves the first updates after a resume smaller, never larger, for about 1 / (1 - beta1) batches;
- the parameters and buffers of an optimizer that never stepped (no state; BatchNorm counters at 0, so
  they never ran in training: cat-small's discriminator while its GAN is off) left out; the module's
  ``on_load_checkpoint`` fills them from its freshly built self (``refill_fresh``). The module says which
  prefixes each optimizer owns (``OPTIMIZED_KEY`` in its checkpoints).

``unstash`` writes an ordinary Lightning checkpoint back (float32, first moments zero), so
``--ckpt_path`` resumes it with the loops, schedulers, callbacks and global step of the stashed run.
``make train-small`` does that by itself when the run folder is gone and ``STASH`` holds one. Stashes of
format 1 (no EMA deltas, bfloat16 moments, nothing left out) still unstash.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from cat_tokenizer.errors import UserInputError
from cat_tokenizer.files import atomic_write
from cat_tokenizer.io import CONFIG_KEY

__all__ = ["STASH_NAME", "CURVE_NAME", "OPTIMIZED_KEY", "FRESH_KEY", "slim_checkpoint", "full_checkpoint",
           "refill_fresh", "stash_run", "unstash_run"]

STASH_NAME = "resume.pt"       # not *.ckpt: .gitignore keeps checkpoints out of the repo, stashes go in
CURVE_NAME = "kind_eval.csv"
OPTIMIZED_KEY = "cat_optimized"  # checkpoint entry: per optimizer, the state_dict prefix it trains
FRESH_KEY = "cat_fresh"          # unstashed checkpoint entry: keys the module fills from its fresh self
_FORMAT, _READS = 2, (1, 2)
_DROPPED = ("exp_avg",)        # rebuilt as zeros
_TWINS = {"ema.module.": "vae."}  # an EMA key -> the key of the weights it averages
# NestedVAEModule checkpoints (they hold CONFIG_KEY) written before they recorded OPTIMIZED_KEY: its optimizers' order.
_LEGACY_OPTIMIZED = ["vae.", "loss.discriminator."]


def _half(t: Any) -> Any:
    if not (torch.is_tensor(t) and t.is_floating_point() and t.dtype == torch.float32):
        return t
    half = t.to(torch.float16)
    return half if torch.isfinite(half).all() or not torch.isfinite(t).all() else t


def _rows(t: Tensor) -> Tensor:
    return t.reshape(t.shape[0], -1) if t.dim() else t.reshape(1, 1)


def _delta_code(value: Tensor, twin: Tensor) -> dict:
    """``value`` as int8 codes of (value - twin) per output row; ``twin`` as the stash stores it."""
    delta = _rows(value.float() - twin.float())                     # (rows, rest)
    scale = delta.abs().amax(1) / 127                               # (rows,)
    codes = (delta / scale.clamp_min(1e-30)[:, None]).round().clamp(-127, 127).to(torch.int8)
    return {"codes": codes, "scale": scale}


def _from_delta(code: dict, twin: Tensor) -> Tensor:
    return twin.float() + (code["codes"].float() * code["scale"][:, None]).reshape(twin.shape)


def _log_code(v: Tensor) -> dict:
    """A non-negative tensor as uint8 codes of log2(v) over its own range (code 0: exactly zero)."""
    v = v.float()
    positive = v > 0
    logs = torch.log2(v[positive])
    lo = logs.min() if logs.numel() else torch.tensor(0.0)
    step = (logs.max() - lo).clamp_min(1e-6) / 254 if logs.numel() else torch.tensor(1.0)
    codes = torch.zeros(v.shape, dtype=torch.uint8)
    codes[positive] = (((logs - lo) / step).round() + 1).to(torch.uint8)
    return {"log_codes": codes, "lo": lo, "step": step}


def _from_log(code: dict) -> Tensor:
    codes = code["log_codes"]
    return torch.where(codes > 0, torch.exp2(code["lo"] + (codes.float() - 1) * code["step"]), 0.0)


def _slim_state(state: dict) -> dict:
    return {k: (_log_code(v) if torch.is_tensor(v) and v.is_floating_point() and v.dim() else v)
            for k, v in state.items() if k not in _DROPPED}


def _fresh_keys(ckpt: dict) -> list[str]:
    """state_dict keys owned by an optimizer that never stepped and never ran in training mode."""
    prefixes = ckpt.get(OPTIMIZED_KEY, _LEGACY_OPTIMIZED if CONFIG_KEY in ckpt else [])
    sd = ckpt["state_dict"]
    if len(prefixes) != len(ckpt["optimizer_states"]):
        return []
    fresh = []
    for prefix, opt in zip(prefixes, ckpt["optimizer_states"], strict=True):
        keys = [k for k in sd if k.startswith(prefix)]
        ran = any(int(sd[k]) for k in keys if k.endswith("num_batches_tracked"))
        fresh += [] if opt["state"] or ran else keys
    return fresh


def _slim_weights(sd: dict, fresh: set[str]) -> tuple[dict, dict]:
    """state_dict -> (float16 tensors, EMA delta codes), leaving out the ``fresh`` keys."""
    kept = {k: _half(v) for k, v in sd.items() if k not in fresh}
    deltas = {}
    for key, value in sd.items():
        twin = next((key.replace(a, b, 1) for a, b in _TWINS.items() if key.startswith(a)), None)
        if twin in kept and value.is_floating_point() and value.shape == kept[twin].shape and value.dim():
            deltas[key] = {"twin": twin, **_delta_code(value, kept[twin])}
            del kept[key]
    return kept, deltas


def slim_checkpoint(ckpt: dict) -> dict:
    """A Lightning checkpoint dict -> its stash (narrower codes, first moments and fresh parts left out)."""
    if "state_dict" not in ckpt or "optimizer_states" not in ckpt:
        raise UserInputError("not a Lightning training checkpoint (no state_dict / optimizer_states to stash)")
    fresh = _fresh_keys(ckpt)
    slim = dict(ckpt)
    slim["state_dict"], deltas = _slim_weights(ckpt["state_dict"], set(fresh))
    slim["optimizer_states"] = [
        {**opt, "state": {i: _slim_state(s) for i, s in opt["state"].items()}} for opt in ckpt["optimizer_states"]]
    slim["cat_stash"] = {"format": _FORMAT, "dropped": list(_DROPPED), "deltas": deltas, "fresh": fresh,
                         "float32": [k for k, v in ckpt["state_dict"].items()
                                     if torch.is_tensor(v) and v.dtype == torch.float32]}
    return slim


def _full_state(state: dict, dropped: list[str]) -> dict:
    full = {k: (_from_log(v) if isinstance(v, dict) and "log_codes" in v
                else v.float() if torch.is_tensor(v) and v.is_floating_point() and v.dim() else v)
            for k, v in state.items()}
    for key in dropped if "exp_avg_sq" in full else ():  # Adam / AdamW: the first moment has the second's shape
        full[key] = torch.zeros_like(full["exp_avg_sq"])
    return full


def full_checkpoint(slim: dict) -> dict:
    """A stash -> an ordinary Lightning checkpoint dict (float32 where the run had it, dropped moments zero).

    Keys left out as fresh are listed under ``FRESH_KEY``: the module's ``on_load_checkpoint`` must call
    ``refill_fresh`` (NestedVAEModule does) before Lightning loads the state strictly."""
    meta = slim.get("cat_stash")
    if not isinstance(meta, dict) or meta.get("format") not in _READS:
        raise UserInputError(f"not a run stash of format {' or '.join(map(str, _READS))} (written by `cat-tokenizer stash`)")
    was32 = set(meta["float32"])
    full = {k: v for k, v in slim.items() if k != "cat_stash"}
    sd = {k: (v.float() if k in was32 else v) for k, v in slim["state_dict"].items()}
    for key, code in meta.get("deltas", {}).items():
        sd[key] = _from_delta(code, sd[code["twin"]]).to(torch.float32 if key in was32 else torch.float16)
    full["state_dict"] = sd
    full["optimizer_states"] = [
        {**opt, "state": {i: _full_state(s, meta["dropped"]) for i, s in opt["state"].items()}}
        for opt in slim["optimizer_states"]]
    if meta.get("fresh"):
        full[FRESH_KEY] = list(meta["fresh"])
    return full


def refill_fresh(checkpoint: dict, module: torch.nn.Module) -> None:
    """Fill the keys an unstashed checkpoint left out (``FRESH_KEY``) from ``module``'s own state."""
    own = module.state_dict()
    for key in checkpoint.pop(FRESH_KEY, []):
        checkpoint["state_dict"].setdefault(key, own[key])


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
