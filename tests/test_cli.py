"""The `vlmedge` command: version, console script, `python -m`, and unknown subcommands."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from importlib.metadata import version
from pathlib import Path

import pytest

from vlmedge import __version__
from vlmedge.cli import main


def _run(*args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run([*args], capture_output=True, text=True, timeout=timeout, stdin=subprocess.DEVNULL)


def _console_script() -> str | None:
    beside = Path(sys.executable).with_name("vlmedge")
    if beside.exists():
        return str(beside)
    return shutil.which("vlmedge")


def test_version_flag_prints_the_package_version(capsys):
    with pytest.raises(SystemExit) as exc:
        main(["--version"])
    assert exc.value.code == 0
    out = capsys.readouterr().out.strip()
    assert out == f"vlmedge {__version__}"
    assert __version__ == version("vlmedge")


def test_no_subcommand_prints_help_and_fails(capsys):
    assert main([]) != 0
    assert "doctor" in capsys.readouterr().out


def test_unknown_subcommand_exits_non_zero(capsys):
    with pytest.raises(SystemExit) as exc:
        main(["no-such-command"])
    assert exc.value.code != 0
    assert "invalid choice" in capsys.readouterr().err


@pytest.mark.parametrize("entry", [["-m", "vlmedge.cli"], ["-m", "vlmedge"]])
def test_python_dash_m(entry):
    proc = _run(sys.executable, *entry, "--version")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == f"vlmedge {__version__}"

    proc = _run(sys.executable, *entry, "no-such-command")
    assert proc.returncode != 0
    assert "invalid choice" in proc.stderr


def test_console_script():
    script = _console_script()
    if script is None:
        pytest.skip("the vlmedge console script is not installed (pip install -e . creates it)")
    proc = _run(script, "--version")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == f"vlmedge {__version__}"


def test_doctor_end_to_end_in_a_subprocess():
    """The real command in a fresh process: a report (exit 0), JSON that parses, --require's exit code."""
    proc = _run(sys.executable, "-m", "vlmedge", "doctor", "--json", "--require", "python,torch")
    assert proc.returncode == 0, proc.stderr
    data = json.loads(proc.stdout)
    names = {c["name"]: c for c in data["checks"]}
    assert names["python"]["ok"] and names["torch"]["ok"]

    # off a Jetson, requiring one is a script-friendly failure; on one, it passes
    on_jetson = os.path.exists("/etc/nv_tegra_release")
    proc = _run(sys.executable, "-m", "vlmedge", "doctor", "--require", "jetson")
    assert proc.returncode == (0 if on_jetson else 1), proc.stderr
    assert "jetson" in proc.stdout

    proc = _run(sys.executable, "-m", "vlmedge", "doctor", "--require", "bogus")
    assert proc.returncode == 2
    assert "bogus" in proc.stderr and "Traceback" not in proc.stderr


def test_user_errors_are_one_line_without_traceback_unless_debug():
    res = _run(sys.executable, "-m", "vlmedge", "demo", "--method", "bogus")
    assert res.returncode == 2
    assert res.stderr.strip().splitlines() == ["vlmedge: error: unknown method 'bogus'; available: none, random, uniform"] \
        or res.stderr.strip().splitlines()[-1].startswith("vlmedge: error: unknown method 'bogus'")
    assert "Traceback" not in res.stderr
    res = _run(sys.executable, "-m", "vlmedge", "--debug", "demo", "--method", "bogus")
    assert res.returncode != 0 and "Traceback" in res.stderr and "UnknownNameError" in res.stderr
    res = _run(sys.executable, "-m", "vlmedge", "demo", "--model", "/nonexistent/model")
    assert res.returncode == 2 and "does not exist" in res.stderr and "Traceback" not in res.stderr


def test_demo_streams_frames_and_answers(tmp_path):
    res = _run(sys.executable, "-m", "vlmedge", "demo", "--tiny", "--method", "uniform:ratio=0.25", timeout=300)
    assert res.returncode == 0, res.stderr
    lines = res.stdout.splitlines()
    frames = [ln for ln in lines if ln.strip() and ln.split()[0].isdigit()]
    assert len(frames) == 8
    assert all(ln.split()[2] == "16" and ln.split()[3] == "4" for ln in frames)  # 4x4 grid pooled to 2x2
    assert sum("A: " in ln for ln in lines) == 5  # camworld seed 1000000 asks five questions
    assert "GStreamer-CRITICAL" not in res.stderr


def test_export_then_demo_and_eval_on_onnxruntime(tmp_path):
    out = str(tmp_path / "exp")
    res = _run(sys.executable, "-m", "vlmedge", "export", "--tiny", "qwen2_5_vl", "--out", out, timeout=300)
    assert res.returncode == 0, res.stderr
    res = _run(sys.executable, "-m", "vlmedge", "demo", "--engine", out, timeout=300)
    assert res.returncode == 0, res.stderr
    assert "(auto)" in res.stdout and sum("A: " in ln for ln in res.stdout.splitlines()) == 5
    res = _run(sys.executable, "-m", "vlmedge", "eval", "--engine", out, "--seeds", "1000000+1", timeout=300)
    assert res.returncode == 0, res.stderr
    assert "overall" in res.stdout
    res = _run(sys.executable, "-m", "vlmedge", "eval", "--engine", out, "--seeds", "5+1")
    assert res.returncode == 2 and "training seed" in res.stderr


def test_soak_and_eval_take_the_offload_store_settings(tmp_path):
    out = tmp_path / "soak.json"
    res = _run(sys.executable, "-m", "vlmedge", "soak", "--tiny", "--frames", "48", "--max-stream-tokens", "100",
               "--policies", "evict,focus", "--offload-tokens", "80", "--retrieve-tokens", "30",
               "--offload-precision", "int8", "--retrieval-score", "all-heads", "--retrieval-positions", "adjacent",
               "--retrieval-context", "2", "--recall-after", "1", "--json", str(out), timeout=300)
    assert res.returncode == 0, res.stderr
    assert "| evict |" in res.stdout and "| focus (int8 store, all-heads, adjacent, context 2) |" in res.stdout
    evict, focus = json.loads(out.read_text())
    assert (evict["offload_precision"], focus["offload_precision"]) == ("full", "int8")
    assert (focus["retrieval_score"], focus["retrieval_positions"], focus["retrieval_context"]) == (
        "all-heads", "adjacent", 2)
    assert focus["store"]["offloaded_blocks"] > 0 and evict["store"]["offloaded_blocks"] == 0
    res = _run(sys.executable, "-m", "vlmedge", "eval", "--tiny", "--seeds", "1000000+1", "--max-stream-tokens",
               "120", "--eviction", "offload", "--offload-tokens", "80", "--retrieve-tokens", "30",
               "--offload-precision", "int8", timeout=300)
    assert res.returncode == 0, res.stderr
    res = _run(sys.executable, "-m", "vlmedge", "soak", "--tiny", "--frames", "8", "--offload-precision", "fp4")
    assert res.returncode == 2 and "--offload-precision" in res.stderr
    res = _run(sys.executable, "-m", "vlmedge", "soak", "--tiny", "--frames", "8", "--seed-start", "5")
    assert res.returncode == 2 and "training seed" in res.stderr


def test_train_retrieval_writes_a_score_the_session_loads(tmp_path):
    res = _run(sys.executable, "-m", "vlmedge", "train-retrieval", "--tiny", "--frames", "60")
    assert res.returncode == 2 and "--out" in res.stderr
    res = _run(sys.executable, "-m", "vlmedge", "train-retrieval", "--tiny", "--out", str(tmp_path), "--frames", "60",
               "--val-frames", "120", "--minutes", "0.05", "--window", "40", "--rank", "8", timeout=300)
    assert res.returncode == 0, res.stderr
    assert "among the 7 best of 40 frames" in res.stdout and "validation after" in res.stderr
    cfg = json.loads((tmp_path / "retrieval" / "config.json").read_text())
    assert cfg["rank"] == 8 and cfg["trained"]["steps"] > 0 and cfg["trained"]["methods"] == ["uniform:ratio=0.25",
                                                                                             "none"]
    assert (tmp_path / "retrieval" / "scorer.safetensors").stat().st_size > 0
