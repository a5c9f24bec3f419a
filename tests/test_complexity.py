"""The complexity evaluator: probes, rule rubric, cache behaviour, config loading, the score CLI."""

import csv
import logging
import random
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageFilter

from cat_tokenizer.cli import tools
from cat_tokenizer.complexity import ComplexityEvaluator, Describer, Description, ProbeDescriber, RubricScorer, ScoreCache, text_description
from cat_tokenizer.data.default_data import _render_document, _render_flat
from cat_tokenizer.errors import UserInputError

needs_tesseract = pytest.mark.skipif(shutil.which("tesseract") is None, reason="tesseract binary missing (make install adds it)")


@pytest.fixture
def kinds(tmp_path):
    """One rendered document, one flat graphic, one noise texture, one corrupt file."""
    root = tmp_path / "kinds"
    root.mkdir()
    _render_document(random.Random(1)).save(root / "doc.png")
    _render_flat(random.Random(2)).save(root / "flat.png")
    rng = np.random.default_rng(0)
    Image.fromarray((rng.random((128, 128, 3)) * 255).astype(np.uint8)).save(root / "noise.png")
    (root / "broken.jpg").write_bytes(b"\xff\xd8 not really a jpeg")
    return root


class CountingDescriber(Describer):
    """Fast fake describer for cache tests: counts calls, describes by mean brightness."""

    def __init__(self, tag: str = "a"):
        super().__init__()
        self.tag, self.calls = tag, 0

    def fingerprint(self):
        return {"describer": f"counting/{self.tag}"}

    def describe(self, images):
        self.calls += len(images)
        # Distinct scores per image: 1 + (mean brightness mod 50) / 10 points.
        return [Description(text=f"mean {np.asarray(im).mean():.1f}", facts={"jpeg_bpp": np.asarray(im).mean() % 50 / 25})
                for im in images]


def test_rubric_rules_on_known_facts():
    r = RubricScorer()
    flat = Description("", {"jpeg_bpp": 0.2, "edge_density": 0.0, "text_words": 0, "faces": 0})
    photo = Description("", {"jpeg_bpp": 1.2, "edge_density": 0.1, "text_words": 0, "faces": 0})
    face = Description("", {"jpeg_bpp": 1.2, "edge_density": 0.1, "text_words": 0, "faces": 1})
    page = Description("", {"jpeg_bpp": 1.0, "edge_density": 0.1, "text_words": 200, "faces": 0})
    s = r.score([flat, photo, face, page])
    assert s == sorted(s) and s[0] < 4 <= s[1] < 7 <= s[2] and s[3] == 9
    assert r.score([text_description("a dense page of newspaper text")])[0] > r.score([text_description("a plain blue sky")])[0]
    # by hand: base 1 + min(5, bpp / 0.4) + min(2, 8 * edges) (+ 4 + min(1, words / 100) for text, + 2.5 for a face)
    assert s == pytest.approx([1 + 0.5, 1 + 3 + 0.8, 1 + 3 + 0.8 + 2.5, 9.0])


@needs_tesseract
def test_probe_reads_text_and_text_scores_higher(kinds):
    probe = ProbeDescriber()
    doc, flat = probe.describe([Image.open(kinds / "doc.png").convert("RGB"), Image.open(kinds / "flat.png").convert("RGB")])
    assert doc.facts["text_words"] >= 20 and doc.facts["text_confidence"] > 70
    assert flat.facts["text_words"] == 0 and flat.facts["faces"] == 0
    assert "Text: yes" in doc.text and "Text: none" in flat.text
    s_doc, s_flat = RubricScorer().score([doc, flat])
    assert s_doc >= 7 > 4 > s_flat  # 8x for the page, 32x for the flat graphic
    blurred = probe.describe([Image.open(kinds / "doc.png").convert("RGB").filter(ImageFilter.GaussianBlur(3))])[0]
    assert blurred.facts["text_words"] < doc.facts["text_words"] / 2


def test_probe_finds_a_face():
    from skimage.data import astronaut

    facts = ProbeDescriber(ocr=False).describe([Image.fromarray(astronaut())])[0].facts
    assert facts["faces"] >= 1


def test_evaluator_cache_hit_miss_and_invalidation(kinds, tmp_path, caplog):
    files = sorted(kinds.glob("*.png"))
    cache = tmp_path / "scores.sqlite"
    d = CountingDescriber("a")
    ev = ComplexityEvaluator(describer=d, batch_size=2)
    first = ev.score_images(files, cache=cache)
    assert d.calls == 3 and not any(r.cached for r in first)
    again = ev.score_images(files, cache=cache)
    assert d.calls == 3 and all(r.cached for r in again)
    assert [r.score for r in again] == [r.score for r in first]
    # A changed file (same path) is rescored; an unchanged copy elsewhere is a cache hit (content hash).
    shutil.copy(files[0], tmp_path / "copy.png")
    Image.new("RGB", (64, 64), (9, 9, 9)).save(files[1])
    ev.score_images([*files, tmp_path / "copy.png"], cache=cache)
    assert d.calls == 4
    # Another evaluator config rescores everything, and says so.
    caplog.set_level(logging.INFO)
    d2 = CountingDescriber("b")
    ComplexityEvaluator(describer=d2).score_images(files, cache=cache)
    assert d2.calls == 3 and "rescores everything" in caplog.text
    assert len(ScoreCache(cache).evaluators()) == 2


def test_killed_run_keeps_finished_batches(kinds, tmp_path):
    files = sorted(kinds.glob("*.png"))
    cache = tmp_path / "scores.sqlite"

    class Dies(CountingDescriber):
        def describe(self, images):
            if self.calls >= 2:
                raise KeyboardInterrupt
            return super().describe(images)

    with pytest.raises(KeyboardInterrupt):
        ComplexityEvaluator(describer=Dies(), batch_size=2).score_images(files, cache=cache)
    d = CountingDescriber()
    results = ComplexityEvaluator(describer=d, batch_size=2).score_images(files, cache=cache)
    assert sum(r.cached for r in results) == 2 and d.calls == 1


def test_unreadable_files_are_reported_not_fatal(kinds):
    files = sorted(kinds.iterdir())
    results = ComplexityEvaluator(describer=CountingDescriber()).score_images([*files, kinds / "missing.png"])
    bad = {r.key.rsplit("/", 1)[-1]: r.error for r in results if r.error}
    assert set(bad) == {"broken.jpg", "missing.png"}
    assert all(r.ratio in (8, 16, 32) for r in results if not r.error)


def test_overrides_budget_and_text(kinds):
    files = sorted(kinds.glob("*.png"))
    ev = ComplexityEvaluator(describer=CountingDescriber())
    res = ev.score_images(files, overrides={str(files[0]): 32}, ratio=None)
    assert res[0].ratio == 32 and res[0].overridden
    assert {r.ratio for r in ev.score_images(files, ratio=16)} == {16}
    assert len({r.score for r in res}) == 3
    for budget, expect in ((64.0, {32}), (1024.0, {8})):
        ev.target_mean_tokens = budget
        assert {r.ratio for r in ev.score_images(files)} == expect
    ev.target_mean_tokens = 400.0
    res = sorted(ev.score_images(files), key=lambda r: r.score)
    assert [r.ratio for r in res] == sorted((r.ratio for r in res), reverse=True)  # more complex, more tokens
    ev.target_mean_tokens = None
    texts = ev.score_texts(["a page of dense text", "a flat red square"])
    assert texts[0].score > texts[1].score and texts[0].ratio < texts[1].ratio


def test_budget_on_all_equal_scores_is_a_clear_error(kinds):
    ev = ComplexityEvaluator(describer=CountingDescriber(), target_mean_tokens=300)
    same = [kinds / "flat.png"] * 3
    with pytest.raises(UserInputError, match="all 3 scores equal"):
        ev.score_images(same)


def test_from_config_yaml_and_errors(tmp_path):
    cfg = tmp_path / "ev.yaml"
    cfg.write_text("describer:\n  class_path: cat_tokenizer.complexity.ProbeDescriber\n  init_args: {ocr: false}\n"
                   "scorer:\n  class_path: cat_tokenizer.complexity.RubricScorer\n  init_args: {text_points: 3.0}\n"
                   "thresholds: [3.0, 6.0]\n")
    ev = ComplexityEvaluator.from_config(cfg)
    assert not ev.describer.ocr and ev.scorer.text_points == 3.0 and ev.mapper.thresholds == (3.0, 6.0)
    assert ev.evaluator_hash != ComplexityEvaluator.from_config(None).evaluator_hash
    with pytest.raises(UserInputError, match="not found"):
        ComplexityEvaluator.from_config(tmp_path / "nope.yaml")
    with pytest.raises(UserInputError, match="bad evaluator config"):
        ComplexityEvaluator.from_config({"thresholds": "high"})
    import torch

    from cat_tokenizer.complexity import LLMScorer

    if not torch.cuda.is_available():  # a CUDA-only option on a CPU machine is a clear error
        with pytest.raises(UserInputError, match="no CUDA device"):
            LLMScorer(device="cuda")


def test_score_cli_writes_csv_and_reuses_cache(kinds, tmp_path, capsys):
    out, cache = tmp_path / "scores.csv", tmp_path / "c.sqlite"
    cfg = tmp_path / "ev.yaml"
    cfg.write_text("describer:\n  class_path: cat_tokenizer.complexity.ProbeDescriber\n  init_args: {ocr: false}\n")
    assert tools.main(["score", str(kinds), "--out", str(out), "--cache", str(cache), "--evaluator", str(cfg), "-q"]) == 0
    text = capsys.readouterr().out
    assert "scored 3 (0 from cache), 1 failed" in text and "broken.jpg" in text and "mean tokens at 256px" in text
    rows = list(csv.DictReader(out.open()))
    assert [r["path"] for r in rows] == ["broken.jpg", "doc.png", "flat.png", "noise.png"]
    assert rows[0]["ratio"] == "" and {r["ratio"] for r in rows[1:]} <= {"8", "16", "32"}
    assert rows[1]["evaluator"] == "probe+rubric" and "Edges" in rows[1]["description"]
    first = out.read_text()
    assert tools.main(["score", str(kinds), "--out", str(out), "--cache", str(cache), "--evaluator", str(cfg), "-q"]) == 2
    assert "exists; pass --overwrite" in capsys.readouterr().err and out.read_text() == first  # outputs are kept
    assert tools.main(["score", str(kinds), "--out", str(out), "--cache", str(cache), "--evaluator", str(cfg), "-q",
                       "--overwrite"]) == 0
    assert "scored 3 (3 from cache)" in capsys.readouterr().out
    assert tools.main(["score", "--text", "a spreadsheet full of numbers", "--text", "a white wall"]) == 0
    assert "spreadsheet" in capsys.readouterr().out


@pytest.mark.parametrize("args, message", [
    (["score", "/no/such/folder"], "image folder not found"),
    (["score"], "give an image folder or --text"),
    (["score", "--text", "a page of text", "--text", "blue sky", "--budget", "5000"], "outside"),
    (["score", "--text", "x", "--budget", "100"], "all 1 scores equal"),
])
def test_score_cli_bad_input_is_one_line(args, message, capsys):
    assert tools.main(args) == 2
    err = capsys.readouterr().err
    assert message in err and len(err.strip().splitlines()) == 1


def test_score_cli_empty_folder(tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "notes.txt").write_text("not an image")
    assert tools.main(["score", str(tmp_path / "empty")]) == 2
    assert "no image files" in capsys.readouterr().err


def test_rerun_with_trust_stat_stats_files_instead_of_rereading_them(kinds, tmp_path, monkeypatch):
    import cat_tokenizer.complexity.cache as cache_mod
    from cat_tokenizer.complexity.cache import ScoreCache

    files = sorted(kinds.glob("*.png"))
    ev = ComplexityEvaluator(describer=CountingDescriber())
    first = ev.score_images(files, cache=ScoreCache(tmp_path / "s.sqlite", trust_stat=True))

    def no_reading(path, chunk=0):
        raise AssertionError(f"{path} was read again")

    monkeypatch.setattr(cache_mod, "content_hash", no_reading)
    again = ev.score_images(files, cache=ScoreCache(tmp_path / "s.sqlite", trust_stat=True))
    assert all(r.cached for r in again) and [r.score for r in again] == [r.score for r in first]
    with pytest.raises(AssertionError, match="was read again"):  # the default hashes every file, every time
        ev.score_images(files, cache=tmp_path / "s.sqlite")


def test_slices_can_skip_ratio_mapping(kinds):
    ev = ComplexityEvaluator(describer=CountingDescriber(), target_mean_tokens=300)
    same = [kinds / "flat.png"] * 2  # calibrating on these alone would be an error
    res = ev.score_images(same, map_ratios=False)
    assert all(r.score is not None and r.ratio is None for r in res)


def test_from_config_sets_image_size_at_construction(tmp_path):
    from cat_tokenizer.complexity import ComplexityEvaluator

    assert ComplexityEvaluator.from_config(None, image_size=128).image_size == 128
    assert ComplexityEvaluator.from_config("rubric", image_size=64).image_size == 64
    assert ComplexityEvaluator.from_config({"thresholds": [3.0, 6.0]}, image_size=512).image_size == 512
    assert ComplexityEvaluator.from_config("rubric").image_size == 256  # the documented default, unchanged without it


def test_evaluator_spec_is_the_one_reader_of_evaluator_names(tmp_path):
    """Every preset round-trips through its text; a folder preset needs its folder; a bad name is one line;
    ``from_config`` builds the same evaluator from the text and from the parsed spec."""
    from cat_tokenizer.complexity import ComplexityEvaluator, EvaluatorSpec
    from cat_tokenizer.complexity.spec import FOLDER_PRESETS, PRESETS

    cfg = tmp_path / "mine.yaml"
    cfg.write_text("thresholds: [3.0, 6.0]\n")
    texts = [*PRESETS, *(f"{p}:some/dir" for p in FOLDER_PRESETS), str(cfg)]
    for text in texts:
        assert str(EvaluatorSpec.parse(text)) == text
    assert EvaluatorSpec.parse(None) == EvaluatorSpec.parse("default") == EvaluatorSpec()
    assert EvaluatorSpec.parse(str(cfg)).name == "mine" and EvaluatorSpec.parse("auto:d").path == "d"
    for bad, needle in [("nonsense", "not a preset"), ("distilled:", "name the tokenizer folder"), ("auto", "not a preset")]:
        with pytest.raises(UserInputError, match=needle):
            EvaluatorSpec.parse(bad)
    with pytest.raises(UserInputError, match="needs a path"):
        EvaluatorSpec("distilled")
    # "rubric" is ComplexityEvaluator()'s own parts; "default" is the fitted scorer; the spec and its text agree
    assert ComplexityEvaluator.from_config("rubric").evaluator_hash == ComplexityEvaluator().evaluator_hash
    assert ComplexityEvaluator.from_config(EvaluatorSpec()).evaluator_hash == ComplexityEvaluator.from_config(None).evaluator_hash
    assert type(ComplexityEvaluator.from_config(None).scorer).__name__ == "FittedScorer"
    assert ComplexityEvaluator.from_config(EvaluatorSpec.parse(str(cfg))).mapper.thresholds == (3.0, 6.0)


def test_the_packaged_default_evaluator_config_exists_once():
    from cat_tokenizer.complexity.spec import default_config_path

    repo = Path(__file__).parents[1]
    assert default_config_path().is_file()
    copies = [p for p in (repo / "configs").rglob("*.yaml") if p.read_bytes() == default_config_path().read_bytes()]
    assert not copies, f"byte copies of the packaged default evaluator: {copies}"
