"""A learned context fill for region latents: the cells each ratio's grid lacks, predicted from the tokens sent.

A region latent sends, per 32-px block, one ratio's cells; the mixed decode runs every ratio present on
a full grid, so each grid needs the cells of the blocks coded at the other ratios. Without a fill
network they are the other ratios' tokens repeated or averaged (a seam-prone first pass), and
``decode_regions`` re-encodes its own output twice to do better (9x a 16x decode). ``RegionFill``
predicts them in one forward pass of a small network instead; it is trained against each ratio's true
latents (and, through the frozen decoder, the pixels) by ``cat_tokenizer.lit.region_fill``.

The network works on the finest ratio's grid: every ratio's sent tokens are spread onto it (nearest),
masked to their blocks, with one mask channel per ratio; a conv-in, ResNet blocks and an attention
block (diffusers' ``UNetMidBlock2D``, as the decoder's own mid block) read the whole image; one head per
ratio folds the finest grid onto that ratio's (pixel-unshuffle, 1x1 conv) and adds a correction to the
repeated/averaged first guess. The heads start at zero, so an untrained fill is the first pass. Sent
cells are never changed, and a map of one ratio needs no fill: it decodes exactly as ``decode``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from diffusers.models.unets.unet_2d_blocks import UNetMidBlock2D
from torch import Tensor, nn

from cat_tokenizer.errors import UserInputError
from cat_tokenizer.models.decoder_tail import DecoderTail
from cat_tokenizer.regions.latent import MERGES

if TYPE_CHECKING:
    from cat_tokenizer.regions.latent import RegionLatent

__all__ = ["RegionFill"]


class RegionFill(nn.Module):
    """Region latent -> a full latent grid per ratio present.

    Args:
        latent_channels: the tokenizer's latent channels C.
        ratios: the tokenizer's ratios, ascending (the first sets the working grid).
        width: channels of the network.
        layers: ResNet layers of the mid block (each with an attention block after it).
        groups: GroupNorm groups (divide ``width``).
        merge_channels: the decoder's feature channels where the paths merge (0: no merge adapter). The
            adapter, a zero-initialised two-layer conv on the merged features and the map, corrects what
            the merge itself costs: the shared stages' GroupNorms see a patchwork of paths.
        tail: a ``DecoderTail`` config (``DecoderTail.config_for``): the fill carries its own copy of the
            decoder's shared up-stages, fine-tuned on mixed maps, which decodes a map that mixes ratios
            (a map of one ratio still takes the tokenizer's own stages, so it decodes exactly as before):
            the merged features under the features merge, each ratio's whole decode under the pixel merge.
        merge: the region decode the fill was trained for, and ``decode_regions``' default with it:
            ``features`` (the paths merged at the shared 8x stages: the adapter belongs to it) or
            ``pixels`` (each ratio's filled grid decoded whole, the images blended by the map).
        context: the grids ``decode_regions`` fills again by default in one context pass after the fill (the
            decode re-encoded at those ratios; empty: no pass). ``(32,)``, the coarsest grid, adds 0.05-0.12 dB
            to every region map on v3's dev for 1.5x the pixel merge's decode (docs/regions.md); a setting of
            the decode, not of the weights (``cat-tokenizer export --region-context``).
    """

    def __init__(self, latent_channels: int, ratios: Sequence[int] = (8, 16, 32), width: int = 128, layers: int = 1,
                 groups: int = 32, merge_channels: int = 0, tail: dict | None = None, merge: str = "features",
                 context: Sequence[int] = ()):
        super().__init__()
        ratios = sorted(int(r) for r in ratios)
        if bad := sorted(set(int(r) for r in context) - set(ratios)):
            raise UserInputError(f"region fill: context ratio {bad[0]} is not one of its ratios ({', '.join(map(str, ratios))})")
        if width % groups:
            raise UserInputError(f"region fill: groups={groups} must divide width={width}")
        if merge not in MERGES:
            raise UserInputError(f"region fill: merge must be one of {', '.join(MERGES)}, got {merge!r}")
        if merge == "pixels" and merge_channels:
            raise UserInputError("region fill: a merge adapter works on merged features; merge='pixels' has none")
        self.config = {"latent_channels": int(latent_channels), "ratios": ratios, "width": int(width),
                       "layers": int(layers), "groups": int(groups), "merge_channels": int(merge_channels), "tail": tail,
                       "merge": merge, "context": sorted(int(r) for r in context)}
        c, fine = latent_channels, ratios[0]
        self.conv_in = nn.Conv2d(len(ratios) * (c + 1), width, 3, padding=1)
        self.mid = UNetMidBlock2D(width, temb_channels=None, num_layers=layers, resnet_groups=groups,
                                  attention_head_dim=width)
        self.norm = nn.GroupNorm(groups, width, eps=1e-6)
        self.heads = nn.ModuleDict({str(r): nn.Conv2d(width * (r // fine) ** 2, c, 1) for r in ratios})
        for head in self.heads.values():
            nn.init.zeros_(head.weight)
            nn.init.zeros_(head.bias)
        self.adapter = None
        if merge_channels:
            self.adapter = nn.Sequential(nn.Conv2d(merge_channels + len(ratios), width, 3, padding=1), nn.SiLU(),
                                         nn.Conv2d(width, merge_channels, 3, padding=1))
            nn.init.zeros_(self.adapter[-1].weight)
            nn.init.zeros_(self.adapter[-1].bias)
        self.tail = DecoderTail(**tail) if tail else None

    def grown_from(self, layers: int) -> list[str]:
        """Make the mid block's layers past the first ``layers`` the identity (each ResNet's last conv and each
        attention's output projection zeroed: both add to their input), so that a fill loaded from one with
        ``layers`` layers computes what that one did; returns the state keys those layers own."""
        mid = self.mid
        new = [*[(f"resnets.{i}", mid.resnets[i].conv2) for i in range(layers + 1, len(mid.resnets))],
               *[(f"attentions.{i}", mid.attentions[i].to_out[0]) for i in range(layers, len(mid.attentions))]]
        for _, out in new:
            nn.init.zeros_(out.weight)
            nn.init.zeros_(out.bias)
        return [k for k in self.state_dict() if k.startswith(tuple(f"mid.{name}." for name, _ in new))]

    def _inputs(self, lat: RegionLatent) -> Tensor:
        """(B, R * (C + 1), H/f, W/f) on the finest grid f: each ratio's sent tokens (spread, masked) and its mask."""
        fine = self.config["ratios"][0]
        parts = []
        for r in self.config["ratios"]:
            mask = lat.mask(r, lat.block // fine)  # (B, 1, H/f, W/f)
            g = lat.grids.get(r)
            if g is None:
                g = mask.new_zeros(mask.shape[0], self.config["latent_channels"], *mask.shape[-2:])
            elif r > fine:
                g = F.interpolate(g, scale_factor=r // fine, mode="nearest")
            parts += [g * mask.to(g.dtype), mask.to(g.dtype)]
        return torch.cat(parts, 1)

    def forward(self, lat: RegionLatent) -> dict[int, Tensor]:
        """Full grids of the ratios the map uses: ratio -> (B, C, H/r, W/r); sent cells unchanged."""
        if lat.block != self.config["ratios"][-1] or set(lat.ratios()) - set(self.config["ratios"]):
            raise UserInputError(f"region fill for ratios {self.config['ratios']} cannot fill a latent of ratios "
                                 f"{lat.ratios()} in {lat.block}-px blocks")
        fine = self.config["ratios"][0]
        dtype = self.conv_in.weight.dtype
        h = self.mid(self.conv_in(self._inputs(lat).to(dtype)))  # (B, width, H/f, W/f)
        h = F.silu(self.norm(h))
        out = {}
        for r in lat.ratios():
            k = r // fine
            delta = self.heads[str(r)](F.pixel_unshuffle(h, k) if k > 1 else h)  # (B, C, H/r, W/r)
            first = lat.filled(r).to(dtype)  # sent cells, the rest repeated / averaged
            own = lat.mask(r, lat.block // r).to(dtype)
            out[r] = first + delta * (1 - own)
        return out

    def adapt(self, merged: Tensor, lat: RegionLatent) -> Tensor:
        """The merged features (B, ch, h, w) corrected by the merge adapter (unchanged without one)."""
        if self.adapter is None:
            return merged
        side = merged.shape[-1] // lat.ratio_map.shape[-1]  # feature cells per block
        masks = [lat.mask(r, side).to(merged.dtype) for r in self.config["ratios"]]
        return merged + self.adapter(torch.cat([merged, *masks], 1).to(self.adapter[0].weight.dtype)).to(merged.dtype)
