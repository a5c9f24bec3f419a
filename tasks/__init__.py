"""Pluggable downstream tasks on the shared CATDataModule and a frozen NestedVAE (installed as ``cat_tasks``).

Each task is a package with its code and a ``commands.py`` of typed functions registered under the
``cat_tokenizer.commands`` entry points (pyproject.toml); the core never imports a task.

  reconstruction/  demo, rate-distortion (rd), the Section 3.1 analysis, eval-recon, benchmarks, the data kit
  complexity/      score images or prompts, fit and evaluate the evaluator, the JPEG re-encoding check
  distill/         the ratio head on the tokenizer's trunk, the prompt student
  classification/  linear probe on padded / pooled / fixed-ratio latents (``make classify``)
  generation/      DiT over variable-length CAT latents: encode once, train, sample, gFID (``make gen-demo``,
                   ``make gen-imagenet``, ``cat-tokenizer sample / fid / bench-gen``)
"""
