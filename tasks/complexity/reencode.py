"""Copy a folder's images as JPEG, optionally rescaled, keeping the ``KIND/SOURCE/...`` tree.

A robustness check for evaluators: when every kind of a dataset comes in its own file format (real-v1:
photos are JPEG, graphics 256-colour PNG), a fitted evaluator may learn the format instead of the content,
and source-held-out CV cannot tell. Scoring a re-encoded copy (``cat-tokenizer evaluate-kinds COPY``) can.
"""

from __future__ import annotations

import logging
from pathlib import Path

from PIL import Image
from tqdm import tqdm

from cat_tokenizer.data.images import UnreadableImage, list_images, load_rgb
from cat_tokenizer.errors import UserInputError

__all__ = ["reencode_folder"]

log = logging.getLogger(__name__)


def reencode_folder(src: str | Path, dst: str | Path, quality: int = 75, scale: float = 1.0,
                    progress: bool = True) -> tuple[int, int]:
    """Write every image under ``src`` to the same relative path under ``dst`` as ``.jpg`` at ``quality``,
    resized by ``scale`` (Lanczos). Unreadable files are logged and skipped. Returns (written, skipped)."""
    src, dst = Path(src).expanduser(), Path(dst).expanduser()
    if not 1 <= quality <= 95:
        raise UserInputError(f"--quality must be 1..95 (PIL's JPEG range), got {quality}")
    if not 0 < scale <= 4:
        raise UserInputError(f"--scale must be in (0, 4], got {scale}")
    if dst.resolve() == src.resolve() or src.resolve() in dst.resolve().parents:
        raise UserInputError(f"the copy must go outside the source folder: {dst}")
    written = skipped = 0
    for f in tqdm(list_images(src), desc="re-encode", unit="img", disable=not progress):
        try:
            img = load_rgb(f)
        except UnreadableImage as err:
            log.warning("skipping %s", err)
            skipped += 1
            continue
        if scale != 1:
            img = img.resize((max(1, round(img.width * scale)), max(1, round(img.height * scale))), Image.Resampling.LANCZOS)
        out = dst / f.relative_to(src).with_suffix(".jpg")
        out.parent.mkdir(parents=True, exist_ok=True)
        img.save(out, format="JPEG", quality=quality)
        written += 1
    return written, skipped
