"""Layer-by-layer LLM runs (models/layer_runner.py): GlimpsePrune's split prefill, the token store's retrieval scoring.

The tiny models have 2 decoder layers; they are deepened to 4 here (extra layers are perturbed copies) so that a
split at K has several layers on both sides.
"""
import copy
import math

import pytest
import torch
from transformers import DynamicCache
from transformers.models.qwen2.modeling_qwen2 import apply_rotary_pos_emb, repeat_kv

from vlmedge.models.layer_runner import LayerRunner, prune_cache, split_prefill, step_mask
from vlmedge.models import tiny
from vlmedge.models.positions import PositionState

FAMILIES = ["llava_onevision", "qwen2_5_vl", "qwen2_5_omni"]
N_LAYERS = 4
_CACHE: dict = {}


def _deepen(adapter, n_layers: int = N_LAYERS):
    lm = adapter.language_model()
    base = len(lm.layers)
    g = torch.Generator().manual_seed(1234)
    for i in range(base, n_layers):
        layer = copy.deepcopy(lm.layers[i % base], memo={id(lm.config): lm.config})  # share the config object
        layer.self_attn.layer_idx = i
        with torch.no_grad():
            for p in layer.parameters():
                p.add_(0.05 * torch.randn(p.shape, generator=g, dtype=p.dtype))
        lm.layers.append(layer)
    lm.config.num_hidden_layers = n_layers
    lm.config.layer_types = ["full_attention"] * n_layers
    assert all(layer.self_attn.config is lm.config for layer in lm.layers)
    return adapter


def model(family: str, attn: str = "sdpa", dtype=torch.float32):
    key = (family, attn, dtype)
    if key not in _CACHE:
        if attn == "sdpa" and dtype == torch.float32:
            _CACHE[key] = _deepen(tiny(family, seed=0))
        else:
            a = copy.deepcopy(model(family))
            if attn != "sdpa":
                a.model.set_attn_implementation(attn)
            a.model.to(dtype)
            _CACHE[key] = a
    return _CACHE[key]


def stream(adapter, seed: int = 0):
    """Chunks (embeds [L, D], position ids [P, L]): prefix text, a frame with dropped tokens (gapped ids),
    a question whose last row plays the glimpse token, then two more text tokens (a decode step)."""
    g = torch.Generator().manual_seed(seed)
    D = adapter.hidden_size
    state = PositionState()
    vocab = adapter.language_model().get_input_embeddings().num_embeddings

    def text(n):
        ids = torch.randint(3, vocab, (n,), generator=g)
        return adapter.embed_text(ids), adapter.positions.text(state, n)

    prefix = text(5)
    pos = adapter.positions.frame(state, (3, 4), 0, 0.0)
    keep = torch.tensor([0, 2, 3, 5, 8, 9, 11])
    frame = (torch.randn(12, D, generator=g)[keep], pos[:, keep])
    q_emb, q_pos = text(4)
    g_emb, g_pos = text(1)
    question = (torch.cat([frame[0], q_emb, g_emb]), torch.cat([frame[1], q_pos, g_pos], dim=1))
    return prefix, frame, question, text(2)


def run_all(runner, emb, pos, cache, **kw):
    return runner.run(emb, pos, cache, range(runner.num_layers), **kw)


# ----------------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("attn", ["sdpa", "eager"])
@pytest.mark.parametrize("family", FAMILIES)
def test_full_run_matches_forward_llm(family, attn):
    a = model(family, attn)
    runner = LayerRunner(a)
    c1, c2 = a.new_cache(), a.new_cache()
    chunks = list(stream(a))
    chunks.append((chunks[-1][0][-1:], chunks[-1][1][:, -1:] + 3))  # one token (no mask), after a gap
    with torch.no_grad():
        for emb, pos in chunks:
            got = runner.logits(run_all(runner, emb, pos, c1))
            want = a.forward_llm(emb, pos, c2, last_only=False)
            assert got.shape == want.shape
            torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)
    for l1, l2 in zip(c1.layers, c2.layers):
        torch.testing.assert_close(l1.keys, l2.keys, atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(l1.values, l2.values, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("K", [0, 1, 2])
@pytest.mark.parametrize("family", FAMILIES)
def test_split_with_everything_kept_equals_unsplit(family, K):
    a = model(family)
    runner = LayerRunner(a)
    prefix, frame, question, decode = stream(a)
    c1, c2, c3 = a.new_cache(), a.new_cache(), a.new_cache()
    with torch.no_grad():
        for c in (c1, c2, c3):
            a.forward_llm(*prefix, c)
        emb, pos = question
        want = a.forward_llm(emb, pos, c1, last_only=False)
        start = c2.layers[0].get_seq_length()
        h = runner.run(emb, pos, c2, range(0, K + 1))
        prune_cache(c2, range(0, K + 1), start, torch.arange(emb.shape[0]))
        h = runner.run(h, pos, c2, range(K + 1, N_LAYERS))
        torch.testing.assert_close(runner.logits(h), want, atol=1e-5, rtol=1e-5)
        got, keep, captured = split_prefill(runner, c3, emb, pos, K, lambda cap: torch.arange(emb.shape[0]))
        torch.testing.assert_close(got, want[-1:], atol=1e-5, rtol=1e-5)
        assert captured.shape == (1, a.text_config.num_attention_heads, start + emb.shape[0])
        # and decoding after it
        want = a.forward_llm(*decode, c1, last_only=False)
        for c in (c2, c3):
            torch.testing.assert_close(runner.logits(run_all(runner, *decode, c)), want, atol=1e-5, rtol=1e-5)


def _sub_model(lm, first: int):
    """An independent copy of the text model holding only layers first.. (reindexed)."""
    sub = copy.deepcopy(lm)
    sub.layers = torch.nn.ModuleList(list(sub.layers)[first:])
    for j, layer in enumerate(sub.layers):
        layer.self_attn.layer_idx = j
    sub.config.num_hidden_layers = len(sub.layers)
    sub.config.layer_types = ["full_attention"] * len(sub.layers)
    assert all(layer.self_attn.config is sub.config for layer in sub.layers)
    return sub


@pytest.mark.parametrize("K", [0, 1, 2])
@pytest.mark.parametrize("family", FAMILIES)
def test_pruning_for_real_against_hand_gathered_reference(family, K):
    """[prefix P] then [frame V (gapped), question Q, glimpse g]: layers 0..K on everything, keep some of V and all
    of Q (g dropped), layers K+1.. on the kept rows, then a decode chunk C through every layer."""
    a = model(family)
    lm = a.language_model()
    runner = LayerRunner(a)
    prefix, frame, question, decode = stream(a, seed=3)
    emb, pos = question
    n_v, n = frame[0].shape[0], emb.shape[0]
    keep = torch.tensor([1, 2, 5] + list(range(n_v, n - 1)))  # some visual tokens, the question, not the glimpse
    P = prefix[0].shape[0]

    with torch.no_grad():
        # --- the pruned path under test
        cache = a.new_cache()
        run_all(runner, *prefix, cache)
        h = runner.run(emb, pos, cache, range(0, K + 1))
        prune_cache(cache, range(0, K + 1), P, keep)
        lengths = [cache.layers[i].get_seq_length() for i in range(N_LAYERS)]
        assert lengths == [P + len(keep)] * (K + 1) + [P] * (N_LAYERS - K - 1)
        h = runner.run(h[keep], pos[:, keep], cache, range(K + 1, N_LAYERS))
        got = runner.logits(h)
        assert [l.get_seq_length() for l in cache.layers] == [P + len(keep)] * N_LAYERS
        got_dec = runner.logits(run_all(runner, *decode, cache))

        # --- reference: HF forward over everything, layer-K outputs recorded by a hook ...
        outs = []
        hook = lm.layers[K].register_forward_hook(lambda m, args, out: outs.append(out[0] if isinstance(out, tuple)
                                                                                   else out))
        full = a.new_cache()
        try:
            a.forward_llm(*prefix, full)
            a.forward_llm(emb, pos, full)
        finally:
            hook.remove()
        h_k = torch.cat([o.reshape(-1, o.shape[-1]) for o in outs])  # [P + n, D]
        rows = torch.cat([torch.arange(P), P + keep])
        # ... then HF forward of a model made of layers K+1.. on the gathered rows
        sub = _sub_model(lm, K + 1)
        sub_cache = DynamicCache(config=sub.config)
        sub_pos = torch.cat([prefix[1], pos[:, keep]], dim=1)
        out = sub(inputs_embeds=h_k[rows][None], position_ids=a.positions.model_position_ids(sub_pos),
                  past_key_values=sub_cache, use_cache=True).last_hidden_state[0]
        want = a.lm_head()(out[P:]).float()
        torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)

        # ... and a cache gathered by hand: layers 0..K from the full run, layers K+1.. from the sub-model
        ref = a.new_cache()
        for i in range(N_LAYERS):
            src = full.layers[i] if i <= K else sub_cache.layers[i - K - 1]
            k, v = (src.keys[:, :, rows], src.values[:, :, rows]) if i <= K else (src.keys, src.values)
            ref.layers[i].update(k.clone(), v.clone())
        want_dec = a.forward_llm(*decode, ref, last_only=False)
        torch.testing.assert_close(got_dec, want_dec, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("K", [0, 1, 3])
@pytest.mark.parametrize("family", FAMILIES)
def test_captured_logits_match_transcription_and_eager(family, K):
    a = model(family)
    lm = a.language_model()
    runner = LayerRunner(a)
    prefix, _, question, _ = stream(a, seed=5)
    emb, pos = question
    n, P = emb.shape[0], prefix[0].shape[0]
    S = P + n
    H = a.text_config.num_attention_heads
    capture_rows = torch.tensor([n - 1, 2])

    with torch.no_grad():
        cache = a.new_cache()
        run_all(runner, *prefix, cache)
        h, cap = run_all(runner, emb, pos, cache, capture_layer=K, capture_rows=capture_rows)
        assert cap.shape == (2, H, S)
        _, cap_default = run_all(runner, emb, pos, _prefilled(a, runner, prefix), capture_layer=K)
        torch.testing.assert_close(cap_default[0], cap[0], atol=1e-6, rtol=1e-6)

        # independent transcription from layer K's input (forward pre-hook on an HF forward)
        inputs = []
        hook = lm.layers[K].register_forward_pre_hook(
            lambda m, args, kwargs: inputs.append(args[0] if args else kwargs["hidden_states"]), with_kwargs=True)
        try:
            c = a.new_cache()
            a.forward_llm(*prefix, c)
            a.forward_llm(emb, pos, c)
        finally:
            hook.remove()
        x = torch.cat([t.reshape(-1, t.shape[-1]) for t in inputs])[None]  # [1, S, D]
        layer = lm.layers[K]
        attn = layer.self_attn
        hd = a.hidden_size // H
        xn = layer.input_layernorm(x)
        q = attn.q_proj(xn).view(1, S, H, hd).transpose(1, 2)
        k = attn.k_proj(xn).view(1, S, -1, hd).transpose(1, 2)
        cos, sin = lm.rotary_emb(x, a.positions.model_position_ids(torch.cat([prefix[1], pos], dim=1)))
        q, k = apply_rotary_pos_emb(q, k, cos, sin)
        k = repeat_kv(k, H // k.shape[1])
        ref = (q @ k.transpose(-1, -2))[0] / math.sqrt(hd)  # [H, S, S]
        torch.testing.assert_close(cap, ref[:, P + capture_rows].transpose(0, 1), atol=1e-5, rtol=1e-5)

        # softmax of the captured rows == eager attention's probabilities (over the causally visible keys)
        ae = model(family, "eager")
        weights = []
        hook = ae.language_model().layers[K].self_attn.register_forward_hook(lambda m, args, out: weights.append(out[1]))
        try:
            c = ae.new_cache()
            ae.forward_llm(*prefix, c)
            ae.forward_llm(emb, pos, c)
        finally:
            hook.remove()
        w = weights[-1][0]  # [H, n, S]
        assert w is not None and w.shape == (H, n, S)
        torch.testing.assert_close(torch.softmax(cap[0], -1), w[:, n - 1], atol=1e-5, rtol=1e-5)
        vis = P + 3  # row 2 sees the prefix and new rows 0..2
        torch.testing.assert_close(torch.softmax(cap[1, :, :vis], -1), w[:, 2, :vis], atol=1e-5, rtol=1e-5)
        # the eager runner captures the same logits
        re = LayerRunner(ae)
        _, cap_e = run_all(re, emb, pos, _prefilled(ae, re, prefix), capture_layer=K, capture_rows=capture_rows)
        torch.testing.assert_close(cap_e, cap, atol=1e-5, rtol=1e-5)


def _prefilled(a, runner, prefix):
    cache = a.new_cache()
    run_all(runner, *prefix, cache)
    return cache


@pytest.mark.parametrize("family", FAMILIES)
def test_extra_changes_only_its_row_and_gradients_flow(family):
    K = 2
    a = model(family)
    runner = LayerRunner(a)
    prefix, _, question, _ = stream(a, seed=7)
    emb, pos = question
    n = emb.shape[0]
    g = torch.Generator().manual_seed(0)
    vecs = (0.5 * torch.randn(N_LAYERS, a.hidden_size, generator=g)).requires_grad_()
    last = torch.tensor([n - 1])

    def extra(i, h):
        return h if i == 0 else h.index_add(0, last, vecs[i][None])

    with torch.no_grad():
        c0 = _prefilled(a, runner, prefix)
        h0, cap0 = run_all(runner, emb, pos, c0, capture_layer=K)
    c1 = _prefilled(a, runner, prefix)
    h1, cap1 = run_all(runner, emb, pos, c1, extra=extra, capture_layer=K)
    torch.testing.assert_close(h1[:-1].detach(), h0[:-1], atol=1e-6, rtol=1e-6)
    assert (h1[-1].detach() - h0[-1]).abs().max() > 1e-3
    assert (cap1.detach() - cap0).abs().max() > 1e-4
    P = prefix[0].shape[0]
    for i in range(N_LAYERS):
        k0, k1 = c0.layers[i].keys, c1.layers[i].keys.detach()
        torch.testing.assert_close(k1[:, :, :-1], k0[:, :, :-1], atol=1e-6, rtol=1e-6)
        if i == 0:
            torch.testing.assert_close(k1, k0)  # the extra comes in before layers >= 1 only
        else:
            assert (k1[:, :, -1] - k0[:, :, -1]).abs().max() > 1e-4
    assert c1.layers[0].keys.shape[-2] == P + n

    cap1.sum().backward()
    grad = vecs.grad
    assert grad is not None
    assert grad[0].abs().max() == 0  # not used
    assert all(grad[i].abs().max() > 0 for i in range(1, K + 1))
    assert grad[K + 1:].abs().max() == 0  # layers after K cannot reach layer K's logits


@pytest.mark.parametrize("family", FAMILIES)
def test_gradient_matches_finite_difference_in_float64(family):
    K = 1
    a = model(family, dtype=torch.float64)
    runner = LayerRunner(a)
    prefix, _, question, _ = stream(a, seed=11)
    emb, pos = question
    n = emb.shape[0]
    last = torch.tensor([n - 1])
    g = torch.Generator().manual_seed(1)
    vecs = (0.5 * torch.randn(N_LAYERS, a.hidden_size, generator=g, dtype=torch.float64)).requires_grad_()
    direction = torch.randn(N_LAYERS, a.hidden_size, generator=g, dtype=torch.float64)
    weights = torch.randn(1, a.text_config.num_attention_heads, prefix[0].shape[0] + n, generator=g,
                          dtype=torch.float64)

    def f(v):
        extra = lambda i, h: h if i == 0 else h.index_add(0, last, v[i][None])  # noqa: E731
        _, cap = runner.run(emb, pos, _prefilled(a, runner, prefix), range(0, K + 1), extra=extra, capture_layer=K)
        return (cap * weights).sum()

    f(vecs).backward()
    analytic = (vecs.grad * direction).sum()
    eps = 1e-3  # RMSNorm and the rotary tables compute in float32 even in a float64 model: keep eps large
    with torch.no_grad():
        numeric = (f(vecs + eps * direction) - f(vecs - eps * direction)) / (2 * eps)
    assert abs(float(analytic)) > 1e-6
    torch.testing.assert_close(analytic, numeric, atol=1e-6, rtol=2e-4)


# ----------------------------------------------------------------------------------------------------------------
def test_prune_cache_keeps_head_and_selected_entries():
    a = model("qwen2_5_vl")
    cache = a.new_cache()
    for i, layer in enumerate(cache.layers):
        k = torch.arange(10, dtype=torch.float32).view(1, 1, 10, 1).expand(1, 2, 10, 4) + 100 * i
        layer.update(k.clone(), -k.clone())
    prune_cache(cache, range(0, 1), 4, torch.tensor([0, 3, 5]))
    assert cache.layers[0].keys[0, 0, :, 0].tolist() == [0, 1, 2, 3, 4, 7, 9]
    assert cache.layers[0].values[0, 1, :, 0].tolist() == [-0.0, -1, -2, -3, -4, -7, -9]
    assert cache.layers[1].get_seq_length() == 10  # untouched
    prune_cache(cache, range(1, 2), 10, torch.tensor([], dtype=torch.long))
    assert cache.layers[1].get_seq_length() == 10
    with pytest.raises(ValueError):
        prune_cache(cache, range(0, 1), 4, torch.tensor([2, 1]))
    with pytest.raises(ValueError):
        prune_cache(cache, range(0, 1), 4, torch.tensor([3]))  # only 3 entries after start now
    with pytest.raises(ValueError):
        prune_cache(cache, range(0, 1), 8, torch.tensor([0]))  # start past the end


def test_step_mask_and_argument_checks():
    m = step_mask(2, 3, torch.float32, "cpu")[0, 0]
    assert (m == 0).tolist() == [[True, True, True, False, False],
                                 [True, True, True, True, False],
                                 [True, True, True, True, True]]
    a = model("llava_onevision")
    runner = LayerRunner(a)
    emb, pos = stream(a)[0]
    with pytest.raises(ValueError):
        runner.run(emb, pos, a.new_cache(), range(0, 2), capture_layer=3)
    with pytest.raises(ValueError):
        runner.run(emb, pos, a.new_cache(), range(0, N_LAYERS + 1))
    with pytest.raises(ValueError):
        runner.run(emb, pos[:, :-1], a.new_cache(), range(0, 1))
    with pytest.raises(ValueError):
        runner.run(emb, pos, a.new_cache(), range(0, 1), capture_layer=0, capture_rows=[emb.shape[0]])
