"""File helpers shared by every writer (a leaf module: imports nothing of the project)."""

from __future__ import annotations

import csv
import os
import tempfile
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

__all__ = ["apply_umask", "atomic_write", "write_csv"]


def apply_umask(path: str | Path) -> None:
    """Give a file the permissions a plain ``open()`` would (safetensors and mkstemp write 0600)."""
    mask = os.umask(0)
    os.umask(mask)
    os.chmod(path, 0o666 & ~mask)


@contextmanager
def atomic_write(target: str | Path) -> Iterator[Path]:
    """A temporary path beside ``target`` to write to: when the block ends it replaces ``target``
    (with the permissions a plain ``open()`` gives), and when the block fails it is removed, so a
    killed or failed write never leaves half a file under the real name, nor a stray temp file."""
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    os.close(fd)
    try:
        yield Path(tmp)
        apply_umask(tmp)  # mkstemp makes 0600 files
        os.replace(tmp, target)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_text_atomic(target: str | Path, text: str) -> Path:
    """Write ``text`` to ``target`` through ``atomic_write`` (a report is whole or absent); returns the path."""
    with atomic_write(target) as tmp:
        tmp.write_text(text)
    return Path(target)


def write_csv(out: str | Path, rows: Sequence[dict], columns: Sequence[str] | None = None) -> Path:
    """Write dict rows as a CSV atomically (``atomic_write``); ``columns`` default to the first row's
    keys, extra keys are left out."""
    out = Path(out).expanduser()
    with atomic_write(out) as tmp, open(tmp, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(columns or (rows[0] if rows else [])), extrasaction="ignore")
        w.writeheader()
        w.writerows(rows)
    return out
