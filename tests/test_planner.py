"""The memory planner: byte sizes, capacities against hand computations, measured probes, the command."""
import pytest

from vlmedge.errors import InputError
from vlmedge.jetson.profiles import kv_bytes_per_token
from vlmedge.runtime.planner import parse_bytes, plan_for, plan_memory, weights_bytes

GiB, MiB = 2**30, 2**20


@pytest.mark.parametrize("text,value", [("6GiB", 6 * GiB), ("6G", 6 * GiB), ("6GB", 6_000_000_000),
                                        ("512MiB", 512 * MiB), ("1.5 GiB", int(1.5 * GiB)), ("4096", 4096),
                                        (8_000, 8_000)])
def test_parse_bytes(text, value):
    assert parse_bytes(text) == value


@pytest.mark.parametrize("bad", ["6 parsecs", "", "-1GiB", 0, "GiB"])
def test_parse_bytes_refuses(bad):
    with pytest.raises(InputError):
        parse_bytes(bad)


def test_kv_bytes_per_token_of_the_real_families():
    # 2 (K, V) x layers x kv_heads x head_dim x 2 bytes (fp16)
    assert kv_bytes_per_token(28, 4, 128, 2) == 57_344  # Qwen2.5-VL-7B, LLaVA-OneVision-7B (Qwen2-7B), Omni-7B
    assert kv_bytes_per_token(36, 2, 128, 2) == 36_864  # Qwen2.5-VL-3B, Qwen2.5-Omni-3B thinker
    assert kv_bytes_per_token(24, 2, 64, 2) == 12_288  # LLaVA-OneVision-0.5B (Qwen2-0.5B)


def test_capacity_matches_hand_computation():
    # Qwen2.5-VL-7B in bf16 (16,584,333,312 B of weights), 1 GiB workspace, 24 GiB budget, 64 tokens + newline
    # per frame: (25,769,803,776 - 16,584,333,312 - 1,073,741,824) // 57,344 = 141,457 tokens;
    # (141,457 - 512 prompt - 64 question) // 65 = 2,167 frames
    p = plan_memory(24 * GiB, 16_584_333_312, GiB, 57_344, 65, 512)
    assert (p.capacity_tokens, p.frames) == (141_457, 2_167)
    assert p.min_budget_bytes == 16_584_333_312 + GiB + 57_344 * (512 + 64 + 65)
    # LLaVA-OneVision-0.5B fp16 on an Orin Nano 8GB-sized 6 GiB budget, 768 MiB workspace, 196 + 1 tokens/frame:
    # (6,442,450,944 - 1,788,280,832 - 805,306,368) // 12,288 = 313,221; (313,221 - 576) // 197 = 1,587
    p = plan_memory(6 * GiB, 1_788_280_832, 768 * MiB, 12_288, 197, 512, kv_precision="fp16")
    assert (p.capacity_tokens, p.frames) == (313_221, 1_587)
    assert "1,587" in p.table()


def test_an_offload_store_splits_the_capacity_as_computed_by_hand():
    from vlmedge.runtime.planner import offload_split

    # LLaVA-OneVision-0.5B fp16 (12,288 B/token, head_dim 64) from above: 313,221 tokens, 197 per frame.
    p = plan_memory(6 * GiB, 1_788_280_832, 768 * MiB, 12_288, 197, 512, kv_precision="fp16")
    # int8 rows: 12,288 / 2 elements x (1 + 2/64) = 6,336 B per offloaded token; 100,000 of them cost
    # ceil(100,000 x 6,336 / 12,288) = 51,563 live tokens, plus 1,024 retrieved: 313,221 - 64 - 52,587 = 260,570
    s = offload_split(p, 100_000, 1_024, "int8", 64)
    assert (s.host_bytes_per_token, s.reserve_tokens, s.live_tokens) == (6_336, 52_587, 260_570)
    # (260,570 - 512) // 197 = 1,320 frames live, + 100,000 // 197 = 507 offloaded
    assert (s.frames_live, s.frames_total) == (1_320, 1_827)
    full = offload_split(p, 100_000, 1_024, "full", 64)
    assert (full.reserve_tokens, full.live_tokens) == (101_024, 212_133)
    with pytest.raises(InputError, match="leaves .* live tokens beside an offload store"):
        offload_split(p, 400_000, 1_024, "full", 64)
    with pytest.raises(InputError, match="offload_tokens"):
        offload_split(p, 0, 1_024, "int8", 64)


def test_too_small_a_budget_names_the_minimum():
    with pytest.raises(InputError, match=r"need at least 16.48 GiB \(17,694,832,640 bytes\)"):
        plan_memory(2 * GiB, 16_584_333_312, GiB, 57_344, 65, 512)


@pytest.mark.parametrize("family,weights", [("llava_onevision", 442_176), ("qwen2_5_vl", 517_600),
                                            ("qwen2_5_omni", 848_608)])
def test_plan_for_the_tiny_families(tiny_adapters, family, weights):
    a = tiny_adapters[family]
    assert weights_bytes(a) == weights  # every parameter and buffer once, fp32
    p = plan_for(a, "none", 64 * MiB, workspace_bytes=4 * MiB)
    assert p.kv_bytes_per_token == 512  # 2 x 2 layers x 2 kv heads x 16 x 4 bytes
    assert p.capacity_tokens == (64 * MiB - weights - 4 * MiB) // 512
    full = p.tokens_per_frame
    half = plan_for(a, "uniform:ratio=0.25", 64 * MiB, workspace_bytes=4 * MiB)
    assert half.tokens_per_frame < full and half.frames > p.frames
    assert p.frames == (p.capacity_tokens - p.prompt_tokens - 64) // full


def test_measured_workspace_is_positive(tiny_adapters):
    p = plan_for(tiny_adapters["llava_onevision"], "none", 256 * MiB)
    assert p.workspace_bytes >= 0 and p.weights_bytes > 0


def test_a_warm_process_plans_with_the_first_measured_workspace(tiny_adapters, monkeypatch):
    """Resident-memory growth reads ~0 once a process has streamed (freed pages stay mapped): here the readings
    are 5 MiB on the first probe and 0 after. Every plan for the same adapter and method uses the first, so
    sessions in one process get the same capacity; another method is measured on its own."""
    import vlmedge.bench.memory as memory

    growth = iter([5 * MiB, 0, 3 * MiB])

    class Readings:
        def __init__(self, device="cpu"):
            self.peak_mb = 0.0

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            self.peak_mb = getattr(self, "grow", 0) / MiB
            return False

    calls = []

    def fake(device="cpu"):
        r = Readings(device)
        calls.append(r)
        if len(calls) % 2 == 0:  # probe opens `before` then `peak`: the second of each pair is the frame's
            r.grow = next(growth)
        return r

    monkeypatch.setattr(memory, "PeakMemory", fake)
    from vlmedge.runtime.planner import _WORKSPACE

    a = tiny_adapters["qwen2_5_vl"]
    _WORKSPACE.pop(a, None)
    first = plan_for(a, "uniform:ratio=0.5", 256 * MiB)
    again = plan_for(a, "uniform:ratio=0.5", 256 * MiB)
    assert first.workspace_bytes == again.workspace_bytes == 5 * MiB
    assert again.capacity_tokens == first.capacity_tokens
    other = plan_for(a, "random:ratio=0.5", 256 * MiB)
    assert other.workspace_bytes == 3 * MiB
    _WORKSPACE.pop(a, None)


def test_plan_command(capsys):
    from vlmedge.cli import main

    assert main(["plan", "--tiny", "--method", "uniform:ratio=0.25", "--memory-budget", "64MiB"]) == 0
    assert "frames held" in capsys.readouterr().out
    assert main(["plan", "--tiny", "--method", "uniform:ratio=0.25", "--memory-budget", "64MiB", "--offload-tokens",
                 "2000", "--offload-precision", "int8"]) == 0
    out = capsys.readouterr().out
    assert "offload store" in out and "2,000 tokens" in out and "history held" in out
    assert main(["plan", "--tiny", "--memory-budget", "100KiB"]) == 2  # less than the weights alone
    assert "need at least" in capsys.readouterr().err
    assert main(["plan", "--tiny"]) == 2
