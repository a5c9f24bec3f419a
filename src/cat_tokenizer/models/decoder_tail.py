"""The decoder's shared up-stages as a module of their own: the path every ratio takes from the 8x stage
to pixels (``up_to_pixels``), and a trainable copy of it (``DecoderTail``) that a region fill carries to
decode mixed maps (docs/regions.md, "A tail for mixed maps").

Every ratio's path arrives at the input of the smallest ratio's up-stage with the same shape; from there
the stages, upsamplers and output tail are shared. A region latent merges the paths there, and those
stages were trained on one path at a time: their GroupNorms see a patchwork. A copy fine-tuned on mixed
maps can learn the patchwork while the tokenizer's own stages, and so every single-ratio decode, stay
as they are.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch.nn.functional as F
from diffusers.models.unets.unet_2d_blocks import UpDecoderBlock2D
from diffusers.models.upsampling import Upsample2D
from torch import Tensor, nn

__all__ = ["DecoderTail", "up_to_pixels"]


def up_to_pixels(net: nn.Module, h: Tensor, start: int, run: Callable[[nn.Module, Tensor], Tensor] | None = None) -> Tensor:
    """Up-stages ``start..0`` of ``net`` (its ``stages``, ``upsamplers``, ``norm_out``, ``conv_out``) and its
    output tail: (B, ch[start+1], H/2^start, W/2^start) -> (B, 3, H, W). ``run(module, h)`` runs a stage
    (the decoder's: with gradient checkpointing when on)."""
    run = run or (lambda m, x: m(x))
    for i in range(start, -1, -1):
        h = run(net.stages[i], h)  # (B, ch[i], H/2^i, W/2^i)
        if i > 0:
            h = net.upsamplers[i - 1](h)  # (B, ch[i], H/2^(i-1), W/2^(i-1))
    return net.conv_out(F.silu(net.norm_out(h)))  # (B, 3, H, W)


class DecoderTail(nn.Module):
    """Up-stages ``start..0`` and the output tail, shaped as a ``_Decoder``'s (``copy_from`` takes its weights).

    Args:
        in_channels: input width of each up-stage 0..start.
        channels: output width of each up-stage 0..start.
        layers: the decoder's ``layers_per_block`` (each up-stage has one more ResNet layer).
        groups: GroupNorm groups.
        out_channels: image channels.
    """

    def __init__(self, in_channels: Sequence[int], channels: Sequence[int], layers: int, groups: int, out_channels: int = 3):
        super().__init__()
        self.config = {"in_channels": [int(c) for c in in_channels], "channels": [int(c) for c in channels], "layers": int(layers),
                       "groups": int(groups), "out_channels": int(out_channels)}
        self.start = len(channels) - 1
        self.stages = nn.ModuleList(UpDecoderBlock2D(i, o, num_layers=layers + 1, resnet_groups=groups, add_upsample=False)
                                    for i, o in zip(in_channels, channels))
        self.upsamplers = nn.ModuleList(Upsample2D(channels[i], use_conv=True) for i in range(1, len(channels)))
        self.norm_out = nn.GroupNorm(groups, channels[0], eps=1e-6)
        self.conv_out = nn.Conv2d(channels[0], out_channels, 3, padding=1)

    @classmethod
    def config_for(cls, decoder: nn.Module, start: int) -> dict:
        """The constructor arguments of a copy of ``decoder``'s up-stages ``start..0``."""
        stages = decoder.stages[: start + 1]
        return {"in_channels": [s.resnets[0].in_channels for s in stages], "channels": [s.resnets[0].out_channels for s in stages],
                "layers": len(stages[0].resnets) - 1, "groups": decoder.norm_out.num_groups, "out_channels": decoder.conv_out.out_channels}

    def copy_from(self, decoder: nn.Module) -> DecoderTail:
        """Start from ``decoder``'s weights: the tail then decodes exactly as the decoder's shared stages."""
        for i, stage in enumerate(self.stages):
            stage.load_state_dict(decoder.stages[i].state_dict())
        for i, up in enumerate(self.upsamplers):
            up.load_state_dict(decoder.upsamplers[i].state_dict())
        self.norm_out.load_state_dict(decoder.norm_out.state_dict())
        self.conv_out.load_state_dict(decoder.conv_out.state_dict())
        return self

    def forward(self, h: Tensor) -> Tensor:
        return up_to_pixels(self, h, self.start)
