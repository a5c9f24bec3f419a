"""``cli.typed``: subcommands from typed functions (signature -> options and defaults, docstring -> help)."""

from __future__ import annotations

import argparse
import inspect
from dataclasses import dataclass
from typing import Literal

import pytest

from cat_tokenizer.cli.tools import build_parser
from cat_tokenizer.cli.typed import add_command, call_command
from cat_tokenizer.complexity.spec import EvaluatorSpec


@dataclass
class _Group:
    """Shared options.

    Args:
        ckpt: a checkpoint
        steps: sampler steps
    """

    ckpt: str
    steps: int | None = None


def _cmd(files: list[str], *, mode: Literal["a", "b"] = "a", size: int = 128, tag: list[str] | None = None,
         names: tuple[str, ...] = ("x", "y"), quiet: bool = False, group: _Group) -> dict:
    """do a thing

    Args:
        files: input files
        mode: the mode
        size: image side
        tag: a tag (repeatable)
        names: one or more names
        quiet: no output
        group: shared options
    """
    return {"files": files, "mode": mode, "size": size, "tag": tag, "names": names, "quiet": quiet, "group": group}


def _run(argv: list[str]):
    p = argparse.ArgumentParser()
    add_command(p.add_subparsers(dest="command"), _cmd, "cmd")
    return call_command(p.parse_args(["cmd", *argv]))


def test_signature_gives_spellings_and_defaults_stay_in_the_function():
    out = _run(["a.png", "b.png", "--ckpt", "c", "--tag", "t1", "--tag", "t2", "--names", "p", "q", "-q", "--size", "64"])
    assert out["files"] == ["a.png", "b.png"] and out["tag"] == ["t1", "t2"] and out["names"] == ["p", "q"]
    assert out["quiet"] is True and out["size"] == 64 and out["group"] == _Group("c", None)
    out = _run(["a.png", "--ckpt", "c", "--steps", "5"])
    assert out["mode"] == "a" and out["size"] == 128 and out["names"] == ("x", "y") and out["tag"] is None  # the signature's defaults
    assert out["group"].steps == 5


@pytest.mark.parametrize("argv", [["a.png"], ["a.png", "--ckpt", "c", "--mode", "z"], ["a.png", "--ckpt", "c", "--size", "big"]])
def test_bad_options_are_argparse_errors(argv, capsys):
    with pytest.raises(SystemExit) as e:
        _run(argv)
    assert e.value.code == 2 and "error:" in capsys.readouterr().err


def test_every_command_option_has_help_from_its_docstring():
    parser = build_parser()
    subs = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    missing = [f"{name} {action.dest}" for name, sub in subs.choices.items() for action in sub._actions
               if action.dest != "help" and not action.help]
    assert not missing, missing
    assert {"encode", "decode", "score", "rd", "palette", "demo", "sample", "fid"} <= set(subs.choices)
    assert all(sub.description for sub in subs.choices.values())  # the docstring's first line


def test_commands_whose_options_are_a_dataclass_pass_it_down_unrenamed():
    """A command whose options are one dataclass (issue 27: declared once, the single argument of the function
    that runs it): the dataclass is frozen, its fields are not also parameters of the command, and the parser
    hands the command an instance built from exactly its fields."""
    import dataclasses
    import typing

    from cat_tokenizer.cli.registry import command_names, load_command

    with_options = {}
    for name in command_names():
        fn = load_command(name)
        hints = typing.get_type_hints(fn)
        groups = [(p, hints[p]) for p in inspect.signature(fn).parameters if dataclasses.is_dataclass(hints.get(p))]
        for param, cls in groups:
            assert cls.__dataclass_params__.frozen, f"{name}: {cls.__name__} is not frozen"
            clash = {f.name for f in dataclasses.fields(cls)} & set(inspect.signature(fn).parameters)
            assert not clash, f"{name}: {clash} declared twice"
            with_options[name] = cls
    assert {"rd", "analyse", "distill", "distortion-head", "fit-rubric", "classify", "block-head"} <= set(with_options)
    parser = build_parser()
    args = parser.parse_args(["rd", "some/dir", "--image-size", "256", "--regions", "--evaluator", "rubric", "--evaluator", "auto:b"])
    got = {}
    args._fn = lambda **kw: got.update(kw) or 0
    assert call_command(args) == 0
    opts = got["options"]
    assert isinstance(opts, with_options["rd"]) and (opts.image_size, opts.regions) == (256, True)
    assert opts.evaluator == [EvaluatorSpec("rubric"), EvaluatorSpec("auto", "b")]  # parsed once, at the edge
    assert opts.crop == "native"  # a default from the dataclass, the one place it is written


def test_a_misspelt_evaluator_is_an_argparse_error_naming_the_option(capsys):
    from cat_tokenizer.cli import tools

    with pytest.raises(SystemExit) as stop:
        tools.main(["rd", "some/dir", "--evaluator", "rubirc"])
    assert stop.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert "argument --evaluator: evaluator 'rubirc': not a preset" in err


def test_dataclass_commands_take_a_config_file_that_print_config_writes(tmp_path, capsys):
    """-c FILE: the options of --print-config read back to the same dataclass; the command line wins over the file;
    a bad name or value in the file is one line naming it; a required option may come from either."""
    from cat_tokenizer.cli import tools

    def run(*argv):
        got = {}
        args = build_parser().parse_args(list(argv))
        args._fn = lambda **kw: got.update(kw) or 0
        assert call_command(args) == 0
        return got["options"]

    assert tools.main(["rd", "d", "--print-config", "--image-size", "256", "--evaluator", "rubric", "--target-psnr", "22", "26"]) == 0
    cfg = tmp_path / "rd.yaml"
    cfg.write_text(capsys.readouterr().out)
    opts = run("rd", "d", "-c", str(cfg))
    assert opts == run("rd", "d", "--image-size", "256", "--evaluator", "rubric", "--target-psnr", "22", "26")
    assert opts.evaluator == [EvaluatorSpec("rubric")] and opts.target_psnr == (22.0, 26.0)
    assert run("rd", "d", "-c", str(cfg), "--image-size", "64").image_size == 64
    for text, needle in [("image-size: 0", "image-size: must be positive"), ("imagesize: 3", "unknown option 'imagesize'"),
                         ("crop: squash", "crop: 'squash' is not one of native, resize"), ("regions: 1", "regions: expected true or false"),
                         ("- a", "expected a mapping")]:
        cfg.write_text(text + "\n")
        assert tools.main(["rd", "d", "-c", str(cfg)]) == 2
        assert needle in capsys.readouterr().err


@dataclass(frozen=True)
class _Required:
    """Args:
    out: where
    n: how many
    """

    out: str
    n: int = 2


def test_a_required_dataclass_option_can_come_from_the_config(tmp_path, capsys):
    def cmd(*, options: _Required) -> int:
        print(options)
        return 0

    p = argparse.ArgumentParser()
    add_command(p.add_subparsers(dest="command"), cmd, "cmd")
    with pytest.raises(SystemExit):
        call_command(p.parse_args(["cmd"]))
    assert "the following arguments are required: --out" in capsys.readouterr().err
    (tmp_path / "c.yaml").write_text("out: here\n")
    assert call_command(p.parse_args(["cmd", "-c", str(tmp_path / "c.yaml")])) == 0
    assert capsys.readouterr().out.strip() == "_Required(out='here', n=2)"


def test_each_options_dataclass_reaches_its_run_function_whole():
    """Options are declared once (issue 27): every command's options dataclass is the parameter of a public run
    function in its own module, and that function repeats none of its fields as a parameter of its own."""
    import dataclasses
    import sys
    import typing

    from cat_tokenizer.cli.registry import command_names, load_command

    checked = set()
    for name in command_names():
        fn = load_command(name)
        for cls in [t for t in typing.get_type_hints(fn).values() if dataclasses.is_dataclass(t)]:
            module = sys.modules[cls.__module__]
            runners = [f for f in vars(module).values() if inspect.isfunction(f) and f.__module__ == module.__name__
                       and not f.__name__.startswith("_") and cls in typing.get_type_hints(f).values()]  # helpers take derived values
            assert runners, f"{name}: no function of {module.__name__} takes {cls.__name__}"
            fields = {f.name for f in dataclasses.fields(cls)}
            for run in runners:
                again = fields & set(inspect.signature(run).parameters)
                assert not again, f"{name}: {run.__name__} takes {again} beside {cls.__name__}"
            checked.add(name)
    assert {"rd", "analyse", "encode", "score", "distill", "distill-text", "eval-recon", "gen-demo", "bench-gen", "classify"} <= checked
