"""The token store: a bounded stream, sinks kept, eviction counted, budgets planned, memory accounted."""
import resource

import pytest
import torch

from conftest import make_frames
from vlmedge.errors import InputError
from vlmedge.runtime import StreamingSession

Q = "how many objects are there ?"


def _kv(s):
    return [(l.keys.clone(), l.values.clone()) for l in s.cache.layers]


@pytest.mark.parametrize("method", ["none", "uniform:ratio=0.5", "script:ratio=0.5", "stc:tokens=6"])
def test_stream_stays_inside_its_capacity_and_keeps_the_sink(tiny_adapters, method):
    a = tiny_adapters["llava_onevision"]
    s = StreamingSession(a, method, max_stream_tokens=60, sink_frames=1)
    prefix = s.stream_tokens
    s.push_frame(make_frames(1, seed=1)[0], time_s=0.0)
    sink = [(k[:, :, : s.stream_tokens].clone(), v[:, :, : s.stream_tokens].clone()) for k, v in _kv(s)]
    sink_len = s.stream_tokens
    for i, f in enumerate(make_frames(12, seed=2), start=1):
        s.push_frame(f, time_s=float(i))
        assert s.stream_tokens <= 60
    for (k0, v0), (k1, v1) in zip(sink, _kv(s)):  # the prompt and the first frame are still there, untouched
        assert torch.equal(k0, k1[:, :, :sink_len]) and torch.equal(v0, v1[:, :, :sink_len])
    assert s.store.evicted_blocks > 0 and s.store.blocks[0].start == prefix
    starts = [b.start for b in s.store.blocks]
    assert starts == sorted(starts) and starts[-1] + s.store.blocks[-1].length == s.stream_tokens
    ans = s.ask(Q, max_new_tokens=2)
    assert ans.evicted_blocks == s.store.evicted_blocks and ans.evicted_tokens == s.store.evicted_tokens
    assert s.ask(Q, max_new_tokens=1).evicted_blocks == 0  # counted per question
    assert s.stream_tokens <= 60


def test_eviction_equals_removing_the_same_blocks_from_an_unbounded_stream(tiny_adapters):
    """The KV that survives is exactly what the unbounded stream computed up to the first eviction: evicting only
    removes whole blocks and never recomputes or renumbers what stays."""
    a = tiny_adapters["qwen2_5_vl"]
    frames = make_frames(4, seed=3)
    bounded = StreamingSession(a, "uniform:ratio=0.25", max_stream_tokens=10**6)
    free = StreamingSession(a, "uniform:ratio=0.25")
    for i, f in enumerate(frames):
        bounded.push_frame(f, time_s=float(i))
        free.push_frame(f, time_s=float(i))
    from vlmedge.runtime.kv_tail import remove_span

    b = bounded.store.blocks[1]
    bounded.store.capacity_tokens = bounded.stream_tokens  # now full: the next make_room evicts block 1
    bounded._make_room(b.length)
    remove_span(free.cache, b.start, b.start + b.length)
    for (k0, v0), (k1, v1) in zip(_kv(bounded), _kv(free)):
        assert torch.equal(k0, k1) and torch.equal(v0, v1)


def test_requery_buffer_follows_eviction(tiny_adapters):
    a = tiny_adapters["llava_onevision"]
    s = StreamingSession(a, "script:ratio=0.5", max_stream_tokens=70, requery_frames=3)
    for i, f in enumerate(make_frames(8, seed=4)):
        s.push_frame(f, time_s=float(i))
        for g in s._segments:  # every buffered frame's recorded start is where its block now begins
            assert any(b.start == g.start for b in s.store.blocks)
    before = _kv(s)
    ans = s.ask(Q, max_new_tokens=1)
    assert ans.requeried_frames <= 3
    for (k0, v0), (k1, v1) in zip(before, _kv(s)):
        assert torch.equal(k0, k1) and torch.equal(v0, v1)


def test_a_frame_that_cannot_fit_is_refused_clearly(tiny_adapters):
    s = StreamingSession(tiny_adapters["llava_onevision"], "none", max_stream_tokens=20, sink_frames=0)
    with pytest.raises(InputError, match="do not fit a token store"):
        s.push_frame(make_frames(1)[0])


def test_memory_budget_plans_the_store_and_accounts_for_it(tiny_adapters):
    from vlmedge.runtime.planner import plan_for, plan_memory

    a = tiny_adapters["llava_onevision"]
    p0 = plan_for(a, "uniform:ratio=0.25", 2**30)
    # room for 40 frames
    budget = p0.weights_bytes + p0.workspace_bytes + 512 * (p0.prompt_tokens + 64 + 40 * p0.tokens_per_frame)
    plan = plan_memory(budget, p0.weights_bytes, p0.workspace_bytes, 512, p0.tokens_per_frame, p0.prompt_tokens)
    assert plan.frames == 40
    s = StreamingSession(a, "uniform:ratio=0.25", memory_budget=plan)
    assert s.store.capacity_tokens == plan.capacity_tokens - plan.question_tokens
    rss = []
    for i, f in enumerate(make_frames(300, h=8, w=8, seed=5)):
        s.push_frame(f, time_s=float(i))
        m = s.memory()
        assert m["total"] <= m["budget"] and m["kv"] <= s.store.capacity_tokens * plan.kv_bytes_per_token
        if i in (100, 299):
            rss.append(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)
    assert s.store.evicted_blocks > 0
    assert rss[1] - rss[0] < 20 * 1024  # KB: the process's peak does not grow once the store is full
    with pytest.raises(InputError, match="need at least"):
        StreamingSession(a, "none", memory_budget="64KiB")
    with pytest.raises(InputError, match="not both"):
        StreamingSession(a, "none", memory_budget="1MiB", max_stream_tokens=100)


def test_window_methods_store_whole_windows(tiny_adapters):
    a = tiny_adapters["qwen2_5_omni"]
    s = StreamingSession(a, "omnizip", max_stream_tokens=200)
    g = torch.Generator().manual_seed(0)
    for i, f in enumerate(make_frames(10, seed=6)):
        s.push_frame(f, time_s=float(i))
        s.push_audio((torch.randn(16000, generator=g) * 0.1).numpy(), float(i))
        assert s.stream_tokens <= 200
    s.flush()
    assert s.stream_tokens <= 200 and s.store.evicted_blocks > 0
    assert {b.kind for b in s.store.blocks} == {"window"}


def test_offload_keeps_a_bounded_host_store_and_retrieves_for_a_question(tiny_adapters):
    a = tiny_adapters["llava_onevision"]
    s = StreamingSession(a, "uniform:ratio=0.5", max_stream_tokens=40, eviction="offload", offload_tokens=27,
                         retrieve_tokens=18)
    for i, f in enumerate(make_frames(10, seed=7)):
        s.push_frame(f, time_s=float(i))
    st = s.store
    assert st.offloaded_blocks == st.evicted_blocks > 0 and st.host_tokens <= 27
    assert st.dropped_blocks == st.offloaded_blocks - len(st.host)
    evicted = {b.time_s for b in st.host}
    assert evicted.isdisjoint({b.time_s for b in st.blocks})  # a block is in the cache or on the host, not both
    before, n = _kv(s), s.stream_tokens
    ans = s.ask(Q, max_new_tokens=2)
    per_block = st.host[0].length  # 6 pooled tokens + the newline
    assert per_block == 7 and len(st.host) == 27 // 7
    # as many as the allowance holds
    assert ans.retrieved_blocks == 18 // 7 and ans.retrieved_tokens == 14
    assert ans.stream_tokens == n + 14
    assert s.stream_tokens == n
    for (k0, v0), (k1, v1) in zip(before, _kv(s)):
        assert torch.equal(k0, k1) and torch.equal(v0, v1)
    assert s.memory()["buffers"] >= st.host_tokens * 512  # the host store is accounted for


def test_retrieval_scores_the_block_the_question_attends_to(tiny_adapters):
    from vlmedge.models.layer_runner import LayerRunner
    from vlmedge.models.positions import PositionState
    from vlmedge.runtime.retrieval import choose, score_blocks
    from vlmedge.runtime.token_store import Block

    a = tiny_adapters["llava_onevision"]
    cache = a.new_cache()
    ids = a.tokenize(Q)
    pos = a.positions.text(PositionState(), ids.numel())
    emb = a.embed_text(ids)
    runner = LayerRunner(a)
    _, q = runner.run(emb, pos, a.new_cache(), range(0, 2), capture_layer=1, capture_rows=torch.arange(ids.numel()),
                      capture_queries=True)
    kvh, hd = 2, 16
    aligned = q[0, ::2].mean(1, keepdim=True)[None].expand(1, kvh, 3, hd) * 5  # keys along the question's queries

    def block(keys, t):
        kv = [(torch.zeros(1, kvh, 3, hd), torch.zeros(1, kvh, 3, hd)), (keys.clone(), torch.zeros(1, kvh, 3, hd))]
        return Block(0, 3, "frame", t, kv)

    blocks = [block(-aligned, 0.0), block(aligned, 1.0), block(torch.zeros_like(aligned), 2.0)]
    with torch.no_grad():
        scores = score_blocks(a, cache, blocks, emb, pos, layer=1)
    assert int(scores.argmax()) == 1 and scores[0] < scores[2] < scores[1]
    assert cache.get_seq_length() == 0  # the scoring pass left the cache as it was
    assert [b.time_s for b in choose(blocks, scores, 6)] == [1.0, 2.0]



def test_offload_needs_sizes(tiny_adapters):
    with pytest.raises(InputError, match="offload_tokens"):
        StreamingSession(tiny_adapters["llava_onevision"], "none", max_stream_tokens=100, eviction="offload")
    with pytest.raises(InputError, match="bounded stream"):
        StreamingSession(tiny_adapters["llava_onevision"], "none", eviction="offload")


def test_the_offload_store_comes_out_of_the_budget(tiny_adapters):
    from vlmedge.runtime.planner import plan_memory

    a = tiny_adapters["llava_onevision"]
    plan = plan_memory(2**22, 500_000, 100_000, 512, 5, 10)
    s = StreamingSession(a, "uniform:ratio=0.25", memory_budget=plan, eviction="offload", offload_tokens=300,
                         retrieve_tokens=40)
    assert s.store.capacity_tokens == plan.capacity_tokens - plan.question_tokens - 300 - 40
    for i, f in enumerate(make_frames(40, h=8, w=8, seed=8)):
        s.push_frame(f, time_s=float(i))
    assert s.memory()["total"] <= plan.budget_bytes


def test_live_blocks_score_like_the_same_keys_offloaded(tiny_adapters):
    from vlmedge.models.positions import PositionState
    from vlmedge.runtime.retrieval import score_blocks
    from vlmedge.runtime.token_store import Block

    a = tiny_adapters["llava_onevision"]
    s = StreamingSession(a, "uniform:ratio=0.5")
    for i, f in enumerate(make_frames(2, seed=3)):
        s.push_frame(f, time_s=float(i))
    cache, n = s.cache, s.stream_tokens
    spans = [(0, 5), (5, n - 5)]
    copies = [Block(st, ln, "frame", 0.0, [(layer.keys[:, :, st:st + ln].clone(), layer.values[:, :, st:st + ln])
                                            for layer in cache.layers]) for st, ln in spans]
    live = [Block(st, ln, "frame", 0.0) for st, ln in spans]
    ids = a.tokenize(Q)
    pos = a.positions.text(PositionState(), ids.numel())
    with torch.no_grad():
        off, on = score_blocks(a, cache, copies, a.embed_text(ids), pos, layer=1, live=live)
    torch.testing.assert_close(on, off)
    assert s.stream_tokens == n  # the question's partial prefill was cut away again


def test_a_focused_question_sees_prefix_best_blocks_and_latest_frames(tiny_adapters):
    a = tiny_adapters["llava_onevision"]
    s = StreamingSession(a, "uniform:ratio=0.5", max_stream_tokens=40, eviction="offload", offload_tokens=27,
                         retrieve_tokens=14, retrieval="focus")
    for i, f in enumerate(make_frames(10, seed=7)):
        s.push_frame(f, time_s=float(i))
    st = s.store
    before, n = _kv(s), s.stream_tokens
    prefix = st.blocks[st.sink_blocks].start
    ans = s.ask(Q, max_new_tokens=2)
    # the prompt and sink frame, two 7-token picks among older live and offloaded blocks, the latest 2 frames
    assert ans.stream_tokens == prefix + 14 + 2 * 7
    assert ans.retrieved_tokens == 7 * ans.retrieved_blocks <= 14
    assert s.stream_tokens == n
    for (k0, v0), (k1, v1) in zip(before, _kv(s)):  # the stream's cache is back, untouched
        assert torch.equal(k0, k1) and torch.equal(v0, v1)
    with pytest.raises(InputError, match="retrieval must be"):
        StreamingSession(a, "none", max_stream_tokens=40, eviction="offload", offload_tokens=27, retrieval="all")


@pytest.mark.parametrize("family", ["llava_onevision", "qwen2_5_vl"])
def test_shifted_cached_keys_equal_keys_computed_at_the_shifted_positions(tiny_adapters, family):
    from vlmedge.models.layer_runner import LayerRunner
    from vlmedge.runtime.retrieval import key_shift, shift_keys

    a = tiny_adapters[family]
    runner = LayerRunner(a)
    hd = runner.lm.config.hidden_size // runner.lm.config.num_attention_heads
    torch.manual_seed(0)
    raw = torch.randn(1, 2, 9, hd)
    rows = a.positions.rows
    ids = torch.stack([torch.arange(40, 49) + 3 * r for r in range(rows)])  # M-RoPE rows need not agree

    def rope(k, pos):
        cos, sin = runner.rotary(k.new_zeros(1, k.shape[2], 1), pos)
        half = hd // 2
        return k * cos[0] + torch.cat([-k[..., half:], k[..., :half]], -1) * sin[0]

    for delta in (-37, 5, 1000):
        assert torch.allclose(shift_keys(rope(raw, ids), key_shift(a, delta, 9)), rope(raw, ids + delta), atol=1e-4)


def _one_layer(adapter):
    """A copy whose LLM keeps only its first decoder layer: then cached keys and values depend on each token and
    its position alone, not on the context they were computed in, so a stream rebuilt from some of its frames
    must hold exactly the same entries."""
    import copy

    a = copy.deepcopy(adapter)
    lm = a.language_model()
    lm.layers = torch.nn.ModuleList(list(lm.layers)[:1])
    for cfg in {id(c): c for c in (lm.config, a.model.config.get_text_config())}.values():
        cfg.num_hidden_layers = 1
        if getattr(cfg, "layer_types", None):
            cfg.layer_types = cfg.layer_types[:1]
    return a


def test_a_focused_question_with_compact_positions_equals_a_stream_of_just_what_it_sees(tiny_adapters):
    """Compact focus lays the sink, the kept offloaded block and the live blocks end to end: the answer's logits
    equal those of a fresh stream that was shown only those frames."""
    a = _one_layer(tiny_adapters["llava_onevision"])
    frames = make_frames(7, seed=11)
    probe = StreamingSession(a, "none")
    prefix = probe.stream_tokens
    probe.push_frame(frames[0], time_s=0.0)
    block = probe.stream_tokens - prefix
    # the cache holds the prompt, the sink and 3 frames; the host store keeps only the last offloaded frame
    s = StreamingSession(a, "none", max_stream_tokens=prefix + 4 * block, eviction="offload", offload_tokens=block,
                         retrieve_tokens=100 * block, retrieval="focus", keep_logits=True)
    for i, f in enumerate(frames):
        s.push_frame(f, time_s=float(i))
    assert [b.time_s for b in s.store.host] == [3.0] and s.store.dropped_blocks == 2
    focused = s.ask(Q, max_new_tokens=1)
    assert focused.retrieved_blocks == 1
    ref = StreamingSession(a, "none", keep_logits=True)
    for i in (0, 3, 4, 5, 6):
        ref.push_frame(frames[i], time_s=float(i))
    expected = ref.ask(Q, max_new_tokens=1)
    assert focused.stream_tokens == expected.stream_tokens
    assert torch.allclose(focused.logits[0], expected.logits[0], atol=1e-4)
    original = StreamingSession(a, "none", max_stream_tokens=prefix + 4 * block, eviction="offload",
                                offload_tokens=block, retrieve_tokens=100 * block, retrieval="focus",
                                focus_positions="original", keep_logits=True)
    for i, f in enumerate(frames):
        original.push_frame(f, time_s=float(i))
    assert not torch.allclose(original.ask(Q, max_new_tokens=1).logits[0], expected.logits[0], atol=1e-4)
    with pytest.raises(InputError, match="focus_positions"):
        StreamingSession(a, "none", focus_positions="packed")


def test_a_question_about_a_time_range_sees_exactly_its_frames(tiny_adapters):
    a = tiny_adapters["llava_onevision"]
    s = StreamingSession(a, "uniform:ratio=0.5", max_stream_tokens=40, eviction="offload", offload_tokens=42,
                         retrieve_tokens=21, retrieval="focus", keep_logits=True)
    for i, f in enumerate(make_frames(10, seed=7)):
        s.push_frame(f, time_s=float(i))
    st = s.store
    assert st.host and st.host[0].time_s <= 2.0  # frames 2-4 have left the cache: offloaded
    before, n = _kv(s), s.stream_tokens
    prefix = st.blocks[st.sink_blocks].start
    ans = s.ask(Q, max_new_tokens=1, time_range=(2, 4))
    assert ans.stream_tokens == prefix + 3 * 7 and ans.retrieved_blocks == 3  # frames 2, 3, 4, no latest frames
    assert s.ask(Q, max_new_tokens=1, time_range=(1.5, 6)).stream_tokens == prefix + 21  # the latest 3 that fit
    # the answer is the one a focus on exactly those blocks gives, and differs from the scored focus
    scored = s.ask(Q, max_new_tokens=1)
    assert scored.stream_tokens == prefix + 21 + 2 * 7
    assert s.stream_tokens == n
    for (k0, v0), (k1, v1) in zip(before, _kv(s)):  # the stream's cache is back, untouched
        assert torch.equal(k0, k1) and torch.equal(v0, v1)
    with pytest.raises(InputError, match="no frame the stream still holds lies in 20-30 s"):
        s.ask(Q, time_range=(20, 30))
    with pytest.raises(InputError, match="start before it ends"):
        s.ask(Q, time_range=(4, 2))
    with pytest.raises(InputError, match=r"time_range must be \(start_s, end_s\)"):
        s.ask(Q, time_range="2-4")
    for kw in ({}, {"retrieval": "focus"}):  # plain eviction keeps nothing to focus on
        plain = StreamingSession(a, "none", max_stream_tokens=60, **kw)
        plain.push_frame(make_frames(1)[0], time_s=0.0)
        with pytest.raises(InputError, match="eviction='offload' and retrieval='focus'"):
            plain.ask(Q, time_range=(0, 1))
