"""GlimpsePrune exported (export/glimpse.py) and run on ONNX Runtime (compression/glimpse/exported.py), against the
torch path, on tiny configs of all three families with a random (untrained, seeded) predictor whose logits spread
around the threshold, so the keep rule really picks.

Tolerances (fp32): VIP logits and stream logits atol 1e-4; kept indices, kept counts and greedy answers exact."""
import numpy as np
import pytest
import torch

from conftest import FAMILIES, make_frames
from vlmedge.compression import get_method
from vlmedge.compression.glimpse import exported as gexp
from vlmedge.compression.glimpse.modules import GlimpseModules
from vlmedge.compression.glimpse.prefill import prefill as torch_prefill
from vlmedge.errors import InputError
from vlmedge.export import export_model
from vlmedge.models.layer_runner import LayerRunner
from vlmedge.runtime import StreamingSession
from vlmedge.runtime.backends import load_backend

ATOL = 1e-4
QUESTION = "where is the red circle ?"


@pytest.fixture(scope="module", params=FAMILIES)
def glimpse_export(request, tiny_adapters, tmp_path_factory):
    family = request.param
    adapter = tiny_adapters[family]
    root = tmp_path_factory.mktemp(f"glimpse_{family}")
    weights = GlimpseModules.for_adapter(adapter, seed=0).save(str(root))
    spec = f"glimpse:weights={weights}"
    out = str(root / "export")
    export_model(adapter, out, spec, source=f"tiny:{family}:seed=0", log=lambda m: None)
    return family, adapter, spec, weights, load_backend(out, threads=1)


def test_manifest_has_the_split_llm_and_the_vip(glimpse_export):
    family, adapter, spec, weights, backend = glimpse_export
    m = backend.manifest
    mods = GlimpseModules.load(weights, adapter)
    k, n_layers = mods.cfg.select_layer, adapter.text_config.num_hidden_layers
    audio = ["audio"] if adapter.has_audio else []
    assert list(m.stages) == ["embed", "vision", *audio, "llm", "llm_head", "llm_tail", "vip"]
    assert m.stages["vision"].attrs["taps"] == mods.cfg.taps  # the taps the VIP reads come out of the vision graph
    head, tail, vip = m.stages["llm_head"], m.stages["llm_tail"], m.stages["vip"]
    assert head.attrs["layers"] == [0, k] and tail.attrs["layers"] == [k + 1, n_layers - 1]
    assert [t.name for t in head.inputs][-1] == f"past_value_{k}" and tail.inputs[3].name == f"past_key_{k + 1}"
    assert vip.attrs["select_layer"] == k and vip.input("attn").shape == [vip.attrs["tokens"], vip.attrs["heads"]]
    for s in (head, tail, vip):
        assert s.attrs["check"]["max_rel_err"] < 1e-4


def test_one_pruned_prefill_matches_torch(glimpse_export):
    """Two frames in one stretch on a cache holding a prompt: kept indices, VIP logits, last logits and every
    layer's KV after the prefill."""
    family, adapter, spec, weights, backend = glimpse_export
    mods = GlimpseModules.load(weights, adapter)
    frames = make_frames(2, seed=3)
    results = []
    for ad in (adapter, backend):
        s = StreamingSession(ad, "none")  # for the prompt prefix and the position bookkeeping
        s.push_frame(frames[0], time_s=0.0)  # the cache holds a prompt and a frame before the stretch
        pieces = []
        pos = s.positions.copy()
        for i, f in enumerate(frames):
            tokens = ad.encode_frame(f, taps=tuple(mods.cfg.taps))
            ids = ad.positions.frame(pos, tokens.grid_hw, tokens.trailer.shape[0], float(i + 1))
            pieces.append(frame_piece_from(tokens, ids))
        if ad is adapter:
            logits, keeps, z = torch_prefill(LayerRunner(adapter), mods, s.cache, pieces, max_ratio=0.6)
        else:
            logits, keeps, z = gexp.prefill(backend, s.cache, pieces, max_ratio=0.6)
        kv = [t.detach().float() for t in (_torch_kv(s.cache) if ad is adapter else
                                           [torch.from_numpy(np.asarray(a)) for a in s.cache.tail(0)])]
        results.append((logits, keeps, z, kv))
    (l_t, k_t, z_t, kv_t), (l_o, k_o, z_o, kv_o) = results
    assert [k.tolist() for k in k_o] == [k.tolist() for k in k_t]
    total = sum(int(z.numel()) for z in z_t)
    kept = sum(int(k.numel()) for k in k_t)
    assert 0 < kept <= int(0.6 * total) + 1, "the random predictor must make the rule pick (not all, not none)"
    for a, b in zip(z_o, z_t):
        torch.testing.assert_close(a, b.float(), atol=ATOL, rtol=1e-4)
    torch.testing.assert_close(l_o, l_t.float(), atol=ATOL, rtol=1e-4)
    assert len(kv_o) == len(kv_t)
    for i, (a, b) in enumerate(zip(kv_o, kv_t)):
        assert a.shape == b.shape, f"kv {i}"
        torch.testing.assert_close(a, b, atol=ATOL, rtol=1e-4)


def frame_piece_from(tokens, ids):
    from vlmedge.compression.glimpse.prefill import Piece

    return Piece(torch.cat([tokens.features, tokens.trailer.to(tokens.features.dtype)]), ids, tokens)


def _torch_kv(cache):
    out = []
    for layer in cache.layers:
        out += [layer.keys, layer.values]
    return out


@pytest.mark.parametrize("settings,prompt", [("", None), (",max_ratio=0.3", QUESTION)])
def test_stream_with_requery_matches_torch(glimpse_export, settings, prompt):
    """Frames pruned as they arrive (with or without a standing prompt), then a question that re-selects the last
    frames in its own pruned prefill: kept counts per frame, answer tokens and logits as torch."""
    family, adapter, spec, weights, backend = glimpse_export
    frames = make_frames(3, seed=9)
    runs = []
    for ad in (adapter, backend):
        s = StreamingSession(ad, spec + settings, keep_logits=True, standing_prompt=prompt)
        for i, f in enumerate(frames):
            s.push_frame(f, time_s=float(i))
        before = s.stream_tokens
        ans = s.ask(QUESTION, max_new_tokens=4)
        assert s.stream_tokens == before
        runs.append(([st.tokens_kept for st in s.frame_stats], before, ans))
    (kept_t, len_t, a_t), (kept_o, len_o, a_o) = runs
    assert kept_o == kept_t and len_o == len_t
    assert 0 < sum(kept_t) < 3 * adapter.encode_frame(frames[0]).num_tokens
    assert a_o.token_ids == a_t.token_ids and a_o.text == a_t.text
    assert a_o.requeried_frames == a_t.requeried_frames > 0
    torch.testing.assert_close(torch.stack(a_o.logits), torch.stack(a_t.logits), atol=ATOL, rtol=1e-4)


def test_glimpse_on_an_export_without_its_graphs_is_refused(tiny_adapters, tmp_path, glimpse_export):
    family, adapter, spec, weights, backend = glimpse_export
    if family != "llava_onevision":
        pytest.skip("one family is enough for the refusal")
    out = str(tmp_path / "plain")
    export_model(adapter, out, "none", log=lambda m: None)
    plain = load_backend(out, threads=1)
    s = StreamingSession(plain, spec)
    with pytest.raises(InputError, match="re-export with `vlmedge export --method glimpse"):
        s.push_frame(make_frames(1)[0], time_s=0.0)
    assert get_method(spec).plain_vision  # exportable: it runs the adapter's own vision pass with taps
