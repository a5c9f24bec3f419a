"""The reconstruction commands of ``cat-tokenizer``: tokenizer speed, quality per kind, the rate-distortion trade,
the paper's Section 3.1 analysis, the demo and the data kit.

Each is a typed function (``cat_tokenizer.cli.typed`` builds its options and help from the signature and
docstring), registered under the ``cat_tokenizer.commands`` entry-point group in pyproject.toml."""

from __future__ import annotations

from typing import Literal

import torch

from cat_tasks.reconstruction.analysis import AnalyseOptions, analyse_folder
from cat_tasks.reconstruction.bench import bench_ratio_head, bench_regions, bench_train, bench_vae, total_params
from cat_tasks.reconstruction.curve import curve_table, read_curve, read_demo_report, release_check, release_verdict
from cat_tasks.reconstruction.demo import DemoOptions, run_demo
from cat_tasks.reconstruction.evaluate import EvalReconOptions, evaluate_reconstruction
from cat_tasks.reconstruction.pack import pack_folder
from cat_tasks.reconstruction.rd import RDOptions, run_rd
from cat_tasks.reconstruction.regions import region_decodes, region_decodes_markdown
from cat_tokenizer.devices import resolve_device
from cat_tokenizer.files import write_text_atomic
from cat_tokenizer.io import load_vae
from cat_tokenizer.lit.kind_eval import load_kind_sample
from cat_tokenizer.markdown import md_header, md_row
from cat_tokenizer.options import print_table
from cat_tokenizer.outputs import check_out_file

__all__ = ["bench", "bench_train_cmd", "bench_head", "bench_regions_cmd", "region_decodes_cmd", "eval_recon", "analyse", "rd", "pack", "demo", "curve"]


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
    print_table(rows, ["ratio", "latent", "tokens", "enc_params_M", "dec_params_M", "enc_GFLOPs", "dec_GFLOPs", "img_per_s",
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


def bench_regions_cmd(*, ckpt: str = "cat-small", size: int = 128, batch: int = 8, repeat: int = 3, device: str = "cpu",
                      out: str | None = None) -> int:
    """decode cost of a region latent (refine 0/1/2, the region fill under each merge) against whole-image decodes at each ratio

    Args:
        ckpt: tokenizer: cat-small (shipped), a save_pretrained folder, .ckpt or hub id
        size: image side in pixels
        batch: images per call
        repeat: timed calls per row (the best counts)
        device: cpu, cuda ...
        out: also write the table to this markdown file
    """
    rows = bench_regions(ckpt, size, batch, repeat, device)
    lines = [f"# Region decode cost: {ckpt}, {size}x{size}, batch {batch}, {device}, CPU threads {torch.get_num_threads()}, "
             f"best of {repeat}", "", "`cat-tokenizer bench-regions` (region map: a third of the blocks at each ratio, in "
             "diagonal stripes). Costs are ratios to a 16x decode in the same process; milliseconds move with the machine's load.",
             "", *md_header("call", "tokens", "ms/image", "cost vs a 16x decode")]
    lines += [md_row(r["call"], r["tokens"], f"{r['ms_per_image']:.1f}", f"{r['cost_vs_16x']:.2f}x") for r in rows]
    text = "\n".join(lines) + "\n"
    print(text)
    if out:
        write_text_atomic(out, text)
        print(f"wrote {out}")
    return 0


def eval_recon(data: str, *, options: EvalReconOptions) -> int:
    """PSNR, SSIM, rFID, LPIPS, tokens, OCR confidence per ratio and for CAT

    Args:
        data: image folder
    """
    report = evaluate_reconstruction(data, options)
    print(report.read_text())
    print(f"wrote {report} and {report.with_suffix('.csv')}")
    return 0


def analyse(dir: str, *, options: AnalyseOptions) -> int:
    """Section 3.1: each complexity signal vs each image's max acceptable ratio

    Args:
        dir: image folder (top-level subfolders = content kinds)
        options: the command's options (``AnalyseOptions``)
    """
    print(analyse_folder(dir, options))
    print(f"wrote {options.out}/analysis.md, per_image.csv, scatter.png")
    return 0


def rd(dir: str, *, options: RDOptions) -> int:
    """rate-distortion of CAT vs fixed ratios, JPEG size, random and the oracle: equal tokens and rate control

    Args:
        dir: image folder (top-level subfolders = content kinds in the per-kind table)
        options: the command's options (``RDOptions``)
    """
    report = run_rd(dir, options)
    text = report.read_text()
    print(text[: text.index("## Every budget")] if "## Every budget" in text else text)
    print(f"wrote {report}, {report.with_suffix('.csv')}, {report.with_suffix('.png')}")
    return 0


def region_decodes_cmd(dir: str, *, ckpt: str = "cat-small", per_kind: int = 12, budget: float = 64.0, image_size: int = 128,
                       crop: Literal["native", "resize"] = "native", out: str | None = None, device: str = "auto") -> int:
    """how a region latent's missing cells are best filled: first pass, context passes, the region fill, the bound

    Args:
        dir: image folder (top-level subfolders = content kinds)
        ckpt: the tokenizer (with a region fill to compare it): cat-small, a folder, .ckpt or hub id
        per_kind: images per kind, evenly spaced in path order (0: all)
        budget: tokens per image of each image's oracle map
        image_size: image side in pixels
        crop: crop policy (as in training)
        out: also write the table to this markdown file
        device: auto, cpu, cuda ...
    """
    vae = load_vae(ckpt).to(resolve_device(device)).eval()
    sample = load_kind_sample(dir, per_kind, image_size, crop)
    rows = region_decodes(vae, sample.images, sample.kinds, budget)
    title = (f"{len(sample.kinds)} images of {dir} at {image_size} px, {crop} crops, each image's oracle map at {budget:g} tokens; "
             f"{ckpt}, fingerprint {vae.fingerprint()}")
    text = "\n".join(region_decodes_markdown(rows, sample.kinds, title))
    print(text)
    if out:
        write_text_atomic(out, text)
        print(f"wrote {out}")
    return 0


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
    print_table([{"kind": k, **v} for k, v in stats.items()], ["kind", "images", "mib"], {"mib": "{:.1f}"})
    print(f"wrote {sum(v['images'] for v in stats.values())} patches "
          f"({sum(v['mib'] for v in stats.values()):.1f} MiB) to {dst}")
    return 0 if any(v["images"] for v in stats.values()) else 1


def demo(*, options: DemoOptions) -> int:
    """the shipped tokenizer on a folder of kinds: reconstructions per kind, CAT vs fixed 16x"""
    shipped = read_demo_report(options.compare) if options.compare else None  # a bad path fails before the work
    report = run_demo(options)
    print(report.read_text())
    print(f"report: {report.resolve()}  picture: {report.with_name('reconstructions.png').resolve()}")
    if shipped is None:
        return 0
    below = release_check(read_demo_report(report), shipped)
    print(f"Release check (8x and 16x, every kind, against {options.compare}): {release_verdict(below)}")
    return 1 if below else 0


def curve(run: str, *, ratio: int = 8, every: int = 1000, compare: str | None = None, report: str | None = None) -> int:
    """a training run's per-kind dev curve (kind_eval.csv) as a table; with --compare, the release check

    Args:
        run: a run's log folder (OUT/run/version_0), a tokenizer folder, cat-small, or the CSV itself
        ratio: the ratio shown per kind (the all-kinds columns show every ratio)
        every: rows at batches that are multiples of this (and the last)
        compare: another curve on the same dev sample, e.g. cat-small: its last row beside the run's, and whether
            the run is at least as good at 8x and 16x on every kind (exit 1 if not)
        report: also write the table to this markdown file
    """
    ours = read_curve(run)
    shipped = read_curve(compare) if compare else None
    lines = [f"# Per-kind dev curve of {ours.source}", "", f"PSNR dB on the run's fixed dev sample (KindEvaluator), "
             f"{ratio}x per kind.", "", *curve_table(ours, ratio, every, shipped)]
    below = release_check(ours, shipped) if shipped else []
    if shipped:
        lines += ["", f"Release check at batch {ours.last} (8x and 16x, every kind, against {shipped.source}): "
                  + release_verdict(below)]
    print("\n".join(lines))
    if report:
        write_text_atomic(check_out_file(report, overwrite=True, flag="--report"), "\n".join(lines) + "\n")
    return 1 if below else 0
