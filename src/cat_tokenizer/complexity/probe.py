"""Perceptual probes: the offline describer (no neural network).

Answers the paper's perceptual questions with classic tools: Tesseract OCR for text (through
pytesseract), scikit-image's bundled LBP frontal-face cascade for faces, and image statistics
for texture and detail (edge density, grey-level entropy, distinct colours, JPEG bits per pixel).
The facts are written as a short structured description that a rubric (rules or an LLM) scores.
"""

from __future__ import annotations

import io
import shutil
import threading
from concurrent.futures import ThreadPoolExecutor

import numpy as np
from PIL import Image

from cat_tokenizer.complexity.base import Describer, Description
from cat_tokenizer.complexity.layout import LAYOUT_VERSION, layout_facts
from cat_tokenizer.errors import UserInputError
from cat_tokenizer.metrics.ocr import ocr_words

__all__ = ["ProbeDescriber", "probe_facts", "jpeg_bits_per_pixel"]

def jpeg_bits_per_pixel(img: Image.Image, quality: int = 75) -> float:
    """Size of the image as a JPEG at ``quality``, in bits per pixel (a classic detail proxy)."""
    buf = io.BytesIO()
    img.convert("RGB").save(buf, format="JPEG", quality=quality)
    return 8.0 * buf.tell() / (img.width * img.height)


def _fit(img: Image.Image, max_side: int) -> Image.Image:
    scale = max_side / max(img.size)
    if scale >= 1:
        return img
    return img.resize((max(1, round(img.width * scale)), max(1, round(img.height * scale))), Image.BICUBIC)


class ProbeDescriber(Describer):
    """OCR + face detection + image statistics -> a structured description.

    Args:
        ocr: run Tesseract (needs the ``tesseract`` binary: ``make install`` adds it on Debian).
        ocr_min_confidence: a word counts as text when Tesseract's confidence is at least this.
        ocr_max_side: downscale larger images to this side before OCR.
        ocr_lang: Tesseract language(s).
        faces: run the LBP face cascade.
        face_max_side: the side images are downscaled to for face detection.
        stats_side: the side images are resized to for edge/entropy/colour/JPEG statistics, so
            they compare across image sizes.
        workers: images probed in parallel threads (Tesseract runs as a subprocess, so threads
            overlap; 0 = one at a time).
        layout: add the weight-free layout facts (``complexity.layout``: background share, thin lines,
            glyph-sized components and how many sit in text rows, saturated share).
        faces_on: ``all`` images, or only ``photo``-like ones (background share under 0.5 and over 256
            colours: the cascade is the slowest fact, and icons, pages and charts have no faces).
    """

    def __init__(
        self,
        ocr: bool = True,
        ocr_min_confidence: float = 60.0,
        ocr_max_side: int = 1600,
        ocr_lang: str = "eng",
        faces: bool = True,
        face_max_side: int = 384,
        stats_side: int = 256,
        workers: int = 2,
        layout: bool = False,
        faces_on: str = "all",
    ):
        super().__init__()
        self.ocr, self.ocr_min_confidence, self.ocr_max_side, self.ocr_lang = ocr, ocr_min_confidence, ocr_max_side, ocr_lang
        self.faces, self.face_max_side, self.stats_side, self.workers = faces, face_max_side, stats_side, workers
        if faces_on not in ("all", "photo"):
            raise UserInputError(f"faces_on must be 'all' or 'photo', got {faces_on!r}")
        self.layout, self.faces_on = layout, faces_on
        self._local = threading.local()  # one face cascade per thread
        if ocr and shutil.which("tesseract") is None:
            raise UserInputError(
                "ProbeDescriber(ocr=True) needs the tesseract binary: run `make install` (Debian: apt-get install "
                "tesseract-ocr tesseract-ocr-eng) or set ocr: false"
            )

    def fingerprint(self) -> dict:
        fp = {"describer": "probe/v1", "ocr": self.ocr, "ocr_min_confidence": self.ocr_min_confidence,
              "ocr_max_side": self.ocr_max_side, "ocr_lang": self.ocr_lang, "faces": self.faces,
              "face_max_side": self.face_max_side, "stats_side": self.stats_side}
        if self.layout or self.faces_on != "all":  # probe/v1 caches stay valid for the v1 settings

            fp.update(describer="probe/v2", layout=self.layout, faces_on=self.faces_on, layout_version=LAYOUT_VERSION)
        return fp

    @property
    def _cascade(self):
        if getattr(self._local, "cascade", None) is None:
            from skimage.data import lbp_frontal_face_cascade_filename
            from skimage.feature import Cascade

            self._local.cascade = Cascade(lbp_frontal_face_cascade_filename())
        return self._local.cascade

    def _one(self, img: Image.Image) -> Description:
        facts = probe_facts(img, self)
        return Description(text=_facts_text(facts), facts=facts)

    def describe(self, images: list[Image.Image]) -> list[Description]:
        if self.workers > 1 and len(images) > 1:
            with ThreadPoolExecutor(min(self.workers, len(images))) as pool:
                return list(pool.map(self._one, images))
        return [self._one(img) for img in images]

    def _ocr(self, img: Image.Image) -> dict[str, float]:

        small = _fit(img, self.ocr_max_side)
        words = [w for w in ocr_words(small, self.ocr_lang) if w[1] >= self.ocr_min_confidence]
        area = sum(w * h for _, _, w, h in words)
        return {"text_words": float(len(words)), "text_confidence": float(np.mean([c for _, c, _, _ in words])) if words else 0.0,
                "text_area": min(1.0, area / (small.width * small.height))}

    def _faces(self, img: Image.Image) -> float:
        from skimage.color import rgb2gray

        small = _fit(img, self.face_max_side)
        side = min(small.size)
        lo = max(24, side // 12)
        found = self._cascade.detect_multi_scale(
            img=rgb2gray(np.asarray(small)), scale_factor=1.2, step_ratio=1, min_size=(lo, lo), max_size=(side, side),
            min_neighbor_number=4,
        )
        return float(len(found))


def probe_facts(img: Image.Image, probe: ProbeDescriber | None = None) -> dict[str, float]:
    """All probe facts for one RGB image (statistics always; OCR and faces as ``probe`` allows)."""
    from skimage.feature import canny
    from skimage.measure import shannon_entropy

    probe = probe or ProbeDescriber(ocr=False, faces=False)
    img = img.convert("RGB")
    stats = img.resize((probe.stats_side, probe.stats_side), Image.BICUBIC)
    grey = np.asarray(stats.convert("L"), dtype=np.float64) / 255.0
    rgb = np.asarray(stats) >> 3  # 5 bits per channel, so noise does not count as colours
    facts = {
        "edge_density": float(canny(grey, sigma=1.0).mean()),
        "entropy": float(shannon_entropy(np.asarray(stats.convert("L")))),
        "colours": float(len(np.unique(rgb.reshape(-1, 3) @ np.array([1024, 32, 1])))),
        "jpeg_bpp": jpeg_bits_per_pixel(stats),
        "width": float(img.width),
        "height": float(img.height),
    }
    if probe.layout:

        facts.update(layout_facts(img))
    facts.update(probe._ocr(img) if probe.ocr else {})
    if probe.faces:
        photo_like = facts.get("bg_share", 0.0) < 0.5 and facts["colours"] > 256
        facts["faces"] = probe._faces(img) if probe.faces_on == "all" or photo_like else 0.0
    return facts


def _facts_text(f: dict[str, float]) -> str:
    parts = []
    if "glyph_rows" in f:
        text_like = f["glyphs"] >= 2 and f["glyph_rows"] >= 0.5
        parts.append(f"Layout: {100 * f['bg_share']:.0f}% flat background; "
                     f"{'rows of small glyphs like printed text' if text_like else 'no rows of text-like glyphs'} "
                     f"({f['glyphs']:.1f} glyph-sized marks per 10k pixels, {100 * f['glyph_rows']:.0f}% in rows); "
                     f"{f['h_lines']:.0f} horizontal and {f['v_lines']:.0f} vertical thin lines (axes, grids, rules); "
                     f"{100 * f['sat_share']:.0f}% saturated colour.")
    if "flat_share" in f:
        parts.append(f"Texture: {100 * f['flat_share']:.0f}% flat fill, {100 * f['soft_gradients']:.0f}% soft shading "
                     f"(photo-like); {100 * f['axis_edges']:.0f}% of strong edges horizontal or vertical.")
    if "text_words" in f:
        if f["text_words"] > 0:
            parts.append(f"Text: yes, {f['text_words']:.0f} legible words covering {100 * f['text_area']:.0f}% of the image "
                         f"(OCR confidence {f['text_confidence']:.0f}).")
        else:
            parts.append("Text: none legible.")
    if "faces" in f:
        parts.append(f"Human faces: {f['faces']:.0f}." if f["faces"] else "Human faces: none.")
    parts.append(f"Edges: {100 * f['edge_density']:.1f}% of pixels. Grey-level entropy: {f['entropy']:.1f} bits. "
                 f"Distinct colours: {f['colours']:.0f}. JPEG size: {f['jpeg_bpp']:.2f} bits per pixel.")
    return " ".join(parts)
