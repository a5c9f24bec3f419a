"""Per-image annotations next to an image folder: class labels (subfolders) and captions (CSV / JSON)."""

from __future__ import annotations

import csv
import json
from pathlib import Path

from cat_tokenizer.errors import InputNotFound, UserInputError

__all__ = ["class_labels", "read_captions"]


def class_labels(files: list[Path], root: Path) -> tuple[list[int], list[str]]:
    """Label = index of the file's top-level subfolder among the sorted subfolder names (ImageNet layout).

    Raises:
        UserInputError: an image sits directly in ``root`` (no class folder).
    """
    names = []
    for f in files:
        parts = f.relative_to(root).parts
        if len(parts) < 2:
            raise UserInputError(f"labels need class subfolders, but {f} sits directly in {root}")
        names.append(parts[0])
    classes = sorted(set(names))
    index = {c: i for i, c in enumerate(classes)}
    return [index[n] for n in names], classes


def read_captions(path: str | Path, root: Path) -> dict[str, list[str]]:
    """``{relative path: [captions]}`` from a CSV (``path,caption``; repeated rows add captions),
    a JSON object ``{path: caption or [captions]}``, or a COCO captions file
    (``images[].file_name`` + ``annotations[].caption``)."""
    p = Path(path).expanduser()
    if not p.is_file():
        raise InputNotFound(f"captions file not found: {path}")
    out: dict[str, list[str]] = {}
    if p.suffix.lower() == ".csv":
        with p.open(newline="") as f:
            reader = csv.DictReader(f)
            if not reader.fieldnames or not {"path", "caption"} <= set(reader.fieldnames):
                raise UserInputError(f"{path}: a captions CSV needs columns 'path' and 'caption', found {reader.fieldnames}")
            for row in reader:
                out.setdefault(_rel(row["path"], root), []).append(row["caption"])
        return out
    try:
        data = json.loads(p.read_text())
    except json.JSONDecodeError as err:
        raise UserInputError(f"{path}: not valid JSON ({err})") from None
    if isinstance(data, dict) and "annotations" in data and "images" in data:  # COCO
        names = {im["id"]: im["file_name"] for im in data["images"]}
        for ann in data["annotations"]:
            if ann.get("image_id") in names:
                out.setdefault(_rel(names[ann["image_id"]], root), []).append(ann["caption"])
        return out
    if isinstance(data, dict):
        return {_rel(k, root): [v] if isinstance(v, str) else list(v) for k, v in data.items()}
    raise UserInputError(f"{path}: expected a CSV, a JSON object {{path: caption}} or a COCO captions file")


def _rel(name: str, root: Path) -> str:
    q = Path(name)
    if q.is_absolute():
        try:
            return q.relative_to(root).as_posix()
        except ValueError:
            return q.as_posix()
    return q.as_posix()
