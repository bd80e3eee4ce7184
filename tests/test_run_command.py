"""`vlmedge run` and `vlmedge demo`: sources, JSON output, stats, stdin questions, --print-pipeline (run through
a shell and gst-launch-1.0), and clear errors for bad sources."""
import io
import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest

gi = pytest.importorskip("gi")
try:
    from vlmedge.pipelines.gst import Gst  # noqa: F401  (onnx/onnxruntime before Gst: see pipelines/gst.py)
except (ValueError, ImportError):
    pytest.skip("GStreamer's Python bindings are not installed", allow_module_level=True)

from vlmedge.cli import main  # noqa: E402
from vlmedge.models import camworld  # noqa: E402
from vlmedge.pipelines.builder import RunSpec, describe, source_kind, tokens  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]


def _json_lines(text: str) -> list[dict]:
    return [json.loads(ln) for ln in text.splitlines() if ln.startswith("{")]


def test_camworld_source_answers_every_question_and_reports_stats(capsys, monkeypatch):
    monkeypatch.setattr("sys.stdin", io.StringIO(""))
    assert main(["run", "--tiny", "--source", "camworld:1000002", "--method", "uniform:ratio=0.5", "--json"]) == 0
    lines = _json_lines(capsys.readouterr().out)
    kinds = [ln["type"] for ln in lines]
    stream = camworld.generate(1_000_002, split="eval")
    assert kinds[0] == "start" and kinds[-1] == "stats"
    assert kinds.count("frame") == len(stream.frames)
    answers = [ln for ln in lines if ln["type"] == "answer"]
    assert sorted(a["question"] for a in answers) == sorted(q.text for q in stream.questions)
    assert all(a["truth"] == {q.text: q.answer for q in stream.questions}[a["question"]] for a in answers)
    st = lines[-1]
    assert st["eos"] and st["frames-in"] == st["frames-out"] == len(stream.frames)
    assert st["frames-dropped"] == 0 and st["frames-processed"] == len(stream.frames)  # files use every frame
    assert st["answer-latency-ms-median"] > 0 and st["sampled-fps"] > 0


def test_stats_table_and_questions_from_stdin_and_flags(capsys, monkeypatch):
    monkeypatch.setattr("sys.stdin", io.StringIO("what color is the shape ?\n\n"))
    assert main(["run", "--tiny", "--source", "test:smpte", "--num-buffers", "25", "--method", "random:ratio=0.5",
                 "--question", "how many shapes are there ?", "--ask-at", "1.0", "is there a red square ?",
                 "--stats"]) == 0
    out = capsys.readouterr().out
    for q in ("what color is the shape ?", "how many shapes are there ?", "is there a red square ?"):
        assert f"Q: {q}" in out
    assert "frames in / out                        25 / 25" in out
    assert "sustained sampled fps" in out and "question -> answer ms (median / max)" in out


def test_bad_sources_say_what_is_accepted(capsys):
    assert main(["run", "--tiny", "--source", "/nonexistent/clip.mp4"]) == 2
    err = capsys.readouterr().err
    assert "is not a file, a URI" in err and "camworld:SEED" in err
    assert main(["run", "--tiny", "--source", "camworld:abc"]) == 2
    assert "integer seed" in capsys.readouterr().err


def test_source_kinds_and_pipeline_shapes(tmp_path):
    clip = tmp_path / "a b.mkv"
    clip.write_bytes(b"x")
    assert [source_kind(s) for s in ("test", "test:ball", "camworld:3", "rtsp://cam/1", "/dev/video0", str(clip))] == \
        ["test", "test", "camworld", "uri", "v4l2", "file"]
    el = {"model": "reference", "method": "stc:ratio=0.25", "prompt": 'say "hi", please'}
    d = describe(RunSpec(str(clip), el, audio=True, realtime=False))
    assert "uridecodebin uri=file://" in d and "a%20b.mkv" in d and "vlmedge.audio_sink" in d
    assert 'drop-frames=false' in d and "fakesink sync=false" in d  # files: every frame, no clock
    assert 'prompt="say \\"hi\\", please"' in d
    live = tokens(RunSpec("rtsp://cam/1", el, realtime=True))
    assert "drop-frames=false" not in live and "sync=true" in live
    shown = tokens(RunSpec("test", el, display=True))
    assert "textoverlay" in shown and "vlmedge.text_src" in shown


@pytest.mark.skipif(not shutil.which("gst-launch-1.0"), reason="GStreamer tools are not installed")
@pytest.mark.skipif(not (ROOT / ".venv").exists(), reason="the plugin loader finds vlmedge through the checkout's .venv")
def test_print_pipeline_runs_in_a_shell_through_gst_launch(capsys):
    assert main(["run", "--tiny", "--source", "test", "--num-buffers", "20", "--method", "uniform:ratio=0.5",
                 "--prompt", "what is it ?", "--prompt-interval", "0.5", "--print-pipeline"]) == 0
    line = capsys.readouterr().out.strip()
    assert line.startswith("GST_PLUGIN_PATH=") and "gst-launch-1.0" in line and "'prompt=\"what is it ?\"'" in line
    res = subprocess.run(["bash", "-c", line], capture_output=True, text=True, timeout=300, stdin=subprocess.DEVNULL,
                         cwd="/", env=dict(os.environ))
    assert res.returncode == 0, res.stderr[-2000:]
    assert res.stdout.count("vlmedge-answer") >= 3  # the standing prompt every 0.5 s of a 2 s stream
    assert "frames-out\\\":\\ 20" in res.stdout  # the vlmedge-stats message: every frame passed through


@pytest.mark.skipif(not shutil.which("gst-inspect-1.0"), reason="GStreamer tools are not installed")
def test_gst_inspect_documents_every_property():
    from vlmedge.pipelines import plugin_dir
    from vlmedge.pipelines.element_props import PROPERTIES

    env = dict(os.environ, GST_PLUGIN_PATH=str(plugin_dir()))
    res = subprocess.run(["gst-inspect-1.0", "vlmedge"], capture_output=True, text=True, timeout=120, env=env)
    assert res.returncode == 0, res.stderr[-2000:]
    for name, spec in PROPERTIES.items():
        assert f"  {name}" in res.stdout and spec[2][:40] in res.stdout, name
    for pad in ("'sink'", "'src'", "'text_src'", "'audio_sink'"):
        assert pad in res.stdout


def test_demo_plays_camworld_through_the_pipeline_with_frame_lines(capsys, monkeypatch):
    monkeypatch.setattr("sys.stdin", io.StringIO(""))
    assert main(["demo", "--tiny", "--method", "uniform:ratio=0.5", "--seed", "1000004"]) == 0
    out = capsys.readouterr().out
    stream = camworld.generate(1_000_004, split="eval")
    assert out.count("] Q: ") == len(stream.questions)
    assert "frame  time s  tokens  kept" in out and "camworld answers correct" in out
    assert f"frames in / out                        {len(stream.frames)} / {len(stream.frames)}" in out


def test_stats_include_tegrastats_on_a_jetson(tmp_path, capsys, monkeypatch):
    """On a Jetson, --stats summarises tegrastats over the run (a recorded Orin NX log stands in for the tool)."""
    lines = ROOT / "tests" / "fixtures" / "jetson" / "tegrastats" / "orin-nx-16gb-r36.3.0.txt"
    fake = tmp_path / "tegrastats"
    fake.write_text(f"#!/bin/sh\nwhile read -r line; do echo \"$line\"; sleep 0.05; done < '{lines}'\nexec sleep 30\n")
    fake.chmod(0o755)
    monkeypatch.setenv("PATH", f"{tmp_path}{os.pathsep}{os.environ['PATH']}")
    monkeypatch.setattr("sys.stdin", io.StringIO(""))
    assert main(["run", "--tiny", "--source", "test", "--num-buffers", "10", "--method", "none", "--json"]) == 0
    st = _json_lines(capsys.readouterr().out)[-1]
    from vlmedge.jetson.tegrastats import read_file, summarize

    recorded = summarize(read_file(lines))
    tg = st["tegrastats"]
    assert 1 <= tg["samples"] <= recorded["samples"]
    assert tg["ram_total_mb"] == recorded["ram_total_mb"] and tg["ram_used_mb_peak"] <= recorded["ram_used_mb_peak"]
    assert tg["power_mw_mean"] is not None and tg["temp_max_c"] is not None
    assert main(["run", "--tiny", "--source", "test", "--num-buffers", "10", "--method", "none", "--stats"]) == 0
    assert "board RAM peak / total MB (tegrastats)" in capsys.readouterr().out
