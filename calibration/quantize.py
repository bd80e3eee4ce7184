"""INT8 graphs from an fp32 export: ONNX Runtime post-training quantisation on activations a stream recorded.

Two forms, both standard ONNX that ONNX Runtime runs and the second of which TensorRT consumes:

* `dynamic` — int8 weights (per output channel), activations quantised at run time per tensor
  (DynamicQuantizeMatMul / MatMulIntegerToFloat on ONNX Runtime's CPU provider). The default for `--target cpu`.
* `static` — QDQ graphs with activation scales calibrated on the recorded stream (minmax, entropy or
  percentile), symmetric int8 activations and weights: TensorRT's explicit-quantisation input, the default for
  GPU and Jetson targets.

Why two, measured on the bundled reference model (2 CPU threads, ONNX Runtime 1.32): static QDQ made the vision
graph *slower* on CPU (3.5 ms vs 2.4 ms fp32) because ORT fuses only part of the DQ→Gemm pairs and dequantises
the remaining int8 weights on every run, with 2.3-2.9% relative output error; dynamic int8 ran it in 2.0 ms with
0.5% error. TensorRT, in contrast, needs the calibrated QDQ scales and fuses every pair itself.

LLM weights can instead be weight-only int4 (`llm_weights="int4"`, MatMulNBits, block 32): 4x smaller
weights where memory is what limits the board; on the tiny reference model it is not faster than fp32.
"""
from __future__ import annotations

import contextlib
import io
import logging
import os
import shutil
import tempfile
from dataclasses import asdict, dataclass

from vlmedge.errors import InputError

MODES = ("dynamic", "static")
CALIBRATE_METHODS = ("minmax", "entropy", "percentile")
LLM_WEIGHTS = ("int8", "int4")
QUANT_OPS = ("MatMul", "Gemm", "Conv")
_EXTERNAL_BYTES = 1_800_000_000  # protobuf's 2 GB limit, with margin: larger graphs keep weights in .data files


@dataclass
class QuantSettings:
    mode: str = "dynamic"
    calibrate_method: str = "minmax"
    percentile: float = 99.999
    per_channel: bool = True
    llm_weights: str = "int8"
    block_size: int = 32  # int4 weight-only: weights per scale

    def check(self) -> None:
        if self.mode not in MODES:
            raise InputError(f"quantisation mode {self.mode!r} is not one of {', '.join(MODES)}")
        if self.calibrate_method not in CALIBRATE_METHODS:
            raise InputError(f"calibration method {self.calibrate_method!r} is not one of {', '.join(CALIBRATE_METHODS)}")
        if self.llm_weights not in LLM_WEIGHTS:
            raise InputError(f"LLM weights {self.llm_weights!r} must be one of {', '.join(LLM_WEIGHTS)}")
        if not 90.0 <= self.percentile < 100.0:
            raise InputError(f"percentile must be in [90, 100), got {self.percentile}")
        if self.block_size not in (16, 32, 64, 128, 256):
            raise InputError(f"int4 block size must be 16, 32, 64, 128 or 256, got {self.block_size}")

    def to_dict(self) -> dict:
        return asdict(self)


class _ListReader:
    """ONNX Runtime's CalibrationDataReader over recorded feeds, readable in ranges.

    The LLM's feeds differ in shape from run to run (sequence and past lengths), and ORT's histogram collectors
    (entropy, percentile) stack each tensor's values over one `collect_data` call, which fails on mixed shapes.
    Reading one feed per call (`CalibStridedMinMax` = 1, which makes ORT call `set_range` then `collect_data`
    per stride for every calibrator) keeps each call homogeneous; the collectors merge across calls.
    """

    def __init__(self, feeds: list[dict]):
        self._feeds = feeds
        self._it = iter(feeds)

    def __len__(self) -> int:
        return len(self._feeds)

    def set_range(self, start_index: int, end_index: int) -> None:
        self._it = iter(self._feeds[start_index:end_index])

    def get_next(self):
        return next(self._it, None)


def quantize_graph(src: str, dst: str, stage: str, settings: QuantSettings, feeds: list[dict]) -> dict:
    """Quantises the graph `src` into `dst` (weights beside it in `dst.data` when large); returns what was done,
    for the manifest. `feeds` are the stage's recorded inputs (static mode calibrates on them)."""
    import onnx
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_dynamic, quantize_static

    with tempfile.TemporaryDirectory(prefix="vlmedge-quant-") as work:
        # The quantiser reads external weights relative to its input; a self-contained copy avoids its temporary
        # copies losing the `.data` file beside the original.
        model = onnx.load(src)
        large = model.ByteSize() > _EXTERNAL_BYTES if _fits(model) else True
        local = os.path.join(work, os.path.basename(src))
        onnx.save(model, local, save_as_external_data=large, location=os.path.basename(src) + ".data")
        del model
        level = logging.getLogger().level
        logging.getLogger().setLevel(logging.ERROR)  # the quantiser warns per rank-1 weight it leaves alone
        try:
            if stage == "llm" and settings.llm_weights == "int4":
                _int4(local, dst, settings, large)
                return {"form": "weight-only int4 (MatMulNBits)", "block_size": settings.block_size}
            if settings.mode == "dynamic":
                quantize_dynamic(local, dst, op_types_to_quantize=list(QUANT_OPS[:2]), per_channel=settings.per_channel,
                                 weight_type=QuantType.QInt8, use_external_data_format=large,
                                 extra_options={"MatMulConstBOnly": True})
                return {"form": "dynamic int8 (weights per channel, activations at run time)",
                        "per_channel": settings.per_channel}
            if not feeds:
                raise InputError(f"static quantisation of {stage!r} needs recorded inputs and none were captured; "
                                 "is the calibration set empty, or does the export's method skip this stage?")
            method = {"minmax": CalibrationMethod.MinMax, "entropy": CalibrationMethod.Entropy,
                      "percentile": CalibrationMethod.Percentile}[settings.calibrate_method]
            with contextlib.redirect_stdout(io.StringIO()):  # the histogram calibrators print a line per feed
                quantize_static(local, dst, _ListReader(feeds), quant_format=QuantFormat.QDQ,
                                op_types_to_quantize=list(QUANT_OPS), per_channel=settings.per_channel,
                                activation_type=QuantType.QInt8, weight_type=QuantType.QInt8,
                                calibrate_method=method, use_external_data_format=large,
                                # TensorRT's explicit quantisation takes symmetric int8 scales and float biases
                                # (an int32 bias DQ is not a pattern it fuses).
                                extra_options={"ActivationSymmetric": True, "WeightSymmetric": True,
                                               "QuantizeBias": False, "CalibStridedMinMax": 1,
                                               "CalibPercentile": settings.percentile,
                                               "CalibTensorRangeSymmetric": True})
            return {"form": "static int8 QDQ (calibrated activations)", "calibrate_method": settings.calibrate_method,
                    "calibration_runs": len(feeds), "per_channel": settings.per_channel,
                    **({"percentile": settings.percentile} if settings.calibrate_method == "percentile" else {})}
        finally:
            logging.getLogger().setLevel(level)


def _fits(model) -> bool:
    try:
        model.ByteSize()
        return True
    except Exception:  # noqa: BLE001 - protobuf raises on >2 GB messages
        return False


def _int4(src: str, dst: str, settings: QuantSettings, large: bool) -> None:
    import onnx
    from onnxruntime.quantization.matmul_nbits_quantizer import MatMulNBitsQuantizer

    # accuracy_level 4: activations in int8 inside MatMulNBits, the fast CPU path.
    q = MatMulNBitsQuantizer(onnx.load(src), bits=4, block_size=settings.block_size, is_symmetric=True,
                             accuracy_level=4)
    q.process()
    q.model.save_model_to_file(dst, large)


def replace_graph(directory: str, file: str) -> None:
    """Removes a stage's graph and its external weights so the quantised one can take the name."""
    for path in (os.path.join(directory, file), os.path.join(directory, file + ".data")):
        if os.path.isfile(path):
            os.remove(path)


def copy_export(src: str, dst: str) -> None:
    """The fp32 export's files (tokenizer, tables, graphs) into a fresh staging directory; the manifest and any
    TensorRT engines (built from the fp32 graphs, wrong for the int8 ones) are left out."""
    from vlmedge.export.manifest import MANIFEST_NAME
    from vlmedge.export.trt.engine import ENGINE_SUFFIX

    def skip(d, names):
        if not os.path.samefile(d, src):
            return []
        return [n for n in names if n == MANIFEST_NAME or n.endswith(ENGINE_SUFFIX)]

    shutil.copytree(src, dst, ignore=skip)
