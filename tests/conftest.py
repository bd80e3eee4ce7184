import os

import numpy as np
import pytest
import torch

# onnx and onnxruntime load before any test loads GStreamer, or their C++ exceptions abort the process
# (see pipelines/gst.py)
import onnx  # noqa: E402,F401
import onnxruntime  # noqa: E402,F401

os.environ.setdefault("HF_HUB_OFFLINE", "1")
torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))

FAMILIES = ["llava_onevision", "qwen2_5_vl", "qwen2_5_omni"]


@pytest.fixture(scope="session")
def tiny_adapters():
    from vlmedge.models import tiny

    return {fam: tiny(fam, seed=0) for fam in FAMILIES}


def make_frames(n, h=40, w=60, seed=0):
    rng = np.random.default_rng(seed)
    return [rng.integers(0, 256, (h, w, 3), dtype=np.uint8) for _ in range(n)]
