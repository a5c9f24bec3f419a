"""The palette check: does a tokenizer return flat colours exactly?

A latent of 256 tokens should carry one colour exactly, and CAT's premise (simple content is cheap)
needs it. The check encodes 24 uniform colours (saturated, pastel, dark and mid, greys) as whole
images at 128 px and at a non-square size that needs padding, and as a 64 px square on white, at
every ratio, and reports per image the PSNR (torchmetrics) and how far the mean colour of the
coloured area moved, in 8-bit levels per channel. For a square it also says where the error lies: the
share of the squared error within ``EDGE_PX`` of the square's border (6% of the pixels) and the PSNR
the image would reach with those pixels exact, which tells a blurred edge from a wrong colour.

Targets (issue 24): every colour at every ratio >= 36 dB, mean colour within 3 levels.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor
from torchmetrics.functional.image import peak_signal_noise_ratio

from cat_tokenizer.markdown import md_records

__all__ = ["PALETTE", "LAYOUTS", "PaletteTarget", "measure_palette", "summarise_palette", "palette_markdown"]

PALETTE: dict[str, tuple[int, int, int]] = {
    # saturated
    "red": (220, 30, 30), "green": (30, 170, 60), "blue": (40, 60, 220), "yellow": (240, 210, 40),
    "cyan": (30, 200, 220), "magenta": (200, 40, 180), "orange": (245, 130, 20), "purple": (110, 50, 160),
    # pastel
    "pink": (250, 200, 210), "mint": (190, 240, 210), "sky": (180, 210, 250), "lemon": (250, 245, 180),
    "lavender": (220, 200, 245), "peach": (250, 215, 180),
    # dark and mid
    "navy": (20, 30, 80), "forest": (20, 70, 40), "maroon": (90, 20, 30), "brown": (100, 60, 30),
    "olive": (180, 200, 100),
    # greys
    "white": (255, 255, 255), "light grey": (200, 200, 200), "mid grey": (128, 128, 128),
    "dark grey": (60, 60, 60), "black": (0, 0, 0),
}

# layout -> (height, width); "square" is a 64 px square of the colour on white at 128 px.
LAYOUTS: dict[str, tuple[int, int]] = {"whole": (128, 128), "whole 96x176": (96, 176), "square": (128, 128)}
PSNR_CAP = 100.0  # an exact reconstruction (MSE 0) reads as this
SQUARE = slice(32, 96)  # the square's rows and columns (cell-aligned at every ratio)
EDGE_PX = 2  # the edge band: pixels with another colour within this many px (2 rows of pixels on each side of a border)


@dataclass(frozen=True)
class PaletteTarget:
    """What a tokenizer must reach on every colour, layout and ratio."""

    min_db: float = 36.0
    max_levels: float = 3.0

    def passes(self, rows: Sequence[dict]) -> bool:
        return all(r["psnr"] >= self.min_db and r["levels"] <= self.max_levels for r in rows)


def _images(layout: str) -> tuple[Tensor, Tensor]:
    """(24, 3, H, W) images in [-1, 1] and the (H, W) bool mask of the coloured area."""
    h, w = LAYOUTS[layout]
    rgb = torch.tensor(list(PALETTE.values()), dtype=torch.float32) / 127.5 - 1  # (24, 3)
    mask = torch.ones(h, w, dtype=torch.bool)
    if layout == "square":
        x = torch.ones(len(rgb), 3, h, w)  # white
        x[:, :, SQUARE, SQUARE] = rgb[:, :, None, None]
        mask = torch.zeros(h, w, dtype=torch.bool)
        mask[40:88, 40:88] = True  # the square's inside, 8 px from its edges
        return x, mask
    return rgb[:, :, None, None].expand(-1, -1, h, w).contiguous(), mask


def _edge_band(x: Tensor) -> Tensor:
    """(N, H, W) bool: the pixels of (N, 3, H, W) images with another colour within ``EDGE_PX`` (none in a
    whole image of one colour)."""
    k = 2 * EDGE_PX + 1
    hi, lo = F.max_pool2d(x, k, 1, EDGE_PX), -F.max_pool2d(-x, k, 1, EDGE_PX)  # neighbourhood max and min
    return (hi > lo).any(1)


@torch.no_grad()
def measure_palette(vae, ratios: Sequence[int] | None = None, layouts: Sequence[str] = tuple(LAYOUTS),
                    device: torch.device | str = "cpu") -> list[dict]:
    """One row per colour, layout and ratio: ``colour, layout, ratio, psnr, levels, r, g, b, edge_share,
    psnr_off_edge`` where ``levels`` is the largest per-channel shift of the coloured area's mean colour
    (8-bit levels), ``r, g, b`` that mean as reconstructed, ``edge_share`` the share of the squared error
    within ``EDGE_PX`` of a colour edge (0 for a whole image) and ``psnr_off_edge`` the PSNR with those
    pixels exact."""
    rows = []
    want = torch.tensor(list(PALETTE.values()), dtype=torch.float32)
    for layout in layouts:
        x, mask = _images(layout)
        x = x.to(device)
        edge = _edge_band(x)  # (24, H, W)
        for ratio in ratios or vae.ratios:
            y = vae.reconstruct(x, ratio).float()  # (24, 3, H, W) in [-1, 1], clamped
            mean = ((y[:, :, mask] + 1) * 127.5).mean(-1).cpu()  # (24, 3) in levels
            se = (y - x).pow(2).sum(1)  # (24, H, W)
            on_edge, total = (se * edge).sum((1, 2)).cpu(), se.sum((1, 2)).cpu()  # (24,) each
            y_off_edge = torch.where(edge[:, None], x, y)  # the edge band exact
            for i, name in enumerate(PALETTE):
                r, g, b = (round(float(v)) for v in mean[i])
                rows.append(dict(colour=name, layout=layout, ratio=int(ratio), psnr=_psnr(y[i], x[i]),
                                 levels=float((mean[i] - want[i]).abs().max()), r=r, g=g, b=b,
                                 edge_share=float(on_edge[i] / total[i]) if total[i] > 0 else 0.0,
                                 psnr_off_edge=_psnr(y_off_edge[i], x[i])))
    return rows


def _psnr(y: Tensor, x: Tensor) -> float:
    """PSNR (torchmetrics) of images in [-1, 1], capped as ``PSNR_CAP``."""
    return min(float(peak_signal_noise_ratio((y + 1) / 2, (x + 1) / 2, data_range=1.0)), PSNR_CAP)


def summarise_palette(rows: Sequence[dict]) -> list[dict]:
    """Per layout and ratio: min and mean PSNR, the worst colour, and the largest colour shift."""
    out = []
    for layout in dict.fromkeys(r["layout"] for r in rows):
        for ratio in sorted({r["ratio"] for r in rows if r["layout"] == layout}):
            sel = [r for r in rows if r["layout"] == layout and r["ratio"] == ratio]
            worst = min(sel, key=lambda r: r["psnr"])
            out.append(dict(layout=layout, ratio=ratio, min_psnr=worst["psnr"],
                            mean_psnr=sum(r["psnr"] for r in sel) / len(sel), worst=worst["colour"],
                            max_levels=max(r["levels"] for r in sel)))
    return out


def palette_markdown(rows: Sequence[dict], target: PaletteTarget = PaletteTarget()) -> str:
    """The summary table and the per-colour table at the largest ratio, as Markdown."""

    summary = summarise_palette(rows)
    top = max(r["ratio"] for r in rows)
    verdict = "passes" if target.passes(rows) else "fails"
    lines = [f"Palette check: {len(PALETTE)} colours x {len({r['layout'] for r in rows})} layouts x "
             f"{len({r['ratio'] for r in rows})} ratios; {verdict} the target (every image >= {target.min_db:g} dB, "
             f"mean colour within {target.max_levels:g} levels).", ""]
    lines += md_records(summary, ["layout", "ratio", "min_psnr", "mean_psnr", "worst", "max_levels"],
                        formats={"min_psnr": "{:.1f}", "mean_psnr": "{:.1f}", "max_levels": "{:.1f}"})
    lines += ["", f"Whole images at {top}x, per colour (reconstructed mean colour):", ""]
    whole = [dict(r, want="({}, {}, {})".format(*PALETTE[r["colour"]]), got=f"({r['r']}, {r['g']}, {r['b']})")
             for r in rows if r["layout"] == "whole" and r["ratio"] == top]
    lines += md_records(whole, ["colour", "want", "got", "psnr", "levels"], formats={"psnr": "{:.1f}", "levels": "{:.1f}"})
    squares = _edges(rows)
    if squares:
        band = float(_edge_band(_images("square")[0][:1]).float().mean())
        lines += ["", f"Squares on white, where the error lies: the share of the squared error within {EDGE_PX} px of the "
                  f"square's border ({band:.0%} of the pixels; mean over colours), and the worst PSNR with those pixels "
                  "exact: a blurred edge alone would score high there, a wrong colour does not.", ""]
        lines += md_records(squares, ["ratio", "min_psnr", "edge_share", "min_psnr_off_edge"],
                            formats={"min_psnr": "{:.1f}", "edge_share": "{:.0%}", "min_psnr_off_edge": "{:.1f}"})
    return "\n".join(lines) + "\n"


def _edges(rows: Sequence[dict]) -> list[dict]:
    """Per ratio, for the square layout: min PSNR, mean edge share, min PSNR with the edge band exact."""
    out = []
    for ratio in sorted({r["ratio"] for r in rows if r["layout"] == "square"}):
        sel = [r for r in rows if r["layout"] == "square" and r["ratio"] == ratio]
        out.append(dict(ratio=ratio, min_psnr=min(r["psnr"] for r in sel),
                        edge_share=sum(r["edge_share"] for r in sel) / len(sel),
                        min_psnr_off_edge=min(r["psnr_off_edge"] for r in sel)))
    return out
