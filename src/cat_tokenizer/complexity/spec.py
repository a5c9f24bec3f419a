"""Which complexity evaluator to build: one typed spec, parsed once where text comes in.

Commands, configs and the DataModule name an evaluator by a short string; ``EvaluatorSpec.parse`` is the
only place that reads it, and ``ComplexityEvaluator.from_config`` the only place that turns it
into an evaluator. The named presets:

    default            the offline default: the probe with layout facts and the scorer fitted on real-v1
                       (the packaged configs/real_v1_fitted.yaml, written by ``cat-tokenizer fit-rubric``)
    rubric             the probe and the hand-set rule rubric (``ComplexityEvaluator()``'s parts)
    smollm2            the probe and SmolLM2-135M-Instruct scoring against the rubric (ships offline)
    distilled:D        the ratio head of tokenizer folder D (``cat-tokenizer distill``)
    distilled-text:D   the text-only student in D (``cat-tokenizer distill-text``), for prompts
    auto:D             D's ratio head if it agreed well enough with its teacher, else that teacher
    PATH.yaml          any evaluator config (``class_path``/``init_args``, or the init args alone)
"""

from __future__ import annotations

from dataclasses import dataclass
from importlib.resources import files
from pathlib import Path
from typing import Literal

from cat_tokenizer.errors import UserInputError

__all__ = ["EvaluatorSpec", "PRESETS", "FOLDER_PRESETS", "default_config_path"]

Preset = Literal["default", "rubric", "smollm2", "distilled", "distilled-text", "auto", "config"]
PRESETS = ("default", "rubric", "smollm2")  # named evaluators without a folder
FOLDER_PRESETS = ("distilled", "distilled-text", "auto")  # name:FOLDER

_EVALUATOR = "cat_tokenizer.complexity.ComplexityEvaluator"
_PROBE = {"class_path": "cat_tokenizer.complexity.ProbeDescriber"}


def default_config_path() -> Path:
    """The default evaluator's config, shipped in the package: the fitted scorer of ``cat-tokenizer
    fit-rubric`` on real-v1 train (its report: src/cat_tokenizer/complexity/configs/real_v1_fitted.md)."""
    return Path(str(files("cat_tokenizer.complexity") / "configs" / "real_v1_fitted.yaml"))


@dataclass(frozen=True)
class EvaluatorSpec:
    """A complexity evaluator by name: a preset, a preset with a tokenizer folder, or a config file.

    Args:
        preset: one of ``default``, ``rubric``, ``smollm2`` (no folder), ``distilled``, ``distilled-text``,
            ``auto`` (a folder in ``path``), or ``config`` (a YAML file in ``path``).
        path: the tokenizer folder or config file the preset needs.
    """

    preset: Preset = "default"
    path: str | None = None

    def __post_init__(self) -> None:
        needs_path = self.preset in FOLDER_PRESETS or self.preset == "config"
        if needs_path != bool(self.path):
            raise UserInputError(f"evaluator {self.preset!r} {'needs' if needs_path else 'takes no'} a path")

    @classmethod
    def parse(cls, text: str | Path | EvaluatorSpec | None) -> EvaluatorSpec:
        """``None``/``"default"``, ``"rubric"``, ``"smollm2"``, ``"NAME:FOLDER"`` or a config file path."""
        if isinstance(text, EvaluatorSpec):
            return text
        if text is None:
            return cls()
        text = str(text)
        if text in PRESETS:
            return cls(text)
        name, sep, folder = text.partition(":")
        if sep and name in FOLDER_PRESETS:
            if not folder:
                raise UserInputError(f"evaluator {text!r}: name the tokenizer folder after the colon ({name}:FOLDER)")
            return cls(name, folder)
        if text.endswith((".yaml", ".yml")) or Path(text).expanduser().is_file():
            return cls("config", text)
        raise UserInputError(f"evaluator {text!r}: not a preset ({', '.join(PRESETS)}), "
                             f"{'/'.join(FOLDER_PRESETS)}:FOLDER, or a config file")

    def __str__(self) -> str:
        if self.preset == "config":
            return str(self.path)
        return f"{self.preset}:{self.path}" if self.path else self.preset

    @property
    def name(self) -> str:
        """A short label for tables: the preset, or a config file's stem."""
        return Path(self.path).stem if self.preset == "config" else str(self)

    def config(self) -> Path | dict:
        """The evaluator config this spec stands for (``auto`` is a choice, not a config: ``ComplexityEvaluator.from_config``
        makes it with ``student_or_teacher``)."""
        if self.preset == "default":
            return default_config_path()
        if self.preset == "rubric":
            return {"class_path": _EVALUATOR, "init_args": {}}
        if self.preset == "smollm2":
            scorer = {"class_path": "cat_tokenizer.complexity.LLMScorer", "init_args": {"model": "builtin:smollm2", "batch_size": 8}}
            return {"class_path": _EVALUATOR, "init_args": {"describer": _PROBE, "scorer": scorer}}
        if self.preset == "distilled":
            part = {"describer": {"class_path": "cat_tokenizer.complexity.distilled.DistilledDescriber", "init_args": {"path": self.path}}}
        elif self.preset == "distilled-text":
            part = {"scorer": {"class_path": "cat_tokenizer.complexity.text_student.TextStudentScorer", "init_args": {"path": self.path}}}
        elif self.preset == "config":
            return Path(self.path).expanduser()
        else:
            raise UserInputError(f"evaluator {self}: a choice between two evaluators has no single config")
        return {"class_path": _EVALUATOR, "init_args": part}
