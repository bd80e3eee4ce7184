"""Script's per-frame selection (spec §8): GSP keep set ∩ DPP selection, filled to exactly T tokens.

1. `S` = cosine similarity of the projected tokens, shared by GSP and the DPP kernel.
2. GSP prunes `n_gsp` redundant source tokens (`gsp.py`).
3. The DPP kernel `L = diag(r) S diag(r)` is solved greedily for `K_dpp = min(N, T + n_gsp)` steps (`dpp.py`).
4. Final set = GSP-kept tokens among the first T picks, then further GSP-kept tokens as the greedy order goes
   on past T, then (never in practice, see below) GSP-pruned ones in DPP order; sorted ascending.

Step 4 is simply "the first T GSP-kept tokens of the greedy order". K_dpp steps always suffice: at most n_gsp of
the first T + n_gsp picks can be GSP-pruned, so at least T are kept; and `n_gsp ≤ N − T` leaves at least T
kept tokens overall. Filling only from the T-element DPP set, as the released HEAD code does, would return the
DPP set unchanged and make GSP a no-op.

`gsp_ratio = 0` gives n_gsp = 0 and hence the plain DPP top-T: the QCSP-only (CDPruner-like) baseline.
"""
from __future__ import annotations

import torch

from vlmedge.compression.script.dpp import fast_greedy_map
from vlmedge.compression.script.gsp import gsp_prune, similarity
from vlmedge.compression.script.relevance import quality, relevance_llm_embed


def intersect_and_fill(order: torch.Tensor, gsp_keep: torch.Tensor, T: int) -> torch.Tensor:
    """The first `T` tokens of the greedy `order` that GSP kept, topped up with GSP-pruned tokens in order if
    the order is too short; ascending."""
    kept = gsp_keep[order]
    chosen = torch.cat([order[kept], order[~kept]])[:T]
    return chosen.sort().values


def script_select(H: torch.Tensor, T: int, q: torch.Tensor | None = None, ratio: float = 0.5, tau: float = 0.2,
                  gamma: float = 1.0, sign: int = 1, eps: float = 1e-10,
                  relevance: torch.Tensor | None = None, reduce: str = "mean",
                  theta: float | None = None) -> torch.Tensor:
    """Kept indices (ascending long, exactly `min(T, N)`) of one frame's projected tokens `H [N, D]`.

    `q [M, D]`: the question's LLM input embeddings (None: r = 1, pure diversity), reduced by `reduce`
    (`relevance.relevance_llm_embed`). `relevance [N]`, when given, replaces the `llm_embed` relevance (e.g.
    `relevance_clip` for models with a CLIP text tower). `theta`: the kernel's quality (`relevance.quality`;
    None = the spec's `r`).
    """
    if H.ndim != 2:
        raise ValueError(f"script_select takes one frame's tokens [N, D], got shape {tuple(H.shape)}")
    if T < 0:
        raise ValueError(f"token budget must be >= 0, got {T}")
    n = H.shape[0]
    t = min(int(T), n)
    if t >= n:
        return torch.arange(n, device=H.device)
    S = similarity(H)
    r = (relevance_llm_embed(H, q, sign, reduce) if relevance is None
         else relevance.to(device=S.device, dtype=S.dtype))
    gsp_keep, n_gsp = gsp_prune(S, t, ratio, tau, gamma)
    qual = quality(r, theta)
    L = qual[:, None] * S * qual[None, :]
    order = fast_greedy_map(L, min(n, t + n_gsp), r, eps)
    return intersect_and_fill(order, gsp_keep, t)
