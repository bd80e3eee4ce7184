"""Training clips with visual tokens dropped: what is kept, and that the packed sequence keeps positions."""
import numpy as np
import pytest
import torch

from vlmedge.errors import InputError
from vlmedge.models import camworld
from vlmedge.models.training import dense
from vlmedge.models.training.token_drop import DropPlan, TokenDrop, keep_indices


def _object_mask(seed=1_000_003, frame=5):
    s = camworld.generate(seed)
    return dense.token_labels(s, frame, (12, 12))[:, 0] > 0


def test_objects_first_keeps_every_object_token_then_fills_with_background():
    mask = _object_mask()
    n_obj = int(mask.sum())
    assert 0 < n_obj < 40
    idx = keep_indices(DropPlan("objects", 40 / 144), mask, np.random.default_rng(0))
    assert idx.numel() == 40 and torch.equal(idx, idx.sort().values) and idx.unique().numel() == 40
    assert mask[idx].sum().item() == n_obj  # all of them
    # a budget below the object count keeps only object tokens
    few = keep_indices(DropPlan("objects", 2 / 144), mask, np.random.default_rng(0))
    assert few.numel() == 2 and mask[few].all()


def test_random_keeps_about_the_frame_share_of_objects():
    mask = _object_mask()
    rng = np.random.default_rng(1)
    shares = [mask[keep_indices(DropPlan("random", 0.3), mask, rng)].float().mean().item() for _ in range(300)]
    assert abs(np.mean(shares) - mask.float().mean().item()) < 0.02
    assert len({tuple(keep_indices(DropPlan("random", 0.3), mask, rng).tolist()) for _ in range(5)}) == 5


def test_salient_keeps_the_tokens_farthest_from_the_frame_mean():
    mask = torch.zeros(10, dtype=torch.bool)
    f = torch.zeros(10, 4)
    f[3] = torch.tensor([5.0, 0, 0, 0])   # the outlier
    f[7] = torch.tensor([0, -3.0, 0, 0])  # the second
    f[1] = torch.tensor([0, 0, 1.0, 0])   # the third
    rng = np.random.default_rng(0)
    assert keep_indices(DropPlan("salient", 0.2), mask, rng, f).tolist() == [3, 7]
    assert keep_indices(DropPlan("salient", 0.3), mask, rng, f).tolist() == [1, 3, 7]
    # the ranking ignores the object mask and the generator: features decide
    assert keep_indices(DropPlan("salient", 0.2), ~mask, np.random.default_rng(5), f).tolist() == [3, 7]
    with pytest.raises(ValueError, match="needs the frame's 10 token features"):
        keep_indices(DropPlan("salient", 0.2), mask, rng)
    with pytest.raises(ValueError, match="needs the frame's 10 token features"):
        keep_indices(DropPlan("salient", 0.2), mask, rng, f[:5])


def test_plans_follow_the_share_and_range():
    rng = np.random.default_rng(0)
    assert all(TokenDrop(0.0).plan(rng) is None for _ in range(50))
    plans = [TokenDrop(0.5, 0.2, 0.4).plan(rng) for _ in range(400)]
    made = [p for p in plans if p is not None]
    assert 160 < len(made) < 240
    assert {p.mode for p in made} == {"random", "objects", "salient"}
    assert all(0.2 <= p.keep <= 0.4 for p in made)
    with pytest.raises(InputError, match="share of training clips"):
        TokenDrop(1.5)
    with pytest.raises(InputError, match="keep range"):
        TokenDrop(0.5, 0.6, 0.3)


def test_a_dropped_clip_packs_fewer_tokens_at_their_original_positions():
    from vlmedge.models import tiny
    from vlmedge.models.training import data
    from vlmedge.models.training.reference import reference_words
    from vlmedge.models.training.trainer import pack_example

    a = tiny("llava_onevision", seed=0, words=reference_words())
    rng = np.random.default_rng(0)
    ex = data.stream_example(3, rng, {"count": 2})[0]
    with torch.no_grad():
        tokens = a.encode_frames(ex.stream.frames[ex.start:ex.end])
        full = pack_example(a, ex, tokens, "llava_onevision")
        ex.drop = DropPlan("random", 0.5)
        pruned = pack_example(a, ex, tokens, "llava_onevision", np.random.default_rng(0))
    per_frame = tokens[0].num_tokens
    k = round(0.5 * per_frame)
    frames = ex.end - ex.start
    assert full.embeds.shape[0] - pruned.embeds.shape[0] == frames * (per_frame - k)
    # the questions sit at the same positions with and without dropping: only gaps were left
    assert torch.equal(full.positions[..., -8:], pruned.positions[..., -8:])
    assert set(pruned.positions.flatten().tolist()) < set(full.positions.flatten().tolist())
    assert pruned.answers == full.answers


def test_objects_salient_keeps_objects_then_the_most_distinct_background():
    mask = torch.zeros(10, dtype=torch.bool)
    mask[[2, 7]] = True
    feats = torch.zeros(10, 3)
    feats[4] = 5.0   # the outlying background token
    feats[9] = 3.0   # the next one
    feats[2] = 0.1   # objects need not be distinct to be kept first
    feats[7] = 0.2
    keep = keep_indices(DropPlan("objects-salient", 0.4), mask, np.random.default_rng(0), feats)
    assert keep.tolist() == [2, 4, 7, 9]
    # the plain `objects` mode fills the same budget with random background instead
    picks = {tuple(keep_indices(DropPlan("objects", 0.4), mask, np.random.default_rng(s)).tolist()) for s in range(20)}
    assert len(picks) > 1 and all({2, 7} <= set(p) for p in picks)


def test_token_drop_modes_are_drawn_by_their_listed_weight_and_checked():
    rng = np.random.default_rng(1)
    drop = TokenDrop(1.0, modes=("salient", "objects-salient", "objects-salient"))
    drawn = [drop.plan(rng).mode for _ in range(600)]
    assert set(drawn) == {"salient", "objects-salient"}
    assert 0.6 < drawn.count("objects-salient") / 600 < 0.73
    with pytest.raises(InputError, match="objects-salient"):
        TokenDrop(0.5, modes=("salience",))


def test_objects_tight_keeps_every_object_and_only_a_few_distinct_background_tokens():
    n = 100
    mask = torch.zeros(n, dtype=torch.bool)
    mask[:30] = True  # objects cover 30% of the frame: more than `objects` keeps at a 0.25 draw
    feats = torch.zeros(n, 3)
    feats[50:60, 0] = torch.arange(10, 0, -1).float()  # background tokens 50.. are the most distinct, in order
    keep = keep_indices(DropPlan("objects-tight", 0.25), mask, np.random.default_rng(0), feats)
    # all 30 object tokens, then 0.25 * 0.2 * 100 = 5 background tokens, most distinct first
    assert keep.tolist() == list(range(30)) + [50, 51, 52, 53, 54]
    # the background share follows the draw, not the object share
    keep = keep_indices(DropPlan("objects-tight", 0.6), ~torch.ones(n, dtype=torch.bool), np.random.default_rng(0), feats)
    assert len(keep) == 12 and set(range(50, 56)) <= set(keep.tolist())
    with pytest.raises(ValueError, match="objects-tight"):
        keep_indices(DropPlan("objects-tight", 0.2), mask, np.random.default_rng(0))
