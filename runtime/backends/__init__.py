"""Runtime backends that serve an export directory behind the adapter interface the session uses.

`load_backend(export_dir, backend="onnxruntime")` → an object `StreamingSession` runs unchanged: "onnxruntime" runs
the ONNX graphs (CPU here; CUDA/TensorRT execution providers where installed), "tensorrt" the engines that
`vlmedge build-engines` recorded in the manifest (needs TensorRT and the GPU that built them), "auto" the engines
when this machine can run them, else the graphs. The torch backend is the adapter itself
(`vlmedge.models.from_pretrained`).
"""
from __future__ import annotations

from vlmedge.errors import UnknownNameError

BACKENDS = ("onnxruntime", "tensorrt")


def pick_backend(export_dir: str) -> str:
    """"tensorrt" when the export records engines and this machine has TensorRT and a CUDA GPU, else "onnxruntime".
    Engines built for another GPU or TensorRT version are not second-guessed here: loading them says so."""
    from vlmedge.export.manifest import Manifest
    from vlmedge.export.trt.engine import tensorrt_available

    if not Manifest.load(export_dir, verify=False).engines or not tensorrt_available():
        return "onnxruntime"
    import torch

    return "tensorrt" if torch.cuda.is_available() else "onnxruntime"


def load_backend(export_dir: str, backend: str = "onnxruntime", **kwargs):
    if backend == "auto":
        backend = pick_backend(export_dir)
    if backend == "onnxruntime":
        from vlmedge.runtime.backends.onnxruntime import load_backend as load

        return load(export_dir, **kwargs)
    if backend == "tensorrt":
        from vlmedge.runtime.backends.tensorrt import load_backend as load_trt

        kwargs.pop("threads", None)  # a CPU thread count means nothing to engines
        return load_trt(export_dir, **kwargs)
    raise UnknownNameError(f"unknown backend {backend!r}; available for export directories: auto, {', '.join(BACKENDS)}")


__all__ = ["BACKENDS", "load_backend", "pick_backend"]
