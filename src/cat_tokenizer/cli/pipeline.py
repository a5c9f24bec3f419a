"""The whole CAT pipeline on a folder: score each image, encode it at its assigned ratio, decode,
and compare with fixed 8x / 16x / 32x (``make demo`` runs it on the embedded data).

Writes ``pipeline.md`` (per kind and totals), ``pipeline.csv`` (per image) and
``pipeline.png`` (original | CAT at its ratio | fixed 16x, for a few images of each kind).
"""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np

from cat_tokenizer.complexity import ComplexityEvaluator
from cat_tokenizer.data.datamodule import CATDataModule
from cat_tokenizer.metrics.image import psnr_ssim
from cat_tokenizer.models.nested_vae import NestedVAE
from cat_tokenizer.ratios import token_count

__all__ = ["pipeline_report"]


def pipeline_report(vae: NestedVAE, data: CATDataModule, out_dir: Path, evaluator: ComplexityEvaluator | None = None,
                    per_kind_in_grid: int = 2) -> Path:
    """Score, encode at the assigned ratio, decode; tables against every fixed ratio. Returns pipeline.md."""
    data.setup("predict")
    root, ds = data.data_root(), data.predict_set
    held_out = set(data.val_set.files)
    evaluator = evaluator or ComplexityEvaluator(image_size=data.image_size)
    results = evaluator.score_images(ds.files, cache=out_dir / "scores.sqlite", progress=True)
    rows, grid = [], []
    shown: dict[str, int] = {}
    for i, res in enumerate(results):
        item = ds[i]
        if item is None or res.ratio is None:
            continue
        x = item["image"][None]  # (1, 3, S, S)
        name = ds.files[i].relative_to(root).as_posix()
        kind = name.split("/")[0] if "/" in name else "."
        row = {"image": name, "kind": kind, "split": "held-out" if ds.files[i] in held_out else "train",
               "score": round(res.score, 3), "ratio": res.ratio, "tokens": token_count(*x.shape[-2:], res.ratio)}
        recon = {r: vae.reconstruct(x, r) for r in vae.ratios}
        for r in vae.ratios:
            row[f"psnr_{r}x"], row[f"ssim_{r}x"] = psnr_ssim(recon[r], x)
        row["psnr_cat"], row["ssim_cat"] = row[f"psnr_{res.ratio}x"], row[f"ssim_{res.ratio}x"]
        rows.append(row)
        if shown.get(kind, 0) < per_kind_in_grid:
            shown[kind] = shown.get(kind, 0) + 1
            grid.append((name, res.ratio, row["tokens"], x[0], recon[res.ratio][0], recon[16 if 16 in recon else vae.ratios[0]][0]))
    out_dir.mkdir(parents=True, exist_ok=True)
    with open(out_dir / "pipeline.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    _grid(grid, out_dir / "pipeline.png")
    report = out_dir / "pipeline.md"
    report.write_text(_tables(rows, vae.ratios, evaluator.name, data.image_size))
    return report


def _tables(rows: list[dict], ratios: tuple[int, ...], name: str, size: int) -> str:
    mean = lambda sel, k: float(np.mean([r[k] for r in sel]))  # noqa: E731
    lines = [f"# CAT pipeline on {len(rows)} images at {size}px (evaluator: {name})", "",
             "Per content kind: the ratios the evaluator chose, and reconstruction at those ratios vs fixed 16x.", "",
             "| kind | images | " + " | ".join(f"{r}x" for r in ratios) + " | mean tokens | PSNR CAT | PSNR 16x | SSIM CAT | SSIM 16x |",
             "|---|---|" + "---|" * len(ratios) + "---|---|---|---|---|"]
    for kind in sorted({r["kind"] for r in rows}):
        sel = [r for r in rows if r["kind"] == kind]
        hist = " | ".join(str(sum(r["ratio"] == q for r in sel)) for q in ratios)
        lines.append(f"| {kind} | {len(sel)} | {hist} | {mean(sel, 'tokens'):.0f} | {mean(sel, 'psnr_cat'):.2f} | "
                     f"{mean(sel, 'psnr_16x'):.2f} | {mean(sel, 'ssim_cat'):.3f} | {mean(sel, 'ssim_16x'):.3f} |")
    lines += ["", "Totals, CAT against every fixed ratio (all images; held-out only in brackets):", "",
              "| tokenizer | mean tokens | PSNR (dB) | SSIM |", "|---|---|---|---|"]
    held = [r for r in rows if r["split"] == "held-out"]

    def line(label: str, tokens: float, p: str, s: str) -> str:
        held_p = f" ({mean(held, p):.2f})" if held else ""
        held_s = f" ({mean(held, s):.3f})" if held else ""
        return f"| {label} | {tokens:.0f} | {mean(rows, p):.2f}{held_p} | {mean(rows, s):.3f}{held_s} |"

    lines.append(line("CAT (adaptive)", mean(rows, "tokens"), "psnr_cat", "ssim_cat"))
    for q in ratios:
        lines.append(line(f"fixed {q}x", token_count(size, size, q), f"psnr_{q}x", f"ssim_{q}x"))
    lines += ["", "Per image (PSNR dB / SSIM at the assigned ratio, and at fixed 16x):", "",
              "| image | split | score | ratio | tokens | CAT | fixed 16x |", "|---|---|---|---|---|---|---|"]
    ref = 16 if 16 in ratios else ratios[0]
    for r in rows:
        lines.append(f"| {r['image']} | {r['split']} | {r['score']:.2f} | {r['ratio']}x | {r['tokens']} | "
                     f"{r['psnr_cat']:.2f} / {r['ssim_cat']:.3f} | {r[f'psnr_{ref}x']:.2f} / {r[f'ssim_{ref}x']:.3f} |")
    lines += ["", "Files: pipeline.csv (per image), pipeline.png (original | CAT | fixed 16x), scores.sqlite (score cache)", ""]
    return "\n".join(lines)


def _grid(items: list[tuple], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(len(items), 3, figsize=(6.6, 2.3 * len(items)), squeeze=False)
    to_np = lambda t: ((t.clamp(-1, 1) + 1) / 2).permute(1, 2, 0).cpu().numpy()  # noqa: E731
    for row, (name, ratio, tokens, x, cat, fixed) in zip(axes, items):
        for ax, img, title in zip(row, (x, cat, fixed), (name, f"CAT {ratio}x ({tokens} tokens)", "fixed 16x")):
            ax.imshow(to_np(img))
            ax.set_title(title, fontsize=7)
            ax.axis("off")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
