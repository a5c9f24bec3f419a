"""Run stashes: a commit-sized copy of last.ckpt that a fresh machine resumes from (cat_tokenizer.lit.stash)."""

from __future__ import annotations

from pathlib import Path

import lightning as L
import pytest
import torch
from conftest import one_line_error
from lightning.pytorch.demos.boring_classes import BoringModel

from cat_tokenizer import CATDataModule, NestedVAE, NestedVAEModule, VAELoss
from cat_tokenizer.callbacks import ResumableCheckpoint
from cat_tokenizer.cli import tools
from cat_tokenizer.io import CONFIG_KEY
from cat_tokenizer.lit.stash import FRESH_KEY, OPTIMIZED_KEY, STASH_NAME, full_checkpoint, slim_checkpoint


class AdamModel(BoringModel):
    """BoringModel (one Linear) trained with Adam, wide enough that a stash's size is mostly tensors."""

    def __init__(self):
        super().__init__()
        self.layer = torch.nn.Sequential(torch.nn.Linear(32, 512), torch.nn.Linear(512, 2))

    def configure_optimizers(self):
        return torch.optim.Adam(self.parameters(), lr=1e-3, betas=(0.9, 0.99))


def _fit(run: Path, steps: int, ckpt: Path | None = None) -> dict:
    ck = ResumableCheckpoint(dirpath=run / "checkpoints", save_last=True, every_n_train_steps=100,
                             enable_version_counter=False)
    trainer = L.Trainer(max_steps=steps, callbacks=[ck], logger=False, enable_progress_bar=False,
                        enable_model_summary=False, accelerator="cpu", limit_val_batches=0)
    trainer.fit(AdamModel(), ckpt_path=ckpt)
    return torch.load(run / "checkpoints" / "last.ckpt", weights_only=False)


def test_a_stash_resumes_on_a_fresh_machine(tmp_path, capsys):
    run, fresh = tmp_path / "run", tmp_path / "fresh"
    first = _fit(run, 5)
    (run / "kind_eval.csv").write_text("batch,all_8x\n5,20.0\n")
    assert tools.main(["stash", str(run), "--out", str(tmp_path / "stash")]) == 0
    stash = tmp_path / "stash" / STASH_NAME
    assert stash.stat().st_size < 0.5 * (run / "checkpoints" / "last.ckpt").stat().st_size
    assert tools.main(["unstash", str(tmp_path / "stash"), "--run", str(fresh)]) == 0
    restored = torch.load(fresh / "checkpoints" / "last.ckpt", weights_only=False)
    assert (fresh / "kind_eval.csv").read_text() == (run / "kind_eval.csv").read_text()
    assert restored["global_step"] == first["global_step"] == 5
    for key, value in first["state_dict"].items():  # float32 again, within one float16 rounding
        assert restored["state_dict"][key].dtype == value.dtype
        torch.testing.assert_close(restored["state_dict"][key], value, rtol=1e-3, atol=1e-4)
    for before, after in zip(first["optimizer_states"][0]["state"].values(),
                             restored["optimizer_states"][0]["state"].values(), strict=True):
        assert after["step"] == before["step"]
        assert not after["exp_avg"].any()  # the dropped first moment comes back as zeros
        # uint8 codes of log2(v): within half a code step, about 1% in sqrt(v), the quantity Adam divides by
        torch.testing.assert_close(after["exp_avg_sq"].sqrt(), before["exp_avg_sq"].sqrt(), rtol=2e-2, atol=1e-7)
    again = _fit(fresh, 8, fresh / "checkpoints" / "last.ckpt")
    assert again["global_step"] == 8  # Lightning resumed the stashed run, not a new one


def test_a_stash_keeps_what_float16_cannot_hold():
    ckpt = {"state_dict": {"big": torch.tensor([1e6, 1.0]), "small": torch.tensor([0.5]), "count": torch.tensor(3)},
            "optimizer_states": [{"state": {0: {"step": torch.tensor(4.0), "exp_avg": torch.ones(2),
                                                "exp_avg_sq": torch.full((2,), 1e-12)}}, "param_groups": []}]}
    slim = slim_checkpoint(ckpt)
    assert slim["state_dict"]["big"].dtype == torch.float32  # 1e6 overflows float16
    assert slim["state_dict"]["small"].dtype == torch.float16
    assert slim["state_dict"]["count"].dtype == torch.int64
    assert "exp_avg" not in slim["optimizer_states"][0]["state"][0]
    full = full_checkpoint(slim)
    assert full["optimizer_states"][0]["state"][0]["exp_avg_sq"][0].item() == pytest.approx(1e-12, rel=1e-2)
    assert full["state_dict"]["small"].dtype == torch.float32


def test_stash_errors_are_one_line(tmp_path, capsys):
    assert tools.main(["stash", str(tmp_path), "--out", str(tmp_path / "s")]) == 2
    one_line_error(capsys, "no checkpoints/last.ckpt")
    assert tools.main(["unstash", str(tmp_path / "s"), "--run", str(tmp_path / "r")]) == 2
    one_line_error(capsys, "no resume.pt")
    (tmp_path / "s").mkdir()
    torch.save({"state_dict": {}}, tmp_path / "s" / STASH_NAME)
    assert tools.main(["unstash", str(tmp_path / "s"), "--run", str(tmp_path / "r")]) == 2
    one_line_error(capsys, "not a run stash")


def test_unstash_never_replaces_a_checkpoint(tmp_path, capsys):
    run = tmp_path / "run"
    _fit(run, 2)
    assert tools.main(["stash", str(run), "--out", str(tmp_path / "s")]) == 0
    before = (run / "checkpoints" / "last.ckpt").read_bytes()
    assert tools.main(["unstash", str(tmp_path / "s"), "--run", str(run)]) == 2
    one_line_error(capsys, "exists already")
    assert (run / "checkpoints" / "last.ckpt").read_bytes() == before


def test_a_format_1_stash_still_unstashes():
    slim = {"state_dict": {"w": torch.tensor([0.5, 2.0], dtype=torch.float16)},
            "optimizer_states": [{"state": {0: {"step": torch.tensor(3.0),
                                                "exp_avg_sq": torch.tensor([1e-8, 1e-6], dtype=torch.bfloat16)}},
                                  "param_groups": []}],
            "cat_stash": {"format": 1, "dropped": ["exp_avg"], "float32": ["w"]}}
    full = full_checkpoint(slim)
    assert full["state_dict"]["w"].dtype == torch.float32 and FRESH_KEY not in full
    state = full["optimizer_states"][0]["state"][0]
    assert state["exp_avg_sq"].dtype == torch.float32 and not state["exp_avg"].any()


# --------------------------------------------------------------- a NestedVAEModule run (EMA, GAN off)
def _vae_module(disc_start: int) -> NestedVAEModule:
    torch.manual_seed(0)
    loss = VAELoss(perceptual_weight=0.0, disc_start=disc_start, disc_channels=8, disc_layers=2)
    return NestedVAEModule(NestedVAE.from_preset("tiny"), loss, lr=1e-3, warmup_steps=2, ema_decay=0.9,
                           ema_warmup=False)


def _fit_vae(root: Path, run: Path, steps: int, disc_start: int = 10**9, ckpt: Path | None = None) -> dict:
    ck = ResumableCheckpoint(dirpath=run / "checkpoints", save_last=True, every_n_train_steps=2,
                             enable_version_counter=False)
    trainer = L.Trainer(max_steps=steps, callbacks=[ck], logger=False, enable_progress_bar=False,
                        enable_model_summary=False, accelerator="cpu", limit_val_batches=0,
                        use_distributed_sampler=False)
    data = CATDataModule(root=str(root), image_size=32, batch_size=2, num_workers=0, val_fraction=0.3)
    trainer.fit(_vae_module(disc_start), datamodule=data, ckpt_path=ckpt)
    return torch.load(run / "checkpoints" / "last.ckpt", weights_only=False)


def _rel_rms(a: dict, b: dict, prefix: str) -> float:
    keys = [k for k in a if k.startswith(prefix) and a[k].is_floating_point()]
    num = sum((a[k].float() - b[k].float()).pow(2).sum() for k in keys)
    return float((num / sum(a[k].float().pow(2).sum() for k in keys)).sqrt())


def test_a_vae_run_stash_codes_the_ema_and_leaves_out_a_discriminator_that_never_trained(image_folder, tmp_path):
    run, fresh = tmp_path / "run", tmp_path / "fresh"
    first = _fit_vae(image_folder, run, 6)  # 3 batches: GAN off, the discriminator's optimizer never steps
    assert first[OPTIMIZED_KEY] == ["vae.", "loss.discriminator."]
    slim = slim_checkpoint(first)
    disc = sorted(k for k in first["state_dict"] if k.startswith("loss.discriminator."))
    assert sorted(slim["cat_stash"]["fresh"]) == disc and not set(disc) & set(slim["state_dict"])
    ema = [k for k in first["state_dict"] if k.startswith("ema.module.") and first["state_dict"][k].dim()]
    assert sorted(slim["cat_stash"]["deltas"]) == sorted(ema)
    assert all(slim["cat_stash"]["deltas"][k]["codes"].dtype == torch.int8 for k in ema)
    full = full_checkpoint(slim)
    assert _rel_rms(first["state_dict"], full["state_dict"], "ema.module.") < 2e-3  # int8 rows of the EMA's delta
    assert _rel_rms(first["state_dict"], full["state_dict"], "vae.") < 1e-3         # float16
    assert sorted(full[FRESH_KEY]) == disc
    assert tools.main(["stash", str(run), "--out", str(tmp_path / "stash")]) == 0
    assert tools.main(["unstash", str(tmp_path / "stash"), "--run", str(fresh)]) == 0
    again = _fit_vae(image_folder, fresh, 10, ckpt=fresh / "checkpoints" / "last.ckpt")  # strict load: refilled
    assert again["global_step"] == 10 and FRESH_KEY not in again
    assert sorted(k for k in again["state_dict"] if k.startswith("loss.discriminator.")) == disc


def test_a_discriminator_that_trained_stays_in_the_stash(image_folder, tmp_path):
    ckpt = _fit_vae(image_folder, tmp_path / "run", 4, disc_start=0)
    assert ckpt["optimizer_states"][1]["state"]  # it stepped
    assert slim_checkpoint(ckpt)["cat_stash"]["fresh"] == []


def test_an_older_vae_checkpoint_is_read_by_its_known_optimizer_order(image_folder, tmp_path):
    ckpt = _fit_vae(image_folder, tmp_path / "run", 4)
    del ckpt[OPTIMIZED_KEY]  # written before the module recorded it
    assert CONFIG_KEY in ckpt
    assert all(k.startswith("loss.discriminator.") for k in slim_checkpoint(ckpt)["cat_stash"]["fresh"])
    assert slim_checkpoint(ckpt)["cat_stash"]["fresh"]
