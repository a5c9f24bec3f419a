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
  (``--per-kind 0`` means all); ``seed`` takes any integer;
- a command with dataclass options also takes ``-c FILE`` (a YAML mapping of those options, dashes or
  underscores, checked as the command line checks them; options on the command line win) and
  ``--print-config`` (the options it would run with, as such a file).
"""

from __future__ import annotations

import argparse
import dataclasses
import inspect
import types
import typing
from pathlib import Path
from typing import Any, Callable, Literal, Union

import yaml
from docstring_parser import parse as parse_docstring

from cat_tokenizer.errors import UserInputError

__all__ = ["add_command", "call_command"]

SHORT = {"quiet": "-q"}
ZERO_OK = {"conv", "per_kind", "show", "min_words", "region_refine"}  # int options where 0 means none / all
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


def _add_option(p: argparse.ArgumentParser, name: str, tp: Any, default: Any, positional: bool, help_text: str,
                required: bool | None = None) -> None:
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
        kw["type"] = _scalar_type(name, tp)
    if default is not inspect.Parameter.empty and default not in (None, False, argparse.SUPPRESS):
        kw["help"] += f" (default: {' '.join(map(str, default)) if isinstance(default, (list, tuple)) else default})"
    if positional:
        if default is not inspect.Parameter.empty:
            kw["nargs"] = "?" if kw.get("nargs") != "+" else "*"
        p.add_argument(name, **kw)
    else:
        flags = [f"--{name.replace('_', '-')}"] + ([SHORT[name]] if name in SHORT else [])
        p.add_argument(*flags, dest=name, required=default is inspect.Parameter.empty if required is None else required, **kw)


def _reads_text(tp: Any) -> bool:
    """A class with a ``parse`` classmethod: a typed spec read from text (``EvaluatorSpec``)."""
    return isinstance(tp, type) and callable(getattr(tp, "parse", None))


def _scalar_type(name: str, tp: Any) -> Callable[[str], Any]:
    """The converter of one option value's text (command line or ``-c`` file): counts, numbers, paths, specs; else str."""
    return _item_type(name, tp) if tp in (int, float, Path) or _reads_text(tp) else str


def _item_type(name: str, tp: Any) -> Any:
    if tp is int:
        return _int_option(name)
    if _reads_text(tp):
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
                # required fields are checked after -c FILE is merged in (call_command)
                _add_option(p, f.name, field_types[f.name], default, False, field_help.get(f.name, ""), required=False)
            continue
        positional = param.kind is inspect.Parameter.POSITIONAL_OR_KEYWORD
        _add_option(p, param.name, tp, param.default, positional, helps.get(param.name, ""))
    if groups:
        p.add_argument("-c", "--config", dest="_config", type=Path, metavar="FILE",
                       help="YAML file of this command's options (as --print-config writes them); options given here win")
        p.add_argument("--print-config", dest="_print_config", action="store_true", help="print the options as a -c FILE and exit")
    p.set_defaults(_fn=fn, _groups=groups, _parser=p)
    return p


def _from_yaml(name: str, tp: Any, value: Any) -> Any:
    """A config file's value for option ``name``, checked and converted as its command-line text would be."""
    tp = _unwrap_optional(tp)
    if value is None:
        return None
    origin = typing.get_origin(tp)
    if origin is Literal:  # matched by text, as on the command line: precision: 32 is the choice "32"
        match = [c for c in typing.get_args(tp) if str(c) == str(value)]
        if not match:
            raise ValueError(f"{value!r} is not one of {', '.join(map(str, typing.get_args(tp)))}")
        return match[0]
    if origin in (list, tuple):
        items = value if isinstance(value, list) else [value]
        return [_from_yaml(name, typing.get_args(tp)[0], v) for v in items]  # a list, as argparse gives
    if tp is bool:
        if not isinstance(value, bool):
            raise ValueError(f"expected true or false, got {value!r}")
        return value
    if isinstance(value, (dict, list)):
        raise ValueError(f"expected one value, got {type(value).__name__}")
    try:
        return _scalar_type(name, tp)(str(value))
    except argparse.ArgumentTypeError as err:
        raise ValueError(str(err)) from None


def _read_config(path: Path, groups: dict[str, type]) -> dict[str, Any]:
    """The options in a ``-c`` file, by field name; an unknown name or a bad value is one line naming it."""
    try:
        data = yaml.safe_load(Path(path).expanduser().read_text())
    except FileNotFoundError:
        raise UserInputError(f"-c {path}: no such file") from None
    except yaml.YAMLError as err:
        raise UserInputError(f"-c {path}: not valid YAML ({' '.join(str(err).split())[:200]})") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise UserInputError(f"-c {path}: expected a mapping of option names to values, got {type(data).__name__}")
    fields = {f.name: typing.get_type_hints(cls)[f.name] for cls in groups.values() for f in dataclasses.fields(cls)}
    out = {}
    for key, value in data.items():
        name = str(key).replace("-", "_")
        if name not in fields:
            raise UserInputError(f"-c {path}: unknown option {key!r} (options: {', '.join(sorted(fields))})")
        try:
            out[name] = _from_yaml(name, fields[name], value)
        except ValueError as err:
            raise UserInputError(f"-c {path}: {key}: {err}") from None
    return out


def _container(tp: Any, value: Any) -> Any:
    """A list from argparse or YAML as the field's own container (``tuple[X, ...]`` fields hold tuples)."""
    return tuple(value) if isinstance(value, list) and typing.get_origin(_unwrap_optional(tp)) is tuple else value


def _plain(value: Any) -> Any:
    """An option value as YAML writes it (tuples as lists, specs and paths as their text)."""
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value if isinstance(value, (str, int, float, bool)) or value is None else str(value)


def call_command(args: argparse.Namespace) -> int:
    """Call the function behind the parsed subcommand with the options that were given."""
    given = {k: v for k, v in vars(args).items() if not k.startswith("_") and k not in ("command", "verbose")}
    if getattr(args, "_config", None):
        given = {**_read_config(args._config, args._groups), **given}
    for name, cls in args._groups.items():
        fields = dataclasses.fields(cls)
        missing = [f.name for f in fields if f.name not in given and f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING]
        if missing:  # argparse's own message and exit code, once the -c file had its say
            args._parser.error(f"the following arguments are required: {', '.join('--' + m.replace('_', '-') for m in missing)}")
        hints = typing.get_type_hints(cls)
        given[name] = cls(**{f.name: _container(hints[f.name], given.pop(f.name)) for f in fields if f.name in given})
    if getattr(args, "_print_config", False):
        for name in args._groups:
            opts = given[name]
            print(yaml.safe_dump({f.name: _plain(getattr(opts, f.name)) for f in dataclasses.fields(opts)}, sort_keys=False), end="")
        return 0
    return args._fn(**given)
