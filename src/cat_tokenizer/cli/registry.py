"""Where ``cat-tokenizer`` finds its commands: the ``cat_tokenizer.commands`` entry-point group.

Every command is a typed function registered by name, by the core (``cat_tokenizer.cli.commands``) and
by each task package beside its code (``cat_tasks.<task>.commands``), in pyproject.toml::

    [project.entry-points."cat_tokenizer.commands"]
    rd = "cat_tasks.reconstruction.commands:rd"

The core never imports a task by name: a fork (or another installed package) adds a task by adding
its own entries to the group. Only the module of the command being run is imported.
"""

from __future__ import annotations

from collections.abc import Callable
from importlib.metadata import EntryPoint, entry_points

from cat_tokenizer.errors import UserInputError

__all__ = ["GROUP", "command_names", "load_command", "load_commands"]

GROUP = "cat_tokenizer.commands"


def _entries() -> dict[str, EntryPoint]:
    found = {ep.name: ep for ep in entry_points(group=GROUP)}
    if not found:
        raise UserInputError(f"no commands registered under the entry-point group {GROUP!r}: "
                             "reinstall the package (make install) so its entry points are written")
    return found


def command_names() -> list[str]:
    """Every registered command, sorted (nothing is imported)."""
    return sorted(_entries())


def load_command(name: str) -> Callable[..., int]:
    """The function behind one command (imports only its module)."""
    entries = _entries()
    if name not in entries:
        raise UserInputError(f"unknown command {name!r}; commands: {', '.join(sorted(entries))}")
    return entries[name].load()


def load_commands() -> dict[str, Callable[..., int]]:
    """Every registered command's function, by name."""
    return {name: ep.load() for name, ep in sorted(_entries().items())}
