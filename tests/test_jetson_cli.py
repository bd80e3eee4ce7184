"""`vlmedge jetson ...` over the recorded fixture trees and tegrastats files (no Jetson here)."""
import json
from pathlib import Path

import pytest

from vlmedge.cli import main
from vlmedge.jetson import setup_checks as S

FIX = Path(__file__).parent / "fixtures" / "jetson"
NANO = FIX / "boards" / "orin-nano-devkit-super-r36.4.3"
AGX5 = FIX / "boards" / "agx-orin-32gb-r35.2.1"


def run(capsys, *argv):
    code = main(list(argv))
    out = capsys.readouterr()
    return code, out.out, out.err


def test_jetson_is_a_command(capsys):
    code, out, _ = run(capsys, "jetson")
    assert code == 2 and "info" in out and "setup" in out and "tegrastats" in out


def test_info_on_a_recorded_board(capsys):
    code, out, _ = run(capsys, "jetson", "info", "--root", str(NANO))
    assert code == 0
    assert "R36.4.3 (JetPack 6.2)" in out
    assert "orin-nano-8gb" in out and "super device tree" in out
    assert "current 2=MAXN_SUPER" in out and "4.75 GiB" in out and "sm_87" in out
    code, out, _ = run(capsys, "jetson", "info", "--root", str(NANO), "--json")
    d = json.loads(out)
    assert d["detected"]["profile"] == "orin-nano-8gb" and d["detected"]["release"]["jetpack"] == "6.2"
    assert d["profile"]["dla_cores"] == 0


def test_info_off_a_jetson(capsys, tmp_path):
    code, out, _ = run(capsys, "jetson", "info", "--root", str(tmp_path))
    assert code == 1 and "not a Jetson" in out
    code, out, _ = run(capsys, "jetson", "info", "--root", str(tmp_path), "--profile", "orin-nx-16gb")
    assert code == 0 and "Jetson Orin NX 16GB" in out and "DLA cores: 2" in out


def test_unknown_profile_is_a_one_line_error(capsys):
    code, _, err = run(capsys, "jetson", "info", "--profile", "orin-mini")
    assert code == 2 and "valid names" in err and "agx-orin-64gb" in err and "Traceback" not in err


def test_profiles_table(capsys):
    code, out, _ = run(capsys, "jetson", "profiles")
    assert code == 0 and len(out.strip().splitlines()) == 7 and "55.25 GiB" in out


def test_setup_checks_over_a_recorded_board(tmp_path):
    present = {"nvvidconv", "nvarguscamerasrc", "v4l2src"}
    root = tmp_path / "board"
    import shutil

    shutil.copytree(NANO, root)
    checks = S.run_setup_checks(str(root), "csi", has_element=present.__contains__, include_python=False)
    by = {c.name: c for c in checks}
    assert by["jetson-linux"].status == "ok" and "JetPack 6.2" in by["jetson-linux"].detail
    assert by["module"].status == "ok" and by["power-mode"].status == "ok"
    assert by["camera-devices"].status == "fail" and "jetson-io" in by["camera-devices"].fix
    assert by["argus-daemon"].status == "fail" and S.exit_code(checks) == 1
    (root / "dev").mkdir()
    (root / "dev" / "video0").write_text("")
    (root / "tmp").mkdir()
    (root / "tmp" / "argus_socket").write_text("")
    checks = S.run_setup_checks(str(root), "csi", has_element=present.__contains__, include_python=False)
    assert S.exit_code(checks) == 0, S.format_checks(checks)
    assert "all required checks passed" in S.format_checks(checks)


def test_setup_warnings_do_not_fail(tmp_path):
    checks = S.run_setup_checks(str(AGX5), "none", has_element=lambda name: name == "nvvidconv",
                                include_python=False)
    by = {c.name: c for c in checks}
    assert by["jetson-linux"].status == "warn" and "JetPack 6" in by["jetson-linux"].fix  # R35 works, R36 advised
    assert by["power-mode"].status == "ok"  # MAXN is current
    assert by["nvarguscamerasrc"].status == "warn" and by["camera-devices"].status == "warn"
    assert S.exit_code(checks) == 0


def test_setup_power_mode_advice():
    from vlmedge.jetson.detect import detect

    info = detect(FIX / "boards" / "orin-nx-16gb-r36.3.0")  # running 2=15W
    rec = S.check_power_mode(info)
    assert rec.status == "warn" and "nvpmodel -m 0 (MAXN)" in rec.fix


def test_setup_missing_tensorrt_says_what_to_install():
    def importer(name):
        raise ModuleNotFoundError(f"No module named {name!r}")

    rec = S.check_tensorrt(importer)
    assert rec.status == "fail" and rec.required and "python3-libnvinfer" in rec.fix
    assert "--system-site-packages" in rec.fix


def test_setup_command_exit_code(capsys):
    code, out, _ = run(capsys, "jetson", "setup", "--root", str(NANO), "--camera", "csi")
    assert code == 1  # no nvvidconv / camera on this machine
    assert "ok    jetson-linux" in out and "fix:" in out and "required checks failed" in out
    code, out, _ = run(capsys, "jetson", "setup", "--root", str(NANO), "--json")
    assert json.loads(out)["ok"] is False


def test_tegrastats_from_a_file(capsys):
    code, out, _ = run(capsys, "jetson", "tegrastats", "--file", str(FIX / "tegrastats" / "agx-orin-32gb-r35.2.1.txt"),
                       "--lines", "0")
    assert code == 0
    lines = out.strip().splitlines()
    assert lines[1].startswith("11:14:53  RAM 6107/30623 MB") and "GPU 84% @930 MHz" in lines[1]
    assert "rails 24086 mW" in lines[1]
    assert lines[-1].startswith("2 samples: GPU mean 42%, max 84%")
    code, out, _ = run(capsys, "jetson", "tegrastats", "--file",
                       str(FIX / "tegrastats" / "orin-nano-super-r36.4.3.txt"), "--lines", "1", "--json")
    rec = json.loads(out.strip().splitlines()[0])
    assert rec["gpu_load_pct"] == 97 and rec["rails_mw"]["VDD_IN"] == 14210 and rec["temps_c"]["tj"] == 57.656


def test_tegrastats_live_needs_tegrastats(capsys, monkeypatch):
    monkeypatch.setenv("PATH", "/nonexistent")
    code, _, err = run(capsys, "jetson", "tegrastats", "--lines", "2")
    assert code == 2 and "--file" in err


def test_pipeline_command(capsys):
    code, out, _ = run(capsys, "jetson", "pipeline", "--camera", "usb", "--set", "device=/dev/video1",
                       "--model", "/var/lib/vlmedge/export", "--profile", "orin-nano-8gb")
    assert code == 0 and out.startswith("v4l2src device=/dev/video1 ! ")
    assert "vlmedge model=/var/lib/vlmedge/export memory-budget=5100273664 sample-fps=1" in out
    code, _, err = run(capsys, "jetson", "pipeline", "--set", "widht=3")
    assert code == 2 and "no setting widht" in err


def test_service_command_writes_both_files(capsys, tmp_path):
    from vlmedge.jetson.service import parse_env, parse_unit, unit_value

    code, out, _ = run(capsys, "jetson", "service", "--root", str(AGX5), "--out", str(tmp_path), "--user", "cam")
    assert code == 0 and "agx-orin-32gb" in out
    unit = parse_unit((tmp_path / "vlmedge-camera.service").read_text())
    assert unit_value(unit, "Service", "MemoryMax") == f"{(26 * 1024 + 512) + 1024}M"
    env = parse_env((tmp_path / "camera.env").read_text())
    assert env["VLMEDGE_PROFILE"] == "agx-orin-32gb" and env["VLMEDGE_PIPELINE"].startswith("nvarguscamerasrc")
    code, _, err = run(capsys, "jetson", "service", "--root", str(tmp_path))
    assert code == 2 and "--profile" in err


@pytest.mark.parametrize("argv", [["jetson", "tegrastats", "--lines", "-1", "--file", "x"],
                                  ["jetson", "tegrastats", "--file", "/nonexistent/t.txt"]])
def test_tegrastats_bad_input(capsys, argv):
    code, _, err = run(capsys, *argv)
    assert code == 2 and err.startswith("vlmedge: error:")
