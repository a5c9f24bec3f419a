"""Region-adaptive CAT: region latents, the mixed decode, region maps under a budget or a target, files."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file

from cat_tokenizer.errors import UserInputError
from cat_tokenizer.io import RegionFile, load_any_latent, save_region_latent
from cat_tokenizer.regions import RegionLatent
from cat_tokenizer.regions.maps import allocate, allocate_target, block_distortion, region_maps

COST = [16, 4, 1]  # tokens of a 32-px block at 8x, 16x, 32x


@pytest.fixture
def images():
    torch.manual_seed(1)
    return torch.rand(2, 3, 64, 96) * 2 - 1


@pytest.mark.parametrize("ratio", [8, 16, 32])
def test_a_map_of_one_ratio_decodes_exactly_as_that_ratio(tiny_vae, images, ratio):
    with torch.no_grad():
        lat = tiny_vae.encode_regions(images, torch.full((2, 3), ratio))
        got = tiny_vae.decode_regions(lat)
        want = tiny_vae.decode(tiny_vae.encode(images, ratio).mode(), ratio)
    assert torch.equal(got, want)
    assert lat.tokens().tolist() == [6 * (32 // ratio) ** 2] * 2


def test_a_pixel_merge_blends_whole_decodes_with_weights_that_sum_to_one(tiny_vae, images):
    from cat_tokenizer.regions.latent import pixel_merge_decode

    class Constant:  # a tokenizer whose decode at ratio r is the constant r / 100
        def decode(self, z, r, size):
            return torch.full((z.shape[0], 3, *size), r / 100.0)

    rmap = torch.tensor([[8, 16, 32], [32, 32, 16]])
    with torch.no_grad():
        lat = tiny_vae.encode_regions(images, rmap)
    grids = {r: lat.filled(r) for r in lat.ratios()}
    hard = pixel_merge_decode(Constant(), lat, grids, feather=0)
    want = (rmap.float() / 100).repeat_interleave(32, 0).repeat_interleave(32, 1)  # each block its own ratio's decode
    assert torch.equal(hard[0, 0], want) and torch.equal(hard[1], hard[0])
    soft = pixel_merge_decode(Constant(), lat, grids, feather=8)
    assert torch.allclose(soft[:, :, 8:24, 8:24], hard[:, :, 8:24, 8:24])  # a block's inside keeps its own decode
    assert 0.08 < soft[0, 0, 16, 32].item() < 0.16  # the border between 8x and 16x is a blend
    same = type("Same", (), {"decode": lambda self, z, r, size: torch.full((z.shape[0], 3, *size), 0.3)})()
    assert torch.allclose(pixel_merge_decode(same, lat, grids, feather=7), torch.tensor(0.3))  # the weights sum to one
    with torch.no_grad():
        real = tiny_vae.decode_regions(lat, merge="pixels")
        assert real.shape == images.shape and torch.isfinite(real).all()
        one = tiny_vae.encode_regions(images, torch.full((2, 3), 16))
        assert torch.equal(tiny_vae.decode_regions(one, merge="pixels"), tiny_vae.decode_regions(one))
    with pytest.raises(UserInputError, match="region merge must be one of"):
        tiny_vae.decode_regions(lat, merge="latents")


def test_token_counts_and_the_stored_form_round_trip(tiny_vae, images):
    rmap = torch.tensor([[8, 16, 32], [32, 32, 16]])
    with torch.no_grad():
        lat = tiny_vae.encode_regions(images, rmap)
        y = tiny_vae.decode_regions(lat)
    assert lat.tokens().tolist() == [16 + 4 + 1 + 1 + 1 + 4] * 2
    item = lat.pack()[1]
    assert {k: tuple(v.shape) for k, v in item.items()} == {
        "ratio_map": (2, 3), "latent_8": (1, 4, 4, 4), "latent_16": (2, 4, 2, 2), "latent_32": (3, 4, 1, 1)}
    assert sum(v.shape[0] * v.shape[-2] * v.shape[-1] for k, v in item.items() if k.startswith("latent")) == 27  # tokens stored
    back = RegionLatent.unpack(item, lat.size, 32, [8, 16, 32], 4)
    with torch.no_grad():
        assert torch.allclose(tiny_vae.decode_regions(back), y[1:], atol=1e-3)  # batch of 1 vs 2: float noise only


def test_region_files_round_trip_and_bad_ones_get_one_line(tiny_vae, images, tmp_path):
    with torch.no_grad():
        lat = tiny_vae.encode_regions(images[:1], torch.tensor([[8, 16, 32], [32, 8, 16]]))
    fp = tiny_vae.fingerprint()
    path = save_region_latent(tmp_path / "a.safetensors", lat.pack()[0], lat.size, 32, "src.png", fp)
    f = load_any_latent(path)
    assert isinstance(f, RegionFile) and (f.height, f.width, f.block, f.source) == (64, 96, 32, "src.png")
    with torch.no_grad():
        assert torch.allclose(tiny_vae.decode_regions(f.to_latent(tiny_vae, path, fp)), tiny_vae.decode_regions(lat), atol=1e-6)
    tensors, bad = load_file(str(path)), tmp_path / "bad.safetensors"
    cases = {
        "does not fit a 64x96 image": {**tensors, "ratio_map": tensors["ratio_map"][:1]},
        "not ratios of this tokenizer": {**tensors, "ratio_map": torch.full_like(tensors["ratio_map"], 12)},
        "latent_8 has shape": {**tensors, "latent_8": tensors["latent_8"][:1]},
        "NaN or infinite": {**tensors, "latent_16": tensors["latent_16"] * float("nan")},
        "has no latent_32": {k: v for k, v in tensors.items() if k != "latent_32"},
    }
    meta = {"height": "64", "width": "96", "block": "32", "format": "cat-region-latent-v1"}
    for message, t in cases.items():
        save_file(t, str(bad), metadata=meta)
        with pytest.raises(UserInputError, match=message) as err:
            load_any_latent(bad).to_latent(tiny_vae, bad)
        assert "\n" not in str(err.value)
    with pytest.raises(UserInputError, match="made by tokenizer"):
        f.to_latent(tiny_vae, path, "0123456789abcdef")


def test_a_budget_is_met_within_one_blocks_worth_and_beats_brute_force_never():
    rng = np.random.default_rng(0)
    for _ in range(20):
        d = np.sort(rng.random((4, 3)) * 10, axis=1)  # coarser ratios lose more
        for budget in (4, 10, 22, 40, 64):
            pick = allocate(d, COST, budget)
            tokens = sum(COST[i] for i in pick)
            assert tokens <= budget
            best = min(sum(d[b, c[b]] for b in range(4)) for c in itertools.product(range(3), repeat=4)
                       if sum(COST[i] for i in c) <= budget)
            got = d[np.arange(4), pick].sum()
            # the Lagrangian + greedy fill is at most one block's worth from the exact optimum
            assert got >= best - 1e-9 and (budget - tokens < max(COST) - min(COST) or got == pytest.approx(best))
    with pytest.raises(UserInputError, match="below the 4"):
        allocate(np.ones((4, 3)), COST, 3)


def test_a_target_is_met_with_the_fewest_tokens_the_lagrangian_finds():
    d = np.array([[1.0, 5, 20], [1, 1.5, 2], [2, 8, 30]])
    pick = allocate_target(d, COST, 10.0)
    assert d[np.arange(3), pick].sum() <= 10
    assert pick.tolist() == [1, 2, 0]  # 21 tokens (all 8x: 48); the exhaustive optimum of this table
    assert allocate_target(d, COST, 1.0).tolist() == [0, 0, 0]  # unreachable: everything at 8x


def test_oracle_maps_spend_the_budget_where_decodes_lose_most(tiny_vae):
    x = -torch.ones(1, 3, 64, 64)  # black, with noise in the top-left block only
    x[..., :32, :32] = torch.rand(1, 3, 32, 32) * 2 - 1
    with torch.no_grad():
        d = block_distortion(x, [tiny_vae.reconstruct(x, r) for r in (8, 16, 32)], 32)
        m = region_maps(tiny_vae, x, "oracle", budget=16 + 3)
        v = region_maps(tiny_vae, x, "variance", budget=16 + 3)
    assert d.shape == (1, 2, 2, 3)
    assert v[0].tolist() == [[8, 32], [32, 32]]  # the only block with variance gets the fine ratio
    assert int(m.eq(8).sum()) == 1 and m.numel() == 4


def test_refinement_and_the_shipped_region_fill_bring_a_mixed_decode_closer_to_the_image():
    """On the shipped tokenizer and a real photo: the first pass of a mixed map sees wrong context; each
    refinement pass re-encodes its image to fill it (cat_tokenizer.regions.latent); the shipped region fill
    does as well in one pass."""
    from skimage import data
    from torchmetrics.functional.image import peak_signal_noise_ratio
    from torchvision.transforms.v2 import functional as TF

    from cat_tokenizer import NestedVAE

    vae = NestedVAE.from_pretrained("cat-small").eval()
    x = TF.resize(torch.from_numpy(data.astronaut()).permute(2, 0, 1), [128, 128], antialias=True)[None].float() / 127.5 - 1
    rmap = torch.tensor([[8, 16, 32, 16], [32, 8, 16, 32], [16, 32, 8, 16], [32, 16, 32, 8]])
    with torch.no_grad():
        lat = vae.encode_regions(x, rmap)
        psnr = [float(peak_signal_noise_ratio((vae.decode_regions(lat, k, use_fill=f).clamp(-1, 1) + 1) / 2, (x + 1) / 2,
                                              data_range=1.0)) for k, f in ((0, False), (2, False), (0, True))]
    assert vae.region_fill is not None
    assert psnr[1] > psnr[0] + 0.5
    assert psnr[2] > psnr[0] + 0.5 and psnr[2] > psnr[1] - 0.3, psnr
