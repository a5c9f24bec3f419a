"""Linear-probe classification on frozen CAT latents (``make classify``)."""

from cat_tasks.classification.probe import LinearProbeModule, latent_features

__all__ = ["LinearProbeModule", "latent_features"]
