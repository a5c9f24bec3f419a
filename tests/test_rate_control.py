"""Rate control (the fewest tokens that meet a target) and rFID with a bootstrap interval, on
synthetic distortion tables whose answers are known."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch
from test_rd import _table

from cat_tasks.reconstruction.heads import HeadPrediction
from cat_tasks.reconstruction.rate_control import (
    Target,
    capture_markdown,
    cautious_claims,
    expected_frontier,
    head_capture,
    oracle_frontier,
    rate_curves,
    rate_headline,
    tokens_at_share,
)
from cat_tasks.reconstruction.rd import rd_curves
from cat_tokenizer.metrics.fid import bootstrap_fid, frechet_distance


def test_the_oracle_frontier_is_the_most_images_meeting_at_each_spend():
    t = _table(8, seed=5)
    met = Target("psnr", 24.0).met(t)
    costs = t.tokens(np.arange(3))
    frontier = oracle_frontier(met, costs)
    for tokens, share, idx in frontier:
        assert costs[idx].mean() == pytest.approx(tokens)
        # brute force: no allocation within this spend meets the target on more images
        best = max(met[np.arange(8), list(c)].mean() for c in itertools.product(range(3), repeat=8) if costs[list(c)].mean() <= tokens + 1e-9)
        assert share == pytest.approx(best)
    assert [s for _, s, _ in frontier] == sorted(s for _, s, _ in frontier)  # each purchase adds an image


def test_a_fixed_ratio_is_never_cheaper_than_the_oracle_at_equal_share():
    t = _table(60, seed=2)
    _, allocs = rd_curves(t, {})
    for target in (Target("psnr", 20.0), Target("psnr", 26.0), Target("ssim", 0.6)):
        rows = rate_curves(t, target, allocs)
        oracle = [(r["mean_tokens"], r["share"]) for r in rows if r["method"] == "oracle"]
        for fixed in (r for r in rows if r["method"].startswith("fixed ")):
            assert tokens_at_share(oracle, fixed["share"]) <= fixed["mean_tokens"] + 1e-9
        heads = rate_headline(rows, t.ratios)
        assert all(h["saving"] >= -1e-9 for h in heads if h["method"] == "oracle")


def test_a_perfect_predictor_matches_the_oracle_and_a_wrong_one_does_not():
    t = _table(80, seed=1)
    _, allocs = rd_curves(t, {})
    target = Target("psnr", 24.0)
    noisy = t.psnr + np.random.default_rng(0).normal(0, 4, t.psnr.shape)
    rows = rate_curves(t, target, allocs, predicted={"perfect": t.psnr, "noisy": noisy, "inverted": t.psnr[:, ::-1]})
    heads = {(h["ref"], h["method"]): h for h in rate_headline(rows, t.ratios)}
    for ref in ("fixed 16x", "fixed 8x"):
        assert heads[(ref, "perfect")]["tokens"] == pytest.approx(heads[(ref, "oracle")]["tokens"], rel=0.05)
        assert heads[(ref, "perfect")]["oracle_capture"] >= 0.95
        noisy = heads[(ref, "noisy")]["oracle_capture"]
        assert np.isnan(noisy) or noisy < heads[(ref, "perfect")]["oracle_capture"]  # NaN: never reaches that share
        assert not heads[(ref, "inverted")]["oracle_capture"] > 0.5


def test_head_capture_is_rd_s_rate_control_for_one_head():
    t = _table(80, seed=1)
    targets = [Target("psnr", 24.0), Target("ssim", 0.7)]
    noisy = t.psnr + np.random.default_rng(0).normal(0, 4, t.psnr.shape)
    perfect = head_capture(t, HeadPrediction(t.psnr), targets)
    assert {h["target"] for h in perfect} == {"PSNR 24 dB"}  # no SSIM predictions: no SSIM rows
    assert {h["method"] for h in perfect} == {"distortion head"} and all(h["oracle_capture"] >= 0.95 for h in perfect)
    sure = head_capture(t, HeadPrediction(t.psnr, np.full(t.psnr.shape, np.log(1e-3))), targets[:1])  # an error model: both rules
    assert {h["method"] for h in sure} == {"distortion head", "distortion head (margin rule)"}
    _, allocs = rd_curves(t, {})  # the same numbers as rd's own rate control for the same predictions
    rows = rate_curves(t, targets[0], allocs, predicted={"distortion head": noisy})
    want = [(h["ref"], h["tokens"]) for h in rate_headline(rows, t.ratios) if h["method"] == "distortion head"]
    got = [(h["ref"], h["tokens"]) for h in head_capture(t, HeadPrediction(noisy), targets)]
    np.testing.assert_equal(got, want)  # NaN where the head never reaches the reference's share, in both
    assert "| PSNR 24 dB | fixed 16x |" in "\n".join(capture_markdown(perfect, "dev"))


def test_the_expected_frontier_buys_expected_images_in_order_of_chance_per_token():
    costs = np.array([256, 64, 16])
    chance = np.array([[0.9, 0.9, 0.1],   # 16x is as good as 8x: 8x is never bought
                       [0.95, 0.1, 0.0],  # 16x off the hull: 8x's step from 32x buys more per token than via 16x
                       [0.0, 0.0, 0.0]])  # hopeless: stays at the fewest tokens
    allocs = expected_frontier(chance, costs)
    assert allocs[0].tolist() == [2, 2, 2]
    assert allocs[-1].tolist() == [1, 0, 2]
    expected = [chance[np.arange(3), a].sum() for a in allocs]
    spent = [costs[a].sum() for a in allocs]
    assert spent == sorted(spent) and expected == sorted(expected)
    # brute force: at each spend the frontier holds the most expected images (exact at its purchase points here)
    for a, e, c in zip(allocs, expected, spent):
        best = max(chance[np.arange(3), list(k)].sum() for k in itertools.product(range(3), repeat=3) if costs[list(k)].sum() <= c)
        assert e == pytest.approx(best)


def test_an_error_model_that_knows_which_predictions_to_trust_beats_one_margin_for_all():
    """Half the images are predicted exactly, half with large errors: the expected-share rule, told which
    is which by per-image scales, reaches fixed 8x's share for fewer tokens than any single margin."""
    rng = np.random.default_rng(7)
    t = _table(300, seed=6)
    _, allocs = rd_curves(t, {})
    target = Target("psnr", 24.0)
    noisy = rng.random(len(t)) < 0.5
    scale = np.where(noisy[:, None], 2.0, 0.05) * np.ones_like(t.psnr)
    pred = t.psnr + rng.laplace(0, 1, t.psnr.shape) * scale
    rows = rate_curves(t, target, allocs, predicted={"head": pred}, spreads={"head": np.log(scale)}, rule="both")
    heads = {(h["ref"], h["method"]): h for h in rate_headline(rows, t.ratios)}
    for ref in ("fixed 16x", "fixed 8x"):
        expected, margin = heads[(ref, "head")]["tokens"], heads[(ref, "head (margin rule)")]["tokens"]
        assert expected < margin or np.isnan(margin), (ref, expected, margin)
    only = {r["method"] for r in rate_curves(t, target, allocs, {"head": pred}, {"head": np.log(scale)}, rule="expected")}
    assert "head" in only and "head (margin rule)" not in only


def test_cautious_claims_give_up_only_on_a_confident_prediction():
    costs = np.array([256, 64, 16])
    pred = np.array([[30, 27, 20], [30, 20, 19], [21, 20, 19], [24.5, 20, 19]])
    t = Target("psnr", 25.0)
    assert cautious_claims(pred, t, 1.0, costs).tolist() == [[True, True, False], [True, False, False],
                                                             [False, False, False], [True, False, False]]  # 24.5: maybe at 8x
    assert cautious_claims(pred, t, 0.0, costs)[3].tolist() == [False, False, False]  # no margin: given up
    ssim = Target("ssim", 0.9)  # SSIMs are predicted (and margins taken) as -10 log10(1 - SSIM): 0.9 is 10
    assert ssim.head_value == pytest.approx(10.0)
    assert cautious_claims(np.array([[11.5, 10.5, 9.0]]), ssim, 1.0, costs).tolist() == [[True, False, False]]


def test_a_slightly_wrong_predictor_reaches_fixed_8x_share_with_far_fewer_tokens():
    """Fixed 8x's share counts every image that can meet the target: a head that gives up on an image it
    merely predicts just short of the target never gets there; the cautious margin does, cheaply."""
    rng = np.random.default_rng(3)
    t = _table(200, seed=4)
    _, allocs = rd_curves(t, {})
    target = Target("psnr", 24.0)
    near = t.psnr + rng.uniform(-0.4, 0.4, t.psnr.shape)
    heads = {(h["ref"], h["method"]): h for h in rate_headline(rate_curves(t, target, allocs, predicted={"head": near}), t.ratios)}
    head, oracle = heads[("fixed 8x", "head")], heads[("fixed 8x", "oracle")]
    assert oracle["saving"] > 0.3 and head["oracle_capture"] >= 0.7, (head, oracle)


def test_tokens_at_share_interpolates_and_says_when_a_curve_never_gets_there():
    pts = [(16, 0.2), (64, 0.6), (256, 0.9)]
    assert tokens_at_share(pts, 0.6) == 64
    assert tokens_at_share(pts, 0.4) == pytest.approx(40)
    assert np.isnan(tokens_at_share(pts, 0.95))


def test_frechet_distance_equals_torchmetrics_and_the_interval_holds_the_full_sample_value():
    from torch import nn
    from torchmetrics.image.fid import FrechetInceptionDistance

    class Passthrough(nn.Module):
        num_features = 64

        def forward(self, x):
            return x

    rng = np.random.default_rng(0)
    real = rng.normal(size=(120, 64))
    fake = real * 0.8 + rng.normal(size=(120, 64)) * 0.6 + 0.2
    fid = FrechetInceptionDistance(feature=Passthrough(), normalize=False)
    fid.update(torch.from_numpy(real).float(), real=True)
    fid.update(torch.from_numpy(fake).float(), real=False)
    point = frechet_distance(real, fake)
    assert point == pytest.approx(float(fid.compute()), rel=1e-3)
    lo, hi = bootstrap_fid(real, fake, boots=200)
    assert lo <= point <= hi and hi - lo > 0
    better = real * 0.95 + rng.normal(size=(120, 64)) * 0.2
    lo_d, hi_d = bootstrap_fid(real, better, boots=200, paired_with=fake)
    assert hi_d < 0  # clearly closer to the originals, on the same resamples


def test_bootstrap_fids_from_gram_matrices_equal_the_distance_of_each_resample():
    """The Gram-matrix shortcut must give, resample for resample, the FID of the resampled rows."""
    from cat_tokenizer.metrics.fid import bootstrap_fids

    rng = np.random.default_rng(1)
    real = rng.normal(size=(40, 300))  # fewer images than features, as with Inception's 2048
    fakes = [real + rng.normal(size=real.shape) * s for s in (0.3, 0.9)]
    vals = bootstrap_fids(real, fakes, boots=5, seed=7)
    draws = np.random.default_rng(7)
    for b in range(5):
        i = draws.integers(0, len(real), len(real))
        for k, f in enumerate(fakes):
            assert vals[k, b] == pytest.approx(frechet_distance(real[i], f[i]), rel=1e-6, abs=1e-6)
    assert (vals[1] > vals[0]).all()  # the noisier copy is further on every resample
