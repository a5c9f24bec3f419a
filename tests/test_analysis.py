"""Section 3.1 analysis and the evaluator benchmark, end to end on tiny models."""

import numpy as np
import pytest

from cat_tokenizer.cli import tools
from cat_tokenizer.cli.analyse import max_acceptable_ratio, quantile_matched_ratios
from test_datamodule_assign import mixed_folder


def test_max_acceptable_ratio_uses_the_tolerance():
    psnr = {8: 30.0, 16: 29.2, 32: 27.0}
    assert max_acceptable_ratio(psnr, 1.0) == 16
    assert max_acceptable_ratio(psnr, 3.0) == 32
    assert max_acceptable_ratio(psnr, 0.1) == 8
    assert max_acceptable_ratio({8: 20.0, 16: 25.0, 32: 19.5}, 1.0) == 32  # a better coarse recon is acceptable


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
                       "--evaluator", str(cfg)]) == 0
    text = capsys.readouterr().out
    for signal in ("jpeg_bpp", "mse_16x", "score_fast"):
        assert f"| {signal} |" in text
    assert {"analysis.md", "per_image.csv", "scatter.png"} <= {p.name for p in out.iterdir()}
    assert len((out / "per_image.csv").read_text().strip().splitlines()) == 7


def test_analyse_bad_input_is_one_line(tmp_path, tiny_vae, capsys):
    import torch

    root = mixed_folder(tmp_path / "imgs", n=2)
    tiny_vae.save_pretrained(tmp_path / "vae")
    args = ["analyse", str(root), "--ckpt", str(tmp_path / "vae"), "--image-size", "32", "--out", str(tmp_path / "o")]
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
    assert tools.main(["bench-score", "--n", "4", "--llm", str(llm), "--batch", "2"]) == 0
    out = capsys.readouterr().out
    for setting in ("OCR + faces + statistics", "one at a time, full prompt", "batch 2, cached rubric prefix"):
        assert setting in out
    assert "x |" in out  # speed ratios against the naive row
