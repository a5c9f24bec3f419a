"""``rd --regions``: region-adaptive CAT beside the image-level allocations, measured by real mixed decodes.

For each image of ``rd``'s table, every 32-px block's error at every ratio is measured in whole-image
decodes; region maps are then allocated under a mean token budget per image (``cat_tokenizer.regions.maps``):

* ``regions: oracle``: the measured block errors, the budget shared across images, allocated for the
  highest mean PSNR (``allocate_mean_psnr``: blocks compete across images, weighted by their image's error);
* ``regions: oracle, refined``: the oracle corrected by ``REFINE_ROUNDS`` rounds of real decodes (each decodes the
  maps, replaces every block's error at its chosen ratio by a running mean with the measured one and allocates
  again: ``cat_tokenizer.regions.maps.refined_choice``), shared budget;
* ``regions: oracle, probed``: the same with one round whose decode of the maps is followed by 8 probe decodes (each
  2x2 coset of blocks moved to each other ratio: ``probe_choices``), so the ratios not chosen are measured in context too;
* ``regions: oracle, per image``: the whole-image oracle, each image held to the budget;
* ``regions: head``: the tokenizer's block head (``cat-tokenizer block-head``) when it has one, shared budget;
* ``regions: head, probed``: the head's map with the oracle's probed round on top: the search an encoder can run
  (``encode --ratio regions --region-refine 1 --region-probes 4``), starting from what the head predicts;
* ``regions: variance`` / ``regions: edges``: a cheap signal per block times a per-ratio factor, shared budget.

Each map is then *decoded for real* (``vae.decode_regions``: a seam or a context effect shows up here, not
in the pasted-block estimate, which is reported beside it). Per (method, budget): PSNR and SSIM per image,
tokens, the seam statistic (mean absolute gradient across block borders over that inside blocks, pooled
over images) and, when ``rd`` keeps Inception features, rFID. Cached per (method, budget) under
``<out>/region_cache/``: a killed run keeps every finished item.
"""

from __future__ import annotations

import hashlib
import json
import logging
import shutil
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torchmetrics.functional.image import structural_similarity_index_measure

from cat_tasks.reconstruction.table import ReconTable
from cat_tokenizer.data.images import load_rgb
from cat_tokenizer.data.transforms import image_transform
from cat_tokenizer.errors import UserInputError
from cat_tokenizer.files import atomic_write
from cat_tokenizer.markdown import md_header
from cat_tokenizer.metrics.fid import InceptionFeatures, bootstrap_fid, frechet_distance
from cat_tokenizer.metrics.image import psnr_per_image
from cat_tokenizer.regions import block_tokens
from cat_tokenizer.regions.latent import RegionLatent, exit_latents, mixed_decode, pixel_merge_decode
from cat_tokenizer.regions.maps import (
    SIGNAL_FACTORS,
    allocate,
    allocate_mean_psnr,
    block_distortion,
    block_signal,
    maps_from_distortion,
    predicted_distortion,
    probe_choices,
    refined_choice,
    signal_distortion,
)

__all__ = ["REGION_METHODS", "RegionDecode", "parse_region_methods", "region_rows", "seam_sums", "seam_ratio", "region_markdown",
           "plot_regions", "examples_figure", "region_decodes", "region_decodes_markdown"]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class RegionDecode:
    """How ``rd --regions`` decodes a map: ``decode_regions``' ``merge``, and the grids one context pass refills
    after the fill (``context``: none here; ``(32,)``, the coarsest grid, is cat-small's default, docs/regions.md)."""

    merge: str = "features"
    context: tuple[int, ...] = ()

    def __call__(self, vae, lat: RegionLatent) -> torch.Tensor:
        if self.context:
            return vae.decode_regions(lat, 1, merge=self.merge, refine_ratios=self.context)
        return vae.decode_regions(lat, 0 if vae.region_fill is not None else None, merge=self.merge)  # no pass after a fill

    @property
    def tag(self) -> str:
        """Suffix of the cached decodes (none for the features merge without a pass: the older files' names)."""
        return ("" if self.merge == "features" else f"-{self.merge}") + "".join(f"-ctx{r}" for r in self.context)

    @property
    def call(self) -> str:
        extra = f", refine=1, refine_ratios={self.context}" if self.context else ""
        return f"vae.decode_regions(..., merge={self.merge!r}{extra})"

    @property
    def how(self) -> str:
        how = "real mixed decodes" if self.merge == "features" else "real decodes, each ratio whole, blended by the map"
        return how + (f", one context pass on the {' / '.join(f'{r}x' for r in self.context)} grid" if self.context else "")


REFINE_ROUNDS = 3  # 96 dev images, 64 tokens: +0.33 / +0.41 / +0.49 / +0.53 dB after 0 / 1 / 2 / 3 rounds
# v2, 96 dev images, 64 tokens (docs/regions.md "Probes"): plain rounds +0.44 / +0.44 / +0.48 / +0.48 after 0-3;
# one round with 2x2-coset probes (9 decodes) +0.50
REFINED = {"regions: oracle, refined": (REFINE_ROUNDS, 0), "regions: oracle, probed": (1, 4),  # method: (rounds, probes)
           "regions: head, probed": (1, 4)}
# ", beta B": the shared budget's image weight to the power B (allocate_mean_psnr; 1 without): 0.5 trades mean PSNR for rFID;
# ", gamma G": each block's error to the power G inside an image (1 without). Any row takes either dial by name in
# --region-methods ("oracle, gamma 0.5"); the default rows are these:
REGION_METHODS = ("regions: oracle", "regions: oracle, refined", "regions: oracle, probed", "regions: oracle, per image",
                  "regions: head", "regions: head, probed", "regions: variance", "regions: edges",
                  "regions: oracle, probed, beta 0.5", "regions: head, probed, beta 0.5")


def parse_region_methods(text: str | None) -> tuple[str, ...]:
    """``--region-methods``: semicolon-separated row names as in rd.md, ``regions: `` optional (``"oracle, probed;
    head"``); None: every row. A name rd does not make: a one-line error that lists them."""
    if text is None:
        return REGION_METHODS
    names = [n.strip() for n in text.split(";") if n.strip()]
    full = [n if n.startswith("regions: ") else f"regions: {n}" for n in names]
    unknown = [n for n, f in zip(names, full) if _dials(f)[0] not in REGION_METHODS]
    if unknown or not full:
        known = "; ".join(m.removeprefix("regions: ") for m in REGION_METHODS) + "; each with ', beta B' or ', gamma G'"
        raise UserInputError(f"--region-methods: unknown row {unknown[0]!r} (rows: {known})" if unknown else
                             f"--region-methods: no rows named (rows: {known})")
    return tuple(dict.fromkeys(full))


def _dials(method: str) -> tuple[str, dict[str, float]]:
    """``"regions: head, probed, beta 0.5, gamma 0.5"`` -> ``("regions: head, probed", {"beta": 0.5, "gamma": 0.5})``
    (``allocate_mean_psnr``'s dials; each 1 when not named); a dial that is not a number stays in the name."""
    dials, parts = {"beta": 1.0, "gamma": 1.0}, method.split(", ")
    while len(parts) > 1:
        key, _, value = parts[-1].partition(" ")
        if key not in dials or (number := _number(value)) is None:
            break
        dials[key] = number
        parts.pop()
    return ", ".join(parts), dials


def _number(text: str) -> float | None:
    try:
        return float(text)
    except ValueError:
        return None


def _images(root: Path, table: ReconTable, crop: str) -> torch.Tensor:
    """The table's crops again, (N, 3, S, S) in [-1, 1] (the same transform as ``measure_folder``)."""
    tf = image_transform(table.image_size, train=False, crop=crop)
    return torch.stack([tf(load_rgb(root / p)) for p in table.paths])


def seam_sums(y: torch.Tensor, block: int) -> np.ndarray:
    """(N, 4): per image, the summed absolute neighbour differences across block borders and inside blocks,
    and their counts (pixels in [0, 1]); pooled ratios of sums make the seam statistic."""
    dx, dy = (y[..., :, 1:] - y[..., :, :-1]).abs() / 2, (y[..., 1:, :] - y[..., :-1, :]).abs() / 2
    bx = torch.zeros(dx.shape[-1], dtype=torch.bool)
    bx[block - 1 :: block] = True  # the difference between column block-1 and block crosses a border
    by = torch.zeros(dy.shape[-2], dtype=torch.bool)
    by[block - 1 :: block] = True
    border = dx[..., bx].flatten(1).sum(1) + dy[..., by, :].flatten(1).sum(1)
    inside = dx[..., ~bx].flatten(1).sum(1) + dy[..., ~by, :].flatten(1).sum(1)
    n_border = dx[0, ..., bx].numel() + dy[0, ..., by, :].numel()
    n_inside = dx[0, ..., ~bx].numel() + dy[0, ..., ~by, :].numel()
    return torch.stack([border, inside, torch.full_like(border, n_border), torch.full_like(border, n_inside)], 1).numpy()


def seam_ratio(sums: np.ndarray) -> float:
    """The seam statistic from ``seam_sums`` rows pooled over images: mean |gradient| across block borders over
    that inside blocks."""
    s = sums.sum(0)
    return float((s[0] / s[2]) / (s[1] / s[3]))


def _estimate(method: str, d: np.ndarray, signals: dict[str, np.ndarray]) -> np.ndarray:
    """(N, nb, R) block errors a method allocates from (a refined method: its source's, which its rounds correct):
    the measured ones (oracle), the block head's, or a cheap signal's."""
    source = method.split(": ")[1].split(", ")[0]  # "regions: head, probed" -> "head"
    if source == "oracle":
        return d
    if source == "head":
        return signals["head"]
    return signal_distortion(torch.from_numpy(signals[source]), SIGNAL_FACTORS[source][: d.shape[-1]]).numpy()


def _maps(method: str, d: np.ndarray, signals: dict[str, np.ndarray], cost: np.ndarray, budget: float, **dials) -> np.ndarray:
    """(N, nb) ratio indices for one method at a mean budget per image (``dials``: ``allocate_mean_psnr``'s)."""
    if method == "regions: oracle, per image":
        return np.stack([allocate(d[i] ** dials.get("gamma", 1.0), cost, budget) for i in range(len(d))])
    return allocate_mean_psnr(_estimate(method, d, signals), cost, budget, **dials)


def _refined_maps(d: np.ndarray, cost: np.ndarray, budget: float, decoded, rounds: int = REFINE_ROUNDS, probes: int = 0,
                  **dials) -> np.ndarray:
    """The shared-budget allocation from the estimate ``d`` (N, nb, R) (the oracle's or the head's) corrected by
    ``rounds`` real decodes (``refined_choice``), each with its ``probes``
    (``probe_choices``) if any; ``decoded(tag, maps)`` decodes (cached under ``round{i}`` or ``round{i}-probe{k}``) and
    returns ``_decode``'s dict, whose ``blocks`` are the errors measured in context."""
    side = int(round(d.shape[1] ** 0.5))

    def observe(maps: np.ndarray, i: int, k: int | None = None) -> np.ndarray:
        return decoded(f"round{i}" + (f"-probe{k}" if k else ""), maps)["blocks"]

    probe = (lambda c: probe_choices(c, (side, side), d.shape[-1], probes)) if probes else None
    return refined_choice(d, lambda est: allocate_mean_psnr(est, cost, budget, **dials), observe, rounds, probe)


@torch.no_grad()
def _decode(vae, x: torch.Tensor, maps: np.ndarray, ratios: Sequence[int], inception, decode: RegionDecode = RegionDecode(),
            batch: int = 16) -> dict:
    """Real mixed decodes of every image under its map: PSNR, SSIM, seam sums, Inception features."""
    dev = next(vae.parameters()).device
    side = int(round(maps.shape[1] ** 0.5))
    out: dict[str, list] = {"psnr": [], "ssim": [], "seams": [], "blocks": [], "feats": []}
    for s in range(0, len(x), batch):
        xb = x[s : s + batch].to(dev)
        rmap = torch.as_tensor(np.asarray(ratios)[maps[s : s + batch]]).reshape(-1, side, side)
        y = decode(vae, vae.encode_regions(xb, rmap)).clamp(-1, 1).float()
        a, b = (y + 1) / 2, (xb.float() + 1) / 2
        out["psnr"].append(psnr_per_image(y, xb).cpu().numpy())
        out["ssim"].append(structural_similarity_index_measure(a, b, data_range=1.0, reduction="none").cpu().numpy())
        out["seams"].append(seam_sums(y.cpu(), max(ratios)))
        out["blocks"].append(block_distortion(xb.float(), [y], max(ratios))[..., 0].flatten(1).cpu().numpy())  # (B, nb)
        if inception is not None:
            out["feats"].append(inception(a).cpu().numpy().astype(np.float16))
    return {k: np.concatenate(v) for k, v in out.items() if v}


def _cache_dir(out: Path, vae, table: ReconTable, crop: str) -> Path:
    # v 2: mixed decodes blend the colour path with soft borders (COLOUR_FEATHER); v 1 decodes are stale
    tag = json.dumps({"size": table.image_size, "crop": crop, "n": len(table), "paths": hashlib.sha1(
        "\n".join(table.paths).encode()).hexdigest()[:10], "v": 2}, sort_keys=True)
    folder = out / "region_cache" / f"{vae.fingerprint()}-{hashlib.sha1(tag.encode()).hexdigest()[:8]}"
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def _cached(path: Path, compute) -> dict:
    if path.is_file():
        with np.load(path, allow_pickle=False) as z:
            return {k: z[k] for k in z.files}
    res = compute()
    with atomic_write(path) as tmp, open(tmp, "wb") as fh:
        np.savez(fh, **res)
    return res


@torch.no_grad()
def _block_table(vae, x: torch.Tensor, ratios: Sequence[int], block: int) -> dict:
    """Per image and block (N, nb, R): errors in whole-image decodes at each ratio (``d``), the cheap signals, and
    the block head's predictions (``head``) when the tokenizer has one."""
    dev = next(vae.parameters()).device
    recons = [torch.cat([vae.reconstruct(x[s : s + 16].to(dev), r).cpu() for s in range(0, len(x), 16)]) for r in ratios]
    d = block_distortion(x, recons, block).numpy()
    out = {"d": d.reshape(len(x), -1, len(ratios)), **{k: block_signal(x, block, k).reshape(len(x), -1).numpy()
                                                      for k in SIGNAL_FACTORS}}
    if vae.block_head is not None:
        pred = [predicted_distortion(vae, x[s : s + 16].to(dev)).cpu() for s in range(0, len(x), 16)]
        out["head"] = torch.cat(pred).reshape(len(x), -1, len(ratios)).double().numpy()
    return out


def region_rows(vae, table: ReconTable, root: Path, out: Path, crop: str, budgets: Sequence[float],
                methods: Sequence[str] = REGION_METHODS, progress: bool = True,
                decode: RegionDecode = RegionDecode()) -> tuple[list[dict], dict]:
    """One row per (method, budget) plus ``fixed 16x`` decoded the same way (its seam statistic), and the
    per-image results keyed by (method, budget) for the per-kind table and the figure; ``decode``: how each map is
    decoded."""
    ratios, block = list(table.ratios), max(table.ratios)
    cost = np.array([block_tokens(r, block) for r in ratios], float)
    folder = _cache_dir(out, vae, table, crop)
    x = _images(root, table, crop)
    dev = next(vae.parameters()).device
    base = _cached(folder / "blocks.npz", lambda: _block_table(vae, x, ratios, block))
    inception = None
    if table.feats is not None:
        inception = InceptionFeatures().eval().to(dev)
    if "head" not in base:
        methods = [m for m in methods if not m.startswith("regions: head")]
    rows, per_image = [], {}
    ref = ratios.index(16) if 16 in ratios else len(ratios) // 2
    items = [("fixed 16x", float(cost[ref] * base["d"].shape[1]))] + [(m, float(b)) for b in budgets for m in methods]
    signals = {s: base[s] for s in (*SIGNAL_FACTORS, "head") if s in base}

    decoded = _Decodes(folder, vae, x, ratios, inception, decode)
    for k, (method, budget) in enumerate(items):
        name = f"{method}-{budget:g}".replace(": ", "_").replace(", ", "_").replace(" ", "_")
        if progress:
            log.info("regions: %s at %g tokens (%d of %d)", method, budget, k + 1, len(items))
        plain, dials = _dials(method)
        if method.startswith("fixed"):
            maps = np.full(base["d"].shape[:2], ref)
        elif plain in REFINED:
            rounds, probes = REFINED[plain]
            start = _estimate(plain, base["d"], signals)  # refined rows start from their source: oracle or head
            maps = _refined_maps(start, cost, budget, lambda t, m, name=name: decoded(f"{name}-{t}", m, feats=False), rounds, probes, **dials)
        else:
            maps = _maps(plain, base["d"], signals, cost, budget, **dials)
        res = decoded(name, maps)
        paste = base["d"][np.arange(len(x))[:, None], np.arange(maps.shape[1])[None], res["maps"]].sum(1)
        res["paste_psnr"] = 10 * np.log10(3 * table.image_size**2 / np.maximum(paste, 1e-12))
        res["tokens"] = cost[res["maps"]].sum(1)
        per_image[(method, budget)] = res
        rows.append(_row(method, budget, res, table))
    return rows, per_image


class _Decodes:
    """``decoded(name, maps, feats)``: ``_decode`` of a map set, cached under ``folder`` by name (``feats``: with
    Inception features); a map set decoded before under another name, with every field asked for, is copied, not
    decoded again (a refinement's first round is its source row's map)."""

    def __init__(self, folder: Path, vae, x: torch.Tensor, ratios: Sequence[int], inception, decode: RegionDecode):
        self.folder, self.vae, self.x, self.ratios, self.inception, self.decode = folder, vae, x, ratios, inception, decode
        self.whole: dict[str, Path] = {}  # a map set's digest -> a decode of it with every field

    def __call__(self, name: str, maps: np.ndarray, feats: bool = True) -> dict:
        path, key = self.folder / f"{name}{self.decode.tag}.npz", hashlib.sha1(np.asarray(maps, np.int64).tobytes()).hexdigest()
        if not path.is_file() and key in self.whole:  # the same maps decode the same way
            with atomic_write(path) as tmp:
                shutil.copyfile(self.whole[key], tmp)
        inception = self.inception if feats else None
        res = _cached(path, lambda: {"maps": maps, **_decode(self.vae, self.x, maps, self.ratios, inception, self.decode)})
        if "feats" in res or self.inception is None:
            self.whole.setdefault(key, path)
        return res


def _row(method: str, budget: float, res: dict, table: ReconTable) -> dict:
    row = {"method": method, "budget": budget, "mean_tokens": float(res["tokens"].mean()), "psnr": float(res["psnr"].mean()),
           "paste_psnr": float(res["paste_psnr"].mean()), "ssim": float(res["ssim"].mean()),
           "seam_ratio": seam_ratio(res["seams"]), "rfid": float("nan")}
    if "feats" in res and table.feats_orig is not None:
        row["rfid"] = frechet_distance(table.feats_orig, res["feats"])
    return row


def _rfid_vs(per_image: dict, row: dict, ref: dict, table: ReconTable, boots: int) -> str:
    """A row's rFID minus fixed 16x's on the same images, with a paired 95% bootstrap interval (``bootstrap_fid``)."""
    if row is ref or not boots or table.feats_orig is None or "feats" not in per_image[(row["method"], row["budget"])]:
        return ""
    feats = [per_image[(r["method"], r["budget"])]["feats"] for r in (row, ref)]
    lo, hi = bootstrap_fid(table.feats_orig, feats[0], boots, paired_with=feats[1])
    return f"{row['rfid'] - ref['rfid']:+.1f} [{lo:+.1f}, {hi:+.1f}]"


def _rfid_kind_lines(at_ref: list[dict], ref: dict, per_image: dict, table: ReconTable, kinds: list[str]) -> list[str]:
    """rFID of each kind's images alone, and its difference from ``ref``'s (fixed 16x): where a map's rFID cost
    sits. Few images per kind bias an FID upwards; compare rows, not kinds."""
    if table.feats_orig is None or any("feats" not in per_image[(r["method"], r["budget"])] for r in at_ref):
        return []
    kind_arr = np.array(table.kinds)
    counts = ", ".join(f"{k} {int((kind_arr == k).sum())}" for k in kinds)
    fid = {r["method"]: [frechet_distance(table.feats_orig[kind_arr == k], per_image[(r["method"], r["budget"])]["feats"][kind_arr == k])
                         for k in kinds] for r in at_ref}
    base = fid[ref["method"]]
    lines = ["", f"rFID per kind (images: {counts}; an FID of so few images is biased upwards: compare rows, not kinds), "
             f"and its difference from {ref['method']}:", "", *md_header("method", *kinds)]
    for m, vals in fid.items():
        lines.append(f"| {m} | " + " | ".join(f"{v:.1f}" + (f" ({v - b:+.1f})" if m != ref["method"] else "")
                                             for v, b in zip(vals, base)) + " |")
    return lines


def region_markdown(rows: list[dict], per_image: dict, table: ReconTable, image_rows: list[dict],
                    decode: RegionDecode = RegionDecode(), boots: int = 100) -> list[str]:
    """The region section of rd.md: headline, the table at fixed 16x's budget (per kind, rFID with its paired
    difference from fixed 16x), every budget."""
    ref = next(r for r in rows if r["method"] == "fixed 16x")
    img_oracle = next((r for r in image_rows if r["method"] == "oracle" and r["budget"] == ref["mean_tokens"]), None)
    kinds = sorted(set(table.kinds))
    kind_arr = np.array(table.kinds)
    at_ref = [r for r in rows if r["budget"] == ref["budget"]]

    def kind_cells(r: dict) -> str:  # the row's PSNR per kind
        return " | ".join(f"{per_image[(r['method'], r['budget'])]['psnr'][kind_arr == k].mean():.2f}" for k in kinds)

    head = [f"{r['method'].split(': ')[1]} {r['psnr'] - ref['psnr']:+.2f} dB" for r in at_ref if r is not ref]
    lines = [f"**Region-adaptive, equal tokens** ({decode.how}): at fixed 16x's {ref['mean_tokens']:.0f} tokens, "
             + ", ".join(head) + " over fixed 16x" + (f" (image-level oracle {img_oracle['psnr'] - ref['psnr']:+.2f} dB)."
                                                     if img_oracle else "."), "",
             "## Region-adaptive CAT at fixed 16x's budget (`rd --regions`)", "",
             f"Real decodes of each region map (`{decode.call}`), beside the estimate from pasting blocks of whole-image "
             "decodes; seams: mean |gradient| across 32-px block borders over that inside blocks (fixed 16x decoded whole "
             f"for comparison); rFID on the same Inception features as above, and its difference from fixed 16x with a 95% "
             f"bootstrap interval over images ({boots} resamples, paired: an interval that holds 0 is no difference).", "",
             *md_header("method", "mean tokens", "PSNR", "pasted estimate", "SSIM", "rFID", "rFID vs fixed 16x", "seams", *kinds)]
    for r in at_ref:
        lines.append(f"| {r['method']} | {r['mean_tokens']:.1f} | {r['psnr']:.2f} | {r['paste_psnr']:.2f} | {r['ssim']:.3f} | "
                     f"{r['rfid']:.1f} | {_rfid_vs(per_image, r, ref, table, boots)} | {r['seam_ratio']:.3f} | {kind_cells(r)} |")
    lines += _rfid_kind_lines(at_ref, ref, per_image, table, kinds)
    lines += ["", "Every budget (PSNR per kind on the right):", "",
              *md_header("method", "budget", "mean tokens", "PSNR", "pasted", "SSIM", "rFID", "seams", *kinds)]
    for r in rows:
        lines.append(f"| {r['method']} | {r['budget']:g} | {r['mean_tokens']:.1f} | {r['psnr']:.2f} | {r['paste_psnr']:.2f} | "
                     f"{r['ssim']:.3f} | {r['rfid']:.1f} | {r['seam_ratio']:.3f} | {kind_cells(r)} |")
    return lines + [""]


def plot_regions(rows: list[dict], image_rows: list[dict], path: Path, image_size: int) -> None:
    """PSNR against mean tokens: the image-level curves (thin) and the region curves (real decodes)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    for name in dict.fromkeys(r["method"] for r in image_rows):
        pts = sorted((r["mean_tokens"], r["psnr"]) for r in image_rows if r["method"] == name)
        if name.startswith("fixed") or name == "oracle":
            ax.plot(*zip(*pts), "o-" if name == "oracle" else "ks", ms=4, lw=1, alpha=0.6, label=f"image-level {name}")
    for name in dict.fromkeys(r["method"] for r in rows if not r["method"].startswith("fixed")):
        pts = sorted((r["mean_tokens"], r["psnr"]) for r in rows if r["method"] == name)
        ax.plot(*zip(*pts), "^-", ms=5, lw=2, label=name)
    ax.set_xscale("log", base=2)
    ax.set_xlabel(f"mean tokens per {image_size}-px image")
    ax.set_ylabel("PSNR dB")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


@torch.no_grad()
def examples_figure(vae, table: ReconTable, root: Path, crop: str, per_image: dict, budget: float, path: Path,
                    decode: RegionDecode = RegionDecode(), per_kind: int = 1) -> None:
    """A few images (``per_kind`` of each kind): the original with the oracle map drawn on it (the refined oracle's
    when ``rd`` made one; 8x red, 16x yellow, 32x blue), the region decode, and fixed 16x at the same tokens."""
    from torchvision.utils import save_image

    kind_arr = np.array(table.kinds)
    res = per_image.get(("regions: oracle, refined", budget)) or per_image[("regions: oracle", budget)]
    picks = [int(i) for k in sorted(set(table.kinds)) for i in np.flatnonzero(kind_arr == k)[:per_kind]]
    x = _images(root, table, crop)[picks]
    side = int(round(res["maps"].shape[1] ** 0.5))
    rmap = torch.as_tensor(np.asarray(table.ratios)[res["maps"][picks]]).reshape(-1, side, side)
    dev = next(vae.parameters()).device
    region = decode(vae, vae.encode_regions(x.to(dev), rmap)).clamp(-1, 1).cpu()
    fixed = vae.reconstruct(x.to(dev), 16).cpu()
    colours = {8: (1.0, -1.0, -1.0), 16: (1.0, 1.0, -1.0), 32: (-1.0, -1.0, 1.0)}
    tint = torch.stack([torch.tensor(colours.get(int(r), (0, 0, 0))) for r in rmap.flatten()]).reshape(*rmap.shape, 3)
    tint = tint.permute(0, 3, 1, 2).repeat_interleave(max(table.ratios), -1).repeat_interleave(max(table.ratios), -2)
    overlay = 0.65 * x + 0.35 * tint[..., : x.shape[-2], : x.shape[-1]]
    grid = torch.stack([overlay, region, fixed], 1).flatten(0, 1)
    save_image((grid + 1) / 2, path, nrow=3, padding=2, pad_value=1.0)


def _variants(vae) -> dict[str, dict]:
    """The ways to fill a region latent's missing cells that ``region_decodes`` compares: decode_regions options."""
    out = {"first pass (tokens repeated / averaged)": {"refine": 0, "use_fill": False, "merge": "features"},
           "1 context pass": {"refine": 1, "use_fill": False, "merge": "features"},
           "2 context passes": {"refine": 2, "use_fill": False, "merge": "features"}}
    if getattr(vae, "region_fill", None) is not None:  # every grid named: a fill's own context default is one grid
        every = tuple(vae.ratios)
        out.update({"region fill": {"refine": 0, "use_fill": True, "merge": "features"},
                    "region fill + 1 context pass": {"refine": 1, "use_fill": True, "merge": "features", "refine_ratios": every},
                    "region fill, each ratio decoded whole, blended": {"refine": 0, "use_fill": True, "merge": "pixels"},
                    "region fill + 1 context pass, each ratio decoded whole, blended":
                        {"refine": 1, "use_fill": True, "merge": "pixels", "refine_ratios": every},
                    f"region fill + 1 context pass on the {max(vae.ratios)}x grid, each ratio decoded whole, blended":
                        {"refine": 1, "use_fill": True, "merge": "pixels", "refine_ratios": (max(vae.ratios),)}})
    out["2 context passes, each ratio decoded whole, blended"] = {"refine": 2, "use_fill": False, "merge": "pixels"}
    return out


@torch.no_grad()
def oracle_region_latent(vae, x: torch.Tensor, budget: float) -> tuple[dict[int, torch.Tensor], RegionLatent, dict[int, torch.Tensor]]:
    """Images (B, 3, H, W) -> (each ratio's whole-image reconstruction, the region latent of their oracle map at
    ``budget`` tokens per image, each ratio's true full latents on the padded grid: the bound's grids)."""
    block, ratios = max(vae.ratios), sorted(vae.ratios)
    recons = {r: vae.reconstruct(x, r) for r in ratios}
    d = block_distortion(x, [recons[r] for r in ratios], block)  # (B, bh, bw, R): the oracle's block errors
    rmap = maps_from_distortion(d, ratios, [block_tokens(r, block) for r in ratios], x.shape[-2] * x.shape[-1], budget)
    lat = vae.encode_regions(x, rmap)  # rmap (B, bh, bw)
    return recons, lat, exit_latents(vae, vae._pad(x, block), lat.ratios())


@torch.no_grad()
def region_decodes(vae, x: torch.Tensor, kinds: Sequence[str], budget: float, batch: int = 16) -> list[dict]:
    """Each image under its oracle map at ``budget`` tokens, decoded every way ``_variants`` names, beside
    fixed 16x, each path on its true full latents (not transmittable: the bound) and the pasted estimate.

    Returns:
        One row per variant: ``{"variant", "psnr", "seams", "tokens", <kind>: psnr, ...}``.
    """
    dev, block, ratios = next(vae.parameters()).device, max(vae.ratios), sorted(vae.ratios)
    names = ["fixed 16x", *_variants(vae), "true full latents (bound)", "true full latents, each ratio decoded whole, blended (bound)",
             "pasted blocks (estimate)"]
    got: dict[str, list] = {n: [] for n in names}
    seams: dict[str, list] = {n: [] for n in names}
    tokens = []
    for s in range(0, len(x), batch):
        xb = x[s : s + batch].to(dev)
        recons, lat, full = oracle_region_latent(vae, xb, budget)
        tokens.append(lat.tokens().cpu())
        paste = torch.zeros_like(xb)
        for r in ratios:
            own = lat.mask(r, block)[..., : xb.shape[-2], : xb.shape[-1]]
            paste += recons[r] * own
        h, w = xb.shape[-2:]
        outs = {"fixed 16x": recons[16], "true full latents (bound)": mixed_decode(vae, lat, full)[..., :h, :w],
                "true full latents, each ratio decoded whole, blended (bound)": pixel_merge_decode(vae, lat, full)[..., :h, :w],
                "pasted blocks (estimate)": paste}
        outs.update({n: vae.decode_regions(lat, **kw) for n, kw in _variants(vae).items()})
        for n in names:
            y = outs[n].clamp(-1, 1).float()
            got[n].append(psnr_per_image(y, xb).cpu())
            seams[n].append(seam_sums(y.cpu(), block))
    kind_arr = np.array(kinds)
    rows = []
    for n in names:
        p = torch.cat(got[n]).numpy()
        rows.append({"variant": n, "psnr": float(p.mean()), "seams": seam_ratio(np.concatenate(seams[n])),
                     "tokens": float(torch.cat(tokens).float().mean()) if n != "fixed 16x" else float(budget),
                     **{k: float(p[kind_arr == k].mean()) for k in sorted(set(kinds))}})
    return rows


def region_decodes_markdown(rows: list[dict], kinds: Sequence[str], title: str) -> list[str]:
    """The comparison as markdown: one row per variant, PSNR overall and per kind, seams."""
    ks = sorted(set(kinds))
    lines = [f"# Region decodes: {title}", "", *md_header("missing cells filled from", "mean tokens", "PSNR dB", "seams", *ks)]
    for r in rows:
        lines.append(f"| {r['variant']} | {r['tokens']:.1f} | {r['psnr']:.2f} | {r['seams']:.3f} | "
                     + " | ".join(f"{r[k]:.2f}" for k in ks) + " |")
    return lines + ["", "Seams: mean |gradient| across 32-px block borders over that inside blocks (pooled over images).", ""]
