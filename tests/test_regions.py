"""Region-adaptive CAT: region latents, the mixed decode, region maps under a budget or a target, files."""

from __future__ import annotations

import csv
import itertools

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file

from cat_tokenizer.errors import UserInputError
from cat_tokenizer.io import RegionFile, load_any_latent, save_region_latent
from cat_tokenizer.metrics.fid import frechet_distance
from cat_tokenizer.regions import RegionLatent
from cat_tokenizer.regions.maps import (
    InContext,
    allocate,
    allocate_mean_psnr,
    allocate_target,
    block_distortion,
    context_distortion,
    latin_maps,
    probe_choices,
    refined_choice,
    region_maps,
)

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


@pytest.mark.parametrize("merge", ["pixels", "features"])
def test_a_context_pass_on_some_grids_fills_only_those_again(tiny_vae, images, merge):
    """``refine_ratios`` limits a context pass to some grids: every grid is the full pass, one grid is the first
    decode's other grids with that one refilled from the re-encoded image, and a ratio the tokenizer lacks is refused."""
    from cat_tokenizer.regions.latent import exit_latents, mixed_decode, pixel_merge_decode

    rmap = torch.tensor([[8, 16, 32], [32, 32, 16]])
    with torch.no_grad():
        lat = tiny_vae.encode_regions(images, rmap)
        full = tiny_vae.decode_regions(lat, 1, merge=merge)
        assert torch.equal(tiny_vae.decode_regions(lat, 1, merge=merge, refine_ratios=(8, 16, 32)), full)
        first = {r: lat.filled(r) for r in lat.ratios()}
        decode = pixel_merge_decode if merge == "pixels" else mixed_decode
        x = decode(tiny_vae, lat, first).clamp(-1, 1)
        want = decode(tiny_vae, lat, {**first, 32: lat.filled(32, exit_latents(tiny_vae, x, [32])[32])})
        got = tiny_vae.decode_regions(lat, 1, merge=merge, refine_ratios=(32,))
        assert torch.allclose(got, want[..., :64, :96], atol=1e-5)
        assert not torch.allclose(got, full, atol=1e-3)  # the other grids kept their first fill
        one = tiny_vae.encode_regions(images, torch.where(rmap == 32, 16, rmap))  # no 32x block: nothing to refill
        assert torch.equal(tiny_vae.decode_regions(one, 1, merge=merge, refine_ratios=(32,)), tiny_vae.decode_regions(one, 0, merge=merge))
    with pytest.raises(UserInputError, match="refine_ratios: 64 is not a ratio"):
        tiny_vae.decode_regions(lat, 1, refine_ratios=(64,))


def test_a_mixed_decode_blends_each_ratios_colour_path_across_block_borders(images):
    """With the tail's output conv zeroed, a mixed decode is the colour path alone: each block keeps its own
    ratio's colour inside and ramps to its neighbour's over 2 * COLOUR_FEATHER + 1 pixels (a hard mask made a
    step there: v2's region seams 1.41 against fixed 16x's 1.07)."""
    from cat_tokenizer.models import NestedVAE
    from cat_tokenizer.regions.latent import COLOUR_FEATHER, mixed_decode

    torch.manual_seed(0)
    m = NestedVAE.from_preset("tiny", colour_path="latent").eval()
    with torch.no_grad():
        m.decoder.conv_out.weight.zero_()
        m.decoder.conv_out.bias.zero_()
        m.decoder.colour.weight.zero_()
        lat = m.encode_regions(images, torch.tensor([[8, 16, 32]]).expand(2, 3))
        grids = {r: torch.full_like(lat.filled(r), float(r)) for r in lat.ratios()}  # each ratio's latent a constant
        m.decoder.colour.weight.fill_(0.01)  # colour = 0.01 * channels * r: constant per ratio
        y = mixed_decode(m, lat, grids)[0, 0, 16]  # (96,) one row across the three blocks
    c = 0.01 * lat.filled(8).shape[1]
    assert torch.allclose(y[: 32 - COLOUR_FEATHER], torch.tensor(8 * c))  # inside the 8x block: its own colour
    assert torch.allclose(y[32 + COLOUR_FEATHER : 64 - COLOUR_FEATHER], torch.tensor(16 * c))
    steps = y.diff()
    assert steps.max() < 16 * c / (2 * COLOUR_FEATHER)  # ramps (a hard mask: one step of 16 * c from 16x to 32x)
    assert torch.allclose(steps[24:40].sum(), torch.tensor(8 * c))  # from 8x's colour to 16x's across the border


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
    assert all(torch.equal(back.grids[r][0], lat.grids[r][1]) for r in (8, 16, 32))  # the stored cells, bit for bit
    assert torch.equal(back.ratio_map[0], lat.ratio_map[1])
    with torch.no_grad():  # batch of 1 vs 2: float noise only, which each context pass's re-encode amplifies
        assert torch.allclose(tiny_vae.decode_regions(back, 0), tiny_vae.decode_regions(lat, 0)[1:], atol=1e-4)
        assert torch.allclose(tiny_vae.decode_regions(back), y[1:], atol=4e-3)  # 2 passes: 1.6e-3 (torch 2.14, diffusers 0.42)


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


def test_the_shared_budgets_beta_moves_tokens_from_images_decoded_well_to_those_decoded_badly():
    """beta 1 weights a block by one over its image's error (the mean PSNR), beta 0 not at all (the total squared
    error: the same as ``allocate`` on every block at once); lowering it moves tokens to the image with the most error."""
    rng = np.random.default_rng(1)
    scale = np.array([0.01, 0.1, 1.0, 10.0])[:, None, None]  # four images, from flat art to a hard photo
    d = np.sort(rng.random((4, 6, 3)), axis=2) * np.array([1.0, 8.0, 30.0]) * scale  # (N, nb, R), coarser loses more
    cost = np.array(COST, float)
    flat = allocate(d.reshape(-1, 3), COST, 4 * 24.0).reshape(4, 6)
    assert np.array_equal(allocate_mean_psnr(d, COST, 24.0, beta=0.0), flat)
    assert np.array_equal(allocate_mean_psnr(d, COST, 24.0), allocate_mean_psnr(d, COST, 24.0, beta=1.0))
    spent = [cost[allocate_mean_psnr(d, COST, 24.0, beta=b)].sum(1) for b in (1.0, 0.5, 0.0)]  # (N,) tokens per image
    assert all(s.sum() <= 4 * 24.0 for s in spent)
    assert spent[0][-1] < spent[1][-1] < spent[2][-1] and spent[0][0] > spent[2][0]  # the hard photo gains, flat art pays


def test_gamma_spreads_quality_over_an_images_blocks():
    """gamma 1 spends on the block with the most error removed per token; gamma below 1 counts a clean block spoiled
    at 32x more against a poor block improved at 8x, and keeps both at 16x."""
    d = np.array([[[0.001, 0.002, 0.05], [0.1, 0.3, 0.6]]])  # one image: a clean block and a poor one; 8x, 16x, 32x
    assert allocate_mean_psnr(d, COST, 17.0).tolist() == [[2, 0]]  # 32x + 8x: 0.15 against 16x + 16x's 0.302
    assert allocate_mean_psnr(d, COST, 17.0, gamma=0.25).tolist() == [[1, 1]]
    assert np.array_equal(allocate_mean_psnr(d, COST, 17.0, gamma=1.0), allocate_mean_psnr(d, COST, 17.0))


def test_region_rows_take_beta_and_gamma_by_name():
    from cat_tasks.reconstruction.regions import _dials, parse_region_methods

    assert _dials("regions: head, probed, beta 0.5, gamma 0.25") == ("regions: head, probed", {"beta": 0.5, "gamma": 0.25})
    assert _dials("regions: oracle, per image") == ("regions: oracle, per image", {"beta": 1.0, "gamma": 1.0})
    assert parse_region_methods("oracle, gamma 0.5; head, probed, beta 0.5, gamma 0.5") == (
        "regions: oracle, gamma 0.5", "regions: head, probed, beta 0.5, gamma 0.5")
    for bad in ("oracle, gamma x", "oracle, delta 0.5"):
        with pytest.raises(UserInputError, match="unknown row.*gamma G"):
            parse_region_methods(bad)


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
    does as well in one pass, and its default decode adds one context pass on the 32x grid."""
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
        assert torch.equal(vae.decode_regions(lat), vae.decode_regions(lat, 1, refine_ratios=(32,)))  # cat-small's default pass
    assert vae.region_fill is not None
    assert psnr[1] > psnr[0] + 0.5
    assert psnr[2] > psnr[0] + 0.5 and psnr[2] > psnr[1] - 0.3, psnr


def test_in_context_errors_join_the_estimate_only_where_a_decode_put_the_block():
    ctx = InContext(np.array([[[1.0, 2.0, 3.0], [1.0, 2.0, 3.0]]]))  # (N=1, nb=2, R=3)
    ctx.observe(np.array([[2, 0]]), np.array([[9.0, 5.0]]))
    assert ctx.d.tolist() == [[[1.0, 2.0, 6.0], [3.0, 2.0, 3.0]]]  # running means, the estimate counted once
    ctx.observe(np.array([[2, 0]]), np.array([[9.0, 5.0]]))
    assert ctx.d[0, 0, 2] == pytest.approx(7.0) and ctx.d[0, 1, 1] == 2.0


def test_probes_move_each_class_of_blocks_to_every_other_ratio_and_no_two_moved_blocks_touch():
    choice = np.array([[0, 1, 2, 0, 1, 2, 0, 1, 2, 0, 1, 2, 0, 1, 2, 0]])  # (N=1, nb=16) on a 4x4 grid
    probes = list(probe_choices(choice, (4, 4), 3))
    assert len(probes) == 8  # 4 classes x 2 other ratios
    seen = np.zeros((16, 3), int)
    for probe, moved in probes:
        assert (probe[0, ~moved] == choice[0, ~moved]).all() and (probe[0, moved] != choice[0, moved]).all()
        i, j = np.divmod(np.flatnonzero(moved), 4)
        assert all(max(abs(a - b), abs(c - d)) >= 2 for (a, c), (b, d) in itertools.combinations(zip(i, j), 2))
        seen[np.flatnonzero(moved), probe[0, moved]] += 1
    seen[np.arange(16), choice[0]] += 1
    assert (seen == 1).all()  # every block at every ratio exactly once, with the chosen map
    assert len(list(probe_choices(choice, (4, 4), 3, classes=2))) == 4
    with pytest.raises(UserInputError, match="2 or 4"):
        next(probe_choices(choice, (4, 4), 3, classes=3))


def test_probes_find_a_cheap_ratio_that_whole_image_errors_ruled_out_and_refinement_never_tries():
    # Block 0's 32x error is 20 in whole-image decodes, 1 in context; allocations from the estimate never put it at
    # 32x, so plain rounds never see it. A probe decodes it there, and the map takes it (2x2 grid, 28 tokens).
    whole = np.array([[[0.0, 10, 20], [0, 10, 60], [0, 10, 60], [0, 10, 60]]])
    real = whole.copy()
    real[0, 0, 2] = 1.0
    alloc = lambda d: np.stack([allocate(d[0], COST, 28)])  # noqa: E731
    observe = lambda c, *_at: real[0, np.arange(4), c[0]][None]  # noqa: E731
    plain = refined_choice(whole, alloc, observe, 2)
    probed = refined_choice(whole, alloc, observe, 2, lambda c: probe_choices(c, (2, 2), 3))
    assert plain.tolist() == [[0, 1, 1, 1]] and probed.tolist() == [[2, 0, 1, 1]]
    assert real[0, np.arange(4), probed[0]].sum() < real[0, np.arange(4), plain[0]].sum()
    ctx = InContext(whole)
    ctx.observe(np.array([[2, 2, 2, 2]]), np.array([[1.0, 1, 1, 1]]), np.array([True, False, False, False]))
    assert ctx.d[0, :, 2].tolist() == [10.5, 60, 60, 60]  # only the moved block joins the estimate


def test_refined_maps_move_tokens_to_the_blocks_whose_real_decode_loses_more_than_whole_decodes_said():
    from cat_tasks.reconstruction.regions import _refined_maps

    # Whole-image decodes say block 0 loses little at 16x (1) and block 1 a lot (10); in a mixed decode block 0
    # really loses 30 at 16x (its neighbour's context), block 1 as measured. One image, 2 blocks, 20 tokens.
    whole = np.array([[[0.0, 1.0, 50.0], [0.0, 10.0, 60.0]]])
    real = np.array([[[0.0, 30.0, 50.0], [0.0, 10.0, 60.0]]])
    seen = []

    def decoded(i, maps):
        seen.append(maps.copy())
        return {"blocks": real[0, np.arange(2), maps[0]][None]}

    assert allocate_mean_psnr(whole, COST, 20).tolist() == [[1, 0]]  # whole-image errors: 8x for block 1
    got = _refined_maps(whole, np.array(COST, float), 20, decoded)
    assert len(seen) == 3 and seen[0].tolist() == [[1, 0]]
    assert got.tolist() == [[0, 1]]  # after seeing block 0's real cost at 16x: 8x for it, 16x for block 1
    assert real[0, [0, 1], got[0]].sum() < real[0, [0, 1], seen[0][0]].sum()


def test_region_maps_refined_by_real_decodes_keep_the_budget(tiny_vae, images):
    with torch.no_grad():
        plain = region_maps(tiny_vae, images, "variance", budget=30)
        same = region_maps(tiny_vae, images, "variance", budget=30, refine=0)
        refined = region_maps(tiny_vae, images, "variance", budget=30, refine=2)
        probed = region_maps(tiny_vae, images, "variance", budget=30, refine=1, probes=2)
    assert torch.equal(plain, same) and refined.shape == plain.shape == probed.shape == (2, 2, 3)
    tokens = {8: 16, 16: 4, 32: 1}
    assert all(sum(tokens[int(r)] for r in m.flatten()) <= 30 for m in (*refined, *probed))
    with pytest.raises(UserInputError, match="0 or more"):
        region_maps(tiny_vae, images, "variance", budget=30, refine=-1)
    with pytest.raises(UserInputError, match="need refinement rounds"):
        region_maps(tiny_vae, images, "variance", budget=30, probes=4)


def test_rd_regions_probe_from_the_block_heads_map_when_the_tokenizer_has_one(tmp_path, tiny_vae):
    """``regions: head, probed`` starts from the head's own map (its first decode is the ``regions: head`` map, not
    the oracle's), probes it with 8 decodes and keeps the budget."""
    from conftest import write_kind_folder

    from cat_tokenizer.cli import tools
    from cat_tokenizer.regions.block_head import BlockHead

    torch.manual_seed(0)
    tiny_vae.attach_block_head(BlockHead(tiny_vae.trunk_channels(), tiny_vae.ratios, 32, hidden=8, image_size=64))
    torch.nn.init.normal_(tiny_vae.block_head.out.weight)  # a head whose map is its own, not the oracle's
    tiny_vae.save_pretrained(tmp_path / "tok")
    write_kind_folder(tmp_path / "data", kinds=("flat", "natural"), n=3, size=(64, 64))
    out = tmp_path / "rd"
    assert tools.main(["rd", str(tmp_path / "data"), "--ckpt", str(tmp_path / "tok"), "--out", str(out), "--image-size", "64",
                       "--features", "off", "--device", "cpu", "-q", "--regions", "--region-budgets", "16"]) == 0
    rows = {r["method"]: r for r in csv.DictReader(open(out / "regions.csv"))}
    assert float(rows["regions: head, probed"]["mean_tokens"]) <= 16 + 1e-9 and "regions: head" in rows
    cache = next((out / "region_cache").iterdir())
    first = np.load(cache / "regions_head_probed-16-round0.npz")["maps"]
    assert np.array_equal(first, np.load(cache / "regions_head-16.npz")["maps"])
    assert not np.array_equal(first, np.load(cache / "regions_oracle_probed-16-round0.npz")["maps"])
    assert len(list(cache.glob("regions_head_probed-16-round0-probe*.npz"))) == 8  # 4 cosets x 2 other ratios


def test_rd_region_methods_run_the_named_rows_and_decode_each_map_once(tmp_path, tiny_vae, capsys, monkeypatch):
    """``--region-methods`` picks rows; a map already decoded (a refinement's first round is the oracle's map) is
    copied, not decoded again; an unknown row is a one-line error before any work."""
    from conftest import one_line_error, write_kind_folder

    import cat_tasks.reconstruction.regions as regions
    from cat_tokenizer.cli import tools

    tiny_vae.save_pretrained(tmp_path / "tok")
    write_kind_folder(tmp_path / "data", kinds=("flat", "natural"), n=3, size=(64, 64))
    out = tmp_path / "rd"
    args = ["rd", str(tmp_path / "data"), "--ckpt", str(tmp_path / "tok"), "--out", str(out), "--image-size", "64",
            "--features", "off", "--device", "cpu", "-q", "--regions", "--region-budgets", "16"]
    calls = []
    real = regions._decode
    monkeypatch.setattr(regions, "_decode", lambda vae, x, maps, *a, **k: calls.append(maps.copy()) or real(vae, x, maps, *a, **k))
    assert tools.main([*args, "--region-methods", "oracle; regions: oracle, refined"]) == 0
    rows = [r["method"] for r in csv.DictReader(open(out / "regions.csv"))]
    assert rows == ["fixed 16x", "regions: oracle", "regions: oracle, refined"]
    cache = next((out / "region_cache").iterdir())
    files = sorted(cache.glob("*.npz"))
    assert len(files) == 1 + 1 + 1 + 3 + 1  # blocks, fixed, oracle, refined rounds 0-2 and its final map
    first = np.load(cache / "regions_oracle_refined-16-round0.npz")["maps"]
    assert np.array_equal(first, np.load(cache / "regions_oracle-16.npz")["maps"])
    distinct = {np.load(f)["maps"].tobytes() for f in files if f.name != "blocks.npz"}
    assert len(calls) == len(distinct) < len(files) - 1  # one decode per distinct map set, none twice
    assert (out / "regions_examples.png").is_file()  # drawn from the oracle's map
    report = tmp_path / "docs" / "rd"
    assert tools.main([*args, "--region-methods", "variance", "--report", str(report)]) == 0  # no oracle row: no figure
    assert not (out / "regions_examples.png").exists() and not (report / "regions_examples.png").exists()
    assert tools.main([*args, "--region-methods", "oracle; head, sideways"]) == 2
    one_line_error(capsys, "--region-methods", "head, sideways", "oracle, probed")


def test_rd_regions_decode_every_map_and_the_refined_oracle_keeps_its_rounds(tmp_path, tiny_vae, capsys):
    from conftest import one_line_error, write_kind_folder

    from cat_tokenizer.cli import tools

    tiny_vae.save_pretrained(tmp_path / "tok")
    write_kind_folder(tmp_path / "data", kinds=("flat", "natural"), n=3, size=(64, 64))
    out = tmp_path / "rd"
    args = ["rd", str(tmp_path / "data"), "--ckpt", str(tmp_path / "tok"), "--out", str(out), "--image-size", "64",
            "--features", "off", "--device", "cpu", "-q", "--regions", "--region-budgets", "16"]
    assert tools.main(args) == 0
    rows = {r["method"]: r for r in csv.DictReader(open(out / "regions.csv"))}
    assert {"fixed 16x", "regions: oracle", "regions: oracle, refined", "regions: oracle, per image"} <= set(rows)
    assert float(rows["regions: oracle, refined"]["mean_tokens"]) <= 16 + 1e-9
    rounds = sorted(p.name for p in (out / "region_cache").rglob("*refined*round*.npz"))
    assert len(rounds) == 3  # REFINE_ROUNDS decodes, each cached: a killed run resumes after the last one
    probes = sorted(p.name for p in (out / "region_cache").rglob("*oracle_probed-*round0-probe*.npz"))
    assert len(probes) == 8 and float(rows["regions: oracle, probed"]["mean_tokens"]) <= 16 + 1e-9  # 4 cosets x 2 ratios
    beta = sorted(p.name for p in (out / "region_cache").rglob("*probed_beta_0.5*round0-probe*.npz"))  # its own decodes
    assert len(beta) == 8 and float(rows["regions: oracle, probed, beta 0.5"]["mean_tokens"]) <= 16 + 1e-9
    text = (out / "rd.md").read_text()
    assert "oracle, refined" in text
    every = text.split("Every budget")[1]  # each budget's row with its PSNR per kind, not only at fixed 16x's
    flat_col = every.split("\n")[2].split(" | ").index("flat")
    oracle = next(line for line in every.split("\n") if line.startswith("| regions: oracle | 16 |")).split(" | ")
    per_image = np.load(next((out / "region_cache").rglob("regions_oracle-16.npz")))["psnr"]
    assert float(oracle[flat_col]) == pytest.approx(per_image[:3].mean(), abs=0.006)  # the folder's first 3 images are flat
    assert tools.main([*args, "--region-merge", "pixels"]) == 0  # the same maps, each ratio decoded whole and blended
    pixels = {r["method"]: r for r in csv.DictReader(open(out / "regions.csv"))}
    assert pixels["fixed 16x"]["psnr"] == rows["fixed 16x"]["psnr"]  # one ratio: the same decode either way
    assert pixels["regions: oracle"]["psnr"] != rows["regions: oracle"]["psnr"]  # a mixed map: another decode
    assert len(list((out / "region_cache").rglob("*-pixels.npz"))) >= len(rows)  # cached beside, not over, the features decodes
    assert "merge='pixels'" in (out / "rd.md").read_text()
    assert tools.main([*args, "--region-merge", "pixels", "--region-context", "32"]) == 0  # + a context pass on the 32x grid
    ctx = {r["method"]: r for r in csv.DictReader(open(out / "regions.csv"))}
    assert ctx["fixed 16x"]["psnr"] == rows["fixed 16x"]["psnr"] and ctx["regions: oracle"]["psnr"] != pixels["regions: oracle"]["psnr"]
    assert len(list((out / "region_cache").rglob("*-pixels-ctx32.npz"))) >= len(rows)  # beside the decodes without the pass
    assert "refine_ratios=(32,)" in (out / "rd.md").read_text()
    capsys.readouterr()
    assert tools.main([*args, "--region-context", "64"]) != 0
    one_line_error(capsys, "--region-context", "64 is not a ratio")


def test_encode_refines_a_region_map_on_request_and_refuses_it_elsewhere(tmp_path, tiny_vae, capsys):
    from conftest import one_line_error
    from PIL import Image

    from cat_tokenizer.cli import tools

    tiny_vae.save_pretrained(tmp_path / "tok")
    img = tmp_path / "a.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (64, 64, 3), dtype=np.uint8)).save(img)
    common = [str(img), "--ckpt", str(tmp_path / "tok"), "--device", "cpu"]
    assert tools.main(["encode", *common, "--ratio", "regions", "--region-budget", "20", "--region-refine", "2",
                       "--out", str(tmp_path / "lat")]) == 0
    lat = load_any_latent(tmp_path / "lat" / "a.safetensors")
    rmap = lat.tensors["ratio_map"].long()
    assert sum({8: 16, 16: 4, 32: 1}[int(r)] for r in rmap.flatten()) <= 20
    capsys.readouterr()
    assert tools.main(["encode", *common, "--ratio", "16", "--region-refine", "1", "--out", str(tmp_path / "x")]) == 2
    one_line_error(capsys, "--region-refine", "--ratio regions")
    with pytest.raises(SystemExit):
        tools.main(["encode", *common, "--ratio", "regions", "--region-budget", "20", "--region-refine", "-1", "--out", "x"])
    assert "--region-refine: must be zero or more" in capsys.readouterr().err
    probed = ["encode", *common, "--ratio", "regions", "--region-budget", "20", "--region-probes", "4"]
    assert tools.main([*probed, "--region-refine", "1", "--out", str(tmp_path / "p")]) == 0
    assert (tmp_path / "p" / "a.safetensors").is_file()
    assert tools.main([*probed, "--out", str(tmp_path / "q")]) == 2
    one_line_error(capsys, "--region-probes", "--region-refine")
    with pytest.raises(SystemExit):
        tools.main([*probed[:-1], "3", "--region-refine", "1", "--out", "x"])
    assert "--region-probes" in capsys.readouterr().err


def test_latin_maps_put_every_block_at_every_ratio_once_beside_other_ratios(tiny_vae, images):
    maps = latin_maps(2, (2, 3), (8, 16, 32))
    stack = torch.stack([m[0] for m in maps])  # (3, bh, bw)
    assert all(sorted(stack[:, i, j].tolist()) == [8, 16, 32] for i in range(2) for j in range(3))
    assert all((m[0, :, 1:] != m[0, :, :-1]).all() and (m[0, 1:] != m[0, :-1]).all() for m in maps)
    with torch.no_grad():
        d = context_distortion(tiny_vae, images)  # images (2, 3, 64, 96): 2 x 3 blocks
        y = tiny_vae.decode_regions(tiny_vae.encode_regions(images, maps[1])).clamp(-1, 1)
    seen = block_distortion(images, [y], 32)[..., 0]
    idx = torch.searchsorted(torch.tensor([8, 16, 32]), maps[1])
    assert d.shape == (2, 2, 3, 3) and (d >= 0).all()
    torch.testing.assert_close(d.gather(-1, idx[..., None])[..., 0].float(), seen.float())


def test_region_rows_rfid_is_compared_with_fixed_16x_on_paired_resamples():
    from types import SimpleNamespace

    from cat_tasks.reconstruction.regions import _rfid_vs

    rng = np.random.default_rng(0)
    real = rng.normal(size=(40, 8))
    near, far = real + 0.1 * rng.normal(size=real.shape), real + 2.0 + rng.normal(size=real.shape)
    table = SimpleNamespace(feats_orig=real)
    ref = {"method": "fixed 16x", "budget": 16.0, "rfid": 0.0}
    rows = [{"method": m, "budget": 16.0} for m in ("same", "worse")]
    per_image = {("fixed 16x", 16.0): {"feats": near}, ("same", 16.0): {"feats": near}, ("worse", 16.0): {"feats": far}}
    ref["rfid"] = frechet_distance(real, near)
    for r, f in zip(rows, (near, far)):
        r["rfid"] = frechet_distance(real, f)
    assert _rfid_vs(per_image, rows[0], ref, table, 50) == "+0.0 [+0.0, +0.0]"  # the same decodes: no difference at all
    diff, lo, hi = (float(v.strip("[],")) for v in _rfid_vs(per_image, rows[1], ref, table, 50).split())
    assert 0 < lo <= diff <= hi  # worse decodes: an interval above 0
    assert _rfid_vs(per_image, ref, ref, table, 50) == "" and _rfid_vs(per_image, rows[1], ref, table, 0) == ""


def test_region_rfid_per_kind_shows_the_kind_a_map_costs():
    from types import SimpleNamespace

    from cat_tasks.reconstruction.regions import _rfid_kind_lines

    rng = np.random.default_rng(0)
    real = rng.normal(size=(60, 6))
    kinds = ["flat"] * 30 + ["text"] * 30
    near = real + 0.1 * rng.normal(size=real.shape)
    text_off = near.copy()
    text_off[30:] += 3.0  # a map that spoils the text images only
    table = SimpleNamespace(feats_orig=real, kinds=kinds)
    at_ref = [{"method": m, "budget": 16.0} for m in ("fixed 16x", "regions: x")]
    per_image = {("fixed 16x", 16.0): {"feats": near}, ("regions: x", 16.0): {"feats": text_off}}
    lines = _rfid_kind_lines(at_ref, at_ref[0], per_image, table, ["flat", "text"])
    row = next(line for line in lines if line.startswith("| regions: x"))
    flat, text = (float(c.split("(")[1].rstrip(") ")) for c in row.strip("| ").split(" | ")[1:])
    assert flat == 0.0 and text > 10  # (its difference from fixed 16x) per kind
    assert "flat 30, text 30" in "\n".join(lines)
    del per_image[("regions: x", 16.0)]["feats"]
    assert _rfid_kind_lines(at_ref, at_ref[0], per_image, table, ["flat", "text"]) == []  # no features: no table
