"""A streaming assistant on one camera stream (torch backend).

Frames arrive at any rate; the session samples them at `sample_fps`, and each sampled frame is encoded,
compressed and prefilled into the KV cache at once, so earlier frames are never re-encoded and a question
costs only its own tokens plus decoding. `ask()` runs the question on top of the stream and then crops the
cache back, so asking never disturbs what the stream holds.

All per-stream state (KV cache, positions, the method's state, statistics) lives on the session object;
two sessions may share one adapter (read-only weights) and never share anything else.

Window methods (OmniZip) are handled by `windowing.py`, query-conditioned methods (Script, GlimpsePrune) by
`requery.py`; per-frame methods run frame by frame: encode, compress, prefill at once.
"""
from __future__ import annotations

import copy
import time

import torch

from vlmedge.compression import FrameContext, Selection, get_method
from vlmedge.compression.base import runs_own_vision
from vlmedge.errors import InputError
from vlmedge.models.positions import PositionState
from vlmedge.models.preprocess import validate_frame
from vlmedge.runtime.kv_tail import cut_to, restore_tail, take_tail
from vlmedge.runtime.layout import frame_inputs
from vlmedge.runtime.records import Answer, AudioStats, FrameStats, WindowStats
from vlmedge.runtime.retrieval import RETRIEVAL_SCORES
from vlmedge.runtime.requery import RequeryStream, _piece, _Segment
from vlmedge.runtime.token_store import TokenStore
from vlmedge.runtime.windowing import WindowedStream, _Buffered

__all__ = ["StreamingSession", "Answer", "FrameStats", "WindowStats"]


class StreamingSession(WindowedStream, RequeryStream):
    def __init__(self, adapter, method="none", sample_fps: float | None = None, max_new_tokens: int = 16,
                 keep_logits: bool = False, standing_prompt: str | None = None, requery_frames: int = 8,
                 memory_budget: int | str | None = None, max_stream_tokens: int | None = None, sink_frames: int = 1,
                 eviction: str = "evict", offload_tokens: int = 0, retrieve_tokens: int = 0,
                 retrieval: str = "append", focus_positions: str = "compact", offload_precision: str = "full",
                 retrieval_score: str = "middle-layer", retrieval_positions: str = "in-place",
                 retrieval_context: int = 0):
        """`memory_budget` (bytes, "6GiB", or a `MemoryPlan`) plans the stream's KV capacity (runtime/planner.py) and bounds the
        stream with a token store (runtime/token_store.py); `max_stream_tokens` sets that capacity directly.
        Without either the stream grows with every frame. `eviction` ("evict" or "offload"), `offload_tokens` and
        `retrieve_tokens` choose what happens to blocks that leave (runtime/token_store.py). `retrieval` (offload
        policy): "append" adds the best offloaded blocks to the whole cache for a question; "focus" answers from the
        prompt and sink frames, the best blocks among live and offloaded ones within `retrieve_tokens`, and the
        latest frames (runtime/retrieval.py `focus`); `focus_positions` "compact" lays those blocks end to end after
        the sinks (their keys re-rotated) and asks the question right after them, "original" leaves every position
        where it was. `offload_precision` "int8" holds offloaded blocks as int8 (runtime/kv_quant.py; the budget
        counts their real bytes). `retrieval_score`: "middle-layer" (ReKV's mean over the middle layer's heads)
        or "all-heads" (every head of every layer votes, each standardised) or "learned" (the score trained for the
        model, `vlmedge train-retrieval`; runtime/retrieval_scorer.py); `retrieval_positions`: "in-place"
        (blocks scored where their keys are) or "adjacent" (each scored as if right before the question, so
        distance does not decide); `retrieval_context`: each retrieved block brings that many blocks before it
        (`retrieval.choose`); runtime/retrieval.py."""
        if sample_fps is not None and sample_fps <= 0:
            raise InputError(f"sample_fps must be positive (frames per second), got {sample_fps}")
        if not isinstance(requery_frames, int) or requery_frames < 0:
            raise InputError(f"requery_frames must be a count >= 0 (0: questions never re-select), got {requery_frames!r}")
        if standing_prompt is not None and not isinstance(standing_prompt, str):
            raise InputError("standing_prompt must be text (or None for no standing query)")
        self.standing_prompt = standing_prompt.strip() if standing_prompt and standing_prompt.strip() else None
        self.requery_frames = requery_frames
        self.adapter = adapter
        self.method = get_method(method)
        if (not hasattr(adapter, "vision_embed") and runs_own_vision(self.method)
                and not getattr(self.method, "runs_on", lambda a: False)(adapter)):
            raise InputError(f"method {self.method.name!r} runs the vision tower its own way and this backend has no "
                             f"stage for it (exported for {getattr(adapter, 'method_spec', '?')!r}); use the export's "
                             "method or the PyTorch model")
        self.query_conditioned = bool(getattr(self.method, "query_conditioned", False))
        self.prunes_in_llm = bool(getattr(self.method, "prunes_in_llm", False))  # GlimpsePrune: see its method
        self._cuda = str(getattr(adapter, "device", "cpu")).startswith("cuda")
        self._standing_query = (self._query_embedding(self.standing_prompt)
                                if self.query_conditioned and self.standing_prompt else None)
        self.window_s = self.method.window_length(adapter)
        if retrieval_score not in RETRIEVAL_SCORES:
            raise InputError(f"retrieval_score must be one of {', '.join(RETRIEVAL_SCORES)}, got {retrieval_score!r}")
        self.scorer = self._load_scorer(adapter) if retrieval_score == "learned" and eviction == "offload" else None
        self.plan = None
        if memory_budget is not None and max_stream_tokens is not None:
            raise InputError("give memory_budget or max_stream_tokens, not both")
        if memory_budget is not None:
            from vlmedge.runtime.planner import MemoryPlan, parse_bytes, plan_for

            self.plan = (memory_budget if isinstance(memory_budget, MemoryPlan)  # a plan made earlier
                         else plan_for(adapter, self.method, parse_bytes(memory_budget)))
            # a question's extra tokens come out of the budget too: re-selected frames, retrieved blocks
            # and so does the offload store: on a Jetson host and device memory are the same memory
            reserve = self.requery_frames * self.plan.tokens_per_frame if self.query_conditioned else 0
            if eviction == "offload":
                from vlmedge.models.base import kv_shape
                from vlmedge.runtime.planner import offload_split

                reserve += offload_split(self.plan, int(offload_tokens), int(retrieve_tokens), offload_precision,
                                         kv_shape(adapter.text_config)[2]).reserve_tokens
                if self.scorer is not None:  # its weights live beside the model's, inside the same budget
                    reserve += -(-self._scorer_bytes() // self.plan.kv_bytes_per_token)
            max_stream_tokens = self.plan.capacity_tokens - self.plan.question_tokens - reserve
            if max_stream_tokens < self.plan.prompt_tokens + self.plan.tokens_per_frame:
                raise InputError(f"a {memory_budget} budget leaves {max_stream_tokens} stream tokens once the "
                                 "question and re-selection reserve are set aside; raise it or lower requery_frames")
        if max_stream_tokens is None and eviction != "evict":
            raise InputError(f"eviction={eviction!r} needs a bounded stream: give memory_budget or max_stream_tokens")
        if eviction == "offload" and not hasattr(adapter, "language_model"):
            raise InputError("the offload policy scores blocks with the PyTorch model's layers; this backend has "
                             "none (use eviction='evict')")
        if retrieval not in ("append", "focus"):
            raise InputError(f"retrieval must be 'append' or 'focus', got {retrieval!r}")
        if focus_positions not in ("compact", "original"):
            raise InputError(f"focus_positions must be 'compact' or 'original', got {focus_positions!r}")
        self.focus_positions = focus_positions
        self.store = (TokenStore(int(max_stream_tokens), sink_frames, eviction, int(offload_tokens),
                                 int(retrieve_tokens), focus=retrieval == "focus", host_precision=offload_precision)
                      if max_stream_tokens is not None else None)
        if retrieval_positions not in ("in-place", "adjacent"):
            raise InputError(f"retrieval_positions must be 'in-place' or 'adjacent', got {retrieval_positions!r}")
        if not isinstance(retrieval_context, int) or retrieval_context < 0:
            raise InputError(f"retrieval_context must be a block count >= 0, got {retrieval_context!r}")
        self.retrieval_score, self.retrieval_positions = retrieval_score, retrieval_positions
        self.retrieval_context = retrieval_context
        self._reported = (0, 0)  # store counters at the last question
        self._weights_bytes: int | None = None
        if self.query_conditioned and self.window_s is not None:
            raise InputError(f"method {self.method.name!r} is both query-conditioned and windowed; not supported")
        if self.window_s is not None and not self.window_s > 0:
            raise InputError(f"method {self.method.name!r} has a window of {self.window_s} s; it must be positive")
        self.sample_fps = sample_fps
        self.max_new_tokens = max_new_tokens
        self.keep_logits = keep_logits
        self.reset()

    # ----- stream lifecycle -----
    def _now(self) -> float:
        """The clock the per-stage times read. CUDA backends return before their kernels finish, so on CUDA it
        waits for the device first; otherwise a stage's time would land in whichever later stage waits on it."""
        if self._cuda:
            torch.cuda.synchronize()
        return time.perf_counter()

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
        self.window_stats: list[WindowStats] = []
        self.audio_stats: list[AudioStats] = []
        self._pending: list[_Buffered] = []  # window methods: the open window's encoded items, in push order
        self._pending_window: int | None = None
        self._segments: list[_Segment] = []  # query-conditioned methods: appends since the oldest re-selectable frame
        if self.store is not None:
            self.store.reset()
            self._reported = (0, 0)
        self._span = None
        self._append_text(self.adapter.prompt.prefix)
        self._prefix_span, self._span = self._span, None

    @property
    def stream_tokens(self) -> int:
        """KV entries the stream holds (committed; an open window's buffered items are not in the cache yet)."""
        return self.cache.get_seq_length()

    @property
    def pending_frames(self) -> int:
        """Frames buffered in the open window (window methods), not yet compressed or prefilled."""
        return sum(1 for it in self._pending if it.kind == "frame")

    def _append(self, embeds: torch.Tensor, position_ids: torch.Tensor) -> torch.Tensor:
        """Prefills into the cache; on failure the cache is cut back so the stream stays consistent."""
        before = self.cache.get_seq_length()
        if position_ids.numel():  # the span of position ids the next stored block occupies
            lo, hi = int(position_ids.min()), int(position_ids.max()) + 1
            self._span = (lo, hi) if self._span is None else (min(lo, self._span[0]), max(hi, self._span[1]))
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
        leaves the stream exactly as it was. With a window method the frame is encoded and buffered and None is
        returned; its stats join `frame_stats` when its window is compressed (see the module notes).
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
        if self.window_s is not None:
            return self._buffer_frame(frame, time_s)

        t0 = self._now()
        tokens = self.method.encode_frame(self.adapter, frame, self.method_state)
        t1 = self._now()
        ctx = FrameContext(frame_index=len(self.frame_stats), time_s=time_s, query=self._standing_query)
        pos = self.positions.copy()
        ids = self.adapter.positions.frame(pos, tokens.grid_hw, tokens.trailer.shape[0], time_s)
        n = tokens.num_tokens
        close_ids = (self.adapter.tokenize(self.adapter.prompt.frame_close) if self.adapter.prompt.frame_close
                     else torch.zeros(0, dtype=torch.long))
        if self.prunes_in_llm:  # selection happens inside the prefill: compress time is part of prefill time
            t2 = t1
            pieces = [self._frame_piece(tokens, ids)]
            if self.standing_prompt:
                sp = self.adapter.tokenize(self.standing_prompt)
                pieces.append(_piece(self.adapter.embed_text(sp), self.adapter.positions.text(pos.copy(), sp.numel()),
                                     keep=False))
            # room for the whole frame, the standing prompt and the glimpse while they are in the prefill
            self._make_room(sum(p.embeds.shape[0] for p in pieces) + 1 + close_ids.numel())
            start = self.cache.get_seq_length()
            _, keeps = self._prefill_pieces(pieces)
            sel = Selection(keep=keeps[0].cpu())
        else:
            sel = self.method.compress(tokens, ctx, self.method_state)
            t2 = self._now()
            embeds, fids = frame_inputs(tokens, sel, ids)
            self._make_room(embeds.shape[0] + close_ids.numel())
            start = self.cache.get_seq_length()
            self._append(embeds, fids)
        self.positions = pos
        close = None
        if close_ids.numel():
            close = (self.adapter.embed_text(close_ids), self.adapter.positions.text(self.positions, close_ids.numel()))
            self._append(*close)
        self._stored(start, "frame", time_s)
        self._record(_Segment(start, ids=ids, tokens=tokens, ctx=ctx, keep=sel.keep, close=close))
        t3 = self._now()
        stats = FrameStats(len(self.frame_stats), time_s, n, int(sel.keep.numel()),
                           (t1 - t0) * 1e3, (t2 - t1) * 1e3, (t3 - t2) * 1e3)
        self.frame_stats.append(stats)
        return stats

    def push_audio(self, wave, time_s: float) -> int:
        """Adds an audio chunk starting at `time_s` (omni models); returns the number of audio tokens (before any
        pruning; with a window method the chunk is buffered until its window is compressed)."""
        t0 = self._now()
        audio = self.adapter.encode_audio(wave)
        t1 = self._now()
        n = int(audio.features.shape[0])
        if self.window_s is not None:
            self._close_before(self._window_of(float(time_s)))
            self._buffer(_Buffered("audio", float(time_s), audio), self._window_of(float(time_s)))
            self.audio_stats.append(AudioStats(float(time_s), n, (t1 - t0) * 1e3, 0.0))
            return n
        pos = self.positions.copy()
        ids = self.adapter.positions.audio(pos, audio.features.shape[0], float(time_s), audio.seconds_per_token)
        self._make_room(int(audio.features.shape[0]))
        start = self.cache.get_seq_length()
        self._append(audio.features, ids)
        self._stored(start, "audio", float(time_s))
        self.positions = pos
        self._record(_Segment(start, embeds=audio.features, ids=ids))
        self.audio_stats.append(AudioStats(float(time_s), n, (t1 - t0) * 1e3, (self._now() - t1) * 1e3))
        return n

    # ----- the token store -----
    def _make_room(self, incoming: int) -> None:
        """Evicts old blocks so `incoming` entries fit (no store: nothing); re-selection buffers that reached back
        past an evicted block are cut to what follows it, and their cache positions move with the cache."""
        if self.store is None:
            return
        for b in self.store.make_room(self.cache, incoming):
            end = b.start + b.length
            self._segments = [g for g in self._segments if g.start >= end]
            for g in self._segments:
                g.start -= b.length

    @staticmethod
    def _load_scorer(adapter):
        """The model's trained retrieval score (`retrieval_score="learned"`, runtime/retrieval_scorer.py)."""
        from vlmedge.runtime.retrieval_scorer import RetrievalScorer

        model_dir = getattr(adapter, "model_dir", None)
        if not model_dir:
            raise InputError("retrieval_score='learned' reads the score trained for the model from <model>/retrieval/; "
                             "this model has no folder (train one with `vlmedge train-retrieval --out DIR` and load "
                             "the model from DIR)")
        return RetrievalScorer.load(model_dir, adapter)

    def _scorer_bytes(self) -> int:
        from vlmedge.runtime.planner import tensor_bytes

        return tensor_bytes(list(self.scorer.state_dict().values())) if self.scorer is not None else 0

    def _stored(self, start: int, kind: str, time_s: float) -> None:
        if self.store is not None:
            self.store.add(start, self.cache.get_seq_length() - start, kind, time_s, span=self._span)
        self._span = None

    def _retrieve(self, question: str, pos, may_focus: bool = True, time_range=None):
        """Offload policy: the offloaded blocks that best match `question` join the cache for this question only
        (the caller crops them away with it); with `retrieval="focus"` the question's cache is narrowed instead and
        the returned function restores it. Returns (blocks retrieved from the host, their tokens, restore or None).
        GlimpsePrune's fused prefill does not retrieve. `time_range` (focus only): the blocks of that span of stream
        time instead of the best-scoring ones and the latest frames (`ask`)."""
        store = self.store
        if store is None or store.policy != "offload" or not (store.host or store.focus):
            return 0, 0, None
        from vlmedge.runtime.kv_tail import append_kv
        from vlmedge.runtime.retrieval import choose, focus, score_blocks

        ids = self.adapter.tokenize(self.adapter.prompt.question_template.format(question=question))
        embeds, qpos = self.adapter.embed_text(ids), self.adapter.positions.text(pos.copy(), ids.numel())
        live = store.blocks[store.sink_blocks:]
        if store.focus and may_focus and live:
            local = live[max(0, len(live) - store.local_blocks):]
            older = live[:len(live) - len(local)]
            if time_range is not None:
                picked, local = self._in_range(store.host + live, time_range, store.retrieve_tokens), []
                if not picked:
                    held = store.host + live
                    raise InputError(f"no frame the stream still holds lies in {time_range[0]:g}-{time_range[1]:g} s "
                                     f"(held: {held[0].time_s:g}-{held[-1].time_s:g} s); ask about a span inside "
                                     "that, or keep more history (offload_tokens, offload_precision='int8')")
            else:
                host_scores, live_scores = score_blocks(self.adapter, self.cache, store.host, embeds, qpos,
                                                        live=older, heads=RETRIEVAL_SCORES[self.retrieval_score],
                                                        adjacent=self.retrieval_positions == "adjacent",
                                                        scorer=self.scorer)
                picked = choose(store.host + older, torch.cat([host_scores, live_scores]), store.retrieve_tokens,
                                before=self.retrieval_context)
            host_ids = {id(b) for b in store.host}
            chosen = sorted(picked + local, key=lambda b: b.time_s)
            shifts = self._compact_shifts(chosen, pos) if self.focus_positions == "compact" else None
            restore = focus(self.cache, live[0].start,
                            [b.kv if id(b) in host_ids else (b.start, b.length) for b in chosen],
                            shifts=shifts, adapter=self.adapter)
            from_host = [b for b in picked if id(b) in host_ids]
            store.retrieved_blocks += len(from_host)
            return len(from_host), sum(b.length for b in from_host), restore
        if not store.host:
            return 0, 0, None
        scores = score_blocks(self.adapter, self.cache, store.host, embeds, qpos,
                              heads=RETRIEVAL_SCORES[self.retrieval_score],
                              adjacent=self.retrieval_positions == "adjacent", scorer=self.scorer)
        chosen = choose(store.host, scores, store.retrieve_tokens, before=self.retrieval_context)
        for b in chosen:
            append_kv(self.cache, b.kv)
        store.retrieved_blocks += len(chosen)
        return len(chosen), sum(b.length for b in chosen), None

    @staticmethod
    def _in_range(blocks, time_range, allowance: int) -> list:
        """The blocks whose time lies in `time_range` (inclusive), the latest ones first when they do not all fit
        `allowance` (`retrieval.choose` with time as the score), returned in time order."""
        from vlmedge.runtime.retrieval import choose

        t0, t1 = time_range
        inside = [b for b in blocks if t0 - 1e-6 <= b.time_s <= t1 + 1e-6]
        return choose(inside, torch.tensor([b.time_s for b in inside], dtype=torch.float64), allowance)

    def _compact_shifts(self, chosen, pos) -> list[int] | None:
        """Position shifts that lay the focused blocks end to end right after the sinks, and the question after
        them (`pos` is moved), as InfLLM and ReKV place retrieved blocks inside the local window. A question then
        sees its evidence at the distances of a short clip (what the model was trained on) instead of thousands
        of positions back. None (nothing moves) when a block's span is unknown."""
        sinks = self.store.blocks[:self.store.sink_blocks]
        if any(b.span is None for b in chosen) or any(b.span is None for b in sinks) or self._prefix_span is None:
            return None
        cursor = max([self._prefix_span[1]] + [b.span[1] for b in sinks])
        shifts = []
        for b in chosen:
            shifts.append(cursor - b.span[0])
            cursor += b.span[1] - b.span[0]
        pos.next = cursor
        return shifts

    def memory(self) -> dict:
        """Bytes this stream accounts for: the model's weights (shared between sessions on one adapter), the
        planner's measured workspace, the KV cache, and the buffers the stream keeps (re-selection frames, an open
        window, the method's state), with the plan's budget when there is one."""
        from vlmedge.bench.memory import kv_bytes
        from vlmedge.runtime.planner import tensor_bytes, weights_bytes

        buffers = tensor_bytes([g.tokens for g in self._segments] + [it.tokens for it in self._pending]
                               + [self.method_state])
        if self.store is not None:
            buffers += tensor_bytes([b.kv for b in self.store.host])  # the offload store (host memory)
        if self._weights_bytes is None:  # counted once: memory() runs per frame in a soak
            self._weights_bytes = weights_bytes(self.adapter) + self._scorer_bytes()
        out = {"weights": self._weights_bytes, "workspace": self.plan.workspace_bytes if self.plan else 0,
               "kv": kv_bytes(self.cache), "buffers": buffers}
        out["total"] = sum(out.values())
        if self.plan is not None:
            out["budget"] = self.plan.budget_bytes
        if self.store is not None:
            out["kv_capacity_tokens"] = self.store.capacity_tokens
        return out

    # ----- questions -----
    @torch.no_grad()
    def ask(self, question: str, max_new_tokens: int | None = None, stop: tuple[str, ...] | None = None,
            time_range: tuple[float, float] | None = None) -> Answer:
        """Greedy answer to `question` about everything the stream holds; the stream is left unchanged.
        `time_range=(t0, t1)` (seconds of stream time; a session with `retrieval="focus"`): answer from the frames
        of that span only, live or offloaded, up to `retrieve_tokens` of them (the latest first), e.g. "what
        happened at 10:32?" once 10:32 has left the cache."""
        if not isinstance(question, str) or not question.strip():
            raise InputError("a question must be a non-empty string")
        if time_range is not None:
            if self.store is None or not self.store.focus or self.store.policy != "offload":
                raise InputError("time_range needs a bounded stream with eviction='offload' and retrieval='focus'")
            try:
                t0, t1 = (float(t) for t in time_range)
            except (TypeError, ValueError):
                raise InputError(f"time_range must be (start_s, end_s), got {time_range!r}") from None
            if not t0 <= t1:
                raise InputError(f"time_range must start before it ends, got {time_range!r}")
            if self.prunes_in_llm or self.query_conditioned:
                raise InputError(f"time_range is not supported with method {self.method.name!r}, which re-selects "
                                 "tokens per question; use a method without a query")
            if len(self.store.blocks) <= self.store.sink_blocks:
                raise InputError("time_range: the stream holds no frames beyond its sink frames yet")
            time_range = (t0, t1)
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
        frames = len(self.frame_stats) + self.pending_frames
        conditioned = snapshot
        restore, requeried, retrieved = None, 0, (0, 0)
        tw = tr = self._now()
        try:
            if self._pending:  # provisional flush: a copy of the method's state, cropped away with the question
                provisional = self._compress_pending(copy.deepcopy(self.method_state))
                embeds, ids, _, _ = self._window_inputs(provisional, pos)
                if embeds is not None:
                    self._append(embeds, ids)
                conditioned = self.cache.get_seq_length()
            tr = self._now()
            logits = None
            if self.prunes_in_llm and self._segments:
                # frames, question and glimpse in one pruned prefill (the paper's inference over those frames)
                start = self._segments[0].start
                restore = (start, take_tail(self.cache, start))
                cut_to(self.cache, start)
                q_ids = self.adapter.tokenize(self.adapter.prompt.question_template.format(question=question.strip()))
                pieces = self._segment_pieces() + [
                    _piece(self.adapter.embed_text(q_ids), self.adapter.positions.text(pos, q_ids.numel()))]
                logits, _ = self._prefill_pieces(pieces)
                requeried = sum(g.tokens is not None for g in self._segments)
                conditioned = self.cache.get_seq_length() - q_ids.numel()  # without the question's own tokens
            redo = (self._requery_inputs(question.strip())
                    if self.query_conditioned and not self.prunes_in_llm and self._segments else None)
            if redo is not None:
                start, embeds, ids, requeried = redo
                restore = (start, take_tail(self.cache, start))
                cut_to(self.cache, start)
                self._append(embeds, ids)
                conditioned = self.cache.get_seq_length()
            got = (self._retrieve(question.strip(), pos, may_focus=restore is None, time_range=time_range)
                   if logits is None else (0, 0, None))
            retrieved = got[:2]
            if got[2] is not None:  # a focused question: the cache is narrowed until the answer is done
                restore = got[2]
                conditioned = self.cache.get_seq_length()
            t0 = self._now()
            if logits is None:
                conditioned += 0 if got[2] is not None else retrieved[1]
                logits = self._append_text(self.adapter.prompt.question_template.format(question=question.strip()), pos)
            else:
                t0 = tr  # the fused prefill above is the question's prefill
            t1 = self._now()
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
            t2 = self._now()
        finally:
            self._span = None  # the question's appends belong to no block
            if callable(restore):  # the question's tokens went into the narrowed tensors, which are dropped
                restore()
            elif restore is not None:
                restore_tail(self.cache, *restore)
            extra = self.cache.get_seq_length() - snapshot
            if extra > 0:
                self.cache.crop(-extra)
        text = tok.decode(generated, skip_special_tokens=False)
        for s in stops:
            if s and s in text:
                text = text[: text.index(s)]
        evicted = (0, 0)
        if self.store is not None:
            now = (self.store.evicted_blocks, self.store.evicted_tokens)
            evicted, self._reported = (now[0] - self._reported[0], now[1] - self._reported[1]), now
        return Answer(question=question, text=text.strip(), token_ids=generated, stream_tokens=conditioned,
                      evicted_blocks=evicted[0], evicted_tokens=evicted[1], retrieved_blocks=retrieved[0],
                      retrieved_tokens=retrieved[1],
                      frames=frames, prefill_ms=(t1 - t0) * 1e3, decode_ms=(t2 - t1) * 1e3,
                      stopped_by=stopped_by, logits=kept_logits, window_ms=(tr - tw) * 1e3,
                      requery_ms=(t0 - tr) * 1e3, requeried_frames=requeried)
