"""Device strings from configs and flags -> ``torch.device``, with a clear error for missing CUDA."""

from __future__ import annotations

import torch

from cat_tokenizer.errors import UserInputError

__all__ = ["resolve_device"]


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
