"""``cat-tokenizer demo`` (``make demo``): the shipped tokenizer on real images, per content kind.

Takes a fixed sample of a folder whose top-level subfolders are content kinds (``make demo`` uses
real-v1 ``dev/`` when it is there, else the embedded 45 images), reconstructs every image at 8x, 16x
and 32x with the shipped ``cat-small`` weights (or ``--ckpt``), then runs the CAT pipeline on the same
images: score each one with the complexity evaluator, take its reconstruction at the assigned ratio,
and compare with fixed 16x.

Writes into ``--out``: ``reconstructions.png`` (original | 8x | 16x | 32x, a few images of each kind),
``report.md`` (the per-kind tables), ``metrics.csv`` (per image: kind, score, assigned ratio, PSNR and
SSIM at every ratio) and ``scores.sqlite`` (the evaluator's cache).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from cat_tokenizer.complexity import ComplexityEvaluator, EvaluatorSpec
from cat_tokenizer.data.default_data import ensure_default_data
from cat_tokenizer.devices import resolve_device
from cat_tokenizer.files import write_csv, write_text_atomic
from cat_tokenizer.io import load_vae
from cat_tokenizer.lit.kind_eval import KindSample, load_kind_sample, psnr_per_kind
from cat_tokenizer.markdown import md_header
from cat_tokenizer.models.nested_vae import NestedVAE
from cat_tokenizer.ratios import token_count

__all__ = ["DemoOptions", "run_demo"]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class DemoOptions:
    """The options of ``cat-tokenizer demo`` (and of ``run_demo``).

    Args:
        data: folder whose top-level subfolders are content kinds (default: the embedded 45 images)
        ckpt: tokenizer: cat-small (shipped), a save_pretrained folder, .ckpt or hub id
        out: output folder
        image_size: image side in pixels
        per_kind: images per kind in the tables (0: all)
        show: images per kind in reconstructions.png
        evaluator: evaluator for the CAT rows: a preset (default, rubric, distilled:D ...) or a YAML (default: default)
        report: also write report.md here (for docs/reports/: the tables only, no images of the data)
        device: auto, cpu, cuda ...
        compare: a demo report to check against (the shipped one: docs/reports/demo-dev-128.md): exit 1 unless at least
            as good at 8x and 16x on every kind, the release rule (docs/training.md)
    """

    data: str | None = None
    ckpt: str = "cat-small"
    out: str = "outputs/demo"
    image_size: int = 128
    per_kind: int = 24
    show: int = 3
    evaluator: EvaluatorSpec | None = None
    report: str | None = None
    device: str = "auto"
    compare: str | None = None


def run_demo(o: DemoOptions = DemoOptions()) -> Path:
    """Reconstruct a per-kind sample at every ratio and with CAT; returns report.md."""
    out_dir = Path(o.out)
    root = Path(o.data).expanduser() if o.data else ensure_default_data()
    vae = load_vae(o.ckpt).to(resolve_device(o.device)).eval()
    sample = load_kind_sample(root, o.per_kind, o.image_size, crop="native")
    rows = psnr_per_kind(vae, sample)
    evaluator = ComplexityEvaluator.from_config(o.evaluator, o.image_size)
    scored = {r.key: r for r in evaluator.score_images([root / p for p in sample.paths], cache=out_dir / "scores.sqlite")}
    per_image = _per_image(rows, scored, root, vae.ratios, o.image_size)
    out_dir.mkdir(parents=True, exist_ok=True)
    write_csv(out_dir / "metrics.csv", per_image)
    _picture(vae, sample, o.show, out_dir / "reconstructions.png")
    report = out_dir / "report.md"
    text = _report(per_image, vae, o.ckpt, root, o.image_size, evaluator.name)
    report.write_text(text)
    if o.report:
        write_text_atomic(o.report, text)
    return report


def _per_image(rows: list[dict], scored: dict, root: Path, ratios: tuple[int, ...], size: int) -> list[dict]:
    by_path: dict[str, dict] = {}
    for r in rows:
        d = by_path.setdefault(r["path"], {"image": r["path"], "kind": r["kind"]})
        d[f"psnr_{r['ratio']}x"], d[f"ssim_{r['ratio']}x"] = round(r["psnr"], 3), round(r["ssim"], 4)
    out = []
    for path, d in by_path.items():
        res = scored.get(str(root / path))
        ratio = res.ratio if res is not None and res.ratio else None
        d["score"] = round(res.score, 3) if ratio else ""
        d["cat_ratio"] = ratio or ""
        d["cat_tokens"] = token_count(size, size, ratio) if ratio else ""
        d["psnr_cat"] = d[f"psnr_{ratio}x"] if ratio else ""
        out.append(d)
    return out


def _report(rows: list[dict], vae: NestedVAE, ckpt: str, root: Path, size: int, evaluator: str) -> str:
    ratios = vae.ratios
    mean = lambda sel, k: float(np.mean([r[k] for r in sel]))  # noqa: E731
    kinds = sorted({r["kind"] for r in rows})
    tok, extra = vae.num_params(with_head=False) / 1e6, (vae.num_params() - vae.num_params(with_head=False)) / 1e6
    params = f"{tok:.2f}M params" + (f"; {extra:.2f}M more in its heads and region fill" if extra else "")
    lines = [f"# cat-tokenizer demo: {ckpt} ({params}) on {len(rows)} images of {root}", "",
             f"{size}x{size} crops at native resolution (images smaller than {size} px resized whole), posterior mean.", "",
             "## Reconstruction per kind (PSNR dB / SSIM)", "",
             *md_header("kind", "images", *(f"{r}x ({token_count(size, size, r)} tokens)" for r in ratios))]
    for kind in [*kinds, "all"]:
        sel = rows if kind == "all" else [r for r in rows if r["kind"] == kind]
        cells = [f"{mean(sel, f'psnr_{r}x'):.2f} / {mean(sel, f'ssim_{r}x'):.3f}" for r in ratios]
        lines.append(f"| {kind} | {len(sel)} | " + " | ".join(cells) + " |")
    scored = [r for r in rows if r["cat_ratio"]]
    ref = 16 if 16 in ratios else ratios[0]
    lines += ["", f"## CAT: each image at the ratio the evaluator assigns ({evaluator})", "",
              *md_header("kind", "images", *(f"{r}x" for r in ratios), "mean tokens", "PSNR CAT", f"PSNR fixed {ref}x")]
    for kind in [*kinds, "all"]:
        sel = scored if kind == "all" else [r for r in scored if r["kind"] == kind]
        if not sel:
            continue
        hist = " | ".join(str(sum(r["cat_ratio"] == q for r in sel)) for q in ratios)
        lines.append(f"| {kind} | {len(sel)} | {hist} | {mean(sel, 'cat_tokens'):.0f} | {mean(sel, 'psnr_cat'):.2f} | "
                     f"{mean(sel, f'psnr_{ref}x'):.2f} |")
    lines += ["", f"Fixed {ref}x spends {token_count(size, size, ref)} tokens per image.",
              "Files: reconstructions.png (original | " + " | ".join(f"{r}x" for r in ratios) + "), metrics.csv (per image), "
              "scores.sqlite (the evaluator's cache).", ""]
    return "\n".join(lines)


@torch.no_grad()
def _picture(vae: NestedVAE, sample: KindSample, show: int, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    picks = []
    for kind in sorted(set(sample.kinds)):
        idx = [i for i, k in enumerate(sample.kinds) if k == kind]
        picks += [idx[int(j)] for j in np.linspace(0, len(idx) - 1, min(show, len(idx)))]
    picks = list(dict.fromkeys(picks))
    dev = next(vae.parameters()).device
    x = sample.images[picks].to(dev)  # (n, 3, S, S)
    recon = {r: vae.reconstruct(x, r).float().cpu() for r in vae.ratios}
    cols = 1 + len(vae.ratios)
    fig, axes = plt.subplots(len(picks), cols, figsize=(1.9 * cols, 1.95 * len(picks)), squeeze=False)
    to_np = lambda t: ((t.clamp(-1, 1) + 1) / 2).permute(1, 2, 0).numpy()  # noqa: E731
    for row, i in enumerate(picks):
        images = [x[row].cpu(), *(recon[r][row] for r in vae.ratios)]
        titles = [sample.kinds[i], *(f"{r}x" for r in vae.ratios)]
        for col, (img, title) in enumerate(zip(images, titles)):
            ax = axes[row][col]
            ax.imshow(to_np(img), interpolation="nearest")
            if row == 0 or col == 0:
                ax.set_title(title, fontsize=8)
            ax.axis("off")
    fig.tight_layout(pad=0.3)
    fig.savefig(path, dpi=90)
    plt.close(fig)
