"""TensorRT for export directories: the `vlmedge` ops as TensorRT Python plugins (`plugins.py`) and the engine
builder that turns each ONNX stage of an export into a `<stage>.engine` (`engine.py`).

Importing this package (or any module in it) never imports TensorRT: every `import tensorrt` is inside a function,
so machines without TensorRT (CPU-only exports, CI) can import it, and `engine.require_tensorrt()` turns a missing
TensorRT into one clear error. The runtime side is `vlmedge.runtime.backends.tensorrt`.
"""
