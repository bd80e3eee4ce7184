"""The seed rule: training may only ever see seeds below 1,000,000; evaluation uses seeds from 1,000,000 up.

A reference model that saw an evaluation stream would report accuracy it does not have, so the split is a
property of the seed itself, checked wherever a seed enters a training or evaluation loop.
"""
from __future__ import annotations

from vlmedge.errors import InputError

EVAL_SEED_START = 1_000_000
TRAIN_SEEDS = range(0, EVAL_SEED_START)
SPLITS = ("train", "eval")


def split_of(seed: int) -> str:
    check_seed(seed)
    return "train" if seed < EVAL_SEED_START else "eval"


def check_seed(seed: int, split: str | None = None) -> int:
    """Return `seed` if it is a valid seed (for `split`, when given); raise InputError otherwise."""
    if isinstance(seed, bool) or not isinstance(seed, int) and not hasattr(seed, "__index__"):
        raise InputError(f"camworld seed must be an integer, got {seed!r}")
    seed = int(seed)
    if seed < 0:
        raise InputError(f"camworld seed must be >= 0, got {seed}")
    if split is None:
        return seed
    if split not in SPLITS:
        raise InputError(f"camworld split must be one of {SPLITS}, got {split!r}")
    if split == "train" and seed >= EVAL_SEED_START:
        raise InputError(f"seed {seed} is an evaluation seed; training seeds are below {EVAL_SEED_START}")
    if split == "eval" and seed < EVAL_SEED_START:
        raise InputError(f"seed {seed} is a training seed; evaluation seeds start at {EVAL_SEED_START}")
    return seed


def train_seeds(n: int, start: int = 0) -> range:
    """The n training seeds from `start` on (raises if they would reach the evaluation range)."""
    if start < 0 or start + n > EVAL_SEED_START:
        raise InputError(f"training seeds must lie in [0, {EVAL_SEED_START}), got [{start}, {start + n})")
    return range(start, start + n)


def eval_seeds(n: int, offset: int = 0) -> range:
    """The n evaluation seeds starting `offset` past EVAL_SEED_START."""
    if offset < 0 or n < 0:
        raise InputError("eval_seeds needs n >= 0 and offset >= 0")
    return range(EVAL_SEED_START + offset, EVAL_SEED_START + offset + n)
