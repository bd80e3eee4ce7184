"""Starting one family's reference model from another's: the LLM copied, the vision tokens distilled, the
dense audio loss; on tiny configs of the real architectures."""
import numpy as np
import pytest
import torch

from vlmedge.errors import InputError
from vlmedge.models import camworld, tiny
from vlmedge.models.base import FrameTokens
from vlmedge.models.training import audio_dense, transplant
from vlmedge.models.training.reference import reference_words
from vlmedge.models.training.trainer import TrainConfig, train


def _pair():
    words = reference_words()
    return tiny("qwen2_5_omni", seed=1, words=words), tiny("llava_onevision", seed=2, words=words)


def test_the_llm_is_copied_exactly_and_a_mismatch_is_refused():
    student, teacher = _pair()
    transplant.copy_language_model(student, teacher)
    got, want = student.language_model().state_dict(), teacher.language_model().state_dict()
    assert set(got) == set(want) and all(torch.equal(got[k], want[k]) for k in want)
    assert torch.equal(student.lm_head().weight, teacher.lm_head().weight)
    other = tiny("llava_onevision", seed=2)  # the default test vocabulary, not the reference one
    with pytest.raises(InputError, match="tokenizers"):
        transplant.copy_language_model(student, other)


def test_pooled_targets_average_each_block_of_the_teacher_grid():
    feats = torch.arange(16 * 3, dtype=torch.float32).reshape(16, 3)  # a 4x4 grid, raster order
    t = FrameTokens(features=feats, grid_hw=(4, 4), trailer=feats[:0])
    out = transplant.pooled_targets([t, t], (2, 2))
    assert out.shape == (8, 3)
    top_left = feats[[0, 1, 4, 5]].mean(0)
    bottom_right = feats[[10, 11, 14, 15]].mean(0)
    assert torch.allclose(out[0], top_left) and torch.allclose(out[3], bottom_right) and torch.allclose(out[7], bottom_right)


def test_distillation_brings_the_student_tokens_towards_the_teacher():
    student, teacher = _pair()
    frames = [f for s in (camworld.generate(990_001), camworld.generate(990_002)) for f in s.frames]

    def error():
        with torch.no_grad():
            mine = student.encode_frames(frames)
            target = transplant.pooled_targets(teacher.encode_frames(frames), mine[0].grid_hw)
            return float(transplant.relative_error(torch.cat([t.features for t in mine]).float(), target))

    before = error()
    logs = []
    llm_before = {k: v.clone() for k, v in student.language_model().state_dict().items()}
    n = transplant.distill_vision(student, teacher, 10, np.random.default_rng(0), 3e-3, logs.append,
                                  streams_per_step=2, max_steps=40)
    assert n == 40 and any("relative error" in m for m in logs)
    after = error()
    assert after < 0.6 * before, (before, after)
    # only the vision side moves
    assert all(torch.equal(v, llm_before[k]) for k, v in student.language_model().state_dict().items())


def test_training_from_another_family(tmp_path):
    teacher_dir = str(tmp_path / "teacher")
    train(TrainConfig(family="llava_onevision", out=teacher_dir, work=str(tmp_path / "tw"), minutes=10, batch=1,
                      questions=5, max_steps=1, shape="tiny", val_streams=1, threads=1, vision_minutes=0),
          log=lambda m: None)
    from vlmedge.models import from_pretrained
    teacher = from_pretrained(teacher_dir)
    logs = []
    cfg = TrainConfig(family="qwen2_5_omni", out=str(tmp_path / "model"), work=str(tmp_path / "work"), minutes=10,
                      batch=1, questions=5, max_steps=1, shape="tiny", val_streams=1, threads=1, vision_minutes=0.02,
                      init_from=teacher_dir, lr=1e-9, audio_weight=0.5)
    train(cfg, log=logs.append)
    assert any("LLM copied" in m for m in logs) and any("vision distillation done" in m for m in logs)
    assert not any("vision warm-up" in m for m in logs)  # distillation replaces the dense warm-up
    assert any("sounds " in m for m in logs if m.startswith("[train] step"))
    st = torch.load(str(tmp_path / "work" / "train_state.pt"), weights_only=False)
    assert st["audio_head"] is not None and st["config"]["init_from"] == teacher_dir
    student = from_pretrained(str(tmp_path / "model"))
    for k, v in teacher.language_model().state_dict().items():  # one step at lr 1e-9: still the teacher's
        assert torch.allclose(student.language_model().state_dict()[k], v, atol=1e-6), k


def test_the_audio_loss_needs_an_audio_tower(tmp_path):
    cfg = TrainConfig(family="llava_onevision", out=str(tmp_path / "m"), work=str(tmp_path / "w"), shape="tiny",
                      max_steps=1, audio_weight=0.5)
    with pytest.raises(InputError, match="audio"):
        train(cfg, log=lambda m: None)


def test_audio_tokens_are_labelled_with_the_sound_playing_at_their_time():
    s = camworld.generate(7)
    events = s.world.sound_events()
    assert events
    n = 25
    for sec in range(len(s.audio) // s.sample_rate):
        labels = audio_dense.token_sounds(s, sec, n)
        for j in range(n):
            t = sec + (j + 0.5) / n
            playing = [e.sound for e in events if e.start <= t < e.end]
            assert audio_dense.LABELS[int(labels[j])] == (playing[-1] if playing else "none")


def test_the_audio_head_weights_sound_tokens_up():
    head = audio_dense.AudioHead(8)
    feats = torch.randn(4, 8)
    labels = torch.tensor([0, 0, 0, 2])
    loss, acc = head.loss(feats, labels)
    logits = head.proj(head.norm(feats))
    ce = torch.nn.functional.cross_entropy(logits, labels, reduction="none")
    w = torch.tensor([1.0, 1.0, 1.0, audio_dense.EVENT_WEIGHT])
    assert torch.allclose(loss, (ce * w).sum() / w.sum())
    assert float(acc) == float(logits[3].argmax() == 2)
