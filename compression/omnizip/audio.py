"""Stage B — audio selection, contextual anchors and merging (spec §3 steps 5–10, core version).

Pure functions over the audio tokens of one clip `a [N_a, D]` (LLM space, after the projector), the clip's video
tokens `v [N_v, D]` (all frames, unpruned; may be empty) and the saliency scores `[N_a]`:

- dominant: `topk(scores, round((1 − ρa)·N_a))` (Python `round`, half to even; ρa is a DISCARD ratio);
- anchors: `n_ctx = min(round(contextual_ratio·N_a), |R|)` tokens spaced uniformly over the non-dominant
  indices R (`R[0::max(1, |R| // n_ctx)][:n_ctx]`), only when `|R| > 0`, `n_ctx > 0` and `g > 0`;
- pool = R without the anchors, all dropped; each pool token is assigned to its most similar anchor (cosine,
  first maximum), scored by its best cosine against any video token of the clip (no video: against its
  anchor), and every anchor takes its top-`g` assigned pool tokens by that score;
- merge: `w = softmax(s_chosen)`, `anchor ← (anchor + Σ w_j a_j) / (1 + Σ w_j)`, from the UNMERGED features.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import torch

EPS = 1e-6  # the released code's norm epsilon


@dataclass
class AudioSelection:
    keep: torch.Tensor  # [N_a] bool: dominant or anchor
    dominant: torch.Tensor  # [N_a] bool
    anchors: torch.Tensor  # [n_ctx] long, ascending
    merge_plan: dict[int, list[int]] = field(default_factory=dict)  # anchor → chosen pool tokens (best first)
    merge_scores: dict[int, list[float]] = field(default_factory=dict)  # their cross-modal scores


def _unit(x: torch.Tensor) -> torch.Tensor:
    return x / (x.norm(dim=-1, keepdim=True) + EPS)


def num_dominant(n: int, rho_a: float) -> int:
    return int(max(0, min(n, round((1.0 - rho_a) * n))))


def num_contextual(n: int, n_dom: int, contextual_ratio: float, g: int) -> int:
    """Anchors the selection adds to the `n_dom` dominant tokens of `n` (0 when `g == 0`)."""
    rest, n_ctx = n - n_dom, int(max(0, round(contextual_ratio * n)))
    return min(n_ctx, rest) if rest > 0 and n_ctx > 0 and g > 0 else 0


def select_audio(a: torch.Tensor, v: torch.Tensor | None, scores: torch.Tensor, rho_a: float,
                 contextual_ratio: float = 0.05, g: int = 3) -> AudioSelection:
    """Which audio tokens stay (dominant + anchors) and which pool tokens each anchor absorbs."""
    n = a.shape[0]
    dev = a.device
    keep = torch.zeros(n, dtype=torch.bool, device=dev)
    if n == 0:
        return AudioSelection(keep, keep.clone(), torch.zeros(0, dtype=torch.long, device=dev))
    if scores.shape != (n,):
        raise ValueError(f"{n} audio tokens but {tuple(scores.shape)} saliency scores")
    n_dom = num_dominant(n, rho_a)
    if n_dom > 0:
        keep[torch.topk(scores.float(), n_dom).indices] = True
    dominant = keep.clone()
    remaining = torch.nonzero(~keep).flatten()
    n_ctx = num_contextual(n, n_dom, contextual_ratio, g)
    anchors = remaining.new_zeros(0)
    plan: dict[int, list[int]] = {}
    plan_scores: dict[int, list[float]] = {}
    if n_ctx > 0:
        step = max(1, remaining.numel() // n_ctx)
        init_pos = torch.arange(0, remaining.numel(), step, device=dev)[:n_ctx]
        anchors = remaining[init_pos]
        keep[anchors] = True
        local = torch.ones(remaining.numel(), dtype=torch.bool, device=dev)
        local[init_pos] = False
        pool = remaining[local]
        plan = {int(c): [] for c in anchors.tolist()}
        plan_scores = {int(c): [] for c in anchors.tolist()}
        if pool.numel() > 0:
            an = _unit(a.float())
            sim_aa = an[pool] @ an[anchors].T  # [n_pool, n_ctx]
            assign = sim_aa.argmax(dim=1)  # first maximum
            if v is not None and v.numel() > 0:
                s = (an[pool] @ _unit(v.reshape(-1, v.shape[-1]).float()).T).max(dim=1).values
            else:
                s = sim_aa.max(dim=1).values
            # per anchor the top-g pool tokens by s, vectorised: order by score (desc), then stably by anchor
            order = torch.argsort(s, descending=True, stable=True)
            order = order[torch.argsort(assign[order], stable=True)]
            grp = assign[order]
            counts = torch.bincount(grp, minlength=anchors.numel())
            starts = torch.cumsum(counts, 0) - counts
            rank = torch.arange(order.numel(), device=dev) - starts[grp]
            chosen = order[rank < g]
            for c, p, sc in zip(assign[chosen].tolist(), pool[chosen].tolist(), s[chosen].tolist()):
                plan[int(anchors[c])].append(int(p))
                plan_scores[int(anchors[c])].append(float(sc))
    return AudioSelection(keep=keep, dominant=dominant, anchors=anchors, merge_plan=plan, merge_scores=plan_scores)


def merge_anchors(a: torch.Tensor, sel: AudioSelection, only: range | None = None) -> torch.Tensor:
    """`a` with every anchor (or only those whose index lies in `only`) replaced by its merge (spec step 10).

    Weights and merged vectors come from the original `a`; computed in fp32, returned in `a`'s dtype.
    """
    out = a.clone()
    rows, srcs, scs = [], [], []
    for c, chosen in sel.merge_plan.items():
        if not chosen or (only is not None and c not in only):
            continue
        rows += [c] * len(chosen)
        srcs += chosen
        scs += sel.merge_scores[c]
    if not rows:
        return out
    dev = a.device
    rows_t, srcs_t = torch.tensor(rows, device=dev), torch.tensor(srcs, device=dev)
    s = torch.tensor(scs, dtype=torch.float32, device=dev)
    anchors, inv = torch.unique(rows_t, return_inverse=True)
    # softmax per anchor (scatter form): subtract the per-anchor max, exponentiate, normalise
    mx = torch.full((anchors.numel(),), float("-inf"), device=dev).scatter_reduce(0, inv, s, reduce="amax")
    e = torch.exp(s - mx[inv])
    w = e / torch.zeros(anchors.numel(), device=dev).index_add(0, inv, e)[inv]
    af = a.float()
    merged = torch.zeros(anchors.numel(), a.shape[1], device=dev).index_add(0, inv, w[:, None] * af[srcs_t])
    wsum = torch.zeros(anchors.numel(), device=dev).index_add(0, inv, w)
    out[anchors] = ((af[anchors] + merged) / (1.0 + wsum[:, None])).to(a.dtype)
    return out
