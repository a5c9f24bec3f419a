"""``cat-tokenizer bench-score`` (part of ``make bench``): throughput of every describer and scorer,
and the LLM scorer's batching and prefix-cache gains, all measured in one process on the same
images so the ratios compare like with like."""

from __future__ import annotations

import tempfile
from pathlib import Path

from cat_tokenizer.complexity import ComplexityEvaluator, LLMScorer, ProbeDescriber, RubricScorer
from cat_tokenizer.complexity.cache import ScoreCache
from cat_tokenizer.data.default_data import ensure_default_data
from cat_tokenizer.data.images import list_images, load_rgb
from cat_tokenizer.profiling import items_per_second

__all__ = ["bench_scorers", "bench_default_and_cache", "spread"]


def spread(files: list[Path], n: int) -> list[Path]:
    """``n`` files evenly spaced through a sorted list (so every top-level folder is sampled); all when fewer."""
    n = min(n, len(files))
    return [files[i * len(files) // n] for i in range(n)]


def _timed_row(rows: list[dict], component: str, setting: str, n: int, fn, base: float | None, repeat: int) -> float:
    """Time ``fn`` over ``n`` items, append its row (``speed_vs`` against ``base`` items/s), return items/s."""
    rate = items_per_second(fn, n, repeat)
    rows.append({"component": component, "setting": setting, "items": n, "items_per_s": rate,
                 "s_per_item": 1.0 / rate, "speed_vs": "" if base is None else f"{rate / base:.2f}x"})
    return rate


def bench_scorers(n: int = 16, llm: str = "builtin:smollm2", batch_size: int = 8, device: str = "cpu") -> list[dict]:
    """Rows ``{component, setting, items, items_per_s, s_per_item, speed_vs}`` for the embedded data."""
    files = list_images(ensure_default_data())
    files = spread(files, n)  # over the kinds
    images = [load_rgb(f) for f in files]
    rows: list[dict] = []

    def add(component: str, setting: str, fn, base: float | None = None, repeat: int = 1) -> float:
        return _timed_row(rows, component, setting, len(images), fn, base, repeat)

    probe = ProbeDescriber()
    descs = probe.describe(images[:1]) and probe.describe(images)  # warm-up (cascade load) then the real list
    add("ProbeDescriber", "OCR + faces + statistics", lambda: probe.describe(images))
    add("ProbeDescriber", "statistics only (ocr/faces off)", lambda: ProbeDescriber(ocr=False, faces=False).describe(images))
    add("RubricScorer", "rules", lambda: RubricScorer().score(descs), repeat=3)
    scorer = LLMScorer(model=llm, batch_size=1, prefix_cache=False, device=device).load()
    scorer.score(descs[:1])  # warm-up
    naive = add(f"LLMScorer {llm}", "one at a time, full prompt", lambda: scorer.score(descs))
    scorer.prefix_cache = True
    add(f"LLMScorer {llm}", "one at a time, cached rubric prefix", lambda: scorer.score(descs), naive)
    scorer.batch_size = batch_size
    add(f"LLMScorer {llm}", f"batch {batch_size}, cached rubric prefix", lambda: scorer.score(descs), naive)
    scorer.prefix_cache = False
    add(f"LLMScorer {llm}", f"batch {batch_size}, full prompt", lambda: scorer.score(descs), naive)
    rows.append({"component": "prompt", "setting": f"{scorer._prefix_ids.shape[1]} shared prefix tokens",
                 "items": len(images), "items_per_s": float("nan"), "s_per_item": float("nan"), "speed_vs": ""})
    return rows


def bench_default_and_cache(files: list[Path], n_eval: int = 200) -> list[dict]:
    """The default evaluator's images/s from files (read, probe, fitted score), and the score cache's
    key cost on ``files``: hashing every file's content (the default) against the opt-in stat
    shortcut (``ScoreCache(trust_stat=True)``: size, mtime, ctime, inode), both on a warm page cache,
    plus a full rerun of ``score`` over a filled cache each way."""
    rows: list[dict] = []

    def add(component: str, setting: str, n: int, fn, base: float | None = None, repeat: int = 1) -> float:
        return _timed_row(rows, component, setting, n, fn, base, repeat)

    evaluator = ComplexityEvaluator.default().load()
    sample = spread(files, n_eval)
    evaluator.score_images(sample[:2])  # warm-up (face cascade, OCR)
    describe = add("default evaluator", "read + probe + fitted score, no cache", len(sample), lambda: evaluator.score_images(sample))
    with tempfile.TemporaryDirectory() as tmp:
        hashing, stat = ScoreCache(Path(tmp) / "h.sqlite"), ScoreCache(Path(tmp) / "s.sqlite", trust_stat=True)
        stat.content_hashes(files)  # the first pass hashes and records the stat signatures
        full = add("score cache keys", "content hash of every file (default)", len(files), lambda: hashing.content_hashes(files), repeat=3)
        add("score cache keys", "stat shortcut (trust_stat, opt-in)", len(files), lambda: stat.content_hashes(files), full, repeat=3)
        rows.append({"component": "score cache keys", "setting": "hashing cost vs describing (default evaluator)", "items": len(files),
                     "items_per_s": float("nan"), "s_per_item": float("nan"), "speed_vs": f"{describe / full:.3f}x of a describe"})
        evaluator.score_images(files, cache=hashing)
        evaluator.score_images(files, cache=stat)
        rerun = add("score rerun (all cached)", "content hash", len(files), lambda: evaluator.score_images(files, cache=hashing), repeat=2)
        add("score rerun (all cached)", "stat shortcut", len(files), lambda: evaluator.score_images(files, cache=stat), rerun, repeat=2)
        hashing.close()
        stat.close()
    return rows
