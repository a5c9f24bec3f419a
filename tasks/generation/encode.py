"""Encode a dataset once into a latent cache with the frozen tokenizer (``lightning predict``).

    lightning predict -c configs/dit_encode.yaml --data.root DIR --model.tokenizer VAE --model.cache_dir LATENTS

Each rank encodes its share of the CATDataModule's bucketed predict batches (every batch one
ratio: the image's assigned ratio, or the fixed one) and writes the posterior means straight
into the cache, one file per image, then one index line per image. Run it again after a kill:
the DataModule's ``skip_encoded`` (set to the same folder by the config) leaves out what is done.
"""

from __future__ import annotations

import logging
import time
import uuid
from pathlib import Path

import lightning as L
import torch

from cat_tokenizer.complexity.text_student import TextEmbedder
from cat_tokenizer.data.latent_cache import LatentCache, LatentEntry
from cat_tokenizer.errors import UserInputError
from cat_tokenizer.io import load_vae, save_latent

__all__ = ["LatentEncoder"]

log = logging.getLogger(__name__)


class LatentEncoder(L.LightningModule):
    """Frozen nested VAE whose ``predict_step`` writes latents into a ``LatentCache``.

    Args:
        tokenizer: the nested VAE: a ``save_pretrained`` folder, a ``lightning fit`` .ckpt, or a hub id.
        cache_dir: the latent cache folder (set ``data.skip_encoded`` to the same folder to resume).
        dtype: storage dtype of the latents (``float32`` or ``bfloat16``/``float16`` to halve the disk).
        flip: also encode each image mirrored left-right (stored beside it; DiT training then draws
            one of the two, the usual flip augmentation); doubles the encode cost. Off by default:
            mirrored text is not text.
        text_encoder: also embed every caption with this frozen transformers encoder (hub id, folder or
            ``builtin:minilm``; the same as the DiT's ``text_encoder``), so text-conditioned training
            reads embeddings instead of running the encoder on every batch.
    """

    def __init__(self, tokenizer: str, cache_dir: str, dtype: str = "float32", flip: bool = False,
                 text_encoder: str | None = None):
        super().__init__()

        if dtype not in ("float32", "bfloat16", "float16"):
            raise UserInputError(f"dtype must be float32, bfloat16 or float16, got {dtype!r}")
        self.tokenizer_path, self.cache, self.dtype_name, self.flip = tokenizer, LatentCache(cache_dir), dtype, flip
        self.vae = load_vae(tokenizer).eval().requires_grad_(False)
        self.text_encoder = text_encoder
        self._text = None  # the frozen TextEmbedder, built on first use (not a submodule)
        self._index = None
        self._written = 0

    def setup(self, stage: str) -> None:
        """Check the data and claim the cache here, not in ``on_predict_start``: when every image is
        already encoded the predict loop has no batches and Lightning skips its hooks, which let a cache of
        another tokenizer's latents pass as done."""
        dm = self.trainer.datamodule
        if dm is None or not hasattr(dm, "predict_set"):
            raise UserInputError("LatentEncoder needs a CATDataModule (data: class_path: cat_tokenizer.CATDataModule)")
        if dm.assignment.mode == "uniform":
            raise UserInputError("encoding latents for the DiT needs per-image ratios (data.ratio_assignment complexity "
                                 "or csv:<path>) or one ratio (fixed:<r>), not uniform")
        if dm.skip_encoded is None:
            log.info("data.skip_encoded is not set: encoding every image (set it to model.cache_dir to resume a run)")
        elif Path(dm.skip_encoded).expanduser().resolve() != self.cache.root.resolve():
            raise UserInputError(f"data.skip_encoded ({dm.skip_encoded}) must be model.cache_dir ({self.cache.root}) "
                                 "or null")
        self.mode = dm.assignment.cache_mode
        self.cache.claim(self.vae.fingerprint(), dm.image_size, list(dm.classes), str(self.tokenizer_path), self.flip,
                         self.text_encoder)
        if self.text_encoder and dm.captions is None:
            raise UserInputError("model.text_encoder embeds captions: give them with --data.captions FILE")

    def on_predict_start(self) -> None:
        run = f"{self.mode.replace(':', '')}-{time.strftime('%Y%m%d-%H%M%S')}-{uuid.uuid4().hex[:8]}"
        self._index = self.cache.index_file(run, self.global_rank)

    @torch.no_grad()
    def predict_step(self, batch: dict | None, batch_idx: int) -> None:
        if batch is None:  # every file of the batch was unreadable (each already warned)
            return None
        ratio = int(batch["ratio"])
        dtype = getattr(torch, self.dtype_name)
        z = self.vae.encode(batch["image"], ratio).mode().to(dtype).cpu()  # (B, C, S/r, S/r)
        z_flip = self.vae.encode(batch["image"].flip(-1), ratio).mode().to(dtype).cpu() if self.flip else None
        size = tuple(batch["image"].shape[-2:])  # the encoded crop's (H, W)
        captions = batch.get("captions")  # every caption of each image, when the data has captions
        text_embs = self._embed(captions) if self.text_encoder else None  # one encoder pass for the whole batch
        entries = []
        for k, key in enumerate(batch["key"]):  # the image's path under the data root
            rel = self.cache.latent_file(key, ratio)
            extra = {"latent_flip": z_flip[k]} if self.flip else {}
            if text_embs is not None:
                extra["text_emb"] = text_embs[k]  # (N_k, D)
            save_latent(self.cache.root / rel, z[k], ratio, size, source=key, extra=extra)  # atomic, a decodable latent file
            label = int(batch["label"][k]) if "label" in batch else None
            entries.append(LatentEntry(key=key, ratio=ratio, mode=self.mode, file=rel, label=label,
                                       captions=None if captions is None else captions[k]))
        self.cache.append(self._index, entries)
        self._written += len(entries)
        return None

    def _embed(self, captions: list[list[str]]) -> list[torch.Tensor]:
        """Per image, its captions embedded (an image without captions gets the empty caption's)."""
        if self._text is None:

            self._text = TextEmbedder(self.text_encoder, device=str(self.device))
        per_image = [caps or [""] for caps in captions]
        flat = self._text([c for caps in per_image for c in caps]).float()  # (sum N_k, D)
        return [t.contiguous() for t in flat.split([len(caps) for caps in per_image])]

    def on_predict_end(self) -> None:
        log.info("rank %d wrote %d latents to %s", self.global_rank, self._written, self.cache.root)
