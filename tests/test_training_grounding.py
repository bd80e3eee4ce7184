"""The grounding loss: which tokens are a question's evidence, its attention row against transformers' own
(eager) attention weights, and that training on it moves attention onto the evidence."""
import numpy as np
import pytest
import torch

from vlmedge.errors import InputError
from vlmedge.models import tiny
from vlmedge.models.layer_runner import LayerRunner
from vlmedge.models.training import data, dense, grounding
from vlmedge.models.training.packing import collate
from vlmedge.models.training.reference import reference_words
from vlmedge.models.training.token_drop import DropPlan
from vlmedge.models.training.trainer import TrainConfig, pack_example, qtypes_for, train


def _adapter(family="llava_onevision"):
    return tiny(family, seed=0, words=reference_words())


def _examples(seed=5, crop=False):
    counts = {"color": 2, "count": 1, "where": 2, "exists": 2, "appeared": 2, "small": 1}
    return data.stream_example(seed, np.random.default_rng(seed), counts, crop=crop)


def _eager_attention(a, embeds, positions, mask, layer):
    """transformers' own attention probabilities `[B, H, L, L]` of `layer` for a collated batch."""
    lm = a.language_model()
    lm.set_attn_implementation("eager")
    try:
        with torch.no_grad():
            # eager attention adds the mask to the logits, so it gets the additive form of our bool mask
            additive = torch.zeros(mask.shape).masked_fill(~mask, float("-inf"))
            pos = positions[0] if positions.shape[0] == 1 else positions
            return lm(inputs_embeds=embeds.to(a.dtype), position_ids=pos, attention_mask=additive, use_cache=False,
                      output_attentions=True).attentions[layer]
    finally:
        lm.set_attn_implementation("sdpa")


def _pack(a, ex, rng=None):
    with torch.no_grad():
        tokens = a.encode_frames(ex.stream.frames[ex.start:ex.end])
    return pack_example(a, ex, tokens, "llava_onevision", rng), tokens


@pytest.mark.parametrize("drop", [None, DropPlan("random", 0.4)])
def test_evidence_tokens_are_the_kept_tokens_of_the_questions_objects(drop):
    a = _adapter()
    ex = _examples()[0]
    ex.drop = drop
    packed, tokens = _pack(a, ex, np.random.default_rng(1))
    targets = grounding.evidence_tokens(ex, packed, tokens[0].grid_hw)
    assert len(targets) == len(ex.questions)
    grounded = 0
    for (frame, text, _, qtype), (refs, first), idx in zip(ex.questions, ex.evidence, targets):
        want = set(refs) if qtype in ("count", "exists") else set(refs[:1])
        expect = []
        for f in range(first, frame + 1):
            offset, keep = packed.frames[f]
            objs = dense.token_objects(ex.stream, ex.start + f, tokens[0].grid_hw)
            expect += [offset + j for j, g in enumerate(keep.tolist()) if int(objs[g]) in want]
            # each evidence index lies in its frame's visual tokens and holds that token's features
            for i in idx.tolist():
                if offset <= i < offset + keep.numel():
                    assert torch.equal(packed.embeds[i], tokens[f].features[keep[i - offset]])
        assert sorted(idx.tolist()) == sorted(expect), text
        grounded += idx.numel() > 0
    if drop is None:  # (the tiny tower's 4x4 grid leaves most objects 1-2 tokens, often all dropped at 40%)
        assert grounded >= len(ex.questions) // 2


def test_evidence_mass_equals_transformers_eager_attention():
    a = _adapter()
    exs = _examples(7) + _examples(8)
    packed, tokens = zip(*[_pack(a, ex) for ex in exs])
    embeds, positions, mask, _ = collate(list(packed), a.positions.rows)
    runner = LayerRunner(a)
    layer = 1
    with torch.no_grad(), grounding.LayerInput(runner.lm, layer) as cap:
        a.forward_packed(embeds, positions, mask)
    ref = _eager_attention(a, embeds, positions, mask, layer)
    cos, sin = cap.rope
    checked = 0
    for b, (ex, p) in enumerate(zip(exs, packed)):
        targets = grounding.evidence_tokens(ex, p, tokens[b][0].grid_hw)
        with torch.no_grad():
            mass = grounding.evidence_mass(runner, layer, cap.hidden[b], (cos[b:b + 1], sin[b:b + 1]), p, targets)
        rows = [i for i, t in enumerate(targets) if t.numel()]
        assert mass.shape == (len(rows), runner.lm.config.num_attention_heads)
        for j, i in enumerate(rows):
            expect = ref[b, :, p.answer_at[i], targets[i]].sum(-1)
            torch.testing.assert_close(mass[j], expect.float(), atol=1e-5, rtol=1e-4)
            checked += 1
    assert checked >= 6


def test_training_on_the_grounding_loss_moves_attention_onto_the_evidence():
    torch.manual_seed(0)
    a = _adapter()
    ex = _examples(11, crop=True)
    runner = LayerRunner(a)
    layer = grounding.default_layer(runner.num_layers)
    opt = torch.optim.Adam([p for p in a.model.parameters() if p.requires_grad], lr=3e-3)

    def mass():
        tokens = a.encode_frames([f for e in ex for f in e.stream.frames[e.start:e.end]])
        packed, k = [], 0
        for e in ex:
            packed.append(pack_example(a, e, tokens[k:k + e.end - e.start], "llava_onevision"))
            k += e.end - e.start
        embeds, positions, mask, _ = collate(packed, a.positions.rows)
        with grounding.LayerInput(runner.lm, layer) as cap:
            a.forward_packed(embeds, positions, mask)
        cos, sin = cap.rope
        return [grounding.evidence_mass(runner, layer, cap.hidden[b], (cos[b:b + 1], sin[b:b + 1]), p,
                                        grounding.evidence_tokens(e, p, tokens[0].grid_hw))
                for b, (e, p) in enumerate(zip(ex, packed))]

    head = 1
    before = torch.cat([m[:, head] for m in mass()]).mean().item()
    for _ in range(15):
        opt.zero_grad()
        sum(grounding.grounding_loss(m, head) for m in mass()).backward()
        opt.step()
    with torch.no_grad():
        after = torch.cat([m[:, head] for m in mass()]).mean().item()
    assert after > 2 * before and after > 0.3, (before, after)


def test_train_reference_with_the_grounding_loss_logs_and_validates_it(tmp_path):
    cfg = TrainConfig(family="llava_onevision", out=str(tmp_path / "m"), work=str(tmp_path / "w"), minutes=10,
                      batch=2, questions=7, max_steps=2, shape="tiny", val_streams=2, threads=1, vision_minutes=0,
                      ground_weight=0.3)
    logs = []
    res = train(cfg, log=logs.append)
    assert res["steps"] == 2
    assert any("evidence mass" in m for m in logs)
    assert 0.0 < res["curve"][-1]["ground"] < 1.0
    assert "ground" not in res["curve"][-1] or res["curve"][-1]["mean"] <= 1.0
    cfg.ground_layer, cfg.out, cfg.work = 99, str(tmp_path / "m2"), str(tmp_path / "w2")
    with pytest.raises(InputError, match="ground-layer 99"):
        train(cfg, log=logs.append)
    cfg.ground_layer, cfg.ground_head = -1, 6
    with pytest.raises(InputError, match="ground-head 6"):
        train(cfg, log=logs.append)


def test_heard_questions_ground_on_the_audio_tokens_of_the_last_sound():
    from vlmedge.models.training.trainer import attach_audio_tokens

    a = _adapter("qwen2_5_omni")
    found = 0
    for seed in range(40, 60):
        ex = data.stream_example(seed, np.random.default_rng(seed), {"heard": 2}, crop=True)
        for clip in ex:
            with torch.no_grad():
                attach_audio_tokens(a, [clip.stream], "qwen2_5_omni")
                tokens = a.encode_frames(clip.stream.frames[clip.start:clip.end])
                p = pack_example(a, clip, tokens, "qwen2_5_omni")
            targets = grounding.evidence_tokens(clip, p, tokens[0].grid_hw)
            for (frame, _, answer, qtype), idx in zip(clip.questions, targets):
                assert qtype == "heard" and idx.numel() > 0
                t_q = clip.stream.frame_time(clip.start + frame)
                last = max((e for e in clip.stream.world.sound_events() if e.end <= t_q), key=lambda e: e.start)
                assert last.sound == answer
                for i in idx.tolist():
                    (offset, t0, spt, n), = [c for c in p.audio if c[0] <= i < c[0] + c[3]]
                    t = t0 + spt * (i - offset)
                    assert t < last.end and t + spt > last.start
                found += 1
        if found >= 3:
            break
    assert found >= 3
    with pytest.raises(InputError, match="heard"):
        qtypes_for("llava_onevision", ("heard",))


def test_sound_questions_ground_on_the_audio_tokens_of_their_sound_and_match_eager_attention():
    from vlmedge.models.training.trainer import attach_audio_tokens

    a = _adapter("qwen2_5_omni")
    found = 0
    for seed in range(20, 40):
        ex = data.stream_example(seed, np.random.default_rng(seed), {"sound": 2, "color": 1})[0]
        if not any(q[3] == "sound" for q in ex.questions):
            continue
        with torch.no_grad():
            attach_audio_tokens(a, [ex.stream], "qwen2_5_omni")
            tokens = a.encode_frames(ex.stream.frames[ex.start:ex.end])
            p = pack_example(a, ex, tokens, "qwen2_5_omni")
        assert p.audio and all(n > 0 for _, _, _, n in p.audio)
        targets = grounding.evidence_tokens(ex, p, tokens[0].grid_hw)
        for (frame, _, _, qtype), (refs, _), idx in zip(ex.questions, ex.evidence, targets):
            if qtype != "sound" or not idx.numel():
                continue
            (sound,) = [e for e in ex.stream.world.sound_events() if e.obj == refs[0]]
            for i in idx.tolist():
                (offset, t0, spt, n), = [c for c in p.audio if c[0] <= i < c[0] + c[3]]
                t = t0 + spt * (i - offset)
                assert t < sound.end and t + spt > sound.start  # an audio token heard during that sound
            found += 1
        if found >= 3:
            break
    assert found >= 3

    # the recomputed row equals eager attention under M-RoPE too (the Omni thinker's three position rows)
    embeds, positions, mask, _ = collate([p], a.positions.rows)
    runner = LayerRunner(a)
    with torch.no_grad(), grounding.LayerInput(runner.lm, 1) as cap:
        a.forward_packed(embeds, positions, mask)
    ref = _eager_attention(a, embeds, positions, mask, 1)
    with torch.no_grad():
        mass = grounding.evidence_mass(runner, 1, cap.hidden[0], cap.rope, p, targets)
    rows = [i for i, t in enumerate(targets) if t.numel() and p.allowed[p.answer_at[i], t].any()]
    assert mass.shape[0] == len(rows) > 0
    for j, i in enumerate(rows):
        t = targets[i][p.allowed[p.answer_at[i], targets[i]]]
        torch.testing.assert_close(mass[j], ref[0, :, p.answer_at[i], t].sum(-1).float(), atol=1e-5, rtol=1e-4)
