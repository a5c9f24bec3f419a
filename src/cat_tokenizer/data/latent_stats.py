"""Per-ratio latent statistics: the scale (and shift) that gives a tokenizer's latents unit variance.

A diffusion model trains on ``(z - shift_factor) * scaling_factor`` (diffusers' convention; SD's VAE
ships ``scaling_factor = 0.18215``). CAT's tokenizer has one latent space per ratio, so it stores one
pair per ratio in its config (``latent_stats``), measured here on a folder of images: the posterior
mean (what the DiT's latent cache holds) of every image at every ratio, one mean and one standard
deviation over all of its elements. ``NestedVAE.at_ratio(r).config`` and the DiT read them.
"""

from __future__ import annotations

import logging
import random
from pathlib import Path

import torch

from cat_tokenizer.data.images import list_images, load_rgb, partition_readable
from cat_tokenizer.data.transforms import image_transform
from cat_tokenizer.errors import UserInputError

__all__ = ["measure_latent_stats"]

log = logging.getLogger(__name__)


@torch.no_grad()
def measure_latent_stats(vae, folder: str | Path, image_size: int = 128, limit: int | None = 2000, batch_size: int = 16,
                         seed: int = 0, device: str | torch.device = "cpu") -> dict:
    """``{"measured_on": str, "ratios": {"8": {"scaling_factor", "shift_factor", "std", "latents"}, ...}}``.

    Args:
        vae: the tokenizer (``NestedVAE``).
        folder: images (recursive); unreadable files are skipped with a warning.
        image_size: images are resized (short side) and centre-cropped to this side, as for the DiT's cache.
        limit: a seeded sample of at most this many images (None: all).
        batch_size: images per forward pass.
        seed: the sample's seed.
        device: where to encode.
    """
    paths, bad = partition_readable(list_images(folder))
    if bad:
        log.warning("skipped %d unreadable image(s) under %s, e.g. %s", len(bad), folder, bad[0])
    if not paths:
        raise UserInputError(f"no readable images under {folder}")
    if limit is not None and len(paths) > limit:
        paths = sorted(random.Random(seed).sample(paths, limit))
    tf = image_transform(image_size, train=False)
    acc = {r: torch.zeros(3, dtype=torch.float64) for r in vae.ratios}  # count, sum, sum of squares
    for i in range(0, len(paths), batch_size):
        x = torch.stack([tf(load_rgb(p)) for p in paths[i : i + batch_size]]).to(device)  # (B, 3, S, S)
        for r in vae.ratios:
            z = vae.encode(x, r).mode().double()  # (B, C, S/r, S/r)
            acc[r] += torch.stack([torch.tensor(float(z.numel()), dtype=torch.float64), z.sum().cpu(), z.pow(2).sum().cpu()])
    ratios = {}
    for r, (n, s, sq) in acc.items():
        mean = float(s / n)
        std = float((sq / n - mean**2).clamp_min(0).sqrt() * (n / max(n - 1, 1)).sqrt())
        if std <= 0:
            raise UserInputError(f"latents at {r}x have zero variance on {folder}: measure on varied images")
        ratios[str(r)] = {"scaling_factor": 1.0 / std, "shift_factor": mean, "std": std, "latents": int(n)}
    where = "/".join(Path(folder).resolve().parts[-2:])
    return {"measured_on": f"{where} ({len(paths)} images, {image_size} px, posterior mean)", "ratios": ratios}
