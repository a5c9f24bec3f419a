"""A larger, varied image set built offline: the labelled pool a distilled predictor needs.

The 45 embedded images are too few to train or judge a ratio predictor, and no large dataset
ships in a package. This builds N square images at ``size`` from the embedded sources (real
photos, textures, scans, rendered documents and charts, plus extra renders) by recipes that
span the complexity range the teacher scores:

    photo     random crop (20-100% of the short side) of a photo or texture, resized
    blurred   the same, Gaussian-blurred: detail removed, content kept
    document  random crop of a rendered page or a real scan: legible when zoomed in, not when whole
    chart     random crop of a rendered chart
    overlay   a photo crop with one to three lines of text drawn on it (sometimes on a banner)
    flat      solid or gradient background, a few shapes, sometimes a little grain

Each image depends only on (seed, index), is written atomically as ``<out>/<recipe>/<index>.png``,
and an existing file is kept, so a killed build resumes where it stopped and two builds with the
same arguments are byte-identical; a larger ``n`` later adds images and keeps the first ones.
``<out>/variety.json`` records the arguments (another size or seed in the same folder is refused).
``<out>/sources.csv`` names each image's source (``photo-3``: the fourth photo/texture, shared by
its photo, blurred and overlay crops; ``flat-<index>``: drawn from nothing), so ``distill`` can hold
out whole sources: a crop of a photo the student trained on is not a new image.
"""

from __future__ import annotations

import json
import logging
import os
import random
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFilter, ImageFont

from cat_tokenizer.data.default_data import _WORDS, _render_chart, _render_document, ensure_default_data
from cat_tokenizer.errors import UserInputError

__all__ = ["RECIPES", "SOURCES_FILE", "build_variety_set"]

log = logging.getLogger(__name__)

RECIPES = {"photo": 0.3, "blurred": 0.15, "document": 0.15, "chart": 0.1, "overlay": 0.15, "flat": 0.15}
SOURCES_FILE = "sources.csv"
_KIND = {"photo": "photo", "blurred": "photo", "overlay": "photo", "document": "document", "chart": "chart"}


def _sources(root: Path, extra_renders: int) -> dict[str, list[Image.Image]]:
    """Source images by role (loaded once; the extra renders are deterministic)."""
    def load(kind: str) -> list[Image.Image]:
        return [Image.open(p).convert("RGB") for p in sorted((root / kind).glob("*.png"))]

    text = load("text") + [_render_document(random.Random(f"variety-doc-{i}")) for i in range(extra_renders)]
    chart = load("chart") + [_render_chart(random.Random(f"variety-chart-{i}")) for i in range(extra_renders)]
    return {"photo": load("photo") + load("texture"), "document": text, "chart": chart}


def _crop(rng: random.Random, img: Image.Image, size: int, lo: float, flip: bool = True) -> Image.Image:
    side = max(8, int(min(img.size) * rng.uniform(lo, 1.0)))
    x0, y0 = rng.randrange(img.width - side + 1), rng.randrange(img.height - side + 1)
    out = img.crop((x0, y0, x0 + side, y0 + side)).resize((size, size), Image.BICUBIC)
    return out.transpose(Image.FLIP_LEFT_RIGHT) if flip and rng.random() < 0.5 else out  # mirrored text is not text


def _font(px: int) -> ImageFont.FreeTypeFont:
    import matplotlib

    return ImageFont.truetype(str(Path(matplotlib.get_data_path()) / "fonts/ttf/DejaVuSans.ttf"), px)


def _colour(rng: random.Random) -> tuple[int, int, int]:
    return tuple(rng.randrange(256) for _ in range(3))  # type: ignore[return-value]


def _overlay(rng: random.Random, img: Image.Image, size: int) -> Image.Image:
    draw = ImageDraw.Draw(img)
    px = rng.randint(max(7, size // 16), max(8, size // 6))
    font, y = _font(px), rng.randrange(0, max(1, size // 2))
    ink = (0, 0, 0) if rng.random() < 0.5 else (255, 255, 255)
    for _ in range(rng.randint(1, 3)):
        line = " ".join(rng.choice(_WORDS) for _ in range(rng.randint(1, 4)))
        if rng.random() < 0.5:  # a banner behind the text
            box = draw.textbbox((4, y), line, font=font)
            draw.rectangle((0, box[1] - 2, size, box[3] + 2), fill=tuple(255 - c for c in ink))
        draw.text((4, y), line, fill=ink, font=font)
        y += int(px * 1.3)
    return img


def _flat(rng: random.Random, size: int) -> Image.Image:
    if rng.random() < 0.5:
        img = Image.new("RGB", (size, size), _colour(rng))
    else:
        a, b = np.array(_colour(rng), float), np.array(_colour(rng), float)
        t = np.linspace(0, 1, size)[:, None, None]
        img = Image.fromarray(np.broadcast_to((a * (1 - t) + b * t).astype(np.uint8), (size, size, 3)).copy())
    draw = ImageDraw.Draw(img)
    for _ in range(rng.randrange(0, 6)):
        x0, y0 = rng.randrange(size), rng.randrange(size)
        w, h = rng.randrange(size // 8, size // 2), rng.randrange(size // 8, size // 2)
        rng.choice([draw.ellipse, draw.rectangle])([x0 - w // 2, y0 - h // 2, x0 + w // 2, y0 + h // 2], fill=_colour(rng))
    if rng.random() < 0.3:  # sensor-like grain
        noise = np.random.default_rng(rng.randrange(2**31)).normal(0, rng.uniform(2, 10), (size, size, 3))
        img = Image.fromarray(np.clip(np.asarray(img, float) + noise, 0, 255).astype(np.uint8))
    return img


def _make(rng: random.Random, recipe: str, sources: dict[str, list[Image.Image]], size: int) -> Image.Image:
    if recipe == "flat":
        return _flat(rng, size)
    if recipe == "document":
        return _crop(rng, rng.choice(sources["document"]), size, 0.2, flip=False)
    if recipe == "chart":
        return _crop(rng, rng.choice(sources["chart"]), size, 0.4, flip=False)
    img = _crop(rng, rng.choice(sources["photo"]), size, 0.2)  # the source draws _source_name replays
    if recipe == "blurred":
        return img.filter(ImageFilter.GaussianBlur(rng.uniform(1.0, 4.0) * size / 128))
    return _overlay(rng, img, size) if recipe == "overlay" else img


def _image_rng(seed: int, index: int) -> random.Random:
    """Image ``index``'s generator, past the draw that chose its recipe (``plan``): ``_make`` continues it."""
    rng = random.Random(f"{seed}-{index}")
    rng.random()  # the draw that chose the recipe
    return rng


def _source_name(seed: int, index: int, recipe: str, counts: dict[str, int]) -> str:
    """The source ``_make`` draws for image ``index``, replayed without rendering it."""
    if recipe == "flat":
        return f"flat-{index:05d}"
    kind = _KIND[recipe]
    return f"{kind}-{_image_rng(seed, index).choice(range(counts[kind]))}"  # the same draw as rng.choice(sources[kind])


def _write_sources(out: Path, seed: int, plan: list[str], counts: dict[str, int]) -> None:
    rows = ["path,source"] + [f"{r}/{i:05d}.png,{_source_name(seed, i, r, counts)}" for i, r in enumerate(plan)]
    tmp = out / f"{SOURCES_FILE}.tmp{os.getpid()}"
    tmp.write_text("\n".join(rows) + "\n")
    tmp.replace(out / SOURCES_FILE)


def build_variety_set(out: str | Path, n: int = 2000, size: int = 128, seed: int = 0, extra_renders: int = 16) -> Path:
    """Write ``n`` images of ``size`` x ``size`` under ``out`` (resumable); return ``out``.

    ``extra_renders`` documents and charts are rendered beside the embedded eight of each."""
    if n < 1 or size < 32:
        raise UserInputError(f"need n >= 1 and size >= 32, got n={n}, size={size}")
    out = Path(out).expanduser()
    done, made_by = out / ".complete", out / "variety.json"
    args = {"size": size, "seed": seed, "extra_renders": extra_renders, "recipes": RECIPES, "version": 1}
    if made_by.is_file() and json.loads(made_by.read_text()) != args:
        raise UserInputError(f"{out} holds images built with other arguments ({made_by.read_text().strip()}); "
                             "use another folder, or the same size/seed (n may grow)")
    if done.is_file() and done.read_text().strip().isdigit() and int(done.read_text()) >= n and (out / SOURCES_FILE).is_file():
        return out
    out.mkdir(parents=True, exist_ok=True)
    made_by.write_text(json.dumps(args))
    names, weights = list(RECIPES), list(RECIPES.values())
    plan = [random.Random(f"{seed}-{i}").choices(names, weights)[0] for i in range(n)]
    todo = [i for i, r in enumerate(plan) if not (out / r / f"{i:05d}.png").is_file()]
    sources = _sources(ensure_default_data(), extra_renders)
    if todo:
        log.info("building %d of %d varied images at %dpx in %s", len(todo), n, size, out)
        for i in todo:
            rng = _image_rng(seed, i)
            path = out / plan[i] / f"{i:05d}.png"
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp = path.with_suffix(f".tmp{os.getpid()}")
            _make(rng, plan[i], sources, size).save(tmp, format="PNG")
            tmp.replace(path)
    _write_sources(out, seed, plan, {k: len(v) for k, v in sources.items()})
    done.write_text(str(n))
    return out
