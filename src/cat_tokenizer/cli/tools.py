"""The ``cat-tokenizer`` console script: tool commands (training lives in ``lightning fit``).

Each command is a typed function (``cli.commands`` and ``cat_tasks.generation.cli``); ``cli.typed``
builds its options and help from the signature and docstring.
"""

from __future__ import annotations

import argparse
import logging
import sys

from cat_tasks.generation.cli import COMMANDS as GENERATION_COMMANDS
from cat_tokenizer.cli.commands import COMMANDS
from cat_tokenizer.cli.typed import add_command, call_command
from cat_tokenizer.errors import UserInputError

__all__ = ["main", "build_parser"]


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="cat-tokenizer", description="CAT tokenizer tools (train with `lightning fit -c configs/vae.yaml`).")
    p.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = p.add_subparsers(dest="command", required=True)
    for name, fn in {**COMMANDS, **GENERATION_COMMANDS}.items():
        add_command(sub, fn, name)
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    try:
        return call_command(args)
    except UserInputError as err:  # bad input: one line, no traceback (-v shows it)
        if args.verbose:
            raise
        print(f"cat-tokenizer {args.command}: error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
