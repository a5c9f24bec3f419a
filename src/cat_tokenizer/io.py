"""Loading tokenizers from any of their forms, and latent files (.safetensors with metadata)."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file
from torch import Tensor

from cat_tokenizer.errors import UserInputError
from cat_tokenizer.files import apply_umask
from cat_tokenizer.models.nested_vae import NestedVAE

__all__ = ["load_vae", "save_latent", "load_latent", "check_latent", "apply_umask", "Latent", "CONFIG_KEY"]

CONFIG_KEY = "nested_vae_config"  # the .ckpt entry NestedVAEModule.on_save_checkpoint writes: NestedVAE rebuilds from it alone


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
        try:
            ckpt = torch.load(p, map_location="cpu", weights_only=True)
        except Exception as err:  # not a torch file, or one that needs pickle (refused)
            raise UserInputError(f"cannot read checkpoint {p}: {type(err).__name__}: {str(err).splitlines()[0]}") from None
        if not isinstance(ckpt, dict) or CONFIG_KEY not in ckpt:
            raise UserInputError(f"{p} is not a NestedVAEModule checkpoint (no '{CONFIG_KEY}' entry)")
        state = ckpt["state_dict"]
        prefix = "ema.module." if ema and any(k.startswith("ema.module.") for k in state) else "vae."
        try:
            vae = NestedVAE(**ckpt[CONFIG_KEY])
            vae.load_state_dict({k[len(prefix) :]: v for k, v in state.items() if k.startswith(prefix)}, strict=True)
        except (TypeError, RuntimeError) as err:  # a config key or a weight shape that does not fit
            raise UserInputError(f"{p}: the weights do not fit the recorded NestedVAE config ({str(err).splitlines()[0][:200]})") from None
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


def save_latent(path: str | Path, latent: Tensor, ratio: int, size: tuple[int, int], source: str = "",
                extra: dict[str, Tensor] | None = None) -> Path:
    """Write one image's latent (C, h, w) with its ratio and original size in the metadata. ``extra``
    tensors ride along in the same file (the DiT's latent cache: ``latent_flip``, ``text_emb``)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    meta = {"ratio": str(ratio), "height": str(size[0]), "width": str(size[1]), "source": source, "format": "cat-latent-v1"}
    tensors = {"latent": latent, **(extra or {})}
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    save_file({k: v.detach().contiguous().cpu() for k, v in tensors.items()}, str(tmp), metadata=meta)
    apply_umask(tmp)
    os.replace(tmp, path)  # atomic: a killed encode never leaves half a latent under the real name
    return path


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
            try:
                ratio, height, width = (int(meta[k]) for k in ("ratio", "height", "width"))
            except (KeyError, ValueError):
                raise UserInputError(f"{path}: latent metadata needs integer ratio, height and width, got {meta}") from None
            if "latent" not in f.keys():
                raise UserInputError(f"{path}: no 'latent' tensor in the file")
            return Latent(latent=f.get_tensor("latent"), ratio=ratio, height=height, width=width, source=meta.get("source", ""))
    except (OSError, SafetensorError) as err:  # missing, or not safetensors at all
        raise UserInputError(f"cannot read latent file {path}: {err}") from None


def check_latent(lat: Latent, vae: NestedVAE, path: str | Path = "") -> None:
    """Refuse a latent that the tokenizer cannot decode as its metadata says: a ratio the tokenizer
    lacks, other channels, or a grid that is not ``ceil(height / ratio) x ceil(width / ratio)``.

    Raises:
        UserInputError: one line naming the file and the mismatch.
    """
    name = path or lat.source or "latent"
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
