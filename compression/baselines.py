"""Reference points every method is compared with: no compression, uniform spatial pooling, random keep."""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from vlmedge.compression.base import Compressor, FrameContext, Selection, TokenBudget
from vlmedge.compression.registry import register


@register("none")
@dataclass
class NoCompression(Compressor):
    def compress(self, tokens, ctx: FrameContext, state) -> Selection:
        return Selection(keep=torch.arange(tokens.num_tokens))


def pool_grid(h: int, w: int, target: int) -> tuple[int, int]:
    """Output grid (oh, ow) with oh*ow <= target, keeping the aspect ratio as closely as integers allow."""
    if target >= h * w:
        return h, w
    scale = (target / (h * w)) ** 0.5
    oh, ow = max(1, min(h, round(h * scale))), max(1, min(w, round(w * scale)))
    while oh * ow > target:  # rounding up on both axes can overshoot
        if oh >= ow and oh > 1:
            oh -= 1
        else:
            ow -= 1
    return oh, ow


@register("uniform")
@dataclass
class UniformPool(Compressor, TokenBudget):
    """Spatial average pooling of the token grid (what LLaVA-OneVision does to video frames).

    Each pooled token takes the position id of the token at its bin's centre (rounded down), so pooled
    frames keep the spatial layout the LLM reads from RoPE. With a grid divisible by the pooling factor
    (12x12 → 6x6 at ratio 0.25) the bins are exact 2x2 blocks.
    """

    def compress(self, tokens, ctx, state) -> Selection:
        h, w = tokens.grid_hw
        oh, ow = pool_grid(h, w, self.budget(h * w))
        if (oh, ow) == (h, w):
            return Selection(keep=torch.arange(h * w))
        grid = tokens.features.T.reshape(1, -1, h, w)
        pooled = F.adaptive_avg_pool2d(grid.float(), (oh, ow)).to(tokens.features.dtype)
        pooled = pooled.reshape(-1, oh * ow).T
        # bin i covers tokens i*h/oh .. (i+1)*h/oh; the token whose centre is nearest the bin's centre,
        # rounding down on ties: floor(((2i+1)*h/oh - 1) / 2)
        rows = torch.div((2 * torch.arange(oh) + 1) * h - oh, 2 * oh, rounding_mode="floor")
        cols = torch.div((2 * torch.arange(ow) + 1) * w - ow, 2 * ow, rounding_mode="floor")
        keep = (rows[:, None] * w + cols[None, :]).reshape(-1)
        return Selection(keep=keep, features=pooled)


@register("random")
@dataclass
class RandomKeep(Compressor, TokenBudget):
    """Keeps a uniformly random subset of each frame's tokens; seeded per stream, so runs repeat."""

    seed: int = 0

    def new_state(self) -> torch.Generator:
        return torch.Generator().manual_seed(self.seed)

    def compress(self, tokens, ctx, state: torch.Generator) -> Selection:
        n = tokens.num_tokens
        k = self.budget(n)
        keep = torch.randperm(n, generator=state)[:k].sort().values
        return Selection(keep=keep)
