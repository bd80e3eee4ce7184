"""The inference worker and the audio track, without GStreamer: ordering, latest-frame-wins, back-pressure,
errors, and audio cut into one-second chunks aligned to the video."""
import threading
import time

import numpy as np
import pytest

from vlmedge.errors import InputError
from vlmedge.pipelines.audio_track import AudioTrack
from vlmedge.pipelines.worker import InferenceWorker
from vlmedge.runtime.records import Answer, FrameStats


class FakeAdapter:
    def __init__(self, audio=False):
        self.has_audio = audio


class FakeSession:
    """Records what the worker does to it, in order; push_frame can be slowed down or made to fail."""

    def __init__(self, delay=0.0, audio=False, fail_at=None, reject_at=None):
        self.adapter = FakeAdapter(audio)
        self.delay, self.fail_at, self.reject_at = delay, fail_at, reject_at
        self.log, self.frame_stats = [], []
        self.gate = threading.Event()
        self.gate.set()
        self.entered = threading.Event()

    def push_frame(self, frame, time_s):
        self.entered.set()
        self.gate.wait()
        time.sleep(self.delay)
        if self.fail_at is not None and len(self.frame_stats) == self.fail_at:
            raise RuntimeError("CUDA out of memory (simulated)")
        if self.reject_at is not None and int(frame[0, 0, 0]) == self.reject_at:
            raise InputError("bad frame (simulated)")
        self.log.append(("frame", int(frame[0, 0, 0]), round(time_s, 3)))
        st = FrameStats(len(self.frame_stats), time_s, 4, 2, 1.0, 0.1, 1.0)
        self.frame_stats.append(st)
        return st

    def push_audio(self, wave, time_s):
        self.log.append(("audio", round(time_s, 3), wave.size, round(float(wave.mean()), 3)))
        return 1

    def ask(self, question):
        self.log.append(("ask", question))
        return Answer(question, f"answer to {question}", [1], 10, len(self.frame_stats), 1.0, 2.0, "eos")

    def reset(self):
        self.log.append(("reset",))
        self.frame_stats = []

    def flush(self):
        self.log.append(("flush",))


def frame(v):
    return np.full((4, 4, 3), v, np.uint8)


def make(session, **kw):
    answers, warnings, errors = [], [], []
    w = InferenceWorker(session, on_answer=answers.append, on_warning=warnings.append, on_error=errors.append, **kw)
    w.start()
    return w, answers, warnings, errors


def test_blocking_mode_processes_every_frame_in_order_with_questions_between():
    s = FakeSession(delay=0.01)
    w, answers, _, errors = make(s, drop_frames=False)
    for i in range(5):
        assert w.submit_frame(frame(i), 10.0 + i * 0.5)
        if i == 2:
            w.ask("q after frame 2")
    assert w.finish(timeout=10)
    w.stop()
    assert not errors
    assert [e for e in s.log if e[0] != "flush"] == [
        ("frame", 0, 0.0), ("frame", 1, 0.5), ("frame", 2, 1.0), ("ask", "q after frame 2"),
        ("frame", 3, 1.5), ("frame", 4, 2.0)]  # times are relative to the first frame
    assert w.stats.frames_processed == 5 and w.stats.frames_dropped == 0
    assert answers[0]["question"] == "q after frame 2" and answers[0]["answer"] == "answer to q after frame 2"
    assert answers[0]["stream_time_s"] == 11.0  # stream time of the last frame before the question


def test_latest_frame_wins_when_the_model_is_slow():
    s = FakeSession()
    s.gate.clear()  # the model is stuck on the first frame
    w, _, _, _ = make(s, drop_frames=True)
    t0 = time.monotonic()
    assert w.submit_frame(frame(0), 0.0)
    assert s.entered.wait(5)
    for i in range(1, 10):
        assert w.submit_frame(frame(i), i * 0.1)
    assert time.monotonic() - t0 < 1.0  # the producer never waited for the model
    s.gate.set()
    assert w.finish(timeout=10)
    w.stop()
    processed = [e[1] for e in s.log if e[0] == "frame"]
    assert processed == [0, 9]  # the frame in progress, then only the newest
    assert w.stats.frames_submitted == 10
    assert w.stats.frames_processed == len(processed)
    assert w.stats.frames_dropped == 8


def test_blocking_mode_makes_the_producer_wait():
    s = FakeSession(delay=0.05)
    w, _, _, _ = make(s, drop_frames=False)
    t0 = time.monotonic()
    for i in range(6):
        w.submit_frame(frame(i), i * 0.1)
    waited = time.monotonic() - t0
    assert w.finish(timeout=10)
    w.stop()
    assert w.stats.frames_processed == 6 and w.stats.frames_dropped == 0
    assert waited >= 0.15  # at least the first frames' processing time was waited for


def test_bad_frame_is_a_warning_and_the_stream_goes_on():
    s = FakeSession(reject_at=1)
    w, _, warnings, errors = make(s, drop_frames=False)
    for i in range(3):
        w.submit_frame(frame(i), i * 0.5)
    assert w.finish(timeout=10)
    w.stop()
    assert [e[1] for e in s.log if e[0] == "frame"] == [0, 2]
    assert warnings == ["bad frame (simulated)"] and not errors
    assert w.stats.frames_rejected == 1


def test_model_failure_reports_once_and_never_blocks_the_producer():
    s = FakeSession(fail_at=1)
    w, _, _, errors = make(s, drop_frames=False)
    w.submit_frame(frame(0), 0.0)
    w.submit_frame(frame(1), 0.5)
    deadline = time.monotonic() + 5
    while not errors and time.monotonic() < deadline:
        time.sleep(0.01)
    assert len(errors) == 1 and errors[0].startswith("RuntimeError: CUDA out of memory (simulated)")
    assert w.submit_frame(frame(2), 1.0) is False  # refused at once, not queued behind a dead thread
    assert w.finish(timeout=1) is False
    w.stop()


def test_standing_prompt_on_schedule_and_at_end():
    s = FakeSession()
    w, answers, _, _ = make(s, drop_frames=False, prompt="what now?", prompt_interval_s=1.0)
    for i in range(7):
        w.submit_frame(frame(i), i * 0.5)  # 0 .. 3 s
    assert w.finish(timeout=10)
    w.stop()
    asked_after = [s.log[i - 1][1] for i, e in enumerate(s.log) if e[0] == "ask"]
    assert asked_after == [2, 4, 6]  # frames at 1.0, 2.0 and 3.0 s
    assert all(a["source"] == "prompt" for a in answers)
    s2 = FakeSession()
    w2, answers2, _, _ = make(s2, drop_frames=False, prompt="summary?", prompt_interval_s=0)
    for i in range(3):
        w2.submit_frame(frame(i), i * 0.5)
    assert w2.finish(timeout=10)
    w2.stop()
    assert [e for e in s2.log if e[0] == "ask"] == [("ask", "summary?")] and s2.log[-1] == ("flush",)


def test_flush_resets_the_stream_before_the_next_frame():
    s = FakeSession()
    w, _, _, _ = make(s, drop_frames=False)
    w.submit_frame(frame(0), 5.0)
    w.submit_frame(frame(1), 5.5)
    assert w.finish(timeout=10)
    w.flush()
    w.submit_frame(frame(2), 2.0)  # after a seek back: a new stream with its own origin
    assert w.finish(timeout=10)
    w.stop()
    frames_and_resets = [e for e in s.log if e[0] in ("frame", "reset")]
    assert frames_and_resets == [("frame", 0, 0.0), ("frame", 1, 0.5), ("reset",), ("frame", 2, 0.0)]


def test_audio_goes_in_before_the_frame_at_the_end_of_its_second():
    s = FakeSession(audio=True)
    w, _, _, _ = make(s, drop_frames=False, audio_wait_s=2.0)
    sr = 16000
    # audio in 0.25 s buffers of constant value = its second index, from stream time 3.0 (= the video origin)
    for k in range(10):
        w.submit_audio(np.full(sr // 4, float(k // 4), np.float32), 3.0 + k * 0.25)
    for i in range(5):
        w.submit_frame(frame(i), 3.0 + i * 0.5)
    assert w.finish(timeout=10)
    w.stop()
    kinds = [(e[0], e[1]) for e in s.log if e[0] in ("frame", "audio")]
    assert kinds == [("frame", 0), ("frame", 1), ("audio", 0.0), ("frame", 2), ("frame", 3), ("audio", 1.0),
                     ("frame", 4), ("audio", 2.0)]
    audio = [e for e in s.log if e[0] == "audio"]
    assert [a[2] for a in audio] == [sr, sr, sr // 2]  # the last one is the partial second flushed at EOS
    assert [a[3] for a in audio] == [0.0, 1.0, 2.0]
    assert w.stats.audio_chunks == 3


def test_audio_lagging_the_video_is_waited_for():
    s = FakeSession(audio=True)
    w, _, _, _ = make(s, drop_frames=False, audio_wait_s=5.0)
    sr = 16000
    w.submit_audio(np.zeros(sr // 2, np.float32), 0.0)  # audio is active but only covers 0.5 s
    w.submit_frame(frame(0), 0.0)
    w.submit_frame(frame(1), 1.0)  # needs audio up to 1.0 s first

    def late():
        time.sleep(0.3)
        w.submit_audio(np.ones(sr, np.float32), 0.5)

    threading.Thread(target=late).start()
    assert w.finish(timeout=10)
    w.stop()
    kinds = [(e[0], e[1]) for e in s.log if e[0] in ("frame", "audio")]
    assert kinds[:3] == [("frame", 0), ("audio", 0.0), ("frame", 1)]
    first = [e for e in s.log if e[0] == "audio"][0]
    assert first[2] == sr and first[3] == 0.5  # half silence-free zeros, half ones


def test_audio_track_fills_gaps_trims_overlaps_and_aligns_to_the_video():
    tr = AudioTrack(sample_rate=10)
    tr.add(np.ones(10, np.float32), 0.0)
    tr.add(2 * np.ones(5, np.float32), 1.5)  # 0.5 s gap -> 5 zeros
    tr.add(3 * np.ones(5, np.float32), 1.8)  # overlaps 0.2 s -> 2 samples trimmed
    assert tr.gap_samples == 5 and tr.trimmed_samples == 2
    assert tr.end_time == pytest.approx(2.3)
    tr.set_origin(0.5)  # video starts at 0.5 s: chunk k covers [0.5 + k, 1.5 + k)
    chunks = tr.take_until(5.0)
    assert [c[0] for c in chunks] == [0.0]
    np.testing.assert_array_equal(chunks[0][1], [1, 1, 1, 1, 1, 0, 0, 0, 0, 0])
    rest = tr.take_until(5.0, final=True)
    np.testing.assert_array_equal(rest[0][1], [2, 2, 2, 2, 2, 3, 3, 3])  # overlap trimmed from the later buffer
    with pytest.raises(InputError, match="finite"):
        tr.add(np.array([np.nan], np.float32), 3.0)
