"""The shipped tokenizer: loads offline from the package and reconstructs real structure (random weights cannot)."""

from __future__ import annotations

import functools

import numpy as np
import pytest
import torch
from PIL import Image
from torchmetrics.functional.image import peak_signal_noise_ratio

from cat_tokenizer import NestedVAE
from cat_tokenizer.data.transforms import image_transform
from cat_tokenizer.models.hub import weights_file
from cat_tokenizer.models.nested_vae import bundled_path


def _photo() -> torch.Tensor:
    from skimage import data

    img = Image.fromarray(data.astronaut()).resize((128, 128), Image.Resampling.BICUBIC)
    return image_transform(128, train=False)(img)[None]  # (1, 3, 128, 128)


def _psnr(a: torch.Tensor, b: torch.Tensor) -> float:
    return float(peak_signal_noise_ratio((a + 1) / 2, (b + 1) / 2, data_range=1.0))


def test_cat_small_ships_in_the_package_within_20_mb():
    folder = bundled_path("cat-small")
    assert (folder / "config.json").is_file() and (folder / "README.md").is_file()
    assert weights_file(folder).stat().st_size <= 20 * 2**20


def test_cat_small_loads_offline_and_beats_the_mean_colour(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    vae = NestedVAE.from_pretrained("cat-small")
    assert vae.latent_channels == 16 and vae.ratios == (8, 16, 32)
    x = _photo()
    mean_colour = x.mean(dim=(2, 3), keepdim=True).expand_as(x)
    floor = _psnr(mean_colour, x)
    psnr = {r: _psnr(vae.reconstruct(x, r), x) for r in vae.ratios}
    assert psnr[8] > floor + 5  # a real reconstruction, not a colour blob
    assert psnr[8] > psnr[16] > psnr[32]  # more tokens, more detail
    torch.manual_seed(0)
    random_vae = NestedVAE(**{k: v for k, v in vae.init_config().items() if k != "ratio_head"})
    assert _psnr(random_vae.reconstruct(x, 8), x) < floor + 1  # the check fails for random weights


@pytest.mark.parametrize("name", ["cat-small"])
def test_commands_default_to_cat_small(name, tmp_path, capsys):
    from cat_tokenizer.cli import tools

    Image.fromarray((np.random.default_rng(0).random((40, 56, 3)) * 255).astype(np.uint8)).save(tmp_path / "a.png")
    assert tools.main(["encode", str(tmp_path / "a.png"), "--ratio", "16", "--ckpt", name, "--out", str(tmp_path / "z")]) == 0
    assert tools.main(["decode", str(tmp_path / "z" / "a.safetensors"), "--ckpt", name, "--out", str(tmp_path / "o")]) == 0
    assert Image.open(tmp_path / "o" / "a.png").size == (56, 40)


# ---------------------------------------------------------------- the palette check (issue 24)
# Shipped tokenizers known to miss the palette target, keyed by the fingerprint whole-image decodes depend on (a region
# fill or a head attached later does not change them). A new release that is not listed must pass the test.
# Whole 128-px images of one colour: v1 (the fourth release: 19-20 dB, shifts up to 38 levels) and the fifth (v1
# warm-started with the colour path and flat fields: 20-25 dB, 29 levels) miss; v2 (the sixth) and v3 (the seventh) must
# keep >= 36 dB there.
SHORT_ON_WHOLE_IMAGES = {"63e87c250ec6da4e", "a7d539e217d21270"}
# The whole target (whole images at 128 px and 96x176, squares on white): v2 misses it on squares at every ratio
# (24.7 dB and 14 levels at worst, at 32x) and on 96x176 at 32x (3.1 levels, cyan); v3 passes whole images at both
# sizes and misses on squares only (29.4 dB and 9 levels at worst, at 32x; 70-74% of the error on the square's edge).
SHORT_OF_THE_PALETTE = SHORT_ON_WHOLE_IMAGES | {"677d35f5c9a82fe2", "add6a363089dbff2"}


@functools.cache
def _shipped_fingerprint() -> str:  # both palette tests' marks ask; the package loads once
    return NestedVAE.from_pretrained("cat-small").fingerprint(with_head=False)


class _Shift(torch.nn.Module):
    """A stand-in tokenizer that returns its input, optionally pulled towards saturation like v1."""

    ratios = (8, 16, 32)

    def __init__(self, gain: float):
        super().__init__()
        self.gain = gain

    def reconstruct(self, x: torch.Tensor, ratio: int) -> torch.Tensor:
        return (x * self.gain).clamp(-1, 1)


def test_palette_check_tells_exact_colour_from_a_shift():
    from cat_tokenizer.metrics.palette import PALETTE, PaletteTarget, measure_palette, summarise_palette

    exact = measure_palette(_Shift(1.0))
    assert len(exact) == len(PALETTE) * 3 * 3 and PaletteTarget().passes(exact)
    assert min(r["levels"] for r in exact) == 0 and min(r["psnr"] for r in exact) == 100.0
    shifted = measure_palette(_Shift(1.1))  # +10% away from mid grey: red (220,30,30) -> (229,20,20)
    assert not PaletteTarget().passes(shifted)
    red = next(r for r in shifted if r["colour"] == "red" and r["layout"] == "whole" and r["ratio"] == 8)
    assert (red["r"], red["g"], red["b"]) == (229, 20, 20) and red["levels"] == pytest.approx(9.75, abs=0.01)
    summary = summarise_palette(shifted)
    assert [s["layout"] for s in summary] == ["whole"] * 3 + ["whole 96x176"] * 3 + ["square"] * 3
    assert all(s["min_psnr"] < 36 for s in summary)


class _Blur(_Shift):
    """A stand-in tokenizer that blurs every edge by one pixel and keeps each colour exact."""

    def reconstruct(self, x: torch.Tensor, ratio: int) -> torch.Tensor:
        return torch.nn.functional.avg_pool2d(torch.nn.functional.pad(x, (1,) * 4, mode="replicate"), 3, 1)


def test_palette_check_tells_a_blurred_edge_from_a_wrong_colour():
    from cat_tokenizer.metrics.palette import measure_palette, palette_markdown

    blurred = [r for r in measure_palette(_Blur(1.0), layouts=("square",)) if r["colour"] != "white"]
    assert all(r["edge_share"] == pytest.approx(1.0) and r["psnr_off_edge"] == 100.0 for r in blurred)
    assert min(r["psnr"] for r in blurred) < 30  # the blur costs dB: red's square at 27 dB
    shifted = [r for r in measure_palette(_Shift(1.1), layouts=("square", "whole")) if r["colour"] != "white"]
    # a colour shift spreads over the square: its 2 px inner band is 12% of its pixels, (64^2 - 60^2) / 64^2
    square = [r for r in shifted if r["layout"] == "square" and r["levels"] > 0]
    assert square and all(r["edge_share"] == pytest.approx(0.121, abs=0.01) and r["psnr_off_edge"] - r["psnr"] < 1 for r in square)
    assert all(r["edge_share"] == 0 and r["psnr_off_edge"] == pytest.approx(r["psnr"], abs=0.01) for r in shifted if r["layout"] == "whole")
    edges = palette_markdown(measure_palette(_Blur(1.0))).split("where the error lies")[1]
    assert "| 32 | 24.6 | 96% | 100.0 |" in edges  # 23 colours all on the edge, white without error


@pytest.mark.slow
@pytest.mark.xfail(_shipped_fingerprint() in SHORT_ON_WHOLE_IMAGES, reason="v1 and the fifth release shift a whole flat "
                   "image's colour (19-28 dB at worst); v2 (issue 24) fixed it", strict=True)
def test_shipped_tokenizer_returns_whole_flat_images_exactly():
    """Every palette colour as a whole 128-px image, at every ratio: >= 36 dB, within 3 levels."""
    from cat_tokenizer.metrics.palette import PaletteTarget, measure_palette, summarise_palette

    rows = measure_palette(NestedVAE.from_pretrained("cat-small"), layouts=("whole",))
    assert len(rows) == 24 * 3 and PaletteTarget().passes(rows), summarise_palette(rows)


@pytest.mark.slow
@pytest.mark.xfail(_shipped_fingerprint() in SHORT_OF_THE_PALETTE, reason="squares on white drift at 32x on every release "
                   "so far (v2: 24.7 dB, 14 levels; v3: 29.4 dB, 9 levels); issue 24's full target", strict=True)
def test_shipped_tokenizer_returns_flat_colours_exactly():
    """Every palette colour, whole (128 px and 96x176) and as a square on white, at every ratio: >= 36 dB, within 3 levels."""
    from cat_tokenizer.metrics.palette import PaletteTarget, measure_palette, summarise_palette

    rows = measure_palette(NestedVAE.from_pretrained("cat-small"))
    assert PaletteTarget().passes(rows), summarise_palette(rows)
