"""The binding loss: which audio tokens are tied to which object's visual tokens, its attention row against
transformers' eager attention, and its place in train-reference (tiny Omni thinker)."""
import numpy as np
import pytest
import torch

from vlmedge.errors import InputError
from vlmedge.models import tiny
from vlmedge.models.layer_runner import LayerRunner
from vlmedge.models.training import binding, data, dense, grounding
from vlmedge.models.training.packing import collate
from vlmedge.models.training.reference import reference_words
from vlmedge.models.training.trainer import TrainConfig, attach_audio_tokens, pack_example, train
from test_training_grounding import _eager_attention


def _bound_example(a):
    for seed in range(20, 60):
        ex = data.stream_example(seed, np.random.default_rng(seed), {"sound": 2, "color": 1})[0]
        with torch.no_grad():
            attach_audio_tokens(a, [ex.stream], "qwen2_5_omni")
            tokens = a.encode_frames(ex.stream.frames[ex.start:ex.end])
            p = pack_example(a, ex, tokens, "qwen2_5_omni")
        at, targets = binding.sound_bindings(ex, p, tokens[0].grid_hw)
        if at.numel():
            return ex, p, tokens, at, targets
    raise AssertionError("no clip with a sound tied to a visible arrival in seeds 20..59")


def test_audio_tokens_of_a_tied_sound_bind_to_the_visible_tokens_of_its_object():
    a = tiny("qwen2_5_omni", seed=0, words=reference_words())
    ex, p, tokens, at, targets = _bound_example(a)
    grid = tokens[0].grid_hw
    tied = [e for e in ex.stream.world.sound_events() if e.obj >= 0]
    assert len(at) == len(targets)
    for pos, tgt in zip(at.tolist(), targets):
        (offset, t0, spt, n), = [c for c in p.audio if c[0] <= pos < c[0] + c[3]]
        t = t0 + spt * (pos - offset)
        heard = [e for e in tied if t < e.end and t + spt > e.start]
        assert heard  # the query is an audio token heard while a tied sound played
        assert tgt.numel() and bool(p.allowed[pos, tgt].all())  # only what that audio token can see
        objs = {e.obj for e in heard}
        for i in tgt.tolist():  # every target is a visual token showing the sound's object
            (f, (foff, keep)), = [(f, fr) for f, fr in enumerate(p.frames) if fr[0] <= i < fr[0] + len(fr[1])]
            shown = int(dense.token_objects(ex.stream, ex.start + f, grid)[keep][i - foff])
            assert shown in objs

    # the recomputed attention row is transformers' own
    embeds, positions, mask, _ = collate([p], a.positions.rows)
    runner = LayerRunner(a)
    with torch.no_grad(), grounding.LayerInput(runner.lm, 1) as cap:
        a.forward_packed(embeds, positions, mask)
        mass = grounding.attention_mass(runner, 1, cap.hidden[0], cap.rope, p.allowed, at, targets)
    ref = _eager_attention(a, embeds, positions, mask, 1)
    for j, (pos, tgt) in enumerate(zip(at.tolist(), targets)):
        torch.testing.assert_close(mass[j], ref[0, :, pos, tgt].sum(-1).float(), atol=1e-5, rtol=1e-4)


def test_train_reference_with_the_binding_loss(tmp_path):
    cfg = TrainConfig(family="qwen2_5_omni", out=str(tmp_path / "m"), work=str(tmp_path / "w"), minutes=10, batch=2,
                      questions=8, max_steps=3, shape="tiny", val_streams=1, threads=1, vision_minutes=0,
                      bind_weight=1.0, bind_head=2)
    logs = []
    train(cfg, log=logs.append)
    assert any("binding mass" in m for m in logs if m.startswith("[train] step"))
    with pytest.raises(InputError, match="no audio"):
        train(TrainConfig(family="llava_onevision", out=str(tmp_path / "l"), work=str(tmp_path / "lw"),
                          shape="tiny", max_steps=1, bind_weight=1.0), log=lambda m: None)
    with pytest.raises(InputError, match="--bind-head 9"):
        train(TrainConfig(family="qwen2_5_omni", out=str(tmp_path / "o"), work=str(tmp_path / "ow"), shape="tiny",
                          max_steps=1, bind_weight=1.0, bind_head=9), log=lambda m: None)


def test_binding_layer_defaults_to_layer_one():
    assert binding.default_layer(4) == 1 and binding.default_layer(1) == 0
