"""What a command may write: the project's one overwrite policy (also in docs/data.md).

1. **Never over an input.** No command writes a file that is one of its own inputs (an image, a
   latent, a tokenizer, a cache) or the recorded source image of a latent it decodes, with or
   without ``--overwrite``.
2. **Existing outputs are kept.** A command that writes one file the user names (``score --out``)
   refuses an existing one unless ``--overwrite``; ``export`` refuses a folder that already holds a
   tokenizer unless ``--overwrite``. Commands that write one file per input (``encode``, ``decode``)
   write only the outputs that do not exist yet and say how many they kept, so a killed run resumes;
   ``--overwrite`` rewrites them. A report folder (``demo``, ``rd``, ``analyse``, ``palette`` ``--out``)
   is the command's own: its report files are rewritten by each run, and nothing else in it is touched.
3. **Smoke runs leave nothing behind.** ``lightning fit --trainer.fast_dev_run`` writes no checkpoint
   and no export, and a run refuses to start in a checkpoint folder that holds another run's
   checkpoints unless it resumes from one (``--ckpt_path``).
4. **Caches own only their files.** A score cache path that is not a score cache (an image, a folder,
   another SQLite database) is refused; only a damaged file that is a cache of ours is moved aside.

Every refusal is one line (exit 2) naming the path and the way out.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterable, Sequence
from pathlib import Path

from cat_tokenizer.errors import UserInputError
from cat_tokenizer.files import atomic_write

__all__ = ["resolved", "refuse_inputs", "check_out_file", "check_out_dir", "split_existing", "publish_report"]


def resolved(path: str | Path) -> Path:
    """``path`` made absolute with symlinks followed (a loop or a bad path: a one-line error)."""
    try:
        return Path(path).expanduser().resolve()
    except (OSError, RuntimeError) as err:  # symlink loops
        raise UserInputError(f"{path}: cannot resolve the path ({err})") from None


def refuse_inputs(out: str | Path, inputs: Iterable[str | Path], flag: str = "--out",
                  what: str = "one of this command's inputs") -> None:
    """Refuse ``out`` when it is one of ``inputs`` (policy 1), whatever ``--overwrite`` says."""
    target = resolved(out)
    for p in inputs:
        if resolved(p) == target:
            raise UserInputError(f"{flag} {out} is {what}; it is never overwritten: choose another path")


def check_out_dir(folder: str | Path, flag: str = "--out") -> Path:
    """Create the output folder (and its parents); a one-line error when it is a file or unwritable."""
    d = Path(folder).expanduser()
    if d.exists() and not d.is_dir():
        raise UserInputError(f"{flag} {folder} is a file, not a folder")
    try:
        d.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise UserInputError(f"{flag} {folder}: cannot create the folder ({err.strerror or err})") from None
    if not os.access(d, os.W_OK | os.X_OK):
        raise UserInputError(f"{flag} {folder}: the folder is not writable")
    return d


def check_out_file(path: str | Path, overwrite: bool = False, inputs: Iterable[str | Path] = (), flag: str = "--out") -> Path:
    """An output file the command may write (policies 1 and 2); its folder is created."""
    p = Path(path).expanduser()
    refuse_inputs(p, inputs, flag)
    if p.is_dir():
        raise UserInputError(f"{flag} {path} is a folder; give a file name")
    if p.exists() and not overwrite:
        raise UserInputError(f"{flag} {path} exists; pass --overwrite to replace it")
    check_out_dir(p.parent, flag)
    return p


def split_existing(targets: Sequence[Path], overwrite: bool) -> tuple[list[int], int]:
    """Indices of the targets to write, and how many existing ones are kept (policy 2 for many files)."""
    if overwrite:
        return list(range(len(targets))), 0
    todo = [i for i, t in enumerate(targets) if not t.exists()]
    return todo, len(targets) - len(todo)


def publish_report(out_dir: str | Path, names: Iterable[str], dest: str | Path, flag: str = "--report") -> list[Path]:
    """Copy a command's report files (``names`` under ``out_dir``, those that exist; never its caches) into
    ``dest``, a folder under docs/ say, each atomically; one of ``names`` that ``out_dir`` lacks is removed from
    ``dest`` (a report is this run's files, not an earlier run's beside them). Returns the copies."""
    folder = check_out_dir(dest, flag)
    if resolved(folder) == resolved(out_dir):
        return [Path(out_dir) / n for n in names if (Path(out_dir) / n).is_file()]
    copies = []
    for name in names:
        src = Path(out_dir) / name
        if src.is_file():
            with atomic_write(folder / name) as tmp:
                shutil.copyfile(src, tmp)
            copies.append(folder / name)
        else:
            (folder / name).unlink(missing_ok=True)
    return copies
