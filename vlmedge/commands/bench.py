"""`vlmedge bench`: accuracy and latency of compression methods in one run, as JSON, Markdown and plots."""
from __future__ import annotations

import json
import os
import sys

from vlmedge.commands.common import add_model_args, load_model, model_spec


def register(sub) -> None:
    from vlmedge.bench.plan import METHODS
    from vlmedge.bench.shapes import SHAPES

    p = sub.add_parser(
        "bench", help="accuracy, latency and memory of compression methods, one run",
        description="Runs every method variant (and, for STC, cacher only / pruner only / both; for Script, "
                    "DPP only) at each keep ratio: accuracy per question type on camworld evaluation seeds "
                    "with the reference model (or --model), and per-frame vision / prefill time, time to first "
                    "answer token, decode rate, KV-cache size and peak memory on a realistically shaped model "
                    "with random weights. Writes bench.json, bench.md and PNG plots to --out.")
    add_model_args(p)
    p.add_argument("--quick", action="store_true", help="fewer ratios, seeds and repeats and a 6-layer decoder "
                                                        "(under 10 minutes on 2 CPU cores)")
    p.add_argument("--method", help="one method against the baselines: none, uniform, random and METHOD "
                                    f"({', '.join(METHODS[3:])})")
    p.add_argument("--methods", help=f"comma-separated methods (default: all of {', '.join(METHODS)})")
    p.add_argument("--ratios", help="comma-separated keep ratios, e.g. 0.327,0.111 (STC's 64/196 and Script's "
                                    "88.9%% pruned); OmniZip reads each as a total audio+video retention (default "
                                    "for Omni models 0.45,0.35, the paper's two settings)")
    p.add_argument("--seeds", help="accuracy seeds, START:END or START+COUNT (quick 1000000+40, full 1000000+200)")
    p.add_argument("--shape", choices=sorted(SHAPES), help="timing model shape (LLaVA-OneVision: quick "
                                                          "siglip-base+qwen2-0.5b-6l, full siglip-base+qwen2-0.5b; "
                                                          "Qwen2.5-Omni: qwen2.5-omni-3b-short)")
    p.add_argument("--repeats", type=int, help="timed runs per variant after one warm-up (quick 2, full 3)")
    p.add_argument("--streams", type=int, help="camworld streams per timed run (quick 1, full 2)")
    p.add_argument("--jobs", type=int, default=1,
                   help="worker processes for the accuracy half, each opening the model with an equal share of "
                        "the threads (evaluation runs one small stream at a time, so processes scale better than "
                        "threads); timing always runs alone (default 1)")
    p.add_argument("--timing-backend", default="torch", choices=["torch", "onnxruntime", "tensorrt", "auto"],
                   help="what runs the timing model: PyTorch eager (CPU), or the model exported per variant and run "
                        "by ONNX Runtime (its best provider here: CUDA on a GPU machine) or TensorRT engines built "
                        "here; auto = TensorRT, else ONNX Runtime on CUDA, else torch. The GPU mode "
                        "(default %(default)s)")
    p.add_argument("--no-accuracy", action="store_true", help="skip the accuracy half")
    p.add_argument("--no-timing", action="store_true", help="skip the latency half")
    p.add_argument("--backends", action="store_true",
                   help="instead of the method sweep: PyTorch eager against ONNX Runtime for --method (default stc) "
                        "on the reference model and the --shape model (each exported first): per-frame stages, "
                        "first token, decode rate and peak memory with ratios; writes backends.md/json")
    p.add_argument("--out", default="bench-results", help="output folder (default %(default)s)")
    p.set_defaults(func=run)


def _csv(text: str | None) -> list[str] | None:
    return [t.strip() for t in text.split(",") if t.strip()] if text else None


def run(args) -> int:
    from vlmedge.bench import report
    from vlmedge.bench.plan import METHODS
    from vlmedge.bench.run import run_bench
    from vlmedge.errors import InputError
    from vlmedge.runtime.evaluation import parse_seed_range

    if args.backends:
        return _backends(args)
    if args.method and args.methods:
        raise InputError("give either --method (one method against the baselines) or --methods, not both")
    methods = _csv(args.methods) or (["none", "uniform", "random", args.method] if args.method else list(METHODS))
    try:
        ratios = [float(r) for r in _csv(args.ratios)] if args.ratios else None
    except ValueError:
        raise InputError(f"--ratios must be comma-separated numbers in (0, 1], got {args.ratios!r}") from None
    if args.repeats is not None and args.repeats < 1 or args.streams is not None and args.streams < 1:
        raise InputError("--repeats and --streams must be at least 1")
    if args.jobs < 1:
        raise InputError(f"--jobs must be at least 1, got {args.jobs}")
    if args.no_accuracy and args.no_timing:
        raise InputError("--no-accuracy and --no-timing together leave nothing to measure")
    seeds = parse_seed_range(args.seeds) if args.seeds else None
    model, name = (None, "")
    if not args.no_accuracy:
        model, name = load_model(args)
    os.makedirs(args.out, exist_ok=True)
    result = run_bench(methods=methods, ratios=ratios, quick=args.quick, seeds=seeds, shape=args.shape,
                       repeats=args.repeats, timing_streams=args.streams, accuracy_model=model, accuracy_name=name,
                       do_accuracy=not args.no_accuracy, do_timing=not args.no_timing, work_dir=args.out,
                       jobs=args.jobs, accuracy_source=model_spec(args), timing_backend=args.timing_backend,
                       family=getattr(model, "family", None) or args.family)
    md = report.markdown(result)
    with open(os.path.join(args.out, "bench.json"), "w") as f:
        json.dump(report.to_json(result), f, indent=2)
    with open(os.path.join(args.out, "bench.md"), "w") as f:
        f.write(md)
    pngs = report.plots(result, args.out)
    print(md)
    if not pngs:
        print("[bench] plots skipped: matplotlib is not installed (pip install 'vlmedge[bench]')", file=sys.stderr)
    print(f"[bench] wrote {', '.join(['bench.json', 'bench.md'] + [os.path.basename(p) for p in pngs])} to "
          f"{args.out}", file=sys.stderr)
    return 0


def _backends(args) -> int:
    import torch

    from vlmedge.bench import shapes
    from vlmedge.bench.backends import compare_backends, markdown, to_json
    from vlmedge.bench.run import log
    from vlmedge.models import camworld

    from vlmedge.errors import InputError

    if args.engine:
        raise InputError("--backends exports a PyTorch model itself; give --model DIR (or the bundled reference), "
                         "not --engine")
    method = args.method or "stc"
    os.makedirs(args.out, exist_ok=True)
    model, name = load_model(args)
    shape = shapes.get_shape(args.shape or shapes.default_shape(getattr(model, "family", args.family), True))

    def build():
        log(f"building {shape.description} with random weights")
        return shapes.build(shape)

    first = "tiny-random" if args.tiny else os.path.basename(args.model.rstrip("/")) if args.model else "reference"
    models = [(first, model), (shape.name, build)]
    streams = [camworld.generate(1_000_000 + i, split="eval") for i in range(args.streams or 2)]
    with torch.no_grad():
        rows = compare_backends(models, method, streams, args.repeats or 3, args.out, log=log)
    md = markdown(rows, method, torch.get_num_threads())
    with open(os.path.join(args.out, "backends.md"), "w") as f:
        f.write(md + "\n")
    with open(os.path.join(args.out, "backends.json"), "w") as f:
        json.dump({"method": method, "threads": torch.get_num_threads(), "rows": to_json(rows)}, f, indent=2)
    print(md)
    return 0
