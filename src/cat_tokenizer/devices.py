"""Device strings from configs and flags -> ``torch.device``, with a clear error for missing CUDA."""

from __future__ import annotations

import torch

from cat_tokenizer.errors import UserInputError

__all__ = ["resolve_device", "cpu_has_native_bf16", "describe_device"]


def resolve_device(device: str) -> torch.device:
    """``auto`` -> cuda if available else cpu; a CUDA device on a machine without one is a one-line error."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(device)
    except RuntimeError:
        raise UserInputError(f"unknown device {device!r}; use auto, cpu, cuda or cuda:N") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise UserInputError(f"device {device!r} asked for, but this machine has no CUDA device; use cpu or auto")
    return dev


def cpu_has_native_bf16() -> bool:
    """Whether this CPU computes bfloat16 natively (AVX512-BF16 / AMX, as oneDNN reports it).

    Where it does, ``bf16-mixed`` trains about 2x faster than fp32 on a CPU (the ``small`` preset
    here: 0.42 vs 0.89 s per step); where it does not, bfloat16 is emulated and far slower.
    """
    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        return False


def describe_device(device: str) -> str:
    """One line naming what a benchmark ran on (for its report): the GPU's name, or the CPU threads torch uses."""
    dev = resolve_device(device)
    if dev.type == "cuda":
        return f"{torch.cuda.get_device_name(dev)}, torch {torch.__version__}"
    return f"CPU, {torch.get_num_threads()} threads, native bf16 {'yes' if cpu_has_native_bf16() else 'no'}, torch {torch.__version__}"
