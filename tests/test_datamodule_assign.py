"""The shared DataModule's content-adaptive modes (complexity, CSV), labels and captions, and
distributed scoring through `lightning predict`."""

import csv
import json
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from cat_tokenizer import CATDataModule
from cat_tokenizer.cli import lightning_main
from cat_tokenizer.complexity import ComplexityEvaluator, ProbeDescriber, ScoreCache
from cat_tokenizer.errors import UserInputError

ROOT = Path(__file__).parents[1]
FAST_EVAL = {"class_path": "cat_tokenizer.complexity.ComplexityEvaluator",
             "init_args": {"describer": {"class_path": "cat_tokenizer.complexity.ProbeDescriber",
                                         "init_args": {"ocr": False, "faces": False}}}}


def mixed_folder(root: Path, n: int = 8) -> Path:
    """Flat images (32x under the rubric) and noise images (8x), in two class folders."""
    rng = np.random.default_rng(0)
    for i in range(n):
        kind = "flat" if i % 2 else "noise"
        arr = np.full((48, 48, 3), 40 * (i % 5), np.uint8) if kind == "flat" else (rng.random((48, 48, 3)) * 255).astype(np.uint8)
        p = root / kind / f"{kind}{i}.png"
        p.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(arr).save(p)
    return root


def fast_evaluator() -> ComplexityEvaluator:
    return ComplexityEvaluator(describer=ProbeDescriber(ocr=False, faces=False))


def test_complexity_mode_buckets_by_assigned_ratio(tmp_path):
    root = mixed_folder(tmp_path / "imgs")
    dm = CATDataModule(root=str(root), image_size=32, batch_size=2, num_workers=0, val_fraction=0.2,
                       ratio_assignment="complexity", evaluator=fast_evaluator(), score_cache=str(tmp_path / "s.sqlite"))
    dm.prepare_data()
    assert ScoreCache(tmp_path / "s.sqlite").count(dm.evaluator.evaluator_hash) == 8  # scored once, in prepare_data
    dm.setup("fit")
    expect = {"flat": 32, "noise": 8}
    by_file = {f.parent.name: int(r) for f, r in zip(dm.train_set.files, dm.train_set.ratios)}
    assert by_file == expect
    for epoch in range(2):
        loader = dm.train_dataloader()
        loader.batch_sampler.set_epoch(epoch)
        for batch in loader:
            kinds = {dm.train_set.files[i].parent.name for i in batch["index"].tolist()}
            assert len(kinds) == 1 and batch["ratio"] == expect[kinds.pop()]
    for batch in dm.val_dataloader():
        assert all(expect[dm.val_set.files[i].parent.name] == batch["ratio"] for i in batch["index"].tolist())


def test_evaluator_given_as_a_string_in_a_config(tmp_path):
    """--data.evaluator takes a YAML path, distilled:D or auto:D as well as a class config."""
    from jsonargparse import ArgumentParser

    (tmp_path / "ev.yaml").write_text(json.dumps(FAST_EVAL))
    parser = ArgumentParser(exit_on_error=False)
    parser.add_class_arguments(CATDataModule, "data")
    for value in (str(tmp_path / "ev.yaml"), "auto:some/student"):
        assert parser.parse_args(["--data.evaluator", value]).data.evaluator == value
    root = mixed_folder(tmp_path / "imgs")
    dm = CATDataModule(root=str(root), ratio_assignment="complexity", evaluator=str(tmp_path / "ev.yaml"))
    assert dm.evaluator.evaluator_hash == fast_evaluator().evaluator_hash
    with pytest.raises(UserInputError, match="no tokenizer folder"):
        _ = CATDataModule(root=str(root), ratio_assignment="complexity", evaluator=f"auto:{tmp_path}").evaluator


def test_csv_mode_labels_and_captions(tmp_path):
    root = mixed_folder(tmp_path / "imgs")
    files = sorted(root.rglob("*.png"))
    with (tmp_path / "ratios.csv").open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["path", "ratio"])
        w.writerows([(p.relative_to(root).as_posix(), 16 if "flat" in p.name else 8) for p in files])
    (tmp_path / "caps.json").write_text(json.dumps({p.relative_to(root).as_posix(): f"a {p.parent.name} image" for p in files}))
    dm = CATDataModule(root=str(root), image_size=32, batch_size=2, num_workers=0, labels=True,
                       captions=str(tmp_path / "caps.json"), ratio_assignment=f"csv:{tmp_path / 'ratios.csv'}")
    dm.setup("fit")
    assert dm.classes == ["flat", "noise"]
    batch = next(iter(dm.train_dataloader()))
    names = [dm.train_set.files[i].parent.name for i in batch["index"].tolist()]
    assert batch["label"].tolist() == [dm.classes.index(n) for n in names]
    assert batch["caption"] == [f"a {n} image" for n in names]
    assert batch["ratio"] == (16 if names[0] == "flat" else 8)
    # A CSV that misses images is a clear error naming the fix.
    with (tmp_path / "short.csv").open("w") as f:
        f.write("path,ratio\nflat/flat1.png,16\n")
    dm2 = CATDataModule(root=str(root), num_workers=0, ratio_assignment=f"csv:{tmp_path / 'short.csv'}")
    with pytest.raises(UserInputError, match="gives no ratio for 7 of 8 images"):
        dm2.setup("fit")


def test_coco_captions(tmp_path):
    root = mixed_folder(tmp_path / "imgs", n=2)
    coco = {"images": [{"id": 1, "file_name": "noise/noise0.png"}, {"id": 2, "file_name": "flat/flat1.png"}],
            "annotations": [{"image_id": 1, "caption": "static"}, {"image_id": 1, "caption": "snow"},
                            {"image_id": 2, "caption": "grey"}]}
    (tmp_path / "coco.json").write_text(json.dumps(coco))
    dm = CATDataModule(root=str(root), image_size=32, batch_size=1, num_workers=0, val_fraction=0.0,
                       captions=str(tmp_path / "coco.json"))
    dm.setup("fit")
    caps = {f.name: c for f, c in zip(dm.predict_set.files, dm.predict_set.captions)}
    assert caps == {"noise0.png": ["static", "snow"], "flat1.png": ["grey"]}


def test_lightning_fit_with_complexity_assignment(tmp_path):
    root = mixed_folder(tmp_path / "imgs")
    (tmp_path / "ev.yaml").write_text(json.dumps(FAST_EVAL))
    args = ["fit", "-c", str(ROOT / "configs" / "vae.yaml"), "--trainer.accelerator", "cpu", "--trainer.fast_dev_run", "true",
            "--trainer.default_root_dir", str(tmp_path), "--data.init_args.root", str(root),
            "--data.init_args.ratio_assignment", "complexity", "--data.init_args.evaluator", str(tmp_path / "ev.yaml"),
            "--data.init_args.score_cache", str(tmp_path / "s.sqlite"),
            "--model.init_args.vae.init_args.block_out_channels", "[8,16,16,32,32,32]",
            "--model.init_args.vae.init_args.norm_num_groups", "8", "--model.init_args.vae.init_args.layers_per_block", "1",
            "--model.init_args.loss.init_args.disc_channels", "8",
            "--data.init_args.image_size", "32", "--data.init_args.num_workers", "0", "--data.init_args.batch_size", "2"]
    assert lightning_main.main(args) == 0
    assert (tmp_path / "s.sqlite").is_file()


def test_lightning_predict_scores_into_cache_and_csv(tmp_path):
    root = mixed_folder(tmp_path / "imgs", n=4)
    (tmp_path / "ev.yaml").write_text(json.dumps(FAST_EVAL))
    args = ["predict", "-c", str(ROOT / "configs" / "score.yaml"), "--trainer.accelerator", "cpu",
            "--trainer.enable_progress_bar", "false", "--data.root", str(root), "--data.batch_size", "3",
            "--model.evaluator", str(tmp_path / "ev.yaml"), "--model.score_cache", str(tmp_path / "s.sqlite"),
            "--model.output_csv", str(tmp_path / "out.csv")]
    assert lightning_main.main(args) == 0
    rows = list(csv.DictReader((tmp_path / "out.csv").open()))
    assert sorted(r["path"] for r in rows) == sorted(p.relative_to(root).as_posix() for p in root.rglob("*.png"))
    assert not list((tmp_path / "s.sqlite.shards").glob("*.sqlite"))  # merged and removed
    assert ScoreCache(tmp_path / "s.sqlite").count() == 4


def _run(args: list[str], timeout: int = 300) -> subprocess.CompletedProcess:
    proc = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True,
                            env={**os.environ, "PYTHONPATH": os.pathsep.join([str(Path(__file__).parent), os.environ.get("PYTHONPATH", "")])})
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        pytest.fail("2-process run hung")
    assert proc.returncode == 0, err[-3000:]
    return subprocess.CompletedProcess(args, proc.returncode, out, err)


@pytest.mark.slow
def test_two_process_distributed_scoring(tmp_path):
    """`lightning predict` on 2 CPU processes (gloo): disjoint halves, one shard each, merged by rank 0."""
    exe = shutil.which("lightning", path=os.path.dirname(sys.executable))
    root = mixed_folder(tmp_path / "imgs", n=6)
    (tmp_path / "ev.yaml").write_text(json.dumps(FAST_EVAL))
    res = _run([exe, "predict", "-c", str(ROOT / "configs" / "score.yaml"), "--trainer.accelerator", "cpu",
                "--trainer.devices", "2", "--trainer.enable_progress_bar", "false", "--data.root", str(root),
                "--data.batch_size", "2", "--model.evaluator", str(tmp_path / "ev.yaml"),
                "--model.score_cache", str(tmp_path / "s.sqlite"), "--model.output_csv", str(tmp_path / "out.csv")])
    assert "rank 0 scored 3 new image(s)" in res.stderr and "rank 1 scored 3 new image(s)" in res.stderr
    assert "merged 6 scores from 2 shard(s)" in res.stderr
    assert len(list(csv.DictReader((tmp_path / "out.csv").open()))) == 6
    # A second run scores nothing new (everything is in the merged cache).
    res = _run([exe, "predict", "-c", str(ROOT / "configs" / "score.yaml"), "--trainer.accelerator", "cpu",
                "--trainer.devices", "2", "--trainer.enable_progress_bar", "false", "--data.root", str(root),
                "--model.evaluator", str(tmp_path / "ev.yaml"), "--model.score_cache", str(tmp_path / "s.sqlite")])
    assert "rank 0 scored 0 new image(s)" in res.stderr and "rank 1 scored 0 new image(s)" in res.stderr


@pytest.mark.slow
def test_two_process_ddp_fit_with_complexity_buckets(tmp_path):
    """2-process DDP training with content-assigned ratios: every batch holds images of its own
    ratio, both ranks run the same ratio at each step, and their shards are disjoint."""
    exe = shutil.which("lightning", path=os.path.dirname(sys.executable))
    root = mixed_folder(tmp_path / "imgs", n=16)
    (tmp_path / "ev.yaml").write_text(json.dumps(FAST_EVAL))
    _run([exe, "fit", "-c", str(ROOT / "configs" / "vae.yaml"), "--trainer.accelerator", "cpu", "--trainer.devices", "2",
          "--trainer.strategy", "ddp_find_unused_parameters_true", "--trainer.max_steps", "8",
          "--trainer.precision", "32-true", "--trainer.limit_val_batches", "0", "--trainer.logger", "false",
          "--trainer.default_root_dir", str(tmp_path),
          "--trainer.callbacks+=ddp_probe.BatchRecorder", f"--trainer.callbacks.out_dir={tmp_path}",
          "--data.init_args.root", str(root), "--data.init_args.ratio_assignment", "complexity",
          "--data.init_args.evaluator", str(tmp_path / "ev.yaml"), "--data.init_args.score_cache", str(tmp_path / "s.sqlite"),
          "--model.init_args.vae.init_args.block_out_channels", "[8,16,16,32,32,32]",
          "--model.init_args.vae.init_args.norm_num_groups", "8", "--model.init_args.vae.init_args.layers_per_block", "1",
          "--model.init_args.loss.init_args.disc_channels", "8",
          "--data.init_args.image_size", "32", "--data.init_args.num_workers", "0", "--data.init_args.batch_size", "2"])
    ranks = [json.loads((tmp_path / f"rank{k}.json").read_text()) for k in range(2)]
    b0, b1 = ranks[0]["batches"], ranks[1]["batches"]
    assert len(b0) == len(b1) == 4
    for x, y in zip(b0, b1):
        assert x["ratio"] == y["ratio"] and not set(x["index"]) & set(y["index"])
        assert set(x["assigned"]) == set(y["assigned"]) == {x["ratio"]}  # every image at its assigned ratio
    assert {x["ratio"] for x in b0} <= {8, 32}
