"""The bench's timing half through an exported model: ONNX Runtime (CPU or CUDA) or TensorRT engines.

This is the bench's GPU mode. The torch adapters run on the CPU; on a CUDA machine the timed model is exported
per variant (the graphs depend on the method: STC's cacher has its own vision stage, GlimpsePrune its
predictor) and run by the backend a deployment would use:
- `onnxruntime`: an fp32 export with standard ops only, on the best provider ONNX Runtime offers here
  (TensorRT EP, CUDA EP, else CPU), so the same command times CPU and GPU;
- `tensorrt`: a `desktop` export (fp16, the `vlmedge` op domain) with engines built on this GPU, exactly what
  `vlmedge export --target desktop` and `vlmedge build-engines` make;
- `auto`: TensorRT when engines can be built here, else ONNX Runtime when it has a CUDA provider, else torch.
Exports are cached per method spec inside the bench's work folder, so a variant is exported once per run.
"""
from __future__ import annotations

import os
import re
import shutil

from vlmedge.errors import InputError

TIMING_BACKENDS = ("torch", "onnxruntime", "tensorrt", "auto")
TRT_TARGET = "desktop"


def resolve_backend(requested: str) -> str:
    """The backend `requested` stands for on this machine; raises `InputError` when it cannot run here."""
    if requested not in TIMING_BACKENDS:
        raise InputError(f"timing backend must be one of {', '.join(TIMING_BACKENDS)}, got {requested!r}")
    from vlmedge.export.trt.engine import engines_buildable

    if requested == "tensorrt":
        ok, why = engines_buildable(TRT_TARGET)
        if not ok:
            raise InputError(f"--timing-backend tensorrt cannot run here: {why}. Use --timing-backend onnxruntime "
                             "(CUDA when onnxruntime-gpu sees a GPU) or torch")
        return requested
    if requested != "auto":
        return requested
    if engines_buildable_here():
        return "tensorrt"
    return "onnxruntime" if ort_has_cuda() else "torch"


def engines_buildable_here() -> bool:
    from vlmedge.export.trt.engine import engines_buildable

    return engines_buildable(TRT_TARGET)[0]


def ort_has_cuda() -> bool:
    try:
        import onnxruntime as ort
    except ImportError:
        return False
    return any(p in ort.get_available_providers() for p in ("TensorrtExecutionProvider", "CUDAExecutionProvider"))


class ExportedModels:
    """`get(spec)`: the timing model exported for `spec` and opened with `backend` (exported on first use)."""

    def __init__(self, adapter, backend: str, work_dir: str, name: str, log=print):
        if backend not in ("onnxruntime", "tensorrt"):
            raise ValueError(f"ExportedModels runs onnxruntime or tensorrt, not {backend!r}")
        self.adapter, self.backend, self.work_dir, self.name, self.log = adapter, backend, work_dir, name, log
        self._open: dict[str, object] = {}

    def folder(self, spec: str) -> str:
        slug = re.sub(r"[^A-Za-z0-9.=_-]+", "_", spec)
        return os.path.join(self.work_dir, f"export-{self.name}-{self.backend}-{slug}")

    def get(self, spec: str):
        if spec not in self._open:
            # one export on disk and open at a time: a Qwen2-0.5B-shaped export is about 2 GB in fp32
            for old in self._open:
                shutil.rmtree(self.folder(old), ignore_errors=True)
            self._open = {}
            self._open[spec] = self._export(spec)
        return self._open[spec]

    def close(self) -> None:
        for old in self._open:
            shutil.rmtree(self.folder(old), ignore_errors=True)
        self._open = {}

    def _export(self, spec: str):
        from vlmedge.export import export_model
        from vlmedge.runtime.backends import load_backend

        out = self.folder(spec)
        log = lambda m: self.log(m.removeprefix("[export] "))  # noqa: E731
        if self.backend == "onnxruntime":
            export_model(self.adapter, out, spec, target="cpu", force=True, source=self.name, log=log)
            return load_backend(out, "onnxruntime")
        from vlmedge.export.trt.engine import build_engines, write_engine_record

        export_model(self.adapter, out, spec, target=TRT_TARGET, force=True, source=self.name, log=log)
        write_engine_record(out, build_engines(out, TRT_TARGET, "fp16", log=log))
        return load_backend(out, "tensorrt")


def device_of(model) -> str:
    """"cuda" or "cpu": where `model` (a torch adapter or a backend) runs its graphs."""
    return "cuda" if str(getattr(model, "device", "cpu")).startswith("cuda") else "cpu"
