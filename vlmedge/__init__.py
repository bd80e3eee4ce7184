"""vlmedge: vision-language and omni-modal LLMs on the edge, kept fast by visual-token compression."""
from importlib.metadata import PackageNotFoundError, version as _version

try:
    __version__ = _version("vlmedge")
except PackageNotFoundError:  # running from a source tree that was never installed
    __version__ = "0.0.0+source"

from vlmedge.errors import VlmedgeError  # noqa: E402

__all__ = ["__version__", "VlmedgeError"]
