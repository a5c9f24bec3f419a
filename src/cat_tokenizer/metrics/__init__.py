"""Evaluation metrics shared by the tasks: FID with a local Inception, OCR confidence, PSNR/SSIM."""

from cat_tokenizer.metrics.fid import InceptionFeatures, build_fid
from cat_tokenizer.metrics.image import psnr_ssim, to_pil
from cat_tokenizer.metrics.ocr import ocr_confidence, ocr_words

__all__ = ["InceptionFeatures", "build_fid", "ocr_words", "ocr_confidence", "psnr_ssim", "to_pil"]
