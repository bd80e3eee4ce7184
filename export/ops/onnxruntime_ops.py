"""ONNX Runtime (CPU) implementation of the `vlmedge` ops: onnxruntime-extensions Python custom ops (PyOp).

Why PyOp, not a compiled custom-op library:
- nothing to build: no C++ toolchain, no ONNX Runtime headers matching the installed wheel, no per-platform binary to
  ship; `pip install onnxruntime-extensions` brings one prebuilt library (`get_library_path()`) that hosts kernels
  written in Python;
- the kernels ARE the torch references (`reference.py`, called through numpy↔torch), so ONNX Runtime's results equal
  the references by construction — indices exactly and feature rows bit for bit (float32 and float64 outputs travel
  through Python floats, which hold them exactly);
- cost: one Python call per op per run (GIL taken, inputs copied into numpy, outputs copied back through a list).
  Fine for the CPU path, where these ops are a small part of a stage next to the model's matmuls. Deployments that
  need speed run the graphs on TensorRT with the plugins (or on the GPU kernels) instead; the ONNX contract
  (`schemas.py`) is the same.

Our domain, not `ai.onnx.contrib`: a PyOp registered as `"vlmedge::StcSelect"` goes into a custom-op domain named
`vlmedge` (onnxruntime-extensions splits the op type at `::`; every such domain is added to the session options when
the library is registered), so the graphs keep `domain="vlmedge"` with no rewriting at load time.

Limits of the PyOp host, and what this module does about them:
- an exception inside a PyOp kernel is not turned into an ONNX Runtime error: it ends the whole process
  (std::terminate). So no kernel here ever raises: a failing one (bad input, e.g. NaN logits) records the error,
  logs it and returns empty / NaN placeholder outputs; `inference_session(...)` returns a `Session` whose `run`
  raises `KernelError` with the original exception, and users of a plain `onnxruntime.InferenceSession` built on
  `session_options()` call `check_errors()` after `run`;
- a kernel is registered per input element type: float32 and float64. float16 is not offered: the host aborts the
  process on a float16 tensor (in or out), so ONNX Runtime rejects float16 graphs at load time instead, cleanly;
- every attribute a PyOp declares must be present in the node: `graphs.make_model` and `torch_ops` write them all,
  and `with_defaults(model)` / `inference_session(...)` fill in the schema defaults for graphs from elsewhere;
- no optional inputs: DppGreedyMap's `relevance` is required (zeros = ascending index for the tail);
- registering the library twice on one `SessionOptions` makes session creation fail, so `session_options()` marks the
  options it registered (a session config entry) and registers once per options object.

API: `available()`, `session_options(opts=None)`, `inference_session(model, opts=None, providers=None)` → `Session`,
`with_defaults(model)`, `check_errors()`, `missing_ops_hint(err)`, `MissingOpsError`, `KernelError`,
`SUPPORTED_TYPES`, `KERNELS`.
"""
from __future__ import annotations

import logging
import os
import re
import threading
from typing import Callable

import numpy as np
import onnx
import onnxruntime as ort
import torch

from vlmedge.export.ops import reference as ref
from vlmedge.export.ops import schemas
from vlmedge.export.ops.schemas import DOMAIN, attr_float

__all__ = ["available", "session_options", "inference_session", "Session", "with_defaults", "check_errors",
           "missing_ops_hint", "MissingOpsError", "KernelError", "SUPPORTED_TYPES", "KERNELS"]

log = logging.getLogger(__name__)
_MARK = "vlmedge.custom_ops_registered"  # session config entry set on options that hold our ops
_lock = threading.Lock()
_errors: list[tuple[str, BaseException]] = []  # kernel failures not yet reported (see check_errors)


class MissingOpsError(RuntimeError):
    """A graph with `vlmedge` ops could not be loaded; the message says what to do."""


class KernelError(RuntimeError):
    """A `vlmedge` kernel failed during `run` (its outputs were placeholders); the cause is chained."""


def available() -> bool:
    """Whether the ONNX Runtime implementation can be used here (onnxruntime-extensions installed)."""
    try:
        import onnxruntime_extensions  # noqa: F401
    except ImportError:
        return False
    return os.path.exists(onnxruntime_extensions.get_library_path())


# ---------------------------------------------------------------------------------------------------------------------
# kernels: numpy in, numpy out, through the torch references


def _t(a: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(a))


def _np(t: torch.Tensor) -> np.ndarray:
    return np.ascontiguousarray(t.detach().cpu().numpy())


def _stc_select(keys, ref_keys, ratio=0.25):
    return _np(ref.stc_select(_t(keys), _t(ref_keys), attr_float(ratio)))


def _stc_merge(cached, fresh, indices):
    return _np(ref.stc_merge(_t(cached), _t(fresh), _t(indices)))


def _prune_compact(logits, features, threshold=0.5, max_ratio=0.0, min_keep=1):
    idx, kept = ref.prune_compact(_t(logits), _t(features), attr_float(threshold), attr_float(max_ratio),
                                  int(min_keep))
    return _np(idx), _np(kept)


def _keep_count(scores, features, count, largest=1):
    idx, kept = ref.keep_count(_t(scores), _t(features), int(np.asarray(count).reshape(())), bool(largest))
    return _np(idx), _np(kept)


def _dpp_greedy_map(kernel, relevance, steps=1, eps=1e-10):
    return _np(ref.dpp_greedy_map(_t(kernel), _t(relevance), int(steps), attr_float(eps)))


def _dpc_knn_select(x, n=1, k=5):
    return _np(ref.dpc_knn_select(_t(x), int(n), int(k)))


#: op → kernel (numpy arrays and attribute keywords in; an array or a tuple of arrays out)
KERNELS: dict[str, Callable] = {"StcSelect": _stc_select, "StcMerge": _stc_merge, "PruneCompact": _prune_compact,
                                "KeepCount": _keep_count, "DppGreedyMap": _dpp_greedy_map,
                                "DpcKnnSelect": _dpc_knn_select}
assert tuple(KERNELS) == ref.OPS

#: op → element types of `T` this implementation runs
SUPPORTED_TYPES: dict[str, tuple[str, ...]] = {op: ("float32", "float64") for op in schemas.OPS}


def _guard(op: str, t: str) -> Callable:
    """The PyOp body of `op` for element type `t`: the kernel, outputs cast to the declared types, and no exception
    ever leaving it (it would abort the process): a failure is recorded and placeholders returned."""
    d = schemas.OPS[op]
    fn = KERNELS[op]
    out_dt = [np.dtype(t) if p.type == "T" else np.dtype(np.int64) for p in d.outputs]

    def kernel(*inputs, **attrs):
        try:
            res = fn(*inputs, **attrs)
            res = res if isinstance(res, tuple) else (res,)
            if len(res) != len(out_dt):
                raise RuntimeError(f"kernel gave {len(res)} outputs, the schema says {len(out_dt)}")
            res = tuple(np.ascontiguousarray(r, dtype=dt) for r, dt in zip(res, out_dt))
        except BaseException as e:  # noqa: BLE001 - see the docstring
            try:
                with _lock:
                    _errors.append((op, e))
                log.error("vlmedge %s kernel failed: %s: %s", op, type(e).__name__, e)
                res = _placeholders(d, inputs, out_dt)
            except BaseException:  # noqa: BLE001
                res = tuple(np.zeros((0,) * len(p.shape), dt) for p, dt in zip(d.outputs, out_dt))
        return res if len(res) > 1 else res[0]

    kernel.__name__ = f"vlmedge_{op}_{t}"
    return kernel


def _placeholders(d: schemas.OpDef, inputs, out_dt) -> tuple[np.ndarray, ...]:
    """Outputs of a failed kernel: dims shared with an input (D, T) kept, data-dependent ones 0; floats NaN."""
    sizes: dict[str, int] = {}
    for p, a in zip(d.inputs, inputs):
        for axis, sym in enumerate(p.shape):
            if axis < np.ndim(a):
                sizes.setdefault(sym, int(np.shape(a)[axis]))
    out = []
    for p, dt in zip(d.outputs, out_dt):
        shape = tuple(sizes.get(sym, 0) for sym in p.shape)
        out.append(np.full(shape, np.nan, dt) if dt.kind == "f" else np.zeros(shape, dt))
    return tuple(out)


def check_errors() -> None:
    """Raises `KernelError` if a `vlmedge` kernel failed since the last check (its outputs were placeholders), and
    forgets the failures. `Session.run` calls it; call it after `run` on a plain `onnxruntime.InferenceSession`."""
    with _lock:
        errs = list(_errors)
        _errors.clear()
    if errs:
        op, first = errs[0]
        more = f" (and {len(errs) - 1} more failure(s))" if len(errs) > 1 else ""
        raise KernelError(f"{DOMAIN}::{op} failed: {type(first).__name__}: {first}{more}") from first


def _define_ops() -> None:
    """Declares one PyOp per (op, element type) in the `vlmedge` domain, once per process."""
    from onnxruntime_extensions import Opdef, PyCustomOpDef as P, onnx_op

    dt = {"float32": P.dt_float, "float64": P.dt_double, "tensor(int64)": P.dt_int64}
    attr_dt = {"float": P.dt_float, "int": P.dt_int64}
    with _lock:
        # Opdef keeps every declared op for the life of the process (the C++ side holds them): look there, so that
        # a reload of this module does not declare them twice (ORT would refuse the duplicate kernels)
        have = {(od.op_type, tuple(od._nativedef.input_types)) for od in Opdef._odlist.values()}
        for op, d in schemas.OPS.items():
            for t in SUPPORTED_TYPES[op]:
                ins = [dt[t] if p.type == "T" else dt[p.type] for p in d.inputs]
                outs = [dt[t] if p.type == "T" else dt[p.type] for p in d.outputs]
                key = f"{DOMAIN}::{op}"
                if (key, tuple(ins)) in have:
                    continue
                onnx_op(op_type=key, inputs=ins, outputs=outs,
                        attrs={a.name: attr_dt[a.kind] for a in d.attrs})(_guard(op, t))


def session_options(opts: ort.SessionOptions | None = None) -> ort.SessionOptions:
    """`opts` (or new options) with the `vlmedge` ops registered; returns them. Safe to call again on the same
    options. Pass options on which onnxruntime-extensions' library was not registered by someone else: ORT refuses
    a library registered twice when the session is created."""
    try:
        import onnxruntime_extensions
    except ImportError as e:
        raise MissingOpsError("the ONNX Runtime implementation of the vlmedge ops needs onnxruntime-extensions "
                              "(pip install onnxruntime-extensions)") from e
    schemas.register()
    _define_ops()
    opts = opts if opts is not None else ort.SessionOptions()
    try:
        done = opts.get_session_config_entry(_MARK) == "1"
    except RuntimeError:  # no such entry
        done = False
    if not done:
        opts.register_custom_ops_library(onnxruntime_extensions.get_library_path())
        opts.add_session_config_entry(_MARK, "1")
    return opts


# ---------------------------------------------------------------------------------------------------------------------
# graphs from elsewhere: default attributes


def _graphs(g: onnx.GraphProto):
    yield g
    for node in g.node:
        for a in node.attribute:
            if a.type == onnx.AttributeProto.GRAPH:
                yield from _graphs(a.g)
            elif a.type == onnx.AttributeProto.GRAPHS:
                for sub in a.graphs:
                    yield from _graphs(sub)


def _nodes(model: onnx.ModelProto):
    for g in _graphs(model.graph):
        yield from g.node
    for f in model.functions:
        yield from f.node


def _missing_attrs(node: onnx.NodeProto) -> list[schemas.Attr]:
    d = schemas.OPS.get(node.op_type)
    if node.domain != DOMAIN or d is None:
        return []
    have = {a.name for a in node.attribute}
    return [a for a in d.attrs if a.name not in have]


def with_defaults(model: onnx.ModelProto) -> onnx.ModelProto:
    """`model` (changed in place, and returned) with every `vlmedge` node holding all its attributes: the schema
    defaults written where a node omits them. A missing required attribute raises `MissingOpsError`."""
    for node in _nodes(model):
        for a in _missing_attrs(node):
            if a.required:
                raise MissingOpsError(f"{DOMAIN}::{node.op_type} node {node.name!r} lacks the required attribute "
                                      f"{a.name!r} ({a.doc})")
            node.attribute.append(onnx.helper.make_attribute(
                a.name, a.default,
                attr_type=onnx.AttributeProto.FLOAT if a.kind == "float" else onnx.AttributeProto.INT))
    return model


class Session(ort.InferenceSession):
    """An `onnxruntime.InferenceSession` whose `run` raises `KernelError` when a `vlmedge` kernel failed.

    Kernel failures are kept process-wide: sessions run concurrently from several threads may see each other's."""

    def run(self, output_names, input_feed, run_options=None):
        with _lock:
            _errors.clear()  # failures left by plain sessions (already logged) are not this run's
        try:
            out = super().run(output_names, input_feed, run_options)
        except Exception:
            with _lock:
                _errors.clear()
            raise
        check_errors()
        return out


def inference_session(model: onnx.ModelProto | str | os.PathLike | bytes, opts: ort.SessionOptions | None = None,
                      providers: list | None = None, **kwargs) -> Session:
    """A `Session` of `model` (a ModelProto, a path or serialized bytes) with the `vlmedge` ops registered and
    default attributes filled in (a file is only reloaded when a node lacks some). Load errors caused by the ops come
    back as `MissingOpsError` with what to do; kernel failures in `run` as `KernelError`."""
    opts = session_options(opts)
    providers = providers or ["CPUExecutionProvider"]
    if isinstance(model, (str, os.PathLike)):
        head = onnx.load(os.fspath(model), load_external_data=False)
        if any(_missing_attrs(n) for n in _nodes(head)):
            model = with_defaults(onnx.load(os.fspath(model)))
        else:
            model = os.fspath(model)
    elif isinstance(model, bytes):
        head = onnx.load_from_string(model)
        model = with_defaults(head).SerializeToString() if any(_missing_attrs(n) for n in _nodes(head)) else model
    if isinstance(model, onnx.ModelProto):
        if any(_missing_attrs(n) for n in _nodes(model)):
            model = with_defaults(onnx.ModelProto.FromString(model.SerializeToString()))
        model = model.SerializeToString()
    try:
        return Session(model, opts, providers=providers, **kwargs)
    except Exception as e:
        hint = missing_ops_hint(e)
        if hint is None:
            raise
        raise MissingOpsError(hint) from e


# ---------------------------------------------------------------------------------------------------------------------
# errors

_NOT_REGISTERED = re.compile(r"([\w.]+):(\w+)\(-?\d+\) is not a registered function/op")
_NO_ATTR = re.compile(r"Unable to find attribute '(\w+)'")
_BAD_TYPE = re.compile(r"Type '(tensor\(\w+\))' of input parameter \((\w*)\) of operator \((\w+)\)")
_NO_IMPL = re.compile(r"Could not find an implementation for (\w+)\((\d+)\)")


def missing_ops_hint(err: BaseException | str) -> str | None:
    """What to do about an ONNX Runtime error caused by the `vlmedge` ops (not registered, an element type this
    implementation lacks, an attribute left out), or None when the error is about something else."""
    msg = str(err)
    m = _NOT_REGISTERED.search(msg)
    if m and m.group(1) == DOMAIN:
        return (f"the model uses the custom op {DOMAIN}::{m.group(2)}, which this ONNX Runtime session does not know: "
                f"create the session with `sess_options=vlmedge.export.ops.onnxruntime_ops.session_options()` "
                f"(registers the vlmedge ops, needs onnxruntime-extensions), or use "
                f"`onnxruntime_ops.inference_session(model)`; on GPU deployments load the vlmedge TensorRT plugins "
                f"instead. (ONNX Runtime said: {msg.strip()[:300]})")
    m = _BAD_TYPE.search(msg)
    if m and m.group(3) in schemas.OPS:
        op = m.group(3)
        return (f"{DOMAIN}::{op} input {m.group(2)!r} is {m.group(1)}; the ONNX Runtime implementation runs "
                f"{', '.join(SUPPORTED_TYPES[op])} (cast the graph's inputs, e.g. export in float32). "
                f"(ONNX Runtime said: {msg.strip()[:300]})")
    m = _NO_IMPL.search(msg)
    if m and m.group(1) in schemas.OPS:
        op = m.group(1)
        return (f"ONNX Runtime has no kernel for {DOMAIN}::{op} with these input types; this implementation runs "
                f"{', '.join(SUPPORTED_TYPES[op])}, registered by onnxruntime_ops.session_options(). "
                f"(ONNX Runtime said: {msg.strip()[:300]})")
    m = _NO_ATTR.search(msg)
    if m and any(m.group(1) in {a.name for a in d.attrs} for d in schemas.OPS.values()):
        return (f"a {DOMAIN} node lacks the attribute {m.group(1)!r}; the ONNX Runtime Python ops need every "
                f"attribute written: load the model through onnxruntime_ops.inference_session(model), or call "
                f"onnxruntime_ops.with_defaults(model) first. (ONNX Runtime said: {msg.strip()[:300]})")
    return None
