"""Image -> tensor transforms, with the crop policy shared by training and evaluation.

Two policies (``crop``):

* ``resize``: the short side is resized to ``size``, then a ``size x size`` crop (random in
  training, centre in evaluation). The whole image is kept, whatever its resolution: right for
  photos at ImageNet-like sizes, wrong for documents (a receipt squeezed into 128 px is grey noise).
* ``native``: crops near the image's own resolution, so text stays legible. An image whose short
  side is at most ``size`` is resized whole (short side to ``size``, as ``resize``). A larger one is
  scaled by a factor ``f`` and cropped: in training ``f`` is drawn log-uniformly from
  ``[max(1/max_downscale, size/short), 1]`` (never below a short side of ``size``), the crop is
  random; in evaluation ``f = 1`` (native pixels) and the crop is centred.
"""

from __future__ import annotations

import math
import random
from typing import Literal

import torch
from PIL import Image
from torchvision.transforms import v2
from torchvision.transforms.v2 import functional as TF

__all__ = ["CropPolicy", "NativeScaleCrop", "image_transform"]

CropPolicy = Literal["resize", "native"]


class NativeScaleCrop(torch.nn.Module):
    """A ``size x size`` crop at (or near) native resolution; small images are resized whole.

    Args:
        size: output side in pixels.
        train: random scale and position (True) or native scale, centred (False).
        max_downscale: in training, the largest downscale factor drawn (1 = always native pixels).
    """

    def __init__(self, size: int, train: bool, max_downscale: float = 2.0):
        super().__init__()
        if max_downscale < 1:
            raise ValueError(f"max_downscale must be >= 1, got {max_downscale}")
        self.size, self.train, self.max_downscale = size, train, max_downscale

    def scale_for(self, width: int, height: int) -> float:
        """The resize factor for an image of this size (random in training)."""
        low = max(1.0 / self.max_downscale, self.size / min(width, height))
        if low >= 1.0:  # short side at most `size`: the whole image, short side to `size`
            return low
        return math.exp(random.uniform(math.log(low), 0.0)) if self.train else 1.0

    def forward(self, img: Image.Image) -> Image.Image:
        w, h = img.size
        f = self.scale_for(w, h)
        if f != 1.0:  # short side ends >= size
            img = img.resize((max(self.size, round(w * f)), max(self.size, round(h * f))), Image.Resampling.BICUBIC,
                             reducing_gap=None)
        w, h = img.size
        if self.train:
            top, left = random.randint(0, h - self.size), random.randint(0, w - self.size)
        else:
            top, left = (h - self.size) // 2, (w - self.size) // 2
        return TF.crop(img, top, left, self.size, self.size)


def image_transform(size: int, train: bool, hflip: bool = False, crop: CropPolicy = "resize",
                    max_downscale: float = 2.0) -> v2.Compose:
    """PIL image -> (3, size, size) tensor in [-1, 1] under the ``crop`` policy (see module docstring)."""
    if crop == "resize":
        geometry = [v2.ToImage(), v2.Resize(size, antialias=True), v2.RandomCrop(size) if train else v2.CenterCrop(size)]
    elif crop == "native":
        geometry = [NativeScaleCrop(size, train, max_downscale), v2.ToImage()]  # PIL resize (antialiased), then tensor
    else:
        raise ValueError(f"crop must be 'resize' or 'native', got {crop!r}")
    return v2.Compose([
        *geometry,
        *([v2.RandomHorizontalFlip()] if (train and hflip) else []),
        v2.ToDtype(torch.float32, scale=True),
        v2.Normalize([0.5, 0.5, 0.5], [0.5, 0.5, 0.5]),  # (3, size, size) in [-1, 1]
    ])
