"""Pack a training folder into a size budget: native-resolution patches, kinds sharing the bytes.

For training where the data cannot follow (a lent GPU machine takes 64 MiB of working tree and not
``../shared``): every image becomes one patch of at most ``side`` x ``side`` pixels cut at native
resolution from a random place (small images stay whole), so text keeps its pixel size and the crop
policy (``crop: native``) still has room to move. Patches of 256 colours or fewer (icons, charts,
screenshots, grey scans) are stored as lossless palette PNG, others (photos) as JPEG at ``quality``.
Each top-level kind gets an equal share of the bytes; a kind that runs out of images leaves its rest to
the others. Files keep their ``KIND/SOURCE/...`` paths. Deterministic for a seed.
"""

from __future__ import annotations

import io
import logging
import random
from collections import defaultdict
from pathlib import Path

from PIL import Image

from cat_tokenizer.data.dataset import kind_of
from cat_tokenizer.data.images import UnreadableImage, list_images, load_rgb
from cat_tokenizer.errors import UserInputError

__all__ = ["pack_folder", "encode_patch"]

log = logging.getLogger(__name__)


def encode_patch(img: Image.Image, quality: int = 90) -> tuple[bytes, str]:
    """(file bytes, suffix): palette PNG when the patch has at most 256 colours, else JPEG."""
    buf = io.BytesIO()
    if img.getcolors(256) is not None:
        img.quantize(256, method=Image.Quantize.FASTOCTREE, dither=Image.Dither.NONE).save(buf, format="PNG", optimize=True)
        return buf.getvalue(), ".png"
    img.save(buf, format="JPEG", quality=quality)
    return buf.getvalue(), ".jpg"


def _patch(img: Image.Image, side: int, rng: random.Random) -> Image.Image:
    w, h = img.size
    cw, ch = min(w, side), min(h, side)
    x, y = rng.randint(0, w - cw), rng.randint(0, h - ch)
    return img.crop((x, y, x + cw, y + ch))


def pack_folder(src: str | Path, dst: str | Path, max_mib: float = 40.0, side: int = 256, quality: int = 90,
                seed: int = 0) -> dict[str, dict[str, float]]:
    """Write patches of ``src`` under ``dst`` within ``max_mib``; returns per kind {images, mib}."""
    src, dst = Path(src).expanduser(), Path(dst).expanduser()
    if side < 32 or not 1 <= quality <= 95 or max_mib <= 0:
        raise UserInputError(f"pack: need --side >= 32, --quality 1..95, --max-mib > 0 (got {side}, {quality}, {max_mib})")
    if dst.exists() and any(dst.iterdir()):
        raise UserInputError(f"pack: {dst} is not empty; give a new folder")
    by_kind: dict[str, list[Path]] = defaultdict(list)
    for f in list_images(src):
        by_kind[kind_of(f, src)].append(f)
    rng = random.Random(seed)
    for files in by_kind.values():
        rng.shuffle(files)
    budget, spent = max_mib * 2**20, 0
    stats = {k: {"images": 0, "mib": 0.0} for k in sorted(by_kind)}
    queues = dict(sorted(by_kind.items()))  # popped from; by_kind is not used again
    while queues and spent < budget:
        share = (budget - spent) / len(queues)  # what each remaining kind may still spend this round
        for kind in list(queues):
            used = 0
            while queues[kind] and used < share:
                f = queues[kind].pop()
                try:
                    data, suffix = encode_patch(_patch(load_rgb(f), side, rng), quality)
                except UnreadableImage as err:
                    log.warning("skipping %s", err)
                    continue
                if spent + len(data) > budget:
                    queues[kind] = []
                    break
                out = (dst / f.relative_to(src)).with_suffix(suffix)
                out.parent.mkdir(parents=True, exist_ok=True)
                out.write_bytes(data)
                used += len(data)
                spent += len(data)
                stats[kind]["images"] += 1
                stats[kind]["mib"] += len(data) / 2**20
            if not queues[kind]:
                del queues[kind]
    return stats
