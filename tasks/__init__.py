"""Pluggable downstream tasks on the shared CATDataModule and a frozen NestedVAE.

  classification/  linear probe on padded / pooled / fixed-ratio latents (``make classify``)
  reconstruction/  PSNR, SSIM, rFID, LPIPS, OCR confidence per ratio and for CAT (``make eval-recon``)
  (generation with a DiT over variable-length CAT tokens: issue 4, not landed yet)
"""
