"""The pieces real data needs: the crop policy, kind-balanced sampling, the LR schedule, the per-kind evaluation."""

from __future__ import annotations

import math
from collections import Counter
from pathlib import Path

import lightning as L
import numpy as np
import pytest
import torch
from conftest import write_kind_folder
from PIL import Image, ImageDraw

from cat_tokenizer import CATDataModule, NestedVAE, NestedVAEModule, VAELoss
from cat_tokenizer.data.sampler import BucketBatchSampler, balanced_weights
from cat_tokenizer.data.transforms import NativeScaleCrop, image_transform
from cat_tokenizer.errors import UserInputError
from cat_tokenizer.lit.kind_eval import load_kind_sample, psnr_per_kind, summarise


# ---------------------------------------------------------------- crop policy
def _page(w: int = 600, h: int = 800) -> Image.Image:
    """A white page with black 1-px-stroked 'text' rows every 12 px (native-resolution detail)."""
    img = Image.new("RGB", (w, h), "white")
    d = ImageDraw.Draw(img)
    for y in range(10, h - 10, 12):
        for x in range(10, w - 10, 8):
            d.rectangle([x, y, x + 4, y + 6], outline="black")
    return img


def test_native_eval_crop_keeps_native_pixels_of_a_large_page():
    page = _page()
    crop = NativeScaleCrop(128, train=False)(page)
    assert crop.size == (128, 128)
    top, left = (800 - 128) // 2, (600 - 128) // 2
    assert np.array_equal(np.asarray(crop), np.asarray(page)[top : top + 128, left : left + 128])  # no resampling


def test_resize_policy_squeezes_the_whole_page():
    x = image_transform(128, train=False, crop="resize")(_page())
    n = image_transform(128, train=False, crop="native")(_page())
    # native keeps black-on-white strokes (values near -1 and 1); a whole-page resize greys them out
    assert (n < -0.8).float().mean() > 0.1 and (x < -0.8).float().mean() < 0.05


def test_native_train_crop_scale_range():
    tf = NativeScaleCrop(128, train=True, max_downscale=2.0)
    scales = [tf.scale_for(600, 800) for _ in range(500)]
    assert min(scales) >= 0.5 - 1e-9 and max(scales) <= 1.0 and max(scales) - min(scales) > 0.3
    assert all(tf.scale_for(400, 200) >= 128 / 200 for _ in range(50))  # short side never below 128
    assert tf.scale_for(64, 96) == 2.0  # small images: resized whole, short side to 128
    assert NativeScaleCrop(128, train=True)(Image.new("RGB", (64, 96))).size == (128, 128)


# ---------------------------------------------------------------- balanced sampling
def test_balanced_weights_give_each_group_equal_mass():
    w = balanced_weights(["a"] * 6 + ["b"] * 2 + ["c"])
    assert w[:6].sum() == pytest.approx(1) and w[6:8].sum() == pytest.approx(1) and w[8] == pytest.approx(1)


@pytest.mark.parametrize("item_ratios", [None, "bucketed"])
def test_balanced_sampler_evens_out_kinds_across_ranks(item_ratios):
    kinds = ["flat"] * 440 + ["natural"] * 150 + ["text"] * 200 + ["charts"] * 210
    ratios = None if item_ratios is None else [8, 16, 32, 16] * 250
    counts = Counter()
    for rank in range(2):
        s = BucketBatchSampler(len(kinds), 4, item_ratios=ratios, weights=balanced_weights(kinds), seed=1,
                               num_replicas=2, rank=rank, drop_last=True)
        for epoch in range(5):
            s.set_epoch(epoch)
            batches = list(s)
            assert len(batches) == len(s)
            counts.update(kinds[i] for b in batches for i, _ in b)
    total = sum(counts.values())
    assert set(counts) == {"flat", "natural", "text", "charts"}
    assert all(abs(c / total - 0.25) < 0.03 for c in counts.values()), counts  # unbalanced: flat 44%


def test_kind_shares_set_each_kinds_share_of_an_epoch():
    kinds = ["flat"] * 440 + ["natural"] * 150 + ["text"] * 200 + ["charts"] * 210
    s = BucketBatchSampler(len(kinds), 4, weights=balanced_weights(kinds, {"natural": 3, "text": 2}), seed=1)
    counts = Counter()
    for epoch in range(5):
        s.set_epoch(epoch)
        counts.update(kinds[i] for b in s for i, _ in b)
    total = sum(counts.values())
    for kind, share in {"natural": 3 / 7, "text": 2 / 7, "flat": 1 / 7, "charts": 1 / 7}.items():
        assert abs(counts[kind] / total - share) < 0.03, counts
    assert balanced_weights(["a", "b"], {"a": 0})[0] == 0
    with pytest.raises(UserInputError, match=">= 0"):
        balanced_weights(["a", "b"], {"a": -1})


def test_datamodule_balance_kind_and_bad_values(tmp_path):
    root = tmp_path / "data"
    for kind, n in (("flat", 9), ("text", 3)):
        for i in range(n):
            p = root / kind / "src" / f"{i}.png"
            p.parent.mkdir(parents=True, exist_ok=True)
            Image.new("RGB", (40, 40), (i * 20, 0, 0)).save(p)
    dm = CATDataModule(root=str(root), image_size=32, batch_size=2, num_workers=0, val_fraction=0.0, balance="kind")
    dm.setup("fit")
    assert Counter(dm.train_kinds)["text"] == 3 and Counter(dm.train_kinds)["flat"] >= 8  # one may be held out
    seen = Counter()
    loader = dm.train_dataloader()
    for epoch in range(30):
        loader.batch_sampler.set_epoch(epoch)
        for batch in loader:
            seen.update(dm.train_kinds[i] for i in batch["index"].tolist())
    assert abs(seen["text"] / sum(seen.values()) - 0.5) < 0.07
    with pytest.raises(UserInputError, match="balance"):
        CATDataModule(root=str(root), balance="source")
    with pytest.raises(UserInputError, match="kind_shares needs"):
        CATDataModule(root=str(root), kind_shares={"text": 2})
    with pytest.raises(UserInputError, match=r"\['txt'\], not among the kinds \['flat', 'text'\]"):
        CATDataModule(root=str(root), balance="kind", kind_shares={"txt": 2}, num_workers=0).setup("fit")
    with pytest.raises(UserInputError, match="crop"):
        CATDataModule(root=str(root), crop="squash")


# ---------------------------------------------------------------- schedule
def test_cosine_schedule_warms_up_decays_and_holds():
    m = NestedVAEModule(NestedVAE.from_preset("tiny"), VAELoss(perceptual_weight=0), warmup_steps=10,
                        lr_schedule="cosine", decay_steps=110, min_lr_ratio=0.1, ema_decay=0)
    assert m._lr_factor(0) == pytest.approx(0.1) and m._lr_factor(9) == pytest.approx(1.0)
    assert m._lr_factor(60) == pytest.approx(0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * 0.5)))
    assert m._lr_factor(110) == pytest.approx(0.1) and m._lr_factor(10_000) == pytest.approx(0.1)
    with pytest.raises(UserInputError, match="decay_steps"):
        NestedVAEModule(NestedVAE.from_preset("tiny"), VAELoss(perceptual_weight=0), lr_schedule="cosine")


def test_discriminator_untouched_before_disc_start(image_folder, tmp_path):
    import lightning as L

    loss = VAELoss(perceptual_weight=0, disc_start=10**9)
    before = [p.detach().clone() for p in loss.discriminator.parameters()]
    m = NestedVAEModule(NestedVAE.from_preset("tiny"), loss, ema_decay=0, warmup_steps=1)
    dm = CATDataModule(root=str(image_folder), image_size=32, batch_size=2, num_workers=0, val_fraction=0.0)
    trainer = L.Trainer(max_steps=6, accelerator="cpu", logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, limit_val_batches=0, use_distributed_sampler=False)
    trainer.fit(m, datamodule=dm)
    assert int(m.gen_step) == 3 and trainer.global_step == 6  # still 2 optimizer steps per batch
    assert all(torch.equal(a, b) for a, b in zip(before, loss.discriminator.parameters()))
    assert not trainer.optimizers[1].state  # the empty steps left Adam's state alone


# ---------------------------------------------------------------- per-kind evaluation
def test_kind_eval_ranks_a_perfect_and_a_blind_decoder(tmp_path, tiny_vae):
    root = write_kind_folder(tmp_path / "dev", kinds=("flat", "natural"), n=5, size=(48, 48))
    sample = load_kind_sample(root, per_kind=3, image_size=32)
    assert sample.images.shape == (6, 3, 32, 32) and sorted(Counter(sample.kinds).values()) == [3, 3]
    rows = psnr_per_kind(tiny_vae.eval(), sample)
    assert len(rows) == 6 * len(tiny_vae.ratios)
    table = summarise(rows)
    assert set(table) == {(k, r) for k in ("flat", "natural", "all") for r in tiny_vae.ratios}

    class Identity(torch.nn.Module):  # the perfect tokenizer: PSNR is capped by torchmetrics at inf -> large
        ratios = (8,)

        def parameters(self):
            return iter([torch.zeros(1)])

        def reconstruct(self, x, r):
            return x.clamp(-1, 1) * 0.999

    perfect = summarise(psnr_per_kind(Identity(), sample))
    assert perfect[("all", 8)]["psnr"] > table[("all", 8)]["psnr"] + 20


# ---------------------------------------------------------------- the cat-small config
@pytest.mark.slow
def test_vae_small_config_trains_evaluates_per_kind_and_resumes(tmp_path, caplog):
    from cat_tokenizer.cli import lightning_main

    root = tmp_path / "data"
    rng = np.random.default_rng(0)
    for kind, (w, h) in (("flat", (40, 40)), ("natural", (60, 50)), ("text", (200, 90))):  # kind_shares names natural
        for i in range(6):
            p = root / kind / "src" / f"{i}.png"
            p.parent.mkdir(parents=True, exist_ok=True)
            Image.fromarray(rng.integers(0, 255, (h, w, 3), dtype=np.uint8)).save(p)
    config = str(Path(__file__).parents[1] / "configs" / "vae_small.yaml")

    def fit(max_steps: int, resume: bool, extra: tuple[str, ...] = ()) -> int:
        args = ["fit", "-c", config, "--data.root", str(root), "--data.init_args.image_size", "32",
                "--data.init_args.num_workers", "0", "--data.init_args.batch_size", "2", "--data.init_args.val_fraction", "0",
                "--model.init_args.vae.init_args.block_out_channels", "[8,16,16,32,32,32]",
                "--model.init_args.vae.init_args.norm_num_groups", "8", "--model.init_args.loss.init_args.disc_channels", "8",
                "--model.init_args.warmup_steps", "1", "--model.init_args.decay_steps", "10",
                "--trainer.max_steps", str(max_steps), "--trainer.precision", "32-true", "--trainer.logger", "false",
                "--trainer.limit_val_batches", "0", "--trainer.default_root_dir", str(tmp_path / "run"),
                "--trainer.enable_progress_bar", "false",
                "--trainer.callbacks+=cat_tokenizer.lit.kind_eval.KindEvaluator", "--trainer.callbacks.root", str(root),
                "--trainer.callbacks.every_n_batches", "1", "--trainer.callbacks.per_kind", "2"]
        if resume:
            args += ["--ckpt_path", str(tmp_path / "run" / "checkpoints" / "last.ckpt")]
        return lightning_main.main([*args, *extra])

    assert fit(4, resume=False) == 0  # 2 batches
    ckpt = tmp_path / "run" / "checkpoints" / "last.ckpt"
    assert ckpt.is_file() and torch.load(ckpt, weights_only=True)["global_step"] == 4
    assert fit(8, resume=True, extra=("--model.init_args.decay_steps", "20")) == 0  # 2 more batches, not 4 from scratch
    # the edited schedule is used on resume (Lightning alone would take the checkpoint's decay_steps 10)
    assert torch.load(ckpt, weights_only=True)["hyper_parameters"]["decay_steps"] == 20
    assert "model.decay_steps is 10 in the checkpoint, 20 in the config: the config wins" in caplog.text
    lines = (tmp_path / "run" / "kind_eval.csv").read_text().splitlines()
    steps = [int(line.split(",")[0]) for line in lines[1:] if ",all,8," in line]
    assert steps == [1, 2, 3, 4]  # each batch evaluated once, across both runs
    assert {line.split(",")[1] for line in lines[1:]} == {"all", "flat", "natural", "text"}
    config = NestedVAE.from_pretrained(tmp_path / "run" / "pretrained").config
    assert config["latent_channels"] == 16 and config["colour_path"] == "latent"


class _RecordLR(L.Callback):
    """The generator optimizer's learning rate as the step used it (read after each batch)."""

    def __init__(self):
        self.lrs: list[tuple[int, float]] = []

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        self.lrs.append((int(pl_module.gen_step) - 1, trainer.optimizers[0].param_groups[0]["lr"]))


def test_the_optimizer_follows_the_schedule_through_warm_up_decay_and_a_resume(image_folder, tmp_path):
    """What the optimizer really used (param_groups), not only the formula: warm-up, cosine, floor,
    and after a kill and resume it continues at the step where it stopped."""
    def module():
        return NestedVAEModule(NestedVAE.from_preset("tiny"), VAELoss(perceptual_weight=0), lr=1e-3, warmup_steps=3,
                               lr_schedule="cosine", decay_steps=9, min_lr_ratio=0.1, ema_decay=0)

    def fit(max_batches: int, ckpt: str | None = None) -> _RecordLR:
        rec = _RecordLR()
        dm = CATDataModule(root=str(image_folder), image_size=32, batch_size=2, num_workers=0, val_fraction=0.0)
        trainer = L.Trainer(max_steps=2 * max_batches, accelerator="cpu", logger=False, enable_progress_bar=False,
                            limit_val_batches=0, use_distributed_sampler=False, default_root_dir=tmp_path, callbacks=[rec],
                            enable_checkpointing=False)
        trainer.fit(module(), datamodule=dm, ckpt_path=ckpt)
        trainer.save_checkpoint(tmp_path / "stop.ckpt")
        return rec

    want = lambda s: 1e-3 * (((s + 1) / 3) if s < 3 else 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * min(1.0, (s - 3) / 6))))  # noqa: E731
    first = fit(5)  # killed after 5 batches
    assert [s for s, _ in first.lrs] == [0, 1, 2, 3, 4]
    assert [lr for _, lr in first.lrs] == pytest.approx([want(s) for s in range(5)], rel=1e-6)
    assert first.lrs[0][1] == pytest.approx(1e-3 / 3) and first.lrs[2][1] == pytest.approx(1e-3)  # warm-up to the peak
    resumed = fit(12, str(tmp_path / "stop.ckpt"))
    assert [s for s, _ in resumed.lrs] == list(range(5, 12))  # continues where it stopped, not from step 0
    assert [lr for _, lr in resumed.lrs] == pytest.approx([want(s) for s in range(5, 12)], rel=1e-6)
    assert resumed.lrs[-1][1] == pytest.approx(1e-4)  # the floor: min_lr_ratio * lr


class _RecordBatches(L.Callback):
    """Each training batch as (ratio, image keys)."""

    def __init__(self):
        self.seen: list[tuple[int, tuple[str, ...]]] = []

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        self.seen.append((int(batch["ratio"]), tuple(batch["key"])))


def test_every_epoch_draws_a_new_order_and_a_run_stopped_anywhere_resumes_it(image_folder, tmp_path):
    """Lightning calls ``set_epoch`` on a loader's sampler, not on a batch sampler: every epoch must still get its
    own order (5 training images, batches of 2: 2 batches an epoch). Stopped mid-epoch 0, at the end of epoch 1 and
    mid-epoch 2 (Lightning counts an epoch a stop cut short as finished), the pieces together see the batches
    (images and ratios) of one uninterrupted run, in its order."""
    def fit(batches: int, ckpt: str | None = None) -> list:
        rec = _RecordBatches()
        module = NestedVAEModule(NestedVAE.from_preset("tiny"), VAELoss(perceptual_weight=0), ema_decay=0)
        dm = CATDataModule(root=str(image_folder), image_size=32, batch_size=2, num_workers=0, val_fraction=0.0)
        trainer = L.Trainer(max_steps=2 * batches, accelerator="cpu", logger=False, enable_progress_bar=False,
                            limit_val_batches=0, use_distributed_sampler=False, default_root_dir=tmp_path,
                            callbacks=[rec], enable_checkpointing=False, enable_model_summary=False)
        trainer.fit(module, datamodule=dm, ckpt_path=ckpt)
        trainer.save_checkpoint(tmp_path / f"stop{batches}.ckpt")
        return rec.seen

    whole = fit(8)
    epochs = [tuple(whole[i : i + 2]) for i in range(0, 8, 2)]
    assert len(set(epochs)) == 4  # a new order (or ratio draw) every epoch
    pieces, last = [], None
    for stop in (1, 4, 5, 8):
        pieces += fit(stop, last)
        last = str(tmp_path / f"stop{stop}.ckpt")
    assert pieces == whole
