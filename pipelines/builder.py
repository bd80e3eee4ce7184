"""Pipelines around the `vlmedge` element, as gst-launch descriptions: one text both `Gst.parse_launch` and a
shell (`vlmedge run --print-pipeline`) run, so the printed line is the pipeline that ran.

Sources: a media file (any container GStreamer decodes) or a URI (rtsp://, http(s)://, file://) through
uridecodebin; a V4L2 device (/dev/videoN); `test[:PATTERN]` (videotestsrc, plus audiotestsrc for omni models);
`camworld:SEED` is written to a file first (commands/run.py) and then played as a file.
"""
from __future__ import annotations

import os
import shlex
from dataclasses import dataclass, field
from pathlib import Path

from vlmedge.errors import InputError

AUDIO_CAPS = "audio/x-raw,format=F32LE,rate=16000,channels=1,layout=interleaved"
URI_SCHEMES = ("rtsp://", "rtsps://", "http://", "https://", "file://", "udp://", "srt://")


@dataclass
class RunSpec:
    source: str
    element: dict  # vlmedge property -> value (strings, numbers, booleans)
    audio: bool = False  # link an audio branch into vlmedge's audio_sink
    display: bool = False  # draw answers over the video in a window (textoverlay ! autovideosink)
    realtime: bool = True  # sinks sync to the clock (a file plays at its own speed, like a camera)
    num_buffers: int = -1  # test sources: stop after this many video buffers
    extra: dict = field(default_factory=dict)


def source_kind(source: str) -> str:
    if source == "test" or source.startswith("test:"):
        return "test"
    if source.startswith("camworld:"):
        return "camworld"
    if source.startswith(URI_SCHEMES):
        return "uri"
    if source.startswith("/dev/video"):
        return "v4l2"
    if os.path.isfile(source):
        return "file"
    raise InputError(f"source {source!r} is not a file, a URI ({', '.join(s[:-3] for s in URI_SCHEMES)}), a V4L2 "
                     "device (/dev/videoN), 'test[:PATTERN]' or 'camworld:SEED'")


def _value(v) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    text = str(v)
    if not text or any(c in text for c in " \t\"'!=,;()"):
        return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'
    return text


def _element(factory: str, **props) -> list[str]:
    return [factory] + [f"{k.replace('_', '-')}={_value(v)}" for k, v in props.items() if v is not None]


def tokens(spec: RunSpec) -> list[str]:
    """The pipeline as gst-launch tokens."""
    kind = source_kind(spec.source)
    live = kind in ("test", "v4l2") or spec.source.startswith(("rtsp", "udp", "srt"))
    nb = spec.num_buffers if spec.num_buffers and spec.num_buffers > 0 else None
    out: list[str] = []
    video_to_rgb = ["!", "videoconvert", "!", "video/x-raw,format=RGB"]
    if kind == "test":
        pattern = spec.source.partition(":")[2] or "ball"
        out += _element("videotestsrc", is_live=True, pattern=pattern, num_buffers=nb)
        out += ["!", "video/x-raw,width=320,height=240,framerate=10/1"] + video_to_rgb
    elif kind == "v4l2":
        out += _element("v4l2src", device=spec.source) + video_to_rgb
    else:
        uri = spec.source if kind == "uri" else Path(spec.source).resolve().as_uri()
        out += _element("uridecodebin", uri=uri, name="src")
        out += ["src.", "!", "queue"] + video_to_rgb
    props = dict(spec.element)
    if not live and not spec.realtime:
        props.setdefault("drop_frames", False)  # a file read as fast as the model goes: use every sampled frame
    out += ["!"] + _element("vlmedge", name="vlmedge", **props)
    sync = spec.realtime
    if spec.display:
        out += ["!", "queue", "!", "ov.video_sink", "vlmedge.text_src", "!", "queue", "!", "ov.text_sink"]
        out += _element("textoverlay", name="ov", valignment="top", halignment="left", font_desc="Sans 14",
                        wait_text=False)
        out += ["!", "videoconvert", "!"] + _element("autovideosink", sync=sync)
    else:
        out += ["!"] + _element("fakesink", sync=sync)
    if spec.audio:
        if kind == "test":
            out += _element("audiotestsrc", is_live=True, wave="ticks")
        elif kind == "v4l2":
            raise InputError("a V4L2 device has no audio; run without an omni model's audio or use a file/URI")
        else:
            out += ["src.", "!", "queue"]
        out += ["!", "audioconvert", "!", "audioresample", "!", AUDIO_CAPS, "!", "queue", "!", "vlmedge.audio_sink"]
    return out


def describe(spec: RunSpec) -> str:
    """For Gst.parse_launch."""
    return " ".join(tokens(spec))


def shell_line(spec: RunSpec, plugin_path: str | os.PathLike, messages: bool = True) -> str:
    """The same pipeline as a gst-launch-1.0 command for a POSIX shell (element messages printed with -m)."""
    words = [shlex.quote(t) if t != "!" else "!" for t in tokens(spec)]
    head = f"GST_PLUGIN_PATH={shlex.quote(str(plugin_path))} gst-launch-1.0 -e" + (" -m" if messages else "")
    return f"{head} {' '.join(words)}"
