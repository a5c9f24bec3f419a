"""The block head: each 32-px block's error at every ratio from the trunk, the `head` region-map policy."""

from __future__ import annotations

import json

import numpy as np
import torch
from conftest import one_line_error
from PIL import Image

from cat_tokenizer.cli import tools
from cat_tokenizer.io import load_any_latent


def _patchwork(root, rng) -> None:
    """Two kinds x four sources x five 64x64 images; each 32-px block flat or noisy at random (the planted feature)."""
    for kind in ("icons", "photos"):
        for src in "abcd":
            for i in range(5):
                arr = np.full((64, 64, 3), rng.integers(40, 220, 3), np.float64)
                for by in range(2):
                    for bx in range(2):
                        if rng.random() < (0.3 if kind == "icons" else 0.7):
                            arr[32 * by : 32 * by + 32, 32 * bx : 32 * bx + 32] += rng.normal(0, 60, (32, 32, 3))
                p = root / kind / src / f"{i}.png"
                p.parent.mkdir(parents=True, exist_ok=True)
                Image.fromarray(np.clip(arr, 0, 255).astype(np.uint8)).save(p)


def _planted(x, recons, block):
    """Block error = the block's pixel variance times 1 / 4 / 16 at 8x / 16x / 32x (noise costs more when coarser)."""
    b = x.unfold(2, block, block).unfold(3, block, block)  # (B, 3, bh, bw, block, block)
    var = b.float().var(dim=(-2, -1)).mean(1)  # (B, bh, bw)
    return torch.stack([var * f * 100 for f in (1.0, 4.0, 16.0)], -1)


def test_the_block_head_learns_block_errors_and_encode_spends_tokens_where_it_predicts_them(tmp_path, tiny_vae, monkeypatch, capsys):
    import cat_tasks.distill.block_head as mod

    root = tmp_path / "data"
    _patchwork(root, np.random.default_rng(0))
    tiny_vae.save_pretrained(tmp_path / "tok")
    monkeypatch.setattr(mod, "block_distortion", _planted)
    out = tmp_path / "head"
    args = ["block-head", str(root), "--out", str(out), "--ckpt", str(tmp_path / "tok"), "--image-size", "64", "--crop", "resize",
            "--epochs", "150", "--batch-size", "16", "--dev", str(root), "--budget", "20", "--device", "cpu"]
    assert tools.main(args) == 0
    report = json.loads((out / "block_head.json").read_text())
    assert report["split"].startswith("by source") and report["held_out"] == 10  # one source of four per kind
    err = report["held_out_error"][0]["mae_16x"]
    assert err < 2.0, report["held_out_error"]  # dB; flat and noisy blocks differ by 10+ dB
    maps = {r["policy"]: r["all"] for r in report["dev_maps"]}
    assert maps["head"] > maps["fixed 16x"] and maps["head"] >= maps["oracle"] - 0.5, maps
    assert "## " in (out / "block_head.md").read_text()
    # encode with the head's map: noisy blocks get the smallest ratio
    img = next(p for p in sorted((root / "photos").rglob("*.png")))
    lat_dir = tmp_path / "lat"
    assert tools.main(["encode", str(img), "--ratio", "regions", "--region-map", "head", "--region-budget", "20",
                       "--ckpt", str(out), "--out", str(lat_dir), "--device", "cpu"]) == 0
    lat = load_any_latent(next(lat_dir.rglob("*.safetensors")))
    arr = np.asarray(Image.open(img), np.float64)
    noisy = np.array([[arr[32 * y : 32 * y + 32, 32 * x : 32 * x + 32].std() > 20 for x in range(2)] for y in range(2)])
    rmap = lat.tensors["ratio_map"].numpy()
    if noisy.any() and not noisy.all():
        assert rmap[noisy].min() <= rmap[~noisy].min(), (rmap, noisy)
    capsys.readouterr()
    assert tools.main(["encode", str(img), "--ratio", "regions", "--region-map", "head", "--region-budget", "20",
                       "--ckpt", str(tmp_path / "tok"), "--out", str(tmp_path / "x")]) == 2
    one_line_error(capsys, "no block head")


def test_a_standardised_block_head_round_trips_and_an_old_one_keeps_its_layer_norm(tmp_path, tiny_vae):
    from cat_tokenizer import NestedVAE
    from cat_tokenizer.regions.block_head import BlockHead

    torch.manual_seed(0)
    x = torch.rand(3, 3, 64, 64) * 2 - 1
    for norm in ("standard", "layer"):
        head = BlockHead(tiny_vae.trunk_channels(), tiny_vae.ratios, 32, hidden=8, image_size=64, norm=norm)
        vae = NestedVAE.from_config(tiny_vae.config).attach_block_head(head).eval()
        with torch.no_grad():
            feats = head.features(vae.trunk(x, 32))  # (B, 2, 2, D)
            head.fit_standardization(feats.flatten(0, 2) * 3 + 1)  # any statistics but the identity's
            torch.nn.init.normal_(head.out.weight)
            vae.save_pretrained(tmp_path / norm)
            cfg = json.loads((tmp_path / norm / "config.json").read_text())
            if norm == "layer":  # as the previous version wrote it: no norm key
                del cfg["block_head"]["norm"]
                (tmp_path / norm / "config.json").write_text(json.dumps(cfg))
            again = NestedVAE.from_pretrained(tmp_path / norm).eval()
            assert again.block_head.config["norm"] == norm
            assert torch.equal(again.block_head(again.trunk(x, 32)), head(vae.trunk(x, 32)))
    assert isinstance(again.block_head.mlp[0], torch.nn.LayerNorm)


def test_context_targets_teach_the_block_head_what_a_mixed_decode_costs(tmp_path, tiny_vae, monkeypatch):
    """--targets context: the head learns the larger of whole-image and Latin-map errors (here a planted 4x at 32x);
    the Latin-map decodes join a cache that has the rest (nothing else is measured again), and a whole-target run on
    that cache measures nothing."""
    import cat_tasks.distill.block_head as mod
    from cat_tokenizer import NestedVAE
    from cat_tokenizer.regions.maps import predicted_distortion

    root = tmp_path / "data"
    _patchwork(root, np.random.default_rng(1))
    tiny_vae.save_pretrained(tmp_path / "tok")
    calls = {"whole": 0, "context": 0}

    def whole_decodes(x, recons, block):
        calls["whole"] += 1
        return _planted(x, recons, block)

    def in_context(vae, x):
        calls["context"] += 1
        return (_planted(x, None, 32) * torch.tensor([1.0, 1.0, 4.0])).double()  # 32x costs 4x more beside other ratios

    monkeypatch.setattr(mod, "block_distortion", whole_decodes)
    monkeypatch.setattr(mod, "context_distortion", in_context)
    out = tmp_path / "head"
    args = ["block-head", str(root), "--out", str(out), "--ckpt", str(tmp_path / "tok"), "--image-size", "64", "--crop", "resize",
            "--epochs", "60", "--batch-size", "32", "--device", "cpu"]
    x = torch.stack([torch.from_numpy(np.asarray(Image.open(p), np.float32)).permute(2, 0, 1) / 127.5 - 1
                     for p in sorted(root.rglob("*.png"))[:20]])
    assert tools.main([*args, "--targets", "whole"]) == 0
    assert calls["whole"] and not calls["context"]
    whole = np.log10(predicted_distortion(NestedVAE.from_pretrained(out), x).numpy())
    measured = dict(calls)
    assert tools.main([*args, "--targets", "context"]) == 0
    assert calls["whole"] == measured["whole"] and calls["context"]  # only the Latin-map decodes were measured
    assert all("d_ctx" in np.load(c).files for c in (out / "block_cache").rglob("chunk_*.npz"))
    assert json.loads((out / "block_head.json").read_text())["config"]["targets"] == "context"
    ctx = np.log10(predicted_distortion(NestedVAE.from_pretrained(out), x).numpy())
    measured = dict(calls)
    assert tools.main([*args, "--targets", "whole"]) == 0
    assert calls == measured  # the cache held every measurement
    gap = (ctx - whole).mean((0, 1, 2))  # (R,): what the context head adds per ratio, in log10
    # planted: log10(4) = 0.6 at 32x on the noisy blocks (about half of them; flat ones sit at the floor), nothing at 8x
    assert gap[2] - gap[0] > 0.1 and abs(gap[0]) < 0.05, gap
