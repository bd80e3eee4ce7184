"""The token store: the stream's KV cache as frame blocks, held inside a fixed token capacity.

Every append to the stream (a frame with its trailer and frame text, a committed window, an audio chunk) is one
block. Before a block goes in, the store makes room: while the cache plus the new block would exceed
`capacity_tokens`, the oldest block after the first `sink_blocks` leaves the cache. The prompt prefix and the
first blocks stay as attention sinks (StreamingLLM: the first tokens soak up attention mass, and evicting them
degrades everything after), the newest stay because a camera assistant is mostly asked about now. Kept entries
keep their keys as computed (RoPE already applied), so their positions never change and new frames' positions
run on. What leaves is counted and reported.

Policies (a session setting):
- `evict`: a block that leaves is gone.
- `offload` (ReKV-style): it moves to a bounded host-side store (`offload_tokens`; the oldest offloaded blocks
  are dropped when it is full). At `ask()` the question's queries at a middle layer score every offloaded block
  (`retrieval.py`) and the best ones, up to `retrieve_tokens`, join the cache for that question only.
  `host_precision="int8"` keeps offloaded blocks as int8 rows with a scale each (`kv_quant.py`): a block is only
  read again if a question retrieves it, so it waits in a quarter of fp32's bytes and the same budget holds
  several times the history.

The capacity comes from the memory planner (`runtime/planner.py`: budget − weights − workspace, less the
question's reserve) or is given directly; it bounds what the stream holds between questions. A question's own
tokens, retrieved blocks and a query-conditioned method's re-prefill come on top, from that reserve.
"""
from __future__ import annotations

from dataclasses import dataclass, field

from vlmedge.errors import InputError
from vlmedge.runtime.kv_quant import HOST_PRECISIONS, Int8BlockKV
from vlmedge.runtime.kv_tail import remove_span, take_span

POLICIES = ("evict", "offload")


@dataclass
class Block:
    start: int  # cache position of the block's first entry (meaningless once offloaded)
    length: int
    kind: str  # "frame", "window" or "audio"
    time_s: float
    kv: list | None = None  # offloaded: per-layer (keys, values) host copies
    span: tuple[int, int] | None = None  # position ids it occupies, [lo, hi) over every RoPE row (None: unknown)


@dataclass
class TokenStore:
    capacity_tokens: int
    sink_blocks: int = 1
    policy: str = "evict"
    offload_tokens: int = 0  # host store bound (offload policy)
    retrieve_tokens: int = 0  # per-question retrieval bound (offload policy)
    focus: bool = False  # a question sees prefix + best blocks + the latest `local_blocks` (retrieval.focus)
    local_blocks: int = 2
    host_precision: str = "full"  # offloaded blocks as the cache holds them, or "int8" (kv_quant.Int8BlockKV)
    blocks: list[Block] = field(default_factory=list)
    host: list[Block] = field(default_factory=list)
    evicted_blocks: int = 0  # blocks that left the cache (offloaded ones included)
    evicted_tokens: int = 0
    offloaded_blocks: int = 0
    dropped_blocks: int = 0  # offloaded blocks dropped from a full host store
    retrieved_blocks: int = 0

    def __post_init__(self):
        def check(ok, msg):
            if not ok:
                raise InputError(msg)

        check(isinstance(self.capacity_tokens, int) and self.capacity_tokens >= 1,
              f"the token store's capacity must be a positive token count, got {self.capacity_tokens!r}")
        check(isinstance(self.sink_blocks, int) and self.sink_blocks >= 0,
              f"sink_frames must be a count >= 0, got {self.sink_blocks!r}")
        check(self.policy in POLICIES, f"eviction policy must be one of {', '.join(POLICIES)}, got {self.policy!r}")
        check(self.policy != "offload" or (self.offload_tokens > 0 and self.retrieve_tokens > 0),
              "the offload policy needs offload_tokens (host store size) and retrieve_tokens (per question) > 0")
        check(self.host_precision in HOST_PRECISIONS,
              f"offload precision must be one of {', '.join(HOST_PRECISIONS)}, got {self.host_precision!r}")

    def reset(self) -> None:
        self.blocks.clear()
        self.host.clear()
        self.evicted_blocks = self.evicted_tokens = self.offloaded_blocks = self.dropped_blocks = 0
        self.retrieved_blocks = 0

    def add(self, start: int, length: int, kind: str, time_s: float, span: tuple[int, int] | None = None) -> None:
        if length > 0:
            self.blocks.append(Block(start, length, kind, float(time_s), span=span))

    def make_room(self, cache, incoming: int) -> list[Block]:
        """Moves the oldest non-sink blocks out until `incoming` more entries fit; returns them (oldest first)."""
        removed: list[Block] = []
        while cache.get_seq_length() + incoming > self.capacity_tokens:
            if len(self.blocks) <= self.sink_blocks:
                fixed = cache.get_seq_length()
                raise InputError(f"{incoming} new tokens do not fit a token store of {self.capacity_tokens} with "
                                 f"{fixed} held by the prompt and {self.sink_blocks} sink block(s); raise the memory "
                                 "budget, keep fewer tokens per frame, or use fewer sink frames")
            victim = self.blocks.pop(self.sink_blocks)
            end = victim.start + victim.length
            if self.policy == "offload":
                victim.kv = take_span(cache, victim.start, end)
                if self.host_precision == "int8":
                    victim.kv = Int8BlockKV.from_pairs(victim.kv)
                self.host.append(victim)
                self.offloaded_blocks += 1
                while sum(b.length for b in self.host) > self.offload_tokens:
                    self.host.pop(0)
                    self.dropped_blocks += 1
            remove_span(cache, victim.start, end)
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

    @property
    def host_tokens(self) -> int:
        return sum(b.length for b in self.host)
