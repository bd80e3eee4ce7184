"""The `vlmedge` custom-op domain: the iterative and data-dependent steps of the compression methods as graph ops.

`reference.py` holds each op's torch reference (the oracle every implementation is tested against); the ONNX
schemas, the ONNX Runtime implementation, the Triton kernels and the TensorRT plugins live beside it.
"""
