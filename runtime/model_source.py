"""One string names where a model comes from, for the CLI and the GStreamer element's `model` property.

- a directory with `manifest.json`: an export directory (`vlmedge export`), served by its TensorRT engines where
  this machine can run them (`vlmedge build-engines`), else by ONNX Runtime;
- any other directory: a Hugging Face model directory, run with PyTorch;
- `reference` or `reference:FAMILY`: the bundled reference model (trained on camworld);
- `tiny:FAMILY`: a tiny randomly initialised model (tests and plumbing; its answers are noise).
"""
from __future__ import annotations

import os

from vlmedge.errors import InputError, ModelFileError

BACKEND_CHOICES = ("auto", "torch", "onnxruntime", "tensorrt")
DEFAULT_FAMILY = "llava_onevision"


def _named(spec: str) -> tuple[str, str] | None:
    """('reference' | 'tiny', family) for a named model, None for a directory path."""
    kind, _, family = spec.partition(":")
    if kind in ("reference", "tiny") and not os.path.isdir(spec):
        return kind, family or DEFAULT_FAMILY
    return None


def describe_spec() -> str:
    return ("an export directory, a Hugging Face model directory, 'reference[:FAMILY]' or 'tiny:FAMILY'")


def open_model(spec: str, backend: str = "auto", words=()):
    """(adapter-like object the session runs, one-line description). Raises a `VlmedgeError` saying what to fix."""
    from vlmedge.models import FAMILIES, from_pretrained, tiny
    from vlmedge.models.reference_models import reference_dir

    spec = (spec or "").strip()
    if backend not in BACKEND_CHOICES:
        raise InputError(f"backend must be one of {', '.join(BACKEND_CHOICES)}, got {backend!r}")
    if not spec:
        raise InputError(f"no model given: set it to {describe_spec()}")
    named = _named(spec)
    if named:
        kind, family = named
        if family not in FAMILIES:
            raise InputError(f"unknown model family {family!r} in {spec!r}; families: {', '.join(FAMILIES)}")
        if backend in ("onnxruntime", "tensorrt"):
            raise InputError(f"{spec!r} is a PyTorch model; the {backend} backend runs an export directory "
                             "(make one with `vlmedge export`)")
        if kind == "tiny":
            from vlmedge.models.tokenizer import BASE_WORDS

            return tiny(family, seed=0, words=list(BASE_WORDS) + list(words)), f"tiny random {family} (answers are noise)"
        path = reference_dir(family)
        return from_pretrained(path), f"reference {family} model {path} (PyTorch)"
    if not os.path.exists(spec):
        raise ModelFileError(f"model {spec!r} does not exist; give {describe_spec()}")
    if not os.path.isdir(spec):
        raise ModelFileError(f"model {spec!r} is a file; give a directory ({describe_spec()})")
    exported = os.path.isfile(os.path.join(spec, "manifest.json"))
    if exported and backend == "torch":
        raise InputError(f"{spec} is an export directory; it runs with backend 'onnxruntime', 'tensorrt' (or 'auto')")
    if not exported and backend in ("onnxruntime", "tensorrt"):
        raise InputError(f"{spec} has no manifest.json, so it is not an export directory; export it first with "
                         f"`vlmedge export --model {spec} --out DIR` or use backend 'torch'")
    if exported:
        from vlmedge.runtime.backends import load_backend, pick_backend

        chosen = pick_backend(spec) if backend == "auto" else backend
        return load_backend(spec, chosen), f"export {spec} ({'TensorRT' if chosen == 'tensorrt' else 'ONNX Runtime'})"
    return from_pretrained(spec), f"model {spec} (PyTorch)"


def family_of(spec: str) -> str:
    """The model family a model string names, read without loading weights (from the string, manifest.json or
    config.json)."""
    import json

    from vlmedge.models.loading import _family_for

    spec = (spec or "").strip()
    named = _named(spec)
    if named:
        return named[1]
    if not os.path.isdir(spec):
        raise ModelFileError(f"model {spec!r} does not exist" + (" as a directory" if os.path.exists(spec) else "")
                             + f"; give {describe_spec()}")
    for name, read in (("manifest.json", lambda d: d["model"]["family"]),
                       ("config.json", lambda d: _family_for(d.get("model_type", "")))):
        path = os.path.join(spec, name)
        if os.path.isfile(path):
            try:
                with open(path) as f:
                    return read(json.load(f))
            except (OSError, ValueError, KeyError, TypeError) as err:
                raise ModelFileError(f"{path} is unreadable ({err}); re-export or re-download the model") from err
    raise ModelFileError(f"model {spec!r} is not an export directory (manifest.json) or a model directory "
                         f"(config.json); give {describe_spec()}")


def has_audio(spec: str) -> bool:
    from vlmedge.models import adapter_class

    return bool(adapter_class(family_of(spec)).has_audio)
