"""Planted breaks, and whether the suite notices them (issue 29).

    make mutants            # or: python tests/mutations.py [--only NAME] [--out docs/mutations.md]

Each mutation replaces one line of the source in a temporary copy of the repository (src/, tasks/,
tests/, configs/, pyproject.toml), then runs the tests that claim the feature (a test file and a ``-k``
expression) against that copy. A mutation that leaves them all passing *survived*: the tests would not
catch that break. First the same tests run unmutated, to show they pass. Not part of ``make test``.
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


@dataclass(frozen=True)
class Mutation:
    name: str
    path: str  # file in the repository
    old: str  # one exact line (stripped) of that file
    new: str
    tests: str  # a test file
    k: str  # pytest -k expression selecting the tests that claim the feature


MUTATIONS = [
    Mutation("FID ignores the images", "src/cat_tokenizer/metrics/fid.py",
             "feats = self.net(x * (hi - lo) + lo)", "feats = self.net(torch.zeros_like(x) * (hi - lo) + lo)",
             "tests/test_generation.py", "fid"),
    Mutation("the scheduled LR never reaches the optimizer", "src/cat_tokenizer/lit/vae_module.py",
             'group["lr"] = group.setdefault("initial_lr", group["lr"]) * self._lr_factor(step)', "pass",
             "tests/test_real_data_recipe.py", "schedule or optimizer"),
    Mutation("LLM odds read before the description", "src/cat_tokenizer/complexity/llm.py",
             "at = logits[torch.arange(n, device=dev), last].float()  # (N, V)",
             "at = logits[torch.arange(n, device=dev), 0].float()  # (N, V)",
             "tests/test_llm_scorer.py", "local_folder or digit_odds"),
    Mutation("demo runs every image at 16x", "tasks/reconstruction/demo.py",
             "ratio = res.ratio if res is not None and res.ratio else None",
             "ratio = 16 if res is not None and res.ratio else None",
             "tests/test_cli.py", "demo"),
    Mutation("VLM scores a constant", "src/cat_tokenizer/complexity/vlm.py",
             "return (probs.cpu() @ torch.arange(SCORE_MIN, SCORE_MAX + 1, dtype=torch.float32)).tolist()",
             "return [5.0] * len(answers)",
             "tests/test_vlm_describers.py", "scores_itself"),
    Mutation("latent scale 1 instead of 1/std", "tasks/generation/module.py",
             "self.latent_scale[self.dit.ratio_index(r)] = 1.0 / max(std, 1e-6)",
             "self.latent_scale[self.dit.ratio_index(r)] = 1.0",
             "tests/test_generation.py", "scales"),
    Mutation("generate-mode parses the prompt, not the answer", "src/cat_tokenizer/complexity/llm.py",
             'answers = self.tokenizer.batch_decode(out[:, enc["input_ids"].shape[1] :], skip_special_tokens=True)',
             'answers = self.tokenizer.batch_decode(out[:, : enc["input_ids"].shape[1]], skip_special_tokens=True)',
             "tests/test_llm_scorer.py", "generate_mode"),
    Mutation("the colour path never reaches the output", "src/cat_tokenizer/models/nested_vae.py",
             'return F.interpolate(self.colour(z), size=size, mode="bilinear", align_corners=False)', "return None",
             "tests/test_nested_vae.py", "colour"),
    Mutation("decode writes over the source image", "src/cat_tokenizer/codec.py",
             'refuse_inputs(t, [*latents, *sources], "decode: output", "an input latent or the source image of one")', "pass",
             "tests/test_no_data_loss.py", "source_image"),
    Mutation("every epoch replays epoch 0's draw", "src/cat_tokenizer/lit/datamodule.py",
             "seed=self.seed, num_replicas=world, rank=rank, position=partial(trained_batches, self),",
             "seed=self.seed, num_replicas=world, rank=rank,",
             "tests/test_real_data_recipe.py", "new_order"),
    Mutation("a resumed run starts its epoch again", "src/cat_tokenizer/data/sampler.py",
             "self.epoch, done = divmod(max(0, int(trained)), len(self))",
             "self.epoch, done = divmod(max(0, int(trained)), len(self))[0], 0",
             "tests/test_real_data_recipe.py", "new_order"),
    Mutation("probe decodes never reach the estimate", "src/cat_tokenizer/regions/maps.py",
             "ctx.observe(alt, observe(alt, i, k), moved)", "observe(alt, i, k)",
             "tests/test_regions.py", "cheap_ratio"),
    Mutation("the head's probed row starts from the oracle", "tasks/reconstruction/regions.py",
             'start = _estimate(plain, base["d"], signals)  # refined rows start from their source: oracle or head',
             'start = base["d"]',
             "tests/test_regions.py", "block_heads_map"),
    Mutation("decode_regions ignores the region fill's context grids", "src/cat_tokenizer/regions/latent.py",
             "refine_ratios = refine_ratios if refine_ratios is not None else (context or None)",
             "refine_ratios = refine_ratios",
             "tests/test_region_fill.py", "context_grids"),
    Mutation("the shared budget ignores beta", "src/cat_tokenizer/regions/maps.py",
             "w = np.maximum(sse, 1e-6 * max(float(sse.max()), 1e-12)) ** -beta",
             "w = 1.0 / np.maximum(sse, 1e-6 * max(float(sse.max()), 1e-12))",
             "tests/test_regions.py", "beta"),
    Mutation("the shared budget ignores gamma", "src/cat_tokenizer/regions/maps.py",
             "d, cost = np.asarray(d, np.float64) ** gamma, np.asarray(cost, np.float64)",
             "d, cost = np.asarray(d, np.float64), np.asarray(cost, np.float64)",
             "tests/test_regions.py", "gamma"),
]


def _copy(dest: Path) -> None:
    for name in ("src", "tasks", "tests", "configs"):
        shutil.copytree(ROOT / name, dest / name, ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
    shutil.copy(ROOT / "pyproject.toml", dest / "pyproject.toml")
    (dest / "_path").mkdir()
    (dest / "_path" / "cat_tokenizer").symlink_to(dest / "src" / "cat_tokenizer")
    (dest / "_path" / "cat_tasks").symlink_to(dest / "tasks")


def _apply(copy: Path, m: Mutation) -> None:
    path = copy / m.path
    lines = path.read_text().splitlines(keepends=True)
    hits = [i for i, line in enumerate(lines) if line.strip() == m.old]
    if len(hits) != 1:
        raise SystemExit(f"{m.name}: expected the line once in {m.path}, found it {len(hits)} times: {m.old}")
    i = hits[0]
    indent = lines[i][: len(lines[i]) - len(lines[i].lstrip())]
    lines[i] = indent + m.new + "\n"
    path.write_text("".join(lines))


def _pytest(copy: Path, m: Mutation) -> tuple[int, str, float]:
    env = {"PYTHONPATH": str(copy / "_path"), "PATH": str(Path(sys.executable).parent) + ":/usr/bin:/bin",
           "HOME": str(Path.home()), "CAT_TOKENIZER_CACHE": str(copy / ".cache")}
    t0 = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-x", m.tests, "-k", m.k],
                          cwd=copy, env=env, capture_output=True, text=True)
    summary = next((line for line in reversed(proc.stdout.splitlines()) if " in " in line and ("passed" in line or "failed" in line)), "")
    return proc.returncode, summary.strip("= "), time.perf_counter() - t0


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--only", help="run the mutations whose name contains this")
    p.add_argument("--out", default="docs/mutations.md")
    args = p.parse_args(argv)
    chosen = [m for m in MUTATIONS if not args.only or args.only in m.name]
    rows, t_all = [], time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        base = Path(tmp) / "base"
        _copy(base)
        probe = subprocess.run([sys.executable, "-c", "import cat_tokenizer, cat_tasks; print(cat_tokenizer.__file__)"],
                               env={"PYTHONPATH": str(base / "_path")}, capture_output=True, text=True)
        if not probe.stdout.startswith(str(base)):
            raise SystemExit(f"the copy is not what gets imported ({probe.stdout.strip() or probe.stderr[-300:]})")
        for m in chosen:
            code, summary, wall = _pytest(base, m)  # unmutated: the selected tests must pass
            if code != 0:
                rows.append(dict(m=m, verdict="tests fail unmutated", summary=summary, s=wall))
                continue
            copy = Path(tmp) / "mutant"
            shutil.rmtree(copy, ignore_errors=True)
            _copy(copy)
            _apply(copy, m)
            code, summary, wall2 = _pytest(copy, m)
            rows.append(dict(m=m, verdict="killed" if code != 0 else "SURVIVED", summary=summary, s=wall + wall2))
            print(f"{rows[-1]['verdict']:>8}  {m.name}  ({summary}; {rows[-1]['s']:.0f} s)", flush=True)
    survived = [r for r in rows if r["verdict"] != "killed"]
    minutes = (time.perf_counter() - t_all) / 60
    lines = ["# Mutation check", "",
             f"`make mutants` (`python tests/mutations.py`), {time.strftime('%Y-%m-%d')}, {minutes:.0f} min on 2 CPU cores: "
             f"{len(rows)} planted breaks, {len(rows) - len(survived)} killed, {len(survived)} not. Each break is one line "
             "changed in a temporary copy; its tests are a file and a `-k` expression, run first unmutated (they pass) "
             "and then on the mutant (a failure kills it).", "",
             "| break | file | tests | verdict | mutant run |", "|---|---|---|---|---|"]
    lines += [f"| {r['m'].name} | `{r['m'].path}` | `{r['m'].tests} -k \"{r['m'].k}\"` | {r['verdict']} | {r['summary']} |"
              for r in rows]
    if not args.only:
        Path(args.out).write_text("\n".join(lines) + "\n")
        print(f"wrote {args.out}")
    print(f"{len(rows) - len(survived)} of {len(rows)} mutations killed in {minutes:.1f} min")
    return 1 if survived else 0


if __name__ == "__main__":
    sys.exit(main())
