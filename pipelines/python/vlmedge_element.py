"""Entry file for GStreamer's Python plugin loader (gst-python): put this file's parent's parent on
GST_PLUGIN_PATH and `gst-launch-1.0 ... ! vlmedge ! ...` finds the element.

The loader embeds the system Python, not vlmedge's virtual environment, so the environment's site-packages
are added first: $VLMEDGE_VENV, else an active $VIRTUAL_ENV, else the checkout's .venv. Only a
site-packages of this interpreter's own major.minor version is added (compiled wheels must match it).
The file is named so it cannot shadow the `vlmedge` package on sys.path.
"""
import os
import site
import sys
from pathlib import Path


def _add_environment() -> None:
    here = Path(__file__).resolve()
    candidates = [os.environ.get("VLMEDGE_VENV"), os.environ.get("VIRTUAL_ENV"), str(here.parents[2] / ".venv")]
    ver = f"python{sys.version_info.major}.{sys.version_info.minor}"
    for venv in filter(None, candidates):
        sp = Path(venv) / "lib" / ver / "site-packages"
        if sp.is_dir():
            site.addsitedir(str(sp))
            return


try:
    import vlmedge  # noqa: F401  (installed where the embedded Python already looks)
except ImportError:
    _add_environment()

from vlmedge.pipelines.element import VlmEdge  # noqa: E402
from vlmedge.pipelines.gst import Gst, quiet_floating_warning  # noqa: E402

quiet_floating_warning()

__gstelementfactory__ = ("vlmedge", Gst.Rank.NONE, VlmEdge)
