"""The closed sets the world is built from, and the knobs of one stream.

Every answer the world can ask for is one word from the sets below, so a word-level tokenizer built from
`vocabulary()` (questions.py) covers all of it and every answer is a single token.
"""
from __future__ import annotations

from dataclasses import dataclass

# Saturated and far apart in RGB so that lighting drift (about ±12%) and sensor noise never move one colour
# towards another; the background and the distractors are desaturated, so "coloured" means "an object".
COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (225, 35, 35),
    "green": (35, 185, 50),
    "blue": (40, 70, 235),
    "yellow": (240, 215, 30),
    "purple": (165, 45, 205),
    "cyan": (30, 215, 225),
}
SHAPES: tuple[str, ...] = ("square", "circle", "triangle", "cross")
SIZES: tuple[str, ...] = ("large", "small")
# One word per quadrant so that the answer is a single token.
QUADRANTS: tuple[str, ...] = ("topleft", "topright", "bottomleft", "bottomright")
COUNT_WORDS: tuple[str, ...] = ("one", "two", "three", "four")
# Synthesised sound classes; each is its own answer word.
SOUNDS: tuple[str, ...] = ("tone", "chirp", "beep", "buzz", "hiss")
# Spoken by espeak-ng when speech is enabled (and installed); the answer is the word itself. Chosen to share
# no word with the rest of the vocabulary, so hearing one never reads as a colour or a shape.
SPEECH_WORDS: tuple[str, ...] = ("hello", "stop", "alpha", "bravo")

# Time is cut into slots; at most one visual event (enter, leave, move) and one sound happen inside a slot,
# and both finish before the slot ends. At the default 2 fps every frame then falls between events and
# shows a settled scene; at higher rates some frames catch an object mid-way (and are never asked about).
SLOT_S = 0.5


@dataclass(frozen=True)
class WorldConfig:
    """Knobs of one stream. The same seed with a different fps samples the same world at another rate."""

    height: int = 96
    width: int = 96
    fps: float = 2.0
    duration_s: float = 4.0          # 8 frames at the default 2 fps
    sample_rate: int = 16000
    min_objects: int = 1             # objects visible at any settled moment (at most 4: one per quadrant)
    max_objects: int = 4
    large_px: int = 24               # side of a large object's bounding box (3x3 patches of 8 px)
    small_px: int = 12               # a small one spans only 2x2 patches: its detail lives in a few tokens
    p_small: float = 0.35
    p_event: float = 0.85            # chance a slot holds an enter / leave / move
    p_move: float = 0.3              # of those, share that are moves (the rest enter or leave)
    p_tied_sound: float = 0.85       # an entering object makes a sound
    p_free_sound: float = 0.45       # a slot without an entry gets an unrelated sound
    noise_std: float = 5.0           # sensor noise, in 8-bit levels
    shake: bool = True               # occasional 1-2 px whole-frame jumps
    drift: bool = True               # slow global lighting change
    distractors: bool = True         # grey blobs and lines, never asked about
    audio: bool = True
    speech: bool = False             # espeak-ng words as extra sound events; off: slow and not bit-stable
    qtypes: tuple[str, ...] | None = None   # questions attached by generate(); None: all that the stream supports
    questions_per_type: int = 1

    def __post_init__(self):
        from vlmedge.errors import InputError

        if self.height < 48 or self.width < 48:
            raise InputError(f"camworld frames must be at least 48x48, got {self.height}x{self.width}")
        if self.fps <= 0 or self.duration_s < 2 * SLOT_S:
            raise InputError(f"camworld needs fps > 0 and duration_s >= {2 * SLOT_S}")
        if not 1 <= self.min_objects <= self.max_objects <= 4:
            raise InputError("camworld needs 1 <= min_objects <= max_objects <= 4 (one object per quadrant)")
        if not 4 <= self.small_px < self.large_px <= min(self.height, self.width) // 2 - 8:
            raise InputError("camworld needs 4 <= small_px < large_px <= min(height, width) / 2 - 8")

    @property
    def num_frames(self) -> int:
        return max(1, int(round(self.duration_s * self.fps)))

    @property
    def num_samples(self) -> int:
        return int(round(self.duration_s * self.sample_rate))

    def frame_time(self, i: int) -> float:
        return i / self.fps
