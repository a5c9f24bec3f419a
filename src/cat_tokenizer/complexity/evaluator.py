"""The complexity evaluator: describe -> score -> ratio, with the on-disk score cache.

    evaluator = ComplexityEvaluator.from_config("configs/evaluator/probe_rubric.yaml")
    results = evaluator.score_images(paths, cache="scores.sqlite")   # [ScoreResult]
    results = evaluator.score_texts(["a page of a newspaper"])       # the generation case

Scores are cached per (image content hash, evaluator fingerprint hash) and written after every
batch, so a killed run loses nothing already scored and a re-run only scores new or changed
images. Ratios are not cached: they follow from the scores and the (possibly budget-calibrated)
thresholds each time.
"""

from __future__ import annotations

import hashlib
import logging
import re
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import yaml
from jsonargparse import ArgumentParser
from torch import nn
from tqdm.auto import tqdm

from cat_tokenizer.complexity.base import Describer, Description, Scorer, text_description
from cat_tokenizer.complexity.cache import ScoreCache, config_hash, content_hash
from cat_tokenizer.complexity.probe import ProbeDescriber
from cat_tokenizer.complexity.ratio_map import RatioMapper
from cat_tokenizer.complexity.rubric import RubricScorer
from cat_tokenizer.complexity.spec import EvaluatorSpec, default_config_path
from cat_tokenizer.data.images import UnreadableImage, load_rgb
from cat_tokenizer.errors import InputNotFound, Interrupted, UserInputError
from cat_tokenizer.ratios import DEFAULT_RATIOS, DEFAULT_THRESHOLDS, check_ratio

__all__ = ["ComplexityEvaluator", "ScoreResult", "summarize", "default_config_path", "EvaluatorSpec"]

log = logging.getLogger(__name__)

MIN_AGREEMENT = 0.9  # the distilled head replaces its teacher by default from this held-out agreement ...
MIN_HELD_OUT = 100  # ... measured on at least this many held-out images


def replaces_teacher(agreement: float | None, held_out: int, min_agreement: float = MIN_AGREEMENT,
                     min_held_out: int = MIN_HELD_OUT) -> bool:
    """Whether a distilled head agreed well enough with its teacher to be used in its place (``auto:D``)."""
    return agreement is not None and agreement >= min_agreement and held_out >= min_held_out


@dataclass
class ScoreResult:
    """One scored image or prompt. ``error`` is set (and score/ratio None) for unreadable files."""

    key: str
    score: float | None = None
    ratio: int | None = None
    description: str = ""
    cached: bool = False
    error: str | None = None
    overridden: bool = False


class ComplexityEvaluator(nn.Module):
    """Describer + scorer + ratio mapping.

    Args:
        describer: image -> description; default ``ProbeDescriber()`` (offline: OCR, faces, statistics).
        scorer: description -> score 1..9; default ``RubricScorer()``, or none when the describer scores
            itself (``VLMDescriber(score=True)``: the one-VLM pipeline).
        thresholds: score cut points, ascending (default: the describer's or scorer's own, as a distilled
            head or text student carries its teacher's; else score >= 7 -> 8x, >= 4 -> 16x, else 32x).
        ratios: the tokenizer's ratios (default: the scorer's own, else 8, 16, 32).
        target_mean_tokens: if set, thresholds are calibrated on each scored set so the mean token
            count at ``image_size`` comes closest to this budget (``thresholds`` is then ignored).
        image_size: the side the token budget refers to.
        batch_size: images described and scored together (and cached together).
    """

    def __init__(
        self,
        describer: Describer | None = None,
        scorer: Scorer | None = None,
        thresholds: Sequence[float] | None = None,
        ratios: Sequence[int] | None = None,
        target_mean_tokens: float | None = None,
        image_size: int = 256,
        batch_size: int = 8,
    ):
        super().__init__()

        self.describer = describer if describer is not None else ProbeDescriber()
        self_scoring = bool(getattr(self.describer, "scores_itself", False))
        self.scorer = scorer if (scorer is not None or self_scoring) else RubricScorer()
        own = [c for c in (self.describer, self.scorer) if getattr(c, "thresholds", None) is not None]
        if thresholds is None:
            thresholds = own[0].thresholds if own else DEFAULT_THRESHOLDS
        if ratios is None:
            ratios = next((c.ratios for c in own if getattr(c, "ratios", None)), DEFAULT_RATIOS)
        self.mapper = RatioMapper(thresholds, ratios)
        self.target_mean_tokens, self.image_size, self.batch_size = target_mean_tokens, image_size, batch_size
        if batch_size < 1:
            raise UserInputError(f"batch_size must be >= 1, got {batch_size}")

    # --- construction -------------------------------------------------------------------------
    @classmethod
    def default(cls, image_size: int | None = None) -> ComplexityEvaluator:
        """The offline default evaluator (``from_config(None)``), its token counts at ``image_size``."""
        return cls.from_config(None, image_size=image_size)

    @classmethod
    def from_config(cls, config: str | Path | EvaluatorSpec | Mapping | None = None, image_size: int | None = None) -> ComplexityEvaluator:
        """Build from an ``EvaluatorSpec`` or its text (a preset such as ``default``, ``rubric``, ``smollm2``,
        ``distilled:D``, ``auto:D``, or a YAML path: ``cat_tokenizer.complexity.spec``), or from a config
        mapping: ``{class_path: ..., init_args: {...}}`` or the init args alone. ``None`` is ``default``.
        ``image_size`` (the size token counts refer to) overrides the config's, at construction.
        """
        size = {} if image_size is None else {"image_size": int(image_size)}
        if not isinstance(config, Mapping):
            spec = EvaluatorSpec.parse(config)
            if spec.preset == "auto":
                return cls.student_or_teacher(spec.path, image_size=image_size)
            config = spec.config()  # a Path (default, a YAML) or a mapping
        if isinstance(config, Path):
            path = Path(config).expanduser()
            if not path.is_file():
                raise InputNotFound(f"evaluator config not found: {config}")
            try:
                config = yaml.safe_load(path.read_text()) or {}
            except (yaml.YAMLError, UnicodeDecodeError) as err:
                where = getattr(err, "problem_mark", None)
                at = f" (line {where.line + 1}, column {where.column + 1})" if where else ""
                raise UserInputError(f"evaluator config {path}: not valid YAML{at}") from None
            if not isinstance(config, dict):
                raise UserInputError(f"evaluator config {path}: expected a mapping (class_path / init_args), "
                                     f"got {type(config).__name__}")
        config = dict(config)
        if "class_path" not in config:
            config = {"class_path": f"{cls.__module__}.{cls.__name__}", "init_args": config}
        if size:
            config["init_args"] = {**(config.get("init_args") or {}), **size}
        parser = ArgumentParser(exit_on_error=False)
        parser.add_argument("--evaluator", type=ComplexityEvaluator)
        try:
            parsed = parser.parse_object({"evaluator": config})
        except Exception as err:  # jsonargparse reports bad keys/types here
            detail = " ".join(line.strip() for line in str(err).splitlines() if line.strip())  # jsonargparse nests the cause
            cause = re.search(r"Problem with given class_path '([^']+)': (module [^-]*?has no attribute '[^']+'|No module named '[^']+')", detail)
            if cause:  # the innermost class that could not be imported, not the Union/subtype preamble
                raise UserInputError(f"bad evaluator config: cannot import class_path '{cause[1]}' ({cause[2].strip()})") from err
            raise UserInputError(f"bad evaluator config: {detail[:500]}") from err
        instantiate = getattr(parser, "instantiate", None) or parser.instantiate_classes  # renamed in jsonargparse 4.49
        return instantiate(parsed).evaluator

    @classmethod
    def student_or_teacher(cls, path: str | Path, min_agreement: float = MIN_AGREEMENT,
                           min_held_out: int = MIN_HELD_OUT, image_size: int | None = None) -> ComplexityEvaluator:
        """The distilled ratio head of tokenizer ``path`` where it agreed with its teacher on at least
        ``min_agreement`` of at least ``min_held_out`` held-out images (``cat-tokenizer distill``
        records both in the head); otherwise its teacher, rebuilt from the recorded config. The
        choice and its reason are logged."""
        import json

        cfg_file = Path(path).expanduser() / "config.json"
        if not cfg_file.is_file():
            raise InputNotFound(f"auto:{path}: no tokenizer folder (config.json) there")
        head = json.loads(cfg_file.read_text()).get("ratio_head")
        if head is None:
            raise UserInputError(f"auto:{path}: this tokenizer has no ratio head; make one with `cat-tokenizer distill --out {path}`")
        report = head.get("report") or {}
        agreement, held_out = report.get("agreement"), report.get("held_out", 0)
        if replaces_teacher(agreement, held_out, min_agreement, min_held_out):
            log.info("auto:%s: the distilled ratio head (%.1f%% agreement with %s on %d held-out images)",
                     path, 100 * agreement, report.get("teacher_name"), held_out)
            return cls.from_config(EvaluatorSpec("distilled", str(path)), image_size)
        why = ("no recorded agreement" if agreement is None else
               f"{100 * agreement:.1f}% agreement on {held_out} held-out images (needs {100 * min_agreement:.0f}% on {min_held_out}+)")
        log.warning("auto:%s: using the teacher %s, not the ratio head: %s", path, report.get("teacher_name", "probe+rubric"), why)
        return cls.from_config(report.get("teacher"), image_size)

    def load(self) -> ComplexityEvaluator:
        """Load the parts' weights now (otherwise on first use)."""
        self.describer.load()
        if self.scorer is not None:
            self.scorer.load()
        return self

    # --- identity -----------------------------------------------------------------------------
    def fingerprint(self) -> dict:
        return {"describer": self.describer.fingerprint(),
                "scorer": self.scorer.fingerprint() if self.scorer is not None else "describer"}

    @property
    def evaluator_hash(self) -> str:
        return config_hash(self.fingerprint())

    @property
    def name(self) -> str:
        d = self.describer.fingerprint()["describer"].split("/")[0]
        s = self.scorer.fingerprint()["scorer"].split("/")[0] if self.scorer is not None else "self"
        return f"{d}+{s}"

    # --- scoring ------------------------------------------------------------------------------
    def score_descriptions(self, descriptions: list[Description]) -> list[float]:
        if self.scorer is not None:
            return [float(s) for s in self.scorer.score(descriptions)]
        if any(d.score is None for d in descriptions):
            raise UserInputError("this evaluator has no scorer and its describer gave no score; add a scorer")
        return [float(d.score) for d in descriptions]

    def mapper_for(self, scores: Sequence[float]) -> RatioMapper:
        """The thresholds in force for this set of scores: with a token budget, this evaluator's
        thresholds shifted together until the mean tokens match it (``RatioMapper.calibrate_shift``:
        the spread over every ratio is kept)."""
        if self.target_mean_tokens is None:
            return self.mapper
        s = np.asarray(scores, dtype=np.float64)
        if s.size and np.ptp(s) == 0:
            raise UserInputError(f"cannot calibrate thresholds: all {s.size} scores equal {s[0]:g}; set thresholds by hand")
        return RatioMapper.calibrate_shift(s, self.target_mean_tokens, self.image_size, self.mapper.thresholds,
                                           self.mapper.ratios)

    def _assign(self, results: list[ScoreResult], overrides: Mapping[str, int] | None, ratio: int | None) -> None:
        ok = [r for r in results if r.score is not None]
        if ok:
            mapped = self.mapper_for([r.score for r in ok])([r.score for r in ok])
            for r, m in zip(ok, mapped):
                r.ratio = int(m)
        for r in ok:
            forced = ratio if ratio is not None else (overrides or {}).get(r.key)
            if forced is not None:
                r.ratio, r.overridden = check_ratio(forced, self.mapper.ratios), True

    def score_images(
        self,
        paths: Sequence[str | Path],
        cache: str | Path | ScoreCache | None = None,
        overrides: Mapping[str, int] | None = None,
        ratio: int | None = None,
        progress: bool = False,
        read_also: Sequence[ScoreCache] = (),
        map_ratios: bool = True,
    ) -> list[ScoreResult]:
        """Score image files (cached ones are read, not recomputed); one result per path, in order.

        Args:
            paths: image files.
            cache: a ``ScoreCache`` or its SQLite path (None: no cache).
            overrides: ``{path: ratio}`` set by hand for some images (their scores are still computed).
            ratio: one ratio for every image (a global override).
            progress: show a progress bar.
            read_also: more caches consulted for hits (read only; new scores go to ``cache``).
            map_ratios: map scores to ratios (off when scoring a slice of a dataset whose
                budget calibration needs all the scores, as a distributed run does).
        """
        _check_sequence(paths, "score_images", "image paths")
        results = [ScoreResult(key=str(p)) for p in paths]
        with _opened(cache) as store:
            hashes = store.content_hashes(paths) if store is not None else [self._hash_or_none(p) for p in paths]
            for r, h in zip(results, hashes):
                if h is None:
                    r.error = f"{r.key}: cannot read (missing or unreadable file)"
            self._score_keyed(results, hashes, self._describe_files, store, progress, "images", read_also)
        if map_ratios:
            self._assign(results, overrides, ratio)
        return results

    @staticmethod
    def _hash_or_none(path: str | Path) -> str | None:
        try:
            return content_hash(path)
        except OSError:
            return None

    def score_texts(self, texts: Sequence[str], cache: str | Path | ScoreCache | None = None,
                    ratio: int | None = None) -> list[ScoreResult]:
        """Score prompts or class names (no image: the scorer reads the text itself)."""
        _check_sequence(texts, "score_texts", "prompts")
        if self.scorer is None:
            raise UserInputError("text scoring needs a scorer (the describer-only pipeline needs an image)")
        results = [ScoreResult(key=t) for t in texts]
        hashes = ["text:" + hashlib.sha256(t.encode()).hexdigest() for t in texts]
        with _opened(cache) as store:
            self._score_keyed(results, hashes, lambda rs: [text_description(r.key) for r in rs], store, False, "prompts")
        self._assign(results, None, ratio)
        return results

    def _describe_files(self, results: list[ScoreResult]) -> list[Description | None]:
        images, where = [], []
        for i, r in enumerate(results):
            try:
                images.append(load_rgb(r.key))
                where.append(i)
            except UnreadableImage as err:
                r.error = str(err)
        out: list[Description | None] = [None] * len(results)
        for i, d in zip(where, self.describer.describe(images) if images else []):
            out[i] = d
        return out

    def _score_keyed(self, results, hashes, describe, store: ScoreCache | None, progress: bool, what: str,
                     read_also=()) -> None:
        ev = self.evaluator_hash
        keys = [h for h in hashes if h]
        hits = {}
        for extra in read_also:
            hits.update(extra.get_many(keys, ev))
        if store is not None:
            hits.update(store.get_many([k for k in keys if k not in hits], ev))
        if store is not None and not hits and (others := store.evaluators() - {ev}):
            log.info("score cache %s holds scores from %d other evaluator config(s); this config (%s) rescores everything",
                     store.path, len(others), ev)
        todo = []
        for r, h in zip(results, hashes):
            if h is None:
                continue
            if h in hits:
                r.score, r.description = hits[h]
                r.cached = True
            else:
                todo.append((r, h))
        if store is not None:
            log.info("%d %s: %d cached, %d to score", len(results), what, len(results) - len(todo), len(todo))
        bar = tqdm(total=len(todo), desc=f"scoring {what}", unit=what[:-1], disable=not progress)
        done = 0
        try:
            for i in range(0, len(todo), self.batch_size):
                chunk = todo[i : i + self.batch_size]
                descs = describe([r for r, _ in chunk])
                ok = [(r, h, d) for (r, h), d in zip(chunk, descs) if d is not None]
                scores = self.score_descriptions([d for _, _, d in ok]) if ok else []
                for (r, _, d), s in zip(ok, scores):
                    r.score, r.description = s, d.text
                if store is not None and ok:
                    store.put_many([(h, r.score, r.description) for r, h, _ in ok], ev)
                done += len(chunk)
                bar.update(len(chunk))
        except KeyboardInterrupt:
            kept = f"kept in {store.path}; rerun to resume" if store is not None else "not kept (no cache)"
            raise Interrupted(f"interrupted: {done} of {len(todo)} {what} scored, {kept}") from None
        finally:
            bar.close()


def _check_sequence(items, method: str, what: str) -> None:
    """A string where a list belongs would be scored character by character: refuse it."""
    if isinstance(items, (str, bytes, Path)):
        raise UserInputError(f"{method} takes a list of {what}, got one {type(items).__name__}: wrap it in a list")


@contextmanager
def _opened(cache: str | Path | ScoreCache | None) -> Iterator[ScoreCache | None]:
    """The cache as an open ``ScoreCache`` (or None); one opened here from a path is closed after."""
    if cache is None or isinstance(cache, ScoreCache):
        yield cache
        return
    store = ScoreCache(cache)
    try:
        yield store
    finally:
        store.close()


def summarize(results: Sequence[ScoreResult], image_size: int, ratios: Sequence[int] = DEFAULT_RATIOS) -> dict:
    """Counts per ratio and mean tokens vs every fixed ratio (square ``image_size`` images)."""
    ok = [r for r in results if r.ratio is not None]
    counts = {int(r): sum(x.ratio == r for x in ok) for r in ratios}
    tokens = RatioMapper.tokens(np.array([x.ratio for x in ok]), image_size) if ok else np.zeros(0)
    return {"scored": len(ok), "failed": len(results) - len(ok), "per_ratio": counts,
            "mean_tokens": float(tokens.mean()) if ok else 0.0,
            "fixed_tokens": {int(r): int(RatioMapper.tokens(np.array([r]), image_size)[0]) for r in ratios}}
