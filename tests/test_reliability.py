"""Hostile inputs: no silent overwrites, no stale scores, one-line errors (exit 2) where promised."""

from __future__ import annotations

import json
import logging
import os
import sqlite3
from pathlib import Path

import lightning as L
import numpy as np
import pytest
import torch
from conftest import one_line_error as _one_line_error
from PIL import Image

from cat_tokenizer.cli import lightning_main, tools
from cat_tokenizer.complexity import ComplexityEvaluator
from cat_tokenizer.complexity.cache import ScoreCache
from cat_tokenizer.data.images import list_images
from cat_tokenizer.io import save_latent
from cat_tokenizer.models.hub import weights_file

VAE_CONFIG = str(Path(__file__).parents[1] / "configs" / "vae.yaml")


@pytest.fixture
def tok(tmp_path, tiny_vae) -> Path:
    return tiny_vae.save_pretrained(tmp_path / "tok")


# ---------------------------------------------------------------- 1. encode / decode collisions
def test_encode_keeps_relative_paths_and_refuses_collisions(tmp_path, tok, capsys):
    for name in ("d1/a.png", "d2/a.png", "d1/a.jpg"):
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        Image.new("RGB", (32, 32), (len(name) * 20, 0, 0)).save(tmp_path / name)
    out = tmp_path / "enc"
    three = [str(tmp_path / n) for n in ("d1/a.png", "d2/a.png", "d1/a.jpg")]
    assert tools.main(["encode", *three, "--ratio", "16", "--ckpt", str(tok), "--out", str(out), "--device", "cpu"]) == 2
    _one_line_error(capsys, "a.png", "a.jpg", "nothing was written")
    assert not out.exists()
    two = three[:2]
    assert tools.main(["encode", *two, "--ratio", "16", "--ckpt", str(tok), "--out", str(out), "--device", "cpu"]) == 0
    written = sorted(p.relative_to(out).as_posix() for p in out.rglob("*.safetensors"))
    assert written == ["d1/a.safetensors", "d2/a.safetensors"]
    mask = os.umask(0)
    os.umask(mask)
    assert (out / "d1" / "a.safetensors").stat().st_mode & 0o777 == 0o666 & ~mask  # not safetensors' 0600
    png = tmp_path / "png"
    lat = [str(out / "d1/a.safetensors"), str(out / "d2/a.safetensors")]
    assert tools.main(["decode", *lat, "--ckpt", str(tok), "--out", str(png), "--device", "cpu"]) == 0
    assert sorted(p.relative_to(png).as_posix() for p in png.rglob("*.png")) == ["d1/a.png", "d2/a.png"]


# ---------------------------------------------------------------- 2. stale scores
def test_same_size_same_mtime_rewrite_is_rescored(tmp_path):
    img = tmp_path / "data" / "x.bmp"  # BMP: the byte size depends only on the image size
    img.parent.mkdir()
    Image.new("RGB", (128, 128), (255, 255, 255)).save(img)
    ev = ComplexityEvaluator(image_size=128)
    cache = tmp_path / "scores.sqlite"
    first = ev.score_images([img], cache=cache)[0]
    st = img.stat()
    rng = np.random.default_rng(0)
    busy = (rng.random((128, 128, 3)) * 255).astype(np.uint8)
    busy[::8] = 0
    Image.fromarray(busy).save(img)
    os.utime(img, ns=(st.st_atime_ns, st.st_mtime_ns))
    assert img.stat().st_size == st.st_size and img.stat().st_mtime_ns == st.st_mtime_ns
    fresh = ComplexityEvaluator(image_size=128).score_images([img])[0]
    assert fresh.score != first.score  # the new content scores differently ...
    for trust_stat in (False, True):  # ... and the cache sees it, with or without the stat shortcut
        again = ev.score_images([img], cache=ScoreCache(cache, trust_stat=trust_stat))[0]
        assert again.score == pytest.approx(fresh.score)


# ---------------------------------------------------------------- 3. latents that do not fit their metadata
@pytest.mark.parametrize("ratio,size,needle", [(8, (64, 64), "does not fit the recorded size"),
                                                (16, (5000, 64), "does not fit the recorded size"),
                                                (12, (64, 64), "ratio 12 is not one of")])
def test_decode_refuses_latent_that_contradicts_its_metadata(tmp_path, tok, capsys, ratio, size, needle):
    f = save_latent(tmp_path / "z.safetensors", torch.zeros(4, 4, 4), ratio, size)  # a 16x grid of a 64 px image
    assert tools.main(["decode", str(f), "--ckpt", str(tok), "--out", str(tmp_path / "o"), "--device", "cpu"]) == 2
    _one_line_error(capsys, "z.safetensors", needle)
    assert not (tmp_path / "o").exists()


def test_latent_without_integer_ratio_is_one_line(tmp_path, tok, capsys):
    from safetensors.torch import save_file

    for meta in ({"format": "cat-latent-v1", "height": "64", "width": "64"},
                 {"format": "cat-latent-v1", "ratio": "sixteen", "height": "64", "width": "64"}):
        save_file({"latent": torch.zeros(4, 4, 4)}, str(tmp_path / "bad.safetensors"), metadata=meta)
        assert tools.main(["decode", str(tmp_path / "bad.safetensors"), "--ckpt", str(tok), "--out", str(tmp_path)]) == 2
        _one_line_error(capsys, "bad.safetensors", "integer ratio")


# ---------------------------------------------------------------- 4. corrupt score cache
def test_a_cache_path_that_is_not_a_cache_is_refused_and_left_alone(tmp_path, capsys):
    """Policy 4 (cat_tokenizer.outputs): a cache never renames what is not its own file."""
    data = tmp_path / "data"
    data.mkdir()
    Image.new("RGB", (64, 64), (10, 200, 10)).save(data / "g.png")
    garbage = b"this is not a database" * 100
    (tmp_path / "notes.sqlite").write_bytes(garbage)
    other = sqlite3.connect(tmp_path / "other.db")
    other.execute("CREATE TABLE accounts (id INTEGER)")
    other.commit()
    other.close()
    (tmp_path / "folder").mkdir()
    (tmp_path / "folder" / "keep.txt").write_text("mine")
    for cache, needle in ((data / "g.png", "not a SQLite file"), (tmp_path / "notes.sqlite", "not a SQLite file"),
                          (tmp_path / "other.db", "another SQLite database"), (tmp_path / "folder", "is a folder")):
        before = sorted(p.name for p in tmp_path.rglob("*"))
        assert tools.main(["score", str(data), "--cache", str(cache), "-q"]) == 2
        _one_line_error(capsys, needle)
        assert sorted(p.name for p in tmp_path.rglob("*")) == before  # nothing renamed or created
    assert (tmp_path / "notes.sqlite").read_bytes() == garbage and (tmp_path / "folder" / "keep.txt").is_file()


@pytest.mark.parametrize("garbage", [b"SQLite format 3\x00" + b"\xff" * 4000, b"SQLite format 3\x00" + b"\x00" * 200])
def test_corrupt_score_cache_is_moved_aside_and_rebuilt(tmp_path, caplog, capsys, garbage):
    """A damaged cache of ours (SQLite's header, unreadable body) is derived data: moved aside, rebuilt."""
    data = tmp_path / "data"
    data.mkdir()
    Image.new("RGB", (64, 64), (10, 200, 10)).save(data / "g.png")
    cache = tmp_path / "scores.sqlite"
    cache.write_bytes(garbage)
    with caplog.at_level(logging.WARNING):
        assert tools.main(["score", str(data), "--cache", str(cache), "-q"]) == 0
    assert "moved aside" in caplog.text
    assert len(list(tmp_path.glob("scores.sqlite.corrupt-*"))) == 1
    assert ScoreCache(cache).count() == 1  # rebuilt, with the new score in it
    assert sqlite3.connect(cache).execute("PRAGMA quick_check").fetchone()[0] == "ok"


# ---------------------------------------------------------------- 5. bad tokenizer folders
def _break(folder: Path, how: str) -> None:
    cfg = json.loads((folder / "config.json").read_text())
    if how == "header":
        weights_file(folder).write_bytes(b"\xff" * 64)
    elif how == "json":
        (folder / "config.json").write_text("{not json")
    elif how == "key":
        (folder / "config.json").write_text(json.dumps({**cfg, "latent_chanels": 4}))
    elif how == "shapes":
        (folder / "config.json").write_text(json.dumps({**cfg, "latent_channels": 8}))


@pytest.mark.parametrize("how,needle", [("header", "safetensors"), ("json", "not valid JSON"),
                                        ("key", "latent_chanels"), ("shapes", "does not match")])
def test_bad_tokenizer_folder_is_one_line(tmp_path, tok, capsys, how, needle):
    _break(tok, how)
    Image.new("RGB", (32, 32)).save(tmp_path / "x.png")
    assert tools.main(["encode", str(tmp_path / "x.png"), "--ratio", "8", "--ckpt", str(tok), "--out", str(tmp_path / "o")]) == 2
    err = _one_line_error(capsys, needle)
    assert str(tok) in err


def test_missing_ckpt_path_is_one_line(image_folder, tmp_path, capsys):
    args = ["fit", "-c", VAE_CONFIG, "--data.root", str(image_folder), "--ckpt_path", str(tmp_path / "missing.ckpt")]
    assert lightning_main.main(args) == 2
    assert "checkpoint not found" in capsys.readouterr().err


# ---------------------------------------------------------------- 6. evaluator class_path typo
def test_evaluator_class_path_typo_names_the_class(tmp_path, capsys):
    cfg = tmp_path / "ev.yaml"
    cfg.write_text("class_path: cat_tokenizer.complexity.ComplexityEvaluater\n")
    Image.new("RGB", (32, 32)).save(tmp_path / "x.png")
    assert tools.main(["score", str(tmp_path), "--evaluator", str(cfg), "-q"]) == 2
    _one_line_error(capsys, "ComplexityEvaluater")
    # a typo in a nested class: the line names that class, not the Union/subtype preamble around it
    cfg.write_text("describer:\n  class_path: cat_tokenizer.complexity.ProbeDescriberr\n")
    assert tools.main(["score", str(tmp_path), "--evaluator", str(cfg), "-q"]) == 2
    _one_line_error(capsys, "cannot import class_path 'cat_tokenizer.complexity.ProbeDescriberr'")


# ---------------------------------------------------------------- 7. exports stay out of the working directory
def test_fast_dev_run_exports_nothing_into_the_cwd(image_folder, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    args = ["fit", "-c", VAE_CONFIG, "--trainer.accelerator", "cpu", "--trainer.fast_dev_run", "true",
            "--data.init_args.root", str(image_folder), "--data.init_args.image_size", "32", "--data.init_args.num_workers", "0",
            "--data.init_args.batch_size", "2", "--model.init_args.vae.init_args.block_out_channels", "[8,16,16,32,32,32]",
            "--model.init_args.vae.init_args.norm_num_groups", "8", "--model.init_args.vae.init_args.layers_per_block", "1",
            "--model.init_args.loss.init_args.disc_channels", "8"]
    assert lightning_main.main(args) == 0
    assert not (tmp_path / "pretrained").exists()


# ---------------------------------------------------------------- 8. minor
def test_symlink_loops_are_counted(tmp_path, caplog):
    Image.new("RGB", (8, 8)).save(tmp_path / "ok.png")
    os.symlink("loop.png", tmp_path / "loop.png")
    os.symlink(tmp_path / "gone.png", tmp_path / "dangling.jpg")
    os.symlink(tmp_path, tmp_path / "again")  # a folder loop: not descended into, but said
    with caplog.at_level(logging.WARNING):
        assert list_images(tmp_path) == [tmp_path / "ok.png"]
    assert "skipped 2 image path(s)" in caplog.text and "loop.png" in caplog.text
    assert "not following 1 symlinked folder(s)" in caplog.text and "again" in caplog.text


def test_progress_bar_label_when_training_by_steps():
    from types import SimpleNamespace

    from cat_tokenizer.callbacks import StepProgressBar

    bar = StepProgressBar()
    bar._trainer = SimpleNamespace(max_epochs=-1)
    assert bar._get_train_description(0).strip() == "Epoch 0"
    bar._trainer = SimpleNamespace(max_epochs=3)
    assert bar._get_train_description(1).strip() == "Epoch 1/2"


def test_lightning_parser_errors_are_one_line(tmp_path, capsys):
    from cat_tokenizer.lit.cli import condense_parser_error

    with pytest.raises(SystemExit) as exit_info:
        lightning_main.main(["fit", "-c", VAE_CONFIG, "--data.init_args.root", str(tmp_path), "--data.init_args.crop", "squash"])
    assert exit_info.value.code == 2
    err = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert len(err) == 1 and "--data.crop: Expected a typing.Literal['resize', 'native']. Got value: squash" in err[0]
    nested = 'Parser key "model":\n  Problem with given class_path \'x.Y\':\n    Parser key "lr":\n      Expected a float. Got value: fast'
    assert condense_parser_error(nested) == "--model.lr: Expected a float. Got value: fast"
    assert condense_parser_error("unrecognized arguments: --bogus\nmore") == "unrecognized arguments: --bogus"


def test_a_run_stopped_between_periodic_saves_keeps_its_last_step(tmp_path):
    # max_time stops a run wherever it is; last.ckpt must hold that step, not the last periodic save.
    from lightning.pytorch.demos.boring_classes import BoringModel

    from cat_tokenizer.callbacks import ResumableCheckpoint

    ck = ResumableCheckpoint(dirpath=tmp_path, save_last=True, every_n_train_steps=4, enable_version_counter=False)
    trainer = L.Trainer(max_steps=7, callbacks=[ck], logger=False, enable_progress_bar=False,
                        enable_model_summary=False, accelerator="cpu", limit_val_batches=0)
    trainer.fit(BoringModel())
    assert torch.load(tmp_path / "last.ckpt", weights_only=False)["global_step"] == 7
    assert (tmp_path / "epoch=0-step=4.ckpt").is_file()  # the periodic saves are unchanged


def test_a_session_timer_counts_this_process_not_the_run(tmp_path):
    """max_time restores the run's elapsed time on resume (a resumed run that used it up stops at once);
    SessionTimer gives each process its own budget and keeps the run's total in the checkpoint."""
    from lightning.pytorch.demos.boring_classes import BoringModel

    from cat_tokenizer.callbacks import ResumableCheckpoint, SessionTimer

    def fit(steps, ckpt=None):
        ck = ResumableCheckpoint(dirpath=tmp_path, save_last=True, every_n_train_steps=100, enable_version_counter=False)
        trainer = L.Trainer(max_steps=steps, callbacks=[ck, SessionTimer("00:01:00:00")], logger=False, enable_progress_bar=False,
                            enable_model_summary=False, accelerator="cpu", limit_val_batches=0)
        trainer.fit(BoringModel(), ckpt_path=ckpt)
        return torch.load(tmp_path / "last.ckpt", weights_only=False)

    first = fit(3)
    first["callbacks"]["Timer"]["time_elapsed"]["train"] = 7200.0  # as if the run had trained two hours already
    torch.save(first, tmp_path / "last.ckpt")
    again = fit(6, tmp_path / "last.ckpt")
    assert again["global_step"] == 6  # a plain Timer("00:01:00:00") trains no step: the run is over its hour
    assert again["callbacks"]["Timer"]["time_elapsed"]["train"] > 7200.0  # the run's total carries on
