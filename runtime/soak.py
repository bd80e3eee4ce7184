"""A long stream inside a memory budget: camworld clips played back to back, questions throughout.

Each clip (one camworld seed) continues the previous one's timeline, so the session sees one endless camera.
Every clip's questions are asked right after their frames. Reported per run: the tracked memory
(`StreamingSession.memory()`) and the process's resident memory over time against the budget, throughput, the
token store's evictions/offloads/retrievals, and accuracy overall and on backward-tracing questions ("appeared":
what entered before or last) split by whether their evidence frames were still in the cache when asked.

Recall questions (`recall_after` clips > 0) measure what an eviction policy loses: a clip's "what color appeared
just before the <colour> <shape> ?" is asked again `recall_after` clips later, when a small cache no longer holds
that clip. A camworld clip only asks about objects whose name is unique in it, but later clips reuse names, so a
recall question is dropped (counted as ambiguous) when the object it names shows up again before it is asked: the
truth stays the clip's own (its most recent arrival). Every such question the clip supports is used, not only the
balanced sample it asks. Each is scored by whether the evidence frames were still in the live cache
(`recall_in_cache` / `recall_evicted`), and the evicted ones again if they were still in the offload store
(`recall_offloaded`); `recall` is all of them, the same set under every policy. Under `focus` each one still held
is asked a second time from exactly its evidence frames (`ask(time_range=...)`, `recall_given_evidence`): the
answer perfect retrieval would give, which separates what retrieval misses from what the model cannot read.
"""
from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field

import numpy as np


def rss_bytes() -> int:
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


@dataclass
class SoakReport:
    method: str
    policy: str
    frames: int
    stream_seconds: float
    wall_s: float
    budget_bytes: int | None
    capacity_tokens: int | None
    peak_tracked_bytes: int
    peak_rss_bytes: int
    samples: list[dict] = field(default_factory=list)  # {"stream_s", "tracked", "rss", "kv", "stream_tokens"}
    accuracy: dict = field(default_factory=dict)  # overall, backward_in_cache, backward_evicted
    counts: dict = field(default_factory=dict)
    store: dict = field(default_factory=dict)
    offload_precision: str = "full"
    retrieval_score: str = "middle-layer"
    retrieval_positions: str = "in-place"
    retrieval_context: int = 0

    @property
    def fps(self) -> float:
        return self.frames / self.wall_s if self.wall_s else 0.0

    def growth(self, early_s: float, late_s: float) -> float | None:
        """Relative change of resident memory between the samples nearest `early_s` and `late_s` of stream time."""
        if len(self.samples) < 2:
            return None
        pick = lambda t: min(self.samples, key=lambda s: abs(s["stream_s"] - t))  # noqa: E731
        a, b = pick(early_s)["rss"], pick(late_s)["rss"]
        return (b - a) / a if a else None

    def to_dict(self) -> dict:
        return {**asdict(self), "fps": self.fps}


@dataclass
class _Recall:
    question: object
    due: int  # the clip index before whose frames it is asked
    name: str  # the object it names ("red square"): must not show up again until it is asked
    evidence_s: float  # stream time of its first evidence frame
    evidence_end_s: float  # stream time of the frame it was first answerable after


def recall_questions(clip, index: int, after: int, offset: float) -> list[_Recall]:
    """Every distinct "appeared.before" question the clip supports (not only the balanced sample it asks)."""
    from vlmedge.models.camworld.questions import candidates

    out, seen = [], set()
    for q in sorted(candidates(clip.world)["appeared"], key=lambda q: q.frame):
        if q.template == "appeared.before" and len(q.refs) >= 2 and q.text not in seen:
            seen.add(q.text)
            out.append(_Recall(q, index + after, clip.objects[q.refs[1]].name(),
                               offset + clip.frame_time(q.evidence_start), offset + clip.frame_time(q.frame)))
    return out


def _oldest_cached_s(session) -> float:
    """Stream time of the oldest frame block still in the live cache (after the attention sinks)."""
    store = session.store
    if store is None or len(store.blocks) <= store.sink_blocks:
        return 0.0
    return store.blocks[store.sink_blocks].time_s


SOAK_POLICIES = ("evict", "offload", "focus", "focus-original")


def soak(adapter, method: str, frames: int, policy: str = "evict", memory_budget=None,
         max_stream_tokens: int | None = None, sink_frames: int = 1, offload_tokens: int = 0,
         retrieve_tokens: int = 0, seed_start: int = 1_000_000, sample_every_s: float = 60.0,
         recall_after: int = 0, offload_precision: str = "full", retrieval_score: str = "middle-layer",
         retrieval_positions: str = "in-place", retrieval_context: int = 0,
         progress=None) -> SoakReport:
    from vlmedge.models import camworld
    from vlmedge.runtime import StreamingSession

    # "focus": the offload policy with focused questions (StreamingSession retrieval="focus"), its blocks laid end
    # to end; "focus-original": the same with every block left at its original positions
    if policy not in SOAK_POLICIES:
        from vlmedge.errors import InputError

        raise InputError(f"soak policy must be one of {', '.join(SOAK_POLICIES)}, got {policy!r}")
    focused = policy in ("focus", "focus-original")
    session = StreamingSession(adapter, method, max_new_tokens=3, memory_budget=memory_budget,
                               max_stream_tokens=max_stream_tokens, sink_frames=sink_frames,
                               eviction="offload" if focused else policy, offload_tokens=offload_tokens,
                               retrieve_tokens=retrieve_tokens, retrieval="focus" if focused else "append",
                               focus_positions="original" if policy == "focus-original" else "compact",
                               offload_precision=offload_precision if policy != "evict" else "full",
                               retrieval_score=retrieval_score, retrieval_positions=retrieval_positions,
                               retrieval_context=retrieval_context)
    hits: dict[str, list[float]] = {"overall": [], "backward_in_cache": [], "backward_evicted": [], "recall": [],
                                    "recall_in_cache": [], "recall_evicted": [], "recall_offloaded": [],
                                    "recall_given_evidence": []}
    samples, peak_tracked, peak_rss = [], 0, 0
    t_wall, offset, done, seed, next_sample = time.perf_counter(), 0.0, 0, seed_start, 0.0
    pending: list[_Recall] = []
    ambiguous = 0
    clip_index = 0
    while done < frames:
        clip = camworld.generate(seed, split="eval")
        seed += 1
        names = {o.name() for o in clip.objects}
        for r in [r for r in pending if r.due == clip_index]:
            pending.remove(r)
            ok = float(session.ask(r.question.text).text.split()[:1] == [r.question.answer])
            hits["recall"].append(ok)
            cached = r.evidence_s >= _oldest_cached_s(session)
            hits["recall_in_cache" if cached else "recall_evicted"].append(ok)
            host = session.store.host if session.store is not None else []
            if not cached and host and r.evidence_s >= host[0].time_s:  # left the cache, still retrievable
                hits["recall_offloaded"].append(ok)
            if focused and (cached or host and r.evidence_s >= host[0].time_s):
                # the same question answered from exactly its evidence frames: what perfect retrieval would give
                ans = session.ask(r.question.text, time_range=(r.evidence_s, r.evidence_end_s))
                hits["recall_given_evidence"].append(float(ans.text.split()[:1] == [r.question.answer]))
        clashes = [r for r in pending if r.name in names]
        ambiguous += len(clashes)
        pending = [r for r in pending if r not in clashes]
        if recall_after > 0:
            pending += recall_questions(clip, clip_index, recall_after, offset)
        clip_index += 1
        qs = sorted((q for q in clip.questions if q.qtype in (camworld.QTYPES if adapter.has_audio
                                                              else camworld.VISUAL_QTYPES)), key=lambda q: q.frame)
        qi = 0
        for i, frame in enumerate(clip.frames):
            if done >= frames:
                break
            t = offset + clip.frame_time(i)
            session.push_frame(frame, time_s=t)
            done += 1
            while qi < len(qs) and qs[qi].frame <= i:
                q = qs[qi]
                qi += 1
                ans = session.ask(q.text)
                ok = float(ans.text.split()[:1] == [q.answer])
                hits["overall"].append(ok)
                if q.qtype == "appeared":
                    evidence_t = offset + clip.frame_time(q.evidence_start)
                    hits["backward_in_cache" if evidence_t >= _oldest_cached_s(session)
                         else "backward_evicted"].append(ok)
            m = session.memory()
            rss = rss_bytes()
            peak_tracked, peak_rss = max(peak_tracked, m["total"]), max(peak_rss, rss)
            if t >= next_sample:
                samples.append({"stream_s": round(t, 1), "tracked": m["total"], "rss": rss, "kv": m["kv"],
                                "stream_tokens": session.stream_tokens})
                next_sample += sample_every_s
                if progress:
                    progress(done, frames, m, rss)
        offset += clip.num_frames / clip.fps
    st = session.store
    return SoakReport(method=session.method.spec(), policy=policy if st else "unbounded", frames=done,
                      stream_seconds=round(offset, 1), wall_s=time.perf_counter() - t_wall,
                      budget_bytes=session.plan.budget_bytes if session.plan else None,
                      capacity_tokens=st.capacity_tokens if st else None, peak_tracked_bytes=int(peak_tracked),
                      peak_rss_bytes=int(peak_rss), samples=samples,
                      accuracy={k: float(np.mean(v)) if v else None for k, v in hits.items()},
                      counts={**{k: len(v) for k, v in hits.items()}, "recall_ambiguous": ambiguous,
                              "recall_after_clips": recall_after},
                      store={k: getattr(st, k) for k in ("evicted_blocks", "offloaded_blocks", "dropped_blocks",
                                                         "retrieved_blocks")} if st else {},
                      offload_precision=st.host_precision if st else "full",
                      retrieval_score=session.retrieval_score, retrieval_positions=session.retrieval_positions,
                      retrieval_context=session.retrieval_context)
