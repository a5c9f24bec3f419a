"""The docs are a reference that does not rot: links resolve, and every report they quote is rewritten by a
command (scripts/reports.sh), not copied by hand (issue 27)."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
LINK = re.compile(r"\]\(([^)\s#]+)(?:#[^)]*)?\)")


def _broken_links(md: Path) -> list[str]:
    """Relative links of a markdown file whose target does not exist (web links and anchors are not checked)."""
    targets = [t for t in LINK.findall(md.read_text()) if not re.match(r"[a-z]+:", t)]
    return [t for t in targets if not (md.parent / t).exists()]


def _doc_pages() -> list[Path]:
    return [ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md")), *sorted((ROOT / "src").rglob("README.md"))]


def test_every_relative_link_in_the_docs_resolves(tmp_path):
    broken = {str(p.relative_to(ROOT)): b for p in _doc_pages() if (b := _broken_links(p))}
    assert not broken, broken
    planted = tmp_path / "page.md"
    (tmp_path / "there.md").write_text("")
    planted.write_text("[ok](there.md) [web](https://x.org/a) [anchor](there.md#a) [gone](reports/gone.md)")
    assert _broken_links(planted) == ["reports/gone.md"]


def _written_by_reports_script(script: str) -> list[str]:
    """docs/reports/ paths (files or folders) that scripts/reports.sh writes."""
    return re.findall(r'\$DOCS/([\w.-]+)', script)


def test_every_report_is_written_by_a_step_of_the_reports_script():
    """A file under docs/reports/ that no step writes would go stale when the tokenizer changes."""
    written = set(_written_by_reports_script((ROOT / "scripts" / "reports.sh").read_text()))
    present = {p.name for p in (ROOT / "docs" / "reports").iterdir()}
    assert present and not present - written, f"not written by scripts/reports.sh: {sorted(present - written)}"
    assert _written_by_reports_script('x --report "$DOCS/rd-dev-128"; cp a "$DOCS/b.md"') == ["rd-dev-128", "b.md"]


KIND_ROW = re.compile(r"^\| (?:charts|flat|natural|text|all) \| \d+ \| [\d.]+ / [\d.]+ \|.*$", re.M)


def _rows_not_in_report(page: str, report: str) -> list[str]:
    """The per-kind PSNR / SSIM rows a page quotes that the report does not hold verbatim."""
    return [row for row in KIND_ROW.findall(page) if row not in report]


def test_the_readme_quotes_the_shipped_tokenizers_dev_table_as_the_demo_report_wrote_it():
    """The README's first table is copied from docs/reports/demo-dev-128.md: a new release that rewrote the report
    but not the README would show the previous weights' figures as cat-small's."""
    report = (ROOT / "docs" / "reports" / "demo-dev-128.md").read_text()
    readme = (ROOT / "README.md").read_text()
    missing = _rows_not_in_report(readme, report)
    assert len(KIND_ROW.findall(readme)) == 5 and not missing, missing
    stale = "| flat | 197 | 29.60 / 0.904 | 26.03 / 0.849 | 21.82 / 0.764 |"
    assert _rows_not_in_report(f"text\n{stale}\n", "| flat | 197 | 32.76 / 0.946 |") == [stale]


def test_the_reports_script_refuses_unknown_steps_and_missing_data_in_one_line(tmp_path):
    import subprocess

    script = ROOT / "scripts" / "reports.sh"
    bad = subprocess.run(["bash", str(script), "nope"], capture_output=True, text=True)
    assert bad.returncode == 2 and bad.stdout.strip().startswith("reports: unknown step 'nope'; steps: curve run-curve picture demo")
    none = subprocess.run(["bash", str(script), "curve"], capture_output=True, text=True,
                          env={"PATH": "/usr/bin:/bin", "REAL_DATA": str(tmp_path / "nothing")})
    assert none.returncode == 2 and len(none.stdout.strip().splitlines()) == 1 and "set REAL_DATA=" in none.stdout


def _stand_in_venv(root: Path, **tools: str) -> str:
    """A venv folder under root whose bin/ holds each tool as a one-line shell script (the scripts' VENV)."""
    for name, line in tools.items():
        tool = root / "venv" / "bin" / name
        tool.parent.mkdir(parents=True, exist_ok=True)
        tool.write_text(f"#!/bin/sh\n{line}\n")
        tool.chmod(0o755)
    return str(root / "venv")


def test_the_ship_script_checks_its_arguments_and_skips_finished_steps(tmp_path):
    """scripts/ship_release.sh (make ship-release): one line for a bad call; a step with a marker is not run again."""
    import subprocess

    script = ROOT / "scripts" / "ship_release.sh"
    run = lambda *a, **env: subprocess.run(["bash", str(script), *a], capture_output=True, text=True,  # noqa: E731
                                           env={"PATH": "/usr/bin:/bin", **env})
    (tmp_path / "run" / "version_0").mkdir(parents=True)
    for args, needle in (((), "give the training run's output folder"), ((str(tmp_path / "none"),), "no run/version_0"),
                         ((str(tmp_path), "nope"), "unknown step 'nope'; steps: check tokenizer fill")):
        bad = run(*args)
        assert bad.returncode == 2 and len(bad.stdout.strip().splitlines()) == 1 and needle in bad.stdout, bad
    ship, venv = tmp_path / "ship", _stand_in_venv(tmp_path, python='echo "$FP"')  # the package's fingerprint is FP
    ship.mkdir()
    (ship / "card.done").write_text("2026-12-04 abc\n")
    again = run(str(tmp_path), "card", SHIP=str(ship), VENV=venv, FP="abc")  # no tool is called
    assert again.returncode == 0 and "== ship: card done already (2026-12-04 abc)" in again.stdout, again
    for where, fp in ((ship, "other"), (tmp_path / "ship2", "abc")):  # another tokenizer in the package; no marker
        fresh = run(str(tmp_path), "card", SHIP=str(where), VENV=venv, FP=fp)
        assert fresh.returncode != 0 and "== ship: card (" in fresh.stdout  # the step runs (and fails here: no cat-tokenizer)


def test_the_reports_script_goes_on_where_it_stopped_for_the_same_tokenizer(tmp_path):
    """scripts/reports.sh: a finished step leaves a marker with the tokenizer's fingerprint and is skipped when the
    same tokenizer comes again; REDO=1 or another tokenizer runs it (a chain longer than a session resumes).
    The tools are stand-ins: a python that prints the fingerprint FP, a cat-tokenizer that logs its call."""
    import subprocess

    venv = _stand_in_venv(tmp_path, python='echo "$FP"', **{"cat-tokenizer": 'echo "$@" >> "$WORK/calls"'})
    for d in ("data/train", "data/dev"):
        (tmp_path / d).mkdir(parents=True)
    env = {"PATH": "/usr/bin:/bin", "REAL_DATA": str(tmp_path / "data"), "DOCS": str(tmp_path / "docs"),
           "WORK": str(tmp_path / "work"), "VENV": venv, "FP": "0123456789abcdef"}
    calls = tmp_path / "work" / "calls"

    def run(**more) -> int:  # how many times the curve step's command ran
        out = subprocess.run(["bash", str(ROOT / "scripts" / "reports.sh"), "curve", "run-curve"], capture_output=True,
                             text=True, env={**env, **more})
        assert out.returncode == 0, out
        return calls.read_text().count("curve cat-small --report") if calls.exists() else 0

    assert run() == 1
    assert (tmp_path / "work" / "done" / "curve").read_text().split()[1] == "0123456789abcdef"
    assert run() == 1  # the same tokenizer: skipped
    assert run(REDO="1") == 2
    assert run(FP="fedcba9876543210") == 3  # another tokenizer
    assert run(FP="fedcba9876543210") == 3
    assert not (tmp_path / "work" / "done" / "run-curve").exists()  # it reads a training run: never skipped
