"""Stage D — ISTC per window (spec §3 steps 15–17, core version): frames are the window's frames in time order
(index t from 0 inside the window), each `P` tokens in raster order.

- `num_keep = int(P·(1 − ratio))` (floor) per frame;
- even frames (t = 0, 2, …): DPC-KNN with cosine distance — `d = 1 − n̂ n̂ᵀ`, self excluded (diagonal +inf),
  `k = min(5, P − 1)`, density `ρ_i = exp(−mean of the k smallest d_i·)` (not squared), `δ_i` = distance to
  the nearest strictly denser token (a peak: its largest distance, diagonal as 0), keep `topk(δ·ρ)`;
- odd frames: keep the `num_keep` tokens least similar (cosine, same position) to the ORIGINAL previous frame
  of the window; nothing is averaged (the paper's "temporal merging" is pruning in the code).
A frame whose grid differs from its predecessor's (a resolution change) is treated as an even frame.
`odd_frames="dpc"` (our extension; the session's default, `method.py` says why) runs DPC-KNN on every frame.
Frames are processed in batches (all even frames at once, all odd frames at once): vectorised torch.
"""
from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F

from vlmedge.compression.spread import top_with_context

DPC_K = 5
ODD_FRAMES = ("temporal", "dpc")  # the release; ours: every frame a DPC-KNN keyframe


def num_keep(p: int, ratio: float) -> int:
    """Tokens a frame of `p` keeps at discard ratio `ratio` (the released `int(P * (1.0 - ratio))`)."""
    return int(p * (1.0 - ratio))


def dpc_knn_scores(x: torch.Tensor, k: int = DPC_K) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Density ρ, distance δ and score δ·ρ for tokens `x [..., P, D]` (fp32), each `[..., P]`."""
    p = x.shape[-2]
    n = F.normalize(x.float(), dim=-1)
    dist = 1.0 - n @ n.transpose(-1, -2)
    eye = torch.eye(p, dtype=torch.bool, device=x.device)
    dist_inf = dist.masked_fill(eye, float("inf"))
    k = min(k, p - 1)
    knn = torch.topk(dist_inf, k, dim=-1, largest=False).values
    rho = torch.exp(-knn.mean(dim=-1))
    higher = rho.unsqueeze(-2) > rho.unsqueeze(-1)  # [i, j]: rho_j > rho_i
    delta = dist_inf.masked_fill(~higher, float("inf")).min(dim=-1).values
    peak_delta = dist.masked_fill(eye, 0.0).max(dim=-1).values
    delta = torch.where(torch.isinf(delta), peak_delta, delta)
    return rho, delta, delta * rho


def _top(scores: torch.Tensor, n: int, largest: bool, context: float = 0.0) -> torch.Tensor:
    """`[B, P]` → ascending kept indices `[B, n]`; with `context`, that share spread evenly (compression.spread)."""
    b, p = scores.shape
    if n >= p:
        return torch.arange(p, device=scores.device).expand(b, p).clone()
    if n <= 0:
        return scores.new_zeros(b, 0, dtype=torch.long)
    return top_with_context(scores, n, largest, context)


def dpc_knn_keep(frames: torch.Tensor, n: int, k: int = DPC_K, context: float = 0.0) -> torch.Tensor:
    """Kept indices `[B, n]` (ascending) of the frames `[B, P, D]` by DPC-KNN."""
    if n >= frames.shape[-2] or n <= 0:
        return _top(frames.new_zeros(frames.shape[:-1]), n, True)
    return _top(dpc_knn_scores(frames, k)[2], n, True, context)


def temporal_keep(frames: torch.Tensor, prev: torch.Tensor, n: int, context: float = 0.0) -> torch.Tensor:
    """Kept indices `[B, n]` (ascending): the tokens least similar to the same position of `prev`."""
    if n >= frames.shape[-2] or n <= 0:
        return _top(frames.new_zeros(frames.shape[:-1]), n, True)
    sim = F.cosine_similarity(F.normalize(frames.float(), dim=-1), F.normalize(prev.float(), dim=-1), dim=-1)
    return _top(sim, n, False, context)


def istc_counts(frames: Sequence[torch.Tensor], counts: Sequence[int], k: int = DPC_K,
                context: float = 0.0, odd_frames: str = "temporal") -> list[torch.Tensor]:
    """ISTC with an explicit keep count per frame; `frames` are `[P_t, D]` in window order. Returns each frame's
    kept indices (ascending, long). `context` > 0 (our extension; 0 is the release) spreads that share of each
    frame's count evenly over the positions the score left out, as STC's pruner does. `odd_frames`: "temporal"
    (the release) or "dpc" (every frame by DPC-KNN)."""
    if odd_frames not in ODD_FRAMES:
        raise ValueError(f"odd_frames must be one of {', '.join(ODD_FRAMES)}, got {odd_frames!r}")
    frames = list(frames)
    out: list[torch.Tensor | None] = [None] * len(frames)
    groups: dict[tuple, list[int]] = {}  # (even?, P, n) → frame indices batched together
    for t, f in enumerate(frames):
        odd = odd_frames == "temporal" and t % 2 == 1 and frames[t - 1].shape == f.shape
        groups.setdefault((odd, f.shape[0], int(counts[t])), []).append(t)
    for (odd, _, n), ts in groups.items():
        cur = torch.stack([frames[t] for t in ts])
        keep = (temporal_keep(cur, torch.stack([frames[t - 1] for t in ts]), n, context) if odd
                else dpc_knn_keep(cur, n, k, context))
        for t, kp in zip(ts, keep):
            out[t] = kp
    return out  # type: ignore[return-value]


def istc(frames: Sequence[torch.Tensor] | torch.Tensor, ratio: float, k: int = DPC_K,
         context: float = 0.0, odd_frames: str = "temporal") -> list[torch.Tensor]:
    """ISTC of one window at discard ratio `ratio`: every frame keeps `int(P·(1 − ratio))` tokens."""
    frames = list(frames)
    return istc_counts(frames, [num_keep(f.shape[0], ratio) for f in frames], k, context, odd_frames)


def istc_mask(video: torch.Tensor, tokens_per_frame: int, ratio: float) -> torch.Tensor:
    """The released `omnizip_istm` form: flat `[T·P, D]` window → keep mask `[T·P]`; tokens past the last whole
    frame stay (our decision for malformed chunks; the released code drops them)."""
    p = tokens_per_frame
    nf = video.shape[0] // p
    mask = torch.ones(video.shape[0], dtype=torch.bool, device=video.device)
    if nf == 0:
        return mask
    mask[: nf * p] = False
    for t, kp in enumerate(istc(video[: nf * p].reshape(nf, p, -1), ratio)):
        mask[t * p + kp] = True
    return mask
