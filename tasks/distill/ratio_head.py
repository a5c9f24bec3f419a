"""``cat-tokenizer distill``: train the tokenizer's ratio head on a teacher evaluator's scores.

1. Score every image with the teacher (through the dataset's score cache).
2. Encode each image's trunk features once with the frozen tokenizer (eval crop at ``image_size``).
3. Train the head (Lightning, L1 on the teacher's score) on the training split (whole sources held
   out when the folder names them: ``sources.csv``).
4. Report on the held-out split: ratio agreement (accuracy and confusion matrix, thresholds =
   the teacher's), Spearman correlation of scores, and images/s of student vs teacher measured in
   this process on the same held-out images (the teacher without its cache).
5. Save the tokenizer with its head to ``--out`` (``NestedVAE.from_pretrained(out).encode(x, "auto")``,
   ``--evaluator distilled:<out>``) and ``distill.json`` / ``distill.md``.

``--target oracle`` trains on the tokenizer's own labels instead of a teacher: each image's maximum
acceptable ratio (``cat_tasks.reconstruction.analysis``: within ``tolerance_db`` of 8x's PSNR and, for
text, ``ocr_tolerance`` of its OCR confidence), measured on ``crop`` crops (default native) and
regressed as scores 8.5 / 5.5 / 2.5 for 8x / 16x / 32x (the default thresholds, 4 and 7).
"""

from __future__ import annotations

import csv
import json
import logging
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import lightning as L
import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, TensorDataset
from torchmetrics.functional.classification import multiclass_confusion_matrix
from torchmetrics.functional.regression import spearman_corrcoef

from cat_tasks.reconstruction.analysis import max_acceptable_ratios
from cat_tasks.reconstruction.heads import trunk_inputs
from cat_tasks.reconstruction.table import measure_folder
from cat_tokenizer.complexity import ComplexityEvaluator, RatioMapper
from cat_tokenizer.complexity.cache import default_score_cache
from cat_tokenizer.complexity.evaluator import MIN_AGREEMENT, MIN_HELD_OUT, replaces_teacher
from cat_tokenizer.complexity.spec import EvaluatorSpec
from cat_tokenizer.data.dataset import hash_fraction, stratified_split
from cat_tokenizer.data.images import list_images, load_rgb, partition_readable
from cat_tokenizer.data.transforms import image_transform
from cat_tokenizer.data.variety import SOURCES_FILE
from cat_tokenizer.devices import resolve_device
from cat_tokenizer.errors import UserInputError
from cat_tokenizer.io import load_vae
from cat_tokenizer.lit.cli import silence_known_warnings
from cat_tokenizer.models.ratio_head import RatioHead
from cat_tokenizer.options import parse_numbers
from cat_tokenizer.profiling import flops, items_per_second
from cat_tokenizer.ratios import DEFAULT_RATIOS, DEFAULT_THRESHOLDS

__all__ = ["DistillOptions", "RatioHeadModule", "run_distill", "check_loss", "fit_regressor", "ratio_agreement"]

log = logging.getLogger(__name__)


LOSSES = {"l1": F.l1_loss, "mse": F.mse_loss}


def check_loss(loss: str) -> str:
    if loss not in LOSSES:
        raise UserInputError(f"unknown distillation loss {loss!r}; choose from {sorted(LOSSES)}")
    return loss


class RatioHeadModule(L.LightningModule):
    """Regresses the teacher's score with any network ``(*inputs) -> (B,)`` or ``(B, 1)``: the ratio
    head on precomputed trunk statistics (the trunk stays frozen), or a standalone CNN on images.
    AdamW with a one-cycle schedule over the run.

    ``loss``: "l1" (default) fits the median of the teacher's score given the input, "mse" its mean.
    Where the teacher is bimodal for inputs the student cannot tell apart (text that OCR may or may
    not read adds 4 points), the mean falls between the modes and often in the wrong ratio bin; the
    median sits in one mode. L1 raised held-out agreement from 88.2% to 91.1% (README, "Distilled ratio head").
    """

    def __init__(self, head: nn.Module, lr: float = 1e-3, weight_decay: float = 1e-4, loss: str = "l1"):
        super().__init__()
        self.head, self.lr, self.weight_decay, self.loss = head, lr, weight_decay, check_loss(loss)

    def training_step(self, batch, batch_idx):
        *inputs, score = batch  # (B,) scores, or (B, R) PSNRs for a distortion head
        loss = LOSSES[self.loss](self.head(*inputs).reshape(score.shape), score)
        self.log(f"train/{self.loss}", loss, prog_bar=True)
        return loss

    def configure_optimizers(self):
        opt = torch.optim.AdamW(self.head.parameters(), lr=self.lr, weight_decay=self.weight_decay)
        sched = torch.optim.lr_scheduler.OneCycleLR(opt, self.lr, total_steps=self.trainer.estimated_stepping_batches)
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}


class _HeadOnStatistics(nn.Module):
    """The ratio head fed precomputed trunk statistics (and the 8x map when it has a conv branch)."""

    def __init__(self, head: RatioHead):
        super().__init__()
        self.head = head

    def forward(self, stats: torch.Tensor, last: torch.Tensor | None = None) -> torch.Tensor:
        return self.head.score(stats, last)


def _read_groups(root: Path, groups: str | None) -> tuple[dict[str, str] | None, str]:
    """``({path relative to root: group}, where from)``; groups "auto" reads ``root/sources.csv``
    when there is one (``cat-tokenizer variety`` writes it), "none" splits at random."""
    if groups in (None, "none") or (groups == "auto" and not (root / SOURCES_FILE).is_file()):
        return None, "random"
    if groups == "folder":  # KIND/SOURCE/...: the second folder is the source, the first its family
        found = {f.relative_to(root).as_posix(): "-".join(f.relative_to(root).parts[:2]) for f in list_images(root)
                 if len(f.relative_to(root).parts) > 2}
        return found, "KIND/SOURCE folders"
    path = root / SOURCES_FILE if groups == "auto" else Path(groups).expanduser()
    if not path.is_file():
        raise UserInputError(f"groups file not found: {groups} (a CSV of path,group rows; paths relative to the data folder)")
    with path.open(newline="") as f:
        rows = list(csv.reader(f))
    if not rows or rows[0][0] != "path" or len(rows[0]) < 2 or any(len(r) < 2 for r in rows[1:]):
        raise UserInputError(f"{path} must be a CSV with a header 'path,<group>' and two columns per row")
    return {r[0]: r[1] for r in rows[1:]}, str(path)


def _group_families(files: list[Path], root: Path, groups: dict[str, str]) -> tuple[list[str], list[list[str]]]:
    """(each file's group, each family's groups in hash order): a file without a group is its own; a
    family is the name before a group's last "-" (``photo-3`` is a photo)."""
    rel = [f.relative_to(root).as_posix() for f in files]
    key = [groups[r] if r in groups else "\0" + r for r in rel]  # "\0": a file of no group
    families: dict[str, list[str]] = {}
    for g in sorted(set(key)):
        families.setdefault("\0" if g.startswith("\0") else g.rsplit("-", 1)[0], []).append(g)
    return key, [sorted(members, key=hash_fraction) for members in families.values()]


def _grouped_split(files: list[Path], root: Path, fraction: float, groups: dict[str, str]) -> set[Path]:
    """Held-out files: every file of the held-out groups. Groups are held out per family, the
    ``round(fraction * n)`` of each family's n groups that hash lowest, at least one. Unlike a
    per-file split, no held-out image shares a source with a training image."""
    key, families = _group_families(files, root, groups)
    held = {g for members in families for g in members[: max(1, round(fraction * len(members)))]}
    return {f for f, g in zip(files, key) if g in held}


def grouped_folds(files: list[Path], root: Path, k: int, groups: dict[str, str] | None) -> list[int]:
    """A fold in 0..k-1 for each file. With ``groups``: whole groups per fold, dealt round-robin family
    after family (each in hash order), so every family is spread over the folds and no source spans
    two; without: by each file's hash."""
    if groups is None:
        return [min(k - 1, int(hash_fraction(f.relative_to(root).as_posix()) * k)) for f in files]
    key, families = _group_families(files, root, groups)
    dealt = [g for members in families for g in members]  # one count across families: one-source families spread too
    fold = {g: i % k for i, g in enumerate(dealt)}
    return [fold[g] for g in key]


def ratio_agreement(pred: torch.Tensor, target: torch.Tensor, mapper) -> tuple[float, torch.Tensor, float]:
    """(ratio agreement, confusion matrix rows=teacher cols=student, Spearman of scores)."""
    index = {r: i for i, r in enumerate(mapper.ratios)}
    teacher = torch.tensor([index[int(r)] for r in mapper(target.numpy())])
    student = torch.tensor([index[int(r)] for r in mapper(pred.numpy())])
    confusion = multiclass_confusion_matrix(student, teacher, num_classes=len(index))
    rho = float(spearman_corrcoef(pred, target)) if len(pred) > 2 and target.std() > 0 and pred.std() > 0 else float("nan")
    return float(np.trace(confusion.numpy()) / max(1, len(pred))), confusion, rho


def _agreement_by_folder(pred: torch.Tensor, target: torch.Tensor, mapper, files: list[Path], root: Path) -> dict[str, list]:
    """``{top-level folder: [agreement, count]}`` on the held-out images (where a student fails)."""
    groups: dict[str, list[int]] = {}
    for i, f in enumerate(files):
        rel = f.relative_to(root).parts
        groups.setdefault(rel[0] if len(rel) > 1 else ".", []).append(i)
    return {g: [round(ratio_agreement(pred[idx], target[idx], mapper)[0], 4), len(idx)] for g, idx in sorted(groups.items())}


def fit_regressor(net: nn.Module, final: nn.Linear | list[nn.Linear], inputs: list[torch.Tensor], scores: torch.Tensor, epochs: int,
                   batch_size: int, lr: float, dev: torch.device, loss: str = "l1",
                   init_bias: float | torch.Tensor = 5.0) -> nn.Module:
    """Train ``net(*inputs)`` to regress the scores (its ``final`` layer, or layers whose outputs are the
    score columns in order, starts at ``init_bias``: the scale's middle, 5, or each target's training
    mean); eval mode on ``dev``."""
    bias = torch.as_tensor(init_bias, dtype=torch.float32).flatten()
    start = 0
    for layer in [final] if isinstance(final, nn.Linear) else final:
        n = layer.out_features
        nn.init.zeros_(layer.weight)
        with torch.no_grad():
            layer.bias.copy_((bias if bias.numel() == 1 else bias[start : start + n]).to(layer.bias).expand_as(layer.bias))
        start += n
    module = RatioHeadModule(net, lr, loss=loss)
    L.Trainer(max_epochs=epochs, accelerator=dev.type, devices=1, logger=False, enable_checkpointing=False,
              enable_progress_bar=False, enable_model_summary=False).fit(
        module, DataLoader(TensorDataset(*inputs, scores), batch_size=batch_size, shuffle=True))
    return module.head.eval().to(dev)


def _train_cnn(name: str, images: torch.Tensor, scores: torch.Tensor, epochs: int, batch_size: int, lr: float, dev,
               loss: str) -> nn.Module:
    import timm

    net = timm.create_model(name, pretrained=False, num_classes=1)
    return fit_regressor(net, net.get_classifier(), [images], scores, epochs, batch_size, lr, dev, loss)


ORACLE_SCORES = {8: 8.5, 16: 5.5, 32: 2.5}  # max acceptable ratio -> regression target (thresholds 4, 7)


def _oracle_labels(files: list[Path], root: Path, tokenizer: str, out_dir: Path, image_size: int, crop: str,
                   tolerance_db: float, ocr_tolerance: float, dev: torch.device):
    """``([(file, score)], mapper, name)`` from the tokenizer's own maximum acceptable ratios."""
    vae = load_vae(tokenizer).eval().to(dev)
    table = measure_folder(root, vae, out_dir / "recon_cache", image_size, crop, features=False, only=files)
    ratios = max_acceptable_ratios(table, tolerance_db, ocr_tolerance)
    if set(ratios.tolist()) - set(ORACLE_SCORES):
        raise UserInputError(f"--target oracle needs ratios 8, 16, 32; the tokenizer has {list(vae.ratios)}")
    hist = {r: int((ratios == r).sum()) for r in sorted(ORACLE_SCORES)}
    log.info("oracle labels (max acceptable ratio within %g dB / OCR %g): %s", tolerance_db, ocr_tolerance, hist)
    scored = [(root / p, ORACLE_SCORES[int(r)]) for p, r in zip(table.paths, ratios)]
    return scored, RatioMapper(DEFAULT_THRESHOLDS, DEFAULT_RATIOS), f"oracle (max acceptable ratio, {tolerance_db:g} dB, OCR {ocr_tolerance:g})"


@dataclass(frozen=True)
class DistillOptions:
    """The options of ``cat-tokenizer distill`` (and of ``run_distill``).

    Args:
        data: image folder
        out: folder for the tokenizer with its ratio head, distill.json, distill.md
        ckpt: the nested VAE whose trunk the head reads
        target: teacher: an evaluator's scores; oracle: the tokenizer's own max acceptable ratio per image
        crop: crop policy of the head's view (default: native for oracle, resize for teacher)
        tolerance_db: oracle: PSNR drop vs 8x still acceptable
        ocr_tolerance: oracle: OCR confidence drop vs 8x still acceptable
        teacher: teacher evaluator: a preset (default, rubric, smollm2) or a YAML (default: default)
        image_size: image side in pixels
        epochs: epochs of the head (it trains on precomputed statistics: fast)
        batch_size: head batch size
        lr: head learning rate
        hidden: width of the head's MLP
        conv: width of the head's conv branch on the 8x map (0: statistics only)
        stages: trunk stages the head summarises, e.g. 1,2,3 (default: all; 0 = full resolution)
        row_stride: per trunk stage, read every k-th row for the statistics (default: 8,4,2,1 on an 8x trunk)
        loss: regression loss on the teacher's score (l1: its median, which keeps bimodal cases in one ratio)
        groups: hold out whole sources: auto (DIR/sources.csv if present, as variety writes), folder (DIR/KIND/SOURCE/...,
            as real-v1), a CSV of path,group rows, or none (per-file split)
        max_images: distil on a seeded random sample of this many images (default: all)
        val_fraction: held-out share
        device: auto, cpu, cuda ...
        cnn: timm model for the standalone CNN comparison (none: skip)
        cnn_epochs: epochs of the standalone CNN (it trains on images: slow on CPU)
        speed_images: held-out images the speeds are measured on
        seed: sample and split seed
    """

    data: str
    out: str
    ckpt: str = "cat-small"
    target: Literal["teacher", "oracle"] = "teacher"
    crop: Literal["resize", "native"] | None = None
    tolerance_db: float = 1.0
    ocr_tolerance: float = 10.0
    teacher: EvaluatorSpec | None = None
    image_size: int = 128
    epochs: int = 150
    batch_size: int = 32
    lr: float = 3e-3
    hidden: int = 256
    conv: int = 0
    stages: str | None = None
    row_stride: str | None = None
    loss: Literal["l1", "mse"] = "l1"
    groups: str = "auto"
    max_images: int | None = None
    val_fraction: float = 0.2
    device: str = "auto"
    cnn: str = "resnet10t"
    cnn_epochs: int = 20
    speed_images: int = 64
    seed: int = 0


def run_distill(o: DistillOptions) -> dict:
    """Distil and report; returns the metrics dict (also written to ``out/distill.json``).

    With ``cnn`` (a timm model name, randomly initialised; "none" skips it), a standalone CNN student is
    trained on the same images and labels and reported beside the head (agreement and GFLOPs per image),
    the comparison the design asks for. The tokenizer keeps the head either way: only the head can route
    inside ``encode(x, "auto")``, on features the encode computes anyway. ``stages`` / ``row_stride``: which
    trunk stages the head summarises and how sparsely it reads their rows (``RatioHead``). ``groups``: hold
    out whole sources; the agreement ``auto:`` trusts is then on images from unseen sources.
    ``target="oracle"``: the tokenizer's own labels instead of a teacher's (see the module docstring).
    """
    silence_known_warnings()
    check_loss(o.loss)  # before the (slow) scoring
    if o.target not in ("teacher", "oracle"):
        raise UserInputError(f"--target must be teacher or oracle, got {o.target!r}")
    L.seed_everything(o.seed, workers=True)
    root, out_dir, dev = Path(o.data).expanduser(), Path(o.out), resolve_device(o.device)
    crop = o.crop or ("native" if o.target == "oracle" else "resize")
    group_of, split_from = _read_groups(root, o.groups)  # before the (slow) scoring: a bad file fails now
    teacher = ComplexityEvaluator.from_config(o.teacher) if o.target == "teacher" else None
    files, scores, mapper, teacher_name = _labels(root, teacher, o.ckpt, out_dir, o.image_size, crop, o.tolerance_db, o.ocr_tolerance,
                                                  dev, o.max_images, o.seed)
    tr, va, split = _split(files, root, o.val_fraction, group_of, split_from)
    vae, head, inputs = _fit_head(o, files, scores, mapper, tr, crop, dev)
    pred = _predict(head, [t[va] for t in inputs], dev)
    agreement, confusion, rho = ratio_agreement(pred, scores[va], mapper)
    head.set_report({"teacher": _spec_ref(o.teacher) if o.teacher and o.target == "teacher" else None, "teacher_name": teacher_name,
                     "agreement": round(agreement, 4), "held_out": len(va), "spearman": round(rho, 4), "split": split})
    vae.attach_ratio_head(head)
    images = [load_rgb(files[i]) for i in va[: o.speed_images]]
    tf = image_transform(o.image_size, train=False, crop=crop)
    speed = _speeds(vae, head, teacher, images, tf, dev)
    out_dir.mkdir(parents=True, exist_ok=True)
    vae.save_pretrained(out_dir)  # the head is usable before the (slow) CNN comparison starts
    cnn_metrics = {} if o.cnn == "none" else _cnn_student(o.cnn, files, scores, tr, va, tf, images, mapper, o.cnn_epochs, o.batch_size,
                                                         o.lr, dev, o.loss)
    metrics = {"teacher": teacher_name, "target": o.target, "crop": crop, "images": len(files), "train": len(tr), "held_out": len(va),
               "split": split, "ratio_agreement": round(agreement, 4), "spearman": round(rho, 4),
               "confusion_rows_teacher_cols_student": confusion.tolist(), "ratios": list(mapper.ratios),
               "thresholds": list(mapper.thresholds), **speed, "head_params": sum(p.numel() for p in head.parameters()),
               "image_size": o.image_size, "epochs": o.epochs, "loss": o.loss,
               "stages": head.config["stages"], "row_stride": head.config["row_stride"],
               "agreement_by_folder": _agreement_by_folder(pred, scores[va], mapper, [files[i] for i in va], root),
               "speed_images": len(images), "replaces_teacher_by_default": replaces_teacher(agreement, len(va)), **cnn_metrics}
    (out_dir / "distill.json").write_text(json.dumps(metrics, indent=2))
    (out_dir / "distill.md").write_text(_report(metrics, o.out, str(dev)))
    return metrics


@torch.no_grad()
def _predict(head: RatioHead, inputs: list[torch.Tensor], dev: torch.device) -> torch.Tensor:
    return head.score(*[t.to(dev) for t in inputs]).cpu()


def _split(files: list[Path], root: Path, val_fraction: float, group_of, split_from: str) -> tuple[list[int], list[int], str]:
    """Training and held-out indices (whole sources held out when ``group_of`` names them) and the split's name."""
    val = _grouped_split(files, root, val_fraction, group_of) if group_of else set(stratified_split(files, root, val_fraction))
    split = "random" if group_of is None else f"by source ({split_from})"
    log.info("held-out split: %s", split)
    tr = [i for i, f in enumerate(files) if f not in val]
    va = [i for i, f in enumerate(files) if f in val]
    if not tr or not va:
        raise UserInputError(f"the split left {len(tr)} training and {len(va)} held-out images; add images or change val_fraction")
    return tr, va, split


def _fit_head(o: DistillOptions, files: list[Path], scores: torch.Tensor, mapper, tr: list[int], crop: str, dev: torch.device):
    """The tokenizer, its new ratio head fitted on the training images' trunk statistics, and those inputs."""
    vae = load_vae(o.ckpt).eval().to(dev)
    stage_channels = vae.trunk_channels()
    head = RatioHead(stage_channels, o.hidden, o.conv, mapper.thresholds, mapper.ratios, o.image_size,
                     stages=parse_numbers(o.stages, "--stages"), row_stride=parse_numbers(o.row_stride, "--row-stride"),
                     crop=crop).to(dev)
    inputs = trunk_inputs(vae, head, files, o.image_size, dev, crop=crop)  # [(N, D) statistics, (N, C, h, w) 8x maps]
    fit_regressor(_HeadOnStatistics(head), head.out, [t[tr] for t in inputs], scores[tr], o.epochs, o.batch_size, o.lr, dev, o.loss)
    return vae, head.eval(), inputs


def _spec_ref(spec: EvaluatorSpec) -> str:
    """The teacher as recorded in the head: a config file by its absolute path (the head may be used from
    another folder), a preset by name."""
    return str(Path(spec.path).expanduser().resolve()) if spec.preset == "config" else str(spec)


def _labels(root: Path, teacher: ComplexityEvaluator | None, tokenizer: str, out_dir: Path, image_size: int, crop: str,
            tolerance_db: float, ocr_tolerance: float, dev: torch.device, max_images: int | None, seed: int):
    """``(files, scores (N,), mapper, teacher name)``: the teacher's scores, or the oracle's when ``teacher`` is None."""
    files = list_images(root)
    if max_images and len(files) > max_images:  # a seeded sample, the same for every run with this seed
        files = sorted(random.Random(seed).sample(files, max_images))
    files, bad = partition_readable(files)
    for err in bad:
        log.warning("skipping unreadable image %s", err)
    if teacher is None:
        scored, mapper, name = _oracle_labels(files, root, tokenizer, out_dir, image_size, crop, tolerance_db, ocr_tolerance, dev)
    else:
        results = teacher.score_images(files, cache=default_score_cache(root), progress=True)
        scored, mapper, name = [(Path(r.key), r.score) for r in results if r.score is not None], None, teacher.name
    if len(scored) < 4:
        raise UserInputError(f"need at least 4 scored images to distil, found {len(scored)} under {root}")
    scores = torch.tensor([s for _, s in scored], dtype=torch.float32)
    if teacher is not None:
        mapper = teacher.mapper_for(scores.tolist())  # the teacher's thresholds (calibrated if it has a budget)
    return [f for f, _ in scored], scores, mapper, name


@torch.no_grad()
def _speeds(vae, head: RatioHead, teacher: ComplexityEvaluator | None, images: list, tf, dev: torch.device) -> dict:
    """Student vs teacher images/s in one process on the same decoded images (the teacher without its
    cache; the oracle has no speed: it reconstructs every ratio), and the head's share of an 8x encode."""
    x = torch.stack([tf(im) for im in images]).to(dev)
    student_ips = items_per_second(lambda: vae.predict_scores(torch.stack([tf(im) for im in images]).to(dev)), len(images), warmup=True)
    teacher_ips = (items_per_second(lambda: teacher.score_descriptions(teacher.describer.describe(images)), len(images), warmup=True)
                   if teacher is not None else None)
    enc_s = 1.0 / items_per_second(lambda: vae.encode(x, min(vae.ratios)), len(images), warmup=True)
    taps = vae.trunk(x)
    head_s = 1.0 / items_per_second(lambda: head(taps), len(images), warmup=True)
    return {"student_images_per_s": round(student_ips, 2), "teacher_images_per_s": None if teacher_ips is None else round(teacher_ips, 2),
            "speedup": None if teacher_ips is None else round(student_ips / teacher_ips, 1),
            "head_share_of_8x_encode": round(head_s / enc_s, 5), "head_gflops_per_image": round(flops(lambda: head([t[:1] for t in taps])) / 1e9, 6)}


def _cnn_student(cnn: str, files: list[Path], scores: torch.Tensor, tr: list[int], va: list[int], tf, images: list, mapper,
                 epochs: int, batch_size: int, lr: float, dev: torch.device, loss: str) -> dict:
    """A standalone timm CNN (random init) trained on the same images and labels, measured like the head."""
    all_x = torch.stack([tf(load_rgb(f)) for f in files])  # (N, 3, S, S)
    net = _train_cnn(cnn, all_x[tr], scores[tr], epochs, batch_size, lr, dev, loss)
    with torch.no_grad():
        pred = net(all_x[va].to(dev)).reshape(-1).cpu()
        ips = items_per_second(lambda: net(torch.stack([tf(im) for im in images]).to(dev)), len(images), warmup=True)
        gflops = flops(lambda: net(all_x[:1].to(dev))) / 1e9
    agree, conf, rho = ratio_agreement(pred, scores[va], mapper)
    return {"cnn": cnn, "cnn_ratio_agreement": round(agree, 4), "cnn_spearman": round(rho, 4), "cnn_confusion": conf.tolist(),
            "cnn_gflops_per_image": round(gflops, 4), "cnn_params": sum(p.numel() for p in net.parameters()),
            "cnn_images_per_s": round(ips, 2), "cnn_epochs": epochs}


def _report(m: dict, out: str, dev: str) -> str:
    """``distill.md`` from the metrics."""
    speed = (f"- speed: student {m['student_images_per_s']:.1f} img/s vs teacher {m['teacher_images_per_s']:.2f} img/s ({m['speedup']}x), {dev}"
             if m["teacher_images_per_s"] is not None else
             f"- speed: student {m['student_images_per_s']:.1f} img/s ({dev}); the oracle reconstructs every ratio")
    lines = [f"# Distilled ratio head ({m['teacher']} -> tokenizer trunk)", "",
             f"{m['images']} images ({m['train']} train / {m['held_out']} held out, split {m['split']}) at {m['image_size']}px; "
             f"head {m['head_params']} params.",
             "", f"- ratio agreement on held-out images: {100 * m['ratio_agreement']:.1f}%",
             f"- Spearman correlation of scores: {m['spearman']:+.3f}", speed,
             f"- the head alone costs {100 * m['head_share_of_8x_encode']:.3f}% of an 8x encode", "",
             "Confusion (rows: teacher ratio, columns: student ratio; " + ", ".join(f"{r}x" for r in m["ratios"]) + "):", ""]
    lines += ["    " + " ".join(f"{v:5d}" for v in row) for row in m["confusion_rows_teacher_cols_student"]]
    lines += ["", "Agreement per top-level folder: " + ", ".join(f"{g} {100 * a:.0f}% of {n}" for g, (a, n) in m["agreement_by_folder"].items())]
    lines += ["", f"`--evaluator auto:{out}` uses " + (
        "this head (it meets" if m["replaces_teacher_by_default"] else "the teacher, not this head (it misses") +
        f" the {100 * MIN_AGREEMENT:.0f}% agreement on {MIN_HELD_OUT}+ held-out images that makes it the default)."]
    if "cnn" in m:
        lines += ["", f"Standalone CNN student ({m['cnn']}, random init, same labels): agreement {100 * m['cnn_ratio_agreement']:.1f}%, "
                  f"Spearman {m['cnn_spearman']:+.3f}, {m['cnn_gflops_per_image']:.3f} GFLOPs/image and "
                  f"{m['cnn_params']} params vs the head's {m['head_gflops_per_image']:.6f} GFLOPs on free trunk features; "
                  f"{m['cnn_images_per_s']:.1f} img/s."]
    return "\n".join(lines) + "\n"
