"""``cat-tokenizer demo`` (``make demo``): train a small nested VAE on the embedded data on the
CPU, report held-out reconstructions at 8x / 16x / 32x, then run the whole CAT pipeline (score
each image, encode at its assigned ratio, decode, compare with fixed ratios: ``pipeline.*``).

Writes into ``--out``: ``report.md`` (the table), ``metrics.csv`` (per image and ratio),
``grid.png`` (original | 8x | 16x | 32x per row), ``pretrained/`` (EMA weights, loadable with
``NestedVAE.from_pretrained``) and ``checkpoints/last.ckpt`` (resumable: run the demo again with
the same ``--out`` and more ``--steps`` to continue).
"""

from __future__ import annotations

import csv
import logging
from pathlib import Path

import lightning as L
import torch
from lightning.pytorch.callbacks import ModelCheckpoint
from torchvision.utils import make_grid, save_image

from cat_tokenizer.callbacks import ExportPretrained
from cat_tokenizer.cli import silence_known_warnings
from cat_tokenizer.cli.pipeline import pipeline_report
from cat_tokenizer.data.datamodule import CATDataModule
from cat_tokenizer.losses.vae_loss import VAELoss
from cat_tokenizer.metrics.image import psnr_ssim
from cat_tokenizer.lit.vae_module import NestedVAEModule
from cat_tokenizer.models.nested_vae import NestedVAE
from cat_tokenizer.ratios import token_count

__all__ = ["run_demo", "reconstruction_report"]

log = logging.getLogger(__name__)


def run_demo(out: str = "outputs/demo", steps: int = 300, image_size: int = 128, batch_size: int = 4,
             preset: str = "small", num_workers: int = 2, seed: int = 0) -> Path:
    """Train for ``steps`` batches and write the report; returns the report path."""
    out_dir = Path(out)
    silence_known_warnings()
    L.seed_everything(seed, workers=True)
    data = CATDataModule(root=None, image_size=image_size, batch_size=batch_size, num_workers=num_workers,
                         val_fraction=0.15, seed=seed)
    # Short CPU run: no LPIPS (no weights offline), GAN kept off (disc_start beyond the run).
    loss = VAELoss(perceptual_weight=0.0, disc_start=10**9)
    # Without the GAN, plain Adam betas learn faster than the GAN-style (0.5, 0.9).
    model = NestedVAEModule(NestedVAE.from_preset(preset), loss, lr=5e-4, betas=(0.9, 0.99),
                            warmup_steps=min(50, steps // 5), ema_decay=0.99, ema_warmup=True)
    ckpt_dir = out_dir / "checkpoints"
    last = ckpt_dir / "last.ckpt"
    trainer = L.Trainer(
        accelerator="auto", devices=1, precision="32-true",
        max_steps=2 * steps,  # two optimizer steps (VAE + discriminator) per batch
        default_root_dir=str(out_dir), use_distributed_sampler=False,
        check_val_every_n_epoch=None, val_check_interval=None, limit_val_batches=0,
        log_every_n_steps=5, enable_model_summary=False,
        callbacks=[ModelCheckpoint(dirpath=ckpt_dir, save_last=True, every_n_train_steps=100),
                   ExportPretrained(dirpath=str(out_dir / "pretrained"))],
    )
    trainer.fit(model, datamodule=data, ckpt_path=str(last) if last.is_file() else None)
    vae = model.eval_vae.eval()
    report = reconstruction_report(vae, data, out_dir, trained_steps=int(model.gen_step))
    pipeline = pipeline_report(vae, data, out_dir)
    report.write_text(report.read_text() + "\n" + pipeline.read_text())
    return report


@torch.no_grad()
def reconstruction_report(vae: NestedVAE, data: CATDataModule, out_dir: Path, trained_steps: int) -> Path:
    """Reconstruct every validation image at every ratio; write grid.png, metrics.csv, report.md."""
    data.setup("validate")
    ds = data.val_set
    rows, grid_rows = [], []
    for i in range(len(ds)):
        item = ds[i]
        if item is None:
            continue
        x = item["image"][None]  # (1, 3, S, S)
        name = ds.files[i].relative_to(data.data_root()).as_posix()
        recon = []
        for r in vae.ratios:
            x_hat = vae.reconstruct(x, r)
            psnr, ssim = psnr_ssim(x_hat, x)
            rows.append({"image": name, "kind": name.split("/")[0], "ratio": r, "tokens": token_count(*x.shape[-2:], r),
                         "psnr": psnr, "ssim": ssim})
            recon.append(x_hat[0])
        grid_rows += [x[0], *recon]
    out_dir.mkdir(parents=True, exist_ok=True)
    save_image(make_grid(torch.stack(grid_rows), nrow=1 + len(vae.ratios), padding=2).add(1).div(2), out_dir / "grid.png")
    with open(out_dir / "metrics.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    lines = [
        "# Nested VAE demo report",
        "",
        f"Held-out images: {len(grid_rows) // (1 + len(vae.ratios))} at {data.image_size}px; "
        f"model: {sum(p.numel() for p in vae.parameters()) / 1e6:.2f}M params, {trained_steps} training batches.",
        "",
        "| ratio | tokens / image | PSNR (dB) | SSIM |",
        "|---|---|---|---|",
    ]
    for r in vae.ratios:
        sel = [row for row in rows if row["ratio"] == r]
        mean = lambda k: sum(row[k] for row in sel) / len(sel)  # noqa: E731
        lines.append(f"| {r}x | {sel[0]['tokens']} | {mean('psnr'):.2f} | {mean('ssim'):.3f} |")
    lines += ["", "Per image (PSNR dB / SSIM):", "", "| image | " + " | ".join(f"{r}x" for r in vae.ratios) + " |",
              "|---|" + "---|" * len(vae.ratios)]
    for name in dict.fromkeys(row["image"] for row in rows):
        cells = [f"{row['psnr']:.2f} / {row['ssim']:.3f}" for row in rows if row["image"] == name]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    lines += ["", "Files: grid.png (original | 8x | 16x | 32x per row), metrics.csv, pretrained/, checkpoints/last.ckpt", ""]
    report = out_dir / "report.md"
    report.write_text("\n".join(lines))
    return report
