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
from collections.abc import Sequence
from pathlib import Path

import torch
import torch.nn.functional as F
from diffusers import ConfigMixin, ModelMixin
from diffusers.configuration_utils import register_to_config
from diffusers.models.autoencoders.vae import DiagonalGaussianDistribution
from diffusers.models.downsampling import Downsample2D
from diffusers.models.unets.unet_2d_blocks import DownEncoderBlock2D, UNetMidBlock2D, UpDecoderBlock2D
from diffusers.models.upsampling import Upsample2D
from safetensors.torch import load_file
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint

import cat_tokenizer.models.hub as hub
from cat_tokenizer.errors import InputNotFound, UserInputError
from cat_tokenizer.files import apply_umask
from cat_tokenizer.fingerprint import fingerprint_state
from cat_tokenizer.models.decoder_tail import DecoderTail, up_to_pixels
from cat_tokenizer.models.diffusers_view import RatioVAE
from cat_tokenizer.models.hub import BUNDLED_TOKENIZERS, bundled_path, check_weights
from cat_tokenizer.models.ratio_head import RatioHead
from cat_tokenizer.ratios import DEFAULT_RATIOS, check_ratio, ratio_level
from cat_tokenizer.regions.block_head import BlockHead
from cat_tokenizer.regions.fill import RegionFill
from cat_tokenizer.regions.latent import check_refine_ratios, decode_regions, encode_regions

__all__ = ["NestedVAE", "LatentPosterior", "NESTED_VAE_PRESETS", "BUNDLED_TOKENIZERS", "bundled_path", "check_weights"]

COLOUR_PATHS = ("none", "latent")

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


def _check_sizes(in_channels: int, out_channels: int, ch: tuple[int, ...], layers: int, groups: int, latent: int,
                 ratios: tuple[int, ...], decoder_layers: int | None = None) -> None:
    """One-line errors for sizes no model can have (before torch fails deep inside a layer)."""
    named = dict(in_channels=in_channels, out_channels=out_channels, layers_per_block=layers, norm_num_groups=groups,
                 latent_channels=latent, **({} if decoder_layers is None else {"decoder_layers_per_block": decoder_layers}))
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
        # name="op": diffusers' default registers the conv twice (conv, Conv2d_0), which safetensors refuses to save
        self.downsamplers = nn.ModuleList(Downsample2D(ch[i], use_conv=True, padding=0, name="op") for i in range(len(ch) - 1))
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

    def features(self, z: Tensor, ratio: int, stop: int) -> Tensor:
        """The path of ``ratio`` up to the input of up-stage ``stop`` (<= the ratio's level): (B, C, h, w)
        -> (B, ch[stop+1], H/2^stop, W/2^stop). Every ratio's path meets the others there."""
        level = ratio_level(ratio)
        h = self._run(self.mid, self.conv_in(z))  # (B, mid, h, w)
        h = self.entries[str(ratio)](h)  # (B, ch[level+1], h, w): a 32x latent enters at the top
        for i in range(level, stop, -1):
            h = self._run(self.stages[i], h)  # (B, ch[i], H/2^i, W/2^i)
            h = self.upsamplers[i - 1](h)  # (B, ch[i], H/2^(i-1), W/2^(i-1))
        return h

    def merge_channels(self) -> int:
        """Channels of the features where every ratio's path meets (the input of the smallest ratio's up-stage)."""
        return self.stages[ratio_level(min(int(r) for r in self.entries))].resnets[0].in_channels

    def pixels(self, h: Tensor, start: int) -> Tensor:
        """Up-stages ``start..0`` and the output tail: (B, ch[start+1], H/2^start, W/2^start) -> (B, 3, H, W)."""
        return up_to_pixels(self, h, start, self._run)

    def colour_of(self, z: Tensor, size: tuple[int, int]) -> Tensor | None:
        """The colour path's (B, 3, *size) image of a latent, or None without one."""
        if self.colour is None:
            return None
        return F.interpolate(self.colour(z), size=size, mode="bilinear", align_corners=False)

    def forward(self, z: Tensor, ratio: int, tail: nn.Module | None = None) -> Tensor:
        """Latents of one ratio -> (B, 3, H, W); ``tail`` (a ``DecoderTail``) runs the shared up-stages from its
        ``start`` in place of this decoder's own."""
        level = ratio_level(ratio) if tail is None else tail.start
        h = self.features(z, ratio, level)
        x = self.pixels(h, level) if tail is None else tail(h)  # (B, 3, H, W)
        colour = self.colour_of(z, x.shape[-2:])  # the per-token colour, around every normalisation
        return x if colour is None else x + colour


class NestedVAE(ModelMixin, ConfigMixin):
    """One KL-VAE that encodes at any of several compression ratios (default 8x, 16x, 32x per side).

    Saving and loading are diffusers' (``ModelMixin`` / ``ConfigMixin``): ``from_pretrained`` takes a
    folder, a shipped name (``"cat-small"``) or a Hub id, with ``revision``, ``subfolder``,
    ``torch_dtype``, ``variant`` and the local Hub cache; ``at_ratio(r)`` is a diffusers
    ``AutoencoderKL``-shaped view at one ratio.

    Args:
        in_channels: image channels.
        out_channels: reconstructed image channels.
        block_out_channels: width of each resolution stage; stage i runs at 1/2^i of the input,
            so 6 stages reach 32x. The last width is the shared mid-block width.
        layers_per_block: ResNet blocks per encoder stage (the decoder uses one more, as in LDM).
        decoder_layers_per_block: the decoder's own ``layers_per_block`` (default: the encoder's), for a deeper
            decoder; ``init_from`` a shallower tokenizer starts its extra ResNets as the identity.
        norm_num_groups: GroupNorm groups; must divide every width.
        latent_channels: channels C of the continuous latent (B, C, H/r, W/r).
        ratios: the compression ratios this model supports (powers of two up to 2^(stages-1)).
        ratio_head: the config of an attached ratio head (written by ``save_pretrained``).
        region_fill: the config of an attached region fill network (``cat_tokenizer.regions.fill``):
            ``decode_regions`` then fills each ratio's missing cells in one pass.
        block_head: the config of an attached block-level distortion head (``cat_tokenizer.regions.block_head``):
            the ``head`` region-map policy.
        colour_path: ``none`` (the LDM tail) or ``latent``: a zero-initialised 1x1 conv from the latent
            to RGB added to the output, so flat colours need not pass through the decoder's
            GroupNorms (docs/experiments.md, "v2: why flat colours shift").
        latent_stats: per-ratio latent statistics written by ``cat-tokenizer latent-stats``:
            ``{"measured_on": str, "ratios": {"16": {"scaling_factor": s, "shift_factor": m}, ...}}``;
            ``at_ratio(r).config`` and the DiT read them.
    """

    config_name = hub.CONFIG_NAME

    ADD_ONS = ("ratio_head.", "region_fill.", "block_head.")  # parameter prefixes of what rides along with the tokenizer

    @register_to_config
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
        latent_stats: dict | None = None,
        region_fill: dict | None = None,
        block_head: dict | None = None,
        decoder_layers_per_block: int | None = None,
    ):
        super().__init__()
        if colour_path not in COLOUR_PATHS:
            raise UserInputError(f"colour_path must be one of {', '.join(COLOUR_PATHS)}, got {colour_path!r}")
        ch, ratios = tuple(int(c) for c in block_out_channels), tuple(sorted(int(r) for r in ratios))
        _check_sizes(in_channels, out_channels, ch, layers_per_block, norm_num_groups, latent_channels, ratios, decoder_layers_per_block)
        if bad := [c for c in ch if c % norm_num_groups]:
            raise UserInputError(f"norm_num_groups={norm_num_groups} must divide every width; it does not divide {bad}")
        max_ratio = 2 ** (len(ch) - 1)
        if bad := [r for r in ratios if r > max_ratio or 2 ** ratio_level(r) != r]:
            raise UserInputError(f"ratios {bad} need more stages: {len(ch)} stages reach at most {max_ratio}x")
        self.register_to_config(block_out_channels=list(ch), ratios=list(ratios))  # JSON's lists, sorted
        self.ratios = ratios
        self.latent_channels = latent_channels
        self.encoder = _Encoder(in_channels, ch, layers_per_block, norm_num_groups, latent_channels, ratios)
        dec_layers = layers_per_block if decoder_layers_per_block is None else decoder_layers_per_block
        self.decoder = _Decoder(out_channels, ch, dec_layers, norm_num_groups, latent_channels, ratios, colour_path)
        self.register_load_state_dict_pre_hook(hub.upgrade_v1_state)  # checkpoints from before the Downsample2D rename
        self.ratio_head: RatioHead | None = None
        if ratio_head is not None:
            if "stage_channels" not in ratio_head:
                raise UserInputError("this tokenizer's ratio head was saved by an earlier version (8x map only); "
                                     "re-run `cat-tokenizer distill` to train the current one")
            if "row_stride" not in ratio_head:  # saved before row sampling existed: it read every row
                ratio_head = {**ratio_head, "row_stride": [1] * len(ratio_head["stage_channels"])}
            self.attach_ratio_head(RatioHead(**ratio_head))
        self.region_fill = None
        if region_fill is not None:
            self.attach_region_fill(RegionFill(**region_fill))
        self.block_head = None
        if block_head is not None:
            self.attach_block_head(BlockHead(**block_head))

    def __getattr__(self, name: str):
        # ``ratio_head`` is a submodule and a config key; ModelMixin would answer the config's dict first
        modules = self.__dict__.get("_modules", {})
        return modules[name] if name in modules else super().__getattr__(name)

    def attach_ratio_head(self, head: RatioHead) -> NestedVAE:
        """Carry a trained ratio head (saved with the tokenizer): ``encode(x, ratio="auto")`` then works."""
        trunk_ch = self.trunk_channels()
        if head.config["stage_channels"] != trunk_ch:
            raise UserInputError(f"ratio head expects trunk stage channels {head.config['stage_channels']}, the trunk gives {trunk_ch}")
        self.ratio_head = head
        self.register_to_config(ratio_head=dict(head.config))
        return self

    def attach_region_fill(self, fill) -> NestedVAE:
        """Carry a trained ``RegionFill`` (saved with the tokenizer): ``decode_regions`` then fills in one pass
        (plus one context pass on the grids its ``context`` names)."""
        merge = fill.config.get("merge_channels", 0)
        if (fill.config["latent_channels"] != self.latent_channels or fill.config["ratios"] != list(self.ratios)
                or merge not in (0, self.decoder.merge_channels())):
            raise UserInputError(f"region fill for {fill.config['latent_channels']} channels at {fill.config['ratios']} "
                                 f"does not fit this tokenizer ({self.latent_channels} channels at {list(self.ratios)})")
        tail = fill.config.get("tail")
        if tail is not None and tail != DecoderTail.config_for(self.decoder, ratio_level(min(self.ratios))):
            raise UserInputError(f"region fill's decoder tail {tail} does not fit this tokenizer's decoder")
        self.region_fill = fill
        self.register_to_config(region_fill=dict(fill.config))
        return self

    def set_region_context(self, ratios) -> NestedVAE:
        """The grids ``decode_regions``' default context pass refills after the attached region fill (empty: no
        pass); a setting of the decode, saved in the fill's config."""
        if self.region_fill is None:
            raise UserInputError("this tokenizer has no region fill: a region context is a setting of its fill")
        self.region_fill.config["context"] = sorted(check_refine_ratios(self, ratios, "region context"))
        self.register_to_config(region_fill=dict(self.region_fill.config))
        return self

    def attach_block_head(self, head) -> NestedVAE:
        """Carry a trained ``BlockHead`` (saved with the tokenizer): the ``head`` region-map policy then works."""
        trunk_ch = self.trunk_channels()
        if head.config["stage_channels"] != trunk_ch or head.config["ratios"] != list(self.ratios):
            raise UserInputError(f"block head for trunk {head.config['stage_channels']} at {head.config['ratios']} does not "
                                 f"fit this tokenizer (trunk {trunk_ch} at {list(self.ratios)})")
        self.block_head = head
        self.register_to_config(block_head=dict(head.config))
        return self

    def set_latent_stats(self, stats: dict) -> NestedVAE:
        """Store per-ratio latent statistics (``cat-tokenizer latent-stats`` measures them)."""
        self.register_to_config(latent_stats=stats)
        return self

    def init_config(self) -> dict:
        """The constructor's arguments as a plain dict (``NestedVAE(**vae.init_config())`` rebuilds it)."""
        return {k: copy.deepcopy(v) for k, v in self.config.items() if not k.startswith("_")}

    def fingerprint(self, with_head: bool = True) -> str:
        """A short hash of the weights (latent files and caches record it). Computed with the key names
        the weights had before the Downsample2D rename, so a tokenizer keeps its fingerprint.
        ``with_head=False`` leaves an attached ratio head, block head and region fill out: what latents
        and whole-image reconstructions depend on."""
        state = {k: v for k, v in self.state_dict().items() if with_head or not k.startswith(self.ADD_ONS)}
        return fingerprint_state(hub.with_v1_aliases(state))

    def num_params(self, with_head: bool = True) -> int:
        """Parameters; ``with_head=False`` counts the tokenizer alone (no ratio head, block head or region fill)."""
        return sum(p.numel() for k, p in self.named_parameters() if with_head or not k.startswith(self.ADD_ONS))

    def at_ratio(self, ratio: int):
        """A diffusers ``AutoencoderKL``-shaped view of this tokenizer at one ratio (shared weights):
        ``encode(x).latent_dist``, ``decode(z).sample``, ``config.scaling_factor`` (from ``latent_stats``)."""

        return RatioVAE.from_nested(self, ratio)

    # ------------------------------------------------------------------ construction / IO
    @classmethod
    def from_preset(cls, name: str, **overrides) -> NestedVAE:
        """Build a named preset (``tiny``, ``small``, ``base``), with keyword overrides."""
        if name not in NESTED_VAE_PRESETS:
            raise UserInputError(f"unknown NestedVAE preset {name!r}; choose from {sorted(NESTED_VAE_PRESETS)}")
        return cls(**{**NESTED_VAE_PRESETS[name], **overrides})

    @classmethod
    def from_init_config(cls, config: dict, source: str | Path = "config") -> NestedVAE:
        """Build from a dict of constructor arguments, with a one-line error for a key it does not take."""
        return cls(**hub.check_config(config, cls, source))

    def save_pretrained(self, directory: str | Path, dtype: torch.dtype | None = None, variant: str | None = None,
                        push_to_hub: bool = False, repo_id: str | None = None, **kwargs) -> Path:
        """diffusers' ``save_pretrained`` (``config.json`` + ``diffusion_pytorch_model[.variant].safetensors``,
        no pickle) plus a README.md model card from a template unless the folder has one.

        Args:
            directory: the folder (created).
            dtype: store the weights in this precision (e.g. ``torch.float16``; loading casts them back).
            variant: weights file variant (``"fp16"`` -> ``diffusion_pytorch_model.fp16.safetensors``).
            push_to_hub: upload the folder, card included, to ``repo_id`` (default: the folder's name).
            kwargs: passed to diffusers' ``save_pretrained`` (``is_main_process``, ``max_shard_size``).
        """
        d = Path(directory)
        model = self if dtype is None else nn.Module.to(copy.deepcopy(self), dtype)  # diffusers' .to warns on any dtype
        ModelMixin.save_pretrained(model, d, variant=variant, **kwargs)
        for f in d.glob("diffusion_pytorch_model*.safetensors"):
            apply_umask(f)  # safetensors writes 0600
        if variant is None and (d / hub.LEGACY_WEIGHTS_NAME).is_file():  # the folder's earlier copy, under the old name
            (d / hub.LEGACY_WEIGHTS_NAME).unlink()
        hub.write_model_card(d, self)
        if push_to_hub:
            from huggingface_hub import create_repo, upload_folder

            repo = create_repo(repo_id or d.name, exist_ok=True, token=kwargs.get("token")).repo_id
            upload_folder(repo_id=repo, folder_path=str(d), token=kwargs.get("token"))
        return d

    @classmethod
    def from_pretrained(cls, path_or_repo: str | Path, **kwargs) -> NestedVAE:
        """Load a tokenizer: a folder written by ``save_pretrained`` (today's or an earlier version's), a
        tokenizer shipped with the package (``"cat-small"``, offline), or a Hugging Face Hub id.

        Args:
            path_or_repo: folder, shipped name or Hub id (``owner/name``).
            kwargs: diffusers' ``from_pretrained`` options: ``subfolder``, ``revision``, ``torch_dtype``,
                ``variant``, ``cache_dir``, ``local_files_only``, ``token``. ``HF_HUB_OFFLINE=1`` reads the
                local Hub cache only.

        Raises:
            InputNotFound: neither a folder, a shipped name nor a Hub repo (or revision) that resolves.
            UserInputError: a folder whose files cannot be this tokenizer, one line naming the file.
        """
        name, subfolder, variant = str(path_or_repo), kwargs.get("subfolder") or "", kwargs.get("variant")
        root = Path(name).expanduser()
        if not root.is_dir() and name in BUNDLED_TOKENIZERS:
            root = bundled_path(name)
        elif not root.is_dir() and hub.looks_local(name):
            raise InputNotFound(f"tokenizer not found: {path_or_repo} (no such file or folder; shipped: {', '.join(BUNDLED_TOKENIZERS)})")
        elif not root.is_dir():
            root = _hub_snapshot(name, kwargs)
        folder = root / subfolder
        if err := hub.missing_files(folder, variant):
            raise err
        config, weights = hub.read_config(folder, cls), hub.weights_file(folder, variant)
        with torch.device("meta"):  # the names and shapes this config gives, without allocating them
            expected = {k: tuple(t.shape) for k, t in cls(**config).state_dict().items()}
        hub.check_weights_file(weights, expected, folder / hub.CONFIG_NAME)
        if weights.name == hub.LEGACY_WEIGHTS_NAME:
            model = cls(**config)
            model.load_state_dict(load_file(str(weights)))  # the pre-hook renames the alias keys
            model = model if kwargs.get("torch_dtype") is None else nn.Module.to(model, kwargs["torch_dtype"])
        else:  # a local folder now: the Hub options were spent resolving it
            options = {k: v for k, v in kwargs.items() if k not in ("revision", "cache_dir", "force_download", "token")}
            model = super().from_pretrained(str(root), **options)
        check_weights(model.state_dict(), weights)  # NaN / inf, on the loaded tensors (the file is read once)
        return model.eval()

    def enable_gradient_checkpointing(self, enabled: bool = True) -> NestedVAE:
        """Recompute stage activations in backward to save memory (for large images on GPU)."""
        self.encoder.gradient_checkpointing = self.decoder.gradient_checkpointing = enabled
        return self

    def disable_gradient_checkpointing(self) -> NestedVAE:
        return self.enable_gradient_checkpointing(False)

    # ------------------------------------------------------------------ the tokenizer API
    def _check_images(self, x: Tensor) -> None:
        if x.ndim != 4 or x.shape[1] != self.config["in_channels"]:
            raise UserInputError(f"expected images of shape (B, {self.config['in_channels']}, H, W), got {tuple(x.shape)}")

    @staticmethod
    def _pad(x: Tensor, multiple: int) -> Tensor:
        pad_h, pad_w = (-x.shape[-2]) % multiple, (-x.shape[-1]) % multiple
        return F.pad(x, (0, pad_w, 0, pad_h), mode="replicate") if pad_h or pad_w else x

    def encode(self, x: Tensor, ratio: int | str, target_psnr: float | None = None,
               confidence: float | None = None) -> LatentPosterior | list[LatentPosterior]:
        """Encode images at one ratio, running only the encoder stages that ratio needs.

        Args:
            x: (B, 3, H, W) in [-1, 1]; any H, W (padded up to a multiple of ``ratio``).
            ratio: one of ``self.ratios``, or ``"auto"``: the attached ratio head picks each image's
                ratio from the shared trunk features, and encoding continues from that trunk to the
                chosen exit (the input is then padded to a multiple of the largest ratio). Images at
                another size than the head was distilled at are scored on a resized copy instead.
            target_psnr: with ``"auto"`` and a distortion head (``cat-tokenizer distortion-head``):
                each image's cheapest ratio predicted to reach this PSNR (default: the head's own).
            confidence: with a distortion head that has an error model: the cheapest ratio that reaches
                the target with at least this probability (default: its predicted PSNR reaches it).

        Returns:
            A posterior whose ``sample()``/``mode()`` is (B, C, ceil(H/r), ceil(W/r)); with
            ``"auto"``, one posterior per image (each with its own ``ratio``).
        """
        if ratio == "auto":
            return self.encode_auto(x, target_psnr, confidence)
        if target_psnr is not None or confidence is not None:
            raise UserInputError('a PSNR target picks the ratio: encode with ratio="auto"')
        ratio = check_ratio(ratio, self.ratios)
        self._check_images(x)
        size = (x.shape[-2], x.shape[-1])
        return LatentPosterior(self.encoder(self._pad(x, ratio), ratio), ratio, size)

    def trunk_level(self) -> int:
        """The encoder stage every ratio runs through (the smallest ratio's exit stage)."""
        return ratio_level(min(self.ratios))

    def trunk_channels(self) -> list[int]:
        """Channels of each trunk stage, full resolution first (what a ratio or block head reads)."""
        return list(self.config["block_out_channels"][: self.trunk_level() + 1])

    def trunk(self, x: Tensor, multiple: int | None = None) -> list[Tensor]:
        """The outputs of every trunk stage (full resolution first, the 8x stage last) for images
        padded to a multiple of ``multiple`` (default: the smallest ratio)."""
        taps: list[Tensor] = []
        self.encoder.stages_to(self._pad(x, multiple or min(self.ratios)), 0, self.trunk_level(), taps)
        return taps

    def _head_view(self, x: Tensor) -> Tensor | None:
        """``x`` as the head was trained to see it (its crop policy: short side resized to its
        ``image_size`` and a centre crop, or for ``native`` a centre crop of native pixels), or None when
        ``x`` already is: trunk statistics depend on scale, so a head trained at 128 px must not read a
        512 px trunk."""
        side = self.ratio_head.config.get("image_size")
        if side is None or x.shape[-2:] == (side, side):
            return None
        from torchvision.transforms.v2 import functional as TF

        if self.ratio_head.config.get("crop") == "native" and min(x.shape[-2:]) > side:  # native pixels, as it trained
            return TF.center_crop(x, [side, side])
        return TF.center_crop(TF.resize(x, side, antialias=True), [side, side])  # (B, 3, side, side)

    def _head_scores(self, x: Tensor, taps: list[Tensor] | None = None) -> Tensor:
        """The head's scores (B,) or (B, R): on ``x``'s trunk (``taps`` when already computed), or on a
        resized view's trunk when ``x`` is not at the head's image size."""
        view = self._head_view(x)
        if view is not None:
            x, taps = view, self.trunk(view)
        return self.ratio_head(taps if taps is not None else self.trunk(x), x)

    def predict_scores(self, x: Tensor) -> Tensor:
        """Complexity scores (B,) from the ratio head on the trunk features (of a resized view when
        ``x`` is not at the head's image size)."""
        if self.ratio_head is None:
            raise UserInputError("this tokenizer has no ratio head: train one with `cat-tokenizer distill`")
        self._check_images(x)
        return self._head_scores(x)

    def encode_auto(self, x: Tensor, target_psnr: float | None = None, confidence: float | None = None) -> list[LatentPosterior]:
        """``encode(x, "auto")``: one trunk pass, the head's ratio per image, then each group of
        images continues from its trunk features to its exit."""
        if self.ratio_head is None:
            raise UserInputError('ratio="auto" needs a ratio head: train one with `cat-tokenizer distill`')
        self._check_images(x)
        size, lvl = (x.shape[-2], x.shape[-1]), self.trunk_level()
        taps = self.trunk(x, max(self.ratios))
        h = taps[-1]  # (B, ch[lvl], H/8, W/8)
        ratios = self.ratio_head.ratios_for(self._head_scores(x, taps), target_psnr, confidence)  # other sizes: a resized copy's trunk
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

    def encode_regions(self, x: Tensor, ratio_map: Tensor, sample: bool = False):
        """Encode with one ratio per block of ``max(ratios)`` px: ``ratio_map`` is (B, bh, bw) or (bh, bw).
        Returns a ``cat_tokenizer.regions.RegionLatent`` (``.tokens()`` per image); see that module."""
        return encode_regions(self, x, ratio_map, sample)

    def decode_regions(self, latent, refine: int | None = None, use_fill: bool = True, merge: str | None = None,
                       refine_ratios: tuple[int, ...] | None = None) -> Tensor:
        """A ``RegionLatent`` -> (B, 3, H, W) images at its recorded size: the mixed decode, its missing
        cells from the attached region fill, then ``refine`` context passes (default: 1 on the fill's
        ``context`` grids, cat-small's 32x grid; 0 with a fill that names none, 2 without a fill;
        ``use_fill=False`` ignores the fill; ``merge="pixels"`` decodes each ratio whole and blends the images
        by the map, ``"features"`` merges the paths at the shared 8x stages; default: the merge the fill was
        trained for; ``refine_ratios``: the grids a pass fills again, default the fill's context, else all;
        ``cat_tokenizer.regions.latent``)."""
        return decode_regions(self, latent, refine, use_fill, merge, refine_ratios)

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


def _hub_snapshot(repo_id: str, options: dict) -> Path:
    """A Hub repo's files, downloaded or from the local Hub cache (huggingface_hub's ``snapshot_download``:
    ``revision``, ``cache_dir``, ``local_files_only`` and ``HF_HUB_OFFLINE``), or the local-path alternative."""
    from huggingface_hub import snapshot_download

    sub = f"{options['subfolder']}/" if options.get("subfolder") else ""
    variant = options.get("variant")
    weights = hub.WEIGHTS_NAME if variant is None else hub.WEIGHTS_NAME.replace(".safetensors", f".{variant}.safetensors")
    try:
        return Path(snapshot_download(repo_id, revision=options.get("revision"), cache_dir=options.get("cache_dir"),
                                      local_files_only=bool(options.get("local_files_only")), token=options.get("token"),
                                      allow_patterns=[sub + hub.CONFIG_NAME, sub + weights, sub + hub.LEGACY_WEIGHTS_NAME]))
    except Exception as err:  # hub errors vary by version: offline, not found, invalid id, unknown revision
        raise InputNotFound(
            f"cannot load NestedVAE from {repo_id!r}: not a local folder, and the hub said "
            f"{type(err).__name__}. Pass a folder written by save_pretrained (config.json + {hub.WEIGHTS_NAME})."
        ) from None
