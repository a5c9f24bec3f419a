"""Layout facts on images where the answer is known; the fitted scorer: better than the hand rubric,
round-trips through its config, and keys the score cache by its weights."""

from __future__ import annotations

import io
import json

import numpy as np
import pytest
import yaml
from PIL import Image, ImageDraw, ImageFont

from cat_tasks.complexity.fit import cross_validate, evaluate_scores, label_agreement, per_source
from cat_tokenizer.complexity import ComplexityEvaluator, FittedScorer, RubricScorer
from cat_tokenizer.complexity.base import Description
from cat_tokenizer.complexity.fitted import fit_facts
from cat_tokenizer.complexity.layout import layout_facts
from cat_tokenizer.complexity.probe import ProbeDescriber, probe_facts


def _font(px: int) -> ImageFont.FreeTypeFont:
    from matplotlib import font_manager

    return ImageFont.truetype(font_manager.findfont("DejaVu Sans"), px)


def _text_line(height_px: int = 10) -> Image.Image:
    img = Image.new("RGB", (320, 60), "white")
    ImageDraw.Draw(img).text((8, 20), "The quick brown fox jumps over the lazy dog", fill="black", font=_font(height_px))
    return img


def _chart(seed: int = 0) -> Image.Image:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rng = np.random.default_rng(seed)
    fig, ax = plt.subplots(figsize=(3.2, 2.4), dpi=100)
    ax.plot(np.cumsum(rng.normal(size=40)))
    ax.set_xlabel("time")
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    plt.close(fig)
    return Image.open(buf).convert("RGB")


def _disc(seed: int = 0) -> Image.Image:
    rng = np.random.default_rng(seed)
    img = Image.new("RGB", (200, 200), "white")
    ImageDraw.Draw(img).ellipse([40, 40, 160, 160], fill=tuple(int(v) for v in rng.integers(0, 255, 3)))
    return img


def _photo(seed: int = 0) -> Image.Image:
    rng = np.random.default_rng(seed)
    base = rng.normal(120, 40, (24, 32, 3))
    return Image.fromarray(np.clip(base, 0, 255).astype(np.uint8)).resize((256, 192), Image.Resampling.BICUBIC)


def test_a_rendered_chart_has_axis_lines():
    f = layout_facts(_chart())
    assert f["h_lines"] >= 1 and f["v_lines"] >= 1 and f["bg_share"] > 0.6


def test_a_ten_pixel_text_line_is_text():
    f = layout_facts(_text_line(10))
    assert f["glyphs"] > 1 and f["glyph_rows"] > 0.6 and f["h_lines"] == 0


def test_a_flat_disc_has_neither():
    f = layout_facts(_disc())
    assert f["h_lines"] == 0 and f["v_lines"] == 0 and f["glyphs"] == 0 and f["glyph_rows"] == 0
    assert f["bg_share"] > 0.5


def test_faint_grid_lines_of_a_facet_panel_are_faint_lines_not_lines():
    img = Image.new("RGB", (400, 300), "white")
    draw = ImageDraw.Draw(img)
    draw.rectangle([20, 20, 139, 279], fill=(235, 235, 235))  # one facet panel, 30% of the width
    for y in (60, 120, 180, 240):
        draw.line([20, y, 139, y], fill=(245, 245, 245))  # a light grid line: +0.04 over the panel
    f = layout_facts(img)
    assert f["h_faint_lines"] >= 4 and f["h_lines"] == 0


def test_texture_facts_tell_flat_fills_photos_and_axis_aligned_edges_apart():
    chart, disc, photo = layout_facts(_chart()), layout_facts(_disc()), layout_facts(_photo())
    assert disc["flat_share"] > 0.9 and disc["soft_gradients"] < 0.01 and chart["flat_share"] > 0.7
    assert photo["soft_gradients"] > 0.5 and photo["flat_share"] < 0.3
    assert chart["axis_edges"] > 0.5 > disc["axis_edges"]  # axes and ticks vs a circle's every-way edge


def _toy(n: int, seed: int) -> tuple[list[dict], np.ndarray, list[str]]:
    """Charts and text lines (8x), noise photos (16x), discs (32x), as probe facts."""
    makers = [("charts", 2, _chart), ("text", 2, lambda s: _text_line(9 + s % 4)), ("natural", 1, _photo), ("flat", 0, _disc)]
    probe = ProbeDescriber(ocr=False, faces=False, layout=True)
    facts, y, kinds = [], [], []
    for i in range(n):
        kind, cls, make = makers[i % 4]
        facts.append(probe_facts(make(seed + i), probe))
        y.append(cls)
        kinds.append(kind)
    return facts, np.array(y), kinds


@pytest.mark.slow
def test_fitted_scorer_beats_the_hand_rubric_on_held_out_toys():
    facts, y, kinds = _toy(48, 0)
    test_facts, _, test_kinds = _toy(24, 1000)
    fitted = fit_facts(facts, y)
    rubric = RubricScorer()
    hand = np.array(rubric.score([Description("", f) for f in test_facts]))
    fit_scores = fitted.score_facts(test_facts)
    m_fit, m_hand = evaluate_scores(fit_scores, test_kinds), evaluate_scores(hand, test_kinds)
    assert m_fit["auc_high_vs_natural"] > m_hand["auc_high_vs_natural"]
    assert m_fit["auc_high_vs_natural"] >= 0.9 and m_fit["auc_high_vs_flat"] >= 0.9
    assert m_fit["shares"]["flat"][32] >= 0.8 and m_fit["shares"]["text"][8] >= 0.8
    cv = cross_validate(facts, y, kinds)  # holding out a whole kind at a time still scores every image
    assert not np.isnan(cv[np.isin(kinds, ["text", "charts", "natural"])]).any()


def test_per_source_shares_and_the_share_at_the_label():
    rows = per_source(np.array([8.0, 7.5, 5.0, 2.0, np.nan]), np.array([2, 2, 1, 1, 1]), ["a", "a", "b", "b", "b"],
                      ["text", "text", "natural", "natural", "natural"])
    assert [(r["source"], r["kind"], r["images"]) for r in rows] == [("a", "text", 2), ("b", "natural", 2)]
    assert rows[0]["8x"] == 1.0 and rows[0]["at_label"] == 1.0
    assert rows[1]["16x"] == rows[1]["32x"] == rows[1]["at_label"] == 0.5  # the unscored image is not counted


def test_label_agreement_against_the_majority_label():
    m = label_agreement(np.array([8.0, 8.0, 5.0, 2.0, 5.0]), np.array([2, 2, 1, 0, 2]))
    assert m["agreement"] == 0.8 and m["majority"] == 0.6 and m["spearman"] > 0.8


def test_reencode_copies_the_tree_as_jpeg_and_skips_unreadable_files(tmp_path, capsys):
    from cat_tokenizer.cli import tools

    (tmp_path / "src" / "flat" / "icons").mkdir(parents=True)
    _disc().save(tmp_path / "src" / "flat" / "icons" / "a.png")
    (tmp_path / "src" / "flat" / "icons" / "broken.png").write_bytes(b"not an image")
    assert tools.main(["reencode", str(tmp_path / "src"), str(tmp_path / "copy"), "--scale", "0.5", "-q"]) == 0
    out = Image.open(tmp_path / "copy" / "flat" / "icons" / "a.jpg")
    assert out.format == "JPEG" and out.size == (100, 100)
    assert "wrote 1 JPEG images" in capsys.readouterr().out and not (tmp_path / "copy" / "flat" / "icons" / "broken.jpg").exists()
    assert tools.main(["reencode", str(tmp_path / "src"), str(tmp_path / "src" / "copy")]) == 2
    assert "outside the source folder" in capsys.readouterr().err


def test_fitted_config_round_trips_and_keys_the_cache(tmp_path):
    facts = [{"jpeg_bpp": b, "glyphs": g} for b, g in [(0.1, 0), (0.2, 0), (1.0, 1), (1.1, 2), (0.5, 9), (0.6, 12)]]
    model = fit_facts(facts, [0, 0, 1, 1, 2, 2], features={"jpeg_bpp": "id", "glyphs": "log1p"}, face_points=0.0)
    config = {"class_path": "cat_tokenizer.complexity.ComplexityEvaluator",
              "init_args": {"describer": {"class_path": "cat_tokenizer.complexity.ProbeDescriber",
                                          "init_args": {"ocr": False, "faces": False, "layout": True}},
                            "scorer": {"class_path": "cat_tokenizer.complexity.FittedScorer", "init_args": model.init_args()}}}
    path = tmp_path / "fitted.yaml"
    path.write_text(yaml.safe_dump(config))
    ev = ComplexityEvaluator.from_config(str(path))
    assert isinstance(ev.scorer, FittedScorer)
    assert ev.scorer.score_facts(facts).tolist() == pytest.approx(model.score_facts(facts).tolist())
    assert model.score_facts(facts)[0] < 4 < model.score_facts(facts)[2] < 7 < model.score_facts(facts)[4]
    other = dict(config)
    bumped = model.init_args()
    bumped["coef"] = (np.asarray(bumped["coef"]) * 1.5).tolist()
    other["init_args"] = {**config["init_args"], "scorer": {"class_path": "cat_tokenizer.complexity.FittedScorer",
                                                             "init_args": bumped}}
    assert ComplexityEvaluator.from_config(other).evaluator_hash != ev.evaluator_hash  # new weights: new cache key
    assert ComplexityEvaluator.from_config(str(path)).evaluator_hash == ev.evaluator_hash


def test_budget_relative_to_a_fixed_ratio_and_per_kind_shares(tmp_path, capsys):
    from cat_tokenizer.cli import tools
    from cat_tokenizer.errors import UserInputError
    from cat_tokenizer.ratios import parse_budget

    assert parse_budget("16x-18%", 256) == pytest.approx(256 * 0.82)
    assert parse_budget("8x", 128) == 256 and parse_budget("210", 256) == 210
    with pytest.raises(UserInputError, match="16x-18%"):
        parse_budget("16y", 256)
    for kind, make in (("flat", _disc), ("natural", _photo), ("text", lambda i: _text_line(9 + i))):
        for i in range(3):
            (tmp_path / "d" / kind).mkdir(parents=True, exist_ok=True)
            make(i).save(tmp_path / "d" / kind / f"{i}.png")
    cfg = tmp_path / "fast.yaml"
    cfg.write_text("describer:\n  class_path: cat_tokenizer.complexity.ProbeDescriber\n  init_args: {ocr: false, faces: false}\n")
    assert tools.main(["score", str(tmp_path / "d"), "--evaluator", str(cfg), "--budget", "16x-18%", "--image-size", "128",
                       "--cache", str(tmp_path / "s.sqlite"), "-q"]) == 0
    out = capsys.readouterr().out
    mean = float(out.split("mean tokens at 128px: ")[1].split()[0])
    assert abs(mean - 64 * 0.82) <= (256 - 64) / 9  # within one image's worth
    assert "per kind (8x / 16x / 32x): flat " in out and "; natural " in out and "; text " in out


def test_evaluate_kinds_reports_auc_and_shares(tmp_path, capsys):
    from cat_tokenizer.cli import tools

    for kind, make in (("flat", _disc), ("natural", _photo), ("text", lambda i: _text_line(9 + i)), ("charts", _chart)):
        for i in range(3):
            (tmp_path / "d" / kind).mkdir(parents=True, exist_ok=True)
            make(i).save(tmp_path / "d" / kind / f"{i}.png")
    cfg = tmp_path / "fast.yaml"
    cfg.write_text("describer:\n  class_path: cat_tokenizer.complexity.ProbeDescriber\n  init_args: {ocr: false, faces: false}\n")
    assert tools.main(["evaluate-kinds", str(tmp_path / "d"), "--evaluator", str(cfg), "--evaluator", "default",
                       "--cache", str(tmp_path / "s.sqlite"), "-q"]) == 0
    out = capsys.readouterr().out
    rows = [line for line in out.splitlines() if line.startswith(f"| {cfg}") or line.startswith("| default")]
    assert len(rows) == 2
    default = rows[1].split("|")
    assert float(default[5]) >= 0.9  # the fitted default ranks text and charts above flat discs
    assert "charts 8/16/32x" in out and "flat 8/16/32x" in out


def test_fit_rubric_writes_an_evaluator_that_loads_and_a_bad_kind_map_is_one_line(tmp_path, capsys):
    from conftest import one_line_error, write_kind_folder

    from cat_tokenizer.cli import tools
    from cat_tokenizer.complexity import ComplexityEvaluator

    root = tmp_path / "data"
    for seed, src in enumerate("abc"):
        write_kind_folder(root, ("flat", "natural", "text"), n=4, size=(64, 64), source=src, seed=seed)
    out = tmp_path / "fitted.yaml"
    assert tools.main(["fit-rubric", str(root), "--out", str(out), "--no-faces", "--kind-map", "flat=32,natural=16,text=8",
                       "--quiet"]) == 0
    report = json.loads(out.with_suffix(".json").read_text())
    assert report["images"] == 36 and len(report["sources"]) == 9 and report["kind_map"] == {"flat": 0, "natural": 1, "text": 2}
    assert "Leave-one-source-out" in out.with_suffix(".md").read_text()
    ev = ComplexityEvaluator.from_config(str(out))
    flat, text = (ev.score_images([next((root / k / "a").glob("*.png"))])[0].score for k in ("flat", "text"))
    assert text > flat
    capsys.readouterr()
    assert tools.main(["fit-rubric", str(root), "--out", str(out), "--kind-map", "flat=31"]) == 2
    one_line_error(capsys, "--kind-map")
