"""Torch references of the `vlmedge` ops, version 1: the semantics every other implementation must match.

Each op is the method's own pure function (compression/...) behind a graph-shaped signature: tensors in,
tensors out, settings as attributes. Indices are int64 and ascending unless the op's order is its result
(DppGreedyMap). Ties go to the lower index everywhere, so implementations agree exactly on indices.

| op | inputs | attributes | outputs | method |
|---|---|---|---|---|
| StcSelect | keys [T, C], ref_keys [T, C] | ratio | indices [n], n = max(1, min(int(T*ratio), T)) | STC cacher |
| StcMerge | cached [T, D], fresh [n, D], indices [n] | - | merged [T, D] (rows `indices` replaced) | STC cacher |
| PruneCompact | logits [N], features [N, D] | threshold, max_ratio (0: none), min_keep | indices [K], kept [K, D] | GlimpsePrune (data-dependent K) |
| KeepCount | scores [N], features [N, D], count [] (int64) | largest | indices [count], kept [count, D] | OmniZip window ratios |
| DppGreedyMap | kernel [N, N], relevance [N] | steps, eps | order [min(steps, N)] (selection order) | Script |
| DpcKnnSelect | x [N, D] | n, k | indices [min(n, N)] | OmniZip ISTC even frames |
"""
from __future__ import annotations

import torch

DOMAIN = "vlmedge"
VERSION = 1
OPS = ("StcSelect", "StcMerge", "PruneCompact", "KeepCount", "DppGreedyMap", "DpcKnnSelect")


def stc_select(keys: torch.Tensor, ref_keys: torch.Tensor, ratio: float) -> torch.Tensor:
    """The `n` tokens whose keys are least cosine-similar to the reference's, ascending (STC spec §3)."""
    from vlmedge.compression.stc.selection import select_dynamic_tokens

    return select_dynamic_tokens(keys, ref_keys, ratio)


def stc_merge(cached: torch.Tensor, fresh: torch.Tensor, indices: torch.Tensor) -> torch.Tensor:
    """`cached` with rows `indices` replaced by `fresh` (the cacher's scatter of recomputed rows)."""
    out = cached.clone()
    out[indices] = fresh.to(out.dtype)
    return out


def prune_compact(logits: torch.Tensor, features: torch.Tensor, threshold: float = 0.5, max_ratio: float = 0.0,
                  min_keep: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    """GlimpsePrune's keep rule (sigmoid(logit) > threshold, capped at max_ratio·N, at least min_keep) and the
    kept rows of `features`, compacted in ascending order."""
    from vlmedge.compression.glimpse.keep import keep_indices

    idx = keep_indices(logits, threshold, max_ratio if max_ratio > 0 else None, min_keep if min_keep > 0 else None)
    return idx, features.index_select(0, idx)


def keep_count(scores: torch.Tensor, features: torch.Tensor, count: int | torch.Tensor,
               largest: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
    """The `count` highest (or lowest) scoring rows, ascending, and those rows: a keep count decided at run time
    (OmniZip's per-window video ratio)."""
    n = scores.shape[0]
    c = max(0, min(int(count), n))
    if c == n:
        idx = torch.arange(n, device=scores.device)
    else:
        order = torch.sort(scores.float(), descending=largest, stable=True).indices
        idx = order[:c].sort().values
    return idx, features.index_select(0, idx)


def dpp_greedy_map(kernel: torch.Tensor, relevance: torch.Tensor | None = None, steps: int = 1,
                   eps: float = 1e-10) -> torch.Tensor:
    """Script's exact greedy MAP order of the DPP with kernel `kernel` (incremental Cholesky)."""
    from vlmedge.compression.script.dpp import fast_greedy_map

    return fast_greedy_map(kernel, steps, relevance, eps)


def dpc_knn_select(x: torch.Tensor, n: int, k: int = 5) -> torch.Tensor:
    """OmniZip's DPC-KNN (cosine distance) keep set of one frame's tokens, ascending."""
    from vlmedge.compression.omnizip.istc import dpc_knn_keep

    return dpc_knn_keep(x.unsqueeze(0), n, k)[0]


REFERENCES = {"StcSelect": stc_select, "StcMerge": stc_merge, "PruneCompact": prune_compact,
              "KeepCount": keep_count, "DppGreedyMap": dpp_greedy_map, "DpcKnnSelect": dpc_knn_select}
