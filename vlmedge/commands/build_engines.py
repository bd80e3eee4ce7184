"""`vlmedge build-engines DIR`: TensorRT engines for an export directory, built on the GPU that will run them."""
from __future__ import annotations


def register(sub) -> None:
    from vlmedge.export.trt.engine import PRECISIONS

    p = sub.add_parser(
        "build-engines", help="build TensorRT engines for an export directory on this machine's GPU",
        description="Parses every ONNX stage of a `vlmedge export` directory with TensorRT, builds <stage>.engine "
                    "with optimisation profiles from the manifest (context sizes from the Jetson memory plan or "
                    "--max-frames), registers the vlmedge plugins where a graph uses the vlmedge op domain, and "
                    "records the engines (TensorRT version, GPU, plugin version, checksums) in manifest.json. "
                    "Engines run only on the GPU model and TensorRT version that built them, so run this on the "
                    "target (on a Jetson for orin-* exports). Then `vlmedge run --engine DIR --backend tensorrt`.")
    p.add_argument("export_dir", metavar="DIR", help="export directory (from `vlmedge export`)")
    p.add_argument("--target", help="device the engines are for (default: the export's target; a cpu export "
                                    "needs desktop or orin-*)")
    p.add_argument("--precision", default="fp16", choices=PRECISIONS,
                   help="engine precision (default %(default)s; int8 needs a `calibrate quantize --mode static` "
                        "export)")
    p.add_argument("--stages", help="comma-separated stages to build (default: every ONNX stage)")
    p.add_argument("--max-context", type=int, help="KV tokens the LLM engine's profile allows (default: from the "
                                                   "manifest's memory plan or max frames)")
    p.add_argument("--workspace", help="builder workspace, e.g. 1GiB (default: the memory plan's, else TensorRT's)")
    p.add_argument("--timing-cache", metavar="FILE", help="timing cache file (default: one per TensorRT version and "
                                                          "GPU under ~/.cache/vlmedge)")
    p.add_argument("--no-aot", action="store_true", help="use the JIT form of every vlmedge plugin")
    p.set_defaults(func=run)


def run(args) -> int:
    from vlmedge.export.manifest import Manifest
    from vlmedge.export.trt.engine import build_engines, read_engine_record, write_engine_record
    from vlmedge.runtime.planner import parse_bytes

    manifest = Manifest.load(args.export_dir)
    target = args.target or (manifest.target if manifest.target != "cpu" else "desktop")
    stages = [s.strip() for s in args.stages.split(",") if s.strip()] if args.stages else None
    record = build_engines(args.export_dir, target, args.precision, stages=stages, max_context=args.max_context,
                           workspace_bytes=parse_bytes(args.workspace) if args.workspace else None,
                           timing_cache=args.timing_cache, aot=not args.no_aot,
                           log=lambda m: print(m, flush=True))
    if stages:  # a partial rebuild keeps the other stages' engines
        record = {**(read_engine_record(args.export_dir, manifest) or {}), **record}
    print(f"engines recorded in {write_engine_record(args.export_dir, record)}")
    return 0
