"""CLI smoke tests: the entry points called in-process, as users call them."""

import csv
from pathlib import Path

import pytest
from conftest import write_kind_folder
from PIL import Image
from safetensors import safe_open

from cat_tokenizer import NestedVAE
from cat_tokenizer.cli import lightning_main, tools
from cat_tokenizer.io import load_latent
from cat_tokenizer.lit import cli as lit_cli
from cat_tokenizer.models.hub import WEIGHTS_NAME

CONFIG = str(Path(__file__).parents[1] / "configs" / "vae.yaml")
TINY = [
    "--model.init_args.vae.init_args.block_out_channels", "[8,16,16,32,32,32]",
    "--model.init_args.vae.init_args.norm_num_groups", "8",
    "--model.init_args.vae.init_args.layers_per_block", "1",
    "--model.init_args.loss.init_args.disc_channels", "8",
    "--data.init_args.image_size", "32", "--data.init_args.num_workers", "0", "--data.init_args.batch_size", "2",
]


def test_lightning_fit_fast_dev_run(image_folder, tmp_path):
    args = ["fit", "-c", CONFIG, "--trainer.accelerator", "cpu", "--trainer.fast_dev_run", "true",
            "--trainer.default_root_dir", str(tmp_path), "--data.init_args.root", str(image_folder), *TINY]
    assert lightning_main.main(args) == 0


def test_lightning_fit_default_data_writes_checkpoint_and_export(tmp_path):
    # The real config on the embedded default data, 2 batches, checkpointing and export included.
    args = ["fit", "-c", CONFIG, "--trainer.accelerator", "cpu", "--trainer.max_steps", "4",
            "--trainer.val_check_interval", "2", "--trainer.limit_val_batches", "1", "--trainer.precision", "32-true",
            "--trainer.default_root_dir", str(tmp_path), *TINY]
    assert lightning_main.main(args) == 0
    run = next((tmp_path / "lightning_logs").iterdir())
    assert (run / "pretrained" / WEIGHTS_NAME).is_file()
    assert list((run / "images").glob("recon_8x_*.png"))
    vae = NestedVAE.from_pretrained(run / "pretrained")
    assert vae.config["block_out_channels"] == [8, 16, 16, 32, 32, 32]
    # `lightning predict` with the latent writer encodes the whole dataset from the checkpoint.
    ckpt = run / "checkpoints" / "last.ckpt"
    out = tmp_path / "latents"
    args = ["predict", "-c", CONFIG, "--trainer.accelerator", "cpu", "--trainer.precision", "32-true",
            "--trainer.default_root_dir", str(tmp_path), "--ckpt_path", str(ckpt), "--return_predictions", "false",
            "--trainer.callbacks+=cat_tokenizer.callbacks.LatentWriter", f"--trainer.callbacks.output_dir={out}",
            "--data.init_args.ratio_assignment", "fixed:32", *TINY]
    assert lightning_main.main(args) == 0
    files = sorted(out.rglob("*.safetensors"))
    assert len(files) == 45 and {f.parent.name for f in files} == {"photo", "texture", "text", "chart", "flat"}
    assert load_latent(files[0]).latent.shape == (16, 1, 1) and load_latent(files[0]).ratio == 32  # 32 px / 32


def test_lightning_missing_data_root_is_one_line(tmp_path, capsys):
    assert lightning_main.main(["fit", "-c", CONFIG, "--data.init_args.root", str(tmp_path / "nope"), *TINY]) == 2
    err = capsys.readouterr().err
    assert f"lightning fit: error: --data.root: image folder not found: {tmp_path / 'nope'}\n" in err
    assert "Traceback" not in err


def test_lightning_other_commands_go_to_sdk(capsys):
    assert lightning_main.main(["login"]) == 2
    assert "pip install lightning-sdk" in capsys.readouterr().err


@pytest.fixture
def pretrained(tmp_path, tiny_vae):
    return str(tiny_vae.save_pretrained(tmp_path / "vae"))


def test_encode_decode_roundtrip(tmp_path, pretrained, image_folder):
    odd = tmp_path / "odd.png"
    Image.new("RGB", (45, 70), (200, 30, 30)).save(odd)
    broken = tmp_path / "broken.jpg"
    broken.write_bytes(b"not a jpeg")
    imgs = [str(odd), str(next(image_folder.rglob("*.png"))), str(broken)]
    assert tools.main(["encode", *imgs, "--ratio", "16", "--ckpt", pretrained, "--out", str(tmp_path / "lat"), "--device", "cpu"]) == 0
    files = sorted((tmp_path / "lat").rglob("*.safetensors"))
    assert len(files) == 2  # the broken file is skipped, not fatal; paths kept relative to the common folder
    with safe_open(str(tmp_path / "lat" / "odd.safetensors"), "pt") as f:
        meta = f.metadata()
        assert f.get_tensor("latent").shape == (4, 5, 3)
    assert meta["ratio"] == "16" and (meta["height"], meta["width"]) == ("70", "45")
    assert tools.main(["decode", *map(str, files), "--ckpt", pretrained, "--out", str(tmp_path / "png"), "--device", "cpu"]) == 0
    assert Image.open(tmp_path / "png" / "odd.png").size == (45, 70)
    lat = load_latent(files[0])
    assert lat.ratio == 16


def test_encode_bad_inputs(tmp_path, pretrained, capsys):
    with pytest.raises(SystemExit):
        tools.main(["encode", "x.png", "--ratio", "12", "--ckpt", pretrained, "--out", str(tmp_path)])
    assert "invalid choice: '12'" in capsys.readouterr().err
    Image.new("RGB", (32, 32)).save(tmp_path / "ok.png")
    assert tools.main(["encode", str(tmp_path / "ok.png"), "--ratio", "auto", "--ckpt", pretrained, "--out", str(tmp_path)]) == 2
    assert "needs a ratio head" in capsys.readouterr().err  # auto without a distilled head: one line
    assert tools.main(["encode", "x.png", "--ratio", "8", "--ckpt", str(tmp_path / "none"), "--out", str(tmp_path)]) == 2
    assert "tokenizer not found" in capsys.readouterr().err  # a path that does not exist: never sent to the hub
    not_ckpt = tmp_path / "model.ckpt"
    not_ckpt.write_bytes(b"junk")
    assert tools.main(["encode", "x.png", "--ratio", "8", "--ckpt", str(not_ckpt), "--out", str(tmp_path)]) == 2
    assert "cannot read checkpoint" in capsys.readouterr().err
    junk = tmp_path / "junk.safetensors"
    junk.write_bytes(b"junk")
    assert tools.main(["decode", str(junk), "--ckpt", pretrained, "--out", str(tmp_path)]) == 2
    assert "cannot read latent file" in capsys.readouterr().err


def test_bench_head_reports_every_variant(capsys):
    from cat_tasks.reconstruction.bench import HEAD_VARIANTS
    from cat_tokenizer.models.ratio_head import PIXEL_STATS

    assert tools.main(["bench-head", "--preset", "tiny", "--size", "32", "--batch", "1", "--repeat", "1"]) == 0
    rows = [line.split("|") for line in capsys.readouterr().out.splitlines() if line.startswith("| ") and "%" in line]
    assert [r[1].strip() for r in rows] == list(HEAD_VARIANTS)
    inputs = {r[1].strip(): int(r[2]) for r in rows}
    assert inputs["all rows, all stages"] == 4 * (8 + 16 + 16 + 32) and inputs["stages 2-3, all rows"] == 4 * (16 + 32)
    assert inputs["distortion head: + pixel statistics, standardised"] == 4 * (8 + 16 + 16 + 32) + PIXEL_STATS


def test_bench_reports_every_ratio(capsys):
    assert tools.main(["bench", "--preset", "tiny", "--size", "64", "--iters", "1"]) == 0
    out = capsys.readouterr().out
    rows = [line for line in out.splitlines() if line.startswith("| ") and line[2].isdigit()]
    assert [int(r.split("|")[1]) for r in rows] == [8, 16, 32]
    enc_params = [float(r.split("|")[4]) for r in rows]
    assert enc_params[0] < enc_params[1] < enc_params[2]  # deeper ratios run more encoder stages
    assert "same widths built for 16x only" in out


def _flat_8x_up(report: str, db: float) -> str:
    """The report with flat's 8x PSNR raised by ``db``."""
    lines = report.splitlines()
    i = next(i for i, line in enumerate(lines) if line.startswith("| flat |"))
    cells = lines[i].split(" | ")
    psnr, ssim = cells[2].split(" / ")
    cells[2] = f"{float(psnr) + db:.2f} / {ssim}"
    lines[i] = " | ".join(cells)
    return "\n".join(lines)


def test_demo_reconstructs_each_kind_and_runs_cat(tmp_path, capsys, tiny_vae):
    tiny_vae.save_pretrained(tmp_path / "tok")
    data = write_kind_folder(tmp_path / "dev", kinds=("flat", "text"), n=4, size=(80, 96))
    out = tmp_path / "demo"
    args = ["demo", "--data", str(data), "--ckpt", str(tmp_path / "tok"), "--out", str(out), "--image-size", "64",
            "--per-kind", "3", "--show", "2", "--device", "cpu"]
    assert tools.main(args) == 0
    printed = capsys.readouterr().out
    assert f"report: {(out / 'report.md').resolve()}" in printed
    assert {"report.md", "metrics.csv", "reconstructions.png", "scores.sqlite"} <= {p.name for p in out.iterdir()}
    rows = list(csv.DictReader(open(out / "metrics.csv")))
    assert len(rows) == 6 and {r["kind"] for r in rows} == {"flat", "text"}
    for r in rows:  # every ratio measured, and CAT's PSNR is the one at its assigned ratio
        assert r["cat_ratio"] in ("8", "16", "32") and r["psnr_cat"] == r[f"psnr_{r['cat_ratio']}x"]
    # CAT's ratio is the evaluator's, scored independently here: flat fields coarser than striped text
    from cat_tokenizer.complexity import ComplexityEvaluator

    ev = ComplexityEvaluator.default(64)
    want = {Path(res.key).relative_to(data).as_posix(): res.ratio for res in ev.score_images([data / r["image"] for r in rows])}
    assert {r["image"]: int(r["cat_ratio"]) for r in rows} == want
    mean = lambda kind: sum(int(r["cat_ratio"]) for r in rows if r["kind"] == kind) / 3  # noqa: E731
    assert mean("flat") > mean("text")
    report = (out / "report.md").read_text()
    assert "| flat | 3 |" in report and "| text | 3 |" in report and "| all | 6 |" in report
    assert "8x (64 tokens)" in report  # 64 px / 8 = 8 x 8
    # the release check against a report: its own passes; one whose flat 8x is 0.01 dB better does not
    (tmp_path / "own.md").write_text(report)
    (tmp_path / "better.md").write_text(_flat_8x_up(report, 0.01))
    capsys.readouterr()
    assert tools.main([*args, "--compare", str(tmp_path / "own.md")]) == 0
    assert "at least as good everywhere" in capsys.readouterr().out
    assert tools.main([*args, "--compare", str(tmp_path / "better.md")]) == 1
    assert "below on flat 8x" in capsys.readouterr().out
    picture = Image.open(out / "reconstructions.png")
    assert picture.size[0] > picture.size[1] * 0.9  # 4 rows (2 per kind) x 4 columns
    # a missing checkpoint is one line, exit 2
    assert tools.main(["demo", "--data", str(data), "--ckpt", str(tmp_path / "nope"), "--out", str(out)]) == 2


@pytest.mark.slow
@pytest.mark.parametrize("disc_start", [50001, 0])  # GAN off (the empty discriminator step) and on from the start
def test_two_process_ddp_fit(image_folder, tmp_path, disc_start):
    """A real 2-process CPU DDP run (gloo) through the `lightning` script: equal batch counts,
    one ratio per step on both ranks, disjoint data, and VAE, discriminator and EMA weights kept in sync."""
    import json
    import os
    import shutil
    import signal
    import subprocess
    import sys

    exe = shutil.which("lightning", path=os.path.dirname(sys.executable))
    assert exe, "the lightning console script is not installed in this environment"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(Path(__file__).parent), os.environ.get("PYTHONPATH", "")])}
    for i in range(6, 12):  # 12 images: 6 steps of 2 images per rank after the held-out split
        Image.new("RGB", (40, 40), (20 * i, 0, 0)).save(image_folder / "class0" / f"extra{i}.png")
    args = [exe, "fit", "-c", CONFIG, "--trainer.accelerator", "cpu", "--trainer.devices", "2",
            "--trainer.strategy", "ddp_find_unused_parameters_true", "--trainer.max_steps", "8",
            "--trainer.precision", "32-true", "--trainer.limit_val_batches", "0", "--trainer.logger", "false",
            "--trainer.default_root_dir", str(tmp_path),
            "--trainer.callbacks+=ddp_probe.BatchRecorder", f"--trainer.callbacks.out_dir={tmp_path}",
            "--data.init_args.root", str(image_folder), *TINY,
            "--model.init_args.loss.init_args.disc_start", str(disc_start)]
    proc = subprocess.Popen(args, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True)
    try:
        _, stderr = proc.communicate(timeout=240)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)  # both ranks, so a hang cannot outlive the test
        pytest.fail("2-process DDP run hung (a collective called on one rank only?)")
    assert proc.returncode == 0, stderr[-3000:]
    ranks = [json.loads((tmp_path / f"rank{k}.json").read_text()) for k in range(2)]
    assert ranks[0]["world"] == 2
    b0, b1 = ranks[0]["batches"], ranks[1]["batches"]
    assert len(b0) == len(b1) == 4  # max_steps 8 = 4 batches x (VAE + discriminator step)
    for x, y in zip(b0, b1):
        assert x["ratio"] == y["ratio"]  # one ratio per global step
        assert not set(x["index"]) & set(y["index"])  # each rank its own shard
    assert ranks[0]["checksum"] == pytest.approx(ranks[1]["checksum"], rel=1e-6)  # DDP kept them equal
    assert ranks[0]["ema_checksum"] == pytest.approx(ranks[1]["ema_checksum"], rel=1e-6)
    assert ranks[0]["disc_checksum"] == pytest.approx(ranks[1]["disc_checksum"], rel=1e-6)
    assert ranks[0]["gen_step"] == ranks[1]["gen_step"] == 4


@pytest.mark.parametrize("native", [False, True])
def test_mixed_precision_on_cpu_needs_native_bf16(caplog, monkeypatch, native):
    monkeypatch.setattr(lit_cli, "cpu_has_native_bf16", lambda: native)
    c = lit_cli.cli(["-c", CONFIG, "--trainer.accelerator", "cpu", *TINY], run=False)
    # the config says bf16-mixed: kept where the CPU has bfloat16, else fp32
    assert c.trainer.precision == ("bf16-mixed" if native else "32-true")
    assert ("using 32-true instead" in caplog.text) is not native
