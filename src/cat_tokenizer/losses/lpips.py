"""LPIPS perceptual distance with the backbone loaded from a local file (never downloaded here).

The linear calibration layers ship inside torchmetrics; only the ImageNet backbone (torchvision
VGG16 or AlexNet) must come from disk. Where it is looked for, in order:
  1. the ``backbone_weights`` argument (a torchvision ``.pth`` state dict; its ``features.*``
     entries are used);
  2. ``$TORCH_HOME/hub/checkpoints/<torchvision file name>`` (where torchvision caches downloads,
     e.g. ``vgg16-397923af.pth``), so a machine that ever ran ``torchvision.models.vgg16(weights=...)``
     already has it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

import torch
import torchvision
from torch import Tensor, nn
from torchmetrics.functional.image.lpips import _NoTrainLpips

from cat_tokenizer.errors import InputNotFound

__all__ = ["LPIPS", "LPIPSWeightsNotFound", "default_backbone_path"]

_TV = {"vgg": ("vgg16", "VGG16_Weights"), "alex": ("alexnet", "AlexNet_Weights")}


class LPIPSWeightsNotFound(InputNotFound):
    """The LPIPS backbone weights are not on this machine."""


def default_backbone_path(net: Literal["vgg", "alex"] = "vgg") -> Path:
    """Where torchvision would cache the ImageNet backbone for ``net``."""
    url = getattr(torchvision.models, _TV[net][1]).IMAGENET1K_V1.url
    return Path(torch.hub.get_dir()) / "checkpoints" / url.rsplit("/", 1)[-1]


class LPIPS(nn.Module):
    """Frozen LPIPS distance, (B, 3, H, W) x 2 in [-1, 1] -> (B,) per-image distance.

    Args:
        net: backbone, ``vgg`` (the usual choice for VAE training) or ``alex``.
        backbone_weights: path to the torchvision state dict of that backbone; default: the
            torchvision cache (see module doc).

    Raises:
        LPIPSWeightsNotFound: when the backbone file is not on disk, with what to do about it.
    """

    def __init__(self, net: Literal["vgg", "alex"] = "vgg", backbone_weights: str | None = None):
        super().__init__()
        path = Path(backbone_weights) if backbone_weights else default_backbone_path(net)
        if not path.is_file():
            raise LPIPSWeightsNotFound(
                f"LPIPS backbone weights not found at {path}. Put torchvision's {net} ImageNet weights there "
                f"(or pass loss.init_args.lpips_weights=/path/to/{path.name}), "
                "or train without the perceptual loss: --model.loss.init_args.perceptual_weight 0"
            )
        self.lpips = _NoTrainLpips(net=net, pretrained=True, pnet_rand=True)  # calibrated lin layers, random backbone
        backbone = getattr(torchvision.models, _TV[net][0])(weights=None)
        state = torch.load(path, map_location="cpu", weights_only=True)
        # LPIPS uses only the convolutional features; a file holding just those is enough.
        backbone.features.load_state_dict({k.removeprefix("features."): v for k, v in state.items() if k.startswith("features.")})
        # torchmetrics' slices hold the torchvision feature layers under their original indices.
        slices = {int(name.rsplit(".", 1)[-1]): mod for name, mod in self.lpips.net.named_modules() if name.count(".") == 1}
        for idx, mod in slices.items():
            mod.load_state_dict(backbone.features[idx].state_dict())
        self.requires_grad_(False)

    def forward(self, x: Tensor, y: Tensor) -> Tensor:
        return self.lpips(x.float(), y.float()).flatten()  # (B,)
