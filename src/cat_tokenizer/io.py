"""Loading tokenizers from any of their forms, and latent files (.safetensors with metadata)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file
from torch import Tensor

from cat_tokenizer.errors import UserInputError
from cat_tokenizer.files import apply_umask, atomic_write
from cat_tokenizer.models.nested_vae import NestedVAE, check_weights
from cat_tokenizer.regions.latent import RegionLatent

__all__ = ["load_vae", "save_latent", "load_latent", "check_latent", "apply_umask", "first_line", "Latent", "CONFIG_KEY",
           "LATENT_LIMIT", "RegionFile", "save_region_latent", "load_any_latent", "REGION_FORMAT"]

CONFIG_KEY = "nested_vae_config"  # the .ckpt entry NestedVAEModule.on_save_checkpoint writes: NestedVAE rebuilds from it alone
# Largest |value| a latent may hold: trained latents stay within about +-50 (KL-regularised); a 1e30 decodes to black.
LATENT_LIMIT = 1e4
REGION_FORMAT = "cat-region-latent-v1"


def first_line(err: BaseException) -> str:
    """An exception's first non-empty message line (its type name when the message is empty)."""
    return next((line.strip() for line in str(err).splitlines() if line.strip()), type(err).__name__)


def load_vae(path: str | Path, ema: bool = True) -> NestedVAE:
    """Load a NestedVAE from a ``save_pretrained`` folder, a Lightning ``.ckpt``, or a hub repo id.

    Args:
        path: folder (config.json + model.safetensors), ``*.ckpt`` from ``lightning fit``, or repo id.
        ema: from a ``.ckpt``, take the EMA weights (what validation and export use) if present.

    Raises:
        InputNotFound: nothing loadable at ``path``.
        UserInputError: a ``.ckpt`` that is not a NestedVAEModule checkpoint.
    """
    p = Path(path)
    if p.is_file():
        if p.stat().st_size == 0:
            raise UserInputError(f"cannot read checkpoint {p}: the file is empty")
        try:
            ckpt = torch.load(p, map_location="cpu", weights_only=True)
        except Exception as err:  # not a torch file, or one that needs pickle (refused)
            raise UserInputError(f"cannot read checkpoint {p}: {type(err).__name__}: {first_line(err)}") from None
        if not isinstance(ckpt, dict) or CONFIG_KEY not in ckpt:
            raise UserInputError(f"{p} is not a NestedVAEModule checkpoint (no '{CONFIG_KEY}' entry)")
        state = ckpt.get("state_dict")
        if not isinstance(state, dict) or not all(isinstance(v, Tensor) for v in state.values()):
            raise UserInputError(f"{p}: the checkpoint has no usable 'state_dict' (a dict of tensors)")
        prefix = "ema.module." if ema and any(k.startswith("ema.module.") for k in state) else "vae."
        config = ckpt[CONFIG_KEY]
        if not isinstance(config, dict):
            raise UserInputError(f"{p}: '{CONFIG_KEY}' is not a dict of NestedVAE arguments")
        try:
            vae = NestedVAE.from_init_config(config, f"{p} ({CONFIG_KEY})")
            weights = {k[len(prefix) :]: v for k, v in state.items() if k.startswith(prefix)}
            check_weights(weights, p)
            vae.load_state_dict(weights, strict=True)
        except (TypeError, RuntimeError) as err:  # a config key or a weight shape that does not fit
            raise UserInputError(f"{p}: the weights do not fit the recorded NestedVAE config ({first_line(err)[:200]})") from None
        return vae.eval()
    return NestedVAE.from_pretrained(p)


@dataclass(frozen=True)
class Latent:
    """One image's latent: ``latent`` is (C, ceil(H/r), ceil(W/r)); ``height x width`` the original size."""

    latent: Tensor
    ratio: int
    height: int
    width: int
    source: str = ""
    tokenizer: str = ""  # fingerprint of the tokenizer's weights ("" in files written before it was recorded)


def save_latent(path: str | Path, latent: Tensor, ratio: int, size: tuple[int, int], source: str = "",
                extra: dict[str, Tensor] | None = None, tokenizer: str = "") -> Path:
    """Write one image's latent (C, h, w) with its ratio, original size, source image and the
    tokenizer's fingerprint (``NestedVAE.fingerprint()``) in the metadata. ``extra`` tensors ride along in
    the same file (the DiT's latent cache: ``latent_flip``, ``text_emb``)."""
    path = Path(path)
    meta = {"ratio": str(ratio), "height": str(size[0]), "width": str(size[1]), "source": source, "format": "cat-latent-v1"}
    if tokenizer:
        meta["tokenizer"] = tokenizer
    tensors = {"latent": latent, **(extra or {})}
    with atomic_write(path) as tmp:  # a killed encode never leaves half a latent under the real name
        save_file({k: v.detach().contiguous().cpu() for k, v in tensors.items()}, str(tmp), metadata=meta)
    return path


@dataclass(frozen=True)
class RegionFile:
    """One image's region latent as stored: ``tensors`` holds ``ratio_map`` (bh, bw) and ``latent_<r>``
    (N_r, C, block/r, block/r) per ratio used (``RegionLatent.pack``)."""

    tensors: dict[str, Tensor]
    height: int
    width: int
    block: int
    source: str = ""
    tokenizer: str = ""

    def to_latent(self, vae: NestedVAE, path: str | Path = "", fingerprint: str | None = None):
        """The ``RegionLatent`` (a batch of one), after the checks ``check_latent`` makes of a latent file
        and those of the map against the tokenizer (ratios, block, shapes), each a one-line error."""

        name = path or self.source or "region latent"
        for key, z in self.tensors.items():
            if key != "ratio_map":
                _check_values(f"{name} ({key})", z)
        _check_maker(name, self.tokenizer, fingerprint)
        if self.block != max(vae.ratios):
            raise UserInputError(f"{name}: {self.block}-px blocks; this tokenizer's regions are {max(vae.ratios)} px")
        try:
            return RegionLatent.unpack(self.tensors, (self.height, self.width), self.block, sorted(vae.ratios), vae.latent_channels)
        except UserInputError as err:
            raise UserInputError(f"{name}: {err}") from None


def save_region_latent(path: str | Path, item: dict[str, Tensor], size: tuple[int, int], block: int, source: str = "",
                       tokenizer: str = "") -> Path:
    """Write one image's packed region latent (``RegionLatent.pack()[i]``) with its size, block, source and
    tokenizer fingerprint in the metadata."""
    path = Path(path)
    meta = {"height": str(size[0]), "width": str(size[1]), "block": str(block), "source": source, "format": REGION_FORMAT}
    if tokenizer:
        meta["tokenizer"] = tokenizer
    with atomic_write(path) as tmp:
        save_file({k: v.detach().contiguous().cpu() for k, v in item.items()}, str(tmp), metadata=meta)
    return path


def _int_meta(path: str | Path, meta: dict, keys: tuple[str, ...], what: str) -> tuple[int, ...]:
    """The integer metadata ``keys`` of a latent file, or a one-line error naming them."""
    try:
        return tuple(int(meta[k]) for k in keys)
    except (KeyError, ValueError):
        raise UserInputError(f"{path}: {what} metadata needs integer {', '.join(keys[:-1])} and {keys[-1]}, got {meta}") from None


def load_any_latent(path: str | Path) -> Latent | RegionFile:
    """A latent file (``save_latent``) or a region latent file (``save_region_latent``), by its format."""
    try:
        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
            if meta.get("format") != REGION_FORMAT:
                return load_latent(path)
            height, width, block = _int_meta(path, meta, ("height", "width", "block"), "region latent")
            if "ratio_map" not in f.keys():
                raise UserInputError(f"{path}: no 'ratio_map' tensor in the region latent file")
            return RegionFile({k: f.get_tensor(k) for k in f.keys()}, height, width, block, meta.get("source", ""),
                              meta.get("tokenizer", ""))
    except (OSError, SafetensorError) as err:
        raise UserInputError(f"cannot read latent file {path}: {err}") from None


def load_latent(path: str | Path) -> Latent:
    """Read a file written by ``save_latent``.

    Raises:
        UserInputError (a ValueError): the file is unreadable or not a CAT latent (no integer ratio/size metadata).
    """
    try:
        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
            if meta.get("format") != "cat-latent-v1":
                raise UserInputError(f"{path} is not a cat-tokenizer latent file (metadata: {meta})")
            ratio, height, width = _int_meta(path, meta, ("ratio", "height", "width"), "latent")
            if "latent" not in f.keys():
                raise UserInputError(f"{path}: no 'latent' tensor in the file")
            return Latent(latent=f.get_tensor("latent"), ratio=ratio, height=height, width=width, source=meta.get("source", ""),
                          tokenizer=meta.get("tokenizer", ""))
    except (OSError, SafetensorError) as err:  # missing, or not safetensors at all
        raise UserInputError(f"cannot read latent file {path}: {err}") from None


def _check_values(name: str | Path, z: Tensor) -> None:
    """Finite floats within ``LATENT_LIMIT``, or a one-line error."""
    if not z.is_floating_point():
        raise UserInputError(f"{name}: latent values are {str(z.dtype).replace('torch.', '')}; a latent holds floats")
    if not bool(torch.isfinite(z).all()):
        raise UserInputError(f"{name}: the latent holds NaN or infinite values ({int((~torch.isfinite(z)).sum())} of {z.numel()})")
    if z.numel() and float(z.abs().max()) > LATENT_LIMIT:
        raise UserInputError(f"{name}: latent values up to {float(z.abs().max()):.3g}, beyond any trained latent (|z| <= {LATENT_LIMIT:g})")


def _check_maker(name: str | Path, made_by: str, fingerprint: str | None) -> None:
    if fingerprint and made_by and made_by != fingerprint:
        raise UserInputError(f"{name}: made by tokenizer {made_by}, not by this one ({fingerprint}); "
                             "decode it with the tokenizer that encoded it")


def check_latent(lat: Latent, vae: NestedVAE, path: str | Path = "", fingerprint: str | None = None) -> None:
    """Refuse a latent that the tokenizer cannot decode as its metadata says: a ratio the tokenizer
    lacks, other channels, a grid that is not ``ceil(height / ratio) x ceil(width / ratio)``, values
    that are not finite floats within ``LATENT_LIMIT``, or (given the decoding tokenizer's
    ``fingerprint``) a latent recorded as made by another tokenizer.

    Raises:
        UserInputError: one line naming the file and the mismatch.
    """
    name = path or lat.source or "latent"
    _check_values(name, lat.latent)
    _check_maker(name, lat.tokenizer, fingerprint)
    if lat.latent.ndim != 3:
        raise UserInputError(f"{name}: a latent is (C, h, w), got shape {tuple(lat.latent.shape)}")
    if lat.ratio not in vae.ratios:
        raise UserInputError(f"{name}: ratio {lat.ratio} is not one of this tokenizer's {list(vae.ratios)}")
    c, h, w = lat.latent.shape
    if c != vae.latent_channels:
        raise UserInputError(f"{name}: {c} latent channels, this tokenizer has {vae.latent_channels}")
    want = (-(-lat.height // lat.ratio), -(-lat.width // lat.ratio))
    if lat.height < 1 or lat.width < 1 or (h, w) != want:
        raise UserInputError(f"{name}: a {h}x{w} grid at {lat.ratio}x does not fit the recorded size {lat.height}x{lat.width} "
                             f"(expected {want[0]}x{want[1]})")
