"""The vlmedge element in real GStreamer pipelines, in this process: passthrough, answers on the bus and the
text pad, caps renegotiation, EOS, seeks, audio, errors and back-pressure."""
import hashlib
import json
import time

import numpy as np
import pytest

gi = pytest.importorskip("gi")
try:
    from vlmedge.pipelines.gst import Gst  # onnx/onnxruntime before Gst: see pipelines/gst.py
except (ValueError, ImportError):
    pytest.skip("GStreamer's Python bindings are not installed", allow_module_level=True)

from vlmedge.pipelines import register  # noqa: E402
from vlmedge.pipelines.runner import PipelineError, PipelineRunner  # noqa: E402

TINY = "model=tiny:llava_onevision method=uniform:ratio=0.5 max-new-tokens=3"
RGB = "video/x-raw,format=RGB"


@pytest.fixture(scope="module", autouse=True)
def gst():
    register()


def _digest(buf) -> str:
    ok, m = buf.map(Gst.MapFlags.READ)
    try:
        return hashlib.md5(bytes(m.data)).hexdigest()
    finally:
        buf.unmap(m)


def _record(pad, into):
    def probe(pad, info):
        buf = info.get_buffer()
        into.append((buf.pts, _digest(buf)))
        return Gst.PadProbeReturn.OK

    pad.add_probe(Gst.PadProbeType.BUFFER, probe)


def _collect(appsink, into, text=False):
    def on_sample(sink):
        buf = sink.emit("pull-sample").get_buffer()
        if text:
            ok, m = buf.map(Gst.MapFlags.READ)
            into.append((buf.pts, buf.duration, bytes(m.data).decode()))
            buf.unmap(m)
        else:
            into.append((buf.pts, _digest(buf)))
        return Gst.FlowReturn.OK

    appsink.set_property("emit-signals", True)
    appsink.connect("new-sample", on_sample)


def test_video_passes_through_unchanged_and_answers_reach_bus_and_text_pad():
    runner = PipelineRunner(
        f"videotestsrc num-buffers=24 pattern=smpte ! video/x-raw,width=64,height=48,framerate=8/1 ! videoconvert ! "
        f"{RGB} ! vlmedge name=vlmedge {TINY} sample-fps=4 drop-frames=false prompt=\"what colour ?\" "
        "prompt-interval=1 answer-duration=0.5 ! appsink name=video sync=false "
        "vlmedge.text_src ! appsink name=text sync=false")
    seen_in, seen_out, texts = [], [], []
    _record(runner.element.get_static_pad("sink"), seen_in)
    _collect(runner.pipeline.get_by_name("video"), seen_out)
    _collect(runner.pipeline.get_by_name("text"), texts, text=True)
    runner.ask("how many shapes are there ?")  # before the stream starts: answered as soon as it starts
    result = runner.run(timeout_s=120)
    assert result.eos
    assert len(seen_in) == 24 and seen_out == seen_in  # every frame, same bytes, same timestamps, same order
    st = result.stats
    assert st["frames-in"] == st["frames-out"] == 24
    assert st["frames-sampled"] == st["frames-processed"] == 12 and st["frames-dropped"] == 0
    sources = [a["source"] for a in result.answers]
    assert sources.count("prompt") == 2 and sources.count("question") == 1  # prompt after 1.0 s and 2.0 s
    assert [t[2] for t in texts] == [a["answer"] for a in result.answers]  # the same answers, in order
    assert all(d == Gst.SECOND // 2 for _, d, _ in texts)
    assert [p for p, _, _ in texts] == sorted(p for p, _, _ in texts)
    assert result.answers[0]["source"] == "question" and result.answers[0]["frames"] == 0
    assert [a["frames"] for a in result.answers[1:]] == [5, 9]  # frames at 0, 0.25, ... 1.0 s and ... 2.0 s
    assert all(a["latency_ms"] > 0 and a["stream_tokens"] > 0 for a in result.answers)


def test_textoverlay_draws_answers_and_never_waits_forever_for_text():
    # textoverlay waits for text before drawing a frame; the element's gap events must keep it moving
    runner = PipelineRunner(
        f"videotestsrc num-buffers=30 pattern=black ! video/x-raw,width=160,height=120,framerate=10/1 ! "
        f"videoconvert ! {RGB} ! vlmedge name=vlmedge {TINY} sample-fps=5 drop-frames=false prompt=\"what is it ?\" "
        "prompt-interval=0.5 answer-duration=0.4 ! queue ! ov.video_sink vlmedge.text_src ! queue ! ov.text_sink "
        "textoverlay name=ov wait-text=true ! videoconvert ! " + RGB + " ! appsink name=out sync=false")
    seen_in, seen_out = [], []
    _record(runner.element.get_static_pad("sink"), seen_in)
    _collect(runner.pipeline.get_by_name("out"), seen_out)
    result = runner.run(timeout_s=120)
    assert result.eos and len(seen_out) == 30 and len(result.answers) >= 3
    drawn = sum(a[1] != b[1] for a, b in zip(seen_in, seen_out))
    assert 0 < drawn < 30  # text drawn on frames while an answer is up, not on all of them


def _appsrc_pipeline(extra=""):
    return PipelineRunner(f"appsrc name=src format=time ! vlmedge name=vlmedge {TINY} sample-fps=0 drop-frames=false "
                          f"{extra} ! appsink name=out sync=false")


def _push(src, frames, t0, fps, caps):
    caps = Gst.Caps.from_string(caps)
    for i, f in enumerate(frames):
        h, w, _ = f.shape
        stride = (w * 3 + 3) // 4 * 4  # GStreamer's default RGB row stride
        rows = np.zeros((h, stride), np.uint8)
        rows[:, :w * 3] = f.reshape(h, w * 3)
        buf = Gst.Buffer.new_wrapped(rows.tobytes())
        buf.pts = int((t0 + i / fps) * Gst.SECOND)
        buf.duration = int(Gst.SECOND / fps)
        # a sample carries its caps in order with the buffers (set_caps could overtake queued buffers)
        assert src.emit("push-sample", Gst.Sample.new(buf, caps, None, None)) == Gst.FlowReturn.OK


def test_caps_change_mid_stream_and_eos_flushes_pending_answers():
    runner = _appsrc_pipeline()
    src, out = runner.pipeline.get_by_name("src"), []
    _collect(runner.pipeline.get_by_name("out"), out)
    frames_a = [np.full((48, 64, 3), i * 20, np.uint8) for i in range(4)]
    frames_b = [np.full((72, 98, 3), 200 - i * 20, np.uint8) for i in range(4)]  # RGB rows padded to 296 bytes
    runner.ask_at_end("what color is the shape ?")  # asked as EOS reaches the element: must still be answered
    runner.pipeline.set_state(Gst.State.PAUSED)

    def feed():
        _push(src, frames_a, 0.0, 4, "video/x-raw,format=RGB,width=64,height=48,framerate=4/1")
        _push(src, frames_b, 1.0, 4, "video/x-raw,format=RGB,width=98,height=72,framerate=4/1")
        src.emit("end-of-stream")

    import threading

    threading.Thread(target=feed).start()
    result = runner.run(timeout_s=120)
    assert result.eos and not result.warnings
    assert result.stats["frames-processed"] == 8 and len(out) == 8
    assert [a["question"] for a in result.answers] == ["what color is the shape ?"]
    assert result.answers[0]["frames"] == 8


def test_rgb_family_formats_and_row_padding_reach_the_model_as_the_same_pixels():
    from vlmedge.pipelines.element import VlmEdge

    rng = np.random.default_rng(0)
    img = rng.integers(0, 256, (5, 7, 3), dtype=np.uint8)  # odd width: RGB rows are padded to 4 bytes
    el = VlmEdge()
    for fmt, data in (("RGB", np.pad(img.reshape(5, 21), ((0, 0), (0, 3)))),
                      ("BGRx", np.concatenate([img[..., ::-1], np.zeros((5, 7, 1), np.uint8)], -1)),
                      ("ARGB", np.concatenate([np.full((5, 7, 1), 255, np.uint8), img], -1))):
        caps = Gst.Caps.from_string(f"video/x-raw,format={fmt},width=7,height=5,framerate=1/1")
        assert el._video_event(el.sinkpad, el, Gst.Event.new_caps(caps)) in (True, False)
        frame = el._frame(Gst.Buffer.new_wrapped(np.ascontiguousarray(data).tobytes()))
        np.testing.assert_array_equal(frame, img, err_msg=fmt)


@pytest.mark.parametrize("model, says", [("/nonexistent/model-dir", "does not exist"),
                                         ("CORRUPT", "config.json")])
def test_missing_or_corrupt_model_fails_cleanly_with_the_reason(tmp_path, model, says):
    if model == "CORRUPT":
        (tmp_path / "config.json").write_text("{not json")
        model = str(tmp_path)
    runner = PipelineRunner(f"videotestsrc num-buffers=5 ! videoconvert ! {RGB} ! vlmedge name=vlmedge "
                            f"model={model} ! fakesink")
    t0 = time.monotonic()
    with pytest.raises(PipelineError, match=says):
        runner.run(timeout_s=60)
    assert time.monotonic() - t0 < 30
    assert runner.pipeline.get_state(0)[1] == Gst.State.NULL


def _slowed(runner, fn):
    """Puts the pipeline in PAUSED (stream started, worker up), then wraps the session's push_frame."""
    runner.pipeline.set_state(Gst.State.PAUSED)
    runner.pipeline.get_state(10 * Gst.SECOND)
    session = runner.element.worker.session
    original = session.push_frame
    session.push_frame = lambda frame, time_s=None: fn(original, frame, time_s)


def test_a_slow_model_drops_frames_and_never_stalls_a_live_pipeline():
    runner = PipelineRunner(
        "videotestsrc is-live=true num-buffers=40 ! video/x-raw,width=64,height=48,framerate=20/1 ! videoconvert ! "
        f"{RGB} ! vlmedge name=vlmedge {TINY} sample-fps=0 ! fakesink sync=true")

    def slow(original, frame, t):
        time.sleep(0.25)
        return original(frame, t)

    _slowed(runner, slow)
    result = runner.run(timeout_s=60)
    st = result.stats
    assert result.eos and st["frames-in"] == st["frames-out"] == 40
    assert st["frames-sampled"] == 40
    assert st["frames-dropped"] >= 25 and st["frames-processed"] + st["frames-dropped"] == 40
    # 40 frames through a 0.25 s model would take 10 s without dropping; the video took its own 2 s
    assert result.wall_s < 7


def test_an_inference_error_posts_the_cause_and_the_pipeline_stops():
    runner = PipelineRunner(
        "videotestsrc num-buffers=50 ! video/x-raw,width=64,height=48,framerate=10/1 ! videoconvert ! "
        f"{RGB} ! vlmedge name=vlmedge {TINY} sample-fps=0 drop-frames=false ! fakesink")

    def boom(original, frame, t):
        raise RuntimeError("the accelerator fell off the bus")

    _slowed(runner, boom)
    t0 = time.monotonic()
    with pytest.raises(PipelineError, match="the accelerator fell off the bus"):
        runner.run(timeout_s=60)
    assert time.monotonic() - t0 < 30
    assert runner.pipeline.get_state(0)[1] == Gst.State.NULL


@pytest.fixture(scope="module")
def camworld_clip(tmp_path_factory):
    from vlmedge.models import camworld

    from vlmedge.models.camworld.media import have_gstreamer

    if not have_gstreamer():
        pytest.skip("gst-launch-1.0 is needed to write media")
    stream = camworld.generate(1_000_003, split="eval")
    path = tmp_path_factory.mktemp("clip") / "clip.mkv"
    camworld.write_media(stream, path)
    return stream, path


def test_a_flushing_seek_starts_a_new_stream(camworld_clip):
    _, path = camworld_clip
    runner = PipelineRunner(f"filesrc location={path} ! decodebin ! videoconvert ! {RGB} ! vlmedge name=vlmedge "
                            f"{TINY} frame-stats=true drop-frames=false ! fakesink sync=false")
    pipe, seeked = runner.pipeline, []

    def seek_once(pad, info):
        if not seeked and runner.element.stream_time(info.get_buffer().pts) >= 2.0:
            seeked.append(True)
            # from another thread, as an application would
            import threading

            threading.Thread(target=lambda: pipe.seek_simple(
                Gst.Format.TIME, Gst.SeekFlags.FLUSH | Gst.SeekFlags.ACCURATE, 0)).start()
        return Gst.PadProbeReturn.OK

    runner.element.get_static_pad("src").add_probe(Gst.PadProbeType.BUFFER, seek_once)
    result = runner.run(timeout_s=120)
    assert result.eos and seeked
    st = result.stats
    assert 0 <= st["frames-in"] - st["frames-out"] <= 1  # at most the frame in flight when the seek flushed
    idx = [f["index"] for f in result.frames]
    restart = idx.index(0, 1)  # frame indices start again after the seek: a new stream
    assert idx[restart:] == list(range(8)) and idx[:restart] == list(range(restart))


def test_answers_match_a_streaming_session_fed_the_same_decoded_frames(camworld_clip):
    """The element is the session behind a queue: with every frame used, its answers are the session's."""
    from vlmedge.models import from_pretrained
    from vlmedge.models.reference_models import reference_dir
    from vlmedge.runtime import StreamingSession

    stream, path = camworld_clip
    runner = PipelineRunner(f"filesrc location={path} ! decodebin ! videoconvert ! {RGB} ! vlmedge name=vlmedge "
                            "model=reference method=stc max-new-tokens=4 drop-frames=false ! fakesink sync=false")
    frames = []

    def keep(pad, info):
        buf = info.get_buffer()
        frames.append((runner.element.stream_time(buf.pts), runner.element._frame(buf)))
        return Gst.PadProbeReturn.OK

    runner.element.get_static_pad("sink").add_probe(Gst.PadProbeType.BUFFER, keep)
    questions = sorted(stream.questions, key=lambda q: q.frame)
    for q in questions:
        runner.ask_at(stream.frame_time(q.frame), q.text)
    result = runner.run(timeout_s=180)
    assert len(frames) == len(stream.frames) == result.stats["frames-processed"]

    session = StreamingSession(from_pretrained(reference_dir("llava_onevision")), "stc", max_new_tokens=4)
    expected, qi = [], 0
    for i, (t, frame) in enumerate(frames):
        session.push_frame(frame, time_s=t - frames[0][0])
        while qi < len(questions) and questions[qi].frame <= i:
            expected.append((questions[qi].text, session.ask(questions[qi].text).text.strip()))
            qi += 1
    assert [(a["question"], a["answer"]) for a in result.answers] == expected


def test_omni_models_take_audio_from_the_audio_pad():
    def run(with_audio):
        audio = ("audiotestsrc num-buffers=30 samplesperbuffer=1600 wave=sine ! audio/x-raw,rate=16000 ! "
                 "audioconvert ! audio/x-raw,format=F32LE,rate=16000,channels=1 ! vlmedge.audio_sink"
                 if with_audio else "")
        runner = PipelineRunner(
            "videotestsrc num-buffers=30 ! video/x-raw,width=64,height=48,framerate=10/1 ! videoconvert ! "
            f"{RGB} ! vlmedge name=vlmedge model=tiny:qwen2_5_omni max-new-tokens=2 drop-frames=false "
            f"! fakesink sync=false {audio}")
        runner.ask_at_end("what sound played ?")
        return runner.run(timeout_s=120)

    with_audio, without = run(True), run(False)
    assert with_audio.eos and without.eos
    assert with_audio.stats["audio-chunks"] == 3 and without.stats["audio-chunks"] == 0
    assert with_audio.answers[0]["stream_tokens"] > without.answers[0]["stream_tokens"]


def test_a_video_only_model_ignores_its_audio_pad_with_one_warning():
    runner = PipelineRunner(
        "videotestsrc num-buffers=10 ! video/x-raw,width=64,height=48,framerate=10/1 ! videoconvert ! "
        f"{RGB} ! vlmedge name=vlmedge {TINY} ! fakesink sync=false audiotestsrc num-buffers=10 ! "
        "audioconvert ! audioresample ! audio/x-raw,format=F32LE,rate=16000,channels=1 ! vlmedge.audio_sink")
    result = runner.run(timeout_s=120)
    assert result.eos
    assert sum("no audio tower" in w for w in result.warnings) == 1


def test_stats_property_is_json_and_counts_match():
    runner = PipelineRunner("videotestsrc num-buffers=6 ! video/x-raw,width=32,height=32,framerate=2/1 ! "
                            f"videoconvert ! {RGB} ! vlmedge name=vlmedge {TINY} drop-frames=false ! fakesink")
    runner.run(timeout_s=60)
    st = json.loads(runner.element.get_property("stats"))  # read after the pipeline went back to NULL
    assert st["frames-in"] == 6 == runner.element.get_property("frames-out")
    assert st["frames-processed"] == 6 == runner.element.get_property("frames-processed")


def test_an_export_directory_runs_on_onnx_runtime_with_the_torch_answers(camworld_clip, tmp_path):
    from vlmedge.export import export_model
    from vlmedge.models import from_pretrained
    from vlmedge.models.reference_models import reference_dir

    stream, path = camworld_clip
    out = tmp_path / "export"
    export_model(from_pretrained(reference_dir("llava_onevision")), str(out), "uniform:ratio=0.25",
                 source=reference_dir("llava_onevision"), log=lambda m: None)
    answers = {}
    for model in ("reference", str(out)):
        runner = PipelineRunner(f"filesrc location={path} ! decodebin ! videoconvert ! {RGB} ! vlmedge name=vlmedge "
                                f"model={model} method=uniform:ratio=0.25 max-new-tokens=4 drop-frames=false ! "
                                "fakesink sync=false")
        for q in stream.questions:
            runner.ask_at(stream.frame_time(q.frame), q.text)
        result = runner.run(timeout_s=180)
        assert result.eos and result.stats["frames-processed"] == len(stream.frames)
        answers[model] = [(a["question"], a["answer"]) for a in result.answers]
    assert answers["reference"] == answers[str(out)] and len(answers["reference"]) == len(stream.questions)


def test_onnx_runtime_errors_raise_after_gstreamer_is_loaded():
    """libgstreamer's libunwind made onnxruntime/onnx abort the process on their first C++ exception when they
    were imported after Gst in a process holding torch (pipelines/gst.py imports them first)."""
    import subprocess
    import sys

    code = ("import torch\nfrom vlmedge.pipelines import register\nregister()\nimport onnx, onnxruntime\n"
            "try:\n    onnxruntime.InferenceSession('/nonexistent.onnx')\nexcept Exception as e:\n    print('raised', e.__class__.__name__)\n"
            "try:\n    onnx.defs.get_schema('NoSuchOp', 18, '')\nexcept Exception as e:\n    print('raised', e.__class__.__name__)\n")
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr[-1500:]
    assert res.stdout.split() == ["raised", "NoSuchFile", "raised", "SchemaError"]


def test_memory_budget_bounds_the_stream_inside_the_element():
    """Frames go in until the budget's token store has evicted (its capacity comes from the element's own plan,
    whose workspace is measured in this process), then EOS: the stream stays inside the capacity."""
    import threading

    runner = PipelineRunner(  # appsrc blocks when one frame is queued, so the feeder sees evictions as they happen
        "appsrc name=src format=time block=true max-bytes=13000 ! vlmedge name=vlmedge model=reference "
        "method=uniform:ratio=0.25 "
        "memory-budget=32MiB sample-fps=0 max-new-tokens=2 drop-frames=false ! fakesink sync=false")
    src = runner.pipeline.get_by_name("src")
    runner.ask_at_end("how many shapes are there ?")
    runner.pipeline.set_state(Gst.State.PAUSED)
    store = runner.element.worker.session.store
    rng = np.random.default_rng(0)

    def feed():
        caps = "video/x-raw,format=RGB,width=64,height=64,framerate=10/1"
        for i in range(600):
            if store.evicted_blocks >= 5:
                break
            _push(src, [rng.integers(0, 256, (64, 64, 3), dtype=np.uint8)], i / 10, 10, caps)
        src.emit("end-of-stream")

    threading.Thread(target=feed).start()
    result = runner.run(timeout_s=300)
    assert result.eos and store.evicted_blocks >= 5  # the oldest frames left
    ans = result.answers[0]
    assert ans["evicted_tokens"] > 0 and ans["stream_tokens"] <= store.capacity_tokens


def test_state_changes_pause_resume_and_restart():
    """PLAYING → PAUSED → PLAYING mid-stream keeps the stream; a second run of the same pipeline (NULL → PLAYING)
    starts a fresh stream with a fresh worker, and no worker thread is left behind."""
    import threading

    runner = PipelineRunner(
        "videotestsrc is-live=true num-buffers=20 ! video/x-raw,width=32,height=32,framerate=10/1 ! videoconvert ! "
        f"{RGB} ! vlmedge name=vlmedge {TINY} sample-fps=0 frame-stats=true ! fakesink sync=true")
    pipe = runner.pipeline

    def pause_once():
        time.sleep(0.8)
        pipe.set_state(Gst.State.PAUSED)
        time.sleep(0.4)
        pipe.set_state(Gst.State.PLAYING)

    threading.Thread(target=pause_once).start()
    first = runner.run(timeout_s=60)
    assert first.eos and first.stats["frames-in"] == first.stats["frames-out"] == 20
    second = runner.run(timeout_s=60)  # the runner set NULL at the end; this is a new start
    assert second is not first and second.eos and second.stats["frames-in"] == 20
    assert second.frames[0]["index"] == 0  # a new stream counts from 0
    time.sleep(0.2)
    assert not [t for t in threading.enumerate() if t.name in ("vlmedge-inference", "vlmedge-text")]
