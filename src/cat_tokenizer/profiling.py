"""Cost measurements shared by the benchmarks and reports: parameters on a path, FLOPs, items/s."""

from __future__ import annotations

import time

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

__all__ = ["path_params", "flops", "items_per_second"]


def path_params(model: nn.Module, fn) -> int:
    """Parameters of the modules that ``fn()`` actually runs (each counted once)."""
    used: dict[int, nn.Parameter] = {}
    hooks = [
        m.register_forward_hook(lambda mod, *_: used.update({id(p): p for p in mod.parameters(recurse=False)}))
        for m in model.modules()
    ]
    try:
        fn()
    finally:
        for h in hooks:
            h.remove()
    return sum(p.numel() for p in used.values())


def flops(fn) -> int:
    """FLOPs of ``fn()`` as counted by ``torch.utils.flop_counter`` (a multiply-add counts 2)."""
    with FlopCounterMode(display=False) as counter:
        fn()
    return counter.get_total_flops()


@torch.no_grad()
def items_per_second(fn, n: int, repeat: int = 1, warmup: bool = False) -> float:
    """Throughput of ``fn()`` processing ``n`` items: best of ``repeat`` timed calls, after one
    untimed call when ``warmup`` (lazy loading, caches and allocator growth stay out of the time)."""
    sync = torch.cuda.synchronize if torch.cuda.is_available() else (lambda: None)  # CUDA kernels run async
    if warmup:
        fn()
    best = float("inf")
    for _ in range(repeat):
        sync()
        t = time.perf_counter()
        fn()
        sync()
        best = min(best, time.perf_counter() - t)
    return n / best
