"""The `vlmedge` ops as torch custom ops (`torch.ops.vlmedge.*`), and their ONNX translation for the dynamo exporter.

    torch.ops.vlmedge.stc_select(keys, ref_keys, ratio)                      -> indices [n]
    torch.ops.vlmedge.stc_merge(cached, fresh, indices)                      -> merged [T, D]
    torch.ops.vlmedge.prune_compact(logits, features, threshold, max_ratio, min_keep) -> (indices [K], kept [K, D])
    torch.ops.vlmedge.keep_count(scores, features, count, largest)           -> (indices [c], kept [c, D])
    torch.ops.vlmedge.dpp_greedy_map(kernel, relevance, steps, eps)          -> order [min(steps, N)]
    torch.ops.vlmedge.dpc_knn_select(x, n, k)                                -> indices [clamp(n, 0, N)]

Eager: the references in `reference.py`, with float settings read the way the ONNX attributes carry them
(`schemas.attr_float`: float32, shortest decimal), so eager, ONNX Runtime and TensorRT agree even for 0.7-like values.
Fake (tracing, `torch.export`): output sizes that follow from shapes and settings are computed when the shapes are
static; data-dependent ones (PruneCompact's K, KeepCount's count, any size from a dynamic dim) are new unbacked
symbols (`torch.library.get_ctx().new_dynamic_size()`), shared between an op's two outputs.

ONNX: `TRANSLATION_TABLE` maps each op overload to a function that emits the single `vlmedge` node (onnxscript
`Opset("vlmedge", 1)`, which finds the schemas `schemas.register()` put into ONNX's registry), every attribute
written. `export(module, args, path, **kw)` is `torch.onnx.export(..., dynamo=True)` with the table (and the schemas
registered); extra `custom_translation_table` entries are merged in.

Limits: `count` of keep_count is a 0-d int64 tensor (a Python int would be baked into the graph by torch.export;
wrap it: `torch.tensor(c)`); dpp_greedy_map's relevance is required (zeros: ascending tail); settings are Python
numbers fixed at export time (they become attributes).
"""
from __future__ import annotations

import os
from typing import Any

import torch
from torch import Tensor

from vlmedge.export.ops import reference as ref
from vlmedge.export.ops import schemas
from vlmedge.export.ops.schemas import DOMAIN, VERSION, attr_float

__all__ = ["stc_select", "stc_merge", "prune_compact", "keep_count", "dpp_greedy_map", "dpc_knn_select",
           "TRANSLATION_TABLE", "TORCH_NAMES", "export", "vlmedge_nodes"]

#: ONNX op → torch op name in the `vlmedge` namespace
TORCH_NAMES = {"StcSelect": "stc_select", "StcMerge": "stc_merge", "PruneCompact": "prune_compact",
               "KeepCount": "keep_count", "DppGreedyMap": "dpp_greedy_map", "DpcKnnSelect": "dpc_knn_select"}


def _size(n: Any, max_: Any = None):
    """`n` if it is a plain int, else a new unbacked size (at most `max_` when that is a plain int)."""
    if isinstance(n, int):
        return n
    ctx = torch.library.get_ctx()
    return ctx.new_dynamic_size(max=max_) if isinstance(max_, int) else ctx.new_dynamic_size()


# ---------------------------------------------------------------------------------------------------------------------
# ops


@torch.library.custom_op(f"{DOMAIN}::stc_select", mutates_args=())
def stc_select(keys: Tensor, ref_keys: Tensor, ratio: float = 0.25) -> Tensor:
    return ref.stc_select(keys, ref_keys, attr_float(ratio))


@stc_select.register_fake
def _(keys, ref_keys, ratio=0.25):
    t = keys.shape[0]
    n = min(t, max(1, int(t * attr_float(ratio)))) if isinstance(t, int) else _size(None, None)
    return keys.new_empty((n,), dtype=torch.long)


@torch.library.custom_op(f"{DOMAIN}::stc_merge", mutates_args=())
def stc_merge(cached: Tensor, fresh: Tensor, indices: Tensor) -> Tensor:
    return ref.stc_merge(cached, fresh, indices)


@stc_merge.register_fake
def _(cached, fresh, indices):
    return torch.empty_like(cached)


@torch.library.custom_op(f"{DOMAIN}::prune_compact", mutates_args=())
def prune_compact(logits: Tensor, features: Tensor, threshold: float = 0.5, max_ratio: float = 0.0,
                  min_keep: int = 1) -> tuple[Tensor, Tensor]:
    return ref.prune_compact(logits, features, attr_float(threshold), attr_float(max_ratio), int(min_keep))


@prune_compact.register_fake
def _(logits, features, threshold=0.5, max_ratio=0.0, min_keep=1):
    k = _size(None, features.shape[0])
    return features.new_empty((k,), dtype=torch.long), features.new_empty((k, features.shape[1]))


@torch.library.custom_op(f"{DOMAIN}::keep_count", mutates_args=())
def keep_count(scores: Tensor, features: Tensor, count: Tensor, largest: bool = True) -> tuple[Tensor, Tensor]:
    return ref.keep_count(scores, features, int(count), bool(largest))


@keep_count.register_fake
def _(scores, features, count, largest=True):
    k = _size(None, features.shape[0])
    return features.new_empty((k,), dtype=torch.long), features.new_empty((k, features.shape[1]))


@torch.library.custom_op(f"{DOMAIN}::dpp_greedy_map", mutates_args=())
def dpp_greedy_map(kernel: Tensor, relevance: Tensor, steps: int, eps: float = 1e-10) -> Tensor:
    return ref.dpp_greedy_map(kernel, relevance, int(steps), attr_float(eps))


@dpp_greedy_map.register_fake
def _(kernel, relevance, steps, eps=1e-10):
    n = kernel.shape[0]
    s = max(0, min(int(steps), n)) if isinstance(n, int) else _size(None, None)
    return kernel.new_empty((s,), dtype=torch.long)


@torch.library.custom_op(f"{DOMAIN}::dpc_knn_select", mutates_args=())
def dpc_knn_select(x: Tensor, n: int, k: int = 5) -> Tensor:
    return ref.dpc_knn_select(x, int(n), int(k))


@dpc_knn_select.register_fake
def _(x, n, k=5):
    p = x.shape[0]
    m = max(0, min(int(n), p)) if isinstance(p, int) else _size(None, None)
    return x.new_empty((m,), dtype=torch.long)


# ---------------------------------------------------------------------------------------------------------------------
# ONNX translation (traced by torch's dynamo exporter; the annotations tell it which arguments are attributes)


def _opset():
    import onnxscript

    schemas.register()  # onnxscript builds the node from the schema in ONNX's registry
    return onnxscript.values.Opset(DOMAIN, VERSION)


def _onnx_stc_select(keys, ref_keys, ratio: float = 0.25):
    return _opset().StcSelect(keys, ref_keys, ratio=float(ratio))


def _onnx_stc_merge(cached, fresh, indices):
    return _opset().StcMerge(cached, fresh, indices)


def _onnx_prune_compact(logits, features, threshold: float = 0.5, max_ratio: float = 0.0, min_keep: int = 1):
    idx, kept = _opset().PruneCompact(logits, features, threshold=float(threshold), max_ratio=float(max_ratio),
                                      min_keep=int(min_keep))
    return idx, kept


def _onnx_keep_count(scores, features, count, largest: bool = True):
    idx, kept = _opset().KeepCount(scores, features, count, largest=int(bool(largest)))
    return idx, kept


def _onnx_dpp_greedy_map(kernel, relevance, steps: int, eps: float = 1e-10):
    return _opset().DppGreedyMap(kernel, relevance, steps=int(steps), eps=float(eps))


def _onnx_dpc_knn_select(x, n: int, k: int = 5):
    return _opset().DpcKnnSelect(x, n=int(n), k=int(k))


#: torch op overload → ONNX translation, for `torch.onnx.export(..., dynamo=True, custom_translation_table=...)`
TRANSLATION_TABLE = {
    torch.ops.vlmedge.stc_select.default: _onnx_stc_select,
    torch.ops.vlmedge.stc_merge.default: _onnx_stc_merge,
    torch.ops.vlmedge.prune_compact.default: _onnx_prune_compact,
    torch.ops.vlmedge.keep_count.default: _onnx_keep_count,
    torch.ops.vlmedge.dpp_greedy_map.default: _onnx_dpp_greedy_map,
    torch.ops.vlmedge.dpc_knn_select.default: _onnx_dpc_knn_select,
}


def export(module: torch.nn.Module, args: tuple, path: str | os.PathLike | None = None, **kw):
    """`torch.onnx.export(module, args, path, dynamo=True, custom_translation_table=TRANSLATION_TABLE, **kw)` with
    the schemas registered; returns the `ONNXProgram`. A `custom_translation_table` in `kw` is merged over ours."""
    schemas.register()
    table = dict(TRANSLATION_TABLE)
    table.update(kw.pop("custom_translation_table", None) or {})
    if kw.pop("dynamo", True) is not True:
        raise ValueError("the vlmedge ops export with the dynamo exporter only (dynamo=True)")
    return torch.onnx.export(module, args, path, dynamo=True, custom_translation_table=table, **kw)


def vlmedge_nodes(model) -> list:
    """The `vlmedge` nodes of an ONNX model (ModelProto), main graph and functions."""
    nodes = [n for n in model.graph.node if n.domain == DOMAIN]
    for f in model.functions:
        nodes += [n for n in f.node if n.domain == DOMAIN]
    return nodes
