"""`vlmedge demo`: a camworld clip through the GStreamer pipeline (`vlmedge run`) with the reference model and
STC, answers printed live next to the ground truth, with per-frame token counts and timings."""
from __future__ import annotations

import argparse

from vlmedge.commands import run as run_command
from vlmedge.commands.common import add_model_args


def register(sub) -> None:
    p = sub.add_parser("demo", help="a camworld clip through the vlmedge GStreamer element, answers printed live",
                       description="Writes a synthetic camera clip (camworld) to a video file, plays it through "
                                   "filesrc ! decodebin ! vlmedge (the same pipeline `vlmedge run` builds), and "
                                   "prints tokens kept and timings per frame and each question's answer next to "
                                   "the ground truth, then throughput and latency.")
    add_model_args(p)
    p.add_argument("--method", help="compression method spec (default: stc; with --engine the method it was "
                                     "exported for)")
    p.add_argument("--seed", type=int, default=1_000_000, help="camworld evaluation seed (>= 1000000)")
    p.set_defaults(func=run)


def run(args) -> int:
    from vlmedge.commands.common import model_spec
    from vlmedge.errors import ModelFileError
    from vlmedge.runtime.model_source import family_of

    try:
        family_of(model_spec(args)[0]) if (args.model or args.engine) else _reference(args.family)
    except ModelFileError as err:
        if args.model or args.engine:
            raise
        print(f"vlmedge demo: {err}; using a tiny random model instead (its answers are noise)")
        args.tiny = True
    sub = argparse.ArgumentParser()
    run_command.register(sub.add_subparsers())
    full = sub.parse_args(["run"])  # run's defaults, then the demo's choices
    vars(full).update(model=args.model, engine=args.engine, tiny=args.tiny, family=args.family, method=args.method,
                      source=f"camworld:{args.seed}", frames=True, stats=True, max_new_tokens=4)
    return run_command.run(full)


def _reference(family: str) -> None:
    from vlmedge.models.reference_models import reference_dir

    reference_dir(family)  # raises ModelFileError when it is not bundled
