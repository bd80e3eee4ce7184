"""tegrastats parsing over recorded lines of Orin Nano, NX and AGX (JetPack 5 and 6 formats), and the reader."""
import datetime as dt
import json
import sys
from pathlib import Path

import pytest

from vlmedge.jetson import tegrastats as T

LINES = Path(__file__).parent / "fixtures" / "jetson" / "tegrastats"


def _samples(name):
    return T.read_file(LINES / name, strict=True)


def test_fixture_files_cover_three_modules_and_both_jetpacks():
    names = sorted(p.name for p in LINES.glob("*.txt"))
    assert any(n.startswith("orin-nano") for n in names)
    assert any(n.startswith("orin-nx") for n in names)
    assert any(n.startswith("agx-orin") for n in names)
    assert any("r35" in n for n in names) and any("r36" in n for n in names)
    for n in names:  # every line of every file parses, with nothing left over
        for s in _samples(n):
            assert s.unparsed == [], (n, s.unparsed)


def test_orin_nano_jetpack5_line():
    s = _samples("orin-nano-r35.4.1.txt")[0]
    assert s.timestamp == dt.datetime(2023, 11, 2, 14, 21, 7)
    assert (s.ram_used_mb, s.ram_total_mb, s.lfb_blocks, s.lfb_block_mb) == (2254, 7620, 952, 4)
    assert (s.swap_used_mb, s.swap_total_mb, s.swap_cached_mb) == (0, 3810, 0)
    assert len(s.cpus) == 6 and s.cpus[0].load_pct == 3 and s.cpus[0].freq_mhz == 1510
    assert (s.emc_load_pct, s.emc_freq_mhz) == (1, 2133)
    assert (s.gpu_load_pct, s.gpu_freq_mhz) == (0, [305])  # JetPack 5: no brackets
    assert s.engines["VIC"].freq_mhz == 115 and s.engines["APE"].freq_mhz == 200
    # JetPack 5 sensor names are upper case; keys are lower-cased, and -256C sensors are set aside
    assert s.temps_c["cpu"] == 47.281 and s.temps_c["tj"] == 47.281 and s.temps_c["soc0"] == 45.437
    assert sorted(s.sensors_off) == ["cv0", "cv1", "cv2"]
    assert set(s.rails) == {"VDD_IN", "VDD_CPU_GPU_CV", "VDD_SOC"}
    assert s.input_power_mw == 5103 and s.rails_total_mw == 5103
    off = _samples("orin-nano-r35.4.1.txt")[1]
    assert [c.online for c in off.cpus] == [True, True, True, True, False, False]
    assert off.cpus_online == 4 and off.cpu_load_pct == pytest.approx((18 + 4 + 9 + 2) / 4)
    assert off.rails["VDD_IN"].average_mw == 7489


def test_orin_nano_super_jetpack6_lines():
    a, b, nonroot = _samples("orin-nano-super-r36.4.3.txt")
    assert (a.gpu_load_pct, a.gpu_freq_mhz) == (97, [1020])  # JetPack 6: per-GPC list in brackets
    assert (a.emc_load_pct, a.emc_freq_mhz) == (38, 3199)
    assert a.cpus[0].freq_mhz == 1728
    assert a.engines["NVDEC"].on is False and a.engines["OFA"].on is False
    assert "NVENC" not in a.engines  # the Orin Nano has no video encoder
    assert a.temps_c["gpu"] == 57.656 and a.sensors_off == []
    assert b.engines["VIC"].on and (b.engines["VIC"].load_pct, b.engines["VIC"].freq_mhz) == (31, 729)
    # without root, tegrastats leaves out EMC and the clocks
    assert nonroot.emc_load_pct is None and nonroot.emc_freq_mhz is None
    assert nonroot.gpu_load_pct == 96 and nonroot.gpu_freq_mhz == []
    assert nonroot.metrics()["gpu_freq_mhz"] is None and nonroot.metrics()["power_mw"] == 14105


def test_orin_nx_jetpack6_lines():
    a, b = _samples("orin-nx-16gb-r36.3.0.txt")
    assert a.ram_total_mb == 15656 and len(a.cpus) == 8
    assert {"NVDLA0", "NVDLA1", "PVA0", "NVENC"} <= set(a.engines)  # PVA0_FREQ -> PVA0
    assert a.temps_c["cv0"] == 49.406 and a.gpu_freq_mhz == [918]
    assert b.cpus_online == 4 and b.gpu_load_pct == 0
    assert b.rails["VDD_IN"].current_mw == 6215 and b.rails["VDD_IN"].average_mw == 9122


def test_agx_orin_jetpack5_two_gpc_fields_and_nc_rails():
    idle, busy = _samples("agx-orin-32gb-r35.2.1.txt")
    assert idle.gpu_freq_mhz == [114, 114] and idle.gpu_load_pct == 0  # GR3D_FREQ + GR3D2_FREQ
    assert "gpu" in idle.sensors_off and "gpu" not in idle.temps_c  # GPU powered off at idle
    assert idle.temps_c["tboard"] == 33 and idle.temps_c["tdiode"] == 34.25
    assert set(idle.rails) == {"VDD_GPU_SOC", "VDD_CPU_CV", "VIN_SYS_5V0", "VDDQ_VDD2_1V8AO"}  # NC skipped
    assert idle.input_power_mw is None  # AGX Orin has no VDD_IN rail
    assert busy.rails_total_mw == 14380 + 3189 + 5213 + 1304
    assert busy.gpu_load_pct == 84 and busy.gpu_freq_mhz == [930, 930]
    assert busy.metrics()["gpu_freq_mhz"] == 930


def test_agx_orin_jetpack6_line():
    (s,) = _samples("agx-orin-64gb-r36.4.0.txt")
    assert len(s.cpus) == 12 and s.cpus[0].freq_mhz == 2201
    assert s.gpu_freq_mhz == [1300, 1300] and s.gpu_load_pct == 88
    assert set(s.rails) == {"VDD_GPU_SOC", "VDD_CPU_CV", "VIN_SYS_5V0"}
    m = s.metrics()
    assert m["power_mw"] == 19872 + 5187 + 6113 and m["temp_tj_c"] == 59.312 and m["ram_total_mb"] == 62840


def test_newer_format_with_triple_rails():
    (s,) = _samples("agx-orin-64gb-r39.2.txt")
    assert s.swap_total_mb is None  # no SWAP field
    assert s.temps_c["cpu"] == 51.812  # the first of cpu@51.812C/52.406C
    assert s.rails["VDD_GPU_SOC"].current_mw == 5402 and s.rails["VDD_GPU_SOC"].extra_mw == 6021
    assert {"NVENC0", "NVDEC0", "NVJPG0"} <= set(s.engines)
    assert s.lfb_block_mb == 2


def test_other_forms():
    # pre-Orin CPU form, kB lfb, extra whitespace, legacy rails without mW, IRAM and MTS fields
    s = T.parse_line("RAM 1179/3983MB (lfb 120x4MB) IRAM 0/252kB(lfb 252kB) CPU [1%,4%,0%,off]@102 "
                     "EMC_FREQ 7%@408 GR3D_FREQ 0%@76 APE 25 MTS fg 0% bg 0% AO@42.5C  VDD_IN 2532/2698")
    assert [c.freq_mhz for c in s.cpus] == [102, 102, 102, None] and s.cpus[3].online is False
    assert s.rails["VDD_IN"].average_mw == 2698 and s.temps_c["ao"] == 42.5 and s.unparsed == []
    t = T.parse_line("RAM 4722/7844MB (lfb 1x512kB) EMC_FREQ 2%@1866 GR3D_FREQ @[1000,1000] APE 150")
    assert t.lfb_block_mb == 0.5 and t.gpu_load_pct is None and t.gpu_freq_mhz == [1000, 1000]


def test_not_a_tegrastats_line():
    with pytest.raises(T.TegrastatsParseError):
        T.parse_line("tegrastats: command not found")
    assert list(T.parse_lines(["garbage", "", "# comment", "RAM 1/2MB"])) [0].ram_total_mb == 2
    with pytest.raises(T.TegrastatsParseError):
        list(T.parse_lines(["garbage"], strict=True))


def test_metrics_and_dict_are_json_ready():
    s = _samples("orin-nano-super-r36.4.3.txt")[0]
    d = json.loads(json.dumps(s.to_dict()))
    assert d["timestamp"] == "2025-01-14T10:02:31"
    assert d["metrics"]["gpu_load_pct"] == 97 and d["metrics"]["emc_freq_mhz"] == 3199
    assert d["metrics"]["temp_max_c"] == 57.656 and s.ram_used_fraction == pytest.approx(5891 / 7620)


def test_read_file_missing():
    from vlmedge.errors import InputError

    with pytest.raises(InputError, match="does not exist"):
        T.read_file(LINES / "absent.txt")


def _cat_command(path, delay=0.0):
    """A stand-in for `tegrastats --interval N` that prints recorded lines (one bad line among them)."""
    script = ("import sys, time\n"
              f"lines = open({str(path)!r}).read().splitlines()\n"
              "print('tegrastats: starting', flush=True)\n"
              "for line in lines:\n"
              f"    print(line, flush=True); time.sleep({delay})\n")
    return [sys.executable, "-c", script]


def test_reader_keeps_the_latest_sample_from_a_process():
    path = LINES / "orin-nano-super-r36.4.3.txt"
    seen = []
    reader = T.TegrastatsReader(interval_ms=100, command=_cat_command(path), on_sample=seen.append, keep=2)
    assert reader.latest is None  # nothing runs before start()
    with reader:
        reader.join(timeout=20)
    assert reader.returncode == 0
    assert reader.lines_read == 4 and reader.bad_lines == 1
    assert [s.timestamp.minute for s in seen] == [2, 2, 5]
    assert reader.latest.raw == path.read_text().splitlines()[-1]
    assert len(reader.samples) == 2


def test_reader_stop_terminates_a_running_process():
    reader = T.TegrastatsReader(command=_cat_command(LINES / "orin-nx-16gb-r36.3.0.txt", delay=30))
    reader.start()
    assert reader.wait_for_sample(timeout=20) is not None
    assert reader.running
    reader.stop()
    assert not reader.running and reader.returncode is not None


def test_reader_without_tegrastats():
    reader = T.TegrastatsReader(command=["/nonexistent/tegrastats", "--interval", "1000"])
    assert not reader.available()
    with pytest.raises(T.TegrastatsUnavailable, match="Jetson Linux"):
        reader.start()
    assert T.TegrastatsReader(interval_ms=500).command == ["tegrastats", "--interval", "500"]
    with pytest.raises(Exception):
        T.TegrastatsReader(interval_ms=0)
