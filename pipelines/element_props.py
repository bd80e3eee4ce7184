"""The `vlmedge` element's GObject properties: what `gst-inspect-1.0 vlmedge` shows.

One table so the element, `vlmedge run` and the docs agree on names, defaults and meaning.
"""
from __future__ import annotations

from .gst import GObject

RW = GObject.ParamFlags.READWRITE
RO = GObject.ParamFlags.READABLE
U64 = GObject.TYPE_UINT64

PROPERTIES = {
    "model": (str, "Model",
              "Where the model comes from: an export directory (vlmedge export; runs with ONNX Runtime), a Hugging Face "
              "model directory (PyTorch), 'reference[:FAMILY]' (the bundled reference model) or 'tiny:FAMILY' (random "
              "weights, for plumbing tests). Loaded in NULL->READY; a bad value fails that state change with the reason",
              "reference", RW),
    "backend": (str, "Backend", "auto (export directory: its TensorRT engines where this machine runs them, else onnxruntime; other models: torch), torch, onnxruntime or tensorrt", "auto", RW),
    "method": (str, "Compression method",
               "Visual-token compression as NAME[:key=value,...], e.g. 'stc:ratio=0.25' or 'script:ratio=0.11'; "
               "methods: none, uniform, random, stc, omnizip, script, glimpse (see vlmedge eval --help)",
               "none", RW),
    "sample-fps": (float, "Sample rate",
                   "Frames per second of stream time handed to the model (0: every frame); the video itself passes "
                   "through at its own rate", 0.0, 1000.0, 2.0, RW),
    "memory-budget": (str, "Memory budget",
                      "Bytes the model may use for weights, workspace and the stream's KV cache, e.g. '512MiB' or "
                      "'6GiB'; the oldest frames are evicted to stay inside it. Empty: the stream grows unbounded",
                      "", RW),
    "eviction": (str, "Eviction", "What leaves the cache under a memory budget: 'evict' (dropped) or 'offload' "
                                  "(kept in a host store and retrieved for questions that need it)", "evict", RW),
    "prompt": (str, "Standing prompt",
               "A standing question answered every prompt-interval seconds of stream time (or once at end of "
               "stream when prompt-interval is 0); query-conditioned methods select tokens for it", "", RW),
    "prompt-interval": (float, "Prompt interval", "Seconds of stream time between answers to the standing prompt "
                                                  "(0: answer it once, at end of stream)", 0.0, 86400.0, 0.0, RW),
    "question": (str, "Question", "Set at any time to ask once about the stream so far; the answer arrives as a "
                                  "vlmedge-answer bus message, on text_src and in the log", "", RW),
    "max-new-tokens": (int, "Max new tokens", "Longest answer, in tokens", 1, 4096, 16, RW),
    "drop-frames": (bool, "Drop frames",
                    "true: latest frame wins; a sampled frame the model is too slow for is replaced by a newer one "
                    "and counted in frames-dropped, so the pipeline never waits for the model (live sources). "
                    "false: the streaming thread waits for the model (files; every sampled frame is used)", True, RW),
    "answer-duration": (float, "Answer duration", "Seconds an answer stays on text_src (for textoverlay)",
                        0.1, 3600.0, 3.0, RW),
    "audio-wait": (float, "Audio wait", "Seconds the model waits for audio that lags the video before encoding a "
                                        "frame without it (omni models)", 0.0, 60.0, 1.0, RW),
    "server": (str, "Server",
               "HOST:PORT of a `vlmedge serve` gRPC endpoint (or a Triton server with vlmedge's models). Set: sampled "
               "frames, or their kept visual tokens (server-split), go to the server and answers come back on the "
               "bus and text_src as they would locally; a lost connection is retried with back-off and posted as a "
               "warning, and frames that cannot be sent are dropped and counted in frames-dropped. Audio stays "
               "local and is not sent. Empty: the model runs in this process", "", RW),
    "server-split": (str, "Server split",
                     "With server: 'frames' (the server runs the vision tower, compression and LLM; model and "
                     "method here are not used) or 'tokens' (this machine runs the vision tower and compressor of "
                     "model and method, and only the kept visual tokens travel; per-frame methods such as stc, "
                     "uniform, random)", "frames", RW),
    "stream-id": (str, "Stream id", "With server: this stream's name on the server, unique among its streams "
                                    "(empty: the element's name with a random suffix)", "", RW),
    "frame-stats": (bool, "Frame statistics", "Post a vlmedge-frame bus message per processed frame (tokens in and "
                                              "kept, encode/compress/prefill ms)", False, RW),
    "frames-in": (U64, "Frames in", "Video buffers received", 0, 2 ** 64 - 1, 0, RO),
    "frames-out": (U64, "Frames out", "Video buffers pushed downstream", 0, 2 ** 64 - 1, 0, RO),
    "frames-sampled": (U64, "Frames sampled", "Frames handed to the model's queue at sample-fps", 0, 2 ** 64 - 1, 0, RO),
    "frames-processed": (U64, "Frames processed", "Frames the model has encoded and prefilled", 0, 2 ** 64 - 1, 0, RO),
    "frames-dropped": (U64, "Frames dropped", "Sampled frames replaced by a newer one before the model took them",
                       0, 2 ** 64 - 1, 0, RO),
    "answers": (U64, "Answers", "Answers produced", 0, 2 ** 64 - 1, 0, RO),
    "stats": (str, "Statistics", "All counters as JSON, with the sustained sampled fps and answer latency",
              "{}", RO),
}

READ_ONLY_STATS = {name for name, spec in PROPERTIES.items() if spec[-1] == RO}
# Settings a running stream was built with; changing them applies from the next READY -> PAUSED.
RESTART_PROPS = {"model", "backend", "method", "memory-budget", "eviction", "max-new-tokens", "answer-duration",
                 "audio-wait", "server", "server-split", "stream-id"}
