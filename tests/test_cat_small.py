"""The shipped tokenizer: loads offline from the package and reconstructs real structure (random weights cannot)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image
from torchmetrics.functional.image import peak_signal_noise_ratio

from cat_tokenizer import NestedVAE
from cat_tokenizer.data.transforms import image_transform
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
    assert (folder / "model.safetensors").stat().st_size <= 20 * 2**20


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
    random_vae = NestedVAE(**{k: v for k, v in vae.config.items() if k != "ratio_head"})
    assert _psnr(random_vae.reconstruct(x, 8), x) < floor + 1  # the check fails for random weights


@pytest.mark.parametrize("name", ["cat-small"])
def test_commands_default_to_cat_small(name, tmp_path, capsys):
    from cat_tokenizer.cli import tools

    Image.fromarray((np.random.default_rng(0).random((40, 56, 3)) * 255).astype(np.uint8)).save(tmp_path / "a.png")
    assert tools.main(["encode", str(tmp_path / "a.png"), "--ratio", "16", "--ckpt", name, "--out", str(tmp_path / "z")]) == 0
    assert tools.main(["decode", str(tmp_path / "z" / "a.safetensors"), "--ckpt", name, "--out", str(tmp_path / "o")]) == 0
    assert Image.open(tmp_path / "o" / "a.png").size == (56, 40)
