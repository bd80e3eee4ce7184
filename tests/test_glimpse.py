"""GlimpsePrune in the stream: trained modules on disk, the pruned prefill in the session, training targets."""
import numpy as np
import pytest
import torch

from conftest import make_frames
from vlmedge.compression.glimpse.modules import GlimpseModules, default_layout
from vlmedge.compression.glimpse.train import frame_target
from vlmedge.errors import InputError, ModelFileError
from vlmedge.runtime import StreamingSession

Q = "what color is the square ?"


def _kv(s):
    return [(l.keys.clone(), l.values.clone()) for l in s.cache.layers]


def _play(s, frames):
    for i, f in enumerate(frames):
        s.push_frame(f, time_s=float(i))


def _saved(adapter, tmp_path, bias=None, name="g"):
    mods = GlimpseModules.for_adapter(adapter)
    if bias is not None:  # a predictor with a fixed answer: every token above (or below) the threshold
        with torch.no_grad():
            mods.vip.out_proj.weight.zero_()
            mods.vip.out_proj.bias.fill_(bias)
    return mods.save(str(tmp_path / name))


def test_default_layout_matches_released_configs():
    assert default_layout(28, 32) == (18, [31, 23, 15, 7])  # Qwen2.5-VL-7B
    assert default_layout(36, 32) == (23, [31, 23, 15, 7])  # Qwen2.5-VL-3B
    assert default_layout(4, 4) == (2, [3, 2, 1, 0])  # the reference model
    assert default_layout(2, 2) == (0, [1, 0])


def test_modules_round_trip_and_refuse_other_models(tiny_adapters, tmp_path):
    a = tiny_adapters["llava_onevision"]
    path = _saved(a, tmp_path)
    loaded = GlimpseModules.load(path, a)
    for (k, v), (k2, v2) in zip(GlimpseModules.for_adapter(a).state_dict().items(), loaded.state_dict().items()):
        assert k == k2 and torch.equal(v, v2)
    with pytest.raises(ModelFileError, match="trained for a llava_onevision"):
        GlimpseModules.load(path, tiny_adapters["qwen2_5_vl"])
    with pytest.raises(ModelFileError, match="train-vip"):
        GlimpseModules.load(str(tmp_path / "nothing"), a)


@pytest.mark.parametrize("family", ["llava_onevision", "qwen2_5_vl"])
def test_keeping_everything_equals_no_compression(tiny_adapters, tmp_path, family):
    """All tokens above the threshold: the pruned prefill only drops the glimpse, so every logit equals `none`."""
    a = tiny_adapters[family]
    path = _saved(a, tmp_path, bias=20.0)
    frames = make_frames(3, seed=5)
    g = StreamingSession(a, f"glimpse:weights={path}", keep_logits=True)
    n = StreamingSession(a, "none", keep_logits=True)
    _play(g, frames)
    _play(n, frames)
    assert [s.tokens_kept for s in g.frame_stats] == [s.tokens_in for s in g.frame_stats]
    for (k0, v0), (k1, v1) in zip(_kv(g), _kv(n)):
        torch.testing.assert_close(k0, k1, atol=1e-5, rtol=1e-5)
    ga, na = g.ask(Q, max_new_tokens=3), n.ask(Q, max_new_tokens=3)
    assert ga.requeried_frames == 3 and ga.token_ids == na.token_ids
    for x, y in zip(ga.logits, na.logits):
        torch.testing.assert_close(x, y, atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("family", ["llava_onevision", "qwen2_5_omni"])
def test_pruned_stream_is_consistent_and_asking_leaves_it_unchanged(tiny_adapters, tmp_path, family):
    a = tiny_adapters[family]
    path = _saved(a, tmp_path, bias=-20.0)  # nothing passes: min_keep tokens per prefill survive
    s = StreamingSession(a, f"glimpse:weights={path},min_keep=2", standing_prompt="where is the red circle ?")
    prefix = s.stream_tokens
    _play(s, make_frames(3, seed=6))
    trailer = 1 if family == "llava_onevision" else 0
    assert [st.tokens_kept for st in s.frame_stats] == [2, 2, 2]
    assert s.stream_tokens == prefix + 3 * (2 + trailer)  # the standing prompt and the glimpse are gone
    assert len({l.keys.shape[-2] for l in s.cache.layers}) == 1  # every layer holds the same entries again
    before = _kv(s)
    ans = s.ask(Q, max_new_tokens=2)
    # the question's prefill re-selects all three frames: the cap of 2 is over the whole prefill (as released)
    assert ans.requeried_frames == 3 and ans.stream_tokens == prefix + 2 + 3 * trailer
    for (k0, v0), (k1, v1) in zip(before, _kv(s)):
        assert torch.equal(k0, k1) and torch.equal(v0, v1)


def test_spread_keeps_evenly_spaced_context_in_every_frame(tiny_adapters, tmp_path):
    """`spread` adds floor(spread * N + 0.5) dropped tokens per frame, in the stream and in the question's prefill."""
    a = tiny_adapters["llava_onevision"]
    path = _saved(a, tmp_path, bias=-20.0)
    s = StreamingSession(a, f"glimpse:weights={path},min_keep=1,spread=0.25")
    _play(s, make_frames(2, seed=6))
    n = s.frame_stats[0].tokens_in
    extra = int(0.25 * n + 0.5)
    assert extra >= 1 and [st.tokens_kept for st in s.frame_stats] == [1 + extra, 1 + extra]
    plain = StreamingSession(a, f"glimpse:weights={path},min_keep=1")
    _play(plain, make_frames(2, seed=6))
    ans, ref = s.ask(Q, max_new_tokens=1), plain.ask(Q, max_new_tokens=1)
    assert ans.stream_tokens - ref.stream_tokens == 2 * extra  # both frames re-selected with their context


def test_a_failing_predictor_leaves_the_stream_as_it_was(tiny_adapters, tmp_path, monkeypatch):
    a = tiny_adapters["llava_onevision"]
    s = StreamingSession(a, f"glimpse:weights={_saved(a, tmp_path)}")
    _play(s, make_frames(1))
    before, n = _kv(s), s.stream_tokens
    _, mods = s.method.modules(a)

    def boom(*args, **kwargs):
        raise RuntimeError("predictor failed")

    monkeypatch.setattr(mods.vip, "forward", boom)
    with pytest.raises(RuntimeError):
        s.push_frame(make_frames(1, seed=2)[0], time_s=1.0)
    with pytest.raises(RuntimeError):
        s.ask(Q)
    assert s.stream_tokens == n
    for (k0, v0), (k1, v1) in zip(before, _kv(s)):
        assert torch.equal(k0, k1) and torch.equal(v0, v1)


def test_settings_and_missing_weights_are_explained(tiny_adapters):
    with pytest.raises(InputError, match="threshold"):
        StreamingSession(tiny_adapters["llava_onevision"], "glimpse:threshold=1.5")
    with pytest.raises(InputError, match="max_ratio"):
        StreamingSession(tiny_adapters["llava_onevision"], "glimpse:max_ratio=0")
    with pytest.raises(InputError, match="spread"):
        StreamingSession(tiny_adapters["llava_onevision"], "glimpse:spread=1")
    s = StreamingSession(tiny_adapters["llava_onevision"], "glimpse")
    with pytest.raises(InputError, match="weights=DIR"):
        s.push_frame(make_frames(1)[0])
    assert s.stream_tokens == StreamingSession(tiny_adapters["llava_onevision"], "none").stream_tokens


def test_training_targets_follow_the_drawn_boxes():
    class S:  # a 96x96 frame with one object drawn over pixels 24..47 x 16..39 and one out of view
        frames = np.zeros((1, 96, 96, 3), np.uint8)
        boxes = np.array([[[24, 16, 48, 40], [-1, -1, -1, -1]]])

    m = frame_target(S, 0, [0, 1], (12, 12)).reshape(12, 12)
    assert m.sum() == 9 and m[2:5, 3:6].all()  # 8-px cells 3..5 x 2..4: the box ends on a cell border


def test_train_vip_writes_modules_the_method_loads(tiny_adapters, tmp_path):
    from vlmedge.compression.glimpse.train import VIPTrainConfig, train_vip

    a = tiny_adapters["llava_onevision"]
    mods = GlimpseModules.for_adapter(a)
    before = mods.vip.out_proj.weight.clone()
    info = train_vip(a, mods, VIPTrainConfig(minutes=0.02, accum=1, val_samples=2))
    assert info["steps"] >= 1 and not torch.equal(before, mods.vip.out_proj.weight)
    assert 0.0 <= info["validation"]["kept"] <= 1.0
    path = mods.save(str(tmp_path))
    s = StreamingSession(a, f"glimpse:weights={path}")
    _play(s, make_frames(2))
    assert s.ask(Q, max_new_tokens=1).requeried_frames == 2
    for p in a.model.parameters():  # train_vip froze the model; give the shared fixture its state back
        p.requires_grad_(True)
