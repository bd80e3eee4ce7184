"""How one frame's kept tokens go into the LLM: selected features, the trailer, and their original ids."""
from __future__ import annotations

import torch


def frame_inputs(tokens, sel, ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """A frame's kept tokens (or merged features) and trailer, with their ids. Kept tokens keep the ids they had
    before pruning: columns are selected, never renumbered."""
    n = tokens.num_tokens
    feats = sel.features if sel.features is not None else tokens.features[sel.keep]
    return torch.cat([feats, tokens.trailer.to(feats.dtype)]), torch.cat([ids[:, sel.keep], ids[:, n:]], dim=1)
