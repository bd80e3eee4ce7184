"""Streaming session behaviour: sampling, independence of sessions, bad input, method state."""
import numpy as np
import pytest
import torch

from conftest import make_frames
from vlmedge.errors import InputError
from vlmedge.runtime import StreamingSession


def test_frames_are_sampled_at_sample_fps(tiny_adapters):
    s = StreamingSession(tiny_adapters["llava_onevision"], "none", sample_fps=2.0)
    frames = make_frames(10)
    kept = [s.push_frame(f, time_s=i * 0.1) for i, f in enumerate(frames)]  # a 10 fps source
    assert [k.time_s for k in kept if k is not None] == [0.0, 0.5]
    assert s.frames_seen == 10 and s.frames_skipped == 8


def test_stats_count_tokens_and_cache_grows_by_kept_tokens(tiny_adapters):
    a = tiny_adapters["qwen2_5_vl"]
    s = StreamingSession(a, "uniform:ratio=0.25")
    start = s.stream_tokens
    st = s.push_frame(make_frames(1)[0])
    assert st.tokens_in == 24 and st.tokens_kept == 6
    assert s.stream_tokens == start + 6
    assert st.encode_ms > 0 and st.prefill_ms > 0


def test_two_interleaved_sessions_stay_independent(tiny_adapters):
    a = tiny_adapters["llava_onevision"]
    f1, f2 = make_frames(3, seed=1), make_frames(3, seed=2)
    solo1 = StreamingSession(a, "random:ratio=0.5,seed=1", keep_logits=True)
    for i, f in enumerate(f1):
        solo1.push_frame(f, time_s=i)
    ref = solo1.ask("what color is the square ?", max_new_tokens=2)

    s1 = StreamingSession(a, "random:ratio=0.5,seed=1", keep_logits=True)
    s2 = StreamingSession(a, "random:ratio=0.5,seed=1", keep_logits=True)
    for i in range(3):
        s1.push_frame(f1[i], time_s=i)
        s2.push_frame(f2[i], time_s=i)
        s2.ask("how many objects ?", max_new_tokens=2)
    got = s1.ask("what color is the square ?", max_new_tokens=2)
    torch.testing.assert_close(torch.stack(got.logits), torch.stack(ref.logits))
    other = s2.ask("what color is the square ?", max_new_tokens=2)
    assert not torch.allclose(torch.stack(other.logits), torch.stack(ref.logits))


def test_reset_starts_a_fresh_stream(tiny_adapters):
    a = tiny_adapters["qwen2_5_omni"]
    s = StreamingSession(a, "random:ratio=0.5,seed=4", keep_logits=True)
    frames = make_frames(2)
    for i, f in enumerate(frames):
        s.push_frame(f, time_s=i)
    first = s.ask("where is the red circle ?", max_new_tokens=1).logits[0]
    s.reset()
    assert s.frame_stats == [] and s.positions.origin is None
    for i, f in enumerate(frames):
        s.push_frame(f, time_s=i)
    torch.testing.assert_close(s.ask("where is the red circle ?", max_new_tokens=1).logits[0], first)


@pytest.mark.parametrize("bad,msg", [
    (np.zeros((3, 40, 60), dtype=np.uint8), "channels-first"),
    (np.zeros((40, 60, 4), dtype=np.uint8), "RGBA"),
    (np.zeros((40, 60), dtype=np.uint8), r"shape \(H, W, 3\)"),
    (np.zeros((40, 60, 3), dtype=np.float32), "uint8"),
    (torch.zeros(40, 60, 3, dtype=torch.int64), "uint8"),
    ([[1, 2, 3]], "numpy array or torch tensor"),
    (np.zeros((1, 60, 3), dtype=np.uint8), "at least 2x2"),
])
def test_bad_frames_are_rejected_and_the_stream_survives(tiny_adapters, bad, msg):
    a = tiny_adapters["llava_onevision"]
    s = StreamingSession(a, "none", keep_logits=True)
    good = make_frames(2)
    s.push_frame(good[0], time_s=0.0)
    before = s.stream_tokens
    with pytest.raises(InputError, match=msg):
        s.push_frame(bad, time_s=0.5)
    assert s.stream_tokens == before and s.frames_rejected == 1
    s.push_frame(good[1], time_s=1.0)
    ref = StreamingSession(a, "none", keep_logits=True)
    ref.push_frame(good[0], time_s=0.0)
    ref.push_frame(good[1], time_s=1.0)
    torch.testing.assert_close(s.ask("what ?", max_new_tokens=1).logits[0], ref.ask("what ?", max_new_tokens=1).logits[0])


def test_backwards_timestamps_and_bad_questions_are_rejected(tiny_adapters):
    s = StreamingSession(tiny_adapters["qwen2_5_vl"], "none")
    s.push_frame(make_frames(1)[0], time_s=1.0)
    with pytest.raises(InputError, match="backwards"):
        s.push_frame(make_frames(1)[0], time_s=0.5)
    with pytest.raises(InputError, match="non-empty"):
        s.ask("   ")
    with pytest.raises(InputError, match="max_new_tokens"):
        s.ask("what ?", max_new_tokens=0)
    with pytest.raises(InputError, match="sample_fps"):
        StreamingSession(tiny_adapters["qwen2_5_vl"], "none", sample_fps=0)


def test_omni_stream_takes_audio_on_the_shared_time_axis(tiny_adapters):
    a = tiny_adapters["qwen2_5_omni"]
    s = StreamingSession(a, "none")
    s.push_frame(make_frames(1)[0], time_s=0.0)
    n = s.push_audio((np.random.default_rng(0).standard_normal(16000) * 0.1).astype(np.float32), time_s=0.0)
    assert n == 25
    assert s.positions.next >= s.positions.origin + 25  # 1 s of audio spans 25 time ids
    assert s.ask("what sound ?", max_new_tokens=1).text is not None
    # the chunk's encoder and prefill time are recorded (bench timing counts audio prefill per frame)
    (st,) = s.audio_stats
    assert (st.time_s, st.tokens) == (0.0, 25) and st.encode_ms > 0 and st.prefill_ms > 0
    # a window method buffers audio: its prefill is the window's, not the chunk's
    w = StreamingSession(a, "omnizip")
    w.push_frame(make_frames(1)[0], time_s=0.0)
    w.push_audio((np.random.default_rng(0).standard_normal(16000) * 0.1).astype(np.float32), time_s=0.0)
    assert w.audio_stats[0].tokens == 25 and w.audio_stats[0].prefill_ms == 0.0
    s.reset()
    assert s.audio_stats == []
