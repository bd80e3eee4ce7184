"""Position ids for a stream: 1-D RoPE (LLaVA-OneVision / Qwen2) and M-RoPE (Qwen2.5-VL / Omni).

Every frame's tokens get the ids they would have had with nothing pruned; a compressor only selects columns,
so kept tokens keep their original ids and gaps are left where tokens were dropped. Renumbering the kept
tokens compactly breaks spatial and temporal questions (measured: "where"/"appeared" fell to chance on a small
LLaVA-OneVision-class model), because the LLM reads layout from the RoPE offsets.

M-RoPE follows Qwen's video convention: the stream is one video that starts at `origin` (the position after
the prefix); a frame at time tau gets t = origin + int(tau * tokens_per_second) and h/w = origin + row/col of
the merged grid; text after it starts at the largest id so far + 1 (as in the released Qwen2.5 code; note that
transformers 5.23's `get_rope_index` advances text only by max(h, w) after a video, which differs once the
video is longer than it is wide).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass
class PositionState:
    """Where the next token goes. Owned by one stream; `copy()` before speculative use (questions)."""

    next: int = 0
    origin: int | None = None  # M-RoPE: position where the stream's video starts

    def copy(self) -> "PositionState":
        return PositionState(self.next, self.origin)


class PositionScheme:
    rows: int = 1

    def text(self, state: PositionState, n: int) -> torch.Tensor:
        """Ids `[rows, n]` for n text tokens; advances the state."""
        ids = torch.arange(state.next, state.next + n, dtype=torch.long).expand(self.rows, n).clone()
        state.next += n
        return ids

    def frame(self, state: PositionState, grid_hw: tuple[int, int], n_trailer: int, time_s: float) -> torch.Tensor:
        raise NotImplementedError  # pragma: no cover

    def audio(self, state: PositionState, n: int, time_s: float, seconds_per_token: float) -> torch.Tensor:
        raise NotImplementedError  # pragma: no cover

    def model_position_ids(self, ids: torch.Tensor) -> torch.Tensor:
        """`[rows, L]` → the shape the family's language model takes."""
        raise NotImplementedError  # pragma: no cover


class Rope1D(PositionScheme):
    rows = 1

    def frame(self, state, grid_hw, n_trailer, time_s):
        return self.text(state, grid_hw[0] * grid_hw[1] + n_trailer)

    def audio(self, state, n, time_s, seconds_per_token):
        return self.text(state, n)

    def model_position_ids(self, ids):
        return ids.reshape(1, -1)


@dataclass
class MRope(PositionScheme):
    tokens_per_second: float
    rows = 3

    def _origin(self, state: PositionState) -> int:
        if state.origin is None:
            state.origin = state.next
        return state.origin

    def frame(self, state, grid_hw, n_trailer, time_s):
        h, w = grid_hw
        origin = self._origin(state)
        t = origin + int(time_s * self.tokens_per_second)
        rows = torch.arange(h).repeat_interleave(w)
        cols = torch.arange(w).repeat(h)
        ids = torch.stack([torch.full((h * w,), t), origin + rows, origin + cols]).long()
        state.next = max(state.next, int(ids.max()) + 1)
        if n_trailer:
            ids = torch.cat([ids, self.text(state, n_trailer)], dim=1)
        return ids

    def audio(self, state, n, time_s, seconds_per_token):
        # Qwen2.5-Omni: audio tokens are one per 40 ms and share the video's time axis on all three rows.
        origin = self._origin(state)
        t0 = origin + int(time_s * self.tokens_per_second)
        step = seconds_per_token * self.tokens_per_second
        t = t0 + (torch.arange(n, dtype=torch.float64) * step).long()
        ids = t.expand(3, n).clone()
        state.next = max(state.next, int(ids.max()) + 1)
        return ids

    def model_position_ids(self, ids):
        return ids.reshape(3, 1, -1)
