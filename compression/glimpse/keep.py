"""GlimpsePrune keep rule and ground-truth token mask (spec §3 step 8, §5 "GT token mask", §9 pitfalls 4, 13).

Keep rule (`_get_remain_masks`, per sample over ALL its images, as released):
1. `p = sigmoid(z)` in float32, `keep = p > threshold` — strict, so a logit of exactly 0 (p = 0.5) is dropped;
2. if `max_ratio` is set and `mean(keep) > max_ratio`: keep only the top-`int(max_ratio * N)` tokens;
3. if fewer than `min_keep` are kept: keep the top-`min_keep` (this also rescues a cap that floors to 0).

"Top" ranks by the logit, then by the lower index. Sigmoid is monotone, so this is the released top-k by p;
ranking the logit rather than p only matters where float32 rounds p to exactly 1 (z ≳ 16) or 0 (z ≲ −104),
where the released `torch.topk` picks arbitrarily among the tied tokens and we pick the larger logit. The lower-index
rule makes the result reproducible across devices and kernels (`topk` tie order is unspecified).

Step 3 replaces the mask instead of OR-ing into it like the released code; the two agree because every token
still kept at that point is itself among the top ones by p.

GT mask (`get_ref_token_mask`): boxes are normalised xyxy; cell bounds are `int(·)` of the scaled corners, the
far corner clamped to the last row/column, inclusive fill, union over boxes. The arithmetic is done in float64,
as the released Python-float code does, so products that land next to an integer (`0.13 * 100 =
13.000000000000002`) floor the same. Pass boxes as Python floats or float64: a float32 tensor has already
rounded 0.13 down to 0.12999999523, which floors one cell lower.
"""
from __future__ import annotations

from collections.abc import Sequence
from numbers import Integral

import torch

from vlmedge.compression.spread import even_ranks
from vlmedge.errors import InputError


def _check_logits(logits: torch.Tensor, what: str = "logits") -> torch.Tensor:
    if not isinstance(logits, torch.Tensor):
        raise InputError(f"GlimpsePrune: {what} must be a torch.Tensor [N], got {type(logits).__name__}")
    if logits.ndim != 1:
        raise InputError(f"GlimpsePrune: {what} must be 1-D [N] (one image, no batch dim), got shape "
                         f"{tuple(logits.shape)}")
    if not logits.is_floating_point():
        raise InputError(f"GlimpsePrune: {what} must be floating point, got {logits.dtype}")
    if torch.isnan(logits).any():
        raise InputError(f"GlimpsePrune: {what} contain NaN")
    return logits


def _check_rule(threshold: float, max_ratio: float | None, min_keep: int | None) -> None:
    if not 0.0 <= float(threshold) <= 1.0:
        raise InputError(f"GlimpsePrune: threshold is a probability in [0, 1], got {threshold}")
    if max_ratio is not None and not 0.0 <= float(max_ratio) <= 1.0:
        raise InputError(f"GlimpsePrune: max_ratio must be in [0, 1] or None, got {max_ratio}")
    if min_keep is not None and (isinstance(min_keep, bool) or not isinstance(min_keep, Integral) or min_keep < 0):
        raise InputError(f"GlimpsePrune: min_keep must be an integer >= 0 or None, got {min_keep!r}")


def _top(z: torch.Tensor, k: int) -> torch.Tensor:
    """Mask of the `k` largest logits, ties to the lower index (stable descending sort keeps index order)."""
    mask = torch.zeros(z.shape[0], dtype=torch.bool, device=z.device)
    if k > 0:
        order = torch.sort(z, descending=True, stable=True).indices
        mask[order[:k]] = True
    return mask


def keep_mask(logits: torch.Tensor, threshold: float = 0.5, max_ratio: float | None = None,
              min_keep: int | None = 1) -> torch.Tensor:
    """Boolean keep mask `[N]` of the concatenated VIP logits of one sample (see module docstring)."""
    z = _check_logits(logits).float()
    _check_rule(threshold, max_ratio, min_keep)
    n = z.shape[0]
    keep = torch.sigmoid(z) > threshold
    if n == 0:
        return keep
    if max_ratio is not None and keep.sum().item() / n > max_ratio:
        keep = _top(z, int(max_ratio * n))
    if min_keep is not None and keep.sum().item() < min_keep:
        keep = _top(z, min(int(min_keep), n))
    return keep


def keep_indices(logits: torch.Tensor, threshold: float = 0.5, max_ratio: float | None = None,
                 min_keep: int | None = 1) -> torch.Tensor:
    """Kept token indices of one image's VIP logits `[N]`, ascending long."""
    return keep_mask(logits, threshold, max_ratio, min_keep).nonzero().flatten()


def add_spread(keep: torch.Tensor, n: int, spread: float) -> torch.Tensor:
    """`keep` (ascending indices into an image of `n` tokens) plus `floor(spread * n + 0.5)` of the dropped
    tokens, evenly spaced in raster order (all dropped ones if fewer are left); ascending long.

    Our extension, not in the release: the VIP keeps the objects a question may be about and almost no background,
    and the reference model, trained on whole frames, then over-counts ("how many" 0.86 at 24 of 144 tokens
    against 1.00 unpruned; the same shift measured for STC's pruner, where background context restored it)."""
    c = int(spread * n + 0.5)
    if c <= 0:
        return keep
    left = torch.ones(n, dtype=torch.bool, device=keep.device)
    left[keep] = False
    rest = left.nonzero().flatten()
    c = min(c, rest.numel())
    if c == 0:
        return keep
    return torch.cat([keep, rest[even_ranks(rest.numel(), c)]]).sort().values


def keep_indices_multi(logits_list: Sequence[torch.Tensor], threshold: float = 0.5,
                       max_ratio: float | None = None, min_keep: int | None = 1,
                       spread: float = 0.0) -> list[torch.Tensor]:
    """Kept indices per image (ascending, local to each image) for one sample with several images.

    The cap and `min_keep` apply to the concatenation (released behaviour, spec pitfall 4), so one image may
    keep more than `max_ratio` of its tokens and another none at all. `spread` (our extension, 0 = released)
    then adds evenly spaced context tokens to every image (`add_spread`), on top of the cap.
    """
    if not 0.0 <= float(spread) < 1.0:
        raise InputError(f"GlimpsePrune: spread is a share of each image's tokens in [0, 1), got {spread!r}")
    if isinstance(logits_list, torch.Tensor) or not isinstance(logits_list, Sequence) or len(logits_list) == 0:
        raise InputError("GlimpsePrune: logits_list must be a non-empty list of per-image logits [N_i]")
    for i, z in enumerate(logits_list):
        _check_logits(z, f"logits_list[{i}]")
    sizes = [int(z.shape[0]) for z in logits_list]
    flat = torch.cat([z.float() for z in logits_list])
    mask = keep_mask(flat, threshold, max_ratio, min_keep)
    return [add_spread(m.nonzero().flatten(), m.shape[0], spread) for m in torch.split(mask, sizes)]


def _check_grid(grid_hw) -> tuple[int, int]:
    try:
        h, w = (int(v) for v in grid_hw)
        ok = all(int(v) == v for v in grid_hw)
    except (TypeError, ValueError):
        raise InputError(f"GlimpsePrune: grid_hw must be two integers (h, w), got {grid_hw!r}") from None
    if not ok or h < 1 or w < 1:
        raise InputError(f"GlimpsePrune: grid_hw must be two positive integers (h, w), got {grid_hw!r}")
    return h, w


def gt_token_mask(boxes, grid_hw) -> torch.Tensor:
    """Ground-truth keep mask `[h*w]` (raster order) of normalised xyxy `boxes` `[B, 4]` on the merged grid.

    An empty box list gives an all-False mask. A box whose left (top) edge is exactly 1.0 starts one cell past
    the grid and covers nothing, as released. Coordinates are floored in float64 (see the module docstring).
    """
    h, w = _check_grid(grid_hw)
    if isinstance(boxes, torch.Tensor):
        b = boxes.detach().to("cpu", torch.float64)
    else:
        try:
            b = torch.tensor(list(boxes), dtype=torch.float64)
        except (TypeError, ValueError):
            raise InputError("GlimpsePrune: boxes must be a [B, 4] list or tensor of normalised x1, y1, x2, y2; "
                             f"got {boxes!r}") from None
    if b.numel() == 0:
        return torch.zeros(h * w, dtype=torch.bool)
    if b.ndim == 1 and b.shape[0] == 4:
        b = b[None]  # a single box
    if b.ndim != 2 or b.shape[1] != 4:
        raise InputError(f"GlimpsePrune: boxes must have shape [B, 4] (x1, y1, x2, y2), got {tuple(b.shape)}")
    if not ((b >= 0) & (b <= 1)).all():
        raise InputError("GlimpsePrune: box coordinates must be normalised to [0, 1] (divide pixel xyxy by the "
                         f"image width/height), got {b.tolist()}")
    if (b[:, 2] < b[:, 0]).any() or (b[:, 3] < b[:, 1]).any():
        raise InputError(f"GlimpsePrune: boxes must satisfy x1 <= x2 and y1 <= y2, got {b.tolist()}")
    x1 = torch.floor(b[:, 0] * w).long()
    y1 = torch.floor(b[:, 1] * h).long()
    x2 = torch.floor(b[:, 2] * w).long().clamp(max=w - 1)
    y2 = torch.floor(b[:, 3] * h).long().clamp(max=h - 1)
    rows = torch.arange(h)[None, :, None]
    cols = torch.arange(w)[None, None, :]
    inside = ((rows >= y1[:, None, None]) & (rows <= y2[:, None, None])
              & (cols >= x1[:, None, None]) & (cols <= x2[:, None, None]))  # [B, h, w]
    return inside.any(dim=0).flatten()
