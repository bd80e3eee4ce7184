"""`vlmedge serve`: many camera streams served through Triton Inference Server (PyTriton), see docs/serving.md."""
from __future__ import annotations

import argparse
import sys

from vlmedge.commands.common import add_model_args, model_spec


def register(sub) -> None:
    p = sub.add_parser(
        "serve", help="serve many camera streams through Triton Inference Server (PyTriton)",
        description="Hosts the model as Triton models (vlmedge_frame, vlmedge_tokens, vlmedge_ask, vlmedge_control) "
                    "with dynamic batching across streams and streamed answers over gRPC. Health and readiness are "
                    "on the HTTP port (/v2/health/ready), Prometheus metrics on the metrics port (/metrics). "
                    "Ctrl-C or SIGTERM stops it.")
    add_arguments(p)
    p.set_defaults(func=run)


def add_arguments(p) -> None:
    add_model_args(p)
    p.add_argument("--method", help="compression method spec (default: stc; with --engine the method it was "
                                     "exported for)")
    p.add_argument("--host", default="0.0.0.0", help="address the three ports listen on (default: %(default)s)")
    p.add_argument("--grpc-port", type=int, default=8001, help="gRPC port: frames, questions, streamed answers "
                                                               "(default: %(default)s)")
    p.add_argument("--http-port", type=int, default=8000, help="HTTP port: health, readiness, KServe v2 "
                                                               "(default: %(default)s)")
    p.add_argument("--metrics-port", type=int, default=8002, help="Prometheus metrics port (default: %(default)s)")
    p.add_argument("--max-streams", type=int, default=16, help="streams held at once (default: %(default)s)")
    p.add_argument("--idle-timeout", type=float, default=300.0,
                   help="close a stream after this many seconds without requests (default: %(default)s)")
    p.add_argument("--no-auto-open", action="store_true",
                   help="frames to an unknown stream are refused instead of opening it (open with the control model)")
    p.add_argument("--sample-fps", type=float, default=2.0, help="frames per second given to the model, per stream "
                                                                 "(default: 2)")
    p.add_argument("--max-new-tokens", type=int, default=16, help="longest answer in tokens (default: %(default)s)")
    p.add_argument("--memory-budget", default="", help="memory budget per stream, e.g. 512MiB (default: unbounded)")
    p.add_argument("--max-batch-size", type=int, default=8, help="frames per batch across streams "
                                                                 "(default: %(default)s)")
    p.add_argument("--max-queue-delay-us", type=int, default=2000,
                   help="microseconds Triton waits to fill a batch (default: %(default)s)")
    p.add_argument("--ask-instances", type=int, default=1,
                   help="questions of different streams answered side by side (default: %(default)s; more than 1 "
                        "can fail to load on a busy machine, see docs/serving.md)")
    p.add_argument("--remote-triton", metavar="URL",
                   help="attach the models to a Triton server that is already running (e.g. NVIDIA's container, "
                        "grpc://HOST:8001) instead of starting the bundled one; the port options then do not apply")
    p.add_argument("--workspace", help="with --remote-triton: a folder this process and that server both see "
                                       "(PyTriton's sockets)")
    p.add_argument("--stub-env", help="environment for Triton's Python stub when this one has NumPy 2 "
                                      "(default: made once under ~/.cache/vlmedge; see docs/serving.md)")


def run(args) -> int:
    from vlmedge.runtime.model_source import family_of
    from vlmedge.runtime.serving.launch import require_pytriton
    from vlmedge.runtime.serving.server import ServeOptions, serve

    spec, backend = model_spec(args)
    family_of(spec)  # a missing model is a one-line error before anything starts
    require_pytriton()
    opts = ServeOptions(host=args.host, grpc_port=args.grpc_port, http_port=args.http_port,
                        metrics_port=args.metrics_port, max_streams=args.max_streams, idle_timeout_s=args.idle_timeout,
                        auto_open=not args.no_auto_open, sample_fps=args.sample_fps,
                        max_new_tokens=args.max_new_tokens, memory_budget=args.memory_budget or None,
                        max_batch_size=args.max_batch_size, max_queue_delay_us=args.max_queue_delay_us,
                        ask_instances=args.ask_instances, stub_env=args.stub_env,
                        remote_url=args.remote_triton, workspace=args.workspace)
    return serve(spec, args.method, backend, opts, log=lambda msg: print(msg, file=sys.stderr, flush=True))


def main(argv: list[str] | None = None) -> int:
    """`python -m vlmedge.commands.serve ...`: the same command without going through `vlmedge`."""
    from vlmedge.errors import VlmedgeError

    p = argparse.ArgumentParser(prog="vlmedge serve")
    add_arguments(p)
    p.add_argument("--debug", action="store_true", help="show full tracebacks for user errors")
    args = p.parse_args(argv)
    try:
        return run(args)
    except VlmedgeError as err:
        if args.debug:
            raise
        print(f"vlmedge: error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
