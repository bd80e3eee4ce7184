"""`vlmedge plan`: how many frames a memory budget holds for a model and method."""
from __future__ import annotations

import json

from vlmedge.commands.common import add_model_args, load_model


def register(sub) -> None:
    p = sub.add_parser("plan", help="memory plan: KV capacity and frames held within a budget",
                       description="Counts the model's weights, measures one frame's workspace and tokens kept by "
                                   "the method, and prints what a memory budget leaves for the KV cache and how "
                                   "many frames the stream can hold. A budget too small for weights + workspace + "
                                   "one frame is refused with the smallest one that works.")
    add_model_args(p)
    p.add_argument("--method", default="none", help="compression method spec (default %(default)s)")
    p.add_argument("--memory-budget", help="e.g. 6GiB, 512MiB (default: the --target profile's budget)")
    p.add_argument("--target", help="a Jetson profile or target (orin-nano, orin-nx-16gb, ...) for its default budget")
    p.add_argument("--kv-precision", choices=["fp32", "fp16", "bf16", "fp8", "int8"],
                   help="KV-cache element type (default: the model's dtype)")
    p.add_argument("--offload-tokens", type=int,
                   help="with an offload store of this many tokens (eviction='offload'): how the budget splits "
                        "between live KV and the store, and how many frames of history both hold")
    p.add_argument("--offload-precision", choices=["full", "int8"], default="full",
                   help="offloaded blocks as the cache holds them, or int8 (default %(default)s)")
    p.add_argument("--retrieve-tokens", type=int, default=256,
                   help="tokens a question may bring back from the store, reserved in the budget (default "
                        "%(default)s)")
    p.add_argument("--json", action="store_true", help="print the plan as JSON")
    p.set_defaults(func=run)


def run(args) -> int:
    from vlmedge.errors import InputError
    from vlmedge.runtime.planner import parse_bytes, plan_for

    if args.memory_budget:
        budget = parse_bytes(args.memory_budget)
    elif args.target:
        from vlmedge.jetson.profiles import profile_for_target

        prof = profile_for_target(args.target)
        if prof is None:
            raise InputError(f"--target {args.target!r} is not a Jetson profile with a default budget; pass "
                             "--memory-budget")
        budget = prof.memory_budget
    else:
        raise InputError("give --memory-budget (e.g. 6GiB) or a Jetson --target whose default budget to use")
    if args.engine:
        raise InputError("plan measures the PyTorch model; pass --model DIR (engine directories carry their plan "
                         "in manifest.json)")
    adapter, name = load_model(args)
    plan = plan_for(adapter, args.method, budget, kv_precision=args.kv_precision)
    split = None
    if args.offload_tokens is not None:
        from dataclasses import asdict

        from vlmedge.models.base import kv_shape
        from vlmedge.runtime.planner import offload_split

        split = offload_split(plan, args.offload_tokens, args.retrieve_tokens, args.offload_precision,
                              kv_shape(adapter.text_config)[2])
    if args.json:
        print(json.dumps({**plan.to_dict(), **({"offload": asdict(split)} if split else {})}, indent=2))
    else:
        print(f"{name}, method {args.method}")
        print(plan.table())
        if split:
            print(f"with an offload store ({args.offload_precision}; {args.retrieve_tokens} tokens retrieved per "
                  "question):")
            w = max(len(r[0]) for r in split.rows())
            for a, b, c in split.rows():
                print(f"  {a:<{w}}  {b:>16}  {c}")
    return 0
