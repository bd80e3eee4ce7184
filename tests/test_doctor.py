"""`vlmedge doctor`: every check runs, never crashes, and tells the truth about this machine."""
from __future__ import annotations

import argparse
import importlib.util
import json
import shutil
import types

import pytest

from vlmedge import doctor
from vlmedge.commands import doctor as doctor_cmd
from vlmedge.errors import UnknownNameError


@pytest.fixture(scope="module")
def records() -> dict[str, doctor.Check]:
    return {r.name: r for r in doctor.run_checks()}


def _doctor(argv: list[str]) -> int:
    """Runs the doctor subcommand through its own parser (independent of the other subcommands)."""
    parser = argparse.ArgumentParser(prog="vlmedge")
    doctor_cmd.register(parser.add_subparsers(dest="command"))
    args = parser.parse_args(["doctor", *argv])
    return args.func(args)


def test_every_check_returns_a_complete_record(records):
    assert list(records) == list(doctor.CHECKS)
    for name, rec in records.items():
        assert isinstance(rec, doctor.Check)
        data = rec.to_dict()
        assert set(data) >= {"name", "ok", "version", "hint", "detail"}
        assert data["name"] == name
        assert isinstance(data["ok"], bool)
        assert data["version"] is None or isinstance(data["version"], str)
        if not rec.ok:
            assert rec.hint, f"{name} is 'no' but says nothing about what to install"


def test_expected_capabilities_are_listed(records):
    for name in ["python", "torch", "cuda", "onnxruntime", "onnx", "transformers", "tensorrt", "triton",
                 "gstreamer", "gst-python", "espeak-ng", "jetson"]:
        assert name in records


def test_python_and_torch_are_reported_truthfully(records):
    import torch

    assert records["python"].ok
    assert records["torch"].ok
    assert records["torch"].version == torch.__version__
    cuda = torch.cuda.is_available()
    assert records["cuda"].ok is cuda
    assert ("CUDA available: yes" in records["torch"].detail) is cuda
    if cuda:
        assert torch.cuda.get_device_name(0) in records["cuda"].detail
    else:
        assert "no CUDA device" in records["cuda"].detail


def test_onnxruntime_lists_its_providers(records):
    import onnxruntime

    rec = records["onnxruntime"]
    assert rec.ok and rec.version == onnxruntime.__version__
    assert "CPUExecutionProvider" in rec.detail


def test_tensorrt_is_no_when_not_importable(records):
    rec = records["tensorrt"]
    if importlib.util.find_spec("tensorrt") is None:
        assert rec.ok is False
        assert "not importable" in rec.detail
        assert "tensorrt" in rec.hint.lower()
    else:  # importable: 'yes' only with a real runtime
        import tensorrt

        assert rec.ok is (hasattr(tensorrt, "Builder") and hasattr(tensorrt, "Logger"))


def test_tensorrt_stub_package_is_no():
    stub = types.ModuleType("tensorrt")
    stub.__version__ = "10.0.0"
    rec = doctor.check_tensorrt(importer=lambda name: stub)
    assert rec.ok is False and rec.version == "10.0.0"
    assert "stub" in rec.detail and rec.hint

    real = types.ModuleType("tensorrt")
    real.__version__, real.Builder, real.Logger = "10.9.0", object, object
    assert doctor.check_tensorrt(importer=lambda name: real).ok is True


def test_tensorrt_import_that_explodes_is_no():
    def boom(name):
        raise OSError("libnvinfer.so.10: cannot open shared object file")

    rec = doctor.check_tensorrt(importer=boom)
    assert rec.ok is False and "libnvinfer" in rec.detail


def test_triton_matches_importability(records):
    assert records["triton"].ok is (importlib.util.find_spec("triton") is not None)
    assert "TRITON_INTERPRET" in records["triton"].detail + records["triton"].hint


def test_gstreamer_matches_what_python_can_import(records):
    try:
        import gi

        gi.require_version("Gst", "1.0")
        from gi.repository import Gst  # noqa: F401

        importable = True
    except (ImportError, ValueError):
        importable = False
    assert records["gstreamer"].ok is importable
    if importable:
        assert records["gstreamer"].version and records["gstreamer"].version.startswith("1.")


def test_jetson_release_parsing(tmp_path):
    assert doctor.parse_l4t_release("# R35 (release), REVISION: 4.1, GCID: 33958178, BOARD: t186ref") == "R35.4.1"
    assert doctor.parse_l4t_release("# R36 (release), REVISION: 4.3, GCID: 1, BOARD: generic") == "R36.4.3"
    assert doctor.parse_l4t_release("garbage") is None

    release = tmp_path / "nv_tegra_release"
    release.write_text("# R36 (release), REVISION: 4.3, GCID: 38968081, BOARD: generic, EABI: aarch64\n")
    model = tmp_path / "model"
    model.write_bytes(b"NVIDIA Jetson Orin Nano Developer Kit\x00")
    rec = doctor.check_jetson(release, model)
    assert rec.ok and rec.version == "L4T R36.4.3" and "Orin Nano" in rec.detail

    rec = doctor.check_jetson(tmp_path / "absent", model)
    assert rec.ok is False and "JetPack" in rec.hint


def test_gst_inspect_output_parsing():
    text = (
        "Plugin Details:\n  Name                     python\n  Version                  1.22.0\n\n"
        "  vlmedge: vlmedge stream assistant\n  vlmedgedoctorprobe: vlmedge doctor probe\n\n"
        "  2 features:\n  +-- 2 elements\n"
    )
    assert doctor.parse_gst_inspect_plugin(text) == ("1.22.0", 2, ["vlmedge", "vlmedgedoctorprobe"])
    assert doctor.parse_gst_inspect_plugin("nothing") == (None, None, [])


@pytest.mark.skipif(shutil.which("gst-inspect-1.0") is None, reason="no gst-inspect-1.0 (gstreamer1.0-tools)")
def test_gst_python_probe_is_truthful(records):
    """Where the plugin loader is installed, the probe element must be seen; where it is not, the check says no."""
    rec = records["gst-python"]
    loader_installed = bool(doctor._libgstpython())
    if not loader_installed:
        assert rec.ok is False and "plugin-loader" in rec.hint
    elif rec.ok:
        assert "Python elements load" in rec.detail


def test_a_crashing_check_becomes_a_record(monkeypatch):
    def broken():
        raise RuntimeError("probe exploded")

    monkeypatch.setitem(doctor.CHECKS, "torch", broken)
    rec = doctor.run_check("torch")
    assert rec.ok is False and "probe exploded" in rec.detail and rec.hint


def test_text_report_has_one_line_per_capability(records, monkeypatch, capsys):
    monkeypatch.setattr(doctor, "run_checks", lambda names=None: list(records.values()))
    assert _doctor([]) == 0
    out = capsys.readouterr().out
    for rec in records.values():
        line = next(l for l in out.splitlines() if l.split()[1:2] == [rec.name])
        assert line.startswith("yes" if rec.ok else "no")
    assert "fix:" in out or all(r.ok for r in records.values())


def test_json_mode_parses(records, monkeypatch, capsys):
    monkeypatch.setattr(doctor, "run_checks", lambda names=None: list(records.values()))
    assert _doctor(["--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert [c["name"] for c in data["checks"]] == list(records)
    for c in data["checks"]:
        assert {"name", "ok", "version", "hint"} <= set(c)


def test_require_sets_the_exit_code(records, monkeypatch, capsys):
    monkeypatch.setattr(doctor, "run_checks", lambda names=None: list(records.values()))
    assert _doctor(["--require", "python,torch"]) == 0
    missing = next((n for n, r in records.items() if not r.ok), None)
    if missing is not None:  # this machine lacks something (here: jetson at least, off a Jetson)
        assert _doctor(["--require", f"python,{missing}"]) == 1
        assert missing in capsys.readouterr().out.splitlines()[-1]
        assert _doctor(["--json", "--require", missing]) == 1
        assert json.loads(capsys.readouterr().out)["missing_required"] == [missing]
    with pytest.raises(UnknownNameError, match="no-such-thing"):
        _doctor(["--require", "no-such-thing"])
