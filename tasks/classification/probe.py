"""A linear probe on frozen nested-VAE latents, the paper's classification setup.

Features per image (posterior mean of the frozen tokenizer at the batch's ratio):
  * ``pad``: the latent (C, H/r, W/r) is zero-padded to the size of the smallest ratio's latent
    (C, H/8, W/8), placed at the top-left corner ``[:, :H/r, :W/r]`` (zeros to the right and
    below), then flattened: one head serves every ratio, as in the paper.
  * ``pool``: average-pooled to the largest ratio's grid (C, H/32, W/32) and flattened: no
    padding, the same input size for every ratio (a reviewer's fairer control).
  * ``flat``: flattened as it is (fixed-ratio baselines: every batch has the same ratio).
"""

from __future__ import annotations

import lightning as L
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torchmetrics.classification import MulticlassAccuracy

from cat_tokenizer.errors import UserInputError
from cat_tokenizer.io import load_vae

__all__ = ["LinearProbeModule", "latent_features", "FEATURE_MODES"]

FEATURE_MODES = ("pad", "pool", "flat")


def latent_features(z: Tensor, mode: str, image_size: int, ratios: tuple[int, ...]) -> Tensor:
    """(B, C, h, w) latent -> (B, D) features; see the module docstring for the three layouts."""
    b, c, h, w = z.shape
    if mode == "pad":
        side = -(-image_size // min(ratios))
        if h > side or w > side:
            raise UserInputError(f"latent {h}x{w} is larger than the padded size {side}x{side}")
        out = z.new_zeros(b, c, side, side)
        out[:, :, :h, :w] = z  # top-left; zeros to the right and below
        return out.flatten(1)
    if mode == "pool":
        side = -(-image_size // max(ratios))
        return F.adaptive_avg_pool2d(z, side).flatten(1)
    if mode == "flat":
        return z.flatten(1)
    raise UserInputError(f"feature mode must be one of {FEATURE_MODES}, got {mode!r}")


def feature_dim(mode: str, channels: int, image_size: int, ratio: int, ratios: tuple[int, ...]) -> int:
    """Length of ``latent_features`` (``ratio`` matters only for ``flat``)."""
    ref = {"pad": min(ratios), "pool": max(ratios), "flat": ratio}[mode]
    side = -(-image_size // ref)
    return channels * side * side


class LinearProbeModule(L.LightningModule):
    """Frozen tokenizer + one linear layer, trained with cross-entropy; top-1 accuracy on val/test.

    Args:
        tokenizer: the nested VAE: a ``save_pretrained`` folder, a ``lightning fit`` .ckpt, or a hub id.
        num_classes: classes; None takes them from the DataModule (``labels: true``) at setup.
        features: ``pad`` (zero-pad to the 8x size; adaptive ratios), ``pool`` or ``flat`` (fixed ratio).
        image_size: the DataModule's image size (the head's input size depends on it; checked at setup).
        lr: AdamW learning rate.
        weight_decay: AdamW weight decay.
        cache_features: keep each image's latent after its first encoding (the tokenizer is frozen;
            exact when the images are square, else the first random crop is kept).
    """

    def __init__(self, tokenizer: str, num_classes: int | None = None, features: str = "pad", image_size: int = 256,
                 lr: float = 1e-3, weight_decay: float = 0.0, cache_features: bool = False):
        super().__init__()
        if features not in FEATURE_MODES:
            raise UserInputError(f"features must be one of {FEATURE_MODES}, got {features!r}")

        self.save_hyperparameters()
        self.vae = load_vae(tokenizer).eval().requires_grad_(False)
        self.features, self.image_size, self.lr, self.weight_decay = features, image_size, lr, weight_decay
        self.num_classes, self.cache_features = num_classes, cache_features
        self.head: nn.Linear | None = None
        self._cache: dict[tuple[str, int, int], Tensor] = {}  # (split, index in that split's dataset, ratio)
        if num_classes is not None and features != "flat":  # flat: the input size waits for the data's ratio
            self._build_head(num_classes, feature_dim(features, self.vae.latent_channels, image_size, 0, self.vae.ratios))

    def _build_head(self, num_classes: int, in_features: int) -> None:
        self.num_classes, self.head = num_classes, nn.Linear(in_features, num_classes)
        self.val_acc = MulticlassAccuracy(num_classes, average="micro")
        self.test_acc = MulticlassAccuracy(num_classes, average="micro")

    def setup(self, stage: str) -> None:
        dm = getattr(self.trainer, "datamodule", None)
        if dm is None:
            return
        if getattr(dm, "image_size", self.image_size) != self.image_size:
            raise UserInputError(f"model.image_size {self.image_size} != data.image_size {dm.image_size}: set both the same")
        if self.head is None:
            dm.setup(stage)
            if not dm.classes:
                raise UserInputError("the linear probe needs labels: set data.labels true (class subfolders)")
            fixed = getattr(dm, "fixed_ratio", None)
            if self.features == "flat" and fixed is None:
                raise UserInputError("features 'flat' needs one ratio for every batch: data.ratio_assignment fixed:<r>")
            dim = feature_dim(self.features, self.vae.latent_channels, self.image_size, fixed or 0, self.vae.ratios)
            self._build_head(self.num_classes or len(dm.classes), dim)

    def head_parameters(self) -> int:
        return sum(p.numel() for p in self.head.parameters())

    @torch.no_grad()
    def encode(self, batch: dict, split: str = "train") -> Tensor:
        """(B, D) features of a batch (one ratio), from the cache where possible. ``split`` keeps
        the caches of the train / val / test datasets apart (their indices overlap)."""
        r = int(batch["ratio"])
        keys = [(split, int(i), r) for i in batch["index"]]
        if self.cache_features and all(k in self._cache for k in keys):
            return torch.stack([self._cache[k] for k in keys]).to(self.device)
        z = self.vae.encode(batch["image"], r).mode()  # (B, C, S/r, S/r)
        f = latent_features(z, self.features, self.image_size, self.vae.ratios)
        if self.cache_features:
            self._cache.update({k: v.cpu() for k, v in zip(keys, f)})
        return f

    def _logits(self, batch: dict, split: str) -> Tensor:
        return self.head(self.encode(batch, split))  # (B, K)

    def training_step(self, batch: dict, batch_idx: int) -> Tensor:
        loss = F.cross_entropy(self._logits(batch, "train"), batch["label"])
        self.log("train/loss", loss, prog_bar=True, batch_size=len(batch["label"]))
        return loss

    def validation_step(self, batch: dict, batch_idx: int) -> None:
        self.val_acc(self._logits(batch, "val"), batch["label"])
        self.log("val/acc", self.val_acc, prog_bar=True, batch_size=len(batch["label"]))

    def test_step(self, batch: dict, batch_idx: int) -> None:
        self.test_acc(self._logits(batch, "test"), batch["label"])
        self.log("test/acc", self.test_acc, batch_size=len(batch["label"]))

    def configure_optimizers(self):
        return torch.optim.AdamW(self.head.parameters(), lr=self.lr, weight_decay=self.weight_decay)

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        # The frozen tokenizer is not part of what was trained; the head is all a probe checkpoint needs.
        checkpoint["state_dict"] = {k: v for k, v in checkpoint["state_dict"].items() if not k.startswith("vae.")}
        checkpoint["probe_head_shape"] = (self.head.in_features, self.head.out_features)

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        if self.head is None:
            in_features, num_classes = checkpoint["probe_head_shape"]
            self._build_head(num_classes, in_features)
        checkpoint["state_dict"].update({f"vae.{k}": v for k, v in self.vae.state_dict().items()})
