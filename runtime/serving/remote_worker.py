"""`RemoteWorker`: the GStreamer element's `InferenceWorker` (pipelines/worker.py) with the model on a server.

It has the same methods, callbacks and statistics as `InferenceWorker`. The element (or `vlmedge run --server`)
picks one or the other at start, and nothing else changes: frames and questions go to a `ServerClient`, answers
and frame statistics come back through the same callbacks, and a lost connection becomes a warning on the bus
rather than an error, because the client reconnects by itself. Audio is not sent: omni models' audio stays
local-only for now.
"""
from __future__ import annotations

import threading
import time
from collections import deque

from vlmedge.pipelines.worker import WorkerStats
from vlmedge.runtime.records import FrameStats

from .client import ServerClient


class RemoteWorker:
    def __init__(self, url: str, stream_id: str, on_answer, on_frame=None, on_warning=None, on_error=None,
                 drop_frames: bool = True, prompt: str | None = None, prompt_interval_s: float = 0.0,
                 split: str = "frames", edge=None, queue_frames: int = 1, backpressure_s: float = 30.0,
                 eos_wait_s: float = 10.0):
        self.on_answer, self.on_frame = on_answer, on_frame
        self.on_warning = on_warning or (lambda msg: None)
        self.on_error = on_error or (lambda msg: None)
        self.drop_frames = drop_frames
        self.prompt = prompt or None
        self.prompt_interval_s = float(prompt_interval_s)
        self.backpressure_s = backpressure_s
        # End of stream with the server down waits this long for it to come back, then drops what is queued
        # (counted, and said in a warning): EOS must not hang on a dead server.
        self.eos_wait_s = eos_wait_s
        self.audio = None  # the element sends no audio to a remote worker
        self.stats = WorkerStats()
        self.error: str | None = None
        self.session = None
        self.client = ServerClient(url, stream_id, split=split, edge=edge, queue_frames=queue_frames,
                                   on_event=self._event, on_frame=self._frame)
        self._origin: float | None = None
        self._next_prompt: float | None = None
        self._last_frame: dict | None = None
        self._answers: deque = deque()  # (AnswerStream, source), answered in order
        self._cv = threading.Condition()
        self._stop = False
        self._thread = threading.Thread(target=self._deliver, name="vlmedge-remote-answers", daemon=True)

    # ----- InferenceWorker's interface -----
    def start(self) -> None:
        self._thread.start()

    def submit_frame(self, frame, time_s: float) -> bool:
        if self.error or self._stop:
            return False
        if self._origin is None:
            self._origin = time_s
        rel = time_s - self._origin
        if rel < 0:
            self.on_warning(f"frame at {time_s:.3f}s is before the stream start {self._origin:.3f}s; skipped")
            return True
        self.stats.frames_submitted += 1
        # drop_frames: latest wins (a live camera); otherwise wait for room (files: every sampled frame is used),
        # but only while the server is reachable
        self.client.push_frame(frame, rel, wait_s=0.0 if self.drop_frames else self.backpressure_s)
        self._sync_drops()
        if self.prompt and self.prompt_interval_s > 0:
            if self._next_prompt is None:
                self._next_prompt = rel + self.prompt_interval_s
            elif rel + 1e-9 >= self._next_prompt:
                self._next_prompt = rel + self.prompt_interval_s
                self.ask(self.prompt, "prompt")
        return True

    def submit_audio(self, samples, time_s: float) -> None:
        pass

    def audio_eos(self) -> None:
        pass

    def ask(self, question: str, source: str = "question") -> None:
        stream = self.client.ask(question)
        with self._cv:
            self._answers.append((stream, source))
            self._cv.notify_all()

    def discard_frames(self) -> None:
        self.client.discard_frames()

    def flush(self) -> None:
        """After a flushing seek: queued frames go and the server's stream starts over."""
        self.discard_frames()
        self._origin = self._next_prompt = None
        try:
            self.client.control("reset")
        except Exception as err:  # noqa: BLE001  the stream restarts on the server's side anyway after a restart
            self.on_warning(f"could not reset the remote stream: {err}")

    def finish(self, timeout: float | None = None) -> bool:
        if self.prompt and self.prompt_interval_s <= 0 and self._origin is not None:
            self.ask(self.prompt, "prompt")
        end = time.monotonic() + (timeout if timeout is not None else 3600.0)
        ok = False
        while time.monotonic() < end:
            if self.client.flush(min(0.5, max(0.0, end - time.monotonic()))):
                ok = True
                break
            down = self.client.unreachable_since
            if not self.client.reachable and down is not None and time.monotonic() - down >= self.eos_wait_s:
                frames, asks = self.client.abandon(f"end of stream: the server at {self.client.url} has been "
                                                   f"unreachable for {time.monotonic() - down:.0f} s")
                self.on_warning(f"end of stream with the server at {self.client.url} unreachable: {frames} queued "
                                f"frames dropped, {asks} questions not answered")
                break
        self._sync_drops()
        with self._cv:
            while self._answers and time.monotonic() < end:
                self._cv.wait(0.1)
            return ok and not self._answers and self.error is None

    def stop(self) -> None:
        with self._cv:
            self._stop = True
            self._cv.notify_all()
        self.client.close(flush_timeout_s=0.0)
        if self._thread.is_alive() and self._thread is not threading.current_thread():
            self._thread.join(5)

    @property
    def pending(self) -> int:
        return self.client.pending + len(self._answers)

    def _sync_drops(self) -> None:
        """Frames the client dropped: pushed out of its queue, lost in flight, or abandoned at end of stream."""
        self.stats.frames_dropped = self.client.stats.frames_dropped

    # ----- from the client -----
    def _event(self, kind: str, message: str) -> None:
        self.on_warning(f"server {self.client.url}: {kind}: {message}")

    def _frame(self, out: dict) -> None:
        if out["error"]:
            self.stats.frames_rejected += 1
            self.on_warning(out["error"])
            return
        if not out["sampled"]:
            return
        now = time.monotonic()
        self._sync_drops()
        self.stats.frames_processed += 1
        self.stats.first_frame_wall = self.stats.first_frame_wall or now
        self.stats.last_frame_wall = now
        self._last_frame = out
        if self.on_frame is not None:
            self.on_frame(FrameStats(int(out["frames"]) - 1, float(out["time_s"]), int(out["tokens_in"]),
                                     int(out["tokens_kept"]), float(out["encode_ms"]), float(out["compress_ms"]),
                                     float(out["prefill_ms"])))

    def _deliver(self) -> None:
        while True:
            with self._cv:
                while not self._answers and not self._stop:
                    self._cv.wait()
                if self._stop:
                    return
                stream, source = self._answers[0]
            try:
                ans = stream.result()
            except Exception as err:  # noqa: BLE001  a question that failed is reported, never dropped silently
                self.on_warning(f"question {stream.question!r} got no answer: {err}")
            else:
                self.stats.answers += 1
                if source == "question":
                    self.stats.answer_latency_ms.append(ans.latency_ms)
                info, last = ans.info, self._last_frame
                self.on_answer({
                    "question": ans.question, "answer": ans.text, "source": source,
                    "stream_time_s": round(float(last["time_s"]) + (self._origin or 0.0), 3) if last else 0.0,
                    "frames": ans.frames, "stream_tokens": ans.stream_tokens,
                    "tokens_kept_last_frame": int(last["tokens_kept"]) if last else 0,
                    "latency_ms": round(ans.latency_ms, 1),
                    "first_token_ms": round(info.get("prefill_ms", 0.0) + info.get("window_ms", 0.0)
                                            + info.get("requery_ms", 0.0), 1),
                    "decode_ms": round(info.get("decode_ms", 0.0), 1), "stopped_by": info.get("stopped_by", ""),
                    "evicted_tokens": info.get("evicted_tokens", 0), "retrieved_tokens": info.get("retrieved_tokens", 0),
                    "server": self.client.url})
            with self._cv:
                self._answers.popleft()
                self._cv.notify_all()
