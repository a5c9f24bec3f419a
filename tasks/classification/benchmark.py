"""The linear-probe benchmark behind ``make classify``: CAT adaptive (padded and pooled) against
fixed 8x / 16x / 32x, with the same probe code, reporting top-1, mean tokens and head size."""

from __future__ import annotations

import logging
import shlex
from dataclasses import dataclass, fields
from pathlib import Path

import lightning as L
import numpy as np

from cat_tasks.classification.datasets import ensure_probe_dataset
from cat_tasks.classification.probe import LinearProbeModule
from cat_tokenizer.complexity import ComplexityEvaluator
from cat_tokenizer.complexity.spec import EvaluatorSpec
from cat_tokenizer.files import write_csv
from cat_tokenizer.io import load_vae
from cat_tokenizer.lit.cli import silence_known_warnings
from cat_tokenizer.lit.datamodule import CATDataModule
from cat_tokenizer.markdown import md_table
from cat_tokenizer.outputs import publish_report
from cat_tokenizer.ratios import token_count

__all__ = ["VARIANTS", "ClassifyOptions", "run_benchmark"]

log = logging.getLogger(__name__)

# (name, DataModule ratio_assignment, probe features)
VARIANTS: tuple[tuple[str, str, str], ...] = (
    ("CAT adaptive, zero-padded to 8x", "complexity", "pad"),
    ("CAT adaptive, pooled to 32x grid", "complexity", "pool"),
    ("fixed 8x", "fixed:8", "flat"),
    ("fixed 16x", "fixed:16", "flat"),
    ("fixed 32x", "fixed:32", "flat"),
)


@dataclass(frozen=True)
class ClassifyOptions:
    """The options of ``cat-tokenizer classify`` (and of ``run_benchmark``).

    Args:
        ckpt: the frozen nested VAE (folder, .ckpt or hub id)
        datasets: bundled sets (mnist, digits, lfw) or folders with class subfolders
        out: output folder
        image_size: image side in pixels
        epochs: probe epochs
        batch_size: probe batch size
        lr: probe learning rate
        max_per_class: images per class (0: all)
        evaluator: evaluator for the adaptive ratios: a preset (default, rubric, distilled:D ...) or a YAML (default: default)
        accelerator: Lightning accelerator
        seed: data split and initialisation seed
        report: also copy results.md / results.csv into this folder, e.g. docs/reports/classify-cat-small
    """

    ckpt: str
    datasets: tuple[str, ...] = ("mnist", "digits", "lfw")
    out: str = "outputs/classify"
    image_size: int = 64
    epochs: int = 15
    batch_size: int = 64
    lr: float = 3e-3
    max_per_class: int = 100
    evaluator: EvaluatorSpec | None = None
    accelerator: str = "auto"
    seed: int = 0
    report: str | None = None

    def command(self) -> str:
        """The command line that runs these options (every option that is not its default)."""
        words = ["cat-tokenizer", "classify"]
        for f in fields(self):
            v = getattr(self, f.name)
            if v != f.default:
                words += [f"--{f.name.replace('_', '-')}", *(map(str, v) if isinstance(v, tuple) else [str(v)])]
        return shlex.join(words)


def run_benchmark(o: ClassifyOptions) -> Path:
    """Train and evaluate every variant on every dataset (a bundled name: mnist, digits, lfw; or a folder
    with class subfolders); write results.md / results.csv. Returns results.md."""
    silence_known_warnings()
    out_dir, image_size, seed = Path(o.out), o.image_size, o.seed
    out_dir.mkdir(parents=True, exist_ok=True)
    evaluator = ComplexityEvaluator.from_config(o.evaluator, image_size)  # o.evaluator was read once, by the CLI
    max_per_class = o.max_per_class or None
    rows = []
    for name in o.datasets:
        # A name of a bundled set, or any folder with class subfolders.
        folder = Path(name).expanduser().is_dir()
        root = Path(name).expanduser() if folder else ensure_probe_dataset(name, max_per_class)
        name = root.name if folder else name
        for variant, assignment, features in VARIANTS:
            L.seed_everything(seed, workers=True)
            dm = CATDataModule(root=str(root), image_size=image_size, batch_size=o.batch_size, num_workers=0,
                               val_fraction=0.2, labels=True, ratio_assignment=assignment, evaluator=evaluator,
                               score_cache=str(out_dir / f"scores-{name}.sqlite"), drop_last=False, seed=seed)
            model = LinearProbeModule(o.ckpt, features=features, image_size=image_size, lr=o.lr, cache_features=True)
            quiet = dict(accelerator=o.accelerator, devices=1, logger=False, precision="32-true", enable_checkpointing=False,
                         enable_progress_bar=False, enable_model_summary=False, use_distributed_sampler=False,
                         default_root_dir=str(out_dir))
            L.Trainer(max_epochs=o.epochs, limit_val_batches=0, **quiet).fit(model, datamodule=dm)
            acc = L.Trainer(**quiet).validate(model, datamodule=dm, verbose=False)[0]["val/acc"]
            ratios = dm.val_set.ratios if dm.val_set.ratios is not None else np.full(len(dm.val_set), dm.fixed_ratio)
            tokens = float(np.mean([token_count(image_size, image_size, int(r)) for r in ratios]))
            hist = {r: int((np.asarray(ratios) == r).sum()) for r in (8, 16, 32)}
            rows.append({"dataset": name, "variant": variant, "top1": round(100 * float(acc), 2), "mean_tokens": round(tokens, 1),
                         "head_params": model.head_parameters(), "val_images": len(dm.val_set),
                         "ratios_8/16/32": f"{hist[8]}/{hist[16]}/{hist[32]}"})
            log.info("%s | %s: top-1 %.2f%%, %.1f tokens", name, variant, 100 * acc, tokens)
    write_csv(out_dir / "results.csv", rows)
    cols = list(rows[0])
    lines = ["# Linear probe on frozen CAT latents", "", f"Command: `{o.command()}`", "",
             f"Tokenizer: {o.ckpt} (weights {load_vae(o.ckpt).fingerprint(with_head=False)}); {image_size}px; "
             f"{o.epochs} epochs of AdamW (lr {o.lr}) on the head only; "
             f"top-1 on the held-out 20% (stratified per class).", "",
             *md_table(cols, ([r[c] for c in cols] for r in rows))]
    (out_dir / "results.md").write_text("\n".join(lines) + "\n")
    if o.report is not None:
        publish_report(out_dir, ("results.md", "results.csv"), o.report)
    return out_dir / "results.md"
