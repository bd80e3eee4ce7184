"""camworld: a synthetic camera world whose answers are known, for training and scoring small VLMs.

A stream is a few seconds of a fixed camera (default 96x96 RGB at 2 fps for 4 s, i.e. 8 frames) looking at
a textured, mostly static background with sensor noise, slow lighting drift and the occasional shake. Coloured
objects (square, circle, triangle, cross x red, green, blue, yellow, purple, cyan x large 24 px / small 12 px)
rest one per quadrant; they enter from the frame edge, move to a free neighbouring quadrant, stop, and leave,
at most one such event per half-second slot. Grey blobs and lines are distractors and never asked about. A
16 kHz mono soundtrack carries room noise and sound events (tone, chirp, beep, buzz, hiss, and spoken words
when `speech=True` and espeak-ng is installed); most arrivals make a sound, other slots may carry an
unrelated one.

Questions (questions.py) are timed, short, lowercase, whitespace-tokenisable, and answered by one word from
a closed set: color, count, where, exists, appeared (backward tracing), small (small-object detail) and
sound (audio-visual). Answers are balanced so that a blind model scores chance.

Seed rule: seeds below 1,000,000 (`TRAIN_SEEDS`) are for training, seeds from `EVAL_SEED_START` (1,000,000)
on for evaluation; `check_seed(seed, split)` and `generate(seed, split=...)` enforce it.

    from vlmedge.models import camworld
    s = camworld.generate(1_000_000, split="eval")
    s.frames, s.audio, s.questions[0].text, s.questions[0].answer
"""
from .config import COLOURS, COUNT_WORDS, QUADRANTS, SHAPES, SIZES, SLOT_S, SOUNDS, SPEECH_WORDS, WorldConfig
from .media import decode_media, load_arrays, save_arrays, write_media
from .questions import (
    AUDIO_VISUAL_QTYPES,
    QTYPES,
    TEMPLATES,
    TRAINING_QTYPES,
    VISUAL_QTYPES,
    Question,
    answer_vocabulary,
    candidates,
    chance_levels,
    choices,
    default_qtypes,
    sample_questions,
    vocabulary,
)
from .seeds import EVAL_SEED_START, TRAIN_SEEDS, check_seed, eval_seeds, split_of, train_seeds
from .stream import Stream, generate
from .world import Event, World, WorldObject

__all__ = [
    "AUDIO_VISUAL_QTYPES", "COLOURS", "COUNT_WORDS", "EVAL_SEED_START", "Event", "QTYPES", "QUADRANTS",
    "Question", "SHAPES", "SIZES", "SLOT_S", "SOUNDS", "SPEECH_WORDS", "Stream", "TEMPLATES", "TRAINING_QTYPES",
    "TRAIN_SEEDS", "VISUAL_QTYPES", "World", "WorldConfig", "WorldObject", "answer_vocabulary", "candidates",
    "chance_levels", "check_seed", "choices", "decode_media", "default_qtypes", "eval_seeds", "generate",
    "load_arrays", "sample_questions", "save_arrays", "split_of", "train_seeds", "vocabulary", "write_media",
]
