"""`serve()`: the vlmedge stages as four Triton models on PyTriton's bundled Triton Inference Server.

Health, readiness and metrics are Triton's own: HTTP `GET /v2/health/live`, `/v2/health/ready`,
`/v2/models/<name>/ready` on the HTTP port, the same over gRPC (ServerLive, ServerReady, ModelReady), and
Prometheus text on `GET /metrics` of the metrics port (`nv_inference_count` / `nv_inference_exec_count` per model
give the batch sizes reached). The models and their inputs are in protocol.py and docs/serving.md.
"""
from __future__ import annotations

import os
import signal
import threading
import time
from dataclasses import dataclass

from vlmedge.errors import InputError

from . import protocol as P
from .launch import ServingSetupError, require_pytriton, server_environment
from .service import StreamService


@dataclass
class ServeOptions:
    host: str = "0.0.0.0"
    grpc_port: int = 8001
    http_port: int = 8000
    metrics_port: int = 8002
    max_streams: int = 16
    idle_timeout_s: float = 300.0
    auto_open: bool = True
    sample_fps: float | None = 2.0
    max_new_tokens: int = 16
    memory_budget: str | None = None
    max_batch_size: int = 8  # frame/tokens rows per execution
    max_queue_delay_us: int = 2000  # how long Triton holds a request to gather a batch
    # Questions of different streams answered side by side. More than 1 makes PyTriton 0.7.0 start one stub per
    # instance, and their 1-second handshake sometimes fails on a loaded 2-core machine (the model then fails to
    # load and the server does not start), so 1 is the default.
    ask_instances: int = 1
    stub_env: str | None = None  # see launch.py
    # Attach to a Triton server that is already running (NVIDIA's container) instead of starting the bundled one:
    # its URL, and a folder both this process and that server can reach (PyTriton's sockets; see docs/serving.md)
    remote_url: str | None = None
    workspace: str | None = None

    def check(self) -> None:
        for name in ("grpc_port", "http_port", "metrics_port"):
            port = getattr(self, name)
            if not 0 < int(port) < 65536:
                raise InputError(f"{name.replace('_', '-')} must be a TCP port (1-65535), got {port}")
        if len({self.grpc_port, self.http_port, self.metrics_port}) != 3:
            raise InputError("the gRPC, HTTP and metrics ports must differ")
        if self.max_batch_size < 1 or self.ask_instances < 1 or self.max_queue_delay_us < 0:
            raise InputError("max_batch_size and ask_instances must be at least 1 and max_queue_delay_us >= 0")


def _tensor(io: P.Io):
    from pytriton.model_config import Tensor

    return Tensor(name=io.name, dtype=io.numpy_dtype, shape=io.dims, optional=io.optional)


def descendants(pid: int) -> set[int]:
    """Every live descendant of `pid`, read from /proc (the server's tritonserver and stubs; also used by the
    load test for their memory and by the tests to check nothing outlives the server)."""
    parents: dict[int, int] = {}
    for name in os.listdir("/proc"):
        if name.isdigit():
            try:
                with open(f"/proc/{name}/stat") as f:
                    parents[int(name)] = int(f.read().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
    found, todo = set(), [pid]
    while todo:
        parent = todo.pop()
        kids = [c for c, pp in parents.items() if pp == parent]
        found.update(kids)
        todo.extend(kids)
    return found


def _end_leftovers(pids: set[int], log, grace_s: float = 5.0) -> None:
    """Triton gives a model `exit_timeout_secs` to unload; a Python stub still busy then is orphaned and ignores
    SIGTERM (seen with the two-instance ask model). Those of our former children still alive are ended here."""
    deadline = time.monotonic() + grace_s
    alive = set(pids)
    while alive and time.monotonic() < deadline:
        alive = {p for p in alive if _running(p)}
        if alive:
            time.sleep(0.1)
    for pid in alive:
        log(f"vlmedge serve: process {pid} outlived the Triton server; ending it")
        try:
            os.kill(pid, signal.SIGKILL)
        except OSError:
            pass


def _running(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def _plain(request) -> dict:
    """A PyTriton `Request` as the plain dict the service takes (optional inputs absent when not sent)."""
    return dict(request.items())


def bind_models(triton, service: StreamService, opts: ServeOptions) -> None:
    """The four models on a started PyTriton `Triton`."""
    from pytriton.model_config import DynamicBatcher, ModelConfig

    batched = ModelConfig(max_batch_size=opts.max_batch_size,
                          batcher=DynamicBatcher(max_queue_delay_microseconds=opts.max_queue_delay_us,
                                                 preserve_ordering=True))
    def batched_fn(handle):
        return lambda requests: handle([_plain(r) for r in requests])

    for name, fn in ((P.FRAME_MODEL, batched_fn(service.frames)), (P.TOKENS_MODEL, batched_fn(service.tokens))):
        inputs, outputs = P.ALL[name]
        # one instance: a stream's rows must run in arrival order
        triton.bind(model_name=name, infer_func=fn, inputs=[_tensor(i) for i in inputs],
                    outputs=[_tensor(o) for o in outputs], config=batched, strict=False)

    def make_ask():
        # PyTriton runs one callable per instance, each on its own thread: one fresh function per instance
        def ask(requests):
            if len(requests) != 1:  # the ask model has no batcher: Triton hands one request per execution
                raise InputError(f"the ask model takes one request at a time, got {len(requests)}")
            for response in service.ask(_plain(requests[0])):
                yield [response]
        return ask

    inputs, outputs = P.ALL[P.ASK_MODEL]
    instances = [make_ask() for _ in range(opts.ask_instances)]
    triton.bind(model_name=P.ASK_MODEL, infer_func=instances if len(instances) > 1 else instances[0],
                inputs=[_tensor(i) for i in inputs], outputs=[_tensor(o) for o in outputs],
                config=ModelConfig(batching=False, decoupled=True), strict=False)

    def control(requests):
        return [service.control(_plain(r)) for r in requests]

    inputs, outputs = P.ALL[P.CONTROL_MODEL]
    triton.bind(model_name=P.CONTROL_MODEL, infer_func=control, inputs=[_tensor(i) for i in inputs],
                outputs=[_tensor(o) for o in outputs], config=ModelConfig(batching=False), strict=False)


def serve(model_spec: str, method_spec: str | None = None, backend: str = "auto", opts: ServeOptions | None = None,
          log=print, ready: threading.Event | None = None, stop: threading.Event | None = None) -> int:
    """Loads the model, starts Triton with the four models and serves until SIGINT/SIGTERM (or `stop` is set).
    Sets `ready` once every model answers. Returns 0, or 1 when the server died under it."""
    from vlmedge.runtime.model_source import open_model

    opts = opts or ServeOptions()
    opts.check()
    require_pytriton()
    adapter, desc = open_model(model_spec, backend)
    if method_spec is None:
        method_spec = getattr(adapter, "method_spec", None) or "stc"  # an export runs the method it was made for
    service = StreamService(adapter, method_spec, sample_fps=opts.sample_fps, max_new_tokens=opts.max_new_tokens,
                            memory_budget=opts.memory_budget, max_streams=opts.max_streams,
                            idle_timeout_s=opts.idle_timeout_s, auto_open=opts.auto_open, log=log)
    import warnings

    from pytriton.client.warnings import NotSupportedTimeoutWarning
    from pytriton.triton import Triton, TritonConfig

    # PyTriton's own readiness checks pass a timeout tritonclient.grpc ignores, and warn about it on every check
    warnings.filterwarnings("ignore", category=NotSupportedTimeoutWarning)

    config = TritonConfig(http_address=opts.host, http_port=opts.http_port, grpc_address=opts.host,
                          grpc_port=opts.grpc_port, metrics_address=opts.host, metrics_port=opts.metrics_port,
                          allow_metrics=True, allow_gpu_metrics=False, exit_timeout_secs=5, log_verbose=0)
    stop = stop or threading.Event()
    previous = {}
    if threading.current_thread() is threading.main_thread():
        for sig in (signal.SIGINT, signal.SIGTERM):
            previous[sig] = signal.signal(sig, lambda *_: stop.set())
    try:
        if opts.remote_url:
            from pytriton.triton import RemoteTriton

            triton = RemoteTriton(url=opts.remote_url, workspace=opts.workspace)
            triton.__enter__()  # connects; every bind below loads a model into that server at once
            where = f"the Triton server at {opts.remote_url}"
        else:
            with server_environment(opts.stub_env, log=log):
                triton = Triton(config=config)
                triton.__enter__()  # starts tritonserver: the environment above must be in place
            where = (f"gRPC {opts.host}:{opts.grpc_port}, HTTP {opts.host}:{opts.http_port}, metrics "
                     f"{opts.host}:{opts.metrics_port}/metrics")
        try:
            try:
                bind_models(triton, service, opts)
                if not opts.remote_url:
                    triton.run()  # loads the models and waits until they answer
            except Exception as err:  # PyTriton's errors carry the whole server log: keep its first line
                first = next((ln for ln in str(err).splitlines() if ln.strip()), type(err).__name__)
                raise ServingSetupError(f"Triton could not load the vlmedge models: {first[:300]} (the server's "
                                        "log above has the rest)") from err
            log(f"vlmedge serve: {desc}, method {service.method_spec}; {where}; models {', '.join(P.MODELS)}; "
                f"up to {opts.max_streams} streams")
            if ready is not None:
                ready.set()
            while not stop.wait(1.0):
                if not triton.is_alive():
                    log("vlmedge serve: the Triton server stopped unexpectedly")
                    return 1
            log("vlmedge serve: stopping")
            return 0
        finally:
            started = descendants(os.getpid())  # tritonserver and its stubs, recorded while they are ours
            triton.stop()
            service.shutdown()
            _end_leftovers(started, log)
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)

