"""``cat-tokenizer gen-demo`` (``make gen-demo``): DiT + CAT end to end on the embedded data, on a CPU.

The same two commands as ``make gen-imagenet``, run in-process with the real configs:
  1. ``lightning predict -c configs/dit_encode.yaml``: score the 45 embedded images, encode each at
     its CAT ratio with the frozen demo tokenizer into ``<out>/latents`` (resumable);
  2. ``lightning fit -c configs/dit_imagenet.yaml``: a ``mini`` DiT (4.4M params), class-conditional
     on the content kind (chart / flat / photo / text / texture), from ``<out>/latents``;
then one sample per class at every trained ratio and at the ratio the text scorer picks for the
class name (``--ratio auto``), into ``samples.png`` and ``report.md``.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path

import torch
from torchvision.utils import make_grid, save_image

from cat_tasks.generation.module import load_dit
from cat_tasks.generation.sample import auto_ratios
from cat_tokenizer.errors import InputNotFound
from cat_tokenizer.io import load_vae
from cat_tokenizer.lit.cli import cli
from cat_tokenizer.markdown import md_header
from cat_tokenizer.ratios import token_count

__all__ = ["run_gen_demo"]

log = logging.getLogger(__name__)

def _tokenizer_channels(tokenizer: str) -> int:

    try:
        return load_vae(tokenizer).latent_channels
    except InputNotFound:
        raise InputNotFound(f"no tokenizer at {tokenizer}: pass --ckpt (default: the shipped cat-small)") from None


def _scalars(log_dir: Path, *tags: str) -> dict[str, list[tuple[int, float]]]:
    """Per tag, ``(step, value)`` over the whole run (every resume), from one read of its TensorBoard events."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    ea = EventAccumulator(str(log_dir))
    ea.Reload()
    logged = ea.Tags()["scalars"]
    return {t: [(e.step, e.value) for e in ea.Scalars(t)] if t in logged else [] for t in tags}


def run_gen_demo(out: str = "outputs/gen_demo", tokenizer: str = "cat-small", steps: int = 800,
                 image_size: int = 128, batch_size: int = 8, preset: str = "mini", sample_steps: int = 50,
                 guidance: float = 2.0, accelerator: str = "auto", config_dir: str | Path = "configs") -> Path:
    """Encode, train, sample; returns ``report.md``. Run again with more ``steps`` to continue.
    ``config_dir`` holds ``dit_encode.yaml`` and ``dit_imagenet.yaml`` (the repository's ``configs/``)."""

    configs = Path(config_dir).expanduser()
    if not all((configs / name).is_file() for name in ("dit_encode.yaml", "dit_imagenet.yaml")):
        raise InputNotFound(f"no dit_encode.yaml and dit_imagenet.yaml in {configs}: run from the repository root or pass --config-dir")
    out_dir = Path(out)
    latents, run_dir = out_dir / "latents", out_dir / "run"
    channels = _tokenizer_channels(tokenizer)
    t0 = time.perf_counter()
    cli(["predict", "-c", str(configs / "dit_encode.yaml"), f"--trainer.accelerator={accelerator}",
         f"--model.tokenizer={tokenizer}", f"--model.cache_dir={latents}", f"--data.skip_encoded={latents}",
         f"--data.image_size={image_size}", "--data.num_workers=0", "--data.val_batch_size=16"])
    t_encode = time.perf_counter() - t0
    last = run_dir / "version_0" / "checkpoints" / "last.ckpt"
    # steps already trained by an earlier call (this call's throughput counts only its own steps)
    done_before = torch.load(last, map_location="cpu", weights_only=False)["global_step"] if last.is_file() else 0
    t0 = time.perf_counter()
    fit = cli(["fit", "-c", str(configs / "dit_imagenet.yaml"), f"--trainer.accelerator={accelerator}",
               f"--trainer.max_steps={steps}", f"--trainer.val_check_interval={max(1, steps // 4)}",
               "--trainer.log_every_n_steps=10", "--trainer.logger=lightning.pytorch.loggers.TensorBoardLogger",
               f"--trainer.logger.save_dir={out_dir}", "--trainer.logger.name=run", "--trainer.logger.version=0",
               f"--data.cache_dir={latents}", f"--data.batch_size={batch_size}", "--data.num_workers=0",
               "--data.val_fraction=0.15", f"--model.dit.init_args.preset={preset}",
               f"--model.dit.init_args.in_channels={channels}", "--model.dit.init_args.num_classes=5",
               f"--model.tokenizer={tokenizer}", "--model.lr=3e-4", "--model.ema_decay=0.995",
               f"--model.guidance={guidance}", f"--model.diffusion.init_args.sample_steps={sample_steps}",
               "--model.grid_images=5", *([f"--ckpt_path={last}"] if last.is_file() else [])])
    t_fit = time.perf_counter() - t0
    trainer, dm = fit.trainer, fit.datamodule
    model = load_dit(last, device="cpu")
    names = model.classes
    labels = torch.arange(len(names))
    rows, row_names = [], []
    for r in model.trained_ratios:
        rows.append(model.decode(model.sample_latents(len(names), r, labels, steps=sample_steps, guidance=guidance), r))
        row_names.append(f"{r}x ({token_count(image_size, image_size, r * model.dit.patch_size)} tokens)")
    auto = auto_ratios(model, names)
    auto_imgs = []
    for i, r in enumerate(auto):
        z = model.sample_latents(1, r, labels[i : i + 1], steps=sample_steps, guidance=guidance, seed=i)
        img = model.decode(z, r)
        auto_imgs.append(img[0])
    rows.append(torch.stack(auto_imgs))
    row_names.append("auto (ratio from the class name)")
    grid = make_grid(torch.cat(rows).float().add(1).div(2), nrow=len(names), padding=2)
    save_image(grid, out_dir / "samples.png")
    logged = _scalars(run_dir / "version_0", "train/loss", "val/loss")
    curve = logged["train/loss"]
    k = max(1, min(5, len(curve) // 2))
    first = sum(v for _, v in curve[:k]) / max(1, len(curve[:k]))
    final = sum(v for _, v in curve[-k:]) / max(1, len(curve[-k:]))
    counts = {int(r): int((dm.train_set.ratios == r).sum()) for r in sorted(set(dm.train_set.ratios.tolist()))}
    # the last validation in the run's log: a rerun of a finished run validates nothing itself
    val_loss = (logged["val/loss"] or [(0, float("nan"))])[-1][1]
    new_steps = trainer.global_step - done_before
    imgs = new_steps * batch_size
    lines = [
        "# DiT + CAT demo (embedded data, CPU)", "",
        f"Tokenizer: {tokenizer} ({channels} latent channels), images {image_size}px; "
        f"latents per ratio (train): {', '.join(f'{r}x: {c}' for r, c in counts.items())}; "
        f"{len(dm.val_set)} held out.",
        f"DiT preset {preset}: {model.dit.num_params() / 1e6:.2f}M params, class-conditional on {names}.",
        f"Latent scale (1/std) per ratio: {', '.join(f'{r}x {s:.3f}' for r, s in zip(model.dit.ratios, model.latent_scale.tolist()) if s > 0)}.",
        "",
        *md_header("stage", "time"),
        f"| encode (score + nested VAE, cached after the first run) | {t_encode:.1f} s |",
        f"| train {new_steps} steps x {batch_size} latents ({imgs / max(t_fit, 1e-9):.1f} latents/s incl. validation; "
        f"{trainer.global_step} steps in the run) | {t_fit:.1f} s |",
        "",
        f"Training loss (epsilon MSE, mean of {k} logged points): first {first:.4f}, last {final:.4f}; "
        f"held-out loss at fixed timesteps (EMA): {val_loss:.4f}.",
        "",
        f"`samples.png`: one column per class ({', '.join(names)}); rows: {'; '.join(row_names)}.",
        f"Auto ratios from the class names: {', '.join(f'{n} -> {r}x' for n, r in zip(names, auto))}.",
        f"Sampler: {model.diffusion.sampler}, {sample_steps} steps, guidance {guidance}.",
        "",
        "A few CPU minutes on 39 images train the mechanism, not a generator: expect colour fields in the",
        "right kind of layout at best. Every figure here comes from this run.", "",
        "Files: samples.png, latents/ (cache), run/version_0/ (TensorBoard, checkpoints/last.ckpt, images/).", "",
    ]
    report = out_dir / "report.md"
    report.write_text("\n".join(lines))
    return report
