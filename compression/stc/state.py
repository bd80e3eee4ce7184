"""Per-stream STC state: the cacher's per-layer references and refresh counter, and the pruner's memory.

One `STCStreamState` per stream, created by `STC.new_state()` and owned by the session; nothing lives on
model modules or in globals, so several streams can share one model instance, and `reset()` (or a new
state at stream start) forgets everything.
"""
from __future__ import annotations

from dataclasses import dataclass, field

from vlmedge.compression.stc.cacher import LayerRef
from vlmedge.compression.stc.pruner import PrunerMemory


@dataclass
class STCStreamState:
    refs: list[LayerRef | None] = field(default_factory=list)  # one per vision block
    num_tokens: int | None = None  # T the references were taken at
    since_refresh: int = 0  # frames since the last refresh frame (0 on a refresh frame)
    frames: int = 0  # frames the cacher has encoded in this stream
    ref_frame: int | None = None  # stream frame index the current references come from
    refreshes: int = 0
    selective: int = 0
    gated: int = 0  # refreshes forced by the similarity gate
    last_refresh: bool | None = None  # how the latest frame ran
    last_gate_similarity: float | None = None
    memory: PrunerMemory = field(default_factory=PrunerMemory)
    packed_refs: tuple | None = None  # exported path: the references as the graphs take them, [blocks, T, C] each

    def reset(self) -> None:
        """Forgets references, counters and the pruner's memory (stream start)."""
        self.refs = []
        self.packed_refs = None
        self.num_tokens = None
        self.since_refresh = 0
        self.frames = 0
        self.ref_frame = None
        self.refreshes = self.selective = self.gated = 0
        self.last_refresh = None
        self.last_gate_similarity = None
        self.memory.reset()

    def drop_references(self) -> None:
        """Forgets the cacher's references only (the next frame refreshes); counters and memory stay."""
        self.refs = []
        self.packed_refs = None
        self.num_tokens = None

    def has_references(self, num_blocks: int, num_tokens: int) -> bool:
        return (self.num_tokens == num_tokens and len(self.refs) == num_blocks
                and all(r is not None and r.num_tokens == num_tokens for r in self.refs))


def refresh_due(state: STCStreamState, num_blocks: int, num_tokens: int, cache_interval: int) -> bool:
    """The schedule of spec §9 without the gate: refresh on the stream's first frame, when any layer lacks a
    reference, when T changed, or when `since_refresh >= N` counting this frame. With N = 2 frames 0, 2, 4, …
    refresh and 1, 3, 5, … are selective (the released `chunk_idx % N == 0`)."""
    if state.frames == 0 or not state.has_references(num_blocks, num_tokens):
        return True
    return state.since_refresh + 1 >= cache_interval
