"""The linear-probe benchmark behind ``make classify``: CAT adaptive (padded and pooled) against
fixed 8x / 16x / 32x, with the same probe code, reporting top-1, mean tokens and head size."""

from __future__ import annotations

import csv
import logging
import shlex
from collections.abc import Sequence
from pathlib import Path

import lightning as L
import numpy as np

from cat_tasks.classification.datasets import ensure_probe_dataset
from cat_tasks.classification.probe import LinearProbeModule
from cat_tokenizer.complexity import ComplexityEvaluator
from cat_tokenizer.lit.cli import silence_known_warnings
from cat_tokenizer.lit.datamodule import CATDataModule
from cat_tokenizer.markdown import md_table
from cat_tokenizer.ratios import token_count

__all__ = ["VARIANTS", "run_benchmark"]

log = logging.getLogger(__name__)

# (name, DataModule ratio_assignment, probe features)
VARIANTS: tuple[tuple[str, str, str], ...] = (
    ("CAT adaptive, zero-padded to 8x", "complexity", "pad"),
    ("CAT adaptive, pooled to 32x grid", "complexity", "pool"),
    ("fixed 8x", "fixed:8", "flat"),
    ("fixed 16x", "fixed:16", "flat"),
    ("fixed 32x", "fixed:32", "flat"),
)


def run_benchmark(tokenizer: str, datasets: Sequence[str], out_dir: str | Path, image_size: int = 64,
                  epochs: int = 15, batch_size: int = 64, lr: float = 3e-3, max_per_class: int | None = 100,
                  evaluator: ComplexityEvaluator | None = None, seed: int = 0, accelerator: str = "auto",
                  command: str | None = None) -> Path:
    """Train and evaluate every variant on every dataset (a bundled name: mnist, digits, lfw; or a folder
    with class subfolders); write results.md / results.csv. Returns results.md."""
    silence_known_warnings()
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    evaluator = evaluator or ComplexityEvaluator.default(image_size)
    rows = []
    for name in datasets:
        # A name of a bundled set, or any folder with class subfolders.
        folder = Path(name).expanduser().is_dir()
        root = Path(name).expanduser() if folder else ensure_probe_dataset(name, max_per_class)
        name = root.name if folder else name
        for variant, assignment, features in VARIANTS:
            L.seed_everything(seed, workers=True)
            dm = CATDataModule(root=str(root), image_size=image_size, batch_size=batch_size, num_workers=0,
                               val_fraction=0.2, labels=True, ratio_assignment=assignment, evaluator=evaluator,
                               score_cache=str(out_dir / f"scores-{name}.sqlite"), drop_last=False, seed=seed)
            model = LinearProbeModule(tokenizer, features=features, image_size=image_size, lr=lr, cache_features=True)
            quiet = dict(accelerator=accelerator, devices=1, logger=False, precision="32-true", enable_checkpointing=False,
                         enable_progress_bar=False, enable_model_summary=False, use_distributed_sampler=False,
                         default_root_dir=str(out_dir))
            L.Trainer(max_epochs=epochs, limit_val_batches=0, **quiet).fit(model, datamodule=dm)
            acc = L.Trainer(**quiet).validate(model, datamodule=dm, verbose=False)[0]["val/acc"]
            ratios = dm.val_set.ratios if dm.val_set.ratios is not None else np.full(len(dm.val_set), dm.fixed_ratio)
            tokens = float(np.mean([token_count(image_size, image_size, int(r)) for r in ratios]))
            hist = {r: int((np.asarray(ratios) == r).sum()) for r in (8, 16, 32)}
            rows.append({"dataset": name, "variant": variant, "top1": round(100 * float(acc), 2), "mean_tokens": round(tokens, 1),
                         "head_params": model.head_parameters(), "val_images": len(dm.val_set),
                         "ratios_8/16/32": f"{hist[8]}/{hist[16]}/{hist[32]}"})
            log.info("%s | %s: top-1 %.2f%%, %.1f tokens", name, variant, 100 * acc, tokens)
    with open(out_dir / "results.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    cols = list(rows[0])
    command = command or shlex.join(["cat-tokenizer", "classify", "--ckpt", str(tokenizer), "--datasets", *datasets,
                                     "--image-size", str(image_size), "--epochs", str(epochs), "--batch-size", str(batch_size),
                                     "--lr", str(lr), "--max-per-class", str(max_per_class or 0)])
    lines = ["# Linear probe on frozen CAT latents", "", f"Command: `{command}`", "",
             f"Tokenizer: {tokenizer}; {image_size}px; {epochs} epochs of AdamW (lr {lr}) on the head only; "
             f"top-1 on the held-out 20% (stratified per class).", "",
             *md_table(cols, ([r[c] for c in cols] for r in rows))]
    (out_dir / "results.md").write_text("\n".join(lines) + "\n")
    return out_dir / "results.md"
