"""``cat-tokenizer block-head``: predict each 32-px block's error at every ratio from the tokenizer's trunk.

The predicted region map of issue 26: the oracle map needs three whole-image decodes, the cheap signals
(variance, edges) know nothing of this tokenizer. The block head (``cat_tokenizer.regions.block_head``)
reads the encoder's trunk, which any encode computes anyway:

1. For a seeded sample of ``data`` (rd's crops), the trunk's per-block statistics and the measured block
   distortions at every ratio (whole-image decodes); cached in chunks, so a killed run resumes.
2. An MLP regresses log10 of each block's distortion (L1), whole sources held out.
3. Report the held-out error (dB) per ratio and kind and, on ``--dev``, how its maps do under a budget
   against the oracle, the cheap signals and fixed 16x (pasted blocks of whole-image decodes: no mixed
   decode; ``rd --regions`` decodes them for real). The tokenizer is saved to ``out`` with the head.
"""

from __future__ import annotations

import hashlib
import json
import logging
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Literal

import lightning as L
import numpy as np
import torch
from torch import nn

from cat_tasks.distill.distortion import HeadOptions, _sample
from cat_tasks.distill.ratio_head import _grouped_split, _read_groups, fit_regressor
from cat_tokenizer.data.dataset import stratified_split
from cat_tokenizer.data.images import list_images, load_rgb
from cat_tokenizer.data.transforms import image_transform
from cat_tokenizer.devices import resolve_device
from cat_tokenizer.errors import UserInputError
from cat_tokenizer.files import atomic_write
from cat_tokenizer.fingerprint import fingerprint_state
from cat_tokenizer.io import load_vae
from cat_tokenizer.lit.cli import silence_known_warnings
from cat_tokenizer.markdown import md_header
from cat_tokenizer.regions import block_tokens
from cat_tokenizer.regions.block_head import BlockHead
from cat_tokenizer.regions.maps import (
    SIGNAL_FACTORS,
    allocate,
    block_distortion,
    block_signal,
    context_distortion,
    signal_distortion,
)

__all__ = ["BlockHeadConfig", "run_block_head", "block_samples"]

log = logging.getLogger(__name__)
_TARGETS = {"whole": "in whole-image decodes", "context": "the larger of whole-image and Latin-map region decodes"}
FLOOR = 1e-3  # summed squared error floor before log10 (a block decoded exactly)


@dataclass(frozen=True)
class BlockHeadConfig(HeadOptions):
    """The options of ``cat-tokenizer block-head`` (and of ``run_block_head``); blocks are many per image, so
    fewer images, epochs and larger batches than the image-level head.

    Args:
        max_images: a seeded sample of at most this many training images (0: all)
        epochs: epochs of the head (on precomputed block statistics: fast)
        batch_size: blocks per batch
        budget: tokens per image of the maps compared on --dev
        norm: standard (each statistic by its training mean and std) or layer (a LayerNorm across them,
            as heads before 2026-12 were made)
        targets: what the head learns for each block and ratio: whole (its error in whole-image decodes) or context
            (the larger of that and its error in three region decodes where its neighbours have the other ratios:
            what a mixed decode costs; three more decodes per image)
    """

    max_images: int = 1500
    epochs: int = 40
    batch_size: int = 256
    budget: float = 64.0
    norm: Literal["standard", "layer"] = "standard"
    targets: Literal["whole", "context"] = "whole"


@torch.no_grad()
def block_samples(vae, head: BlockHead, root: Path, files: list[Path], cfg: BlockHeadConfig, cache: Path,
                  chunk: int = 64) -> dict[str, np.ndarray]:
    """Per image: ``feats`` (N, nb, D) float16, ``d`` (N, nb, R) block distortions measured in whole-image decodes,
    with ``targets="context"`` also ``d_ctx`` (N, nb, R) in Latin-map region decodes (``context_distortion``), and
    ``signals`` of the cheap policies (N, nb) each. Cached per chunk of ``chunk`` images under ``cache`` (a chunk
    without ``d_ctx``, or with one measured under another region fill, gets only its Latin-map decodes measured)."""
    tf = image_transform(cfg.image_size, train=False, crop=cfg.crop)
    dev, block = next(vae.parameters()).device, max(vae.ratios)
    tag = hashlib.sha1(json.dumps([cfg.image_size, cfg.crop, [f.relative_to(root).as_posix() for f in files]]).encode()).hexdigest()[:10]
    folder = cache / f"{vae.fingerprint(with_head=False)}-{tag}"
    folder.mkdir(parents=True, exist_ok=True)
    context = cfg.targets == "context"
    fill = _fill_tag(vae) if context else None  # region decodes depend on the fill, which the fingerprint above leaves out
    parts = []
    for c, s in enumerate(range(0, len(files), chunk)):
        path = folder / f"chunk_{c:05d}.npz"
        part: dict[str, np.ndarray] = {}
        if path.is_file():
            with np.load(path) as z:
                part = {k: z[k] for k in z.files}
        stale = context and str(part.get("ctx_fill", "")) != fill
        if not part or stale:
            x = torch.stack([tf(load_rgb(f)) for f in files[s : s + chunk]])
            if not part:
                part = {k: torch.cat(v).numpy() for k, v in _measure(vae, head, x).items()}
                part.update({k: block_signal(x, block, k).flatten(1).numpy() for k in SIGNAL_FACTORS})
            if stale:  # only the Latin-map decodes: the rest of the chunk is kept
                part["d_ctx"] = torch.cat([context_distortion(vae, x[b : b + 16].to(dev)).flatten(1, 2).float()
                                           for b in range(0, len(x), 16)]).numpy()
                part["ctx_fill"] = np.array(fill)
            with atomic_write(path) as tmp, open(tmp, "wb") as fh:
                np.savez(fh, **part)
            log.info("block samples: %d of %d images", min(s + chunk, len(files)), len(files))
        parts.append({k: v for k, v in part.items() if context or k not in ("d_ctx", "ctx_fill")})
    return {k: np.concatenate([p[k] for p in parts]) for k in parts[0] if k != "ctx_fill"}


def _fill_tag(vae) -> str:
    """A hash of the tokenizer's region fill ("none" without one)."""
    state = {k: v for k, v in vae.state_dict().items() if k.startswith("region_fill.")}
    return fingerprint_state(state) if state else "none"


@torch.no_grad()
def _measure(vae, head: BlockHead, x: torch.Tensor, batch: int = 16) -> dict[str, list[torch.Tensor]]:
    """Trunk statistics and whole-image block errors of images ``x`` (N, 3, S, S), in batches."""
    dev, ratios, block = next(vae.parameters()).device, sorted(vae.ratios), max(vae.ratios)
    out: dict[str, list[torch.Tensor]] = {"feats": [], "d": []}
    for b in range(0, len(x), batch):
        xb = x[b : b + batch].to(dev)
        out["feats"].append(head.features(vae.trunk(xb, block)).flatten(1, 2).half().cpu())
        out["d"].append(block_distortion(xb, [vae.reconstruct(xb, r) for r in ratios], block).flatten(1, 2).cpu())
    return out


class _OnFeatures(nn.Module):
    def __init__(self, head: BlockHead):
        super().__init__()
        self.head = head

    def forward(self, feats: torch.Tensor) -> torch.Tensor:
        return self.head.score(feats)


def _error_table(pred: np.ndarray, d: np.ndarray, kinds: list[str], ratios) -> list[dict]:
    """Rows ``{kind, blocks, mae_<r>x}``: mean |predicted - measured| in dB (10 log10 of the block error)."""
    err = 10 * np.abs(pred - np.log10(np.maximum(d, FLOOR)))  # (N, nb, R)
    kinds_arr = np.asarray(kinds)
    rows = []
    for kind in ["all", *sorted(set(kinds))]:
        sel = np.ones(len(kinds), bool) if kind == "all" else kinds_arr == kind
        rows.append({"kind": kind, "blocks": int(sel.sum() * d.shape[1]),
                     **{f"mae_{r}x": float(err[sel, :, j].mean()) for j, r in enumerate(ratios)}})
    return rows


def _map_table(pred: np.ndarray, s: dict[str, np.ndarray], kinds: list[str], ratios, budget: float, size: int) -> list[dict]:
    """PSNR of pasted blocks under each policy's per-image map at ``budget`` tokens (and fixed 16x), per kind."""
    block = max(ratios)
    cost = np.array([block_tokens(r, block) for r in ratios], float)
    d = s["d"].astype(np.float64)
    est = {"oracle": d, "head": 10 ** pred.astype(np.float64),
           **{k: signal_distortion(torch.from_numpy(s[k]), SIGNAL_FACTORS[k][: len(ratios)]).numpy() for k in SIGNAL_FACTORS}}
    n, nb = d.shape[:2]
    psnr = {"fixed 16x": 10 * np.log10(3 * size**2 / np.maximum(d[:, :, ratios.index(16)].sum(1), 1e-12))}
    for name, e in est.items():
        idx = np.stack([allocate(e[i], cost, budget) for i in range(n)])  # (N, nb)
        got = d[np.arange(n)[:, None], np.arange(nb)[None], idx].sum(1)
        psnr[name] = 10 * np.log10(3 * size**2 / np.maximum(got, 1e-12))
    kinds_arr = np.asarray(kinds)
    return [{"policy": name, **{k: float(v[kinds_arr == k].mean()) for k in sorted(set(kinds))}, "all": float(v.mean())}
            for name, v in psnr.items()]


def _kinds(root: Path, files: list[Path]) -> list[str]:
    return [f.relative_to(root).parts[0] if len(f.relative_to(root).parts) > 1 else "" for f in files]


def run_block_head(data: str | Path, cfg: BlockHeadConfig) -> dict:
    """Train, report and save; returns the metrics (also ``out/block_head.json`` and ``block_head.md``)."""
    silence_known_warnings()
    L.seed_everything(cfg.seed, workers=True)
    root, out, dev = Path(data).expanduser(), Path(cfg.out), resolve_device(cfg.device)
    group_of, split_from = _read_groups(root, cfg.groups)
    vae = load_vae(cfg.ckpt).eval().to(dev)
    ratios = sorted(vae.ratios)
    head = BlockHead(vae.trunk_channels(), ratios, max(ratios), cfg.hidden,
                     cfg.image_size, cfg.crop, norm=cfg.norm).to(dev)
    files = _sample(root, cfg.max_images or None, cfg.seed)
    s = block_samples(vae, head, root, files, cfg, out / "block_cache")
    val = _grouped_split(files, root, cfg.val_fraction, group_of) if group_of else set(stratified_split(files, root, cfg.val_fraction))
    tr = np.array([i for i, f in enumerate(files) if f not in val])
    va = np.array([i for i, f in enumerate(files) if f in val])
    if len(tr) < 4 or not len(va):
        raise UserInputError(f"the split left {len(tr)} training and {len(va)} held-out images; add images or change val_fraction")
    feats = torch.from_numpy(s["feats"]).float()  # (N, nb, D)
    learn = np.maximum(s["d"], s["d_ctx"]) if cfg.targets == "context" else s["d"]  # (N, nb, R)
    target = torch.from_numpy(np.log10(np.maximum(learn, FLOOR))).float()
    head.fit_standardization(feats[tr].flatten(0, 1).to(dev))
    fit_regressor(_OnFeatures(head), head.out, [feats[tr].flatten(0, 1)], target[tr].flatten(0, 1), cfg.epochs, cfg.batch_size,
                  cfg.lr, dev, "l1", init_bias=target[tr].flatten(0, 1).mean(0))
    head.eval()
    with torch.no_grad():
        pred = head.score(feats[va].to(dev)).cpu().numpy()
    kinds = _kinds(root, files)
    metrics = {"config": asdict(cfg), "data": str(root), "images": len(files), "train": len(tr), "held_out": len(va),
               "split": "random" if group_of is None else f"by source ({split_from})",
               "head_params": sum(p.numel() for p in head.parameters()),
               "held_out_error": _error_table(pred, learn[va], [kinds[i] for i in va], ratios)}
    mae = metrics["held_out_error"][0]
    head.set_report({"images": len(files), "held_out": len(va), "targets": cfg.targets, "mae_db": {k: round(v, 2) for k, v in mae.items()
                                                                          if k.startswith("mae_")}})
    vae.attach_block_head(head)
    if cfg.dev:
        dev_root = Path(cfg.dev).expanduser()
        dev_files = list_images(dev_root)
        ds = block_samples(vae, head, dev_root, dev_files, cfg, out / "block_cache")
        with torch.no_grad():
            dpred = head.score(torch.from_numpy(ds["feats"]).float().to(dev)).cpu().numpy()
        metrics["dev"] = str(dev_root)
        dlearn = np.maximum(ds["d"], ds["d_ctx"]) if cfg.targets == "context" else ds["d"]
        metrics["dev_error"] = _error_table(dpred, dlearn, _kinds(dev_root, dev_files), ratios)
        metrics["dev_maps"] = _map_table(dpred, ds, _kinds(dev_root, dev_files), ratios, cfg.budget, cfg.image_size)
    out.mkdir(parents=True, exist_ok=True)
    vae.save_pretrained(out)
    (out / "block_head.json").write_text(json.dumps(metrics, indent=2))
    (out / "block_head.md").write_text(block_head_report(metrics, ratios))
    return metrics


def block_head_report(m: dict, ratios) -> str:
    """block_head.md: the held-out error per ratio and kind; on dev, the maps' pasted PSNR per kind."""
    c = m["config"]
    lines = [f"# Block head on {c['ckpt']}'s trunk", "",
             f"{m['images']} images of {m['data']} ({m['train']} train / {m['held_out']} held out, split {m['split']}) at "
             f"{c['image_size']} px ({c['crop']} crops), 32-px blocks; head {m['head_params']} params, {c['epochs']} epochs, L1 on "
             f"log10 of the block's summed squared error ({_TARGETS[c.get('targets', 'whole')]}); {c.get('norm', 'layer')} "
             "normalisation of its statistics.", ""]
    for title, key in (("Held-out sources", "held_out_error"), (m.get("dev", ""), "dev_error")):
        if key in m:
            lines += [f"## {title}: block error (MAE dB)", "", *md_header("kind", "blocks", *(f"MAE {r}x" for r in ratios))]
            lines += [f"| {r['kind']} | {r['blocks']} | " + " | ".join(f"{r[f'mae_{q}x']:.2f}" for q in ratios) + " |" for r in m[key]]
            lines.append("")
    if "dev_maps" in m:
        kinds = [k for k in m["dev_maps"][0] if k not in ("policy", "all")]
        lines += [f"## {m['dev']}: region maps at {c['budget']:g} tokens per image (PSNR dB of pasted blocks of whole-image "
                  "decodes; each image held to the budget)", "", *md_header("policy", "all", *kinds)]
        lines += [f"| {r['policy']} | {r['all']:.2f} | " + " | ".join(f"{r[k]:.2f}" for k in kinds) + " |" for r in m["dev_maps"]]
        lines.append("")
    return "\n".join(lines)
