"""``cat-tokenizer fid``: gFID (torchmetrics), Inception Score where the extractor has a classifier
head, and improved precision / recall (Kynkaenniemi et al. 2019, k-NN manifolds in Inception space).

Reference: a folder of images (centre-cropped to the model's size), or a statistics file:
``.npz`` with ``mu`` and ``sigma`` (the ADM / guided-diffusion format; ``n`` optional) and
optionally ``features`` (needed for precision / recall). ``--save-ref-stats`` writes one.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import torch
from torch import Tensor, nn

from cat_tokenizer.data.images import UnreadableImage, list_images, load_rgb
from cat_tokenizer.data.transforms import image_transform
from cat_tokenizer.errors import InputNotFound, UserInputError
from cat_tokenizer.metrics.fid import build_fid, frechet_distance

__all__ = ["RecordingExtractor", "precision_recall", "fid_from_folders", "load_ref_stats"]

log = logging.getLogger(__name__)


class RecordingExtractor(nn.Module):
    """Wraps a feature extractor for torchmetrics' FID and keeps every feature it computes
    (for precision / recall), on the CPU in float32.

    Args:
        inner: images in [0, 1] -> (B, D) features; must have ``num_features``.
    """

    def __init__(self, inner: nn.Module):
        super().__init__()
        self.inner, self.num_features = inner, inner.num_features
        self.recorded: list[Tensor] = []

    def forward(self, x: Tensor) -> Tensor:
        f = self.inner(x)
        self.recorded.append(f.detach().float().cpu())
        return f

    def take(self) -> Tensor:
        out = torch.cat(self.recorded) if self.recorded else torch.zeros(0, self.num_features)
        self.recorded = []
        return out


def _kth_nn_radius(x: Tensor, k: int, chunk: int = 1024) -> Tensor:
    """Distance from each row of x to its k-th nearest other row."""
    radii = []
    for i in range(0, len(x), chunk):
        d = torch.cdist(x[i : i + chunk], x)  # (c, N)
        radii.append(d.kthvalue(k + 1, dim=1).values)  # +1: the point itself is at distance 0
    return torch.cat(radii)


def _coverage(points: Tensor, centres: Tensor, radii: Tensor, chunk: int = 1024) -> float:
    """Share of ``points`` inside at least one ball (centre, radius)."""
    inside = []
    for i in range(0, len(points), chunk):
        d = torch.cdist(points[i : i + chunk], centres)  # (c, M)
        inside.append((d <= radii[None]).any(dim=1))
    return float(torch.cat(inside).float().mean())


def precision_recall(real: Tensor, fake: Tensor, k: int = 3) -> tuple[float, float]:
    """Improved precision (fakes inside the real manifold) and recall (reals inside the fake one).

    Raises:
        UserInputError: fewer than k + 1 samples on either side.
    """
    if min(len(real), len(fake)) <= k:
        raise UserInputError(f"precision/recall need more than k={k} real and generated images")
    real, fake = real.double(), fake.double()
    return _coverage(fake, real, _kth_nn_radius(real, k)), _coverage(real, fake, _kth_nn_radius(fake, k))


def load_ref_stats(path: Path) -> dict:
    """``{"mu", "sigma", "n", "features"?}`` from an .npz (ADM's ``mu``/``sigma``; ``arr_0`` or
    ``features`` as activations)."""
    try:
        data = np.load(path)
    except Exception as err:
        raise UserInputError(f"cannot read reference statistics {path}: {err}") from None
    feats = data["features"] if "features" in data else (data["arr_0"] if "arr_0" in data else None)
    if "mu" in data and "sigma" in data:
        mu, sigma = data["mu"].astype(np.float64), data["sigma"].astype(np.float64)
        n = int(data["n"]) if "n" in data else (len(feats) if feats is not None else 50000)
    elif feats is not None:
        f = feats.astype(np.float64)
        mu, sigma, n = f.mean(0), np.cov(f, rowvar=False), len(f)
    else:
        raise UserInputError(f"{path} has neither mu/sigma nor features: not FID reference statistics")
    return {"mu": mu, "sigma": sigma, "n": n, "features": None if feats is None else torch.from_numpy(feats.astype(np.float32))}


def _set_real_stats(fid, stats: dict) -> None:
    """Load precomputed real statistics into a torchmetrics FID (its sums, from mean and covariance)."""
    mu, sigma, n = torch.from_numpy(stats["mu"]), torch.from_numpy(stats["sigma"]), stats["n"]
    if mu.shape[0] != fid.real_features_sum.shape[0]:
        raise UserInputError(f"reference statistics have {mu.shape[0]} features; the extractor gives {fid.real_features_sum.shape[0]}")
    fid.real_features_sum = (mu * n).to(fid.real_features_sum)
    fid.real_features_cov_sum = (sigma * (n - 1) + n * torch.outer(mu, mu)).to(fid.real_features_cov_sum)
    fid.real_features_num_samples = torch.tensor(n, device=fid.real_features_num_samples.device)


def _folder_batches(folder: Path, size: int, batch_size: int):

    files = list_images(folder)
    if not files:
        raise InputNotFound(f"no images under {folder}")
    tf = image_transform(size, train=False)
    for i in range(0, len(files), batch_size):
        batch = []
        for f in files[i : i + batch_size]:
            try:
                batch.append(tf(load_rgb(f)))
            except UnreadableImage as err:  # a bad file is skipped with a line, not fatal
                log.warning("skipping unreadable image %s", err)
        if batch:
            yield (torch.stack(batch) + 1) / 2  # (B, 3, S, S) in [0, 1]


@torch.no_grad()
def fid_from_folders(generated: Path, ref: Path, image_size: int, inception: str = "auto", batch_size: int = 50,
                     device: str = "cpu", save_ref_stats: Path | None = None, max_pr: int = 10000) -> dict:
    """gFID, IS (when the extractor allows) and precision / recall of a folder of generated
    images against a reference folder or statistics file.

    Returns:
        ``{"fid", "inception_score", "inception_score_std", "precision", "recall", "n_generated", "n_reference", "notes"}``.
    """

    fid = build_fid(inception)
    notes = []
    rec = None
    if not fid.used_custom_model:
        notes.append("precision/recall need the extractor's features: not computed with inception=torchmetrics")
    else:
        rec = RecordingExtractor(fid.inception)
        fid.inception = rec
    fid = fid.to(device)
    real_feats, n_ref = _reference(fid, rec, ref, image_size, batch_size, device, save_ref_stats, max_pr)
    is_metric = None
    if inception == "torchmetrics":
        from torchmetrics.image.inception import InceptionScore  # needs torch-fidelity: only on this path

        is_metric = InceptionScore(normalize=True).to(device)
    else:
        notes.append("Inception Score needs the classifier head, which the offline TorchScript Inception lacks "
                     "(use --inception torchmetrics where its weights can be downloaded)")
    n_gen = 0
    for x in _folder_batches(generated, image_size, batch_size):
        fid.update(x.to(device), real=False)
        if is_metric is not None:
            is_metric.update(x.to(device))
        n_gen += len(x)
    if n_gen < 2 or n_ref < 2:
        raise UserInputError(f"FID needs at least 2 generated and 2 reference images (got {n_gen} and {n_ref})")
    fake_feats = rec.take() if rec is not None else None
    out = {"fid": _fid(fid, real_feats if ref.is_dir() else None, fake_feats), "n_generated": n_gen, "n_reference": n_ref, "inception_score": None,
           "inception_score_std": None, "precision": None, "recall": None, "notes": notes}
    if is_metric is not None:
        m, s = is_metric.compute()
        out["inception_score"], out["inception_score_std"] = float(m), float(s)
    if real_feats is not None and fake_feats is not None:
        if min(len(real_feats), len(fake_feats)) > 3:
            out["precision"], out["recall"] = precision_recall(real_feats[:max_pr], fake_feats[:max_pr])
        else:
            notes.append("precision/recall need more than 3 images on each side")
    elif rec is not None:
        notes.append("precision/recall need reference features: the statistics file has only mu/sigma")
    return out


def _fid(fid, real_feats: torch.Tensor | None, fake_feats: torch.Tensor | None) -> float:
    """The FID: from every feature of both sides in the samples' space when that is the smaller problem (fewer
    images on each side than feature dimensions: the same value, ``frechet_distance``), else torchmetrics' form
    (a square root of a 2048x2048 matrix)."""
    if real_feats is not None and fake_feats is not None and max(len(real_feats), len(fake_feats)) < real_feats.shape[1]:
        return frechet_distance(real_feats.double().numpy(), fake_feats.double().numpy())
    return float(fid.compute())


def _reference(fid, rec: RecordingExtractor | None, ref: Path, image_size: int, batch_size: int, device: str,
               save_ref_stats: Path | None, max_pr: int) -> tuple[torch.Tensor | None, int]:
    """Fill ``fid``'s real side from a folder (optionally saving its statistics) or a statistics file;
    returns the reference features (for precision / recall; None without them) and their count."""
    if ref.is_dir():
        for x in _folder_batches(ref, image_size, batch_size):
            fid.update(x.to(device), real=True)
        real_feats = rec.take() if rec is not None else None
        if save_ref_stats is not None and real_feats is not None:
            f = real_feats.double().numpy()
            np.savez(save_ref_stats, mu=f.mean(0), sigma=np.cov(f, rowvar=False), n=len(f), features=real_feats[:max_pr].numpy())
            log.info("wrote reference statistics of %d images to %s", len(f), save_ref_stats)
        return real_feats, int(fid.real_features_num_samples)
    if ref.is_file():
        stats = load_ref_stats(ref)
        _set_real_stats(fid, stats)
        return stats["features"], stats["n"]
    raise InputNotFound(f"reference not found: {ref} (an image folder or an .npz of statistics)")
