"""Visual-token compression methods, registered by name (`--method NAME[:key=value,...]`)."""
from vlmedge.compression.base import Compressor, FrameContext, Selection, TokenBudget, WindowSelection
from vlmedge.compression.registry import available, get_method, method_class, register
from vlmedge.compression import baselines  # noqa: F401  (registers none / uniform / random)
from vlmedge.compression import stc  # noqa: F401  (registers stc)
from vlmedge.compression import omnizip  # noqa: F401  (registers omnizip, omnizip_random, omnizip_videoonly)
from vlmedge.compression import script  # noqa: F401  (registers script)
from vlmedge.compression.glimpse import method as _glimpse  # noqa: F401  (registers glimpse)

__all__ = ["Compressor", "FrameContext", "Selection", "TokenBudget", "WindowSelection", "available", "get_method", "method_class", "register"]
