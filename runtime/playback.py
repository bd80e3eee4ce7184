"""Playing a recorded stream (camworld or decoded media) into a session the way a live camera would.

Frames go in at their timestamps; for audio-capable models each complete second of audio follows the frames
of that second (one audio-encoder window, as the reference models were trained); every question is asked
right after the frame it belongs to. Windowed methods (OmniZip) report a frame's stats only when its window
is compressed, so frame callbacks follow `session.frame_stats` rather than `push_frame`'s return value, and
the last open window is flushed at the end of the stream.
"""
from __future__ import annotations

from typing import Callable


def play_stream(session, stream, questions=(), on_frame: Callable | None = None,
                on_answer: Callable | None = None) -> list:
    """Returns [(question, answer)] in asking order; callbacks see every frame's stats and every answer."""
    pending = sorted(questions, key=lambda q: q.frame)
    per_sec = max(1, int(round(stream.fps)))
    audio = session.adapter.has_audio and getattr(stream, "audio", None) is not None and stream.audio.size > 0
    out, qi, reported = [], 0, len(session.frame_stats)

    def report():
        nonlocal reported
        if on_frame:
            for stats in session.frame_stats[reported:]:
                on_frame(stats)
        reported = len(session.frame_stats)

    for i, frame in enumerate(stream.frames):
        session.push_frame(frame, time_s=stream.frame_time(i))
        if audio and (i + 1) % per_sec == 0:
            sec, sr = (i + 1) // per_sec - 1, stream.sample_rate
            session.push_audio(stream.audio[sec * sr:(sec + 1) * sr], time_s=float(sec))
        report()
        while qi < len(pending) and pending[qi].frame <= i:
            ans = session.ask(pending[qi].text)
            out.append((pending[qi], ans))
            if on_answer:
                on_answer(pending[qi], ans, i)
            qi += 1
    if hasattr(session, "flush"):
        session.flush()
    report()
    return out
