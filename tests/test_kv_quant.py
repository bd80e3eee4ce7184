"""Offloaded blocks in int8: the rounding bound, the bytes they take, and what a budget holds with them."""
import pytest
import torch

from conftest import make_frames
from vlmedge.errors import InputError
from vlmedge.runtime import StreamingSession
from vlmedge.runtime.kv_quant import Int8BlockKV, dequantize_rows, host_bytes_per_token, quantize_rows
from vlmedge.runtime.planner import tensor_bytes

Q = "how many objects are there ?"


def test_rows_round_to_within_half_a_step_and_keep_their_absmax():
    x = torch.randn(1, 3, 17, 32) * torch.logspace(-3, 2, 17)[None, None, :, None]  # rows of very different scale
    q, scale = quantize_rows(x)
    assert q.dtype == torch.int8 and scale.shape == (1, 3, 17, 1)
    back = dequantize_rows(q, scale, torch.float32)
    step = scale.float()
    assert bool(((back - x).abs() <= step / 2 + 1e-3 * step).all())
    assert bool((q.abs().amax(-1) == 127).all())  # each row's largest element maps to the end of the range
    z = torch.zeros(1, 1, 2, 8)
    assert torch.equal(dequantize_rows(*quantize_rows(z), torch.float32), z)  # all-zero rows stay zero


def test_an_int8_block_holds_a_quarter_of_fp32_and_reads_back_as_pairs():
    layers, kvh, n, hd = 4, 3, 10, 32
    g = torch.Generator().manual_seed(0)
    pairs = [(torch.randn(1, kvh, n, hd, generator=g), torch.randn(1, kvh, n, hd, generator=g)) for _ in range(layers)]
    block = Int8BlockKV.from_pairs(pairs)
    fp32 = 2 * layers * kvh * hd * 4
    assert tensor_bytes([block]) == n * host_bytes_per_token(fp32, 4, hd, "int8") == n * fp32 * (1 + 2 / hd) / 4
    assert block.length == n and len(block) == layers
    for (k, v), (k8, v8) in zip(pairs, block):
        assert k8.dtype == torch.float32 and k8.shape == k.shape
        # half a step of the largest row's scale (fp16 scales round up by at most one part in 1024)
        torch.testing.assert_close(k8, k, atol=float(k.abs().max()) / 254 * 1.001, rtol=0)
        torch.testing.assert_close(v8, v, atol=float(v.abs().max()) / 254 * 1.001, rtol=0)
    torch.testing.assert_close(block.key(2), block[2][0])
    with pytest.raises(InputError, match="offload precision"):
        host_bytes_per_token(fp32, 4, hd, "int4")


def test_the_same_budget_holds_more_offloaded_tokens_in_int8(tiny_adapters):
    from vlmedge.runtime.planner import plan_memory

    a = tiny_adapters["llava_onevision"]
    plan = plan_memory(900_000, 500_000, 100_000, 512, 5, 10)  # 512 B/token fp32: 585 tokens
    hd = a.text_config.hidden_size // a.text_config.num_attention_heads
    full = StreamingSession(a, "uniform:ratio=0.5", memory_budget=plan, eviction="offload", offload_tokens=400,
                            retrieve_tokens=40)
    small = StreamingSession(a, "uniform:ratio=0.5", memory_budget=plan, eviction="offload", offload_tokens=400,
                             retrieve_tokens=40, offload_precision="int8")
    # the int8 store's 400 tokens cost ceil(400 x (1 + 2/hd) / 4) live tokens of the budget, not 400
    assert small.store.capacity_tokens - full.store.capacity_tokens == 400 - -(-400 * (hd + 2) // (4 * hd))
    for i, f in enumerate(make_frames(60, seed=8)):
        small.push_frame(f, time_s=float(i))
    st = small.store
    assert st.host and all(isinstance(b.kv, Int8BlockKV) for b in st.host)
    assert small.memory()["total"] <= plan.budget_bytes
    with pytest.raises(InputError, match="offload precision"):
        StreamingSession(a, "none", max_stream_tokens=100, eviction="offload", offload_tokens=10, retrieve_tokens=5,
                         offload_precision="fp4")


@pytest.mark.parametrize("retrieval", ["append", "focus"])
def test_questions_over_int8_blocks_answer_like_full_precision_ones(tiny_adapters, retrieval):
    a = tiny_adapters["llava_onevision"]
    kw = dict(max_stream_tokens=40, eviction="offload", offload_tokens=60, retrieve_tokens=14, retrieval=retrieval,
              keep_logits=True)
    full = StreamingSession(a, "uniform:ratio=0.5", **kw)
    small = StreamingSession(a, "uniform:ratio=0.5", offload_precision="int8", **kw)
    for i, f in enumerate(make_frames(12, seed=7)):
        full.push_frame(f, time_s=float(i))
        small.push_frame(f, time_s=float(i))
    x, y = full.ask(Q, max_new_tokens=1), small.ask(Q, max_new_tokens=1)
    assert x.retrieved_blocks == y.retrieved_blocks > 0
    px, py = torch.softmax(x.logits[0], -1), torch.softmax(y.logits[0], -1)
    assert float((px - py).abs().sum()) < 0.02  # total variation of the next-token distribution
