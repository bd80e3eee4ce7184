"""Top-k by score with part of the budget spread evenly: the shared keep rule of STC's and OmniZip's context
tokens and GlimpsePrune's `spread` (our extension to all three; `stc.pruner.keep_from_scores` has the
measurement that motivated it)."""
from __future__ import annotations

import torch


def context_count(k: int, context: float) -> int:
    """How many of a frame's `k` kept tokens are evenly spaced context tokens (the rest go by score)."""
    return min(k - 1, int(round(context * k))) if k > 1 else 0


def even_ranks(n: int, c: int, device=None) -> torch.Tensor:
    """`c` ranks spread evenly over `n` positions in order: the j-th at floor((j + 0.5) * n / c). `c <= n`."""
    return ((torch.arange(c, device=device) + 0.5) * n / c).long()


def top_with_context(scores: torch.Tensor, k: int, largest: bool, context: float = 0.0) -> torch.Tensor:
    """Per row of `scores [B, P]`, `k` kept positions (ascending, long `[B, k]`): the `k - c` best by score
    (`largest` or smallest) and `c = context_count(k, context)` spread evenly, in raster order, over the
    positions the score left out (the j-th of them at rank floor((j + 0.5) * left / c)). `1 <= k < P`."""
    c = context_count(k, context)
    idx = torch.topk(scores, k - c, dim=-1, largest=largest).indices
    if c:
        left = torch.ones(scores.shape, dtype=torch.bool, device=scores.device)
        left.scatter_(-1, idx, False)
        rest = torch.nonzero(left)[:, 1].reshape(scores.shape[0], -1)  # every row leaves P - k + c positions
        idx = torch.cat([idx, rest[:, even_ranks(rest.shape[-1], c, scores.device)]], dim=-1)
    return idx.sort(dim=-1).values
