"""STC-Cacher dynamic-token selection: which tokens a selective layer recomputes (spec §3).

Pure functions over one frame's keys `[T, C]` and the layer's reference keys `[T, C]`. The similarity is
the cosine over all C channels (all heads together), per token position; the `n` least similar tokens are
the "dynamic" ones, `n = max(1, min(int(T * r), T))`. The count depends only on T and r, so the selective
path has static shapes (what a CUDA graph or an exported engine needs).
"""
from __future__ import annotations

import torch


def num_dynamic(num_tokens: int, ratio: float) -> int:
    """Tokens recomputed per selective layer: `max(1, min(int(T * r), T))` (0.25 of 729 → 182)."""
    return max(1, min(int(num_tokens * ratio), num_tokens))


def key_similarity(keys: torch.Tensor, ref_keys: torch.Tensor) -> torch.Tensor:
    """Per-token cosine `cos(K[t], K_ref[t])` over all channels, in float32: `[T, C] x [T, C] → [T]`."""
    if keys.shape != ref_keys.shape:
        raise ValueError(f"keys {tuple(keys.shape)} and reference keys {tuple(ref_keys.shape)} must match")
    # the cosine written out: F.cosine_similarity normalises both [T, C] inputs before the dot product (two more
    # full-size temporaries), twice the time at T = 729, C = 1152 on CPU, and this runs in every selective block
    k, r = keys.float(), ref_keys.float()
    return (k * r).sum(-1) / (torch.linalg.vector_norm(k, dim=-1) * torch.linalg.vector_norm(r, dim=-1)).clamp_min(1e-8)


def select_from_similarity(sim: torch.Tensor, ratio: float) -> torch.Tensor:
    """The `num_dynamic(T, r)` positions of lowest similarity, as ascending indices (long)."""
    n = num_dynamic(sim.shape[0], ratio)
    if n >= sim.shape[0]:
        return torch.arange(sim.shape[0], device=sim.device)
    idx = torch.topk(sim, n, largest=False).indices
    return idx.sort().values


def select_dynamic_tokens(keys: torch.Tensor, ref_keys: torch.Tensor, ratio: float) -> torch.Tensor:
    """Indices (ascending) of the `n` tokens whose keys changed most against the reference (S-TV3)."""
    return select_from_similarity(key_similarity(keys, ref_keys), ratio)
