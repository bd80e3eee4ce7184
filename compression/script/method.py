"""`--method script`: Script's graph-structured + query-conditioned pruning, paper semantics (spec
`../shared/specs/script.md` §8), per frame after the projector.

Settings (`script:ratio=0.25,gsp_ratio=0.5,...`):
- `ratio` / `tokens`: the per-frame budget T (count wins); neither given → ratio 64/576, the paper's 88.9%
  pruned on LLaVA-1.5.
- `gsp_ratio` (0.5): at most this fraction of the source (even-index) tokens GSP may prune; 0 disables GSP, so
  `script:gsp_ratio=0` is the DPP-only (QCSP, CDPruner-like) baseline — there is no separate `dpp` method.
- `tau` (0.2), `gamma` (1.0): edge threshold and similarity weight of the redundancy score.
- `relevance_sign` (+1): −1 reproduces CDPruner's negated relevance.
- `relevance_source` ("llm_embed"): the question's mean LLM input embedding against the projected tokens. The
  paper's CLIP-text relevance needs a CLIP text tower, which none of our adapters has.
- `eps` (1e-10): the greedy MAP stops its Cholesky updates once no token has more conditional variance.

This deliberately differs from the released HEAD code, whose GSP is a no-op and whose DPP is not exact
(spec §4, §7). The method is stateless. Trailer tokens (LLaVA-OneVision's `image_newline`) are never dropped.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch

from vlmedge.compression.base import Compressor, FrameContext, Selection, TokenBudget
from vlmedge.compression.registry import register
from vlmedge.compression.script.select import script_select
from vlmedge.errors import InputError

DEFAULT_RATIO = 64 / 576
RELEVANCE_SOURCES = ("llm_embed",)


def _is_num(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


@register("script")
@dataclass
class Script(Compressor, TokenBudget):
    gsp_ratio: float = 0.5
    tau: float = 0.2
    gamma: float = 1.0
    relevance_sign: int = 1
    relevance_source: str = "llm_embed"
    eps: float = 1e-10

    query_conditioned: ClassVar[bool] = True

    def __post_init__(self):
        super().__post_init__()

        def check(ok: bool, msg: str):
            if not ok:
                raise InputError(f"script: {msg}")

        check(_is_num(self.gsp_ratio) and 0.0 <= self.gsp_ratio < 1.0,
              f"gsp_ratio (largest fraction of source tokens GSP prunes) must be in [0, 1); use 0 to disable GSP, "
              f"got {self.gsp_ratio!r}")
        check(_is_num(self.tau) and -1.0 <= self.tau <= 1.0,
              f"tau is a cosine-similarity edge threshold and must be in [-1, 1], got {self.tau!r}")
        check(_is_num(self.gamma) and self.gamma >= 0.0, f"gamma must be a number >= 0, got {self.gamma!r}")
        check(self.relevance_sign in (1, -1) and not isinstance(self.relevance_sign, bool),
              f"relevance_sign must be 1 (paper) or -1 (CDPruner's negation), got {self.relevance_sign!r}")
        check(self.relevance_source in RELEVANCE_SOURCES,
              f"relevance_source must be 'llm_embed' (the question's LLM input embedding; 'clip_text' needs a "
              f"CLIP text tower, which no supported model has), got {self.relevance_source!r}")
        check(_is_num(self.eps) and 0.0 <= self.eps < 1.0,
              f"eps (greedy MAP early-stop variance) must be in [0, 1), got {self.eps!r}")

    def frame_budget(self, n: int) -> int:
        if self.ratio is None and self.tokens is None:
            return max(1, min(n, round(DEFAULT_RATIO * n)))
        return self.budget(n)

    def compress(self, tokens, ctx: FrameContext, state) -> Selection:
        h = tokens.features
        if h.ndim != 2:
            raise InputError(f"script: frame tokens must be [N, D] (one frame, no batch), got {tuple(h.shape)}")
        q = ctx.query
        if q is not None and q.numel() != h.shape[-1]:
            raise InputError(f"script: the query must be one [D] embedding with D = {h.shape[-1]} (the mean LLM "
                             f"input embedding of the question), got shape {tuple(q.shape)}")
        with torch.no_grad():
            keep = script_select(h, self.frame_budget(h.shape[0]), q=q, ratio=self.gsp_ratio, tau=self.tau,
                                 gamma=self.gamma, sign=self.relevance_sign, eps=self.eps)
        return Selection(keep=keep.cpu())
