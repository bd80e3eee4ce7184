"""Visual Importance Predictor (VIP, released `AttnFuserV1`; spec §4, init §5): glimpse attention logits of
one image plus M ViT taps → one keep logit per visual token.

    x = attn_in_proj(A)                                    A [N, n_sel·H_llm] → [N, F]
    for m, V_m in enumerate(taps):                         deep → shallow
        c = cond_in_projs[m](V_m)                          [N, C]
        y = norm1(x)
        q, k = W_q[y; c], W_k[y; c]                        (F+C) → (F+C), `heads` heads, 2-D RoPE on both
        v = W_v y                                          F → F
        x = x + W_o SDPA(q, k, v)                          full attention within the image, scale 1/√d_qk
        y = norm2(x)
        x = x + W_down(SiLU(W_gate y) ⊙ W_up y)            F → mlp_ratio·F → F
    z = out_proj(x)                                        after the last block only (no deep supervision)

The ViT tap conditions the queries and keys only (which tokens attend to which), while the values carry the
attention-logit stream; that is why q/k are (F+C)-wide and v/o F-wide.

One image per call: attention is global within an image and block-diagonal across images, so a multi-image
sample is just several calls. Tokens are in raster order; the released code permutes them into the ViT's window
order and back, a no-op under global attention (spec §4).

Parameter names follow the release (`attn_in_proj`, `cond_in_projs.m`, `layers.m.{norm1,attn.*_proj,norm2,
mlp.*_proj}`) so a released `attn_fuser` state dict loads through `remap_released_state_dict`, which only renames
`attn_out_projs.{M-1}` to `out_proj` (the other entries of that list are parameterless Identities).
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

from vlmedge.compression.glimpse.keep import _check_grid
from vlmedge.compression.glimpse.rope2d import apply_rope, rope_2d
from vlmedge.errors import InputError


@dataclass
class VIPConfig:
    """VIP sizes. Defaults are the released Qwen2.5-VL values (F 256, C 512, 4 heads, MLP ×2)."""

    attn_dim: int  # |selected layers| × LLM query heads (28 for Qwen2.5-VL-7B)
    vit_dim: int  # ViT hidden size of the taps (1280)
    n_taps: int = 4  # M, one block per tap
    hidden: int = 256  # F
    cond: int = 512  # C
    heads: int = 4
    mlp_ratio: int = 2
    eps: float = 1e-6
    rope_theta: float = 1e4

    def __post_init__(self) -> None:
        for name in ("attn_dim", "vit_dim", "n_taps", "hidden", "cond", "heads", "mlp_ratio"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise InputError(f"VIPConfig: {name} must be a positive integer, got {v!r}")
        if self.hidden % self.heads or (self.hidden + self.cond) % self.heads:
            raise InputError(f"VIPConfig: hidden ({self.hidden}) and hidden + cond ({self.hidden + self.cond}) "
                             f"must both be divisible by heads ({self.heads})")
        if self.qk_head_dim % 4:
            raise InputError(f"VIPConfig: the q/k head dim (hidden + cond) / heads = {self.qk_head_dim} must be "
                             "divisible by 4 for the 2-D RoPE")
        if not self.eps > 0 or not self.rope_theta > 0:
            raise InputError(f"VIPConfig: eps and rope_theta must be > 0, got {self.eps}, {self.rope_theta}")

    @property
    def qk_head_dim(self) -> int:
        return (self.hidden + self.cond) // self.heads

    @property
    def v_head_dim(self) -> int:
        return self.hidden // self.heads

    @classmethod
    def for_model(cls, n_sel_heads: int, vit_dim: int, n_taps: int, llm_hidden: int, heads: int = 4,
                  **overrides) -> "VIPConfig":
        """Sizes for an LLM without a released config: `attn_dim = n_sel_heads` (selected layers × heads).

        F is llm_hidden / 2 rounded to a multiple of 4·heads and clamped to [64, 256]; C = 2F as released.
        - 256 is the ceiling because the release uses it unchanged from 3B (hidden 2048) to 7B (3584): the task
          (a per-token binary mask on the grid) depends on the image, not on the LLM width, so any LLM at least
          512 wide gets the released VIP.
        - Below that, F = hidden/2 keeps the VIP narrower than the model it prunes; at F = hidden/2 each VIP
          block costs ~6.5·hidden² MACs per token against ~16·hidden² for an LLM layer, so the four blocks stay
          near one or two LLM layers' worth of compute even for a toy LLM.
        - 64 is the floor where 4 heads still get 16-d values; a multiple of 4·heads keeps the value head dim
          an integer and the q/k head dim 3F/heads divisible by 4, as the 2-D RoPE needs.
        """
        if isinstance(llm_hidden, bool) or not isinstance(llm_hidden, int) or llm_hidden < 1:
            raise InputError(f"VIPConfig.for_model: llm_hidden must be a positive integer, got {llm_hidden!r}")
        if isinstance(heads, bool) or not isinstance(heads, int) or heads < 1:
            raise InputError(f"VIPConfig.for_model: heads must be a positive integer, got {heads!r}")
        step = 4 * heads
        lo = -(-64 // step) * step
        hi = max(lo, 256 // step * step)
        f = min(hi, max(lo, round(llm_hidden / 2 / step) * step))
        return cls(attn_dim=n_sel_heads, vit_dim=vit_dim, n_taps=n_taps, hidden=f, cond=2 * f, heads=heads,
                   **overrides)


class CondAttention(nn.Module):
    """Self-attention whose queries/keys see `[y; c]` and whose values see `y` only."""

    def __init__(self, cfg: VIPConfig):
        super().__init__()
        qk = cfg.hidden + cfg.cond
        self.heads = cfg.heads
        self.q_proj = nn.Linear(qk, qk, bias=False)
        self.k_proj = nn.Linear(qk, qk, bias=False)
        self.v_proj = nn.Linear(cfg.hidden, cfg.hidden, bias=False)
        self.o_proj = nn.Linear(cfg.hidden, cfg.hidden, bias=False)

    def forward(self, y: torch.Tensor, c: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
        n = y.shape[0]
        yc = torch.cat([y, c], dim=-1)
        q = self.q_proj(yc).view(n, self.heads, -1).transpose(0, 1)  # [heads, N, d_qk]
        k = self.k_proj(yc).view(n, self.heads, -1).transpose(0, 1)
        v = self.v_proj(y).view(n, self.heads, -1).transpose(0, 1)  # [heads, N, d_v]
        q, k = apply_rope(q, cos, sin), apply_rope(k, cos, sin)
        o = F.scaled_dot_product_attention(q[None], k[None], v[None])[0]
        return self.o_proj(o.transpose(0, 1).reshape(n, -1))


class GatedMLP(nn.Module):
    def __init__(self, cfg: VIPConfig):
        super().__init__()
        inner = cfg.mlp_ratio * cfg.hidden
        self.gate_proj = nn.Linear(cfg.hidden, inner)
        self.up_proj = nn.Linear(cfg.hidden, inner)
        self.down_proj = nn.Linear(inner, cfg.hidden)

    def forward(self, y: torch.Tensor) -> torch.Tensor:
        return self.down_proj(F.silu(self.gate_proj(y)) * self.up_proj(y))


class VIPBlock(nn.Module):
    """Pre-norm block: conditional attention then gated MLP, both residual."""

    def __init__(self, cfg: VIPConfig):
        super().__init__()
        self.norm1 = nn.RMSNorm(cfg.hidden, eps=cfg.eps)
        self.attn = CondAttention(cfg)
        self.norm2 = nn.RMSNorm(cfg.hidden, eps=cfg.eps)
        self.mlp = GatedMLP(cfg)

    def forward(self, x, c, cos, sin):
        x = x + self.attn(self.norm1(x), c, cos, sin)
        return x + self.mlp(self.norm2(x))


class VIP(nn.Module):
    """AttnFuserV1: `forward(attn [N, attn_dim], taps, grid_hw) -> logits [N]` float32, one image per call."""

    def __init__(self, cfg: VIPConfig):
        super().__init__()
        self.cfg = cfg
        self.attn_in_proj = nn.Linear(cfg.attn_dim, cfg.hidden)
        self.cond_in_projs = nn.ModuleList(nn.Linear(cfg.vit_dim, cfg.cond) for _ in range(cfg.n_taps))
        self.layers = nn.ModuleList(VIPBlock(cfg) for _ in range(cfg.n_taps))
        self.out_proj = nn.Linear(cfg.hidden, 1)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """Released init (§5): Xavier-uniform weights and zero biases for every projection, norms at 1."""
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.xavier_uniform_(m.weight)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
            elif isinstance(m, nn.RMSNorm):
                nn.init.ones_(m.weight)

    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters())

    def _check_inputs(self, attn, taps, grid_hw) -> tuple[torch.Tensor, list[torch.Tensor], tuple[int, int]]:
        cfg = self.cfg
        if not isinstance(attn, torch.Tensor) or attn.ndim != 2 or attn.shape[1] != cfg.attn_dim:
            shape = tuple(attn.shape) if isinstance(attn, torch.Tensor) else type(attn).__name__
            raise InputError(f"VIP: attn must be one image's glimpse logits [N, {cfg.attn_dim}] (no batch dim), "
                             f"got {shape}")
        n = attn.shape[0]
        if isinstance(taps, torch.Tensor):
            taps = list(taps) if taps.ndim == 3 else None
        elif isinstance(taps, Sequence):
            taps = list(taps)
        else:
            taps = None
        if taps is None or len(taps) != cfg.n_taps:
            raise InputError(f"VIP: taps must be a list of {cfg.n_taps} tensors [N, {cfg.vit_dim}] (deep → "
                             "shallow) or one tensor [n_taps, N, vit_dim]")
        for i, t in enumerate(taps):
            if not isinstance(t, torch.Tensor) or tuple(t.shape) != (n, cfg.vit_dim):
                shape = tuple(t.shape) if isinstance(t, torch.Tensor) else type(t).__name__
                raise InputError(f"VIP: taps[{i}] must have shape [{n}, {cfg.vit_dim}], got {shape}")
        h, w = _check_grid(grid_hw)
        if h * w != n:
            raise InputError(f"VIP: grid_hw {h}×{w} = {h * w} tokens does not match the {n} rows of attn")
        return attn, taps, (h, w)

    def forward(self, attn: torch.Tensor, taps, grid_hw) -> torch.Tensor:
        attn, taps, grid = self._check_inputs(attn, taps, grid_hw)
        w = self.attn_in_proj.weight
        cos, sin = rope_2d(grid, self.cfg.qk_head_dim, self.cfg.rope_theta, device=w.device)
        x = self.attn_in_proj(attn.to(w.device, w.dtype))
        for cond_proj, layer, tap in zip(self.cond_in_projs, self.layers, taps):
            x = layer(x, cond_proj(tap.to(w.device, w.dtype)), cos, sin)
        return self.out_proj(x).squeeze(-1).float()


_RELEASED_ROOTS = ("attn_in_proj", "cond_in_projs", "layers", "attn_out_projs")


def remap_released_state_dict(state_dict: Mapping[str, torch.Tensor], n_taps: int = 4) -> dict[str, torch.Tensor]:
    """Renames a released `attn_fuser` state dict (with or without the `attn_fuser.` prefix; other modules of
    `new_modules_gp.pt` are skipped) to this module's names."""
    out = {}
    last = f"attn_out_projs.{n_taps - 1}."
    for key, value in state_dict.items():
        if key.startswith("attn_fuser."):
            key = key[len("attn_fuser."):]
        if key.split(".", 1)[0] not in _RELEASED_ROOTS:
            continue  # glimpse embeddings, le_proj, le_norm, the RoPE buffer: not VIP parameters
        if key.startswith("attn_out_projs."):
            if not key.startswith(last):
                raise InputError(f"VIP: {key} is a deep-supervision head; only {last}* is expected with "
                                 f"{n_taps} taps")
            key = "out_proj." + key[len(last):]
        out[key] = value
    return out
