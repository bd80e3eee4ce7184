"""Calibration sets: recording from camworld (exact), a media file and the test source (through GStreamer),
the diversity rule, the on-disk format and its checks, --force, and the calibration/held-out split."""
from __future__ import annotations

import json
import shutil

import numpy as np
import pytest

from vlmedge.calibration.record import FORMAT, INDEX, VERSION, CalibrationSet, load, record, thumbnail
from vlmedge.errors import InputError, ModelFileError, VlmedgeError
from vlmedge.models import camworld


def window(audio: np.ndarray, t: float) -> np.ndarray:
    """The generator's second of sound ending at t, zero-padded before the stream starts."""
    end = int(round(t * 16000))
    return np.pad(audio, (16000, 0))[end:end + 16000]


def gst_or_skip(*factories):
    pytest.importorskip("gi")
    try:
        from vlmedge.pipelines.gst import Gst  # onnx/onnxruntime before Gst: see pipelines/gst.py
    except (ValueError, ImportError):
        pytest.skip("GStreamer's Python bindings are not installed")
    Gst.init(None)
    missing = [f for f in factories if Gst.ElementFactory.find(f) is None]
    if missing:
        pytest.skip(f"GStreamer elements missing: {', '.join(missing)}")


# --- camworld: the generator's own arrays -------------------------------------------------------------------

@pytest.mark.parametrize("seed,split", [(7, "train"), (1_000_003, "eval")])
def test_camworld_frames_and_audio_equal_the_generator(tmp_path, seed, split):
    lines = []
    cs = record(f"camworld:{seed}", 5, tmp_path / "set", min_change=0, progress=lines.append)
    stream = camworld.generate(seed, split=split)
    assert len(cs) == 5 and cs.provenance["seed"] == seed and cs.provenance["split"] == split
    assert cs.provenance["kind"] == "camworld" and cs.provenance["camworld_duration_s"] == 4.0
    assert cs.provenance["frames_kept"] == 5 and cs.provenance["stopped"] == "frames"
    assert [e["time_s"] for e in cs.entries] == [0.0, 0.5, 1.0, 1.5, 2.0]
    for i, e in enumerate(cs.entries):
        np.testing.assert_array_equal(cs.frame(i), stream.frames[stream.frame_at(e["time_s"])])
        np.testing.assert_array_equal(cs.audio(i), window(stream.audio, e["time_s"]))
        assert cs.audio(i).dtype == np.float32
    assert not cs.audio(0).any()  # the second before the stream starts is silence
    assert lines and "kept 5/5" in lines[-1]
    again = load(tmp_path / "set")
    assert again.entries == cs.entries and again.provenance == cs.provenance


def test_camworld_sampling_rate_and_longer_world(tmp_path):
    cs = record("camworld:5", 3, tmp_path / "a", sample_fps=1, min_change=0, progress=None)
    assert [e["time_s"] for e in cs.entries] == [0.0, 1.0, 2.0]
    assert cs.provenance["frames_seen"] == 5 and cs.provenance["frames_sampled"] == 3
    # more frames than the default 4 s stream holds: a longer world of the same seed, recorded in the provenance
    lines = []
    cs = record("camworld:5", 12, tmp_path / "b", min_change=0, progress=lines.append)
    assert len(cs) == 12 and cs.provenance["camworld_duration_s"] == 6.0
    stream = camworld.generate(5, camworld.WorldConfig(duration_s=6.0), split="train")
    np.testing.assert_array_equal(np.stack(list(cs.frames())), stream.frames)
    assert any("10/12 kept" in ln for ln in lines[:-1]) and "kept 12/12" in lines[-1]


def test_diversity_rule(tmp_path):
    only_first = record("camworld:3", 8, tmp_path / "a", min_change=0.999, progress=None)
    assert len(only_first) == 1 and only_first.entries[0]["change"] == 1.0
    p = only_first.provenance
    assert p["frames_sampled"] == 8 and p["skipped_similar"] == 7 and p["stopped"] == "eos"
    every = record("camworld:3", 8, tmp_path / "b", min_change=0, progress=None)
    assert len(every) == 8 and every.provenance["skipped_similar"] == 0
    # the change is against the last kept frame, on 32x32 grayscale thumbnails in [0, 1]
    thumbs = [thumbnail(f) for f in every.frames()]
    for i in range(1, 8):
        assert every.entries[i]["change"] == pytest.approx(np.abs(thumbs[i] - thumbs[i - 1]).mean(), abs=1e-6)
    middle = sorted(e["change"] for e in every.entries[1:])[3]
    some = record("camworld:3", 8, tmp_path / "c", min_change=middle, progress=None)
    assert 1 < len(some) < 8 and some.provenance["skipped_similar"] == 8 - len(some)
    assert all(e["change"] >= middle for e in some.entries)


def test_size_resizes(tmp_path):
    cs = record("camworld:2", 2, tmp_path / "s", size=(48, 64), progress=None)
    assert cs.frame(0).shape == (48, 64, 3) and cs.provenance["size"] == [48, 64]


@pytest.mark.parametrize("kwargs", [{"frames": 0}, {"frames": 2.5}, {"sample_fps": 0}, {"sample_fps": float("nan")},
                                    {"min_change": 1.0}, {"min_change": -0.1}, {"size": (0, 10)},
                                    {"size": (10,)}, {"size": (10.5, 10)}, {"timeout_s": 0}])
def test_bad_arguments(tmp_path, kwargs):
    args = {"frames": 2, **kwargs}
    with pytest.raises(InputError):
        record("camworld:1", args.pop("frames"), tmp_path / "x", progress=None, **args)
    assert not (tmp_path / "x").exists()


def test_bad_sources(tmp_path):
    with pytest.raises(InputError, match="camworld:SEED"):
        record("camworld:abc", 2, tmp_path / "x", progress=None)
    with pytest.raises(InputError, match="not a file"):
        record(str(tmp_path / "missing.mkv"), 2, tmp_path / "x", progress=None)
    assert not (tmp_path / "x").exists()


# --- the output directory ------------------------------------------------------------------------------------

def test_force_replaces_only_a_calibration_sets_files(tmp_path):
    out = tmp_path / "set"
    record("camworld:1", 6, out, min_change=0, progress=None)
    with pytest.raises(InputError, match="--force"):
        record("camworld:2", 2, out, progress=None)
    assert len(load(out)) == 6  # untouched
    (out / "notes.txt").write_text("mine")
    (out / "frames" / "mine.png").write_bytes(b"x")
    cs = record("camworld:2", 2, out, min_change=0, force=True, progress=None)
    assert len(cs) == 2 and cs.provenance["seed"] == 2
    assert (out / "notes.txt").read_text() == "mine" and (out / "frames" / "mine.png").exists()
    assert sorted(p.name for p in (out / "frames").iterdir()) == ["000000.png", "000001.png", "mine.png"]
    assert sorted(p.name for p in (out / "audio").iterdir()) == ["000000.npy", "000001.npy"]
    assert not (out / (INDEX + ".tmp")).exists()

    other = tmp_path / "other"
    other.mkdir()
    (other / "x").write_text("x")
    with pytest.raises(InputError, match="--force"):
        record("camworld:2", 2, other, progress=None)
    (tmp_path / "file").write_text("x")
    with pytest.raises(InputError, match="is a file"):
        record("camworld:2", 2, tmp_path / "file", force=True, progress=None)


def test_failed_recording_leaves_no_set(tmp_path, monkeypatch):
    import vlmedge.calibration.record as rec

    def boom(*a, **k):
        raise OSError("disk full")

    monkeypatch.setattr(rec, "_write_index", boom)
    with pytest.raises(OSError):
        record("camworld:1", 3, tmp_path / "set", progress=None)
    assert not (tmp_path / "set").exists()


# --- load() --------------------------------------------------------------------------------------------------

@pytest.fixture
def small_set(tmp_path):
    record("camworld:4", 3, tmp_path / "set", min_change=0, progress=None)
    return tmp_path / "set"


def _edit(directory, **changes):
    data = json.loads((directory / INDEX).read_text())
    data.update(changes)
    (directory / INDEX).write_text(json.dumps(data))


def test_load_errors(tmp_path, small_set):
    with pytest.raises(ModelFileError, match="does not exist.*calibrate record"):
        load(tmp_path / "nowhere")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ModelFileError, match=f"has no {INDEX}"):
        load(tmp_path / "empty")

    good = (small_set / INDEX).read_text()
    assert json.loads(good)["format"] == FORMAT and json.loads(good)["version"] == VERSION
    _edit(small_set, format="something-else")
    with pytest.raises(InputError, match="not a vlmedge calibration set"):
        load(small_set)
    (small_set / INDEX).write_text(good)
    _edit(small_set, version=VERSION + 1)
    with pytest.raises(InputError, match="newer than this vlmedge reads.*upgrade"):
        load(small_set)
    (small_set / INDEX).write_text("{not json")
    with pytest.raises(InputError, match="not readable JSON"):
        load(small_set)
    (small_set / INDEX).write_text(good)
    _edit(small_set, entries=[{"frame": "../outside.png", "time_s": 0.0}])
    with pytest.raises(InputError, match="not a path inside"):
        load(small_set)
    (small_set / INDEX).write_text(good)
    (small_set / "audio" / "000001.npy").unlink()
    with pytest.raises(ModelFileError, match="missing audio/000001.npy.*--force"):
        load(small_set)


# --- split() -------------------------------------------------------------------------------------------------

def _set(n: int) -> CalibrationSet:
    return CalibrationSet("unused", [{"frame": f"frames/{i:06d}.png", "time_s": i / 2} for i in range(n)], {})


@pytest.mark.parametrize("n", [2, 3, 5, 8, 13, 40, 101])
@pytest.mark.parametrize("held_out", [0.1, 0.25, 0.5, 0.9])
def test_split_properties(n, held_out):
    cal, held = _set(n).split(held_out)
    assert (cal, held) == _set(n).split(held_out)  # deterministic
    assert cal and held and sorted(cal + held) == list(range(n)) and not set(cal) & set(held)
    assert cal == sorted(cal) and held == sorted(held)
    assert abs(len(held) - n * held_out) <= 1 or len(held) in (1, n - 1)
    if len(held) >= 2:  # strided through the whole recording, not its tail
        gaps = np.diff(held)
        assert gaps.max() - gaps.min() <= 1 and held[0] <= n // len(held) and held[-1] >= n - n // len(held) - 1


def test_split_edges():
    assert _set(8).split() == ([0, 1, 3, 4, 5, 7], [2, 6])
    assert _set(1).split() == ([0], []) and _set(0).split() == ([], [])
    for bad in (0.0, 1.0, -0.5):
        with pytest.raises(InputError, match="held-out"):
            _set(4).split(bad)


# --- GStreamer sources ---------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def camworld_clip(tmp_path_factory):
    gst_or_skip("vp8enc", "vp8dec", "matroskamux", "matroskademux", "flacenc", "flacdec", "appsink")
    if not shutil.which("gst-launch-1.0"):
        pytest.skip("gst-launch-1.0 is not installed")
    stream = camworld.generate(9, camworld.WorldConfig(duration_s=3.0), split="train")  # 6 frames at 2 fps
    return stream, camworld.write_media(stream, tmp_path_factory.mktemp("clip") / "clip.mkv")


def test_file_source_decodes_frames_and_audio(tmp_path, camworld_clip):
    stream, path = camworld_clip
    lines = []
    cs = record(str(path), 10, tmp_path / "set", min_change=0, progress=lines.append)
    p = cs.provenance
    assert p["kind"] == "file" and p["audio"] is True and p["stopped"] == "eos" and "seed" not in p
    assert len(cs) == p["frames_kept"] == 6 and "source ended" in lines[-1]
    times = [e["time_s"] for e in cs.entries]
    assert times == pytest.approx([0.0, 0.5, 1.0, 1.5, 2.0, 2.5], abs=1e-3)
    for i, t in enumerate(times):
        frame = cs.frame(i)
        assert frame.shape == (96, 96, 3) and frame.dtype == np.uint8
        # VP8 is lossy (and smooths the sensor noise away): close, not equal
        assert np.abs(frame.astype(int) - stream.frames[stream.frame_at(t)]).mean() < 10
        np.testing.assert_allclose(cs.audio(i), window(stream.audio, t), atol=1e-3)  # FLAC: near-lossless


def test_file_source_sampling_and_size(tmp_path, camworld_clip):
    _, path = camworld_clip
    cs = record(str(path), 2, tmp_path / "set", sample_fps=1, min_change=0, size=(40, 56), progress=None)
    assert [e["time_s"] for e in cs.entries] == pytest.approx([0.0, 1.0], abs=1e-3)
    assert cs.frame(1).shape == (40, 56, 3) and cs.provenance["stopped"] == "frames"


def test_test_source(tmp_path):
    gst_or_skip("videotestsrc", "audiotestsrc", "appsink")
    cs = record("test:smpte", 3, tmp_path / "set", sample_fps=5, min_change=0, progress=None)
    assert len(cs) == 3 and cs.provenance["kind"] == "test" and cs.provenance["audio"] is True
    assert cs.frame(0).shape == (240, 320, 3)
    times = [e["time_s"] for e in cs.entries]
    assert np.diff(times) == pytest.approx([0.2, 0.2], abs=1e-3)
    assert all(cs.audio(i).shape == (16000,) for i in range(3))


def test_test_source_timeout_keeps_what_it_has(tmp_path):
    gst_or_skip("videotestsrc", "audiotestsrc", "appsink")
    lines = []
    cs = record("test", 1000, tmp_path / "set", sample_fps=10, min_change=0, timeout_s=0.7, progress=lines.append)
    assert 1 <= len(cs) < 1000 and cs.provenance["stopped"] == "timeout"
    assert "timeout" in lines[-1] and f"kept {len(cs)}/1000" in lines[-1]


def test_undecodable_file_is_a_clear_error(tmp_path):
    gst_or_skip("uridecodebin", "appsink")
    bad = tmp_path / "notes.mkv"
    bad.write_text("not a video")
    with pytest.raises(VlmedgeError, match="recording .*notes.mkv"):
        record(str(bad), 2, tmp_path / "set", timeout_s=20, progress=None)
    assert not (tmp_path / "set").exists()
