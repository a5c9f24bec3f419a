"""Weight-free layout facts that see text and charts at low resolution (a few ms per image).

OCR needs text large enough to read; these only need it to exist. On a grey view with its long side
at ``side`` pixels:

* ``bg_share``: share of pixels within 0.06 of the most common grey level (documents, charts and icons
  sit on a flat background; photos do not).
* ``sat_share``: share of strongly saturated, not-dark pixels (chart series, icon fills).
* ``h_lines`` / ``v_lines``: the number of rows / columns holding a *thin* line over 40% of the width /
  height: a run of pixels that are all lighter (or all darker) by 0.04 than the pixels two rows above
  and below (two columns beside): chart axes and grid lines (also light grids on a grey panel), table
  rules, UI borders; the edges of filled shapes do not count.
* ``glyphs``: ink components of glyph size (3-40 px tall, 1-60 px wide at that scale, up to 600 px in
  area) per 10,000 pixels; ``glyph_rows``: the share of them that sit on a shared baseline with two
  others close beside them (text lines; scattered dots and texture do not line up).
* ``ink_share``: share of pixels that differ from the background by more than 0.2.
* ``h_faint_lines`` / ``v_faint_lines``: as ``h_lines`` / ``v_lines`` with half the contrast (0.02) over 25% of
  the side: light grids on grey panels, the axes of facet panels that each span a fraction of the image.
* ``flat_share``: share of pixels whose 3x3 neighbourhood spans under 0.02 in grey: flat fills (pages,
  charts, icons, UI); photos have noise and shading almost everywhere.
* ``soft_gradients``: share of pixels on a gentle slope (Sobel gradient 0.004-0.04 per pixel): shading and
  texture of photos; rendered graphics are flat or step sharply.
* ``axis_edges``: share of the strong edges' gradient magnitude (over 0.05 per pixel) pointing within 10
  degrees of horizontal or vertical: text strokes, axes, bars, tables and UI boxes; photos' edges run
  every way, icons' curves too.

Ink = pixels whose grey level differs from the background level by more than 0.2. The view keeps small
images at their own size (never upscaled), so flat fills stay flat.
"""

from __future__ import annotations

import numpy as np
from PIL import Image
from scipy import ndimage

__all__ = ["layout_facts", "LAYOUT_FACTS", "LAYOUT_VERSION"]

LAYOUT_VERSION = 3  # part of the probe's fingerprint: changing a fact's definition rescores (3: five facts added)

LAYOUT_FACTS = ("bg_share", "sat_share", "h_lines", "v_lines", "glyphs", "glyph_rows", "ink_share",
                "h_faint_lines", "v_faint_lines", "flat_share", "soft_gradients", "axis_edges")


def _longest_run(mask: np.ndarray) -> np.ndarray:
    """Longest run of True per row of a (H, W) mask: (H,)."""
    padded = np.pad(mask.astype(np.int8), ((0, 0), (1, 1)))
    d = np.diff(padded, axis=1)
    out = np.zeros(mask.shape[0], np.int64)
    rows_s, cols_s = np.nonzero(d == 1)
    _, cols_e = np.nonzero(d == -1)
    if len(rows_s):
        np.maximum.at(out, rows_s, cols_e - cols_s)
    return out


def _thin(grey: np.ndarray, axis: int, contrast: float = 0.04) -> np.ndarray:
    """Pixels lighter (or darker) by ``contrast`` than both pixels two steps away along ``axis``."""
    a, b = grey - np.roll(grey, 2, axis=axis), grey - np.roll(grey, -2, axis=axis)
    return ((a > contrast) & (b > contrast)) | ((a < -contrast) & (b < -contrast))


def _lines(grey: np.ndarray, axis: int, contrast: float, span: float) -> float:
    """Rows (axis 0) or columns (axis 1) holding a thin line of ``contrast`` over ``span`` of the side."""
    thin = _thin(grey, axis, contrast)
    runs = _longest_run(thin if axis == 0 else thin.T)
    return float((runs >= span * grey.shape[1 - axis]).sum())


def layout_facts(img: Image.Image, side: int = 384) -> dict[str, float]:
    """The facts above for one image (see the module docstring)."""
    img = img.convert("RGB")
    scale = side / max(img.size)
    if scale < 1:
        img = img.resize((max(1, round(img.width * scale)), max(1, round(img.height * scale))), Image.Resampling.BILINEAR)
    rgb = np.asarray(img, dtype=np.float32) / 255.0  # (H, W, 3)
    grey = rgb @ np.array([0.299, 0.587, 0.114], np.float32)
    h, w = grey.shape
    hist = np.bincount((grey * 63).astype(np.int64).ravel(), minlength=64)
    bg = (np.argmax(hist) + 0.5) / 63
    bg_share = float((np.abs(grey - bg) < 0.06).mean())
    mx, mn = rgb.max(-1), rgb.min(-1)
    sat = (mx - mn) / np.maximum(mx, 1e-6)
    sat_share = float(((sat > 0.5) & (mx > 0.3)).mean())
    ink = np.abs(grey - bg) > 0.2
    h_lines, v_lines = _lines(grey, 0, 0.04, 0.4), _lines(grey, 1, 0.04, 0.4)
    labels, n = ndimage.label(ink)
    glyphs, glyph_rows = 0.0, 0.0
    if n:
        boxes = ndimage.find_objects(labels)
        areas = np.bincount(labels.ravel(), minlength=n + 1)[1:]
        hh = np.array([b[0].stop - b[0].start for b in boxes])
        ww = np.array([b[1].stop - b[1].start for b in boxes])
        keep = (hh >= 3) & (hh <= 40) & (ww >= 1) & (ww <= 60) & (areas <= 600) & (areas >= 4)
        k = int(keep.sum())
        glyphs = 1e4 * k / (h * w)
        if k >= 3:
            bottom = np.array([b[0].stop for b in boxes])[keep].astype(np.float64)
            left = np.array([b[1].start for b in boxes])[keep].astype(np.float64)
            height = hh[keep].astype(np.float64)
            order = np.argsort(bottom)
            bottom, left, height = bottom[order], left[order], height[order]
            # neighbours on (nearly) the same baseline within a few glyph heights horizontally
            lo = np.searchsorted(bottom, bottom - 2, "left")
            hi = np.searchsorted(bottom, bottom + 2, "right")
            aligned = 0
            for i in range(k):
                near = np.abs(left[lo[i] : hi[i]] - left[i]) <= 4 * height[i] + 4
                aligned += int(near.sum() - 1 >= 2)
            glyph_rows = aligned / k
    return {"bg_share": bg_share, "sat_share": sat_share, "h_lines": h_lines, "v_lines": v_lines,
            "glyphs": float(glyphs), "glyph_rows": float(glyph_rows), "ink_share": float(ink.mean()),
            "h_faint_lines": _lines(grey, 0, 0.02, 0.25), "v_faint_lines": _lines(grey, 1, 0.02, 0.25),
            **_texture_facts(grey)}


def _texture_facts(grey: np.ndarray) -> dict[str, float]:
    """``flat_share``, ``soft_gradients`` and ``axis_edges`` of a (H, W) grey image in [0, 1]."""
    span = ndimage.maximum_filter(grey, 3) - ndimage.minimum_filter(grey, 3)
    gy, gx = ndimage.sobel(grey, 0) / 8, ndimage.sobel(grey, 1) / 8  # grey levels per pixel
    mag = np.hypot(gx, gy)
    strong = mag > 0.05
    angle = np.abs(np.arctan2(gy, gx)) % (np.pi / 2)
    off_axis = np.minimum(angle, np.pi / 2 - angle)  # 0 = horizontal or vertical
    total = float(mag[strong].sum())
    axis = float(mag[strong & (off_axis < np.deg2rad(10))].sum()) / total if total > 0 else 0.0
    return {"flat_share": float((span < 0.02).mean()), "soft_gradients": float(((mag > 0.004) & (mag < 0.04)).mean()),
            "axis_edges": axis}
