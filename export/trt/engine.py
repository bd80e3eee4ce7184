"""TensorRT engines for an export directory: each ONNX stage of the manifest becomes `<stage>.engine`.

    record = build_engines(export_dir, "desktop")          # or "orin-nano" / "orin-nx" / "orin-agx", on the device
    write_engine_record(export_dir, record)                # manifest.json: "engines" + checksums of the .engine files

`build_engines` parses every ONNX stage with TensorRT's ONNX parser, gives each named dynamic axis an optimisation
profile (rule below), builds the engine in the requested precision, writes `<stage>.engine` beside the graph, reuses
one timing cache file across stages and builds, registers the `vlmedge` plugins (plugins.py) when a graph uses the
`vlmedge` domain, prints progress per stage and returns the record the manifest keeps:
`{stage: {file, precision, profiles, trt_version, plugin_version, build_s, ...}}`.

Precision:
* "fp16": fp16 graphs (an `--precision fp16` export) build strongly typed — the graph's own types, its fp32
  islands (softmax, norms, logits) kept; fp32 graphs build weakly typed with the FP16 flag (TensorRT picks fp16
  kernels where they are faster).
* "fp32": the graphs as they are (strongly typed); an fp16 export cannot become an fp32 engine.
* "int8": explicit quantisation only — graphs with QuantizeLinear/DequantizeLinear pairs (`vlmedge calibrate quantize
  --mode static`), built weakly typed with INT8 + FP16 (unquantised layers in fp16). A QDQ export always builds as
  int8, whatever was asked. Graphs with ONNX Runtime-only int8 ops (dynamic quantisation: MatInteger/ConvInteger/
  DynamicQuantizeLinear; int4 MatMulNBits) are refused with a way out.

Optimisation profiles (`context_limits`, `optimisation_profiles`), from the manifest's named dynamic axes:
* `past` (KV length of the LLM stage): min 0, opt = opt context, max = max context, where
  - Jetson targets: the memory plan's `opt_context_tokens` / `max_context_tokens` (jetson/profiles.py:
    the KV room left in the module's budget after weights and builder workspace, capped by the model's positions);
  - otherwise, with `runtime.max_frames`: max = round64(max_frames x tokens per frame + 512 prompt tokens),
    tokens per frame = the vision stage's tokens + trailer (the uncompressed count: an upper bound for every method);
  - otherwise DEFAULT_MAX_CONTEXT (4096) tokens; `max_context=` overrides all of these;
  - opt = the plan's opt, else round64(max / 2).
* `seq` (new tokens per LLM call): min 1, opt = tokens per frame (a frame's prefill), max = min(max context,
  max(512, 2 x tokens per frame)). Longer prefills (a question over several re-selected frames) are run in chunks
  of at most that many tokens by the TensorRT backend, which is the same computation with a KV cache.
* `nlogits` (logit rows): min 1, opt 1, max = the seq max.
* `frames`: min 1, opt min(4, max frames), max max frames; `tokens`: min 1, opt tokens per frame, max max context.
* any other named axis: an error naming it — pass `axis_overrides={name: (min, opt, max)}`.

Engines are specific to the GPU model and the TensorRT version that built them: Jetson engines are built on the
Jetson (building one elsewhere is refused), and the record keeps the TensorRT version, the device and its compute
capability, which the backend checks before it deserialises anything.

Failures are `VlmedgeError`s with one line saying what to do: TensorRT missing (`TensorRTMissingError`), no CUDA GPU
(`NoCudaDeviceError`), a graph TensorRT cannot take (`EngineBuildError`), an engine whose plugins are another
version than this runtime's (`PluginVersionError`, from `check_plugin_version`).
"""
from __future__ import annotations

import dataclasses
import math
import os
import time
from typing import TYPE_CHECKING, Any, Callable, Mapping

from vlmedge.errors import VlmedgeError

if TYPE_CHECKING:  # type checking only: no module-level TensorRT import at run time
    import onnx
    import tensorrt as trt

GPU_TARGETS = ("desktop", "orin-nano", "orin-nx", "orin-agx")
JETSON_TARGETS = ("orin-nano", "orin-nx", "orin-agx")
ORIN_CAPABILITY = (8, 7)
ENGINE_SUFFIX = ".engine"
PROMPT_TOKENS = 512  # prompt + question allowance, as jetson/profiles.build_settings counts it
DEFAULT_MAX_CONTEXT = 4096
ROUND = 64  # profile bounds in multiples of 64 tokens (TensorRT's tactics like round sizes)
PRECISIONS = ("fp32", "fp16", "int8")
ORT_ONLY_OPS = ("MatMulInteger", "ConvInteger", "DynamicQuantizeLinear", "QLinearMatMul", "QLinearConv")
ONNXRUNTIME_HINT = "the ONNX graphs in {where} are ready to run with ONNX Runtime meanwhile " \
                   "(vlmedge.runtime.backends.load_backend(dir), backend 'onnxruntime')"


# ----- errors -----
class TensorRTError(VlmedgeError):
    """Something about TensorRT the user can fix (install it, use a GPU, rebuild the engines)."""


class TensorRTMissingError(TensorRTError, ImportError):
    """TensorRT's Python package (with its libraries) is not installed."""


class NoCudaDeviceError(TensorRTError):
    """No CUDA GPU is visible."""


class EngineBuildError(TensorRTError):
    """A stage TensorRT could not turn into an engine, or a build request that cannot work."""


class PluginVersionError(TensorRTError):
    """An engine built with other `vlmedge` plugins than this runtime's."""


class EngineMismatchError(TensorRTError):
    """An engine built with another TensorRT version or for another GPU than this machine's."""


# ----- what is installed -----
def _where(export_dir: str | None) -> str:
    return repr(export_dir) if export_dir else "the export directory"


def tensorrt_available() -> bool:
    """True when a real TensorRT is importable (not only the `tensorrt-stubs` namespace package)."""
    try:
        import tensorrt
    except Exception:  # noqa: BLE001 - ImportError, or OSError from missing libnvinfer
        return False
    return hasattr(tensorrt, "Builder")


def require_tensorrt(export_dir: str | None = None) -> Any:
    """The `tensorrt` module, or TensorRTMissingError saying what is missing and how to install it."""
    module: Any = None
    why = ""
    try:
        import tensorrt

        module = tensorrt
    except Exception as err:  # noqa: BLE001 - ImportError, or OSError when libnvinfer cannot be loaded
        why = f" ({type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''})"
    if module is None or not hasattr(module, "Builder"):
        found = "found only type stubs, no libraries" if module is not None else f"not importable{why}"
        raise TensorRTMissingError(
            f"TensorRT is not installed (Python package `tensorrt`: {found}); on Jetson it comes with JetPack "
            "(`sudo apt install nvidia-jetpack`, then use the system python3-libnvinfer in a venv made with "
            "--system-site-packages), on x86 with an NVIDIA GPU and CUDA 12 `pip install tensorrt`; "
            + ONNXRUNTIME_HINT.format(where=_where(export_dir)))
    return module


def require_cuda(export_dir: str | None = None) -> tuple[str, tuple[int, int]]:
    """(GPU name, compute capability) of the current CUDA device, or NoCudaDeviceError."""
    import torch

    if not torch.cuda.is_available():
        build = "this torch is a CPU build" if torch.version.cuda is None else "torch.cuda.is_available() is False"
        raise NoCudaDeviceError(
            f"no CUDA GPU is visible ({build}): TensorRT builds and runs engines on the GPU that will use them — run "
            "this on the target machine (a Jetson, or a desktop with an NVIDIA GPU and a CUDA build of torch); "
            + ONNXRUNTIME_HINT.format(where=_where(export_dir)))
    cc = torch.cuda.get_device_capability()
    return torch.cuda.get_device_name(), (int(cc[0]), int(cc[1]))


def engines_buildable(target: str, export_dir: str | None = None) -> tuple[bool, str]:
    """(True, "") when this machine can build `target`'s engines now, else (False, why) — the reason is the error
    `build_engines` would raise, so `vlmedge export --engines auto` can skip with the same words."""
    if target not in GPU_TARGETS:
        return False, f"target {target!r} runs with ONNX Runtime (engines are for {', '.join(GPU_TARGETS)})"
    try:
        require_tensorrt(export_dir)
        device, cc = require_cuda(export_dir)
    except TensorRTError as err:
        return False, str(err)
    if target in JETSON_TARGETS and cc != ORIN_CAPABILITY:
        return False, (f"engines for {target} are built on the Jetson (this machine has {device}, sm_{cc[0]}{cc[1]}); "
                       f"copy the export there and run `vlmedge build-engines {export_dir or 'DIR'}`")
    return True, ""


# ----- optimisation profiles -----
@dataclasses.dataclass(frozen=True)
class ContextLimits:
    """The token counts the LLM stage's profile is built for, and which rule gave them."""

    tokens_per_frame: int
    opt_context: int
    max_context: int
    max_seq: int
    max_frames: int | None
    rule: str

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


def _round_up(n: float, to: int = ROUND) -> int:
    return int(math.ceil(n / to) * to)


def context_limits(manifest: Any, max_context: int | None = None) -> ContextLimits:
    """The context the engines are built for (the rule is in the module docstring)."""
    rt = manifest.runtime
    layout = rt.token_layout or {}
    per_frame = int(layout.get("tokens_per_frame") or 0) + int(layout.get("trailer_tokens") or 0)
    per_frame = max(1, per_frame)
    plan = rt.memory_plan or {}
    max_frames = rt.max_frames
    opt = None
    if max_context is not None:
        if not isinstance(max_context, int) or max_context < 1:
            raise EngineBuildError(f"max_context must be a positive number of tokens, got {max_context!r}")
        mx, rule = int(max_context), f"max_context={max_context} (given)"
    elif plan.get("max_context_tokens"):
        mx = int(plan["max_context_tokens"])
        opt = int(plan.get("opt_context_tokens") or 0) or None
        rule = f"memory plan of {plan.get('profile', 'the Jetson profile')} (max_context_tokens)"
    elif max_frames:
        mx = _round_up(int(max_frames) * per_frame + PROMPT_TOKENS)
        rule = f"round64({max_frames} frames x {per_frame} tokens + {PROMPT_TOKENS} prompt tokens)"
    else:
        mx, rule = DEFAULT_MAX_CONTEXT, f"default {DEFAULT_MAX_CONTEXT} tokens (no memory plan, no max_frames)"
    if opt is None:
        opt = _round_up(mx / 2) if mx >= 2 * ROUND else mx
    opt = max(1, min(opt, mx))
    max_seq = max(1, min(mx, max(PROMPT_TOKENS, 2 * per_frame)))
    return ContextLimits(tokens_per_frame=per_frame, opt_context=opt, max_context=mx, max_seq=max_seq,
                         max_frames=int(max_frames) if max_frames else None, rule=rule)


def axis_ranges(limits: ContextLimits) -> dict[str, tuple[int, int, int]]:
    """(min, opt, max) of every axis name the exporter uses."""
    per, seq = limits.tokens_per_frame, limits.max_seq
    frames = limits.max_frames or max(1, (limits.max_context - PROMPT_TOKENS) // per)
    return {
        "past": (0, limits.opt_context, limits.max_context),
        "seq": (1, max(1, min(per, seq)), seq),
        "nlogits": (1, 1, seq),
        "frames": (1, max(1, min(4, frames)), max(1, frames)),
        "tokens": (1, max(1, min(per, limits.max_context)), limits.max_context),
    }


def optimisation_profiles(manifest: Any, *, max_context: int | None = None,
                          axis_overrides: Mapping[str, tuple[int, int, int]] | None = None,
                          stages: list[str] | None = None) -> dict[str, dict[str, dict[str, list[int]]]]:
    """{stage: {input: {"min": shape, "opt": shape, "max": shape}}} for every ONNX stage's inputs with named
    dynamic axes (a static stage gets {})."""
    ranges = axis_ranges(context_limits(manifest, max_context))
    for name, r in (axis_overrides or {}).items():
        lo, op, hi = (int(v) for v in r)
        if not 0 <= lo <= op <= hi:
            raise EngineBuildError(f"axis {name!r}: (min, opt, max) must satisfy 0 <= min <= opt <= max, got {r}")
        ranges[name] = (lo, op, hi)
    out: dict[str, dict[str, dict[str, list[int]]]] = {}
    for sname, spec in manifest.stages.items():
        if spec.kind != "onnx" or (stages is not None and sname not in stages):
            continue
        shapes: dict[str, dict[str, list[int]]] = {}
        for t in spec.inputs:
            if not t.dynamic_axes:
                continue
            lo_s, op_s, hi_s = [], [], []
            for d in t.shape:
                if isinstance(d, str):
                    if d not in ranges:
                        raise EngineBuildError(
                            f"stage {sname!r} input {t.name!r} has dynamic axis {d!r} with no profile rule (known: "
                            f"{', '.join(sorted(ranges))}); pass axis_overrides={{{d!r}: (min, opt, max)}}")
                    lo, op, hi = ranges[d]
                else:
                    lo = op = hi = int(d)
                lo_s.append(lo)
                op_s.append(op)
                hi_s.append(hi)
            shapes[t.name] = {"min": lo_s, "opt": op_s, "max": hi_s}
        out[sname] = shapes
    return out


# ----- graphs -----
@dataclasses.dataclass
class GraphInfo:
    """What a stage's ONNX graph holds that decides how it is built."""

    plugin_ops: dict[str, int]  # vlmedge op -> node count
    qdq: bool  # QuantizeLinear/DequantizeLinear present (explicit int8)
    ort_only: list[str]  # ops TensorRT cannot run (ONNX Runtime contrib / integer ops)
    float_type: str  # "float16" when the graph's float inputs are fp16, else "float32"


def inspect_graph(model: "onnx.ModelProto") -> GraphInfo:
    from vlmedge.export.ops.reference import DOMAIN

    ops: dict[str, int] = {}
    qdq = False
    ort_only: list[str] = []
    for node in _all_nodes(model.graph):
        if node.domain == DOMAIN:
            ops[node.op_type] = ops.get(node.op_type, 0) + 1
        elif node.op_type in ("QuantizeLinear", "DequantizeLinear") and node.domain in ("", "ai.onnx"):
            qdq = True
        elif node.domain == "com.microsoft" or node.op_type in ORT_ONLY_OPS:
            if node.op_type not in ort_only:
                ort_only.append(node.op_type)
    inits = {i.name for i in model.graph.initializer}
    elems = [i.type.tensor_type.elem_type for i in model.graph.input if i.name not in inits]
    return GraphInfo(plugin_ops=ops, qdq=qdq, ort_only=ort_only,
                     float_type="float16" if 10 in elems and 1 not in elems else "float32")


def _all_nodes(graph: Any):
    for node in graph.node:
        yield node
        for a in node.attribute:
            if a.g is not None and len(a.g.node):
                yield from _all_nodes(a.g)
            for g in a.graphs:
                yield from _all_nodes(g)


def prepare_onnx(model: "onnx.ModelProto") -> tuple["onnx.ModelProto", dict[str, int]]:
    """A copy of `model` whose `vlmedge` nodes TensorRT's ONNX parser maps to the plugins: each gets
    `plugin_namespace="vlmedge"` and every plugin attribute written out (Python plugins have no defaults; missing
    ones take the ONNX schema's default), typed as the plugin declares (FLOAT / INT). Returns (model, {op: nodes}).
    A model without `vlmedge` nodes is returned as is."""
    import onnx
    from onnx import helper

    from vlmedge.export.ops import schemas
    from vlmedge.export.trt.plugins import ATTRIBUTES, NAMESPACE

    info = inspect_graph(model)
    if not info.plugin_ops:
        return model, {}
    out = onnx.ModelProto()
    out.CopyFrom(model)
    for node in _all_nodes(out.graph):
        if node.domain != schemas.DOMAIN:
            continue
        if node.op_type not in ATTRIBUTES:
            raise EngineBuildError(f"node {node.name!r}: {schemas.DOMAIN}::{node.op_type} is not an op this vlmedge "
                                   f"has a TensorRT plugin for ({', '.join(ATTRIBUTES)})")
        want = len(schemas.OPS[node.op_type].inputs)
        if len(node.input) != want or any(not i for i in node.input):
            raise EngineBuildError(f"node {node.name!r} ({node.op_type}) has inputs {list(node.input)}; the plugin "
                                   f"takes all {want} ({', '.join(p.name for p in schemas.OPS[node.op_type].inputs)})")
        have = {a.name: helper.get_attribute_value(a) for a in node.attribute}
        if "plugin_namespace" in have and have["plugin_namespace"] not in (NAMESPACE, NAMESPACE.encode()):
            raise EngineBuildError(f"node {node.name!r} names plugin namespace {have['plugin_namespace']!r}, "
                                   f"not {NAMESPACE!r}")
        keep = [a for a in node.attribute if a.name not in dict(ATTRIBUTES[node.op_type]) and a.name not in
                ("plugin_namespace", "plugin_version")]
        new = []
        for name, kind in ATTRIBUTES[node.op_type]:
            value = have.get(name, schemas.OPS[node.op_type].attr(name).default)
            if value is None:
                raise EngineBuildError(f"node {node.name!r} ({node.op_type}) lacks its required attribute {name!r}")
            new.append(helper.make_attribute(name, float(value) if kind == "float" else int(value),
                                             attr_type=onnx.AttributeProto.FLOAT if kind == "float"
                                             else onnx.AttributeProto.INT))
        new.append(helper.make_attribute("plugin_namespace", NAMESPACE))
        del node.attribute[:]
        node.attribute.extend(keep + new)
    return out, dict(info.plugin_ops)


# ----- building -----
_LOGGER: Any = None


def trt_logger() -> Any:
    """One process-wide TensorRT logger that keeps the last errors (for the exception messages) and shows
    warnings and errors on stderr."""
    global _LOGGER
    if _LOGGER is None:
        import sys

        require_tensorrt()
        import tensorrt as trt

        class _Logger(trt.ILogger):
            def __init__(self) -> None:
                trt.ILogger.__init__(self)
                self.errors: list[str] = []

            def log(self, severity: Any, msg: str) -> None:
                if severity <= trt.ILogger.Severity.ERROR:
                    self.errors = (self.errors + [msg])[-5:]
                if severity <= trt.ILogger.Severity.WARNING:
                    print(f"[tensorrt] {msg}", file=sys.stderr, flush=True)

        _LOGGER = _Logger()
        trt.init_libnvinfer_plugins(_LOGGER, "")
    return _LOGGER


def last_trt_error(default: str) -> str:
    errs = getattr(_LOGGER, "errors", None) or []
    return errs[-1].splitlines()[0][:300] if errs else default


def network_mode(precision: str, graph: GraphInfo) -> tuple[str, str]:
    """(effective precision, "strongly-typed" | "weakly-typed") for a requested precision and a graph."""
    if precision not in PRECISIONS:
        raise EngineBuildError(f"precision {precision!r} is not one of {', '.join(PRECISIONS)}")
    if graph.ort_only:
        raise EngineBuildError(f"the graph uses {', '.join(graph.ort_only)}, which only ONNX Runtime runs (dynamic "
                               "int8 / int4 weight-only quantisation); for TensorRT quantise with `vlmedge calibrate "
                               "quantize --mode static` (QDQ), or build from the fp32/fp16 export")
    if graph.qdq:
        return "int8", "weakly-typed"
    if precision == "int8":
        raise EngineBuildError("int8 engines need a QDQ graph (explicit quantisation: `vlmedge calibrate quantize "
                               "--mode static` on an fp32 export); this graph has no QuantizeLinear/DequantizeLinear")
    if precision == "fp32" and graph.float_type == "float16":
        raise EngineBuildError("this export holds fp16 graphs; an fp32 engine needs an fp32 export "
                               "(`vlmedge export --precision fp32`)")
    if precision == "fp16" and graph.float_type == "float32":
        return "fp16", "weakly-typed"
    return precision, "strongly-typed"


def build_engine(model: "onnx.ModelProto", *, path: str | None = None, precision: str = "fp16",
                 profile: Mapping[str, Mapping[str, list[int]]] | None = None, workspace_bytes: int | None = None,
                 timing_cache: Any = None, aot: bool = True, name: str = "graph",
                 graph_precision: str | None = None, tf32: bool = True) -> tuple[bytes, dict]:
    """Builds one serialized engine from an ONNX model (loaded without external data; `path` is its file, for the
    external weights). `profile`: {input: {"min", "opt", "max"}} for its dynamic inputs. `timing_cache`: an
    ITimingCache (shared across builds) or None. `graph_precision`: the export's precision (manifest.precision),
    which says what float type the graph computes in; None: judged from the graph's inputs. `tf32=False` keeps
    fp32 matmuls and convolutions in full fp32 (TensorRT uses TF32 by default on Ampere and later; parity tests
    turn it off). Returns (engine bytes,
    {"precision", "network", "plugins"})."""
    require_tensorrt()
    import tensorrt as trt

    logger = trt_logger()
    info = inspect_graph(model)
    if graph_precision is not None:
        info.float_type = "float16" if graph_precision == "fp16" else "float32"
    eff, mode = network_mode(precision, info)
    model, plugin_ops = prepare_onnx(model)
    impls: dict[str, str] = {}
    if plugin_ops:
        from vlmedge.export.trt.plugins import implementation, register_plugins

        register_plugins()
        impls = {op: implementation(op, aot) for op in sorted(plugin_ops)}
    builder = trt.Builder(logger)
    flags = 0
    if mode == "strongly-typed":
        flags |= 1 << int(trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED)
    if plugin_ops:
        flag = "PREFER_AOT_PYTHON_PLUGINS" if aot else "PREFER_JIT_PYTHON_PLUGINS"
        flags |= 1 << int(getattr(trt.NetworkDefinitionCreationFlag, flag))
    network = builder.create_network(flags)
    parser = trt.OnnxParser(network, logger)
    if path is not None and not plugin_ops:
        ok = parser.parse_from_file(path)
    else:
        ok = parser.parse(model.SerializeToString(), path) if path else parser.parse(model.SerializeToString())
    if not ok:
        errs = [parser.get_error(i).desc() for i in range(parser.num_errors)]
        first = (errs[0].splitlines()[0][:300] if errs else last_trt_error("no detail"))
        raise EngineBuildError(f"{name}: TensorRT's ONNX parser refused the graph ({first})"
                               + (f" and {len(errs) - 1} more error(s)" if len(errs) > 1 else ""))
    config = builder.create_builder_config()
    if workspace_bytes:
        config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, int(workspace_bytes))
    if not tf32:
        config.clear_flag(trt.BuilderFlag.TF32)
    if mode == "weakly-typed":
        config.set_flag(trt.BuilderFlag.FP16)
        if eff == "int8":
            config.set_flag(trt.BuilderFlag.INT8)
    if timing_cache is not None and not config.set_timing_cache(timing_cache, False):
        raise EngineBuildError(f"{name}: the timing cache does not match this TensorRT/GPU; delete it or pass "
                               "another timing_cache path")
    if profile:
        prof = builder.create_optimization_profile()
        for inp, s in profile.items():
            prof.set_shape(inp, trt.Dims(list(s["min"])), trt.Dims(list(s["opt"])), trt.Dims(list(s["max"])))
        config.add_optimization_profile(prof)
    serialized = builder.build_serialized_network(network, config)
    if serialized is None:
        raise EngineBuildError(f"{name}: TensorRT could not build the engine "
                               f"({last_trt_error('see the TensorRT log')})")
    return bytes(memoryview(serialized)), {"precision": eff, "network": mode, "plugins": impls}


def default_timing_cache(trt_version: str, device: str, capability: tuple[int, int]) -> str:
    """~/.cache/vlmedge/tensorrt/timing-<trt>-sm<cc>-<gpu>.cache: one per TensorRT version and GPU model (a timing
    cache only applies to the TensorRT and GPU that made it)."""
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    gpu = "".join(c if c.isalnum() else "-" for c in device.lower()).strip("-")
    return os.path.join(base, "vlmedge", "tensorrt",
                        f"timing-{trt_version}-sm{capability[0]}{capability[1]}-{gpu}.cache")


def _write_atomic(path: str, data: bytes) -> None:
    tmp = path + ".tmp"
    with open(tmp, "wb") as f:
        f.write(data)
    os.replace(tmp, path)


def build_engines(export_dir: str, target: str, precision: str = "fp16", workspace_bytes: int | None = None,
                  timing_cache: str | None = None, log: Callable[[str], None] = print, *,
                  stages: list[str] | None = None, max_context: int | None = None,
                  axis_overrides: Mapping[str, tuple[int, int, int]] | None = None, aot: bool = True,
                  tf32: bool = True, verify: bool = True) -> dict[str, dict]:
    """Builds `<stage>.engine` for every ONNX stage of `export_dir` (or `stages`) on this machine's GPU and returns
    {stage: record} for the manifest (write it with `write_engine_record`). See the module docstring for precision,
    profiles and failures; `aot` and `tf32` as in `build_engine`. `workspace_bytes`: the builder's workspace pool
    (default: the Jetson memory plan's, else TensorRT's default); `timing_cache`: its file (default
    `default_timing_cache(...)`), read before and written after every stage."""
    import onnx

    from vlmedge.export.manifest import Manifest
    from vlmedge.export.trt.plugins import PLUGIN_VERSION

    t_all = time.perf_counter()
    if target not in GPU_TARGETS:
        raise EngineBuildError(f"TensorRT engines are for GPU targets ({', '.join(GPU_TARGETS)}), not {target!r}; "
                               "a cpu export runs with ONNX Runtime")
    if precision not in PRECISIONS:
        raise EngineBuildError(f"precision {precision!r} is not one of {', '.join(PRECISIONS)}")
    manifest = Manifest.load(export_dir, verify=verify)
    require_tensorrt(export_dir)
    import tensorrt as trt

    device, cc = require_cuda(export_dir)
    if target in JETSON_TARGETS and cc != ORIN_CAPABILITY:
        raise EngineBuildError(f"engines for {target} are built on the Jetson itself: an engine runs only on the GPU "
                               f"model it was built for (Orin is sm_87, this machine has {device}, "
                               f"sm_{cc[0]}{cc[1]}); copy the export directory to the device and build there")
    names = [n for n, s in manifest.stages.items() if s.kind == "onnx" and (stages is None or n in stages)]
    unknown = sorted(set(stages or ()) - set(manifest.stages))
    if unknown:
        raise EngineBuildError(f"this export has no stage {unknown[0]!r} (stages: {', '.join(manifest.stages)})")
    limits = context_limits(manifest, max_context)
    profiles = optimisation_profiles(manifest, max_context=max_context, axis_overrides=axis_overrides, stages=names)
    plan = manifest.runtime.memory_plan or {}
    workspace = workspace_bytes if workspace_bytes is not None else plan.get("workspace_bytes")
    cache_path = timing_cache or default_timing_cache(trt.__version__, device, cc)
    os.makedirs(os.path.dirname(os.path.abspath(cache_path)), exist_ok=True)
    blob = b""
    if os.path.isfile(cache_path):
        with open(cache_path, "rb") as f:
            blob = f.read()
    cache = trt.Builder(trt_logger()).create_builder_config().create_timing_cache(blob)
    log(f"[engine] {manifest.model.family} export {export_dir} → TensorRT {trt.__version__} engines on {device} "
        f"(sm_{cc[0]}{cc[1]}), {precision}, target {target}; context: max {limits.max_context} / opt "
        f"{limits.opt_context} tokens ({limits.rule}); timing cache {cache_path}"
        + (" (reused)" if blob else " (new)") + f"; stages: {', '.join(names)}")
    record: dict[str, dict] = {}
    for i, sname in enumerate(names, 1):
        spec = manifest.stage(sname)
        src = os.path.join(export_dir, spec.file)
        log(f"[engine] {i}/{len(names)} {sname} ...")
        t0 = time.perf_counter()
        model = onnx.load(src, load_external_data=False)
        try:
            data, info = build_engine(model, path=src, precision=precision, profile=profiles.get(sname),
                                      workspace_bytes=workspace, timing_cache=cache, aot=aot, name=f"stage {sname!r}",
                                      graph_precision=manifest.precision, tf32=tf32)
        except EngineBuildError as err:
            raise EngineBuildError(f"{err}" if str(err).startswith("stage") else f"stage {sname!r}: {err}") from None
        file = sname + ENGINE_SUFFIX
        _write_atomic(os.path.join(export_dir, file), data)
        _write_atomic(cache_path, bytes(memoryview(cache.serialize())))
        build_s = round(time.perf_counter() - t0, 2)
        record[sname] = {
            "file": file, "onnx": spec.file, "precision": info["precision"], "network": info["network"],
            "profiles": profiles.get(sname, {}), "trt_version": trt.__version__,
            "plugin_version": PLUGIN_VERSION if info["plugins"] else None, "plugins": info["plugins"],
            "build_s": build_s, "bytes": len(data), "device": device, "compute_capability": f"{cc[0]}.{cc[1]}",
            "workspace_bytes": int(workspace) if workspace else None, "tf32": tf32,
        }
        if sname == "llm":
            record[sname]["context"] = limits.to_dict()
        plugins = f", plugins {', '.join(f'{k} ({v})' for k, v in info['plugins'].items())}" if info["plugins"] else ""
        log(f"[engine] {i}/{len(names)} {sname}: {file} {len(data) / 2**20:.1f} MB, {info['precision']} "
            f"({info['network']}){plugins} in {build_s:.1f}s")
    log(f"[engine] done in {time.perf_counter() - t_all:.1f}s")
    return record


# ----- the manifest record -----
def read_engine_record(export_dir: str, manifest: Any = None) -> dict | None:
    """The engines record of an export ({stage: record}), or None when it has none."""
    from vlmedge.export.manifest import Manifest

    m = manifest if manifest is not None else Manifest.load(export_dir, verify=False)
    return dict(m.engines) if m.engines else None


def write_engine_record(export_dir: str, record: Mapping[str, Mapping]) -> str:
    """Puts `record` into manifest.json's `engines` and the engine files into its checksummed `files`, replacing an
    earlier record (its engine files leave `files`; engines of stages not rebuilt are dropped). Written atomically.
    Returns the manifest's path."""
    from vlmedge.export.manifest import FileEntry, Manifest, sha256_file

    m = Manifest.load(export_dir, verify=False)
    for old in (m.engines or {}).values():
        m.files.pop(str(old.get("file")), None)
    for stage, rec in record.items():
        full = os.path.join(export_dir, rec["file"])
        if not os.path.isfile(full):
            raise EngineBuildError(f"stage {stage!r}: {full} does not exist; build the engines first")
        m.files[rec["file"]] = FileEntry(sha256=sha256_file(full), bytes=os.path.getsize(full))
    m.files = dict(sorted(m.files.items()))
    m.engines = {k: dict(v) for k, v in record.items()} or None
    m._check(export_dir)
    return m.save(export_dir)


def _stage_records(record: Mapping) -> dict[str, Mapping]:
    if "plugin_version" in record or "file" in record:  # one stage's record
        return {str(record.get("file", "engine")): record}
    return {str(k): v for k, v in record.items() if isinstance(v, Mapping)}


def check_plugin_version(record: Mapping) -> None:
    """Refuses engines built with `vlmedge` plugins of another version than this runtime's (PluginVersionError,
    naming both). `record`: the engines record {stage: {...}} or one stage's record. Stages without plugins pass."""
    from vlmedge.export.trt.plugins import PLUGIN_VERSION

    for stage, rec in _stage_records(record).items():
        got = rec.get("plugin_version")
        if got is not None and str(got) != PLUGIN_VERSION:
            raise PluginVersionError(
                f"engine {rec.get('file', stage)!r} was built with vlmedge TensorRT plugin version {got}, but this "
                f"vlmedge's plugins are version {PLUGIN_VERSION}; rebuild the engines with this vlmedge "
                "(build_engines / `vlmedge export --target ...`) or run the ONNX graphs with ONNX Runtime")


def check_engine_platform(record: Mapping, trt_version: str, capability: tuple[int, int] | None) -> None:
    """Refuses engines built with another TensorRT version or for another compute capability (EngineMismatchError):
    TensorRT would fail to deserialise them, with a less helpful message."""
    for stage, rec in _stage_records(record).items():
        built = rec.get("trt_version")
        if built and str(built) != str(trt_version):
            raise EngineMismatchError(f"engine {rec.get('file', stage)!r} was built with TensorRT {built}; this "
                                      f"machine has TensorRT {trt_version}: rebuild the engines here")
        want = rec.get("compute_capability")
        if want and capability is not None and str(want) != f"{capability[0]}.{capability[1]}":
            raise EngineMismatchError(f"engine {rec.get('file', stage)!r} was built for a compute capability {want} "
                                      f"GPU ({rec.get('device', '?')}); this one is {capability[0]}.{capability[1]}: "
                                      "rebuild the engines on this machine")


__all__ = ["TensorRTError", "TensorRTMissingError", "NoCudaDeviceError", "EngineBuildError", "PluginVersionError",
           "EngineMismatchError", "GPU_TARGETS", "ContextLimits", "tensorrt_available", "require_tensorrt",
           "require_cuda", "engines_buildable", "context_limits", "axis_ranges", "optimisation_profiles", "inspect_graph", "prepare_onnx",
           "network_mode", "build_engine", "build_engines", "default_timing_cache", "read_engine_record",
           "write_engine_record", "check_plugin_version", "check_engine_platform", "trt_logger", "last_trt_error"]
