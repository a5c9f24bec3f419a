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


def write_kind_folder(root: Path, kinds=("flat", "natural"), n: int = 4, size: tuple[int, int] = (48, 48),
                      source: str = "src", seed: int = 0) -> Path:
    """``root/KIND/SOURCE/i.png``: flat = one grey level per image, natural = noise, text = dark stripes on light grey."""
    rng = np.random.default_rng(seed)
    h, w = size
    for kind in kinds:
        for i in range(n):
            if kind == "flat":
                arr = np.full((h, w, 3), (40 * i + 30) % 256, np.uint8)
            elif kind == "text":
                arr = np.full((h, w, 3), 230, np.uint8)
                arr[h // 8 : h - h // 8 : 6, w // 12 : w - w // 12] = rng.integers(0, 60, (len(range(h // 8, h - h // 8, 6)), w - 2 * (w // 12), 3))
            else:
                arr = rng.integers(0, 255, (h, w, 3), dtype=np.uint8)
            p = root / kind / source / f"{i}.png"
            p.parent.mkdir(parents=True, exist_ok=True)
            Image.fromarray(arr).save(p)
    return root


def one_line_error(capsys, *needles: str) -> str:
    """A command's stderr, less its log lines, is one line (no traceback) holding every needle."""
    err = "\n".join(line for line in capsys.readouterr().err.splitlines()
                    if line.strip() and not line.startswith(("INFO ", "WARNING ", "DEBUG ")))
    assert "Traceback" not in err and len(err.splitlines()) == 1, err
    for n in needles:
        assert n in err, err
    return err
