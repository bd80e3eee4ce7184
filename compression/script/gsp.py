"""Script's graph-structured pruning (GSP, spec §3 and §8.2): drop the source tokens that have the most
strong neighbours on the other side of a bipartite token graph.

The graph is ToMe's bipartite split: `src` = even token indices, `dst` = odd ones, edges `Sb = S[src][:, dst]`.
Only source tokens are ever pruned, so every region of the frame keeps its destination half (spatial coverage
survives however redundant the frame is), and the redundancy estimate costs N²/4 pairs instead of N². There are
no self-loops, unlike the released HEAD code (whose dense score counts `S_ii = 1` for every token).

Redundancy (the released code's formula, applied to the bipartite graph): with `valid = Sb ≥ τ`,
`deg_i = Σ_j valid_ij`, `μ_i = mean of Sb_ij over valid j`, `red_i = deg_i · exp(γ (μ_i − τ))`; `red_i = 0`
for an isolated token. Since `μ_i ≥ τ` whenever `deg_i ≥ 1`, every connected token scores at least its degree,
so isolated tokens always rank last and are never pruned.

All functions are pure and batch-free (one frame's `[N, D]` tokens). Work is in float32, or float64 when the
input already is (so a float64 reference run is a true reference).
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F


def work_dtype(t: torch.Tensor) -> torch.dtype:
    """float64 for float64 inputs, else float32: fp16/bf16 similarities flip near-ties (spec §7.3)."""
    return torch.float64 if t.dtype == torch.float64 else torch.float32


def similarity(h: torch.Tensor) -> torch.Tensor:
    """Cosine similarity `[N, N]` of the projected tokens `h [N, D]`, shared by GSP and the DPP kernel."""
    hn = F.normalize(h.to(work_dtype(h)), dim=-1)
    return hn @ hn.T


def gsp_redundancy(S: torch.Tensor, tau: float = 0.2, gamma: float = 1.0) -> tuple[torch.Tensor, torch.Tensor]:
    """Degree (long) and redundancy of each source (even-index) token in the bipartite graph of `S [N, N]`;
    both `[ceil(N/2)]`, in source order (source `i` is token `2i`)."""
    sb = S[0::2, 1::2]
    valid = sb >= tau
    deg = valid.sum(dim=1)
    mu = (sb * valid).sum(dim=1) / deg.clamp(min=1)
    red = deg * torch.exp(gamma * (mu - tau))
    return deg, torch.where(deg > 0, red, torch.zeros_like(red))


def num_gsp(deg: torch.Tensor, n: int, budget: int, ratio: float) -> int:
    """Source tokens GSP prunes: `min(#connected, floor(ratio · |src|), N − T)`. The last term leaves the DPP at
    least T tokens to choose from; the first never prunes a token that has no redundant neighbour."""
    # the 1e-9 keeps floor(0.29 · 100) at 29 although 0.29 · 100 = 28.999999999999996 in binary
    cap = min(math.floor(ratio * deg.shape[0] + 1e-9), n - budget)
    if cap <= 0:
        return 0
    return min(int((deg >= 1).sum()), cap)


def gsp_prune(S: torch.Tensor, budget: int, ratio: float = 0.5, tau: float = 0.2,
              gamma: float = 1.0) -> tuple[torch.Tensor, int]:
    """GSP keep mask `[N]` (bool) for a frame whose final budget is `budget` tokens, and the number pruned.

    The most redundant source tokens go first; equal redundancy prunes the lower index first (stable sort), so
    the result does not depend on the sort implementation. `ratio = 0` disables GSP.
    """
    if not 0.0 <= ratio < 1.0:
        raise ValueError(f"GSP ratio must be in [0, 1), got {ratio}")
    n = S.shape[0]
    keep = torch.ones(n, dtype=torch.bool, device=S.device)
    deg, red = gsp_redundancy(S, tau, gamma)
    k = num_gsp(deg, n, max(0, min(int(budget), n)), ratio)
    if k:
        ranked = torch.sort(red, descending=True, stable=True).indices[:k]
        keep[2 * ranked] = False
    return keep, k


def head_structural_score(S: torch.Tensor, tau: float = 0.2, K: int = 4,
                          gamma: float = 1.0) -> tuple[torch.Tensor, torch.Tensor]:
    """REFERENCE ONLY (spec §4 step 3, test vector S1): the released HEAD code's dense score with self-loops
    and the `deg < K` fallback. HEAD keeps the top-T of this score (the most redundant tokens, the opposite of
    the paper) and its intersection makes it a no-op; Script here uses `gsp_redundancy` instead."""
    valid = S >= tau
    deg = valid.sum(dim=-1)
    mu = (S * valid).sum(dim=-1) / deg.clamp(min=1)
    cand = deg * torch.exp(gamma * (mu - tau))
    alt = S.sum(dim=-1) / S.shape[-1]
    return deg, torch.where(deg >= K, cand, 0.5 * cand + 0.5 * alt)
