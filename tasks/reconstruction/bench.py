"""``cat-tokenizer bench``: parameters, GFLOPs and throughput of the nested VAE per ratio.

Throughput is measured for every ratio in one process, so the ratios between them are what
to read; absolute images/s depend on the machine.
"""

from __future__ import annotations

import time

import numpy as np
import torch

from cat_tokenizer.devices import cpu_has_native_bf16
from cat_tokenizer.io import load_vae
from cat_tokenizer.lit.vae_module import NestedVAEModule
from cat_tokenizer.losses.vae_loss import VAELoss
from cat_tokenizer.models.nested_vae import NestedVAE
from cat_tokenizer.models.ratio_head import RatioHead
from cat_tokenizer.profiling import flops, items_per_second, path_params
from cat_tokenizer.ratios import token_count
from cat_tokenizer.regions.latent import MERGES

__all__ = ["bench_vae", "bench_ratio_head", "bench_regions", "HEAD_VARIANTS"]


def bench_vae(preset: str = "base", size: int = 256, batch: int = 1, iters: int = 3, device: str = "cpu") -> list[dict]:
    """One row per ratio: path params, GFLOPs per image (encode / decode), tokens, images/s."""
    vae = NestedVAE.from_preset(preset).to(device).eval()
    x = torch.randn(batch, 3, size, size, device=device)
    rows = []
    for r in vae.ratios:
        z = vae.encode(x[:1], r).mode()
        row = {
            "ratio": r,
            "latent": f"{vae.latent_channels}x{z.shape[-2]}x{z.shape[-1]}",
            "tokens": token_count(size, size, r),
            "enc_params_M": path_params(vae, lambda: vae.encode(x[:1], r)) / 1e6,
            "dec_params_M": path_params(vae, lambda: vae.decode(z, r)) / 1e6,
            "enc_GFLOPs": flops(lambda: vae.encode(x[:1], r)) / 1e9,
            "dec_GFLOPs": flops(lambda: vae.decode(z, r)) / 1e9,
        }
        vae.decode(vae.encode(x, r).mode(), r)  # warm-up
        if device.startswith("cuda"):
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        for _ in range(iters):
            vae.decode(vae.encode(x, r).mode(), r)
        if device.startswith("cuda"):
            torch.cuda.synchronize()
        row["img_per_s"] = batch * iters / (time.perf_counter() - t0)
        rows.append(row)
    base = next((row for row in rows if row["ratio"] == 16), rows[0])
    for row in rows:
        row["speed_vs_16x"] = row["img_per_s"] / base["img_per_s"]
    return rows


def total_params(preset: str) -> tuple[float, float]:
    """(nested model params, params of the same widths built for 16x only) in millions."""
    nested = NestedVAE.from_preset(preset)
    cfg = nested.init_config()
    fixed = NestedVAE(**{**cfg, "block_out_channels": cfg["block_out_channels"][:5], "ratios": [16]})
    count = lambda m: sum(p.numel() for p in m.parameters()) / 1e6  # noqa: E731
    return count(nested), count(fixed)


# Ratio head variants for ``bench_ratio_head``: RatioHead keyword arguments for a 4-stage (8x) trunk.
HEAD_VARIANTS: dict[str, dict] = {
    "all rows, all stages": {"row_stride": [1, 1, 1, 1]},
    "rows 8/4/2/1 (default)": {},
    "rows 16/8/4/2": {"row_stride": [16, 8, 4, 2]},
    "stages 1-3, all rows": {"stages": [1, 2, 3], "row_stride": [1, 1, 1, 1]},
    "stages 2-3, all rows": {"stages": [2, 3], "row_stride": [1, 1, 1, 1]},
    "distortion head: + pixel statistics, standardised": {"predicts": "psnr", "pixel_stats": True, "norm": "standard"},
}


@torch.no_grad()
def bench_ratio_head(preset: str = "small", size: int = 128, batch: int = 4, repeat: int = 5, device: str = "cpu",
                     variants: dict[str, dict] | None = None) -> list[dict]:
    """The ratio head's cost (statistics + MLP on trunk outputs already computed) as a share of an
    8x encode of the same images, per head variant, all timed in this process (best of ``repeat``)."""
    vae = NestedVAE.from_preset(preset).to(device).eval()
    x = torch.randn(batch, 3, size, size, device=device)
    enc_s = 1.0 / items_per_second(lambda: vae.encode(x, min(vae.ratios)), 1, repeat, warmup=True)
    taps = vae.trunk(x)
    channels = [t.shape[1] for t in taps]
    rows = []
    for name, kwargs in (variants or HEAD_VARIANTS).items():
        head = RatioHead(channels, **kwargs).to(device).eval()
        head_s = 1.0 / items_per_second(lambda: head(taps, x), 1, repeat, warmup=True)
        rows.append({"variant": name, "inputs": head.mlp[1].in_features,
                     "params": sum(p.numel() for p in head.parameters()), "share_of_8x_encode": head_s / enc_s,
                     "head_ms_per_image": 1e3 * head_s / batch, "encode_ms_per_image": 1e3 * enc_s / batch})
    return rows


# Training-step variants for ``bench_train``: (label, precision, GAN on from the first step, NestedVAE overrides).
TRAIN_VARIANTS = [
    ("fp32, GAN on (discriminator forward/backward every step)", "32-true", True, {}),
    ("fp32, GAN off (empty discriminator step)", "32-true", False, {}),
    ("bf16-mixed, GAN off (the v1 recipe)", "bf16-mixed", False, {}),
    ("bf16-mixed, GAN off, colour path (the v2 recipe)", "bf16-mixed", False, {"colour_path": "latent"}),
]


def bench_train(preset: str = "cat-small", size: int = 128, batch: int = 8, steps: int = 8, warmup: int = 3) -> list[dict]:
    """Images/s of full ``NestedVAEModule`` training steps (Lightning, manual optimisation, EMA, one
    ratio per batch cycling 8/16/32) per variant of ``TRAIN_VARIANTS``, on fixed random batches
    (no data loading), in this process. bf16 rows are skipped on CPUs without native bfloat16."""
    import lightning as L


    class _Timer(L.Callback):
        def __init__(self):
            self.times: list[float] = []

        def on_train_batch_start(self, *args) -> None:
            self._t = time.perf_counter()

        def on_train_batch_end(self, *args) -> None:
            self.times.append(time.perf_counter() - self._t)

    g = torch.Generator().manual_seed(0)
    data = [{"image": torch.rand(batch, 3, size, size, generator=g) * 2 - 1, "ratio": r, "index": torch.arange(batch)}
            for r in (8, 16, 32)] * ((warmup + steps) // 3 + 1)
    rows = []
    for label, precision, gan, overrides in TRAIN_VARIANTS:
        if precision.startswith("bf16") and not torch.cuda.is_available() and not cpu_has_native_bf16():
            continue
        torch.manual_seed(0)
        module = NestedVAEModule(NestedVAE.from_preset(preset, **overrides), VAELoss(perceptual_weight=0.0, disc_start=0 if gan else 10**9),
                                 lr=1e-3, betas=(0.9, 0.99), warmup_steps=1)
        timer = _Timer()
        L.Trainer(max_steps=2 * (warmup + steps), precision=precision, logger=False, enable_checkpointing=False,
                  enable_progress_bar=False, enable_model_summary=False, callbacks=[timer], limit_val_batches=0,
                  use_distributed_sampler=False).fit(module, torch.utils.data.DataLoader(data, batch_size=None))
        t = float(np.median(timer.times[warmup:]))
        rows.append({"variant": label, "s_per_step": t, "img_per_s": batch / t})
    base = rows[0]["img_per_s"]
    for r in rows:
        r["speed_vs_first"] = r["img_per_s"] / base
    return rows


@torch.no_grad()
def bench_regions(ckpt: str = "cat-small", size: int = 128, batch: int = 8, repeat: int = 3, device: str = "cpu") -> list[dict]:
    """Decode cost of a region latent (a map with a third of the blocks at each ratio, refine 0 / 1 / 2, and
    the tokenizer's region fill when it has one, under either merge and with one context pass under the pixel merge)
    against whole-image decodes at each ratio, best of ``repeat``, all in this process."""

    vae = load_vae(ckpt).to(device).eval()
    x = torch.rand(batch, 3, size, size, device=device) * 2 - 1
    block = max(vae.ratios)
    side = -(-size // block)
    cycle = torch.tensor(sorted(vae.ratios))
    rmap = cycle[(torch.arange(side)[:, None] + torch.arange(side)[None]) % len(cycle)]  # diagonal stripes of every ratio
    lat = vae.encode_regions(x, rmap)
    calls = {f"decode {r}x": (lambda r=r, z=vae.encode(x, r).mode(): vae.decode(z, r)) for r in sorted(vae.ratios)}
    calls.update({f"decode_regions, refine {k}": (lambda k=k: vae.decode_regions(lat, k, use_fill=False)) for k in (0, 1, 2)})
    if vae.region_fill is not None:  # the fill under each merge (one decode; one whole decode per ratio present)
        calls.update({f"decode_regions, region fill, {m} merge": (lambda m=m: vae.decode_regions(lat, 0, merge=m)) for m in MERGES})
        # one context pass: on v3's oracle maps it recovers 0.30 of the fill's 0.51 dB gap to the true latents, the
        # pass on the coarsest grid alone 0.28 of it (docs/regions.md)
        calls["decode_regions, region fill + 1 context pass, pixels merge"] = (
            lambda: vae.decode_regions(lat, 1, merge="pixels", refine_ratios=tuple(vae.ratios)))
        coarsest = (max(vae.ratios),)
        calls[f"decode_regions, region fill + 1 context pass on the {coarsest[0]}x grid, pixels merge"] = (
            lambda: vae.decode_regions(lat, 1, merge="pixels", refine_ratios=coarsest))
        calls["decode_regions, its defaults (the fill's merge and context)"] = lambda: vae.decode_regions(lat)
    rows = [{"call": name, "tokens": int(lat.tokens()[0]) if "regions" in name else token_count(size, size, int(name.split()[1][:-1])),
             "ms_per_image": 1e3 / items_per_second(f, batch, repeat, warmup=True)} for name, f in calls.items()]
    ref = next(r for r in rows if r["call"] == "decode 16x")["ms_per_image"]
    for r in rows:
        r["cost_vs_16x"] = r["ms_per_image"] / ref
    return rows
