"""Rate-distortion: the oracle bound, budget calibration, and `cat-tokenizer rd` end to end."""

from __future__ import annotations

import csv
import itertools

import numpy as np
import pytest
from conftest import write_kind_folder
from PIL import Image

from cat_tasks.reconstruction.rd import RD_COLUMNS, headline, oracle_allocation, rd_curves, score_allocation
from cat_tasks.reconstruction.table import ReconTable
from cat_tokenizer.cli import tools
from cat_tokenizer.complexity import RatioMapper


def _table(n: int = 40, seed: int = 0) -> ReconTable:
    """Known distortions: PSNR rises with tokens, by an amount that differs per image (its 'complexity')."""
    rng = np.random.default_rng(seed)
    base = rng.uniform(14, 30, n)
    need = rng.uniform(0, 4, n)  # how much detail the image has: 8x gains `need` dB over 16x, 32x loses 0.3 need^2
    psnr = np.stack([base + need, base, base - 0.3 * need**2], 1)  # 8x, 16x, 32x
    kinds = ["flat" if x < 1.3 else "text" if x > 2.7 else "natural" for x in need]
    return ReconTable(paths=[f"{k}/{i}.png" for i, k in enumerate(kinds)], kinds=kinds, ratios=(8, 16, 32), image_size=128,
                      psnr=psnr, ssim=np.clip(psnr / 40, 0, 1), mse=10 ** (-psnr / 10), ocr=np.full((n, 3), np.nan),
                      ocr_orig=np.full(n, np.nan), jpeg_bpp=rng.uniform(0.5, 3, n))


def test_oracle_is_the_exact_optimum_on_a_small_case():
    t = _table(7, seed=3)
    costs = t.tokens(np.arange(3))
    for budget in (16, 40, 64, 100, 200, 256):
        got = oracle_allocation(t.psnr, costs, budget)
        assert costs[got].mean() <= budget
        best = max(t.psnr[np.arange(7), list(c)].sum() for c in itertools.product(range(3), repeat=7) if costs[list(c)].mean() <= budget)
        assert t.psnr[np.arange(7), got].sum() == pytest.approx(best)


def test_oracle_beats_or_equals_every_method_at_every_budget():
    t = _table()
    complexity = t.psnr[:, 0] - t.psnr[:, 2]  # an evaluator that knows the truth, up to noise
    scores = {"CAT (good)": (complexity + np.random.default_rng(1).normal(0, 0.5, len(t)), None),
              "CAT (inverted)": (-complexity, None)}
    rows, _ = rd_curves(t, scores)
    costs = t.tokens(np.arange(3))
    for r in rows:
        bound = t.psnr[np.arange(len(t)), oracle_allocation(t.psnr, costs, r["mean_tokens"])].mean()
        assert r["psnr"] <= bound + 1e-9, r
    h = headline(rows, t.ratios)
    assert h["oracle"]["psnr_gain_db"] >= h["CAT (good)"]["psnr_gain_db"] > h["random"]["psnr_gain_db"] > h["CAT (inverted)"]["psnr_gain_db"]
    assert 0 < h["CAT (good)"]["oracle_capture"] <= 1
    assert h["CAT (good)"]["token_saving"] > 0  # reaches fixed 16x's PSNR with fewer tokens


def test_no_share_of_an_oracle_gain_within_noise_of_zero():
    # at 256 px the image-level oracle gains +0.00 dB: a share of it (once "-147992%") is no figure
    row = lambda m, t, p: {"method": m, "mean_tokens": t, "psnr": p}  # noqa: E731
    rows = [row("fixed 16x", 64, 28.0), *(row(m, t, 28.0 + d * (t - 64) / 64) for m, d in (("oracle", 0.01), ("CAT", -1.0))
                                          for t in (32, 64, 128))]
    h = headline(rows, (8, 16, 32))
    assert h["oracle"]["psnr_gain_db"] == pytest.approx(0.0) and np.isnan(h["CAT"]["oracle_capture"])
    rows = [r if r["method"] != "oracle" or r["mean_tokens"] != 64 else row("oracle", 64, 28.2) for r in rows]
    assert headline(rows, (8, 16, 32))["CAT"]["oracle_capture"] == pytest.approx(0.0)


@pytest.mark.parametrize("target", [16, 30, 64, 100, 180, 256])
def test_budget_calibration_within_one_image(target):
    scores = np.random.default_rng(0).normal(5, 2, 50)
    mapper = RatioMapper.calibrate_shift(scores, target, 128, anchor=(4.0, 7.0))
    mean = RatioMapper.tokens(mapper(scores), 128).mean()
    assert abs(mean - target) <= (256 - 64) / 50  # the largest one-image step, spread over 50 images
    assert mapper.thresholds[1] - mapper.thresholds[0] == pytest.approx(3.0)  # the evaluator's spacing is kept
    idx = score_allocation(scores, 64, 128, (8, 16, 32), anchor=(4.0, 7.0))
    assert set(idx.tolist()) == {0, 1, 2}  # 16x's budget still spreads over every ratio (calibrate gave all-16x)


def test_rd_command_writes_table_plot_and_report(tmp_path, tiny_vae, capsys):
    tiny_vae.save_pretrained(tmp_path / "tok")
    write_kind_folder(tmp_path / "data", kinds=("flat", "natural"), n=4)
    out = tmp_path / "rd"
    args = ["rd", str(tmp_path / "data"), "--ckpt", str(tmp_path / "tok"), "--out", str(out), "--image-size", "32",
            "--features", "off", "--device", "cpu", "-q", "--budgets", "1,4,10,16"]
    assert tools.main(args) == 0
    rows = list(csv.DictReader(open(out / "rd.csv")))
    assert list(rows[0]) == RD_COLUMNS
    methods = {r["method"] for r in rows}
    assert {"fixed 8x", "fixed 16x", "fixed 32x", "CAT (default)", "JPEG size", "random", "oracle"} <= methods
    assert all(float(r["mean_tokens"]) <= float(r["budget"]) + 1e-9 for r in rows if r["method"] == "oracle")
    assert (out / "rd.png").stat().st_size > 1000 and "## Per content kind" in (out / "rd.md").read_text()
    chunks = list((out / "recon_cache").rglob("chunk_*.npz"))
    assert chunks
    mtimes = [c.stat().st_mtime_ns for c in chunks]
    assert tools.main(args) == 0  # a rerun reuses every measurement
    assert [c.stat().st_mtime_ns for c in chunks] == mtimes and len(list((out / "recon_cache").rglob("chunk_*.npz"))) == len(chunks)


def test_distill_target_oracle_learns_separable_labels(tmp_path, tiny_vae, monkeypatch):
    """Flat images tolerate 32x, noisy ones need 8x (a synthetic measurement table): the head trained on
    those oracle labels separates held-out images of both kinds, and the saved head scores like the oracle."""
    import json

    import cat_tasks.distill.ratio_head as distill_mod
    from cat_tokenizer.complexity import ComplexityEvaluator

    rng = np.random.default_rng(0)
    root = tmp_path / "data"
    for kind in ("flat", "noise"):
        for src in ("a", "b", "c", "d", "e"):
            for i in range(6):
                p = root / kind / src / f"{i}.png"
                p.parent.mkdir(parents=True, exist_ok=True)
                arr = (np.full((40, 40, 3), rng.integers(0, 255, 3), np.uint8) if kind == "flat"
                       else rng.integers(0, 255, (40, 40, 3), dtype=np.uint8))
                Image.fromarray(arr).save(p)
    tiny_vae.save_pretrained(tmp_path / "tok")

    def fake_measure(root_, vae, cache, image_size, crop, features=None, only=None, **kw):
        paths = sorted(f.relative_to(root_).as_posix() for f in only)
        flat = np.array([p.startswith("flat/") for p in paths])
        psnr = np.where(flat[:, None], [[30.0, 29.9, 29.8]], [[30.0, 26.0, 22.0]])  # flat: 32x is fine; noise: needs 8x
        n = len(paths)
        return ReconTable(paths, [p.split("/")[0] for p in paths], (8, 16, 32), image_size, psnr, psnr / 40, psnr,
                          np.full((n, 3), np.nan), np.full(n, np.nan), np.ones(n))

    monkeypatch.setattr(distill_mod, "measure_folder", fake_measure)  # where distill looks it up
    out = tmp_path / "student"
    args = ["distill", "--target", "oracle", "--data", str(root), "--ckpt", str(tmp_path / "tok"), "--out", str(out),
            "--image-size", "32", "--epochs", "60", "--groups", "folder", "--cnn", "none", "--device", "cpu"]
    assert tools.main(args) == 0
    report = json.loads((out / "distill.json").read_text())
    assert report["target"] == "oracle" and report["crop"] == "native" and report["split"].startswith("by source")
    assert report["held_out"] == 12  # one of five sources per kind, 6 images each
    assert report["ratio_agreement"] >= 0.9
    ev = ComplexityEvaluator.from_config(f"distilled:{out}")
    res = ev.score_images([root / "flat" / "a" / "0.png", root / "noise" / "a" / "0.png"])
    assert [r.ratio for r in res] == [32, 8]
