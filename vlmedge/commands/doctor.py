"""`vlmedge doctor`: what this machine can run, one line per capability, and what to install for the rest."""
from __future__ import annotations

import argparse
import json

from vlmedge import __version__
from vlmedge.errors import UnknownNameError


def register(sub: argparse._SubParsersAction) -> None:
    from vlmedge.doctor import CHECKS

    p = sub.add_parser(
        "doctor",
        help="report which backends, devices and tools this machine has",
        description="Report, one line per capability, whether it is available here (yes/no), its version, and "
        "what to install when it is missing. Exits 0 (it is a report) unless --require names a missing one.",
    )
    p.add_argument("--json", action="store_true", help="print the records as JSON instead of text")
    p.add_argument(
        "--require",
        metavar="NAMES",
        default="",
        help="comma-separated capabilities that must be present, else exit 1 (one of: " + ", ".join(CHECKS) + ")",
    )
    p.set_defaults(func=run)


def _parse_required(text: str) -> list[str]:
    from vlmedge.doctor import CHECKS

    names = [n.strip() for n in text.split(",") if n.strip()]
    unknown = [n for n in names if n not in CHECKS]
    if unknown:
        raise UnknownNameError(
            f"unknown capability {', '.join(map(repr, unknown))} in --require; expected some of: {', '.join(CHECKS)}"
        )
    return names


def run(args: argparse.Namespace) -> int:
    from vlmedge.doctor import format_report, run_checks

    required = _parse_required(args.require)  # before the (slow) checks, so a typo fails fast
    records = run_checks()
    by_name = {r.name: r for r in records}
    missing = [n for n in required if not by_name[n].ok]
    if args.json:
        print(json.dumps({
            "vlmedge": __version__,
            "checks": [r.to_dict() for r in records],
            "required": required,
            "missing_required": missing,
        }, indent=2))
    else:
        print(f"vlmedge {__version__} doctor: what this machine can run")
        print(format_report(records))
        if required:
            if missing:
                print(f"required but missing: {', '.join(missing)}")
            else:
                print(f"all required present: {', '.join(required)}")
    return 1 if missing else 0
