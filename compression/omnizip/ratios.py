"""Stage C — per-window audio retention → video pruning ratio, and the budget normalisation (spec §3 steps
11–14, §8 `exact_budget`).

Scalars per window, in Python floats (as the released code computes them, so the quirks reproduce exactly):
- `base_i = clip(ρmax + (ρmin − ρmax)·S_a(i), ρmin, ρmax)` with `S_a(i)` the fraction of window i's audio
  tokens kept (dominant or anchor); ρmax 0.75, ρmin 0.35 (hard-coded in the paper and the code);
- `core_normalize`: the released single pass — only with more than 2 guided windows; the FIRST argmin and the
  FIRST argmax keep their base value (`fixed` counts one window twice when they coincide), the others are scaled
  to meet the target discard `Dg`, clipped, then shifted once by `diff / Σ_others s_i` and clipped again;
  the target can be missed;
- `exact_budget` (our extension, off by default): iterate clip-and-rescale from the core result until the
  discard is within one token of `Dg` or every window that could move is saturated; the remaining shortfall is
  returned (never raised).
All ratios are DISCARD ratios (ρ = fraction of a window's video tokens pruned).
"""
from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Sequence

RHO_MIN, RHO_MAX = 0.35, 0.75

log = logging.getLogger("vlmedge.omnizip")


def _clip(x: float, lo: float = RHO_MIN, hi: float = RHO_MAX) -> float:
    return max(lo, min(hi, x))


def base_ratio(retention: float) -> float:
    """Paper Eq. 5: a window whose audio is kept more (more eventful) is pruned less."""
    return max(RHO_MIN, min(RHO_MAX, RHO_MAX + (RHO_MIN - RHO_MAX) * retention))


def core_normalize(base: Sequence[float], sizes: Sequence[int], target: float) -> tuple[list[float], set[int]]:
    """The released single-pass normalisation; returns the ratios and the pinned windows {argmin, argmax}."""
    adj = list(base)
    n = len(base)
    if n <= 2 or sum(sizes) <= 0:
        return adj, set()
    base_discard = sum(b * s for b, s in zip(base, sizes))
    mi, ma = base.index(min(base)), base.index(max(base))
    pinned = {mi, ma}
    if abs(base_discard - target) > 1e-3 and base_discard > 0:
        others = [i for i in range(n) if i != mi and i != ma]
        other_discard = sum(base[i] * sizes[i] for i in others)
        if others and other_discard > 0:
            fixed = base[mi] * sizes[mi] + base[ma] * sizes[ma]  # twice the same window when mi == ma
            scaling = (target - fixed) / other_discard
            for i in others:
                adj[i] = _clip(base[i] * scaling)
            diff = target - sum(adj[i] * sizes[i] for i in range(n))
            if abs(diff) > 1e-3:
                total_other = sum(sizes[i] for i in others)
                if total_other > 0:
                    for i in others:
                        adj[i] = _clip(adj[i] + diff / total_other)
    return adj, pinned


def exact_normalize(adj: Sequence[float], sizes: Sequence[int], target: float,
                    pinned: set[int] = frozenset(), tol: float = 1.0) -> tuple[list[float], float, int]:
    """Clip-and-rescale until `|target − Σ adj·s| ≤ tol` tokens; returns (ratios, shortfall, passes)."""
    adj = list(adj)
    n = len(adj)
    free = set(range(n)) - set(pinned)
    released = not (set(pinned) & set(range(n)))
    passes = 0
    for _ in range(n + 3):  # each pass meets the target or saturates a window; one more to release the pins
        diff = target - sum(a * s for a, s in zip(adj, sizes))
        if abs(diff) <= tol:
            break
        movable = [i for i in sorted(free) if (diff > 0 and adj[i] < RHO_MAX) or (diff < 0 and adj[i] > RHO_MIN)]
        total = sum(adj[i] * sizes[i] for i in movable)
        if not movable or total <= 0:
            if not released:
                free |= set(range(n))
                released = True
                continue
            break
        scale = (total + diff) / total
        for i in movable:
            adj[i] = _clip(adj[i] * scale)
        passes += 1
    return adj, target - sum(a * s for a, s in zip(adj, sizes)), passes


@dataclass
class WindowRatios:
    ratios: list[float]  # per guided window, the video discard ratio used
    base: list[float]
    target: float  # Dg, tokens to discard over the guided windows
    shortfall: float  # Dg − Σ ratio·s (exact mode: what could not be met; core mode: what the single pass missed)
    pinned: set[int] = field(default_factory=set)
    passes: int = 0  # exact mode's extra passes


def guided_ratios(retention: Sequence[float], sizes: Sequence[int], rho_v: float, exact_budget: bool = False,
                  unguided_tokens: int = 0) -> WindowRatios:
    """Video discard ratios of the guided windows (those with both audio and video), from their audio retention
    `S_a` and video token counts `s_i`. The target is the released `Dg = ρv·N_v − ρv·Σ_unguided s` (= ρv·Σ s_i;
    written the released way so float thresholds behave the same); unguided windows use ρv themselves."""
    base = [base_ratio(r) for r in retention]
    n_v = sum(sizes) + unguided_tokens
    target = rho_v * n_v - rho_v * unguided_tokens
    adj, pinned = core_normalize(base, sizes, target)
    passes = 0
    if exact_budget and base:
        adj, _, passes = exact_normalize(adj, sizes, target, pinned)
    shortfall = target - sum(a * s for a, s in zip(adj, sizes))
    if exact_budget and abs(shortfall) > 1.0:
        log.warning("omnizip exact_budget: video discard target %.1f tokens missed by %.1f (ratios saturate at "
                    "[%.2f, %.2f])", target, shortfall, RHO_MIN, RHO_MAX)
    return WindowRatios(ratios=adj, base=base, target=target, shortfall=shortfall, pinned=pinned, passes=passes)
