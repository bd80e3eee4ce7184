"""2-D rotary position embedding of the VIP (spec §4): Qwen2.5-VL's vision RoPE on the merged token grid.

For a per-head dimension `d` (divisible by 4): `Qwen2_5_VisionRotaryEmbedding(d / 2)` gives `d / 4` inverse
frequencies `theta^(-2i / (d/2))`; a token at (row, col) gets the angles `[row * f, col * f]` (`d / 2`), and
the angles are duplicated to `d` so that the rotate-half form rotates each pair `(i, i + d/2)` by one angle.
Rows use the first half of the pairs and columns the second, so `q·k` after RoPE depends on the 2-D offset
between the tokens only.

Everything is float32 and built the way the reference builds it (outer product of positions and frequencies,
then a gather), and `apply_rope` upcasts like `apply_rotary_pos_emb_vision`, so cos/sin and the rotated q/k
match the released path bit for bit in float32.
"""
from __future__ import annotations

import torch

from vlmedge.compression.glimpse.keep import _check_grid
from vlmedge.errors import InputError


def rope_2d(grid_hw, head_dim: int, theta: float = 1e4,
            device: torch.device | str | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """`(cos, sin)`, each `[h*w, head_dim]` float32, for the raster-ordered `grid_hw = (h, w)`."""
    h, w = _check_grid(grid_hw)
    if isinstance(head_dim, bool) or not isinstance(head_dim, int) or head_dim < 4 or head_dim % 4:
        raise InputError(f"GlimpsePrune: 2-D RoPE needs a head_dim divisible by 4 (row and column halves of "
                         f"rotated pairs), got {head_dim!r}")
    if not theta > 0:
        raise InputError(f"GlimpsePrune: RoPE theta must be > 0, got {theta}")
    dim = head_dim // 2
    inv_freq = 1.0 / (theta ** (torch.arange(0, dim, 2, dtype=torch.float, device=device) / dim))  # [d/4]
    table = torch.outer(torch.arange(max(h, w), dtype=torch.float, device=device), inv_freq)  # [max(h,w), d/4]
    rows = torch.arange(h, device=device).repeat_interleave(w)
    cols = torch.arange(w, device=device).repeat(h)
    angles = torch.cat([table[rows], table[cols]], dim=-1)  # [h*w, d/2]
    emb = torch.cat([angles, angles], dim=-1)
    return emb.cos(), emb.sin()


def rotate_half(x: torch.Tensor) -> torch.Tensor:
    """`cat[-x2, x1]` of the two halves of the last dimension."""
    x1, x2 = x.chunk(2, dim=-1)
    return torch.cat([-x2, x1], dim=-1)


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """`x * cos + rotate_half(x) * sin` for `x [..., T, d]` and `cos, sin [T, d]`; computed in float32,
    returned in `x`'s dtype."""
    if x.ndim < 2 or cos.shape != sin.shape or tuple(cos.shape) != tuple(x.shape[-2:]):
        raise InputError(f"GlimpsePrune: apply_rope needs x [..., T, d] with cos/sin [T, d]; got x "
                         f"{tuple(x.shape)}, cos {tuple(cos.shape)}, sin {tuple(sin.shape)}")
    xf = x.float()
    out = xf * cos.float() + rotate_half(xf) * sin.float()
    return out.to(x.dtype)
