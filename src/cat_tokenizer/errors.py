"""Errors that mean "the user's input is wrong": the CLIs print them as one line, no traceback."""

from __future__ import annotations

__all__ = ["UserInputError", "InputNotFound", "Interrupted", "find_user_error"]


class UserInputError(ValueError):
    """A bad argument, config value or input file, with a message that says what to do."""


class InputNotFound(UserInputError, FileNotFoundError):
    """A path, model or weights file the user pointed at does not exist."""


class Interrupted(KeyboardInterrupt):
    """Ctrl-C during a long job, with a message saying what was kept (the CLIs print it; exit 130)."""


def find_user_error(err: BaseException | None) -> UserInputError | None:
    """The first ``UserInputError`` in ``err``'s cause/context chain (config parsers wrap them)."""
    seen = set()
    while err is not None and id(err) not in seen:
        if isinstance(err, UserInputError):
            return err
        seen.add(id(err))
        err = err.__cause__ or err.__context__
    return None
