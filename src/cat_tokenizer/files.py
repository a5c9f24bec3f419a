"""File helpers shared by every writer (a leaf module: imports nothing of the project)."""

from __future__ import annotations

import csv
import os
import tempfile
from collections.abc import Sequence
from pathlib import Path

__all__ = ["apply_umask", "write_csv"]


def apply_umask(path: str | Path) -> None:
    """Give a file the permissions a plain ``open()`` would (safetensors and mkstemp write 0600)."""
    mask = os.umask(0)
    os.umask(mask)
    os.chmod(path, 0o666 & ~mask)


def write_csv(out: str | Path, rows: Sequence[dict], columns: Sequence[str] | None = None) -> Path:
    """Write dict rows as a CSV atomically (temp file + rename: a killed run never leaves half a file);
    ``columns`` default to the first row's keys, extra keys are left out."""
    out = Path(out).expanduser()
    out.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{out.name}.", dir=out.parent)
    try:
        with os.fdopen(fd, "w", newline="") as f:
            w = csv.DictWriter(f, fieldnames=list(columns or (rows[0] if rows else [])), extrasaction="ignore")
            w.writeheader()
            w.writerows(rows)
        apply_umask(tmp)  # mkstemp makes 0600 files
        os.replace(tmp, out)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return out
