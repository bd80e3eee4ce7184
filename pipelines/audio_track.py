"""Audio that arrives in buffers of any size, cut into the one-second chunks the omni models encode.

Chunks are aligned to the video's time origin (the first sampled frame), so chunk k covers
[origin + k, origin + k + 1) seconds of stream time, as `runtime.playback.play_stream` feeds recorded streams.
Gaps between buffers are filled with silence and overlaps trimmed, so a chunk's samples always sit at the
time the session is told they do.
"""
from __future__ import annotations

import numpy as np

from vlmedge.errors import InputError


MIN_FINAL_S = 0.1


class AudioTrack:
    def __init__(self, sample_rate: int = 16000, chunk_s: float = 1.0):
        self.sample_rate = int(sample_rate)
        self.chunk = int(round(chunk_s * self.sample_rate))
        self.reset()

    def reset(self) -> None:
        self._buf = np.zeros(0, np.float32)
        self._start: float | None = None  # stream time of _buf[0]
        self._origin: float | None = None  # time origin of chunk 0
        self._next_chunk = 0
        self.gap_samples = 0  # silence inserted for missing audio
        self.trimmed_samples = 0  # overlapping samples dropped

    @property
    def end_time(self) -> float | None:
        """Stream time just after the last sample received (None before any audio)."""
        return None if self._start is None else self._start + self._buf.size / self.sample_rate

    def add(self, samples, time_s: float) -> None:
        wave = np.asarray(samples, dtype=np.float32).reshape(-1)
        if not np.isfinite(wave).all():
            raise InputError("audio samples must be finite (got NaN or inf)")
        if self._start is None:
            self._start = float(time_s)
            self._buf = wave.copy()
            return
        offset = int(round((float(time_s) - self.end_time) * self.sample_rate))
        if offset > 0:
            self.gap_samples += offset
            wave = np.concatenate([np.zeros(offset, np.float32), wave])
        elif offset < 0:
            cut = min(-offset, wave.size)
            self.trimmed_samples += cut
            wave = wave[cut:]
        self._buf = np.concatenate([self._buf, wave])

    def set_origin(self, time_s: float) -> None:
        """The stream time of the first video frame; audio before it is dropped, missing audio after it is silence."""
        self._origin = float(time_s)
        self._next_chunk = 0

    def _chunk_at(self, k: int) -> np.ndarray:
        lo = int(round((self._origin + k - self._start) * self.sample_rate))
        out = np.zeros(self.chunk, np.float32)
        src_lo, src_hi = max(lo, 0), min(lo + self.chunk, self._buf.size)
        if src_hi > src_lo:
            out[src_lo - lo:src_hi - lo] = self._buf[src_lo:src_hi]
        return out

    def _drop_before(self, k: int) -> None:
        cut = int(round((self._origin + k - self._start) * self.sample_rate))
        if cut > 0:
            cut = min(cut, self._buf.size)
            self._buf = self._buf[cut:]
            self._start += cut / self.sample_rate

    def take_until(self, time_s: float, final: bool = False) -> list[tuple[float, np.ndarray]]:
        """Complete chunks that end at or before `time_s` (seconds since the origin) and that the received audio
        covers, as [(start seconds since the origin, samples)]. With `final`, also the last partial chunk."""
        if self._origin is None or self._start is None:
            return []
        out = []
        covered = self.end_time - self._origin  # seconds since the origin that audio has reached
        while True:
            k = self._next_chunk
            complete = k + 1 <= time_s + 1e-9 and k + 1 <= covered + 1e-9
            # a final partial chunk shorter than MIN_FINAL_S holds too few mel frames to encode
            partial = final and covered - k >= MIN_FINAL_S
            if not (complete or partial):
                break
            chunk = self._chunk_at(k)
            if not complete:
                chunk = chunk[:max(1, int(round((covered - k) * self.sample_rate)))]
            out.append((float(k), chunk))
            self._next_chunk += 1
            self._drop_before(self._next_chunk)
        return out
