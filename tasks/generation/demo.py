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
from dataclasses import dataclass
from pathlib import Path

import torch
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from torchvision.utils import make_grid, save_image

from cat_tasks.generation.module import load_dit
from cat_tasks.generation.sample import auto_ratios
from cat_tokenizer.errors import InputNotFound
from cat_tokenizer.io import load_vae
from cat_tokenizer.lit.cli import cli
from cat_tokenizer.markdown import md_header
from cat_tokenizer.outputs import publish_report
from cat_tokenizer.ratios import token_count

__all__ = ["GenDemoOptions", "run_gen_demo"]

log = logging.getLogger(__name__)

@dataclass(frozen=True)
class GenDemoOptions:
    """The options of ``cat-tokenizer gen-demo`` (and of ``run_gen_demo``).

    Args:
        out: output folder
        ckpt: the tokenizer (default: the shipped cat-small)
        steps: DiT training steps
        image_size: image side in pixels
        batch_size: images per DiT step
        preset: DiT preset
        sample_steps: sampler steps for the grid
        guidance: classifier-free guidance scale
        accelerator: Lightning accelerator (auto, cpu, cuda ...)
        config_dir: folder with dit_encode.yaml, dit_imagenet.yaml and dit_demo.yaml (the repository's configs/)
        report: also copy report.md and samples.png into this folder, e.g. docs/reports/gen-demo-cat-small
    """

    out: str = "outputs/gen_demo"
    ckpt: str = "cat-small"
    steps: int = 800
    image_size: int = 128
    batch_size: int = 8
    preset: str = "mini"
    sample_steps: int = 50
    guidance: float = 2.0
    accelerator: str = "auto"
    config_dir: str = "configs"
    report: str | None = None


CONFIGS = ("dit_encode.yaml", "dit_imagenet.yaml", "dit_demo.yaml")


def _tokenizer(tokenizer: str):
    try:
        return load_vae(tokenizer)
    except InputNotFound:
        raise InputNotFound(f"no tokenizer at {tokenizer}: pass --ckpt (default: the shipped cat-small)") from None


def _scalars(log_dir: Path, *tags: str) -> dict[str, list[tuple[int, float]]]:
    """Per tag, ``(step, value)`` over the whole run (every resume), from one read of its TensorBoard events."""
    ea = EventAccumulator(str(log_dir))
    ea.Reload()
    logged = ea.Tags()["scalars"]
    return {t: [(e.step, e.value) for e in ea.Scalars(t)] if t in logged else [] for t in tags}


def run_gen_demo(o: GenDemoOptions = GenDemoOptions()) -> Path:
    """Encode, train, sample; returns ``report.md``. Run again with more ``steps`` to continue."""
    configs = Path(o.config_dir).expanduser()
    if not all((configs / name).is_file() for name in CONFIGS):
        raise InputNotFound(f"no {', '.join(CONFIGS)} in {configs}: run from the repository root or pass --config-dir")
    out_dir = Path(o.out)
    latents, last = out_dir / "latents", out_dir / "run" / "version_0" / "checkpoints" / "last.ckpt"
    vae = _tokenizer(o.ckpt)
    t0 = time.perf_counter()
    cli(["predict", "-c", str(configs / "dit_encode.yaml"), f"--trainer.accelerator={o.accelerator}",
         f"--model.tokenizer={o.ckpt}", f"--model.cache_dir={latents}", f"--data.skip_encoded={latents}",
         f"--data.image_size={o.image_size}", "--data.num_workers=0", "--data.val_batch_size=16"])
    t_encode = time.perf_counter() - t0
    # steps already trained by an earlier call (this call's throughput counts only its own steps)
    done_before = torch.load(last, map_location="cpu", weights_only=False)["global_step"] if last.is_file() else 0
    t0 = time.perf_counter()
    fit = cli(["fit", "-c", str(configs / "dit_imagenet.yaml"), "-c", str(configs / "dit_demo.yaml"),
               f"--trainer.accelerator={o.accelerator}", f"--trainer.max_steps={o.steps}",
               f"--trainer.val_check_interval={max(1, o.steps // 4)}", f"--trainer.logger.save_dir={out_dir}",
               f"--data.cache_dir={latents}", f"--data.batch_size={o.batch_size}", f"--model.tokenizer={o.ckpt}",
               f"--model.dit.init_args.preset={o.preset}", f"--model.dit.init_args.in_channels={vae.latent_channels}",
               f"--model.guidance={o.guidance}", f"--model.diffusion.init_args.sample_steps={o.sample_steps}",
               *([f"--ckpt_path={last}"] if last.is_file() else [])])
    timing = {"encode": t_encode, "fit": time.perf_counter() - t0, "new_steps": fit.trainer.global_step - done_before,
              "steps": fit.trainer.global_step}
    model = load_dit(last, device="cpu")
    row_names, auto = _sample_grid(model, o, out_dir / "samples.png")
    lines = _report(model, fit.datamodule, o, vae, timing, row_names, auto, out_dir / "run" / "version_0")
    report = out_dir / "report.md"
    report.write_text("\n".join(lines))
    if o.report is not None:
        publish_report(out_dir, ("report.md", "samples.png"), o.report)
    return report


def _sample_grid(model, o: GenDemoOptions, path: Path) -> tuple[list[str], list[int]]:
    """One sample per class at every trained ratio, and at the ratio the text scorer picks for the class name,
    saved as one grid; returns the row names and those auto ratios."""
    names = model.classes
    labels = torch.arange(len(names))
    rows, row_names = [], []
    for r in model.trained_ratios:
        rows.append(model.decode(model.sample_latents(len(names), r, labels, steps=o.sample_steps, guidance=o.guidance), r))
        row_names.append(f"{r}x ({token_count(o.image_size, o.image_size, r * model.dit.patch_size)} tokens)")
    auto = auto_ratios(model, names)
    samples = [model.decode(model.sample_latents(1, r, labels[i : i + 1], steps=o.sample_steps, guidance=o.guidance, seed=i), r)[0]
               for i, r in enumerate(auto)]
    rows.append(torch.stack(samples))
    row_names.append("auto (ratio from the class name)")
    save_image(make_grid(torch.cat(rows).float().add(1).div(2), nrow=len(names), padding=2), path)
    return row_names, auto


def _report(model, dm, o: GenDemoOptions, vae, timing: dict, row_names: list[str], auto: list[int],
            log_dir: Path) -> list[str]:
    """The demo's report.md lines, every figure from this run (losses from its TensorBoard log)."""
    names = model.classes
    logged = _scalars(log_dir, "train/loss", "val/loss")
    curve = logged["train/loss"]
    k = max(1, min(5, len(curve) // 2))
    first = sum(v for _, v in curve[:k]) / max(1, len(curve[:k]))
    final = sum(v for _, v in curve[-k:]) / max(1, len(curve[-k:]))
    counts = {int(r): int((dm.train_set.ratios == r).sum()) for r in sorted(set(dm.train_set.ratios.tolist()))}
    val_loss = (logged["val/loss"] or [(0, float("nan"))])[-1][1]  # the last in the log: a rerun of a finished run validates nothing
    imgs = timing["new_steps"] * o.batch_size
    scales = ", ".join(f"{r}x {s:.3f}" for r, s in zip(model.dit.ratios, model.latent_scale.tolist()) if s > 0)
    return [
        "# DiT + CAT demo (embedded data, CPU)", "",
        f"Tokenizer: {o.ckpt} (weights {vae.fingerprint(with_head=False)}, {vae.latent_channels} latent channels), "
        f"images {o.image_size}px; "
        f"latents per ratio (train): {', '.join(f'{r}x: {c}' for r, c in counts.items())}; {len(dm.val_set)} held out.",
        f"DiT preset {o.preset}: {model.dit.num_params() / 1e6:.2f}M params, class-conditional on {names}.",
        f"Latent scale (1/std) per ratio: {scales}.", "",
        *md_header("stage", "time"),
        f"| encode (score + nested VAE, cached after the first run) | {timing['encode']:.1f} s |",
        f"| train {timing['new_steps']} steps x {o.batch_size} latents ({imgs / max(timing['fit'], 1e-9):.1f} latents/s incl. "
        f"validation; {timing['steps']} steps in the run) | {timing['fit']:.1f} s |", "",
        f"Training loss (epsilon MSE, mean of {k} logged points): first {first:.4f}, last {final:.4f}; "
        f"held-out loss at fixed timesteps (EMA): {val_loss:.4f}.", "",
        f"`samples.png`: one column per class ({', '.join(names)}); rows: {'; '.join(row_names)}.",
        f"Auto ratios from the class names: {', '.join(f'{n} -> {r}x' for n, r in zip(names, auto))}.",
        f"Sampler: {model.diffusion.sampler}, {o.sample_steps} steps, guidance {o.guidance}.", "",
        "A few CPU minutes on 39 images train the mechanism, not a generator: expect colour fields in the",
        "right kind of layout at best. Every figure here comes from this run.", "",
        "Files: samples.png, latents/ (cache), run/version_0/ (TensorBoard, checkpoints/last.ckpt, images/).", "",
    ]
