"""Where the bundled reference models live (Hugging Face layout, inside the installed package)."""
from __future__ import annotations

import os

from vlmedge.errors import ModelFileError

REFERENCE_FAMILIES = ("llava_onevision", "qwen2_5_omni")


def reference_dir(family: str) -> str:
    if family not in REFERENCE_FAMILIES:
        raise ModelFileError(f"no bundled reference model for family {family!r}; bundled: {', '.join(REFERENCE_FAMILIES)}")
    path = os.path.join(os.path.dirname(os.path.abspath(__file__)), "reference", family)
    if not os.path.isfile(os.path.join(path, "model.safetensors")):
        raise ModelFileError(f"the bundled {family} reference model is not in {path}; train it with "
                             f"`vlmedge train-reference --family {family}` or pass --model DIR")
    return path
