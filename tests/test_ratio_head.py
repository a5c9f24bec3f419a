"""The distilled ratio head (issue 6, first part): shapes, fitting, ratio="auto" routing, save/load, the CLI."""

import json

import pytest
import torch

from cat_tokenizer import NestedVAE
from cat_tokenizer.cli import tools
from cat_tokenizer.cli.distill import RatioHeadModule
from cat_tokenizer.complexity import ComplexityEvaluator
from cat_tokenizer.errors import UserInputError
from cat_tokenizer.models.ratio_head import RatioHead
from test_datamodule_assign import FAST_EVAL, mixed_folder


def with_head(vae: NestedVAE) -> NestedVAE:
    return vae.attach_ratio_head(RatioHead(vae.config["block_out_channels"][vae.trunk_level()], hidden=8))


def test_head_shapes_and_thresholds(tiny_vae):
    vae = with_head(tiny_vae)
    x = torch.rand(3, 3, 40, 56) * 2 - 1
    assert vae.predict_scores(x).shape == (3,)
    assert vae.ratio_head.ratios_for(torch.tensor([1.0, 4.0, 6.9, 7.0, 9.0])) == [32, 16, 16, 8, 8]
    with pytest.raises(UserInputError, match="no ratio head"):
        NestedVAE.from_preset("tiny").predict_scores(x)
    with pytest.raises(UserInputError, match="channels"):
        NestedVAE.from_preset("tiny").attach_ratio_head(RatioHead(7))


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
        feats = vae.encoder.stages_to(x, 0, vae.trunk_level())
    module = RatioHeadModule(vae.ratio_head, lr=3e-2)
    L.Trainer(max_epochs=60, accelerator="cpu", logger=False, enable_checkpointing=False, enable_progress_bar=False,
              enable_model_summary=False).fit(module, DataLoader(TensorDataset(feats, target), batch_size=8, shuffle=True))
    with torch.no_grad():
        ratios = vae.ratio_head.ratios_for(vae.predict_scores(x))
    assert ratios == [32] * 16 + [8] * 16


def test_auto_routes_each_image_to_its_exit(tiny_vae):
    vae = with_head(tiny_vae).eval()
    x = torch.rand(4, 3, 64, 64) * 2 - 1
    with torch.no_grad():
        vae.ratio_head.out.weight.zero_()
        vae.ratio_head.out.bias.fill_(5.0)
        scores = torch.tensor([8.0, 2.0, 5.0, 9.0])
        vae.ratio_head.forward = lambda feats: scores[: feats.shape[0]]  # a head that disagrees per image
        posts = vae.encode(x, "auto")
        assert [p.ratio for p in posts] == [8, 32, 16, 8]
        for i, p in enumerate(posts):
            ref = vae.encode(x[i : i + 1], p.ratio).mode()
            assert p.mode().shape == ref.shape and torch.allclose(p.mode(), ref, atol=1e-5)
            assert vae.decode(p.mode(), p.ratio, size=p.input_size).shape == (1, 3, 64, 64)


def test_saved_and_loaded_head_predicts_identically(tiny_vae, tmp_path):
    vae = with_head(tiny_vae).eval()
    torch.nn.init.normal_(vae.ratio_head.out.weight)
    x = torch.rand(2, 3, 32, 32) * 2 - 1
    vae.save_pretrained(tmp_path / "v")
    assert json.loads((tmp_path / "v" / "config.json").read_text())["ratio_head"]["hidden"] == 8
    again = NestedVAE.from_pretrained(tmp_path / "v")
    with torch.no_grad():
        assert torch.equal(again.predict_scores(x), vae.predict_scores(x))


@pytest.mark.slow
def test_distill_cli_and_distilled_evaluator(tmp_path, tiny_vae, capsys):
    root = mixed_folder(tmp_path / "imgs", n=12)
    tiny_vae.save_pretrained(tmp_path / "vae")
    (tmp_path / "teacher.yaml").write_text(json.dumps(FAST_EVAL))
    out = tmp_path / "student"
    assert tools.main(["distill", "--data", str(root), "--ckpt", str(tmp_path / "vae"), "--out", str(out),
                       "--teacher", str(tmp_path / "teacher.yaml"), "--image-size", "32", "--epochs", "30", "--device", "cpu"]) == 0
    metrics = json.loads((out / "distill.json").read_text())
    assert metrics["held_out"] >= 2 and 0.0 <= metrics["ratio_agreement"] <= 1.0
    assert sum(map(sum, metrics["confusion_rows_teacher_cols_student"])) == metrics["held_out"]
    assert metrics["student_images_per_s"] > 0 and metrics["head_share_of_8x_encode"] < 1.0
    # The standalone timm CNN student, trained on the same labels, is reported beside the head.
    assert metrics["cnn"] == "resnet10t" and 0.0 <= metrics["cnn_ratio_agreement"] <= 1.0
    assert metrics["cnn_gflops_per_image"] > 100 * metrics["head_gflops_per_image"]
    assert "ratio agreement on held-out images" in capsys.readouterr().out
    # The student plugs in wherever an evaluator does.
    ev = ComplexityEvaluator.from_config(f"distilled:{out}")
    assert ev.name == "distilled+self" and ev.mapper.thresholds == tuple(metrics["thresholds"])
    res = ev.score_images(sorted(root.rglob("*.png")), cache=tmp_path / "s.sqlite")
    assert all(r.ratio in (8, 16, 32) and r.description.startswith("distilled score") for r in res)
    assert tools.main(["score", str(root), "--evaluator", f"distilled:{out}", "-q", "--cache", str(tmp_path / "s.sqlite")]) == 0


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
    a = TextStudentScorer(str(out), device="cpu").score([text_description(p) for p in prompts[:3]])
    b = TextStudentScorer(str(out), device="cpu").score([text_description(p) for p in prompts[:3]])
    assert a == b and all(isinstance(s, float) for s in a)  # saved and loaded: identical predictions
    assert tools.main(["score", "--text", "a chart", "--text", "a wall", "--evaluator", f"distilled-text:{out}"]) == 0
    assert "evaluator probe+text-student" in capsys.readouterr().out
    with pytest.raises(UserInputError, match="not a text student folder"):
        TextStudentScorer(str(tmp_path))
