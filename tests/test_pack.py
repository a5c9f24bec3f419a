"""`cat-tokenizer pack`: native-resolution patches within a byte budget, kinds sharing it."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image, ImageDraw

from cat_tasks.reconstruction.pack import pack_folder
from cat_tokenizer.errors import UserInputError


def _tree(root, n: int = 6) -> None:
    rng = np.random.default_rng(0)
    for i in range(n):
        (root / "natural" / "cam").mkdir(parents=True, exist_ok=True)
        Image.fromarray(rng.integers(0, 255, (300, 400, 3), dtype=np.uint8)).save(root / "natural" / "cam" / f"p{i}.jpg")
        (root / "flat" / "icons").mkdir(parents=True, exist_ok=True)
        icon = Image.new("RGB", (64, 64), "white")
        ImageDraw.Draw(icon).ellipse([8, 8, 56, 56], fill=(200, 30, 30))
        icon.save(root / "flat" / "icons" / f"i{i}.png")


def test_patches_keep_native_pixels_and_the_format_follows_the_colours(tmp_path):
    _tree(tmp_path / "src")
    stats = pack_folder(tmp_path / "src", tmp_path / "out", max_mib=10, side=128)
    assert stats["natural"]["images"] == 6 and stats["flat"]["images"] == 6
    photo = Image.open(tmp_path / "out" / "natural" / "cam" / "p0.jpg")
    icon = Image.open(tmp_path / "out" / "flat" / "icons" / "i0.png")
    assert photo.size == (128, 128) and photo.format == "JPEG"  # a crop, not a resize
    assert icon.size == (64, 64) and icon.format == "PNG"  # small images stay whole, lossless
    assert np.array_equal(np.asarray(icon.convert("RGB")), np.asarray(Image.open(tmp_path / "src" / "flat" / "icons" / "i0.png")))


def test_the_budget_holds_and_a_cheap_kind_does_not_starve_the_others(tmp_path):
    _tree(tmp_path / "src")
    budget = 0.05  # MiB: a few noise patches of ~12 KB each, while icons cost ~0.3 KB
    stats = pack_folder(tmp_path / "src", tmp_path / "out", max_mib=budget, side=128)
    written = sum(f.stat().st_size for f in (tmp_path / "out").rglob("*") if f.is_file())
    assert written <= budget * 2**20
    assert stats["flat"]["images"] == 6 and 1 <= stats["natural"]["images"] < 6  # icons fit; photos take the rest
    with pytest.raises(UserInputError, match="not empty"):
        pack_folder(tmp_path / "src", tmp_path / "out")
