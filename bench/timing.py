"""Per-stage latency of one method on one model, measured through the streaming session.

A run plays the same camworld streams, each into a fresh stream (so STC's cacher refreshes at every stream
start, as it would on a new camera), and asks each stream's questions, decoding a fixed number of tokens. Per
frame, times are averaged over the run (not the median: the cacher alternates full and selective frames, so
its per-frame times are bimodal and the mean is what a camera sees); runs are repeated after a warm-up and
reported as the median over runs with the spread (max − min) beside it.

Audio-video models: `prefill_ms` per frame also carries the audio tokens' prefill (a frame method prefills each
second of audio as it arrives, a window method with its window), spread over the frames, so every row times
the same work; `audio_ms` is the audio encoder's time per frame.
"""
from __future__ import annotations

import statistics
from dataclasses import dataclass, field

import numpy as np

from vlmedge.bench.memory import PeakMemory, kv_bytes

METRICS = ("vision_ms", "audio_ms", "compress_ms", "prefill_ms", "ttft_ms", "decode_tok_s", "tokens_in", "tokens_kept",
           "kv_mb", "peak_mb")


@dataclass
class Measured:
    median: float
    spread: float  # max − min over the repeated runs
    runs: list[float] = field(default_factory=list)

    @classmethod
    def of(cls, values: list[float]) -> "Measured":
        vals = [float(v) for v in values if v == v]
        if not vals:
            return cls(float("nan"), float("nan"), [])
        return cls(statistics.median(vals), max(vals) - min(vals), vals)


@dataclass
class TimingResult:
    label: str
    method: str  # the method spec that ran
    backend: str
    model: str
    runs: int
    frames_per_run: int
    metrics: dict[str, Measured]
    peak_exact: bool = True  # False: the CPU peak is the process-lifetime maximum

    def value(self, name: str) -> float:
        return self.metrics[name].median


def time_method(adapter, method, streams, label: str = "", model: str = "", backend: str = "torch",
                repeats: int = 3, warmup: int = 1, decode_tokens: int = 8, questions_per_stream: int = 2,
                device: str = "cpu", progress=None) -> TimingResult:
    """Plays `streams` (camworld streams) `warmup + repeats` times with `method` and measures every stage."""
    from vlmedge.runtime import StreamingSession
    from vlmedge.runtime.playback import play_stream

    session = StreamingSession(adapter, method, sample_fps=streams[0].fps, max_new_tokens=decode_tokens)
    per_run: dict[str, list[float]] = {m: [] for m in METRICS}
    exact, frames = True, 0
    for r in range(warmup + repeats):
        frame_rows, ttft, decode_rates, kv, audio = [], [], [], [], []
        with PeakMemory(device, whole_device=backend != "torch") as peak:
            for stream in streams:
                session.reset()
                qs = sorted(stream.questions, key=lambda q: q.frame)[:questions_per_stream]
                answers = play_stream(session, stream, qs, on_frame=frame_rows.append)
                for _, ans in answers:
                    ttft.append(ans.window_ms + ans.requery_ms + ans.prefill_ms)
                    if ans.token_ids and ans.decode_ms > 0:
                        decode_rates.append(len(ans.token_ids) / (ans.decode_ms / 1e3))
                kv.append(kv_bytes(session.cache) / 2**20)
                audio += session.audio_stats
        if progress:
            progress(r + 1, warmup + repeats)
        if r < warmup:
            continue
        frames = len(frame_rows)
        exact = exact and peak.exact
        n = max(1, len(frame_rows))
        row = {
            "vision_ms": np.mean([s.encode_ms for s in frame_rows]),
            "audio_ms": sum(a.encode_ms for a in audio) / n,
            "compress_ms": np.mean([s.compress_ms for s in frame_rows]),
            "prefill_ms": np.mean([s.prefill_ms for s in frame_rows]) + sum(a.prefill_ms for a in audio) / n,
            "ttft_ms": np.mean(ttft) if ttft else float("nan"),
            "decode_tok_s": np.mean(decode_rates) if decode_rates else float("nan"),
            "tokens_in": np.mean([s.tokens_in for s in frame_rows]),
            "tokens_kept": np.mean([s.tokens_kept for s in frame_rows]),
            "kv_mb": np.mean(kv),
            "peak_mb": peak.peak_mb,
        }
        for k, v in row.items():
            per_run[k].append(float(v))
    return TimingResult(label=label or session.method.spec(), method=session.method.spec(), backend=backend,
                        model=model, runs=repeats, frames_per_run=frames,
                        metrics={k: Measured.of(v) for k, v in per_run.items()}, peak_exact=exact)
