"""The 16 kHz mono soundtrack: quiet room noise and hum, plus the world's sound events.

Each sound class has a signature a small audio encoder separates easily on a log-mel spectrogram: a steady
mid tone, a rising sweep, a train of short high pips, a low harsh square wave, and broadband noise. Pitches
and levels vary a little per event so that a class is a family, not one waveform.
"""
from __future__ import annotations

import shutil
import subprocess
import tempfile
import wave
from functools import lru_cache
from pathlib import Path

import numpy as np

from .config import SOUNDS, SPEECH_WORDS
from .world import World

BACKGROUND_RMS = 0.008
EVENT_PEAK = (0.3, 0.5)


def _envelope(n: int, sr: int, fade_s: float = 0.01) -> np.ndarray:
    env = np.ones(n, np.float32)
    k = min(n // 2, int(fade_s * sr))
    if k:
        ramp = np.linspace(0, 1, k, dtype=np.float32)
        env[:k], env[-k:] = ramp, ramp[::-1]
    return env


def synth(kind: str, dur: float, sr: int, rng: np.random.Generator) -> np.ndarray:
    """One event's waveform, peak-normalised to 1 (speech is handled by `speech`)."""
    n = int(dur * sr)
    t = np.arange(n, dtype=np.float64) / sr
    if kind == "tone":
        x = np.sin(2 * np.pi * rng.uniform(420, 620) * t)
    elif kind == "chirp":
        f0, f1 = rng.uniform(300, 450), rng.uniform(2400, 3200)
        x = np.sin(2 * np.pi * (f0 * t + (f1 - f0) * t ** 2 / (2 * dur)))
    elif kind == "beep":
        x = np.sin(2 * np.pi * rng.uniform(1500, 1900) * t) * ((t % 0.1) < 0.055)
    elif kind == "buzz":
        x = np.sign(np.sin(2 * np.pi * rng.uniform(110, 160) * t)) * 0.8
    elif kind == "hiss":
        x = rng.standard_normal(n)
        x /= np.abs(x).max()
    else:
        raise KeyError(kind)
    return (x * _envelope(n, sr)).astype(np.float32)


@lru_cache(maxsize=None)
def speech(word: str, sr: int) -> np.ndarray | None:
    """`word` spoken by espeak-ng, resampled to `sr` and peak-normalised; None when espeak-ng is missing."""
    exe = shutil.which("espeak-ng") or shutil.which("espeak")
    if exe is None:
        return None
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "w.wav"
        subprocess.run([exe, "-s", "260", "-w", str(out), word], check=True, capture_output=True)
        with wave.open(str(out)) as f:
            src_sr, raw = f.getframerate(), f.readframes(f.getnframes())
    x = np.frombuffer(raw, np.int16).astype(np.float32) / 32768
    nz = np.flatnonzero(np.abs(x) > 0.01)  # espeak pads with silence; keep the word itself
    x = x[nz[0]:nz[-1] + 1] if len(nz) else x
    n = int(len(x) * sr / src_sr)
    x = np.interp(np.arange(n) * src_sr / sr, np.arange(len(x)), x).astype(np.float32)
    x /= max(float(np.abs(x).max()), 1e-6)
    x.setflags(write=False)
    return x


def render_audio(world: World, seed: int) -> np.ndarray:
    """float32 [num_samples] in [-1, 1]."""
    cfg = world.config
    sr, n = cfg.sample_rate, cfg.num_samples
    rng = np.random.default_rng([seed, 2])
    # Room tone: noise low-passed by a short Hann FIR (a muffled room, not a hiss event) plus faint mains hum.
    kernel = np.hanning(24).astype(np.float32)
    room = np.convolve(rng.standard_normal(n).astype(np.float32), kernel / kernel.sum(), "same")
    room *= BACKGROUND_RMS / max(float(room.std()), 1e-9)
    t = np.arange(n) / sr
    room += (0.002 * np.sin(2 * np.pi * 50 * t + rng.uniform(0, 6.28))).astype(np.float32)
    out = room
    for e in world.sound_events():
        s0 = int(round(e.start * sr))
        if s0 >= n:
            continue
        if e.sound in SOUNDS:
            x = synth(e.sound, e.end - e.start, sr, rng)
        elif e.sound in SPEECH_WORDS:
            x = speech(e.sound, sr)
            if x is None:  # speech asked for but espeak-ng missing: a tone keeps the timing honest
                x = synth("tone", e.end - e.start, sr, rng)
            x = x[: int((e.end - e.start) * sr)]
            x = x * _envelope(len(x), sr)
        else:
            raise KeyError(e.sound)
        x = x[: n - s0] * np.float32(rng.uniform(*EVENT_PEAK))
        out[s0:s0 + len(x)] += x
    return np.clip(out, -1, 1).astype(np.float32)
