"""The `vlmedge` command. Each subcommand lives in `vlmedge/commands/<name>.py` and exposes `register(sub)`."""
from __future__ import annotations

import argparse
import importlib
import sys

from vlmedge import __version__
from vlmedge.errors import VlmedgeError

# Order is the order `vlmedge --help` lists them in.
COMMANDS = ["demo", "run", "eval", "bench", "plan", "soak", "serve", "export", "build-engines", "calibrate", "doctor", "train-reference", "train-vip", "train-retrieval", "jetson"]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="vlmedge",
        description="Vision-language models on edge devices, kept fast by visual-token compression.",
    )
    parser.add_argument("--version", action="version", version=f"vlmedge {__version__}")
    parser.add_argument("--debug", action="store_true", help="show full tracebacks for user errors")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in COMMANDS:
        importlib.import_module(f"vlmedge.commands.{name.replace('-', '_')}").register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    try:
        return int(args.func(args) or 0)
    except VlmedgeError as err:
        if args.debug:
            raise
        print(f"vlmedge: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("vlmedge: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
