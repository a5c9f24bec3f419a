"""File-permission helper shared by every writer (a leaf module: imports nothing of the project)."""

from __future__ import annotations

import os
from pathlib import Path

__all__ = ["apply_umask"]


def apply_umask(path: str | Path) -> None:
    """Give a file the permissions a plain ``open()`` would (safetensors and mkstemp write 0600)."""
    mask = os.umask(0)
    os.umask(mask)
    os.chmod(path, 0o666 & ~mask)
