"""What every compression method is: a small dataclass of typed settings with a pure per-frame selection.

A method sees one frame's projected tokens (`FrameTokens`) and returns a `Selection`: the kept token indices
in ascending (original) order and, for methods that merge, the replacement features of those tokens. The
session gives kept tokens their original position ids, so a method never renumbers positions. Anything a
method remembers across frames lives in the state object from `new_state()`, owned by one stream.

Window methods (OmniZip) cannot decide frame by frame: they need a whole window of video AND its audio. Such a
method returns a window length from `window_length(adapter)` and implements `compress_window`; the session then
buffers a window's encoded frames and audio and compresses them together when the window completes (see
`runtime/session.py`). Methods without a window (`window_length` → None, the default) are untouched by this.
"""
from __future__ import annotations

from dataclasses import dataclass, field, fields
from typing import Any, ClassVar, Sequence

import torch

from vlmedge.errors import InputError


@dataclass
class Selection:
    keep: torch.Tensor  # [k] long, ascending indices into the frame's features
    features: torch.Tensor | None = None  # [k, D] replacement features (merging methods), else None

    def __post_init__(self):
        if self.keep.ndim != 1 or (self.keep.numel() > 1 and not bool((self.keep[1:] > self.keep[:-1]).all())):
            raise AssertionError("Selection.keep must be 1-D, strictly ascending (original token order)")
        if self.features is not None and self.features.shape[0] != self.keep.shape[0]:
            raise AssertionError("Selection.features must have one row per kept index")


@dataclass
class FrameContext:
    """What a method may know about the frame besides its tokens."""

    frame_index: int
    time_s: float
    query: torch.Tensor | None = None  # [M, D] the question's LLM input embeddings, for query-conditioned methods


@dataclass
class WindowSelection:
    """What a window method keeps of one window: a `Selection` per frame (in push order) and one over the
    window's audio tokens (all its audio chunks concatenated in push order; `features` = merged tokens)."""

    frames: list[Selection]
    audio: Selection
    info: dict = field(default_factory=dict)  # method-specific facts about the window (ratios, budgets)

    def __iter__(self):  # `frames, audio = method.compress_window(...)`
        return iter((self.frames, self.audio))


@dataclass
class Compressor:
    """Base class. Subclasses are dataclasses registered with `@register("name")`."""

    name: ClassVar[str] = ""
    taps: ClassVar[Sequence[int]] = ()  # vision-block outputs the method reads (e.g. GlimpsePrune)
    window_s: ClassVar[float | None] = None  # window methods: seconds per window (see `window_length`)

    def new_state(self) -> Any:
        """Per-stream state; None for stateless methods."""
        return None

    def encode_frame(self, adapter, frame, state: Any):
        """Vision stage for one frame. Methods that change how the ViT runs (STC's cacher) override this;
        everyone else gets the adapter's plain block-by-block encoder."""
        return adapter.encode_frame(frame, taps=self.taps)

    def compress(self, tokens, ctx: FrameContext, state: Any) -> Selection:
        raise NotImplementedError  # pragma: no cover

    # ----- window methods (optional protocol) -----
    def window_length(self, adapter) -> float | None:
        """Seconds per window for window methods (may depend on the model, e.g. Omni's `seconds_per_chunk`);
        None (the default) for per-frame methods, which the session compresses frame by frame."""
        return self.window_s

    def compress_window(self, frames: Sequence, frame_ctx: Sequence[FrameContext], audio: Sequence | None,
                        state: Any) -> WindowSelection:
        """One window: its frames' `FrameTokens` with their contexts and its `AudioTokens` chunks (None or empty
        when the window has no audio), in push order. May update `state` (called once per committed window; a
        question's provisional flush passes a copy)."""
        raise NotImplementedError(f"method {self.name!r} has no window form")  # pragma: no cover

    def settings(self) -> dict:
        return {f.name: getattr(self, f.name) for f in fields(self)}

    def spec(self) -> str:
        """The string that `get_method` turns back into this object, e.g. `uniform:ratio=0.25`."""
        opts = ",".join(f"{k}={v}" for k, v in self.settings().items() if v is not None)
        return f"{self.name}:{opts}" if opts else self.name


@dataclass
class TokenBudget:
    """Per-frame budget: either a fraction of the frame's tokens or an absolute count (count wins)."""

    ratio: float | None = None
    tokens: int | None = None

    def __post_init__(self):
        if self.ratio is not None and not 0.0 < self.ratio <= 1.0:
            raise InputError(f"ratio must be in (0, 1], got {self.ratio}")
        if self.tokens is not None and self.tokens < 1:
            raise InputError(f"tokens must be a positive count, got {self.tokens}")

    def budget(self, n: int) -> int:
        if self.tokens is not None:
            return min(n, self.tokens)
        if self.ratio is not None:
            return max(1, min(n, round(self.ratio * n)))
        return n


def runs_own_vision(method) -> bool:
    """Whether `method` replaces the adapter's plain vision pass (STC's cacher): it then needs the torch tower's
    blocks, or graphs of its own in an export."""
    return type(method).encode_frame is not Compressor.encode_frame and not getattr(method, "plain_vision", False)
