"""Inference off the streaming thread: a StreamingSession fed from a latest-frame-wins queue.

The GStreamer element (and anything else that produces frames faster than a model eats them) hands frames,
audio and questions to `InferenceWorker`; one thread owns the session and runs everything on it in order.
With `drop_frames` at most one frame waits: a newer frame replaces it in place and the replaced one is counted
as dropped, so a slow model never stalls the producer. Without it the producer waits until the waiting frame
is taken (back-pressure; every sampled frame is processed, for files and reproducible runs).

Results leave through callbacks, called on the worker thread: `on_frame(FrameStats)`, `on_answer(dict)`,
`on_warning(str)` (a rejected frame or question: the stream goes on) and `on_error(str)` (anything else:
the worker stops taking work and the element posts an error).
"""
from __future__ import annotations

import threading
import time
import traceback
from collections import deque
from dataclasses import dataclass, field
from typing import Callable

from vlmedge.errors import VlmedgeError

from .audio_track import AudioTrack


@dataclass
class _Item:
    kind: str  # "frame" or "ask"
    payload: object
    time_s: float | None = None  # stream time of a frame
    wall: float = field(default_factory=time.monotonic)
    source: str = "question"  # asks: "question" (set once) or "prompt" (the standing prompt)


@dataclass
class WorkerStats:
    frames_submitted: int = 0
    frames_dropped: int = 0  # replaced by a newer frame before the model took them
    frames_processed: int = 0
    frames_rejected: int = 0
    answers: int = 0
    audio_chunks: int = 0  # one-second audio chunks encoded (omni models)
    busy_s: float = 0.0  # time spent in the session
    first_frame_wall: float | None = None
    last_frame_wall: float | None = None
    answer_latency_ms: list = field(default_factory=list)  # question set -> answer out, per question

    def sampled_fps(self) -> float:
        """Frames the model processed per second of wall time, first to last."""
        if self.first_frame_wall is None or self.frames_processed < 2:
            return 0.0
        span = self.last_frame_wall - self.first_frame_wall
        return (self.frames_processed - 1) / span if span > 0 else 0.0

    def to_dict(self) -> dict:
        lat = sorted(self.answer_latency_ms)
        return {"frames_submitted": self.frames_submitted, "frames_dropped": self.frames_dropped,
                "frames_processed": self.frames_processed, "frames_rejected": self.frames_rejected,
                "answers": self.answers, "audio_chunks": self.audio_chunks, "sampled_fps": round(self.sampled_fps(), 3),
                "busy_s": round(self.busy_s, 3),
                "answer_latency_ms_median": round(lat[len(lat) // 2], 1) if lat else None,
                "answer_latency_ms_max": round(lat[-1], 1) if lat else None}


class InferenceWorker:
    def __init__(self, session, on_answer: Callable[[dict], None], on_frame: Callable | None = None,
                 on_warning: Callable[[str], None] | None = None, on_error: Callable[[str], None] | None = None,
                 drop_frames: bool = True, prompt: str | None = None, prompt_interval_s: float = 0.0,
                 audio_wait_s: float = 1.0):
        self.session = session
        self.on_answer, self.on_frame = on_answer, on_frame
        self.on_warning = on_warning or (lambda msg: None)
        self.on_error = on_error or (lambda msg: None)
        self.drop_frames = drop_frames
        self.prompt = prompt or None
        self.prompt_interval_s = float(prompt_interval_s)
        self.audio_wait_s = float(audio_wait_s)
        self.audio = AudioTrack() if getattr(session.adapter, "has_audio", False) else None
        self.stats = WorkerStats()
        self.error: str | None = None
        self._cv = threading.Condition()
        self._queue: deque[_Item] = deque()
        self._busy = False
        self._stop = False
        self._reset_pending = False
        self._generation = 0  # bumped by flush(): a frame submitted before it never enters the new stream
        self._audio_active = False  # audio buffers are arriving (an omni model with its audio pad linked)
        self._audio_eos = False
        self._origin: float | None = None  # stream time of the stream's first processed frame
        self._next_prompt: float | None = None
        self._reported = 0
        self._thread = threading.Thread(target=self._run, name="vlmedge-inference", daemon=True)

    # ----- producer side (any thread) -----
    def start(self) -> None:
        self._thread.start()

    def submit_frame(self, frame, time_s: float) -> bool:
        """Queues a frame; False if the worker has failed or stopped (the frame is not used)."""
        with self._cv:
            if self.error or self._stop:
                return False
            generation = self._generation
            self.stats.frames_submitted += 1
            waiting = next((it for it in self._queue if it.kind == "frame"), None)
            if waiting is not None and self.drop_frames:
                waiting.payload, waiting.time_s, waiting.wall = frame, time_s, time.monotonic()
                self.stats.frames_dropped += 1
                return True
            while (not self.drop_frames and not (self.error or self._stop)
                   and any(it.kind == "frame" for it in self._queue)):
                self._cv.wait(0.5)
            if self.error or self._stop or generation != self._generation:
                return False  # failed, stopped, or a flush came while this frame waited: it is from before the seek
            self._queue.append(_Item("frame", frame, time_s))
            self._cv.notify_all()
            return True

    def submit_audio(self, samples, time_s: float) -> None:
        if self.audio is None:
            return
        with self._cv:
            try:
                self.audio.add(samples, time_s)
            except VlmedgeError as err:
                self.on_warning(f"audio buffer at {time_s:.3f}s skipped: {err}")
                return
            self._audio_active = True
            self._cv.notify_all()

    def audio_eos(self) -> None:
        with self._cv:
            self._audio_eos = True
            self._cv.notify_all()

    def ask(self, question: str, source: str = "question") -> None:
        with self._cv:
            self._queue.append(_Item("ask", question, source=source))
            self._cv.notify_all()

    def discard_frames(self) -> None:
        """Queued frames go, and a frame waiting to be queued is refused (a flush has started)."""
        with self._cv:
            self._queue = deque(it for it in self._queue if it.kind != "frame")
            self._generation += 1
            self._cv.notify_all()

    def flush(self) -> None:
        """After a flushing seek: queued frames and buffered audio go; the next frame starts a new stream.
        Call it when no producer can still hold a frame from before the seek (GStreamer: at FLUSH_STOP)."""
        with self._cv:
            self.discard_frames()
            self._reset_pending = True
            self._audio_active = self._audio_eos = False
            if self.audio is not None:
                self.audio.reset()

    def finish(self, timeout: float | None = None) -> bool:
        """End of stream: waits until everything queued is processed, then feeds the remaining audio, answers
        the standing prompt when it has no schedule, and closes an open window. False on timeout or failure."""
        done = threading.Event()
        with self._cv:
            if self.error or self._stop:
                return False
            self._queue.append(_Item("end", done))
            self._cv.notify_all()
        return done.wait(timeout) and self.error is None

    def stop(self) -> None:
        """Stops the thread after the current step; queued work is discarded."""
        with self._cv:
            self._stop = True
            for it in self._queue:
                if it.kind == "end":
                    it.payload.set()
            self._queue.clear()
            self._cv.notify_all()
        if self._thread.is_alive() and self._thread is not threading.current_thread():
            self._thread.join()

    @property
    def pending(self) -> int:
        with self._cv:
            return len(self._queue) + int(self._busy)

    # ----- the worker thread -----
    def _run(self) -> None:
        while True:
            with self._cv:
                while not self._queue and not self._stop:
                    self._cv.wait()
                if self._stop:
                    return
                item = self._queue.popleft()
                reset, self._reset_pending = self._reset_pending, False
                self._busy = True
                self._cv.notify_all()  # a producer waiting for room
            try:
                if reset:
                    self._restart()
                t0 = time.monotonic()
                getattr(self, f"_do_{item.kind}")(item)
                self.stats.busy_s += time.monotonic() - t0
            except VlmedgeError as err:  # bad input: say so and go on with the stream
                self.on_warning(str(err))
                if item.kind == "frame":
                    self.stats.frames_rejected += 1
            except Exception as err:  # a bug or a broken model: stop cleanly, the element posts the error
                error = f"{type(err).__name__}: {err}"
                # Posted before the error is visible and before anyone waiting for the end of the stream goes on:
                # released first, the element pushed EOS and the bus could carry EOS ahead of the error.
                self.on_error(error + "\n" + traceback.format_exc())
                with self._cv:
                    self.error = error
                    for it in self._queue:
                        if it.kind == "end":
                            it.payload.set()
                    self._queue.clear()
                return
            finally:
                with self._cv:
                    self._busy = False
                    self._cv.notify_all()
                if item.kind == "end":
                    item.payload.set()

    def _restart(self) -> None:
        self.session.reset()
        self._origin = self._next_prompt = None
        self._reported = len(self.session.frame_stats)

    def _rel(self, time_s: float) -> float:
        return time_s - self._origin

    def _feed_audio(self, until_s: float, final: bool = False) -> None:
        """Audio chunks that end by `until_s` (seconds since the origin) go in before the frame at that time,
        waiting up to `audio_wait_s` for audio that lags the video (the two arrive on different threads)."""
        if self.audio is None:
            return
        with self._cv:
            if not final and self._audio_active and not self._audio_eos:
                deadline = time.monotonic() + self.audio_wait_s
                while (not self._stop and not self._audio_eos and self.audio.end_time is not None
                       and self.audio.end_time - self._origin < until_s - 1e-6):
                    left = deadline - time.monotonic()
                    if left <= 0:
                        break
                    self._cv.wait(left)
            chunks = self.audio.take_until(until_s, final=final)
        for start, wave in chunks:
            self.session.push_audio(wave, time_s=start)
            self.stats.audio_chunks += 1

    def _report_frames(self) -> None:
        stats = self.session.frame_stats
        if self.on_frame:
            for st in stats[self._reported:]:
                self.on_frame(st)
        self._reported = len(stats)

    def _do_frame(self, item: _Item) -> None:
        if self._origin is None:
            self._origin = item.time_s
            if self.audio is not None:
                with self._cv:
                    self.audio.set_origin(item.time_s)
        rel = self._rel(item.time_s)
        if rel < 0:  # a frame earlier than the stream's first without a flush: timestamps went backwards
            self.stats.frames_rejected += 1
            self.on_warning(f"frame at {item.time_s:.3f}s is before the stream start {self._origin:.3f}s; skipped")
            return
        self._feed_audio(rel)
        self.session.push_frame(item.payload, time_s=rel)
        now = time.monotonic()
        self.stats.frames_processed += 1
        self.stats.first_frame_wall = self.stats.first_frame_wall or now
        self.stats.last_frame_wall = now
        self._report_frames()
        if self.prompt and self.prompt_interval_s > 0:
            if self._next_prompt is None:
                self._next_prompt = rel + self.prompt_interval_s
            elif rel + 1e-9 >= self._next_prompt:
                self._next_prompt = rel + self.prompt_interval_s
                self._answer(self.prompt, "prompt", time.monotonic())

    def _do_ask(self, item: _Item) -> None:
        self._answer(item.payload, item.source, item.wall)

    def _do_end(self, item: _Item) -> None:
        if self._origin is not None:
            last = self.session.frame_stats[-1].time_s if self.session.frame_stats else 0.0
            self._feed_audio(last + 1.0, final=True)
            if self.prompt and self.prompt_interval_s <= 0:
                self._answer(self.prompt, "prompt", time.monotonic())
            if hasattr(self.session, "flush"):
                self.session.flush()
            self._report_frames()

    def _answer(self, question: str, source: str, asked_wall: float) -> None:
        ans = self.session.ask(question)
        latency = (time.monotonic() - asked_wall) * 1e3
        self.stats.answers += 1
        if source == "question":
            self.stats.answer_latency_ms.append(latency)
        last = self.session.frame_stats[-1] if self.session.frame_stats else None
        self.on_answer({
            "question": question, "answer": ans.text.strip(), "source": source,
            "stream_time_s": round((last.time_s + self._origin) if last and self._origin is not None else 0.0, 3),
            "frames": ans.frames, "stream_tokens": ans.stream_tokens,
            "tokens_kept_last_frame": last.tokens_kept if last else 0,
            "latency_ms": round(latency, 1), "first_token_ms": round(ans.prefill_ms + ans.window_ms + ans.requery_ms, 1),
            "decode_ms": round(ans.decode_ms, 1), "stopped_by": ans.stopped_by,
            "evicted_tokens": ans.evicted_tokens, "retrieved_tokens": ans.retrieved_tokens,
        })
