"""Jetson Orin profiles: the lookup, the module facts kept consistent, the budget rule and export sizing."""
import pytest

from vlmedge.errors import InputError, UnknownNameError
from vlmedge.jetson import profiles as P
from vlmedge.jetson.profiles import GiB, MiB, build_settings, profile, profile_for_target


def test_lookup_by_name_and_alias():
    assert profile("orin-nano-8gb").module == "Jetson Orin Nano 8GB"
    assert profile("ORIN_NX_16GB").name == "orin-nx-16gb"
    assert profile("agx").name == "agx-orin-64gb"
    assert profile("orin-nano").name == "orin-nano-8gb"


def test_unknown_profile_lists_the_valid_names():
    with pytest.raises(UnknownNameError) as err:
        profile("orin-nano-16gb")
    msg = str(err.value)
    assert "orin-nano-16gb" in msg
    for name in P.PROFILES:
        assert name in msg


# Data-sheet facts the table must keep (GPU SMs, CUDA cores, tensor cores, DLA engines, CPU cores, memory).
FACTS = {
    "orin-nano-4gb": (4, 512, 16, 0, 6, 4),
    "orin-nano-8gb": (8, 1024, 32, 0, 6, 8),
    "orin-nx-8gb": (8, 1024, 32, 1, 6, 8),
    "orin-nx-16gb": (8, 1024, 32, 2, 8, 16),
    "agx-orin-32gb": (14, 1792, 56, 2, 8, 32),
    "agx-orin-64gb": (16, 2048, 64, 2, 12, 64),
}


@pytest.mark.parametrize("name", sorted(FACTS))
def test_module_facts(name):
    p = profile(name)
    sms, cores, tensor, dla, cpus, mem = FACTS[name]
    assert (p.gpu_sms, p.cuda_cores, p.tensor_cores, p.dla_cores, p.cpu_cores, p.memory_gb) == (
        sms, cores, tensor, dla, cpus, mem)
    assert p.gpu_arch == "sm_87"
    assert p.tensor_cores == p.gpu_sms * 4  # Ampere: 4 tensor cores per SM
    assert "fp8" not in p.precisions and p.default_precision == "fp16"
    assert len({m.id for m in p.power_modes}) == len(p.power_modes)


def test_every_part_number_belongs_to_one_profile():
    seen = {}
    for p in P.PROFILES.values():
        for part in p.part_numbers:
            assert part not in seen, f"{part} in {seen.get(part)} and {p.name}"
            seen[part] = p.name
    assert P.profile_for_part("P3767-0005").name == "orin-nano-8gb"
    assert P.profile_for_part("p3737-0000") is None  # a carrier board, not a module


def test_power_modes():
    nano = profile("orin-nano-8gb")
    assert nano.power_mode(0).name == "15W" and nano.power_mode("7w").id == 1
    assert nano.power_mode("MAXN_SUPER", super_modes=True).id == 2
    assert nano.max_power_mode(super_modes=True).name == "MAXN_SUPER"
    assert nano.max_power_mode().name == "15W"  # no MAXN outside the super configuration
    agx = profile("agx-orin-64gb")
    assert agx.max_power_mode().name == "MAXN" and agx.max_power_mode().watts is None
    assert agx.power_mode(3).name == "MODE_50W" and agx.power_mode(3).watts == 50
    with pytest.raises(UnknownNameError, match="0=MAXN"):
        agx.power_mode("MODE_60W")


def test_memory_budget_rule():
    # nominal - 1.5 GiB OS - 0.75 GiB camera - 10%, rounded down to 256 MiB
    expected = {"orin-nano-4gb": 1.25, "orin-nano-8gb": 4.75, "orin-nx-8gb": 4.75, "orin-nx-16gb": 12.0,
                "agx-orin-32gb": 26.5, "agx-orin-64gb": 55.25}
    for name, gib in expected.items():
        p = profile(name)
        assert p.memory_budget == int(gib * GiB), name
        assert p.memory_budget % (256 * MiB) == 0
        assert p.memory_budget + P.OS_RESERVE + P.CAMERA_RESERVE < p.memory_bytes
        assert p.service_memory_max == p.memory_budget + GiB
    assert P.default_memory_budget(2 * GiB) == 0  # never negative


def test_workspace_rule():
    assert profile("orin-nano-4gb").trt_workspace == 512 * MiB
    assert profile("orin-nano-8gb").trt_workspace == 1 * GiB
    assert profile("agx-orin-64gb").trt_workspace == 8 * GiB
    for p in P.PROFILES.values():
        assert p.trt_workspace < p.memory_budget


def test_precision_checks():
    p = profile("orin-nx-16gb")
    assert p.check_precision("FP16") == "fp16" and p.check_precision("int8") == "int8"
    with pytest.raises(InputError, match="FP8"):
        p.check_precision("fp8")
    with pytest.raises(InputError):
        p.check_precision("bf17")


def test_target_mapping():
    assert profile_for_target("cpu") is None and profile_for_target("desktop") is None
    assert profile_for_target("orin-nano").name == "orin-nano-8gb"
    assert profile_for_target("orin-nx").name == "orin-nx-8gb"  # the smaller member off the device
    assert profile_for_target("orin-agx").name == "agx-orin-32gb"
    # on the device the detected module wins when it is of the target's family
    assert profile_for_target("orin-nx", detected=profile("orin-nx-16gb")).name == "orin-nx-16gb"
    assert profile_for_target("orin-nx", detected=profile("agx-orin-64gb")).name == "orin-nx-8gb"


def test_build_settings_fit_the_budget():
    nano = profile("orin-nano-8gb")
    # a 1.5B-parameter fp16 LLM with 28 layers, 2 KV heads of 128 (Qwen2-1.5B shape)
    s = build_settings(nano, weights_bytes=int(3.1 * GiB), num_layers=28, num_kv_heads=2, head_dim=128)
    assert s.precision == "fp16" and s.gpu_arch == "sm_87"
    assert s.kv_bytes_per_token == 2 * 28 * 2 * 128 * 2
    used = int(3.1 * GiB) + s.workspace_bytes + s.max_context_tokens * s.kv_bytes_per_token
    assert used <= nano.memory_budget
    assert s.max_context_tokens % 64 == 0 and s.opt_context_tokens <= s.max_context_tokens
    assert s.max_frames == (s.max_context_tokens - 512) // nano.tokens_per_frame
    capped = build_settings(nano, weights_bytes=int(3.1 * GiB), num_layers=28, num_kv_heads=2, head_dim=128,
                            max_positions=4096)
    assert capped.max_context_tokens == 4096


def test_build_settings_reject_what_does_not_fit():
    with pytest.raises(InputError, match="budget"):
        build_settings(profile("orin-nano-4gb"), weights_bytes=3 * GiB, num_layers=28, num_kv_heads=2,
                       head_dim=128)
    with pytest.raises(InputError, match="FP8"):
        build_settings(profile("agx-orin-64gb"), weights_bytes=GiB, num_layers=2, num_kv_heads=1, head_dim=64,
                       precision="fp8")


def test_to_dict_is_json_ready():
    import json

    d = json.loads(json.dumps(profile("agx-orin-32gb").to_dict()))
    assert d["cuda_cores"] == 1792 and d["memory_budget_bytes"] == int(26.5 * GiB)
    assert d["power_modes"][0] == {"id": 0, "name": "MAXN", "watts": None}
