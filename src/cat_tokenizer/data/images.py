"""Finding and safely reading image files.

Every failure to read a file becomes one ``UnreadableImage`` with the path and the reason, so
callers can skip it with a single warning. PIL's decompression-bomb limit stays on, and its
warning (images above ``Image.MAX_IMAGE_PIXELS``) is treated as a refusal too.
"""

from __future__ import annotations

import logging
import warnings
from collections.abc import Iterable
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps

from cat_tokenizer.errors import InputNotFound, UserInputError

__all__ = ["IMAGE_EXTENSIONS", "UnreadableImage", "list_images", "load_rgb", "check_image", "partition_readable"]

log = logging.getLogger(__name__)

IMAGE_EXTENSIONS = frozenset({".jpg", ".jpeg", ".png", ".webp", ".bmp", ".tif", ".tiff", ".gif"})


class UnreadableImage(Exception):
    """A file that is not a readable image; ``str()`` is a one-line reason."""

    def __init__(self, path: str | Path, reason: str):
        super().__init__(f"{path}: {reason}")
        self.path, self.reason = str(path), reason


def list_images(root: str | Path) -> list[Path]:
    """All image files under ``root`` (recursive, by extension), sorted for determinism.

    Raises:
        InputNotFound: ``root`` does not exist or is not a folder (one line, naming it).
        UserInputError: the folder holds no image files.
    """
    root = Path(root).expanduser()
    if not root.is_dir():
        raise InputNotFound(f"image folder not found: {root}")
    entries = list(root.rglob("*"))
    candidates = [p for p in entries if p.suffix.lower() in IMAGE_EXTENSIONS]
    if linked := [p for p in entries if p.is_symlink() and p.is_dir()]:  # rglob does not descend into them
        log.warning("not following %d symlinked folder(s) under %s (loops are possible): %s", len(linked), root,
                    ", ".join(str(p) for p in linked[:3]) + (" ..." if len(linked) > 3 else ""))
    files = sorted(p for p in candidates if p.is_file())
    if dead := sorted(set(candidates) - set(files)):  # broken symlinks, symlink loops, folders named *.png
        sample = ", ".join(str(p) for p in dead[:3]) + (" ..." if len(dead) > 3 else "")
        log.warning("skipped %d image path(s) under %s that are not readable files (broken symlink, symlink loop "
                    "or folder): %s", len(dead), root, sample)
    if not files:
        raise UserInputError(f"no image files ({', '.join(sorted(IMAGE_EXTENSIONS))}) under {root}")
    return files


def _open(path: Path) -> Image.Image:
    with warnings.catch_warnings():
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        try:
            return Image.open(path)
        except (Image.DecompressionBombError, Image.DecompressionBombWarning) as err:
            raise UnreadableImage(path, f"refused, too many pixels (decompression bomb guard): {err}") from None
        except (OSError, SyntaxError, ValueError) as err:
            raise UnreadableImage(path, f"not a readable image ({type(err).__name__}: {err})") from None


def check_image(path: str | Path) -> None:
    """Cheap validity check (header, size limit, and PIL's ``verify``); raises ``UnreadableImage``."""
    path = Path(path)
    with _open(path) as im:
        try:
            im.verify()
        except Exception as err:  # PIL raises many types from verify on corrupt data
            raise UnreadableImage(path, f"corrupt image data ({type(err).__name__}: {err})") from None


def load_rgb(path: str | Path) -> Image.Image:
    """Decode an image fully and return it as 8-bit RGB.

    Grayscale, 16-bit and palette images are converted; transparent ones are composited on white;
    an EXIF orientation (phone photos) is applied, so the image is the way up it is shown.

    Raises:
        UnreadableImage: missing, truncated, corrupt, or over the decompression-bomb limit.
    """
    path = Path(path)
    with _open(path) as im:
        try:
            im.load()
            return _to_rgb(ImageOps.exif_transpose(im))
        except Exception as err:  # truncated files raise OSError; broken codecs raise others
            raise UnreadableImage(path, f"cannot decode ({type(err).__name__}: {err})") from None


def _to_rgb(im: Image.Image) -> Image.Image:
    if im.mode in ("I", "I;16", "I;16B", "I;16L", "F"):
        a = np.asarray(im, dtype=np.float64)
        hi = 65535.0 if im.mode.startswith("I;16") or a.max() > 255 else 255.0
        im = Image.fromarray(np.clip(a / hi * 255.0, 0, 255).astype(np.uint8), "L")
    if im.mode == "P":
        im = im.convert("RGBA" if "transparency" in im.info else "RGB")
    if im.mode in ("RGBA", "LA", "PA"):
        im = im.convert("RGBA")
        background = Image.new("RGBA", im.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, im).convert("RGB")
    return im.convert("RGB")


def partition_readable(paths: Iterable[Path]) -> tuple[list[Path], list[UnreadableImage]]:
    """Split ``paths`` into readable files and the ``UnreadableImage`` reasons for the rest."""
    good, bad = [], []
    for p in paths:
        try:
            check_image(p)
            good.append(p)
        except UnreadableImage as err:
            bad.append(err)
    return good, bad
