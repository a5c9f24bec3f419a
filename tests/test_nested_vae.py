import json
import math

import pytest
import torch

from cat_tokenizer import NestedVAE
from cat_tokenizer.models.ratio_head import RatioHead
from cat_tokenizer.ratios import RatioAssignment, check_ratio


@pytest.mark.parametrize("size", [(64, 64), (70, 45), (33, 97)])
@pytest.mark.parametrize("ratio", [8, 16, 32])
def test_latent_shape_and_roundtrip_shape(tiny_vae, size, ratio):
    x = torch.rand(2, 3, *size) * 2 - 1
    post = tiny_vae.encode(x, ratio)
    z = post.sample()
    assert z.shape == (2, 4, math.ceil(size[0] / ratio), math.ceil(size[1] / ratio))
    assert post.mode().shape == z.shape and post.input_size == size
    assert tiny_vae.decode(z, ratio, size=post.input_size).shape == x.shape
    # Without a size the decoder returns the padded grid.
    assert tiny_vae.decode(z, ratio).shape[-2:] == (z.shape[-2] * ratio, z.shape[-1] * ratio)


def test_invalid_ratio_lists_valid_ones(tiny_vae):
    x = torch.zeros(1, 3, 32, 32)
    with pytest.raises(ValueError, match=r"valid ratios are \[8, 16, 32\]"):
        tiny_vae.encode(x, 4)
    with pytest.raises(ValueError, match="valid ratios"):
        tiny_vae.decode(torch.zeros(1, 4, 2, 2), 64)
    with pytest.raises(ValueError, match="shape"):
        tiny_vae.encode(torch.zeros(3, 32, 32), 8)
    with pytest.raises(ValueError, match="valid ratios"):
        check_ratio("16")
    assert RatioAssignment.parse("fixed:16") == RatioAssignment("fixed", ratio=16) == RatioAssignment.parse({"mode": "fixed", "ratio": 16})
    assert str(RatioAssignment.parse("csv:a.csv")) == "csv:a.csv" and RatioAssignment.parse("adaptive").mode == "complexity"
    for bad in ("fixed:12", "fixed", "random", {"mode": "fixed"}, {"mode": "uniform", "csv": "a.csv"}):
        with pytest.raises(ValueError):
            RatioAssignment.parse(bad)


def test_config_validation():
    with pytest.raises(ValueError, match="norm_num_groups"):
        NestedVAE(block_out_channels=(8, 12, 16, 16, 16, 16), norm_num_groups=8)
    with pytest.raises(ValueError, match="more stages"):
        NestedVAE(block_out_channels=(8, 16, 16, 16), norm_num_groups=8)
    with pytest.raises(ValueError, match="unknown NestedVAE preset"):
        NestedVAE.from_preset("huge")


def _stages_run(vae, ratio):
    ran = set()
    hooks = [s.register_forward_hook(lambda m, i, o, k=k: ran.add(k)) for k, s in enumerate(vae.encoder.stages)]
    dec = [s.register_forward_hook(lambda m, i, o, k=k: ran.add(("dec", k))) for k, s in enumerate(vae.decoder.stages)]
    z = vae.encode(torch.zeros(1, 3, 64, 64), ratio).mode()
    vae.decode(z, ratio)
    for h in hooks + dec:
        h.remove()
    return ran


@pytest.mark.parametrize("ratio,level", [(8, 3), (16, 4), (32, 5)])
def test_only_needed_stages_run(tiny_vae, ratio, level):
    ran = _stages_run(tiny_vae, ratio)
    assert {k for k in ran if isinstance(k, int)} == set(range(level + 1))
    # The decoder enters at the same level: an 8x latent skips the two coarsest up stages.
    assert {k[1] for k in ran if isinstance(k, tuple)} == set(range(level + 1))


@pytest.mark.parametrize("ratio", [8, 16, 32])
def test_gradients_reach_shared_blocks(tiny_vae, ratio):
    tiny_vae.zero_grad(set_to_none=True)
    x = torch.rand(2, 3, 64, 64) * 2 - 1
    x_hat, post = tiny_vae(x, ratio)
    ((x_hat - x).abs().mean() + post.kl().mean() * 1e-3).backward()
    shared = [tiny_vae.encoder.mid, tiny_vae.encoder.norm_out, tiny_vae.encoder.conv_out, tiny_vae.decoder.conv_in,
              tiny_vae.decoder.mid, tiny_vae.encoder.exits[str(ratio)], tiny_vae.decoder.entries[str(ratio)]]
    for module in shared:
        for name, p in module.named_parameters():
            assert p.grad is not None and p.grad.abs().sum() > 0, f"no gradient at {name} for ratio {ratio}"
    for r in tiny_vae.ratios:
        if r != ratio:  # other exits are untouched
            assert all(p.grad is None for p in tiny_vae.encoder.exits[str(r)].parameters())


def test_save_load_roundtrip_identical(tiny_vae, tmp_path):
    tiny_vae.eval()
    x = torch.rand(1, 3, 48, 40) * 2 - 1
    d = tiny_vae.save_pretrained(tmp_path / "vae")
    assert sorted(p.name for p in d.iterdir()) == ["README.md", "config.json", "diffusion_pytorch_model.safetensors"]
    loaded = NestedVAE.from_pretrained(d)
    for r in (8, 16, 32):
        a = tiny_vae.decode(tiny_vae.encode(x, r).mode(), r)
        b = loaded.decode(loaded.encode(x, r).mode(), r)
        assert torch.equal(a, b)


def test_from_pretrained_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="save_pretrained"):
        NestedVAE.from_pretrained(tmp_path)  # a folder without the files
    with pytest.raises(FileNotFoundError, match="tokenizer not found: .*missing .no such file or folder"):
        NestedVAE.from_pretrained(tmp_path / "missing")  # a path: never sent to the hub
    with pytest.raises(FileNotFoundError, match="tokenizer not found: run.ckpt"):
        NestedVAE.from_pretrained("run.ckpt")
    with pytest.raises(FileNotFoundError, match="not a local folder, and the hub said"):
        NestedVAE.from_pretrained("no-such-owner/no-such-tokenizer", local_files_only=True)  # a hub id, offline


def test_gradient_checkpointing_matches(tiny_vae):
    x = torch.rand(1, 3, 32, 32) * 2 - 1

    def forward_and_grads() -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        tiny_vae.zero_grad(set_to_none=True)
        out, _ = tiny_vae(x, 16, sample=False)
        out.pow(2).mean().backward()
        return out.detach(), {n: p.grad.clone() for n, p in tiny_vae.named_parameters() if p.grad is not None}

    a, grads_a = forward_and_grads()
    tiny_vae.enable_gradient_checkpointing()
    b, grads_b = forward_and_grads()
    assert torch.allclose(a, b, atol=1e-6)
    assert grads_a.keys() == grads_b.keys() and len(grads_a) > 10  # the same parameters get gradients ...
    for name in grads_a:  # ... of the same value: recomputation in backward changes nothing
        assert torch.allclose(grads_a[name], grads_b[name], atol=1e-6, rtol=1e-4), name


@pytest.mark.parametrize("size", [(45, 70), (33, 97)])
def test_padding_and_crop_back_on_sizes_not_multiple_of_32(tiny_vae, size):
    x = torch.rand(2, 3, *size) * 2 - 1
    for r in (8, 16, 32):
        post = tiny_vae.encode(x, r)
        assert post.mode().shape[-2:] == (-(-size[0] // r), -(-size[1] // r)) and post.input_size == size
        out = tiny_vae.decode(post.mode(), r, size=post.input_size)
        assert out.shape[-2:] == size
        # the padded input is x with its last row/column replicated: the crop equals decoding x padded by hand
        pad = torch.nn.functional.pad(x, (0, (-size[1]) % r, 0, (-size[0]) % r), mode="replicate")
        full = tiny_vae.decode(tiny_vae.encode(pad, r).mode(), r)
        assert torch.allclose(out, full[..., : size[0], : size[1]], atol=1e-5)
    head = RatioHead(tiny_vae.config["block_out_channels"][: tiny_vae.trunk_level() + 1], thresholds=(4.0, 7.0))
    tiny_vae.attach_ratio_head(head)
    posts = tiny_vae.encode(x, "auto")
    for i, post in enumerate(posts):  # auto pads to the largest ratio, but each latent crops back to the input size
        assert post.input_size == size
        out = tiny_vae.decode(post.mode(), post.ratio, size=post.input_size)
        assert out.shape[-2:] == size
        # the same as padding to a multiple of 32 by hand and encoding at the chosen ratio
        pad32 = torch.nn.functional.pad(x[i : i + 1], (0, (-size[1]) % 32, 0, (-size[0]) % 32), mode="replicate")
        ref = tiny_vae.encode(pad32, post.ratio).mode()
        assert torch.allclose(post.mode(), ref, atol=1e-4)
        assert torch.allclose(tiny_vae.decode(ref, post.ratio)[..., : size[0], : size[1]], out, atol=1e-4)


# ---------------------------------------------------------------- the colour path (v2)
def test_colour_path_starts_as_the_plain_tail_learns_and_is_saved(tiny_vae, tmp_path):
    """A new colour path is the plain tail (zero-initialised); it trains, round-trips through
    save_pretrained, and a v1 config (no colour_path key) still loads as the plain tail."""
    torch.manual_seed(0)
    v2 = NestedVAE.from_preset("tiny", colour_path="latent")
    plain = {k: v for k, v in v2.state_dict().items() if not k.startswith("decoder.colour")}
    tiny_vae.load_state_dict(plain)
    x = torch.rand(2, 3, 40, 72) * 2 - 1
    assert torch.equal(v2.eval().reconstruct(x, 16), tiny_vae.eval().reconstruct(x, 16))
    # one optimiser step moves the colour conv (gradient flows through the zero init)
    opt = torch.optim.SGD(v2.parameters(), lr=0.1)
    v2.train()
    out, _ = v2(x, 8)
    (out - x).pow(2).mean().backward()
    opt.step()
    assert v2.decoder.colour.weight.abs().sum() > 0
    v2.save_pretrained(tmp_path / "v2")
    again = NestedVAE.from_pretrained(tmp_path / "v2")
    assert again.config["colour_path"] == "latent"
    assert torch.equal(again.reconstruct(x, 32), v2.eval().reconstruct(x, 32))
    v1 = tiny_vae.save_pretrained(tmp_path / "v1")
    config = json.loads((v1 / "config.json").read_text())
    (v1 / "config.json").write_text(json.dumps({k: v for k, v in config.items() if k != "colour_path"}))  # a v1 config
    assert NestedVAE.from_pretrained(v1).decoder.colour is None


def test_colour_path_carries_a_uniform_colour_the_tail_cannot():
    """The reason for the path: with the tail's output conv zeroed, only the colour path can answer,
    and a 1x1 conv fitted on one latent reproduces its field's colour at every pixel."""
    torch.manual_seed(0)
    m = NestedVAE.from_preset("tiny", colour_path="latent").eval()
    z = torch.randn(1, 4, 3, 5)
    with torch.no_grad():
        m.decoder.conv_out.weight.zero_()
        m.decoder.conv_out.bias.zero_()
        m.decoder.colour.bias.copy_(torch.tensor([0.5, -0.25, 0.75]))
        out = m.decode(z, 8)  # (1, 3, 24, 40)
    assert out.shape == (1, 3, 24, 40)
    assert torch.allclose(out, torch.tensor([0.5, -0.25, 0.75])[None, :, None, None].expand_as(out))


def test_colour_path_value_is_checked():
    with pytest.raises(ValueError, match="colour_path must be one of none, latent, got 'rgb'"):
        NestedVAE.from_preset("tiny", colour_path="rgb")
