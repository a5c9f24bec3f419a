"""Gaussian diffusion through diffusers' schedulers: DDPM noise for training, DDIM or DPM-Solver
for sampling, epsilon- or v-prediction. Guidance lives in the caller's denoise function."""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from diffusers import DDIMScheduler, DDPMScheduler, DPMSolverMultistepScheduler
from torch import Tensor

from cat_tokenizer.errors import UserInputError

__all__ = ["Diffusion", "SAMPLERS", "PREDICTION_TYPES"]

SAMPLERS = {"ddim": DDIMScheduler, "dpm": DPMSolverMultistepScheduler, "ddpm": DDPMScheduler}
PREDICTION_TYPES = ("epsilon", "v_prediction")

# (x_t, t) -> model output of x_t's shape; the caller binds the conditioning.
Denoiser = Callable[[Tensor, Tensor], Tensor]


class Diffusion:
    """The noise process and its samplers (no weights; a config object).

    Args:
        num_train_timesteps: DDPM steps T.
        beta_schedule: diffusers beta schedule (``linear`` as in DiT, ``scaled_linear``, ``squaredcos_cap_v2``).
        beta_start: first beta.
        beta_end: last beta.
        prediction_type: ``epsilon`` (DiT) or ``v_prediction``.
        sampler: ``ddim``, ``dpm`` (DPM-Solver++ multistep) or ``ddpm`` (ancestral, all T steps).
        sample_steps: denoising steps at sampling time (ignored by ``ddpm``).
    """

    def __init__(
        self,
        num_train_timesteps: int = 1000,
        beta_schedule: str = "linear",
        beta_start: float = 0.0001,
        beta_end: float = 0.02,
        prediction_type: str = "epsilon",
        sampler: str = "ddim",
        sample_steps: int = 50,
    ):
        if prediction_type not in PREDICTION_TYPES:
            raise UserInputError(f"prediction_type must be one of {PREDICTION_TYPES}, got {prediction_type!r}")
        if sampler not in SAMPLERS:
            raise UserInputError(f"sampler must be one of {sorted(SAMPLERS)}, got {sampler!r}")
        self.config = dict(num_train_timesteps=num_train_timesteps, beta_schedule=beta_schedule, beta_start=beta_start,
                           beta_end=beta_end, prediction_type=prediction_type, sampler=sampler, sample_steps=sample_steps)
        self.train_scheduler = DDPMScheduler(num_train_timesteps=num_train_timesteps, beta_schedule=beta_schedule,
                                             beta_start=beta_start, beta_end=beta_end, prediction_type=prediction_type,
                                             clip_sample=False)
        self.num_train_timesteps, self.prediction_type = num_train_timesteps, prediction_type
        self.sampler, self.sample_steps = sampler, sample_steps

    def sample_scheduler(self, sampler: str | None = None):
        """A fresh sampling scheduler sharing the training noise schedule."""
        name = sampler or self.sampler
        if name not in SAMPLERS:
            raise UserInputError(f"sampler must be one of {sorted(SAMPLERS)}, got {name!r}")
        extra = {"algorithm_type": "dpmsolver++"} if name == "dpm" else {}
        return SAMPLERS[name].from_config(self.train_scheduler.config, **extra)

    # ------------------------------------------------------------------ training
    def training_loss(self, denoise: Denoiser, x0: Tensor, t: Tensor | None = None, noise: Tensor | None = None) -> Tensor:
        """Per-item MSE between the model's prediction and the target at random (or given) timesteps.

        Args:
            denoise: the network with its conditioning bound.
            x0: (B, C, h, w) clean (scaled) latents.
            t: (B,) integer timesteps; default uniform in [0, T).
            noise: (B, C, h, w) Gaussian noise; default fresh.

        Returns:
            (B,) losses.
        """
        if t is None:
            t = torch.randint(0, self.num_train_timesteps, (x0.shape[0],), device=x0.device)
        noise = torch.randn_like(x0) if noise is None else noise
        sched = self.train_scheduler
        x_t = sched.add_noise(x0, noise, t)  # (B, C, h, w)
        target = noise if self.prediction_type == "epsilon" else sched.get_velocity(x0, noise, t)
        pred = denoise(x_t, t)
        return F.mse_loss(pred.float(), target.float(), reduction="none").flatten(1).mean(1)

    # ------------------------------------------------------------------ sampling
    @torch.no_grad()
    def sample(self, denoise: Denoiser, shape: tuple[int, ...], generator: torch.Generator | None = None,
               device: torch.device | str = "cpu", dtype: torch.dtype = torch.float32, sampler: str | None = None,
               steps: int | None = None) -> Tensor:
        """Draw latents of ``shape`` from noise; ``denoise`` includes any guidance.

        Args:
            denoise: (x_t, t) -> prediction of the training ``prediction_type``.
            shape: (B, C, h, w).
            generator: a CPU generator for the initial and per-step noise (reproducible samples).
            device: where the loop runs.
            dtype: the network's input dtype (e.g. bfloat16); the scheduler state stays float32.
            sampler: override ``self.sampler``.
            steps: override ``self.sample_steps``.

        Returns:
            (B, C, h, w) scaled latents, float32.
        """
        name = sampler or self.sampler
        sched = self.sample_scheduler(name)
        sched.set_timesteps(self.num_train_timesteps if name == "ddpm" else (steps or self.sample_steps), device=device)
        x = torch.randn(shape, generator=generator, dtype=torch.float32).to(device) * sched.init_noise_sigma
        for t in sched.timesteps:
            tt = torch.full((shape[0],), int(t), device=device, dtype=torch.long)
            out = denoise(sched.scale_model_input(x, t).to(dtype), tt).float()
            x = sched.step(out, t, x, generator=generator).prev_sample
        return x
