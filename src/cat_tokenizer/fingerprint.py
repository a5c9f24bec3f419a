"""A short hash that identifies a tokenizer's weights (a leaf module: imports nothing of the project).

Latent files and the latent cache record it, so latents are never decoded or reused by another
tokenizer than the one that made them."""

from __future__ import annotations

import hashlib

import torch

__all__ = ["fingerprint_state"]


def fingerprint_state(state: dict) -> str:
    """A short hash of a state dict's names, shapes and bytes (identifies a tokenizer's weights)."""
    h = hashlib.sha1()
    for k in sorted(state):
        v = state[k].detach().cpu().contiguous()
        h.update(k.encode())
        h.update(str(tuple(v.shape)).encode())
        h.update(v.view(-1).view(torch.uint8).numpy().tobytes() if v.numel() else b"")
    return h.hexdigest()[:16]
