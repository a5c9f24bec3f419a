"""Region maps: which ratio each block gets, under a token budget or a quality target.

Every policy scores each block at each ratio with a distortion (summed squared error, measured or
predicted) and allocates with a Lagrangian: each block takes ``argmin_r D[b, r] + lam * tokens[r]``,
``lam`` found by bisection so the tokens just fit the budget; the budget left over is then spent on
the upgrades with the most distortion removed per token (so a budget is met to within one block's
cost). With a budget shared across images, one ``lam`` serves all blocks of all images: blocks
compete across images, as images do in CAT's image-level allocation.

Distortion sources:
- ``block_distortion``: measured, from whole-image decodes at each ratio (the oracle map);
- ``InContext`` / ``refined_choice`` / ``refine_maps``: any of these corrected by real mixed decodes: decode the map, replace
  each block's error at its chosen ratio by a running mean with the one the decode measured (a block's
  error depends on its neighbours' ratios: whole-image decodes miss that), reallocate; a few rounds;
- ``block_signal`` + ``signal_distortion``: a cheap signal per block (pixel variance or edge density)
  times a per-ratio factor (how much more a coarser ratio loses, measured on a set's decodes).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from cat_tokenizer.errors import UserInputError
from cat_tokenizer.regions.latent import block_tokens

__all__ = ["random_maps", "predicted_distortion", "block_distortion", "block_signal", "signal_distortion", "allocate",
           "allocate_mean_psnr", "allocate_target",
           "InContext", "refined_choice", "refine_maps", "latin_maps", "context_distortion", "region_maps", "maps_from_distortion",
           "SIGNALS", "POLICIES", "SIGNAL_FACTORS"]

SIGNALS = ("variance", "edges")
POLICIES = ("oracle", "head", *SIGNALS)
# Summed squared error per unit of signal at 8x / 16x / 32x: the median over 1,600 blocks of 100 real-v1
# train crops (128 px, native) of cat-small v1 (/tmp script in the 2026-12-03 note). Only their ratios
# matter under a budget; a PSNR target uses their scale too.
SIGNAL_FACTORS: dict[str, tuple[float, ...]] = {"variance": (177.1, 369.0, 657.3), "edges": (173.2, 327.9, 535.6)}


def random_maps(batch: int, blocks: tuple[int, int], ratios: Sequence[int], generator: torch.Generator | None = None) -> Tensor:
    """(B, bh, bw) random ratio maps for training: per image, shares of the ratios drawn from a flat Dirichlet,
    then each block's ratio drawn from them (so maps range from mostly one ratio to even mixtures)."""
    shares = -torch.rand(batch, len(ratios), generator=generator).clamp_min(1e-12).log()  # Exponential(1) = Gamma(1)
    shares = shares / shares.sum(1, keepdim=True)
    idx = torch.multinomial(shares, blocks[0] * blocks[1], replacement=True, generator=generator)  # (B, bh*bw)
    return torch.tensor(list(ratios))[idx].view(batch, *blocks)


def _blocks(x: Tensor, block: int, mode: str = "replicate") -> Tensor:
    """(B, 3, H, W) -> (B, bh, bw, 3, block, block), padded to whole blocks (``mode``: F.pad's)."""
    pad_h, pad_w = (-x.shape[-2]) % block, (-x.shape[-1]) % block
    if pad_h or pad_w:
        x = F.pad(x, (0, pad_w, 0, pad_h), mode=mode)
    b, c, h, w = x.shape
    return x.reshape(b, c, h // block, block, w // block, block).permute(0, 2, 4, 1, 3, 5)


def block_distortion(x: Tensor, recons: Sequence[Tensor], block: int) -> Tensor:
    """Summed squared error per block of each reconstruction (pixels in [-1, 1] scaled to [0, 1]):
    (B, 3, H, W) and R reconstructions -> (B, bh, bw, R). Padding adds nothing."""
    return torch.stack([(_blocks((y - x) / 2, block, "constant") ** 2).sum((-3, -2, -1)) for y in recons], -1)


def block_signal(x: Tensor, block: int, kind: str = "variance") -> Tensor:
    """A cheap per-block complexity signal: (B, 3, H, W) in [-1, 1] -> (B, bh, bw).

    ``variance``: the pixels' variance (per channel, summed); ``edges``: the mean absolute difference
    between neighbouring pixels (horizontal and vertical)."""
    if kind not in SIGNALS:
        raise UserInputError(f"region signal must be one of {', '.join(SIGNALS)}, got {kind!r}")
    x01 = (x + 1) / 2
    if kind == "variance":
        return _blocks(x01, block).flatten(-2).var(-1, unbiased=False).sum(-1)
    dx = F.pad((x01[..., :, 1:] - x01[..., :, :-1]).abs(), (0, 1, 0, 0))
    dy = F.pad((x01[..., 1:, :] - x01[..., :-1, :]).abs(), (0, 0, 0, 1))
    return _blocks(dx + dy, block).mean((-3, -2, -1))


def signal_distortion(signal: Tensor, factors: Sequence[float]) -> Tensor:
    """Predicted summed squared error (B, bh, bw, R) = signal * factor per ratio (``factors`` ascending
    by ratio: how much error a unit of signal costs at each ratio)."""
    return signal[..., None] * torch.as_tensor(factors, dtype=signal.dtype, device=signal.device)


def _lam_max(d: np.ndarray, cost: np.ndarray) -> float:
    """A multiplier at which every block takes the cheapest ratio: more than any distortion difference
    per token between two ratios."""
    gaps = np.diff(np.unique(cost))
    return (float(np.ptp(d)) + 1.0) / (float(gaps.min()) if len(gaps) else 1.0) * 2


def _choose(d: np.ndarray, cost: np.ndarray, lam: float) -> np.ndarray:
    return np.argmin(d + lam * cost[None], axis=1)


def _greedy_fill(d: np.ndarray, cost: np.ndarray, choice: np.ndarray, budget: float) -> np.ndarray:
    """Spend what the budget leaves on the upgrades that remove most distortion per token."""
    choice = choice.copy()
    left = budget - cost[choice].sum()
    while True:
        gain = d[np.arange(len(d)), choice][:, None] - d  # (n, R) distortion removed by moving to each ratio
        extra = cost[None] - cost[choice][:, None]  # (n, R) tokens it costs
        ok = (extra > 0) & (extra <= left) & (gain > 0)
        if not ok.any():
            return choice
        rate = np.where(ok, gain / np.where(extra > 0, extra, 1), -np.inf)
        i, r = np.unravel_index(np.argmax(rate), rate.shape)
        left -= extra[i, r]
        choice[i] = r


def allocate(d: np.ndarray, cost: Sequence[float], budget: float, iters: int = 60) -> np.ndarray:
    """Blocks' ratio indices (n,) minimising total distortion with total tokens <= ``budget``.

    Args:
        d: (n, R) distortion of each block at each ratio (ascending ratios).
        cost: (R,) tokens of one block at each ratio.
        budget: total tokens for the n blocks (at least n times the cheapest cost).
    """
    d, cost = np.asarray(d, np.float64), np.asarray(cost, np.float64)
    if budget < cost.min() * len(d) - 1e-9:
        raise UserInputError(f"a budget of {budget:g} tokens is below the {cost.min() * len(d):g} that "
                             f"{len(d)} block(s) need at the largest ratio")
    lo, hi = 0.0, _lam_max(d, cost)
    for _ in range(iters):  # smallest lam whose choice fits: more lam -> fewer tokens
        mid = (lo + hi) / 2
        if cost[_choose(d, cost, mid)].sum() <= budget:
            hi = mid
        else:
            lo = mid
    return _greedy_fill(d, cost, _choose(d, cost, hi), budget)


def allocate_mean_psnr(d: np.ndarray, cost: Sequence[float], budget_mean: float, rounds: int = 4, beta: float = 1.0,
                       gamma: float = 1.0) -> np.ndarray:
    """(N, nb) ratio indices for N images of nb blocks, maximising the *mean PSNR over images* (not the
    total error) under a budget shared across images.

    An image's PSNR moves by ``-10 / ln 10 * dSSE / SSE``: a block's error counts in proportion to one over
    its image's error. Each round weights the blocks by their image's error under the previous round's
    choice (first: every block at the middle ratio) and reallocates. ``beta`` is the power of that weight: 1 the
    mean PSNR, 0 the total squared error (one round), between them a dial that moves tokens back from images
    decoded well already (flat art) to photos and text, trading mean PSNR for rFID (docs/regions.md). ``gamma`` is
    the same dial inside an image: each block's error counts to the power ``gamma`` (1: squared error; below 1 a
    clean block spoiled costs more against a poor block improved, so quality is spread more evenly over the
    blocks: thin lines and light text kept from 32x); the image weights are taken on the powered errors."""
    d, cost = np.asarray(d, np.float64) ** gamma, np.asarray(cost, np.float64)
    n, nb, r = d.shape
    choice = np.full((n, nb), r // 2)
    for _ in range(rounds if beta else 1):
        sse = np.take_along_axis(d, choice[..., None], 2)[..., 0].sum(1)  # (N,)
        w = np.maximum(sse, 1e-6 * max(float(sse.max()), 1e-12)) ** -beta
        choice = allocate((d * w[:, None, None]).reshape(n * nb, r), cost, budget_mean * n).reshape(n, nb)
    return choice


def allocate_target(d: np.ndarray, cost: Sequence[float], max_distortion: float, iters: int = 60) -> np.ndarray:
    """Blocks' ratio indices (n,) with the fewest tokens whose total distortion is <= ``max_distortion``
    (the most lam that still meets it); all blocks at the finest ratio when nothing meets it."""
    d, cost = np.asarray(d, np.float64), np.asarray(cost, np.float64)
    best = _choose(d, cost, 0.0)
    if d[np.arange(len(d)), best].sum() > max_distortion:
        return best
    lo, hi = 0.0, _lam_max(d, cost)
    for _ in range(iters):  # largest lam whose choice still meets the target
        mid = (lo + hi) / 2
        c = _choose(d, cost, mid)
        if d[np.arange(len(d)), c].sum() <= max_distortion:
            lo = mid
        else:
            hi = mid
    return _choose(d, cost, lo)


def latin_maps(batch: int, blocks: tuple[int, int], ratios: Sequence[int]) -> list[Tensor]:
    """R maps (B, bh, bw) in which every block takes every ratio once and, in each, its 4 neighbours take the
    other ratios: map k puts ``ratios[(i + j + k) % R]`` at block (i, j)."""
    i, j = torch.meshgrid(torch.arange(blocks[0]), torch.arange(blocks[1]), indexing="ij")
    r = torch.tensor(list(ratios))
    return [r[(i + j + k) % len(r)].expand(batch, -1, -1) for k in range(len(r))]


@torch.no_grad()
def context_distortion(vae, x: Tensor) -> Tensor:
    """(B, bh, bw, R) block errors measured in region decodes of the ``latin_maps``: each block at each ratio
    with its neighbours at the others (what a mixed decode costs where whole-image decodes see none)."""
    ratios, block = sorted(vae.ratios), max(vae.ratios)
    bh, bw = -(-x.shape[-2] // block), -(-x.shape[-1] // block)
    d = torch.zeros(len(x), bh, bw, len(ratios), dtype=torch.float64)
    for m in latin_maps(len(x), (bh, bw), ratios):
        y = vae.decode_regions(vae.encode_regions(x, m.to(x.device))).clamp(-1, 1)
        seen = block_distortion(x, [y], block)[..., 0].double().cpu()  # (B, bh, bw)
        idx = torch.searchsorted(torch.tensor(ratios), m.contiguous())
        d.scatter_(-1, idx[..., None], seen[..., None])
    return d


class InContext:
    """Block errors (N, nb, R) as an estimate that real decodes correct: whenever a decode puts block b at
    ratio r, the error it measured there joins (b, r)'s running mean, in which the estimate counts once.

    On 96 real-v1 dev images (24 per kind) at 128 px and 64 tokens, the shipped cat-small and its region
    fill, the shared-budget oracle map decoded at +0.33 dB over fixed 16x from whole-image errors, and at
    +0.41 / +0.49 / +0.53 / +0.54 after 1 / 2 / 3 / 4 rounds (overwriting instead of averaging: +0.51 at 3);
    each image held to 64 tokens: +0.15 -> +0.22 at 3 (docs/regions.md)."""

    def __init__(self, d: np.ndarray):
        self.total = np.array(d, np.float64)  # (N, nb, R)
        self.count = np.ones_like(self.total)

    def observe(self, choice: np.ndarray, seen: np.ndarray, mask: np.ndarray | None = None) -> None:
        """``choice`` (N, nb) ratio indices a decode used, ``seen`` (N, nb) the block errors it measured; ``mask``
        (nb,) or (N, nb), if given, keeps only those blocks (a probe's moved blocks)."""
        rows, blocks = np.indices(choice.shape)
        keep = np.ones(choice.shape, bool) if mask is None else np.broadcast_to(mask, choice.shape)
        rows, blocks, choice = rows[keep], blocks[keep], choice[keep]
        np.add.at(self.total, (rows, blocks, choice), seen[keep])
        np.add.at(self.count, (rows, blocks, choice), 1)

    @property
    def d(self) -> np.ndarray:
        return self.total / self.count


def probe_choices(choice: np.ndarray, grid: tuple[int, int], n_ratios: int, classes: int = 4):
    """Perturbations of ``choice`` (N, nb) on a (bh, bw) block grid: for each class of blocks (``classes`` 4: the
    four cosets of a 2x2 lattice, so no two moved blocks touch, even diagonally; 2: a checkerboard) and each other
    ratio, the class's blocks moved by that many ratio steps (cyclic) and every other block kept. Yields
    ``(probe (N, nb), moved (nb,) bool)``: decoding a probe measures each moved block at another ratio in the
    current map's context."""
    if classes not in (2, 4):
        raise UserInputError(f"probe classes must be 2 or 4, got {classes}")
    i, j = np.indices(grid)
    cls = ((i % 2) * 2 + (j % 2) if classes == 4 else (i + j) % 2).reshape(-1)
    for c in range(classes):
        moved = cls == c
        for step in range(1, n_ratios):
            probe = choice.copy()
            probe[:, moved] = (choice[:, moved] + step) % n_ratios
            yield probe, moved


def refined_choice(d: np.ndarray, allocate_idx, observe, rounds: int, probe=None) -> np.ndarray:
    """``rounds`` times: allocate ``allocate_idx(estimate)`` -> (N, nb) ratio indices, decode that choice for real
    (``observe(choice, round)`` -> (N, nb) measured block errors) and correct the estimate (``InContext``, from
    ``d`` (N, nb, R)); returns the allocation from the last estimate. ``probe(choice)``, if given, yields
    ``(probe, moved)`` choices (``probe_choices``) that are decoded too (``observe(probe, round, k)``, k = 1, 2, ...),
    each correcting its moved blocks' estimate at the ratios they moved to: errors of the alternatives in the chosen
    map's context."""
    ctx = InContext(d)
    for i in range(rounds):
        choice = allocate_idx(ctx.d)
        ctx.observe(choice, observe(choice, i))
        for k, (alt, moved) in enumerate(probe(choice) if probe is not None else (), 1):
            ctx.observe(alt, observe(alt, i, k), moved)
    return allocate_idx(ctx.d)


@torch.no_grad()
def refine_maps(vae, x: Tensor, d: Tensor, allocate_maps, rounds: int, probes: int = 0) -> Tensor:
    """``refined_choice`` on images: ``allocate_maps`` turns block errors (B, bh, bw, R) into ratio maps (B, bh, bw),
    each round decodes them with ``vae.decode_regions`` (and, with ``probes`` 2 or 4, the ``probe_choices`` of that
    many classes: 2 * probes more decodes a round). Returns the last maps (B, bh, bw)."""
    ratios, block = torch.tensor(sorted(vae.ratios)), max(vae.ratios)
    b, bh, bw, r = d.shape

    def allocate_idx(est: np.ndarray) -> np.ndarray:  # (B, nb, R) -> (B, nb) ratio indices
        return torch.searchsorted(ratios, allocate_maps(torch.from_numpy(est).reshape(b, bh, bw, r)).cpu()).reshape(b, -1).numpy()

    def observe(choice: np.ndarray, _round: int, _probe: int | None = None) -> np.ndarray:
        maps = ratios[torch.from_numpy(choice)].reshape(b, bh, bw).to(x.device)
        y = vae.decode_regions(vae.encode_regions(x, maps)).clamp(-1, 1)
        return block_distortion(x, [y], block)[..., 0].reshape(b, -1).double().cpu().numpy()

    probe = (lambda c: probe_choices(c, (bh, bw), r, probes)) if probes else None
    choice = refined_choice(d.reshape(b, -1, r).double().cpu().numpy(), allocate_idx, observe, rounds, probe)
    return ratios[torch.from_numpy(choice)].reshape(b, bh, bw)


@torch.no_grad()
def predicted_distortion(vae, x: Tensor) -> Tensor:
    """(B, bh, bw, R) block distortions the tokenizer's block head predicts for images (B, 3, H, W)."""
    if getattr(vae, "block_head", None) is None:
        raise UserInputError("this tokenizer has no block head: make one with `cat-tokenizer block-head`")
    head = vae.block_head
    return 10 ** head(vae.trunk(x, head.config["block"])).float()


@torch.no_grad()
def region_maps(vae, x: Tensor, policy: str = "oracle", budget: float | None = None,
                target_psnr: float | None = None, refine: int = 0, probes: int = 0) -> Tensor:
    """Each image's ratio map, (B, 3, H, W) -> (B, bh, bw) ratios, under a token budget per image or the
    fewest tokens predicted to reach ``target_psnr`` (exactly one of the two).

    ``oracle`` measures each block's error in whole-image decodes at every ratio (three decodes);
    ``head`` predicts it with the tokenizer's block head from the encoder's trunk (``cat-tokenizer block-head``);
    ``variance`` / ``edges`` predict it from the block's pixels (``SIGNAL_FACTORS``). ``refine`` rounds then
    correct those errors by real decodes of the map (``refine_maps``: one more decode each), and with ``probes`` (2 or
    4) by decodes of the map with each class of blocks moved to the other ratios (2 * ``probes`` more decodes a round).
    """

    if policy not in POLICIES:
        raise UserInputError(f"region map policy must be one of {', '.join(POLICIES)}, got {policy!r}")
    if (budget is None) == (target_psnr is None):
        raise UserInputError("a region map needs a token budget or a PSNR target (one of the two)")
    if refine < 0:
        raise UserInputError(f"region map refinement rounds must be 0 or more, got {refine}")
    if probes not in (0, 2, 4) or (probes and not refine):
        raise UserInputError(f"region map probes must be 0, 2 or 4 and need refinement rounds, got {probes} with {refine} round(s)")
    ratios, block = sorted(vae.ratios), max(vae.ratios)
    cost = [block_tokens(r, block) for r in ratios]
    if policy == "oracle":
        d = block_distortion(x, [vae.reconstruct(x, r) for r in ratios], block)  # (B, bh, bw, R)
    elif policy == "head":
        d = predicted_distortion(vae, x)
    else:
        d = signal_distortion(block_signal(x, block, policy), SIGNAL_FACTORS[policy][: len(ratios)])

    def allocate_maps(dist: Tensor) -> Tensor:
        return maps_from_distortion(dist, ratios, cost, x.shape[-2] * x.shape[-1], budget, target_psnr)

    return refine_maps(vae, x, d, allocate_maps, refine, probes)


def maps_from_distortion(d: Tensor, ratios: Sequence[int], cost: Sequence[float], pixels: int, budget: float | None = None,
                         target_psnr: float | None = None) -> Tensor:
    """Block distortions (B, bh, bw, R) -> each image's ratio map (B, bh, bw) under ``budget`` tokens per image, or
    the fewest tokens predicted to reach ``target_psnr`` on images of ``pixels`` pixels."""
    b, bh, bw, _ = d.shape
    flat = d.reshape(b, bh * bw, -1).double().cpu().numpy()
    if target_psnr is not None:
        most = 3 * pixels * 10 ** (-target_psnr / 10)  # summed squared error at that PSNR
        idx = [allocate_target(flat[i], cost, most) for i in range(b)]
    else:
        idx = [allocate(flat[i], cost, budget) for i in range(b)]
    return torch.as_tensor(np.asarray(ratios)[np.stack(idx)]).reshape(b, bh, bw)
