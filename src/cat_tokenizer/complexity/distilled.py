"""The distilled scorer: a tokenizer's ratio head used as a self-scoring describer.

``ComplexityEvaluator.from_config("distilled:D")`` (or ``--evaluator distilled:D``) loads the
tokenizer saved by ``cat-tokenizer distill --out D``; it scores an image from the encoder's trunk
features in one pass, with the teacher's thresholds stored in the head.
"""

from __future__ import annotations

from pathlib import Path

import torch
from PIL import Image

from cat_tokenizer.complexity.base import Describer, Description
from cat_tokenizer.data.transforms import image_transform
from cat_tokenizer.devices import resolve_device
from cat_tokenizer.errors import UserInputError
from cat_tokenizer.io import load_vae

__all__ = ["DistilledDescriber"]


class DistilledDescriber(Describer):
    """Images -> score from a nested VAE's ratio head (no text in between).

    Args:
        path: a tokenizer folder with a ratio head (``cat-tokenizer distill --out``).
        image_size: images are cropped to this before the trunk, by the crop policy the head was
            trained with (None: the size the head was trained at).
        batch_size: images per forward pass.
        device: where the trunk runs.
    """

    scores_itself = True

    def __init__(self, path: str, image_size: int | None = None, batch_size: int = 16, device: str = "auto"):
        super().__init__()
        self.path, self.image_size, self.batch_size, self.device_name = str(path), image_size, batch_size, device
        resolve_device(device)
        self.vae = None

    def load(self) -> DistilledDescriber:
        if self.vae is None:

            vae = load_vae(self.path)
            if vae.ratio_head is None:
                raise UserInputError(f"{self.path} has no ratio head: make one with `cat-tokenizer distill --out {self.path}`")
            if vae.ratio_head.predicts_psnr:
                raise UserInputError(f"{self.path}'s head is a distortion head (PSNR per ratio, not a complexity score): "
                                     "use it with `encode --ratio auto [--target-psnr T]` or `rd --distortion-head`")
            self.vae = vae.eval().to(resolve_device(self.device_name))
            self.image_size = self.image_size or vae.ratio_head.config.get("image_size") or 256
        return self

    @property
    def thresholds(self) -> tuple[float, ...]:
        return tuple(self.load().vae.ratio_head.config["thresholds"])

    def fingerprint(self) -> dict:
        weights = Path(self.path) / "model.safetensors"
        stamp = weights.stat().st_mtime_ns if weights.is_file() else None
        return {"describer": "distilled/v1", "path": str(Path(self.path).resolve()), "weights_mtime": stamp,
                "image_size": self.load().image_size, "crop": self.vae.ratio_head.config.get("crop", "resize")}

    @torch.no_grad()
    def describe(self, images: list[Image.Image]) -> list[Description]:

        self.load()
        tf = image_transform(self.image_size, train=False, crop=self.vae.ratio_head.config.get("crop", "resize"))
        out = []
        for i in range(0, len(images), self.batch_size):
            x = torch.stack([tf(im) for im in images[i : i + self.batch_size]]).to(self.vae.encoder.conv_in.weight.device)
            out += [Description(text=f"distilled score {s:.2f}", score=float(s)) for s in self.vae.predict_scores(x).cpu()]
        return out
