import pytest
import torch
import torchvision

from cat_tokenizer.losses import LPIPS, LPIPSWeightsNotFound, VAELoss


def _batch(vae):
    x = torch.rand(2, 3, 32, 32) * 2 - 1
    x_hat, post = vae(x, 16)
    return x, x_hat, post


def test_adversarial_terms_start_at_disc_start(tiny_vae):
    loss = VAELoss(perceptual_weight=0.0, disc_start=10, disc_channels=8, disc_layers=2)
    x, x_hat, post = _batch(tiny_vae)
    before, logs = loss.generator_loss(x, x_hat, post, step=9, last_layer=tiny_vae.last_layer)
    assert "g_adv" not in logs
    after, logs = loss.generator_loss(x, x_hat, post, step=10, last_layer=tiny_vae.last_layer)
    assert "g_adv" in logs and torch.isfinite(logs["adv_weight"]) and logs["adv_weight"] > 0
    assert not torch.allclose(before, after)
    d0, _ = loss.discriminator_loss(x, x_hat, step=9)
    d1, dlogs = loss.discriminator_loss(x, x_hat, step=10)
    assert d0.item() == 0.0 and d1.item() > 0 and d1.requires_grad
    assert torch.allclose(d1, dlogs["d_hinge"])


def test_kl_and_rec_terms(tiny_vae):
    x, x_hat, post = _batch(tiny_vae)
    l1, logs = VAELoss(perceptual_weight=0.0, kl_weight=0.0, disc_channels=8).generator_loss(x, x_hat, post, 0)
    assert torch.allclose(l1, (x_hat - x).abs().mean())
    l2, _ = VAELoss(rec_loss="l2", perceptual_weight=0.0, kl_weight=0.0, disc_channels=8).generator_loss(x, x_hat, post, 0)
    assert torch.allclose(l2, (x_hat - x).pow(2).mean())
    lk, _ = VAELoss(perceptual_weight=0.0, kl_weight=1.0, disc_channels=8).generator_loss(x, x_hat, post, 0)
    assert torch.allclose(lk - l1, post.kl().mean() / x[0].numel(), atol=1e-6)
    with pytest.raises(ValueError, match="rec_loss"):
        VAELoss(rec_loss="huber", perceptual_weight=0.0)


def test_lpips_missing_weights_says_what_to_do(tmp_path):
    with pytest.raises(LPIPSWeightsNotFound, match="perceptual_weight 0"):
        VAELoss(perceptual_weight=1.0, lpips_weights=str(tmp_path / "vgg16.pth"))


def test_lpips_from_local_backbone_file(tmp_path, tiny_vae):
    torch.manual_seed(0)
    path = tmp_path / "alexnet.pth"
    torch.save(torchvision.models.alexnet(weights=None).features.state_dict(), path)  # features only is enough
    torch.save({f"features.{k}": v for k, v in torch.load(path).items()}, path)
    lp = LPIPS("alex", str(path))
    assert not any(p.requires_grad for p in lp.parameters())
    x = torch.rand(2, 3, 64, 64) * 2 - 1
    y = (x + 0.5 * torch.randn_like(x)).clamp(-1, 1).requires_grad_(True)
    assert torch.allclose(lp(x, x), torch.zeros(2), atol=1e-6)
    d = lp(x, y)
    assert d.shape == (2,) and (d > 0).all()
    d.sum().backward()
    assert y.grad is not None and y.grad.abs().sum() > 0
    loss = VAELoss(perceptual_weight=1.0, lpips_net="alex", lpips_weights=str(path), kl_weight=0.0, disc_channels=8)
    x, x_hat, post = _batch(tiny_vae)
    _, logs = loss.generator_loss(x, x_hat, post, 0)
    assert logs["lpips"] > 0
