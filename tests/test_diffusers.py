"""CAT's tokenizer inside diffusers: ``NestedVAE.at_ratio(r)`` has AutoencoderKL's surface, samples
inside a real ``DiTPipeline``, and carries per-ratio latent statistics that ``cat-tokenizer
latent-stats`` measures and the DiT module reads."""

import re
import shutil
from pathlib import Path

import pytest
import torch
from conftest import one_line_error, write_images
from diffusers import DDIMScheduler, DiTPipeline, DiTTransformer2DModel

from cat_tokenizer import NestedVAE
from cat_tokenizer.cli import tools
from cat_tokenizer.errors import UserInputError

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def cat_small():
    return NestedVAE.from_pretrained("cat-small")


@pytest.mark.parametrize("ratio", [8, 16, 32])
def test_dit_pipeline_samples_with_the_view_at_every_ratio(cat_small, ratio):
    view = cat_small.at_ratio(ratio)
    side = 128 // ratio  # the latent grid of a 128-px image: 16, 8, 4
    torch.manual_seed(0)
    dit = DiTTransformer2DModel(num_attention_heads=2, attention_head_dim=8, in_channels=view.config.latent_channels,
                                out_channels=2 * view.config.latent_channels, num_layers=1, sample_size=side, patch_size=2,
                                norm_num_groups=16)
    pipe = DiTPipeline(transformer=dit, vae=view, scheduler=DDIMScheduler())
    out = pipe(class_labels=[1, 2], num_inference_steps=2, guidance_scale=4.0, generator=torch.Generator().manual_seed(0),
               output_type="np").images
    assert out.shape == (2, 128, 128, 3) and 0 <= out.min() and out.max() <= 1
    assert out.std() > 0  # a decoded picture, not a constant


@pytest.mark.parametrize("ratio", [8, 16, 32])
def test_the_view_encodes_and_decodes_exactly_as_the_nested_vae(tiny_vae, ratio):
    tiny_vae.eval()
    view = tiny_vae.at_ratio(ratio)
    x = torch.rand(3, 3, 64, 48) * 2 - 1
    post = view.encode(x).latent_dist
    assert torch.equal(post.mode(), tiny_vae.encode(x, ratio).mode())
    z = post.mode()
    assert torch.equal(view.decode(z).sample, tiny_vae.decode(z, ratio))
    view.enable_slicing()  # one image at a time: the same numbers
    assert torch.allclose(view.decode(z).sample, tiny_vae.decode(z, ratio), atol=1e-4)
    assert torch.allclose(view.encode(x).latent_dist.mode(), z, atol=1e-4)
    assert view(x).sample.shape == x.shape


def test_the_view_has_autoencoderkl_config_and_clear_limits(tiny_vae, caplog):
    view = tiny_vae.at_ratio(16)
    assert "no latent statistics at 16x" in caplog.text  # said, not silent: the factors default to 1 and 0
    cfg = view.config
    assert 2 ** (len(cfg.block_out_channels) - 1) == 16  # what pipelines use as the VAE's scale factor
    assert cfg.latent_channels == 4 and (cfg.scaling_factor, cfg.shift_factor) == (1.0, 0.0)
    assert view.dtype == torch.float32 and view.device.type == "cpu"
    assert view.half().nested.decoder.conv_out.weight.dtype == torch.float16  # the view moves the shared weights
    tiny_vae.float()
    with pytest.raises(UserInputError, match="tiling is not supported"):
        view.enable_tiling()
    with pytest.raises(UserInputError, match="save the tokenizer itself"):
        view.save_pretrained("x")
    with pytest.raises(UserInputError, match="choose from|valid"):
        tiny_vae.at_ratio(4)


def test_latent_stats_give_unit_std_where_they_were_measured(tiny_vae, tmp_path, capsys):
    images = tmp_path / "images"
    write_images(images, n=8, size=64)
    tok = tiny_vae.save_pretrained(tmp_path / "tok")
    assert tools.main(["latent-stats", str(images), "--ckpt", str(tok), "--image-size", "64", "--write"]) == 0
    assert "wrote latent_stats" in capsys.readouterr().out
    vae = NestedVAE.from_pretrained(tok)
    assert vae.fingerprint() == tiny_vae.fingerprint()  # statistics live in the config, the weights are unchanged
    from cat_tokenizer.data.images import list_images, load_rgb
    from cat_tokenizer.data.transforms import image_transform

    tf = image_transform(64, train=False)
    x = torch.stack([tf(load_rgb(p)) for p in list_images(images)])
    for r in vae.ratios:
        view = vae.at_ratio(r)
        z = view.encode(x).latent_dist.mode()
        scaled = (z - view.config.shift_factor) * view.config.scaling_factor
        assert scaled.std().item() == pytest.approx(1.0, rel=0.05) and abs(scaled.mean().item()) < 0.05, r
    card_stats = vae.config["latent_stats"]
    assert card_stats["measured_on"].endswith("(8 images, 64 px, posterior mean)")
    # --write needs a folder: the shipped name and a .ckpt get one line each
    assert tools.main(["latent-stats", str(images), "--ckpt", "cat-small", "--write"]) == 2
    one_line_error(capsys, "pass the folder path")
    assert tools.main(["latent-stats", str(images), "--ckpt", str(tmp_path / "run.ckpt"), "--write"]) == 2
    one_line_error(capsys, "export a .ckpt first")


def test_the_dit_module_uses_the_tokenizers_stored_scales(tmp_path):
    """A tokenizer with latent_stats that made the cache: the DiT trains with its scaling factors."""
    from test_generation import _encode, _fit  # the generation tests' real configs

    from cat_tasks.generation import load_dit

    images = tmp_path / "images"
    write_images(images, n=6, size=64)
    torch.manual_seed(0)
    tok = NestedVAE.from_preset("tiny").save_pretrained(tmp_path / "vae")
    stats = {"measured_on": "test", "ratios": {str(r): {"scaling_factor": 0.5 + r / 100, "shift_factor": 0.0} for r in (8, 16, 32)}}
    NestedVAE.from_pretrained(tok).set_latent_stats(stats).save_config(tok)
    ratios_csv = tmp_path / "ratios.csv"
    ratios_csv.write_text("path,ratio\n" + "".join(f"class{i % 2}/img{i}.png,{(8, 16, 32)[i % 3]}\n" for i in range(6)))
    assert _encode(images, tok, tmp_path / "latents", f"csv:{ratios_csv}") == 0
    assert _fit({"cache": tmp_path / "latents", "vae": tok}, tmp_path / "run", ["--trainer.max_steps", "1"]) == 0
    module = load_dit(next((tmp_path / "run").rglob("last.ckpt")))
    assert module.latent_scale.tolist() == pytest.approx([0.58, 0.66, 0.82])


def test_the_diffusers_doc_page_runs(tmp_path, monkeypatch):
    """docs/diffusers.md's code, as written, with its step counts cut down."""
    page = (ROOT / "docs" / "diffusers.md").read_text()
    code = "\n".join(re.findall(r"```python\n(.*?)```", page, flags=re.S))
    code = re.sub(r"^(STEPS|SAMPLE_STEPS) = \d+", r"\1 = 2", code, flags=re.M)
    assert "STEPS = 2" in code and "SAMPLE_STEPS = 2" in code
    monkeypatch.chdir(tmp_path)
    scope: dict = {}
    exec(compile(code, "docs/diffusers.md", "exec"), scope)
    assert scope["images"].shape == (1, 128, 128, 3)
    shutil.rmtree(tmp_path, ignore_errors=True)
