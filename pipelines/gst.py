"""GStreamer's Python bindings, imported the one way vlmedge does it.

libgstreamer links libunwind, and once it is loaded into a process that already holds torch, C++ extension
modules imported *afterwards* (onnx, onnxruntime) abort the whole process on their first C++ exception (a
missing schema, a bad model path) instead of raising. Importing those modules before GStreamer avoids it,
so every vlmedge import of Gst goes through here. (Measured: `import torch; import Gst; import
onnxruntime; InferenceSession("missing")` aborts; with onnxruntime imported before Gst it raises.)
"""
from __future__ import annotations

import importlib


def preload_extensions() -> None:
    for name in ("onnx", "onnxruntime"):
        try:
            importlib.import_module(name)
        except ImportError:
            pass


preload_extensions()

import gi  # noqa: E402

gi.require_version("Gst", "1.0")
gi.require_version("GstVideo", "1.0")
from gi.repository import GLib, GObject, Gst, GstVideo  # noqa: E402

__all__ = ["GLib", "GObject", "Gst", "GstVideo", "preload_extensions", "quiet_floating_warning"]

# PyGObject before 3.46 sinks the floating reference of every element created from Python, and GStreamer
# criticises it ("The created element should be floating, ..."). It is harmless (gst-python's own elements
# print it too); the filter drops exactly that message and passes every other one on.
_FLOATING = "The created element should be floating"
_installed = False


def quiet_floating_warning() -> None:
    global _installed
    if _installed:
        return

    def handler(domain, level, message, _data):
        if _FLOATING not in (message or ""):
            GLib.log_default_handler(domain, level, message, None)

    GLib.log_set_handler("GStreamer", GLib.LogLevelFlags.LEVEL_CRITICAL, handler, None)
    _installed = True
