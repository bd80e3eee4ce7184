"""vlmedge.pipelines: the `vlmedge` GStreamer element and pipelines around it.

`register()` makes the element available in this process; `plugin_dir()` is the folder to put on
GST_PLUGIN_PATH for gst-launch-1.0 (its `python/` folder holds the loader's entry file). The element itself
(element.py) needs PyGObject with GStreamer; worker.py and audio_track.py need neither.
"""
from __future__ import annotations

from pathlib import Path


def plugin_dir() -> Path:
    return Path(__file__).resolve().parent


def register() -> bool:
    """Initialises GStreamer if needed and registers the `vlmedge` element in this process."""
    from .gst import Gst, quiet_floating_warning

    if not Gst.is_initialized():
        Gst.init(None)
    quiet_floating_warning()
    from .element import register as _register

    return _register()
