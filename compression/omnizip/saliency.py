"""Stage A — audio saliency (spec §3 steps 1–4): mean attention each audio-encoder frame receives in the
audio tower's last layer, pooled in pairs to LLM audio tokens.

Computed outside the attention kernel from the layer's `q`/`k` (`AudioTokens.q/k`, `[heads, T, head_dim]`,
captured by the adapter with a forward pre-hook), so the encoder itself may run any attention backend.

- `A_h = softmax(q_h k_hᵀ / √d_h)` over ALL `T` keys (the released code's global, unmasked softmax: it crosses
  the encoder's attention windows and, for several audio pieces, the pieces' boundaries);
- `imp[j] = Σ_h Σ_i A_h[i, j] / (H·T)` (sums to 1 over j), accumulated in fp32 tiles of `tile_heads` heads ×
  `tile_queries` queries, never materialising `[H, T, T]`;
- pooling: per audio piece, an odd last frame is dropped and pairs `(2j, 2j+1)` are averaged — the encoder's
  `AvgPool1d(2, 2)`, so score j belongs to LLM token j. With one piece this is the released global pooling;
  with several pieces of even length (every whole-40-ms chunk the adapter encodes) it is the same, and with
  odd pieces it stays aligned where the released global pooling would drift (spec §7 pitfall 7).
"""
from __future__ import annotations

from typing import Sequence

import torch


def audio_saliency(q: torch.Tensor, k: torch.Tensor, tile_heads: int = 4, tile_queries: int = 512) -> torch.Tensor:
    """Mean attention received per encoder frame, `q, k [H, T, d] → [T]` (fp32, sums to 1)."""
    if q.ndim != 3 or q.shape != k.shape:
        raise ValueError(f"q and k must both be [heads, T, head_dim]; got {tuple(q.shape)} and {tuple(k.shape)}")
    h, t, d = q.shape
    imp = torch.zeros(t, dtype=torch.float32, device=q.device)
    if t == 0:
        return imp
    scale = d ** -0.5
    for h0 in range(0, h, tile_heads):
        kh = k[h0:h0 + tile_heads].float()
        for i0 in range(0, t, tile_queries):
            qh = q[h0:h0 + tile_heads, i0:i0 + tile_queries].float()
            att = torch.softmax(torch.matmul(qh, kh.transpose(-1, -2)) * scale, dim=-1)  # [th, tq, T]
            imp += att.sum(dim=(0, 1))
    return imp / (h * t)


def pool_pairs(imp: torch.Tensor, lengths: Sequence[int] | None = None) -> torch.Tensor:
    """Averages pairs of encoder frames into LLM-token scores, per piece of `lengths` frames (default: one)."""
    lengths = [imp.shape[0]] if lengths is None else [int(n) for n in lengths]
    if sum(lengths) != imp.shape[0]:
        raise ValueError(f"piece lengths {lengths} do not add up to the {imp.shape[0]} scored frames")
    out, off = [], 0
    for n in lengths:
        m = n // 2
        out.append(imp[off:off + 2 * m].reshape(m, 2).mean(dim=1))
        off += n
    return torch.cat(out) if out else imp.new_zeros(0)


def clip_saliency(qs: Sequence[torch.Tensor], ks: Sequence[torch.Tensor], tile_heads: int = 4,
                  tile_queries: int = 512) -> torch.Tensor:
    """Scores for the LLM audio tokens of several audio pieces (in order) scored together, as the released code
    scores a clip's whole audio: one global softmax over all pieces' frames, then pooling per piece."""
    if not qs:
        return torch.zeros(0)
    imp = audio_saliency(torch.cat(list(qs), dim=1), torch.cat(list(ks), dim=1), tile_heads, tile_queries)
    return pool_pairs(imp, [q.shape[1] for q in qs])
