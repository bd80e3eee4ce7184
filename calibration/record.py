"""Calibration sets: frames (and each frame's second of sound) sampled from a source, stored with provenance.

INT8 calibration and compression tuning need a few dozen frames that look like what the deployment will see,
replayable later at their original times. A set is recorded once from any `vlmedge run` source (a media file,
a URI, /dev/videoN, `test[:PATTERN]`, `camworld:SEED`) and read back with `load`:

    out/calibration.json   format, version, provenance, one entry per kept frame (written last: its presence
                           means the set is complete)
    out/frames/000000.png  RGB frames, lossless, so every later run calibrates on the same pixels
    out/audio/000000.npy   float32 [16000]: the second of 16 kHz mono ending at the frame (sources with audio)

Frames are sampled at `sample_fps` by presentation time (the same rule as the `vlmedge` element), and a
candidate that barely differs from the last kept frame is skipped: a static camera would otherwise fill the
set with near-copies that calibrate nothing new.
"""
from __future__ import annotations

import datetime
import json
import math
import os
import re
import time
from contextlib import suppress
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator

import numpy as np
from PIL import Image

from vlmedge.errors import InputError, ModelFileError

FORMAT = "vlmedge-calibration"
VERSION = 1
INDEX = "calibration.json"
SAMPLE_RATE = 16000
WINDOW = SAMPLE_RATE  # one second: what the omni models' audio encoder takes per chunk
THUMB = 32
_OWN_FILES = {"frames": re.compile(r"\d{6}\.png"), "audio": re.compile(r"\d{6}\.npy")}
_RERECORD = "record it again with `vlmedge calibrate record --force`"


@dataclass
class CalibrationSet:
    """A recorded set; frames and audio stay on disk and are read on demand."""

    directory: str
    entries: list[dict]
    provenance: dict

    def __len__(self) -> int:
        return len(self.entries)

    def frame(self, i: int) -> np.ndarray:
        """Frame i as uint8 [H, W, 3] RGB."""
        with Image.open(os.path.join(self.directory, self.entries[i]["frame"])) as im:
            return np.array(im.convert("RGB"), dtype=np.uint8)  # a writable copy: torch warns on read-only arrays

    def audio(self, i: int) -> np.ndarray | None:
        """The second of sound ending at frame i, float32 [16000]; None for a source without audio."""
        rel = self.entries[i].get("audio")
        if rel is None:
            return None
        return np.load(os.path.join(self.directory, rel), allow_pickle=False).astype(np.float32, copy=False)

    def frames(self) -> Iterator[np.ndarray]:
        for i in range(len(self)):
            yield self.frame(i)

    def split(self, held_out: float = 0.25) -> tuple[list[int], list[int]]:
        """(calibration indices, held-out indices). The held-out frames are evenly strided through the recording
        rather than its tail, so both halves see the whole scene (a tail split would test on a scene the
        quantiser never saw). Deterministic; with two or more frames each side gets at least one."""
        if not 0.0 < held_out < 1.0:
            raise InputError(f"the held-out share must be in (0, 1), got {held_out}")
        n = len(self)
        if n < 2:
            return list(range(n)), []
        n_held = min(max(int(round(n * held_out)), 1), n - 1)
        held = [int((j + 0.5) * n / n_held) for j in range(n_held)]
        held_set = set(held)
        return [i for i in range(n) if i not in held_set], held


def load(directory: str | os.PathLike) -> CalibrationSet:
    """The set recorded in `directory`, after checking its index and that every file it names exists."""
    directory = str(directory)
    index = os.path.join(directory, INDEX)
    if not os.path.isfile(index):
        what = "does not exist" if not os.path.exists(directory) else f"has no {INDEX}"
        raise ModelFileError(f"calibration set {directory!r} {what} (an interrupted recording leaves none); "
                             f"record one with `vlmedge calibrate record --out {directory}`")
    try:
        with open(index, encoding="utf-8") as f:
            data = json.load(f)
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise InputError(f"{index} is not readable JSON ({err}); {_RERECORD}") from err
    if not isinstance(data, dict) or data.get("format") != FORMAT:
        found = data.get("format") if isinstance(data, dict) else type(data).__name__
        raise InputError(f"{index} is not a vlmedge calibration set (format {found!r}, expected {FORMAT!r})")
    version = data.get("version")
    if not isinstance(version, int) or isinstance(version, bool) or version < 1:
        raise InputError(f"{index} has an invalid version {version!r}; {_RERECORD}")
    if version > VERSION:
        raise InputError(f"{index} is version {version}, newer than this vlmedge reads ({VERSION}); upgrade "
                         f"vlmedge or {_RERECORD}")
    entries, provenance = data.get("entries"), data.get("provenance")
    if not isinstance(entries, list) or not isinstance(provenance, dict):
        raise InputError(f"{index} lacks its entries list or provenance; {_RERECORD}")
    for n, e in enumerate(entries):
        if not isinstance(e, dict) or not isinstance(e.get("frame"), str) or \
                not isinstance(e.get("time_s"), (int, float)):
            raise InputError(f"{index}: entry {n} needs a 'frame' path and a 'time_s' number; {_RERECORD}")
        for rel in (e["frame"], e.get("audio")):
            if rel is None:
                continue
            if not isinstance(rel, str) or os.path.isabs(rel) or ".." in Path(rel).parts:
                raise InputError(f"{index}: entry {n} names {rel!r}, not a path inside the set; {_RERECORD}")
            if not os.path.isfile(os.path.join(directory, rel)):
                raise ModelFileError(f"calibration set {directory!r} is missing {rel} (entry {n}); {_RERECORD}")
    return CalibrationSet(directory, entries, provenance)


def record(source: str, frames: int, out: str | os.PathLike, *, sample_fps: float = 2.0, min_change: float = 0.02,
           size: tuple[int, int] | None = None, force: bool = False, timeout_s: float = 120.0,
           progress: Callable[[str], None] | None = print) -> CalibrationSet:
    """Records up to `frames` frames of `source` into `out` and returns the loaded set. Stops at that count, at
    the end of the source, or after `timeout_s` of wall time (keeping what it has). `size` is (height, width)."""
    _check_args(frames, sample_fps, min_change, size, timeout_s)
    from vlmedge.pipelines.builder import source_kind

    kind = source_kind(source)
    seed = _camworld_seed(source) if kind == "camworld" else None
    out = str(out)
    created = _prepare_out(out, force)
    keeper = _Keeper(out, frames, sample_fps, min_change, size, progress)
    try:
        if kind == "camworld":
            extra = _from_camworld(seed, keeper)
        else:
            extra = _from_gstreamer(source, kind, keeper, timeout_s)
        if not keeper.entries:
            raise InputError(f"no frames came from {source!r} within {timeout_s:g} s; check that it plays "
                             f"(`vlmedge run --source {source}`) or raise the timeout")
        provenance = {"source": source, "kind": kind, **extra,
                      "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
                      "sample_fps": sample_fps, "min_change": min_change,
                      "size": list(size) if size else None, "frames_requested": frames,
                      "frames_seen": keeper.seen, "frames_sampled": keeper.sampled,
                      "frames_kept": len(keeper.entries), "skipped_similar": keeper.skipped,
                      "vlmedge": _version()}
        _write_index(out, keeper.entries, provenance)
    except BaseException:
        _clear(out)  # only this run's files: the directory never holds a set that looks complete but is not
        if created:
            with suppress(OSError):
                os.rmdir(out)
        raise
    if progress:
        why = {"frames": "", "eos": "; the source ended", "timeout": f"; stopped at the {timeout_s:g} s timeout"}
        progress(f"[record] {out}: kept {len(keeper.entries)}/{frames} frames of {keeper.seen} seen, "
                 f"{keeper.skipped} skipped as similar{why[extra['stopped']]} "
                 f"({time.monotonic() - keeper.t0:.1f} s)")
    return load(out)


# ----- arguments and the output directory -----

def _check_args(frames, sample_fps, min_change, size, timeout_s) -> None:
    def number(x) -> bool:
        return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)

    if not isinstance(frames, int) or isinstance(frames, bool) or frames < 1:
        raise InputError(f"frames must be a whole number >= 1, got {frames!r}")
    if not number(sample_fps) or sample_fps <= 0:
        raise InputError(f"sample fps must be > 0 (frames per second of stream time), got {sample_fps!r}")
    if not number(min_change) or not 0 <= min_change < 1:
        raise InputError(f"min change must be in [0, 1) (0 keeps every sampled frame), got {min_change!r}")
    if size is not None and (len(size) != 2 or not all(isinstance(v, int) and not isinstance(v, bool) and v > 0
                                                        for v in size)):
        raise InputError(f"size must be two positive whole numbers (height, width), got {size!r}")
    if not number(timeout_s) or timeout_s <= 0:
        raise InputError(f"timeout must be > 0 seconds, got {timeout_s!r}")


def _camworld_seed(source: str) -> int:
    try:
        return int(source.partition(":")[2])
    except ValueError as err:
        raise InputError(f"camworld source must be camworld:SEED with an integer seed, got {source!r}") from err


def _prepare_out(out: str, force: bool) -> bool:
    """Makes `out` ready for a new set; True when it had to be created."""
    if os.path.exists(out) and not os.path.isdir(out):
        raise InputError(f"output {out!r} is a file; give a directory for the calibration set")
    if os.path.isdir(out):
        if os.listdir(out):
            if not force:
                raise InputError(f"output directory {out!r} is not empty; pass --force to replace the calibration "
                                 f"set in it (only {INDEX}, frames/ and audio/ are removed)")
            _clear(out)
        return False
    os.makedirs(out)
    return True


def _clear(out: str) -> None:
    """Removes a calibration set's own files and nothing else: the index first, so a half-removed set never
    loads, then frames/ and audio/ files by their recorded names (a user's file there stays, and so does the
    folder holding it)."""
    root = Path(out)
    for name in (INDEX, INDEX + ".tmp"):
        (root / name).unlink(missing_ok=True)
    for sub, pattern in _OWN_FILES.items():
        folder = root / sub
        if folder.is_dir():
            for f in folder.iterdir():
                if f.is_file() and pattern.fullmatch(f.name):
                    f.unlink()
            with suppress(OSError):
                folder.rmdir()


def _write_index(out: str, entries: list[dict], provenance: dict) -> None:
    tmp = os.path.join(out, INDEX + ".tmp")
    with open(tmp, "w", encoding="utf-8") as f:
        json.dump({"format": FORMAT, "version": VERSION, "provenance": provenance, "entries": entries}, f, indent=1)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, os.path.join(out, INDEX))  # atomic: readers see the old index or the whole new one


def _version() -> str:
    import vlmedge

    return vlmedge.__version__


# ----- sampling, the diversity rule, storage -----

def thumbnail(frame: np.ndarray) -> np.ndarray:
    """32x32 grayscale in [0, 1]. Box-averaged, so sensor noise and single-pixel jitter barely count as change."""
    im = Image.fromarray(np.ascontiguousarray(frame, np.uint8)).convert("L").resize((THUMB, THUMB), Image.BOX)
    return np.asarray(im, np.float32) / 255.0


class _Keeper:
    """Decides which frames to keep and writes them; audio windows are written once the sound has arrived."""

    def __init__(self, out: str, want: int, sample_fps: float, min_change: float, size, progress):
        self.out, self.want, self.step, self.min_change = out, want, 1.0 / sample_fps, min_change
        self.size, self.progress = (tuple(size) if size else None), progress
        self.entries: list[dict] = []
        self.pending: list[int] = []  # entries whose audio window has not fully arrived
        self.seen = self.sampled = self.skipped = 0
        self._next: float | None = None
        self._last: np.ndarray | None = None
        self.t0 = time.monotonic()

    @property
    def done(self) -> bool:
        return len(self.entries) >= self.want

    def due(self, t: float) -> bool:
        """Counts a frame shown at stream time t and says whether it is a sampling candidate: the element's rule
        (pipelines/element.py), so a set holds the frames `vlmedge run` at the same rate would give the model."""
        self.seen += 1
        if self._next is not None and t + 1e-9 < self._next:
            return False
        base = self._next if self._next is not None else t
        while base <= t + 1e-9:
            base += self.step
        self._next = base
        return True

    def offer(self, frame: np.ndarray, t: float, with_audio: bool) -> None:
        self.sampled += 1
        if self.size and frame.shape[:2] != self.size:
            frame = np.asarray(Image.fromarray(frame).resize(self.size[::-1], Image.BILINEAR))
        thumb = thumbnail(frame)
        change = 1.0 if self._last is None else float(np.abs(thumb - self._last).mean())  # first: nothing to compare
        if change < self.min_change:
            self.skipped += 1
            return
        self._last = thumb
        i = len(self.entries)
        rel = f"frames/{i:06d}.png"
        os.makedirs(os.path.join(self.out, "frames"), exist_ok=True)
        Image.fromarray(frame).save(os.path.join(self.out, rel))
        self.entries.append({"frame": rel, "time_s": float(t), "audio": None, "change": round(change, 6)})
        if with_audio:
            self.pending.append(i)
        if self.progress and len(self.entries) % 10 == 0 and not self.done:
            self.progress(f"[record] {len(self.entries)}/{self.want} kept, {self.seen} seen, {self.skipped} skipped "
                          f"as similar ({time.monotonic() - self.t0:.1f} s)")

    def attach_audio(self, sound: _Sound, final: bool = False) -> None:
        """Writes the windows that the received sound covers (all of them, zero-padded, when `final`)."""
        ready = [i for i in self.pending if final or (sound.end_time is not None
                                                      and sound.end_time + 1e-6 >= self.entries[i]["time_s"])]
        if not ready:
            return
        os.makedirs(os.path.join(self.out, "audio"), exist_ok=True)
        for i in ready:
            rel = f"audio/{i:06d}.npy"
            np.save(os.path.join(self.out, rel), sound.window(self.entries[i]["time_s"]))
            self.entries[i]["audio"] = rel
        self.pending = [i for i in self.pending if i not in ready]
        if self.pending:
            sound.trim(self.entries[self.pending[0]]["time_s"] - 1.0)
        elif self.entries:
            sound.trim(self.entries[-1]["time_s"] - 1.0)  # the next kept frame is later still


class _Sound:
    """16 kHz mono received so far, placed on the stream's clock (gaps filled with silence, overlaps cut, as
    pipelines/audio_track.py does), trimmed to what pending windows still need."""

    def __init__(self):
        self.start: float | None = None
        self.data = np.zeros(0, np.float32)

    @property
    def end_time(self) -> float | None:
        return None if self.start is None else self.start + self.data.size / SAMPLE_RATE

    def add(self, samples: np.ndarray, t: float) -> None:
        wave = np.asarray(samples, np.float32).reshape(-1)
        if self.start is None:
            self.start, self.data = float(t), wave.copy()
            return
        offset = int(round((t - self.end_time) * SAMPLE_RATE))
        if offset > 0:
            wave = np.concatenate([np.zeros(offset, np.float32), wave])
        elif offset < 0:
            wave = wave[min(-offset, wave.size):]
        self.data = np.concatenate([self.data, wave])

    def window(self, t_end: float) -> np.ndarray:
        """The WINDOW samples ending at t_end; zeros where nothing was heard (before the start, after the end)."""
        out = np.zeros(WINDOW, np.float32)
        if self.start is None:
            return out
        lo = int(round((t_end - self.start) * SAMPLE_RATE)) - WINDOW
        a, b = max(lo, 0), min(lo + WINDOW, self.data.size)
        if b > a:
            out[a - lo:b - lo] = self.data[a:b]
        return out

    def trim(self, before: float) -> None:
        if self.start is None:
            return
        cut = min(int(math.floor((before - self.start) * SAMPLE_RATE)), self.data.size)
        if cut > 0:
            self.data = self.data[cut:]
            self.start += cut / SAMPLE_RATE


# ----- sources -----

def _from_camworld(seed: int, keeper: _Keeper) -> dict:
    """The generator's own arrays (no codec in between), so a set's frames equal the stream's exactly. The
    default stream is run.py's `camworld:SEED`; a request it cannot fill gets a longer world of the same seed
    (a different world, so its length goes into the provenance)."""
    from dataclasses import replace

    from vlmedge.models import camworld

    split = "eval" if seed >= camworld.EVAL_SEED_START else "train"
    cfg = camworld.WorldConfig()
    need = keeper.want * max(keeper.step, 1.0 / cfg.fps)
    if need > cfg.duration_s:
        cfg = replace(cfg, duration_s=math.ceil(need / camworld.SLOT_S) * camworld.SLOT_S)
    stream = camworld.generate(seed, cfg, split=split)
    sound = None
    if stream.audio.size:
        sound = _Sound()
        sound.add(stream.audio, 0.0)
    for i in range(stream.num_frames):
        t = stream.frame_time(i)
        if keeper.due(t):
            keeper.offer(stream.frames[i], t, sound is not None)
        if keeper.done:
            break
    if sound is not None:
        keeper.attach_audio(sound, final=True)
    return {"seed": seed, "split": split, "camworld_duration_s": cfg.duration_s, "audio": sound is not None,
            "stopped": "frames" if keeper.done else "eos"}


def _describe(source: str, kind: str, size, audio: bool) -> str:
    """A gst-launch description: the source decoded to RGB (scaled to `size`) into appsink `video`, and with
    `audio` its sound as 16 kHz mono F32 into appsink `audio`. Sources as in pipelines/builder.py."""
    from vlmedge.pipelines.builder import AUDIO_CAPS, _element

    caps = "video/x-raw,format=RGB" + (f",width={size[1]},height={size[0]}" if size else "")
    # A few frames of slack only: a slow disk then holds the decoder back instead of filling memory.
    video = ["!", "videoconvert", "!", "videoscale", "!", caps, "!",
             *_element("appsink", name="video", sync=False, max_buffers=4, enable_last_sample=False)]
    sound = ["!", "audioconvert", "!", "audioresample", "!", AUDIO_CAPS, "!",
             *_element("appsink", name="audio", sync=False, enable_last_sample=False)]
    if kind == "test":
        pattern = source.partition(":")[2] or "ball"
        # live, like a camera: a non-live audiotestsrc would run ahead of the video without bound
        words = [*_element("videotestsrc", is_live=True, pattern=pattern), "!",
                 "video/x-raw,width=320,height=240,framerate=10/1", *video]
        if audio:
            words += [*_element("audiotestsrc", is_live=True, wave="ticks"), *sound]
    elif kind == "v4l2":
        words = [*_element("v4l2src", device=source), *video]
    else:
        uri = source if kind == "uri" else Path(source).resolve().as_uri()
        words = [*_element("uridecodebin", uri=uri, name="src"), "src.", "!", "queue", *video]
        if audio:
            words += ["src.", "!", "queue", *sound]
    return " ".join(words)


def _from_gstreamer(source: str, kind: str, keeper: _Keeper, timeout_s: float) -> dict:
    from vlmedge.commands.run import _source_has_audio
    from vlmedge.pipelines.gst import Gst
    from vlmedge.pipelines.runner import PipelineError

    if not Gst.is_initialized():
        Gst.init(None)
    audio = _source_has_audio(source)
    try:
        pipeline = Gst.parse_launch(_describe(source, kind, keeper.size, audio))
    except Exception as err:  # GLib.Error from the parser: a missing plugin
        raise PipelineError(f"could not build the recording pipeline for {source!r}: {err}") from err
    vsink, asink = pipeline.get_by_name("video"), pipeline.get_by_name("audio")
    bus, sound = pipeline.get_bus(), (_Sound() if audio else None)
    stopped, deadline = "eos", time.monotonic() + timeout_s

    def check_bus() -> None:
        msg = bus.pop_filtered(Gst.MessageType.ERROR)
        if msg is not None:
            err, _debug = msg.parse_error()
            raise PipelineError(f"recording {source!r} failed: {msg.src.get_name()}: {err.message}")

    def drain_audio(wait_ns: int) -> None:
        # The audio sink is emptied on every turn: a demuxer blocked on a full audio branch would starve video.
        while (s := asink.emit("try-pull-sample", wait_ns)) is not None:
            t = _stream_time(s, Gst)
            if t is not None:
                sound.add(_samples(s, Gst), t)
            wait_ns = 0
        keeper.attach_audio(sound)

    try:
        if pipeline.set_state(Gst.State.PLAYING) == Gst.StateChangeReturn.FAILURE:
            check_bus()
            raise PipelineError(f"recording {source!r} failed: the pipeline did not start")
        while True:
            check_bus()
            if keeper.done:
                stopped = "frames"
                break
            if time.monotonic() >= deadline:
                stopped = "timeout"
                break
            if asink is not None:
                drain_audio(0)
            sample = vsink.emit("try-pull-sample", 50 * Gst.MSECOND)
            if sample is None:
                if vsink.get_property("eos"):
                    break
                continue
            t = _stream_time(sample, Gst)
            if t is None:  # untimestamped video: count frames at the negotiated rate
                t = keeper.seen / _fps(sample)
            if keeper.due(t):
                keeper.offer(_rgb(sample, Gst), t, audio)
        # the last kept frames' sound may still be on its way
        while asink is not None and keeper.pending and not asink.get_property("eos") and time.monotonic() < deadline:
            check_bus()
            drain_audio(100 * Gst.MSECOND)
    finally:
        pipeline.set_state(Gst.State.NULL)
    if sound is not None:
        keeper.attach_audio(sound, final=True)
    return {"audio": audio, "stopped": stopped}


def _stream_time(sample, Gst) -> float | None:
    buf, seg = sample.get_buffer(), sample.get_segment()
    if buf.pts == Gst.CLOCK_TIME_NONE:
        return None
    st = seg.to_stream_time(Gst.Format.TIME, buf.pts)
    return None if st == Gst.CLOCK_TIME_NONE or st < 0 else st / Gst.SECOND


def _fps(sample) -> float:
    ok, num, den = sample.get_caps().get_structure(0).get_fraction("framerate")
    return num / den if ok and num > 0 and den > 0 else 1.0


def _samples(sample, Gst) -> np.ndarray:
    buf = sample.get_buffer()
    ok, mapped = buf.map(Gst.MapFlags.READ)
    if not ok:
        return np.zeros(0, np.float32)
    try:
        return np.frombuffer(mapped.data, "<f4").copy()
    finally:
        buf.unmap(mapped)


def _rgb(sample, Gst) -> np.ndarray:
    """The sample as uint8 [H, W, 3]; rows may be padded (RGB rows are 4-byte aligned) or laid out by a meta."""
    from vlmedge.pipelines.gst import GstVideo

    info = GstVideo.VideoInfo.new_from_caps(sample.get_caps())
    buf = sample.get_buffer()
    h, w = info.height, info.width
    offset, stride = info.offset[0], info.stride[0]
    meta = GstVideo.buffer_get_video_meta(buf)
    if meta is not None:
        offset, stride = meta.offset[0], meta.stride[0]
    ok, mapped = buf.map(Gst.MapFlags.READ)
    if not ok:
        raise InputError("could not read a decoded video frame")
    try:
        data = np.frombuffer(mapped.data, np.uint8)
        if data.size < offset + stride * (h - 1) + w * 3:
            raise InputError(f"a decoded {w}x{h} frame holds only {data.size} bytes")
        rows = np.lib.stride_tricks.as_strided(data[offset:], (h, w, 3), (stride, 3, 1))
        return np.array(rows)
    finally:
        buf.unmap(mapped)
