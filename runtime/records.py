"""What a stream reports: per-frame and per-window statistics, and answers."""
from __future__ import annotations

from dataclasses import asdict, dataclass, field

import torch


@dataclass
class FrameStats:
    index: int
    time_s: float
    tokens_in: int
    tokens_kept: int
    encode_ms: float
    compress_ms: float
    prefill_ms: float
    window: int | None = None  # window methods: the window the frame was compressed in (its compress_ms and
    # prefill_ms are the window's totals divided evenly over the window's frames)


@dataclass
class AudioStats:
    """One pushed audio chunk: its encoder time, and (frame methods) the time to prefill its tokens; a window
    method prefills audio with its window, so there `prefill_ms` is 0 and the window's stats hold it."""

    time_s: float
    tokens: int
    encode_ms: float
    prefill_ms: float


@dataclass
class WindowStats:
    """One committed window of a window method: token counts, time, and the method's own facts (`info`)."""

    index: int  # the window's index on the time axis (floor(time / window_s))
    start_s: float
    end_s: float
    frames: int
    video_in: int
    video_kept: int
    audio_in: int
    audio_kept: int
    compress_ms: float
    prefill_ms: float
    complete: bool  # False when `flush()` closed it before an item of a later window arrived
    info: dict = field(default_factory=dict)


@dataclass
class Answer:
    question: str
    text: str
    token_ids: list[int]
    stream_tokens: int  # KV entries the answer was conditioned on (prefix + frames + audio, with a window method's
    # provisional open window, before the question)
    frames: int
    prefill_ms: float  # the question's own prefill (time to first token)
    decode_ms: float
    stopped_by: str  # "stop", "eos" or "max_tokens"
    logits: list[torch.Tensor] = field(default_factory=list, repr=False)  # per generated token, when kept
    window_ms: float = 0.0  # window methods: compressing + prefilling the open window provisionally, before the
    # question's own prefill (time to first token = window_ms + prefill_ms)
    requery_ms: float = 0.0  # query-conditioned methods: re-selecting recent frames for this question and
    # prefilling them (part of the time to first token, like window_ms)
    requeried_frames: int = 0  # frames re-prefilled with a selection made for this question
    evicted_blocks: int = 0  # token store: blocks (frames, windows, audio) evicted since the previous question
    evicted_tokens: int = 0
    retrieved_blocks: int = 0  # offload policy: offloaded blocks brought back for this question
    retrieved_tokens: int = 0

    def to_dict(self) -> dict:
        d = asdict(self)
        d.pop("logits")
        return d
