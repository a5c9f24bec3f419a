"""The distillation commands of ``cat-tokenizer``: the ratio head on the tokenizer's trunk and the prompt student.

Each is a typed function (``cat_tokenizer.cli.typed`` builds its options and help from the signature and
docstring), registered under the ``cat_tokenizer.commands`` entry-point group in pyproject.toml."""

from __future__ import annotations

from pathlib import Path

from cat_tasks.distill import run_distill, run_distill_text
from cat_tasks.distill.block_head import BlockHeadConfig, run_block_head
from cat_tasks.distill.distortion import DistortionHeadOptions, run_distortion_head
from cat_tasks.distill.ratio_head import DistillOptions
from cat_tasks.distill.text import DistillTextOptions

__all__ = ["distill", "distill_text", "distortion_head", "block_head"]


def distill(*, options: DistillOptions) -> int:
    """train the tokenizer's ratio head on a teacher evaluator; report agreement and speed

    Args:
        options: the command's options (``DistillOptions``)
    """
    run_distill(options)
    out = options.out
    print((Path(out) / "distill.md").read_text())
    print(f"wrote {out}/ (tokenizer with its ratio head), distill.json, distill.md; use it with --evaluator distilled:{out}")
    return 0


def distill_text(*, options: DistillTextOptions) -> int:
    """a text-only student for prompts: frozen text encoder + head, from a teacher"""
    out = options.out
    m = run_distill_text(options)
    print(f"text student ({m['encoder']}) distilled from {m['teacher']} on {m['train']} prompts; held out {m['held_out']}:")
    print(f"- ratio agreement: {100 * m['ratio_agreement']:.1f}%   Spearman: {m['spearman']:+.3f}")
    print(f"- speed: student {m['student_texts_per_s']:.1f} prompts/s vs teacher {m['teacher_texts_per_s']:.2f} prompts/s")
    print(f"wrote {out}/ (student.json, head.safetensors, distill_text.json); use it with --evaluator distilled-text:{out}")
    return 0


def distortion_head(data: str, *, options: DistortionHeadOptions) -> int:
    """train a head on the tokenizer's trunk that predicts each image's PSNR at every ratio

    Args:
        data: training images (KIND/SOURCE/... folders: whole sources are held out)
        options: the command's options (``DistortionHeadOptions``)
    """
    m = run_distortion_head(data, options)
    out = options.out
    print((Path(out) / "distortion.md").read_text())
    print(f"wrote {out} (NestedVAE.from_pretrained('{out}').encode(x, 'auto', target_psnr=...)), distortion.json, distortion.md")
    return 0 if m["held_out"] else 1


def block_head(data: str, *, options: BlockHeadConfig) -> int:
    """train a head on the tokenizer's trunk that predicts each 32-px block's error at every ratio (region maps)

    Args:
        data: training images (KIND/SOURCE/... folders: whole sources are held out)
        options: the command's options (``BlockHeadConfig``)
    """
    m = run_block_head(data, options)
    print((Path(options.out) / "block_head.md").read_text())
    print(f"wrote {options.out} (region_maps(NestedVAE.from_pretrained('{options.out}'), x, 'head', budget={options.budget:g})), "
          "block_head.json, block_head.md")
    return 0 if m["held_out"] else 1
