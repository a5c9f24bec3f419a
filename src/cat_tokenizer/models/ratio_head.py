"""A ratio head on the nested VAE's shared trunk: the complexity decision without an LLM.

Every ratio's encoding runs the encoder through the stages down to 8x, so their outputs are free.
The head summarises each trunk stage by per-channel statistics (spatial mean, std, max and mean
absolute neighbour difference: parameter-free, one pass over features the encoder computes
anyway), optionally adds weight-free statistics of the image itself (``pixel_statistics``) and a
small conv branch on the 8x map, and an MLP regresses the teacher
evaluator's score (1..9); the score maps to a ratio with the teacher's thresholds. Distilled from
the LLM/rubric evaluator by ``cat-tokenizer distill`` (the reviewers' suggestion: a small dedicated
predictor). Statistics of all stages, not the 8x map alone, is what made it agree: 87.7% vs 64.6%
on the same 6000 images (README, "Distilled ratio head").

The statistics differ in scale by orders of magnitude between stages and kinds of statistic. A head
made with ``norm="standard"`` standardises each one by its training mean and std (``Standardize``,
fitted once before training) instead of a LayerNorm across them: on the distortion head that alone
took the PSNR error on real-v1 dev from 1.41 / 1.12 / 0.91 to 0.84 / 0.70 / 0.71 dB (8x / 16x / 32x),
and pixel statistics beside it to 0.62 / 0.59 / 0.58 (docs/reports/distortion-head-arms.md).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from cat_tokenizer.errors import UserInputError
from cat_tokenizer.ratios import DEFAULT_RATIOS, DEFAULT_THRESHOLDS, ratios_from_scores

__all__ = ["RatioHead", "Standardize", "meet_probability", "pixel_statistics", "ssim_db", "ssim_from_db", "stage_statistics"]

STATS_PER_CHANNEL = 4
PIXEL_SCALES = (2, 4, 8, 16, 32)
PIXEL_STATS = 4 * len(PIXEL_SCALES) + 9  # see pixel_statistics
PREDICTS = ("score", "psnr")
NORMS = ("layer", "standard")


def pixel_statistics(x: Tensor) -> Tensor:
    """Images (B, 3, H, W) in [-1, 1] -> (B, 29) weight-free facts a tokenizer's error follows: for each
    scale k in 2..32, log10 of the energy (per channel and overall) of what a k-fold average-pool and
    bilinear upsampling loses (the detail above that scale's grid), then log10 of the mean luminance
    gradient, the shares of flat (< 1e-3) and hard-edged (> 0.25) horizontal steps, and each channel's
    std and mean."""
    x = x.float()
    out = []
    for k in PIXEL_SCALES:
        low = F.interpolate(F.avg_pool2d(x, k, ceil_mode=True), size=x.shape[-2:], mode="bilinear", align_corners=False)
        energy = (x - low).square().mean((-2, -1))  # (B, 3)
        out += [torch.log10(energy + 1e-6), torch.log10(energy.mean(1, keepdim=True) + 1e-6)]
    grey = x.mean(1, keepdim=True)  # (B, 1, H, W)
    dx, dy = (grey[..., 1:] - grey[..., :-1]).abs(), (grey[..., 1:, :] - grey[..., :-1, :]).abs()
    out += [torch.log10(dx.mean((-2, -1)) + dy.mean((-2, -1)) + 1e-6), (dx < 1e-3).float().mean((-2, -1)),
            (dx > 0.25).float().mean((-2, -1)), x.std((-2, -1)), x.mean((-2, -1))]
    return torch.cat(out, 1)


def ssim_db(ssim):
    """SSIM -> -10 log10(1 - SSIM) (a float or an array): the distortion head's unit for SSIM, which spreads
    0.7 / 0.8 / 0.9 / 0.99 to 5.2 / 7.0 / 10 / 20 on a scale like PSNR's, so one L1 loss serves both."""
    return -10 * np.log10(np.clip(1 - np.asarray(ssim, np.float64), 1e-10, None))


def ssim_from_db(db):
    """The inverse of ``ssim_db``."""
    return 1 - 10 ** (-np.asarray(db, np.float64) / 10)


def meet_probability(mean: Tensor, scale: Tensor, target: float) -> Tensor:
    """P(PSNR >= ``target``) when the PSNR is ``mean`` plus a Laplace error of ``scale`` (the error a head
    trained with L1 makes: its prediction is the median): elementwise, any matching shapes."""
    z = (mean - target) / scale
    return torch.where(z >= 0, 1 - 0.5 * torch.exp(-z.clamp(min=0)), 0.5 * torch.exp(z.clamp(max=0)))


class Standardize(nn.Module):
    """(..., D) -> (x - mean) / std per feature, with the mean and std of the training features
    (``fit``; saved as buffers with the head). Unfitted it is the identity."""

    def __init__(self, dim: int):
        super().__init__()
        self.register_buffer("mean", torch.zeros(dim))
        self.register_buffer("std", torch.ones(dim))

    @torch.no_grad()
    def fit(self, features: Tensor) -> Standardize:
        """Set the mean and std from training features (N, D); a constant feature keeps std 1."""
        std = features.float().std(0)
        self.mean.copy_(features.float().mean(0))
        self.std.copy_(torch.where(std > 1e-6, std, torch.ones_like(std)))
        return self

    def forward(self, x: Tensor) -> Tensor:
        return (x - self.mean) / self.std


def stage_statistics(taps: Sequence[Tensor], row_stride: Sequence[int] | None = None) -> Tensor:
    """Trunk stage outputs [(B, C_s, H_s, W_s)] -> (B, 4 * sum C_s): per channel mean, std, max and
    mean |horizontal| + |vertical| neighbour difference (texture energy), stage after stage.

    ``row_stride[s]`` = k reads only every k-th row of stage s (and the row below each, for the
    vertical difference): the statistics are memory-bound, and the full-resolution stages hold most
    of the bytes, so sampling their rows is what makes the head cheap next to the encode.
    """
    out = []
    for s, h in enumerate(taps):
        k = int(row_stride[s]) if row_stride is not None else 1
        h = h.float()
        rows = h[..., ::k, :]  # (B, C_s, ceil(H_s / k), W_s) the rows read
        top, below = h[..., 0:-1:k, :], h[..., 1::k, :]  # vertical neighbour pairs (r, r + 1) for the rows read
        flat = rows.flatten(-2)  # (B, C_s, n)
        mean = flat.mean(-1, keepdim=True)
        std = ((flat - mean).square().sum(-1) / max(1, flat.shape[-1] - 1)).sqrt()  # unbiased; ~20x faster than torch.std on CPU
        grad = (rows[..., 1:] - rows[..., :-1]).abs().mean((-2, -1)) + (below - top).abs().mean((-2, -1))
        out += [mean.squeeze(-1), std, flat.amax(-1), grad]  # each (B, C_s)
    return torch.cat(out, 1)


class RatioHead(nn.Module):
    """Trunk stage outputs -> complexity score (B,).

    Args:
        stage_channels: channels of each trunk stage, full resolution first (the encoder's
            ``block_out_channels`` up to the 8x stage).
        hidden: width of the MLP.
        stages: the trunk stages it summarises (0 = full resolution); default all.
        row_stride: per trunk stage, read every k-th row for the statistics (1 = all rows); the
            default samples each stage on as many rows as the 8x stage has (8, 4, 2, 1 for an
            8x trunk), which keeps the head's cost a small share of the encode (README,
            "Distilled ratio head").
        conv: width of an optional two-layer 3x3 conv branch on the 8x map, pooled by mean and
            max (0: statistics only).
        pixel_stats: also read ``pixel_statistics`` of the image (the head is then called with it).
        norm: ``layer`` (a LayerNorm across the statistics: heads saved before ``norm`` existed) or
            ``standard`` (``Standardize``: each statistic by its training mean and std; call
            ``fit_standardization`` on the training statistics before training).
        thresholds: score cut points, ascending (the teacher's).
        ratios: the ratios, ascending; the highest scores get the smallest ratio.
        image_size: the image side it was trained at (images are scored after resizing to it).
        report: how it was distilled (teacher config and name, held-out agreement and count);
            ``ComplexityEvaluator.from_config("auto:D")`` reads it to choose student or teacher.
        predicts: ``score`` (a complexity score, mapped to a ratio by ``thresholds``) or ``psnr``:
            a distortion head, one predicted PSNR per ratio (B, R); an image's ratio is then the
            cheapest whose predicted PSNR meets ``target_psnr`` (8x, the most tokens, when none does).
        target_psnr: the default target of a distortion head (``encode --target-psnr`` overrides it).
        ssim: a distortion head that also predicts each ratio's SSIM, as ``ssim_db``, from a branch of its own
            (its outputs are then (B, 2R): the R PSNRs, then the R SSIMs in that unit; rate control's SSIM
            targets use them).
        spread: a distortion head's error model: per ratio, the scale of a Laplace error around each
            predicted PSNR (its mean absolute error on sources held out of its training, measured by
            ``cat-tokenizer distortion-head`` in folds; ``set_error_scale``). ``meet_probability`` turns it
            into the chance that a ratio meets a target, which ``ratios_for(confidence=)`` and ``rd``'s
            rate control use; one scale per output (per ratio, and again for SSIM with ``ssim``). (Per-image
            scales learnt by a second MLP generalised worse than these constants on real-v1 dev:
            docs/experiments.md.)
        members: a distortion head that averages this many predictors (each its own standardisation and
            MLPs, all reading the same statistics): the first is this module's own layers, the others are in
            ``others``; ``RatioHead.average`` builds one from trained heads (``distortion-head --ensemble folds``:
            the saved head and its error model's fold heads).
    """

    def __init__(self, stage_channels: Sequence[int], hidden: int = 256, conv: int = 0,
                 thresholds: Sequence[float] = DEFAULT_THRESHOLDS, ratios: Sequence[int] = DEFAULT_RATIOS,
                 image_size: int | None = None, report: dict | None = None, stages: Sequence[int] | None = None,
                 row_stride: Sequence[int] | None = None, crop: str = "resize", predicts: str = "score",
                 target_psnr: float = 24.0, pixel_stats: bool = False, norm: str = "layer", spread: bool = False,
                 ssim: bool = False, members: int = 1):
        super().__init__()
        if members < 1 or (members > 1 and predicts != "psnr"):
            raise UserInputError(f"ratio head members must be 1, or more for a distortion head (predicts='psnr'), got {members}")
        if predicts not in PREDICTS:
            raise UserInputError(f"ratio head predicts must be one of {', '.join(PREDICTS)}, got {predicts!r}")
        if norm not in NORMS:
            raise UserInputError(f"ratio head norm must be one of {', '.join(NORMS)}, got {norm!r}")
        for what, on in (("spread (an error model)", spread), ("ssim (an SSIM output)", ssim)):
            if on and predicts != "psnr":
                raise UserInputError(f"ratio head {what} is for a distortion head (predicts='psnr')")
        n = len(stage_channels)
        stages = list(range(n)) if stages is None else sorted({int(s) for s in stages})
        row_stride = [2 ** (n - 1 - s) for s in range(n)] if row_stride is None else [int(k) for k in row_stride]
        if not stages or stages[0] < 0 or stages[-1] >= n:
            raise UserInputError(f"ratio head stages must be among 0..{n - 1} (the trunk stages), got {stages}")
        if len(row_stride) != n or min(row_stride) < 1:
            raise UserInputError(f"ratio head row_stride needs one stride >= 1 per trunk stage ({n}), got {row_stride}")
        self.config = {"stage_channels": [int(c) for c in stage_channels], "hidden": hidden, "conv": conv,
                       "thresholds": [float(t) for t in thresholds], "ratios": [int(r) for r in ratios],
                       "image_size": image_size, "report": report, "stages": stages, "row_stride": row_stride,
                       "crop": crop, "predicts": predicts, "target_psnr": float(target_psnr),
                       "pixel_stats": bool(pixel_stats), "norm": norm, "spread": bool(spread), "ssim": bool(ssim)}
        if members > 1:  # heads saved before ensembles have no key: one member
            self.config["members"] = int(members)
        stats_dim = STATS_PER_CHANNEL * sum(stage_channels[s] for s in stages) + (PIXEL_STATS if pixel_stats else 0)
        dim = stats_dim + 2 * conv
        self.conv = nn.Sequential(
            nn.Conv2d(stage_channels[-1], conv, 3, padding=1), nn.SiLU(),
            nn.Conv2d(conv, conv, 3, stride=2, padding=1), nn.SiLU(),
        ) if conv else None
        self.standardize = Standardize(stats_dim) if norm == "standard" else None
        self.mlp = nn.Sequential(nn.LayerNorm(dim) if norm == "layer" else nn.Identity(), nn.Linear(dim, hidden), nn.SiLU())
        n_out = len(ratios) * (2 if ssim else 1) if predicts == "psnr" else 1
        self.out = nn.Linear(hidden, len(ratios) if predicts == "psnr" else 1)
        nn.init.zeros_(self.out.weight)
        nn.init.constant_(self.out.bias, 25.0 if predicts == "psnr" else 5.0)  # a middling PSNR; the middle of the 1..9 scale
        # SSIM has a branch of its own: sharing the hidden layer with PSNR cost the PSNR outputs 0.01-0.03 dB of MAE
        # on real-v1 dev (docs/experiments.md)
        self.ssim_mlp = nn.Sequential(nn.Linear(dim, hidden), nn.SiLU()) if ssim else None
        self.ssim_out = nn.Linear(hidden, len(ratios)) if ssim else None
        if spread:
            self.register_buffer("error_scale", torch.ones(n_out))  # dB per output; set_error_scale
        one = {k: v for k, v in self.config.items() if k not in ("members", "report")} | {"spread": False}
        self.others = nn.ModuleList(RatioHead(**one) for _ in range(members - 1)) if members > 1 else None

    @classmethod
    def average(cls, heads: Sequence[RatioHead]) -> RatioHead:
        """One distortion head whose predictions are the mean of ``heads``' (trained alike: same config); it keeps the
        first one's report and error model."""
        first, alike = heads[0], lambda h: {k: v for k, v in h.config.items() if k not in ("spread", "report")}
        if any(alike(h) != alike(first) or h.others is not None for h in heads):
            raise UserInputError("RatioHead.average needs single heads made with one config")
        cfg = {k: v for k, v in first.config.items() if k != "members"}
        avg = cls(**cfg, members=len(heads)).to(next(first.parameters()).device)
        avg.load_state_dict(first.state_dict(), strict=False)  # missing: only the other members, loaded next
        for other, head in zip(avg.others or (), heads[1:]):
            other.load_state_dict({k: v for k, v in head.state_dict().items() if k != "error_scale"})
        return avg.eval()

    def set_report(self, report: dict) -> None:
        """Record how the trained head did on held-out images (teacher, agreement, split); saved with
        the head, read by ``ComplexityEvaluator.student_or_teacher``."""
        self.config["report"] = dict(report)

    def fit_standardization(self, stats: Tensor) -> None:
        """Fix a ``norm="standard"`` head's per-statistic mean and std from the training statistics (N, D)."""
        if self.standardize is not None:
            self.standardize.fit(stats)

    @property
    def needs_pixels(self) -> bool:
        return bool(self.config.get("pixel_stats", False))

    @property
    def predicts_psnr(self) -> bool:
        return self.config.get("predicts", "score") == "psnr"

    @property
    def predicts_ssim(self) -> bool:
        return bool(self.config.get("ssim", False))

    @property
    def finals(self) -> list[nn.Linear]:
        """The output layers, in the order of ``score``'s columns (a regressor initialises them)."""
        return [self.out] + ([self.ssim_out] if self.ssim_out is not None else [])

    def score(self, stats: Tensor, last: Tensor | None = None) -> Tensor:
        """(B, 4 * sum C) statistics [+ the (B, C, h, w) 8x map for the conv branch] -> (B,) scores,
        or (B, R) predicted PSNRs for a distortion head ((B, 2R) with ``ssim``: then the SSIMs as ``ssim_db``);
        with ``members``, the mean of every member's."""
        scores = self.member_scores(stats, last)
        return scores[0] if len(scores) == 1 else torch.stack(scores).mean(0)

    def member_scores(self, stats: Tensor, last: Tensor | None = None) -> list[Tensor]:
        """Each member's ``score`` (one for a head without ``members``): how far its predictors disagree."""
        return [self._own_score(stats, last), *(o.score(stats, last) for o in self.others or ())]

    def _own_score(self, stats: Tensor, last: Tensor | None) -> Tensor:
        if self.standardize is not None:
            stats = self.standardize(stats)
        if self.conv is not None:
            c = self.conv(last)  # (B, conv, h/2, w/2)
            stats = torch.cat([stats, c.mean((-2, -1)), c.amax((-2, -1))], 1)
        out = self.out(self.mlp(stats))  # (B, 1) or (B, R)
        if self.ssim_mlp is not None:
            out = torch.cat([out, self.ssim_out(self.ssim_mlp(stats))], 1)  # (B, 2R)
        return out if self.predicts_psnr else out.squeeze(-1)

    @property
    def has_error_model(self) -> bool:
        return bool(self.config.get("spread", False))

    @torch.no_grad()
    def set_error_scale(self, scale: Tensor) -> None:
        """Set the error model's Laplace scale per output (R,) or (2R,) with ``ssim``: the mean absolute error on
        held-out images."""
        if not self.has_error_model:
            raise UserInputError("this distortion head was made without an error model (spread=False)")
        self.error_scale.copy_(scale.to(self.error_scale).clamp(min=1e-3))

    def log_scale(self, stats: Tensor) -> Tensor:
        """(B, D) statistics -> (B, R) log of the Laplace scale (dB) of each predicted PSNR's error ((B, 2R) with
        ``ssim``: then of each predicted ``ssim_db``'s)."""
        if not self.has_error_model:
            raise UserInputError("this distortion head has no error model: make one with `cat-tokenizer distortion-head` (--spread folds)")
        return self.error_scale.log().expand(stats.shape[0], -1)

    def statistics(self, taps: Sequence[Tensor], x: Tensor | None = None) -> Tensor:
        """All trunk stage outputs [+ the images (B, 3, H, W) they came from, for a ``pixel_stats``
        head] -> (B, D) statistics of the stages this head reads [and of the images]."""
        stages, stride = self.config["stages"], self.config["row_stride"]
        stats = stage_statistics([taps[s] for s in stages], [stride[s] for s in stages])
        if not self.needs_pixels:
            return stats
        if x is None:
            raise UserInputError("this ratio head reads pixel statistics: call it with the images as well as their trunk")
        return torch.cat([stats, pixel_statistics(x)], 1)

    def forward(self, taps: Sequence[Tensor], x: Tensor | None = None) -> Tensor:
        return self.score(self.statistics(taps, x), taps[-1])

    def ratios_for(self, scores: Tensor, target_psnr: float | None = None, confidence: float | None = None) -> list[int]:
        """Scores -> ratios with the stored thresholds (the rule ``RatioMapper`` applies); for a
        distortion head, (B, R) PSNRs -> the cheapest ratio predicted to meet ``target_psnr``
        (default the stored one), 8x when none is. With ``confidence`` p (a head with an error model):
        the cheapest ratio that meets the target with probability >= p (p = 0.5 is the rule without it)."""
        if confidence is not None and not self.has_error_model:
            raise UserInputError("--confidence needs a distortion head with an error model (`cat-tokenizer distortion-head` "
                                 "--spread folds)")
        if not self.predicts_psnr:
            if target_psnr is not None:
                raise UserInputError("--target-psnr needs a distortion head (cat-tokenizer distortion-head); "
                                     "this tokenizer's ratio head predicts a complexity score")
            return [int(r) for r in ratios_from_scores(scores.detach().float().cpu().numpy(), self.config["thresholds"], self.config["ratios"])]
        target = self.config["target_psnr"] if target_psnr is None else float(target_psnr)
        ratios = self.config["ratios"]  # ascending: the first has the most tokens
        scores = scores.detach().float().cpu()[..., : len(ratios)]  # the PSNRs (an SSIM head's SSIMs follow)
        if confidence is None:
            meets = (scores >= target).tolist()
        else:
            if not 0 < confidence < 1:
                raise UserInputError(f"--confidence is a probability between 0 and 1, got {confidence:g}")
            meets = (meet_probability(scores, self.error_scale.float().cpu()[: len(ratios)], target) >= confidence).tolist()
        return [max((r for r, ok in zip(ratios, row) if ok), default=ratios[0]) for row in meets]
