"""Loading tokenizers from any of their forms, and latent files (.safetensors with metadata)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file
from torch import Tensor

from cat_tokenizer.errors import UserInputError
from cat_tokenizer.lit.vae_module import CONFIG_KEY as _CONFIG_KEY  # written by NestedVAEModule.on_save_checkpoint
from cat_tokenizer.models.nested_vae import NestedVAE

__all__ = ["load_vae", "save_latent", "load_latent", "Latent"]



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
        if not isinstance(ckpt, dict) or _CONFIG_KEY not in ckpt:
            raise UserInputError(f"{p} is not a NestedVAEModule checkpoint (no '{_CONFIG_KEY}' entry)")
        state = ckpt["state_dict"]
        prefix = "ema.module." if ema and any(k.startswith("ema.module.") for k in state) else "vae."
        vae = NestedVAE(**ckpt[_CONFIG_KEY])
        vae.load_state_dict({k[len(prefix) :]: v for k, v in state.items() if k.startswith(prefix)}, strict=True)
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


def save_latent(path: str | Path, latent: Tensor, ratio: int, size: tuple[int, int], source: str = "") -> Path:
    """Write one image's latent (C, h, w) with its ratio and original size in the metadata."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    meta = {"ratio": str(ratio), "height": str(size[0]), "width": str(size[1]), "source": source, "format": "cat-latent-v1"}
    save_file({"latent": latent.detach().contiguous().cpu()}, str(path), metadata=meta)
    return path


def load_latent(path: str | Path) -> Latent:
    """Read a file written by ``save_latent``.

    Raises:
        ValueError: the file is not a CAT latent (no ratio/size metadata).
    """
    try:
        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
            if meta.get("format") != "cat-latent-v1":
                raise UserInputError(f"{path} is not a cat-tokenizer latent file (metadata: {meta})")
            return Latent(latent=f.get_tensor("latent"), ratio=int(meta["ratio"]), height=int(meta["height"]),
                          width=int(meta["width"]), source=meta.get("source", ""))
    except (OSError, SafetensorError) as err:  # missing, or not safetensors at all
        raise UserInputError(f"cannot read latent file {path}: {err}") from None
