"""Many camera streams on one server: the vlmedge stages as Triton Inference Server models (hosted with
PyTriton), per-stream sessions keyed by a stream id, and a `tritonclient` client that also works against a
plain Triton server. See docs/serving.md.

PyTriton and tritonclient are optional: importing this package needs neither; `serve()` and `ServerClient`
say what to install when they are missing.
"""
from .protocol import ASK_MODEL, CONTROL_MODEL, FRAME_MODEL, MODELS, TOKENS_MODEL

__all__ = ["ASK_MODEL", "CONTROL_MODEL", "FRAME_MODEL", "MODELS", "TOKENS_MODEL", "ServerClient", "serve"]


def __getattr__(name):
    if name == "serve":
        from .server import serve

        return serve
    if name == "ServerClient":
        from .client import ServerClient

        return ServerClient
    raise AttributeError(name)
