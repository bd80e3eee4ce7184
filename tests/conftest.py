import os

import numpy as np
import pytest
import torch

# onnx and onnxruntime load before any test loads GStreamer, or their C++ exceptions abort the process
# (see pipelines/gst.py)
import onnx  # noqa: E402,F401
import onnxruntime  # noqa: E402,F401

os.environ.setdefault("HF_HUB_OFFLINE", "1")
# Triton reads TRITON_INTERPRET when a kernel is decorated (when export/ops/triton_kernels.py is imported, by
# whichever test module imports it first), so it is set here, before any test module loads: without CUDA the
# kernels run under the interpreter.
if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")
torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))

FAMILIES = ["llava_onevision", "qwen2_5_vl", "qwen2_5_omni"]


CALIB_METHOD = "uniform:ratio=0.33"


@pytest.fixture(scope="session")
def tiny_export(tmp_path_factory):
    """An fp32 cpu-target export of the tiny LLaVA-OneVision (nothing may write into it)."""
    from vlmedge.export import export_model
    from vlmedge.models import tiny

    out = tmp_path_factory.mktemp("trt-tiny") / "export"
    export_model(tiny("llava_onevision"), str(out), "none", log=lambda s: None)
    return str(out)


@pytest.fixture(scope="session")
def calib_export(tmp_path_factory):
    """An fp32 ONNX export of the bundled LLaVA-OneVision reference model with uniform pruning (calibration tests
    quantise and tune it; nothing may write into it)."""
    from vlmedge.export import export_model
    from vlmedge.models import from_pretrained
    from vlmedge.models.reference_models import reference_dir

    out = tmp_path_factory.mktemp("calib-export") / "fp32"
    export_model(from_pretrained(reference_dir("llava_onevision")), str(out), CALIB_METHOD, log=lambda s: None)
    return str(out)


@pytest.fixture(scope="session")
def calib_set(tmp_path_factory):
    """16 camworld frames (a training seed: never an evaluation stream) as a calibration set."""
    from vlmedge.calibration.record import record

    out = tmp_path_factory.mktemp("calib-set") / "set"
    record("camworld:7", 16, str(out), min_change=0.0, progress=None)
    return str(out)


@pytest.fixture(scope="session")
def tiny_adapters():
    from vlmedge.models import tiny

    return {fam: tiny(fam, seed=0) for fam in FAMILIES}


def make_frames(n, h=40, w=60, seed=0):
    rng = np.random.default_rng(seed)
    return [rng.integers(0, 256, (h, w, 3), dtype=np.uint8) for _ in range(n)]


def pushed_session(adapter, frames=6, method="uniform:ratio=0.5", seed=3):
    """An unbounded session that has seen `frames` random frames, one a second."""
    from vlmedge.runtime import StreamingSession

    s = StreamingSession(adapter, method)
    for i, f in enumerate(make_frames(frames, seed=seed)):
        s.push_frame(f, time_s=float(i))
    return s
