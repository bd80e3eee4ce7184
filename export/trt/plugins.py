"""The six `vlmedge` ops (domain `vlmedge`, version 1; see export/ops/reference.py) as TensorRT Python plugins.

`register_plugins()` (idempotent) registers `vlmedge::<Op>` with `tensorrt.plugin` ("quickly deployable plugins"):

* `@trtp.register` — the descriptor: output shapes and types from the input shape expressions and the attributes.
  StcSelect's `n`, DppGreedyMap's `min(steps, N)` and DpcKnnSelect's `clamp(n, 0, N)` follow from shapes and
  settings. PruneCompact's `K` and KeepCount's `count` are data-dependent: each declares a size tensor
  (`trtp.size_tensor(opt, upper_bound=N)`, a third, int32 0-D output TensorRT requires; the ONNX node keeps its
  two outputs, the parser leaves the extra plugin output unnamed) and both outputs use its expression, so
  TensorRT allocates the upper bound `N` rows and reads the real count from the size tensor after the plugin ran.
* `@trtp.impl` (JIT, every op) — runs the Triton kernels of `export/ops/triton_kernels.py` (`*_into`: preallocated
  outputs, no host synchronisation) on TensorRT's stream. Tensors are zero-copy torch views of TensorRT's buffers
  through `__cuda_array_interface__` (`device_tensor`); the data-dependent outputs are viewed at their upper bound.
  DppGreedyMap and DpcKnnSelect take their workspace from torch's caching allocator on that stream (TensorRT gives
  Python plugins no workspace). A JIT plugin calls back into Python at run time: the process that runs such an
  engine must call `register_plugins()` before deserialising it (the TensorRT backend does).
* `@trtp.aot_impl` (ahead of time, StcMerge and KeepCount) — a Triton kernel compiled to PTX at build time and
  embedded in the engine: no Python at run time. TensorRT launches an AOT kernel once with the arguments
  `(input pointers, int32 scalars, output pointers)`; the two kernels below (`aot_kernels()`) are written for
  exactly that ABI, scalars as `trtp.SymInt32` shape expressions, float/bool settings as compile-time constants.
  Triton (>= 3.3) appends two hidden scratch pointers to every kernel; TensorRT passes null for parameters it was
  not given, which is what Triton itself passes when a kernel needs no scratch, so `_compile_aot` refuses a kernel
  that reports global or profile scratch (or multi-CTA / cooperative launches).

Why the other four are JIT only: an AOT plugin is a single kernel launch with no workspace.
StcSelect needs the T cosine similarities (a float reduction per token) before it can rank them — a scratch of T
floats between two phases; DppGreedyMap runs `steps` dependent GEMV + argmax iterations over a Cholesky factor
`C [steps, N]`; DpcKnnSelect needs the N x N distance matrix and kNN densities before its top-n; PruneCompact's
rule is three dependent passes (threshold count -> cap at int(max_ratio*N) -> min_keep top-k, with the cap computed
in double precision). The Triton `_into` kernels do these as several launches with workspace; a one-launch rewrite
of each is possible (one CTA, recomputation instead of scratch) but is not done here.

Building: both implementations of StcMerge/KeepCount are registered, so the network must say which to use —
`engine.build_engines(aot=True)` sets `NetworkDefinitionCreationFlag.PREFER_AOT_PYTHON_PLUGINS` (JIT-only ops
ignore a preference). The ONNX parser maps a node to a plugin when its op type is the plugin name and it carries
`plugin_namespace="vlmedge"`; `engine.prepare_onnx` adds that attribute (and every default attribute: Python
plugins have no attribute defaults) to a copy of the graph, so the exported ONNX stays TensorRT-agnostic.

Float attributes are read through `schemas.attr_float` (ONNX stores float32; 0.7 arrives as 0.699999988), as every
other implementation reads them.

No `from __future__ import annotations` in this module: `tensorrt.plugin` inspects the decorated functions'
annotations at run time (`issubclass(annotation, TensorDesc)`), so they must be real classes, not strings.
"""
import contextlib
import threading
from types import SimpleNamespace
from typing import Any, Dict, Iterator, Optional, Sequence, Tuple, Union

from vlmedge.export.ops.reference import DOMAIN, OPS, VERSION as OP_VERSION

PLUGIN_VERSION = "1"
NAMESPACE = DOMAIN  # plugins are registered as "vlmedge::<Op>"

#: ops with an ahead-of-time (PTX) implementation besides the JIT one
AOT_OPS = ("StcMerge", "KeepCount")
#: why an op has no AOT implementation (see the module docstring)
JIT_ONLY = {
    "StcSelect": "needs a T-float similarity scratch between its reduction and its selection; AOT plugins get "
                 "one kernel launch and no workspace",
    "PruneCompact": "three dependent passes (threshold count, ratio cap, min_keep top-k); the Triton kernels run "
                    "them as separate launches",
    "DppGreedyMap": "steps dependent GEMV+argmax iterations over a Cholesky workspace C [steps, N]",
    "DpcKnnSelect": "needs the N x N distance matrix and kNN densities (workspace) before its top-n",
}
#: the plugins' attributes in registration order (name, ONNX kind); defaults are the ONNX schema's (schemas.py)
ATTRIBUTES: Dict[str, Tuple[Tuple[str, str], ...]] = {
    "StcSelect": (("ratio", "float"),),
    "StcMerge": (),
    "PruneCompact": (("threshold", "float"), ("max_ratio", "float"), ("min_keep", "int")),
    "KeepCount": (("largest", "int"),),
    "DppGreedyMap": (("steps", "int"), ("eps", "float")),
    "DpcKnnSelect": (("n", "int"), ("k", "int")),
}
assert tuple(ATTRIBUTES) == OPS, "plugins and reference.py must list the same ops"

_lock = threading.Lock()


def plugin_id(op: str) -> str:
    return f"{NAMESPACE}::{op}"


def plugin_versions() -> Dict[str, Any]:
    """What the manifest records about the plugins: their version, the op set they implement and how."""
    return {"plugin_version": PLUGIN_VERSION, "namespace": NAMESPACE, "op_version": OP_VERSION,
            "implementations": {op: ("aot+jit" if op in AOT_OPS else "jit") for op in OPS}}


def implementation(op: str, aot: bool) -> str:
    """"aot" or "jit": what a build with `aot` (PREFER_AOT_PYTHON_PLUGINS) uses for `op`."""
    return "aot" if aot and op in AOT_OPS and _aot_supported() else "jit"


# ----- registration -----
def register_plugins() -> Dict[str, str]:
    """Registers the six ops with TensorRT's plugin registry (once per process; later calls return at once).

    Returns {op: "jit" | "aot+jit"}: what is registered. Raises TensorRTMissingError when TensorRT (or its
    `tensorrt.plugin` module, TensorRT >= 10.7) is missing."""
    from vlmedge.export.trt.engine import TensorRTMissingError, require_tensorrt

    with _lock:
        trt = require_tensorrt()
        try:
            import tensorrt.plugin as trtp  # type: ignore[import-not-found]  # tensorrt-stubs ship no tensorrt.plugin
        except ImportError as err:
            raise TensorRTMissingError(
                f"TensorRT {getattr(trt, '__version__', '?')} has no tensorrt.plugin module ({err}); the vlmedge "
                "plugins are Python plugins and need TensorRT >= 10.7 (10.8+ for the AOT kernels)") from None
        aot = _aot_supported(trtp)
        for op in OPS:
            if not _defined(trtp, op):
                _DEFINE[op](aot and op in AOT_OPS)
        return {op: ("aot+jit" if aot and op in AOT_OPS else "jit") for op in OPS}


def _defined(trtp: Any, op: str) -> bool:
    """True when `vlmedge::op` is already in tensorrt.plugin's registry (an earlier call, or a reloaded module)."""
    try:
        return hasattr(getattr(trtp.op, NAMESPACE), op)
    except AttributeError:
        return False


def _aot_supported(module: Any = None) -> bool:
    """True when tensorrt.plugin has the AOT API (TensorRT >= 10.8)."""
    if module is None:
        try:
            import tensorrt.plugin as trtp  # type: ignore[import-not-found]  # see register_plugins
        except Exception:  # noqa: BLE001 - no TensorRT: nothing is supported
            return False
        module = trtp
    return all(hasattr(module, n) for n in ("aot_impl", "KernelLaunchParams", "SymInt32", "SymIntExprs"))


# ----- helpers shared by the descriptors (shape expressions) -----
def _attr_float(value: float) -> float:
    from vlmedge.export.ops.schemas import attr_float

    return attr_float(float(value))


def stc_count(tokens: int, ratio: float) -> int:
    """StcSelect's n = max(1, min(int(T * ratio), T)), 0 for T = 0 (schemas.py)."""
    return min(tokens, max(1, int(tokens * ratio)))


def _clamped_length(trtp: Any, n: Any, k: int) -> Any:
    """max(0, min(k, n)) for a shape expression n and an int k: an int when n is a build-time constant."""
    if n.is_fake:  # TensorRT's type-only pass: shapes are placeholders, only dtypes matter
        return n
    if k <= 0:
        return 0
    if n.is_constant:
        return min(k, int(n.constant_value()))
    return trtp.min(n, k)


def _size_tensor(trtp: Any, n: Any) -> Any:
    """A size tensor for a data-dependent length in [0, n]: upper bound n, autotune value n/2 (n when n < 2)."""
    opt = n if n.is_fake or (n.is_constant and int(n.constant_value()) < 2) else n // 2
    return trtp.size_tensor(opt, n)


# ----- tensors: zero-copy torch views of TensorRT's buffers -----
_TYPESTR = {"float32": "<f4", "float16": "<f2", "bfloat16": "<i2", "int64": "<i8", "int32": "<i4", "int8": "|i1",
            "uint8": "|u1", "bool": "|b1"}
_TRT_TO_TORCH = {"FLOAT": "float32", "HALF": "float16", "BF16": "bfloat16", "INT64": "int64", "INT32": "int32",
                 "INT8": "int8", "UINT8": "uint8", "BOOL": "bool"}
_TRITON_PTR = {"FLOAT": "*fp32", "HALF": "*fp16", "BF16": "*bf16", "INT64": "*i64", "INT32": "*i32"}


class _DeviceArray:
    """The minimal `__cuda_array_interface__` (v3) object torch.as_tensor needs: contiguous, no stream to sync
    (the plugin runs on TensorRT's stream itself)."""

    def __init__(self, ptr: int, shape: Tuple[int, ...], typestr: str) -> None:
        self.__cuda_array_interface__ = {"shape": shape, "typestr": typestr, "data": (int(ptr), False),
                                         "version": 3, "strides": None, "stream": None}


def torch_dtype_name(trt_dtype: Any) -> str:
    """A TensorRT DataType as a torch dtype name ("float32", ...)."""
    name = getattr(trt_dtype, "name", str(trt_dtype).split(".")[-1])
    if name not in _TRT_TO_TORCH:
        raise TypeError(f"vlmedge plugins do not handle TensorRT type {name}")
    return _TRT_TO_TORCH[name]


def device_tensor(ptr: int, shape: Sequence[int], dtype: str) -> Any:
    """A torch CUDA tensor over `ptr` (not owned: valid while TensorRT keeps the buffer)."""
    import torch

    shape_t = tuple(int(s) for s in shape)
    tdtype = getattr(torch, dtype)
    n = 1
    for s in shape_t:
        n *= s
    if n == 0 or not ptr:
        return torch.empty(shape_t, dtype=tdtype, device="cuda")
    t = torch.as_tensor(_DeviceArray(ptr, shape_t, _TYPESTR[dtype]), device="cuda")
    return t.view(torch.bfloat16) if dtype == "bfloat16" else t


def _view(t: Any, shape: Optional[Sequence[int]] = None) -> Any:
    """A trtp.Tensor as a torch tensor; `shape` replaces a data-dependent shape (the allocation's upper bound)."""
    return device_tensor(t.data_ptr, tuple(t.shape) if shape is None else shape, torch_dtype_name(t.dtype))


@contextlib.contextmanager
def _on_stream(stream: int) -> Iterator[None]:
    """Runs torch (and Triton, which launches on torch's current stream) on TensorRT's stream."""
    import torch

    with torch.cuda.stream(torch.cuda.ExternalStream(stream)):
        yield


_kernels_module: Any = None


def _kernels() -> Any:
    """export/ops/triton_kernels.py (imported on the first plugin call; it needs a CUDA-capable Triton)."""
    global _kernels_module
    if _kernels_module is None:
        from vlmedge.export.ops import triton_kernels

        _kernels_module = triton_kernels
    return _kernels_module


def _count_buffer(size_view: Any) -> Tuple[Any, bool]:
    """(out_count [1] for a Triton `_into` kernel, whether it must be copied into the int32 size tensor after).
    The kernels' count dtype is `triton_kernels.COUNT_DTYPE` when they define it, else int64 (the ops' index type)."""
    import torch

    want = getattr(_kernels(), "COUNT_DTYPE", torch.int64)
    if want == size_view.dtype:
        return size_view.view(1), False
    return torch.empty(1, dtype=want, device=size_view.device), True


def _workspace(elems: int) -> Any:
    """A workspace of `triton_kernels.WORKSPACE_DTYPE` (float32 unless the module says otherwise) from torch's
    caching allocator on the current (TensorRT's) stream: freed blocks are reused only on that stream, in order."""
    import torch

    return torch.empty(max(1, int(elems)), dtype=getattr(_kernels(), "WORKSPACE_DTYPE", torch.float32),
                       device="cuda")


# ----- ahead-of-time kernels -----
_aot: Optional[SimpleNamespace] = None


def aot_kernels() -> SimpleNamespace:
    """The AOT kernels (`stc_merge`, `keep_count`), made on first use (set TRITON_INTERPRET=1 before the first call to
    run them on CPU tensors). Parameters in TensorRT's AOT order: input pointers, int32 scalars, output pointers,
    then compile-time constants."""
    global _aot
    if _aot is not None:
        return _aot
    import triton
    import triton.language as tl

    @triton.jit
    def stc_merge(cached, fresh, indices, N, D, out, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr):
        # one program per (output row, column block): the row comes from `fresh` when its index is listed
        # (the last listing wins), else from `cached`
        row = tl.program_id(0)
        cols = tl.program_id(1) * BLOCK_D + tl.arange(0, BLOCK_D)
        cmask = cols < D
        src = tl.full([], -1, tl.int32)
        for start in range(0, N, BLOCK_N):
            j = start + tl.arange(0, BLOCK_N)
            idx = tl.load(indices + j, mask=j < N, other=-1)
            src = tl.maximum(src, tl.max(tl.where(idx == row, j, -1), axis=0))
        srcv = tl.zeros([BLOCK_D], dtype=tl.int32) + src  # the row's source, per column (vector masks)
        take = srcv >= 0
        f = tl.load(fresh + srcv.to(tl.int64) * D + cols, mask=cmask & take, other=0.0)
        c = tl.load(cached + row.to(tl.int64) * D + cols, mask=cmask & (srcv < 0), other=0.0)
        v = tl.where(take, f.to(out.dtype.element_ty), c.to(out.dtype.element_ty))
        tl.store(out + row.to(tl.int64) * D + cols, v, mask=cmask)

    @triton.jit
    def keep_count(scores, features, count, N, D, out_indices, out_kept, out_count, LARGEST: tl.constexpr,
                   BLOCK_I: tl.constexpr, BLOCK_J: tl.constexpr, BLOCK_D: tl.constexpr):
        # one program: rank_i = #rows that beat row i (higher score, or equal and lower index; float32 compares),
        # keep rank_i < clamp(count, 0, N), write kept rows compacted in ascending index order
        c = tl.minimum(tl.maximum(tl.load(count), 0), N).to(tl.int32)
        written = tl.full([], 0, tl.int32)
        for i0 in range(0, N, BLOCK_I):
            i = i0 + tl.arange(0, BLOCK_I)
            imask = i < N
            si = tl.load(scores + i, mask=imask, other=0.0).to(tl.float32)
            rank = tl.zeros([BLOCK_I], dtype=tl.int32)
            for j0 in range(0, N, BLOCK_J):
                j = j0 + tl.arange(0, BLOCK_J)
                jmask = j < N
                sj = tl.load(scores + j, mask=jmask, other=0.0).to(tl.float32)
                if LARGEST:
                    better = sj[None, :] > si[:, None]
                else:
                    better = sj[None, :] < si[:, None]
                tie = (sj[None, :] == si[:, None]) & (j[None, :] < i[:, None])
                rank += tl.sum(((better | tie) & jmask[None, :]).to(tl.int32), axis=1)
            sel = (rank < c) & imask
            s32 = sel.to(tl.int32)
            pos = written + tl.cumsum(s32, axis=0) - s32
            tl.store(out_indices + pos, i.to(tl.int64), mask=sel)
            for d0 in range(0, D, BLOCK_D):
                d = d0 + tl.arange(0, BLOCK_D)
                m2 = sel[:, None] & (d < D)[None, :]
                v = tl.load(features + i[:, None].to(tl.int64) * D + d[None, :], mask=m2, other=0.0)
                tl.store(out_kept + pos[:, None].to(tl.int64) * D + d[None, :], v, mask=m2)
            written += tl.sum(s32, axis=0)
        tl.store(out_count, written.to(out_count.dtype.element_ty))

    _aot = SimpleNamespace(stc_merge=stc_merge, keep_count=keep_count,
                           stc_merge_consts={"BLOCK_N": 128, "BLOCK_D": 128},
                           keep_count_consts={"BLOCK_I": 64, "BLOCK_J": 128, "BLOCK_D": 64})
    return _aot


def triton_pointer(trt_dtype: Any) -> str:
    name = getattr(trt_dtype, "name", str(trt_dtype).split(".")[-1])
    if name not in _TRITON_PTR:
        raise TypeError(f"the vlmedge AOT kernels do not take TensorRT type {name}")
    return _TRITON_PTR[name]


def _ptx_version_cap(arch: int) -> Optional[int]:
    """The highest PTX ISA both the CUDA driver and Triton's ptxas handle, or None when unknown (no cap).
    Triton emits the ISA of the ptxas it bundles, which can be newer than a Jetson's driver accepts; the driver
    would then refuse the engine's kernel at run time."""
    try:
        import ctypes

        from triton.backends.nvidia.compiler import get_ptxas, ptx_get_version

        v = ctypes.c_int()
        if ctypes.CDLL("libcuda.so.1").cuDriverGetVersion(ctypes.byref(v)) != 0:
            return None
        driver = int(ptx_get_version(f"{v.value // 1000}.{(v.value % 1000) // 10}"))
        try:
            ptxas = get_ptxas(arch)  # Triton >= 3.6 picks ptxas by architecture
        except TypeError:
            ptxas = get_ptxas()  # type: ignore[call-arg]
        return min(driver, int(ptx_get_version(ptxas.version)))
    except Exception:  # noqa: BLE001 - any failure means "do not cap"
        return None


def compile_aot(kernel: Any, signature: Dict[str, str], constexprs: Dict[str, Any],
                arch: Optional[int] = None) -> Tuple[str, str, int, int]:
    """Compiles a Triton kernel to PTX for `arch` (default: the current GPU's sm); returns (kernel name, PTX,
    num_warps, shared memory bytes). Refuses what TensorRT's AOT launch cannot reproduce: global/profile scratch
    (TensorRT passes null for the hidden scratch pointers), more than one CTA per program, cooperative or PDL
    launches."""
    import triton
    from triton.backends.compiler import GPUTarget

    if arch is None:
        import torch

        major, minor = torch.cuda.get_device_capability()
        arch = major * 10 + minor
    cap = _ptx_version_cap(arch)
    src = triton.compiler.ASTSource(kernel, signature, constexprs)
    # no FMA contraction: the kernels only copy and compare, and the bits should not depend on Triton's default
    options: Dict[str, Any] = {"enable_fp_fusion": False}
    if cap:
        options["ptx_version"] = cap
    compiled = triton.compile(src, target=GPUTarget("cuda", arch, 32), options=options)
    md = compiled.metadata
    name = getattr(kernel, "__name__", str(kernel))
    problems = [f"{f}={getattr(md, f)}" for f in ("global_scratch_size", "profile_scratch_size")
                if int(getattr(md, f, 0) or 0) != 0]
    if int(getattr(md, "num_ctas", 1) or 1) != 1:
        problems.append(f"num_ctas={md.num_ctas}")
    problems += [f for f in ("launch_cooperative_grid", "launch_pdl") if bool(getattr(md, f, False))]
    if problems:
        raise RuntimeError(f"Triton kernel {name} needs {', '.join(problems)}, which TensorRT's AOT plugin launch "
                           "does not provide")
    return str(md.name), str(compiled.asm["ptx"]), int(md.num_warps), int(md.shared)


# ----- the six plugins -----
# Each definer imports tensorrt.plugin itself so that the annotations below name a module attribute (mypy sees an
# untyped module: tensorrt-stubs have no tensorrt.plugin) and TensorRT sees the real classes it checks.
def _int64(trt: Any) -> Any:
    return trt.DataType.INT64


def _define_stc_select(aot: bool) -> None:
    import tensorrt as trt
    import tensorrt.plugin as trtp  # type: ignore[import-not-found]  # not in tensorrt-stubs

    pid = plugin_id("StcSelect")

    @trtp.register(pid)
    def stc_select_desc(keys: trtp.TensorDesc, ref_keys: trtp.TensorDesc, ratio: float) -> trtp.TensorDesc:
        t = keys.shape_expr[0]
        if t.is_fake:
            return trtp.from_shape_expr((t,), dtype=_int64(trt))
        if not t.is_constant:
            raise ValueError("vlmedge::StcSelect needs a build-time token count T: n = int(T * ratio) is computed "
                             "in floating point, which shape expressions cannot; export the graph with static T")
        return trtp.from_shape_expr((stc_count(int(t.constant_value()), _attr_float(ratio)),), dtype=_int64(trt))

    @trtp.impl(pid)
    def stc_select_impl(keys, ref_keys, ratio, outputs, stream):
        with _on_stream(stream):
            out = _view(outputs[0])
            if out.numel() == 0:
                return
            _kernels().stc_select_into(_view(keys), _view(ref_keys), _attr_float(ratio), out)


def _define_stc_merge(aot: bool) -> None:
    import tensorrt as trt
    import tensorrt.plugin as trtp  # type: ignore[import-not-found]  # not in tensorrt-stubs

    pid = plugin_id("StcMerge")

    @trtp.register(pid)
    def stc_merge_desc(cached: trtp.TensorDesc, fresh: trtp.TensorDesc,
                       indices: trtp.TensorDesc) -> trtp.TensorDesc:
        return cached.like()

    @trtp.impl(pid)
    def stc_merge_impl(cached, fresh, indices, outputs, stream):
        with _on_stream(stream):
            out = _view(outputs[0])
            if out.numel() == 0:
                return
            _kernels().stc_merge_into(_view(cached), _view(fresh), _view(indices), out)

    if not aot:
        return

    @trtp.aot_impl(pid)
    def stc_merge_aot(cached: trtp.TensorDesc, fresh: trtp.TensorDesc, indices: trtp.TensorDesc,
                      outputs: Tuple[trtp.TensorDesc], tactic: int
                      ) -> Tuple[Union[str, bytes], Union[str, bytes], trtp.KernelLaunchParams, trtp.SymExprs]:
        k = aot_kernels()
        sig = {"cached": triton_pointer(cached.dtype), "fresh": triton_pointer(fresh.dtype), "indices": "*i64",
               "N": "i32", "D": "i32", "out": triton_pointer(outputs[0].dtype)}
        name, ptx, warps, shared = compile_aot(k.stc_merge, sig, k.stc_merge_consts)
        t, d = cached.shape_expr[0], cached.shape_expr[1]
        launch = trtp.KernelLaunchParams()
        launch.grid_x = t
        launch.grid_y = trtp.cdiv(d, k.stc_merge_consts["BLOCK_D"])
        launch.block_x = warps * 32
        launch.shared_mem = shared
        extra = trtp.SymIntExprs.from_tuple([trtp.SymInt32(fresh.shape_expr[0]), trtp.SymInt32(d)])
        return name, ptx, launch, extra


def _define_prune_compact(aot: bool) -> None:
    import tensorrt as trt
    import tensorrt.plugin as trtp  # type: ignore[import-not-found]  # not in tensorrt-stubs

    pid = plugin_id("PruneCompact")

    @trtp.register(pid)
    def prune_compact_desc(logits: trtp.TensorDesc, features: trtp.TensorDesc, threshold: float, max_ratio: float,
                           min_keep: int) -> Tuple[trtp.TensorDesc, trtp.TensorDesc, trtp.TensorDesc]:
        n, d = features.shape_expr[0], features.shape_expr[1]
        k = _size_tensor(trtp, n)
        return (trtp.from_shape_expr((k.expr(),), dtype=_int64(trt)),
                trtp.from_shape_expr((k.expr(), d), dtype=features.dtype), k)

    @trtp.impl(pid)
    def prune_compact_impl(logits, features, threshold, max_ratio, min_keep, outputs, stream):
        with _on_stream(stream):
            n, d = int(features.shape[0]), int(features.shape[1])
            size = _view(outputs[2], ())
            if n == 0:
                size.zero_()
                return
            count, copy = _count_buffer(size)
            _kernels().prune_compact_into(_view(logits), _view(features), _attr_float(threshold),
                                          _attr_float(max_ratio), int(min_keep), _view(outputs[0], (n,)),
                                          _view(outputs[1], (n, d)), count)
            if copy:
                size.copy_(count.view(()))


def _define_keep_count(aot: bool) -> None:
    import tensorrt as trt
    import tensorrt.plugin as trtp  # type: ignore[import-not-found]  # not in tensorrt-stubs

    pid = plugin_id("KeepCount")

    @trtp.register(pid)
    def keep_count_desc(scores: trtp.TensorDesc, features: trtp.TensorDesc, count: trtp.TensorDesc,
                        largest: int) -> Tuple[trtp.TensorDesc, trtp.TensorDesc, trtp.TensorDesc]:
        n, d = features.shape_expr[0], features.shape_expr[1]
        k = _size_tensor(trtp, n)
        return (trtp.from_shape_expr((k.expr(),), dtype=_int64(trt)),
                trtp.from_shape_expr((k.expr(), d), dtype=features.dtype), k)

    @trtp.impl(pid)
    def keep_count_impl(scores, features, count, largest, outputs, stream):
        with _on_stream(stream):
            n, d = int(features.shape[0]), int(features.shape[1])
            size = _view(outputs[2], ())
            if n == 0:
                size.zero_()
                return
            out_count, copy = _count_buffer(size)
            _kernels().keep_count_into(_view(scores), _view(features), _view(count, (1,)), bool(largest),
                                       _view(outputs[0], (n,)), _view(outputs[1], (n, d)), out_count)
            if copy:
                size.copy_(out_count.view(()))

    if not aot:
        return

    @trtp.aot_impl(pid)
    def keep_count_aot(scores: trtp.TensorDesc, features: trtp.TensorDesc, count: trtp.TensorDesc, largest: int,
                       outputs: Tuple[trtp.TensorDesc, trtp.TensorDesc, trtp.TensorDesc], tactic: int
                       ) -> Tuple[Union[str, bytes], Union[str, bytes], trtp.KernelLaunchParams, trtp.SymExprs]:
        k = aot_kernels()
        sig = {"scores": triton_pointer(scores.dtype), "features": triton_pointer(features.dtype),
               "count": triton_pointer(count.dtype), "N": "i32", "D": "i32", "out_indices": "*i64",
               "out_kept": triton_pointer(outputs[1].dtype), "out_count": triton_pointer(outputs[2].dtype)}
        name, ptx, warps, shared = compile_aot(k.keep_count, sig, {"LARGEST": bool(largest), **k.keep_count_consts})
        launch = trtp.KernelLaunchParams()  # one program (grid 1x1x1)
        launch.block_x = warps * 32
        launch.shared_mem = shared
        extra = trtp.SymIntExprs.from_tuple([trtp.SymInt32(features.shape_expr[0]),
                                             trtp.SymInt32(features.shape_expr[1])])
        return name, ptx, launch, extra


def _define_dpp_greedy_map(aot: bool) -> None:
    import tensorrt as trt
    import tensorrt.plugin as trtp  # type: ignore[import-not-found]  # not in tensorrt-stubs

    pid = plugin_id("DppGreedyMap")

    @trtp.register(pid)
    def dpp_greedy_map_desc(kernel: trtp.TensorDesc, relevance: trtp.TensorDesc, steps: int,
                            eps: float) -> trtp.TensorDesc:
        return trtp.from_shape_expr((_clamped_length(trtp, kernel.shape_expr[0], int(steps)),), dtype=_int64(trt))

    @trtp.impl(pid)
    def dpp_greedy_map_impl(kernel, relevance, steps, eps, outputs, stream):
        with _on_stream(stream):
            order = _view(outputs[0])
            if order.numel() == 0:
                return
            tk = _kernels()
            n = int(kernel.shape[0])
            ws = _workspace(tk.dpp_workspace_elems(n, int(steps)))
            tk.dpp_greedy_map_into(_view(kernel), _view(relevance), int(steps), _attr_float(eps), order, ws)


def _define_dpc_knn_select(aot: bool) -> None:
    import tensorrt as trt
    import tensorrt.plugin as trtp  # type: ignore[import-not-found]  # not in tensorrt-stubs

    pid = plugin_id("DpcKnnSelect")

    @trtp.register(pid)
    def dpc_knn_select_desc(x: trtp.TensorDesc, n: int, k: int) -> trtp.TensorDesc:
        return trtp.from_shape_expr((_clamped_length(trtp, x.shape_expr[0], int(n)),), dtype=_int64(trt))

    @trtp.impl(pid)
    def dpc_knn_select_impl(x, n, k, outputs, stream):
        with _on_stream(stream):
            out = _view(outputs[0])
            if out.numel() == 0:
                return
            tk = _kernels()
            ws = _workspace(tk.dpc_workspace_elems(int(x.shape[0])))
            tk.dpc_knn_select_into(_view(x), int(n), int(k), out, ws)


_DEFINE = {"StcSelect": _define_stc_select, "StcMerge": _define_stc_merge, "PruneCompact": _define_prune_compact,
           "KeepCount": _define_keep_count, "DppGreedyMap": _define_dpp_greedy_map,
           "DpcKnnSelect": _define_dpc_knn_select}

__all__ = ["PLUGIN_VERSION", "NAMESPACE", "AOT_OPS", "JIT_ONLY", "ATTRIBUTES", "plugin_id", "plugin_versions",
           "implementation", "register_plugins", "aot_kernels", "compile_aot", "device_tensor", "torch_dtype_name",
           "triton_pointer", "stc_count"]
