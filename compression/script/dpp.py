"""Script's query-conditioned semantic pruning (QCSP, spec §4 and §8.4): the exact greedy MAP of a DPP with
kernel `L = diag(q) S diag(q)` (quality q = r in the spec, `exp(α·r)` by default: `relevance.quality`), by
incremental Cholesky (Chen, Zhang, Zhou, NeurIPS 2018, `fast-map-dpp`).

Each step picks the token with the largest remaining conditional variance `d_j` (the gain in log det of the
selected kernel block), appends the new Cholesky row `e = (L_j − C_{:i,j}ᵀ C_{:i}) / √d_j` and shrinks all
variances by `e²`: one GEMV and one argmax per step, no loop over token pairs.

Early stop (fast-map-dpp's `d_max < ε`): once the best remaining variance is ≤ ε the kernel is numerically
exhausted (duplicates, or zero relevance) and further Cholesky rows would divide by ~0. The rest of the order
is then the unselected tokens by descending relevance, lower index first on ties, so the order is always a
full, deterministic permutation prefix and never NaN (spec pitfall 6).

The loop has no host synchronisation: the stop test is carried as a tensor flag, steps after the stop leave
`C` and `d` untouched, and the tail is replaced once at the end. The step count is fixed by the caller, which
is what a CUDA graph or an exported loop needs.

`naive_head_dpp` transcribes the released HEAD update for reference only (test vector S2).
"""
from __future__ import annotations

import torch

from vlmedge.compression.script.gsp import work_dtype


def fast_greedy_map(L: torch.Tensor, steps: int, r: torch.Tensor | None = None, eps: float = 1e-10) -> torch.Tensor:
    """Greedy MAP order (long `[min(steps, N)]`) of the DPP with PSD kernel `L [N, N]`.

    `argmax` takes the first maximum and selected tokens are masked with −inf. `r [N]` orders the tail after
    an early stop (None: equal relevance, i.e. ascending index). float32, or float64 for float64 kernels.
    """
    n = L.shape[0]
    steps = max(0, min(int(steps), n))
    dev = L.device
    order = torch.zeros(steps, dtype=torch.long, device=dev)
    if steps == 0:
        return order
    dt = work_dtype(L)
    L = L.to(dt)
    d = torch.diagonal(L).clone()
    C = torch.zeros(steps, n, dtype=dt, device=dev)
    live = torch.ones(steps, dtype=torch.bool, device=dev)
    alive = torch.ones((), dtype=torch.bool, device=dev)
    neg_inf = torch.full((1,), float("-inf"), dtype=dt, device=dev)
    for i in range(steps):
        j = torch.argmax(d).view(1)
        dj = d.gather(0, j)
        alive = alive & (dj > eps).squeeze(0)  # NaN compares False: a NaN kernel stops too
        cj = C[:i].index_select(1, j).squeeze(1)  # [i]
        e = (L.index_select(0, j).squeeze(0) - cj @ C[:i]) / torch.sqrt(dj.clamp(min=eps))
        e = torch.where(alive, e, torch.zeros_like(e))
        C[i] = e
        d = d - e * e
        d.index_copy_(0, j, neg_inf)
        order[i] = j.squeeze(0)
        live[i] = alive
    k = int(live.sum())
    if k < steps:
        order[k:] = _by_relevance(order[:k], n, r, dev)[: steps - k]
    return order


def _by_relevance(taken: torch.Tensor, n: int, r: torch.Tensor | None, dev) -> torch.Tensor:
    """Tokens not in `taken`, by descending relevance, ties lower index first."""
    free = torch.ones(n, dtype=torch.bool, device=dev)
    free[taken] = False
    idx = torch.nonzero(free).flatten()
    if r is None:
        return idx
    return idx[torch.sort(r.to(dev)[idx], descending=True, stable=True).indices]


def naive_head_dpp(L: torch.Tensor, steps: int) -> torch.Tensor:
    """REFERENCE ONLY (spec §4 step 7, test vector S2): HEAD's "naive" greedy DPP, transcribed with its flaws.

    Earlier picks already have `d = −inf`, so their projection coefficients are −0 and `p = L[:, j]`: no
    orthogonalisation against earlier picks, hence not an exact MAP from the 3rd or 4th pick on. A pick with
    `d_j ≤ 0` skips the update (and keeps a finite `d_j`, which a later coefficient then divides by).
    """
    L = L.to(work_dtype(L))
    n = L.shape[0]
    steps = min(int(steps), n)
    d = torch.diagonal(L).clone()
    mask = torch.zeros(n, dtype=torch.bool, device=L.device)
    picks: list[int] = []
    for _ in range(steps):
        j = int(torch.argmax(d.masked_fill(mask, float("-inf"))))
        picks.append(j)
        mask[j] = True
        if d[j] <= 0:
            continue
        p = L[:, j].clone()
        for prev in picks[:-1]:
            p -= L[j, prev] / (d[prev] + 1e-6) * L[:, prev]
        p = p / (torch.sqrt(d[j]) + 1e-6)
        d -= p ** 2
        d[j] = float("-inf")
    return torch.tensor(picks, dtype=torch.long)
