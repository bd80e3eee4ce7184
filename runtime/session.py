"""A streaming assistant on one camera stream (torch backend).

Frames arrive at any rate; the session samples them at `sample_fps`, and each sampled frame is encoded,
compressed and prefilled into the KV cache at once, so earlier frames are never re-encoded and a question
costs only its own tokens plus decoding. `ask()` runs the question on top of the stream and then crops the
cache back, so asking never disturbs what the stream holds.

All per-stream state (KV cache, positions, the method's state, statistics) lives on the session object;
two sessions may share one adapter (read-only weights) and never share anything else.
"""
from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field

import torch

from vlmedge.compression import FrameContext, get_method
from vlmedge.errors import InputError
from vlmedge.models.positions import PositionState
from vlmedge.models.preprocess import validate_frame


@dataclass
class FrameStats:
    index: int
    time_s: float
    tokens_in: int
    tokens_kept: int
    encode_ms: float
    compress_ms: float
    prefill_ms: float


@dataclass
class Answer:
    question: str
    text: str
    token_ids: list[int]
    stream_tokens: int  # KV entries the answer was conditioned on (prefix + frames, before the question)
    frames: int
    prefill_ms: float  # the question's own prefill (time to first token)
    decode_ms: float
    stopped_by: str  # "stop", "eos" or "max_tokens"
    logits: list[torch.Tensor] = field(default_factory=list, repr=False)  # per generated token, when kept

    def to_dict(self) -> dict:
        d = asdict(self)
        d.pop("logits")
        return d


class StreamingSession:
    def __init__(self, adapter, method="none", sample_fps: float | None = None, max_new_tokens: int = 16,
                 keep_logits: bool = False):
        if sample_fps is not None and sample_fps <= 0:
            raise InputError(f"sample_fps must be positive (frames per second), got {sample_fps}")
        self.adapter = adapter
        self.method = get_method(method)
        self.sample_fps = sample_fps
        self.max_new_tokens = max_new_tokens
        self.keep_logits = keep_logits
        self.reset()

    # ----- stream lifecycle -----
    def reset(self) -> None:
        """Starts a new stream: empty cache, fresh positions and method state, prefix prefilled."""
        self.cache = self.adapter.new_cache()
        self.positions = PositionState()
        self.method_state = self.method.new_state()
        self.frame_stats: list[FrameStats] = []
        self.frames_seen = 0
        self.frames_skipped = 0
        self.frames_rejected = 0
        self._next_sample_time: float | None = None
        self._last_time: float | None = None
        self._append_text(self.adapter.prompt.prefix)

    @property
    def stream_tokens(self) -> int:
        return self.cache.get_seq_length()

    def _append(self, embeds: torch.Tensor, position_ids: torch.Tensor) -> torch.Tensor:
        """Prefills into the cache; on failure the cache is cut back so the stream stays consistent."""
        before = self.cache.get_seq_length()
        try:
            return self.adapter.forward_llm(embeds, position_ids, self.cache)
        except Exception:
            extra = self.cache.get_seq_length() - before
            if extra > 0:
                self.cache.crop(-extra)
            raise

    def _append_text(self, text: str, positions: PositionState | None = None) -> torch.Tensor | None:
        ids = self.adapter.tokenize(text)
        if ids.numel() == 0:
            return None
        pos = positions if positions is not None else self.positions
        return self._append(self.adapter.embed_text(ids), self.adapter.positions.text(pos, ids.numel()))

    # ----- frames -----
    def push_frame(self, frame, time_s: float | None = None) -> FrameStats | None:
        """Adds one frame at `time_s` seconds (default: the next slot at `sample_fps`, or 1 fps).

        Returns its stats, or None when the sampler skipped it. A rejected frame raises `InputError` and
        leaves the stream exactly as it was.
        """
        try:
            validate_frame(frame)
            if time_s is None:
                time_s = self.frames_seen / (self.sample_fps or 1.0)
            time_s = float(time_s)
            if self._last_time is not None and time_s < self._last_time:
                raise InputError(f"frame time {time_s:.3f}s is earlier than the previous frame's "
                                 f"{self._last_time:.3f}s; timestamps must not go backwards (reset() starts a new stream)")
        except InputError:
            self.frames_rejected += 1
            raise
        self.frames_seen += 1
        self._last_time = time_s
        if self.sample_fps is not None and self._next_sample_time is not None and time_s + 1e-9 < self._next_sample_time:
            self.frames_skipped += 1
            return None
        if self.sample_fps is not None:
            step = 1.0 / self.sample_fps
            base = self._next_sample_time if self._next_sample_time is not None else time_s
            while base <= time_s + 1e-9:
                base += step
            self._next_sample_time = base

        t0 = time.perf_counter()
        tokens = self.method.encode_frame(self.adapter, frame, self.method_state)
        t1 = time.perf_counter()
        ctx = FrameContext(frame_index=len(self.frame_stats), time_s=time_s)
        sel = self.method.compress(tokens, ctx, self.method_state)
        t2 = time.perf_counter()
        pos = self.positions.copy()
        ids = self.adapter.positions.frame(pos, tokens.grid_hw, tokens.trailer.shape[0], time_s)
        n = tokens.num_tokens
        feats = sel.features if sel.features is not None else tokens.features[sel.keep]
        # Kept tokens keep the ids they had before pruning: columns are selected, never renumbered.
        embeds = torch.cat([feats, tokens.trailer.to(feats.dtype)])
        position_ids = torch.cat([ids[:, sel.keep], ids[:, n:]], dim=1)
        self._append(embeds, position_ids)
        self.positions = pos
        if self.adapter.prompt.frame_close:
            self._append_text(self.adapter.prompt.frame_close)
        t3 = time.perf_counter()
        stats = FrameStats(len(self.frame_stats), time_s, n, int(sel.keep.numel()),
                           (t1 - t0) * 1e3, (t2 - t1) * 1e3, (t3 - t2) * 1e3)
        self.frame_stats.append(stats)
        return stats

    def push_audio(self, wave, time_s: float) -> int:
        """Adds an audio chunk starting at `time_s` (omni models); returns the number of audio tokens."""
        audio = self.adapter.encode_audio(wave)
        pos = self.positions.copy()
        ids = self.adapter.positions.audio(pos, audio.features.shape[0], float(time_s), audio.seconds_per_token)
        self._append(audio.features, ids)
        self.positions = pos
        return int(audio.features.shape[0])

    # ----- questions -----
    @torch.no_grad()
    def ask(self, question: str, max_new_tokens: int | None = None, stop: tuple[str, ...] | None = None) -> Answer:
        """Greedy answer to `question` about everything the stream holds; the stream is left unchanged."""
        if not isinstance(question, str) or not question.strip():
            raise InputError("a question must be a non-empty string")
        max_new = self.max_new_tokens if max_new_tokens is None else max_new_tokens
        if max_new < 1:
            raise InputError(f"max_new_tokens must be at least 1, got {max_new}")
        stops = tuple(stop) if stop is not None else self.adapter.prompt.stop
        tok = self.adapter.tokenizer
        eos = {i for i in (tok.eos_token_id, tok.convert_tokens_to_ids("<|endoftext|>")) if isinstance(i, int) and i >= 0}
        snapshot = self.cache.get_seq_length()
        pos = self.positions.copy()
        generated: list[int] = []
        kept_logits: list[torch.Tensor] = []
        stopped_by = "max_tokens"
        try:
            t0 = time.perf_counter()
            logits = self._append_text(self.adapter.prompt.question_template.format(question=question.strip()), pos)
            t1 = time.perf_counter()
            for _ in range(max_new):
                last = logits[-1]
                if self.keep_logits:
                    kept_logits.append(last.clone())
                nxt = int(last.argmax())
                if nxt in eos:
                    stopped_by = "eos"
                    break
                generated.append(nxt)
                text = tok.decode(generated, skip_special_tokens=False)
                if any(s and s in text for s in stops):
                    stopped_by = "stop"
                    break
                emb = self.adapter.embed_text(torch.tensor([nxt]))
                logits = self._append(emb, self.adapter.positions.text(pos, 1))
            t2 = time.perf_counter()
        finally:
            extra = self.cache.get_seq_length() - snapshot
            if extra > 0:
                self.cache.crop(-extra)
        text = tok.decode(generated, skip_special_tokens=False)
        for s in stops:
            if s and s in text:
                text = text[: text.index(s)]
        return Answer(question=question, text=text.strip(), token_ids=generated, stream_tokens=snapshot,
                      frames=len(self.frame_stats), prefill_ms=(t1 - t0) * 1e3, decode_ms=(t2 - t1) * 1e3,
                      stopped_by=stopped_by, logits=kept_logits)
