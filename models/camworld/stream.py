"""One generated stream: frames, audio, the world's ground truth, and the questions asked about it."""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from .audio import render_audio
from .config import WorldConfig
from .questions import Question, default_qtypes, sample_questions
from .render import render
from .seeds import check_seed
from .world import Event, World, WorldObject, build_world


@dataclass
class Stream:
    seed: int
    config: WorldConfig
    world: World
    frames: np.ndarray          # uint8 [T, H, W, 3]
    audio: np.ndarray           # float32 [S], mono, in [-1, 1]; empty when audio is off
    boxes: np.ndarray           # int16 [T, n_objects, 4] drawn (x0, y0, x1, y1), -1 when out of view
    questions: list[Question] = field(default_factory=list)
    _candidates: dict | None = field(default=None, repr=False)

    @property
    def fps(self) -> float:
        return self.config.fps

    @property
    def sample_rate(self) -> int:
        return self.config.sample_rate

    @property
    def events(self) -> list[Event]:
        return self.world.events

    @property
    def objects(self) -> list[WorldObject]:
        return self.world.objects

    @property
    def num_frames(self) -> int:
        return len(self.frames)

    def frame_time(self, i: int) -> float:
        return self.config.frame_time(i)

    def frame_at(self, t: float) -> int:
        """The last frame shown at or before time t."""
        return int(np.clip(np.floor(t * self.fps + 1e-9), 0, self.num_frames - 1))

    def evidence(self, q: Question) -> tuple[np.ndarray, np.ndarray]:
        """The frames (evidence_start..frame) and the audio over the same span that answer `q`: the shortest
        clip a model needs, e.g. to train on a crop instead of the whole stream."""
        a0 = int(round(self.frame_time(q.evidence_start) * self.sample_rate))
        a1 = int(round(self.frame_time(q.frame + 1) * self.sample_rate))
        return self.frames[q.evidence_start:q.frame + 1], self.audio[a0:a1]

    def audio_until(self, i: int) -> np.ndarray:
        """The audio heard up to the end of frame i's interval (what a streaming model has at frame i)."""
        return self.audio[: int(round(self.frame_time(i + 1) * self.sample_rate))]


def generate(seed: int, config: WorldConfig | None = None, split: str | None = None) -> Stream:
    """The stream of `seed`. Pass split="train" or "eval" to have the seed rule checked (see seeds.py)."""
    seed = check_seed(seed, split)
    cfg = config or WorldConfig()
    world = build_world(seed, cfg)
    frames, boxes = render(world, seed)
    audio = render_audio(world, seed) if cfg.audio else np.zeros(0, np.float32)
    stream = Stream(seed, cfg, world, frames, audio, boxes)
    stream.questions = sample_questions(stream, np.random.default_rng([seed, 3]), cfg.questions_per_type,
                                        default_qtypes(cfg))
    return stream
