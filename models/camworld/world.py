"""What happens in a stream, independent of how it is drawn or sampled: objects, their paths, and events.

The scene keeps at most one object per quadrant, so objects never touch: an object enters its quadrant from
the frame edge, may move to a free neighbouring quadrant (the path stays inside the two quadrants), rests,
and may leave by the edge. The number of settled objects follows a lazy symmetric random walk on
[min_objects, max_objects] started uniformly; that walk's transition matrix is doubly stochastic, so the
object count at any moment is uniform and "how many" questions need no re-weighting to be balanced.
Everything else (colours, shapes, quadrants, sounds) is drawn uniformly and treated symmetrically, so their
answer distributions are uniform by symmetry.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, field

import numpy as np

from .config import COLOURS, QUADRANTS, SHAPES, SLOT_S, SOUNDS, SPEECH_WORDS, WorldConfig

# Quadrants that share an edge: a move between them never crosses a third quadrant.
NEIGHBOURS = {
    "topleft": ("topright", "bottomleft"),
    "topright": ("topleft", "bottomright"),
    "bottomleft": ("topleft", "bottomright"),
    "bottomright": ("topright", "bottomleft"),
}
# The frame edges a quadrant touches: where its objects come from and go to.
OUTER_EDGES = {
    "topleft": ("left", "top"),
    "topright": ("right", "top"),
    "bottomleft": ("left", "bottom"),
    "bottomright": ("right", "bottom"),
}
SOUND_S = (0.3, 0.38)  # synthetic sounds, spoken words: both end inside their slot
MARGIN_PX = 3  # clearance from the quadrant's borders: camera shake (<= 2 px) never pushes an object across


@dataclass(frozen=True)
class WorldObject:
    id: int
    colour: str
    shape: str
    size: str          # "large" or "small"
    shade: float       # per-object brightness factor, so a colour is a range and not one RGB triple

    def name(self) -> str:
        return f"{self.colour} {self.shape}"


@dataclass(frozen=True)
class Event:
    """A timed fact. Visual: present (time 0, dst=quadrant: in view from the start), enter (src=edge,
    dst=quadrant), move (src, dst quadrants), leave (src=quadrant, dst=edge). Sound: `sound` is the answer
    word, `obj` the entering object it announces, or -1 for a sound that belongs to no arrival."""

    kind: str
    start: float
    end: float
    obj: int = -1
    src: str = ""
    dst: str = ""
    sound: str = ""


@dataclass(frozen=True)
class Distractor:
    kind: str                      # "blob" or "line"
    x: float
    y: float
    a: float                       # blob radii / line half-length
    b: float                       # blob second radius / line thickness
    angle: float
    grey: int
    vx: float = 0.0                # px per second; most distractors are static
    vy: float = 0.0


@dataclass
class World:
    config: WorldConfig
    objects: list[WorldObject]
    events: list[Event]
    # Per object: (time, x, y) keyframes of its centre, linear between them; drawn from the first keyframe to
    # the last, never outside that span.
    paths: dict[int, list[tuple[float, float, float]]]
    distractors: list[Distractor] = field(default_factory=list)
    gain: tuple[float, float, float, float] = (0.0, 1.0, 0.0, 0.0)  # amp, period_s, phase, tint

    # --- semantic state (what questions are about) ---------------------------------------------------------
    def visual_events(self) -> list[Event]:
        """Transitions only (enter, move, leave): what makes a moment unsettled."""
        return [e for e in self.events if e.kind in ("enter", "move", "leave")]

    def sound_events(self) -> list[Event]:
        return [e for e in self.events if e.kind == "sound"]

    def last_sound(self, t: float) -> Event | None:
        """The latest-starting sound that has ended by time t (what "what sound played last" asks about)."""
        ended = [e for e in self.sound_events() if e.end <= t]
        return max(ended, key=lambda e: e.start) if ended else None

    def entries(self) -> list[Event]:
        return [e for e in self.events if e.kind == "enter"]

    def settled(self, t: float) -> bool:
        """No object is part-way through entering, moving or leaving at time t."""
        return not any(e.start <= t <= e.end for e in self.visual_events())

    def quadrants_at(self, t: float) -> dict[int, str]:
        """Object id -> quadrant for every object resting in view at time t (meaningful when settled(t))."""
        where: dict[int, str] = {}
        for e in self.events:
            if e.kind in ("present", "enter", "move") and e.end <= t:
                where[e.obj] = e.dst
            elif e.kind == "leave" and e.end <= t:
                where.pop(e.obj, None)
        return where

    # --- geometry (what the renderer draws) ----------------------------------------------------------------
    def centres(self, t: float) -> list[tuple[int, float, float]]:
        out = []
        for oid, path in self.paths.items():
            if not path[0][0] <= t <= path[-1][0]:
                continue
            ts = [p[0] for p in path]
            out.append((oid, float(np.interp(t, ts, [p[1] for p in path])),
                        float(np.interp(t, ts, [p[2] for p in path]))))
        return out

    def lighting(self, t: float) -> np.ndarray:
        """Per-channel gain at time t: a slow swell plus a faint warm/cool tint that follows it."""
        amp, period, phase, tint = self.gain
        s = np.sin(2 * np.pi * t / period + phase)
        return np.array([1 + amp * s + tint * s, 1 + amp * s, 1 + amp * s - tint * s], np.float32)

    def to_dict(self) -> dict:
        return {
            "objects": [asdict(o) for o in self.objects],
            "events": [asdict(e) for e in self.events],
            "paths": {str(k): [list(p) for p in v] for k, v in self.paths.items()},
            "distractors": [asdict(d) for d in self.distractors],
            "gain": list(self.gain),
        }

    @classmethod
    def from_dict(cls, d: dict, config: WorldConfig) -> "World":
        return cls(
            config=config,
            objects=[WorldObject(**o) for o in d["objects"]],
            events=[Event(**e) for e in d["events"]],
            paths={int(k): [tuple(p) for p in v] for k, v in d["paths"].items()},
            distractors=[Distractor(**x) for x in d["distractors"]],
            gain=tuple(d["gain"]),
        )


def quadrant_box(q: str, cfg: WorldConfig) -> tuple[float, float, float, float]:
    col, row = (1 if q.endswith("right") else 0), (1 if q.startswith("bottom") else 0)
    hw, hh = cfg.width / 2, cfg.height / 2
    return col * hw, row * hh, (col + 1) * hw, (row + 1) * hh


def quadrant_of(x: float, y: float, cfg: WorldConfig) -> str:
    row = "bottom" if y >= cfg.height / 2 else "top"
    col = "right" if x >= cfg.width / 2 else "left"
    return row + col


def side_px(obj: WorldObject, cfg: WorldConfig) -> int:
    return cfg.large_px if obj.size == "large" else cfg.small_px


def num_slots(cfg: WorldConfig) -> int:
    # The last slot stays quiet so the final frames show a settled scene, whatever the frame rate.
    return max(1, int(np.floor(cfg.duration_s / SLOT_S + 1e-9)) - 1)


def build_world(seed: int, cfg: WorldConfig) -> World:
    """The world of `seed`. Uses its own random stream, so frame rate, rendering and questions never change it."""
    rng = np.random.default_rng([seed, 0])
    objects: list[WorldObject] = []
    paths: dict[int, list[tuple[float, float, float]]] = {}
    events: list[Event] = []
    sounds = SOUNDS + (SPEECH_WORDS if cfg.speech else ())

    def new_object() -> WorldObject:
        o = WorldObject(
            id=len(objects),
            colour=str(rng.choice(list(COLOURS))),
            shape=str(rng.choice(SHAPES)),
            size="small" if rng.random() < cfg.p_small else "large",
            shade=float(rng.uniform(0.88, 1.05)),
        )
        objects.append(o)
        return o

    def home(o: WorldObject, q: str) -> tuple[float, float]:
        x0, y0, x1, y1 = quadrant_box(q, cfg)
        half = side_px(o, cfg) / 2 + MARGIN_PX
        return float(rng.uniform(x0 + half, x1 - half)), float(rng.uniform(y0 + half, y1 - half))

    def offstage(o: WorldObject, edge: str, x: float, y: float) -> tuple[float, float]:
        half = side_px(o, cfg) / 2 + 1
        return {"left": (-half, y), "right": (cfg.width + half, y),
                "top": (x, -half), "bottom": (x, cfg.height + half)}[edge]

    occupant: dict[str, int] = {}
    pos: dict[int, tuple[float, float]] = {}
    k0 = int(rng.integers(cfg.min_objects, cfg.max_objects + 1))
    for q in rng.permutation(QUADRANTS)[:k0]:
        o = new_object()
        occupant[str(q)] = o.id
        pos[o.id] = home(o, str(q))
        paths[o.id] = [(0.0, *pos[o.id])]
        events.append(Event("present", 0.0, 0.0, o.id, "", str(q)))

    for k in range(num_slots(cfg)):
        slot0 = k * SLOT_S
        start = slot0 + float(rng.uniform(0.04, 0.1))
        end = start + float(rng.uniform(0.24, 0.32))
        kind = "none"
        if rng.random() < cfg.p_event:
            if rng.random() < cfg.p_move:
                kind = "move"
            else:
                kind = "enter" if rng.random() < 0.5 else "leave"
                # The walk's reflection: a step that would leave the count range becomes a move (count kept).
                if kind == "enter" and len(occupant) >= cfg.max_objects:
                    kind = "move"
                if kind == "leave" and len(occupant) <= cfg.min_objects:
                    kind = "move"
        entered = None
        if kind == "enter":
            q = str(rng.choice(sorted(set(QUADRANTS) - set(occupant))))
            o = new_object()
            edge = str(rng.choice(OUTER_EDGES[q]))
            hx, hy = home(o, q)
            paths[o.id] = [(start, *offstage(o, edge, hx, hy)), (end, hx, hy)]
            occupant[q], pos[o.id] = o.id, (hx, hy)
            events.append(Event("enter", start, end, o.id, edge, q))
            entered = o.id
        elif kind == "leave":
            q = str(rng.choice(sorted(occupant)))
            oid = occupant.pop(q)
            o = objects[oid]
            edge = str(rng.choice(OUTER_EDGES[q]))
            paths[oid] += [(start, *pos[oid]), (end, *offstage(o, edge, *pos[oid]))]
            events.append(Event("leave", start, end, oid, q, edge))
        elif kind == "move":
            options = sorted((q, n) for q in occupant for n in NEIGHBOURS[q] if n not in occupant)
            if options:  # with all four quadrants full nothing can move: the slot stays quiet
                q, n = options[int(rng.integers(len(options)))]
                oid = occupant.pop(q)
                nx, ny = home(objects[oid], n)
                paths[oid] += [(start, *pos[oid]), (end, nx, ny)]
                occupant[n], pos[oid] = oid, (nx, ny)
                events.append(Event("move", start, end, oid, q, n))

        # Sounds: an entering object usually announces itself; other slots may carry an unrelated sound, so a
        # model must tie the sound to the appearance, not just report whichever sound it heard.
        if entered is not None and rng.random() < cfg.p_tied_sound:
            word = str(rng.choice(sounds))
            events.append(Event("sound", start, start + SOUND_S[word in SPEECH_WORDS], entered, sound=word))
        elif entered is None and rng.random() < cfg.p_free_sound:
            s0, word = slot0 + float(rng.uniform(0.04, 0.1)), str(rng.choice(sounds))
            events.append(Event("sound", s0, s0 + SOUND_S[word in SPEECH_WORDS], -1, sound=word))

    t_end = cfg.duration_s
    for oid, path in paths.items():
        if path[-1][0] < t_end and not any(e.kind == "leave" and e.obj == oid for e in events):
            path.append((t_end, *pos[oid]))

    distractors = []
    if cfg.distractors:
        for _ in range(int(rng.integers(1, 4))):
            # Elongated, so that a grey blob is never a grey circle: shapes are always coloured.
            a = float(rng.uniform(4, 9))
            distractors.append(Distractor(
                "blob", float(rng.uniform(0, cfg.width)), float(rng.uniform(0, cfg.height)),
                a, a * float(rng.uniform(0.3, 0.6)), float(rng.uniform(0, np.pi)), int(rng.integers(60, 200))))
        for _ in range(int(rng.integers(0, 3))):
            moving = rng.random() < 0.3
            distractors.append(Distractor(
                "line", float(rng.uniform(0, cfg.width)), float(rng.uniform(0, cfg.height)),
                float(rng.uniform(8, 30)), float(rng.uniform(1, 2.5)), float(rng.uniform(0, np.pi)),
                int(rng.integers(50, 210)),
                float(rng.uniform(-6, 6)) if moving else 0.0, float(rng.uniform(-6, 6)) if moving else 0.0))
    gain = (float(rng.uniform(0.05, 0.12)) if cfg.drift else 0.0, float(rng.uniform(6, 14)),
            float(rng.uniform(0, 2 * np.pi)), float(rng.uniform(-0.03, 0.03)) if cfg.drift else 0.0)
    events.sort(key=lambda e: (e.start, e.kind, e.obj))
    return World(cfg, objects, events, paths, distractors, gain)
