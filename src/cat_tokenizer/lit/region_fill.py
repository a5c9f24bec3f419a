"""LightningModule that trains a region fill (``cat_tokenizer.regions.fill``) on a frozen tokenizer.

Each batch: the images' true latents at every ratio (one pass up the frozen encoder), a random ratio map
per image (``random_maps``), the region latent that map sends, and the fill's full grids. Two losses:

* ``latent``: squared error of the filled cells against the true latents (the cells only; sent cells
  are exact), mean over cells and channels;
* ``pixel``: squared error of the region decode (through the frozen decoder) against the image: the mixed
  decode, or with ``merge="pixels"`` each ratio's filled grid decoded whole and blended by the map.

The tokenizer never changes, so a map of one ratio decodes exactly as before (the issue's "a whole map
decodes as well as today" holds by construction), and the fill is saved into a copy of the tokenizer
(``export_pretrained``: ``NestedVAE.from_pretrained(dir).decode_regions`` uses it).
"""

from __future__ import annotations

import copy
import logging
from pathlib import Path

import lightning as L
import torch
import torch.nn.functional as F
from timm.utils import ModelEmaV3
from torch import Tensor

from cat_tokenizer.errors import UserInputError
from cat_tokenizer.io import load_vae
from cat_tokenizer.lit.schedule import Schedule, check_schedule, lr_factor
from cat_tokenizer.metrics.image import psnr_per_image
from cat_tokenizer.models.decoder_tail import DecoderTail
from cat_tokenizer.ratios import ratio_level
from cat_tokenizer.regions.fill import RegionFill
from cat_tokenizer.regions.latent import RegionLatent, exit_latents, mixed_decode, pixel_merge_decode
from cat_tokenizer.regions.maps import random_maps

__all__ = ["RegionFillModule"]

log = logging.getLogger(__name__)


class RegionFillModule(L.LightningModule):
    """Trains a ``RegionFill`` for a frozen tokenizer.

    Args:
        tokenizer: the tokenizer (folder, shipped name, Hub id or ``.ckpt``); frozen.
        width: the fill network's channels.
        layers: ResNet + attention layers of its mid block.
        groups: its GroupNorm groups.
        merge_adapter: also train a merge adapter (``RegionFill``'s ``merge_channels``; pixel loss only).
        latent_weight: weight of the latent loss (filled cells against the true latents).
        pixel_weight: weight of the pixel loss (the mixed decode against the image, [-1, 1] units).
        lr: AdamW learning rate.
        weight_decay: AdamW weight decay.
        warmup_steps: linear warm-up in optimizer steps.
        lr_schedule: after warm-up, ``constant`` or ``cosine`` to ``min_lr_ratio * lr`` at ``decay_steps``.
        decay_steps: the cosine horizon (steps).
        min_lr_ratio: the cosine floor.
        ema_decay: EMA of the fill's weights, used for validation and export (0 disables).
        val_seed: seed of the validation maps (the same maps at every validation).
        init_fill: a tokenizer with a region fill of the same shape (an earlier run's ``pretrained/``) whose
            fill weights start this run: a second stage with other loss weights, say; or of fewer ``layers``
            (the extra layers start as the identity: a deeper fill grown from a trained one).
        tail: also fine-tune a copy of the decoder's shared up-stages for mixed maps (``RegionFill``'s
            ``tail``; starts as the decoder's own; pixel loss only). Single-ratio decodes keep the tokenizer's.
        tail_lr_ratio: the tail's learning rate as a share of ``lr`` (it starts trained; the fill does not).
        merge: the region decode the pixel loss goes through, saved with the fill as ``decode_regions``'
            default: ``features`` (one mixed decode; the adapter belongs to it) or ``pixels`` (each
            ratio's filled grid decoded whole, blended by the map).
    """

    def __init__(self, tokenizer: str = "cat-small", width: int = 128, layers: int = 1, groups: int = 32, merge_adapter: bool = False,
                 latent_weight: float = 0.01, pixel_weight: float = 1.0, lr: float = 1e-3, weight_decay: float = 0.0,
                 warmup_steps: int = 200, lr_schedule: Schedule = "cosine", decay_steps: int | None = 4000,
                 min_lr_ratio: float = 0.05, ema_decay: float = 0.999, val_seed: int = 0, init_fill: str | None = None,
                 tail: bool = False, tail_lr_ratio: float = 0.1, merge: str = "features"):
        super().__init__()
        check_schedule(lr_schedule, warmup_steps, decay_steps)
        self.save_hyperparameters()
        self.vae = load_vae(tokenizer).float().eval().requires_grad_(False)
        channels = self.vae.decoder.merge_channels() if merge_adapter else 0
        tail_config = DecoderTail.config_for(self.vae.decoder, ratio_level(min(self.vae.ratios))) if tail else None
        self.fill = RegionFill(self.vae.latent_channels, self.vae.ratios, width, layers, groups, channels, tail_config, merge)
        if tail:
            self.fill.tail.copy_from(self.vae.decoder)
        if init_fill:
            self._init_fill(init_fill)
        self.ema = ModelEmaV3(self.fill, decay=ema_decay, use_warmup=True) if ema_decay > 0 else None
        if self.ema is not None:
            self.ema.requires_grad_(False)
        self.block = max(self.vae.ratios)

    def _init_fill(self, source: str) -> None:
        other = load_vae(source)
        if other.region_fill is None:
            raise UserInputError(f"init_fill {source}: that tokenizer has no region fill")
        if other.fingerprint(with_head=False) != self.vae.fingerprint(with_head=False):
            log.warning("init_fill %s: its fill was trained for tokenizer %s, this run's is %s", source,
                        other.fingerprint(with_head=False), self.vae.fingerprint(with_head=False))
        # the merge's own parts (a fill may start from one made for another merge) and the decode's context setting
        extras = ("merge_channels", "tail", "merge", "layers", "context")
        mine, theirs = ({k: v for k, v in c.items() if k not in extras} for c in (self.fill.config, other.region_fill.config))
        if mine != theirs or other.region_fill.config["layers"] > self.fill.config["layers"]:
            raise UserInputError(f"init_fill {source}: its fill {other.region_fill.config} is not this run's {self.fill.config}")
        grown = set(self.fill.grown_from(other.region_fill.config["layers"]))  # a deeper fill: its new layers start as the identity
        own = self.fill.state_dict().keys()
        state = {k: v for k, v in other.region_fill.state_dict().items()
                 if not k.startswith(("adapter.", "tail.")) or k in own}  # an adapter/tail this run lacks stays behind
        missing, unexpected = self.fill.load_state_dict(state, strict=False)
        if unexpected or any(not k.startswith(("adapter.", "tail.")) and k not in grown for k in missing):
            raise UserInputError(f"init_fill {source}: its fill's weights do not fit this run's ({(unexpected or missing)[0]})")
        log.info("region fill starts from %s", source)

    @property
    def eval_fill(self) -> RegionFill:
        return self.ema.module if self.ema is not None else self.fill

    def train(self, mode: bool = True):
        super().train(mode)
        self.vae.eval()  # frozen: GroupNorm has no running stats, but keep dropout-free eval semantics
        return self

    def state_dict(self, *args, **kwargs):
        """The fill (and its EMA) only: the frozen tokenizer is rebuilt from ``tokenizer``."""
        return {k: v for k, v in super().state_dict(*args, **kwargs).items() if not k.startswith("vae.")}

    def load_state_dict(self, state_dict, strict: bool = True, assign: bool = False):
        missing = super().load_state_dict(state_dict, strict=False, assign=assign)
        if strict and (bad := [k for k in missing.missing_keys if not k.startswith("vae.")] + list(missing.unexpected_keys)):
            raise RuntimeError(f"region fill checkpoint does not fit: {bad[:3]}")
        return missing

    def configure_optimizers(self):
        hp = self.hparams
        tail = [p for n, p in self.fill.named_parameters() if n.startswith("tail.")]
        rest = [p for n, p in self.fill.named_parameters() if not n.startswith("tail.")]
        groups = [{"params": rest}] + ([{"params": tail, "lr": hp.lr * hp.tail_lr_ratio}] if tail else [])
        opt = torch.optim.AdamW(groups, lr=hp.lr, weight_decay=hp.weight_decay)
        sched = torch.optim.lr_scheduler.LambdaLR(
            opt, lambda s: lr_factor(s, hp.warmup_steps, hp.lr_schedule, hp.decay_steps, hp.min_lr_ratio))
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}

    # ------------------------------------------------------------------ the losses
    @torch.no_grad()
    def _targets(self, x: Tensor) -> tuple[Tensor, dict[int, Tensor]]:
        """Images padded to whole blocks (B, 3, H', W') and their true latents at every ratio."""
        xp = self.vae._pad(x, self.block)
        return xp, exit_latents(self.vae, xp, list(self.vae.ratios))

    def _latent(self, x: Tensor, generator: torch.Generator | None) -> tuple[Tensor, RegionLatent, dict[int, Tensor]]:
        xp, full = self._targets(x)
        blocks = (xp.shape[-2] // self.block, xp.shape[-1] // self.block)
        rmap = random_maps(x.shape[0], blocks, self.vae.ratios, generator).to(x.device)
        return xp, RegionLatent.from_full(rmap, full, tuple(xp.shape[-2:]), self.block), full

    def losses(self, fill: RegionFill, xp: Tensor, lat: RegionLatent, full: dict[int, Tensor],
               decode: bool = True) -> tuple[dict[str, Tensor], Tensor | None]:
        """``{"latent", "pixel", "total"}`` and the mixed decode (B, 3, H', W'); ``decode=False`` skips the
        decode and the pixel loss (a latent-only run never needs them)."""
        grids = fill(lat)
        err, cells = xp.new_zeros(()), xp.new_zeros(())
        for r, g in grids.items():
            missing = 1 - lat.mask(r, self.block // r).to(g.dtype)  # (B, 1, H'/r, W'/r)
            err = err + ((g - full[r].to(g.dtype)).square() * missing).sum()
            cells = cells + missing.sum() * g.shape[1]  # a tensor: no device sync per step
        latent = err / cells.clamp_min(1.0)
        hp = self.hparams
        if not decode:
            return {"latent": latent, "total": hp.latent_weight * latent}, None
        y = self._decode(lat, grids, fill)
        pixel = F.mse_loss(y.float(), xp.float())
        return {"latent": latent, "pixel": pixel, "total": hp.latent_weight * latent + hp.pixel_weight * pixel}, y

    def _decode(self, lat: RegionLatent, grids: dict[int, Tensor], fill: RegionFill | None = None) -> Tensor:
        """The region decode of full grids that the fill trains for: (B, 3, H', W')."""
        if self.hparams.merge == "pixels":
            return pixel_merge_decode(self.vae, lat, grids, tail=fill.tail if fill is not None else None)
        return mixed_decode(self.vae, lat, grids, fill)

    def training_step(self, batch: dict | None, batch_idx: int):
        if batch is None:
            return None
        xp, lat, full = self._latent(batch["image"], None)
        logs, _ = self.losses(self.fill, xp, lat, full, decode=self.hparams.pixel_weight > 0)
        self.log_dict({f"train/{k}": v for k, v in logs.items()}, batch_size=xp.shape[0])
        self.log("loss", logs["total"], prog_bar=True, batch_size=xp.shape[0], logger=False)
        return logs["total"]

    def on_train_batch_end(self, outputs, batch, batch_idx: int) -> None:
        if self.ema is not None:
            self.ema.update(self.fill, step=self.global_step)

    @torch.no_grad()
    def validation_step(self, batch: dict | None, batch_idx: int) -> None:
        """PSNR of region decodes on seeded random maps: the fill's, the first pass's (no fill) and each
        path on its true full latents (not transmittable: the bound a fill approaches)."""
        if batch is None:
            return
        gen = torch.Generator().manual_seed(self.hparams.val_seed + batch_idx)
        xp, lat, full = self._latent(batch["image"], gen)
        logs, y = self.losses(self.eval_fill, xp, lat, full)
        first = self._decode(lat, {r: lat.filled(r) for r in lat.ratios()})
        true = self._decode(lat, {r: full[r] for r in lat.ratios()})
        bs = xp.shape[0]
        for name, img in (("fill", y), ("first_pass", first), ("true_latents", true)):
            self.log(f"val/psnr_{name}", psnr_per_image(img.clamp(-1, 1), xp).mean(), batch_size=bs)
        self.log_dict({f"val/{k}": v for k, v in logs.items()}, batch_size=bs)

    def export_pretrained(self, directory: str | Path) -> Path:
        """The tokenizer with the (EMA) fill attached, as a ``NestedVAE.from_pretrained`` folder."""
        vae = copy.deepcopy(self.vae).attach_region_fill(copy.deepcopy(self.eval_fill))
        return vae.save_pretrained(directory)


