"""The distortion head: PSNR per ratio from the tokenizer's trunk, an allocator for `encode --target-psnr`."""

from __future__ import annotations

import json
import zlib

import numpy as np
import pytest
from conftest import one_line_error
from PIL import Image

from cat_tasks.reconstruction.table import ReconTable
from cat_tokenizer.cli import tools
from cat_tokenizer.io import load_latent


def _noise_folder(root, rng) -> dict[str, float]:
    """Two kinds x five sources x six images; each image's noise amplitude (the planted feature)."""
    amp = {}
    for kind in ("calm", "busy"):
        for src in "abcde":
            for i in range(6):
                a = float(rng.uniform(0, 0.4) if kind == "calm" else rng.uniform(0.5, 1.0))
                base = np.full((40, 40, 3), rng.integers(60, 200, 3), np.float64)
                arr = np.clip(base + a * rng.normal(0, 90, (40, 40, 3)), 0, 255).astype(np.uint8)
                p = root / kind / src / f"{i}.png"
                p.parent.mkdir(parents=True, exist_ok=True)
                Image.fromarray(arr).save(p)
                amp[p.relative_to(root).as_posix()] = a
    return amp


def _planted_measure(amp: dict[str, float]):
    """A stand-in for measure_folder: each image's PSNRs follow its planted noise amplitude."""

    def fake_measure(root_, vae, cache, image_size, crop, features=None, only=None, ocr=True, **kw):
        paths = sorted(f.relative_to(root_).as_posix() for f in (only or root_.rglob("*.png")))
        a = np.array([amp[p] for p in paths])
        psnr = 36.0 - a[:, None] * np.array([[2.0, 8.0, 14.0]])  # noise costs more the coarser the ratio
        busy = np.array([p.startswith("busy/") for p in paths])
        luck = np.array([zlib.crc32(p.encode()) / 2**32 for p in paths])  # what no feature can tell: +-4 dB on busy images
        psnr = psnr + np.where(busy, 8.0 * (luck - 0.5), 0.0)[:, None]
        n = len(paths)
        return ReconTable(paths, [p.split("/")[0] for p in paths], (8, 16, 32), image_size, psnr, psnr / 40, psnr,
                          np.full((n, 3), np.nan), np.full(n, np.nan), np.ones(n))

    return fake_measure


def test_the_head_learns_psnr_from_a_planted_feature_and_encode_meets_a_target(tmp_path, tiny_vae, monkeypatch, capsys):
    import cat_tasks.distill.distortion as mod

    rng = np.random.default_rng(0)
    root = tmp_path / "data"
    amp = _noise_folder(root, rng)
    tiny_vae.save_pretrained(tmp_path / "tok")

    fake_measure = _planted_measure(amp)
    monkeypatch.setattr(mod, "measure_folder", fake_measure)
    out = tmp_path / "head"
    args = ["distortion-head", str(root), "--out", str(out), "--ckpt", str(tmp_path / "tok"), "--image-size", "32",
            "--epochs", "200", "--target-psnr", "30", "--device", "cpu"]
    assert tools.main(args) == 0
    report = json.loads((out / "distortion.json").read_text())
    assert report["split"].startswith("by source") and report["held_out"] == 12  # one source per kind
    assert json.loads((out / "config.json").read_text())["ratio_head"]["report"]["final"] == "all"  # saved: refit on every image
    held = next(r for r in report["held_out_mae"] if r["kind"] == "calm")  # busy images carry +-4 dB of luck
    spread = np.std([36.0 - a * 14.0 for a in amp.values()])  # what predicting the mean would cost at 32x, about
    assert held["mae_32x"] < 0.4 * spread, (held, spread)
    # encode --target-psnr: a calm image meets 30 dB at 32x (36 - 14 * 0.4 > 30), a very busy one only at 8x
    calm = min((p for p in amp if p.startswith("calm/")), key=amp.get)
    busy = max(amp, key=amp.get)
    for name, want in ((calm, 32), (busy, 8)):
        lat = tmp_path / "lat" / name.replace("/", "_")
        assert tools.main(["encode", str(root / name), "--ratio", "auto", "--target-psnr", "30", "--ckpt", str(out),
                           "--out", str(lat), "--device", "cpu"]) == 0
        assert load_latent(next(lat.rglob("*.safetensors"))).ratio == want, name
    # the error model: a Laplace scale per ratio, the out-of-fold MAE (5 folds of sources), larger than the head's own fit
    import torch

    from cat_tasks.reconstruction.heads import predict_distortion
    from cat_tokenizer.io import load_vae

    assert report["folds"] == 5 and len(report["out_of_fold_mae"]) == 3
    paths = sorted(amp)
    headed = load_vae(out)
    predicted = predict_distortion(headed, [root / p for p in paths], torch.device("cpu"))
    pred, log_scale = predicted.psnr, predicted.psnr_log_scale
    assert np.allclose(np.exp(log_scale), np.array(report["out_of_fold_mae"])[None], rtol=1e-3)
    table = fake_measure(root, None, None, 32, "native", only=[root / p for p in paths])
    measured = table.psnr
    assert (np.array(report["out_of_fold_mae"]) > np.abs(pred - measured).mean(0)).all()  # in-sample errors understate it
    # out_of_fold.csv holds what the scales were fitted on: every image once, its out-of-fold prediction
    import csv

    from cat_tokenizer.models.ratio_head import ssim_db, ssim_from_db

    oof = list(csv.DictReader(open(out / "out_of_fold.csv")))
    assert sorted(r["path"] for r in oof) == paths and {int(r["fold"]) for r in oof} == set(range(5))
    for j, r in enumerate((8, 16, 32)):
        mae = np.mean([abs(float(row[f"pred_psnr_{r}x"]) - float(row[f"psnr_{r}x"])) for row in oof])
        assert mae == pytest.approx(report["out_of_fold_mae"][j], abs=2e-3)
    # the SSIMs: predicted too (in ssim_db units, with their own scales), and learnt from the same planted feature
    assert predicted.ssim_db.shape == pred.shape and predicted.ssim_log_scale.shape == pred.shape
    assert np.allclose(np.exp(predicted.ssim_log_scale[0]), report["out_of_fold_ssim_db_mae"], rtol=1e-3)
    calm_rows = np.array([p.startswith("calm/") for p in paths])
    ssim_err = np.abs(ssim_from_db(predicted.ssim_db) - table.ssim)[calm_rows, 2].mean()
    assert ssim_err < 0.4 * table.ssim[:, 2].std(), ssim_err
    assert np.allclose(ssim_from_db(ssim_db(np.array([0.5, 0.9, 0.99]))), [0.5, 0.9, 0.99])
    is_busy = np.array([p.startswith("busy/") for p in paths])
    # --confidence: the surer the head must be, the more tokens; 0.5 is the rule without it
    j = int(np.argmax(np.where(is_busy, pred[:, 1] - pred[:, 2], -np.inf)))  # a busy image whose 16x is well above its 32x
    target = f"{pred[j, 1] - 0.5 * np.exp(log_scale[j, 1]):.3f}"  # 16x predicted to meet it, but not surely
    picked = []
    for conf in ("0.5", "0.99"):
        lat = tmp_path / f"conf{conf}"
        assert tools.main(["encode", str(root / paths[j]), "--ratio", "auto", "--target-psnr", target, "--confidence", conf,
                           "--ckpt", str(out), "--out", str(lat), "--device", "cpu"]) == 0
        picked.append(load_latent(next(lat.rglob("*.safetensors"))).ratio)
    assert picked == [16, 8], (picked, pred[j], np.exp(log_scale[j]))
    capsys.readouterr()
    assert tools.main(["encode", str(root / paths[j]), "--ratio", "auto", "--confidence", "0.9", "--ckpt", str(out),
                       "--out", str(tmp_path / "x")]) == 2
    one_line_error(capsys, "--confidence goes with --ratio auto and --target-psnr")
    # a fixed ratio, or a tokenizer without a distortion head: one line each
    assert tools.main(["encode", str(root / calm), "--ratio", "16", "--target-psnr", "30", "--ckpt", str(out),
                       "--out", str(tmp_path / "x")]) == 2
    one_line_error(capsys, "--target-psnr needs --ratio auto")
    assert tools.main(["encode", str(root / calm), "--ratio", "auto", "--target-psnr", "30", "--ckpt", str(tmp_path / "tok"),
                       "--out", str(tmp_path / "x")]) == 2
    one_line_error(capsys, "distortion head")
    with pytest.raises(Exception, match="distortion head"):
        from cat_tokenizer.complexity import ComplexityEvaluator

        ComplexityEvaluator.from_config(f"distilled:{out}").score_images([root / calm])


def test_rd_and_analyse_use_a_distortion_head_and_refuse_one_of_another_tokenizer(tmp_path, tiny_vae, capsys, monkeypatch):
    import csv

    import torch

    from cat_tasks.reconstruction.heads import trunk_inputs
    from cat_tokenizer import NestedVAE
    from cat_tokenizer.models.ratio_head import RatioHead

    rng = np.random.default_rng(1)
    root = tmp_path / "data"
    _noise_folder(root, rng)
    tok = tiny_vae.save_pretrained(tmp_path / "tok")
    headed = NestedVAE.from_pretrained(tok)
    head = RatioHead(headed.config["block_out_channels"][:4], 16, ratios=headed.ratios, image_size=32, crop="native", predicts="psnr",
                     spread=True, ssim=True)
    headed.attach_ratio_head(head).save_pretrained(tmp_path / "headed")
    x = trunk_inputs(headed, head, [next(root.rglob("*.png"))], 32, torch.device("cpu"), crop="native")
    # the statistics cache: the same numbers, read back without the trunk; another view is another entry
    import cat_tasks.reconstruction.heads as heads_mod

    files = sorted(root.rglob("*.png"))[:5]
    fresh = trunk_inputs(headed, head, files, 32, torch.device("cpu"), crop="native", cache=tmp_path / "tc")[0]
    with monkeypatch.context() as m:
        m.setattr(heads_mod, "_trunk_inputs", lambda *a, **k: (_ for _ in ()).throw(AssertionError("the trunk ran again")))
        assert torch.equal(trunk_inputs(headed, head, files, 32, torch.device("cpu"), crop="native", cache=tmp_path / "tc")[0], fresh)
    assert torch.allclose(fresh, trunk_inputs(headed, head, files, 32, torch.device("cpu"), crop="native")[0])
    trunk_inputs(headed, head, files, 32, torch.device("cpu"), crop="resize", cache=tmp_path / "tc")
    assert len(list((tmp_path / "tc").glob("*.safetensors"))) == 2
    assert head.score(*x).shape == (1, 6)  # one PSNR per ratio, then one SSIM (as ssim_db) per ratio
    out = tmp_path / "rd"
    args = ["rd", str(root), "--ckpt", str(tok), "--out", str(out), "--image-size", "32", "--features", "off", "-q",
            "--budgets", "1,4,10,16", "--distortion-head", str(tmp_path / "headed"), "--target-ssim", "0.5"]
    assert tools.main(args) == 0
    assert "distortion head" in {r["method"] for r in csv.DictReader(open(out / "rd.csv"))}
    rate = list(csv.DictReader(open(out / "rate_control.csv")))
    assert {r["method"] for r in rate if r["target"].startswith("PSNR")} >= {"distortion head", "distortion head (margin rule)", "oracle",
                                                                              "fixed 16x"}  # an error model: both rules by default
    knobs = {float(r["knob"]) for r in rate if r["method"] == "distortion head (margin rule)"}
    assert {-1.0, 0.0, 1.0} <= knobs  # its margins
    widen = {float(r["knob"]) for r in rate if r["method"] == "distortion head" and r["target"].startswith("PSNR")}
    assert {1.0, 2.0} <= widen  # the expected-share rule's widening of the error model's scales
    ssim_methods = {r["method"] for r in rate if r["target"].startswith("SSIM")}  # the head's SSIM outputs: its own curves
    assert {"distortion head", "distortion head (margin rule)"} <= ssim_methods
    report = (out / "rd.md").read_text()
    assert "## Rate control" in report and "distortion head's PSNR error" in report and "distortion head's SSIM error" in report
    # a head trained on another tokenizer's errors: one line
    torch.manual_seed(5)
    NestedVAE.from_preset("tiny").attach_ratio_head(RatioHead([8, 16, 16, 32], 16, predicts="psnr")).save_pretrained(tmp_path / "other")
    capsys.readouterr()
    assert tools.main([*args[:-4], "--distortion-head", str(tmp_path / "other")]) == 2
    one_line_error(capsys, "another tokenizer's errors")


def test_the_absolute_form_of_the_maximum_acceptable_ratio():
    from cat_tasks.reconstruction.analysis import max_acceptable_ratios

    mse = np.array([[0.001, 0.0015, 0.0030], [0.010, 0.0105, 0.0108]])  # a clean image and a noisy one
    psnr = -10 * np.log10(mse)
    n = len(mse)
    t = ReconTable(["a/0.png", "a/1.png"], ["a", "a"], (8, 16, 32), 128, psnr, psnr / 40, mse, np.full((n, 3), np.nan),
                   np.full(n, np.nan), np.ones(n))
    assert max_acceptable_ratios(t, tolerance_db=1.0).tolist() == [8, 32]  # relative: +50% MSE is 1.8 dB
    assert max_acceptable_ratios(t, mse_tolerance=0.001).tolist() == [16, 32]  # absolute: +0.0005 and +0.0008 pass


def test_folds_keep_each_source_whole_and_spread_one_source_families(tmp_path):
    from cat_tasks.distill.ratio_head import grouped_folds

    files, groups = [], {}
    for kind, sources in (("flat", 6), ("natural", 1), ("text", 1), ("charts", 2)):
        for s in range(sources):
            for i in range(3):
                rel = f"{kind}/{kind}-{s}/{i}.png"
                files.append(tmp_path / rel)
                groups[rel] = f"{kind}-{s}"
    fold = grouped_folds(files, tmp_path, 5, groups)
    by_source = {}
    for f, k in zip(files, fold):
        by_source.setdefault(groups[f.relative_to(tmp_path).as_posix()], set()).add(k)
    assert all(len(v) == 1 for v in by_source.values())  # no source in two folds
    assert set(fold) == set(range(5))  # 10 sources over 5 folds: none empty (one-source families do not pile into fold 0)
    assert by_source["natural-0"] != by_source["text-0"]
    random_folds = grouped_folds(files, tmp_path, 5, None)
    assert set(random_folds) <= set(range(5)) and len(set(random_folds)) > 1


def test_confidence_needs_an_error_model_and_a_probability():
    import torch

    from cat_tokenizer.errors import UserInputError
    from cat_tokenizer.models.ratio_head import RatioHead

    scores = torch.tensor([[30.0, 27.0, 20.0]])
    plain = RatioHead([8, 16], 8, predicts="psnr")
    with pytest.raises(UserInputError, match="error model"):
        plain.ratios_for(scores, 26.0, 0.9)
    modelled = RatioHead([8, 16], 8, predicts="psnr", spread=True)
    modelled.set_error_scale(torch.tensor([1.0, 1.0, 1.0]))
    assert modelled.ratios_for(scores, 26.0) == [16]  # predicted 27 >= 26
    assert modelled.ratios_for(scores, 26.0, 0.5) == [16]
    assert modelled.ratios_for(scores, 26.0, 0.9) == [8]  # P(27 + Laplace(1) >= 26) = 0.82 < 0.9 at 16x
    with pytest.raises(UserInputError, match="probability"):
        modelled.ratios_for(scores, 26.0, 1.5)


def test_an_ensemble_head_predicts_the_mean_of_its_members_and_survives_a_round_trip(tmp_path, tiny_vae, monkeypatch):
    import torch

    import cat_tasks.distill.distortion as mod
    from cat_tokenizer.io import load_vae
    from cat_tokenizer.models.ratio_head import RatioHead

    torch.manual_seed(0)
    heads = [RatioHead([8, 16], 8, predicts="psnr", norm="standard", spread=i == 0, ssim=True) for i in range(3)]
    for h in heads:
        h.fit_standardization(torch.randn(20, 96) * 3 + torch.randn(96))
        for p in h.parameters():
            torch.nn.init.normal_(p)
    stats = torch.randn(5, 96)
    avg = RatioHead.average(heads)
    assert avg.config["members"] == 3 and avg.has_error_model
    torch.testing.assert_close(avg.score(stats), torch.stack([h.score(stats) for h in heads]).mean(0))
    with pytest.raises(Exception, match="one config"):
        RatioHead.average([heads[0], RatioHead([8, 16], 4, predicts="psnr")])
    # through the command: the saved head is the final head and the five fold heads, and loads back as one
    rng = np.random.default_rng(2)
    root = tmp_path / "data"
    monkeypatch.setattr(mod, "measure_folder", _planted_measure(_noise_folder(root, rng)))
    tiny_vae.save_pretrained(tmp_path / "tok")
    base = ["distortion-head", str(root), "--ckpt", str(tmp_path / "tok"), "--image-size", "32", "--epochs", "40", "--device", "cpu"]
    assert tools.main([*base, "--out", str(tmp_path / "ens"), "--ensemble", "folds", "--dev", str(root)]) == 0
    saved = load_vae(tmp_path / "ens").ratio_head
    assert saved.config["members"] == 6 and len(saved.others) == 5
    assert json.loads((tmp_path / "ens" / "distortion.json").read_text())["ensemble"] == "folds"
    report = (tmp_path / "ens" / "distortion.md").read_text()
    assert "fold heads (--ensemble folds)" in report and ": rate control (tokens to meet a target" in report
    capture = json.loads((tmp_path / "ens" / "distortion.json").read_text())["dev_capture"]
    assert {h["ref"] for h in capture} == {"fixed 16x", "fixed 8x"} and any(h["target"].startswith("SSIM") for h in capture)
    metrics = json.loads((tmp_path / "ens" / "distortion.json").read_text())
    assert len(metrics["dev_member_mae"]) == len(metrics["dev_member_capture"]) == 6  # each member alone, beside the mean
    assert "the ensemble's 6 members alone" in report
    assert tools.main([*base, "--out", str(tmp_path / "one"), "--spread", "none"]) == 0  # no fold heads: the final head alone
    assert load_vae(tmp_path / "one").ratio_head.others is None


def test_the_heads_signal_and_ratios_follow_the_form_of_section_3_1():
    from cat_tasks.reconstruction.analysis import _r, head_signal, signal_table

    # a flat image (high PSNR, a large dB drop but a tiny MSE) and a photo (low PSNR, a small dB drop but a larger MSE)
    predicted = np.array([[45.0, 38.0, 33.0], [24.0, 23.5, 22.5]])
    drop, own = head_signal(predicted, (8, 16, 32), tolerance_db=1.0)
    assert drop.tolist() == [12.0, 1.5] and own.tolist() == [8, 16]
    rise, own = head_signal(predicted, (8, 16, 32), mse_tolerance=0.001)
    assert rise[0] < rise[1] and own.tolist() == [32, 16]  # 45 -> 33 dB is +0.0005 MSE; 24 -> 22.5 dB is +0.0016
    # a target of one ratio for every image has no correlation: the table says so instead of printing nan
    row = signal_table({"s": np.array([1.0, 2.0, 3.0])}, np.array([8, 8, 8]))[0]
    assert np.isnan(row["pearson"]) and _r(row["pearson"]) == "undefined" and _r(0.444) == "+0.44"
