"""The hostile-input table of issue 30, rerun as a new user would: real commands in a scratch folder.

    make hostile            # or: python tests/hostile.py --out docs/hostile.md

Each case sets up files, runs one ``cat-tokenizer`` / ``lightning`` command as a subprocess, and
checks three things: the exit code is the promised one, stderr has no traceback (a refusal is one
``PROG: error: ...`` line, the last one, after any log lines), and every file the case marked precious is byte-identical afterwards and
nothing was renamed. The table it writes is the issue's measure; it exits 1 when any case fails.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch
from PIL import Image

from cat_tokenizer.models.hub import WEIGHTS_NAME, weights_file

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
TINY = ["--model.init_args.vae.init_args.block_out_channels", "[8,16,16,32,32,32]",
        "--model.init_args.vae.init_args.norm_num_groups", "8", "--model.init_args.vae.init_args.layers_per_block", "1",
        "--model.init_args.loss.init_args.disc_channels", "8", "--data.init_args.image_size", "32",
        "--data.init_args.num_workers", "0", "--data.init_args.batch_size", "2", "--trainer.accelerator", "cpu",
        "--trainer.logger", "false", "--trainer.enable_progress_bar", "false"]


@dataclass
class Case:
    group: str
    name: str
    argv: Callable[[Path], list[str]]
    setup: Callable[[Path], list[Path]] = lambda d: []  # returns the precious files
    want: int = 2
    needle: str = ""
    extra_check: Callable[[Path], str] = field(default=lambda d: "")  # "" or what went wrong


def _write(p: Path, data: str | bytes) -> list[Path]:
    """Write a file that is not precious (setup helpers return the precious ones)."""
    p.parent.mkdir(parents=True, exist_ok=True)
    p.write_bytes(data if isinstance(data, bytes) else data.encode())
    return []


def _img(p: Path, size=(40, 24), colour=(200, 40, 40)) -> Path:
    p.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", size, colour).save(p)
    return p


def _tok(d: Path) -> Path:
    from cat_tokenizer import NestedVAE

    torch.manual_seed(0)
    return NestedVAE.from_preset("tiny").save_pretrained(d / "tok")


def _latent(d: Path, z: torch.Tensor, ratio=16, size=(32, 32)) -> Path:
    from cat_tokenizer.io import save_latent

    _tok(d)
    return save_latent(d / "z.safetensors", z, ratio, size)


def _encoded(d: Path) -> list[Path]:
    tok = _tok(d)
    orig = _img(d / "o" / "orig.png")
    subprocess.run([BIN / "cat-tokenizer", "encode", str(orig), "--ratio", "16", "--ckpt", str(tok), "--out", str(d / "lat")],
                   check=True, capture_output=True)
    return [orig]


def _real_run(d: Path) -> list[Path]:
    ck = d / "run" / "checkpoints"
    ck.mkdir(parents=True)
    torch.save({"global_step": 99_999, "state_dict": {}}, ck / "last.ckpt")
    return [ck / "last.ckpt"]


def _weights(d: Path, how: str) -> list[Path]:
    from safetensors.torch import load_file, save_file

    tok = _tok(d)
    state = load_file(weights_file(tok))
    k = "decoder.conv_out.weight"
    state[k] = state[k].fill_(float("nan")) if how == "nan" else (state[k] * 100).to(torch.int8)
    save_file(state, weights_file(tok))
    return [_img(d / "a.png", (32, 32))]


def _config(d: Path, key: str, value) -> list[Path]:
    tok = _tok(d)
    cfg = json.loads((tok / "config.json").read_text())
    (tok / "config.json").write_text(json.dumps({**cfg, key: value}))
    return [_img(d / "a.png", (32, 32))]


def _sqlite_other(d: Path) -> list[Path]:
    import sqlite3

    _img(d / "data" / "a.png")
    db = sqlite3.connect(d / "other.db")
    db.execute("CREATE TABLE accounts (id INTEGER)")
    db.commit()
    db.close()
    return [d / "other.db", d / "data" / "a.png"]


def _folder_cache(d: Path) -> list[Path]:
    _img(d / "data" / "a.png")
    (d / "cache").mkdir()
    (d / "cache" / "keep.txt").write_text("mine")
    return [d / "cache" / "keep.txt"]


def _exif(d: Path) -> list[Path]:
    im = Image.new("RGB", (60, 20), (0, 0, 255))
    exif = im.getexif()
    exif[0x0112] = 6
    im.save(d / "phone.jpg", exif=exif)
    _tok(d)
    return [d / "phone.jpg"]


def _png_size(path: Path, want: tuple[int, int]) -> Callable[[Path], str]:
    def check(d: Path) -> str:
        p = d / path
        return "" if p.is_file() and Image.open(p).size == want else f"{path}: {Image.open(p).size if p.is_file() else 'missing'}"
    return check


def _nonfinite(value: float) -> Callable[[Path], list[Path]]:
    def setup(d: Path) -> list[Path]:
        z = torch.zeros(4, 2, 2)
        z[0, 0, 0] = value
        return [_latent(d, z)]
    return setup


def _ctrl_c_score(d: Path) -> list[Path]:
    for i in range(10):
        _img(d / "data" / f"{i}.png", colour=(20 * i, 0, 0))
    return []


CT = "cat-tokenizer"
CASES = [
    # ------------------------------------------------------------ data loss
    Case("data loss", "fast_dev_run in a real run's folder", lambda d: ["lightning", "fit", "-c", "configs/vae.yaml", *TINY,
         "--trainer.fast_dev_run", "true", "--trainer.default_root_dir", str(d / "run"),
         "--trainer.callbacks+=lightning.pytorch.callbacks.ModelCheckpoint", "--trainer.callbacks.save_last", "true",
         "--trainer.callbacks.dirpath", str(d / "run" / "checkpoints")], _real_run, want=0),
    Case("data loss", "a new run in a real run's folder", lambda d: ["lightning", "fit", "-c", "configs/vae.yaml", *TINY,
         "--trainer.max_steps", "2", "--trainer.default_root_dir", str(d / "run"),
         "--trainer.callbacks+=lightning.pytorch.callbacks.ModelCheckpoint", "--trainer.callbacks.save_last", "true",
         "--trainer.callbacks.dirpath", str(d / "run" / "checkpoints")], _real_run, needle="holds checkpoints of an earlier run"),
    Case("data loss", "decode into the source image's folder", lambda d: [CT, "decode", str(d / "lat" / "orig.safetensors"),
         "--ckpt", str(d / "tok"), "--out", str(d / "o")], _encoded, needle="never overwritten"),
    Case("data loss", "... with --overwrite", lambda d: [CT, "decode", str(d / "lat" / "orig.safetensors"),
         "--ckpt", str(d / "tok"), "--out", str(d / "o"), "--overwrite"], _encoded, needle="never overwritten"),
    Case("data loss", "export --out EXISTING_TOKENIZER", lambda d: [CT, "export", "--ckpt", str(d / "tok"), "--out", str(d / "t2")],
         lambda d: [*(_tok(d).rename(d / "t2") and []), _tok(d) / WEIGHTS_NAME, d / "t2" / WEIGHTS_NAME],
         needle="already holds a tokenizer"),
    Case("data loss", "score DIR --out precious.png", lambda d: [CT, "score", str(d / "data"), "--out", str(d / "data" / "a.png"),
         "--cache", str(d / "c.sqlite"), "-q"], lambda d: [_img(d / "data" / "a.png")], needle="never overwritten"),
    Case("data loss", "score --cache C --out C", lambda d: [CT, "score", str(d / "data"), "--out", str(d / "c.sqlite"),
         "--cache", str(d / "c.sqlite"), "-q", "--overwrite"],
         lambda d: [_img(d / "data" / "a.png"), *(subprocess.run([BIN / CT, "score", str(d / "data"), "--cache", str(d / "c.sqlite"), "-q"],
                                                                 capture_output=True) and []), d / "c.sqlite"], needle="never overwritten"),
    Case("data loss", "score --cache DIR/im00.png", lambda d: [CT, "score", str(d / "data"), "--cache", str(d / "data" / "a.png"), "-q"],
         lambda d: [_img(d / "data" / "a.png")], needle="not a SQLite file"),
    Case("data loss", "score --cache NON_EMPTY_FOLDER", lambda d: [CT, "score", str(d / "data"), "--cache", str(d / "cache"), "-q"],
         _folder_cache, needle="is a folder"),
    Case("data loss", "score --cache OTHER_SQLITE_DB", lambda d: [CT, "score", str(d / "data"), "--cache", str(d / "other.db"), "-q"],
         _sqlite_other, needle="another SQLite database"),
    # ------------------------------------------------------------ silent wrong output
    Case("silent wrong", "decode a latent with a NaN", lambda d: [CT, "decode", str(d / "z.safetensors"), "--ckpt", str(d / "tok"),
         "--out", str(d / "o")], _nonfinite(float("nan")), needle="NaN or infinite"),
    Case("silent wrong", "decode a latent with an Inf", lambda d: [CT, "decode", str(d / "z.safetensors"), "--ckpt", str(d / "tok"),
         "--out", str(d / "o")], _nonfinite(float("inf")), needle="NaN or infinite"),
    Case("silent wrong", "decode a latent with 1e30", lambda d: [CT, "decode", str(d / "z.safetensors"), "--ckpt", str(d / "tok"),
         "--out", str(d / "o")], _nonfinite(1e30), needle="beyond any trained latent"),
    Case("silent wrong", "score --thresholds nan,inf", lambda d: [CT, "score", str(d / "data"), "--thresholds", "nan,inf",
         "--cache", str(d / "c.sqlite"), "-q"], lambda d: [_img(d / "data" / "a.png")], needle="finite"),
    Case("silent wrong", "score --overrides naming ../outside", lambda d: [CT, "score", str(d / "data"), "--overrides",
         str(d / "o.csv"), "--cache", str(d / "c.sqlite"), "-q"],
         lambda d: [_img(d / "data" / "a.png"), *_write(d / "o.csv", "path,ratio\n../b.png,8\n")], needle="outside"),
    Case("silent wrong", "EXIF orientation 6 (60x20 stored)", lambda d: [CT, "encode", str(d / "phone.jpg"), "--ratio", "8",
         "--ckpt", str(d / "tok"), "--out", str(d / "lat")], _exif, want=0,
         extra_check=lambda d: "" if json.loads(json.dumps(_meta(d / "lat" / "phone.safetensors")))["height"] == "60" else "not rotated"),
    Case("silent wrong", "decode with another 16-ch tokenizer", lambda d: [CT, "decode", str(d / "lat" / "orig.safetensors"),
         "--ckpt", str(d / "other"), "--out", str(d / "dec")],
         lambda d: [*_encoded(d), *(_other_tok(d) and [])], needle="made by tokenizer"),
    Case("silent wrong", "NaN weights in a tokenizer folder", lambda d: [CT, "encode", str(d / "a.png"), "--ratio", "8",
         "--ckpt", str(d / "tok"), "--out", str(d / "l")], lambda d: _weights(d, "nan"), needle="NaN or infinite"),
    Case("silent wrong", "int8 weights in a tokenizer folder", lambda d: [CT, "encode", str(d / "a.png"), "--ratio", "8",
         "--ckpt", str(d / "tok"), "--out", str(d / "l")], lambda d: _weights(d, "int8"), needle="is int8"),
    # ------------------------------------------------------------ tracebacks
    *[Case("traceback", f"decode a {dt} latent", lambda d: [CT, "decode", str(d / "z.safetensors"), "--ckpt", str(d / "tok"),
           "--out", str(d / "o")], (lambda t: lambda d: [_latent(d, torch.zeros(4, 2, 2).to(t))])(getattr(torch, dt)),
           want=0 if dt.startswith(("float", "bfloat")) else 2, needle="" if dt.startswith(("float", "bfloat")) else "holds floats",
           extra_check=_png_size(Path("o/z.png"), (32, 32)) if dt.startswith(("float", "bfloat")) else (lambda d: ""))
      for dt in ("float16", "bfloat16", "float64", "int32", "bool")],
    Case("traceback", "a zero-byte .ckpt", lambda d: [CT, "encode", str(d / "a.png"), "--ratio", "8", "--ckpt", str(d / "z.ckpt"),
         "--out", str(d / "l")], lambda d: [_img(d / "a.png"), *_write(d / "z.ckpt", b"")], needle="the file is empty"),
    Case("traceback", "a .ckpt without a state_dict", lambda d: [CT, "encode", str(d / "a.png"), "--ratio", "8", "--ckpt",
         str(d / "n.ckpt"), "--out", str(d / "l")],
         lambda d: [_img(d / "a.png"), *(torch.save({"nested_vae_config": {}, "state_dict": None}, d / "n.ckpt") or [])],
         needle="no usable 'state_dict'"),
    *[Case("traceback", f"config {k}: {v}", lambda d: [CT, "encode", str(d / "a.png"), "--ratio", "8", "--ckpt", str(d / "tok"),
           "--out", str(d / "l")], (lambda k, v: lambda d: _config(d, k, v))(k, v), needle="must be")
      for k, v in (("norm_num_groups", 0), ("norm_num_groups", -8), ("latent_channels", -1), ("ratios", []))],
    Case("traceback", "--out is a file", lambda d: [CT, "encode", str(d / "a.png"), "--ratio", "8", "--ckpt", str(d / "tok"),
         "--out", str(d / "f")], lambda d: [_img(d / "a.png"), *_write(d / "f", "x"), *(_tok(d) and [])], needle="is a file"),
    Case("traceback", "--out under a file", lambda d: [CT, "score", str(d / "data"), "--out", str(d / "f" / "s.csv"),
         "--cache", str(d / "c.sqlite"), "-q"], lambda d: [_img(d / "data" / "a.png"), *_write(d / "f", "x")]),
    Case("traceback", "a symlink loop as an input", lambda d: [CT, "encode", str(d / "loop.png"), "--ratio", "8", "--ckpt",
         str(d / "tok"), "--out", str(d / "l")], lambda d: [*(os.symlink(d / "loop.png", d / "loop.png") or []), *(_tok(d) and [])],
         needle="loop.png"),
    *[Case("traceback", " ".join(a), (lambda a: lambda d: [CT, *a[:1], *([str(d)] if a[0] in ("score", "rd") else []), *a[1:]])(a),
           needle="must be") for a in (("score", "--image-size", "0"), ("rd", "--image-size", "0"), ("demo", "--image-size", "0"),
                                       ("demo", "--per-kind", "-1"), ("demo", "--show", "-2"))],
    Case("traceback", "malformed evaluator YAML", lambda d: [CT, "score", str(d / "data"), "--evaluator", str(d / "e.yaml"), "-q"],
         lambda d: [_img(d / "data" / "a.png"), *_write(d / "e.yaml", "init_args: [unclosed")], needle="not valid YAML"),
    Case("traceback", "a corrupt lightning --ckpt_path", lambda d: ["lightning", "fit", "-c", "configs/vae.yaml", *TINY,
         "--trainer.default_root_dir", str(d / "r"), "--ckpt_path", str(d / "bad.ckpt")],
         lambda d: [*_write(d / "bad.ckpt", b"PK\x03\x04 garbage")], needle="not a readable checkpoint"),
    Case("traceback", "--data.image_size 0", lambda d: ["lightning", "fit", "-c", "configs/vae.yaml", *TINY,
         "--data.init_args.image_size", "0", "--trainer.default_root_dir", str(d / "r")], needle="image_size must be a positive"),
]


def _other_tok(d: Path) -> Path:
    from cat_tokenizer import NestedVAE

    torch.manual_seed(1)
    return NestedVAE.from_preset("tiny").save_pretrained(d / "other")


def _meta(p: Path) -> dict:
    from safetensors import safe_open

    with safe_open(str(p), framework="pt") as f:
        return f.metadata()


def _digest(files: list[Path]) -> dict[str, str]:
    return {str(p): hashlib.md5(p.read_bytes()).hexdigest() if p.is_file() else "missing" for p in files}


def run_case(case: Case) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        d = Path(tmp)
        precious = case.setup(d)
        before, names = _digest(precious), sorted(p.relative_to(d).as_posix() for p in d.rglob("*"))
        argv = case.argv(d)
        t0 = time.perf_counter()
        proc = subprocess.run([str(BIN / argv[0]), *argv[1:]], cwd=ROOT, capture_output=True, text=True,
                              env={**os.environ, "CAT_TOKENIZER_CACHE": str(d / ".cache")})
        wall = time.perf_counter() - t0
        said = [ln for ln in proc.stderr.splitlines() if ln.strip()]
        lines = [ln for ln in said if re.match(r"(cat-tokenizer|lightning)[^:]*: (error|interrupted)", ln)]
        kept = _digest(precious) == before
        after = {p.relative_to(d).as_posix() for p in d.rglob("*")}
        renamed = [n for n in names if n not in after]
        problems = []
        if proc.returncode != case.want:
            problems.append(f"exit {proc.returncode}, want {case.want}")
        if "Traceback" in proc.stderr:
            problems.append("traceback")
        if case.want == 2 and (len(lines) != 1 or said[-1] != lines[0]):
            problems.append(f"{len(lines)} error lines" if len(lines) != 1 else "the error is not the last line")
        if case.needle and not any(case.needle in ln for ln in lines):
            problems.append(f"no '{case.needle}' in the message")
        if not kept or renamed:
            problems.append(f"changed or renamed: {renamed or 'precious file content'}")
        if not problems and (msg := case.extra_check(d)):
            problems.append(msg)
        return dict(group=case.group, case=case.name, exit=proc.returncode, message=(lines[-1] if lines else "").replace(str(d), "SCRATCH")[:110],
                    intact="yes" if kept and not renamed else "NO", ok="ok" if not problems else "; ".join(problems), s=wall)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", default="docs/hostile.md")
    args = p.parse_args(argv)
    rows = []
    for case in CASES:
        rows.append(run_case(case))
        r = rows[-1]
        print(f"{r['ok']:>4}  exit {r['exit']}  {r['group']}: {r['case']}  ({r['s']:.1f} s)", flush=True)
    bad = [r for r in rows if r["ok"] != "ok"]
    lines = ["# Hostile inputs, rerun", "",
             f"`make hostile` (`python tests/hostile.py`), {time.strftime('%Y-%m-%d')}: {len(rows)} cases of issue 30, each a real "
             f"command in a scratch folder; {len(rows) - len(bad)} as promised, {len(bad)} not. A case is as promised when the exit "
             "code is the one promised (2: refused), stderr holds no traceback and ends in its one error line, and every file the case "
             "marked precious is byte-identical with nothing renamed. The policy: [data](data.md#what-a-command-may-write).", "",
             "| group | case | exit | intact | result | message |", "|---|---|---|---|---|---|"]
    lines += [f"| {r['group']} | {r['case']} | {r['exit']} | {r['intact']} | {r['ok']} | {r['message'].replace('|', '/')} |" for r in rows]
    Path(args.out).write_text("\n".join(lines) + "\n")
    print(f"{len(rows) - len(bad)} of {len(rows)} cases as promised; wrote {args.out}")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
