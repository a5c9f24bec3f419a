"""The embedded default dataset: real photos shipped inside PyPI packages plus rendered
documents, charts and flat graphics, so detail-rich and simple content are both present.

Built once, deterministically and without network, into ``<cache>/default_data/v1/<kind>/``
where ``<cache>`` is ``$CAT_TOKENIZER_CACHE`` or ``~/.cache/cat_tokenizer``. Kinds: ``photo``,
``texture``, ``text``, ``chart``, ``flat``. The build writes to a temporary folder and renames
it into place, so an interrupted build leaves nothing half-made.
"""

from __future__ import annotations

import logging
import os
import random
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

__all__ = ["default_data_root", "ensure_default_data", "cache_dir", "KINDS"]

log = logging.getLogger(__name__)

VERSION = "v1"
KINDS = ("photo", "texture", "text", "chart", "flat")
SIZE = 512  # rendered images are SIZE x SIZE

_SKIMAGE = {
    "photo": ["astronaut", "chelsea", "coffee", "rocket", "immunohistochemistry", "hubble_deep_field",
              "retina", "camera", "coins", "moon", "horse", "clock", "colorwheel", "logo"],
    "texture": ["brick", "grass", "gravel"],
    "text": ["page", "text"],  # real scans of printed text
}

_WORDS = (
    "image tokenizer latent ratio compression adaptive content caption model detail texture chart "
    "table figure result method data training sample score complexity encoder decoder nested token "
    "budget quality faces text layout column value axis legend report summary analysis page section"
).split()


def cache_dir() -> Path:
    """Root of the project's cache (``$CAT_TOKENIZER_CACHE`` or ``~/.cache/cat_tokenizer``)."""
    return Path(os.environ.get("CAT_TOKENIZER_CACHE", Path.home() / ".cache" / "cat_tokenizer")).expanduser()


def default_data_root() -> Path:
    return cache_dir() / "default_data" / VERSION


def ensure_default_data() -> Path:
    """Return the default-data folder, building it on first use (a few seconds)."""
    root = default_data_root()
    if (root / ".complete").is_file():
        return root
    root.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".building-", dir=root.parent))
    try:
        n = _build(tmp)
        (tmp / ".complete").write_text(f"{n} images\n")
        if root.exists():  # a stale partial folder from an older layout
            shutil.rmtree(root)
        try:
            tmp.rename(root)
        except OSError:  # another process finished first
            if not (root / ".complete").is_file():
                raise
        log.info("built the default dataset: %d images in %s", n, root)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return root


def _save(img: Image.Image | np.ndarray, path: Path) -> None:
    if isinstance(img, np.ndarray):
        if img.dtype == bool:
            img = img.astype(np.uint8) * 255
        img = Image.fromarray(img)
    path.parent.mkdir(parents=True, exist_ok=True)
    img.save(path, format="PNG")


def _build(out: Path) -> int:
    import skimage.data
    from sklearn.datasets import load_sample_images

    n = 0
    for kind, names in _SKIMAGE.items():
        for name in names:
            _save(getattr(skimage.data, name)(), out / kind / f"{name}.png")
            n += 1
    sample = load_sample_images()
    for fname, img in zip(sample.filenames, sample.images):
        _save(img, out / "photo" / f"sklearn_{Path(fname).stem}.png")
        n += 1
    renderers: list[tuple[str, Callable[[random.Random], Image.Image], int]] = [
        ("text", _render_document, 8),
        ("chart", _render_chart, 8),
        ("flat", _render_flat, 8),
    ]
    for kind, render, count in renderers:
        for i in range(count):
            _save(render(random.Random(f"{kind}-{i}")), out / kind / f"{kind}_{i:02d}.png")
            n += 1
    return n


def _figure_to_image(fig) -> Image.Image:
    import matplotlib.pyplot as plt

    fig.canvas.draw()
    img = Image.fromarray(np.asarray(fig.canvas.buffer_rgba())).convert("RGB")
    plt.close(fig)
    return img


def _new_figure():
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    plt.rcParams.update({"font.family": "DejaVu Sans", "svg.hashsalt": "cat"})
    return plt.figure(figsize=(SIZE / 100, SIZE / 100), dpi=100)


def _sentence(rng: random.Random, n: int) -> str:
    return " ".join(rng.choice(_WORDS) for _ in range(n)).capitalize() + "."


def _render_document(rng: random.Random) -> Image.Image:
    """A page of text: a title and paragraphs at a random font size, sometimes two columns."""
    fig = _new_figure()
    fontsize = rng.choice([6, 7, 8, 10, 12])
    family = rng.choice(["DejaVu Sans", "DejaVu Serif", "DejaVu Sans Mono"])
    fig.text(0.05, 0.95, _sentence(rng, 4).rstrip("."), fontsize=fontsize + 6, weight="bold", va="top", family=family)
    columns = rng.choice([1, 2])
    width = 0.9 / columns
    chars = int(width * SIZE / (fontsize * 0.62))
    for c in range(columns):
        y = 0.88
        while y > 0.05:
            words, line = [], ""
            while len(line) < chars - 10:
                words.append(rng.choice(_WORDS))
                line = " ".join(words)
            fig.text(0.05 + c * width, y, line, fontsize=fontsize, va="top", family=family)
            y -= fontsize * 1.5 / SIZE * 1.4
            if rng.random() < 0.12:
                y -= 0.03  # paragraph break
    return _figure_to_image(fig)


def _render_chart(rng: random.Random) -> Image.Image:
    """A labelled bar, line, scatter or pie chart with a title, axes and legend."""
    fig = _new_figure()
    ax = fig.add_subplot(111)
    kind = rng.choice(["bar", "line", "scatter", "pie"])
    nprng = np.random.default_rng(rng.randrange(2**31))
    labels = rng.sample(_WORDS, 5)
    if kind == "bar":
        for k in range(rng.choice([1, 2, 3])):
            ax.bar(np.arange(5) + 0.25 * k, nprng.uniform(1, 10, 5), width=0.25, label=f"series {k}")
        ax.set_xticks(np.arange(5), labels, rotation=30)
    elif kind == "line":
        x = np.linspace(0, 10, 50)
        for k in range(rng.choice([2, 3, 4])):
            ax.plot(x, np.cumsum(nprng.normal(0, 1, 50)), label=f"run {k}", marker=rng.choice("o^s."))
        ax.grid(True)
    elif kind == "scatter":
        for k in range(3):
            ax.scatter(*nprng.normal(k * 2, 1, (2, 60)), s=12, label=labels[k])
    else:
        ax.pie(nprng.uniform(1, 5, 5), labels=labels, autopct="%1.1f%%")
    ax.set_title(_sentence(rng, 3).rstrip("."))
    if kind != "pie":
        ax.set_xlabel(rng.choice(_WORDS))
        ax.set_ylabel(rng.choice(_WORDS))
        ax.legend(fontsize=7)
    fig.tight_layout()
    return _figure_to_image(fig)


def _render_flat(rng: random.Random) -> Image.Image:
    """Flat colour: a background (solid or smooth gradient) with a few large simple shapes."""
    def colour() -> tuple[int, int, int]:
        return tuple(rng.randrange(256) for _ in range(3))  # type: ignore[return-value]

    if rng.random() < 0.5:
        img = Image.new("RGB", (SIZE, SIZE), colour())
    else:
        a, b = np.array(colour(), float), np.array(colour(), float)
        t = np.linspace(0, 1, SIZE)[:, None, None]
        grad = (a * (1 - t) + b * t).astype(np.uint8)
        img = Image.fromarray(np.broadcast_to(grad, (SIZE, SIZE, 3)).copy())
    draw = ImageDraw.Draw(img)
    for _ in range(rng.randrange(0, 4)):
        x0, y0 = rng.randrange(SIZE - 128), rng.randrange(SIZE - 128)
        x1, y1 = x0 + rng.randrange(64, 256), y0 + rng.randrange(64, 256)
        shape = rng.choice([draw.ellipse, draw.rectangle])
        shape([x0, y0, x1, y1], fill=colour())
    return img
