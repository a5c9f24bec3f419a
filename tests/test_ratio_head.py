"""The distilled ratio head (issue 6, first part): shapes, fitting, ratio="auto" routing, save/load, the CLI."""

import json

import pytest
import torch
from test_datamodule_assign import FAST_EVAL, mixed_folder

from cat_tasks.distill.ratio_head import RatioHeadModule, _HeadOnStatistics
from cat_tokenizer import NestedVAE
from cat_tokenizer.cli import tools
from cat_tokenizer.complexity import ComplexityEvaluator
from cat_tokenizer.errors import UserInputError
from cat_tokenizer.models.ratio_head import PIXEL_STATS, RatioHead, pixel_statistics, stage_statistics


def with_head(vae: NestedVAE, conv: int = 0) -> NestedVAE:
    return vae.attach_ratio_head(RatioHead(vae.config["block_out_channels"][: vae.trunk_level() + 1], hidden=8, conv=conv))


@pytest.mark.parametrize("conv", [0, 4])
def test_head_shapes_and_thresholds(tiny_vae, conv):
    vae = with_head(tiny_vae, conv)
    x = torch.rand(3, 3, 40, 56) * 2 - 1
    taps = vae.trunk(x)
    assert [t.shape[1:] for t in taps] == [(8, 40, 56), (16, 20, 28), (16, 10, 14), (32, 5, 7)]  # tiny preset, 8x last
    assert stage_statistics(taps).shape == (3, 4 * (8 + 16 + 16 + 32))
    assert vae.predict_scores(x).shape == (3,)
    assert vae.ratio_head.ratios_for(torch.tensor([1.0, 4.0, 6.9, 7.0, 9.0])) == [32, 16, 16, 8, 8]
    with pytest.raises(UserInputError, match="no ratio head"):
        NestedVAE.from_preset("tiny").predict_scores(x)
    with pytest.raises(UserInputError, match="stage channels"):
        NestedVAE.from_preset("tiny").attach_ratio_head(RatioHead([8, 16, 16, 7]))


def test_head_reads_images_at_its_own_size(tiny_vae, tmp_path, capsys):
    from PIL import Image
    from torchvision.transforms.v2 import functional as TF

    vae = tiny_vae.attach_ratio_head(RatioHead([8, 16, 16, 32], hidden=8, image_size=32)).eval()
    torch.nn.init.normal_(vae.ratio_head.out.weight)
    x = torch.rand(2, 3, 64, 96) * 2 - 1
    small = TF.center_crop(TF.resize(x, 32, antialias=True), [32, 32])
    with torch.no_grad():
        assert torch.allclose(vae.predict_scores(x), vae.ratio_head(vae.trunk(small)))  # scored on the resized view
        assert not torch.allclose(vae.ratio_head(vae.trunk(x)), vae.predict_scores(x))  # the full-size trunk differs
        want = vae.ratio_head.ratios_for(vae.predict_scores(x))
        assert [p.ratio for p in vae.encode(x, "auto")] == want
    # The encode CLI: --ratio auto writes each latent at the head's ratio.
    vae.save_pretrained(tmp_path / "v")
    Image.fromarray((torch.rand(40, 40, 3) * 255).byte().numpy()).save(tmp_path / "a.png")
    assert tools.main(["encode", str(tmp_path / "a.png"), "--ratio", "auto", "--ckpt", str(tmp_path / "v"),
                       "--out", str(tmp_path / "z"), "--device", "cpu"]) == 0
    from cat_tokenizer.io import load_latent

    lat = load_latent(tmp_path / "z" / "a.safetensors")
    with torch.no_grad():
        img = TF.to_dtype(TF.to_image(Image.open(tmp_path / "a.png")), torch.float32, scale=True)[None] * 2 - 1
        assert lat.ratio == vae.ratio_head.ratios_for(vae.predict_scores(img))[0]
    assert lat.latent.shape[-1] == 64 // lat.ratio  # "auto" pads to a multiple of the largest ratio (40 -> 64)
    assert (lat.height, lat.width) == (40, 40)  # ... and the latent remembers the size to crop back to


def test_stage_statistics_values():
    h = torch.tensor([[[[0.0, 2.0], [4.0, 6.0]]]])  # (1, 1, 2, 2)
    mean, std, top, grad = stage_statistics([h])[0].tolist()
    assert (mean, top) == (3.0, 6.0) and abs(std - torch.tensor([0.0, 2.0, 4.0, 6.0]).std().item()) < 1e-6
    assert grad == 2.0 + 4.0  # mean |horizontal| + mean |vertical| neighbour difference


def test_row_stride_reads_every_kth_row_and_stages_select():
    h = torch.randn(2, 3, 9, 7)
    rows, top, below = h[..., ::4, :], h[..., 0:8:4, :], h[..., 1:9:4, :]  # rows 0, 4, 8; pairs (0, 1), (4, 5)
    grad = (rows[..., 1:] - rows[..., :-1]).abs().mean((-2, -1)) + (below - top).abs().mean((-2, -1))
    want = torch.cat([rows.mean((-2, -1)), rows.std((-2, -1)), rows.amax((-2, -1)), grad], 1)
    assert torch.allclose(stage_statistics([h], [4]), want, atol=1e-6)
    assert torch.allclose(stage_statistics([h], [1]), stage_statistics([h]))
    taps = [torch.randn(2, c, 32 >> i, 32 >> i) for i, c in enumerate([8, 16, 16, 32])]
    head = RatioHead([8, 16, 16, 32], hidden=8)
    assert head.config["row_stride"] == [8, 4, 2, 1]  # default: each stage sampled on as many rows as the 8x map has
    assert torch.equal(head.statistics(taps), stage_statistics(taps, [8, 4, 2, 1]))
    late = RatioHead([8, 16, 16, 32], hidden=8, stages=[3, 2])
    assert late.config["stages"] == [2, 3] and late(taps).shape == (2,)
    assert torch.equal(late.statistics(taps), stage_statistics(taps[2:], [2, 1]))
    with pytest.raises(UserInputError, match="stages must be among 0..3"):
        RatioHead([8, 16, 16, 32], stages=[4])
    with pytest.raises(UserInputError, match="one stride >= 1 per trunk stage"):
        RatioHead([8, 16, 16, 32], row_stride=[2, 1])


def test_head_saved_before_row_sampling_reads_every_row(tiny_vae, tmp_path):
    vae = tiny_vae.attach_ratio_head(RatioHead([8, 16, 16, 32], hidden=8, row_stride=[1, 1, 1, 1]))
    vae.save_pretrained(tmp_path / "v")
    cfg = json.loads((tmp_path / "v" / "config.json").read_text())
    del cfg["ratio_head"]["row_stride"], cfg["ratio_head"]["stages"]  # as the previous version wrote it
    (tmp_path / "v" / "config.json").write_text(json.dumps(cfg))
    assert NestedVAE.from_pretrained(tmp_path / "v").ratio_head.config["row_stride"] == [1, 1, 1, 1]


def test_head_fits_a_separable_labelling(tiny_vae):
    import lightning as L
    from torch.utils.data import DataLoader, TensorDataset

    torch.manual_seed(0)
    vae = with_head(tiny_vae)
    left = torch.full((16, 3, 32, 32), -0.8)
    left[..., :16] = 0.8
    right = left.flip(-1)
    x = torch.cat([left, right]) + 0.1 * torch.randn(32, 3, 32, 32)
    target = torch.tensor([2.0] * 16 + [8.0] * 16)  # 32x vs 8x
    with torch.no_grad():
        stats = vae.ratio_head.statistics(vae.trunk(x))
    module = RatioHeadModule(_HeadOnStatistics(vae.ratio_head), lr=3e-2)
    L.Trainer(max_epochs=30, accelerator="cpu", logger=False, enable_checkpointing=False, enable_progress_bar=False,
              enable_model_summary=False).fit(module, DataLoader(TensorDataset(stats, target), batch_size=8, shuffle=True))
    vae.ratio_head.eval()
    with torch.no_grad():
        ratios = vae.ratio_head.ratios_for(vae.predict_scores(x))
    assert ratios == [32] * 16 + [8] * 16


@pytest.mark.parametrize("loss,want", [("l1", 8.0), ("mse", 0.6 * 8.0 + 0.4 * 2.0)])
def test_l1_fits_the_median_of_a_bimodal_teacher(loss, want):
    """Inputs the student cannot tell apart, teacher 8 for 60% and 2 for 40%: L1 lands on the mode
    the majority gets (8x), MSE between the modes (5.6: the 16x bin, which neither group has)."""
    from cat_tasks.distill.ratio_head import fit_regressor

    torch.manual_seed(0)
    x, y = torch.ones(50, 1), torch.tensor([8.0] * 30 + [2.0] * 20)
    net = torch.nn.Linear(1, 1)
    fit_regressor(net, net, [x], y, epochs=40, batch_size=50, lr=0.5, dev=torch.device("cpu"), loss=loss)
    with torch.no_grad():
        assert net(x[:1]).item() == pytest.approx(want, abs=0.3)
    with pytest.raises(UserInputError, match="unknown distillation loss"):
        RatioHeadModule(net, loss="l2")


def test_auto_routes_each_image_to_its_exit(tiny_vae):
    vae = with_head(tiny_vae).eval()
    x = torch.rand(4, 3, 64, 64) * 2 - 1
    with torch.no_grad():
        vae.ratio_head.out.weight.zero_()
        vae.ratio_head.out.bias.fill_(5.0)
        scores = torch.tensor([8.0, 2.0, 5.0, 9.0])
        vae.ratio_head.forward = lambda taps, x=None: scores[: taps[0].shape[0]]  # a head that disagrees per image
        posts = vae.encode(x, "auto")
        assert [p.ratio for p in posts] == [8, 32, 16, 8]
        for i, p in enumerate(posts):
            ref = vae.encode(x[i : i + 1], p.ratio).mode()
            assert p.mode().shape == ref.shape and torch.allclose(p.mode(), ref, atol=1e-5)
            assert vae.decode(p.mode(), p.ratio, size=p.input_size).shape == (1, 3, 64, 64)


@pytest.mark.parametrize("conv", [0, 4])
def test_saved_and_loaded_head_predicts_identically(tiny_vae, tmp_path, conv):
    vae = with_head(tiny_vae, conv).eval()
    torch.nn.init.normal_(vae.ratio_head.out.weight)
    x = torch.rand(2, 3, 32, 32) * 2 - 1
    vae.save_pretrained(tmp_path / "v")
    assert json.loads((tmp_path / "v" / "config.json").read_text())["ratio_head"]["hidden"] == 8
    again = NestedVAE.from_pretrained(tmp_path / "v")
    with torch.no_grad():
        assert torch.equal(again.predict_scores(x), vae.predict_scores(x))
        assert len(set(vae.predict_scores(x).tolist())) == 2  # the images get different scores


def test_pixel_statistics_follow_detail_and_flatness():
    torch.manual_seed(0)
    flat = torch.full((1, 3, 64, 48), 0.3)
    smooth = torch.linspace(-1, 1, 48).expand(1, 3, 64, 48).clone()  # a ramp: detail only at the finest scales
    noisy = (flat + 0.3 * torch.randn(1, 3, 64, 48)).clamp(-1, 1)
    f = pixel_statistics(torch.cat([flat, smooth, noisy]))
    assert f.shape == (3, PIXEL_STATS) and torch.isfinite(f).all()
    energy_2x = f[:, 3]  # log10 energy below the 2-px grid, all channels
    assert energy_2x[0] == pytest.approx(-6, abs=0.01) and energy_2x[0] < energy_2x[1] < energy_2x[2]
    flat_share, edge_share = f[:, 21], f[:, 22]
    assert flat_share.tolist()[0] == 1.0 and flat_share[2] < 0.1 and edge_share[0] == 0 and edge_share[2] > 0.1
    assert torch.allclose(f[:, -3:], torch.cat([flat, smooth, noisy]).mean((-2, -1)))  # channel means last


def test_a_standardised_pixel_reading_head_saves_its_statistics_and_needs_the_images(tiny_vae, tmp_path):
    vae = tiny_vae.attach_ratio_head(RatioHead([8, 16, 16, 32], hidden=8, predicts="psnr", pixel_stats=True, norm="standard")).eval()
    head = vae.ratio_head
    x = torch.rand(6, 3, 32, 32) * 2 - 1
    with torch.no_grad():
        taps = vae.trunk(x)
        stats = head.statistics(taps, x)
        assert stats.shape == (6, 4 * (8 + 16 + 16 + 32) + PIXEL_STATS)
        head.fit_standardization(stats)
        z = head.standardize(stats)
        assert z.mean(0).abs().max() < 1e-4 and ((z.std(0) - 1).abs() < 1e-3).logical_or(stats.std(0) < 1e-6).all()
        torch.nn.init.normal_(head.out.weight)
        vae.save_pretrained(tmp_path / "v")
        again = NestedVAE.from_pretrained(tmp_path / "v").eval()
        assert again.ratio_head.config["norm"] == "standard" and torch.equal(again.ratio_head.standardize.std, head.standardize.std)
        assert torch.equal(again.predict_scores(x), vae.predict_scores(x))
        with pytest.raises(UserInputError, match="call it with the images"):
            head(taps)
    with pytest.raises(UserInputError, match="norm must be one of"):
        RatioHead([8, 16, 16, 32], norm="batch")


def test_head_saved_before_norm_existed_keeps_its_layer_norm(tiny_vae, tmp_path):
    vae = with_head(tiny_vae).eval()
    x = torch.rand(2, 3, 32, 32) * 2 - 1
    vae.save_pretrained(tmp_path / "v")
    cfg = json.loads((tmp_path / "v" / "config.json").read_text())
    del cfg["ratio_head"]["norm"], cfg["ratio_head"]["pixel_stats"]  # as the previous version wrote it
    (tmp_path / "v" / "config.json").write_text(json.dumps(cfg))
    again = NestedVAE.from_pretrained(tmp_path / "v")
    assert isinstance(again.ratio_head.mlp[0], torch.nn.LayerNorm) and again.ratio_head.standardize is None
    with torch.no_grad():
        assert torch.equal(again.predict_scores(x), vae.predict_scores(x))


def test_head_saved_by_the_earlier_version_is_refused_clearly(tiny_vae, tmp_path):
    tiny_vae.save_pretrained(tmp_path / "v")
    cfg = json.loads((tmp_path / "v" / "config.json").read_text())
    cfg["ratio_head"] = {"in_channels": 32, "hidden": 8, "thresholds": [4.0, 7.0], "ratios": [8, 16, 32], "image_size": 32}
    (tmp_path / "v" / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(UserInputError, match="earlier version"):
        NestedVAE.from_pretrained(tmp_path / "v")


def test_grouped_split_holds_out_whole_sources(tmp_path):
    from cat_tasks.distill.ratio_head import _grouped_split, _read_groups

    root = tmp_path / "d"
    groups = {f"p/{g}{i}.png": g for g in [f"photo-{k}" for k in range(10)] + [f"doc-{k}" for k in range(5)] for i in range(3)}
    files = [root / k for k in groups] + [root / f"flat/{i}.png" for i in range(10)]  # the last ten have no group
    val = _grouped_split(files, root, 0.2, groups)
    held = {groups.get(f.relative_to(root).as_posix()) for f in val}
    trained = {groups.get(f.relative_to(root).as_posix()) for f in files if f not in val}
    assert held - {None} and not (held & trained) - {None}  # no source on both sides
    assert sum(g.startswith("photo") for g in held - {None}) == 2 and sum(g.startswith("doc") for g in held - {None}) == 1
    assert sum(f.parent.name == "flat" for f in val) == 2  # files without a group: split one by one
    assert _read_groups(root, "auto") == (None, "random") and _read_groups(root, "none") == (None, "random")
    with pytest.raises(UserInputError, match="groups file not found"):
        _read_groups(root, str(tmp_path / "nope.csv"))
    (tmp_path / "bad.csv").write_text("file;group\na.png;x\n")
    with pytest.raises(UserInputError, match="header 'path,<group>'"):
        _read_groups(root, str(tmp_path / "bad.csv"))


@pytest.mark.slow
def test_distill_cli_and_distilled_evaluator(tmp_path, tiny_vae, capsys):
    root = mixed_folder(tmp_path / "imgs", n=12)
    tiny_vae.save_pretrained(tmp_path / "vae")
    (tmp_path / "teacher.yaml").write_text(json.dumps(FAST_EVAL))
    out = tmp_path / "student"
    assert tools.main(["distill", "--data", str(root), "--ckpt", str(tmp_path / "vae"), "--out", str(out),
                       "--teacher", str(tmp_path / "teacher.yaml"), "--image-size", "32", "--epochs", "200", "--device", "cpu",
                       "--max-images", "11", "--stages", "1,2,3"]) == 0
    metrics = json.loads((out / "distill.json").read_text())
    assert metrics["split"] == "random"  # no sources.csv in this folder
    assert metrics["images"] == 11 and metrics["train"] + metrics["held_out"] == 11  # a sample of the 12
    assert json.loads((out / "config.json").read_text())["ratio_head"]["stages"] == [1, 2, 3]
    confusion = metrics["confusion_rows_teacher_cols_student"]
    assert metrics["held_out"] >= 2 and sum(map(sum, confusion)) == metrics["held_out"]
    assert metrics["ratio_agreement"] == pytest.approx(sum(confusion[i][i] for i in range(3)) / metrics["held_out"], abs=1e-4)
    assert metrics["ratio_agreement"] >= 0.66  # flat vs noise: separable, and the head separates them
    assert metrics["student_images_per_s"] > 0 and metrics["head_share_of_8x_encode"] < 1.0
    # The standalone timm CNN student, trained on the same labels, is reported beside the head.
    cnn_conf = metrics["cnn_confusion"]
    assert metrics["cnn"] == "resnet10t" and sum(map(sum, cnn_conf)) == metrics["held_out"]
    assert metrics["cnn_ratio_agreement"] == pytest.approx(sum(cnn_conf[i][i] for i in range(3)) / metrics["held_out"], abs=1e-4)
    assert metrics["cnn_gflops_per_image"] > 100 * metrics["head_gflops_per_image"]
    assert "ratio agreement on held-out images" in capsys.readouterr().out
    # The student plugs in wherever an evaluator does.
    ev = ComplexityEvaluator.from_config(f"distilled:{out}")
    assert ev.name == "distilled+self" and ev.mapper.thresholds == tuple(metrics["thresholds"])
    typed = {"class_path": "cat_tokenizer.complexity.ComplexityEvaluator",  # the same evaluator as a typed config
             "init_args": {"describer": {"class_path": "cat_tokenizer.complexity.distilled.DistilledDescriber", "init_args": {"path": str(out)}}}}
    assert ComplexityEvaluator.from_config(typed).evaluator_hash == ev.evaluator_hash
    res = ev.score_images(sorted(root.rglob("*.png")), cache=tmp_path / "s.sqlite")
    assert all(r.ratio in (8, 16, 32) and r.description.startswith("distilled score") for r in res)
    assert tools.main(["score", str(root), "--evaluator", f"distilled:{out}", "-q", "--cache", str(tmp_path / "s.sqlite")]) == 0
    # auto:D: the head only where its recorded held-out agreement makes it the default, else its teacher.
    assert sum(n for _, n in metrics["agreement_by_folder"].values()) == metrics["held_out"]
    assert metrics["replaces_teacher_by_default"] is False  # a handful of held-out images never qualifies
    report = json.loads((out / "config.json").read_text())["ratio_head"]["report"]
    assert report["held_out"] == metrics["held_out"] and report["agreement"] == metrics["ratio_agreement"]
    fallback = ComplexityEvaluator.from_config(f"auto:{out}")
    assert fallback.name == "probe+rubric" and fallback.evaluator_hash == ComplexityEvaluator.from_config(str(tmp_path / "teacher.yaml")).evaluator_hash
    cfg = json.loads((out / "config.json").read_text())
    cfg["ratio_head"]["report"].update(agreement=0.93, held_out=500)
    (out / "config.json").write_text(json.dumps(cfg))
    assert ComplexityEvaluator.from_config(f"auto:{out}").name == "distilled+self"
    with pytest.raises(UserInputError, match="no ratio head"):
        ComplexityEvaluator.from_config(f"auto:{tmp_path / 'vae'}")
    assert tools.main(["distill", "--data", str(root), "--ckpt", str(tmp_path / "vae"), "--out", str(out),
                       "--row-stride", "8,x"]) == 2
    assert "--row-stride takes comma-separated integers" in capsys.readouterr().err


@pytest.mark.slow
def test_text_student_distils_and_plugs_in(tmp_path, capsys):
    from tiny_hf import tiny_bert

    from cat_tokenizer.complexity import text_description
    from cat_tokenizer.complexity.text_student import TextStudentScorer

    encoder = tiny_bert(tmp_path / "bert")
    prompts = [f"a page of dense text number {i}" for i in range(10)] + [f"a plain flat sky number {i}" for i in range(10)]
    (tmp_path / "prompts.txt").write_text("\n".join(prompts))
    out = tmp_path / "student"
    assert tools.main(["distill-text", "--prompts", str(tmp_path / "prompts.txt"), "--encoder", str(encoder),
                       "--out", str(out), "--epochs", "50", "--device", "cpu"]) == 0
    metrics = json.loads((out / "distill_text.json").read_text())
    assert metrics["held_out"] >= 2 and sum(map(sum, metrics["confusion"])) == metrics["held_out"]
    assert "prompts/s" in capsys.readouterr().out
    held = metrics["held_out_predictions"]  # the in-memory student's scores before saving
    loaded = TextStudentScorer(str(out), device="cpu").score([text_description(p) for p in held])
    assert loaded == pytest.approx(list(held.values()), abs=1e-5)  # saved and loaded: the same predictions
    assert tools.main(["score", "--text", "a chart", "--text", "a wall", "--evaluator", f"distilled-text:{out}"]) == 0
    assert "evaluator probe+text-student" in capsys.readouterr().out
    with pytest.raises(UserInputError, match="not a text student folder"):
        TextStudentScorer(str(tmp_path))
