"""Subcommands built from typed functions: the signature gives the options, types and defaults, the
Google-style docstring gives the help. One place for each, as with jsonargparse's ``CLI``.

jsonargparse itself was tried and not used here: it spells options ``--image_size`` and booleans
``--quiet true``, takes no positional lists and repeats lists as ``--evaluator+=x``, so every
documented command (README, Makefile, docs) would change spelling. This module keeps the usual
POSIX spellings with these rules:

- a parameter before ``*`` is positional (``list[...]``: one or more; default ``None``: optional);
- a keyword-only parameter ``image_size`` is ``--image-size``; ``bool`` (default ``False``) is a flag;
  ``Literal[...]`` gives the choices; ``list[X]`` is repeatable (``--evaluator a --evaluator b``);
  ``tuple[X, ...]`` takes one or more values (``--datasets mnist lfw``);
- a parameter annotated with a dataclass contributes that dataclass's fields as options (shared
  option groups, such as the sampling options of ``sample`` and ``fid``); a dataclass that extends
  another documents only the fields it adds or redefines;
- defaults are never copied into the parser: an option left out is left out of the call;
- a class with a ``parse`` classmethod (``EvaluatorSpec``) is read by it, so a command receives the typed
  value and a bad spelling is an argparse error naming the option;
- an ``int`` option is a count or a size: at least 1, or at least 0 for the names in ``ZERO_OK``
  (``--per-kind 0`` means all); ``seed`` takes any integer.
"""

from __future__ import annotations

import argparse
import dataclasses
import inspect
import types
import typing
from pathlib import Path
from typing import Any, Callable, Literal, Union

from docstring_parser import parse as parse_docstring

__all__ = ["add_command", "call_command"]

SHORT = {"quiet": "-q"}
ZERO_OK = {"conv", "per_kind", "show", "min_words"}  # int options where 0 means none / all
SIGNED = {"seed"}


def _int_option(name: str) -> Callable[[str], int]:
    """argparse type for an int option: a count or size (>= 1, or >= 0 in ``ZERO_OK``); ``seed`` any int."""
    low = None if name in SIGNED else 0 if name in ZERO_OK else 1

    def parse(text: str) -> int:
        value = int(text)  # argparse turns a ValueError into "invalid int value"
        if low is not None and value < low:
            raise argparse.ArgumentTypeError(f"must be {'positive' if low else 'zero or more'}, got {value}")
        return value

    parse.__name__ = "int"
    return parse


def _unwrap_optional(tp: Any) -> Any:
    if typing.get_origin(tp) in (Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        if len(args) == 1:
            return args[0]
    return tp


def _doc_params(obj: Any) -> tuple[str, dict[str, str]]:
    doc = parse_docstring(inspect.getdoc(obj) or "")
    return doc.short_description or "", {p.arg_name: " ".join((p.description or "").split()) for p in doc.params}


def _add_option(p: argparse.ArgumentParser, name: str, tp: Any, default: Any, positional: bool, help_text: str) -> None:
    tp = _unwrap_optional(tp)
    kw: dict[str, Any] = {"help": help_text.replace("%", "%%"), "default": argparse.SUPPRESS}
    origin = typing.get_origin(tp)
    if origin is Literal:
        values = typing.get_args(tp)
        kw.update(choices=values, type=type(values[0]))
    elif origin is list and not positional:  # a repeatable option, one value each
        kw.update(type=_item_type(name, typing.get_args(tp)[0]), action="append")
    elif origin in (list, tuple):  # one or more values after the option (or as the positionals)
        kw.update(type=_item_type(name, typing.get_args(tp)[0]), nargs="+")
    elif tp is bool:
        if default is not False:
            raise TypeError(f"{name}: a flag must default to False")
        kw["action"] = "store_true"
    else:
        kw["type"] = _item_type(name, tp) if tp in (int, float, Path) or hasattr(tp, "parse") else str
    if default is not inspect.Parameter.empty and default not in (None, False, argparse.SUPPRESS):
        kw["help"] += f" (default: {' '.join(map(str, default)) if isinstance(default, (list, tuple)) else default})"
    if positional:
        if default is not inspect.Parameter.empty:
            kw["nargs"] = "?" if kw.get("nargs") != "+" else "*"
        p.add_argument(name, **kw)
    else:
        flags = [f"--{name.replace('_', '-')}"] + ([SHORT[name]] if name in SHORT else [])
        p.add_argument(*flags, dest=name, required=default is inspect.Parameter.empty, **kw)


def _item_type(name: str, tp: Any) -> Any:
    if tp is int:
        return _int_option(name)
    if isinstance(tp, type) and callable(getattr(tp, "parse", None)):  # a typed spec read from text (EvaluatorSpec)
        def parse(text: str) -> Any:
            try:
                return tp.parse(text)
            except ValueError as err:  # UserInputError: argparse prints it as "argument --x: <message>"
                raise argparse.ArgumentTypeError(str(err)) from None

        parse.__name__ = tp.__name__
        return parse
    return tp


def add_command(sub: argparse._SubParsersAction, fn: Callable[..., int], name: str | None = None) -> argparse.ArgumentParser:
    """Register ``fn`` as the subcommand ``name`` (default: the function's name with dashes)."""
    summary, helps = _doc_params(fn)
    p = sub.add_parser(name or fn.__name__.replace("_", "-"), help=summary, description=summary)
    hints = typing.get_type_hints(fn)
    groups: dict[str, type] = {}
    for param in inspect.signature(fn).parameters.values():
        tp = hints.get(param.name, str)
        if dataclasses.is_dataclass(tp):
            groups[param.name] = tp
            field_help = {k: v for base in reversed(tp.__mro__[:-1]) for k, v in _doc_params(base)[1].items()}  # a subclass documents what it adds
            field_types = typing.get_type_hints(tp)
            for f in dataclasses.fields(tp):
                default = f.default if f.default is not dataclasses.MISSING else inspect.Parameter.empty
                _add_option(p, f.name, field_types[f.name], default, False, field_help.get(f.name, ""))
            continue
        positional = param.kind is inspect.Parameter.POSITIONAL_OR_KEYWORD
        _add_option(p, param.name, tp, param.default, positional, helps.get(param.name, ""))
    p.set_defaults(_fn=fn, _groups=groups)
    return p


def call_command(args: argparse.Namespace) -> int:
    """Call the function behind the parsed subcommand with the options that were given."""
    given = {k: v for k, v in vars(args).items() if not k.startswith("_") and k not in ("command", "verbose")}
    for name, cls in args._groups.items():
        fields = {f.name for f in dataclasses.fields(cls)}
        given[name] = cls(**{k: given.pop(k) for k in list(given) if k in fields})
    return args._fn(**given)
