"""PatchGAN discriminator (pix2pix / taming-transformers NLayerDiscriminator)."""

from __future__ import annotations

from torch import Tensor, nn

__all__ = ["PatchDiscriminator"]


class PatchDiscriminator(nn.Module):
    """Fully convolutional discriminator: one real/fake logit per overlapping patch.

    Provenance: Isola et al. 2017 (pix2pix), as used in taming-transformers and LDM.

    Args:
        in_channels: image channels.
        base_channels: width of the first layer, doubled per layer up to 8x.
        num_layers: stride-2 layers; the receptive field grows with it (3 -> 70 px patches).
    """

    def __init__(self, in_channels: int = 3, base_channels: int = 64, num_layers: int = 3):
        super().__init__()
        layers: list[nn.Module] = [nn.Conv2d(in_channels, base_channels, 4, 2, 1), nn.LeakyReLU(0.2, True)]
        mult = 1
        for n in range(1, num_layers + 1):
            prev, mult = mult, min(2**n, 8)
            stride = 2 if n < num_layers else 1
            layers += [
                nn.Conv2d(base_channels * prev, base_channels * mult, 4, stride, 1, bias=False),
                nn.BatchNorm2d(base_channels * mult),
                nn.LeakyReLU(0.2, True),
            ]
        layers.append(nn.Conv2d(base_channels * mult, 1, 4, 1, 1))
        self.main = nn.Sequential(*layers)
        self.init_weights()

    def init_weights(self) -> None:
        """DCGAN init: N(0, 0.02) convs, N(1, 0.02) norm scales."""
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.normal_(m.weight, 0.0, 0.02)
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.normal_(m.weight, 1.0, 0.02)
                nn.init.zeros_(m.bias)

    def forward(self, x: Tensor) -> Tensor:
        return self.main(x)  # (B, 1, h', w') patch logits
