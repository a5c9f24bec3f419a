"""Tokenizer folders: what ``NestedVAE.from_pretrained`` checks before diffusers' loader reads them.

Loading and saving themselves are diffusers' (``ModelMixin`` / ``ConfigMixin``: Hub ids, the local
Hub cache, ``revision``, ``subfolder``, ``torch_dtype``, ``variant``). This module holds what a
tokenizer adds on top: the names of the tokenizers shipped inside the package, the one-line errors
for folders that cannot be a tokenizer (missing files, bad JSON, unknown keys, broken weights),
folders written before the move to diffusers (``model.safetensors``, diffusers' ``Downsample2D``
alias ``Conv2d_0`` in the key names), and the model card ``save_pretrained`` writes.
"""

from __future__ import annotations

import inspect
import json
from pathlib import Path

import torch
from diffusers.utils.constants import SAFETENSORS_WEIGHTS_NAME
from safetensors import SafetensorError, safe_open
from torch import Tensor

from cat_tokenizer.errors import InputNotFound, UserInputError

__all__ = ["CONFIG_NAME", "WEIGHTS_NAME", "LEGACY_WEIGHTS_NAME", "BUNDLED_TOKENIZERS", "bundled_path", "check_weights",
           "weights_file", "read_config", "check_config", "check_weights_file", "missing_files", "looks_local", "v1_key", "with_v1_aliases", "write_model_card"]

CONFIG_NAME = "config.json"
WEIGHTS_NAME = SAFETENSORS_WEIGHTS_NAME  # diffusion_pytorch_model.safetensors (+ ".fp16" etc. for a variant)
LEGACY_WEIGHTS_NAME = "model.safetensors"  # folders written before the tokenizer moved to diffusers' ModelMixin
# Trained tokenizers that ship inside the package (src/cat_tokenizer/pretrained/<name>/, with a model card).
BUNDLED_TOKENIZERS = ("cat-small",)
_CARD_TEMPLATE = Path(__file__).with_name("model_card.md")


def bundled_path(name: str) -> Path:
    """The folder of a tokenizer shipped with the package (``NestedVAE.from_pretrained(name)`` reads it)."""
    from importlib.resources import files

    return Path(str(files("cat_tokenizer") / "pretrained" / name))


def looks_local(name: str) -> bool:
    """A path rather than a hub id (``owner/name``): a file suffix, a leading ``.``, ``/`` or ``~``, or 2+ slashes."""
    return Path(name).suffix in (".ckpt", ".pt", ".pth", ".safetensors", ".json") or name[:1] in "./~" or name.count("/") > 1


def weights_file(folder: str | Path, variant: str | None = None) -> Path | None:
    """The weights file a tokenizer folder holds: diffusers' name (with ``variant``), else the legacy
    ``model.safetensors`` (never for a variant); None when there is neither."""
    d = Path(folder)
    name = WEIGHTS_NAME if variant is None else WEIGHTS_NAME.replace(".safetensors", f".{variant}.safetensors")
    for candidate in (d / name, *([d / LEGACY_WEIGHTS_NAME] if variant is None else [])):
        if candidate.is_file():
            return candidate
    return None


def read_config(folder: Path, cls: type) -> dict:
    """``folder/config.json`` as ``cls``'s keyword arguments (private ``_`` keys dropped), with a
    one-line error for a file that is not JSON, not an object, or names an argument ``cls`` lacks."""
    path = folder / CONFIG_NAME
    try:
        config = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise UserInputError(f"{path}: not valid JSON ({err})") from None
    if not isinstance(config, dict):
        raise UserInputError(f"{path}: expected a JSON object of {cls.__name__} arguments")
    return check_config(config, cls, path)


def check_config(config: dict, cls: type, source: str | Path) -> dict:
    """``config`` without its private keys, or a one-line error naming a key ``cls`` does not take
    (ConfigMixin would only log it and build the model without it)."""
    known = set(inspect.signature(cls.__init__).parameters) - {"self"}
    if bad := sorted(k for k in config if not k.startswith("_") and k not in known):
        raise UserInputError(f"{source}: got an unexpected keyword argument {bad[0]!r} (a {cls.__name__} takes "
                             f"{', '.join(sorted(known))})")
    return {k: v for k, v in config.items() if not k.startswith("_")}


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


_INT_NAMES = {"I8": "int8", "I16": "int16", "I32": "int32", "I64": "int64", "U8": "uint8", "BOOL": "bool"}


def check_weights_file(path: Path, expected: dict[str, tuple[int, ...]], config_path: Path) -> None:
    """Read only the safetensors header and refuse, in one line, a file that is not one, holds integer
    weights, or whose names and shapes differ from ``expected`` (the model ``config_path`` builds).
    diffusers' loader would keep an int8 tensor, skip an unexpected one without a word, and fail on a
    missing one deep inside; a legacy file's alias names are compared under their current names."""
    try:
        with safe_open(str(path), "pt") as f:
            header = {v1_key(k): f.get_slice(k) for k in f.keys()}
            found = {k: (sl.get_dtype(), tuple(sl.get_shape())) for k, sl in header.items()}  # "F32", "BF16", "I8", ...
    except SafetensorError as err:
        raise UserInputError(f"{path}: not a readable safetensors file ({err})") from None
    for name, (dtype, _) in found.items():
        if not dtype.startswith(("F", "BF")):
            raise UserInputError(f"{path}: weight {name} is {_INT_NAMES.get(dtype, dtype.lower())}; a tokenizer's weights are floats")
    missing, unexpected = sorted(set(expected) - set(found)), sorted(set(found) - set(expected))
    if missing or unexpected:
        raise UserInputError(f"{path} does not match {config_path}: missing {missing[:5]}, unexpected {unexpected[:5]}")
    if bad := next((k for k in expected if found[k][1] != expected[k]), None):
        raise UserInputError(f"{path} does not match {config_path}: {bad} is {found[bad][1]} in the file, "
                             f"{expected[bad]} by the config")


# diffusers' Downsample2D registers its conv twice (``conv`` and ``Conv2d_0``) unless named "op";
# the tokenizer now names it "op", and folders and checkpoints written before hold the alias.
_ALIAS, _NAME = ".Conv2d_0.", ".conv."


def v1_key(key: str) -> str:
    """The current name of a key written before the alias went (``...downsamplers.0.Conv2d_0.weight``)."""
    return key.replace(_ALIAS, _NAME) if ".downsamplers." in key else key


def with_v1_aliases(state: dict[str, Tensor]) -> dict[str, Tensor]:
    """``state`` plus the alias names it had before, so a fingerprint of the same weights is unchanged."""
    extra = {k.replace(_NAME, _ALIAS): v for k, v in state.items() if "encoder.downsamplers." in k and _NAME in k}
    return {**state, **extra}


def upgrade_v1_state(module: torch.nn.Module, state: dict, prefix: str, *args) -> None:
    """A ``load_state_dict`` pre-hook: rename alias keys (dropped when the current name is there too,
    as in a Lightning checkpoint, which held both)."""
    for key in [k for k in state if k.startswith(prefix) and _ALIAS in k and ".downsamplers." in k]:
        value = state.pop(key)
        state.setdefault(v1_key(key), value)


def write_model_card(folder: Path, model, measured: str = "", notes: str = "", overwrite: bool = False) -> Path | None:
    """A README.md model card from ``model_card.md`` (huggingface_hub's ModelCard): the facts read from the
    model's config, then ``measured`` (a report's markdown, its headings moved under "Measured") and ``notes``
    (hand-written sections: recipe, history, limits). An existing card is kept unless ``overwrite``."""
    from huggingface_hub import ModelCard, ModelCardData

    path = folder / "README.md"
    if path.exists() and not overwrite:
        return None
    cfg = model.config
    tokens = {r: (128 // r) ** 2 for r in cfg["ratios"]}
    stats = (cfg.get("latent_stats") or {}).get("ratios", {})
    card = ModelCard.from_template(
        ModelCardData(library_name="cat-tokenizer", tags=["image-tokenizer", "vae", "nested-vae", "cat-tokenizer"]),
        template_path=str(_CARD_TEMPLATE), name=folder.name, params=_params(model), fingerprint=model.fingerprint(with_head=False),
        widths="/".join(str(c) for c in cfg["block_out_channels"]), latent_channels=cfg["latent_channels"],
        ratios=", ".join(f"{r}x" for r in cfg["ratios"]), tokens=", ".join(f"{n} at {r}x" for r, n in tokens.items()),
        colour_path=cfg.get("colour_path", "none"), has_head=cfg.get("ratio_head") is not None,
        has_fill=cfg.get("region_fill") is not None, has_block_head=cfg.get("block_head") is not None,
        stats=[(r, s["scaling_factor"], s["shift_factor"]) for r, s in sorted(stats.items(), key=lambda kv: int(kv[0]))],
        measured_on=(cfg.get("latent_stats") or {}).get("measured_on", ""),
        measured=_demoted(measured), notes=notes.strip(),
    )
    card.save(str(path))
    return path


def _params(model) -> str:
    """"4.78M", with what the add-ons (ratio head, block head, region fill) add beside it."""
    alone, total = model.num_params(with_head=False), model.num_params()
    extra = f" (+{(total - alone) / 1e6:.2f}M in its heads and region fill)" if total > alone else ""
    return f"{alone / 1e6:.2f}M{extra}"


def _demoted(markdown: str, levels: int = 2) -> str:
    """``markdown`` with every heading ``levels`` deeper (a report's "# Title" becomes a subsection of the card),
    less its "Files:" line (the report's own outputs, not the card's)."""
    return "\n".join("#" * levels + line if line.startswith("#") else line
                     for line in markdown.strip().splitlines() if not line.startswith("Files: "))


def missing_files(folder: Path, variant: str | None) -> InputNotFound | None:
    """The one-line error for a folder that lacks a tokenizer's files, or None."""
    if not (folder / CONFIG_NAME).is_file():
        return InputNotFound(f"{folder} is not a NestedVAE folder: {CONFIG_NAME} is missing (write one with save_pretrained)")
    if weights_file(folder, variant) is None:
        want = WEIGHTS_NAME if variant is None else f"the {variant!r} variant's weights"
        return InputNotFound(f"{folder} is not a NestedVAE folder: {want} is missing (write one with save_pretrained)")
    return None
