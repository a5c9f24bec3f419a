"""LightningModule that trains the nested VAE with a GAN (manual optimisation, two optimizers)."""

from __future__ import annotations

import logging
from pathlib import Path

import lightning as L
import torch
from diffusers.models.resnet import ResnetBlock2D
from timm.utils import ModelEmaV3
from torch import Tensor, nn
from torchmetrics import MetricCollection
from torchmetrics.image import PeakSignalNoiseRatio, StructuralSimilarityIndexMeasure
from torchvision.utils import make_grid

from cat_tokenizer.errors import UserInputError
from cat_tokenizer.io import CONFIG_KEY, load_vae
from cat_tokenizer.lit.schedule import Schedule, check_schedule, lr_factor
from cat_tokenizer.lit.stash import OPTIMIZED_KEY, refill_fresh
from cat_tokenizer.losses.vae_loss import VAELoss
from cat_tokenizer.models.nested_vae import NestedVAE
from cat_tokenizer.ratios import token_count

__all__ = ["NestedVAEModule", "warm_start"]

log = logging.getLogger(__name__)

HEADS = ("ratio_head", "block_head", "region_fill")  # what a release attaches to its tokenizer


def warm_start(vae: NestedVAE, source: str | Path) -> list[str]:
    """Copy a trained tokenizer's weights into ``vae`` (EMA weights of a ``.ckpt``); returns the names
    of ``vae``'s weights the source lacks (new modules, left as initialised). The heads a released tokenizer
    carries (ratio, block and distortion heads, region fill) describe its own weights, not the model being
    trained: those ``vae`` lacks stay behind (logged), so a fine-tune may start from a release.

    Raises:
        UserInputError: a source weight that ``vae`` lacks or holds in another shape (one line).
    """
    trained = load_vae(source)
    dst = vae.state_dict()
    heads = tuple(f"{name}." for name in HEADS if getattr(vae, name, None) is None)
    state = trained.state_dict()
    src = {k: v for k, v in state.items() if not k.startswith(heads)}
    if left := sorted({k.split(".")[0] for k in state.keys() - src.keys()}):
        log.info("init_from %s: its %s stay behind (they belong to its weights)", source, ", ".join(left))
    misfit = [k for k, v in src.items() if k not in dst or dst[k].shape != v.shape]
    if misfit:
        raise UserInputError(f"init_from {source}: {len(misfit)} of its weights do not fit this model "
                             f"(first: {misfit[0]}); warm starts may only add modules")
    vae.load_state_dict(src, strict=False)
    new = [k for k in dst if k not in src]
    _new_resnets_as_identity(vae, set(new))
    log.info("warm start from %s (fingerprint %s): %d weights copied, %d new (%s)", source, trained.fingerprint(),
             len(src), len(new), ", ".join(new) or "none")
    return new


def _new_resnets_as_identity(vae: nn.Module, new: set[str]) -> None:
    """Zero the last conv of every residual block a warm start added whole (one without a shortcut conv), so a model
    grown from a shallower one (``decoder_layers_per_block``) starts exactly as that one."""
    for name, mod in vae.named_modules():
        if isinstance(mod, ResnetBlock2D) and mod.conv_shortcut is None and f"{name}.conv2.weight" in new:
            nn.init.zeros_(mod.conv2.weight)
            nn.init.zeros_(mod.conv2.bias)


class NestedVAEModule(L.LightningModule):
    """Trains a ``NestedVAE`` at one ratio per batch (the batch's ``ratio``).

    Optimisation is manual: each batch takes one generator step and one discriminator step
    (an empty one, without forward or backward, before ``loss.disc_start``), so Lightning's
    ``global_step``, which counts optimizer steps, advances by 2 per batch: ``trainer.max_steps``
    is twice the number of batches. Schedules (warm-up, ``disc_start``, EMA) use the generator
    step ``self.gen_step`` (= batches trained), which is saved in the checkpoint.

    Args:
        vae: the network to train (injected).
        loss: the objective, which owns the discriminator (injected).
        lr: generator learning rate (AdamW).
        disc_lr: discriminator learning rate; default ``lr``.
        betas: Adam betas for both optimizers (GAN-style (0.5, 0.9)).
        weight_decay: generator weight decay (the discriminator uses none).
        warmup_steps: linear LR warm-up length in generator steps.
        lr_schedule: after warm-up, ``constant`` or ``cosine`` (decays to ``min_lr_ratio * lr`` at
            ``decay_steps`` generator steps, then holds there: a run resumed past the horizon continues
            at the floor).
        decay_steps: the cosine horizon in generator steps (batches); required for ``cosine``.
        min_lr_ratio: the cosine floor as a fraction of ``lr``.
        grad_clip: max gradient norm for both optimizers (0 disables).
        ema_decay: decay of the VAE's exponential moving average (0 disables EMA).
        ema_warmup: use timm's EMA warm-up (decay ramps up over the first steps).
        sample_posterior: train on posterior samples (True) or means.
        gradient_checkpointing: recompute activations in backward to save memory.
        init_from: a tokenizer (folder, shipped name, Hub id or ``.ckpt``) whose weights start this run:
            a warm start. Every one of its weights must fit this ``vae``; modules this ``vae`` adds (a
            colour path, say) keep their initialisation and are listed in the log. A resumed run
            (``--ckpt_path``) then overwrites them all with the checkpoint's.
    """

    OPTIMIZED = ("vae", "loss.discriminator")  # submodule per optimizer, in configure_optimizers' order

    def __init__(
        self,
        vae: NestedVAE,
        loss: VAELoss,
        lr: float = 1e-4,
        disc_lr: float | None = None,
        betas: tuple[float, float] = (0.5, 0.9),
        weight_decay: float = 0.0,
        warmup_steps: int = 1000,
        lr_schedule: Schedule = "constant",
        decay_steps: int | None = None,
        min_lr_ratio: float = 0.1,
        grad_clip: float = 1.0,
        ema_decay: float = 0.999,
        ema_warmup: bool = True,
        sample_posterior: bool = True,
        gradient_checkpointing: bool = False,
        init_from: str | None = None,
    ):
        super().__init__()
        check_schedule(lr_schedule, warmup_steps, decay_steps)
        self.save_hyperparameters(ignore=["vae", "loss"])
        self.automatic_optimization = False
        self.vae, self.loss = vae.enable_gradient_checkpointing(gradient_checkpointing), loss
        if init_from:
            warm_start(self.vae, init_from)
        self.ema = ModelEmaV3(vae, decay=ema_decay, use_warmup=ema_warmup) if ema_decay > 0 else None
        if self.ema is not None:
            self.ema.requires_grad_(False)
        self.register_buffer("gen_step", torch.zeros((), dtype=torch.long))
        metrics = MetricCollection({"psnr": PeakSignalNoiseRatio(data_range=1.0), "ssim": StructuralSimilarityIndexMeasure(data_range=1.0)})
        self.val_metrics = nn.ModuleDict({str(r): metrics.clone(prefix=f"val/{r}x/") for r in vae.ratios})
        self.test_metrics = nn.ModuleDict({str(r): metrics.clone(prefix=f"test/{r}x/") for r in vae.ratios})

    # ------------------------------------------------------------------ helpers
    @property
    def eval_vae(self) -> NestedVAE:
        """The weights used for validation and export: the EMA when there is one."""
        return self.ema.module if self.ema is not None else self.vae

    def export_pretrained(self, directory: str | Path) -> Path:
        """Write the evaluation (EMA) weights as a ``NestedVAE.from_pretrained`` folder."""
        return self.eval_vae.save_pretrained(directory)

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        checkpoint[CONFIG_KEY] = self.vae.init_config()  # lets NestedVAE be rebuilt from the .ckpt alone
        checkpoint[OPTIMIZED_KEY] = [f"{name}." for name in self.OPTIMIZED]  # what a stash may leave out

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        refill_fresh(checkpoint, self)  # parts an unstashed run left out because they never trained

    def _lr_factor(self, step: int) -> float:
        """LR multiplier at generator step ``step``: linear warm-up, then constant or cosine to the floor."""
        hp = self.hparams
        return lr_factor(step, hp.warmup_steps, hp.lr_schedule, hp.decay_steps, hp.min_lr_ratio)

    # ------------------------------------------------------------------ training
    def configure_optimizers(self):
        hp = self.hparams
        vae, disc = (self.get_submodule(name) for name in self.OPTIMIZED)
        opt_g = torch.optim.AdamW(vae.parameters(), lr=hp.lr, betas=hp.betas, weight_decay=hp.weight_decay)
        opt_d = torch.optim.AdamW(disc.parameters(), lr=hp.disc_lr or hp.lr, betas=hp.betas, weight_decay=0.0)
        return [opt_g, opt_d]

    def training_step(self, batch: dict | None, batch_idx: int) -> None:
        if batch is None:  # every file of the batch was unreadable (each already warned)
            return None
        x, ratio, step = batch["image"], int(batch["ratio"]), int(self.gen_step)
        opt_g, opt_d = self.optimizers()
        for opt in (opt_g, opt_d):
            for group in opt.optimizer.param_groups:
                group["lr"] = group.setdefault("initial_lr", group["lr"]) * self._lr_factor(step)

        # Generator (VAE) step; toggling freezes the discriminator's params for this backward.
        self.toggle_optimizer(opt_g)
        x_hat, post = self.vae(x, ratio, sample=self.hparams.sample_posterior)  # (B, 3, H, W)
        g_loss, g_logs = self.loss.generator_loss(x, x_hat, post, step, last_layer=self.vae.last_layer)
        if not torch.isfinite(g_loss):
            raise FloatingPointError(f"non-finite generator loss at step {step} (ratio {ratio}): {g_logs}")
        opt_g.zero_grad(set_to_none=True)
        self.manual_backward(g_loss)
        self._clip(opt_g)
        opt_g.step()
        self.untoggle_optimizer(opt_g)

        # Discriminator step. Before disc_start it is an empty step (no gradients, so AdamW leaves
        # the weights and its state alone): it costs nothing and keeps global_step at 2 per batch.
        d_logs: dict[str, Tensor] = {}
        opt_d.zero_grad(set_to_none=True)
        if self.loss.disc_active(step):
            self.toggle_optimizer(opt_d)
            d_loss, d_logs = self.loss.discriminator_loss(x, x_hat, step)
            self.manual_backward(d_loss)
            self._clip(opt_d)
            opt_d.step()
            self.untoggle_optimizer(opt_d)
        else:
            opt_d.step()

        self.gen_step += 1
        if self.ema is not None:
            self.ema.update(self.vae, step=int(self.gen_step))
        bs = x.shape[0]
        logs = {f"train/{k}": v for k, v in {**g_logs, **d_logs}.items()}
        logs.update({f"train/{ratio}x/rec": g_logs["rec"], "train/lr": torch.tensor(opt_g.optimizer.param_groups[0]["lr"])})
        self.log_dict(logs, prog_bar=False, batch_size=bs)
        self.log("loss", g_logs["total"], prog_bar=True, batch_size=bs, logger=False)
        self.log("ratio", float(ratio), prog_bar=True, batch_size=bs, logger=False)

    def _clip(self, opt) -> None:
        if self.hparams.grad_clip > 0:
            self.clip_gradients(opt, gradient_clip_val=self.hparams.grad_clip, gradient_clip_algorithm="norm")

    # ------------------------------------------------------------------ validation
    @torch.no_grad()
    def reconstruct(self, x: Tensor, ratio: int) -> Tensor:
        """EMA reconstruction from the posterior mean, clamped to [-1, 1]."""
        return self.eval_vae.reconstruct(x, ratio)

    def _evaluate(self, batch: dict | None, metrics: nn.ModuleDict, prefix: str) -> None:
        if batch is None:
            return
        x = batch["image"]
        for r in self.vae.ratios:  # every held-out image at every ratio
            x_hat = self.reconstruct(x, r)
            m = metrics[str(r)]
            m.update((x_hat.float() + 1) / 2, (x.float() + 1) / 2)
            self.log_dict(m, batch_size=x.shape[0])
            self.log(f"{prefix}/{r}x/tokens", float(token_count(x.shape[-2], x.shape[-1], r)), batch_size=x.shape[0])

    def validation_step(self, batch: dict | None, batch_idx: int) -> None:
        self._evaluate(batch, self.val_metrics, "val")

    def test_step(self, batch: dict | None, batch_idx: int) -> None:
        self._evaluate(batch, self.test_metrics, "test")

    @torch.no_grad()
    def predict_step(self, batch: dict | None, batch_idx: int) -> dict | None:
        """Encode a batch at its own ratio with the EMA weights (posterior mean).

        Returns:
            ``{"latent": (B, C, h, w), "ratio": int, "index": (B,)}``; write them to disk with
            ``cat_tokenizer.callbacks.LatentWriter``.
        """
        if batch is None:
            return None
        ratio = int(batch["ratio"])
        return {"latent": self.eval_vae.encode(batch["image"], ratio).mode(), "ratio": ratio, "index": batch["index"]}

    @torch.no_grad()
    def log_images(self, batch: dict, max_images: int = 4) -> dict[str, Tensor]:
        """Grids per ratio: originals on the top row, reconstructions below, in [0, 1].

        Returns:
            ``{"recon_8x": (3, H', W'), ...}``, one grid per ratio.
        """
        x = batch["image"][:max_images]
        return {f"recon_{r}x": make_grid(torch.cat([x, self.reconstruct(x, r)]).float().add(1).div(2), nrow=len(x)) for r in self.vae.ratios}
