"""The region fill: a learned, one-pass fill of the latent cells a region latent does not send."""

from __future__ import annotations

import copy

import lightning as L
import pytest
import torch

from cat_tokenizer import CATDataModule, NestedVAE
from cat_tokenizer.errors import UserInputError
from cat_tokenizer.lit.region_fill import RegionFillModule
from cat_tokenizer.regions.fill import RegionFill
from cat_tokenizer.regions.maps import random_maps

RMAP = torch.tensor([[8, 16, 32], [32, 32, 16]])


@pytest.fixture
def images():
    torch.manual_seed(1)
    return torch.rand(2, 3, 64, 96) * 2 - 1


def _with_fill(vae: NestedVAE, trained: bool = True, adapter: bool = False) -> NestedVAE:
    out = copy.deepcopy(vae)
    fill = RegionFill(vae.latent_channels, vae.ratios, width=32, groups=8, merge_channels=vae.decoder.merge_channels() if adapter else 0)
    if trained:  # heads and the adapter's last conv start at zero (a fill that changes nothing): give them weights
        torch.manual_seed(3)
        for head in [*fill.heads.values(), *([fill.adapter[-1]] if adapter else [])]:
            torch.nn.init.normal_(head.weight, std=0.05)
    return out.attach_region_fill(fill)


@torch.no_grad()
def test_a_fill_changes_only_the_cells_not_sent_and_starts_as_the_first_pass(tiny_vae, images):
    lat = tiny_vae.encode_regions(images, RMAP)
    filled = _with_fill(tiny_vae).region_fill(lat)
    for r, g in filled.items():
        own = lat.mask(r, 32 // r).bool().expand_as(g)
        assert torch.equal(g[own], lat.grids[r][own])  # sent cells untouched
        assert not torch.allclose(g[~own], lat.filled(r)[~own])  # the rest predicted
    untrained = _with_fill(tiny_vae, trained=False)
    assert torch.equal(untrained.decode_regions(lat), tiny_vae.decode_regions(lat, refine=0))


@pytest.mark.parametrize("ratio", [8, 32])
@pytest.mark.parametrize("adapter", [False, True])
@torch.no_grad()
def test_with_a_fill_a_map_of_one_ratio_still_decodes_exactly_as_that_ratio(tiny_vae, images, ratio, adapter):
    vae = _with_fill(tiny_vae, adapter=adapter)
    got = vae.decode_regions(vae.encode_regions(images, torch.full((2, 3), ratio)))
    assert torch.equal(got, tiny_vae.decode(tiny_vae.encode(images, ratio).mode(), ratio))


@torch.no_grad()
def test_a_fill_saves_with_the_tokenizer_and_leaves_its_latent_fingerprint(tiny_vae, images, tmp_path):
    vae = _with_fill(tiny_vae)
    vae.save_pretrained(tmp_path / "tok")
    back = NestedVAE.from_pretrained(tmp_path / "tok")
    lat = vae.encode_regions(images, RMAP)
    assert torch.allclose(back.decode_regions(lat), vae.eval().decode_regions(lat), atol=1e-4)
    assert not torch.allclose(back.decode_regions(lat), back.decode_regions(lat, use_fill=False), atol=1e-3)
    assert back.fingerprint(with_head=False) == tiny_vae.fingerprint()  # latent files stay valid
    assert back.fingerprint() != tiny_vae.fingerprint()  # region decodes (and their caches) change


@torch.no_grad()
def test_the_merge_adapter_changes_mixed_decodes_only_through_the_merge(tiny_vae, images):
    plain, adapted = _with_fill(tiny_vae), _with_fill(tiny_vae, adapter=True)
    adapted.region_fill.load_state_dict(plain.region_fill.state_dict(), strict=False)  # the same fill, plus an adapter
    lat = tiny_vae.encode_regions(images, RMAP)
    assert not torch.allclose(adapted.decode_regions(lat), plain.decode_regions(lat), atol=1e-4)
    torch.nn.init.zeros_(adapted.region_fill.adapter[-1].weight)
    assert torch.allclose(adapted.decode_regions(lat), plain.decode_regions(lat), atol=1e-6)


def test_a_fill_for_another_tokenizer_is_refused_in_one_line(tiny_vae):
    with pytest.raises(UserInputError, match="does not fit this tokenizer"):
        tiny_vae.attach_region_fill(RegionFill(tiny_vae.latent_channels + 1, tiny_vae.ratios, width=32, groups=8))


def test_random_maps_are_seeded_and_range_from_one_ratio_to_mixtures():
    a = random_maps(64, (4, 4), [8, 16, 32], torch.Generator().manual_seed(0))
    b = random_maps(64, (4, 4), [8, 16, 32], torch.Generator().manual_seed(0))
    assert torch.equal(a, b) and a.shape == (64, 4, 4)
    kinds = torch.stack([(a == r).flatten(1).sum(1) for r in (8, 16, 32)], 1)  # (64, 3) blocks per ratio
    assert set(a.unique().tolist()) == {8, 16, 32}
    assert int(kinds.max()) >= 12 and int((kinds > 0).all(1).sum()) >= 32  # some near-uniform maps, many mixed


def test_training_the_fill_lowers_its_error_and_exports_a_tokenizer_that_uses_it(tiny_vae, image_folder, tmp_path):
    tiny_vae.save_pretrained(tmp_path / "tok")
    torch.manual_seed(0)
    module = RegionFillModule(str(tmp_path / "tok"), width=32, groups=8, latent_weight=1.0, pixel_weight=0.1, lr=3e-3,
                              warmup_steps=0, lr_schedule="constant", ema_decay=0.0)
    dm = CATDataModule(root=str(image_folder), image_size=64, batch_size=4, num_workers=0, val_fraction=0.3)
    dm.setup("fit")
    x = next(iter(dm.train_dataloader()))["image"]
    gen = lambda: torch.Generator().manual_seed(7)  # noqa: E731 - the same maps before and after

    def error() -> float:
        with torch.no_grad():
            return float(module.losses(module.fill, *module._latent(x, gen()))[0]["latent"])

    before = error()
    trainer = L.Trainer(accelerator="cpu", max_steps=40, default_root_dir=str(tmp_path / "run"), logger=False,
                        enable_progress_bar=False, enable_model_summary=False, limit_val_batches=1, enable_checkpointing=False)
    trainer.fit(module, datamodule=dm)
    assert error() < 0.8 * before
    assert {"val/psnr_fill", "val/psnr_first_pass", "val/psnr_true_latents"} <= set(trainer.callback_metrics)
    out = NestedVAE.from_pretrained(module.export_pretrained(tmp_path / "exported"))
    assert out.region_fill is not None and out.fingerprint(with_head=False) == tiny_vae.fingerprint()
    assert "vae.encoder.conv_in.weight" not in module.state_dict()  # checkpoints hold the fill, not the frozen tokenizer
    second = RegionFillModule(str(tmp_path / "tok"), width=32, groups=8, merge_adapter=True, ema_decay=0.0,
                              init_fill=str(tmp_path / "exported"))  # a second stage adds the adapter
    assert torch.equal(second.fill.heads["16"].weight, module.fill.heads["16"].weight)
    assert second.fill.adapter is not None


@torch.no_grad()
@pytest.mark.parametrize("merge", ["features", "pixels"])
def test_a_decoder_tail_starts_as_the_decoders_stages_and_only_mixed_maps_take_it(tiny_vae, images, tmp_path, merge):
    """Under either merge (the pixel merge: in each ratio's whole decode, the context pass's decodes included)."""
    from cat_tokenizer.models.decoder_tail import DecoderTail
    from cat_tokenizer.ratios import ratio_level

    plain = _with_fill(tiny_vae)
    plain.region_fill.config["merge"] = merge
    config = DecoderTail.config_for(tiny_vae.decoder, ratio_level(min(tiny_vae.ratios)))
    fill = RegionFill(tiny_vae.latent_channels, tiny_vae.ratios, width=32, groups=8, tail=config, merge=merge, context=(32,))
    fill.load_state_dict(plain.region_fill.state_dict(), strict=False)
    fill.tail.copy_from(tiny_vae.decoder)
    tailed = copy.deepcopy(tiny_vae).attach_region_fill(fill)
    lat = tiny_vae.encode_regions(images, RMAP)
    assert torch.allclose(tailed.decode_regions(lat), plain.decode_regions(lat, 1, refine_ratios=(32,)), atol=1e-5)  # a copy decodes as the original
    torch.nn.init.normal_(fill.tail.conv_out.weight, std=0.1)  # "fine-tuned"
    assert not torch.allclose(tailed.decode_regions(lat), plain.decode_regions(lat, 1, refine_ratios=(32,)), atol=1e-3)
    assert not torch.allclose(tailed.decode_regions(lat), tailed.decode_regions(lat, 0), atol=1e-3)  # the pass decodes with it too
    one = tiny_vae.encode_regions(images, torch.full((2, 3), 16))
    assert torch.equal(tailed.decode_regions(one), tiny_vae.decode(tiny_vae.encode(images, 16).mode(), 16))  # one ratio: untouched
    tailed.save_pretrained(tmp_path / "tok")
    back = NestedVAE.from_pretrained(tmp_path / "tok")
    assert back.region_fill.config["context"] == [32]  # the default decode's pass survives, and the weights:
    assert torch.allclose(back.decode_regions(lat, 0), tailed.decode_regions(lat, 0), atol=1e-4)
    with pytest.raises(UserInputError, match="decoder tail"):
        wrong = {**config, "channels": [c * 2 for c in config["channels"]]}
        copy.deepcopy(tiny_vae).attach_region_fill(RegionFill(tiny_vae.latent_channels, tiny_vae.ratios, width=32, groups=8, tail=wrong))


def test_the_tail_trains_at_its_own_learning_rate_from_a_fill_without_one(tiny_vae, tmp_path):
    tiny_vae.save_pretrained(tmp_path / "tok")
    first = RegionFillModule(str(tmp_path / "tok"), width=32, groups=8, ema_decay=0.0)
    first.export_pretrained(tmp_path / "exported")
    module = RegionFillModule(str(tmp_path / "tok"), width=32, groups=8, merge_adapter=True, tail=True, tail_lr_ratio=0.1, lr=1e-3,
                              ema_decay=0.0, init_fill=str(tmp_path / "exported"))
    assert torch.equal(module.fill.heads["16"].weight, first.fill.heads["16"].weight)
    assert torch.equal(module.fill.tail.conv_out.weight, module.vae.decoder.conv_out.weight)
    module.trainer = type("T", (), {})()
    opt = module.configure_optimizers()["optimizer"]
    assert [g["initial_lr"] for g in opt.param_groups] == [1e-3, pytest.approx(1e-4)]  # before the warm-up factor
    assert sum(p.numel() for p in opt.param_groups[1]["params"]) == sum(p.numel() for p in module.fill.tail.parameters())


def test_a_fill_trained_for_the_pixel_merge_decodes_that_way_by_default_and_starts_from_a_features_fill(tiny_vae, images, tmp_path):
    from cat_tokenizer.regions.latent import pixel_merge_decode

    tiny_vae.save_pretrained(tmp_path / "tok")
    adapted = _with_fill(tiny_vae, adapter=True)
    adapted.save_pretrained(tmp_path / "features")
    module = RegionFillModule(str(tmp_path / "tok"), width=32, groups=8, merge="pixels", ema_decay=0.0,
                              init_fill=str(tmp_path / "features"))  # the features fill's adapter is left behind
    assert torch.equal(module.fill.heads["16"].weight, adapted.region_fill.heads["16"].weight) and module.fill.adapter is None
    xp, lat, full = module._latent(images, torch.Generator().manual_seed(1))
    logs, y = module.losses(module.fill, xp, lat, full)
    with torch.no_grad():
        assert torch.allclose(y, pixel_merge_decode(module.vae, lat, module.fill(lat)), atol=1e-5)  # the loss sees the pixel merge
    logs["pixel"].backward()
    assert module.fill.heads["16"].weight.grad.abs().sum() > 0
    tailed = RegionFillModule(str(tmp_path / "tok"), width=32, groups=8, merge="pixels", tail=True, ema_decay=0.0)
    logs, y = tailed.losses(tailed.fill, xp, lat, full)
    logs["pixel"].backward()  # the pixel loss reaches the tail through each ratio's whole decode
    assert tailed.fill.tail.conv_out.weight.grad.abs().sum() > 0
    back = NestedVAE.from_pretrained(module.export_pretrained(tmp_path / "pixels"))
    assert back.region_fill.config["merge"] == "pixels"
    with torch.no_grad():
        lat = back.encode_regions(images, RMAP)
        assert torch.equal(back.decode_regions(lat), back.decode_regions(lat, merge="pixels"))
        assert not torch.allclose(back.decode_regions(lat), back.decode_regions(lat, merge="features"), atol=1e-3)
        assert torch.equal(adapted.decode_regions(lat), adapted.decode_regions(lat, merge="features"))  # a features fill: features
    with pytest.raises(UserInputError, match="merge='pixels' has none"):
        RegionFill(tiny_vae.latent_channels, tiny_vae.ratios, width=32, groups=8, merge_channels=8, merge="pixels")


def test_bench_regions_times_the_fill_under_each_merge_against_whole_decodes(tiny_vae, tmp_path):
    from cat_tasks.reconstruction.bench import bench_regions

    _with_fill(tiny_vae).save_pretrained(tmp_path / "tok")
    rows = {r["call"]: r for r in bench_regions(str(tmp_path / "tok"), size=64, batch=1, repeat=1)}
    assert {"decode 8x", "decode 16x", "decode_regions, region fill, features merge", "decode_regions, region fill, pixels merge"} <= set(rows)
    assert rows["decode 16x"]["cost_vs_16x"] == 1.0 and rows["decode 8x"]["tokens"] == 64
    assert rows["decode_regions, region fill, pixels merge"]["tokens"] == rows["decode_regions, refine 0"]["tokens"]
    assert rows["decode_regions, region fill + 1 context pass, pixels merge"]["tokens"] == rows["decode_regions, refine 0"]["tokens"]
    from cat_tokenizer.cli import tools

    report = tmp_path / "docs" / "bench-regions.md"
    assert tools.main(["bench-regions", "--ckpt", str(tmp_path / "tok"), "--size", "64", "--batch", "1", "--repeat", "1",
                       "--out", str(report)]) == 0
    text = report.read_text()
    assert text.startswith("# Region decode cost") and "| decode_regions, region fill, pixels merge | " in text


@torch.no_grad()
def test_region_decodes_compares_every_fill_and_both_bounds_under_one_budget(tiny_vae, images):
    from cat_tasks.reconstruction.regions import region_decodes

    vae = _with_fill(tiny_vae).eval()
    rows = {r["variant"]: r for r in region_decodes(vae, images, ["a", "b"], budget=24.0)}
    assert {"fixed 16x", "region fill", "region fill, each ratio decoded whole, blended", "true full latents (bound)",
            "true full latents, each ratio decoded whole, blended (bound)", "pasted blocks (estimate)"} <= set(rows)
    one_block = 16  # an 8x block's tokens: the budget is met within one block's worth
    assert all(r["tokens"] <= 24.0 + one_block for r in rows.values())
    assert all(set(r) >= {"psnr", "seams", "a", "b"} for r in rows.values())
    # the pixel-merge bound differs from the one-pass bound: each ratio is decoded whole
    assert rows["true full latents, each ratio decoded whole, blended (bound)"]["psnr"] != rows["true full latents (bound)"]["psnr"]


def test_a_deeper_fill_grows_from_a_shallower_one_and_starts_by_filling_as_it_did(tiny_vae, images, tmp_path):
    tiny_vae.save_pretrained(tmp_path / "tok")
    shallow = _with_fill(tiny_vae)
    torch.manual_seed(5)
    for p in shallow.region_fill.mid.parameters():  # a trained mid block, not the default init
        p.data.add_(0.05 * torch.randn_like(p))
    shallow.save_pretrained(tmp_path / "shallow")
    deep = RegionFillModule(str(tmp_path / "tok"), width=32, groups=8, layers=3, ema_decay=0.0, init_fill=str(tmp_path / "shallow"))
    assert len(deep.fill.mid.attentions) == 3
    lat = tiny_vae.encode_regions(images, RMAP)
    with torch.no_grad():
        want, got = shallow.region_fill(lat), deep.fill(lat)
    assert all(torch.allclose(got[r], want[r], atol=1e-5) for r in want)  # the new layers start as the identity
    assert deep.fill.mid.resnets[3].conv2.weight.abs().sum() == 0 and deep.fill.mid.resnets[1].conv2.weight.abs().sum() > 0
    with pytest.raises(UserInputError, match="is not this run's"):  # another width cannot start from it
        RegionFillModule(str(tmp_path / "tok"), width=64, groups=8, ema_decay=0.0, init_fill=str(tmp_path / "shallow"))


@torch.no_grad()
def test_a_fills_context_grids_make_one_pass_on_them_the_default_decode_and_save_with_it(tiny_vae, images, tmp_path, capsys):
    """A fill that names context grids (cat-small: the 32x grid) makes one context pass on them ``decode_regions``'
    default; explicit arguments still win, a map of one ratio still decodes as that ratio, the setting saves with
    the tokenizer, ``export --region-context`` sets or clears it, and ``rd --regions`` takes it unless told otherwise."""
    from conftest import one_line_error

    from cat_tasks.reconstruction.rd import RDOptions, _region_decode
    from cat_tokenizer.cli import tools

    vae = _with_fill(tiny_vae).eval()
    lat = vae.encode_regions(images, RMAP)
    plain = vae.decode_regions(lat)
    assert torch.equal(plain, vae.decode_regions(lat, 0)) and _region_decode(vae, RDOptions()).context == ()
    vae.set_region_context([32])
    assert vae.config.region_fill["context"] == [32]
    got = vae.decode_regions(lat)
    assert torch.equal(got, vae.decode_regions(lat, 1, refine_ratios=(32,))) and not torch.allclose(got, plain, atol=1e-4)
    assert torch.equal(vae.decode_regions(lat, 0), plain)  # refine=0: no pass
    assert not torch.allclose(vae.decode_regions(lat, 1, refine_ratios=(8, 16, 32)), got, atol=1e-4)  # every grid: another pass
    assert torch.equal(vae.decode_regions(lat, use_fill=False), vae.decode_regions(lat, 2, use_fill=False, refine_ratios=(8, 16, 32)))  # no fill, no context
    one = vae.encode_regions(images, torch.full((2, 3), 32))
    assert torch.equal(vae.decode_regions(one), vae.decode(vae.encode(images, 32).mode(), 32))
    assert _region_decode(vae, RDOptions()).context == (32,) and _region_decode(vae, RDOptions(region_context="none")).context == ()

    vae.save_pretrained(tmp_path / "tok")
    assert torch.allclose(NestedVAE.from_pretrained(tmp_path / "tok").decode_regions(lat), got, atol=1e-4)
    assert tools.main(["export", "--ckpt", str(tmp_path / "tok"), "--out", str(tmp_path / "none"), "--region-context", "none"]) == 0
    cleared = NestedVAE.from_pretrained(tmp_path / "none")
    assert cleared.region_fill.config["context"] == [] and torch.allclose(cleared.decode_regions(lat), plain, atol=1e-4)
    capsys.readouterr()
    assert tools.main(["export", "--ckpt", str(tmp_path / "tok"), "--out", str(tmp_path / "bad"), "--region-context", "64"]) != 0
    one_line_error(capsys, "region context: 64 is not a ratio")
    with pytest.raises(UserInputError, match="no region fill"):
        copy.deepcopy(tiny_vae).set_region_context([32])
    with pytest.raises(UserInputError, match="context ratio 64"):
        RegionFill(tiny_vae.latent_channels, tiny_vae.ratios, width=32, groups=8, context=(64,))
