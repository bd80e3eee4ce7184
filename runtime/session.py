"""A streaming assistant on one camera stream (torch backend).

Frames arrive at any rate; the session samples them at `sample_fps`, and each sampled frame is encoded,
compressed and prefilled into the KV cache at once, so earlier frames are never re-encoded and a question
costs only its own tokens plus decoding. `ask()` runs the question on top of the stream and then crops the
cache back, so asking never disturbs what the stream holds.

All per-stream state (KV cache, positions, the method's state, statistics) lives on the session object;
two sessions may share one adapter (read-only weights) and never share anything else.

Window methods (OmniZip; `method.window_length(adapter)` is not None) need a whole window — `W` seconds of video
AND its audio — before they can decide anything, so for them the session holds a window:

- window `j` is `[j·W, (j+1)·W)` on the stream's time axis (a frame by its time, an audio chunk by its start);
- `push_frame` / `push_audio` encode at once (vision / audio tower) and BUFFER; `push_frame` returns None
  (the frame's `FrameStats` are appended to `frame_stats` when its window is compressed);
- the open window is compressed (`method.compress_window`) and prefilled when an item of a later window arrives
  (before that item is buffered), or on `flush()`; its frames and audio chunks go into the cache in push order
  (which is time order: frames and one-second audio chunks interleaved as the prompt layout has them) with
  their original M-RoPE ids, so kept tokens keep their ids and gaps remain where tokens were dropped;
- an item that arrives after its own window was closed (late audio) joins the open window;
- `ask()` with an open window compresses a PROVISIONAL copy of it (on a copy of the method's state), prefills
  it for the question only and crops it away with the question, so an answer sees everything pushed so far and
  asking never changes what the stream keeps. The trade: the question pays the provisional window's compression
  and prefill (at most one window of tokens; `Answer.window_ms`) and sees it compressed from the part of the
  window that has arrived (a partial window has less audio to guide its video ratios); the committed window,
  compressed once it completes, is the same whether or not questions were asked meanwhile.
- `flush()` commits the open window as it is (e.g. at the end of a stream); items pushed later for the same
  time window form a second, partial window.
Per-frame methods (the default) run frame by frame exactly as before: encode, compress, prefill at once.

Query-conditioned methods (Script; `method.query_conditioned`) select tokens for a question, but frames arrive
before anyone asks. They are committed with the session's `standing_prompt` as the query (None: no query, the
method falls back to pure diversity), and the session keeps the last `requery_frames` frames' projected tokens
(plus anything appended after the oldest of them) in a bounded buffer. `ask()` re-selects those frames for the
question; from the first frame whose selection changed on, it sets the cache's tail aside, prefills the
re-selected frames (later unchanged ones too: causal attention makes their KV depend on what precedes them)
and the question, decodes, then drops that and puts the saved tail back — the stream keeps the standing
selection and asking never changes it. The cost, reported in `Answer.requery_ms`, is one selection per
buffered frame plus one prefill of at most `requery_frames` frames' kept tokens; older frames keep the
standing-prompt selection.
"""
from __future__ import annotations

import copy
import math
import time
from dataclasses import asdict, dataclass, field, replace
from typing import Any

import torch

from vlmedge.compression import FrameContext, Selection, get_method
from vlmedge.errors import InputError
from vlmedge.models.positions import PositionState
from vlmedge.models.preprocess import validate_frame
from vlmedge.runtime.kv_tail import cut_layers_to, cut_to, restore_tail, take_tail


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
class _Buffered:
    kind: str  # "frame" or "audio"
    time_s: float
    tokens: Any  # FrameTokens or AudioTokens
    ctx: FrameContext | None = None
    stats: FrameStats | None = None


@dataclass
class _Segment:
    """One append to the cache that a question may redo (query-conditioned methods): a frame with its tokens and
    position ids, re-selectable, or any other append (audio, text) replayed as it was."""

    start: int  # cache length before the append
    embeds: torch.Tensor | None = None  # non-frame appends
    ids: torch.Tensor | None = None  # position ids: the frame's full ids (all tokens + trailer) or the append's
    tokens: Any = None  # FrameTokens for a frame
    ctx: FrameContext | None = None
    keep: torch.Tensor | None = None  # the committed selection
    close: tuple[torch.Tensor, torch.Tensor] | None = None  # frame_close text appended after the frame


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

    def to_dict(self) -> dict:
        d = asdict(self)
        d.pop("logits")
        return d


class StreamingSession:
    def __init__(self, adapter, method="none", sample_fps: float | None = None, max_new_tokens: int = 16,
                 keep_logits: bool = False, standing_prompt: str | None = None, requery_frames: int = 8):
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
        self.query_conditioned = bool(getattr(self.method, "query_conditioned", False))
        self.prunes_in_llm = bool(getattr(self.method, "prunes_in_llm", False))  # GlimpsePrune: see its method
        self._standing_query = (self._query_embedding(self.standing_prompt)
                                if self.query_conditioned and self.standing_prompt else None)
        self.window_s = self.method.window_length(adapter)
        if self.query_conditioned and self.window_s is not None:
            raise InputError(f"method {self.method.name!r} is both query-conditioned and windowed; not supported")
        if self.window_s is not None and not self.window_s > 0:
            raise InputError(f"method {self.method.name!r} has a window of {self.window_s} s; it must be positive")
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
        self.window_stats: list[WindowStats] = []
        self._pending: list[_Buffered] = []  # window methods: the open window's encoded items, in push order
        self._pending_window: int | None = None
        self._segments: list[_Segment] = []  # query-conditioned methods: appends since the oldest re-selectable frame
        self._append_text(self.adapter.prompt.prefix)

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

    def _query_embedding(self, text: str) -> torch.Tensor | None:
        """The mean LLM input embedding of the text's own tokens (no template), what `FrameContext.query` holds."""
        ids = self.adapter.tokenize(text)
        if ids.numel() == 0:
            return None
        return self.adapter.embed_text(ids).float().mean(0)

    def _record(self, seg: _Segment) -> None:
        """Keeps the appends a question may redo: those since the oldest of the last `requery_frames` frames."""
        if not self.query_conditioned or self.requery_frames == 0:
            return
        if seg.tokens is None and not self._segments:
            return  # nothing before the first buffered frame is ever redone
        self._segments.append(seg)
        frames = [i for i, g in enumerate(self._segments) if g.tokens is not None]
        if len(frames) > self.requery_frames:
            del self._segments[:frames[len(frames) - self.requery_frames]]

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

        t0 = time.perf_counter()
        tokens = self.method.encode_frame(self.adapter, frame, self.method_state)
        t1 = time.perf_counter()
        ctx = FrameContext(frame_index=len(self.frame_stats), time_s=time_s, query=self._standing_query)
        pos = self.positions.copy()
        ids = self.adapter.positions.frame(pos, tokens.grid_hw, tokens.trailer.shape[0], time_s)
        n = tokens.num_tokens
        start = self.cache.get_seq_length()
        if self.prunes_in_llm:  # selection happens inside the prefill: compress time is part of prefill time
            t2 = t1
            pieces = [self._frame_piece(tokens, ids)]
            if self.standing_prompt:
                sp = self.adapter.tokenize(self.standing_prompt)
                pieces.append(_piece(self.adapter.embed_text(sp), self.adapter.positions.text(pos.copy(), sp.numel()),
                                     keep=False))
            _, keeps = self._prefill_pieces(pieces)
            sel = Selection(keep=keeps[0].cpu())
        else:
            sel = self.method.compress(tokens, ctx, self.method_state)
            t2 = time.perf_counter()
            self._append(*_frame_inputs(tokens, sel, ids))
        self.positions = pos
        close = None
        if self.adapter.prompt.frame_close:
            cids = self.adapter.tokenize(self.adapter.prompt.frame_close)
            if cids.numel():
                close = (self.adapter.embed_text(cids), self.adapter.positions.text(self.positions, cids.numel()))
                self._append(*close)
        self._record(_Segment(start, ids=ids, tokens=tokens, ctx=ctx, keep=sel.keep, close=close))
        t3 = time.perf_counter()
        stats = FrameStats(len(self.frame_stats), time_s, n, int(sel.keep.numel()),
                           (t1 - t0) * 1e3, (t2 - t1) * 1e3, (t3 - t2) * 1e3)
        self.frame_stats.append(stats)
        return stats

    def push_audio(self, wave, time_s: float) -> int:
        """Adds an audio chunk starting at `time_s` (omni models); returns the number of audio tokens (before any
        pruning; with a window method the chunk is buffered until its window is compressed)."""
        audio = self.adapter.encode_audio(wave)
        if self.window_s is not None:
            self._close_before(self._window_of(float(time_s)))
            self._buffer(_Buffered("audio", float(time_s), audio), self._window_of(float(time_s)))
            return int(audio.features.shape[0])
        pos = self.positions.copy()
        ids = self.adapter.positions.audio(pos, audio.features.shape[0], float(time_s), audio.seconds_per_token)
        start = self.cache.get_seq_length()
        self._append(audio.features, ids)
        self.positions = pos
        self._record(_Segment(start, embeds=audio.features, ids=ids))
        return int(audio.features.shape[0])

    # ----- windows (window methods) -----
    def _window_of(self, time_s: float) -> int:
        return int(math.floor(time_s / self.window_s + 1e-9))

    def _close_before(self, window: int) -> None:
        """Commits the open window when an item of a later window arrives."""
        if self._pending and window > self._pending_window:
            self._commit(complete=True)

    def _buffer(self, item: _Buffered, window: int) -> None:
        if not self._pending:
            self._pending_window = window  # a late item (window already closed) joins the open window instead
        self._pending.append(item)

    def _buffer_frame(self, frame, time_s: float) -> None:
        t0 = time.perf_counter()
        tokens = self.method.encode_frame(self.adapter, frame, self.method_state)
        encode_ms = (time.perf_counter() - t0) * 1e3
        window = self._window_of(time_s)
        self._close_before(window)
        index = len(self.frame_stats) + self.pending_frames
        stats = FrameStats(index, time_s, tokens.num_tokens, 0, encode_ms, 0.0, 0.0)
        self._buffer(_Buffered("frame", time_s, tokens, FrameContext(frame_index=index, time_s=time_s), stats),
                     window)
        return None

    def flush(self) -> WindowStats | None:
        """Compresses and prefills the open window now, complete or not (window methods); None if none is open."""
        if not self._pending:
            return None
        return self._commit(complete=False)

    def _compress_pending(self, state):
        frames = [it for it in self._pending if it.kind == "frame"]
        audio = [it.tokens for it in self._pending if it.kind == "audio"]
        sel = self.method.compress_window([it.tokens for it in frames], [it.ctx for it in frames], audio or None,
                                          state)
        if len(sel.frames) != len(frames):
            raise AssertionError(f"{self.method.name}.compress_window returned {len(sel.frames)} frame selections "
                                 f"for {len(frames)} frames")
        return sel

    def _window_inputs(self, sel, pos) -> tuple[torch.Tensor | None, torch.Tensor | None, list[int], int]:
        """The open window's kept tokens in push order with their original ids (advances `pos`); returns the
        embeddings, ids, kept tokens per frame, and kept audio tokens."""
        embeds, ids, kept = [], [], []
        frame_i, audio_off, audio_kept = 0, 0, 0
        akeep, afeat = sel.audio.keep, sel.audio.features
        close = self.adapter.tokenize(self.adapter.prompt.frame_close) if self.adapter.prompt.frame_close else None
        for it in self._pending:
            if it.kind == "frame":
                tok, fs = it.tokens, sel.frames[frame_i]
                frame_i += 1
                fid = self.adapter.positions.frame(pos, tok.grid_hw, tok.trailer.shape[0], it.time_s)
                e, i = _frame_inputs(tok, fs, fid)
                embeds.append(e)
                ids.append(i)
                kept.append(int(fs.keep.numel()))
                if close is not None and close.numel():
                    embeds.append(self.adapter.embed_text(close))
                    ids.append(self.adapter.positions.text(pos, close.numel()))
            else:
                a = it.tokens
                n = int(a.features.shape[0])
                aid = self.adapter.positions.audio(pos, n, it.time_s, a.seconds_per_token)
                inside = (akeep >= audio_off) & (akeep < audio_off + n)
                local = akeep[inside] - audio_off
                embeds.append(afeat[inside] if afeat is not None else a.features[local])
                ids.append(aid[:, local])
                audio_off += n
                audio_kept += int(local.numel())
        embeds = [e for e in embeds if e.shape[0]]
        ids = [i for i in ids if i.shape[1]]
        if not embeds:
            return None, None, kept, audio_kept
        dtype = embeds[0].dtype
        return torch.cat([e.to(dtype) for e in embeds]), torch.cat(ids, dim=1), kept, audio_kept

    def _commit(self, complete: bool) -> WindowStats:
        # the method works on a copy of its state, kept only once the window is in the cache: a failed prefill
        # leaves state, cache, positions and the open window as they were
        t0 = time.perf_counter()
        state = copy.deepcopy(self.method_state)
        sel = self._compress_pending(state)
        t1 = time.perf_counter()
        pos = self.positions.copy()
        embeds, ids, kept, audio_kept = self._window_inputs(sel, pos)
        if embeds is not None:
            self._append(embeds, ids)
        self.positions, self.method_state = pos, state
        t2 = time.perf_counter()
        frames = [it for it in self._pending if it.kind == "frame"]
        audio = [it for it in self._pending if it.kind == "audio"]
        c_ms, p_ms = (t1 - t0) * 1e3, (t2 - t1) * 1e3
        for it, k in zip(frames, kept):
            st = it.stats
            st.tokens_kept, st.window = k, self._pending_window
            st.compress_ms, st.prefill_ms = c_ms / len(frames), p_ms / len(frames)
            self.frame_stats.append(st)
        w = self._pending_window
        ws = WindowStats(index=w, start_s=w * self.window_s, end_s=(w + 1) * self.window_s, frames=len(frames),
                         video_in=sum(it.tokens.num_tokens for it in frames), video_kept=sum(kept),
                         audio_in=sum(int(it.tokens.features.shape[0]) for it in audio), audio_kept=audio_kept,
                         compress_ms=c_ms, prefill_ms=p_ms, complete=complete, info=dict(sel.info))
        self.window_stats.append(ws)
        self._pending, self._pending_window = [], None
        return ws

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
        frames = len(self.frame_stats) + self.pending_frames
        conditioned = snapshot
        restore, requeried = None, 0
        tw = tr = time.perf_counter()
        try:
            if self._pending:  # provisional flush: a copy of the method's state, cropped away with the question
                provisional = self._compress_pending(copy.deepcopy(self.method_state))
                embeds, ids, _, _ = self._window_inputs(provisional, pos)
                if embeds is not None:
                    self._append(embeds, ids)
                conditioned = self.cache.get_seq_length()
            tr = time.perf_counter()
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
            t0 = time.perf_counter()
            if logits is None:
                logits = self._append_text(self.adapter.prompt.question_template.format(question=question.strip()), pos)
            else:
                t0 = tr  # the fused prefill above is the question's prefill
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
            if restore is not None:
                restore_tail(self.cache, *restore)
            extra = self.cache.get_seq_length() - snapshot
            if extra > 0:
                self.cache.crop(-extra)
        text = tok.decode(generated, skip_special_tokens=False)
        for s in stops:
            if s and s in text:
                text = text[: text.index(s)]
        return Answer(question=question, text=text.strip(), token_ids=generated, stream_tokens=conditioned,
                      frames=frames, prefill_ms=(t1 - t0) * 1e3, decode_ms=(t2 - t1) * 1e3,
                      stopped_by=stopped_by, logits=kept_logits, window_ms=(tr - tw) * 1e3,
                      requery_ms=(t0 - tr) * 1e3, requeried_frames=requeried)

    def _frame_piece(self, tokens, ids):
        from vlmedge.compression.glimpse.prefill import Piece

        return Piece(torch.cat([tokens.features, tokens.trailer.to(tokens.features.dtype)]), ids, tokens)

    def _segment_pieces(self) -> list:
        """The buffered appends as prefill pieces: frames with all their tokens, everything else as it was."""
        pieces = []
        for seg in self._segments:
            if seg.tokens is None:
                pieces.append(_piece(seg.embeds, seg.ids))
                continue
            pieces.append(self._frame_piece(seg.tokens, seg.ids))
            if seg.close is not None:
                pieces.append(_piece(*seg.close))
        return pieces

    def _prefill_pieces(self, pieces):
        """A method's own pruned prefill (GlimpsePrune); on failure every cache layer is cut back."""
        start = self.cache.get_seq_length()
        try:
            return self.method.prefill(self.adapter, self.cache, pieces)
        except Exception:
            cut_layers_to(self.cache, start)
            raise

    def _requery_inputs(self, question: str):
        """Re-selects the buffered frames for `question`; None when no selection changed, else the cache length
        to cut back to and the embeddings and ids to prefill from there (see the module notes)."""
        q = self._query_embedding(question)
        redo, first = [], None
        for i, seg in enumerate(self._segments):
            if seg.tokens is None:
                redo.append(None)
                continue
            sel = self.method.compress(seg.tokens, replace(seg.ctx, query=q), copy.deepcopy(self.method_state))
            if first is None and (sel.features is not None or not torch.equal(sel.keep, seg.keep)):
                first = i
            redo.append(sel)
        if first is None:
            return None
        embeds, ids, frames = [], [], 0
        for seg, sel in zip(self._segments[first:], redo[first:]):
            if sel is None:
                embeds.append(seg.embeds)
                ids.append(seg.ids)
                continue
            frames += 1
            e, i = _frame_inputs(seg.tokens, sel, seg.ids)
            embeds.append(e)
            ids.append(i)
            if seg.close is not None:
                embeds.append(seg.close[0])
                ids.append(seg.close[1])
        dtype = embeds[0].dtype
        return self._segments[first].start, torch.cat([e.to(dtype) for e in embeds]), torch.cat(ids, dim=1), frames


def _piece(embeds, ids, keep: bool = True):
    from vlmedge.compression.glimpse.prefill import Piece

    return Piece(embeds, ids, keep=keep)


def _frame_inputs(tokens, sel, ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """A frame's kept tokens (or merged features) and trailer, with their ids. Kept tokens keep the ids they had
    before pruning: columns are selected, never renumbered."""
    n = tokens.num_tokens
    feats = sel.features if sel.features is not None else tokens.features[sel.keep]
    return torch.cat([feats, tokens.trailer.to(feats.dtype)]), torch.cat([ids[:, sel.keep], ids[:, n:]], dim=1)
