"""``cat-tokenizer distill-text``: a text-only ratio student for prompts (frozen text encoder + linear
head), distilled from a teacher evaluator's prompt scores; the DiT picks a new image's ratio with it."""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import lightning as L
import torch
from torch import nn

from cat_tasks.distill.ratio_head import check_loss, fit_regressor, ratio_agreement
from cat_tokenizer.complexity import ComplexityEvaluator
from cat_tokenizer.complexity.base import text_description
from cat_tokenizer.complexity.spec import EvaluatorSpec
from cat_tokenizer.complexity.text_student import TextEmbedder, TextStudentScorer
from cat_tokenizer.data.default_data import cache_dir
from cat_tokenizer.errors import UserInputError
from cat_tokenizer.lit.cli import silence_known_warnings
from cat_tokenizer.profiling import items_per_second

__all__ = ["DistillTextOptions", "run_distill_text"]


@dataclass(frozen=True)
class DistillTextOptions:
    """The options of ``cat-tokenizer distill-text`` (and of ``run_distill_text``).

    Args:
        prompts: text file, one prompt or class name per line
        out: output folder
        encoder: transformers text encoder: hub id, local folder, or builtin:minilm
        teacher: teacher evaluator, a preset or a YAML (its scorer scores the prompts; default: default, which scores
            prompts by the rubric's keywords)
        epochs: head epochs
        batch_size: head batch size
        lr: head learning rate
        val_fraction: held-out share
        max_length: tokens per prompt the encoder reads
        device: auto, cpu, cuda ...
        seed: random seed
        loss: regression loss on the teacher's prompt scores (mse: on the 12 held-out example prompts it agreed 58.3%
            vs l1's 41.7%)
    """

    prompts: str
    out: str
    encoder: str = "builtin:minilm"
    teacher: EvaluatorSpec | None = None
    epochs: int = 200
    batch_size: int = 64
    lr: float = 1e-2
    val_fraction: float = 0.2
    max_length: int = 128
    device: str = "auto"
    seed: int = 0
    loss: Literal["l1", "mse"] = "mse"


def run_distill_text(o: DistillTextOptions) -> dict:
    """Distil the teacher's prompt scores into a frozen text encoder + linear head; report and save."""
    silence_known_warnings()
    check_loss(o.loss)
    L.seed_everything(o.seed, workers=True)
    prompts = _read_prompts(o.prompts)
    teacher = ComplexityEvaluator.from_config(o.teacher)
    results = teacher.score_texts(prompts, cache=cache_dir() / "scores" / "prompts.sqlite")
    scores = torch.tensor([r.score for r in results], dtype=torch.float32)
    mapper = teacher.mapper_for(scores.tolist())
    held = [int(hashlib.sha1(p.encode()).hexdigest()[:8], 16) / 2**32 < o.val_fraction for p in prompts]
    tr = [i for i, h in enumerate(held) if not h]
    va = [i for i, h in enumerate(held) if h]
    if not tr or len(va) < 2:
        raise UserInputError(f"the split left {len(tr)} training and {len(va)} held-out prompts; add prompts")
    embedder = TextEmbedder(o.encoder, o.max_length, o.device)
    emb = embedder([text_description(p).text for p in prompts])  # (N, D): what the teacher's scorer read
    head = nn.Linear(embedder.dim, 1)
    head = fit_regressor(head, head, [emb[tr]], scores[tr], o.epochs, o.batch_size, o.lr, torch.device("cpu"), o.loss)
    with torch.no_grad():
        pred = head(emb[va]).reshape(-1)
    agreement, confusion, rho = ratio_agreement(pred, scores[va], mapper)
    descs = [text_description(prompts[i]) for i in va]
    student_tps = items_per_second(lambda: head(embedder([d.text for d in descs])), len(descs), warmup=True)
    teacher_tps = items_per_second(lambda: teacher.score_descriptions(descs), len(descs), warmup=True)
    TextStudentScorer.save(o.out, head, o.encoder, embedder.dim, o.max_length, mapper.thresholds, mapper.ratios)
    metrics = {"teacher": teacher.name, "encoder": o.encoder, "loss": o.loss, "prompts": len(prompts), "train": len(tr), "held_out": len(va),
               "ratio_agreement": round(agreement, 4), "spearman": round(rho, 4), "confusion": confusion.tolist(),
               "student_texts_per_s": round(student_tps, 2), "teacher_texts_per_s": round(teacher_tps, 2),
               "held_out_predictions": {prompts[i]: round(float(p), 6) for i, p in zip(va, pred)},
               "held_out_teacher": {prompts[i]: round(float(scores[i]), 6) for i in va}}
    (Path(o.out) / "distill_text.json").write_text(json.dumps(metrics, indent=2))
    return metrics


def _read_prompts(prompts_file: str) -> list[str]:
    """The distinct prompts of a text file, one per line (at least 4)."""
    path = Path(prompts_file).expanduser()
    if not path.is_file():
        raise UserInputError(f"prompts file not found: {prompts_file} (one prompt or class name per line)")
    prompts = list(dict.fromkeys(line.strip() for line in path.read_text().splitlines() if line.strip()))
    if len(prompts) < 4:
        raise UserInputError(f"need at least 4 distinct prompts to distil, found {len(prompts)} in {prompts_file}")
    return prompts
