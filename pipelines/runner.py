"""Runs a `vlmedge` pipeline in this process and turns its bus into callbacks (what `vlmedge run` prints).

Questions can be scheduled at stream times (asked once the frame at that time has been handed to the
model) or at end of stream (asked when EOS reaches the element, before it drains), and asked at any time
from another thread (`ask`). `stop()` sends EOS so pending answers still come out; a second `stop()` aborts.
"""
from __future__ import annotations

import json
import threading
import time
from dataclasses import dataclass, field
from typing import Callable

from vlmedge.errors import VlmedgeError

from . import register
from .gst import Gst


class PipelineError(VlmedgeError):
    """The pipeline posted an error (the message says which element and why)."""


@dataclass
class RunResult:
    answers: list = field(default_factory=list)
    frames: list = field(default_factory=list)
    stats: dict = field(default_factory=dict)
    warnings: list = field(default_factory=list)
    wall_s: float = 0.0
    eos: bool = False
    error_debug: str | None = None  # the error message's debug text (a traceback for inference errors)


class PipelineRunner:
    def __init__(self, description: str, element_name: str = "vlmedge",
                 on_answer: Callable[[dict], None] | None = None, on_frame: Callable[[dict], None] | None = None,
                 on_warning: Callable[[str], None] | None = None):
        register()
        try:
            self.pipeline = Gst.parse_launch(description)
        except Exception as err:  # GLib.Error from the parser: an unknown element or a bad property
            raise PipelineError(f"could not build the pipeline: {err}") from err
        self.element = self.pipeline.get_by_name(element_name)
        if self.element is None:
            raise PipelineError(f"the pipeline has no element named {element_name!r}")
        self.on_answer, self.on_frame, self.on_warning = on_answer, on_frame, on_warning
        self.result = RunResult()
        self._at: list[tuple[float, str]] = []
        self._at_end: list[str] = []
        self._stopping = 0
        self._lock = threading.Lock()
        self.element.get_static_pad("src").add_probe(Gst.PadProbeType.BUFFER, self._after_frame)
        self.element.get_static_pad("sink").add_probe(Gst.PadProbeType.EVENT_DOWNSTREAM, self._before_event)

    # ----- questions -----
    def ask_at(self, time_s: float, question: str) -> None:
        with self._lock:
            self._at.append((float(time_s), question))
            self._at.sort(key=lambda x: x[0])

    def ask_at_end(self, question: str) -> None:
        self._at_end.append(question)

    def ask(self, question: str) -> None:
        self.element.ask(question)

    def _after_frame(self, pad, info):
        # Runs once the element's chain has handed the frame to the model, so the question follows that frame.
        buf = info.get_buffer()
        t = self.element.stream_time(buf.pts)
        with self._lock:
            due = [q for at, q in self._at if t is not None and at <= t + 1e-6]
            self._at = self._at[len(due):]
        for q in due:
            self.element.ask(q)
        return Gst.PadProbeReturn.OK

    def _before_event(self, pad, info):
        if info.get_event().type == Gst.EventType.EOS:
            with self._lock:
                rest, self._at = [q for _, q in self._at] + self._at_end, []
                self._at_end = []
            for q in rest:
                self.element.ask(q)
        return Gst.PadProbeReturn.OK

    # ----- running -----
    def stop(self) -> None:
        """First call: EOS (pending answers still come out). Second: abort."""
        self._stopping += 1
        if self._stopping == 1:
            self.pipeline.send_event(Gst.Event.new_eos())

    def run(self, duration_s: float | None = None, timeout_s: float | None = None) -> RunResult:
        """Plays to EOS (or `duration_s` of wall time, then EOS). Raises PipelineError on an error message or
        when `timeout_s` passes (a stall)."""
        bus = self.pipeline.get_bus()
        self.result, self._stopping = RunResult(), 0  # a pipeline can be run again: each run reports its own
        t0 = time.monotonic()
        ret = self.pipeline.set_state(Gst.State.PLAYING)
        try:
            if ret == Gst.StateChangeReturn.FAILURE:
                self._raise_from_bus(bus, "the pipeline failed to start")
            while True:
                now = time.monotonic() - t0
                if duration_s is not None and now >= duration_s and not self._stopping:
                    self.stop()
                if timeout_s is not None and now >= timeout_s:
                    raise PipelineError(f"no end of stream after {timeout_s:.0f} s (stalled?)")
                if self._stopping >= 2:
                    break
                msg = bus.timed_pop(100 * Gst.MSECOND)
                if msg is not None and self._handle(msg):
                    break
        finally:
            self.result.wall_s = time.monotonic() - t0
            if not self.result.stats:
                self.result.stats = json.loads(self.element.get_property("stats"))
            self.pipeline.set_state(Gst.State.NULL)
        return self.result

    def _handle(self, msg) -> bool:
        t = msg.type
        if t == Gst.MessageType.EOS:
            self.result.eos = True
            return True
        if t == Gst.MessageType.ERROR:
            # The failing element's own message and the "Internal data stream error" that its flow error makes
            # the source post race to the bus: wait briefly for ours, then report the cause first.
            errors, bus = [msg], self.pipeline.get_bus()
            deadline = time.monotonic() + 0.5
            while self.element not in [e.src for e in errors] and time.monotonic() < deadline:
                more = bus.timed_pop_filtered(50 * Gst.MSECOND, Gst.MessageType.ERROR)
                if more is not None:
                    errors.append(more)
            errors.sort(key=lambda e: e.src is not self.element)
            parsed = [(e.src.get_name(), *e.parse_error()) for e in errors]
            self.result.error_debug = parsed[0][2]
            raise PipelineError("; ".join(f"{name}: {err.message}" for name, err, _ in parsed))
        if t == Gst.MessageType.WARNING:
            err, _ = msg.parse_warning()
            self.result.warnings.append(err.message)
            if self.on_warning:
                self.on_warning(f"{msg.src.get_name()}: {err.message}")
        elif t == Gst.MessageType.ELEMENT and msg.src is self.element:
            s = msg.get_structure()
            name = s.get_name()
            if name == "vlmedge-answer":
                ans = json.loads(s.get_value("json"))
                self.result.answers.append(ans)
                if self.on_answer:
                    self.on_answer(ans)
            elif name == "vlmedge-frame":
                frame = {s.nth_field_name(i).replace("-", "_"): s.get_value(s.nth_field_name(i))
                         for i in range(s.n_fields())}
                self.result.frames.append(frame)
                if self.on_frame:
                    self.on_frame(frame)
            elif name == "vlmedge-stats":
                self.result.stats = json.loads(s.get_value("json"))
        return False

    def _raise_from_bus(self, bus, fallback: str) -> None:
        while True:
            msg = bus.pop_filtered(Gst.MessageType.ERROR)
            if msg is None:
                raise PipelineError(fallback)
            self._handle(msg)
