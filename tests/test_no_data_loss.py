"""Issue 30: nothing lost, nothing silently wrong, one line where a traceback was.

Each test reproduces a case of the hostile run (the overwrite policy is in ``cat_tokenizer.outputs``):
it failed before the fix (data replaced, wrong output with exit 0, or a traceback)."""

from __future__ import annotations

import hashlib
import json
import os
import sqlite3
from pathlib import Path

import pytest
import torch
from conftest import one_line_error as _err
from PIL import Image

from cat_tokenizer import NestedVAE
from cat_tokenizer.cli import lightning_main, tools
from cat_tokenizer.complexity import ComplexityEvaluator
from cat_tokenizer.complexity.cache import ScoreCache
from cat_tokenizer.errors import UserInputError
from cat_tokenizer.io import load_latent, load_vae, save_latent
from cat_tokenizer.models.hub import WEIGHTS_NAME, weights_file

VAE_CONFIG = str(Path(__file__).parents[1] / "configs" / "vae.yaml")


@pytest.fixture
def tok(tmp_path, tiny_vae) -> Path:
    return tiny_vae.save_pretrained(tmp_path / "tok")


def _md5(p: Path) -> str:
    return hashlib.md5(p.read_bytes()).hexdigest()


def _photo(path: Path, size=(40, 24), colour=(200, 40, 40)) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", size, colour).save(path)
    return path


# ---------------------------------------------------------------- data loss
def _fit(tmp_path: Path, root: Path, *extra: str) -> int:
    return lightning_main.main([
        "fit", "-c", VAE_CONFIG, "--trainer.accelerator", "cpu", "--trainer.logger", "false",
        "--trainer.default_root_dir", str(root), "--trainer.enable_progress_bar", "false",
        "--model.init_args.vae.init_args.block_out_channels", "[8,16,16,32,32,32]",
        "--model.init_args.vae.init_args.norm_num_groups", "8", "--model.init_args.vae.init_args.layers_per_block", "1",
        "--model.init_args.loss.init_args.disc_channels", "8", "--data.init_args.image_size", "32",
        "--data.init_args.num_workers", "0", "--data.init_args.batch_size", "2", *extra])


@pytest.mark.slow
def test_smoke_run_never_replaces_a_real_runs_checkpoint(tmp_path, capsys):
    run = tmp_path / "run"
    ckpts = run / "checkpoints"
    ckpts.mkdir(parents=True)
    real = ckpts / "last.ckpt"
    torch.save({"global_step": 99_999, "state_dict": {}}, real)
    before = _md5(real)
    assert _fit(tmp_path, run, "--trainer.fast_dev_run", "true",
                "--trainer.callbacks+=lightning.pytorch.callbacks.ModelCheckpoint",
                "--trainer.callbacks.save_last", "true", "--trainer.callbacks.dirpath", str(ckpts)) == 0
    assert _md5(real) == before and sorted(p.name for p in ckpts.iterdir()) == ["last.ckpt"]
    # a real (not smoke) run in that folder refuses to start instead of replacing last.ckpt ...
    assert _fit(tmp_path, run, "--trainer.max_steps", "2",
                "--trainer.callbacks+=lightning.pytorch.callbacks.ModelCheckpoint",
                "--trainer.callbacks.save_last", "true", "--trainer.callbacks.dirpath", str(ckpts)) == 2
    assert "holds checkpoints of an earlier run" in capsys.readouterr().err and _md5(real) == before
    # ... and a corrupt --ckpt_path is one line, not a traceback from torch.load
    (tmp_path / "empty.ckpt").write_bytes(b"")
    assert _fit(tmp_path, tmp_path / "other", "--ckpt_path", str(tmp_path / "empty.ckpt")) == 2
    assert "not a readable checkpoint" in capsys.readouterr().err


def test_decode_never_replaces_the_source_image(tmp_path, tok, capsys):
    orig = _photo(tmp_path / "o" / "orig.png")
    before = _md5(orig)
    assert tools.main(["encode", str(orig), "--ratio", "16", "--ckpt", str(tok), "--out", str(tmp_path / "lat")]) == 0
    lat = tmp_path / "lat" / "orig.safetensors"
    for extra in ([], ["--overwrite"]):
        assert tools.main(["decode", str(lat), "--ckpt", str(tok), "--out", str(tmp_path / "o"), *extra]) == 2
        _err(capsys, "orig.png", "never overwritten")
        assert _md5(orig) == before
    # into another folder: written; a second run keeps it; --overwrite rewrites it
    out = tmp_path / "dec"
    assert tools.main(["decode", str(lat), "--ckpt", str(tok), "--out", str(out)]) == 0
    png = out / "orig.png"
    png.write_bytes(b"edited by hand")
    assert tools.main(["decode", str(lat), "--ckpt", str(tok), "--out", str(out)]) == 0
    assert "kept 1 existing" in capsys.readouterr().out and png.read_bytes() == b"edited by hand"
    assert tools.main(["decode", str(lat), "--ckpt", str(tok), "--out", str(out), "--overwrite"]) == 0
    assert Image.open(png).size == (40, 24)
    # encode never writes over an input image either (a .safetensors file given as an "image")
    assert tools.main(["encode", str(lat), "--ratio", "16", "--ckpt", str(tok), "--out", str(tmp_path / "lat")]) == 2
    _err(capsys, "never overwritten")


def test_export_keeps_an_existing_tokenizer(tmp_path, tok, capsys, tiny_vae):
    other = NestedVAE.from_preset("tiny").save_pretrained(tmp_path / "other")
    before = _md5(weights_file(other))
    assert tools.main(["export", "--ckpt", str(tok), "--out", str(other)]) == 2
    _err(capsys, "already holds a tokenizer", "--overwrite")
    assert _md5(weights_file(other)) == before
    assert tools.main(["export", "--ckpt", str(tok), "--out", str(tok), "--fp16", "--overwrite"]) == 2
    _err(capsys, "is the tokenizer being exported")
    assert tools.main(["export", "--ckpt", str(tok), "--out", str(other), "--overwrite"]) == 0
    replaced, source = NestedVAE.from_pretrained(other).state_dict(), NestedVAE.from_pretrained(tok).state_dict()
    assert all(torch.equal(replaced[k], source[k]) for k in source)


def test_score_out_never_replaces_an_image_a_cache_or_a_file(tmp_path, capsys):
    data = tmp_path / "data"
    img = _photo(data / "precious.png")
    cache = tmp_path / "c.sqlite"
    assert tools.main(["score", str(data), "--cache", str(cache), "-q"]) == 0
    capsys.readouterr()
    before = {p: _md5(p) for p in (img, cache)}
    for out, extra, needle in ((img, [], "never overwritten"), (img, ["--overwrite"], "never overwritten"),
                               (cache, ["--overwrite"], "never overwritten"), (data, [], "is a folder")):
        assert tools.main(["score", str(data), "--cache", str(cache), "--out", str(out), "-q", *extra]) == 2
        _err(capsys, needle)
    assert {p: _md5(p) for p in before} == before
    notes = tmp_path / "notes.csv"
    notes.write_text("mine")
    assert tools.main(["score", str(data), "--cache", str(cache), "--out", str(notes), "-q"]) == 2
    assert notes.read_text() == "mine"
    capsys.readouterr()
    assert tools.main(["score", str(data), "--cache", str(cache), "--out", str(notes), "-q", "--overwrite"]) == 0
    assert notes.read_text().startswith("path,score,ratio")


# ---------------------------------------------------------------- silent wrong output
@pytest.mark.parametrize("value,needle", [(float("nan"), "NaN or infinite"), (float("inf"), "NaN or infinite"),
                                          (1e30, "beyond any trained latent")])
def test_decode_refuses_non_finite_or_absurd_latents(tmp_path, tok, capsys, value, needle):
    z = torch.zeros(4, 2, 2)
    z[0, 0, 0] = value
    f = save_latent(tmp_path / "z.safetensors", z, 16, (32, 32))
    assert tools.main(["decode", str(f), "--ckpt", str(tok), "--out", str(tmp_path / "o")]) == 2
    _err(capsys, "z.safetensors", needle)
    assert not (tmp_path / "o").exists()


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float64, torch.int32, torch.bool])
def test_latents_of_other_dtypes_decode_or_are_one_line(tmp_path, tok, capsys, dtype):
    f = save_latent(tmp_path / "z.safetensors", torch.zeros(4, 2, 2).to(dtype), 16, (32, 32))
    code = tools.main(["decode", str(f), "--ckpt", str(tok), "--out", str(tmp_path / "o")])
    if dtype.is_floating_point:
        assert code == 0 and Image.open(tmp_path / "o" / "z.png").size == (32, 32)
    else:
        assert code == 2
        _err(capsys, "a latent holds floats")


def test_a_latent_decodes_only_with_the_tokenizer_that_made_it(tmp_path, tok, capsys):
    img = _photo(tmp_path / "a.png", (32, 32))
    assert tools.main(["encode", str(img), "--ratio", "16", "--ckpt", str(tok), "--out", str(tmp_path / "lat")]) == 0
    lat = tmp_path / "lat" / "a.safetensors"
    assert len(load_latent(lat).tokenizer) == 16 and load_latent(lat).source == str(img.resolve())
    torch.manual_seed(1)
    other = NestedVAE.from_preset("tiny").save_pretrained(tmp_path / "other")
    assert tools.main(["decode", str(lat), "--ckpt", str(other), "--out", str(tmp_path / "o")]) == 2
    _err(capsys, "made by tokenizer", "not by this one")
    unrecorded = save_latent(tmp_path / "old.safetensors", load_latent(lat).latent, 16, (32, 32))  # an older file
    assert tools.main(["decode", str(unrecorded), "--ckpt", str(other), "--out", str(tmp_path / "o")]) == 0


def test_score_refuses_non_finite_thresholds_and_overrides_outside_the_folder(tmp_path, capsys):
    data = tmp_path / "data"
    _photo(data / "a.png")
    assert tools.main(["score", str(data), "--thresholds", "nan,inf", "--cache", str(tmp_path / "c.sqlite"), "-q"]) == 2
    _err(capsys, "finite")
    csv = tmp_path / "over.csv"
    csv.write_text("path,ratio\n../elsewhere/b.png,8\n")
    assert tools.main(["score", str(data), "--overrides", str(csv), "--cache", str(tmp_path / "c.sqlite"), "-q"]) == 2
    _err(capsys, "over.csv:2", "outside")


def test_exif_orientation_is_applied(tmp_path):
    from cat_tokenizer.data.images import load_rgb

    im = Image.new("RGB", (60, 20), (0, 0, 255))
    exif = im.getexif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise to display
    im.save(tmp_path / "phone.jpg", exif=exif)
    assert load_rgb(tmp_path / "phone.jpg").size == (20, 60)


def test_python_api_refuses_what_it_used_to_get_wrong(tiny_vae):
    z = torch.zeros(1, 4, 3, 3)
    for size in ((400, 400), (-5, 40), (0, 10)):
        with pytest.raises(UserInputError, match="does not fit a 3x3 latent at 16x"):
            tiny_vae.decode(z, 16, size=size)
    with pytest.raises(UserInputError, match="does not fit"):  # a 16x latent of a 48 px image decoded as 8x
        tiny_vae.decode(z, 8, size=(48, 48))
    assert tiny_vae.decode(z.half(), 16, size=(48, 40)).dtype == torch.float32  # cast, not a dtype error
    ev = ComplexityEvaluator(image_size=64)
    with pytest.raises(UserInputError, match="takes a list of image paths, got one str"):
        ev.score_images("some/path.png")
    with pytest.raises(UserInputError, match="takes a list of prompts"):
        ev.score_texts("a prompt")


@pytest.mark.parametrize("how,needle", [("nan", "NaN or infinite"), ("int8", "is int8")])
def test_broken_weights_are_refused_in_folders_and_checkpoints(tmp_path, tiny_vae, capsys, how, needle):
    from safetensors.torch import load_file, save_file

    folder = tiny_vae.save_pretrained(tmp_path / "tok")
    state = load_file(weights_file(folder))
    name = "decoder.conv_out.weight"
    state[name] = state[name].fill_(float("nan")) if how == "nan" else (state[name] * 100).to(torch.int8)
    save_file(state, weights_file(folder))  # int8 stays int8 in the file; loading into the model would cast it
    with pytest.raises(UserInputError, match=needle):
        NestedVAE.from_pretrained(folder)
    ckpt = tmp_path / "broken.ckpt"
    torch.save({"nested_vae_config": tiny_vae.init_config(), "state_dict": {f"vae.{k}": v for k, v in state.items()}}, ckpt)
    with pytest.raises(UserInputError, match=needle):
        load_vae(ckpt)
    _photo(tmp_path / "a.png", (32, 32))
    assert tools.main(["encode", str(tmp_path / "a.png"), "--ratio", "8", "--ckpt", str(ckpt), "--out", str(tmp_path / "l")]) == 2
    _err(capsys, needle)


def test_a_null_score_in_the_cache_is_rescored(tmp_path):
    img = _photo(tmp_path / "data" / "a.png")
    ev = ComplexityEvaluator(image_size=64)
    cache = tmp_path / "c.sqlite"
    good = ev.score_images([img], cache=cache)[0].score
    db = sqlite3.connect(cache)
    db.execute("UPDATE scores SET score = NULL")
    db.commit()
    db.close()
    again = ev.score_images([img], cache=cache)[0]
    assert not again.cached and again.score == pytest.approx(good)
    store = ScoreCache(cache)
    store.put_many([("deadbeef", float("nan"), "x")], ev.evaluator_hash)  # NaN is not stored (it would read as NULL)
    assert store.count() == 1


# ---------------------------------------------------------------- one line where a traceback was
def test_bad_checkpoints_and_configs_are_one_line(tmp_path, tiny_vae, capsys):
    img = _photo(tmp_path / "a.png", (32, 32))
    (tmp_path / "zero.ckpt").write_bytes(b"")
    torch.save({"nested_vae_config": tiny_vae.init_config(), "state_dict": None}, tmp_path / "nostate.ckpt")
    folder = tiny_vae.save_pretrained(tmp_path / "tok")
    cases = [(tmp_path / "zero.ckpt", "the file is empty"), (tmp_path / "nostate.ckpt", "no usable 'state_dict'")]
    for key, value in (("norm_num_groups", 0), ("norm_num_groups", -8), ("latent_channels", -1), ("ratios", [])):
        bad = tmp_path / f"{key}{value}"
        bad.mkdir()
        (bad / WEIGHTS_NAME).write_bytes(weights_file(folder).read_bytes())
        (bad / "config.json").write_text(json.dumps({**tiny_vae.init_config(), key: value}))
        cases.append((bad, "must be"))
    for ckpt, needle in cases:
        assert tools.main(["encode", str(img), "--ratio", "8", "--ckpt", str(ckpt), "--out", str(tmp_path / "l")]) == 2
        _err(capsys, needle)


def test_unwritable_or_wrong_type_outputs_are_one_line_and_leave_no_temp_files(tmp_path, tok, capsys):
    img = _photo(tmp_path / "in" / "a.png", (32, 32))
    blocker = tmp_path / "file"
    blocker.write_text("x")
    for out in (blocker, blocker / "sub"):
        assert tools.main(["encode", str(img), "--ratio", "8", "--ckpt", str(tok), "--out", str(out)]) == 2
        _err(capsys, str(blocker))
    assert tools.main(["score", str(img.parent), "--cache", str(tmp_path / "c.sqlite"), "--out", str(blocker / "s.csv"), "-q"]) == 2
    _err(capsys)
    if os.geteuid() != 0:  # root writes anywhere
        ro = tmp_path / "ro"
        ro.mkdir(mode=0o500)
        assert tools.main(["encode", str(img), "--ratio", "8", "--ckpt", str(tok), "--out", str(ro)]) == 2
        _err(capsys, "not writable")
    assert not [p for p in tmp_path.rglob(".*") if p.is_file()]  # no hidden temp files anywhere


def test_symlink_loops_and_bad_sizes_are_one_line(tmp_path, tok, capsys):
    loop = tmp_path / "loop.png"
    os.symlink(loop, loop)
    assert tools.main(["encode", str(loop), "--ratio", "8", "--ckpt", str(tok), "--out", str(tmp_path / "l")]) == 2
    _err(capsys, "loop.png")
    for argv in (["score", str(tmp_path), "--image-size", "0"], ["rd", str(tmp_path), "--image-size", "0"],
                 ["demo", "--image-size", "0"], ["demo", "--per-kind", "-1"], ["demo", "--show", "-2"]):
        with pytest.raises(SystemExit) as e:
            tools.main(argv)
        assert e.value.code == 2 and "must be" in capsys.readouterr().err


def test_malformed_evaluator_yaml_is_one_line(tmp_path, capsys):
    _photo(tmp_path / "data" / "a.png")
    for text, needle in (("init_args: [unclosed", "not valid YAML (line 1"), ("- a\n- b\n", "expected a mapping")):
        (tmp_path / "e.yaml").write_text(text)
        assert tools.main(["score", str(tmp_path / "data"), "--evaluator", str(tmp_path / "e.yaml"), "-q"]) == 2
        _err(capsys, "e.yaml", needle)


def test_datamodule_sizes_are_one_line(tmp_path, capsys):
    from cat_tokenizer import CATDataModule

    for kw, needle in ((dict(image_size=0), "image_size must be a positive"), (dict(batch_size=-1), "batch_size"),
                       (dict(num_workers=-1), "num_workers")):
        with pytest.raises(UserInputError, match=needle):
            CATDataModule(root=None, **kw)


def test_ctrl_c_in_score_keeps_what_was_scored(tmp_path, capsys, monkeypatch):
    data = tmp_path / "data"
    for i in range(10):  # two batches of the evaluator's 8
        _photo(data / f"{i}.png", colour=(20 * i, 0, 0))
    cache = tmp_path / "c.sqlite"
    from cat_tokenizer.complexity.evaluator import ComplexityEvaluator as CE

    real, calls = CE.score_descriptions, []

    def interrupt_second_batch(self, descs):
        calls.append(len(descs))
        if len(calls) == 2:
            raise KeyboardInterrupt
        return real(self, descs)

    monkeypatch.setattr(CE, "score_descriptions", interrupt_second_batch)
    assert tools.main(["score", str(data), "--cache", str(cache), "-q"]) == 130
    err = capsys.readouterr().err.strip()
    assert "Traceback" not in err and "interrupted: 8 of 10 images scored" in err and "rerun to resume" in err
    assert ScoreCache(cache).count() == 8
    monkeypatch.setattr(CE, "score_descriptions", real)
    assert tools.main(["score", str(data), "--cache", str(cache), "-q"]) == 0
    assert "scored 10 (8 from cache)" in capsys.readouterr().out and ScoreCache(cache).count() == 10


def test_a_report_copy_takes_the_named_files_only(tmp_path):
    """``--report DIR`` (rd, analyse, classify, gen-demo) copies the report files into docs/, never the caches
    beside them; a file where the folder should be is a one-line error."""
    from cat_tokenizer.outputs import publish_report

    out = tmp_path / "out"
    out.mkdir()
    (out / "rd.md").write_text("# report")
    (out / "recon_cache.sqlite").write_text("cache")
    copies = publish_report(out, ("rd.md", "rd.png"), tmp_path / "docs" / "rd")  # rd.png not written this run
    assert [p.name for p in copies] == ["rd.md"] and sorted(p.name for p in (tmp_path / "docs" / "rd").iterdir()) == ["rd.md"]
    assert publish_report(out, ("rd.md",), out) == [out / "rd.md"]  # the report folder itself: nothing to copy
    (tmp_path / "docs" / "rd" / "rd.png").write_text("an earlier run's figure")
    publish_report(out, ("rd.md", "rd.png"), tmp_path / "docs" / "rd")  # this run wrote no rd.png: the old one goes
    assert sorted(p.name for p in (tmp_path / "docs" / "rd").iterdir()) == ["rd.md"]
    (tmp_path / "afile").write_text("")
    with pytest.raises(UserInputError, match="--report .*afile is a file"):
        publish_report(out, ("rd.md",), tmp_path / "afile")
