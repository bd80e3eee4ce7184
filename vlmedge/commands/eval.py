"""`vlmedge eval`: accuracy per question type on camworld evaluation seeds, through the streaming session."""
from __future__ import annotations

import sys

from vlmedge.commands.common import add_model_args, exported_method, load_model


def register(sub) -> None:
    p = sub.add_parser("eval", help="accuracy of a model + method on camworld evaluation streams",
                       description="Plays camworld evaluation streams (seeds >= 1,000,000) into a streaming session "
                                   "and scores the answers per question type, with chance levels, tokens kept per "
                                   "frame, per-stage time and peak memory.")
    add_model_args(p)
    p.add_argument("--method", help="compression method spec, e.g. uniform:ratio=0.25 (default: none; with --engine "
                                    "the method the export was made for)")
    p.add_argument("--seeds", default="1000000+200", help="START:END or START+COUNT (default %(default)s)")
    p.add_argument("--memory-budget", help="bound each stream by a planned memory budget, e.g. 6GiB")
    p.add_argument("--max-stream-tokens", type=int, help="bound each stream's KV to this many tokens (token store)")
    p.add_argument("--eviction", choices=["evict", "offload"], default="evict",
                   help="what a bounded stream does with blocks that leave (default %(default)s)")
    p.add_argument("--offload-tokens", type=int, default=0, help="offload policy: host store size in tokens")
    p.add_argument("--offload-precision", choices=["full", "int8"], default="full",
                   help="offload policy: offloaded blocks as the cache holds them, or int8 (a quarter of fp32's "
                        "bytes) (default %(default)s)")
    p.add_argument("--retrieve-tokens", type=int, default=0, help="offload policy: tokens retrieved per question")
    p.add_argument("--retrieval", choices=["append", "focus"], default="append",
                   help="offload policy: retrieved blocks join the cache (append) or a question sees only the prompt, "
                        "the best blocks and the latest frames (focus) (default %(default)s)")
    p.add_argument("--standing-prompt", help="query-conditioned methods: the query frames are committed with")
    p.add_argument("--requery-frames", type=int, default=8,
                   help="query-conditioned methods: recent frames re-selected per question (default %(default)s)")
    p.add_argument("--json", metavar="FILE", help="also write the report as JSON ('-' for stdout)")
    p.add_argument("--answers", action="store_true", help="include every question and answer in the JSON")
    p.set_defaults(func=run)


def run(args) -> int:
    from vlmedge.runtime.evaluation import evaluate, parse_seed_range

    seeds = parse_seed_range(args.seeds)
    if args.method is None:
        args.method = exported_method(args.engine) if args.engine else "none"
    adapter, path = load_model(args)

    def progress(done, total):
        if done == total or done % max(1, total // 10) == 0:
            print(f"[eval] {done}/{total} streams", file=sys.stderr, flush=True)

    report = evaluate(adapter, args.method, seeds, name=path, progress=progress, memory_budget=args.memory_budget,
                      max_stream_tokens=args.max_stream_tokens, standing_prompt=args.standing_prompt,
                      requery_frames=args.requery_frames, eviction=args.eviction,
                      offload_tokens=args.offload_tokens, retrieve_tokens=args.retrieve_tokens,
                      retrieval=args.retrieval, offload_precision=args.offload_precision)
    print(report.table())
    if args.json:
        text = report.to_json(with_answers=args.answers)
        if args.json == "-":
            print(text)
        else:
            with open(args.json, "w") as f:
                f.write(text + "\n")
    return 0
