"""The ``cat-tokenizer`` console script: tool commands (training lives in ``lightning fit``).

Each command is a typed function registered under the ``cat_tokenizer.commands`` entry-point group
(``cli.registry``: the core's in ``cli.commands``, each task's in ``cat_tasks.<task>.commands``);
``cli.typed`` builds its options and help from the signature and docstring. Running one command
imports only that command's module.
"""

from __future__ import annotations

import argparse
import logging
import sys

from cat_tokenizer.cli.registry import command_names, load_command, load_commands
from cat_tokenizer.cli.typed import add_command, call_command
from cat_tokenizer.errors import Interrupted, UserInputError

__all__ = ["main", "build_parser"]


def build_parser(only: str | None = None) -> argparse.ArgumentParser:
    """The parser of every registered command, or, when ``only`` names one, the full parser of that
    command (the others listed by name, their modules not imported)."""
    p = argparse.ArgumentParser(prog="cat-tokenizer", description="CAT tokenizer tools (train with `lightning fit -c configs/vae.yaml`).")
    p.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = p.add_subparsers(dest="command", required=True)
    names = command_names()
    if only not in names:
        for name, fn in load_commands().items():
            add_command(sub, fn, name)
        return p
    for name in names:
        if name == only:
            add_command(sub, load_command(name), name)
        else:
            sub.add_parser(name)
    return p


def _command_word(argv: list[str]) -> str | None:
    words = [a for a in argv if not a.startswith("-")]
    return words[0] if words and not any(a in ("-h", "--help") for a in argv[: argv.index(words[0])]) else None


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    word = _command_word(argv)
    try:
        parser = build_parser(word)
    except UserInputError as err:
        print(f"cat-tokenizer: error: {err}", file=sys.stderr)
        return 2
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    try:
        return call_command(args)
    except (UserInputError, OSError) as err:  # bad input, or a path the system refused: one line (-v: the traceback)
        if args.verbose:
            raise
        print(f"cat-tokenizer {args.command}: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt as err:  # Ctrl-C: what was finished is kept (caches and outputs are written atomically)
        if args.verbose:
            raise
        said = str(err) if isinstance(err, Interrupted) else "interrupted; finished outputs are kept, rerun to resume"
        print(f"cat-tokenizer {args.command}: {said}", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
