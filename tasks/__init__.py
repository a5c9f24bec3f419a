"""Pluggable downstream tasks on the shared CATDataModule and a frozen NestedVAE.

  classification/  linear probe on padded / pooled / fixed-ratio latents (``make classify``)
  reconstruction/  PSNR, SSIM, rFID, LPIPS, OCR confidence per ratio and for CAT (``make eval-recon``)
  generation/      DiT over variable-length CAT latents: encode once, train, sample, gFID (``make gen-demo``,
                   ``make gen-imagenet``, ``cat-tokenizer sample / fid / bench-gen``)
"""
