"""Window methods in the streaming session (`StreamingSession` mixes this in).

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
"""
from __future__ import annotations

import copy
import math
import time
from dataclasses import dataclass
from typing import Any

import torch

from vlmedge.compression import FrameContext
from vlmedge.runtime.layout import frame_inputs
from vlmedge.runtime.records import FrameStats, WindowStats


@dataclass
class _Buffered:
    kind: str  # "frame" or "audio"
    time_s: float
    tokens: Any  # FrameTokens or AudioTokens
    ctx: FrameContext | None = None
    stats: FrameStats | None = None


class WindowedStream:
    """Buffering, committing and provisional flushing of window methods' windows (state lives on the session)."""

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
                e, i = frame_inputs(tok, fs, fid)
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
            self._make_room(int(embeds.shape[0]))
            start = self.cache.get_seq_length()
            self._append(embeds, ids)
            self._stored(start, "window", self._pending[0].time_s)
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
