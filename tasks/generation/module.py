"""LightningModule: a DiT trained on cached CAT latents (one ratio per batch), EMA, CFG sampling."""

from __future__ import annotations

import logging
from pathlib import Path

import lightning as L
import torch
from timm.utils import ModelEmaV3
from torch import Tensor
from torchvision.utils import make_grid

from cat_tasks.generation.diffusion import Diffusion
from cat_tasks.generation.dit import DiT
from cat_tokenizer.complexity.text_student import TextEmbedder
from cat_tokenizer.errors import InputNotFound, UserInputError
from cat_tokenizer.io import load_vae
from cat_tokenizer.models.diffusers_view import stored_factors
from cat_tokenizer.models.nested_vae import NestedVAE

__all__ = ["DiTModule", "load_dit"]

log = logging.getLogger(__name__)

CKPT_KEY = "cat_dit"  # what on_save_checkpoint adds: enough to rebuild the module from the .ckpt alone


class DiTModule(L.LightningModule):
    """Latent diffusion over variable-length CAT tokens.

    Trains on a ``LatentDataModule``: each batch holds latents of one ratio, scaled to unit
    variance by a per-ratio factor measured on the data at the start of training (stored in the
    checkpoint as ``latent_scale``; 0 marks a ratio the model never trained on).

    Args:
        dit: the network (injected; presets via ``preset``).
        tokenizer: the frozen nested VAE that made the latents (folder / .ckpt / hub id); only
            needed to decode samples (grids during training, ``cat-tokenizer sample``).
        diffusion: noise schedule, prediction type and sampler (diffusers schedulers).
        label_dropout: probability of replacing the class (or caption) with "none" in training,
            for classifier-free guidance.
        text_encoder: condition on captions through this frozen transformers encoder (hub id,
            local folder or ``builtin:minilm``) instead of class labels; the DiT's ``text_dim``
            must match its width and the latents must carry captions.
        lr: AdamW learning rate.
        weight_decay: AdamW weight decay.
        betas: AdamW betas.
        warmup_steps: linear learning-rate warm-up.
        ema_decay: EMA decay of the DiT (0 disables); the EMA samples and validates.
        scale_samples: latents per ratio read to measure the scale factors.
        guidance: classifier-free guidance scale for the sample grids.
        grid_images: images per ratio in the sample grids.
    """

    flops_per_batch = None  # read by Lightning's ThroughputMonitor (TokenThroughput); not measured

    def __init__(
        self,
        dit: DiT,
        tokenizer: str | None = None,
        diffusion: Diffusion | None = None,
        label_dropout: float = 0.1,
        text_encoder: str | None = None,
        lr: float = 1e-4,
        weight_decay: float = 0.0,
        betas: tuple[float, float] = (0.9, 0.999),
        warmup_steps: int = 0,
        ema_decay: float = 0.9999,
        scale_samples: int = 256,
        guidance: float = 4.0,
        grid_images: int = 8,
    ):
        super().__init__()
        if not 0.0 <= label_dropout < 1.0:
            raise UserInputError(f"label_dropout must be in [0, 1), got {label_dropout}")
        if guidance < 1.0:
            raise UserInputError(f"guidance must be >= 1 (1 = no guidance), got {guidance}")
        self.save_hyperparameters(ignore=["dit", "diffusion"])
        self.dit, self.diffusion = dit, diffusion or Diffusion()
        self.ema = ModelEmaV3(dit, decay=ema_decay, use_warmup=True) if ema_decay > 0 else None
        if self.ema is not None:
            self.ema.requires_grad_(False)
        self.register_buffer("latent_scale", torch.zeros(len(dit.ratios)))  # per ratio; 0 = not trained
        self.image_size = 0
        self.classes: list[str] = []
        self._frozen: dict = {}  # the tokenizer and text encoder: not parameters, not in the checkpoint

    # ------------------------------------------------------------------ frozen parts
    @property
    def eval_dit(self) -> DiT:
        return self.ema.module if self.ema is not None else self.dit

    @property
    def vae(self) -> NestedVAE:
        if "vae" not in self._frozen:
            if not self.hparams.tokenizer:
                raise UserInputError("decoding samples needs the tokenizer: set model.tokenizer (or --tokenizer)")

            self._frozen["vae"] = load_vae(self.hparams.tokenizer).eval().requires_grad_(False)
        return self._frozen["vae"].to(self.device)

    def embed_text(self, captions: list[str]) -> Tensor:
        """(B, text_dim) pooled embeddings of captions with the frozen text encoder."""
        if "text" not in self._frozen:

            self._frozen["text"] = TextEmbedder(self.hparams.text_encoder, device=str(self.device))
            if self._frozen["text"].dim != self.dit.text_dim:
                raise UserInputError(f"text encoder width {self._frozen['text'].dim} != model.dit.text_dim {self.dit.text_dim}")
        return self._frozen["text"](captions).to(self.device)

    @property
    def trained_ratios(self) -> list[int]:
        return [r for r, s in zip(self.dit.ratios, self.latent_scale.tolist()) if s > 0]

    def scale_of(self, ratio: int) -> float:
        s = float(self.latent_scale[self.dit.ratio_index(ratio)])
        if s <= 0:
            raise UserInputError(f"this DiT was not trained on ratio {ratio}x; trained ratios: {self.trained_ratios}")
        return s

    # ------------------------------------------------------------------ setup
    def setup(self, stage: str) -> None:
        dm = getattr(self.trainer, "datamodule", None) if self._trainer is not None else None
        if dm is None or not hasattr(dm, "latent_ratios"):
            return
        unknown = sorted(set(dm.latent_ratios()) - set(self.dit.ratios))
        if unknown:
            raise UserInputError(f"the latents hold ratios {unknown} the DiT does not know (model.dit.ratios {list(self.dit.ratios)})")
        item = dm.example()
        if item["latent"].shape[0] != self.dit.in_channels:
            raise UserInputError(f"latents have {item['latent'].shape[0]} channels; model.dit.in_channels is {self.dit.in_channels}")
        if self.hparams.text_encoder:
            if "caption" not in item:
                raise UserInputError("text conditioning needs captions in the latent cache: encode with --data.captions FILE")
            if self.dit.text_dim <= 0:
                raise UserInputError("model.text_encoder is set but model.dit.text_dim is 0: set it to the encoder's width")
            cached = dm.meta.get("text_encoder")
            if "text_emb" in item and cached != self.hparams.text_encoder:
                raise UserInputError(f"the latent cache holds caption embeddings of {cached}; model.text_encoder is "
                                     f"{self.hparams.text_encoder}: use the same encoder (or a cache without embeddings)")
            if "text_emb" in item and item["text_emb"].shape[-1] != self.dit.text_dim:
                raise UserInputError(f"cached caption embeddings have width {item['text_emb'].shape[-1]}; "
                                     f"model.dit.text_dim is {self.dit.text_dim}")
        elif self.dit.num_classes > 0:
            if "label" not in item:
                raise UserInputError("class conditioning needs labels in the latent cache: encode with --data.labels true "
                                     "(class subfolders), or set model.dit.num_classes 0")
            if len(dm.classes) > self.dit.num_classes:
                raise UserInputError(f"the data has {len(dm.classes)} classes; model.dit.num_classes is {self.dit.num_classes}")
        self.image_size, self.classes = dm.image_size, dm.classes

    def on_fit_start(self) -> None:
        dm = self.trainer.datamodule
        if self.latent_scale.any():  # resumed: keep the factors the model has trained with
            return
        stored = self._stored_scales(dm)
        for r in dm.latent_ratios():
            if r in stored:
                self.latent_scale[self.dit.ratio_index(r)] = stored[r]
                log.info("latent scale %dx: %.4f (the tokenizer's latent_stats)", r, stored[r])
                continue
            std, n = dm.latent_std(r, self.hparams.scale_samples)
            self.latent_scale[self.dit.ratio_index(r)] = 1.0 / max(std, 1e-6)
            log.info("latent scale %dx: 1/std = %.4f (from %d latents)", r, 1.0 / max(std, 1e-6), n)
        if self.trainer.world_size > 1:  # every rank reads the same seeded sample; make it exact
            self.latent_scale.copy_(self.trainer.strategy.broadcast(self.latent_scale, 0))

    def _stored_scales(self, dm) -> dict[int, float]:
        """Per-ratio scaling factors stored with the tokenizer (``cat-tokenizer latent-stats``), when
        ``model.tokenizer`` is the one that made the cached latents; else {} (they are measured)."""
        if not self.hparams.tokenizer:
            return {}
        vae = self.vae
        if dm.meta.get("tokenizer_fingerprint") != vae.fingerprint():
            log.warning("model.tokenizer %s did not make the latents in %s: measuring their scale instead of using its "
                        "latent_stats", self.hparams.tokenizer, dm.cache.root)
            return {}
        return {r: f[0] for r in dm.latent_ratios() if (f := stored_factors(vae.config, r)) is not None}

    # ------------------------------------------------------------------ training
    def _condition(self, batch: dict, drop: float) -> tuple[Tensor | None, Tensor | None]:
        n = batch["latent"].shape[0]
        dropped = torch.rand(n, device=self.device) < drop
        if self.hparams.text_encoder:
            # embeddings stored by the encoder (checked in setup to come from this text encoder), else computed now
            text = batch["text_emb"].to(self.device) if "text_emb" in batch else self.embed_text(batch["caption"])
            return None, torch.where(dropped[:, None], torch.full_like(text, float("nan")), text)
        if self.dit.num_classes > 0:
            return torch.where(dropped, self.dit.num_classes, batch["label"]), None
        return None, None

    def _loss(self, batch: dict, net: DiT, drop: float, t: Tensor | None = None, noise: Tensor | None = None) -> Tensor:
        ratio = int(batch["ratio"])
        x0 = batch["latent"] * self.scale_of(ratio)  # (B, C, h, w), unit variance
        y, text = self._condition(batch, drop)
        return self.diffusion.training_loss(lambda x, tt: net(x, tt, ratio, y, text), x0, t, noise)  # (B,)

    def training_step(self, batch: dict | None, batch_idx: int) -> Tensor | None:
        if batch is None:
            return None
        loss = self._loss(batch, self.dit, self.hparams.label_dropout).mean()
        if not torch.isfinite(loss):
            raise FloatingPointError(f"non-finite diffusion loss at step {self.global_step} (ratio {batch['ratio']})")
        bs, r = batch["latent"].shape[0], int(batch["ratio"])
        self.log("train/loss", loss, prog_bar=True, batch_size=bs)
        self.log(f"train/{r}x/loss", loss, batch_size=bs)
        self.log("ratio", float(r), prog_bar=True, batch_size=bs, logger=False)
        return loss

    def on_train_batch_end(self, outputs, batch, batch_idx) -> None:
        if self.ema is not None:
            self.ema.update(self.dit, step=self.global_step)

    def validation_step(self, batch: dict | None, batch_idx: int) -> None:
        """Diffusion loss of the EMA on held-out latents at fixed timesteps and noise (comparable
        across validations), no label dropout."""
        if batch is None:
            return
        n = batch["latent"].shape[0]
        g = torch.Generator().manual_seed(batch_idx)
        t = torch.linspace(0, self.diffusion.num_train_timesteps - 1, n).round().long().to(self.device)
        noise = torch.randn(batch["latent"].shape, generator=g).to(self.device)
        loss = self._loss(batch, self.eval_dit, 0.0, t, noise).mean()
        self.log("val/loss", loss, prog_bar=True, batch_size=n, sync_dist=True)
        self.log(f"val/{int(batch['ratio'])}x/loss", loss, batch_size=n, sync_dist=True)

    def configure_optimizers(self):
        hp = self.hparams
        opt = torch.optim.AdamW(self.dit.parameters(), lr=hp.lr, betas=hp.betas, weight_decay=hp.weight_decay)
        if hp.warmup_steps <= 0:
            return opt
        sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: min(1.0, (s + 1) / hp.warmup_steps))
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}

    # ------------------------------------------------------------------ sampling
    def _conditions(self, n: int, labels: Tensor | None, texts: list[str] | None) -> tuple:
        """(labels, null labels, text embeddings, null embeddings) for ``n`` samples; None where the model has no
        such condition. Labels are checked here, on the host, once per sampling call."""
        net = self.eval_dit
        if self.hparams.text_encoder:
            if texts is None or len(texts) != n:
                raise UserInputError("a text-conditional model needs one prompt per sample")
            text = self.embed_text(texts)
            return None, None, text, torch.full_like(text, float("nan"))
        if net.num_classes > 0:
            if labels is None:
                raise UserInputError("a class-conditional model needs class labels")
            if int(labels.min()) < 0 or int(labels.max()) >= net.num_classes:
                raise UserInputError(f"class label out of range: the model has classes 0..{net.num_classes - 1}")
            y = labels.to(self.device).long()
            return y, torch.full_like(y, net.num_classes), None, None
        return None, None, None, None

    @torch.no_grad()
    def sample_latents(self, n: int, ratio: int, labels: Tensor | None = None, texts: list[str] | None = None,
                       guidance: float | None = None, steps: int | None = None, sampler: str | None = None,
                       seed: int = 0, image_size: int | None = None) -> Tensor:
        """Draw ``n`` latents at ``ratio`` with the EMA network and classifier-free guidance.

        Args:
            n: samples.
            ratio: compression ratio (must be one the model trained on).
            labels: (n,) class indices (class-conditional models).
            texts: n prompts (text-conditional models).
            guidance: CFG scale (default the module's ``guidance``); 1 = no guidance.
            steps: sampler steps (default the diffusion config's).
            sampler: ``ddim`` / ``dpm`` / ``ddpm`` (default the diffusion config's).
            seed: initial-noise seed.
            image_size: output image side (default the training data's).

        Returns:
            (n, C, S/r, S/r) latents in the tokenizer's units (scale undone).
        """
        net, scale = self.eval_dit.eval(), self.scale_of(ratio)
        guidance = self.hparams.guidance if guidance is None else guidance
        if guidance < 1.0:
            raise UserInputError(f"guidance scale must be >= 1 (1 = no guidance), got {guidance}")
        size = image_size or self.image_size
        if not size or size % ratio or (size // ratio) % net.patch_size:
            raise UserInputError(f"image size {size} must be a multiple of {ratio * net.patch_size} at {ratio}x")
        y, y_null, text, text_null = self._conditions(n, labels, texts)
        cfg = guidance != 1.0 and (y is not None or text is not None)

        def denoise(x: Tensor, t: Tensor) -> Tensor:
            if not cfg:
                return net(x, t, ratio, y, text)
            both = net(torch.cat([x, x]), torch.cat([t, t]), ratio,  # one batched pass: (2n, C, h, w)
                       None if y is None else torch.cat([y, y_null]), None if text is None else torch.cat([text, text_null]))
            cond, uncond = both.chunk(2)
            return uncond + guidance * (cond - uncond)

        dtype = next(net.parameters()).dtype
        shape = (n, net.in_channels, size // ratio, size // ratio)
        z = self.diffusion.sample(denoise, shape, torch.Generator().manual_seed(seed), self.device, dtype, sampler, steps)
        return z / scale

    @torch.no_grad()
    def decode(self, latents: Tensor, ratio: int) -> Tensor:
        """(n, C, h, w) latents -> (n, 3, h*r, w*r) images in [-1, 1]."""
        return self.vae.decode(latents.to(self.device), ratio).clamp(-1, 1)

    @torch.no_grad()
    def log_images(self, n: int | None = None, seed: int = 0) -> dict[str, Tensor]:
        """Sample grids per trained ratio (classes 0, 1, ... or empty prompts), in [0, 1]."""
        n = n or self.hparams.grid_images
        labels = torch.arange(n) % max(self.dit.num_classes, 1) if self.dit.num_classes > 0 else None
        texts = [""] * n if self.hparams.text_encoder else None
        out = {}
        for r in self.trained_ratios:
            images = self.decode(self.sample_latents(n, r, labels, texts, seed=seed), r)
            out[f"samples_{r}x"] = make_grid(images.float().add(1).div(2), nrow=min(n, 8))
        return out

    # ------------------------------------------------------------------ checkpoint
    def on_save_checkpoint(self, checkpoint: dict) -> None:
        checkpoint[CKPT_KEY] = {"dit": self.dit.config, "diffusion": self.diffusion.config, "image_size": self.image_size,
                                "classes": self.classes}

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        extra = checkpoint.get(CKPT_KEY, {})
        self.image_size, self.classes = extra.get("image_size", self.image_size), extra.get("classes", self.classes)


def load_dit(path: str | Path, tokenizer: str | None = None, device: str = "cpu") -> DiTModule:
    """Rebuild a ``DiTModule`` from a ``lightning fit`` checkpoint alone (weights, EMA, scales).

    Args:
        path: the ``.ckpt``.
        tokenizer: override the tokenizer path stored in the checkpoint.
        device: where to put it.

    Raises:
        UserInputError: not a DiT checkpoint.
    """
    p = Path(path)
    if not p.is_file():
        raise InputNotFound(f"DiT checkpoint not found: {p}")
    try:
        ckpt = torch.load(p, map_location="cpu", weights_only=True)
    except Exception as err:
        raise UserInputError(f"cannot read checkpoint {p}: {type(err).__name__}: {str(err).splitlines()[0]}") from None
    if not isinstance(ckpt, dict) or CKPT_KEY not in ckpt:
        raise UserInputError(f"{p} is not a DiTModule checkpoint (no '{CKPT_KEY}' entry)")
    extra, hp = ckpt[CKPT_KEY], dict(ckpt.get("hyper_parameters", {}))
    hp = {k: v for k, v in hp.items() if k not in ("dit", "diffusion", "_instantiator", "_class_path")}
    if tokenizer:
        hp["tokenizer"] = tokenizer
    module = DiTModule(DiT(**extra["dit"]), diffusion=Diffusion(**extra["diffusion"]), **hp)
    module.load_state_dict(ckpt["state_dict"], strict=True)
    module.on_load_checkpoint(ckpt)
    return module.eval().to(device)
