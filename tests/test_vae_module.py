import lightning as L
import pytest
import torch

from cat_tokenizer import CATDataModule, NestedVAE, NestedVAEModule, VAELoss
from cat_tokenizer.callbacks import ExportPretrained, ReconstructionGridLogger
from cat_tokenizer.io import load_vae


def _module(disc_start=0, **kw):
    torch.manual_seed(0)
    loss = VAELoss(perceptual_weight=0.0, disc_start=disc_start, disc_channels=8, disc_layers=2)
    return NestedVAEModule(NestedVAE.from_preset("tiny"), loss, lr=1e-3, warmup_steps=2, ema_decay=0.9, ema_warmup=False, **kw)


def _data(root, **kw):
    return CATDataModule(root=str(root), image_size=32, batch_size=2, num_workers=0, val_fraction=0.3, **kw)


def _trainer(tmp_path, max_steps, **kw):
    return L.Trainer(accelerator="cpu", max_steps=max_steps, default_root_dir=str(tmp_path / "run"), logger=False,
                     enable_progress_bar=False, enable_model_summary=False, use_distributed_sampler=False,
                     **{"limit_val_batches": 0, "enable_checkpointing": False, **kw})


def _params(m):
    return [p.detach().clone() for p in m.parameters()]


def _changed(before, m):
    return any(not torch.equal(a, b) for a, b in zip(before, m.parameters()))


def test_gan_step_updates_both_optimizers_and_ema(image_folder, tmp_path):
    model = _module(disc_start=0)
    vae0, disc0, ema0 = _params(model.vae), _params(model.loss.discriminator), _params(model.ema.module)
    trainer = _trainer(tmp_path, max_steps=4)
    trainer.fit(model, datamodule=_data(image_folder))
    assert int(model.gen_step) == 2 and trainer.global_step == 4  # global_step counts both optimizers
    assert _changed(vae0, model.vae) and _changed(disc0, model.loss.discriminator) and _changed(ema0, model.ema.module)
    ema, live = list(model.ema.module.parameters()), list(model.vae.parameters())
    assert any(not torch.equal(a, b) for a, b in zip(ema, live))  # the EMA lags the live weights
    assert all(not p.requires_grad for p in model.ema.parameters())


def test_discriminator_adam_restarts_at_disc_start(image_folder, tmp_path):
    model = _module(disc_start=2)
    trainer = _trainer(tmp_path, max_steps=8)  # 4 batches: 2 idle, 2 with the GAN on
    trainer.fit(model, datamodule=_data(image_folder))
    opt_d = trainer.optimizers[1]
    steps = {int(st["step"]) for st in opt_d.state.values()}
    assert steps == {2}  # only the active steps count for the bias correction
    assert {int(st["step"]) for st in trainer.optimizers[0].state.values()} == {4}


def test_discriminator_frozen_before_disc_start(image_folder, tmp_path):
    model = _module(disc_start=100)
    vae0, disc0 = _params(model.vae), _params(model.loss.discriminator)
    _trainer(tmp_path, max_steps=4).fit(model, datamodule=_data(image_folder))
    assert _changed(vae0, model.vae)
    assert not _changed(disc0, model.loss.discriminator)


class _Count(L.Callback):
    def __init__(self):
        self.batches, self.start_step = 0, None

    def on_train_start(self, trainer, pl_module):
        self.start_step = int(pl_module.gen_step)

    def on_train_batch_end(self, *args):
        self.batches += 1


def test_resume_continues_the_same_run(image_folder, tmp_path):
    from lightning.pytorch.callbacks import ModelCheckpoint

    ckpt = ModelCheckpoint(dirpath=tmp_path / "ck", save_last=True, every_n_train_steps=2)
    first = _module()
    _trainer(tmp_path, 4, enable_checkpointing=True, callbacks=[ckpt]).fit(first, datamodule=_data(image_folder))
    last = tmp_path / "ck" / "last.ckpt"
    assert last.is_file()
    second, count = _module(), _Count()
    _trainer(tmp_path, 8, enable_checkpointing=True, callbacks=[count]).fit(second, datamodule=_data(image_folder), ckpt_path=str(last))
    assert count.start_step == 2 and count.batches == 2 and int(second.gen_step) == 4
    # The .ckpt loads as a tokenizer (EMA weights), with weights_only=True underneath.
    vae = load_vae(last)
    state = torch.load(last, weights_only=True)["state_dict"]
    assert torch.equal(vae.decoder.conv_out.weight, state["ema.module.decoder.conv_out.weight"])


def test_validation_logs_metrics_per_ratio_and_grids(image_folder, tmp_path):
    model = _module()
    trainer = _trainer(tmp_path, 2, limit_val_batches=None, callbacks=[ReconstructionGridLogger(2), ExportPretrained()])
    dm = _data(image_folder)
    metrics = trainer.validate(model, datamodule=dm)[0]
    # the logged PSNR is the held-out set's, computed here independently: all val images, each ratio
    from torchmetrics.functional.image import peak_signal_noise_ratio

    x = torch.cat([b["image"] for b in dm.val_dataloader() if b is not None])
    for r in (8, 16, 32):
        assert {f"val/{r}x/psnr", f"val/{r}x/ssim", f"val/{r}x/tokens"} <= set(metrics)
        with torch.no_grad():
            want = peak_signal_noise_ratio((model.reconstruct(x, r) + 1) / 2, (x + 1) / 2, data_range=1.0)
        assert metrics[f"val/{r}x/psnr"] == pytest.approx(float(want), abs=0.01)
    assert metrics["val/8x/tokens"] == 16.0 and metrics["val/32x/tokens"] == 1.0
    grids = sorted(p.name for p in (tmp_path / "run" / "images").iterdir())
    assert grids == ["recon_16x_step000000.png", "recon_32x_step000000.png", "recon_8x_step000000.png"]
    # ExportPretrained(every_validation) writes the EMA weights, not the raw ones: move them apart first
    with torch.no_grad():
        for p in model.vae.parameters():
            p.add_(0.01)
    trainer = _trainer(tmp_path, 2, limit_val_batches=1, callbacks=[ExportPretrained(every_validation=True)])
    trainer.validate(model, datamodule=_data(image_folder))
    exported = NestedVAE.from_pretrained(tmp_path / "run" / "pretrained")
    for (name, a), b in zip(model.ema.module.state_dict().items(), exported.state_dict().values()):
        assert torch.equal(a, b), name
    assert not torch.equal(exported.decoder.conv_out.weight, model.vae.decoder.conv_out.weight)


def test_training_lowers_the_loss(image_folder, tmp_path):
    model = _module(disc_start=10**6)
    data = _data(image_folder, ratio_assignment="fixed:8")
    data.setup()
    batch = next(iter(data.val_dataloader()))
    x = batch["image"]

    def rec():
        with torch.no_grad():
            x_hat, _ = model.vae(x, 8, sample=False)
            return (x_hat - x).abs().mean().item()

    before = rec()
    _trainer(tmp_path, max_steps=2 * 15).fit(model, datamodule=data)
    assert rec() < 0.8 * before


def test_bf16_mixed_autocast_runs(image_folder, tmp_path):
    model = _module()
    trainer = _trainer(tmp_path, 2, precision="bf16-mixed")
    trainer.fit(model, datamodule=_data(image_folder))
    assert int(model.gen_step) == 1 and all(torch.isfinite(p).all() for p in model.vae.parameters())


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
@pytest.mark.gpu
def test_bf16_mixed_on_gpu(image_folder, tmp_path):
    model = _module()
    trainer = L.Trainer(accelerator="gpu", devices=1, precision="bf16-mixed", max_steps=4, logger=False,
                        default_root_dir=str(tmp_path), use_distributed_sampler=False, limit_val_batches=0)
    trainer.fit(model, datamodule=_data(image_folder))
    assert int(model.gen_step) == 2


def test_test_and_predict_write_latents(image_folder, tmp_path):
    from cat_tokenizer.callbacks import LatentWriter
    from cat_tokenizer.io import load_latent

    model = _module()
    metrics = _trainer(tmp_path, 2).test(model, datamodule=_data(image_folder))[0]
    assert {"test/8x/psnr", "test/32x/ssim"} <= set(metrics)
    data = _data(image_folder, ratio_assignment="fixed:16")
    writer = LatentWriter(str(tmp_path / "latents"))
    _trainer(tmp_path, 2, callbacks=[writer]).predict(model, datamodule=data, return_predictions=False)
    files = sorted((tmp_path / "latents").rglob("*.safetensors"))
    assert len(files) == 6 and {f.parent.name for f in files} == {"class0", "class1"}  # mirrors the folder
    lat = load_latent(files[0])
    assert lat.ratio == 16 and lat.latent.shape == (4, 2, 2) and (lat.height, lat.width) == (32, 32)
    x = data.predict_set[data.predict_set.files.index(image_folder / "class0" / "img0.png")]["image"][None]
    expected = model.eval_vae.encode(x, 16).mode()[0]
    assert torch.allclose(load_latent(tmp_path / "latents" / "class0" / "img0.safetensors").latent, expected, atol=1e-5)


def test_warm_start_copies_a_trained_tokenizer_and_keeps_the_modules_it_adds(tmp_path):
    from cat_tokenizer.errors import UserInputError

    torch.manual_seed(0)
    old = NestedVAE.from_preset("tiny").eval()
    old.save_pretrained(tmp_path / "old")
    grown = NestedVAE(**{**old.init_config(), "colour_path": "latent"})
    module = _module_with(grown, init_from=str(tmp_path / "old"))
    x = torch.rand(2, 3, 32, 32) * 2 - 1
    for vae in (module.vae.eval(), module.ema.module.eval()):  # the EMA starts from the warm weights too
        # the added colour path starts at zero (allclose: the EMA copy, same weights, has read 1e-5 apart on 2 busy cores)
        assert torch.allclose(vae.reconstruct(x, 16), old.reconstruct(x, 16), atol=1e-4)
    assert not module.vae.decoder.colour.weight.any()
    from cat_tokenizer.regions.fill import RegionFill

    released = NestedVAE.from_pretrained(tmp_path / "old").attach_region_fill(RegionFill(old.latent_channels, old.ratios, width=32, groups=8))
    released.save_pretrained(tmp_path / "released")  # a release carries heads: a fine-tune leaves them behind
    module = _module_with(NestedVAE(**old.init_config()), init_from=str(tmp_path / "released"))
    assert module.vae.region_fill is None and torch.allclose(module.vae.eval().reconstruct(x, 16), old.reconstruct(x, 16), atol=1e-4)
    deeper = NestedVAE(**{**old.init_config(), "decoder_layers_per_block": 2})  # one more ResNet per up-stage
    module = _module_with(deeper, init_from=str(tmp_path / "old"))
    assert len(module.vae.decoder.stages[0].resnets) == len(old.decoder.stages[0].resnets) + 1
    assert torch.allclose(module.vae.eval().reconstruct(x, 16), old.reconstruct(x, 16), atol=1e-4)  # new ResNets: identity
    assert module.vae.decoder.stages[0].resnets[-1].conv1.weight.any()  # only their last conv starts at zero
    with pytest.raises(UserInputError, match="decoder_layers_per_block"):
        NestedVAE(**{**old.init_config(), "decoder_layers_per_block": 0})
    narrower = NestedVAE(**{**old.init_config(), "latent_channels": 2})
    with pytest.raises(UserInputError, match="do not fit this model") as err:
        _module_with(narrower, init_from=str(tmp_path / "old"))
    assert "\n" not in str(err.value)


def _module_with(vae, **kw):
    loss = VAELoss(perceptual_weight=0.0, disc_channels=8, disc_layers=2)
    return NestedVAEModule(vae, loss, lr=1e-3, warmup_steps=2, ema_decay=0.9, ema_warmup=False, **kw)


def test_the_kind_curve_can_carry_the_palette_check(tmp_path):
    from conftest import write_kind_folder

    from cat_tokenizer.lit.kind_eval import KindEvaluator

    root = write_kind_folder(tmp_path / "data", n=3, size=(32, 32))
    cb = KindEvaluator(str(root), every_n_batches=1, per_kind=1, palette=True)
    _trainer(tmp_path, max_steps=4, callbacks=[cb]).fit(_module(disc_start=10**6), _data(root))
    rows = (tmp_path / "run" / "palette.csv").read_text().splitlines()
    assert rows[0] == "step,layout,ratio,min_psnr,mean_psnr,worst,max_levels"
    assert sorted({r.split(",")[0] for r in rows[1:]}) == ["1", "2"] and len(rows) == 1 + 2 * 9  # 3 layouts x 3 ratios
    assert all(0 < float(r.split(",")[3]) <= float(r.split(",")[4]) for r in rows[1:])  # min <= mean
