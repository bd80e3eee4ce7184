"""The element's text src pad: answers as timed UTF-8 text buffers, gap events in between (a sparse stream).

Everything on the pad is pushed by one thread of its own. A text consumer such as `textoverlay` holds a text
buffer until the video has passed its end time and blocks the next push meanwhile; pushed from the video
streaming thread that wait could never end. Gaps keep the text timeline moving with the video, so a consumer
that waits for text before drawing a frame is released, and sinks preroll. Timestamps live in the video's
segment: an answer starts where the text timeline has got to (the latest video frame) and lasts
`duration_ns`; gaps never overlap it, so the text timeline only moves forward.
"""
from __future__ import annotations

import queue
import threading

from .gst import Gst

TEXT_CAPS = "text/x-raw, format=(string)utf8"


class TextFeeder:
    def __init__(self, pad: Gst.Pad, stream_id: str, duration_ns: int):
        self.pad = pad
        self.stream_id = stream_id
        self.duration_ns = int(duration_ns)
        self._q: queue.Queue = queue.Queue()
        self._thread: threading.Thread | None = None
        self._pos: int | None = None  # end of the text timeline so far (buffer time)
        self._started = False
        self._has_segment = False
        self.answers_pushed = 0

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="vlmedge-text", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        if self._thread is not None:
            self._q.put(("stop",))
            self._thread.join(timeout=10)
            self._thread = None
        self._pos, self._started, self._has_segment = None, False, False

    # ----- called from the streaming threads -----
    def segment(self, seg: Gst.Segment) -> None:
        self._q.put(("segment", seg.copy()))

    def gap(self, pts: int, duration: int) -> None:
        if pts is not None and pts != Gst.CLOCK_TIME_NONE:
            self._q.put(("gap", int(pts), int(duration) if duration not in (None, Gst.CLOCK_TIME_NONE) else 0))

    def answer(self, text: str) -> None:
        self._q.put(("answer", text))

    def eos(self) -> None:
        self._q.put(("eos",))

    def flush_start(self) -> None:
        try:  # what was queued belongs before the seek
            while True:
                self._q.get_nowait()
        except queue.Empty:
            pass
        self.pad.push_event(Gst.Event.new_flush_start())  # releases a push blocked downstream

    def flush_stop(self) -> None:
        self._q.put(("flush-stop",))

    # ----- the text thread -----
    def _open(self) -> None:
        if not self._started:
            self.pad.push_event(Gst.Event.new_stream_start(self.stream_id))
            self.pad.push_event(Gst.Event.new_caps(Gst.Caps.from_string(TEXT_CAPS)))
            self._started = True

    def _begin(self) -> None:
        self._open()
        if not self._has_segment:
            seg = Gst.Segment()
            seg.init(Gst.Format.TIME)
            self.pad.push_event(Gst.Event.new_segment(seg))
            self._has_segment = True

    def _run(self) -> None:
        while True:
            item = self._q.get()
            kind = item[0]
            if kind == "stop":
                return
            if kind == "flush-stop":
                self.pad.push_event(Gst.Event.new_flush_stop(True))
                self._pos, self._has_segment = None, False
                continue
            if kind == "segment":
                self._open()
                self.pad.push_event(Gst.Event.new_segment(item[1]))
                self._has_segment = True
                continue
            self._begin()
            if kind == "gap":
                end = item[1] + item[2]
                start = item[1] if self._pos is None else max(self._pos, item[1])
                if end > start:
                    self.pad.push_event(Gst.Event.new_gap(start, end - start))
                    self._pos = end
                elif self._pos is None:
                    self._pos = start
            elif kind == "answer":
                buf = Gst.Buffer.new_wrapped(item[1].encode("utf-8"))
                buf.pts = self._pos or 0
                buf.duration = self.duration_ns
                self._pos = buf.pts + self.duration_ns
                self.pad.push(buf)  # NOT_LINKED or FLUSHING are fine: the answer also went to the bus
                self.answers_pushed += 1
            elif kind == "eos":
                self.pad.push_event(Gst.Event.new_eos())
