"""A long stream inside a memory budget: camworld clips played back to back, questions throughout.

Each clip (one camworld seed) continues the previous one's timeline, so the session sees one endless camera.
Every clip's questions are asked right after their frames. Reported per run: the tracked memory
(`StreamingSession.memory()`) and the process's resident memory over time against the budget, throughput, the
token store's evictions/offloads/retrievals, and accuracy overall and on backward-tracing questions ("appeared":
what entered before or last) split by whether their evidence frames were still in the cache when asked.
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


def soak(adapter, method: str, frames: int, policy: str = "evict", memory_budget=None,
         max_stream_tokens: int | None = None, sink_frames: int = 1, offload_tokens: int = 0,
         retrieve_tokens: int = 0, seed_start: int = 1_000_000, sample_every_s: float = 60.0,
         progress=None) -> SoakReport:
    from vlmedge.models import camworld
    from vlmedge.runtime import StreamingSession

    session = StreamingSession(adapter, method, max_new_tokens=3, memory_budget=memory_budget,
                               max_stream_tokens=max_stream_tokens, sink_frames=sink_frames, eviction=policy,
                               offload_tokens=offload_tokens, retrieve_tokens=retrieve_tokens)
    hits: dict[str, list[float]] = {"overall": [], "backward_in_cache": [], "backward_evicted": []}
    samples, peak_tracked, peak_rss = [], 0, 0
    t_wall, offset, done, seed, next_sample = time.perf_counter(), 0.0, 0, seed_start, 0.0
    while done < frames:
        clip = camworld.generate(seed, split="eval")
        seed += 1
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
                    store = session.store
                    oldest = (store.blocks[store.sink_blocks].time_s if store is not None
                              and len(store.blocks) > store.sink_blocks else 0.0)
                    evidence_t = offset + clip.frame_time(q.evidence_start)
                    hits["backward_in_cache" if evidence_t >= oldest else "backward_evicted"].append(ok)
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
                      counts={k: len(v) for k, v in hits.items()},
                      store={k: getattr(st, k) for k in ("evicted_blocks", "offloaded_blocks", "dropped_blocks",
                                                         "retrieved_blocks")} if st else {})
