"""Shared fixtures: a private cache folder, tiny image folders, tiny models. Nothing downloads."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image


def pytest_configure(config):
    # A cache private to this test session; the embedded default data is built there once.
    cache = Path(config.rootpath) / ".pytest_cache" / "cat_tokenizer_cache"
    os.environ["CAT_TOKENIZER_CACHE"] = str(cache)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    torch.set_num_threads(min(2, os.cpu_count() or 1))


def write_images(folder: Path, n: int = 6, size: int = 64, seed: int = 0) -> list[Path]:
    """Small deterministic RGB images (noise + a rectangle) in two class subfolders."""
    rng = np.random.default_rng(seed)
    paths = []
    for i in range(n):
        arr = (rng.random((size, size + 8 * (i % 2), 3)) * 80).astype(np.uint8)
        arr[size // 4 : size // 2, size // 4 : size // 2] = rng.integers(0, 255, 3, dtype=np.uint8)
        p = folder / f"class{i % 2}" / f"img{i}.png"
        p.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(arr).save(p)
        paths.append(p)
    return paths


@pytest.fixture
def image_folder(tmp_path: Path) -> Path:
    write_images(tmp_path / "images")
    return tmp_path / "images"


@pytest.fixture
def tiny_vae():
    from cat_tokenizer import NestedVAE

    torch.manual_seed(0)
    return NestedVAE.from_preset("tiny")
