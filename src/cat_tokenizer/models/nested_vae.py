"""The nested VAE: one KL autoencoder with exits at 8x, 16x and 32x per side.

Provenance: CAT (Content-Adaptive Image Tokenization), Sec. 3.2 / Fig. 1: the encoder's
intermediate features at each compression level are routed through channel-matching
projections into a shared middle block and a shared Gaussian head; the decoder mirrors this.
The building blocks (ResNet stages, mid block with attention, down/upsamplers) are diffusers'
LDM-style ``AutoencoderKL`` blocks, so widths match the familiar SD/LDM f8 VAE.

Padding policy: an image whose sides are not multiples of the ratio is padded at the bottom and
right by edge replication up to the next multiple; the posterior records the original size and
``decode(..., size=post.input_size)`` crops back to it.
"""

from __future__ import annotations

import copy
import json
from collections.abc import Sequence
from pathlib import Path

import torch
import torch.nn.functional as F
from diffusers.models.autoencoders.vae import DiagonalGaussianDistribution
from diffusers.models.downsampling import Downsample2D
from diffusers.models.unets.unet_2d_blocks import DownEncoderBlock2D, UNetMidBlock2D, UpDecoderBlock2D
from diffusers.models.upsampling import Upsample2D
from safetensors import SafetensorError
from safetensors.torch import load_file, load_model, save_model
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint

from cat_tokenizer.errors import InputNotFound, UserInputError
from cat_tokenizer.files import apply_umask
from cat_tokenizer.models.ratio_head import RatioHead
from cat_tokenizer.ratios import DEFAULT_RATIOS, check_ratio, ratio_level

__all__ = ["NestedVAE", "LatentPosterior", "NESTED_VAE_PRESETS", "BUNDLED_TOKENIZERS", "bundled_path", "check_weights"]

CONFIG_NAME = "config.json"
WEIGHTS_NAME = "model.safetensors"
# Trained tokenizers that ship inside the package (src/cat_tokenizer/pretrained/<name>/, with a model card).
BUNDLED_TOKENIZERS = ("cat-small",)
COLOUR_PATHS = ("none", "latent")


def bundled_path(name: str) -> Path:
    """The folder of a tokenizer shipped with the package (``NestedVAE.from_pretrained(name)`` reads it)."""
    from importlib.resources import files

    return Path(str(files("cat_tokenizer") / "pretrained" / name))

NESTED_VAE_PRESETS: dict[str, dict] = {
    # ~0.4M params: unit tests, 32-64 px images.
    "tiny": dict(block_out_channels=(8, 16, 16, 32, 32, 32), layers_per_block=1, norm_num_groups=8, latent_channels=4),
    # ~3M params: the CPU demo at 128 px.
    "small": dict(block_out_channels=(32, 32, 64, 64, 128, 128), layers_per_block=1, norm_num_groups=16, latent_channels=8),
    # cat-small, the shipped CPU tokenizer (4.8M params): small's widths, 16 latent channels (measured better at equal time).
    "cat-small": dict(block_out_channels=(32, 32, 64, 64, 128, 128), layers_per_block=1, norm_num_groups=16, latent_channels=16),
    # LDM-f8 width (128/256/512/512) extended by two 512-wide stages for 16x and 32x; paper scale.
    "base": dict(block_out_channels=(128, 256, 512, 512, 512, 512), layers_per_block=2, norm_num_groups=32, latent_channels=16),
}


def check_weights(state: dict[str, Tensor], source: str | Path) -> None:
    """Refuse weights that would encode garbage without a word: integer or bool tensors where the
    model holds floats (an int8 export), or NaN / infinite values.

    Raises:
        UserInputError: one line naming ``source`` and the first bad tensor.
    """
    for name, t in state.items():
        if not t.is_floating_point():
            raise UserInputError(f"{source}: weight {name} is {str(t.dtype).replace('torch.', '')}; a tokenizer's weights are floats")
        if not bool(torch.isfinite(t).all()):
            raise UserInputError(f"{source}: weight {name} holds NaN or infinite values; the tokenizer is broken (retrain or re-export it)")


def _check_sizes(in_channels: int, out_channels: int, ch: tuple[int, ...], layers: int, groups: int, latent: int,
                 ratios: tuple[int, ...]) -> None:
    """One-line errors for sizes no model can have (before torch fails deep inside a layer)."""
    named = dict(in_channels=in_channels, out_channels=out_channels, layers_per_block=layers, norm_num_groups=groups,
                 latent_channels=latent)
    if bad := {k: v for k, v in named.items() if not isinstance(v, int) or v < 1}:
        raise UserInputError(f"NestedVAE sizes must be positive integers, got {bad}")
    if not ch or any(c < 1 for c in ch):
        raise UserInputError(f"block_out_channels must be one or more positive widths, got {list(ch)}")
    if not ratios or any(r < 1 for r in ratios):
        raise UserInputError(f"ratios must be one or more positive powers of two, got {list(ratios)}")


class LatentPosterior(DiagonalGaussianDistribution):
    """Diagonal Gaussian over the latent at one ratio; remembers the ratio and the unpadded input size.

    ``sample()`` / ``mode()`` return (B, C, ceil(H/r), ceil(W/r)); ``kl()`` is summed per image.
    """

    def __init__(self, parameters: Tensor, ratio: int, input_size: tuple[int, int]):
        super().__init__(parameters)
        self.ratio = ratio
        self.input_size = input_size


class _Encoder(nn.Module):
    """Down path with one exit per ratio into a shared mid block and shared Gaussian head."""

    def __init__(self, in_channels: int, ch: Sequence[int], layers: int, groups: int, latent: int, ratios: Sequence[int]):
        super().__init__()
        mid = ch[-1]
        self.conv_in = nn.Conv2d(in_channels, ch[0], 3, padding=1)
        self.stages = nn.ModuleList(
            DownEncoderBlock2D(ch[max(i - 1, 0)], ch[i], num_layers=layers, resnet_groups=groups, add_downsample=False)
            for i in range(len(ch))
        )
        self.downsamplers = nn.ModuleList(Downsample2D(ch[i], use_conv=True, padding=0) for i in range(len(ch) - 1))
        # Channel-matching projections: stage features at ratio r -> shared width.
        self.exits = nn.ModuleDict({str(r): nn.Conv2d(ch[ratio_level(r)], mid, 1) for r in ratios})
        self.mid = UNetMidBlock2D(mid, temb_channels=None, resnet_groups=groups, attention_head_dim=mid)
        self.norm_out = nn.GroupNorm(groups, mid, eps=1e-6)
        self.conv_out = nn.Conv2d(mid, 2 * latent, 3, padding=1)
        self.gradient_checkpointing = False

    def _run(self, module: nn.Module, h: Tensor) -> Tensor:
        if self.gradient_checkpointing and torch.is_grad_enabled():
            return checkpoint(module, h, use_reentrant=False)
        return module(h)

    def stages_to(self, h: Tensor, start: int, level: int, taps: list[Tensor] | None = None) -> Tensor:
        """Run stages ``start..level`` (stage 0 takes the image itself); each stage's output is
        appended to ``taps`` when given."""
        if start == 0:
            h = self.conv_in(h)  # (B, ch0, H, W)
        for i in range(start, level + 1):  # only the stages this ratio needs
            if i > 0:
                h = self.downsamplers[i - 1](h)  # (B, ch[i-1], H/2^i, W/2^i)
            h = self._run(self.stages[i], h)  # (B, ch[i], H/2^i, W/2^i)
            if taps is not None:
                taps.append(h)
        return h

    def exit(self, h: Tensor, ratio: int) -> Tensor:
        h = self.exits[str(ratio)](h)  # (B, mid, H/r, W/r)
        h = self._run(self.mid, h)
        return self.conv_out(F.silu(self.norm_out(h)))  # (B, 2C, H/r, W/r)

    def forward(self, x: Tensor, ratio: int) -> Tensor:
        return self.exit(self.stages_to(x, 0, ratio_level(ratio)), ratio)


class _Decoder(nn.Module):
    """Shared latent-in + mid block, then one entry per ratio into the up path.

    ``colour_path="latent"`` adds a 1x1 conv from the latent straight to RGB, upsampled bilinearly
    and added to the output: a per-token colour that bypasses every GroupNorm (which maps a uniform
    field to the same normalised pattern whatever its colour). Zero-initialised, so a new model
    starts as the plain tail.
    """

    def __init__(self, out_channels: int, ch: Sequence[int], layers: int, groups: int, latent: int, ratios: Sequence[int],
                 colour_path: str = "none"):
        super().__init__()
        mid, top = ch[-1], len(ch) - 1
        self.conv_in = nn.Conv2d(latent, mid, 3, padding=1)
        self.mid = UNetMidBlock2D(mid, temb_channels=None, resnet_groups=groups, attention_head_dim=mid)
        in_ch = [ch[min(i + 1, top)] for i in range(len(ch))]  # input width of up-stage i
        self.entries = nn.ModuleDict({str(r): nn.Conv2d(mid, in_ch[ratio_level(r)], 3, padding=1) for r in ratios})
        self.stages = nn.ModuleList(
            UpDecoderBlock2D(in_ch[i], ch[i], num_layers=layers + 1, resnet_groups=groups, add_upsample=False)
            for i in range(len(ch))
        )
        self.upsamplers = nn.ModuleList(Upsample2D(ch[i], use_conv=True) for i in range(1, len(ch)))
        self.norm_out = nn.GroupNorm(groups, ch[0], eps=1e-6)
        self.conv_out = nn.Conv2d(ch[0], out_channels, 3, padding=1)
        self.colour: nn.Conv2d | None = None
        if colour_path == "latent":
            self.colour = nn.Conv2d(latent, out_channels, 1)
            nn.init.zeros_(self.colour.weight)
            nn.init.zeros_(self.colour.bias)
        self.gradient_checkpointing = False

    _run = _Encoder._run

    def forward(self, z: Tensor, ratio: int) -> Tensor:
        level = ratio_level(ratio)
        h = self._run(self.mid, self.conv_in(z))  # (B, mid, h, w)
        h = self.entries[str(ratio)](h)  # (B, ch[level+1], h, w): a 32x latent enters at the top
        for i in range(level, -1, -1):
            h = self._run(self.stages[i], h)  # (B, ch[i], H/2^i, W/2^i)
            if i > 0:
                h = self.upsamplers[i - 1](h)  # (B, ch[i], H/2^(i-1), W/2^(i-1))
        x = self.conv_out(F.silu(self.norm_out(h)))  # (B, 3, H, W)
        if self.colour is not None:  # the per-token colour, around every normalisation
            x = x + F.interpolate(self.colour(z), size=x.shape[-2:], mode="bilinear", align_corners=False)
        return x


class NestedVAE(nn.Module):
    """One KL-VAE that encodes at any of several compression ratios (default 8x, 16x, 32x per side).

    Args:
        in_channels: image channels.
        out_channels: reconstructed image channels.
        block_out_channels: width of each resolution stage; stage i runs at 1/2^i of the input,
            so 6 stages reach 32x. The last width is the shared mid-block width.
        layers_per_block: ResNet blocks per encoder stage (the decoder uses one more, as in LDM).
        norm_num_groups: GroupNorm groups; must divide every width.
        latent_channels: channels C of the continuous latent (B, C, H/r, W/r).
        ratios: the compression ratios this model supports (powers of two up to 2^(stages-1)).
        ratio_head: the config of an attached ratio head (written by ``save_pretrained``).
        colour_path: ``none`` (the LDM tail) or ``latent``: a zero-initialised 1x1 conv from the latent
            to RGB added to the output, so flat colours need not pass through the decoder's
            GroupNorms (docs/training.md, "v2: why flat colours shift"). Saved configs name it only
            when it is not ``none``, so v1 folders load unchanged.
    """

    def __init__(
        self,
        in_channels: int = 3,
        out_channels: int = 3,
        block_out_channels: Sequence[int] = (128, 256, 512, 512, 512, 512),
        layers_per_block: int = 2,
        norm_num_groups: int = 32,
        latent_channels: int = 16,
        ratios: Sequence[int] = DEFAULT_RATIOS,
        ratio_head: dict | None = None,
        colour_path: str = "none",
    ):
        super().__init__()
        if colour_path not in COLOUR_PATHS:
            raise UserInputError(f"colour_path must be one of {', '.join(COLOUR_PATHS)}, got {colour_path!r}")
        ch, ratios = tuple(int(c) for c in block_out_channels), tuple(sorted(int(r) for r in ratios))
        _check_sizes(in_channels, out_channels, ch, layers_per_block, norm_num_groups, latent_channels, ratios)
        if bad := [c for c in ch if c % norm_num_groups]:
            raise UserInputError(f"norm_num_groups={norm_num_groups} must divide every width; it does not divide {bad}")
        max_ratio = 2 ** (len(ch) - 1)
        if bad := [r for r in ratios if r > max_ratio or 2 ** ratio_level(r) != r]:
            raise UserInputError(f"ratios {bad} need more stages: {len(ch)} stages reach at most {max_ratio}x")
        self.config = dict(
            in_channels=in_channels, out_channels=out_channels, block_out_channels=list(ch),
            layers_per_block=layers_per_block, norm_num_groups=norm_num_groups,
            latent_channels=latent_channels, ratios=list(ratios),
        )
        if colour_path != "none":  # only when set: a v1 config (no key) stays what it was
            self.config["colour_path"] = colour_path
        self.ratios = ratios
        self.latent_channels = latent_channels
        self.encoder = _Encoder(in_channels, ch, layers_per_block, norm_num_groups, latent_channels, ratios)
        self.decoder = _Decoder(out_channels, ch, layers_per_block, norm_num_groups, latent_channels, ratios, colour_path)
        self.ratio_head: RatioHead | None = None
        if ratio_head is not None:
            if "stage_channels" not in ratio_head:
                raise UserInputError("this tokenizer's ratio head was saved by an earlier version (8x map only); "
                                     "re-run `cat-tokenizer distill` to train the current one")
            if "row_stride" not in ratio_head:  # saved before row sampling existed: it read every row
                ratio_head = {**ratio_head, "row_stride": [1] * len(ratio_head["stage_channels"])}
            self.attach_ratio_head(RatioHead(**ratio_head))

    def attach_ratio_head(self, head: RatioHead) -> NestedVAE:
        """Carry a trained ratio head (saved with the tokenizer): ``encode(x, ratio="auto")`` then works."""
        trunk_ch = list(self.config["block_out_channels"][: self.trunk_level() + 1])
        if head.config["stage_channels"] != trunk_ch:
            raise UserInputError(f"ratio head expects trunk stage channels {head.config['stage_channels']}, the trunk gives {trunk_ch}")
        self.ratio_head = head
        self.config["ratio_head"] = dict(head.config)
        return self

    # ------------------------------------------------------------------ construction / IO
    @classmethod
    def from_preset(cls, name: str, **overrides) -> NestedVAE:
        """Build a named preset (``tiny``, ``small``, ``base``), with keyword overrides."""
        if name not in NESTED_VAE_PRESETS:
            raise UserInputError(f"unknown NestedVAE preset {name!r}; choose from {sorted(NESTED_VAE_PRESETS)}")
        return cls(**{**NESTED_VAE_PRESETS[name], **overrides})

    def save_pretrained(self, directory: str | Path, dtype: torch.dtype | None = None) -> Path:
        """Write ``config.json`` and ``model.safetensors`` (no pickle) to ``directory``; ``dtype``
        (e.g. ``torch.float16``) stores the weights in that precision (loading casts them back)."""
        d = Path(directory)
        d.mkdir(parents=True, exist_ok=True)
        (d / CONFIG_NAME).write_text(json.dumps(self.config, indent=2))
        # save_model de-duplicates aliases (diffusers' Downsample2D registers its conv twice).
        model = self if dtype is None else copy.deepcopy(self).to(dtype)
        save_model(model, str(d / WEIGHTS_NAME), metadata={"format": "pt", "class": "NestedVAE"})
        apply_umask(d / WEIGHTS_NAME)  # safetensors writes 0600
        return d

    @classmethod
    def from_pretrained(cls, path_or_repo: str | Path, local_files_only: bool = False) -> NestedVAE:
        """Load from a folder written by ``save_pretrained``, a tokenizer shipped with the package
        (``"cat-small"``, offline), or a Hugging Face hub repo id.

        Raises:
            InputNotFound: when it is neither a local folder, a shipped name nor a reachable hub repo.
        """
        d = Path(path_or_repo)
        if not d.is_dir() and str(path_or_repo) in BUNDLED_TOKENIZERS:
            d = bundled_path(str(path_or_repo))
        elif not d.is_dir() and _looks_local(str(path_or_repo)):
            raise InputNotFound(f"tokenizer not found: {path_or_repo} (no such file or folder; shipped: {', '.join(BUNDLED_TOKENIZERS)})")
        elif not d.is_dir():
            d = _hub_snapshot(str(path_or_repo), local_files_only)
        for name in (CONFIG_NAME, WEIGHTS_NAME):
            if not (d / name).is_file():
                raise InputNotFound(f"{d} is not a NestedVAE folder: {name} is missing (write one with save_pretrained)")
        try:
            config = json.loads((d / CONFIG_NAME).read_text())
        except (json.JSONDecodeError, UnicodeDecodeError) as err:
            raise UserInputError(f"{d / CONFIG_NAME}: not valid JSON ({err})") from None
        if not isinstance(config, dict):
            raise UserInputError(f"{d / CONFIG_NAME}: expected a JSON object of NestedVAE arguments")
        try:
            model = cls(**config)
        except TypeError as err:  # an unknown or missing key
            raise UserInputError(f"{d / CONFIG_NAME}: {str(err).replace('__init__() ', '')}") from None
        try:
            check_weights(load_file(str(d / WEIGHTS_NAME)), d / WEIGHTS_NAME)  # the file's own dtypes: loading casts
            missing, unexpected = load_model(model, str(d / WEIGHTS_NAME), strict=False)
        except SafetensorError as err:
            raise UserInputError(f"{d / WEIGHTS_NAME}: not a readable safetensors file ({err})") from None
        except RuntimeError as err:  # shapes that do not fit the config
            first = next((line.strip() for line in str(err).splitlines() if "size mismatch" in line), str(err).splitlines()[0])
            raise UserInputError(f"{d / WEIGHTS_NAME} does not match {d / CONFIG_NAME}: {first}") from None
        if missing or unexpected:
            raise UserInputError(f"{d / WEIGHTS_NAME} does not match its config: missing {missing[:5]}, unexpected {unexpected[:5]}")
        return model.eval()

    def enable_gradient_checkpointing(self, enabled: bool = True) -> NestedVAE:
        """Recompute stage activations in backward to save memory (for large images on GPU)."""
        self.encoder.gradient_checkpointing = self.decoder.gradient_checkpointing = enabled
        return self

    # ------------------------------------------------------------------ the tokenizer API
    def _check_images(self, x: Tensor) -> None:
        if x.ndim != 4 or x.shape[1] != self.config["in_channels"]:
            raise UserInputError(f"expected images of shape (B, {self.config['in_channels']}, H, W), got {tuple(x.shape)}")

    @staticmethod
    def _pad(x: Tensor, multiple: int) -> Tensor:
        pad_h, pad_w = (-x.shape[-2]) % multiple, (-x.shape[-1]) % multiple
        return F.pad(x, (0, pad_w, 0, pad_h), mode="replicate") if pad_h or pad_w else x

    def encode(self, x: Tensor, ratio: int | str) -> LatentPosterior | list[LatentPosterior]:
        """Encode images at one ratio, running only the encoder stages that ratio needs.

        Args:
            x: (B, 3, H, W) in [-1, 1]; any H, W (padded up to a multiple of ``ratio``).
            ratio: one of ``self.ratios``, or ``"auto"``: the attached ratio head picks each image's
                ratio from the shared trunk features, and encoding continues from that trunk to the
                chosen exit (the input is then padded to a multiple of the largest ratio). Images at
                another size than the head was distilled at are scored on a resized copy instead.

        Returns:
            A posterior whose ``sample()``/``mode()`` is (B, C, ceil(H/r), ceil(W/r)); with
            ``"auto"``, one posterior per image (each with its own ``ratio``).
        """
        if ratio == "auto":
            return self.encode_auto(x)
        ratio = check_ratio(ratio, self.ratios)
        self._check_images(x)
        size = (x.shape[-2], x.shape[-1])
        return LatentPosterior(self.encoder(self._pad(x, ratio), ratio), ratio, size)

    def trunk_level(self) -> int:
        """The encoder stage every ratio runs through (the smallest ratio's exit stage)."""
        return ratio_level(min(self.ratios))

    def trunk(self, x: Tensor, multiple: int | None = None) -> list[Tensor]:
        """The outputs of every trunk stage (full resolution first, the 8x stage last) for images
        padded to a multiple of ``multiple`` (default: the smallest ratio)."""
        taps: list[Tensor] = []
        self.encoder.stages_to(self._pad(x, multiple or min(self.ratios)), 0, self.trunk_level(), taps)
        return taps

    def _head_view(self, x: Tensor) -> Tensor | None:
        """``x`` as the head was trained to see it (short side resized to its ``image_size``, centre
        crop), or None when ``x`` already is: trunk statistics depend on scale, so a head trained at
        128 px must not read a 512 px trunk."""
        side = self.ratio_head.config.get("image_size")
        if side is None or x.shape[-2:] == (side, side):
            return None
        from torchvision.transforms.v2 import functional as TF

        return TF.center_crop(TF.resize(x, side, antialias=True), [side, side])  # (B, 3, side, side)

    def _head_scores(self, x: Tensor, taps: list[Tensor] | None = None) -> Tensor:
        """The head's scores (B,): on ``x``'s trunk (``taps`` when already computed), or on a resized
        view's trunk when ``x`` is not at the head's image size."""
        view = self._head_view(x)
        if view is not None:
            taps = self.trunk(view)
        return self.ratio_head(taps if taps is not None else self.trunk(x))

    def predict_scores(self, x: Tensor) -> Tensor:
        """Complexity scores (B,) from the ratio head on the trunk features (of a resized view when
        ``x`` is not at the head's image size)."""
        if self.ratio_head is None:
            raise UserInputError("this tokenizer has no ratio head: train one with `cat-tokenizer distill`")
        self._check_images(x)
        return self._head_scores(x)

    def encode_auto(self, x: Tensor) -> list[LatentPosterior]:
        """``encode(x, "auto")``: one trunk pass, the head's ratio per image, then each group of
        images continues from its trunk features to its exit."""
        if self.ratio_head is None:
            raise UserInputError('ratio="auto" needs a ratio head: train one with `cat-tokenizer distill`')
        self._check_images(x)
        size, lvl = (x.shape[-2], x.shape[-1]), self.trunk_level()
        taps = self.trunk(x, max(self.ratios))
        h = taps[-1]  # (B, ch[lvl], H/8, W/8)
        ratios = self.ratio_head.ratios_for(self._head_scores(x, taps))  # other sizes: a resized copy's trunk
        out: list[LatentPosterior | None] = [None] * len(ratios)
        for r in sorted(set(ratios)):
            idx = [i for i, q in enumerate(ratios) if q == r]
            g = self.encoder.stages_to(h[idx], lvl + 1, ratio_level(r))  # continue to r's stage
            params = self.encoder.exit(g, r)  # (b, 2C, H/r, W/r)
            for j, i in enumerate(idx):
                out[i] = LatentPosterior(params[j : j + 1], r, size)
        return out

    def decode(self, z: Tensor, ratio: int, size: tuple[int, int] | None = None) -> Tensor:
        """Decode latents of one ratio: (B, C, h, w) -> (B, 3, h*r, w*r), cropped to ``size`` if given.

        ``size`` must fit inside the decoded grid (``1 <= size <= (h*r, w*r)``): a larger one (a latent
        of a larger ratio decoded at a smaller one, say) is refused, not silently returned smaller.
        Float latents of another precision are cast to the weights' dtype.
        """
        ratio = check_ratio(ratio, self.ratios)
        if z.ndim != 4 or z.shape[1] != self.latent_channels:
            raise UserInputError(f"expected latents of shape (B, {self.latent_channels}, h, w), got {tuple(z.shape)}")
        if not z.is_floating_point():
            raise UserInputError(f"latents must be floats, got {str(z.dtype).replace('torch.', '')}")
        if size is not None:
            h, w = (int(v) for v in size)
            full = (z.shape[-2] * ratio, z.shape[-1] * ratio)
            if not (1 <= h <= full[0] and 1 <= w <= full[1]):
                raise UserInputError(f"size {h}x{w} does not fit a {z.shape[-2]}x{z.shape[-1]} latent at {ratio}x "
                                     f"(it decodes to {full[0]}x{full[1]}; is the ratio right?)")
        x = self.decoder(z.to(self.decoder.conv_in.weight.dtype), ratio)
        return x if size is None else x[..., : size[0], : size[1]]

    @torch.no_grad()
    def reconstruct(self, x: Tensor, ratio: int) -> Tensor:
        """Evaluation reconstruction: decode the posterior mean, same size as ``x``, clamped to [-1, 1]."""
        post = self.encode(x, ratio)
        return self.decode(post.mode(), ratio, size=post.input_size).clamp(-1, 1)

    def forward(self, x: Tensor, ratio: int, sample: bool = True) -> tuple[Tensor, LatentPosterior]:
        """Reconstruct: returns ``(x_hat, posterior)`` with ``x_hat`` the size of ``x``."""
        post = self.encode(x, ratio)
        z = post.sample() if sample else post.mode()
        return self.decode(z, ratio, size=post.input_size), post

    @property
    def last_layer(self) -> Tensor:
        """Weight of the decoder's output conv (for the GAN loss's adaptive weight)."""
        return self.decoder.conv_out.weight


def _looks_local(name: str) -> bool:
    """A path rather than a hub id (``owner/name``): a file suffix, a leading ``.``, ``/`` or ``~``, or 2+ slashes."""
    return Path(name).suffix in (".ckpt", ".pt", ".pth", ".safetensors", ".json") or name[:1] in "./~" or name.count("/") > 1


def _hub_snapshot(repo_id: str, local_files_only: bool) -> Path:
    """Resolve a hub repo id to a local snapshot, or explain the local-path alternative."""
    from huggingface_hub import snapshot_download

    try:
        return Path(snapshot_download(repo_id, allow_patterns=[CONFIG_NAME, WEIGHTS_NAME], local_files_only=local_files_only))
    except Exception as err:  # hub errors vary by version: offline, not found, invalid id
        raise InputNotFound(
            f"cannot load NestedVAE from {repo_id!r}: not a local folder, and the hub said "
            f"{type(err).__name__}. Pass a folder written by save_pretrained (config.json + model.safetensors)."
        ) from None
