"""Jetson detection over recorded device trees (tests/fixtures/jetson/boards/<board>/...)."""
from pathlib import Path

import pytest

from vlmedge.jetson import detect as D

BOARDS = Path(__file__).parent / "fixtures" / "jetson" / "boards"

# board folder -> (L4T version, JetPack, model, profile, super, current power mode)
EXPECTED = {
    "orin-nano-devkit-r35.4.1": ("35.4.1", "5.1.2", "NVIDIA Orin Nano Developer Kit", "orin-nano-8gb", False, "15W"),
    "orin-nano-devkit-super-r36.4.3": ("36.4.3", "6.2",
                                       "NVIDIA Jetson Orin Nano Engineering Reference Developer Kit Super",
                                       "orin-nano-8gb", True, "MAXN_SUPER"),
    "orin-nx-16gb-r36.3.0": ("36.3.0", "6.0", "NVIDIA Jetson Orin NX Engineering Reference Developer Kit",
                             "orin-nx-16gb", False, "15W"),
    "agx-orin-32gb-r35.2.1": ("35.2.1", "5.1", "Jetson AGX Orin Developer Kit", "agx-orin-32gb", False, "MAXN"),
    "agx-orin-64gb-r36.4.0": ("36.4.0", "6.1", "NVIDIA Jetson AGX Orin Developer Kit", "agx-orin-64gb", False,
                              "MODE_50W"),
}


def test_fixture_set_covers_three_modules_and_two_release_lines():
    assert {b.name for b in BOARDS.iterdir()} == set(EXPECTED)
    assert len({v[3] for v in EXPECTED.values()}) >= 3
    assert {v[0].split(".")[0] for v in EXPECTED.values()} == {"35", "36"}


@pytest.mark.parametrize("board", sorted(EXPECTED))
def test_detect_recorded_board(board):
    version, jetpack, model, prof, is_super, mode = EXPECTED[board]
    info = D.detect(BOARDS / board)
    assert info.release.version == version
    assert info.jetpack == jetpack and info.release.jetpack_exact
    assert info.model == model  # trailing NUL stripped
    assert info.profile is not None and info.profile.name == prof
    assert "compatible" in info.identified_by
    assert info.super_config is is_super
    assert info.is_jetson and info.is_orin
    assert info.current_power_mode_name == mode
    assert info.compatible[-1] == "nvidia,tegra234"
    assert 0.8 * info.profile.memory_bytes < info.mem_total < info.profile.memory_bytes


def test_release_line_fields():
    info = D.detect(BOARDS / "orin-nano-devkit-r35.4.1")
    rel = info.release
    assert (rel.major, rel.revision, rel.gcid, rel.board) == (35, "4.1", "33958178", "t186ref")
    assert rel.date == "Tue Aug  1 19:57:35 UTC 2023" and rel.kernel_variant == "oot"
    assert rel.tag == "R35.4.1"
    assert D.detect(BOARDS / "orin-nx-16gb-r36.3.0").release.board == "generic"


def test_parse_release_variants():
    assert D.parse_nv_tegra_release("# R36 (release), REVISION: 4.3, GCID: 1, BOARD: generic").version == "36.4.3"
    assert D.parse_nv_tegra_release("# R36 (release), REVISION: 5.0, GCID: 43688277").version == "36.5.0"
    assert D.parse_nv_tegra_release("# R35 (release), REVISION: 6\n").version == "35.6.0"
    assert D.parse_nv_tegra_release("") is None
    assert D.parse_nv_tegra_release("Ubuntu 22.04") is None


def test_jetpack_mapping():
    assert D.jetpack_for("36.4.3") == ("6.2", True)
    assert D.jetpack_for("R36.4.4") == ("6.2.1", True)
    assert D.jetpack_for("35.2.1") == ("5.1", True)
    assert D.jetpack_for("36.9.9") == ("6.x", False)  # unknown release: its line, marked inexact
    assert D.jetpack_for("35.9.0") == ("5.x", False)
    assert D.jetpack_for("32.7.4") == (None, False)  # not an Orin release line
    assert D.jetpack_for("garbage") == (None, False)


def test_model_and_compatible_parsing():
    assert D.clean_model(b"NVIDIA Jetson AGX Orin Developer Kit\x00") == "NVIDIA Jetson AGX Orin Developer Kit"
    assert D.clean_model(b"\x00") is None and D.clean_model(None) is None
    comp = D.parse_compatible(b"nvidia,p3768-0000+p3767-0005-super\x00nvidia,p3767-0005\x00nvidia,tegra234\x00")
    assert comp == ["nvidia,p3768-0000+p3767-0005-super", "nvidia,p3767-0005", "nvidia,tegra234"]
    parts, is_super = D.parts_from_compatible(comp)
    assert parts == ["p3768-0000", "p3767-0005"] and is_super


def _tree(tmp_path, model=None, compatible=None, mem_kb=None, release=None):
    if release:
        (tmp_path / "etc").mkdir(parents=True, exist_ok=True)
        (tmp_path / "etc/nv_tegra_release").write_text(release)
    dt = tmp_path / "proc/device-tree"
    dt.mkdir(parents=True, exist_ok=True)
    if model:
        (dt / "model").write_bytes(model.encode() + b"\x00")
    if compatible:
        (dt / "compatible").write_bytes(b"".join(c.encode() + b"\x00" for c in compatible))
    if mem_kb:
        (tmp_path / "proc/meminfo").write_text(f"MemTotal:       {mem_kb} kB\nMemFree:         1000 kB\n")
    return tmp_path


def test_ambiguous_agx_devkit_module_uses_memtotal(tmp_path):
    comp = ["nvidia,p3737-0000+p3701-0000", "nvidia,p3701-0000", "nvidia,tegra234"]
    info = D.detect(_tree(tmp_path / "a", "Jetson AGX Orin Developer Kit", comp, mem_kb=31357952))
    assert info.profile.name == "agx-orin-32gb" and "MemTotal" in info.identified_by
    info = D.detect(_tree(tmp_path / "b", "Jetson AGX Orin Developer Kit", comp, mem_kb=64348160))
    assert info.profile.name == "agx-orin-64gb"
    info = D.detect(_tree(tmp_path / "c", "Jetson AGX Orin Developer Kit", comp))
    assert info.profile is None and "MemTotal" in info.identified_by and info.is_orin


def test_model_string_fallback_needs_memory(tmp_path):
    # a custom carrier whose device tree lacks the P-number: family from the model, variant from MemTotal
    info = D.detect(_tree(tmp_path / "a", "ACME Orin NX carrier", ["acme,box", "nvidia,tegra234"], 16031744))
    assert info.profile.name == "orin-nx-16gb" and "model string" in info.identified_by
    info = D.detect(_tree(tmp_path / "b", "ACME Orin NX carrier", ["acme,box", "nvidia,tegra234"], 7802880))
    assert info.profile.name == "orin-nx-8gb"
    info = D.detect(_tree(tmp_path / "c", "ACME Orin NX carrier", ["acme,box", "nvidia,tegra234"]))
    assert info.profile is None and info.is_orin


def test_not_a_jetson(tmp_path):
    info = D.detect(tmp_path)
    assert not info.is_jetson and not info.is_orin and info.profile is None
    assert info.release is None and info.model is None and info.compatible == []
    info = D.detect(_tree(tmp_path / "pi", "Raspberry Pi 5 Model B Rev 1.0", ["raspberrypi,5-model-b", "brcm,bcm2712"]))
    assert not info.is_jetson and "not a known Jetson Orin" in info.identified_by


def test_older_jetson_is_not_orin(tmp_path):
    info = D.detect(_tree(tmp_path, "NVIDIA Jetson Xavier NX Developer Kit",
                          ["nvidia,p3509-0000+p3668-0001", "nvidia,tegra194"], 7772 * 1024,
                          "# R35 (release), REVISION: 4.1, GCID: 1, BOARD: t186ref\n"))
    assert info.is_jetson and not info.is_orin and info.profile is None


def test_nvpmodel_parsers():
    conf = (BOARDS / "orin-nano-devkit-super-r36.4.3/etc/nvpmodel.conf").read_text()
    modes = D.parse_nvpmodel_conf(conf)
    assert [(m.id, m.name) for m in modes] == [(0, "15W"), (1, "25W"), (2, "MAXN_SUPER"), (3, "7W")]
    assert D.parse_nvpmodel_default(conf) == 0
    assert D.parse_nvpmodel_status("pmode:0002 fmode:quiet") == 2
    assert D.parse_nvpmodel_status("") is None
    assert D.parse_nvpmodel_query("NV Power Mode: 15W\n0\n") == ("15W", 0)
    assert D.parse_nvpmodel_query("NV Fan Mode:quiet\nNV Power Mode: MAXN\n0\n") == ("MAXN", 0)
    assert D.parse_nvpmodel_query("nvpmodel: command not found") == (None, None)


def test_doctor_detail_line():
    text = (BOARDS / "orin-nano-devkit-super-r36.4.3/etc/nv_tegra_release").read_text()
    line = D.doctor_detail(text, "NVIDIA Jetson Orin Nano Engineering Reference Developer Kit Super")
    assert "Orin Nano" in line and "JetPack 6.2" in line and "vlmedge jetson info" in line
    line = D.doctor_detail(text, "x", root=BOARDS / "orin-nano-devkit-super-r36.4.3")
    assert line.endswith("profile orin-nano-8gb")
    assert "not in vlmedge's table" in D.doctor_detail("# R36 (release), REVISION: 9.9, GCID: 1", "m")
    assert D.doctor_detail("", None) == "unknown model"


def test_doctor_check_accepts_the_detail():
    """doctor.check_jetson keeps working on the same inputs with the detail line swapped in."""
    from vlmedge import doctor

    text = (BOARDS / "orin-nx-16gb-r36.3.0/etc/nv_tegra_release").read_text()
    assert doctor.parse_l4t_release(text) == D.detect(BOARDS / "orin-nx-16gb-r36.3.0").release.tag
    rec = doctor.check_jetson(BOARDS / "orin-nx-16gb-r36.3.0/etc/nv_tegra_release",
                              BOARDS / "orin-nx-16gb-r36.3.0/proc/device-tree/model")
    assert rec.ok and rec.version == "L4T R36.3.0"
