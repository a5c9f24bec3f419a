"""Linear probe on padded latents (issue 5) and the reconstruction benchmark."""

import csv
import random
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image, ImageFilter

from cat_tasks.classification.probe import LinearProbeModule, feature_dim, latent_features
from cat_tokenizer import CATDataModule
from cat_tokenizer.cli import lightning_main, tools
from cat_tokenizer.data.default_data import _render_document
from cat_tokenizer.errors import UserInputError
from cat_tokenizer.metrics import ocr_confidence

ROOT = Path(__file__).parents[1]


def two_colour_classes(root: Path, n: int = 12, size: int = 32) -> Path:
    """A separable toy set: bright left half vs bright right half, with noise, in class folders.
    (A spatial pattern, since per-channel GroupNorm in a random encoder erases a global colour.)"""
    rng = np.random.default_rng(0)
    for i in range(n):
        cls = "left" if i % 2 else "right"
        base = np.full((size, size, 3), 40.0)
        if cls == "left":
            base[:, : size // 2] = 220
        else:
            base[:, size // 2 :] = 220
        arr = np.clip(base + rng.normal(0, 25, (size, size, 3)), 0, 255).astype(np.uint8)
        (root / cls).mkdir(parents=True, exist_ok=True)
        Image.fromarray(arr).save(root / cls / f"{i}.png")
    return root


def test_padding_layout_and_head_sizes():
    ratios = (8, 16, 32)
    z8, z16, z32 = torch.randn(2, 4, 8, 8), torch.randn(2, 4, 4, 4), torch.randn(2, 4, 2, 2)
    assert torch.equal(latent_features(z8, "pad", 64, ratios), z8.flatten(1))  # 8x: nothing padded
    padded = latent_features(z16, "pad", 64, ratios).view(2, 4, 8, 8)
    assert torch.equal(padded[:, :, :4, :4], z16)  # top-left corner
    assert padded[:, :, 4:, :].abs().sum() == 0 and padded[:, :, :, 4:].abs().sum() == 0
    assert latent_features(z32, "pad", 64, ratios).shape == (2, 4 * 8 * 8)
    assert latent_features(z8, "pool", 64, ratios).shape == latent_features(z32, "pool", 64, ratios).shape == (2, 16)
    assert torch.allclose(latent_features(z8, "pool", 64, ratios).view(2, 4, 2, 2)[:, :, 0, 0], z8[:, :, :4, :4].mean((-1, -2)))
    assert [feature_dim(m, 4, 64, 16, ratios) for m in ("pad", "pool", "flat")] == [256, 16, 64]
    with pytest.raises(UserInputError):
        latent_features(z8, "crop", 64, ratios)


def test_probe_fits_a_separable_set(tmp_path, tiny_vae):
    import lightning as L

    root = two_colour_classes(tmp_path / "toy", n=16)
    tiny_vae.save_pretrained(tmp_path / "vae")
    dm = CATDataModule(root=str(root), image_size=32, batch_size=4, num_workers=0, labels=True, val_fraction=0.25,
                       ratio_assignment="fixed:16", drop_last=False)
    model = LinearProbeModule(str(tmp_path / "vae"), features="pad", image_size=32, lr=0.05, cache_features=True)
    kw = dict(accelerator="cpu", logger=False, enable_checkpointing=False, enable_progress_bar=False, use_distributed_sampler=False)
    L.Trainer(max_epochs=30, limit_val_batches=0, **kw).fit(model, datamodule=dm)
    acc = L.Trainer(**kw).validate(model, datamodule=dm, verbose=False)[0]["val/acc"]
    assert acc >= 0.99
    assert model.head.in_features == 4 * 4 * 4  # C=4 at the 8x size of 32px images
    assert all(not p.requires_grad for p in model.vae.parameters())


def test_lightning_fit_and_test_with_probe_config(tmp_path, tiny_vae):
    root = two_colour_classes(tmp_path / "toy", n=12)
    tiny_vae.save_pretrained(tmp_path / "vae")
    common = ["-c", str(ROOT / "configs" / "probe.yaml"), "--trainer.accelerator", "cpu", "--trainer.logger", "false",
              "--trainer.default_root_dir", str(tmp_path), "--model.tokenizer", str(tmp_path / "vae"), "--model.image_size", "32",
              "--data.root", str(root), "--data.image_size", "32", "--data.num_workers", "0", "--data.batch_size", "4",
              "--data.ratio_assignment", "fixed:16", "--model.features", "flat"]
    assert lightning_main.main(["fit", *common, "--trainer.max_epochs", "2",
                                "--trainer.callbacks.init_args.dirpath", str(tmp_path / "ckpt")]) == 0
    ckpt = tmp_path / "ckpt" / "last.ckpt"
    state = torch.load(ckpt, weights_only=True)["state_dict"]
    assert set(state) == {"head.weight", "head.bias"}  # the frozen tokenizer is not saved with the probe
    assert lightning_main.main(["test", *common, "--ckpt_path", str(ckpt)]) == 0


def test_flat_features_need_a_fixed_ratio(tmp_path, tiny_vae, capsys):
    root = two_colour_classes(tmp_path / "toy", n=6)
    tiny_vae.save_pretrained(tmp_path / "vae")
    args = ["fit", "-c", str(ROOT / "configs" / "probe.yaml"), "--trainer.accelerator", "cpu", "--trainer.logger", "false",
            "--trainer.default_root_dir", str(tmp_path), "--model.tokenizer", str(tmp_path / "vae"), "--model.image_size", "32",
            "--data.root", str(root), "--data.image_size", "32", "--data.num_workers", "0", "--data.ratio_assignment", "uniform",
            "--model.features", "flat"]
    assert lightning_main.main(args) == 2
    assert "needs one ratio for every batch" in capsys.readouterr().err


@pytest.mark.slow
def test_classify_benchmark_has_a_row_per_variant(tmp_path, tiny_vae, capsys):
    from cat_tasks.classification.benchmark import VARIANTS

    root = two_colour_classes(tmp_path / "toy", n=10)
    tiny_vae.save_pretrained(tmp_path / "vae")
    assert tools.main(["classify", "--ckpt", str(tmp_path / "vae"), "--datasets", str(root), "--image-size", "32",
                       "--epochs", "2", "--batch-size", "4", "--out", str(tmp_path / "out"),
                       "--report", str(tmp_path / "docs" / "classify")]) == 0
    rows = list(csv.DictReader((tmp_path / "out" / "results.csv").open()))
    assert sorted(p.name for p in (tmp_path / "docs" / "classify").iterdir()) == ["results.csv", "results.md"]  # no caches
    assert [r["variant"] for r in rows] == [v[0] for v in VARIANTS]
    heads = {r["variant"]: int(r["head_params"]) for r in rows}
    assert heads["fixed 8x"] == heads["CAT adaptive, zero-padded to 8x"] > heads["fixed 16x"] > heads["fixed 32x"]
    assert "Command: `cat-tokenizer classify" in (tmp_path / "out" / "results.md").read_text()


def test_bundled_probe_datasets(monkeypatch, tmp_path):
    from cat_tasks.classification.datasets import ensure_probe_dataset

    monkeypatch.setenv("CAT_TOKENIZER_CACHE", str(tmp_path))
    lfw = ensure_probe_dataset("lfw")
    assert sorted(p.name for p in lfw.iterdir()) == ["face", "non_face"]
    assert len(list((lfw / "face").glob("*.png"))) == 100
    digits = ensure_probe_dataset("digits", max_per_class=5)
    assert len(list(digits.rglob("*.png"))) == 50
    with pytest.raises(UserInputError, match="unknown probe dataset"):
        ensure_probe_dataset("imagenet")


def test_ocr_confidence_prefers_sharp_text():
    page = _render_document(random.Random(3)).convert("RGB")
    sharp, n_sharp = ocr_confidence(page)
    blurred, n_blur = ocr_confidence(page.filter(ImageFilter.GaussianBlur(2.5)))
    assert n_sharp >= 20 and sharp > blurred


@pytest.mark.slow
def test_eval_recon_table(tmp_path, tiny_vae, capsys):
    from test_datamodule_assign import mixed_folder

    root = mixed_folder(tmp_path / "imgs", n=4)
    _render_document(random.Random(1)).convert("RGB").resize((64, 64)).save(root / "flat" / "doc.png")
    tiny_vae.save_pretrained(tmp_path / "vae")
    assert tools.main(["eval-recon", str(root), "--ckpt", str(tmp_path / "vae"), "--image-size", "64",
                       "--out", str(tmp_path / "er"), "--device", "cpu"]) == 0
    rows = list(csv.DictReader((tmp_path / "er" / "recon.csv").open()))
    assert [r["tokenizer"] for r in rows] == ["original", "8x", "16x", "32x", "CAT adaptive"]
    # an untrained tokenizer's reconstructions are far from the originals: rFID well above 0 (a set against itself)
    assert all(float(r["rfid"]) > 1.0 for r in rows[1:]) and [float(r["mean_tokens"]) for r in rows[1:4]] == [64.0, 16.0, 4.0]
    assert "rFID over 5 images" in capsys.readouterr().out
