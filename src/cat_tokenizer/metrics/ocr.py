"""Tesseract OCR through pytesseract: the words it reads and how sure it is (text fidelity, which
rFID does not see: the paper's rebuttal reported OCR confidence on reconstructions)."""

from __future__ import annotations

import os
import re

import numpy as np
from PIL import Image

__all__ = ["ocr_words", "ocr_confidence"]

_WORD = re.compile(r"[A-Za-z0-9]{2,}")


def ocr_words(img: Image.Image, lang: str = "eng") -> list[tuple[str, float, int, int]]:
    """``(text, confidence 0..100, width, height)`` for each word Tesseract reads (2+ letters or digits)."""
    import pytesseract

    os.environ.setdefault("OMP_THREAD_LIMIT", "1")  # Tesseract's own threads only fight over small images
    data = pytesseract.image_to_data(img.convert("RGB"), lang=lang, config="--oem 1 --psm 3", output_type=pytesseract.Output.DICT)
    return [(t, float(c), int(w), int(h)) for t, c, w, h in zip(data["text"], data["conf"], data["width"], data["height"])
            if float(c) >= 0 and _WORD.search(t or "")]


def ocr_confidence(img: Image.Image, lang: str = "eng") -> tuple[float, int]:
    """(mean word confidence, word count) of an image; (0, 0) when no word is read."""
    words = ocr_words(img, lang)
    return (float(np.mean([c for _, c, _, _ in words])), len(words)) if words else (0.0, 0)
