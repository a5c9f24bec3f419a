"""DiT over variable-size latent grids: one network for every CAT compression ratio.

Provenance: Peebles & Xie, "Scalable Diffusion Models with Transformers" (DiT), adaLN-Zero blocks
and presets; here the 2D sin-cos position embedding is computed for the grid at hand (8x, 16x
and 32x latents have different grids) and a learned ratio embedding joins the conditioning.
Attention is timm's ``Attention`` (``scaled_dot_product_attention`` underneath), which takes a
mask, so sequences padded to a common length (the bench's padded variant) also work.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from timm.layers import Attention, Mlp
from torch import Tensor, nn

from cat_tokenizer.errors import UserInputError
from cat_tokenizer.ratios import DEFAULT_RATIOS

__all__ = ["DiT", "DIT_PRESETS", "sincos_pos_embed_2d", "timestep_embedding"]

# name -> (hidden_size, depth, num_heads); the patch size is in the name (DiT's table).
DIT_PRESETS: dict[str, dict] = {
    "tiny": dict(hidden_size=64, depth=2, num_heads=2, patch_size=2),  # tests
    "mini": dict(hidden_size=192, depth=6, num_heads=3, patch_size=2),  # the CPU demo (make gen-demo)
    "S/2": dict(hidden_size=384, depth=12, num_heads=6, patch_size=2),
    "B/2": dict(hidden_size=768, depth=12, num_heads=12, patch_size=2),
    "L/2": dict(hidden_size=1024, depth=24, num_heads=16, patch_size=2),
    "XL/2": dict(hidden_size=1152, depth=28, num_heads=16, patch_size=2),
}


def sincos_pos_embed_2d(dim: int, grid_h: int, grid_w: int) -> Tensor:
    """(grid_h * grid_w, dim) fixed 2D sin-cos embedding, row-major; half the channels encode the
    row, half the column (as in MAE / DiT, whose grids are square; this one need not be)."""
    if dim % 4:
        raise UserInputError(f"hidden_size must be a multiple of 4 for 2D sin-cos embeddings, got {dim}")
    omega = 1.0 / 10000 ** (torch.arange(dim // 4, dtype=torch.float64) / (dim / 4))  # (D/4,)
    rows, cols = torch.meshgrid(torch.arange(grid_h, dtype=torch.float64), torch.arange(grid_w, dtype=torch.float64), indexing="ij")

    def embed(pos: Tensor) -> Tensor:
        angle = pos.reshape(-1, 1) * omega  # (T, D/4)
        return torch.cat([angle.sin(), angle.cos()], dim=1)  # (T, D/2)

    return torch.cat([embed(cols), embed(rows)], dim=1).float()  # (T, D)


def timestep_embedding(t: Tensor, dim: int, max_period: float = 10000.0) -> Tensor:
    """(B,) timesteps (may be fractional) -> (B, dim) sinusoidal features."""
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, device=t.device, dtype=torch.float32) / half)
    args = t.float()[:, None] * freqs[None]
    emb = torch.cat([args.cos(), args.sin()], dim=-1)
    return torch.cat([emb, torch.zeros_like(emb[:, :1])], dim=-1) if dim % 2 else emb


def modulate(x: Tensor, shift: Tensor, scale: Tensor) -> Tensor:
    return x * (1 + scale[:, None]) + shift[:, None]


class DiTBlock(nn.Module):
    """Pre-norm transformer block whose norms are modulated by the conditioning (adaLN-Zero)."""

    def __init__(self, dim: int, num_heads: int, mlp_ratio: float = 4.0):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, elementwise_affine=False, eps=1e-6)
        self.attn = Attention(dim, num_heads=num_heads, qkv_bias=True)
        self.norm2 = nn.LayerNorm(dim, elementwise_affine=False, eps=1e-6)
        self.mlp = Mlp(dim, int(dim * mlp_ratio), act_layer=lambda: nn.GELU(approximate="tanh"))
        self.adaLN_modulation = nn.Sequential(nn.SiLU(), nn.Linear(dim, 6 * dim))

    def forward(self, x: Tensor, c: Tensor, attn_mask: Tensor | None = None) -> Tensor:
        sh_a, sc_a, g_a, sh_m, sc_m, g_m = self.adaLN_modulation(c).chunk(6, dim=1)  # 6 x (B, D)
        x = x + g_a[:, None] * self.attn(modulate(self.norm1(x), sh_a, sc_a), attn_mask=attn_mask)  # (B, T, D)
        return x + g_m[:, None] * self.mlp(modulate(self.norm2(x), sh_m, sc_m))


class DiT(nn.Module):
    """Class- (or text-) conditional DiT on latents of any grid size, one ratio per batch.

    Args:
        in_channels: latent channels C of the tokenizer.
        hidden_size: transformer width D.
        depth: number of DiT blocks.
        num_heads: attention heads.
        patch_size: latent cells per token side (2: a 32x32 latent gives 256 tokens).
        mlp_ratio: MLP width / D.
        num_classes: class labels; index ``num_classes`` is the "no class" label used by
            classifier-free guidance (0: no class conditioning).
        text_dim: width of a pooled text embedding to condition on (0: none); a learned vector
            stands for "no text".
        ratios: the compression ratios with a learned embedding.
        preset: start from a named size in ``DIT_PRESETS`` (``S/2``, ``B/2``, ``L/2``, ``XL/2``,
            ``mini``, ``tiny``); explicit ``hidden_size`` / ``depth`` / ``num_heads`` / ``patch_size`` override it.
    """

    def __init__(
        self,
        in_channels: int = 16,
        hidden_size: int | None = None,
        depth: int | None = None,
        num_heads: int | None = None,
        patch_size: int | None = None,
        mlp_ratio: float = 4.0,
        num_classes: int = 1000,
        text_dim: int = 0,
        ratios: Sequence[int] = DEFAULT_RATIOS,
        preset: str | None = "B/2",
    ):
        super().__init__()
        if preset is not None and preset not in DIT_PRESETS:
            raise UserInputError(f"unknown DiT preset {preset!r}; choose from {list(DIT_PRESETS)}")
        base = DIT_PRESETS.get(preset, {}) if preset else {}
        given = dict(hidden_size=hidden_size, depth=depth, num_heads=num_heads, patch_size=patch_size)
        size = {k: v if v is not None else base.get(k) for k, v in given.items()}
        if missing := [k for k, v in size.items() if v is None]:
            raise UserInputError(f"DiT needs {missing} (or a preset)")
        if size["hidden_size"] % size["num_heads"]:
            raise UserInputError(f"hidden_size {size['hidden_size']} is not divisible by num_heads {size['num_heads']}")
        d, p = size["hidden_size"], size["patch_size"]
        self.config = dict(in_channels=in_channels, mlp_ratio=mlp_ratio, num_classes=num_classes, text_dim=text_dim,
                           ratios=[int(r) for r in ratios], preset=None, **size)
        self.in_channels, self.patch_size, self.hidden_size = in_channels, p, d
        self.num_classes, self.text_dim, self.ratios = num_classes, text_dim, tuple(int(r) for r in ratios)
        self.x_embedder = nn.Conv2d(in_channels, d, kernel_size=p, stride=p)
        self.t_embedder = Mlp(256, d, d, act_layer=nn.SiLU)
        self.y_embedder = nn.Embedding(num_classes + 1, d) if num_classes > 0 else None  # +1: the null label
        self.text_proj = nn.Linear(text_dim, d) if text_dim > 0 else None
        self.null_text = nn.Parameter(torch.zeros(text_dim)) if text_dim > 0 else None
        self.ratio_embedder = nn.Embedding(len(self.ratios), d)
        self.blocks = nn.ModuleList(DiTBlock(d, size["num_heads"], mlp_ratio) for _ in range(size["depth"]))
        self.final_norm = nn.LayerNorm(d, elementwise_affine=False, eps=1e-6)
        self.final_modulation = nn.Sequential(nn.SiLU(), nn.Linear(d, 2 * d))
        self.final_linear = nn.Linear(d, p * p * in_channels)
        self._pos_cache: dict[tuple[int, int, str], Tensor] = {}
        self.initialize_weights()

    def initialize_weights(self) -> None:
        """DiT's init: Xavier linears, normal(0.02) embeddings, zero adaLN modulations and output."""
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.xavier_uniform_(m.weight)
                nn.init.zeros_(m.bias)
        w = self.x_embedder.weight.data
        nn.init.xavier_uniform_(w.view(w.shape[0], -1))
        nn.init.zeros_(self.x_embedder.bias)
        for emb in (self.y_embedder, self.ratio_embedder):
            if emb is not None:
                nn.init.normal_(emb.weight, std=0.02)
        for lin in (self.t_embedder.fc1, self.t_embedder.fc2):
            nn.init.normal_(lin.weight, std=0.02)
        for block in self.blocks:
            nn.init.zeros_(block.adaLN_modulation[-1].weight)
            nn.init.zeros_(block.adaLN_modulation[-1].bias)
        for lin in (self.final_modulation[-1], self.final_linear):
            nn.init.zeros_(lin.weight)
            nn.init.zeros_(lin.bias)

    # ------------------------------------------------------------------ pieces
    def ratio_index(self, ratio: int) -> int:
        if ratio not in self.ratios:
            raise UserInputError(f"this DiT has no embedding for ratio {ratio}; it knows {list(self.ratios)}")
        return self.ratios.index(ratio)

    def pos_embed(self, grid_h: int, grid_w: int, device: torch.device) -> Tensor:
        """(1, T, D) for a grid of ``grid_h x grid_w`` tokens; computed once per grid and device."""
        key = (grid_h, grid_w, str(device))
        if key not in self._pos_cache:
            self._pos_cache[key] = sincos_pos_embed_2d(self.hidden_size, grid_h, grid_w).to(device)[None]
        return self._pos_cache[key]

    def condition(self, t: Tensor, ratio: int | Tensor, y: Tensor | None = None, text: Tensor | None = None) -> Tensor:
        """(B, D) conditioning: timestep + class (or text) + ratio embedding.

        Args:
            t: (B,) diffusion timesteps.
            ratio: one ratio for the batch, or (B,) ratio indices (``ratio_index``) per item.
            y: (B,) labels; ``num_classes`` = no label (guidance's unconditional branch).
            text: (B, text_dim) pooled text embeddings; rows of NaN = no text.
        """
        c = self.t_embedder(timestep_embedding(t, 256).to(self.x_embedder.weight.dtype))  # (B, D)
        if self.y_embedder is not None:
            if y is None:
                y = torch.full_like(t, self.num_classes, dtype=torch.long)
            # Checked where it is free: on CPU tensors. On an accelerator int(y.min()) would sync the device on
            # every training step; training labels are already bounded by the module's setup (classes <= num_classes).
            if y.device.type == "cpu" and (int(y.min()) < 0 or int(y.max()) > self.num_classes):
                raise UserInputError(f"class labels must be in [0, {self.num_classes - 1}] (or {self.num_classes} = none), "
                                     f"got {int(y.min())}..{int(y.max())}")
            c = c + self.y_embedder(y)
        if self.text_proj is not None:
            text = self.null_text.expand(len(t), -1) if text is None else torch.where(text.isnan(), self.null_text, text)
            c = c + self.text_proj(text.to(c.dtype))
        idx = torch.full_like(t, self.ratio_index(int(ratio)), dtype=torch.long) if isinstance(ratio, int) else ratio
        return c + self.ratio_embedder(idx)

    def tokens(self, x: Tensor) -> tuple[Tensor, tuple[int, int]]:
        """(B, C, h, w) latent -> (B, T, D) tokens with position embeddings, and the token grid."""
        p = self.patch_size
        if x.shape[-2] % p or x.shape[-1] % p:
            raise UserInputError(f"latent grid {tuple(x.shape[-2:])} is not divisible by the patch size {p}")
        x = self.x_embedder(x)  # (B, D, h/p, w/p)
        gh, gw = x.shape[-2:]
        return x.flatten(2).transpose(1, 2) + self.pos_embed(gh, gw, x.device), (gh, gw)  # (B, T, D)

    def blocks_forward(self, h: Tensor, c: Tensor, attn_mask: Tensor | None = None) -> Tensor:
        """(B, T, D) tokens -> (B, T, p*p*C) per-token outputs."""
        for block in self.blocks:
            h = block(h, c, attn_mask)
        shift, scale = self.final_modulation(c).chunk(2, dim=1)
        return self.final_linear(modulate(self.final_norm(h), shift, scale))  # (B, T, p*p*C)

    def unpatchify(self, out: Tensor, grid: tuple[int, int]) -> Tensor:
        """(B, T, p*p*C) -> (B, C, h, w)."""
        (gh, gw), p, c = grid, self.patch_size, self.in_channels
        out = out.reshape(out.shape[0], gh, gw, p, p, c)
        return torch.einsum("bhwpqc->bchpwq", out).reshape(out.shape[0], c, gh * p, gw * p)

    # ------------------------------------------------------------------ forward
    def forward(self, x: Tensor, t: Tensor, ratio: int, y: Tensor | None = None, text: Tensor | None = None) -> Tensor:
        """Predict the noise (or velocity) for a batch of one ratio.

        Args:
            x: (B, C, h, w) noisy latents; any grid divisible by the patch size.
            t: (B,) timesteps.
            ratio: the batch's compression ratio.
            y: (B,) class labels (``num_classes`` = unconditional).
            text: (B, text_dim) pooled text embeddings.

        Returns:
            (B, C, h, w), the same shape as ``x``.
        """
        h, grid = self.tokens(x)  # (B, T, D)
        c = self.condition(t, ratio, y, text)  # (B, D)
        return self.unpatchify(self.blocks_forward(h, c), grid)

    def num_params(self) -> int:
        return sum(p.numel() for p in self.parameters())
