"""`vlmedge calibrate record|quantize|tune`: calibration sets, INT8 exports with an accuracy guard, and compression
settings tuned to a latency and memory target (vlmedge.calibration)."""
from __future__ import annotations

import sys


def register(sub) -> None:
    p = sub.add_parser("calibrate", help="record calibration frames, quantise an export to int8, tune compression",
                       description="Calibration for deployment: `record` samples diverse frames (and audio) from a "
                                   "camera, file, URL or camworld; `quantize` turns an fp32 export into int8 graphs "
                                   "and refuses one that loses too much accuracy; `tune` picks the most accurate "
                                   "setting of the export's method meeting a latency/memory target.")
    cmds = p.add_subparsers(dest="calibrate_command", metavar="STEP")

    r = cmds.add_parser("record", help="sample diverse frames from a source into a calibration set")
    r.add_argument("--source", required=True,
                   help="a media file, URI (rtsp://, http://, file://), /dev/videoN, test[:PATTERN] or camworld:SEED")
    r.add_argument("--frames", type=int, default=64, help="frames to keep (default %(default)s)")
    r.add_argument("--out", required=True, metavar="DIR", help="calibration set directory to write")
    r.add_argument("--sample-fps", type=float, default=2.0, help="candidate frames per second (default %(default)s)")
    r.add_argument("--min-change", type=float, default=0.02,
                   help="skip a frame whose mean absolute change from the last kept one (0..1) is below this "
                        "(default %(default)s)")
    r.add_argument("--size", metavar="HxW", help="scale frames to this size (default: as decoded)")
    r.add_argument("--timeout", type=float, default=120.0, help="stop after this many seconds (default %(default)s)")
    r.add_argument("--force", action="store_true", help="replace a calibration set in a non-empty --out")
    r.set_defaults(func=_record)

    q = cmds.add_parser("quantize", help="int8 graphs from an fp32 export, with an accuracy guard")
    q.add_argument("--engine", required=True, metavar="DIR", help="fp32 export directory (`vlmedge export`)")
    q.add_argument("--calib", required=True, metavar="DIR", help="calibration set (`vlmedge calibrate record`)")
    q.add_argument("--out", required=True, metavar="DIR", help="int8 export directory to write")
    q.add_argument("--precision", default="int8", choices=["int8"], help="target precision (default %(default)s)")
    q.add_argument("--mode", choices=["dynamic", "static"],
                   help="dynamic: int8 weights, activations quantised at run time (fastest on CPU; default for "
                        "--target cpu exports); static: calibrated QDQ graphs (TensorRT explicit quantisation; "
                        "default for GPU/Jetson exports)")
    q.add_argument("--calibrate-method", choices=["minmax", "entropy", "percentile"], default="minmax",
                   help="static mode: how activation ranges are chosen (default %(default)s)")
    q.add_argument("--percentile", type=float, default=99.999, help="percentile calibration: the kept percentile")
    q.add_argument("--llm-weights", choices=["int8", "int4"], default="int8",
                   help="int4: weight-only MatMulNBits for the LLM (4x smaller weights) (default %(default)s)")
    q.add_argument("--per-tensor", action="store_true", help="one weight scale per tensor instead of per channel")
    q.add_argument("--stages", help="comma-separated graphs to quantise (default: all)")
    q.add_argument("--eval-seeds", default="1000000+200",
                   help="camworld seeds of the accuracy guard, START+COUNT or START:END, 'none' to skip "
                        "(default %(default)s)")
    q.add_argument("--max-drop", type=float, default=0.03,
                   help="refuse when int8 keeps less than 1 - this of fp32 accuracy (default %(default)s)")
    q.add_argument("--accept-drop", action="store_true", help="write the int8 export even if the guard refuses")
    q.add_argument("--questions", metavar="FILE", help="questions asked while recording activations, one per line")
    q.add_argument("--threads", type=int, help="ONNX Runtime threads (default: all cores)")
    q.add_argument("--force", action="store_true", help="replace the export in a non-empty --out (only on success)")
    q.set_defaults(func=_quantize)

    t = cmds.add_parser("tune", help="pick compression settings meeting a latency/memory target; write the manifest")
    t.add_argument("--engine", required=True, metavar="DIR", help="export directory to tune (its manifest is updated)")
    t.add_argument("--calib", required=True, metavar="DIR", help="calibration set (`vlmedge calibrate record`)")
    t.add_argument("--target-latency", type=float, required=True, metavar="MS",
                   help="per-frame latency target, 90th percentile, in ms (vision + compression + prefill)")
    t.add_argument("--memory-budget", metavar="BYTES", help="weights + KV of --frames frames must fit, e.g. 512MiB")
    t.add_argument("--frames", type=int, help="frames a stream holds (default: the manifest's max_frames or 64)")
    t.add_argument("--grid", help="settings to sweep, e.g. 'tokens=16,32,64;cache_interval=1,2' (default: per method)")
    t.add_argument("--seeds", help="score accuracy on camworld seeds (ground truth) instead of agreement with the "
                                   "uncompressed model on the calibration set")
    t.add_argument("--questions", metavar="FILE", help="questions asked along the calibration stream, one per line")
    t.add_argument("--plot", metavar="PNG", help="write the accuracy/latency frontier plot (PNG) here")
    t.add_argument("--dry-run", action="store_true", help="sweep and report, leave the manifest unchanged")
    t.add_argument("--threads", type=int, help="ONNX Runtime threads (default: all cores)")
    t.set_defaults(func=_tune)
    p.set_defaults(func=lambda args: (p.print_help(), 2)[1])


def _progress(line: str) -> None:
    print(line, file=sys.stderr, flush=True)


def _questions(path):
    from vlmedge.calibration.capture import DEFAULT_QUESTIONS
    from vlmedge.errors import InputError

    if not path:
        return DEFAULT_QUESTIONS
    try:
        with open(path) as f:
            qs = tuple(line.strip() for line in f if line.strip())
    except OSError as err:
        raise InputError(f"cannot read questions from {path!r}: {err.strerror}") from None
    if not qs:
        raise InputError(f"{path} holds no questions (one per line)")
    return qs


def _record(args) -> int:
    from vlmedge.calibration.record import record
    from vlmedge.errors import InputError

    size = None
    if args.size:
        try:
            h, w = (int(x) for x in args.size.lower().split("x"))
        except ValueError:
            raise InputError(f"--size must be HxW, e.g. 224x224, got {args.size!r}") from None
        size = (h, w)
    cs = record(args.source, args.frames, args.out, sample_fps=args.sample_fps, min_change=args.min_change, size=size,
                force=args.force, timeout_s=args.timeout, progress=_progress)
    p = cs.provenance
    print(f"{args.out}: {len(cs)} frames kept of {p.get('frames_sampled')} sampled "
          f"({p.get('skipped_similar')} skipped as near-duplicates), audio {'yes' if cs.audio(0) is not None else 'no'}")
    return 0


def _quantize(args) -> int:
    from vlmedge.calibration.int8_export import AccuracyDropError, quantize_export
    from vlmedge.calibration.quantize import QuantSettings
    from vlmedge.export.manifest import Manifest
    from vlmedge.runtime.evaluation import parse_seed_range

    seeds = None if args.eval_seeds.lower() == "none" else parse_seed_range(args.eval_seeds)
    settings = None
    if args.mode or args.calibrate_method != "minmax" or args.llm_weights != "int8" or args.per_tensor:
        mode = args.mode or ("static" if args.calibrate_method != "minmax" else None)
        if mode is None:
            from vlmedge.calibration.int8_export import default_mode

            mode = default_mode(Manifest.load(args.engine, verify=False).target)
        settings = QuantSettings(mode=mode, calibrate_method=args.calibrate_method, percentile=args.percentile,
                                 per_channel=not args.per_tensor, llm_weights=args.llm_weights)
    stages = [s.strip() for s in args.stages.split(",") if s.strip()] if args.stages else None
    try:
        _, report = quantize_export(args.engine, args.calib, args.out, settings, stages=stages, eval_seeds=seeds,
                                    max_drop=args.max_drop, accept_drop=args.accept_drop, force=args.force,
                                    questions=_questions(args.questions), threads=args.threads, log=_progress)
    except AccuracyDropError as err:
        print(f"vlmedge: refused: {err}", file=sys.stderr)
        return 3
    print(f"{args.out}: int8 export written"
          + (f"; accuracy kept {report.retention:.1%}" if report.retention is not None else "")
          + (f", per frame {report.speed_ratio:.2f}x fp32" if report.speed_ratio is not None else ""))
    return 0


def _tune(args) -> int:
    from vlmedge.calibration.tune import parse_grid, tune
    from vlmedge.runtime.evaluation import parse_seed_range
    from vlmedge.runtime.planner import parse_bytes

    budget = parse_bytes(args.memory_budget) if args.memory_budget else None
    chosen, trials = tune(args.engine, args.calib, target_latency_ms=args.target_latency, memory_budget=budget,
                          frames=args.frames, grid=parse_grid(args.grid) if args.grid else None,
                          seeds=parse_seed_range(args.seeds) if args.seeds else None,
                          questions=_questions(args.questions), plot=args.plot, write=not args.dry_run,
                          threads=args.threads, log=_progress)
    rows = [("setting", "accuracy", "p90 ms", "median ms", "tokens/frame", "memory MiB", "meets")]
    for t in trials:
        rows.append((",".join(f"{k}={v}" for k, v in t.settings.items()), f"{t.accuracy:.3f}", f"{t.latency_ms:.2f}",
                     f"{t.median_ms:.2f}", f"{t.tokens_per_frame:.0f}", f"{t.memory_bytes / 2**20:.1f}",
                     ("*" if t is chosen else "") + ("yes" if t.feasible else "no")))
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    for r in rows:
        print("  ".join(c.ljust(w) for c, w in zip(r, widths)))
    print(f"chosen: {chosen.spec}" + ("" if args.dry_run else f" (written to {args.engine}/manifest.json)")
          + (f"; plot {args.plot}" if args.plot else ""))
    return 0
