"""Reconstruction quality per content kind: a fixed sample of a folder, every ratio, PSNR / SSIM.

A folder's kinds are its top-level subfolders (``dev/natural/...``, ``dev/text/...``). The sample is
deterministic (every k-th file of each kind, in path order, so every source is represented), loaded
once with the evaluation crop policy, and reconstructed from the posterior mean.

``KindEvaluator`` runs it during training (every ``every_n_batches`` batches) and logs
``kind/<kind>/<r>x/psnr`` and ``.../ssim``, which gives the per-kind training curve, and appends the
same figures to ``<log_dir>/kind_eval.csv``; with ``palette=True`` also the palette check's summary
(``cat_tokenizer.metrics.palette``: min / mean PSNR and largest colour shift per layout and ratio) to
``<log_dir>/palette.csv``.
"""

from __future__ import annotations

import csv
import logging
from dataclasses import dataclass
from pathlib import Path

import lightning as L
import numpy as np
import torch
from lightning.pytorch.utilities import rank_zero_only
from torch import Tensor
from torchmetrics.functional.image import peak_signal_noise_ratio, structural_similarity_index_measure

from cat_tokenizer.data.images import UnreadableImage, list_images, load_rgb
from cat_tokenizer.data.transforms import CropPolicy, image_transform
from cat_tokenizer.metrics.palette import measure_palette, summarise_palette
from cat_tokenizer.models.nested_vae import NestedVAE

__all__ = ["KindSample", "load_kind_sample", "psnr_per_kind", "summarise", "KindEvaluator"]

log = logging.getLogger(__name__)


@dataclass
class KindSample:
    """Evaluation crops of a folder: ``images`` (N, 3, S, S) in [-1, 1], their kinds and paths."""

    images: Tensor
    kinds: list[str]
    paths: list[str]


def load_kind_sample(root: str | Path, per_kind: int = 24, image_size: int = 128, crop: CropPolicy = "native") -> KindSample:
    """Up to ``per_kind`` images of each top-level subfolder of ``root``, evenly spaced in path order."""
    root = Path(root).expanduser()
    by_kind: dict[str, list[Path]] = {}
    for f in list_images(root):
        rel = f.relative_to(root).parts
        by_kind.setdefault(rel[0] if len(rel) > 1 else "", []).append(f)
    tf = image_transform(image_size, train=False, crop=crop)
    images, kinds, paths = [], [], []
    for kind in sorted(by_kind):
        files = by_kind[kind]
        picks = [files[int(i)] for i in np.linspace(0, len(files) - 1, min(per_kind, len(files)))] if per_kind else files
        for f in dict.fromkeys(picks):
            try:
                images.append(tf(load_rgb(f)))
            except UnreadableImage as err:
                log.warning("skipping %s", err)
                continue
            kinds.append(kind)
            paths.append(f.relative_to(root).as_posix())
    return KindSample(torch.stack(images), kinds, paths)


@torch.no_grad()
def psnr_per_kind(vae: NestedVAE, sample: KindSample, batch_size: int = 16) -> list[dict]:
    """One row per (image, ratio): ``{path, kind, ratio, psnr, ssim}`` (posterior mean, clamped)."""
    vae_device = next(vae.parameters()).device
    rows = []
    for r in vae.ratios:
        for s in range(0, len(sample.images), batch_size):
            x = sample.images[s : s + batch_size].to(vae_device)
            x_hat = vae.reconstruct(x, r).float()
            a, b = (x_hat + 1) / 2, (x.float() + 1) / 2
            psnr = peak_signal_noise_ratio(a, b, data_range=1.0, reduction="none", dim=(1, 2, 3))
            ssim = structural_similarity_index_measure(a, b, data_range=1.0, reduction="none")
            for j in range(len(x)):
                rows.append({"path": sample.paths[s + j], "kind": sample.kinds[s + j], "ratio": r,
                             "psnr": float(psnr[j]), "ssim": float(ssim[j])})
    return rows


def summarise(rows: list[dict]) -> dict[tuple[str, int], dict[str, float]]:
    """Mean PSNR / SSIM per (kind, ratio), plus ``("all", r)`` over every image."""
    out: dict[tuple[str, int], dict[str, float]] = {}
    groups: dict[tuple[str, int], list[dict]] = {}
    for row in rows:
        groups.setdefault((row["kind"], row["ratio"]), []).append(row)
        groups.setdefault(("all", row["ratio"]), []).append(row)
    for key, sel in sorted(groups.items()):
        out[key] = {"psnr": float(np.mean([r["psnr"] for r in sel])), "ssim": float(np.mean([r["ssim"] for r in sel])),
                    "n": len(sel)}
    return out


class KindEvaluator(L.Callback):
    """Per-kind reconstruction quality of the EMA weights on a fixed folder during training.

    Args:
        root: a folder whose top-level subfolders are content kinds (e.g. real-v1 ``dev/``).
        every_n_batches: evaluate every this many training batches (generator steps), and at the end.
        per_kind: images per kind.
        image_size: crop side; default the DataModule's.
        crop: crop policy; default the DataModule's.
        palette: also run the palette check (24 flat colours, three layouts) and append its summary to
            ``palette.csv`` beside ``kind_eval.csv``.
    """

    def __init__(self, root: str, every_n_batches: int = 1000, per_kind: int = 24, image_size: int | None = None,
                 crop: CropPolicy | None = None, palette: bool = False):
        self.root, self.every, self.per_kind, self.palette = root, every_n_batches, per_kind, palette
        self.image_size, self.crop = image_size, crop
        self._sample: KindSample | None = None
        self._csv: Path | None = None
        self._last = -1

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        self._csv = Path(trainer.log_dir or trainer.default_root_dir) / "kind_eval.csv"

    def _load(self, trainer: L.Trainer) -> KindSample:
        if self._sample is None:
            dm = trainer.datamodule
            size = self.image_size or getattr(dm, "image_size", 128)
            self._sample = load_kind_sample(self.root, self.per_kind, size, self.crop or getattr(dm, "crop", "native"))
        return self._sample

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        step = int(pl_module.gen_step)
        if step % self.every == 0 and step != self._last:
            self._run(trainer, pl_module, step)

    def on_train_end(self, trainer, pl_module) -> None:
        step = int(pl_module.gen_step)
        if step != self._last:
            self._run(trainer, pl_module, step)

    @staticmethod
    def _append(path: Path, header: list[str], rows: list[list]) -> None:
        new = not path.exists()
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(path, "a", newline="") as fh:
            w = csv.writer(fh)
            if new:
                w.writerow(header)
            w.writerows(rows)

    @rank_zero_only
    def _run(self, trainer: L.Trainer, pl_module, step: int) -> None:
        self._last = step
        vae = pl_module.eval_vae
        was_training = vae.training
        vae.eval()
        summary = summarise(psnr_per_kind(vae, self._load(trainer)))
        palette = summarise_palette(measure_palette(vae, device=pl_module.device)) if self.palette else []
        vae.train(was_training)
        metrics = {f"kind/{k}/{r}x/{m}": v[m] for (k, r), v in summary.items() for m in ("psnr", "ssim")}
        metrics.update({f"palette/{p['layout']}/{p['ratio']}x/min_psnr": p["min_psnr"] for p in palette})
        if trainer.logger is not None:
            trainer.logger.log_metrics(metrics, step=trainer.global_step)
        if not trainer.fast_dev_run:  # a smoke run must not append to a real run's curve
            self._append(self._csv, ["step", "kind", "ratio", "psnr", "ssim", "n"],
                         [[step, k, r, f"{v['psnr']:.3f}", f"{v['ssim']:.4f}", v["n"]] for (k, r), v in summary.items()])
            if palette:
                self._append(self._csv.with_name("palette.csv"), ["step", "layout", "ratio", "min_psnr", "mean_psnr", "worst", "max_levels"],
                             [[step, p["layout"], p["ratio"], f"{p['min_psnr']:.2f}", f"{p['mean_psnr']:.2f}", p["worst"],
                               f"{p['max_levels']:.1f}"] for p in palette])
        line = "  ".join(f"{k} {v['psnr']:.2f}" for (k, r), v in summary.items() if r == min(vae.ratios))
        log.info("kind eval at batch %d (%dx PSNR dB): %s", step, min(vae.ratios), line)
        if palette:
            log.info("palette at batch %d (min dB per layout and ratio): %s", step,
                     "  ".join(f"{p['layout']} {p['ratio']}x {p['min_psnr']:.1f}" for p in palette))
