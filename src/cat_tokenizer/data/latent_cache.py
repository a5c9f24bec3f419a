"""A folder of latents encoded once by a frozen tokenizer, for training on latents (the DiT).

Layout::

    <dir>/meta.json                 tokenizer fingerprint, image size, class names
    <dir>/<r>x/<image rel path>.safetensors   one latent (C, S/r, S/r) ("latent"; "latent_flip" for the
                                             mirrored image when the cache has flips; "text_emb" (N, D): the
                                             image's N captions embedded, when encoded with a text encoder),
                                             written atomically
    <dir>/index/<run>.rank<k>.jsonl          one line per latent, appended after its file is in place

An index line is ``{"key", "ratio", "mode", "file", "label"?, "captions"?}``; ``mode`` is the ratio
assignment of the encoding run (``RatioAssignment.cache_mode``): ``adaptive`` (per-image ratios:
complexity, csv) or ``fixed:<r>``.
A latent whose line is written is done; a run killed midway loses at most the batch in flight,
and the next run encodes only what has no line yet (``done_keys``). Every rank writes its own
index file, so distributed encoding needs no merge step.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

from cat_tokenizer.errors import InputNotFound, UserInputError
from cat_tokenizer.files import atomic_write
from cat_tokenizer.ratios import RatioAssignment

__all__ = ["LatentCache", "LatentEntry"]


@dataclass(frozen=True)
class LatentEntry:
    key: str  # image path relative to the data root
    ratio: int
    mode: str
    file: str  # relative to the cache folder
    label: int | None = None
    captions: list[str] | None = None  # every caption of the image (training draws one)


class LatentCache:
    """Reads and writes a latent cache folder (see the module docstring).

    Args:
        root: the cache folder (created on first write).
    """

    def __init__(self, root: str | Path):
        self.root = Path(root).expanduser()

    # ------------------------------------------------------------------ metadata
    @property
    def meta_path(self) -> Path:
        return self.root / "meta.json"

    def meta(self) -> dict:
        return json.loads(self.meta_path.read_text()) if self.meta_path.is_file() else {}

    def claim(self, tokenizer_fingerprint: str, image_size: int, classes: list[str], tokenizer: str,
              flip: bool = False, text_encoder: str | None = None) -> None:
        """Record (or check) which tokenizer, image size and flip setting this cache holds latents of.

        Raises:
            UserInputError: the folder already holds latents of another tokenizer or size.
        """
        mine = {"tokenizer_fingerprint": tokenizer_fingerprint, "image_size": image_size, "flip": flip,
                "text_encoder": text_encoder}
        old = self.meta()
        if old and any(old.get(k) != v for k, v in mine.items()):
            raise UserInputError(
                f"latent cache {self.root} holds latents of tokenizer {old.get('tokenizer')} (weights "
                f"{old.get('tokenizer_fingerprint')}) at {old.get('image_size')}px (flips: {old.get('flip', False)}, "
                f"text encoder: {old.get('text_encoder')}); this run encodes with {tokenizer} (weights "
                f"{tokenizer_fingerprint}) at {image_size}px (flips: {flip}, text encoder: {text_encoder}): "
                "use another cache folder")
        if old and old.get("classes") and classes and old["classes"] != classes:
            raise UserInputError(f"latent cache {self.root} was written with other class folders: use another cache folder")
        with atomic_write(self.meta_path) as tmp:
            tmp.write_text(json.dumps({**old, **mine, "tokenizer": tokenizer, "classes": classes or old.get("classes", [])}, indent=1))

    # ------------------------------------------------------------------ writing
    def latent_file(self, key: str, ratio: int) -> str:
        return f"{ratio}x/{Path(key).with_suffix('.safetensors').as_posix()}"

    def index_file(self, run: str, rank: int) -> Path:
        return self.root / "index" / f"{run}.rank{rank}.jsonl"

    def append(self, index_file: Path, entries: list[LatentEntry]) -> None:
        """Record entries whose latent files are already in place (one flushed line each)."""
        index_file.parent.mkdir(parents=True, exist_ok=True)
        with open(index_file, "a+") as f:
            if f.tell() > 0:  # after a torn last line (a kill mid-write), start on a fresh line
                f.seek(f.tell() - 1)
                if f.read(1) != "\n":
                    f.write("\n")
            for e in entries:
                line = {k: v for k, v in e.__dict__.items() if v is not None}
                f.write(json.dumps(line) + "\n")
            f.flush()
            os.fsync(f.fileno())

    # ------------------------------------------------------------------ reading
    def entries(self) -> list[LatentEntry]:
        """Every recorded latent (later lines win for the same key, mode and ratio). A torn last
        line from a killed run is ignored."""
        found: dict[tuple[str, str, int], LatentEntry] = {}
        for path in sorted((self.root / "index").glob("*.jsonl")):
            for line in path.read_text().splitlines():
                try:
                    d = json.loads(line)
                    e = LatentEntry(**d)
                except (ValueError, TypeError):
                    continue
                found[(e.key, e.mode, e.ratio)] = e
        return list(found.values())

    def done_keys(self, assignment: RatioAssignment) -> set[str]:
        """Image keys already encoded under ``assignment``: per-image ratios, those of adaptive runs;
        ``fixed:<r>``, every latent at r (an adaptive run's latents at r are the same tensors)."""
        if assignment.mode == "fixed":
            return {e.key for e in self.entries() if e.ratio == assignment.ratio}
        return {e.key for e in self.entries() if e.mode == "adaptive"}

    def select(self, assignment: RatioAssignment) -> list[LatentEntry]:
        """The latents to train on under ``assignment``: per-image ratios (complexity, csv) take each
        image at its assigned ratio; ``fixed:<r>`` every latent at ``r`` (from a fixed run, or adaptive
        ones at r).

        Raises:
            InputNotFound: the cache holds nothing for this assignment (or nothing at all).
        """
        entries = self.entries()
        if not entries:
            raise InputNotFound(f"latent cache {self.root} is empty or missing: encode the data first "
                                f"(lightning predict -c configs/dit_encode.yaml --model.cache_dir {self.root})")
        if assignment.mode == "fixed":
            chosen = list({e.key: e for e in entries if e.ratio == assignment.ratio}.values())
        else:
            chosen = [e for e in entries if e.mode == "adaptive"]
        if not chosen:
            modes = sorted({e.mode for e in entries})
            raise InputNotFound(f"latent cache {self.root} has no latents for {assignment.cache_mode} (it holds {modes}): "
                                f"encode with --data.ratio_assignment {assignment if assignment.mode == 'fixed' else 'complexity'}")
        return sorted(chosen, key=lambda e: e.key)
