"""Section 3.1 analysis and the evaluator benchmark, end to end on tiny models."""

import numpy as np
import pytest
from test_datamodule_assign import mixed_folder

from cat_tasks.reconstruction.analysis import max_acceptable_ratio, max_acceptable_ratios, quantile_matched_ratios
from cat_tasks.reconstruction.table import ReconTable
from cat_tokenizer.cli import tools


def test_max_acceptable_ratio_uses_the_tolerance():
    psnr = {8: 30.0, 16: 29.2, 32: 27.0}
    assert max_acceptable_ratio(psnr, 1.0) == 16
    assert max_acceptable_ratio(psnr, 3.0) == 32
    assert max_acceptable_ratio(psnr, 0.1) == 8
    assert max_acceptable_ratio({8: 20.0, 16: 25.0, 32: 19.5}, 1.0) == 32  # a better coarse recon is acceptable
    # text: OCR confidence must hold too
    assert max_acceptable_ratio(psnr, 3.0, ocr={8: 80.0, 16: 75.0, 32: 40.0}, ocr_tolerance=10) == 16


def test_max_acceptable_ratios_on_a_table():
    psnr = np.array([[30.0, 29.5, 29.2], [30.0, 27.0, 20.0], [25.0, 24.8, 24.5]])
    ocr = np.full((3, 3), np.nan)
    ocr[2] = [70.0, 50.0, 30.0]  # text-bearing: PSNR holds, OCR does not
    t = ReconTable(["a", "b", "c"], ["k"] * 3, (8, 16, 32), 128, psnr, psnr / 40, psnr, ocr, np.array([np.nan, np.nan, 72.0]),
                   np.ones(3))
    assert max_acceptable_ratios(t, 1.0, 10.0).tolist() == [32, 8, 8]
    assert max_acceptable_ratios(t, 1.0, 25.0).tolist() == [32, 8, 16]


def test_quantile_matching_keeps_the_histogram_and_ranks():
    target = np.array([8, 32, 16, 32, 32])
    signal = np.array([9.0, 1.0, 5.0, 2.0, 3.0])  # perfectly ranked
    got = quantile_matched_ratios(signal, target)
    assert sorted(got) == sorted(target) and (got == target).all()
    assert (quantile_matched_ratios(-signal, target) != target).any()


def test_analyse_cli_writes_table_csv_and_plot(tmp_path, tiny_vae, capsys):
    root = mixed_folder(tmp_path / "imgs", n=6)
    tiny_vae.save_pretrained(tmp_path / "vae")
    cfg = tmp_path / "fast.yaml"
    cfg.write_text("describer:\n  class_path: cat_tokenizer.complexity.ProbeDescriber\n  init_args: {ocr: false}\n")
    out = tmp_path / "an"
    assert tools.main(["analyse", str(root), "--ckpt", str(tmp_path / "vae"), "--image-size", "64", "--out", str(out),
                       "--evaluator", str(cfg), "--features", "off", "--device", "cpu", "-q"]) == 0
    text = capsys.readouterr().out
    for signal in ("JPEG size", "MSE (16x)", "fast"):
        assert f"| {signal} |" in text
    assert "tolerate 16x or more (paper, ImageNet: 56%)" in text
    assert {"analysis.md", "per_image.csv", "scatter.png"} <= {p.name for p in out.iterdir()}
    assert len((out / "per_image.csv").read_text().strip().splitlines()) == 7


def test_analyse_bad_input_is_one_line(tmp_path, tiny_vae, capsys):
    import torch

    root = mixed_folder(tmp_path / "imgs", n=2)
    tiny_vae.save_pretrained(tmp_path / "vae")
    args = ["analyse", str(root), "--ckpt", str(tmp_path / "vae"), "--image-size", "32", "--out", str(tmp_path / "o"),
            "--evaluator", "default", "--features", "off", "-q"]
    assert tools.main(args) == 2
    assert "at least 3 readable images" in capsys.readouterr().err
    if not torch.cuda.is_available():
        assert tools.main([*args, "--device", "cuda:0"]) == 2
        err = capsys.readouterr().err
        assert "no CUDA device" in err and len(err.strip().splitlines()) == 1


@pytest.mark.slow
def test_bench_score_reports_every_component(tmp_path, capsys):
    from tiny_hf import tiny_llama

    llm = tiny_llama(tmp_path / "llm")
    assert tools.main(["bench-score", "--n", "4", "--llm", str(llm), "--batch", "2", "--files", "12", "--n-eval", "3"]) == 0
    out = capsys.readouterr().out
    for setting in ("OCR + faces + statistics", "one at a time, full prompt", "batch 2, cached rubric prefix",
                    "read + probe + fitted score, no cache", "content hash of every file (default)", "stat shortcut (trust_stat, opt-in)"):
        assert setting in out
    assert "x |" in out  # speed ratios against the naive row
    cache_rows = [line for line in out.splitlines() if line.startswith("| score cache keys |") and "| 12 |" in line]
    assert len(cache_rows) == 3  # hash, stat shortcut, and the hashing cost against a describe
