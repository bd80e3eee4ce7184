"""The memory plan of one stream: what a budget leaves for the KV cache, and how many frames that holds.

budget = weights + workspace + KV. Weights are counted from the loaded model's tensors; the workspace is
measured (the peak memory one frame's encode + compress + prefill takes above the resident weights, or the
backend's own figure), never guessed. What is left, divided by the KV bytes per token
(2 × layers × kv_heads × head_dim × bytes per element), is the token capacity; after the prompt's tokens and a
question's, it holds `frames = (capacity − prompt − question) // tokens_per_frame` frames — the size of the
token store before its eviction policy applies. A budget too small for weights + workspace + the prompt + one
frame + a question is refused with the smallest budget that would work.
"""
from __future__ import annotations

import re
import weakref
from dataclasses import asdict, dataclass

from vlmedge.errors import InputError
from vlmedge.jetson.profiles import kv_bytes_per_token
from vlmedge.models.base import kv_shape

KiB, MiB, GiB = 1024, 1024**2, 1024**3
_UNITS = {"": 1, "b": 1, "k": KiB, "kb": 1000, "kib": KiB, "m": MiB, "mb": 1000**2, "mib": MiB, "g": GiB,
          "gb": 1000**3, "gib": GiB, "t": 1024**4, "tb": 1000**4, "tib": 1024**4}
# adapter -> {method spec: workspace bytes}: the first measurement per process (see probe); weak, so a
# closed model takes its entry with it
_WORKSPACE: "weakref.WeakKeyDictionary" = weakref.WeakKeyDictionary()
ELEMENT_BYTES = {"fp32": 4, "fp16": 2, "bf16": 2, "fp8": 1, "int8": 1}


def parse_bytes(text) -> int:
    """`6GiB`, `6G` (binary), `6GB` (decimal), `512MiB`, `1.5 GiB` or a plain byte count → bytes."""
    if isinstance(text, (int, float)) and not isinstance(text, bool):
        if text <= 0:
            raise InputError(f"a memory size must be positive, got {text}")
        return int(text)
    m = re.fullmatch(r"\s*([0-9]*\.?[0-9]+)\s*([a-zA-Z]*)\s*", str(text))
    if not m or m.group(2).lower() not in _UNITS:
        raise InputError(f"memory size {text!r} must look like 6GiB, 512MiB, 6G or 8000000000")
    value = float(m.group(1)) * _UNITS[m.group(2).lower()]
    if value <= 0:
        raise InputError(f"a memory size must be positive, got {text!r}")
    return int(value)


def human(n: float) -> str:
    return f"{n / GiB:.2f} GiB" if n >= GiB else f"{n / MiB:.1f} MiB"


@dataclass(frozen=True)
class MemoryPlan:
    budget_bytes: int
    weights_bytes: int
    workspace_bytes: int
    kv_precision: str
    kv_bytes_per_token: int
    capacity_tokens: int
    prompt_tokens: int
    question_tokens: int
    tokens_per_frame: int
    frames: int
    min_budget_bytes: int  # weights + workspace + prompt + one frame + a question

    @property
    def kv_bytes(self) -> int:
        return self.capacity_tokens * self.kv_bytes_per_token

    def to_dict(self) -> dict:
        return {**asdict(self), "kv_bytes": self.kv_bytes}

    def table(self) -> str:
        rows = [("memory budget", human(self.budget_bytes), ""),
                ("weights", human(self.weights_bytes), "counted from the loaded tensors"),
                ("workspace", human(self.workspace_bytes), "measured: one frame's encode + compress + prefill"),
                ("KV cache", human(self.kv_bytes), f"{self.capacity_tokens:,} tokens x {self.kv_bytes_per_token:,} B "
                                                   f"({self.kv_precision})"),
                ("prompt + question", f"{self.prompt_tokens + self.question_tokens} tokens", "reserved"),
                ("tokens per frame", f"{self.tokens_per_frame}", "after compression, with the frame's trailer"),
                ("frames held", f"{self.frames:,}", "the token store's size before eviction"),
                ("smallest budget", human(self.min_budget_bytes), "weights + workspace + prompt + 1 frame")]
        w = max(len(r[0]) for r in rows)
        v = max(len(r[1]) for r in rows)
        return "\n".join(f"{a:<{w}}  {b:>{v}}  {c}" for a, b, c in rows)


def plan_memory(budget_bytes: int, weights_bytes: int, workspace_bytes: int, kv_bytes_per_token: int,
                tokens_per_frame: int, prompt_tokens: int, question_tokens: int = 64,
                kv_precision: str = "fp32") -> MemoryPlan:
    """The plan for explicit sizes (everything in bytes / tokens); InputError when the budget is too small."""
    if tokens_per_frame < 1 or kv_bytes_per_token < 1:
        raise InputError("tokens per frame and KV bytes per token must be positive")
    fixed = int(weights_bytes) + int(workspace_bytes)
    minimum = fixed + kv_bytes_per_token * (prompt_tokens + question_tokens + tokens_per_frame)
    if budget_bytes < minimum:
        raise InputError(f"a {human(budget_bytes)} budget cannot hold this model: weights {human(weights_bytes)} + "
                         f"workspace {human(workspace_bytes)} + the KV of the prompt, one frame and a question "
                         f"need at least {human(minimum)} ({minimum:,} bytes); raise --memory-budget, keep fewer "
                         "tokens per frame, or use lower-precision weights")
    capacity = (budget_bytes - fixed) // kv_bytes_per_token
    frames = (capacity - prompt_tokens - question_tokens) // tokens_per_frame
    return MemoryPlan(budget_bytes=int(budget_bytes), weights_bytes=int(weights_bytes),
                      workspace_bytes=int(workspace_bytes), kv_precision=kv_precision,
                      kv_bytes_per_token=int(kv_bytes_per_token), capacity_tokens=int(capacity),
                      prompt_tokens=int(prompt_tokens), question_tokens=int(question_tokens),
                      tokens_per_frame=int(tokens_per_frame), frames=int(frames), min_budget_bytes=int(minimum))


@dataclass(frozen=True)
class OffloadSplit:
    """How a plan's stream capacity divides between the live cache and a ReKV-style offload store."""

    live_tokens: int  # what the token store holds in the cache (its capacity_tokens)
    offload_tokens: int  # what the offload store holds
    reserve_tokens: int  # the offload store's and the retrieval allowance's bytes, in live-cache tokens
    host_bytes_per_token: float
    frames_live: int
    frames_total: int  # live + offloaded frames: how far back a question can reach

    def rows(self) -> list[tuple[str, str, str]]:
        return [("live KV", f"{self.live_tokens:,} tokens", "the token store's capacity, after the reserve"),
                ("offload store", f"{self.offload_tokens:,} tokens",
                 f"{self.host_bytes_per_token:,.0f} B each, in the budget"),
                ("history held", f"{self.frames_total:,} frames", f"{self.frames_live:,} of them live")]


def offload_split(plan: MemoryPlan, offload_tokens: int, retrieve_tokens: int, precision: str,
                  head_dim: int) -> OffloadSplit:
    """The live/offloaded division of `plan` for an offload store of `offload_tokens` at `precision` ("full" or
    "int8", see kv_quant.py) and a per-question retrieval allowance; InputError when nothing is left live."""
    import math

    from vlmedge.runtime.kv_quant import host_bytes_per_token

    if offload_tokens < 1 or retrieve_tokens < 1:
        raise InputError("the offload policy needs offload_tokens (host store size) and retrieve_tokens (per question) "
                         "> 0")
    host = host_bytes_per_token(plan.kv_bytes_per_token, ELEMENT_BYTES[plan.kv_precision], head_dim, precision)
    reserve = int(retrieve_tokens) + math.ceil(offload_tokens * host / plan.kv_bytes_per_token)
    live = plan.capacity_tokens - plan.question_tokens - reserve
    if live < plan.prompt_tokens + plan.tokens_per_frame:
        raise InputError(f"a {human(plan.budget_bytes)} budget leaves {live} live tokens beside an offload store of "
                         f"{offload_tokens:,} {precision} tokens; shrink the store, use --offload-precision int8, or "
                         "raise the budget")
    frames_live = (live - plan.prompt_tokens) // plan.tokens_per_frame
    return OffloadSplit(live_tokens=int(live), offload_tokens=int(offload_tokens), reserve_tokens=int(reserve),
                        host_bytes_per_token=host, frames_live=int(frames_live),
                        frames_total=int(frames_live + offload_tokens // plan.tokens_per_frame))


def weights_bytes(adapter) -> int:
    """Every parameter and buffer the model holds (shared tensors once)."""
    seen, total = set(), 0
    for t in list(adapter.model.parameters()) + list(adapter.model.buffers()):
        if t.data_ptr() in seen:
            continue
        seen.add(t.data_ptr())
        total += t.numel() * t.element_size()
    return total


def tensor_bytes(objs) -> int:
    """Bytes of every tensor reachable from `objs` through attributes, lists, tuples and dicts (each tensor once)."""
    import torch

    seen, total, stack = set(), 0, list(objs)
    while stack:
        o = stack.pop()
        if o is None or isinstance(o, (str, int, float, bool)) or id(o) in seen:
            continue
        seen.add(id(o))
        if isinstance(o, torch.Tensor):
            total += o.numel() * o.element_size()
        elif isinstance(o, dict):
            stack.extend(o.values())
        elif isinstance(o, (list, tuple)):
            stack.extend(o)
        elif hasattr(o, "__dict__"):
            stack.extend(vars(o).values())
    return total


def probe(adapter, method, frame=None) -> tuple[int, int, int]:
    """(tokens per frame, prompt tokens, workspace bytes) measured on one frame through a scratch session.

    Tokens per frame are what the stream keeps of a frame (kept visual tokens + trailer + frame text), rounded up
    to the method's worst case when it decides per frame (GlimpsePrune uncapped: every token).

    The workspace is measured once per adapter and method and then reused: on CPU it is the growth of resident
    memory while one frame goes through, and a process that has already streamed keeps the freed pages (glibc
    holds them for reuse), so a second measurement reads ~0 (reference model, uniform 25%: 13.9 MB on the first
    probe, 0 after a 150-frame stream, 1.1 MB after malloc_trim) and a later session would plan a larger stream
    than the first one in the same budget. Plan before streaming in a process for the honest number."""
    import numpy as np

    from vlmedge.bench.memory import PeakMemory
    from vlmedge.runtime import StreamingSession

    session = StreamingSession(adapter, method, max_new_tokens=1)
    prompt = session.stream_tokens
    if frame is None:
        h, w = adapter.frame_size
        frame = np.random.default_rng(0).integers(0, 256, (h, w, 3), dtype=np.uint8)
    device = "cuda" if str(getattr(adapter, "device", "cpu")).startswith("cuda") else "cpu"
    with PeakMemory(device) as before:
        pass
    with PeakMemory(device) as peak:
        session.push_frame(frame, time_s=0.0)
        session.flush()
    per_frame = session.stream_tokens - prompt
    if getattr(session.method, "prunes_in_llm", False) and getattr(session.method, "max_ratio", None) is None:
        st = session.frame_stats[-1]
        per_frame += st.tokens_in - st.tokens_kept  # data-driven count: plan for keeping everything
    measured = _WORKSPACE.setdefault(adapter, {})
    workspace = measured.setdefault(session.method.spec(), max(0, int((peak.peak_mb - before.peak_mb) * MiB)))
    return max(1, per_frame), prompt, workspace


def plan_for(adapter, method, budget_bytes: int, kv_precision: str | None = None,
             workspace_bytes: int | None = None) -> MemoryPlan:
    """The plan for a loaded model and method: weights counted, workspace and tokens per frame measured."""
    layers, kvh, hd = kv_shape(adapter.text_config)
    prec = kv_precision or {4: "fp32", 2: "fp16"}.get(next(adapter.model.parameters()).element_size(), "fp32")
    if prec not in ELEMENT_BYTES:
        raise InputError(f"KV precision must be one of {', '.join(ELEMENT_BYTES)}, got {prec!r}")
    per_token = kv_bytes_per_token(layers, kvh, hd, ELEMENT_BYTES[prec])
    tpf, prompt, measured = probe(adapter, method)
    return plan_memory(budget_bytes, weights_bytes(adapter), measured if workspace_bytes is None else workspace_bytes,
                       per_token, tpf, prompt, kv_precision=prec)


__all__ = ["MemoryPlan", "OffloadSplit", "offload_split", "parse_bytes", "plan_memory", "plan_for", "weights_bytes",
           "probe", "human"]
