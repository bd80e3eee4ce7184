"""Training examples from camworld: whole streams, many questions each, types weighted by current error.

Each example is a full stream (every frame from the start, as a session sees it) with up to a few questions
per type at their own frames. Types the model already answers well are sampled less: the weights follow a
running error estimate, so slow types ("where", "exists", "small") get the supervision they need without a
hand-made curriculum.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from vlmedge.models import camworld

VALIDATION_SEED_START = 990_000  # training-split seeds held out from training, for curves during training


@dataclass
class TypeWeights:
    qtypes: tuple[str, ...]
    error: dict[str, float] = field(default_factory=dict)
    momentum: float = 0.9

    def __post_init__(self):
        for q in self.qtypes:
            self.error.setdefault(q, 1.0)

    @staticmethod
    def key(qtype: str, dropped: bool) -> str:
        """Errors on token-dropped clips are tracked apart (`<qtype>@drop`): a type can be solved on full frames
        and failing on pruned ones."""
        return f"{qtype}@drop" if dropped else qtype

    def update(self, qtype: str, correct: float, dropped: bool = False) -> None:
        k = self.key(qtype, dropped)
        prev = self.error.setdefault(k, self.error[qtype])  # a first dropped answer starts from the shared estimate
        self.error[k] = self.momentum * prev + (1 - self.momentum) * (1.0 - correct)

    def per_type(self, total: int, dropped: bool = False) -> dict[str, int]:
        """Questions per type for one stream (`dropped`: one shown token-dropped): at least one each, the rest by
        error share."""
        err = np.array([max(self.error.get(self.key(q, dropped), self.error[q]), 0.05) for q in self.qtypes])
        extra = max(0, total - len(self.qtypes))
        share = np.floor(err / err.sum() * extra + 0.5).astype(int)
        return {q: 1 + int(s) for q, s in zip(self.qtypes, share)}


@dataclass
class Example:
    """A clip `frames[start:end]` of a stream and questions asked after its frames (indices within the clip)."""

    stream: object
    start: int
    end: int
    questions: list  # [(frame_in_clip, text, answer, qtype)]
    drop: object = None  # token_drop.DropPlan: show the clip with visual tokens dropped (None: all tokens)
    evidence: list = field(default_factory=list)  # per question: (object ids it is about, first frame in clip)


def stream_example(seed: int, rng: np.random.Generator, counts: dict[str, int], config=None,
                   crop: bool = False, max_clips: int = 3) -> list[Example]:
    """The questions of one training seed, as one whole-stream example or (crop=True) as one short clip per
    asking frame holding just the frames that answer its questions.

    Whole streams are what inference sees: every frame from the start, so "now" questions must find the
    latest frame among several similar ones. Crops teach what to look for without that search (what the
    reference-model notes trained on); a mix of both, cropped more early on, learns fastest.
    """
    stream = camworld.generate(seed, config, split="train" if seed < camworld.EVAL_SEED_START else "eval")
    qs = []
    for qtype, k in counts.items():
        qs += camworld.sample_questions(stream, rng, per_type=k, qtypes=(qtype,))
    if not crop:
        return [Example(stream, 0, stream.num_frames, [(q.frame, q.text, q.answer, q.qtype) for q in qs],
                        evidence=[(q.refs, q.evidence_start) for q in qs])]
    # A clip per chosen frame, with as many distinct questions at that frame as the counts allow (answers
    # levelled within each type, as camworld's own sampler does), so a short clip carries a full load.
    cands = camworld.candidates(stream.world)
    frames = sorted({q.frame for q in qs})
    if len(frames) > max_clips:  # clips of one stream overlap; a few per stream keeps the frames fresh
        frames = sorted(rng.choice(frames, size=max_clips, replace=False).tolist())
    out = []
    for frame in frames:
        at = []
        for qtype, k in counts.items():
            pool = [q for q in cands[qtype] if q.frame == frame]
            per_answer = {}
            for q in pool:
                per_answer[q.answer] = per_answer.get(q.answer, 0) + 1
            # no more picks than keep the answers level (a frame has few "yes" but many "no" candidates)
            k = min(k, len(per_answer) * min(per_answer.values(), default=0))
            answers = sorted(per_answer)
            order = [answers[j] for j in rng.permutation(len(answers))]
            for i in range(k):  # answers in turn, each in a random order: level in expectation and in count
                sub = [q for q in pool if q.answer == order[i % len(order)]]
                if not sub:
                    break
                q = _template_pick(sub, rng)
                at.append(q)
                pool = [p for p in pool if p.text != q.text]
        if not at:
            continue
        start = min(q.evidence_start for q in at)
        out.append(Example(stream, start, frame + 1, [(frame - start, q.text, q.answer, q.qtype) for q in at],
                           evidence=[(q.refs, q.evidence_start - start) for q in at]))
    return out


def _template_pick(pool, rng):
    """A template uniformly, then a question of it uniformly."""
    templates = sorted({q.template for q in pool})
    template = templates[int(rng.integers(len(templates)))]
    pool = [q for q in pool if q.template == template]
    return pool[int(rng.integers(len(pool)))]


def training_seeds(rng: np.random.Generator, n: int) -> list[int]:
    return [int(s) for s in rng.integers(0, VALIDATION_SEED_START, size=n)]
