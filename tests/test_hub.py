"""Hub-standard loading and saving (diffusers' ModelMixin / ConfigMixin under NestedVAE): folders,
shipped names, the local Hub cache offline, revisions, subfolders, fp16 variants, folders written
before the move, and the model card."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import one_line_error
from safetensors.torch import save_file

from cat_tokenizer import NestedVAE
from cat_tokenizer.cli import tools
from cat_tokenizer.errors import InputNotFound
from cat_tokenizer.models.hub import LEGACY_WEIGHTS_NAME, WEIGHTS_NAME

X = torch.linspace(-1, 1, 3 * 48 * 40).reshape(1, 3, 48, 40)


def _recon(vae: NestedVAE, r: int = 16) -> torch.Tensor:
    return vae.decode(vae.encode(X, r).mode(), r)


def test_round_trip_is_bit_exact_at_fp32(tiny_vae, tmp_path):
    folder = tiny_vae.save_pretrained(tmp_path / "t")
    loaded = NestedVAE.from_pretrained(folder)
    a, b = tiny_vae.state_dict(), loaded.state_dict()
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) and a[k].dtype == b[k].dtype for k in a)
    assert loaded.fingerprint() == tiny_vae.fingerprint()
    assert json.loads((folder / "config.json").read_text())["_class_name"] == "NestedVAE"


def _write_legacy(vae: NestedVAE, folder: Path) -> Path:
    """A folder as the hand-written save_pretrained wrote it: model.safetensors holding diffusers'
    Downsample2D alias names (Conv2d_0), config.json of plain arguments, no card."""
    folder.mkdir(parents=True)
    state = {(k.replace(".conv.", ".Conv2d_0.") if "downsamplers" in k else k): v.contiguous() for k, v in vae.state_dict().items()}
    save_file(state, folder / LEGACY_WEIGHTS_NAME, metadata={"format": "pt", "class": "NestedVAE"})
    (folder / "config.json").write_text(json.dumps({k: v for k, v in vae.init_config().items()
                                                    if k not in ("colour_path", "latent_stats", "ratio_head")}))
    return folder


def test_folders_written_before_the_move_still_load_and_keep_their_fingerprint(tiny_vae, tmp_path):
    tiny_vae.eval()
    old = _write_legacy(tiny_vae, tmp_path / "old")
    loaded = NestedVAE.from_pretrained(old)
    assert torch.equal(_recon(loaded), _recon(tiny_vae))
    assert loaded.fingerprint() == tiny_vae.fingerprint()
    # re-saving into it replaces the old weights file (no stale copy an older version would read)
    loaded.save_pretrained(old)
    assert not (old / LEGACY_WEIGHTS_NAME).exists() and (old / WEIGHTS_NAME).is_file()
    assert NestedVAE.from_pretrained(old).fingerprint() == tiny_vae.fingerprint()


def test_a_lightning_checkpoint_with_alias_keys_loads_strictly(tiny_vae):
    """Checkpoints of runs started before the move hold both names (conv and Conv2d_0)."""
    state = tiny_vae.state_dict()
    both = {**state, **{k.replace(".conv.", ".Conv2d_0."): v for k, v in state.items() if "downsamplers" in k}}
    assert len(both) > len(state)
    fresh = NestedVAE.from_preset("tiny")
    fresh.load_state_dict(both, strict=True)
    assert fresh.fingerprint() == tiny_vae.fingerprint()


def test_the_shipped_name_loads_offline_and_keeps_its_fingerprint():
    vae = NestedVAE.from_pretrained("cat-small")
    assert vae.config["latent_channels"] == 16 and not vae.training
    assert NestedVAE.from_pretrained("cat-small", torch_dtype=torch.float16).dtype == torch.float16


def test_fp16_variant_and_torch_dtype(tiny_vae, tmp_path):
    folder = tiny_vae.save_pretrained(tmp_path / "t")
    tiny_vae.save_pretrained(folder, dtype=torch.float16, variant="fp16")
    assert (folder / "diffusion_pytorch_model.fp16.safetensors").stat().st_size < (folder / WEIGHTS_NAME).stat().st_size * 0.6
    half = NestedVAE.from_pretrained(folder, variant="fp16", torch_dtype=torch.float16)
    assert half.dtype == torch.float16
    full = NestedVAE.from_pretrained(folder, variant="fp16")  # fp16 file, fp32 model: cast on load
    assert full.dtype == torch.float32
    assert torch.equal(full.state_dict()["decoder.conv_out.weight"], tiny_vae.state_dict()["decoder.conv_out.weight"].half().float())
    with pytest.raises(InputNotFound, match="'bf16' variant's weights is missing"):
        NestedVAE.from_pretrained(folder, variant="bf16")


def test_the_model_card_comes_from_the_template_and_a_written_one_is_kept(tiny_vae, tmp_path):
    folder = tiny_vae.save_pretrained(tmp_path / "t")
    card = (folder / "README.md").read_text()
    assert card.startswith("---\n") and "library_name: cat-tokenizer" in card
    assert "256 at 8x, 64 at 16x, 16 at 32x" in card and "at_ratio(16)" in card
    (folder / "README.md").write_text("my card")
    tiny_vae.save_pretrained(folder)
    assert (folder / "README.md").read_text() == "my card"


_HUB_SCRIPT = """
import json, sys, torch
from cat_tokenizer import NestedVAE
from cat_tokenizer.errors import InputNotFound
out = {}
main = NestedVAE.from_pretrained("cat/tiny", subfolder="vae")
out["main"] = main.fingerprint()
out["v1"] = NestedVAE.from_pretrained("cat/tiny", subfolder="vae", revision="v1").fingerprint()
half = NestedVAE.from_pretrained("cat/tiny", subfolder="vae", variant="fp16", torch_dtype=torch.float16)
out["fp16"] = str(half.dtype)
for name, kw in (("missing", {}), ("bad_revision", {"revision": "v9"})):
    try:
        NestedVAE.from_pretrained("cat/nothing" if name == "missing" else "cat/tiny", subfolder="vae", **kw)
        out[name] = "loaded"
    except InputNotFound as err:
        out[name] = str(err)
print(json.dumps(out))
"""


def _snapshot(cache: Path, commit: str, ref: str, vae: NestedVAE, fp16: bool = False) -> None:
    """A Hub cache entry as huggingface_hub lays it out: refs/<ref> names the commit, snapshots/<commit>/."""
    repo = cache / "models--cat--tiny"
    (repo / "refs").mkdir(parents=True, exist_ok=True)
    (repo / "refs" / ref).write_text(commit)
    vae.save_pretrained(repo / "snapshots" / commit / "vae")
    if fp16:
        vae.save_pretrained(repo / "snapshots" / commit / "vae", dtype=torch.float16, variant="fp16")


def test_hub_id_from_the_local_cache_offline_with_revision_subfolder_and_variant(tmp_path):
    cache = tmp_path / "hub"
    torch.manual_seed(1)
    a, b = NestedVAE.from_preset("tiny"), NestedVAE.from_preset("tiny")
    _snapshot(cache, "a" * 40, "main", a, fp16=True)
    _snapshot(cache, "b" * 40, "v1", b)
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_HUB_CACHE": str(cache), "HF_HOME": str(tmp_path / "home")}
    res = subprocess.run([sys.executable, "-c", _HUB_SCRIPT], env=env, capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr[-2000:]
    got = json.loads(res.stdout.strip().splitlines()[-1])
    assert got["main"] == a.fingerprint() and got["v1"] == b.fingerprint() and got["main"] != got["v1"]
    assert got["fp16"] == "torch.float16"
    for key in ("missing", "bad_revision"):
        assert "not a local folder, and the hub said" in got[key] and "\n" not in got[key]


def test_the_shipped_card_is_what_the_card_command_writes(tmp_path, capsys):
    """cat-small's README.md is generated (facts from config.json, the demo report, NOTES.md), never edited by hand:
    regenerating it into a copy gives the same text (make ship-small runs the same command)."""
    import shutil

    from cat_tokenizer.models.hub import bundled_path

    root = Path(__file__).resolve().parents[1]
    shipped = bundled_path("cat-small")
    copy = tmp_path / "cat-small"
    shutil.copytree(shipped, copy)
    assert tools.main(["card", str(copy), "--measured", str(root / "docs" / "reports" / "demo-dev-128.md"),
                       "--notes", str(shipped / "NOTES.md")]) == 0
    assert (copy / "README.md").read_text() == (shipped / "README.md").read_text()
    text = (copy / "README.md").read_text()
    vae = NestedVAE.from_pretrained(copy)  # the card's facts are the weights' own
    alone, extra = vae.num_params(with_head=False), vae.num_params() - vae.num_params(with_head=False)
    assert f"| parameters | {alone / 1e6:.2f}M (+{extra / 1e6:.2f}M in its heads and region fill) |" in text
    assert f"| fingerprint | `{vae.fingerprint(with_head=False)}`" in text
    assert "### cat-tokenizer demo" in text and "Files: " not in text and "## Limits" in text
    assert tools.main(["card", str(copy), "--notes", str(tmp_path / "missing.md")]) == 2
    one_line_error(capsys, "--notes", "no such file")
