"""Query-conditioned methods in the stream: standing prompt at ingest, re-selection for each question."""
import pytest
import torch

from conftest import FAMILIES, make_frames
from vlmedge.errors import InputError
from vlmedge.runtime import StreamingSession

Q = "what color is the square ?"


def _kv(session):
    return [(l.keys.clone(), l.values.clone()) for l in session.cache.layers]


def _play(session, frames, audio=False):
    for i, f in enumerate(frames):
        session.push_frame(f, time_s=float(i))
        if audio:
            session.push_audio(torch.randn(16000, generator=torch.Generator().manual_seed(i)).numpy() * 0.1, float(i))


@pytest.mark.parametrize("family", FAMILIES)
def test_question_sees_frames_selected_for_it_and_leaves_the_stream_unchanged(tiny_adapters, family):
    a = tiny_adapters[family]
    frames = make_frames(4, seed=3)
    audio = a.has_audio
    live = StreamingSession(a, "script:ratio=0.25", keep_logits=True, requery_frames=8)
    _play(live, frames, audio)
    before, tokens = _kv(live), live.stream_tokens
    ans = live.ask(Q, max_new_tokens=3)
    # the same stream committed with the question as its standing prompt: what the answer must equal
    told = StreamingSession(a, "script:ratio=0.25", keep_logits=True, standing_prompt=Q)
    _play(told, frames, audio)
    ref = told.ask(Q, max_new_tokens=3)
    assert ref.requeried_frames == 0  # its selection already is the question's
    assert ans.requeried_frames >= 1 and ans.requery_ms > 0
    assert ans.token_ids == ref.token_ids
    for x, y in zip(ans.logits, ref.logits):
        torch.testing.assert_close(x, y, atol=2e-5, rtol=1e-5)
    assert live.stream_tokens == tokens
    for (k0, v0), (k1, v1) in zip(before, _kv(live)):
        assert torch.equal(k0, k1) and torch.equal(v0, v1)
    # and the stream goes on as if nothing had been asked
    live.push_frame(make_frames(1, seed=9)[0], time_s=4.0)
    told_again = StreamingSession(a, "script:ratio=0.25")
    _play(told_again, frames, audio)
    told_again.push_frame(make_frames(1, seed=9)[0], time_s=4.0)
    for (k0, v0), (k1, v1) in zip(_kv(told_again), _kv(live)):
        torch.testing.assert_close(k0, k1)
        torch.testing.assert_close(v0, v1)


def test_only_the_last_requery_frames_are_redone(tiny_adapters):
    a = tiny_adapters["llava_onevision"]
    s = StreamingSession(a, "script:ratio=0.25", requery_frames=2)
    _play(s, make_frames(5, seed=4))
    assert sum(seg.tokens is not None for seg in s._segments) == 2
    ans = s.ask(Q, max_new_tokens=1)
    assert 0 <= ans.requeried_frames <= 2
    off = StreamingSession(a, "script:ratio=0.25", requery_frames=0)
    _play(off, make_frames(5, seed=4))
    assert off.ask(Q, max_new_tokens=1).requeried_frames == 0 and not off._segments


def test_methods_without_a_query_keep_no_buffer(tiny_adapters):
    s = StreamingSession(tiny_adapters["llava_onevision"], "uniform:ratio=0.5")
    _play(s, make_frames(3))
    assert not s._segments and s.ask(Q, max_new_tokens=1).requeried_frames == 0


def test_bad_session_settings_are_refused(tiny_adapters):
    a = tiny_adapters["llava_onevision"]
    with pytest.raises(InputError, match="requery_frames"):
        StreamingSession(a, "script", requery_frames=-1)
    with pytest.raises(InputError, match="standing_prompt"):
        StreamingSession(a, "script", standing_prompt=3)
