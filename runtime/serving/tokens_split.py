"""The bandwidth-friendly split: the edge board runs sampling, the vision tower and the compressor; only the kept
visual tokens travel; the server runs the LLM.

Edge side: `EdgeEncoder` turns a frame into the `vlmedge_tokens` request (or None when its sampler skips the
frame). Server side: `ReceivedTokens` is a compression "method" whose vision stage and selection are the tokens
that arrived, so the server's `StreamingSession` prefills them exactly as if it had computed them itself
(positions, token store, statistics, questions all unchanged).

Only per-frame methods split this way: query-conditioned methods (Script, GlimpsePrune) re-select frames per
question and window methods (OmniZip) need a window of audio and video, both of which live with the session;
run those with the frames split.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import numpy as np
import torch

from vlmedge.compression import FrameContext, Selection, get_method
from vlmedge.compression.base import Compressor
from vlmedge.errors import InputError
from vlmedge.models.base import FrameTokens
from vlmedge.models.preprocess import validate_frame

# StreamingSession.push_frame validates its frame before the method's vision stage runs; with received tokens
# there is no frame, so it gets the smallest valid one.
PLACEHOLDER_FRAME = np.zeros((2, 2, 3), dtype=np.uint8)


class FrameSampler:
    """The session's sampler (runtime/session.py `push_frame`), run on the edge so the edge encodes exactly the
    frames an in-process session would: the first frame, then the first at or after each 1/fps step."""

    def __init__(self, sample_fps: float | None):
        if sample_fps is not None and sample_fps <= 0:
            raise InputError(f"sample_fps must be positive (frames per second), got {sample_fps}")
        self.sample_fps = sample_fps
        self.reset()

    def reset(self) -> None:
        self._next: float | None = None
        self._last: float | None = None
        self.seen = 0

    def take(self, time_s: float | None) -> tuple[bool, float]:
        """(sampled, time_s); raises InputError on a time earlier than the previous frame's."""
        if time_s is None:
            time_s = self.seen / (self.sample_fps or 1.0)
        time_s = float(time_s)
        if self._last is not None and time_s < self._last:
            raise InputError(f"frame time {time_s:.3f}s is earlier than the previous frame's {self._last:.3f}s; "
                             "timestamps must not go backwards (reset the stream to start over)")
        self.seen += 1
        self._last = time_s
        if self.sample_fps is None:
            return True, time_s
        if self._next is not None and time_s + 1e-9 < self._next:
            return False, time_s
        step = 1.0 / self.sample_fps
        base = self._next if self._next is not None else time_s
        while base <= time_s + 1e-9:
            base += step
        self._next = base
        return True, time_s


def check_splittable(method, adapter) -> None:
    if getattr(method, "query_conditioned", False) or getattr(method, "prunes_in_llm", False):
        raise InputError(f"method {method.name!r} re-selects visual tokens per question on the server, so it cannot "
                         "run on the edge; use the frames split for it")
    if method.window_length(adapter) is not None:
        raise InputError(f"method {method.name!r} compresses whole windows of audio and video with the session; "
                         "use the frames split for it")


class EdgeEncoder:
    """Sampler + vision tower + compressor of one stream, on the edge. Holds the method's per-stream state (the
    STC cacher's references, for instance); `reset()` starts a new stream."""

    def __init__(self, adapter, method="stc", sample_fps: float | None = 2.0):
        self.adapter = adapter
        self.method = get_method(method)
        check_splittable(self.method, adapter)
        self.sampler = FrameSampler(sample_fps)
        self.reset()

    def reset(self) -> None:
        self.state = self.method.new_state()
        self.sampler.reset()
        self.encoded = 0

    @torch.no_grad()
    def encode(self, frame, time_s: float | None) -> dict | None:
        """The `vlmedge_tokens` inputs for `frame` (numpy arrays without the batch dimension, stream_id not
        included), or None when the sampler skips it."""
        validate_frame(frame)
        sampled, time_s = self.sampler.take(time_s)
        if not sampled:
            return None
        tokens = self.method.encode_frame(self.adapter, frame, self.state)
        ctx = FrameContext(frame_index=self.encoded, time_s=time_s, query=None)
        sel = self.method.compress(tokens, ctx, self.state)
        self.encoded += 1
        feats = sel.features if sel.features is not None else tokens.features[sel.keep]
        # float32 on the wire: fp16/bf16 widen exactly and the server narrows them back to the model's dtype
        return {"time_s": np.array([time_s], dtype=np.float64),
                "features": feats.detach().to(torch.float32).cpu().numpy(),
                "keep": sel.keep.to(torch.int64).cpu().numpy(),
                "grid_hw": np.array(tokens.grid_hw, dtype=np.int64),
                "trailer": tokens.trailer.detach().to(torch.float32).cpu().numpy().reshape(-1, feats.shape[-1])}


@dataclass
class _Arrived:
    tokens: FrameTokens | None = None
    selection: Selection | None = None


@dataclass
class ReceivedTokens(Compressor):
    """Server side of the split: the session's vision stage and compressor return what the edge sent.
    `put()` stores one frame's tokens in the stream's state right before `push_frame(PLACEHOLDER_FRAME, t)`."""

    name: ClassVar[str] = "received"
    plain_vision: ClassVar[bool] = True  # needs no vision stage of the backend's own

    def new_state(self):
        return _Arrived()

    def encode_frame(self, adapter, frame, state: _Arrived):
        if state.tokens is None:
            raise InputError("a tokens stream takes visual tokens (vlmedge_tokens), not frames")
        return state.tokens

    def compress(self, tokens, ctx, state: _Arrived) -> Selection:
        sel, state.tokens, state.selection = state.selection, None, None
        return sel

    @staticmethod
    def put(state: _Arrived, adapter, features, keep, grid_hw, trailer) -> None:
        """Checks one frame's arrived tokens against the model and stores them for the next push."""
        features, keep, trailer = np.asarray(features), np.asarray(keep), np.asarray(trailer)
        grid = tuple(int(v) for v in np.asarray(grid_hw).reshape(-1))
        dim = int(adapter.hidden_size)
        if len(grid) != 2 or min(grid) < 1:
            raise InputError(f"grid_hw must be two positive sizes (h, w), got {grid}")
        n = grid[0] * grid[1]
        if features.ndim != 2 or features.shape[1] != dim:
            raise InputError(f"features must be [k, {dim}] (the served model's hidden size), got shape "
                             f"{tuple(features.shape)}; the edge must run the same model as the server")
        if keep.ndim != 1 or keep.shape[0] != features.shape[0]:
            raise InputError(f"keep must hold one index per feature row ({features.shape[0]}), got shape "
                             f"{tuple(keep.shape)}")
        if keep.size and (keep.min() < 0 or keep.max() >= n or np.any(np.diff(keep) <= 0)):
            raise InputError(f"keep must be strictly ascending indices into the {grid[0]}x{grid[1]} grid (0..{n - 1})")
        if keep.size == 0:
            raise InputError("a frame must keep at least one visual token")
        trailer = trailer.reshape(-1, dim) if trailer.size else np.zeros((0, dim), dtype=np.float32)
        dtype = getattr(adapter, "dtype", torch.float32)
        feats = torch.from_numpy(np.ascontiguousarray(features, dtype=np.float32)).to(dtype)
        # frame_inputs() reads only the row count of a frame's features when the selection carries the kept
        # features, so the dropped rows need no memory
        placeholder = torch.zeros(1, dim, dtype=dtype).expand(n, dim)
        state.tokens = FrameTokens(features=placeholder, grid_hw=grid,
                                   trailer=torch.from_numpy(np.ascontiguousarray(trailer, dtype=np.float32)).to(dtype))
        state.selection = Selection(keep=torch.from_numpy(keep.astype(np.int64)), features=feats)
