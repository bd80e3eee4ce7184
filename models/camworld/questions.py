"""Timed questions with ground truth, modelled on streaming-video benchmarks (OVO-Bench, StreamingBench).

A question is asked right after a frame is shown and is about the stream up to that frame. Every question is
lowercase whole words separated by single spaces (the "?" is a word too), and every answer is one word from
the type's closed `choices`, so chance is 1 / len(choices).

qtype     asks (answer choices)
color     colour of the unique <shape>, or of the shape in a quadrant, now (6 colours)
count     how many shapes are in view now (one .. four)
where     quadrant of the <colour> <shape> now (4 quadrants)
exists    is there a <colour> <shape> now; negatives share its colour or its shape (yes / no)
appeared  backward tracing: colour of the newest arrival, or of the arrival just before the <colour> <shape>
          (6 colours)
small     shape of the small <colour> object now; its detail lives in about 2x2 patches (4 shapes)
sound     audio-visual: which sound played when the <colour> <shape> appeared (5 sounds; +4 words with speech)
shape     training only (a curriculum, never scored): shape of the large <colour> object now (4 shapes)
heard     training only: which sound played last (the "sound" choices), answerable from the audio alone

Questions are only asked at settled frames (nothing part-way through entering, moving or leaving), so every
answer is unambiguous from the pixels. Sampling picks a template uniformly, then an answer uniformly among
those the stream offers, then an instance; together with a world that treats colours, shapes, quadrants and
sounds symmetrically this makes every answer equally likely, so a blind model gains nothing from priors.
"""
from __future__ import annotations

import re
from dataclasses import asdict, dataclass

import numpy as np

from .config import COLOURS, COUNT_WORDS, QUADRANTS, SHAPES, SOUNDS, SPEECH_WORDS, WorldConfig
from .world import World

QTYPES: tuple[str, ...] = ("color", "count", "where", "exists", "appeared", "small", "sound")
VISUAL_QTYPES: tuple[str, ...] = QTYPES[:-1]
AUDIO_VISUAL_QTYPES: tuple[str, ...] = ("sound",)
# "small" is the only type whose answer is a shape, and a shape read from the 2x2 tokens of a small object is
# the weakest signal in the world (a linear probe on the bundled LLaVA model's tokens: 0.98 for large objects,
# 0.65 for small ones); the models never learned to name a shape at all (small at chance after 287 minutes).
# Naming the shape of a large object teaches that read-out on a clear signal; it is a training aid only, kept
# out of QTYPES so evaluation, chance tables and the default sampler never see it.
# "heard" is the same kind of aid for "sound": measured on the 100-minute Omni model, a linear head names the sound
# from its audio tokens on 65 of 65 validation questions and a fixed head puts a median 0.5 of its mass on them,
# yet the answer is "tone" or "beep" whatever played. "sound" needs two steps (find when the object arrived, then
# read what was heard then); "heard" asks for the second alone, so the read-out from audio tokens to an answer
# word has a signal of its own.
TRAINING_QTYPES: tuple[str, ...] = ("shape", "heard")
_ALL_QTYPES = QTYPES + TRAINING_QTYPES  # what `candidates` enumerates, in asking order within a frame

TEMPLATES: dict[str, str] = {
    "color.shape": "what color is the {shape} ?",
    "color.region": "what color is the shape in the {quadrant} ?",
    "count": "how many shapes are there ?",
    "where": "where is the {colour} {shape} ?",
    "exists": "is there a {colour} {shape} ?",
    "appeared.last": "what color was the last shape to appear ?",
    "appeared.before": "what color appeared just before the {colour} {shape} ?",
    "small": "what shape is the small {colour} object ?",
    "shape": "what shape is the large {colour} object ?",
    "sound": "what sound played when the {colour} {shape} appeared ?",
    "heard": "what sound played last ?",
}
RECENT_S = 1.6  # "the last shape to appear" is only asked while its arrival is this recent
HEARD_S = 4.0  # "what sound played last" only while that sound is this recent: a short clip still holds it


@dataclass(frozen=True)
class Question:
    qtype: str
    text: str
    answer: str
    choices: tuple[str, ...]
    frame: int                  # asked right after this frame; frames 0..frame are what a stream has seen
    time: float                 # seconds, = frame / fps
    evidence_start: int         # frames evidence_start..frame are enough to answer (a training crop)
    template: str
    refs: tuple[int, ...] = ()  # ids of the objects it is about, the answer's object first

    @property
    def chance(self) -> float:
        return 1.0 / len(self.choices)

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "Question":
        d = dict(d)
        d["choices"], d["refs"] = tuple(d["choices"]), tuple(d["refs"])
        return cls(**d)


def choices(qtype: str, config: WorldConfig | None = None) -> tuple[str, ...]:
    cfg = config or WorldConfig()
    table = {
        "color": tuple(COLOURS), "appeared": tuple(COLOURS),
        "count": COUNT_WORDS[cfg.min_objects - 1:cfg.max_objects],
        "where": QUADRANTS, "exists": ("yes", "no"), "small": SHAPES, "shape": SHAPES,
        "sound": SOUNDS + (SPEECH_WORDS if cfg.speech else ()),
        "heard": SOUNDS + (SPEECH_WORDS if cfg.speech else ()),
    }
    return table[qtype]


def chance_levels(config: WorldConfig | None = None) -> dict[str, float]:
    return {q: 1.0 / len(choices(q, config)) for q in QTYPES}


def default_qtypes(config: WorldConfig | None = None) -> tuple[str, ...]:
    cfg = config or WorldConfig()
    if cfg.qtypes is not None:
        return tuple(cfg.qtypes)
    return QTYPES if cfg.audio else VISUAL_QTYPES


def answer_vocabulary() -> list[str]:
    """Every word that can be an answer (with speech on), in a fixed order."""
    words: list[str] = []
    for w in (*COLOURS, *COUNT_WORDS, *QUADRANTS, "yes", "no", *SHAPES, *SOUNDS, *SPEECH_WORDS):
        if w not in words:
            words.append(w)
    return words


def vocabulary() -> list[str]:
    """Every word a question or answer can contain, sorted; a word-level tokenizer built from it is complete."""
    words = set(answer_vocabulary())
    for t in TEMPLATES.values():
        words.update(w for w in re.sub(r"\{\w+\}", " ", t).split())
    return sorted(words)


# --- enumerating every question a stream supports --------------------------------------------------------

def _frame_at_or_before(t: float, fps: float) -> int:
    return max(0, int(np.floor(t * fps + 1e-9)))


def candidates(world: World) -> dict[str, list[Question]]:
    """All askable questions of the stream, by qtype (unbalanced; `sample_questions` balances)."""
    cfg = world.config
    out: dict[str, list[Question]] = {q: [] for q in _ALL_QTYPES}
    ch = {q: choices(q, cfg) for q in _ALL_QTYPES}
    entries = world.entries()
    tied = {e.obj: e.sound for e in world.sound_events() if e.obj >= 0}
    objs = world.objects

    def add(qtype, template, answer, frame, t, start, refs=(), **fill):
        text = TEMPLATES[template].format(**fill)
        out[qtype].append(Question(qtype, text, answer, ch[qtype], frame, t, start, template, tuple(refs)))

    for f in range(cfg.num_frames):
        t = cfg.frame_time(f)
        if not world.settled(t):
            continue
        vis = world.quadrants_at(t)
        if not vis:
            continue
        ids = sorted(vis)
        names = [objs[i].name() for i in ids]
        if len(ids) - 1 < len(COUNT_WORDS) and COUNT_WORDS[len(ids) - 1] in ch["count"]:
            add("count", "count", COUNT_WORDS[len(ids) - 1], f, t, f, ids)
        for shape in SHAPES:
            hits = [i for i in ids if objs[i].shape == shape]
            if len(hits) == 1:
                add("color", "color.shape", objs[hits[0]].colour, f, t, f, hits, shape=shape)
        for i in ids:
            add("color", "color.region", objs[i].colour, f, t, f, [i], quadrant=vis[i])
            if names.count(objs[i].name()) == 1:
                add("where", "where", vis[i], f, t, f, [i], colour=objs[i].colour, shape=objs[i].shape)
        seen_pairs = {(objs[i].colour, objs[i].shape) for i in ids}
        for colour, shape in sorted(seen_pairs):
            add("exists", "exists", "yes", f, t, f, [i for i in ids if objs[i].name() == f"{colour} {shape}"],
                colour=colour, shape=shape)
        vis_colours, vis_shapes = {c for c, _ in seen_pairs}, {s for _, s in seen_pairs}
        for colour in COLOURS:
            for shape in SHAPES:
                # Hard negatives only: the colour or the shape is in view, just not together.
                if (colour, shape) not in seen_pairs and (colour in vis_colours or shape in vis_shapes):
                    # refs: the near misses, the objects in view that share the colour or the shape — what a
                    # "no" has to be checked against (training aids use them as the question's evidence)
                    add("exists", "exists", "no", f, t, f,
                        [i for i in ids if objs[i].colour == colour or objs[i].shape == shape],
                        colour=colour, shape=shape)
        for colour in COLOURS:
            hits = [i for i in ids if objs[i].colour == colour and objs[i].size == "small"]
            if len(hits) == 1:
                add("small", "small", objs[hits[0]].shape, f, t, f, hits, colour=colour)
            hits = [i for i in ids if objs[i].colour == colour and objs[i].size == "large"]
            if len(hits) == 1:
                add("shape", "shape", objs[hits[0]].shape, f, t, f, hits, colour=colour)

        done = [e for e in entries if e.end <= t]
        # Names must be unique among everything seen so far, or "the red square" could mean two objects.
        seen_names = [o.name() for o in objs if world.paths[o.id][0][0] <= t]
        if done and done[-1].obj in vis and t - done[-1].start <= RECENT_S:
            e = done[-1]
            add("appeared", "appeared.last", objs[e.obj].colour, f, t, _frame_at_or_before(e.start, cfg.fps),
                [e.obj])
        for j in range(1, len(done)):
            before, e = done[j - 1], done[j]
            x = objs[e.obj]
            if seen_names.count(x.name()) == 1 and world.paths[before.obj][-1][0] >= e.start:
                add("appeared", "appeared.before", objs[before.obj].colour, f, t,
                    _frame_at_or_before(before.start, cfg.fps), [before.obj, e.obj], colour=x.colour,
                    shape=x.shape)
        for e in done:
            x = objs[e.obj]
            if e.obj in tied and seen_names.count(x.name()) == 1:
                add("sound", "sound", tied[e.obj], f, t, _frame_at_or_before(e.start, cfg.fps), [e.obj],
                    colour=x.colour, shape=x.shape)
        last = world.last_sound(t)
        if last is not None and t - last.start <= HEARD_S:
            # refs: the object the sound announces, if any (-1: none); the evidence is the sound itself
            add("heard", "heard", last.sound, f, t, _frame_at_or_before(last.start, cfg.fps), [last.obj])
    return out


def _pick(pool: list[Question], qtype: str, rng: np.random.Generator) -> Question:
    templates = sorted({q.template for q in pool})
    template = templates[int(rng.integers(len(templates)))]
    pool = [q for q in pool if q.template == template]
    if qtype != "count":  # count is uniform per frame already (see world.py); elsewhere level the answers
        answers = sorted({q.answer for q in pool})
        answer = answers[int(rng.integers(len(answers)))]
        pool = [q for q in pool if q.answer == answer]
    return pool[int(rng.integers(len(pool)))]


def sample_questions(stream_or_world, rng: np.random.Generator | int, per_type: int = 1,
                     qtypes: tuple[str, ...] | None = None) -> list[Question]:
    """Up to `per_type` distinct questions of each qtype with balanced answers, in asking order.

    `stream_or_world` is a Stream or World; `rng` a Generator or an int seed. Types the stream cannot support
    (e.g. no object entered with a sound) are skipped, so a stream may give fewer questions than asked for.
    """
    world: World = getattr(stream_or_world, "world", stream_or_world)
    rng = np.random.default_rng(rng) if not isinstance(rng, np.random.Generator) else rng
    cands = getattr(stream_or_world, "_candidates", None) or candidates(world)
    if hasattr(stream_or_world, "world"):
        stream_or_world._candidates = cands
    out: list[Question] = []
    for qtype in qtypes or default_qtypes(world.config):
        pool = list(cands[qtype])
        for _ in range(per_type):
            if not pool:
                break
            q = _pick(pool, qtype, rng)
            out.append(q)
            pool = [p for p in pool if (p.frame, p.text) != (q.frame, q.text)]
    out.sort(key=lambda q: (q.frame, _ALL_QTYPES.index(q.qtype)))
    return out
