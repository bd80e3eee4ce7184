"""`vlmedge train-retrieval`: trains the learned retrieval score (runtime/retrieval_scorer.py), the LLM frozen.

Data: camworld training clips played back to back through a bounded session (the way a soak or a camera
stream runs), every frame block's values at the scorer's layers read as the block is cached, and which objects
are in view in that frame. A training window is the last `window` frames before some moment (what a token
store holds); every object name in view inside it is a query, asked with a question template that names it
("where is the red square ?", "what color appeared just before the red square ?", ...) wrapped the way `ask()`
wraps it. Its targets are the frames of the *latest* clip in the window where that object is in view: a name
can come back in an older clip, and "the red square" means the latest one. Loss: the multi-positive softmax
cross-entropy over the window's frames (each frame's score a soft maximum over its tokens).

Validation (`evaluate`, held-out training seeds): for each object of a clip that is not seen again in the next
`after` clips, the window ending `after` clips later; hit@1 / hit@7 = the best / one of the 7 best frames
shows it in that clip (7 frames are what a 256-token retrieval allowance holds at 36 tokens a frame; chance is
about 7 / window); arrival@1 = the best frame is one of the first two that show it.
"""
from __future__ import annotations

import sys
import time
from dataclasses import dataclass

import numpy as np
import torch

VAL_SEED_START = 980_000  # training seeds held out for validation (eval seeds stay untouched)
NAMED_TEMPLATES = ("where", "exists", "appeared.before", "sound")  # the camworld questions that name an object


@dataclass
class StreamData:
    feats: torch.Tensor      # [frames, tokens, features] (fp16), zero-padded
    mask: torch.Tensor       # [frames, tokens] bool
    names: list[list[str]]   # per frame: the object names in view
    clip: np.ndarray         # per frame: its clip's index in the stream


@dataclass
class RetrievalTrainConfig:
    minutes: float = 3.0
    lr: float = 3e-3
    window: int = 170
    windows_per_step: int = 4
    tau: float = 0.5         # soft maximum over a frame's tokens while training
    after: int = 10          # validation: clips between an object and the question about it
    seed: int = 0


def _log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


@torch.no_grad()
def collect(adapter, scorer, method: str, frames: int, seed_start: int, progress=_log) -> StreamData:
    """Plays camworld clips from `seed_start` through a bounded session and keeps each frame block's features."""
    from vlmedge.models import camworld
    from vlmedge.runtime import StreamingSession

    session = StreamingSession(adapter, method, max_new_tokens=1, max_stream_tokens=4096, sink_frames=1,
                               eviction="evict")
    feats, names, clips = [], [], []
    seed, t0 = seed_start, time.perf_counter()
    while len(feats) < frames:
        clip = camworld.generate(seed, split="train")
        for i, frame in enumerate(clip.frames):
            if len(feats) >= frames:
                break
            session.push_frame(frame)
            b = session.store.blocks[-1]
            values = [layer.values[:, :, b.start:b.start + b.length] for layer in session.cache.layers]
            feats.append(scorer.features(values).half())
            names.append(sorted({clip.objects[o].name() for o in clip.world.quadrants_at(clip.frame_time(i))}))
            clips.append(seed - seed_start)
        seed += 1
        if progress and (seed - seed_start) % 100 == 0:
            progress(f"  {method}: {len(feats)}/{frames} frames ({time.perf_counter() - t0:.0f} s)")
    n = max(f.shape[0] for f in feats)
    x = torch.zeros(len(feats), n, feats[0].shape[1], dtype=torch.float16)
    mask = torch.zeros(len(feats), n, dtype=torch.bool)
    for i, f in enumerate(feats):
        x[i, :f.shape[0]], mask[i, :f.shape[0]] = f, True
    return StreamData(x, mask, names, np.array(clips))


def latest_targets(data: StreamData, lo: int, hi: int) -> dict[str, list[int]]:
    """For each name in view in frames [lo, hi): the frames of its latest clip there that show it."""
    latest: dict[str, int] = {}
    for f in range(hi - 1, lo - 1, -1):
        for name in data.names[f]:
            latest.setdefault(name, int(data.clip[f]))
    return {name: [f for f in range(lo, hi) if data.clip[f] == c and name in data.names[f]]
            for name, c in latest.items()}


class _Questions:
    """Question embeddings per (name, template), wrapped and embedded as `ask()` does."""

    def __init__(self, adapter):
        from vlmedge.models.camworld.questions import TEMPLATES

        self.adapter, self.templates, self.cache = adapter, TEMPLATES, {}

    def __call__(self, name: str, template: str) -> torch.Tensor:
        key = (name, template)
        if key not in self.cache:
            colour, shape = name.split()
            text = self.templates[template].format(colour=colour, shape=shape)
            ids = self.adapter.tokenize(self.adapter.prompt.question_template.format(question=text))
            with torch.no_grad():
                self.cache[key] = self.adapter.embed_text(ids).float()
        return self.cache[key]


def _frame_scores(scorer, data: StreamData, lo: int, hi: int, qs: torch.Tensor, tau: float | None) -> torch.Tensor:
    """`[len(qs), hi - lo]`: each query against each frame, max (tau None) or soft max over its tokens."""
    z = scorer.tokens(data.feats[lo:hi].float())                       # [F, n, rank]
    logits = scorer.logits(z, qs.T).permute(2, 0, 1)                  # [Q, F, n]
    logits = logits.masked_fill(~data.mask[lo:hi][None], -1e4)
    return logits.amax(-1) if tau is None else tau * torch.logsumexp(logits / tau, -1)


@torch.no_grad()
def evaluate(scorer, data: StreamData, questions: _Questions, window: int, after: int) -> dict:
    hits1, hits7, arrival = [], [], []
    first = {int(c): int(np.argmax(data.clip == c)) for c in np.unique(data.clip)}
    for c in sorted(first):
        if c + after + 1 not in first:
            break
        hi = first[c + after + 1]
        lo = max(0, hi - window)
        own = np.where(data.clip == c)[0]
        if own[0] < lo:
            continue
        later = {n for f in range(own[-1] + 1, hi) for n in data.names[f]}
        for name in sorted({n for f in own for n in data.names[f]} - later):
            q = scorer.query(questions(name, "appeared.before"))[None]
            best = torch.argsort(_frame_scores(scorer, data, lo, hi, q, None)[0], descending=True)[:7] + lo
            showing = [int(f) for f in own if name in data.names[int(f)]]
            shown = [int(f) in showing for f in best]
            hits1.append(shown[0])
            hits7.append(any(shown))
            arrival.append(int(best[0]) in showing[:2])
    mean = lambda v: float(np.mean(v)) if v else 0.0  # noqa: E731
    return {"questions": len(hits1), "hit@1": mean(hits1), "hit@7": mean(hits7), "arrival@1": mean(arrival)}


def fit_standardisation(scorer, datasets: list[StreamData]) -> None:
    rows = torch.cat([d.feats[d.mask].float() for d in datasets])
    scorer.mean.copy_(rows.mean(0))
    scorer.std.copy_(rows.std(0) + 1e-3)


def train_scorer(adapter, scorer, train: list[StreamData], val: StreamData, cfg: RetrievalTrainConfig,
                 log=_log) -> dict:
    """Trains `scorer` in place for `cfg.minutes`; returns what was done and the validation before and after."""
    rng = np.random.default_rng(cfg.seed)
    torch.manual_seed(cfg.seed)
    questions = _Questions(adapter)
    fit_standardisation(scorer, train)
    before = evaluate(scorer, val, questions, cfg.window, cfg.after)
    log(f"  validation before: hit@1 {before['hit@1']:.3f}, hit@7 {before['hit@7']:.3f} "
        f"({before['questions']} objects {cfg.after} clips back)")
    opt = torch.optim.AdamW(scorer.parameters(), lr=cfg.lr, weight_decay=1e-2)
    scorer.train()
    t0, step, last_log, losses = time.perf_counter(), 0, 0.0, []
    while time.perf_counter() - t0 < cfg.minutes * 60:
        loss, count = 0.0, 0
        for _ in range(cfg.windows_per_step):
            data = train[int(rng.integers(len(train)))]
            hi = int(rng.integers(min(cfg.window // 2, len(data.clip) - 1), len(data.clip))) + 1
            lo = max(0, hi - cfg.window)
            targets = latest_targets(data, lo, hi)
            names = sorted(targets)
            if not names:  # nothing in view in the whole window
                continue
            qs = torch.stack([scorer.query(questions(n, NAMED_TEMPLATES[int(rng.integers(len(NAMED_TEMPLATES)))]))
                              for n in names])
            s = _frame_scores(scorer, data, lo, hi, qs, cfg.tau)
            pos = torch.full_like(s, float("-inf"))
            for i, n in enumerate(names):
                pos[i, [f - lo for f in targets[n]]] = 0.0
            loss = loss + (torch.logsumexp(s, 1) - torch.logsumexp(s + pos, 1)).sum()
            count += len(names)
        loss = loss / max(1, count)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(float(loss.detach()))
        step += 1
        if time.perf_counter() - last_log > 30:
            last_log = time.perf_counter()
            log(f"  step {step}: loss {np.mean(losses[-50:]):.3f} ({last_log - t0:.0f} s)")
    scorer.eval()
    after = evaluate(scorer, val, questions, cfg.window, cfg.after)
    log(f"  validation after: hit@1 {after['hit@1']:.3f}, hit@7 {after['hit@7']:.3f}")
    return {"steps": step, "minutes": round((time.perf_counter() - t0) / 60, 2), "lr": cfg.lr,
            "window": cfg.window, "loss": float(np.mean(losses[-50:])) if losses else None,
            "validation_before": before, "validation": after}
