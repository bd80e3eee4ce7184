"""Runtime backends that serve an export directory behind the adapter interface the session uses.

`load_backend(export_dir, backend="onnxruntime")` → an object `StreamingSession` runs unchanged. The torch
backend is the adapter itself (`vlmedge.models.from_pretrained`).
"""
from __future__ import annotations

from vlmedge.errors import UnknownNameError

BACKENDS = ("onnxruntime",)


def load_backend(export_dir: str, backend: str = "onnxruntime", **kwargs):
    if backend == "onnxruntime":
        from vlmedge.runtime.backends.onnxruntime import load_backend as load

        return load(export_dir, **kwargs)
    raise UnknownNameError(f"unknown backend {backend!r}; available for export directories: {', '.join(BACKENDS)}")


__all__ = ["BACKENDS", "load_backend"]
