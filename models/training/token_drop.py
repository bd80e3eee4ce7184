"""Training clips shown with some of their visual tokens dropped, so answers do not depend on how many arrive.

The reference model trained on full frames only learned to count by the *share* of object tokens among a
frame's tokens: pruning that keeps objects and drops background (STC, GlimpsePrune) raised that share and
"how many objects" fell from 1.00 to 0.58-0.63, while random pruning (which keeps the share) lost nothing.
Large VLMs do not behave like that: they are trained at many resolutions and token counts (AnyRes), so a
frame's token count varies and counting cannot lean on it. Showing some clips pruned during training gives the
small model the same property. The selections, with positions kept (gaps left, as at inference):
- `random`: a uniform random subset of each frame's tokens;
- `objects`: every token an object covers (ground truth from the generator) first, then random background up
  to the budget — the extreme of what an importance-based method keeps, so object density varies widely;
- `salient`: the tokens farthest from the frame's mean token first (features only, no ground truth).
  Without it the model counted the few background tokens that stand out from the rest as extra objects: a frame
  reduced to its objects plus its most distinct background tokens answered "how many" 0.53 (objects plus
  random background: 0.97), and STC's pruner, which keeps such tokens, 0.58 with 42 over-counts in 120.
  Diversity- and attention-based pruners (STC, DivPrune, VisionZip) all favour outlying tokens; a real VLM
  answers on them, so the instrument has to as well.
- `objects-salient`: every object token first, then the most distinct background tokens — the exact set that
  fooled the model above (objects plus outlying background), which `objects` and `salient` only meet by chance.
- `objects-tight`: every object token plus only a few of the most distinct background tokens (a fifth of the
  drawn keep share of the frame, 2-12%), whatever the object share: what a well-trained importance predictor
  keeps. The 220-minute model answered "four" for 28 of 37 three-object frames that GlimpsePrune had reduced to
  their (complete) objects plus ~6 background tokens (35 of 38 with the same tokens dropped at the input);
  `objects`/`objects-salient` only reach that regime when the drawn share sits just above the object share.
  68 minutes with it in 2 of 7 dropped clips moved GlimpsePrune's count 0.755 -> 0.78 (three -> "four" 34 -> 28).
`TokenDrop.modes` picks among them uniformly per clip; a mode listed twice is drawn twice as often.
None is any method's own rule; the evaluated methods still see a model that never saw their selections.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from vlmedge.errors import InputError

MODES = ("random", "objects", "salient", "objects-salient", "objects-tight")
TIGHT_BACKGROUND = 0.2  # objects-tight: background kept, as a share of the drawn keep share
DEFAULT_MODES = ("random", "objects", "salient")  # what earlier runs drew from; kept so their commands reproduce


@dataclass(frozen=True)
class DropPlan:
    mode: str
    keep: float  # share of each frame's tokens kept


@dataclass(frozen=True)
class TokenDrop:
    p: float = 0.0  # share of training clips shown pruned
    min_keep: float = 0.1
    max_keep: float = 0.6
    modes: tuple[str, ...] = DEFAULT_MODES

    def __post_init__(self):
        bad = [m for m in self.modes if m not in MODES]
        if not self.modes or bad:
            raise InputError(f"--token-drop-modes must list modes among {', '.join(MODES)} (repeat one to draw it "
                             f"more often), got {','.join(self.modes) or 'nothing'}")
        if not 0.0 <= self.p <= 1.0:
            raise InputError(f"--token-drop must be a share of training clips in [0, 1], got {self.p}")
        if not 0.0 < self.min_keep <= self.max_keep <= 1.0:
            raise InputError(f"token-drop keep range must satisfy 0 < min <= max <= 1, got "
                             f"{self.min_keep}..{self.max_keep}")

    def plan(self, rng: np.random.Generator) -> DropPlan | None:
        """Whether (and how) one clip is pruned; every frame of the clip uses the same plan, as a method would."""
        if self.p <= 0.0 or rng.random() >= self.p:
            return None
        return DropPlan(self.modes[int(rng.integers(len(self.modes)))], float(rng.uniform(self.min_keep, self.max_keep)))


def keep_indices(plan: DropPlan, object_mask: torch.Tensor, rng: np.random.Generator,
                 features: torch.Tensor | None = None) -> torch.Tensor:
    """Ascending kept positions of one frame. `object_mask [N]` bool: tokens an object covers; `features [N, D]`:
    the frame's post-projector tokens (needed by `salient`)."""
    n = int(object_mask.numel())
    k = max(1, min(n, round(plan.keep * n)))
    order = rng.permutation(n)
    if plan.mode == "objects":
        obj = object_mask.numpy()[order]
        order = np.concatenate([order[obj], order[~obj]])  # objects first, each group in random order
    elif plan.mode in ("salient", "objects-salient", "objects-tight"):
        if features is None or features.shape[0] != n:
            raise ValueError(f"token-drop {plan.mode!r} needs the frame's {n} token features, got "
                             f"{None if features is None else tuple(features.shape)}")
        f = features.detach().float()
        order = torch.argsort((f - f.mean(0)).norm(dim=-1), descending=True, stable=True).numpy()
        if plan.mode in ("objects-salient", "objects-tight"):
            obj = object_mask.numpy()[order]
            order = np.concatenate([order[obj], order[~obj]])  # stable: background stays most distinct first
            if plan.mode == "objects-tight":
                k = min(n, max(1, int(obj.sum()) + round(plan.keep * TIGHT_BACKGROUND * n)))
    elif plan.mode != "random":
        raise ValueError(f"token-drop mode must be one of {', '.join(MODES)}, got {plan.mode!r}")
    return torch.from_numpy(np.sort(order[:k])).long()
