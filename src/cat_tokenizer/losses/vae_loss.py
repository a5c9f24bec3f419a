"""The VAE training objective; it owns the discriminator and the GAN schedule.

Provenance: latent-diffusion's ``LPIPSWithDiscriminator`` (Rombach et al. 2022) and
taming-transformers (Esser et al. 2021): reconstruction + perceptual + KL + hinge PatchGAN,
with the adversarial weight balanced against the reconstruction gradient at the decoder's
last layer and the discriminator switched on after ``disc_start`` generator steps.
"""

from __future__ import annotations

import logging
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from cat_tokenizer.errors import UserInputError
from cat_tokenizer.losses.discriminator import PatchDiscriminator
from cat_tokenizer.losses.lpips import LPIPS
from cat_tokenizer.models.nested_vae import LatentPosterior

__all__ = ["VAELoss"]

log = logging.getLogger(__name__)


class VAELoss(nn.Module):
    """Reconstruction + LPIPS + KL + PatchGAN hinge loss for the nested VAE.

    Args:
        rec_loss: pixel loss, ``l1`` or ``l2``.
        perceptual_weight: weight of LPIPS; 0 disables it (and needs no weights on disk).
        lpips_net: LPIPS backbone, ``vgg`` or ``alex``.
        lpips_weights: local path of the LPIPS backbone's torchvision weights (see ``losses/lpips.py``).
        kl_weight: weight of the KL term, on LDM's scale (KL summed per image vs. pixel losses summed
            per image).
        disc_weight: base weight of the adversarial term (times the adaptive weight).
        disc_start: generator steps before the discriminator and the adversarial term switch on.
        disc_channels: width of the PatchGAN's first layer.
        disc_layers: stride-2 layers of the PatchGAN.
        adaptive_weight: balance the GAN gradient against the reconstruction gradient at the
            decoder's last layer (LDM); off means a constant ``disc_weight``.
    """

    def __init__(
        self,
        rec_loss: Literal["l1", "l2"] = "l1",
        perceptual_weight: float = 1.0,
        lpips_net: Literal["vgg", "alex"] = "vgg",
        lpips_weights: str | None = None,
        kl_weight: float = 1e-6,
        disc_weight: float = 0.5,
        disc_start: int = 50_001,
        disc_channels: int = 64,
        disc_layers: int = 3,
        adaptive_weight: bool = True,
    ):
        super().__init__()
        if rec_loss not in ("l1", "l2"):
            raise UserInputError(f"rec_loss must be 'l1' or 'l2', got {rec_loss!r}")
        self.rec_loss, self.kl_weight, self.disc_weight = rec_loss, kl_weight, disc_weight
        self.perceptual_weight, self.disc_start, self.adaptive_weight = perceptual_weight, disc_start, adaptive_weight
        self.perceptual = LPIPS(lpips_net, lpips_weights) if perceptual_weight > 0 else None
        if self.perceptual is None:
            log.warning("perceptual (LPIPS) loss is off: perceptual_weight=0")
        self.discriminator = PatchDiscriminator(3, disc_channels, disc_layers)

    def disc_active(self, step: int) -> bool:
        """Whether the adversarial terms are on at generator step ``step``."""
        return step >= self.disc_start

    def generator_loss(
        self, x: Tensor, x_hat: Tensor, posterior: LatentPosterior, step: int, last_layer: Tensor | None = None
    ) -> tuple[Tensor, dict[str, Tensor]]:
        """Loss for the VAE (encoder + decoder).

        Args:
            x: (B, 3, H, W) targets in [-1, 1].
            x_hat: (B, 3, H, W) reconstructions.
            posterior: the encoder's posterior (for the KL term).
            step: generator step (for ``disc_start``).
            last_layer: decoder output weight, needed for the adaptive GAN weight.

        Returns:
            ``(loss, logs)``; logs are detached scalars.
        """
        diff = x_hat.float() - x.float()
        rec = (diff.abs() if self.rec_loss == "l1" else diff.pow(2)).mean(dim=(1, 2, 3))  # (B,)
        nll = rec
        logs: dict[str, Tensor] = {"rec": rec.mean()}
        if self.perceptual is not None:
            p = self.perceptual(x, x_hat)  # (B,)
            nll = nll + self.perceptual_weight * p
            logs["lpips"] = p.mean()
        nll = nll.mean()
        kl = posterior.kl().mean()  # summed over latent elements, mean over images
        # LDM weighs the KL against per-image *sums* of pixel losses; ours are per-pixel means, so
        # dividing by the pixel count keeps kl_weight=1e-6 meaning what it means in LDM.
        loss = nll + self.kl_weight * kl / x[0].numel()
        logs["kl"] = kl
        if self.disc_active(step):
            g = -self.discriminator(x_hat).float().mean()
            w = self._adaptive_weight(nll, g, last_layer) if self.adaptive_weight and self.training else torch.tensor(1.0)
            loss = loss + self.disc_weight * w * g
            logs.update(g_adv=g, adv_weight=w)
        logs["total"] = loss
        return loss, {k: v.detach() for k, v in logs.items()}

    def discriminator_loss(self, x: Tensor, x_hat: Tensor, step: int) -> tuple[Tensor, dict[str, Tensor]]:
        """Hinge loss for the discriminator; zero-weighted (still a graph) before ``disc_start``.

        Returns:
            ``(loss, logs)`` with the mean real and fake logits.
        """
        real, fake = self.discriminator(x.detach()).float(), self.discriminator(x_hat.detach()).float()
        d = 0.5 * (F.relu(1.0 - real).mean() + F.relu(1.0 + fake).mean())
        factor = 1.0 if self.disc_active(step) else 0.0
        logs = {"d_hinge": d.detach(), "logits_real": real.mean().detach(), "logits_fake": fake.mean().detach()}
        return factor * d, logs

    @staticmethod
    def _adaptive_weight(nll: Tensor, g: Tensor, last_layer: Tensor | None) -> Tensor:
        if last_layer is None:
            raise ValueError("adaptive_weight=True needs the decoder's last layer (pass last_layer=vae.last_layer)")
        nll_grad = torch.autograd.grad(nll, last_layer, retain_graph=True)[0]
        g_grad = torch.autograd.grad(g, last_layer, retain_graph=True)[0]
        return (nll_grad.norm() / (g_grad.norm() + 1e-4)).clamp(0.0, 1e4).detach()
