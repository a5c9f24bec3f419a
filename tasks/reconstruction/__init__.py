"""Reconstruction benchmark of a nested VAE per ratio and with CAT's adaptive ratios (``make eval-recon``)."""

from cat_tasks.reconstruction.evaluate import evaluate_reconstruction

__all__ = ["evaluate_reconstruction"]
