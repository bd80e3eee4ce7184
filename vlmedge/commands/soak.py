"""`vlmedge soak`: a long stream inside a memory budget, per eviction policy (a benchmark, not a test)."""
from __future__ import annotations

import json
import sys

from vlmedge.commands.common import add_model_args, load_model


def register(sub) -> None:
    p = sub.add_parser("soak", help="a long camera stream inside a memory budget, per eviction policy",
                       description="Plays camworld clips back to back as one long stream (questions throughout) "
                                   "inside a memory budget and reports tracked and resident memory over time against "
                                   "the budget, throughput, evictions/retrievals and accuracy (backward-tracing "
                                   "questions split by whether their evidence was still cached), once per policy.")
    add_model_args(p)
    p.add_argument("--method", default="uniform:ratio=0.25", help="compression method (default %(default)s)")
    p.add_argument("--frames", type=int, default=7200, help="frames to play (default 7200: an hour at 2 fps)")
    p.add_argument("--memory-budget", help="e.g. 64MiB (default: --max-stream-tokens)")
    p.add_argument("--max-stream-tokens", type=int, default=2048, help="stream KV capacity when no budget is given")
    p.add_argument("--policies", default="evict,offload,focus",
                   help="comma-separated: evict, offload (retrieved blocks join the cache for a question), focus "
                        "(offload; a question sees the prompt, the best blocks and the latest frames, laid end to end), "
                        "focus-original (focus with every block at its original positions) (default %(default)s)")
    p.add_argument("--offload-tokens", type=int, default=8192,
                   help="tokens the offload store holds (its bytes count against the budget; default %(default)s)")
    p.add_argument("--offload-precision", choices=["full", "int8"], default="full",
                   help="offloaded blocks as the cache holds them, or int8 with a scale per row: about a quarter of "
                        "fp32's bytes, so the same budget holds several times the history (default %(default)s)")
    p.add_argument("--retrieve-tokens", type=int, default=512)
    p.add_argument("--retrieval-score", choices=["middle-layer", "all-heads", "learned"], default="middle-layer",
                   help="how stored blocks are scored for a question: ReKV's mean over the middle layer's heads, "
                        "every head of every layer, each standardised over the candidates, or the score trained for "
                        "the model (`vlmedge train-retrieval`, read from <model>/retrieval/) (default %(default)s)")
    p.add_argument("--retrieval-positions", choices=["in-place", "adjacent"], default="in-place",
                   help="score blocks where their keys are, or each as if it ended right before the question, so "
                        "that RoPE distance does not decide (default %(default)s)")
    p.add_argument("--retrieval-context", type=int, default=0, metavar="BLOCKS",
                   help="each retrieved block brings this many blocks from just before it: what led up to the "
                        "moment a question names (default %(default)s)")
    p.add_argument("--recall-after", type=int, default=8, metavar="CLIPS",
                   help="ask each clip's 'what color appeared just before the ...' again this many clips later, "
                        "when a small cache has dropped it (0: off; default %(default)s)")
    p.add_argument("--seed-start", type=int, default=1_000_000,
                   help="first camworld evaluation seed; clip k of the stream is seed + k (default %(default)s)")
    p.add_argument("--json", metavar="FILE", help="write the reports as JSON")
    p.set_defaults(func=run)


def run(args) -> int:
    from vlmedge.errors import InputError
    from vlmedge.runtime.planner import human
    from vlmedge.runtime.soak import soak

    if args.frames < 1:
        raise InputError("--frames must be at least 1")
    if args.retrieval_context < 0:
        raise InputError("--retrieval-context must be 0 or more blocks")
    from vlmedge.models.camworld import check_seed

    check_seed(args.seed_start, "eval")  # a stream the reference model trained on would flatter it
    adapter, name = load_model(args)
    reports = []
    for policy in [p.strip() for p in args.policies.split(",") if p.strip()]:
        def progress(done, total, m, rss):
            print(f"[soak] {policy}: {done}/{total} frames, tracked {human(m['total'])}, RSS {human(rss)}, "
                  f"KV {human(m['kv'])}", file=sys.stderr, flush=True)

        r = soak(adapter, args.method, args.frames, policy=policy,
                 memory_budget=args.memory_budget, max_stream_tokens=None if args.memory_budget else args.max_stream_tokens,
                 offload_tokens=args.offload_tokens if policy != "evict" else 0,
                 retrieve_tokens=args.retrieve_tokens if policy != "evict" else 0,
                 recall_after=args.recall_after, offload_precision=args.offload_precision,
                 retrieval_score=args.retrieval_score, retrieval_positions=args.retrieval_positions,
                 retrieval_context=args.retrieval_context, seed_start=args.seed_start, progress=progress)
        reports.append(r)
    print(f"{name}, method {args.method}, {args.frames} frames")
    print("| policy | frames/s | peak tracked | peak RSS | budget | RSS growth 10→60 min | accuracy | backward "
          "(cached) | backward (evicted) | recall (all) | recall (cached) | recall (evicted) | recall (given evidence) "
          "| evicted | retrieved |")
    print("|" + "---|" * 15)
    for r in reports:
        g = r.growth(600, 3600)
        acc = r.accuracy
        fmt = lambda v: "–" if v is None else f"{v:.3f}"  # noqa: E731
        extras = [] if r.policy in ("evict", "unbounded") else [
            v for v, default in ((f"{r.offload_precision} store", "full store"), (r.retrieval_score, "middle-layer"),
                                 (r.retrieval_positions, "in-place"),
                                 (f"context {r.retrieval_context}", "context 0")) if v != default]
        label = r.policy + (f" ({', '.join(extras)})" if extras else "")
        print(f"| {label} | {r.fps:.1f} | {human(r.peak_tracked_bytes)} | {human(r.peak_rss_bytes)} | "
              f"{human(r.budget_bytes) if r.budget_bytes else '–'} | {'–' if g is None else f'{g:+.1%}'} | "
              f"{fmt(acc['overall'])} | {fmt(acc['backward_in_cache'])} ({r.counts['backward_in_cache']}) | "
              f"{fmt(acc['backward_evicted'])} ({r.counts['backward_evicted']}) | "
              f"{fmt(acc['recall'])} ({r.counts['recall']}) | {fmt(acc['recall_in_cache'])} "
              f"({r.counts['recall_in_cache']}) | {fmt(acc['recall_evicted'])} ({r.counts['recall_evicted']}) | "
              f"{fmt(acc['recall_given_evidence'])} ({r.counts['recall_given_evidence']}) | "
              f"{r.store.get('evicted_blocks', 0)} | {r.store.get('retrieved_blocks', 0)} |")
    if args.json:
        with open(args.json, "w") as f:
            json.dump([r.to_dict() for r in reports], f, indent=2)
    return 0
