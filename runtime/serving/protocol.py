"""The wire contract: Triton model names, their inputs and outputs, and how strings travel.

Everything a client needs to talk to a vlmedge server is here and in docs/serving.md, and nothing else: the
server (PyTriton) and a model repository for NVIDIA's Triton container both implement exactly these models, so
`ServerClient` (plain `tritonclient.grpc` calls) works unchanged against either.

Shapes below are per request and exclude the batch dimension where a model batches (`max_batch_size > 0`): a
client sends a frame as `[1, H, W, 3]`, `stream_id` as `[1, 1]`.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

FRAME_MODEL = "vlmedge_frame"  # raw frames: the server runs vision, compression and prefill (batched)
TOKENS_MODEL = "vlmedge_tokens"  # already-compressed visual tokens: the edge ran vision + compression (batched)
ASK_MODEL = "vlmedge_ask"  # a question; decoupled: text deltas stream back, the last response has the answer
CONTROL_MODEL = "vlmedge_control"  # open / reset / close / stats / list, answered with one JSON document
MODELS = (FRAME_MODEL, TOKENS_MODEL, ASK_MODEL, CONTROL_MODEL)

CONTROL_COMMANDS = ("open", "reset", "close", "stats", "list")


@dataclass(frozen=True)
class Io:
    name: str
    datatype: str  # Triton datatype name (tritonclient's InferInput takes it as is)
    dims: tuple[int, ...]  # without the batch dimension
    optional: bool = False

    @property
    def numpy_dtype(self):
        return {"BYTES": np.bytes_, "UINT8": np.uint8, "FP32": np.float32, "FP64": np.float64,
                "INT32": np.int32, "INT64": np.int64, "BOOL": np.bool_}[self.datatype]


# What every batched frame-like model answers, per row.
_FRAME_OUTPUTS = (
    Io("sampled", "BOOL", (1,)),  # False: the stream's sampler skipped the frame (nothing was computed)
    Io("frames", "INT64", (1,)),  # frames the stream holds after this one
    Io("tokens_in", "INT32", (1,)),  # visual tokens before compression (0 when skipped)
    Io("tokens_kept", "INT32", (1,)),  # visual tokens that went into the LLM (0 when skipped)
    Io("stream_tokens", "INT64", (1,)),  # KV entries the stream holds
    Io("encode_ms", "FP32", (1,)),  # the server's time on this frame: vision tower, compressor, LLM prefill
    Io("compress_ms", "FP32", (1,)),
    Io("prefill_ms", "FP32", (1,)),
    # Empty when the row was taken; else why not (the row only: the other rows of a batch are unaffected).
    Io("error", "BYTES", (1,)),
)

FRAME_INPUTS: tuple[Io, ...] = (
    Io("stream_id", "BYTES", (1,)),
    Io("frame", "UINT8", (-1, -1, 3)),  # HxWx3 RGB
    Io("time_s", "FP64", (1,)),  # stream time in seconds; must not go backwards within a stream
)
FRAME_OUTPUTS = _FRAME_OUTPUTS

TOKENS_INPUTS: tuple[Io, ...] = (
    Io("stream_id", "BYTES", (1,)),
    Io("time_s", "FP64", (1,)),
    Io("features", "FP32", (-1, -1)),  # [k, D] kept (or merged) visual tokens, LLM space, in kept order
    Io("keep", "INT64", (-1,)),  # [k] ascending indices of the kept tokens in the frame's raster grid
    Io("grid_hw", "INT64", (2,)),  # the grid the LLM sees: tokens_in = h * w
    Io("trailer", "FP32", (-1, -1)),  # [t, D] tokens the family appends to every frame (may be t = 0)
)
TOKENS_OUTPUTS = _FRAME_OUTPUTS

ASK_INPUTS = (
    Io("stream_id", "BYTES", (1,)),
    Io("question", "BYTES", (1,)),
    Io("max_new_tokens", "INT32", (1,), optional=True),  # default: the server's --max-new-tokens
)
ASK_OUTPUTS = (
    Io("text", "BYTES", (1,)),  # the next piece of the answer (may be empty); pieces join to the answer
    Io("done", "BOOL", (1,)),  # True on the last response of the answer
    Io("answer", "BYTES", (1,)),  # last response only: JSON (text, frames, stream_tokens, timings); else empty
)

CONTROL_INPUTS = (
    Io("command", "BYTES", (1,)),  # one of CONTROL_COMMANDS
    Io("stream_id", "BYTES", (1,), optional=True),  # open/reset/close: required; stats: one stream or all
    Io("options", "BYTES", (1,), optional=True),  # open: JSON {"split": "frames" | "tokens"}
)
CONTROL_OUTPUTS = (Io("result", "BYTES", (1,)),)  # JSON; always has "server_id" (changes when the server restarts)

ALL = {
    FRAME_MODEL: (FRAME_INPUTS, FRAME_OUTPUTS),
    TOKENS_MODEL: (TOKENS_INPUTS, TOKENS_OUTPUTS),
    ASK_MODEL: (ASK_INPUTS, ASK_OUTPUTS),
    CONTROL_MODEL: (CONTROL_INPUTS, CONTROL_OUTPUTS),
}

SPLITS = ("frames", "tokens")


def text_of(value) -> str:
    """One BYTES element (bytes, numpy bytes or str, as the different Triton front ends hand them) as text."""
    if isinstance(value, (bytes, np.bytes_)):
        return bytes(value).decode("utf-8", errors="replace")
    return str(value)


def first_text(array) -> str:
    """The text of a `[1]` or `[1, 1]` BYTES tensor."""
    return text_of(np.asarray(array).reshape(-1)[0]) if np.asarray(array).size else ""


def bytes_tensor(texts, shape=None) -> np.ndarray:
    arr = np.array([t.encode("utf-8") if isinstance(t, str) else bytes(t) for t in texts], dtype=np.object_)
    return arr.reshape(shape) if shape is not None else arr
