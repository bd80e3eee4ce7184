"""The token store: the stream's KV cache as frame blocks, held inside a fixed token capacity.

Every append to the stream (a frame with its trailer and frame text, a committed window, an audio chunk) is one
block. Before a block goes in, the store makes room: while the cache plus the new block would exceed
`capacity_tokens`, the oldest block after the first `sink_blocks` is evicted — removed from every layer of the
cache. The prompt prefix and the first blocks stay as attention sinks (StreamingLLM: the first tokens soak up
attention mass, and evicting them degrades everything after), the newest blocks stay because a camera
assistant is mostly asked about now. Kept entries keep their keys as computed (RoPE already applied), so their
positions never change and new frames' positions run on. What was evicted is counted and reported.

The capacity comes from the memory planner (`runtime/planner.py`: budget − weights − workspace, less the
question's reserve) or is given directly; it bounds what the stream holds between questions. A question's own
tokens (and a query-conditioned method's re-prefill) come on top, from the planner's question reserve.
"""
from __future__ import annotations

from dataclasses import dataclass, field

from vlmedge.errors import InputError
from vlmedge.runtime.kv_tail import remove_span


@dataclass
class Block:
    start: int  # cache position of the block's first entry
    length: int
    kind: str  # "frame", "window" or "audio"
    time_s: float


@dataclass
class TokenStore:
    capacity_tokens: int
    sink_blocks: int = 1
    blocks: list[Block] = field(default_factory=list)
    evicted_blocks: int = 0
    evicted_tokens: int = 0

    def __post_init__(self):
        if not isinstance(self.capacity_tokens, int) or self.capacity_tokens < 1:
            raise InputError(f"the token store's capacity must be a positive token count, got {self.capacity_tokens!r}")
        if not isinstance(self.sink_blocks, int) or self.sink_blocks < 0:
            raise InputError(f"sink_frames must be a count >= 0, got {self.sink_blocks!r}")

    def reset(self) -> None:
        self.blocks.clear()
        self.evicted_blocks = self.evicted_tokens = 0

    def add(self, start: int, length: int, kind: str, time_s: float) -> None:
        if length > 0:
            self.blocks.append(Block(start, length, kind, float(time_s)))

    def make_room(self, cache, incoming: int) -> list[Block]:
        """Evicts the oldest non-sink blocks until `incoming` more entries fit; returns them (oldest first)."""
        removed: list[Block] = []
        while cache.get_seq_length() + incoming > self.capacity_tokens:
            if len(self.blocks) <= self.sink_blocks:
                fixed = cache.get_seq_length()
                raise InputError(f"{incoming} new tokens do not fit a token store of {self.capacity_tokens} with "
                                 f"{fixed} held by the prompt and {self.sink_blocks} sink block(s); raise the memory "
                                 "budget, keep fewer tokens per frame, or use fewer sink frames")
            victim = self.blocks.pop(self.sink_blocks)
            remove_span(cache, victim.start, victim.start + victim.length)
            for b in self.blocks[self.sink_blocks:]:
                if b.start > victim.start:
                    b.start -= victim.length
            self.evicted_blocks += 1
            self.evicted_tokens += victim.length
            removed.append(victim)
        return removed

    @property
    def held_tokens(self) -> int:
        return sum(b.length for b in self.blocks)
