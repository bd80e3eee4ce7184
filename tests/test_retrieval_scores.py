"""Scoring stored blocks for a question: per-head scores, their combination, and position-fair placement."""
import torch

from conftest import make_frames, pushed_session
from vlmedge.runtime import StreamingSession

Q = "how many objects are there ?"


def _question(a, s):
    ids = a.tokenize(Q)
    return a.embed_text(ids), a.positions.text(s.positions.copy(), ids.numel())


def test_head_scores_average_to_the_middle_layer_score(tiny_adapters):
    from vlmedge.runtime.retrieval import head_scores, score_blocks
    from vlmedge.runtime.token_store import Block

    a = tiny_adapters["llava_onevision"]
    s = pushed_session(a)
    cache, n = s.cache, s.stream_tokens
    spans = [(0, 9), (9, 14), (23, n - 23)]
    host = [Block(st, ln, "frame", 0.0, [(l.keys[:, :, st:st + ln].clone(), l.values[:, :, st:st + ln].clone())
                                         for l in cache.layers]) for st, ln in spans[:2]]
    live = [Block(st, ln, "frame", 0.0) for st, ln in spans[1:]]
    emb, pos = _question(a, s)
    heads = a.text_config.num_attention_heads
    with torch.no_grad():
        table = head_scores(a, cache, host, emb, pos, [(1, h) for h in range(heads)] + [(0, 1)], live, adjacent=False)
        off, on = score_blocks(a, cache, host, emb, pos, layer=1, live=live, heads="middle", adjacent=False)
    assert table.shape == (4, heads + 1)
    torch.testing.assert_close(table[:, :heads].mean(1), torch.cat([off, on]))  # ReKV's score
    torch.testing.assert_close(table[1], table[2])  # the same keys score the same offloaded or live
    assert s.stream_tokens == n  # the question's pass through the layers was cut away


def test_combined_heads_count_alike_whatever_their_scale():
    from vlmedge.runtime.retrieval import combine_heads

    a = torch.tensor([1.0, 2.0, 3.0, 4.0])
    b = torch.tensor([40.0, 30.0, 20.0, 10.0]) * 10  # an opposite vote on a 100x larger scale
    assert torch.allclose(combine_heads(torch.stack([a, b], 1)), torch.zeros(4), atol=1e-5)  # a tie, not b's win
    assert torch.equal(torch.argsort(combine_heads(a[:, None])), torch.argsort(a))
    assert torch.equal(combine_heads(torch.ones(1, 3)), torch.zeros(1))


def test_chosen_heads_decide_which_block_is_retrieved(tiny_adapters):
    from vlmedge.models.layer_runner import LayerRunner
    from vlmedge.models.positions import PositionState
    from vlmedge.runtime.retrieval import choose, score_blocks
    from vlmedge.runtime.token_store import Block

    a = tiny_adapters["llava_onevision"]
    ids = a.tokenize(Q)
    pos = a.positions.text(PositionState(), ids.numel())
    emb = a.embed_text(ids)
    _, q = LayerRunner(a).run(emb, pos, a.new_cache(), range(0, 2), capture_layer=1,
                              capture_rows=torch.arange(ids.numel()), capture_queries=True)
    groups = q.shape[1] // 2  # query heads per KV head (GQA)

    def block(kv_head, t):  # keys along one query head's mean query, in the KV head that head reads
        keys = torch.zeros(1, 2, 3, q.shape[-1])
        keys[0, kv_head] = q[0, kv_head * groups].mean(0) * 5
        zero = torch.zeros_like(keys)
        return Block(0, 3, "frame", t, [(zero, zero), (keys, zero)])

    blocks = [block(0, 0.0), block(1, 1.0), Block(0, 3, "frame", 2.0, [(torch.zeros(1, 2, 3, q.shape[-1]),) * 2] * 2)]
    with torch.no_grad():
        first = score_blocks(a, a.new_cache(), blocks, emb, pos, heads=[(1, 0)])
        last = score_blocks(a, a.new_cache(), blocks, emb, pos, heads=[(1, 2 * groups - 1)])
    assert int(first.argmax()) == 0 and int(last.argmax()) == 1
    assert [b.time_s for b in choose(blocks, last, 3)] == [1.0]


def test_every_head_can_vote_and_blocks_can_be_scored_next_to_the_question(tiny_adapters):
    from vlmedge.runtime.retrieval import combine_heads, head_scores, score_blocks
    from vlmedge.runtime.token_store import Block

    a = tiny_adapters["llava_onevision"]
    s = pushed_session(a)
    cache, n = s.cache, s.stream_tokens
    blocks = s.store.blocks if s.store else None
    assert blocks is None  # an unbounded stream: build the candidates by hand, with their position spans
    spans = [(0, 9), (9, 14), (23, n - 23)]
    live = [Block(st, ln, "frame", 0.0, span=(st, st + ln)) for st, ln in spans]
    emb, pos = _question(a, s)
    every = [(m, h) for m in range(a.text_config.num_hidden_layers) for h in range(a.text_config.num_attention_heads)]
    with torch.no_grad():
        _, default = score_blocks(a, cache, [], emb, pos, live=live, heads="all", adjacent=True)
        table = head_scores(a, cache, [], emb, pos, every, live)
        in_place = head_scores(a, cache, [], emb, pos, every, live, adjacent=False)
        _, middle = score_blocks(a, cache, [], emb, pos, live=live)  # the default
    torch.testing.assert_close(default, combine_heads(table))
    assert not torch.allclose(table, in_place)  # moved next to the question, the blocks score differently
    nh, mid = a.text_config.num_attention_heads, a.text_config.num_hidden_layers // 2
    torch.testing.assert_close(in_place[:, mid * nh:(mid + 1) * nh].mean(1), middle)  # ReKV's: middle layer, in place
    from vlmedge.runtime.retrieval import _adjacent_deltas

    # a block that already ends where the question starts is not moved; one without a span cannot be
    last = Block(0, 5, "frame", 0.0, span=(int(pos[0, 0]) - 5, int(pos[0, 0])))
    assert _adjacent_deltas([last, live[0], Block(0, 5, "frame", 0.0)], int(pos[0, 0]), True) == [
        0, int(pos[0, 0]) - 9, 0]
    assert _adjacent_deltas([live[0]], int(pos[0, 0]), False) == [0]
    assert s.stream_tokens == n


def test_a_shifted_block_scores_as_if_computed_next_to_the_question(tiny_adapters):
    """Two copies of the same frame, one far back and one right before the question, score alike once moved."""
    from vlmedge.runtime.retrieval import head_scores

    a = tiny_adapters["llava_onevision"]
    s = StreamingSession(a, "uniform:ratio=0.5", max_stream_tokens=10**6, eviction="evict")
    frame = make_frames(1, seed=5)[0]
    s.push_frame(frame, time_s=0.0)
    for i, f in enumerate(make_frames(30, seed=6), start=1):
        s.push_frame(f, time_s=float(i))
    s.push_frame(frame, time_s=31.0)
    far, near = s.store.blocks[0], s.store.blocks[-1]
    emb, pos = _question(a, s)
    every = [(m, h) for m in range(a.text_config.num_hidden_layers) for h in range(a.text_config.num_attention_heads)]
    with torch.no_grad():
        moved = head_scores(a, s.cache, [], emb, pos, every, [far, near])
        kept = head_scores(a, s.cache, [], emb, pos, every, [far, near], adjacent=False)
    # layer 0 sees only the frame itself (no context yet): moved, its two copies score the same
    n_heads = a.text_config.num_attention_heads
    torch.testing.assert_close(moved[0, :n_heads], moved[1, :n_heads], rtol=1e-4, atol=1e-4)
    assert (kept[0, :n_heads] - kept[1, :n_heads]).abs().max() > 1e-3


def test_unknown_retrieval_settings_are_refused(tiny_adapters):
    import pytest

    from vlmedge.errors import InputError

    a = tiny_adapters["llava_onevision"]
    kw = dict(max_stream_tokens=60, eviction="offload", offload_tokens=30, retrieve_tokens=10)
    with pytest.raises(InputError, match="retrieval_score must be one of middle-layer, all-heads"):
        StreamingSession(a, "none", retrieval_score="best", **kw)
    with pytest.raises(InputError, match="retrieval_positions must be 'in-place' or 'adjacent'"):
        StreamingSession(a, "none", retrieval_positions="compact", **kw)
    with pytest.raises(InputError, match="retrieval_context must be a block count"):
        StreamingSession(a, "none", retrieval_context=-1, **kw)


def test_context_brings_the_blocks_before_each_hit():
    from vlmedge.runtime.retrieval import choose
    from vlmedge.runtime.token_store import Block

    blocks = [Block(10 * i, 10, "frame", float(i)) for i in range(8)]
    scores = torch.tensor([0.0, 0.1, 0.2, 0.3, 0.4, 5.0, 0.6, 4.0])
    times = lambda bs: [b.time_s for b in bs]  # noqa: E731
    assert times(choose(blocks, scores, 20)) == [5.0, 7.0]  # plain: the two best
    # each hit with the two blocks before it, nearest first; 7's (5 is taken already) is 6
    assert times(choose(blocks, scores, 50, before=2)) == [3.0, 4.0, 5.0, 6.0, 7.0]
    # the hits come first: context only where there is room left
    assert times(choose(blocks, scores, 40, before=2)) == [3.0, 4.0, 5.0, 7.0]
    assert times(choose(blocks, scores, 20, before=2)) == [4.0, 5.0]
    assert times(choose(blocks, scores, 20, before=0)) == times(choose(blocks, scores, 20))
