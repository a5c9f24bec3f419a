"""``cat-tokenizer sample``: images from a trained DiT, the ratio set by hand or chosen from the
prompt / class name by the text-only complexity scorer (the paper's generation case: no image
exists yet, so only text can say how many tokens the image will need)."""

from __future__ import annotations

import csv
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from torchvision.utils import make_grid, save_image

from cat_tasks.generation.module import DiTModule
from cat_tokenizer.complexity import ComplexityEvaluator
from cat_tokenizer.errors import UserInputError
from cat_tokenizer.ratios import token_count

__all__ = ["SampleSpec", "class_names", "auto_ratios", "plan_samples", "generate_to_folder", "check_device_fits"]

log = logging.getLogger(__name__)

CPU_PARAM_LIMIT = 200e6  # above this, sampling on a CPU takes hours: refuse unless asked to


@dataclass
class SampleSpec:
    index: int
    ratio: int
    label: int | None = None
    text: str = ""  # the prompt (text models) or the class name


def class_names(classes: Sequence[str]) -> list[str]:
    """Readable names for class folders. ImageNet's 1000 WordNet ids (``n01440764`` ...) map to
    the category names torchvision ships with its weights metadata (no download)."""
    classes = list(classes)
    if len(classes) == 1000 and all(c[:1] == "n" and c[1:].isdigit() for c in classes):
        from torchvision.models import ResNet50_Weights

        return list(ResNet50_Weights.IMAGENET1K_V1.meta["categories"])
    return [c.replace("_", " ") for c in classes]


def auto_ratios(module: DiTModule, texts: Sequence[str], evaluator: str | None = None) -> list[int]:
    """The ratio the text-only complexity scorer assigns to each text, checked against the ratios
    the DiT was trained on."""

    unique = list(dict.fromkeys(texts))
    ev = ComplexityEvaluator.from_config(evaluator, module.image_size or None)
    by_text = {r.key: r for r in ev.score_texts(unique)}
    out = []
    for t in texts:
        r = by_text[t]
        if r.ratio not in module.trained_ratios:
            raise UserInputError(f"the scorer picks {r.ratio}x for {t!r} (score {r.score:.2f}), but this DiT was trained on "
                                 f"{module.trained_ratios} only: pass --ratio {module.trained_ratios[0]}")
        out.append(int(r.ratio))
    for t in unique:
        log.info("ratio auto: %r -> score %.2f -> %dx", t, by_text[t].score, by_text[t].ratio)
    return out


def plan_samples(module: DiTModule, n: int, ratio: str, labels: Sequence[int] | None = None,
                 prompts: Sequence[str] | None = None, evaluator: str | None = None) -> list[SampleSpec]:
    """One spec per sample: labels and prompts cycle over ``n``; ``ratio`` is ``auto`` or a number."""
    if n < 1:
        raise UserInputError(f"--n must be >= 1, got {n}")
    names = class_names(module.classes) if module.classes else []
    text_model = bool(module.hparams.text_encoder)
    if text_model and not prompts:
        raise UserInputError("this DiT is text-conditional: give --prompt")
    if not text_model and module.dit.num_classes > 0:
        if not labels:
            raise UserInputError(f"this DiT is class-conditional: give --class-label (0..{module.dit.num_classes - 1})")
        if bad := [y for y in labels if not 0 <= y < module.dit.num_classes]:
            raise UserInputError(f"class label(s) {bad} out of range: this DiT has classes 0..{module.dit.num_classes - 1}")
    specs = []
    for i in range(n):
        y = labels[i % len(labels)] if labels and not text_model else None
        if prompts:
            text = prompts[i % len(prompts)]
        elif y is not None and y < len(names):
            text = names[y]
        else:
            text = ""
        specs.append(SampleSpec(i, 0, y, text))
    if ratio == "auto":
        if not any(s.text for s in specs):
            raise UserInputError("--ratio auto needs a text to score: a --prompt, or a checkpoint with class names")
        for s, r in zip(specs, auto_ratios(module, [s.text for s in specs], evaluator)):
            s.ratio = r
    else:
        r = int(ratio) if str(ratio).isdigit() else ratio
        if r not in module.dit.ratios:
            raise UserInputError(f"--ratio must be auto or one of {list(module.dit.ratios)}, got {ratio!r}")
        module.scale_of(r)  # a ratio the model never trained on: one clear line
        for s in specs:
            s.ratio = r
    return specs


def check_device_fits(module: DiTModule, device: str, allow_slow: bool) -> None:
    """Refuse a large DiT on a CPU (hours per batch) unless ``allow_slow``."""
    n = module.dit.num_params()
    if torch.device(device).type == "cpu" and n > CPU_PARAM_LIMIT and not allow_slow:
        raise UserInputError(f"this DiT has {n / 1e6:.0f}M parameters: sampling it on a CPU takes hours. "
                             "Use --device cuda, or --allow-slow-cpu to go ahead anyway")


def generate_to_folder(module: DiTModule, specs: list[SampleSpec], out: Path, batch_size: int = 16,
                       guidance: float | None = None, steps: int | None = None, sampler: str | None = None,
                       seed: int = 0, progress: bool = True) -> list[dict]:
    """Sample every spec into ``out/<index>.png``; files already there are kept (a killed run
    resumes). Each batch holds one ratio; a sample's noise depends only on ``seed`` and its index.

    Returns:
        one row per sample: file, index, ratio, tokens (the DiT's: latent cells / patch_size^2), label, text.
    """
    from tqdm import tqdm

    out.mkdir(parents=True, exist_ok=True)
    todo = [s for s in specs if not (out / f"{s.index:06d}.png").is_file()]
    if len(todo) < len(specs):
        log.info("%d of %d samples already in %s; drawing %d", len(specs) - len(todo), len(specs), out, len(todo))
    batches = []
    for r in sorted({s.ratio for s in todo}):
        group = [s for s in todo if s.ratio == r]
        batches += [group[i : i + batch_size] for i in range(0, len(group), batch_size)]
    size = module.image_size
    bar = tqdm(total=len(todo), desc="sampling", unit="img", disable=not progress)
    for group in batches:
        r = group[0].ratio
        labels = torch.tensor([s.label for s in group]) if group[0].label is not None else None
        texts = [s.text for s in group] if module.hparams.text_encoder else None
        z = module.sample_latents(len(group), r, labels, texts, guidance, steps, sampler, seed=seed + group[0].index)
        images = module.decode(z, r).float().add(1).div(2).cpu()  # (B, 3, S, S) in [0, 1]
        for s, img in zip(group, images):
            tmp = out / f".{s.index:06d}.tmp.png"
            save_image(img, tmp)
            tmp.replace(out / f"{s.index:06d}.png")
        bar.update(len(group))
    bar.close()
    return [{"file": f"{s.index:06d}.png", "index": s.index, "ratio": s.ratio, "tokens": token_count(size, size, s.ratio * module.dit.patch_size),
             "label": "" if s.label is None else s.label, "text": s.text} for s in specs]


def write_sample_report(rows: list[dict], out: Path, max_grid: int = 64) -> tuple[Path, Path]:
    """``samples.csv`` (one row per image) and ``grid.png`` (the first ``max_grid`` images)."""
    from PIL import Image
    from torchvision.transforms.functional import pil_to_tensor

    with open(out / "samples.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    imgs = [pil_to_tensor(Image.open(out / r["file"]).convert("RGB")).float() / 255 for r in rows[:max_grid]]
    side = max(i.shape[-1] for i in imgs)
    imgs = [torch.nn.functional.interpolate(i[None], size=(side, side), mode="nearest")[0] for i in imgs]
    save_image(make_grid(imgs, nrow=min(8, len(imgs))), out / "grid.png")
    return out / "samples.csv", out / "grid.png"
