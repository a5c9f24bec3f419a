"""Region latents: one image, different ratios for different 32x32 blocks, from the same nested VAE.

A region latent is a ratio map with one ratio per block (a block is the largest ratio's cell, 32 px for
8x/16x/32x) and, for each block, that ratio's latent cells: (32/r)^2 tokens, so 16 at 8x, 4 at 16x and
1 at 32x. Images are padded to a multiple of the block as ``encode`` pads them.

The mixed decode runs each ratio present on its own grid up to the input of the up-stages the
smallest ratio enters at (every path arrives there with the same shape), merges the three feature
maps by the ratio map, and runs the shared stages once. The colour path is merged the same way, per
pixel. A map of one ratio decodes exactly as ``decode`` at that ratio.

A ratio's grid lacks the cells of blocks coded at another ratio, and what fills them matters: each
path's mid block (attention, GroupNorm) reads the whole grid. The first pass fills them from the
tokens that are there (a coarser block's cells repeated, a finer block's averaged); each refinement
pass re-encodes the previous pass's image at every ratio present and fills the missing cells from
that (the transmitted tokens always stay). Measured on 48 real-v1 dev images with the oracle map at
fixed 16x's tokens (cat-small v1): first pass 22.22 dB with visible seams (border/inside gradient
1.59), one refinement 24.35 (1.01), two 24.67 (0.98), three 24.69; the paths on their true full
latents (not transmittable) reach 24.79. ``refine=2`` is the default.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from diffusers.models.autoencoders.vae import DiagonalGaussianDistribution
from torch import Tensor

from cat_tokenizer.errors import UserInputError
from cat_tokenizer.ratios import ratio_level

__all__ = ["RegionLatent", "encode_regions", "decode_regions", "block_tokens", "exit_latents", "mixed_decode", "pixel_merge_decode",
           "whole_decodes", "blend_pixels", "default_merge", "default_context", "check_refine_ratios"]

MERGES = ("features", "pixels")
FEATHER = 8  # pixels a block's weight spreads across its borders in a pixel merge
# pixels each ratio's colour-path image spreads across a block border in a mixed decode: a hard mask steps there
# (v2, 48 dev images, oracle maps at 64 tokens: seams 1.41 with a hard mask, 1.02 at 2-4 px, fixed 16x 1.07; PSNR +0.02)
COLOUR_FEATHER = 4


def block_tokens(ratio: int, block: int) -> int:
    """Tokens one block costs at ``ratio``: (block / ratio)^2."""
    return (block // ratio) ** 2


@dataclass
class RegionLatent:
    """A batch of region latents.

    Args:
        ratio_map: (B, bh, bw) int64, each block's ratio.
        grids: ratio -> (B, C, bh*block/r, bw*block/r), the latent cells at that ratio; cells of blocks
            coded at another ratio are zero (they are not part of the latent, and not stored).
        size: the unpadded image size (H, W).
        block: the block side in pixels (the largest ratio).
    """

    ratio_map: Tensor
    grids: dict[int, Tensor]
    size: tuple[int, int]
    block: int

    def tokens(self) -> Tensor:
        """(B,) tokens per image: the sum over blocks of (block / ratio)^2."""
        counts = torch.zeros(self.ratio_map.shape[0], dtype=torch.long, device=self.ratio_map.device)
        for r in self.ratios():
            counts += (self.ratio_map == r).flatten(1).sum(1) * block_tokens(r, self.block)
        return counts

    def to(self, device) -> RegionLatent:
        """The same latent on ``device``."""
        return RegionLatent(self.ratio_map.to(device), {r: g.to(device) for r, g in self.grids.items()}, self.size, self.block)

    def ratios(self) -> list[int]:
        """The ratios the map uses, ascending."""
        return sorted(int(r) for r in torch.unique(self.ratio_map).tolist())

    def mask(self, ratio: int, side: int) -> Tensor:
        """(B, 1, bh*side, bw*side) float: 1 where the block is at ``ratio``, each block ``side`` cells wide."""
        m = (self.ratio_map == ratio).float()[:, None]  # (B, 1, bh, bw)
        return F.interpolate(m, scale_factor=side, mode="nearest") if side > 1 else m

    def filled(self, ratio: int, context: Tensor | None = None) -> Tensor:
        """The grid at ``ratio`` with every cell present: (B, C, bh*block/r, bw*block/r). Cells of blocks at
        another ratio come from ``context`` (a full grid at this ratio) when given, else from the tokens
        of their own ratio (repeated when coarser, averaged when finer)."""
        side = self.block // ratio
        if context is not None:
            own = self.mask(ratio, side).to(context.dtype)
            return self.grids[ratio] * own + context * (1 - own)
        out = None
        for s, g in self.grids.items():
            if not bool((self.ratio_map == s).any()):
                continue
            if s > ratio:
                g = F.interpolate(g, scale_factor=s // ratio, mode="nearest")
            elif s < ratio:
                g = F.avg_pool2d(g, ratio // s)
            part = g * self.mask(s, side).to(g.dtype)
            out = part if out is None else out + part
        return out

    def pack(self) -> list[dict[str, Tensor]]:
        """Per image, the stored form: ``ratio_map`` (bh, bw) uint8 and, per ratio used, ``latent_<r>``
        (N_r, C, block/r, block/r): that ratio's blocks in raster order. Only these tokens are kept."""
        out = []
        for b in range(self.ratio_map.shape[0]):
            item = {"ratio_map": self.ratio_map[b].to(torch.uint8).cpu()}
            for r, g in self.grids.items():
                k = self.block // r
                c, gh, gw = g.shape[1:]
                cells = g[b].reshape(c, gh // k, k, gw // k, k).permute(1, 3, 0, 2, 4)  # (bh, bw, C, k, k)
                item[f"latent_{r}"] = cells[self.ratio_map[b] == r].contiguous().cpu()  # (N_r, C, k, k)
            out.append(item)
        return out

    @classmethod
    def from_full(cls, ratio_map: Tensor, full: dict[int, Tensor], size: tuple[int, int], block: int) -> RegionLatent:
        """The region latent that keeps, of full grids at every ratio (ratio -> (B, C, H/r, W/r)), each
        block's own ratio's cells."""
        lat = cls(ratio_map, {}, size, block)
        for r in lat.ratios():
            lat.grids[r] = full[r] * lat.mask(r, block // r).to(full[r].dtype)
        return lat

    @classmethod
    def unpack(cls, item: dict[str, Tensor], size: tuple[int, int], block: int, ratios: list[int],
               channels: int) -> RegionLatent:
        """The inverse of ``pack`` for one image (a batch of one); shapes are checked with one-line errors."""
        rmap = item["ratio_map"].long()
        if rmap.ndim != 2:
            raise UserInputError(f"a ratio map is (rows, cols) of blocks, got shape {tuple(rmap.shape)}")
        want = (-(-size[0] // block), -(-size[1] // block))
        if tuple(rmap.shape) != want:
            raise UserInputError(f"a {rmap.shape[0]}x{rmap.shape[1]} ratio map does not fit a {size[0]}x{size[1]} image "
                                 f"in {block}-px blocks (expected {want[0]}x{want[1]})")
        if bad := sorted(set(rmap.unique().tolist()) - set(ratios)):
            raise UserInputError(f"the ratio map holds {bad}, not ratios of this tokenizer ({ratios})")
        bh, bw = want
        grids = {}
        for r in ratios:
            n, k = int((rmap == r).sum()), block // r
            cells = item.get(f"latent_{r}")
            if cells is None:
                if n:
                    raise UserInputError(f"the ratio map has {n} block(s) at {r}x but the file has no latent_{r}")
                continue
            if tuple(cells.shape) != (n, channels, k, k):
                raise UserInputError(f"latent_{r} has shape {tuple(cells.shape)}; the ratio map needs ({n}, {channels}, {k}, {k})")
            full = torch.zeros(bh, bw, channels, k, k, dtype=cells.dtype)
            full[rmap == r] = cells
            grids[r] = full.permute(2, 0, 3, 1, 4).reshape(1, channels, bh * k, bw * k)
        return cls(rmap[None], grids, size, block)


def check_ratio_map(ratio_map: Tensor, batch: int, blocks: tuple[int, int], ratios: list[int]) -> Tensor:
    """(B, bh, bw) or (bh, bw) ratios -> (B, bh, bw) int64, with one-line errors."""
    m = torch.as_tensor(ratio_map)
    if m.is_floating_point() and not bool((m == m.round()).all()):
        raise UserInputError("a ratio map holds whole ratios, got fractions")
    m = m.long()
    if m.ndim == 2:
        m = m.expand(batch, -1, -1)
    if m.ndim != 3 or m.shape[0] != batch or tuple(m.shape[1:]) != blocks:
        raise UserInputError(f"ratio map of shape {tuple(m.shape)} does not fit {batch} image(s) of "
                             f"{blocks[0]}x{blocks[1]} blocks")
    if bad := sorted(set(m.unique().tolist()) - set(ratios)):
        raise UserInputError(f"the ratio map holds {bad}, not ratios of this tokenizer ({ratios})")
    return m


def exit_latents(vae, xp: Tensor, ratios: list[int], sample: bool = False) -> dict[int, Tensor]:
    """Latents of padded images at each of ``ratios`` (ascending) from one pass up the shared trunk."""
    enc, h, done, out = vae.encoder, xp, -1, {}
    for r in ratios:
        h = enc.stages_to(h, done + 1, ratio_level(r))  # continue up the trunk to r's stage
        done = ratio_level(r)
        post = DiagonalGaussianDistribution(enc.exit(h, r))  # over (B, C, H/r, W/r), as encode's posterior
        out[r] = post.sample() if sample else post.mode()
    return out


def encode_regions(vae, x: Tensor, ratio_map: Tensor, sample: bool = False) -> RegionLatent:
    """Encode images with one ratio per block: one pass up the encoder, each ratio's exit taken once.

    Args:
        vae: a ``NestedVAE``.
        x: (B, 3, H, W) in [-1, 1]; padded to a multiple of the block (the largest ratio).
        ratio_map: (B, bh, bw) or (bh, bw) ratios, bh = ceil(H / block).
        sample: sample the posterior instead of taking its mean.
    """
    vae._check_images(x)
    block = max(vae.ratios)
    size = (x.shape[-2], x.shape[-1])
    xp = vae._pad(x, block)
    blocks = (xp.shape[-2] // block, xp.shape[-1] // block)
    rmap = check_ratio_map(ratio_map, x.shape[0], blocks, list(vae.ratios)).to(x.device)
    return RegionLatent.from_full(rmap, exit_latents(vae, xp, sorted(set(rmap.unique().tolist())), sample), size, block)


def mixed_decode(vae, lat: RegionLatent, grids: dict[int, Tensor], fill=None) -> Tensor:
    """One mixed decode of full grids (ratio -> (B, C, H'/r, W'/r), one per ratio present) -> (B, 3, H', W')
    at the padded size: each path to the shared 8x stages, merged by the map (then corrected by ``fill``'s
    merge adapter when it has one and the map mixes ratios, and decoded by ``fill``'s own copy of the shared
    stages when it carries one); each ratio's colour-path image is blended by the map with soft borders
    (``COLOUR_FEATHER``)."""
    dec = vae.decoder
    stop = ratio_level(min(vae.ratios))  # the up-stage every path reaches with the same shape
    merged, colour = None, None
    hp, wp = (s * lat.block for s in lat.ratio_map.shape[1:])
    for r, z in grids.items():
        f = dec.features(z, r, stop)  # (B, ch, hp/2^stop, wp/2^stop)
        part = f * lat.mask(r, lat.block // 2**stop).to(f.dtype)
        merged = part if merged is None else merged + part
        c = dec.colour_of(z, (hp, wp))
        if c is not None:
            part = c * feathered(lat.mask(r, lat.block), COLOUR_FEATHER).to(c.dtype)
            colour = part if colour is None else colour + part
    tail = None
    if fill is not None and len(grids) > 1:
        merged, tail = fill.adapt(merged, lat), fill.tail
    x = dec.pixels(merged, stop) if tail is None else tail(merged)  # (B, 3, hp, wp)
    return x if colour is None else x + colour


def feathered(mask: Tensor, feather: int) -> Tensor:
    """(B, 1, H, W) block mask -> the same with each block's weight spread ``feather`` pixels across its borders
    (a box blur; masks that sum to one still do)."""
    if not feather:
        return mask
    return F.avg_pool2d(mask.float(), 2 * feather + 1, stride=1, padding=feather, count_include_pad=False)


def pixel_merge_decode(vae, lat: RegionLatent, grids: dict[int, Tensor], feather: int = FEATHER, tail=None) -> Tensor:
    """Full grids (ratio -> (B, C, H'/r, W'/r), one per ratio present) -> (B, 3, H', W') at the padded size:
    each ratio's grid decoded whole (``decode``, or through ``tail``: ``whole_decodes``), the images blended per
    pixel by the map, each block's weight spread ``feather`` pixels across its borders (a box blur of the block
    mask; the weights still sum to one). One whole decode per ratio present instead of one mixed decode, and no
    merged features for the shared stages' GroupNorm to see."""
    return blend_pixels(lat, whole_decodes(vae, lat, grids, tail), feather)


def whole_decodes(vae, lat: RegionLatent, grids: dict[int, Tensor], tail=None) -> dict[int, Tensor]:
    """Each ratio's full grid decoded whole: ratio -> (B, 3, H', W') at the padded size; ``tail`` (a region
    fill's ``DecoderTail``) runs the shared up-stages in place of the decoder's own."""
    hp, wp = (s * lat.block for s in lat.ratio_map.shape[1:])
    if tail is None:
        return {r: vae.decode(z, r, size=(hp, wp)) for r, z in grids.items()}
    return {r: vae.decoder(z, r, tail)[..., :hp, :wp] for r, z in grids.items()}


def blend_pixels(lat: RegionLatent, images: dict[int, Tensor], feather: int = FEATHER) -> Tensor:
    """Whole decodes (ratio -> (B, 3, H', W')) blended per pixel by the map, borders feathered: (B, 3, H', W')."""
    out = None
    for r, y in images.items():
        w = feathered(lat.mask(r, lat.block), feather).to(y.dtype)  # (B, 1, H', W')
        out = y * w if out is None else out + y * w
    return out


def default_merge(vae, use_fill: bool = True) -> str:
    """The region merge ``decode_regions`` takes by default: the one the tokenizer's region fill was trained for."""
    fill = getattr(vae, "region_fill", None) if use_fill else None
    return fill.config["merge"] if fill is not None else "features"  # a fill saved before the key: RegionFill's default


def default_context(vae, use_fill: bool = True) -> tuple[int, ...]:
    """The grids ``decode_regions``' default context pass fills again: the region fill's ``context`` (none
    without a fill, or a fill saved before the key)."""
    fill = getattr(vae, "region_fill", None) if use_fill else None
    return tuple(fill.config.get("context", ())) if fill is not None else ()


def check_refine_ratios(vae, ratios, name: str = "refine_ratios") -> tuple[int, ...]:
    """``ratios`` as a tuple, or a one-line error naming ``name`` for one the tokenizer lacks."""
    if bad := sorted(set(ratios) - set(vae.ratios)):
        raise UserInputError(f"{name}: {bad[0]} is not a ratio of this tokenizer ({', '.join(map(str, vae.ratios))})")
    return tuple(ratios)


def decode_regions(vae, lat: RegionLatent, refine: int | None = None, use_fill: bool = True, merge: str | None = None,
                   refine_ratios: tuple[int, ...] | None = None) -> Tensor:
    """(B, 3, H, W) images from a region latent (cropped to its size): the mixed decode, its missing cells
    from the tokenizer's region fill when it has one (``cat_tokenizer.regions.fill``), then ``refine``
    passes that re-encode the previous image to fill them again (module doc); ``refine`` defaults to 1
    with a region fill that names ``context`` grids (cat-small: the 32x grid), 0 with one that names none,
    2 without a fill. A map of one ratio needs neither (it decodes exactly as ``decode``).
    ``use_fill=False`` decodes as a tokenizer without a region fill would (for comparisons). ``merge``:
    ``features`` (the paths merged at the shared 8x stages: one decode) or ``pixels`` (each ratio decoded
    whole and blended by the map: ``pixel_merge_decode``); by default the one the region fill was trained
    for (``features`` without a fill). ``refine_ratios``: the grids a pass fills again (default the fill's
    ``context`` grids, else every ratio present; ratios the map lacks are skipped); under the pixel merge only
    those are decoded again, so ``(32,)`` costs one encode and one decode a pass (on v3's oracle maps it keeps
    0.28 of the full pass's 0.30 dB)."""
    dtype = vae.decoder.conv_in.weight.dtype
    ratios = lat.ratios()
    mixed = len(ratios) > 1  # a map of one ratio has no missing cells
    fill = getattr(vae, "region_fill", None) if use_fill and mixed else None
    merge = default_merge(vae, use_fill) if merge is None else merge
    if merge not in MERGES:
        raise UserInputError(f"region merge must be one of {', '.join(MERGES)}, got {merge!r}")
    context = default_context(vae) if fill is not None else ()
    if refine_ratios is not None:
        check_refine_ratios(vae, refine_ratios)
    refine_ratios = refine_ratios if refine_ratios is not None else (context or None)
    if not mixed:
        refine = 0
    elif refine is None:
        refine = 2 if fill is None else int(bool(context))
    again = [r for r in ratios if refine_ratios is None or r in refine_ratios]
    grids = {r: g.to(dtype) for r, g in (fill(lat) if fill is not None else {r: lat.filled(r) for r in ratios}).items()}
    tail = fill.tail if fill is not None else None
    images = whole_decodes(vae, lat, grids, tail) if merge == "pixels" and mixed else None

    def merged(g: dict[int, Tensor]) -> Tensor:
        if images is None:
            return mixed_decode(vae, lat, {**grids, **g}, fill)
        images.update(whole_decodes(vae, lat, g, tail))  # only the grids that changed are decoded again
        return blend_pixels(lat, images)

    x = merged({})
    for _ in range(refine if again else 0):
        context = exit_latents(vae, x.clamp(-1, 1), again)
        x = merged({r: lat.filled(r, context[r]).to(dtype) for r in again})
    return x[..., : lat.size[0], : lat.size[1]]
