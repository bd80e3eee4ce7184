"""Query relevance `r [N]` in [0, 1], the "quality" half of Script's DPP kernel (spec §8.3).

- `relevance_llm_embed` (our adaptation; the only source our adapters can serve): cosine between each
  projected visual token and the question's LLM input embeddings. Both live in the LLM's input space, so no
  CLIP text tower is needed. `reduce="mean"` (spec §8.3): against the mean embedding of the question tokens;
  `reduce="max"` (ours, the default `llm_embed_max` source): the best match over the question's tokens, so the
  content words ("square", "red") decide rather than the mean, which the function words ("what", "is", "the")
  dominate.
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


def relevance_llm_embed(H: torch.Tensor, q: torch.Tensor | None, sign: int = 1, reduce: str = "mean") -> torch.Tensor:
    """`r_i` from `x_i = sign · cos(H_i, mean_t q_t)` (`reduce="mean"`) or `sign · max_t cos(H_i, q_t)`
    (`"max"`); `H [N, D]` projected tokens, `q [M, D]` the question's token embeddings (`[D]`: one token)."""
    dt = work_dtype(H)
    if q is None:
        return torch.ones(H.shape[0], dtype=dt, device=H.device)
    hn = F.normalize(H.to(dt), dim=-1)
    q = q.to(device=H.device, dtype=dt).reshape(-1, H.shape[-1])
    if reduce == "mean":
        return normalize_relevance(sign * (hn @ F.normalize(q.mean(0), dim=0)))
    if reduce == "max":
        return normalize_relevance(sign * (hn @ F.normalize(q, dim=-1).T).amax(dim=-1))
    raise ValueError(f"reduce must be 'mean' or 'max', got {reduce!r}")


def quality(r: torch.Tensor, theta: float | None) -> torch.Tensor:
    """The DPP kernel's quality term from relevance `r` in [0, 1]. `theta=None` is the spec's `r` itself;
    otherwise CDPruner's relevance/diversity trade-off `exp(α·r)`, `α = θ / (2(1 − θ))`: quality in [1, e^α],
    so no token's quality is zero (θ = 0: pure diversity; θ → 1: relevance dominates)."""
    if theta is None:
        return r
    return torch.exp(theta / (2.0 * (1.0 - theta)) * r)


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
