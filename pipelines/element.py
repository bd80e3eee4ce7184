"""The `vlmedge` GStreamer element: video in and out unchanged, answers about it on the bus and a text pad.

Pads: `sink` (packed RGB-family video) → `src` (the same buffers, untouched and on time); `text_src` (answers as
UTF-8 text, a sparse stream for `textoverlay`, see text_pad.py); `audio_sink` (16 kHz mono F32 for omni
models; ignored with a warning for video-only models). Sampled frames are copied to an `InferenceWorker`
(worker.py) that runs the model on its own thread. Audio and video are aligned by timestamps in the worker
rather than by a GstAggregator: an aggregator would hold each video buffer until audio for its time arrived,
and the video must pass through on time whatever the audio does.

Lifecycle: NULL→READY loads the model (a bad `model` fails the state change with the reason on the bus),
READY→PAUSED starts a stream (session, worker, text thread), PAUSED→READY stops them, READY→NULL frees the
model. EOS waits for the worker to finish what is queued, so pending answers go out before EOS. A flushing
seek starts a new stream: the model's memory of the stream before the seek is cleared.

Bus messages (element messages): `vlmedge-answer` (question, answer, source, stream-time, latency-ms,
first-token-ms, frames, stream-tokens, tokens-kept, json), `vlmedge-frame` with `frame-stats=true`
(index, stream-time, tokens-in, tokens-kept, encode-ms, compress-ms, prefill-ms), `vlmedge-stats` at EOS
(json). Warnings for rejected input; an error when inference fails.
"""
from __future__ import annotations

import json
import logging
import threading

import numpy as np

from .element_props import PROPERTIES, READ_ONLY_STATS, RESTART_PROPS
from .gst import GLib, GObject, Gst, GstVideo
from .text_pad import TEXT_CAPS, TextFeeder

log = logging.getLogger("vlmedge.pipelines")

# Packed 8-bit formats a frame can be read from without a conversion element; the index picks R, G, B.
RGB_ORDER = {"RGB": (0, 1, 2), "BGR": (2, 1, 0), "RGBA": (0, 1, 2), "RGBx": (0, 1, 2), "BGRA": (2, 1, 0),
             "BGRx": (2, 1, 0), "ARGB": (1, 2, 3), "xRGB": (1, 2, 3), "ABGR": (3, 2, 1), "xBGR": (3, 2, 1)}
VIDEO_CAPS = f"video/x-raw, format=(string){{ {', '.join(RGB_ORDER)} }}"
AUDIO_CAPS = "audio/x-raw, format=(string)F32LE, rate=(int)16000, channels=(int)1, layout=(string)interleaved"


def _struct(name: str, fields: dict) -> Gst.Structure:
    s = Gst.Structure.new_empty(name)
    for key, value in fields.items():
        if value is None:
            continue
        if isinstance(value, int) and not isinstance(value, bool) and abs(value) >= 2 ** 31:
            value = float(value)  # gint would overflow
        s.set_value(key.replace("_", "-"), value)
    return s


class VlmEdge(Gst.Element):
    __gtype_name__ = "GstVlmEdge"  # default instance names become vlmedge0, vlmedge1, ...
    __gstmetadata__ = (
        "vlmedge", "Filter/Analyzer/Video",
        "Answers questions about a live video (and audio) stream with a vision-language model whose visual "
        "tokens are compressed (STC, OmniZip, Script, GlimpsePrune); video passes through unchanged",
        "vlmedge developers")
    __gsttemplates__ = (
        Gst.PadTemplate.new("sink", Gst.PadDirection.SINK, Gst.PadPresence.ALWAYS, Gst.Caps.from_string(VIDEO_CAPS)),
        Gst.PadTemplate.new("src", Gst.PadDirection.SRC, Gst.PadPresence.ALWAYS, Gst.Caps.from_string(VIDEO_CAPS)),
        Gst.PadTemplate.new("text_src", Gst.PadDirection.SRC, Gst.PadPresence.ALWAYS, Gst.Caps.from_string(TEXT_CAPS)),
        Gst.PadTemplate.new("audio_sink", Gst.PadDirection.SINK, Gst.PadPresence.ALWAYS,
                            Gst.Caps.from_string(AUDIO_CAPS)),
    )
    __gproperties__ = PROPERTIES

    def __init__(self):
        super().__init__()
        self.props_ = {name: spec[-2] for name, spec in PROPERTIES.items() if name not in READ_ONLY_STATS}
        self._early_questions: list[str] = []  # asked before the stream started
        self._last_stats = None  # the worker's counters after its stream stopped
        self.sinkpad = self._pad("sink", chain=self._video_chain, event=self._video_event, query=self._video_query)
        self.srcpad = self._pad("src", event=self._src_event, query=self._src_query)
        self.textpad = self._pad("text_src", event=self._text_src_event, query=self._text_src_query)
        self.audiopad = self._pad("audio_sink", chain=self._audio_chain, event=self._audio_event)
        self.adapter = None
        self._loaded = None  # (model, backend) the adapter came from
        self.model_note = ""
        self.worker = None
        self.text = None
        self._lock = threading.Lock()
        self._reset_counters()

    def _pad(self, name, chain=None, event=None, query=None) -> Gst.Pad:
        pad = Gst.Pad.new_from_template(self.get_pad_template(name), name)
        if chain:
            pad.set_chain_function_full(chain)
        if event:
            pad.set_event_function_full(event)
        if query:
            pad.set_query_function_full(query)
        self.add_pad(pad)
        return pad

    def _reset_counters(self) -> None:
        self.counts = {"frames-in": 0, "frames-out": 0, "frames-sampled": 0}
        self._video_info = None
        self._rgb = (0, 1, 2)
        self._segment = Gst.Segment()
        self._segment.init(Gst.Format.TIME)
        self._audio_segment = Gst.Segment()
        self._audio_segment.init(Gst.Format.TIME)
        self._next_sample: float | None = None
        self._failed = False
        self._warned_audio = False

    # ----- properties -----
    def do_get_property(self, prop):
        name = prop.name
        if name in READ_ONLY_STATS:
            if name in self.counts:
                return self.counts[name]
            st = self.worker.stats if self.worker else self._last_stats
            if name == "stats":
                return json.dumps(self.stats())
            return {"frames-processed": st.frames_processed if st else 0,
                    "frames-dropped": st.frames_dropped if st else 0,
                    "answers": st.answers if st else 0}[name]
        return self.props_[name]

    def do_set_property(self, prop, value):
        name = prop.name
        self.props_[name] = value
        running = self.worker is not None
        if name == "question":
            if value and value.strip():
                self.ask(value.strip())
        elif running and name in RESTART_PROPS:
            log.warning("vlmedge: %s changed while running; it applies from the next start (READY -> PAUSED)", name)
        elif running and name in ("prompt", "prompt-interval", "drop-frames"):
            self.worker.prompt = self.props_["prompt"] or None
            self.worker.prompt_interval_s = self.props_["prompt-interval"]
            self.worker.drop_frames = self.props_["drop-frames"]

    def ask(self, question: str) -> None:
        """Asks once, about the stream so far (also what setting `question` does)."""
        with self._lock:
            if self.worker is not None:
                self.worker.ask(question)
            else:
                self._early_questions.append(question)

    def stats(self) -> dict:
        """Counters of the running stream, or of the last one once it has stopped."""
        out = dict(self.counts)
        st = self.worker.stats if self.worker else self._last_stats
        if st is not None:
            out.update({k.replace("_", "-"): v for k, v in st.to_dict().items()})
        return out

    # ----- state changes -----
    def do_change_state(self, transition):
        try:
            if transition == Gst.StateChange.NULL_TO_READY:
                self._load()
            elif transition == Gst.StateChange.READY_TO_PAUSED:
                self._load()
                self._start_stream()
        except Exception as err:  # the reason goes on the bus; the state change fails cleanly
            self._post_error(f"could not start: {err}", err)
            return Gst.StateChangeReturn.FAILURE
        ret = Gst.Element.do_change_state(self, transition)
        if transition == Gst.StateChange.PAUSED_TO_READY:
            self._stop_stream()
        elif transition == Gst.StateChange.READY_TO_NULL:
            self.adapter, self._loaded = None, None
        return ret

    def _remote_split(self) -> str | None:
        """None when the model runs here; else the server split, checked so a typo fails the state change."""
        if not self.props_["server"].strip():
            return None
        from vlmedge.runtime.serving.protocol import SPLITS

        split = self.props_["server-split"].strip() or "frames"
        if split not in SPLITS:
            raise ValueError(f"server-split must be one of {', '.join(SPLITS)}, got {split!r}")
        return split

    def _load(self) -> None:
        if self._remote_split() == "frames":  # the server holds the model: nothing to load here
            return
        key = (self.props_["model"], self.props_["backend"])
        if self._loaded == key:
            return
        from vlmedge.models import camworld
        from vlmedge.runtime.model_source import open_model

        self.adapter, self.model_note = open_model(key[0], key[1], words=camworld.vocabulary())
        self._loaded = key
        Gst.info(f"vlmedge: loaded {self.model_note}")

    def _start_stream(self) -> None:
        p = self.props_
        worker = self._remote_worker() if self._remote_split() else self._local_worker()
        self._reset_counters()
        self.text = TextFeeder(self.textpad, f"{self.get_name()}/answers", int(p["answer-duration"] * Gst.SECOND))
        self.text.start()
        worker.start()
        with self._lock:
            self.worker = worker
            early, self._early_questions = self._early_questions, []
        for q in early:
            worker.ask(q)

    def _local_worker(self):
        from vlmedge.runtime import StreamingSession

        from .worker import InferenceWorker

        p = self.props_
        session = StreamingSession(self.adapter, p["method"] or "none", max_new_tokens=p["max-new-tokens"],
                                   standing_prompt=p["prompt"] or None, memory_budget=p["memory-budget"] or None,
                                   eviction=p["eviction"])
        return InferenceWorker(session, on_answer=self._on_answer, on_frame=self._on_frame,
                               on_warning=self._on_warning, on_error=self._on_error, drop_frames=p["drop-frames"],
                               prompt=p["prompt"] or None, prompt_interval_s=p["prompt-interval"],
                               audio_wait_s=p["audio-wait"])

    def _remote_worker(self):
        """The model on a `vlmedge serve` server: same callbacks and counters as the local worker. The server's
        own session settings (method, memory budget, answer length) apply; with the tokens split the vision
        tower and compressor run here. This element already samples at sample-fps, so the edge encoder takes
        every frame it is handed."""
        import uuid

        from vlmedge.runtime.serving.remote_worker import RemoteWorker

        p = self.props_
        edge = None
        split = self._remote_split()
        if split == "tokens":
            from vlmedge.runtime.serving.tokens_split import EdgeEncoder

            edge = EdgeEncoder(self.adapter, p["method"] or "none", sample_fps=None)
        stream_id = p["stream-id"].strip() or f"{self.get_name()}-{uuid.uuid4().hex[:8]}"
        return RemoteWorker(p["server"].strip(), stream_id, on_answer=self._on_answer, on_frame=self._on_frame,
                            on_warning=self._on_warning, on_error=self._on_error, drop_frames=p["drop-frames"],
                            prompt=p["prompt"] or None, prompt_interval_s=p["prompt-interval"], split=split,
                            edge=edge)

    def _stop_stream(self) -> None:
        with self._lock:
            worker, self.worker = self.worker, None
        if worker is not None:
            worker.stop()
            self._last_stats = worker.stats
        if self.text is not None:
            self.text.stop()
            self.text = None

    # ----- results from the worker thread -----
    def _on_answer(self, ans: dict) -> None:
        fields = dict(ans)
        fields["json"] = json.dumps(ans)
        self.post_message(Gst.Message.new_element(self, _struct("vlmedge-answer", fields)))
        if self.text is not None:
            self.text.answer(ans["answer"])
        Gst.info(f"vlmedge answer: {ans['question']!r} -> {ans['answer']!r} ({ans['latency_ms']} ms)")
        log.info("answer: %r -> %r (%s ms)", ans["question"], ans["answer"], ans["latency_ms"])

    def _on_frame(self, st) -> None:
        if self.props_["frame-stats"]:
            self.post_message(Gst.Message.new_element(self, _struct("vlmedge-frame", {
                "index": st.index, "stream_time": float(st.time_s), "tokens_in": st.tokens_in,
                "tokens_kept": st.tokens_kept, "encode_ms": float(st.encode_ms),
                "compress_ms": float(st.compress_ms), "prefill_ms": float(st.prefill_ms)})))

    def _on_warning(self, msg: str) -> None:
        err = GLib.Error.new_literal(Gst.stream_error_quark(), msg, int(Gst.StreamError.FAILED))
        self.post_message(Gst.Message.new_warning(self, err, msg))
        log.warning("%s", msg)

    def _on_error(self, msg: str) -> None:
        self._failed = True
        self._post_error(f"inference failed: {msg.splitlines()[0]}", None, debug=msg)

    def _post_error(self, text: str, err, debug: str | None = None) -> None:
        gerr = GLib.Error.new_literal(Gst.stream_error_quark() if err is None else Gst.resource_error_quark(), text,
                                      int(Gst.StreamError.FAILED if err is None else Gst.ResourceError.SETTINGS))
        self.post_message(Gst.Message.new_error(self, gerr, debug or text))
        log.error("%s", debug or text)

    # ----- video -----
    def stream_time(self, pts) -> float | None:
        """Seconds of stream time of a video timestamp in the current segment (None if it has none)."""
        return self._stream_time(self._segment, pts)

    def _stream_time(self, segment: Gst.Segment, pts) -> float | None:
        if pts is None or pts == Gst.CLOCK_TIME_NONE:
            return None
        st = segment.to_stream_time(Gst.Format.TIME, pts)
        return None if st == Gst.CLOCK_TIME_NONE or st < 0 else st / Gst.SECOND

    def _due(self, t: float) -> bool:
        fps = self.props_["sample-fps"]
        if fps <= 0:
            return True
        if self._next_sample is not None and t + 1e-9 < self._next_sample:
            return False
        step, base = 1.0 / fps, (self._next_sample if self._next_sample is not None else t)
        while base <= t + 1e-9:
            base += step
        self._next_sample = base
        return True

    def _frame(self, buf: Gst.Buffer) -> np.ndarray | None:
        info = self._video_info
        if info is None:
            return None
        h, w = info.height, info.width
        offset, stride = info.offset[0], info.stride[0]
        meta = GstVideo.buffer_get_video_meta(buf)
        if meta is not None:
            offset, stride = meta.offset[0], meta.stride[0]
        bpp = info.finfo.pixel_stride[0]
        ok, mapped = buf.map(Gst.MapFlags.READ)
        if not ok:
            return None
        try:
            data = np.frombuffer(mapped.data, np.uint8)
            need = offset + stride * (h - 1) + w * bpp
            if data.size < need:
                raise ValueError(f"video buffer holds {data.size} bytes; {w}x{h} {info.finfo.name} needs {need}")
            rows = np.lib.stride_tricks.as_strided(data[offset:], (h, w, bpp), (stride, bpp, 1))
            return np.ascontiguousarray(rows[..., list(self._rgb)])
        finally:
            buf.unmap(mapped)

    def _video_chain(self, pad, parent, buf):
        self.counts["frames-in"] += 1
        worker = self.worker
        if worker is not None and not self._failed:
            t = self._stream_time(self._segment, buf.pts)
            if t is None:  # untimestamped video: frame count over the negotiated rate
                fps = self._video_info.fps_n / self._video_info.fps_d if self._video_info and self._video_info.fps_n else 1.0
                t = (self.counts["frames-in"] - 1) / fps
            if self._due(t):
                try:
                    frame = self._frame(buf)
                except ValueError as err:
                    self._on_warning(f"frame at {t:.3f}s skipped: {err}")
                    frame = None
                if frame is not None:
                    self.counts["frames-sampled"] += 1
                    worker.submit_frame(frame, t)
        if self.text is not None:
            dur = buf.duration
            if dur in (None, Gst.CLOCK_TIME_NONE) and self._video_info and self._video_info.fps_n:
                dur = Gst.SECOND * self._video_info.fps_d // self._video_info.fps_n
            self.text.gap(buf.pts, dur)
        ret = self.srcpad.push(buf)
        if ret == Gst.FlowReturn.OK:
            self.counts["frames-out"] += 1
        return Gst.FlowReturn.ERROR if self._failed else ret

    def _video_event(self, pad, parent, event):
        t = event.type
        if t == Gst.EventType.CAPS:
            caps = event.parse_caps()
            info = GstVideo.VideoInfo.new_from_caps(caps)
            fmt = info.finfo.name if info else None
            if fmt not in RGB_ORDER:
                self._on_warning(f"video caps {caps.to_string()} are not one of {', '.join(RGB_ORDER)}; "
                                 "put videoconvert before vlmedge")
                return False
            self._video_info, self._rgb = info, RGB_ORDER[fmt]
        elif t == Gst.EventType.SEGMENT:
            self._segment = event.parse_segment().copy()
            self._next_sample = None
            if self.text is not None:
                self.text.segment(self._segment)
        elif t == Gst.EventType.FLUSH_START:  # unblock: a chain call may still be running
            if self.worker is not None:
                self.worker.discard_frames()
            if self.text is not None:
                self.text.flush_start()
        elif t == Gst.EventType.FLUSH_STOP:  # no chain call from before the seek is left: start a new stream
            if self.worker is not None:
                self.worker.flush()
            self._next_sample = None
            if self.text is not None:
                self.text.flush_stop()
        elif t == Gst.EventType.EOS:
            worker = self.worker
            if worker is not None and not self._failed:
                worker.finish()
                self.post_message(Gst.Message.new_element(self, _struct("vlmedge-stats", {
                    "json": json.dumps(self.stats())})))
            if self.text is not None:
                self.text.eos()
        return self.srcpad.push_event(event)

    def _video_query(self, pad, parent, query):
        if query.type == Gst.QueryType.CAPS:
            return self._proxy_caps(query, self.srcpad, pad)
        return self.srcpad.peer_query(query)

    def _src_query(self, pad, parent, query):
        if query.type == Gst.QueryType.CAPS:
            return self._proxy_caps(query, self.sinkpad, pad)
        return self.sinkpad.peer_query(query)

    @staticmethod
    def _proxy_caps(query, other: Gst.Pad, pad: Gst.Pad) -> bool:
        """Video passes through, so either video pad accepts what the other side's peer accepts."""
        filt = query.parse_caps()
        templ = pad.get_pad_template_caps()
        peer = other.peer_query_caps(filt)
        caps = peer.intersect(templ) if peer is not None else templ
        query.set_caps_result(caps.intersect(filt) if filt is not None else caps)
        return True

    def _src_event(self, pad, parent, event):
        return self.sinkpad.push_event(event)  # seeks, QoS, navigation: to the video upstream

    def _text_src_event(self, pad, parent, event):
        # Upstream events from the text branch stop here: the same seek also arrives through the video branch,
        # and forwarding both would seek twice.
        return True

    def _text_src_query(self, pad, parent, query):
        if query.type == Gst.QueryType.CAPS:
            caps = Gst.Caps.from_string(TEXT_CAPS)
            filt = query.parse_caps()
            query.set_caps_result(caps.intersect(filt) if filt is not None else caps)
            return True
        if query.type == Gst.QueryType.LATENCY:
            return self.sinkpad.peer_query(query)
        return pad.query_default(parent, query)

    # ----- audio -----
    def _audio_chain(self, pad, parent, buf):
        worker = self.worker
        if worker is None or self._failed:
            return Gst.FlowReturn.OK
        if worker.audio is None:
            if not self._warned_audio:
                self._warned_audio = True
                self._on_warning(f"{self.model_note} has no audio tower; the audio pad's data is ignored")
            return Gst.FlowReturn.OK
        t = self._stream_time(self._audio_segment, buf.pts)
        ok, mapped = buf.map(Gst.MapFlags.READ)
        if not ok:
            return Gst.FlowReturn.OK
        try:
            samples = np.frombuffer(mapped.data, np.float32).copy()
        finally:
            buf.unmap(mapped)
        if t is not None:
            worker.submit_audio(samples, t)
        return Gst.FlowReturn.OK

    def _audio_event(self, pad, parent, event):
        t = event.type
        if t == Gst.EventType.SEGMENT:
            self._audio_segment = event.parse_segment().copy()
        elif t == Gst.EventType.EOS and self.worker is not None:
            self.worker.audio_eos()
        return True  # audio ends here: nothing of it leaves the element


GObject.type_register(VlmEdge)


def register(plugin=None) -> bool:
    """Registers `vlmedge` with GStreamer in this process (no plugin path needed)."""
    return Gst.Element.register(plugin, "vlmedge", Gst.Rank.NONE, VlmEdge)
