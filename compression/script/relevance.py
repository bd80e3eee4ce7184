"""Query relevance `r [N]` in [0, 1], the "quality" half of Script's DPP kernel (spec §8.3).

- `relevance_llm_embed` (our adaptation; the only source our adapters can serve): cosine between each
  projected visual token and the mean LLM input embedding of the question tokens. Both live in the LLM's
  input space, so no CLIP text tower is needed.
- `relevance_clip`: CDPruner-style, mean cosine between CLIP image embeds and each 77-token text segment.

Both then apply the sign (`+1` = paper; `−1` = CDPruner's empirical negation, spec pitfall 2) and a per-frame
min-max to [0, 1). A flat relevance (range < 1e-6), or no query at all, gives `r = 1` everywhere: the kernel
becomes the plain similarity and the DPP a pure diversity selection, instead of the all-zero kernel (HEAD:
index 0 repeated; CDPruner: NaN) that min-max of a constant would give.

`head_relevance` and `cdpruner_relevance` transcribe the released code for reference only (test vector S2).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from vlmedge.compression.script.gsp import work_dtype

FLAT = 1e-6


def normalize_relevance(x: torch.Tensor) -> torch.Tensor:
    """Per-frame min-max `(x − min) / (max − min + 1e-6)`, or all ones when the range is below 1e-6."""
    span = x.max() - x.min()
    r = (x - x.min()) / (span + FLAT)
    return torch.where(span < FLAT, torch.ones_like(r), r)  # no host sync: the flat case is a select


def relevance_llm_embed(H: torch.Tensor, q: torch.Tensor | None, sign: int = 1) -> torch.Tensor:
    """`r_i` from `x_i = sign · cos(H_i, q)`, `H [N, D]` projected tokens, `q [D]` mean question embedding."""
    dt = work_dtype(H)
    if q is None:
        return torch.ones(H.shape[0], dtype=dt, device=H.device)
    hn = F.normalize(H.to(dt), dim=-1)
    qn = F.normalize(q.to(device=H.device, dtype=dt).reshape(-1), dim=0)
    return normalize_relevance(sign * (hn @ qn))


def relevance_clip(E: torch.Tensor, Q: torch.Tensor | None, sign: int = 1) -> torch.Tensor:
    """`r_i` from `x_i = sign · mean_m cos(E_i, Q_m)`, `E [N, C]` CLIP image embeds, `Q [M, C]` (or `[C]`)
    text embeds, one row per 77-token segment."""
    dt = work_dtype(E)
    if Q is None:
        return torch.ones(E.shape[0], dtype=dt, device=E.device)
    en = F.normalize(E.to(dt), dim=-1)
    qn = F.normalize(Q.to(device=E.device, dtype=dt).reshape(-1, E.shape[-1]), dim=-1)
    return normalize_relevance(sign * (en @ qn.T).mean(dim=-1))


def head_relevance(E: torch.Tensor, Q: torch.Tensor) -> torch.Tensor:
    """REFERENCE ONLY (spec §4 step 4): HEAD keeps the top half of the text segments by mean raw dot product,
    negates the mean raw dot product with them and min-maxes with +1e-6 (no flat-case guard)."""
    E, Q = E.double(), Q.double().reshape(-1, E.shape[-1])
    tr = (Q @ E.T).mean(dim=-1)
    tr = (tr - tr.min()) / (tr.max() - tr.min() + 1e-6)
    q_sel = Q[torch.topk(tr, max(1, int(0.5 * Q.shape[0]))).indices]
    x = (-(E @ q_sel.T)).mean(dim=-1)
    return (x - x.min()) / (x.max() - x.min() + 1e-6)


def cdpruner_relevance(E: torch.Tensor, Q: torch.Tensor) -> torch.Tensor:
    """REFERENCE ONLY (spec §4, CDPruner-exact): negated mean cosine, min-max as `(x − min + 1e-6)/(max − min)`
    (so the minimum is 1e-6/range, not 0, and a flat frame divides by zero)."""
    en = F.normalize(E.double(), dim=-1)
    qn = F.normalize(Q.double().reshape(-1, E.shape[-1]), dim=-1)
    x = -(en @ qn.T).mean(dim=-1)
    return (x - x.min() + 1e-6) / (x.max() - x.min())
