"""Getting streams out of (and back into) Python: a playable video+audio file through GStreamer, and arrays.

The media file is written by a `gst-launch-1.0` subprocess reading raw frames and samples from temporary
files, so it needs no Python GStreamer bindings. Formats: `.mkv` (default VP8 video + FLAC audio, lossless
sound for omni models reading the file back), `.webm` (VP8 + Vorbis, plays in browsers), and
`video_codec="mjpeg"` in `.mkv` for near-lossless frames. VP8 is 4:2:0 and lossy: colours survive at 96x96
but a model evaluated on decoded frames sees slightly different pixels than one fed the arrays.
"""
from __future__ import annotations

import json
import shutil
import subprocess
import tempfile
from dataclasses import asdict
from fractions import Fraction
from pathlib import Path

import numpy as np

from vlmedge.errors import InputError

from .config import WorldConfig
from .questions import Question
from .world import World

GST_LAUNCH = "gst-launch-1.0"


def have_gstreamer() -> bool:
    return shutil.which(GST_LAUNCH) is not None


def _run(args: list[str], timeout: float) -> None:
    exe = shutil.which(GST_LAUNCH)
    if exe is None:
        raise InputError("gst-launch-1.0 was not found; install GStreamer (gstreamer1.0-tools) to write media")
    res = subprocess.run([exe, "-q", *args], capture_output=True, text=True, timeout=timeout)
    if res.returncode != 0:
        raise RuntimeError(f"gst-launch-1.0 failed ({res.returncode}): {(res.stderr or res.stdout)[-800:]}")


def write_media(stream, path: str | Path, video_codec: str = "vp8", sidecar: bool = True,
                timeout: float = 120.0) -> Path:
    """Write `stream` as a playable file (.mkv or .webm) with its audio track; with `sidecar`, also write
    `<path>.json` holding the seed, config, ground-truth events and questions. Returns the path."""
    path = Path(path)
    container = path.suffix.lower()
    if container not in (".mkv", ".webm"):
        raise InputError(f"write_media writes .mkv or .webm, got {path.name!r}")
    if video_codec not in ("vp8", "mjpeg") or (container == ".webm" and video_codec != "vp8"):
        raise InputError(f"video_codec must be 'vp8' (or 'mjpeg' in .mkv), got {video_codec!r}")
    frames = np.ascontiguousarray(stream.frames, np.uint8)
    t, h, w, _ = frames.shape
    rate = Fraction(stream.fps).limit_denominator(1001)
    if video_codec == "vp8":
        # Constant-quality VP8 near the top of its range: small frames, so the size stays tiny anyway.
        venc = ["vp8enc", "deadline=1", "end-usage=cq", "cq-level=4", "min-quantizer=0", "max-quantizer=12",
                "target-bitrate=4000000", f"keyframe-max-dist={max(1, int(round(stream.fps * 2)))}"]
    else:
        venc = ["jpegenc", "quality=95"]
    mux = "webmmux" if container == ".webm" else "matroskamux"
    aenc = "vorbisenc" if container == ".webm" else "flacenc"
    path.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        vraw, araw = Path(tmp) / "v.raw", Path(tmp) / "a.raw"
        frames.tofile(vraw)
        args = [mux, "name=mux", "!", "filesink", f"location={path}",
                "filesrc", f"location={vraw}", "!", "rawvideoparse", f"width={w}", f"height={h}", "format=rgb",
                f"framerate={rate.numerator}/{rate.denominator}", f"plane-strides=<{w * 3}>", "!",
                "videoconvert", "!", *venc, "!", "queue", "!", "mux."]
        if len(stream.audio):
            np.asarray(stream.audio, "<f4").tofile(araw)
            args += ["filesrc", f"location={araw}", "!", "rawaudioparse", "format=pcm", "pcm-format=f32le",
                     f"sample-rate={stream.sample_rate}", "num-channels=1", "!", "audioconvert", "!", aenc,
                     "!", "queue", "!", "mux."]
        _run(args, timeout)
    if sidecar:
        Path(str(path) + ".json").write_text(json.dumps(_meta(stream), indent=1))
    return path


def decode_media(path: str | Path, width: int, height: int, sample_rate: int = 16000, audio: bool = True,
                 timeout: float = 120.0) -> tuple[np.ndarray, np.ndarray]:
    """Decode a media file back to (frames uint8 [T, height, width, 3], audio float32 [S]) with
    gst-launch-1.0; audio is empty when `audio` is False or the file has no audio track."""
    path = Path(path)
    if not path.exists():
        raise InputError(f"no media file at {path}")
    with tempfile.TemporaryDirectory() as tmp:
        vraw, araw = Path(tmp) / "v.raw", Path(tmp) / "a.raw"
        _run(["filesrc", f"location={path}", "!", "decodebin", "!", "videoconvert", "!", "videoscale", "!",
              f"video/x-raw,format=RGB,width={width},height={height}", "!", "filesink", f"location={vraw}"],
             timeout)
        stride = (width * 3 + 3) // 4 * 4  # GStreamer pads RGB rows to 4 bytes
        raw = np.fromfile(vraw, np.uint8)
        frames = raw.reshape(-1, height, stride)[:, :, : width * 3].reshape(-1, height, width, 3)
        sound = np.zeros(0, np.float32)
        if audio:
            try:
                _run(["filesrc", f"location={path}", "!", "decodebin", "!", "audioconvert", "!", "audioresample",
                      "!", f"audio/x-raw,format=F32LE,channels=1,rate={sample_rate}", "!", "filesink",
                      f"location={araw}"], timeout)
                sound = np.fromfile(araw, "<f4")
            except RuntimeError:  # no audio track in the file
                pass
    return frames, sound


def _meta(stream) -> dict:
    return {
        "format": "vlmedge.camworld/1",
        "seed": stream.seed,
        "config": asdict(stream.config),
        "world": stream.world.to_dict(),
        "questions": [q.to_dict() for q in stream.questions],
    }


def save_arrays(stream, path: str | Path) -> Path:
    """Frames, audio, boxes and all ground truth in one compressed .npz."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(path, frames=stream.frames, audio=stream.audio, boxes=stream.boxes,
                        meta=np.array(json.dumps(_meta(stream))))
    return path


def load_arrays(path: str | Path):
    """The Stream saved by `save_arrays`."""
    from .stream import Stream

    with np.load(path, allow_pickle=False) as z:
        meta = json.loads(str(z["meta"]))
        if meta.get("format") != "vlmedge.camworld/1":
            raise InputError(f"{path} is not a camworld array file")
        cfgd = meta["config"]
        if cfgd.get("qtypes") is not None:
            cfgd["qtypes"] = tuple(cfgd["qtypes"])
        cfg = WorldConfig(**cfgd)
        return Stream(meta["seed"], cfg, World.from_dict(meta["world"], cfg), z["frames"], z["audio"], z["boxes"],
                      [Question.from_dict(q) for q in meta["questions"]])
