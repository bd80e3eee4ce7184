"""ONNX schemas of the `vlmedge` custom-op domain (version 1), all in this one file.

`OPS` is the declarative table (inputs, outputs, attributes with their ONNX types and defaults, docs, the symbolic
output shapes); `schema(op)` turns one entry into an `onnx.defs.OpSchema` with a type-and-shape inference function,
and `register()` puts all of them into ONNX's process-wide schema registry, after which
`onnx.checker.check_model(model, full_check=True)` checks graphs that use the ops, `onnx.shape_inference` infers
through them, and onnxscript (so torch's dynamo exporter) can emit them (`onnxscript.values.Opset("vlmedge", 1)` looks
the schemas up there). `opset_import()` is the model's `OperatorSetIdProto` for the domain.

Output shapes: a dimension that follows from the input shapes and attributes is inferred as a number (StcSelect's
`n`, DppGreedyMap's and DpcKnnSelect's lengths, KeepCount's when `count` is a constant); a data-dependent one
(PruneCompact's `K`, KeepCount's `count` fed at run time) is left symbolic (ONNX names it), and a graph that
declares its outputs (see `graphs.py`) names it after `OpDef.outputs[i].shape` (`K`, shared by PruneCompact's two
outputs).

Float attributes: ONNX stores a FLOAT attribute as float32, so `ratio=0.7` reaches a kernel as 0.699999988. Where
the reference does `int(T * ratio)` that floors one lower (7 → 6 for T = 10). Every implementation therefore reads a
float attribute through `attr_float`: the shortest decimal that rounds to the stored float32 (0.699999988 → 0.7), so
the ops agree with the references called with the decimal settings people write. A setting that is not a short
decimal (1/3) is taken as its float32 rounding's shortest decimal (0.33333334) everywhere, torch ops included.
"""
from __future__ import annotations

import threading
from dataclasses import dataclass, field
from typing import Callable

import numpy as np
import onnx
from onnx import TensorProto, defs, helper

from vlmedge.export.ops.reference import DOMAIN, OPS as OP_NAMES, VERSION

__all__ = ["DOMAIN", "VERSION", "FLOAT_TYPES", "Param", "Attr", "OpDef", "OPS", "attr_float", "schema", "register",
           "registered", "opset_import", "defaults"]

#: Element types the float inputs (`T`) may have. An implementation may support fewer (onnxruntime_ops: float and
#: double, and float16 for the ops that only return indices).
FLOAT_TYPES = ("tensor(float16)", "tensor(float)", "tensor(double)", "tensor(bfloat16)")
INT64 = "tensor(int64)"


def attr_float(value: float) -> float:
    """The value a FLOAT attribute carries, as every vlmedge kernel reads it: the shortest decimal that rounds to the
    float32 ONNX stores (0.7 → float32 0.699999988 → 0.7). Idempotent."""
    return float(str(np.float32(value)))


@dataclass(frozen=True)
class Param:
    """One input or output: name, type (a constraint name like "T" or a concrete "tensor(int64)"), symbolic shape
    (names of dims; numbers are not used here) and doc."""
    name: str
    type: str
    shape: tuple[str, ...]
    doc: str


@dataclass(frozen=True)
class Attr:
    """One attribute: `kind` "float" or "int" (ONNX FLOAT / INT); `default` None means required."""
    name: str
    kind: str
    default: float | int | None
    doc: str

    @property
    def required(self) -> bool:
        return self.default is None


@dataclass(frozen=True)
class OpDef:
    name: str
    doc: str
    inputs: tuple[Param, ...]
    outputs: tuple[Param, ...]
    attrs: tuple[Attr, ...] = ()
    #: the inputs that only decide indices (never copied to an output): implementations may accept float16 there
    index_only: bool = False
    infer: Callable | None = field(default=None, compare=False, repr=False)

    def attr(self, name: str) -> Attr:
        for a in self.attrs:
            if a.name == name:
                return a
        raise KeyError(f"{self.name} has no attribute {name!r} (it has {', '.join(a.name for a in self.attrs)})")


# ---------------------------------------------------------------------------------------------------------------------
# shape inference helpers


def _fail(ctx, msg: str):
    raise onnx.shape_inference.InferenceError(f"[vlmedge] {ctx.get_display_name()}: {msg}")


def _dims(tp: onnx.TypeProto) -> list[int | str | None] | None:
    """Dims of a tensor type: int (known), str (symbolic), None (unknown); None when the rank is unknown."""
    tt = tp.tensor_type
    if not tt.HasField("shape"):
        return None
    out: list[int | str | None] = []
    for d in tt.shape.dim:
        if d.HasField("dim_value"):
            out.append(int(d.dim_value))
        elif d.HasField("dim_param") and d.dim_param:
            out.append(d.dim_param)
        else:
            out.append(None)
    return out


def _input(ctx, i: int, rank: int, what: str) -> tuple[int, list[int | str | None] | None]:
    tp = ctx.get_input_type(i)
    if tp is None:
        return TensorProto.UNDEFINED, None
    dims = _dims(tp)
    if dims is not None and len(dims) != rank:
        _fail(ctx, f"{what} must be {rank}-D, got shape {dims}")
    return tp.tensor_type.elem_type, dims


def _set(ctx, i: int, elem_type: int, dims: list[int | str | None]) -> None:
    tp = onnx.TypeProto()
    tp.tensor_type.elem_type = elem_type
    shape = tp.tensor_type.shape
    for d in dims:
        dim = shape.dim.add()
        if isinstance(d, int):
            dim.dim_value = d
        elif isinstance(d, str):
            dim.dim_param = d
    ctx.set_output_type(i, tp)


def _attr(ctx, op: str, name: str):
    proto = ctx.get_attribute(name)
    a = OPS[op].attr(name)
    if proto is None:
        if a.required:
            _fail(ctx, f"attribute {name!r} is required")
        return a.default
    v = helper.get_attribute_value(proto)
    return attr_float(v) if a.kind == "float" else int(v)


def _same(ctx, a: int | str | None, b: int | str | None, what: str) -> None:
    if isinstance(a, int) and isinstance(b, int) and a != b:
        _fail(ctx, what)


def _count(ctx, i: int) -> int | None:
    """The value of a scalar int64 input when it is a constant (initializer or Constant), else None."""
    data = ctx.get_input_data(i)
    if data is None:
        return None
    arr = onnx.numpy_helper.to_array(data)
    if arr.size != 1:
        _fail(ctx, f"count must be a scalar, got shape {list(arr.shape)}")
    return int(arr.reshape(()))


def _infer_stc_select(ctx):
    et, keys = _input(ctx, 0, 2, "keys [T, C]")
    _, ref = _input(ctx, 1, 2, "ref_keys [T, C]")
    if keys is not None and ref is not None:
        _same(ctx, keys[0], ref[0], f"keys {keys} and ref_keys {ref} must have the same shape")
        _same(ctx, keys[1], ref[1], f"keys {keys} and ref_keys {ref} must have the same shape")
    ratio = _attr(ctx, "StcSelect", "ratio")
    t = keys[0] if keys is not None else None
    if not isinstance(t, int) and ref is not None:
        t = ref[0]
    n = min(t, max(1, int(t * ratio))) if isinstance(t, int) else None
    _set(ctx, 0, TensorProto.INT64, [n])


def _infer_stc_merge(ctx):
    et, cached = _input(ctx, 0, 2, "cached [T, D]")
    _, fresh = _input(ctx, 1, 2, "fresh [n, D]")
    _, idx = _input(ctx, 2, 1, "indices [n]")
    if fresh is not None and idx is not None:
        _same(ctx, fresh[0], idx[0], f"fresh {fresh} needs one row per index ({idx})")
    if fresh is not None and cached is not None:
        _same(ctx, fresh[1], cached[1], f"fresh {fresh} and cached {cached} must have the same width D")
    dims = cached if cached is not None else [None, fresh[1] if fresh is not None else None]
    _set(ctx, 0, et, dims)


def _infer_prune_compact(ctx):
    _, logits = _input(ctx, 0, 1, "logits [N]")
    et, feats = _input(ctx, 1, 2, "features [N, D]")
    if logits is not None and feats is not None:
        _same(ctx, logits[0], feats[0], f"logits {logits} need one per feature row ({feats})")
    _attr(ctx, "PruneCompact", "threshold")
    _set(ctx, 0, TensorProto.INT64, [None])
    _set(ctx, 1, et, [None, feats[1] if feats is not None else None])


def _infer_keep_count(ctx):
    _, scores = _input(ctx, 0, 1, "scores [N]")
    et, feats = _input(ctx, 1, 2, "features [N, D]")
    _, cnt = _input(ctx, 2, 0, "count []")
    if scores is not None and feats is not None:
        _same(ctx, scores[0], feats[0], f"scores {scores} need one per feature row ({feats})")
    c = _count(ctx, 2)
    n = scores[0] if scores is not None else None
    if not isinstance(n, int) and feats is not None:
        n = feats[0]
    k = max(0, min(c, n)) if c is not None and isinstance(n, int) else None
    _set(ctx, 0, TensorProto.INT64, [k])
    _set(ctx, 1, et, [k, feats[1] if feats is not None else None])


def _infer_dpp(ctx):
    _, kernel = _input(ctx, 0, 2, "kernel [N, N]")
    _, rel = _input(ctx, 1, 1, "relevance [N]")
    if kernel is not None:
        _same(ctx, kernel[0], kernel[1], f"kernel must be square, got {kernel}")
        if rel is not None:
            _same(ctx, kernel[0], rel[0], f"relevance {rel} needs one per kernel row ({kernel})")
    steps = _attr(ctx, "DppGreedyMap", "steps")
    n = kernel[0] if kernel is not None else None
    if not isinstance(n, int) and kernel is not None:
        n = kernel[1]
    if not isinstance(n, int) and rel is not None:
        n = rel[0]
    _set(ctx, 0, TensorProto.INT64, [max(0, min(steps, n)) if isinstance(n, int) else None])


def _infer_dpc(ctx):
    _, x = _input(ctx, 0, 2, "x [N, D]")
    n = _attr(ctx, "DpcKnnSelect", "n")
    if _attr(ctx, "DpcKnnSelect", "k") < 1:
        _fail(ctx, "k must be >= 1")
    p = x[0] if x is not None else None
    _set(ctx, 0, TensorProto.INT64, [max(0, min(n, p)) if isinstance(p, int) else None])


# ---------------------------------------------------------------------------------------------------------------------
# the table

_IDX = "indices, int64, ascending"

OPS: dict[str, OpDef] = {op.name: op for op in (
    OpDef("StcSelect",
          "STC cacher: the n tokens whose keys are least cosine-similar (over all C channels, in float32) to the "
          "reference keys at the same position, n = max(1, min(int(T * ratio), T)) (0 when T = 0); ties to the lower "
          "index. Output indices are ascending.",
          inputs=(Param("keys", "T", ("T", "C"), "this frame's keys of the selective layer"),
                  Param("ref_keys", "T", ("T", "C"), "the reference frame's keys")),
          outputs=(Param("indices", INT64, ("n",), f"{_IDX}; n follows from T and ratio (static)"),),
          attrs=(Attr("ratio", "float", 0.25, "fraction of tokens recomputed, in (0, 1]"),),
          index_only=True, infer=_infer_stc_select),
    OpDef("StcMerge",
          "STC cacher: `cached` with rows `indices` replaced by `fresh` (fresh cast to cached's type).",
          inputs=(Param("cached", "T", ("T", "D"), "the cached rows"),
                  Param("fresh", "T", ("n", "D"), "the recomputed rows, one per index"),
                  Param("indices", INT64, ("n",), "rows to replace, distinct, in [0, T)")),
          outputs=(Param("merged", "T", ("T", "D"), "cached with the fresh rows in place"),),
          infer=_infer_stc_merge),
    OpDef("PruneCompact",
          "GlimpsePrune keep rule: keep = sigmoid(logits) > threshold (float32, strict); if max_ratio > 0 and more "
          "than max_ratio * N are kept, keep the top int(max_ratio * N) by logit; if fewer than min_keep (> 0) are "
          "kept, keep the top min_keep. Top ranks by logit, ties to the lower index. Outputs the kept indices "
          "(ascending) and the kept rows of features, compacted. K is data-dependent.",
          inputs=(Param("logits", "T", ("N",), "visual-importance logits of one image"),
                  Param("features", "T", ("N", "D"), "the tokens")),
          outputs=(Param("indices", INT64, ("K",), f"{_IDX}; K data-dependent"),
                   Param("kept", "T", ("K", "D"), "features[indices]")),
          attrs=(Attr("threshold", "float", 0.5, "probability threshold in [0, 1]"),
                 Attr("max_ratio", "float", 0.0, "cap on the kept fraction, in [0, 1]; 0: no cap"),
                 Attr("min_keep", "int", 1, "minimum kept tokens; 0: no minimum")),
          infer=_infer_prune_compact),
    OpDef("KeepCount",
          "OmniZip window ratios: the `count` highest (largest = 1) or lowest (largest = 0) scoring rows (scores "
          "compared in float32, ties to the lower index), count clamped to [0, N]; indices ascending and those rows. "
          "The count is decided at run time.",
          inputs=(Param("scores", "T", ("N",), "one score per row"),
                  Param("features", "T", ("N", "D"), "the tokens"),
                  Param("count", INT64, (), "how many rows to keep (scalar)")),
          outputs=(Param("indices", INT64, ("count",), f"{_IDX}; length data-dependent"),
                   Param("kept", "T", ("count", "D"), "features[indices]")),
          attrs=(Attr("largest", "int", 1, "1: keep the highest scores, 0: the lowest"),),
          infer=_infer_keep_count),
    OpDef("DppGreedyMap",
          "Script QCSP: the exact greedy MAP order of the DPP with PSD kernel `kernel` (incremental Cholesky, first "
          "maximum wins). Once the best remaining variance is <= eps, the rest of the order is the unselected tokens "
          "by descending relevance, lower index first (pass equal relevance, e.g. zeros, for ascending index). "
          "float32 arithmetic (float64 for double inputs).",
          inputs=(Param("kernel", "T", ("N", "N"), "PSD kernel L = diag(r) S diag(r)"),
                  Param("relevance", "T", ("N",), "orders the tail after an early stop")),
          outputs=(Param("order", INT64, ("S",), "selection order (not sorted), S = min(steps, N)"),),
          attrs=(Attr("steps", "int", None, "tokens to select (required)"),
                 Attr("eps", "float", 1e-10, "early-stop threshold on the remaining variance")),
          index_only=True, infer=_infer_dpp),
    OpDef("DpcKnnSelect",
          "OmniZip ISTC even frames: DPC-KNN keep set with cosine distance (self excluded, k = min(k, N - 1) "
          "neighbours, density exp(-mean kNN distance), delta to the nearest denser token, peaks their largest "
          "distance), keep the top n by delta * density; ascending. n >= N keeps all, n <= 0 none.",
          inputs=(Param("x", "T", ("N", "D"), "one frame's tokens"),),
          outputs=(Param("indices", INT64, ("M",), f"{_IDX}; M = clamp(n, 0, N)"),),
          attrs=(Attr("n", "int", None, "tokens to keep (required)"),
                 Attr("k", "int", 5, "neighbours for the density, >= 1")),
          index_only=True, infer=_infer_dpc),
)}
assert tuple(OPS) == OP_NAMES, "schemas and reference.py must list the same ops"

_ATTR_TYPES = {"float": defs.OpSchema.AttrType.FLOAT, "int": defs.OpSchema.AttrType.INT}


def defaults(op: str) -> dict[str, float | int]:
    """The op's optional attributes with their defaults."""
    return {a.name: a.default for a in OPS[op].attrs if not a.required}


def schema(op: str) -> defs.OpSchema:
    """A fresh `onnx.defs.OpSchema` of one op (not registered)."""
    d = OPS[op]
    S = defs.OpSchema
    attrs = []
    for a in d.attrs:
        if a.required:
            attrs.append(S.Attribute(a.name, _ATTR_TYPES[a.kind], a.doc, required=True))
        else:
            attrs.append(S.Attribute(a.name, helper.make_attribute(a.name, a.default, attr_type=(
                onnx.AttributeProto.FLOAT if a.kind == "float" else onnx.AttributeProto.INT)), a.doc))
    typed = any(p.type == "T" for p in d.inputs + d.outputs)
    s = S(d.name, DOMAIN, VERSION, d.doc,
          inputs=[S.FormalParameter(p.name, p.type, f"{p.doc} [{', '.join(p.shape)}]") for p in d.inputs],
          outputs=[S.FormalParameter(p.name, p.type, f"{p.doc} [{', '.join(p.shape)}]") for p in d.outputs],
          type_constraints=[("T", list(FLOAT_TYPES), "float tensors")] if typed else [],
          attributes=attrs)
    if d.infer is not None:
        s.set_type_and_shape_inference_function(d.infer)
    return s


_lock = threading.Lock()


def registered(op: str) -> bool:
    return defs.has(op, VERSION, DOMAIN)


def register() -> list[str]:
    """Registers every op's schema with ONNX (process-wide); returns the ops this call registered.

    Idempotent: an op whose `vlmedge` v1 schema is already there (from an earlier call, or another registration in
    the process) is kept, after checking it has the same inputs, outputs and attributes; a different one raises.
    """
    done: list[str] = []
    with _lock:
        for name in OPS:
            if registered(name):
                _check_same(name)
                continue
            defs.register_schema(schema(name))
            done.append(name)
    return done


def _check_same(name: str) -> None:
    have = defs.get_schema(name, VERSION, DOMAIN)
    d = OPS[name]
    want = ([p.name for p in d.inputs], [p.name for p in d.outputs], sorted(a.name for a in d.attrs))
    got = ([p.name for p in have.inputs], [p.name for p in have.outputs], sorted(have.attributes))
    if want != got:
        raise RuntimeError(f"another schema of {DOMAIN}::{name} v{VERSION} is registered in this process "
                           f"(inputs, outputs, attributes {got}; this version of vlmedge expects {want})")


def opset_import() -> onnx.OperatorSetIdProto:
    """The model's opset import of the domain: `vlmedge` version 1."""
    return helper.make_opsetid(DOMAIN, VERSION)
