"""STC-Pruner (spec §4.1, §4.2, §9): keep a fixed number of tokens per frame, the least redundant against a
causal temporal anchor (the stream's running mean) and a spatial anchor (the frame's mean).

Pure functions over one chunk's projected tokens `Z [F, P, D]` (a chunk is one frame in this project, F = 1)
and the stream's memory. Everything runs in float32; the kept tokens are the ORIGINAL full-channel tokens,
selected by index, so the returned indices (ascending per frame) are all a caller needs.

Memory (§9, "full channel space"): `mem_sum [D]` (fp32) and `mem_count`. Per chunk, BEFORE scoring:
`mem_sum += mean_{F,P}(Z)`, `mem_count += 1`; the temporal anchor is `normalize((mem_sum / mem_count)[sel])`
with the current chunk's channel selection `sel`. For the first chunk, or while `sel` does not change, this
equals the released code's list of per-chunk means in the selected channels. `memory_mode="legacy_subset_list"`
reproduces the released list (means of each chunk's own channel subset, mixed) for parity debugging.

Scorers:
- `gaussian` (default, released): `Zh = normalize(Z[:, sel])`, `c_f = mean_p Zh[f]` (not re-normalised),
  `score = G(Zh, normalize(memory[sel])) + G(Zh, c_f)` with `G(x, a) = sum_{b in 1/8..2} exp(-|x-a|^2 / 2b)`;
  keep the k LOWEST scores.
- `dual_anchor` (paper): `S = alpha (1 - cos(z, a_temporal)) + (1 - alpha) (1 - cos(z, a_spatial))` in the
  channel-selected space, `a_spatial = normalize(mean_p Z[f, :, sel])`; keep the k HIGHEST.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

from vlmedge.compression.spread import top_with_context

SCORERS = ("gaussian", "dual_anchor")
MEMORY_MODES = ("full", "legacy_subset_list")
BANDWIDTHS = (2.0 ** -3, 2.0 ** -2, 2.0 ** -1, 1.0, 2.0)


@dataclass
class PrunerMemory:
    """The causal temporal memory of one stream (reset at stream start)."""

    mem_sum: torch.Tensor | None = None  # [D] float32, sum of per-chunk means
    mem_count: int = 0
    legacy: list[torch.Tensor] = field(default_factory=list)  # legacy_subset_list mode: per-chunk subset means

    def reset(self) -> None:
        self.mem_sum = None
        self.mem_count = 0
        self.legacy = []

    @property
    def mean(self) -> torch.Tensor | None:
        return None if self.mem_sum is None else self.mem_sum / self.mem_count


def select_channels(z: torch.Tensor, channel_ratio: float = 0.5) -> torch.Tensor:
    """Indices of the `max(1, int(channel_ratio * D))` lowest-variance channels over all tokens of the chunk,
    in ascending variance (`z [N, D]`, population variance)."""
    var = z.float().var(dim=0, unbiased=False)
    n = max(1, min(int(var.shape[0] * channel_ratio), var.shape[0]))
    return torch.topk(var, n, largest=False).indices


def gaussian_similarity(x: torch.Tensor, anchor: torch.Tensor, bandwidths=BANDWIDTHS) -> torch.Tensor:
    """Multi-bandwidth Gaussian kernel `sum_b exp(-|x - a|^2 / (2 b))` over the last dimension."""
    d2 = ((x - anchor) ** 2).sum(dim=-1)
    return sum(torch.exp(-d2 / (2.0 * b)) for b in bandwidths)


def update_memory(memory: PrunerMemory, z: torch.Tensor, sel: torch.Tensor, mode: str = "full") -> torch.Tensor:
    """Adds the chunk `z [F, P, D]` to `memory` and returns the temporal memory in the selected channels
    (raw, not normalised), current chunk included."""
    if mode == "full":
        chunk_mean = z.float().mean(dim=(0, 1))
        if memory.mem_sum is None or memory.mem_sum.shape != chunk_mean.shape:
            memory.mem_sum = torch.zeros_like(chunk_mean)
            memory.mem_count = 0
        memory.mem_sum = memory.mem_sum + chunk_mean
        memory.mem_count += 1
        return (memory.mem_sum / memory.mem_count)[sel]
    if mode == "legacy_subset_list":
        memory.legacy.append(z.float()[..., sel].mean(dim=(0, 1)))
        memory.mem_count = len(memory.legacy)
        return torch.stack(memory.legacy).mean(dim=0)
    raise ValueError(f"memory mode must be one of {', '.join(MEMORY_MODES)}, got {mode!r}")


def score_tokens(z: torch.Tensor, temporal: torch.Tensor, sel: torch.Tensor, scorer: str = "gaussian",
                 alpha: float = 0.5) -> torch.Tensor:
    """Scores `[F, P]` of the chunk `z [F, P, D]` given the temporal memory in the selected channels."""
    zs = z.float()[..., sel]
    a_t = F.normalize(temporal.float(), dim=-1)
    if scorer == "gaussian":
        zh = F.normalize(zs, dim=-1)
        spatial = zh.mean(dim=1, keepdim=True)  # [F, 1, Ds], not re-normalised
        return gaussian_similarity(zh, a_t) + gaussian_similarity(zh, spatial)
    if scorer == "dual_anchor":
        a_s = F.normalize(zs.mean(dim=1, keepdim=True), dim=-1)
        cos_t = F.cosine_similarity(zs, a_t.expand_as(zs), dim=-1)
        cos_s = F.cosine_similarity(zs, a_s.expand_as(zs), dim=-1)
        return alpha * (1.0 - cos_t) + (1.0 - alpha) * (1.0 - cos_s)
    raise ValueError(f"scorer must be one of {', '.join(SCORERS)}, got {scorer!r}")


def keep_from_scores(scores: torch.Tensor, k: int, scorer: str = "gaussian", context: float = 0.0) -> torch.Tensor:
    """Per frame, the `k` kept positions (ascending): lowest scores for `gaussian`, highest for `dual_anchor`.
    `scores [F, P]` → `[F, k]` long.

    With `context` > 0 (our extension; 0 is the released pruner), only `k - c` tokens go by score and the other
    `c = context_count(k, context)` (`compression.spread`) are spread evenly, in raster order, over the
    positions the score left out.
    Why: the most novel tokens are the objects plus whatever else stands out — halos where an object's
    features linger after it moved, grey distractors — and a frame of objects plus a few such blobs reads to
    the LLM like more objects. On the LLaVA-OneVision reference model, pruner only at 47 of 144 tokens, "how
    many" fell from 1.00 to 0.88 (100 evaluation seeds); keeping the same object tokens but swapping the
    pruner's other picks for random background tokens brought it back to 0.99. Evenly spaced context is what
    VisionZip's contextual tokens and OmniZip's anchors do. Full STC (cacher + pruner), 200 seeds: at 47 tokens
    overall 0.861 → 0.879 / 0.884 with context 0.25 / 0.5 ("how many" 0.77 → 0.865 / 0.875); at 16 tokens
    0.782 → 0.809 / 0.812 (0.555 → 0.685 / 0.855), "small" giving back a little (0.747 → 0.72 / 0.64).
    """
    p = scores.shape[-1]
    k = max(1, min(int(k), p))
    if k == p:
        return torch.arange(p, device=scores.device).expand(scores.shape[0], p).clone()
    return top_with_context(scores, k, scorer == "dual_anchor", context)


@dataclass
class PruneResult:
    keep: torch.Tensor  # [F, k] ascending per frame
    channels: torch.Tensor  # selected channels, ascending variance
    scores: torch.Tensor  # [F, P]


def prune_chunk(z: torch.Tensor, memory: PrunerMemory, k: int, scorer: str = "gaussian", alpha: float = 0.5,
                channel_ratio: float = 0.5, memory_mode: str = "full", context: float = 0.0) -> PruneResult:
    """One chunk `z [F, P, D]` (or one frame `[P, D]`) through the STC-Pruner; updates `memory` in place."""
    if scorer not in SCORERS:
        raise ValueError(f"scorer must be one of {', '.join(SCORERS)}, got {scorer!r}")
    if z.ndim == 2:
        z = z.unsqueeze(0)
    sel = select_channels(z.reshape(-1, z.shape[-1]), channel_ratio)
    temporal = update_memory(memory, z, sel, memory_mode)
    scores = score_tokens(z, temporal, sel, scorer, alpha)
    return PruneResult(keep=keep_from_scores(scores, k, scorer, context), channels=sel, scores=scores)
