"""One-op ONNX graphs of the `vlmedge` ops, declared in a line: for tests, benchmarks and the TensorRT harness.

    spec = OpSpec("PruneCompact", inputs={"logits": ("float32", ["N"]), "features": ("float32", ["N", 64])},
                  attrs={"threshold": 0.5})
    model = make_model(spec)            # onnx.ModelProto, checked with full_check
    onnx.save(model, "prune.onnx")

- `inputs`: graph-input name → (dtype, shape), in the op's input order (`schemas.OPS[op].inputs`; using the
  schema's names — keys, ref_keys, ... — is simplest). dtype: anything `numpy.dtype` takes ("float32", np.float16,
  ...) or an ONNX `TensorProto` enum value. shape: a list of ints (static), strings (symbolic, e.g. "N") or None
  (unknown); `[]` is a scalar (KeepCount's count).
- `attrs`: attribute values; every attribute is written into the node, missing ones with the schema default (the
  ONNX Runtime Python ops need them all present, and the graph then says exactly what runs).
- `outputs` (optional): output names; default the schema's (indices, kept, merged, order). Output types and shapes
  come from the schemas' shape inference; a dimension inference leaves open is named after the schema's symbolic
  shape (PruneCompact: indices ["K"], kept ["K", D]).
- `constants` (optional): input name → numpy array, stored as an initializer instead of a graph input (KeepCount
  with a fixed count gets a static output length).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Mapping, Sequence

import numpy as np
import onnx
from onnx import helper, numpy_helper

from vlmedge.export.ops import schemas

__all__ = ["OpSpec", "make_model", "make_node", "full_attrs", "DEFAULT_OPSET", "IR_VERSION"]

#: the ai.onnx opset the graphs import (the one-op graphs use no standard op; the import keeps tools happy)
DEFAULT_OPSET = 18
#: IR version 10 (ONNX 1.16): loadable by ONNX Runtime >= 1.17 and TensorRT 10
IR_VERSION = 10


@dataclass
class OpSpec:
    op: str
    inputs: Mapping[str, tuple[Any, Sequence[int | str | None]]]
    attrs: Mapping[str, float | int] = field(default_factory=dict)
    outputs: Sequence[str] | None = None
    constants: Mapping[str, np.ndarray] = field(default_factory=dict)
    name: str | None = None


def _elem_type(dtype) -> int:
    if isinstance(dtype, (int, np.integer)) and not isinstance(dtype, bool):
        return int(dtype)
    return helper.np_dtype_to_tensor_dtype(np.dtype(dtype))


def full_attrs(op: str, attrs: Mapping[str, float | int] | None = None) -> dict[str, float | int]:
    """All attributes of `op`: the given ones over the defaults; checks names and required ones."""
    d = schemas.OPS[op]
    attrs = dict(attrs or {})
    unknown = set(attrs) - {a.name for a in d.attrs}
    if unknown:
        raise ValueError(f"{op} has no attribute(s) {sorted(unknown)}; it has {[a.name for a in d.attrs]}")
    out: dict[str, float | int] = {}
    for a in d.attrs:
        if a.name in attrs:
            v = attrs[a.name]
            out[a.name] = float(v) if a.kind == "float" else int(v)
        elif a.required:
            raise ValueError(f"{op} needs attribute {a.name!r} ({a.doc})")
        else:
            out[a.name] = a.default
    return out


def make_node(op: str, inputs: Sequence[str], outputs: Sequence[str], attrs: Mapping[str, float | int] | None = None,
              name: str | None = None) -> onnx.NodeProto:
    """A `vlmedge` node with every attribute written (typed as the schema says: FLOAT or INT)."""
    d = schemas.OPS[op]
    if len(inputs) != len(d.inputs) or len(outputs) != len(d.outputs):
        raise ValueError(f"{op} takes inputs {[p.name for p in d.inputs]} and gives outputs "
                         f"{[p.name for p in d.outputs]}; got {list(inputs)} -> {list(outputs)}")
    node = helper.make_node(op, list(inputs), list(outputs), name=name or op, domain=schemas.DOMAIN)
    for k, v in full_attrs(op, attrs).items():
        kind = d.attr(k).kind
        node.attribute.append(helper.make_attribute(
            k, v, attr_type=onnx.AttributeProto.FLOAT if kind == "float" else onnx.AttributeProto.INT))
    return node


def make_model(spec: OpSpec, *, opset: int = DEFAULT_OPSET, ir_version: int = IR_VERSION,
               check: bool = True) -> onnx.ModelProto:
    """The one-op model of `spec` (schemas registered on the way), checked with `full_check` unless check=False."""
    schemas.register()
    d = schemas.OPS[spec.op] if spec.op in schemas.OPS else None
    if d is None:
        raise ValueError(f"unknown vlmedge op {spec.op!r}; the ops are {list(schemas.OPS)}")
    names = list(spec.inputs)
    if len(names) != len(d.inputs):
        raise ValueError(f"{spec.op} takes {len(d.inputs)} inputs ({[p.name for p in d.inputs]}), got {names}")
    out_names = list(spec.outputs or [p.name for p in d.outputs])
    node = make_node(spec.op, names, out_names, spec.attrs, spec.name)

    graph_inputs, inits = [], []
    for n in names:
        dtype, shape = spec.inputs[n]
        if n in spec.constants:
            arr = np.asarray(spec.constants[n], dtype=helper.tensor_dtype_to_np_dtype(_elem_type(dtype)))
            inits.append(numpy_helper.from_array(arr, n))
        else:
            graph_inputs.append(helper.make_tensor_value_info(n, _elem_type(dtype), list(shape)))
    unknown_constants = set(spec.constants) - set(names)
    if unknown_constants:
        raise ValueError(f"constants {sorted(unknown_constants)} are not inputs of the spec ({names})")

    # output types: the schema's inference (open dims stay open), then open dims named after the schema's shapes
    input_types = {vi.name: vi.type for vi in graph_inputs}
    for t in inits:
        input_types[t.name] = helper.make_tensor_type_proto(t.data_type, list(t.dims))
    inferred = onnx.shape_inference.infer_node_outputs(
        onnx.defs.get_schema(spec.op, schemas.VERSION, schemas.DOMAIN), node, input_types,
        input_data={t.name: t for t in inits}, opset_imports=[schemas.opset_import()], ir_version=ir_version)
    graph_outputs = []
    for p, n in zip(d.outputs, out_names):
        if n not in inferred:
            raise RuntimeError(f"shape inference gave no type for {spec.op} output {n!r}")
        tp = inferred[n].tensor_type
        dims: list[int | str] = []
        for axis, dim in enumerate(tp.shape.dim):
            if dim.HasField("dim_value"):
                dims.append(int(dim.dim_value))
            elif dim.HasField("dim_param") and dim.dim_param:
                dims.append(dim.dim_param)
            else:
                dims.append(p.shape[axis] if axis < len(p.shape) else f"{n}_{axis}")
        graph_outputs.append(helper.make_tensor_value_info(n, tp.elem_type, dims))

    model = _model(node, graph_inputs, graph_outputs, inits, opset, ir_version)
    if check:
        onnx.checker.check_model(model, full_check=True)
    return model


def _model(node, inputs, outputs, inits, opset, ir_version) -> onnx.ModelProto:
    graph = helper.make_graph([node], f"vlmedge_{node.op_type}", inputs, outputs, initializer=inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset), schemas.opset_import()],
                             ir_version=ir_version, producer_name="vlmedge")
