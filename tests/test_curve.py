"""`cat-tokenizer curve`: a run's per-kind dev curve as a table, and the release check against the shipped one."""

from __future__ import annotations

from conftest import one_line_error

from cat_tasks.reconstruction.curve import curve_table, read_curve, release_check
from cat_tokenizer.cli import tools


def _write_curve(path, rows):
    path.parent.mkdir(parents=True, exist_ok=True)
    lines = ["step,kind,ratio,psnr,ssim,n"]
    lines += [f"{step},{kind},{ratio},{psnr},0.5,24" for step, kind, ratio, psnr in rows]
    path.write_text("\n".join(lines) + "\n")
    return path


def _run(tmp_path, shift):
    """A run at batches 1000, 1500, 2000: two kinds, 8x and 16x; ``shift`` moves its last evaluation."""
    rows = []
    for step, base in ((1000, 20.0), (1500, 21.0), (2000, 22.0 + shift)):
        for kind, extra in (("all", 0.0), ("flat", 1.0), ("text", -1.0)):
            rows += [(step, kind, 8, base + extra), (step, kind, 16, base + extra - 2)]
    return _write_curve(tmp_path / "run" / "version_0" / "kind_eval.csv", rows)


def test_the_table_keeps_every_nth_batch_and_the_last(tmp_path):
    curve = read_curve(str(_run(tmp_path, 0.0).parent))
    lines = curve_table(curve, ratio=8, every=1000)
    assert lines[0] == "| batch | all 8x | all 16x | flat 8x | text 8x |"
    assert [line.split(" | ")[0] for line in lines[2:]] == ["| 1000", "| 2000"]  # 1500 is not a multiple of 1000
    assert lines[-1] == "| 2000 | 22.00 | 20.00 | 23.00 | 21.00 |"


def test_the_release_check_names_each_kind_below_the_shipped(tmp_path):
    shipped = read_curve(str(_write_curve(tmp_path / "shipped.csv", [(9000, k, r, 22.0 + (k == "flat") - (k == "text") - 2 * (r == 16))
                                                                     for k in ("all", "flat", "text") for r in (8, 16, 32)])))
    better, worse = read_curve(str(_run(tmp_path / "a", 0.5).parent)), read_curve(str(_run(tmp_path / "b", -0.5).parent))
    assert release_check(better, shipped) == []
    assert release_check(worse, shipped) == [f"{k} {r}x {v - 0.5:.2f} < {v:.2f}" for k, r, v in
                                             [("all", 8, 22.0), ("all", 16, 20.0), ("flat", 8, 23.0), ("flat", 16, 21.0),
                                              ("text", 8, 21.0), ("text", 16, 19.0)]]
    table = curve_table(worse, compare=shipped)
    assert table[-1] == "| difference at 2000 | -0.50 | -0.50 | -0.50 | -0.50 |"


def test_the_command_exits_1_below_the_shipped_and_writes_its_report(tmp_path, capsys):
    run = _run(tmp_path, 0.0).parent
    assert tools.main(["curve", str(run), "--report", str(tmp_path / "curve.md")]) == 0
    assert "| 2000 | 22.00 |" in (tmp_path / "curve.md").read_text()
    assert tools.main(["curve", str(run), "--compare", "cat-small"]) == 1  # a toy run is below the shipped tokenizer
    assert "Release check at batch 2000" in capsys.readouterr().out


def test_a_missing_or_foreign_curve_is_one_line(tmp_path, capsys):
    assert tools.main(["curve", str(tmp_path)]) == 2
    one_line_error(capsys, "no kind_eval.csv or training_curve.csv")
    (tmp_path / "other.csv").write_text("a,b\n1,2\n")
    assert tools.main(["curve", str(tmp_path / "other.csv")]) == 2
    one_line_error(capsys, "not a per-kind curve")


class _Stub:
    """What demo's report reads of a tokenizer: its ratios and parameter counts."""

    ratios = (8, 16, 32)

    def num_params(self, with_head: bool = True) -> int:
        return 1000


def _demo_report(path, shift):
    """A report written by demo's own writer: two kinds of two images; ``shift`` moves every flat PSNR."""
    from cat_tasks.reconstruction.demo import _report

    rows = [{"image": f"{k}/{i}.png", "kind": k, "cat_ratio": "", **{f"psnr_{r}x": 30.0 - r / 8 + (shift if k == "flat" else 0) + i
                                                                    for r in (8, 16, 32)},
             **{f"ssim_{r}x": 0.9 for r in (8, 16, 32)}} for k in ("flat", "text") for i in (0, 1)]
    path.write_text(_report(rows, _Stub(), "toy", path.parent, 128, "none"))
    return path


def test_the_release_check_reads_demo_reports_as_one_evaluation(tmp_path, capsys):
    from cat_tasks.reconstruction.curve import read_demo_report

    shipped = read_demo_report(_demo_report(tmp_path / "shipped.md", 0.0))
    assert shipped.psnr[0][("flat", 8)] == 29.5 and shipped.psnr[0][("text", 32)] == 26.5 and len(shipped.psnr[0]) == 9
    assert release_check(read_demo_report(_demo_report(tmp_path / "same.md", 0.0)), shipped) == []
    assert release_check(read_demo_report(_demo_report(tmp_path / "worse.md", -0.25)), shipped) == [
        "all 8x 29.38 < 29.50", "all 16x 28.38 < 28.50", "flat 8x 29.25 < 29.50", "flat 16x 28.25 < 28.50"]
    (tmp_path / "other.md").write_text("# not a demo\n| a | b |\n")
    assert tools.main(["demo", "--compare", str(tmp_path / "other.md")]) == 2  # before any tokenizer is loaded
    one_line_error(capsys, "not a demo report")
