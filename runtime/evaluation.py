"""Accuracy of a model + compression method on camworld evaluation streams, through the streaming session.

Every stream is played frame by frame into a `StreamingSession` (audio one second at a time for omni models)
and each question is asked right after its frame, exactly as a live camera assistant would be asked; the
first word of the answer must equal the ground truth.
"""
from __future__ import annotations

import json
import resource
import time
from dataclasses import asdict, dataclass, field

import numpy as np

from vlmedge.errors import InputError


@dataclass
class EvalReport:
    model: str
    method: str
    seeds: tuple[int, int]
    accuracy: dict[str, float]
    chance: dict[str, float]
    counts: dict[str, int]
    tokens_per_frame: float
    tokens_in_per_frame: float
    ms: dict[str, float]
    peak_rss_mb: float
    wall_s: float
    answers: list[dict] = field(default_factory=list, repr=False)
    # window methods (OmniZip and its baselines): share of all tokens (video + audio) and of audio tokens kept,
    # from the committed windows; None for frame methods, which never drop audio
    retention: float | None = None
    audio_retention: float | None = None
    # spread of the per-frame kept count (standard deviation over all frames): 0 for fixed budgets, the
    # data-driven count's spread for GlimpsePrune
    tokens_per_frame_std: float = 0.0

    def to_json(self, with_answers: bool = False) -> str:
        d = asdict(self)
        if not with_answers:
            d.pop("answers")
        return json.dumps(d, indent=2)

    def table(self) -> str:
        lines = [f"{self.model} | method {self.method} | seeds {self.seeds[0]}..{self.seeds[1] - 1}",
                 f"{'type':<10} {'accuracy':>9} {'chance':>7} {'n':>5}"]
        for q in sorted(self.accuracy):
            if q == "overall":
                continue
            lines.append(f"{q:<10} {self.accuracy[q]:>9.3f} {self.chance[q]:>7.3f} {self.counts[q]:>5}")
        lines.append(f"{'overall':<10} {self.accuracy['overall']:>9.3f} {self.chance['overall']:>7.3f} {self.counts['overall']:>5}")
        lines.append(f"visual tokens per frame: {kept_text(self)} kept of {self.tokens_in_per_frame:.1f}")
        if self.retention is not None:
            audio = "" if self.audio_retention is None else f", audio {self.audio_retention:.1%}"
            lines.append(f"tokens kept (video + audio): {self.retention:.1%}{audio}")
        lines.append("per frame ms: " + ", ".join(f"{k} {v:.2f}" for k, v in self.ms.items()))
        lines.append(f"peak RSS {self.peak_rss_mb:.0f} MB, wall {self.wall_s:.1f} s")
        return "\n".join(lines)


def parse_seed_range(spec: str) -> tuple[int, int]:
    """`START:END` (END exclusive) or `START+COUNT`; evaluation seeds start at 1,000,000."""
    from vlmedge.models import camworld

    try:
        if "+" in spec:
            a, n = spec.split("+", 1)
            start, end = int(a), int(a) + int(n)
        else:
            a, b = spec.split(":", 1)
            start, end = int(a), int(b)
    except ValueError:
        raise InputError(f"seed range {spec!r} must look like 1000000:1000200 or 1000000+200") from None
    if end <= start:
        raise InputError(f"seed range {spec!r} is empty")
    if start < camworld.EVAL_SEED_START:
        raise InputError(f"evaluation seeds start at {camworld.EVAL_SEED_START}; {start} is a training seed")
    return start, end


def evaluate(adapter, method, seeds: tuple[int, int], name: str = "", progress=None, **session_kwargs) -> EvalReport:
    """`session_kwargs` go to every stream's `StreamingSession` (memory_budget, standing_prompt, ...)."""
    from vlmedge.models import camworld
    from vlmedge.runtime import StreamingSession
    from vlmedge.runtime.playback import play_stream

    qtypes = set(camworld.QTYPES if adapter.has_audio else camworld.VISUAL_QTYPES)
    chance = camworld.chance_levels()
    hits: dict[str, list[float]] = {}
    answers, kept, seen = [], [], []
    windows = []
    stage = {"encode": [], "compress": [], "prefill": [], "question_prefill": [], "decode": []}
    t_start = time.perf_counter()
    session = None
    for n, seed in enumerate(range(*seeds)):
        stream = camworld.generate(seed, split="eval")
        if session is None:
            session = StreamingSession(adapter, method, sample_fps=stream.fps, max_new_tokens=3, **session_kwargs)
        else:
            session.reset()
        questions = [q for q in stream.questions if q.qtype in qtypes]

        def frame_stats(st):
            kept.append(st.tokens_kept)
            seen.append(st.tokens_in)
            stage["encode"].append(st.encode_ms)
            stage["compress"].append(st.compress_ms)
            stage["prefill"].append(st.prefill_ms)

        for q, ans in play_stream(session, stream, questions, on_frame=frame_stats):
            ok = float(ans.text.split()[:1] == [q.answer])
            hits.setdefault(q.qtype, []).append(ok)
            stage["question_prefill"].append(ans.prefill_ms)
            stage["decode"].append(ans.decode_ms)
            answers.append({"seed": seed, "frame": q.frame, "qtype": q.qtype, "question": q.text,
                            "truth": q.answer, "answer": ans.text, "correct": bool(ok)})
        windows += session.window_stats
        if progress:
            progress(n + 1, seeds[1] - seeds[0])
    acc = {q: float(np.mean(v)) for q, v in hits.items()}
    counts = {q: len(v) for q, v in hits.items()}
    all_hits = [x for v in hits.values() for x in v]
    acc["overall"] = float(np.mean(all_hits)) if all_hits else 0.0
    counts["overall"] = len(all_hits)
    ch = {q: chance[q] for q in hits}
    ch["overall"] = float(np.mean([chance[a["qtype"]] for a in answers])) if answers else 0.0
    return EvalReport(model=name, method=session.method.spec(), seeds=seeds, accuracy=acc, chance=ch, counts=counts,
                      tokens_per_frame=float(np.mean(kept)), tokens_per_frame_std=float(np.std(kept)),
                      tokens_in_per_frame=float(np.mean(seen)),
                      ms={k: float(np.median(v)) if v else 0.0 for k, v in stage.items()},
                      peak_rss_mb=resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
                      wall_s=time.perf_counter() - t_start, answers=answers, **window_retention(windows))


def kept_text(r) -> str:
    """Mean kept tokens per frame, with ± the standard deviation where the count varies."""
    std = getattr(r, "tokens_per_frame_std", 0.0)
    return f"{r.tokens_per_frame:.1f}" + (f" ± {std:.1f}" if std >= 0.05 else "")


def window_retention(windows) -> dict:
    """`retention` and `audio_retention` over committed windows (empty dict without windows)."""
    v_in, v_kept = sum(w.video_in for w in windows), sum(w.video_kept for w in windows)
    a_in, a_kept = sum(w.audio_in for w in windows), sum(w.audio_kept for w in windows)
    if v_in + a_in == 0:  # no windows (a frame method), or windows with nothing in them
        return {}
    return {"retention": (v_kept + a_kept) / (v_in + a_in), "audio_retention": a_kept / a_in if a_in else None}
