"""Ratio mapping (thresholds, budget calibration) and the SQLite score cache."""

import multiprocessing as mp

import numpy as np
import pytest

from cat_tokenizer.complexity import RatioMapper, ScoreCache, config_hash, content_hash
from cat_tokenizer.errors import UserInputError


def test_thresholds_map_high_scores_to_small_ratios():
    m = RatioMapper((4.0, 7.0))
    assert m([1, 3.99, 4, 6.9, 7, 9]).tolist() == [32, 32, 16, 16, 8, 8]
    with pytest.raises(UserInputError, match="ascending"):
        RatioMapper((7.0, 4.0))
    with pytest.raises(UserInputError, match="need 2"):
        RatioMapper((5.0,))


def test_budget_calibration_hits_the_target():
    rng = np.random.default_rng(0)
    scores = rng.uniform(1, 9, 500).round(2)
    for target in (100.0, 256.0, 600.0):
        m = RatioMapper.calibrate(scores, target, image_size=256)
        mean = RatioMapper.tokens(m(scores), 256).mean()
        assert abs(mean - target) < 0.02 * target, (target, mean)
        assert m(scores)[np.argmax(scores)] <= m(scores)[np.argmin(scores)]  # more complex, more tokens


@pytest.mark.parametrize("scores,target,msg", [([], 256, "empty"), ([5, 5, 5], 256, "all 3 scores equal"), ([1, 9], 5000, "outside")])
def test_budget_calibration_bad_input(scores, target, msg):
    with pytest.raises(UserInputError, match=msg):
        RatioMapper.calibrate(scores, target, image_size=256)


def test_hashes(tmp_path):
    a, b = tmp_path / "a.bin", tmp_path / "b.bin"
    a.write_bytes(b"x" * 3_000_000)
    b.write_bytes(b"x" * 3_000_000)
    assert content_hash(a) == content_hash(b)
    b.write_bytes(b"y")
    assert content_hash(a) != content_hash(b)
    assert config_hash({"a": 1, "b": [1, 2]}) == config_hash({"b": [1, 2], "a": 1}) != config_hash({"a": 2, "b": [1, 2]})


def test_cache_hit_miss_and_invalidation(tmp_path):
    cache = ScoreCache(tmp_path / "scores.sqlite")
    cache.put_many([("h1", 3.0, "flat"), ("h2", 8.5, "text")], evaluator="e1")
    assert cache.get_many(["h1", "h2", "h3"], "e1") == {"h1": (3.0, "flat"), "h2": (8.5, "text")}
    assert cache.get_many(["h1"], "e2") == {}  # a changed evaluator config misses
    cache.put_many([("h1", 4.0, "flat v2")], evaluator="e1")
    cache.close()
    again = ScoreCache(tmp_path / "scores.sqlite")  # persisted
    assert again.get_many(["h1"], "e1") == {"h1": (4.0, "flat v2")} and again.evaluators() == {"e1"}
    keys = [f"k{i}" for i in range(1200)]  # more than one IN (...) chunk
    again.put_many([(k, 1.0, "") for k in keys], "e1")
    assert len(again.get_many(keys, "e1")) == 1200


def _writer(path, rank):
    cache = ScoreCache(path)
    for i in range(50):
        cache.put_many([(f"r{rank}-{i}", float(i), "")], evaluator="e")
    cache.close()


def test_cache_concurrent_writers(tmp_path):
    path = tmp_path / "scores.sqlite"
    ScoreCache(path).close()
    procs = [mp.get_context("fork").Process(target=_writer, args=(path, r)) for r in range(3)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(120)
    assert all(p.exitcode == 0 for p in procs)
    keys = [f"r{r}-{i}" for r in range(3) for i in range(50)]
    assert len(ScoreCache(path).get_many(keys, "e")) == 150
