"""What every compression method is: a small dataclass of typed settings with a pure per-frame selection.

A method sees one frame's projected tokens (`FrameTokens`) and returns a `Selection`: the kept token indices
in ascending (original) order and, for methods that merge, the replacement features of those tokens. The
session gives kept tokens their original position ids, so a method never renumbers positions. Anything a
method remembers across frames lives in the state object from `new_state()`, owned by one stream.
"""
from __future__ import annotations

from dataclasses import dataclass, fields
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
    query: torch.Tensor | None = None  # [D] query embedding, for query-conditioned methods


@dataclass
class Compressor:
    """Base class. Subclasses are dataclasses registered with `@register("name")`."""

    name: ClassVar[str] = ""
    taps: ClassVar[Sequence[int]] = ()  # vision-block outputs the method reads (e.g. GlimpsePrune)

    def new_state(self) -> Any:
        """Per-stream state; None for stateless methods."""
        return None

    def encode_frame(self, adapter, frame, state: Any):
        """Vision stage for one frame. Methods that change how the ViT runs (STC's cacher) override this;
        everyone else gets the adapter's plain block-by-block encoder."""
        return adapter.encode_frame(frame, taps=self.taps)

    def compress(self, tokens, ctx: FrameContext, state: Any) -> Selection:
        raise NotImplementedError  # pragma: no cover

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
