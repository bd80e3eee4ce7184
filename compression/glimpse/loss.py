"""VIP mask loss (spec §5): `dice_w · Dice + bce_w · BCE` of the keep logits against the box-derived GT mask.

Both terms are computed per sample (one sample's logits may span several images, concatenated) and then
averaged over the batch, so a large image does not outweigh a small one. Dice carries the signal when the
target is a small region (BCE alone is dominated by the background); the 0.1·BCE term keeps a gradient on
every token, including samples whose Dice is saturated. The 1e-6 smoothing makes an empty target finite: Dice
then only pushes σ(z) towards 0, like BCE. Computed in float32 whatever the logits' dtype.
"""
from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F

from vlmedge.errors import InputError

SMOOTH = 1e-6


def _pair(logits: torch.Tensor, target: torch.Tensor, what: str = "") -> tuple[torch.Tensor, torch.Tensor]:
    if not isinstance(logits, torch.Tensor) or not isinstance(target, torch.Tensor):
        raise InputError(f"GlimpsePrune loss{what}: logits and target must be tensors")
    if logits.ndim != 1 or tuple(target.shape) != tuple(logits.shape):
        raise InputError(f"GlimpsePrune loss{what}: logits and target must both be [N]; got "
                         f"{tuple(logits.shape)} and {tuple(target.shape)}")
    if logits.shape[0] == 0:
        raise InputError(f"GlimpsePrune loss{what}: a sample needs at least one visual token")
    if not logits.is_floating_point():
        raise InputError(f"GlimpsePrune loss{what}: logits must be floating point, got {logits.dtype}")
    g = target.to(device=logits.device, dtype=torch.float32)
    if ((g < 0) | (g > 1)).any():
        raise InputError(f"GlimpsePrune loss{what}: target must be a mask in [0, 1]")
    return logits.float(), g


def dice_loss(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """`1 − (2 Σ σ(z) g + 1e-6) / (Σ σ(z) + Σ g + 1e-6)` for one sample, `logits, target [N]`; scalar."""
    z, g = _pair(logits, target)
    p = torch.sigmoid(z)
    return 1.0 - (2.0 * (p * g).sum() + SMOOTH) / (p.sum() + g.sum() + SMOOTH)


def mask_loss(logits_list: Sequence[torch.Tensor], targets_list: Sequence[torch.Tensor], dice_w: float = 1.0,
              bce_w: float = 0.1, return_parts: bool = False):
    """`dice_w · mean_b Dice_b + bce_w · mean_b BCE_b` over a batch of per-sample `[N_b]` logits and targets.

    With `return_parts=True` returns `(total, mean Dice, mean BCE)` (the parts unweighted, for logging).
    """
    if isinstance(logits_list, torch.Tensor) or isinstance(targets_list, torch.Tensor):
        raise InputError("GlimpsePrune loss: pass lists of per-sample [N_b] tensors, not one stacked tensor")
    if len(logits_list) == 0 or len(logits_list) != len(targets_list):
        raise InputError(f"GlimpsePrune loss: need as many targets as logits (>= 1); got {len(logits_list)} "
                         f"and {len(targets_list)}")
    dice, bce = [], []
    for i, (z, g) in enumerate(zip(logits_list, targets_list)):
        z, g = _pair(z, g, f" (sample {i})")
        dice.append(dice_loss(z, g))
        bce.append(F.binary_cross_entropy_with_logits(z, g))
    dice_mean, bce_mean = torch.stack(dice).mean(), torch.stack(bce).mean()
    total = dice_w * dice_mean + bce_w * bce_mean
    return (total, dice_mean, bce_mean) if return_parts else total
