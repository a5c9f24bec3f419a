"""Generation: a DiT over variable-length CAT latents (``make gen-demo``, ``make gen-imagenet``).

  dit.py        the network (adaLN-Zero, per-grid 2D sin-cos positions, ratio embedding, presets)
  diffusion.py  diffusers schedulers: DDPM training noise, DDIM / DPM-Solver sampling
  encode.py     LatentEncoder: ``lightning predict`` writes the latent cache (resumable, per rank)
  data.py       LatentDataModule: cached latents in batches of one ratio
  module.py     DiTModule: training, EMA, validation loss, CFG sampling, ``load_dit``
"""

from cat_tasks.generation.data import LatentDataModule
from cat_tasks.generation.diffusion import Diffusion
from cat_tasks.generation.dit import DIT_PRESETS, DiT
from cat_tasks.generation.encode import LatentEncoder
from cat_tasks.generation.module import DiTModule, load_dit

__all__ = ["DiT", "DIT_PRESETS", "Diffusion", "DiTModule", "LatentDataModule", "LatentEncoder", "load_dit"]
