"""DiT + CAT (issue 4): the network, the diffusion wrapper, the latent cache, training, sampling, CLIs."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import write_images
from safetensors.torch import load_file

from cat_tasks.generation import Diffusion, DiT, DiTModule, LatentDataModule, load_dit
from cat_tasks.generation.bench import BenchGenOptions, bench_gen, padded_forward, patchify
from cat_tasks.generation.dit import sincos_pos_embed_2d
from cat_tasks.generation.fid import fid_from_folders, precision_recall
from cat_tokenizer import NestedVAE
from cat_tokenizer.cli import lightning_main, tools
from cat_tokenizer.data.images import load_rgb
from cat_tokenizer.data.latent_cache import LatentCache, LatentEntry
from cat_tokenizer.data.transforms import image_transform
from cat_tokenizer.errors import InputNotFound, UserInputError
from cat_tokenizer.io import load_latent
from cat_tokenizer.ratios import RatioAssignment

ROOT = Path(__file__).parents[1]
RATIOS_BY_FILE = {"class0/img0.png": 8, "class1/img1.png": 16, "class0/img2.png": 32,
                  "class1/img3.png": 8, "class0/img4.png": 16, "class1/img5.png": 32}


def tiny_dit(**kw) -> DiT:
    torch.manual_seed(0)
    return DiT(**{"preset": "tiny", "in_channels": 4, "num_classes": 2, **kw})


def randomise(net: torch.nn.Module) -> torch.nn.Module:
    """Leave DiT's zero init (whose output is 0 whatever the input) for a generic network."""
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for p in net.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.05)
    return net


# ---------------------------------------------------------------------- the network
def test_forward_shapes_every_ratio():
    dit = randomise(tiny_dit())
    for ratio, side in [(8, 8), (16, 4), (32, 2)]:  # a 64px image
        x = torch.randn(3, 4, side, side)
        out = dit(x, torch.tensor([0, 500, 999]), ratio, torch.tensor([0, 1, 2]))  # 2 = the null label
        assert out.shape == x.shape and torch.isfinite(out).all()
    with pytest.raises(UserInputError, match="not divisible by the patch size"):
        dit(torch.randn(1, 4, 3, 3), torch.tensor([1]), 8, torch.tensor([0]))
    with pytest.raises(UserInputError, match="class labels must be in"):
        dit(torch.randn(1, 4, 4, 4), torch.tensor([1]), 8, torch.tensor([7]))


def test_presets_match_dit_sizes():
    # DiT paper: S/2 33M, B/2 130M, L/2 458M, XL/2 675M parameters (+ our ratio embedding)
    expected = {"S/2": 33, "B/2": 130, "L/2": 458, "XL/2": 675}
    for name, millions in expected.items():
        with torch.device("meta"):  # shapes only: no memory, no init time
            n = DiT(preset=name, in_channels=4, num_classes=1000).num_params() / 1e6
        assert abs(n - millions) / millions < 0.01, (name, n)


def _mae_reference(dim: int, h: int, w: int) -> np.ndarray:
    """MAE / DiT's numpy construction, written out independently (columns first, then rows)."""
    def one_d(d, pos):
        omega = 1.0 / 10000 ** (np.arange(d // 2, dtype=np.float64) / (d / 2.0))
        out = np.einsum("m,d->md", pos.reshape(-1), omega)
        return np.concatenate([np.sin(out), np.cos(out)], axis=1)

    gw, gh = np.meshgrid(np.arange(w, dtype=np.float64), np.arange(h, dtype=np.float64))
    return np.concatenate([one_d(dim // 2, gw), one_d(dim // 2, gh)], axis=1)


def test_position_embeddings_match_each_grid():
    for h, w in [(4, 4), (2, 2), (1, 1), (2, 3)]:
        ours = sincos_pos_embed_2d(64, h, w).numpy()
        np.testing.assert_allclose(ours, _mae_reference(64, h, w), atol=1e-6)
    dit = tiny_dit()
    for side in (8, 4, 2):  # each ratio's grid gets its own table, cached per grid
        tokens, grid = dit.tokens(torch.zeros(1, 4, side, side))
        assert grid == (side // 2, side // 2) and tokens.shape[1] == (side // 2) ** 2
        assert torch.allclose(dit.pos_embed(*grid, torch.device("cpu"))[0], sincos_pos_embed_2d(64, *grid))


def test_ratio_embedding_changes_the_output():
    dit = randomise(tiny_dit())
    x, t, y = torch.randn(2, 4, 4, 4), torch.tensor([100, 700]), torch.tensor([0, 1])
    outs = {r: dit(x, t, r, y) for r in (8, 16, 32)}  # same grid, only the ratio embedding differs
    assert not torch.allclose(outs[8], outs[16], atol=1e-4)
    assert not torch.allclose(outs[16], outs[32], atol=1e-4)
    with pytest.raises(UserInputError, match="no embedding for ratio 4"):
        dit(x, t, 4, y)


def test_padded_mixed_batch_equals_separate_forwards():
    dit = randomise(tiny_dit())
    xs = [torch.randn(4, 8, 8), torch.randn(4, 4, 4), torch.randn(4, 2, 2)]
    t, y, ratios = torch.tensor([10, 500, 900]), torch.tensor([0, 1, 2]), [8, 16, 32]
    out, valid = padded_forward(dit, xs, t, ratios, y)
    assert valid.sum(1).tolist() == [16, 4, 1]
    for i, x in enumerate(xs):
        ref = patchify(dit(x[None], t[i : i + 1], ratios[i], y[i : i + 1]), 2)[0]
        torch.testing.assert_close(out[i, : len(ref)], ref, atol=1e-5, rtol=1e-4)


# ---------------------------------------------------------------------- diffusion
@pytest.mark.parametrize("prediction_type", ["epsilon", "v_prediction"])
def test_training_steps_lower_the_loss_on_a_fixed_batch(prediction_type):
    dit, diff = tiny_dit(), Diffusion(prediction_type=prediction_type)
    g = torch.Generator().manual_seed(0)
    x0, noise = torch.randn(8, 4, 4, 4, generator=g), torch.randn(8, 4, 4, 4, generator=g)
    t, y = torch.randint(0, 1000, (8,), generator=g), torch.tensor([0, 1] * 4)
    opt = torch.optim.AdamW(dit.parameters(), lr=3e-3)
    losses = []
    for _ in range(25):
        loss = diff.training_loss(lambda x, tt: dit(x, tt, 16, y), x0, t, noise).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(float(loss))
    assert losses[-1] < 0.7 * losses[0], losses


def test_diffusion_config_errors():
    with pytest.raises(UserInputError, match="prediction_type"):
        Diffusion(prediction_type="x0")
    with pytest.raises(UserInputError, match="sampler"):
        Diffusion(sampler="euler-magic")
    for name in ("ddim", "dpm", "ddpm"):
        sched = Diffusion(sampler=name).sample_scheduler()
        assert sched.config.num_train_timesteps == 1000


# ---------------------------------------------------------------------- latent cache (Lightning predict)
@pytest.fixture(scope="module")
def encoded(tmp_path_factory):
    """A tiny tokenizer, 6 labelled images with per-image ratios, and their latent cache written by
    ``lightning predict -c configs/dit_encode.yaml`` (the real config)."""
    base = tmp_path_factory.mktemp("gen")
    images = base / "images"
    write_images(images, n=6, size=64)
    torch.manual_seed(0)
    NestedVAE.from_preset("tiny").save_pretrained(base / "vae")
    ratios_csv = base / "ratios.csv"
    ratios_csv.write_text("path,ratio\n" + "".join(f"{k},{v}\n" for k, v in RATIOS_BY_FILE.items()))
    cache = base / "latents"
    rc = _encode(images, base / "vae", cache, f"csv:{ratios_csv}")
    assert rc == 0
    return {"base": base, "images": images, "vae": base / "vae", "cache": cache, "csv": ratios_csv}


def _encode(images: Path, vae: Path, cache: Path, assignment: str, extra: list[str] = ()) -> int:
    return lightning_main.main([
        "predict", "-c", str(ROOT / "configs" / "dit_encode.yaml"), "--trainer.accelerator", "cpu",
        "--trainer.default_root_dir", str(cache.parent),
        "--model.tokenizer", str(vae), "--model.cache_dir", str(cache), "--data.skip_encoded", str(cache),
        "--data.root", str(images), "--data.image_size", "64", "--data.num_workers", "0", "--data.val_batch_size", "4",
        "--data.ratio_assignment", assignment, *extra,
    ])


def test_latent_cache_round_trip(encoded):
    cache = LatentCache(encoded["cache"])
    entries = {e.key: e for e in cache.entries()}
    assert {k: e.ratio for k, e in entries.items()} == RATIOS_BY_FILE
    assert cache.meta()["classes"] == ["class0", "class1"] and cache.meta()["image_size"] == 64
    vae = NestedVAE.from_pretrained(encoded["vae"])
    for key, e in entries.items():
        assert e.label == int(key[5]) and e.mode == "adaptive"
        x = image_transform(64, train=False)(load_rgb(encoded["images"] / key))[None]
        expected = vae.encode(x, e.ratio).mode()[0]
        stored = load_file(str(cache.root / e.file))["latent"]
        torch.testing.assert_close(stored, expected, atol=1e-5, rtol=1e-4)


def test_latent_cache_resumes_after_a_kill(encoded, tmp_path, caplog, capsys):
    cache_dir = tmp_path / "latents"
    import shutil

    shutil.copytree(encoded["cache"], cache_dir)
    index = next((cache_dir / "index").glob("*.jsonl"))
    lines = index.read_text().splitlines()
    index.write_text("\n".join(lines[:4]) + "\n" + lines[4][:10])  # killed while writing line 5: torn line
    assert len(LatentCache(cache_dir).entries()) == 4
    caplog.set_level("INFO")
    assert _encode(encoded["images"], encoded["vae"], cache_dir, f"csv:{encoded['csv']}") == 0
    assert "4 of 6 images already encoded, 2 to go" in caplog.text
    assert len(LatentCache(cache_dir).entries()) == 6
    # another tokenizer into the same folder: refused
    torch.manual_seed(5)
    NestedVAE.from_preset("tiny").save_pretrained(tmp_path / "other_vae")
    rc = _encode(encoded["images"], tmp_path / "other_vae", cache_dir, "fixed:16")
    assert rc == 2 and "use another cache folder" in capsys.readouterr().err
    # ... also when every image is already encoded (nothing to predict: Lightning skips the predict hooks)
    rc = _encode(encoded["images"], tmp_path / "other_vae", cache_dir, f"csv:{encoded['csv']}")
    assert rc == 2 and "use another cache folder" in capsys.readouterr().err
    assert _encode(encoded["images"], encoded["vae"], cache_dir, f"csv:{encoded['csv']}") == 0  # same weights: done


def test_flip_augmentation_in_the_cache(encoded, tmp_path, capsys):
    cache = tmp_path / "latents"
    assert _encode(encoded["images"], encoded["vae"], cache, "fixed:16", ["--model.flip", "true"]) == 0
    vae = NestedVAE.from_pretrained(encoded["vae"])
    e = next(e for e in LatentCache(cache).entries() if e.key == "class0/img0.png")
    x = image_transform(64, train=False)(load_rgb(encoded["images"] / e.key))[None]
    stored = load_file(str(cache / e.file))
    torch.testing.assert_close(stored["latent_flip"], vae.encode(x.flip(-1), 16).mode()[0], atol=1e-5, rtol=1e-4)
    assert not torch.allclose(stored["latent_flip"], stored["latent"])
    lat = load_latent(cache / e.file)  # the cache's files are ordinary latent files: `cat-tokenizer decode` reads them
    assert (lat.ratio, lat.height, lat.width, lat.source) == (16, 64, 64, e.key)
    dm = LatentDataModule(str(cache), "fixed:16", batch_size=2, num_workers=0, val_fraction=0.0)
    dm.setup("fit")
    i = next(k for k, en in enumerate(dm.train_set.entries) if en.key == e.key)
    draws = {float(dm.train_set[i]["latent"].sum()) for _ in range(30)}
    assert len(draws) == 2  # training draws both orientations
    # latents without flips into a cache of flips: refused
    assert _encode(encoded["images"], encoded["vae"], cache, f"csv:{encoded['csv']}") == 2
    assert "(flips: True" in capsys.readouterr().err


def test_latent_datamodule_ratio_modes(encoded):
    dm = LatentDataModule(str(encoded["cache"]), batch_size=2, num_workers=0, val_fraction=0.0)  # adaptive by default
    dm.setup("fit")
    batches = list(dm.train_dataloader())
    assert sum(len(b["index"]) for b in batches) == 6
    for b in batches:  # one ratio per batch, the latent grid matching it
        assert b["latent"].shape[-1] == 64 // b["ratio"] and set(b["label"].tolist()) <= {0, 1}
    dm = LatentDataModule(str(encoded["cache"]), RatioAssignment("fixed", ratio=8), batch_size=2, num_workers=0, val_fraction=0.0)
    dm.setup("fit")  # fixed:8 takes every latent at 8x (here the adaptive ones)
    assert sorted(e.key for e in dm.train_set.entries) == ["class0/img0.png", "class1/img3.png"]
    with pytest.raises(InputNotFound, match="latent cache not found"):
        LatentDataModule(str(encoded["base"] / "nope"))
    with pytest.raises(UserInputError, match="not uniform"):
        LatentDataModule(str(encoded["cache"]), "uniform")


def test_latent_cache_select_errors(tmp_path):
    adaptive, fixed16 = RatioAssignment.parse("adaptive"), RatioAssignment.parse("fixed:16")
    cache = LatentCache(tmp_path)
    with pytest.raises(InputNotFound, match="empty or missing"):
        cache.select(adaptive)
    cache.append(cache.index_file("run", 0), [LatentEntry(key="a.png", ratio=16, mode="fixed:16", file="16x/a.safetensors")])
    with pytest.raises(InputNotFound, match="no latents for adaptive"):
        cache.select(adaptive)
    assert [e.key for e in cache.select(fixed16)] == ["a.png"]
    index = cache.index_file("run", 0)
    index.write_text(index.read_text() + '{"key": "b.p')  # killed mid-line
    cache.append(index, [LatentEntry(key="c.png", ratio=16, mode="fixed:16", file="16x/c.safetensors")])
    assert [e.key for e in cache.select(fixed16)] == ["a.png", "c.png"]  # the torn line skipped, the new one kept
    cache.append(index, [LatentEntry(key="d.png", ratio=16, mode="adaptive", file="16x/d.safetensors"),
                         LatentEntry(key="e.png", ratio=8, mode="adaptive", file="8x/e.safetensors")])
    assert cache.done_keys(fixed16) == {"a.png", "c.png", "d.png"}  # adaptive latents at 16x need no re-encode
    assert cache.done_keys(RatioAssignment.parse("csv:x.csv")) == {"d.png", "e.png"}  # csv ratios are adaptive runs too
    with pytest.raises(UserInputError, match="ratio assignment must be"):
        RatioAssignment.parse("fixed:big")


# ---------------------------------------------------------------------- training, sampling, CLIs
def _fit(encoded, out: Path, extra: list[str]) -> int:
    return lightning_main.main([
        "fit", "-c", str(ROOT / "configs" / "dit_imagenet.yaml"), "--trainer.accelerator", "cpu",
        "--trainer.default_root_dir", str(out), "--data.cache_dir", str(encoded["cache"]), "--data.batch_size", "2",
        "--data.num_workers", "0", "--data.val_fraction", "0.3", "--model.dit.init_args.preset", "tiny",
        "--model.dit.init_args.in_channels", "4", "--model.dit.init_args.num_classes", "2",
        "--model.tokenizer", str(encoded["vae"]), "--model.diffusion.init_args.sample_steps", "3",
        "--model.grid_images", "2", *extra,
    ])


def test_lightning_fit_fast_dev_run(encoded, tmp_path):
    assert _fit(encoded, tmp_path, ["--trainer.fast_dev_run", "true"]) == 0


@pytest.fixture(scope="module")
def trained(encoded, tmp_path_factory):
    out = tmp_path_factory.mktemp("dit_run")
    assert _fit(encoded, out, ["--trainer.max_steps", "6", "--trainer.val_check_interval", "3",
                               "--trainer.log_every_n_steps", "1"]) == 0
    ckpt = next(out.rglob("last.ckpt"))
    return {"ckpt": ckpt, "out": out}


def test_checkpoint_holds_ema_scales_and_sample_grids(trained):
    module = load_dit(trained["ckpt"])
    assert module.trained_ratios == [8, 16, 32] and (module.latent_scale > 0).all()
    assert module.image_size == 64 and module.classes == ["class0", "class1"]
    state = torch.load(trained["ckpt"], map_location="cpu", weights_only=True)["state_dict"]
    assert any(k.startswith("ema.module.") for k in state) and not any(k.startswith("vae.") for k in state)
    assert sorted(p.name.split("_step")[0] for p in trained["out"].rglob("samples_*x_step0000006.png")) == \
        ["samples_16x", "samples_32x", "samples_8x"]


def test_latent_scales_bring_the_cached_latents_to_unit_std(trained, encoded):
    """The DiT trains on latent * scale; on the latents it was measured on, that has std 1 (within 5%)."""
    from cat_tokenizer.io import load_latent

    module = load_dit(trained["ckpt"])
    by_ratio: dict[int, list[torch.Tensor]] = {}
    for f in encoded["cache"].rglob("*.safetensors"):
        lat = load_latent(f)
        by_ratio.setdefault(lat.ratio, []).append(lat.latent.flatten())
    assert sorted(by_ratio) == [8, 16, 32]
    for r, zs in by_ratio.items():
        scaled = torch.cat(zs) * float(module.latent_scale[module.dit.ratio_index(r)])
        assert scaled.std().item() == pytest.approx(1.0, rel=0.05), r


def test_sampling_returns_the_right_size_for_each_ratio(trained):
    module = load_dit(trained["ckpt"])
    for r in (8, 16, 32):
        z = module.sample_latents(2, r, torch.tensor([0, 1]), steps=2, sampler="dpm")
        assert z.shape == (2, 4, 64 // r, 64 // r)
        assert module.decode(z, r).shape == (2, 3, 64, 64)
    a = module.sample_latents(1, 16, torch.tensor([1]), steps=2, seed=3)
    b = module.sample_latents(1, 16, torch.tensor([1]), steps=2, seed=3)
    torch.testing.assert_close(a, b)  # seeded


def test_sample_cli_fixed_and_auto(trained, tmp_path, capsys):
    out = tmp_path / "s"
    rc = tools.main(["sample", "--ckpt", str(trained["ckpt"]), "--class-label", "1", "--ratio", "32", "--n", "3",
                     "--out", str(out), "--steps", "2"])
    assert rc == 0 and "32x: 3" in capsys.readouterr().out
    assert sorted(p.name for p in out.glob("*.png")) == ["000000.png", "000001.png", "000002.png", "grid.png"]
    rc = tools.main(["sample", "--ckpt", str(trained["ckpt"]), "--class-label", "0", "--ratio", "auto", "--n", "1",
                     "--prompt", "a dense page of small printed text", "--out", str(tmp_path / "a"), "--steps", "2"])
    assert rc == 0 and "8x: 1" in capsys.readouterr().out  # the rubric reads "text" -> 8x


@pytest.mark.parametrize("args, message", [
    (["--class-label", "5", "--ratio", "16"], "out of range"),
    (["--class-label", "0", "--ratio", "16", "--guidance", "0.5"], "guidance scale must be >= 1"),
    (["--class-label", "0", "--ratio", "12"], "--ratio must be auto or one of"),
    (["--ratio", "16"], "class-conditional: give --class-label"),
])
def test_sample_cli_bad_input(trained, tmp_path, capsys, args, message):
    rc = tools.main(["sample", "--ckpt", str(trained["ckpt"]), "--n", "1", "--out", str(tmp_path), "--steps", "1", *args])
    err = capsys.readouterr().err
    assert rc == 2 and message in err and "Traceback" not in err


def test_untrained_ratio_and_huge_cpu_preset_are_refused(trained):
    module = load_dit(trained["ckpt"])
    module.latent_scale[0] = 0  # as if never trained on 8x
    with pytest.raises(UserInputError, match="not trained on ratio 8x"):
        module.sample_latents(1, 8, torch.tensor([0]))
    from cat_tasks.generation.sample import check_device_fits

    with torch.device("meta"):
        big = DiTModule(DiT(preset="L/2", in_channels=4, num_classes=10), ema_decay=0)
    with pytest.raises(UserInputError, match="--allow-slow-cpu"):
        check_device_fits(big, "cpu", allow_slow=False)
    check_device_fits(big, "cpu", allow_slow=True)


def test_fid_cli_against_folder_and_saved_stats(trained, encoded, tmp_path, capsys):
    ref = tmp_path / "ref"
    write_images(ref, n=8, size=64, seed=3)
    out = tmp_path / "fid"
    args = ["fid", "--ckpt", str(trained["ckpt"]), "--ratio", "16", "--n", "6", "--steps", "1", "--batch-size", "6"]
    assert tools.main([*args, "--ref", str(ref), "--out", str(out), "--save-ref-stats", str(tmp_path / "ref.npz")]) == 0
    res = json.loads((out / "fid.json").read_text())
    assert math.isfinite(res["fid"]) and res["n_generated"] == 6 and res["n_reference"] == 8
    assert 0 <= res["precision"] <= 1 and 0 <= res["recall"] <= 1 and res["inception_score"] is None
    # the same samples (kept in out/samples) against the saved statistics give the same FID
    assert tools.main([*args, "--ref", str(tmp_path / "ref.npz"), "--out", str(out)]) == 0
    res2 = json.loads((out / "fid.json").read_text())
    assert res2["fid"] == pytest.approx(res["fid"], rel=1e-3, abs=1e-2)
    assert "6 generated vs 8 reference" in capsys.readouterr().out


def test_fid_of_a_folder_against_itself_is_zero(tmp_path):
    ref = tmp_path / "ref"
    write_images(ref, n=8, size=64, seed=4)
    res = fid_from_folders(ref, ref, image_size=64, batch_size=8)
    assert abs(res["fid"]) < 1e-2 and res["precision"] == 1.0 and res["recall"] == 1.0


@pytest.mark.slow
def test_fid_tells_a_set_from_its_blurred_copies_and_grows_with_blur(tmp_path):
    """FID reads the images: against blurred copies of itself a set scores above 0, more with more blur."""
    from PIL import Image, ImageFilter

    ref = tmp_path / "ref"
    write_images(ref, n=8, size=64, seed=4)
    fids = []
    for radius in (1, 3):
        blurred = tmp_path / f"blur{radius}"
        for p in sorted(ref.rglob("*.png")):
            q = blurred / p.relative_to(ref)
            q.parent.mkdir(parents=True, exist_ok=True)
            Image.open(p).filter(ImageFilter.GaussianBlur(radius)).save(q)
        fids.append(fid_from_folders(blurred, ref, image_size=64, batch_size=8)["fid"])
    assert 1.0 < fids[0] < fids[1], fids


def test_precision_recall_on_known_sets():
    g = torch.Generator().manual_seed(0)
    real = torch.randn(200, 8, generator=g)
    assert precision_recall(real, real.clone())[0] == 1.0
    far = torch.randn(200, 8, generator=g) + 50.0  # nothing near the real manifold
    assert precision_recall(real, far) == (0.0, 0.0)


def test_text_conditioning_with_captions_and_a_tiny_encoder(encoded, tmp_path, capsys):
    """Captions go into the cache at encode time (all of them, embedded once by the frozen text
    encoder; training draws one), and a DiT conditioned on that encoder trains and samples."""
    from tiny_hf import tiny_bert

    from cat_tokenizer.complexity.text_student import TextEmbedder

    encoder = tiny_bert(tmp_path / "bert")
    caps = tmp_path / "captions.csv"
    caps.write_text("path,caption\nclass0/img0.png,a red square\nclass0/img0.png,a square in red\n"
                    + "".join(f"{k},a picture\n" for k in RATIOS_BY_FILE if k != "class0/img0.png"))
    cache = tmp_path / "latents"
    assert _encode(encoded["images"], encoded["vae"], cache, "fixed:16",
                   ["--data.captions", str(caps), "--model.text_encoder", str(encoder)]) == 0
    entry = next(e for e in LatentCache(cache).entries() if e.key == "class0/img0.png")
    assert entry.captions == ["a red square", "a square in red"]
    embedder = TextEmbedder(str(encoder), device="cpu")
    torch.testing.assert_close(load_file(str(cache / entry.file))["text_emb"], embedder(entry.captions), atol=1e-5, rtol=1e-4)
    dm = LatentDataModule(str(cache), "fixed:16", batch_size=2, num_workers=0, val_fraction=0.0)
    dm.setup("fit")
    i = next(k for k, e in enumerate(dm.train_set.entries) if e.key == "class0/img0.png")
    items = [dm.train_set[i] for _ in range(30)]
    draws = {it["caption"]: it["text_emb"] for it in items}
    assert set(draws) == {"a red square", "a square in red"}
    for caption, emb in draws.items():  # each drawn caption comes with its own embedding
        torch.testing.assert_close(emb, embedder([caption])[0], atol=1e-5, rtol=1e-4)

    dim = embedder.dim
    module = DiTModule(tiny_dit(num_classes=0, text_dim=dim), tokenizer=str(encoded["vae"]), text_encoder=str(encoder),
                       ema_decay=0)
    module.latent_scale.fill_(1.0)
    batch = next(iter(dm.train_dataloader()))
    loss = module._loss(batch, module.dit, drop=0.5)
    assert loss.shape == (2,) and torch.isfinite(loss).all() and batch["text_emb"].shape == (2, dim)
    assert "text" not in module._frozen  # training read the cached embeddings; the encoder was never loaded
    z = module.sample_latents(2, 16, texts=["a cat", "a chart"], steps=2, image_size=64)  # sampling embeds prompts
    assert z.shape == (2, 4, 4, 4)
    other = tiny_bert(tmp_path / "other_bert")  # a different encoder than the cache's embeddings: refused
    rc = lightning_main.main([
        "fit", "-c", str(ROOT / "configs" / "dit_imagenet.yaml"), "--trainer.accelerator", "cpu", "--trainer.fast_dev_run",
        "true", "--trainer.default_root_dir", str(tmp_path), "--data.cache_dir", str(cache), "--data.num_workers", "0",
        "--model.dit.init_args.preset", "tiny", "--model.dit.init_args.in_channels", "4", "--model.dit.init_args.num_classes",
        "0", "--model.dit.init_args.text_dim", str(dim), "--model.text_encoder", str(other), "--data.ratio_mode", "fixed:16"])
    assert rc == 2 and "holds caption embeddings of" in capsys.readouterr().err


def test_make_gen_imagenet_needs_the_folder():
    import shutil
    import subprocess

    if shutil.which("make") is None:
        pytest.skip("no make")
    # -o: never (re)install from inside a test; with a stale stamp and this PATH, make would rebuild .venv with
    # another Python under the running suite
    res = subprocess.run(["make", "-s", "-o", "install", "-o", ".venv/.installed", "gen-imagenet"], cwd=ROOT, capture_output=True,
                         text=True, env={"PATH": "/usr/bin:/bin"})
    assert res.returncode != 0 and "set IMAGENET_DIR=" in res.stdout + res.stderr


def test_fit_without_a_latent_cache_is_one_line(tmp_path, capsys):
    rc = lightning_main.main(["fit", "-c", str(ROOT / "configs" / "dit_imagenet.yaml"), "--trainer.accelerator", "cpu",
                              "--data.cache_dir", str(tmp_path / "none"), "--model.dit.init_args.preset", "tiny"])
    err = capsys.readouterr().err
    assert rc == 2 and "latent cache not found" in err and "Traceback" not in err


def test_bench_gen_variants():
    rows = bench_gen(BenchGenOptions("tiny", image_size=64, batch=4, images=12, latent_channels=4), {8: 0.5, 32: 0.5})
    by = {r["variant"]: r for r in rows}
    assert set(by) == {"fixed-16x", "cat-bucketed", "cat-padded"}
    assert by["fixed-16x"]["mean_tokens"] == 4 and by["cat-bucketed"]["mean_tokens"] == (16 + 1) / 2
    assert by["cat-bucketed"]["padding_share"] == 0 and by["cat-padded"]["padding_share"] > 0
    assert by["fixed-16x"]["speed_vs_fixed16"] == 1.0 and all(r["images_per_s"] > 0 for r in rows)


@pytest.mark.slow
def test_two_process_encode_and_ddp_fit(encoded, tmp_path):
    """`lightning predict` on 2 CPU processes: each rank writes its own latents and index, no merge;
    then 2-process DDP training of the DiT from that cache; then a resumed run keeps the scales."""
    import os
    import shutil
    import sys

    from test_datamodule_assign import _run

    exe = shutil.which("lightning", path=os.path.dirname(sys.executable))
    cache = tmp_path / "latents"
    _run([exe, "predict", "-c", str(ROOT / "configs" / "dit_encode.yaml"), "--trainer.accelerator", "cpu",
          "--trainer.devices", "2", "--trainer.enable_progress_bar", "false", "--trainer.default_root_dir", str(tmp_path),
          "--model.tokenizer", str(encoded["vae"]), "--model.cache_dir", str(cache), "--data.skip_encoded", str(cache),
          "--data.root", str(encoded["images"]), "--data.image_size", "64", "--data.num_workers", "0",
          "--data.val_batch_size", "2", "--data.ratio_assignment", f"csv:{encoded['csv']}"])
    assert sorted(p.name.split(".")[-2] for p in (cache / "index").glob("*.jsonl")) == ["rank0", "rank1"]
    assert {e.key: e.ratio for e in LatentCache(cache).entries()} == RATIOS_BY_FILE
    fit = [exe, "fit", "-c", str(ROOT / "configs" / "dit_imagenet.yaml"), "--trainer.accelerator", "cpu",
           "--trainer.devices", "2", "--trainer.strategy", "ddp", "--trainer.enable_progress_bar", "false",
           "--trainer.val_check_interval", "2", "--trainer.default_root_dir", str(tmp_path / "run"),
           "--data.cache_dir", str(cache), "--data.batch_size", "1", "--data.num_workers", "0", "--data.val_fraction", "0.3",
           "--model.dit.init_args.preset", "tiny", "--model.dit.init_args.in_channels", "4",
           "--model.dit.init_args.num_classes", "2", "--model.tokenizer", str(encoded["vae"]),
           "--model.diffusion.init_args.sample_steps", "2", "--model.grid_images", "2"]
    _run([*fit, "--trainer.max_steps", "4"])
    ckpt = next((tmp_path / "run").rglob("last.ckpt"))
    first = load_dit(ckpt)
    assert first.trained_ratios == [8, 16, 32] and int(torch.load(ckpt, weights_only=True)["global_step"]) == 4
    state = torch.load(ckpt, weights_only=True)
    state["state_dict"]["latent_scale"] *= 2  # not what a fresh measurement gives: the resumed run must keep it
    torch.save(state, ckpt)
    _run([*fit, "--trainer.max_steps", "6", "--ckpt_path", str(ckpt)])
    resumed = max((tmp_path / "run").rglob("last.ckpt"), key=lambda p: p.stat().st_mtime)
    assert int(torch.load(resumed, weights_only=True)["global_step"]) == 6
    torch.testing.assert_close(load_dit(resumed).latent_scale, 2 * first.latent_scale)  # measured once, kept on resume


@pytest.mark.slow
def test_gen_demo_rerun_reports_its_run_and_refuses_another_tokenizer(encoded, tmp_path):
    """``cat-tokenizer gen-demo`` run twice into one folder reports the finished run's held-out loss
    (the second run trains nothing); with other tokenizer weights it stops at the latent cache."""
    from cat_tasks.generation.demo import GenDemoOptions, run_gen_demo

    args = dict(out=str(tmp_path / "demo"), steps=4, image_size=64, batch_size=4, preset="tiny", sample_steps=2,
                accelerator="cpu", config_dir=str(ROOT / "configs"))
    first = run_gen_demo(GenDemoOptions(ckpt=str(encoded["vae"]), **args)).read_text()
    again = run_gen_demo(GenDemoOptions(ckpt=str(encoded["vae"]), **args)).read_text()
    held_out = [line for line in first.splitlines() if "held-out loss" in line][0]
    assert "nan" not in held_out and held_out in again.splitlines()
    assert "| train 4 steps x 4 latents" in first and "| train 0 steps x 4 latents" in again  # this call's steps
    assert "4 steps in the run" in again
    torch.manual_seed(7)
    NestedVAE.from_preset("tiny").save_pretrained(tmp_path / "retrained_vae")
    with pytest.raises(UserInputError, match="use another cache folder"):
        run_gen_demo(GenDemoOptions(ckpt=str(tmp_path / "retrained_vae"), **args))
