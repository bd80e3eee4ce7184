"""Real activations of every exported graph, recorded while a calibration set streams through a session.

INT8 calibration and the accuracy guard need each graph's inputs as the runtime feeds them: the vision stage
on calibration frames, the LLM on a growing KV cache (prefill of each frame, question prefill and decode steps),
the STC selective pass with real references, the audio encoder on real sound. Rather than re-deriving those
feeds per graph, the calibration set is played into a `StreamingSession` on the fp32 export exactly as a camera
would be, with questions asked along the way, and the ONNX Runtime backend reports every run's inputs
(`OrtAdapter.watch_inputs`).
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from vlmedge.errors import InputError

# Questions asked during capture when the caller gives none: camworld's question forms, which is what the
# bundled reference models answer. Deployments on their own footage should pass the questions they will ask.
DEFAULT_QUESTIONS = ("how many shapes are there ?", "what color is the circle ?", "what color is the square ?",
                     "where is the red circle ?", "is there a blue square ?", "what shape is the small green object ?",
                     "what color appeared just before the red triangle ?", "is there a yellow circle ?")


@dataclass
class Capture:
    """Inputs recorded per stage (`feeds[stage]`: list of {input name: array}) and per-frame timings."""

    feeds: dict[str, list[dict]] = field(default_factory=dict)
    frame_ms: list[float] = field(default_factory=list)  # encode + compress + prefill per frame
    tokens_per_frame: list[int] = field(default_factory=list)  # visual tokens kept
    stream_tokens_per_frame: list[int] = field(default_factory=list)  # all the frame added to the KV (trailer, text)
    answers: list[str] = field(default_factory=list)

    def count(self) -> dict[str, int]:
        return {k: len(v) for k, v in self.feeds.items()}


def capture(adapter, method, calib, indices, questions=DEFAULT_QUESTIONS, ask_every: int = 4,
            max_per_stage: int | None = 64, record: bool = True, progress=None) -> Capture:
    """Plays frames `indices` of `calib` (in order, at their recorded times) into a session of `method` on the
    ONNX Runtime `adapter`, asks `questions` every `ask_every` frames, and returns what every graph received
    (at most `max_per_stage` runs per stage, spread evenly over the stream so late, long-KV steps are kept too).
    With `record` False only timings and answers are kept (speed and accuracy runs)."""
    from vlmedge.runtime import StreamingSession

    if not hasattr(adapter, "watch_inputs"):
        raise InputError("calibration captures graph inputs from an ONNX Runtime export; pass an export directory "
                         "(`vlmedge export ...`), not a PyTorch model")
    if not indices:
        raise InputError("the calibration set has no frames to play; record more with `vlmedge calibrate record`")
    out = Capture()
    if record:
        adapter.watch_inputs(lambda stage, feeds: out.feeds.setdefault(stage, []).append(
            {k: np.array(v, copy=True) for k, v in feeds.items()}))
    try:
        session = StreamingSession(adapter, method, max_new_tokens=3)
        t0 = calib.entries[indices[0]]["time_s"]
        for n, i in enumerate(indices, 1):
            before = session.stream_tokens
            st = session.push_frame(calib.frame(i), time_s=float(calib.entries[i]["time_s"] - t0))
            if st is not None:
                out.frame_ms.append(st.encode_ms + st.compress_ms + st.prefill_ms)
                out.tokens_per_frame.append(st.tokens_kept)
                out.stream_tokens_per_frame.append(session.stream_tokens - before)
            if n % ask_every == 0 or n == len(indices):
                session.flush()
                out.answers += [session.ask(q).text for q in questions]
            if progress and (n % 10 == 0 or n == len(indices)):
                progress(f"{n}/{len(indices)} frames")
        if record and getattr(adapter, "has_audio", False):
            for i in indices:  # the audio stage sees each frame's second of sound
                wave = calib.audio(i)
                if wave is not None:
                    adapter.encode_audio(wave)
    finally:
        adapter.watch_inputs(None)
    if max_per_stage:
        out.feeds = {k: _spread(v, max_per_stage) for k, v in out.feeds.items()}
    return out


def _spread(items: list, n: int) -> list:
    if len(items) <= n:
        return items
    picks = np.unique(np.linspace(0, len(items) - 1, n).round().astype(int))
    return [items[i] for i in picks]
