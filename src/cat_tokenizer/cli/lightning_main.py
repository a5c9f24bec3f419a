"""The ``lightning`` console script: LightningCLI for fit / validate / test / predict.

Lightning 2.x installs no ``lightning`` command, so this project provides one. Any other first
word (``lightning login``, ``lightning run ...``) is handed to the ``lightning-sdk`` CLI when that
package is installed.
"""

from __future__ import annotations

import logging
import sys
from importlib.metadata import PackageNotFoundError, distribution

from cat_tokenizer.errors import find_user_error
from cat_tokenizer.lit.cli import cli, silence_known_warnings

__all__ = ["main", "TRAIN_COMMANDS"]

TRAIN_COMMANDS = ("fit", "validate", "test", "predict")


class _StderrHandler(logging.StreamHandler):
    """Writes to whatever ``sys.stderr`` is at emit time (not the stream of the first call: under
    pytest's capture, or after a redirect, that stream may be closed)."""

    @property
    def stream(self):
        return sys.stderr

    @stream.setter
    def stream(self, value) -> None:
        pass


def _hand_to_sdk(argv: list[str]) -> int:
    try:
        scripts = [ep for ep in distribution("lightning-sdk").entry_points if ep.group == "console_scripts" and ep.name == "lightning"]
    except PackageNotFoundError:
        scripts = []
    if not scripts:
        print(
            f"lightning: '{argv[0]}' is not a training command ({', '.join(TRAIN_COMMANDS)}). "
            "Other commands belong to the Lightning SDK CLI: pip install lightning-sdk",
            file=sys.stderr,
        )
        return 2
    sys.argv = ["lightning", *argv]
    return scripts[0].load()() or 0


def main(argv: list[str] | None = None) -> int:
    words = sys.argv[1:] if argv is None else list(argv)
    if words and words[0] not in TRAIN_COMMANDS and not words[0].startswith("-"):
        return _hand_to_sdk(words)
    silence_known_warnings()
    for name in ("cat_tokenizer", "cat_tasks"):  # the project's own INFO lines (data split, scoring, latent scales) on stderr
        ours = logging.getLogger(name)
        if not ours.handlers:
            handler = _StderrHandler()
            handler.setFormatter(logging.Formatter("%(levelname)s %(name)s: %(message)s"))
            ours.addHandler(handler)
            ours.setLevel(logging.INFO)
    try:
        cli(None if argv is None else words)  # None: LightningCLI reads sys.argv itself
    except Exception as err:
        user_err = find_user_error(err)  # jsonargparse wraps constructor errors; show ours as one line
        if user_err is None:
            raise
        print(f"lightning {words[0] if words else ''}: error: {user_err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
