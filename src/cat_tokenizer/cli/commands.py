"""The core's ``cat-tokenizer`` commands (the tokenizer itself): encode, decode, export, card, palette, variety,
latent-stats, stash, unstash.

Each is a typed function (``cli.typed`` turns it into a subcommand: the signature gives the options and
defaults, the docstring the help), registered like every task's commands under the
``cat_tokenizer.commands`` entry-point group (``cli.registry``). Each calls the library and prints what
it wrote."""

from __future__ import annotations

from pathlib import Path

import torch

from cat_tokenizer.codec import EncodeOptions, decode_files, encode_files, output_names
from cat_tokenizer.data.latent_stats import measure_latent_stats
from cat_tokenizer.data.variety import RECIPES, build_variety_set
from cat_tokenizer.devices import resolve_device
from cat_tokenizer.errors import UserInputError
from cat_tokenizer.files import atomic_write, write_csv
from cat_tokenizer.io import load_vae
from cat_tokenizer.lit.stash import stash_run, unstash_run
from cat_tokenizer.metrics.palette import PaletteTarget, measure_palette, palette_markdown
from cat_tokenizer.models.hub import BUNDLED_TOKENIZERS, CONFIG_NAME, WEIGHTS_NAME, weights_file, write_model_card
from cat_tokenizer.options import parse_numbers, print_table
from cat_tokenizer.outputs import check_out_dir, resolved

__all__ = ["encode", "decode", "variety", "export", "card", "palette", "latent_stats", "stash", "unstash"]


def encode(images: list[str], *, options: EncodeOptions) -> int:
    """images -> latent .safetensors files (ratio and size in the metadata)

    Args:
        images: image files
    """
    written = encode_files(images, options)
    out = options.out
    kept = len(images) - len(written)
    print(f"wrote {len(written)} latent file(s) to {out}" + (f"; {kept} kept or skipped (see the log)" if kept else ""))
    return 0 if written or any((Path(out) / n).exists() for n in output_names(images, ".safetensors")) else 1


def decode(latents: list[str], *, ckpt: str, out: str, device: str = "auto", overwrite: bool = False) -> int:
    """latent files -> PNGs at the original size

    Never writes over a latent's source image.

    Args:
        latents: latent .safetensors files from `encode`
        ckpt: the tokenizer that encoded them
        out: output folder
        device: auto, cpu, cuda ...
        overwrite: rewrite PNGs that exist already (default: keep them)
    """
    written = decode_files(latents, ckpt, out, device=device, overwrite=overwrite)
    kept = len(latents) - len(written)
    print(f"wrote {len(written)} image(s) to {out}" + (f"; kept {kept} existing" if kept else ""))
    return 0


def variety(*, out: str, n: int = 2000, size: int = 128, seed: int = 0) -> int:
    """build a varied image set offline (crops, blurs, pages, charts, text overlays, flat)

    Args:
        out: output folder (resumable: existing images are kept)
        n: number of images
        size: image side in pixels
        seed: random seed
    """
    folder = build_variety_set(out, n, size, seed)
    counts = {r: len(list((folder / r).glob("*.png"))) for r in RECIPES}
    print(f"{sum(counts.values())} images at {size}px in {folder}: " + ", ".join(f"{r} {k}" for r, k in counts.items()))
    return 0


def export(*, ckpt: str, out: str, fp16: bool = False, overwrite: bool = False, region_context: str | None = None) -> int:
    """a tokenizer (.ckpt: its EMA weights) as a from_pretrained folder, optionally fp16

    Args:
        ckpt: lightning .ckpt, save_pretrained folder or hub id
        out: output folder (config.json + diffusion_pytorch_model.safetensors + a model card)
        fp16: store the weights in float16 (loading casts them back)
        overwrite: replace a tokenizer already in the output folder
        region_context: the grids decode_regions' default context pass refills after the region fill: comma-separated
            ratios (cat-small: 32) or none (default: as the source has it)
    """
    target = check_out_dir(out)
    source = Path(ckpt).expanduser()
    if source.exists() and resolved(source if source.is_dir() else source.parent) == resolved(target):
        raise UserInputError(f"--out {out} is the tokenizer being exported (--ckpt {ckpt}); it is never overwritten")
    if not overwrite and (weights_file(target) is not None or (target / CONFIG_NAME).exists()):
        raise UserInputError(f"--out {out} already holds a tokenizer; pass --overwrite to replace it")
    vae = load_vae(ckpt)
    if region_context is not None:
        vae.set_region_context(() if region_context == "none" else parse_numbers(region_context, "--region-context", int))
    folder = vae.save_pretrained(target, dtype=torch.float16 if fp16 else None)
    size = weights_file(folder).stat().st_size / 2**20
    print(f"wrote {folder}/{CONFIG_NAME} and {WEIGHTS_NAME} ({size:.1f} MiB, {'fp16' if fp16 else 'fp32'}); "
          f"load it with NestedVAE.from_pretrained('{folder}')")
    return 0


def card(folder: str, *, measured: str | None = None, notes: str | None = None) -> int:
    """(re)write a tokenizer folder's README.md model card: its facts from config.json, a report, hand-written notes

    Args:
        folder: a save_pretrained tokenizer folder (e.g. src/cat_tokenizer/pretrained/cat-small)
        measured: a markdown report to embed under "Measured" (e.g. docs/reports/demo-dev-128.md from cat-tokenizer demo --report)
        notes: a markdown file of hand-written sections appended after it (recipe, release history, limits)
    """
    target = Path(folder).expanduser()
    if not (target / CONFIG_NAME).is_file():
        raise UserInputError(f"{folder} is not a tokenizer folder ({CONFIG_NAME} missing)")
    texts = {}
    for flag, path in (("--measured", measured), ("--notes", notes)):
        if path is not None and not Path(path).is_file():
            raise UserInputError(f"{flag} {path}: no such file")
        texts[flag] = Path(path).read_text() if path is not None else ""
    written = write_model_card(target, load_vae(str(target)), texts["--measured"], texts["--notes"], overwrite=True)
    print(f"wrote {written}")
    return 0


def palette(*, ckpt: str = "cat-small", out: str | None = None, device: str = "auto") -> int:
    """the palette check: 24 flat colours, whole and as a square on white, at every ratio

    Exits 0 when every image reaches 36 dB with its mean colour within 3 levels, 1 otherwise.

    Args:
        ckpt: tokenizer: cat-small (shipped), a save_pretrained folder, .ckpt or hub id
        out: folder for palette.csv (one row per colour, layout and ratio) and palette.md (default: print only)
        device: auto, cpu, cuda ...
    """

    if out is not None:
        check_out_dir(out)  # a report folder: its two files are rewritten on each run
    dev = resolve_device(device)
    rows = measure_palette(load_vae(ckpt).to(dev).eval(), device=dev)
    report = palette_markdown(rows)
    print(report, end="")
    if out is not None:
        folder = Path(out)
        write_csv(folder / "palette.csv", rows)
        (folder / "palette.md").write_text(f"# Palette check of {ckpt}\n\n`cat-tokenizer palette --ckpt {ckpt}`\n\n{report}")
        print(f"wrote {folder / 'palette.csv'} and {folder / 'palette.md'}")
    return 0 if PaletteTarget().passes(rows) else 1


def latent_stats(folder: str, *, ckpt: str = "cat-small", image_size: int = 128, limit: int = 2000, write: bool = False,
                 device: str = "auto") -> int:
    """measure each ratio's latent scale and shift on a folder (and store them with the tokenizer)

    Args:
        folder: images to measure on (recursive), e.g. the training set
        ckpt: tokenizer: cat-small (shipped), a save_pretrained folder, .ckpt or hub id
        image_size: images are resized and centre-cropped to this side
        limit: a seeded sample of at most this many images (0: all)
        write: store the statistics in the tokenizer folder's config.json (a folder path, not a name or .ckpt)
        device: auto, cpu, cuda ...
    """

    target = Path(ckpt).expanduser()
    if write and not (target / CONFIG_NAME).is_file():
        where = ("pass the folder path to write into the shipped copy" if ckpt in BUNDLED_TOKENIZERS
                 else "export a .ckpt first (cat-tokenizer export)" if target.suffix == ".ckpt" else "it has no config.json")
        raise UserInputError(f"--write stores the statistics in a tokenizer folder; {ckpt} is not one: {where}")
    dev = resolve_device(device)
    vae = load_vae(ckpt).to(dev).eval()
    stats = measure_latent_stats(vae, folder, image_size, limit or None, device=dev)
    rows = [{"ratio": f"{r}x", **s} for r, s in stats["ratios"].items()]
    print_table(rows, ["ratio", "scaling_factor", "shift_factor", "std", "latents"],
                {"scaling_factor": "{:.4f}", "shift_factor": "{:+.4f}", "std": "{:.4f}"})
    print(f"measured on {stats['measured_on']}")
    if write:
        with atomic_write(target / CONFIG_NAME) as tmp:
            tmp.write_text(vae.set_latent_stats(stats).to_json_string())
        print(f"wrote latent_stats into {target / CONFIG_NAME}")
    return 0


def stash(run: str, *, out: str) -> int:
    """a training run's last.ckpt as a commit-sized stash (run folders may not outlive the machine)

    Weights in float16, Adam's second moments in bfloat16, first moments dropped (about 40% of the
    checkpoint); `cat-tokenizer unstash` (or `make train-small STASH=...`) resumes from it.

    Args:
        run: the run folder (RUN/checkpoints/last.ckpt, RUN/kind_eval.csv), e.g. outputs/train_small/run/version_0
        out: the stash folder (resume.pt + kind_eval.csv), rewritten
    """
    written = stash_run(run, out)
    print(f"wrote {written} ({written.stat().st_size / 2**20:.1f} MiB)")
    return 0


def unstash(stash: str, *, run: str) -> int:
    """a stash back to RUN/checkpoints/last.ckpt, to resume with --ckpt_path

    Args:
        stash: a folder written by `cat-tokenizer stash`
        run: the run folder to restore into (refused when it holds a last.ckpt already)
    """
    written = unstash_run(stash, run)
    print(f"wrote {written}; resume with --ckpt_path {written}")
    return 0
