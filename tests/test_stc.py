"""STC (spec ../shared/specs/stc.md): test vectors S-TV1, S-TV3, S-TV4 (a)-(d), S-TV5 and the stream properties."""
import math

import pytest
import torch

from conftest import FAMILIES, make_frames
from vlmedge.compression import FrameContext, get_method
from vlmedge.compression.stc import (STC, PrunerMemory, STCStreamState, context_count, keep_from_scores, num_dynamic, prune_chunk,
                                     refresh_due, refresh_layer, score_tokens, select_channels, select_dynamic_tokens,
                                     selective_from_indices, selective_layer)
from vlmedge.compression.stc.cacher import tail_blocks
from vlmedge.errors import InputError, UnknownNameError
from vlmedge.models.base import FrameTokens
from vlmedge.runtime.session import StreamingSession

TOWERS = FAMILIES  # SigLIP (llava_onevision) and the Qwen2.5 tower (fused qkv in VL, split q/k/v in Omni)


# ----------------------------------------------------------------------------- pruner (S-TV1)
def stv1_tokens() -> torch.Tensor:
    rows = []
    for t in range(196):
        if t in (10, 50, 100, 150, 190):
            u = [-1.0, 1.0, -1.0, 1.0]
        else:
            u = [1 + 0.01 * math.sin(t), 0.5 + 0.01 * math.cos(t), 0.25 + 0.01 * math.sin(2 * t),
                 0.125 + 0.01 * math.cos(2 * t)]
        hi = [3 * math.sin(0.3 * (t + 1) * (c + 1)) for c in range(4)]
        rows.append([0.1 * x for x in u] + hi)
    return torch.tensor(rows, dtype=torch.float64).float()  # [196, 8]


def test_stv1_gaussian_pruner_single_chunk():
    z = stv1_tokens()
    mem = PrunerMemory()
    res = prune_chunk(z, mem, k=5)
    assert res.channels.tolist() == [1, 3, 2, 0]
    assert res.keep.tolist() == [[10, 50, 100, 150, 190]]
    s = res.scores[0].sort().values
    assert float(s[5] - s[4]) == pytest.approx(8.09, abs=0.01)  # score gap at the k boundary
    assert mem.mem_count == 1  # the memory holds one chunk
    torch.testing.assert_close(mem.mem_sum, z.mean(0))


def test_stv1_through_the_method_and_memory_is_updated_before_scoring():
    z = stv1_tokens()
    m = get_method("stc:tokens=5,context=0")  # the released pruner, which the test vector is of
    state = m.new_state()
    sel = m.compress(FrameTokens(features=z, grid_hw=(14, 14), trailer=z.new_zeros(0, 8)), FrameContext(0, 0.0), state)
    assert sel.keep.tolist() == [10, 50, 100, 150, 190] and sel.features is None
    # first chunk: the temporal anchor is this chunk's own mean in the selected channels
    sel_ch = select_channels(z)
    manual = score_tokens(z[None], z[:, sel_ch].mean(0), sel_ch)
    torch.testing.assert_close(prune_chunk(z, PrunerMemory(), 5).scores, manual)


def test_dual_anchor_keeps_highest_and_matches_formula():
    z = stv1_tokens()
    res = prune_chunk(z, PrunerMemory(), k=5, scorer="dual_anchor", alpha=0.5)
    assert res.keep.tolist() == [[10, 50, 100, 150, 190]]  # the outliers are farthest from both anchors
    zs = z[:, res.channels]
    a_t = torch.nn.functional.normalize(zs.mean(0), dim=-1)
    a_s = torch.nn.functional.normalize(zs.mean(0), dim=-1)
    cos = lambda a: torch.nn.functional.cosine_similarity(zs, a[None], dim=-1)  # noqa: E731
    torch.testing.assert_close(res.scores[0], 0.5 * (1 - cos(a_t)) + 0.5 * (1 - cos(a_s)))
    assert keep_from_scores(torch.tensor([[3.0, 1.0, 2.0, 0.0]]), 2, "dual_anchor").tolist() == [[0, 2]]
    assert keep_from_scores(torch.tensor([[3.0, 1.0, 2.0, 0.0]]), 2, "gaussian").tolist() == [[1, 3]]


def test_context_tokens_fill_part_of_the_budget_evenly_over_what_the_score_left():
    scores = torch.tensor([[float(v) for v in [9, 0, 9, 9, 9, 9, 9, 1, 9, 9, 9, 9]],
                           [float(v) for v in [5, 5, 5, 5, 5, 5, 5, 5, 5, 5, 0, 1]]])
    assert keep_from_scores(scores, 4, "gaussian").tolist() == keep_from_scores(scores, 4, "gaussian", 0.0).tolist()
    got = keep_from_scores(scores, 4, "gaussian", context=0.5)
    # two by score (the lowest), then two of the ten left at ranks floor(0.25 * 10) = 2 and floor(0.75 * 10) = 7
    assert got.tolist() == [[1, 3, 7, 9], [2, 7, 10, 11]]
    assert keep_from_scores(-scores, 4, "dual_anchor", context=0.5).tolist() == got.tolist()
    assert keep_from_scores(scores, 12, "gaussian", context=0.5).tolist() == [list(range(12))] * 2
    assert keep_from_scores(scores, 1, "gaussian", context=0.9).tolist() == [[1], [10]]  # one token: by score
    # the count of context tokens: rounded share, never the whole budget
    assert [context_count(k, 0.5) for k in (1, 2, 3, 47, 64)] == [0, 1, 2, 24, 32]
    assert context_count(10, 0.99) == 9
    # S-TV1 holds with the release setting, and prune_chunk passes context through
    z = torch.randn(1, 30, 8)
    res = prune_chunk(z, PrunerMemory(), 10, context=0.3)
    assert res.keep.shape == (1, 10) and bool((res.keep[0][1:] > res.keep[0][:-1]).all())
    by_score = keep_from_scores(res.scores, 7, "gaussian")[0]
    assert set(by_score.tolist()) <= set(res.keep[0].tolist())


def test_memory_is_full_channel_running_mean_and_legacy_mode_agrees_while_channels_stay():
    g = torch.Generator().manual_seed(0)
    frames = [torch.randn(12, 6, generator=g) * torch.tensor([1, 4, 16, 64, 256, 1024.0]) for _ in range(3)]
    full, legacy = PrunerMemory(), PrunerMemory()
    for i, z in enumerate(frames):
        a = prune_chunk(z, full, k=4)
        b = prune_chunk(z, legacy, k=4, memory_mode="legacy_subset_list")
        assert a.channels.tolist() == [0, 1, 2]  # the channel set never changes here, so both modes agree
        torch.testing.assert_close(a.scores, b.scores)
        assert a.keep.tolist() == b.keep.tolist()
        assert full.mem_count == i + 1
    torch.testing.assert_close(full.mem_sum / full.mem_count, torch.stack([f.mean(0) for f in frames]).mean(0))
    assert full.mem_sum.dtype == torch.float32 and full.mem_sum.shape == (6,)
    # when the selected channel set changes, the legacy list mixes channels and the two modes part
    full, legacy = PrunerMemory(), PrunerMemory()
    z0, z1 = frames[0], frames[1].flip(-1)  # second chunk: the low-variance channels are now 3, 4, 5
    prune_chunk(z0, full, k=4), prune_chunk(z0, legacy, k=4, memory_mode="legacy_subset_list")
    a = prune_chunk(z1, full, k=4)
    b = prune_chunk(z1, legacy, k=4, memory_mode="legacy_subset_list")
    assert a.channels.tolist() == [5, 4, 3] and not torch.allclose(a.scores, b.scores)


# ----------------------------------------------------------------------------- selection (S-TV3)
def test_stv3_dynamic_token_selection():
    sims = [1, 1, -0.909, 1, 1, 0.616, 1, 1]
    ref = torch.zeros(8, 4)
    ref[:, 0] = 1
    cur = torch.zeros(8, 4)
    for t, s in enumerate(sims):
        cur[t, 0], cur[t, 1] = s, math.sqrt(max(0.0, 1 - s * s))
    cur = cur * 3.0  # cosine ignores scale
    assert select_dynamic_tokens(cur, ref, 0.25).tolist() == [2, 5]
    assert num_dynamic(729, 0.25) == 182 and num_dynamic(8, 0.01) == 1 and num_dynamic(8, 1.0) == 8
    # returned ascending even when topk finds them in another order
    assert select_dynamic_tokens(cur[[5, 1, 2, 3, 4, 0, 6, 7]], ref, 0.25).tolist() == [0, 2]


# ----------------------------------------------------------------------------- cacher (S-TV4) per layer
def block_inputs(a, frame):
    """Every block's input `[T, C]` for one frame, and the context."""
    with torch.no_grad():
        hidden, ctx = a.vision_embed(a.pixels(frame))
        ins = []
        for i in range(len(a.vision_blocks())):
            ins.append(a.vision_tokens(hidden))
            hidden = a.vision_block_forward(i, hidden, ctx)
    return ins, ctx, hidden


def _block_pairs(a):
    """Per vision block of `a`: (index, its parts, its context, its input on frame 0 and on another frame 1)."""
    f0, f1 = make_frames(2, seed=3)
    ins0, ctx, _ = block_inputs(a, f0)
    ins1, _, _ = block_inputs(a, f1)
    for i in range(len(a.vision_blocks())):
        yield i, a.vision_layer_parts(i, ctx), ctx, ins0[i], ins1[i]


@pytest.mark.parametrize("family", TOWERS)
@torch.no_grad()
def test_stv4_cacher_layer_properties(tiny_adapters, family):
    a = tiny_adapters[family]
    for i, parts, ctx, h, hc in _block_pairs(a):
        T = h.shape[0]
        # (a) the refresh pass is the unpatched layer: exactly the block taken apart, and the HF block to 1e-5
        out, ref = refresh_layer(parts, h)
        x = parts.norm1(h)
        rows = torch.arange(T)
        attn = parts.attend(rows, parts.q(x), parts.k(x), parts.v(x))
        h1 = h + attn
        mlp = parts.mlp(parts.norm2(h1))
        assert torch.equal(out, h1 + mlp)
        assert torch.equal(ref.attn, attn) and torch.equal(ref.mlp, mlp)
        assert torch.equal(ref.k, parts.k(x)) and torch.equal(ref.v, parts.v(x)) and ref.k.shape == (T, h.shape[1])
        hf = a.vision_tokens(a.vision_block_forward(i, h.reshape(_block_shape(a, h)), ctx))
        torch.testing.assert_close(out, hf, atol=1e-5, rtol=1e-5)
        # (b) r = 1 equals the full layer on another frame, max error 0.0
        full_c, _ = refresh_layer(parts, hc)
        sel_out, idx = selective_layer(parts, hc, ref, 1.0)
        assert idx.tolist() == list(range(T))
        assert (sel_out - full_c).abs().max().item() == 0.0
        # (c) a frame identical to the reference reproduces the full output (only rounding differs)
        same, _ = selective_layer(parts, h, ref, 0.25)
        torch.testing.assert_close(same, out, atol=1e-6, rtol=1e-6)
        # (d) only tokens {2, 5} changed: they are selected, exact; others keep stale attention/MLP deltas
        g = torch.Generator().manual_seed(i)
        hd = h.clone()
        hd[[2, 5]] += 3.0 * torch.randn(2, h.shape[1], generator=g)
        full_d, _ = refresh_layer(parts, hd)
        out_d, idx_d = selective_layer(parts, hd, ref, 2.5 / T)
        assert idx_d.tolist() == [2, 5]
        torch.testing.assert_close(out_d[[2, 5]], full_d[[2, 5]], atol=1e-5, rtol=1e-5)
        err = (out_d - full_d).abs().amax(dim=1)
        others = torch.tensor([t for t in range(T) if t not in (2, 5)])
        win = _window_ids(a, i, ctx, T)
        affected = others[(win[others] == win[2]) | (win[others] == win[5])]
        untouched = others[(win[others] != win[2]) & (win[others] != win[5])]
        assert affected.numel() > 0 and bool((err[affected] > 1e-4).all()), "stale rows must differ from the full layer"
        # windowed Qwen blocks: attention never crosses windows, so other windows' cached rows stay exact
        assert untouched.numel() == 0 or float(err[untouched].max()) < 1e-5
        # selective_from_indices with the same rows is the same computation
        assert torch.equal(selective_from_indices(parts, hd, ref, idx_d), out_d)


@pytest.mark.parametrize("family", TOWERS)
@torch.no_grad()
def test_every_row_attends_with_attention_all(tiny_adapters, family):
    """Our extension: unselected rows attend too, so only their MLP output is the reference's (no ghosts)."""
    a = tiny_adapters[family]
    for i, parts, ctx, h, hc in _block_pairs(a):
        T = h.shape[0]
        out, ref = refresh_layer(parts, h, attention="all")
        out_sel, ref_sel = refresh_layer(parts, h)
        assert torch.equal(out, out_sel)  # the same block; only what the reference keeps differs
        assert ref.attn is None and ref_sel.q is None and torch.equal(ref.q, parts.q(parts.norm1(h)))
        full_c, _ = refresh_layer(parts, hc)
        assert (selective_layer(parts, hc, ref, 1.0, attention="all")[0] - full_c).abs().max().item() == 0.0
        same, _ = selective_layer(parts, h, ref, 0.25, attention="all")
        torch.testing.assert_close(same, out, atol=1e-6, rtol=1e-6)
        g = torch.Generator().manual_seed(i)
        hd = h.clone()
        hd[[2, 5]] += 3.0 * torch.randn(2, h.shape[1], generator=g)
        full_d, ref_d = refresh_layer(parts, hd)
        out_d, idx_d = selective_layer(parts, hd, ref, 2.5 / T, attention="all")
        assert idx_d.tolist() == [2, 5]
        torch.testing.assert_close(out_d[[2, 5]], full_d[[2, 5]], atol=1e-5, rtol=1e-5)
        others = torch.tensor([t for t in range(T) if t not in (2, 5)])
        # the others' attention is the full layer's (their own inputs, keys and values did not change) ...
        want = (hd + ref_d.attn + ref.mlp)[others]
        torch.testing.assert_close(out_d[others], want, atol=1e-5, rtol=1e-5)
        # ... where the release keeps their stale attention output
        released, _ = selective_layer(parts, hd, ref_sel, 2.5 / T)
        win = _window_ids(a, i, ctx, T)
        affected = others[(win[others] == win[2]) | (win[others] == win[5])]
        assert bool(((released - out_d).abs().amax(dim=1)[affected] > 1e-4).all())
    with pytest.raises(ValueError, match="attention must be one of"):
        selective_layer(parts, hd, ref, 0.25, attention="some")
    with pytest.raises(ValueError, match="holds no queries"):  # a reference of the other mode
        selective_layer(parts, hd, ref_sel, 0.25, attention="all")
    with pytest.raises(ValueError, match="holds no attention output"):
        selective_layer(parts, hd, ref, 0.25)


@pytest.mark.parametrize("family", TOWERS)
@torch.no_grad()
def test_tail_runs_the_release_first_and_every_row_in_the_last_blocks(tiny_adapters, family):
    assert [tail_blocks(0.25, n) for n in (1, 2, 4, 27, 32)] == [1, 1, 1, 7, 8]
    assert tail_blocks(1.0, 5) == 5 and tail_blocks(0.001, 3) == 1 and tail_blocks(0.5, 4) == 2
    assert get_method("stc").block_modes(8) == ["selected"] * 6 + ["all"] * 2
    assert get_method("stc:attention=all").block_modes(3) == ["all"] * 3
    assert get_method("stc:attention=selected,tail=1").block_modes(3) == ["selected"] * 3
    a = tiny_adapters[family]
    n = len(a.vision_blocks())
    m = get_method("stc:pruner=false,tail=0.5")
    modes = m.block_modes(n)
    assert "selected" in modes and modes[-1] == "all"
    f0, f1 = make_frames(2, seed=5)
    st = m.new_state()
    m.encode_frame(a, f0, st)
    got = m.encode_frame(a, f1, st).features
    assert st.last_refresh is False
    assert all((r.attn is None) == (mode == "all") and (r.q is None) == (mode == "selected")
               for r, mode in zip(st.refs, modes))
    # the same frames by hand: each block's refresh, then its selective pass in that block's mode
    refs, hidden = [], None
    for f in (f0, f1):
        hidden, ctx = a.vision_embed(a.pixels(f))
        for i in range(n):
            parts, h = a.vision_layer_parts(i, ctx), a.vision_tokens(hidden)
            if f is f0:
                out, ref = refresh_layer(parts, h, attention=modes[i])
                refs.append(ref)
            else:
                out, _ = selective_layer(parts, h, refs[i], 0.25, attention=modes[i])
            hidden = a.vision_hidden(out, hidden)
    assert torch.equal(got, a.vision_project(hidden, ctx).features)
    others = {}
    for mode in ("all", "selected"):
        mm = get_method(f"stc:pruner=false,attention={mode}")
        s2 = mm.new_state()
        mm.encode_frame(a, f0, s2)
        others[mode] = mm.encode_frame(a, f1, s2).features
    assert not torch.equal(got, others["all"]) and not torch.equal(got, others["selected"])


@torch.no_grad()
def test_a_refresh_overwrites_the_references_in_place_and_a_failed_frame_drops_them(tiny_adapters, monkeypatch):
    a = tiny_adapters["llava_onevision"]
    m = get_method("stc:pruner=false")
    frames = make_frames(4, seed=9)
    st = m.new_state()
    m.encode_frame(a, frames[0], st)
    def buffers(refs):
        return [[t.data_ptr() for t in (r.k, r.v, r.attn if r.attn is not None else r.q, r.mlp)] for r in refs]

    first = buffers(st.refs)
    m.encode_frame(a, frames[1], st)
    out = m.encode_frame(a, frames[2], st)
    assert st.last_refresh and st.refreshes == 2
    assert buffers(st.refs) == first
    fresh = m.new_state()  # new buffers: the same numbers
    assert torch.equal(out.features, m.encode_frame(a, frames[2], fresh).features)
    for r, w in zip(st.refs, fresh.refs):
        for name in ("k", "v", "attn", "q", "mlp"):
            x, y = getattr(r, name), getattr(w, name)
            assert (x is None and y is None) or torch.equal(x, y), name
    # a reference of another shape is not reused
    hidden, ctx = a.vision_embed(a.pixels(frames[0]))
    parts, h = a.vision_layer_parts(0, ctx), torch.randn(5, a.vision_tokens(hidden).shape[1])
    _, ref = refresh_layer(parts, h, attention=m.block_modes(len(st.refs))[0], into=st.refs[0])
    assert ref is not st.refs[0] and ref.num_tokens == 5
    # a refresh frame that fails half way leaves references of two frames: they are dropped, the next refreshes
    m.encode_frame(a, frames[3], st)  # selective
    real = a.vision_layer_parts

    def broken(i, ctx):
        if i == len(st.refs) - 1:
            raise RuntimeError("boom")
        return real(i, ctx)

    monkeypatch.setattr(a, "vision_layer_parts", broken)
    with pytest.raises(RuntimeError, match="boom"):
        m.encode_frame(a, frames[0], st)
    assert st.refs == [] and st.frames == 4 and st.refreshes == 2
    monkeypatch.undo()
    m.encode_frame(a, frames[1], st)
    assert st.last_refresh and st.refs
    # a selective frame that fails keeps them (it never writes to them)
    monkeypatch.setattr(a, "vision_layer_parts", broken)
    with pytest.raises(RuntimeError, match="boom"):
        m.encode_frame(a, frames[2], st)
    assert len(st.refs) == len(a.vision_blocks())
    monkeypatch.undo()
    assert m.encode_frame(a, frames[2], st) is not None and st.last_refresh is False


def _block_shape(a, h):
    return (1, *h.shape) if a.family == "llava_onevision" else tuple(h.shape)


def _window_ids(a, index, ctx, T):
    """Attention-window id of every token of block `index` (one window for global attention)."""
    if a.family == "llava_onevision":
        return torch.zeros(T, dtype=torch.long)
    x = ctx.extras
    cu = x["cu_seqlens"] if index in a._visual.fullatt_block_indexes else x["cu_window"]
    return torch.repeat_interleave(torch.arange(len(cu) - 1), (cu[1:] - cu[:-1]).long())


def test_qwen_tiny_tower_has_both_window_and_full_blocks(tiny_adapters):
    a = tiny_adapters["qwen2_5_vl"]
    _, ctx, _ = block_inputs(a, make_frames(1)[0])
    T = a.vision_tokens(a.vision_embed(a.pixels(make_frames(1)[0]))[0]).shape[0]
    assert len(set(_window_ids(a, 0, ctx, T).tolist())) > 1 and len(set(_window_ids(a, 1, ctx, T).tolist())) == 1


# ----------------------------------------------------------------------------- schedule (S-TV5)
@torch.no_grad()
def test_stv5_schedule_and_reference_frames(tiny_adapters):
    a = tiny_adapters["llava_onevision"]
    m = get_method("stc:tokens=6,cache_interval=2")
    state = m.new_state()
    frames = make_frames(6, seed=5)
    modes, ref_frames, refs_seen = [], [], []
    for f in frames:
        m.encode_frame(a, f, state)
        modes.append("full" if state.last_refresh else "sel")
        ref_frames.append(state.ref_frame)
        refs_seen.append(list(state.refs))
    assert modes == ["full", "sel", "full", "sel", "full", "sel"]
    assert [ref_frames[i] for i in (1, 3, 5)] == [0, 2, 4]
    for i in (1, 3, 5):  # a selective frame keeps (and used) the previous refresh's tensors, untouched
        assert all(r is p for r, p in zip(refs_seen[i], refs_seen[i - 1]))
    assert state.refreshes == 3 and state.selective == 3 and state.frames == 6
    # N = 3 and N = 1
    for n, expect in [(3, [1, 0, 0, 1, 0, 0]), (1, [1] * 6)]:
        m3, st = get_method(f"stc:cache_interval={n}"), STCStreamState()
        got = []
        for f in frames:
            m3.encode_frame(a, f, st)
            got.append(int(st.last_refresh))
        assert got == expect


def test_refresh_due_rules():
    st = STCStreamState()
    assert refresh_due(st, 2, 16, 2)  # first frame
    st.frames, st.num_tokens, st.refs, st.since_refresh = 1, 16, [object(), object()], 0
    st.refs = [type("R", (), {"num_tokens": 16})() for _ in range(2)]
    assert not refresh_due(st, 2, 16, 2)
    assert refresh_due(st, 2, 20, 2)  # T changed
    assert refresh_due(st, 3, 16, 2)  # a layer without a reference
    st.since_refresh = 1
    assert refresh_due(st, 2, 16, 2)


# ----------------------------------------------------------------------------- stream-level properties
def encode_stream(m, a, frames, state):
    outs = []
    for i, f in enumerate(frames):
        tok = m.encode_frame(a, f, state)
        sel = m.compress(tok, FrameContext(i, float(i)), state)
        outs.append((tok.features, sel.keep))
    return outs


@pytest.mark.parametrize("family", ["llava_onevision", "qwen2_5_vl"])
@torch.no_grad()
def test_r1_equals_full_encode_and_identical_frame_reproduces_full(tiny_adapters, family):
    a = tiny_adapters[family]
    f0, f1 = make_frames(2, seed=7)
    m, st = get_method("stc:ratio=1.0"), STCStreamState()
    m.encode_frame(a, f0, st)
    out = m.encode_frame(a, f1, st)
    assert st.last_refresh is False
    always = get_method("stc:cache_interval=1")
    assert torch.equal(out.features, always.encode_frame(a, f1, STCStreamState()).features)
    torch.testing.assert_close(out.features, a.encode_frame(f1).features, atol=1e-5, rtol=1e-5)
    # the same frame again (selective at r = 0.25) gives the full output
    m2, st2 = get_method("stc"), STCStreamState()
    first = m2.encode_frame(a, f0, st2)
    again = m2.encode_frame(a, f0, st2)
    assert st2.last_refresh is False
    torch.testing.assert_close(again.features, first.features, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(again.features, a.encode_frame(f0).features, atol=1e-5, rtol=1e-5)
    # a different frame at r = 0.25 really reuses the cache (differs from the full encode)
    other = m2.encode_frame(a, f1, get_method("stc").new_state())  # fresh: refresh, equals full
    torch.testing.assert_close(other.features, a.encode_frame(f1).features, atol=1e-5, rtol=1e-5)


@torch.no_grad()
def test_streams_are_independent_and_reset_forgets(tiny_adapters):
    a = tiny_adapters["llava_onevision"]
    m = get_method("stc:tokens=5")
    fa, fb = make_frames(4, seed=11), make_frames(4, seed=12)
    alone_a = encode_stream(m, a, fa, m.new_state())
    alone_b = encode_stream(m, a, fb, m.new_state())
    sa, sb = m.new_state(), m.new_state()
    for i in range(4):  # interleaved on one model instance
        for frames, st, alone in ((fa, sa, alone_a), (fb, sb, alone_b)):
            tok = m.encode_frame(a, frames[i], st)
            sel = m.compress(tok, FrameContext(i, float(i)), st)
            assert torch.equal(tok.features, alone[i][0]) and torch.equal(sel.keep, alone[i][1])
    # reset clears references, counters and memory; the stream then repeats a fresh one exactly
    assert sa.refs and sa.memory.mem_count == 4
    sa.reset()
    assert sa.refs == [] and sa.memory.mem_sum is None and sa.memory.mem_count == 0 and sa.frames == 0
    assert sa.ref_frame is None and sa.since_refresh == 0
    again = encode_stream(m, a, fa, sa)
    assert all(torch.equal(x[0], y[0]) and torch.equal(x[1], y[1]) for x, y in zip(again, alone_a))
    # nothing was stored on the model's modules
    assert not any(n.startswith(("reference", "_stc")) for mod in a.model.modules() for n in vars(mod))


@torch.no_grad()
def test_switches_and_gate(tiny_adapters):
    a = tiny_adapters["llava_onevision"]
    frames = make_frames(4, seed=2)
    # taps, as Adapter.encode_frame gives them (a refresh frame is the full tower)
    m, st = get_method("stc"), STCStreamState()
    tapped = m.encode_frame(a, frames[0], st, taps=(0, -1))
    plain = a.encode_frame(frames[0], taps=(0, -1))
    assert set(tapped.taps) == {0, -1}
    for t in (0, -1):
        torch.testing.assert_close(tapped.taps[t], plain.taps[t], atol=1e-5, rtol=1e-5)
    # cacher off: the adapter's own encoder, state untouched
    m = get_method("stc:cacher=false")
    st = m.new_state()
    for f in frames:
        assert torch.equal(m.encode_frame(a, f, st).features, a.encode_frame(f).features)
    assert st.frames == 0 and st.refs == []
    # pruner off: everything kept, memory untouched
    m = get_method("stc:pruner=off")
    st = m.new_state()
    tok = m.encode_frame(a, frames[0], st)
    assert m.compress(tok, FrameContext(0, 0.0), st).keep.tolist() == list(range(tok.num_tokens))
    assert st.memory.mem_count == 0
    # gate at threshold 1: every different frame refreshes; at -1 the gate never fires
    for thr, expect, gated in [(1.0, [1, 1, 1, 1], 3), (-1.0, [1, 0, 1, 0], 0)]:
        m, st = get_method(f"stc:refresh_gate=true,gate_threshold={thr}"), STCStreamState()
        got = []
        for f in frames:
            out = m.encode_frame(a, f, st)
            got.append(int(st.last_refresh))
        assert got == expect and st.gated == gated
        if thr == 1.0:
            assert st.last_gate_similarity is not None and st.last_gate_similarity < 1.0
            torch.testing.assert_close(out.features, a.encode_frame(frames[-1]).features, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("family", FAMILIES)
def test_session_end_to_end(tiny_adapters, family):
    a = tiny_adapters[family]
    s = StreamingSession(a, "stc:tokens=6", max_new_tokens=2)
    assert isinstance(s.method, STC) and isinstance(s.method_state, STCStreamState)
    frames = make_frames(3, seed=4)
    for i, f in enumerate(frames):
        st = s.push_frame(f, time_s=float(i))
        assert st.tokens_kept == min(6, st.tokens_in)
    assert [bool(x) for x in (s.method_state.refreshes, s.method_state.selective)] == [True, True]
    assert s.method_state.memory.mem_count == 3
    assert s.ask("what is there?").frames == 3
    # kept indices ascending, budget clamped to P
    m = get_method("stc:tokens=1000")
    state = m.new_state()
    tok = m.encode_frame(a, frames[0], state)
    sel = m.compress(tok, FrameContext(0, 0.0), state)
    assert sel.keep.tolist() == list(range(tok.num_tokens))
    sel = get_method("stc:tokens=6").compress(tok, FrameContext(0, 0.0), STCStreamState())
    assert sel.keep.numel() == 6 and bool((sel.keep[1:] > sel.keep[:-1]).all())
    # a session reset starts a fresh STC state
    s.reset()
    assert s.method_state.frames == 0 and s.method_state.memory.mem_count == 0


def test_settings_are_typed_validated_and_round_trip():
    m = get_method("stc")
    got = (m.tokens, m.ratio, m.cache_interval, m.scorer, m.alpha, m.channel_ratio)
    assert got == (64, 0.25, 2, "gaussian", 0.5, 0.5)
    assert m.cacher and m.pruner and not m.refresh_gate and m.gate_threshold == 0.85
    assert m.context == 0.5  # our extension, on by default (method.py says why); context=0 is the release
    assert m.attention == "tail" and m.tail == 0.25  # our extension, on by default (method.py says why)
    m = get_method("stc:tokens=64,ratio=0.5,cache_interval=3,scorer=dual_anchor,alpha=0.7,refresh_gate=on")
    assert get_method(m.spec()) == m
    for spec, msg in [("stc:ratio=0", r"ratio .* must be in \(0, 1\]"), ("stc:ratio=1.5", r"ratio"),
                      ("stc:scorer=foo", "scorer must be one of gaussian, dual_anchor"),
                      ("stc:tokens=0", "tokens must be a positive"), ("stc:cache_interval=0", "cache_interval"),
                      ("stc:alpha=2", "alpha"), ("stc:channel_ratio=0", "channel_ratio"),
                      ("stc:gate_threshold=2", "gate_threshold"), ("stc:memory_mode=list", "memory_mode"),
                      ("stc:context=1", r"context .* must be in \[0, 1\)"), ("stc:context=-0.1", "context"),
                      ("stc:attention=some", "attention must be one of selected, all, tail"),
                      ("stc:tail=0", r"tail .* must be in \(0, 1\]"), ("stc:tail=1.5", "tail"),
                      ("stc:cacher=maybe", "must be bool"), ("stc:tokens=many", "must be int")]:
        with pytest.raises(InputError, match=msg):
            get_method(spec)
    with pytest.raises(UnknownNameError, match="no setting 'window'"):
        get_method("stc:window=3")
    with pytest.raises(TypeError, match="per-stream state"):
        frame = FrameTokens(torch.zeros(4, 2), (2, 2), torch.zeros(0, 2))
        get_method("stc").compress(frame, FrameContext(0, 0.0), None)


def test_the_pruner_keeps_the_objects_of_camworld_frames_on_the_reference_model():
    """On real post-projector tokens the pruner's picks are the content, not the background: nearly every token
    an object covers survives at a third of the tokens, where a random third keeps a third of them."""
    from vlmedge.models import camworld, from_pretrained
    from vlmedge.models.reference_models import reference_dir
    from vlmedge.models.training.dense import token_labels

    adapter = from_pretrained(reference_dir("llava_onevision"))
    kept, objects = 0, 0
    gen = torch.Generator().manual_seed(0)
    random_kept = 0
    with torch.no_grad():
        for seed in range(1_000_000, 1_000_004):
            s = camworld.generate(seed, split="eval")
            memory = PrunerMemory()
            for f in range(s.num_frames):
                tokens = adapter.encode_frame(s.frames[f])
                obj = token_labels(s, f, tokens.grid_hw)[:, 0] > 0
                keep = prune_chunk(tokens.features, memory, 47).keep[0]
                kept += int(obj[keep].sum())
                random_kept += int(obj[torch.randperm(obj.numel(), generator=gen)[:47]].sum())
                objects += int(obj.sum())
    assert objects > 100
    assert kept / objects > 0.9, kept / objects
    assert 0.2 < random_kept / objects < 0.45


def test_attention_all_halves_the_stale_tokens_of_camworld_frames_on_the_reference_model():
    """The released cacher leaves tokens far from the full pass on selective frames (ghosts of objects that moved);
    with every row attending, only the cached MLP differs and far fewer tokens stray (measured: 6.3% of tokens
    beyond 30% relative error against 12.9%, mean error 0.107 against 0.189, 4 evaluation streams); "tail" sits
    between (mean error 0.158)."""
    from vlmedge.compression import get_method
    from vlmedge.models import camworld, from_pretrained
    from vlmedge.models.reference_models import reference_dir

    adapter = from_pretrained(reference_dir("llava_onevision"))
    streams = [camworld.generate(seed, split="eval") for seed in range(1_000_000, 1_000_004)]
    stray, mean = {}, {}
    with torch.no_grad():
        for mode in ("all", "tail", "selected"):
            m = get_method(f"stc:pruner=false,attention={mode}")
            errs = []
            for s in streams:
                st = m.new_state()
                for f in range(s.num_frames):
                    got = m.encode_frame(adapter, s.frames[f], st).features
                    if not st.last_refresh:
                        full = adapter.encode_frame(s.frames[f]).features
                        errs.append((got - full).norm(dim=-1) / full.norm(dim=-1))
            e = torch.cat(errs)
            stray[mode], mean[mode] = float((e > 0.3).float().mean()), float(e.mean())
    assert stray["all"] < 0.6 * stray["selected"] and mean["all"] < 0.7 * mean["selected"], (stray, mean)
    # "tail" (every row attends in the last block of 4 only) leaves as many tokens astray but pulls them in:
    # mean error 0.158 against 0.189 (and nearly all of "all"'s accuracy, cacher.block_attention)
    assert mean["tail"] < 0.9 * mean["selected"] and mean["tail"] > mean["all"], mean
