"""Finding the adapter for a model: by family name (tiny test models) or from a local checkpoint directory.

Nothing here reaches a model hub: directories are read with `local_files_only=True` and the hub is switched
off for the process, so a missing file is reported by name instead of being fetched.
"""
from __future__ import annotations

import json
import os

from vlmedge.errors import ModelFileError, UnknownNameError

FAMILIES = {
    "llava_onevision": ("vlmedge.models.llava_onevision", "LlavaOneVisionAdapter"),
    "qwen2_5_vl": ("vlmedge.models.qwen2_5_vl", "Qwen25VLAdapter"),
    "qwen2_5_omni": ("vlmedge.models.qwen2_5_omni", "Qwen25OmniAdapter"),
}


def adapter_class(family: str):
    if family not in FAMILIES:
        raise UnknownNameError(f"unknown model family {family!r}; supported: {', '.join(FAMILIES)}")
    import importlib

    module, name = FAMILIES[family]
    return getattr(importlib.import_module(module), name)


def tiny(family: str, seed: int = 0, **kwargs):
    """A small randomly initialised model of the family's real architecture, for tests and the demo."""
    return adapter_class(family).tiny(seed=seed, **kwargs)


def _family_for(model_type: str) -> str:
    for family in FAMILIES:
        if model_type in adapter_class(family).model_types:
            return family
    supported = sorted(t for f in FAMILIES for t in adapter_class(f).model_types)
    raise UnknownNameError(f"model_type {model_type!r} in config.json is not supported; supported: {', '.join(supported)}")


def check_model_dir(path: str) -> dict:
    """Validates a Hugging Face model directory and returns its config.json; names the first missing file."""
    if not os.path.isdir(path):
        raise ModelFileError(f"model directory {path!r} does not exist (expected a local Hugging Face model folder)")
    cfg_path = os.path.join(path, "config.json")
    if not os.path.isfile(cfg_path):
        raise ModelFileError(f"{cfg_path} is missing: a model directory needs config.json, weights and tokenizer files")
    try:
        with open(cfg_path) as f:
            config = json.load(f)
    except (OSError, json.JSONDecodeError) as err:
        raise ModelFileError(f"{cfg_path} is not valid JSON ({err})") from None
    if "model_type" not in config:
        raise ModelFileError(f"{cfg_path} has no 'model_type'; is this a transformers config?")
    for index in ("model.safetensors.index.json", "pytorch_model.bin.index.json"):
        index_path = os.path.join(path, index)
        if os.path.isfile(index_path):
            with open(index_path) as f:
                shards = sorted(set(json.load(f).get("weight_map", {}).values()))
            missing = [s for s in shards if not os.path.isfile(os.path.join(path, s))]
            if missing:
                raise ModelFileError(f"weight shard {os.path.join(path, missing[0])} listed in {index} is missing "
                                     f"({len(missing)} of {len(shards)} shards missing)")
            break
    else:
        if not any(os.path.isfile(os.path.join(path, w)) for w in ("model.safetensors", "pytorch_model.bin")):
            raise ModelFileError(f"no weights in {path}: expected model.safetensors (or a sharded "
                                 "model.safetensors.index.json with its shards)")
    if not any(os.path.isfile(os.path.join(path, t)) for t in ("tokenizer.json", "tokenizer.model", "vocab.json")):
        raise ModelFileError(f"no tokenizer in {path}: expected tokenizer.json (or vocab.json + merges.txt)")
    return config


def _load_classes(model_type: str):
    import transformers as tf

    return {
        "llava_onevision": tf.LlavaOnevisionForConditionalGeneration,
        "qwen2_5_vl": tf.Qwen2_5_VLForConditionalGeneration,
        "qwen2_5_omni_thinker": tf.Qwen2_5OmniThinkerForConditionalGeneration,
        "qwen2_5_omni": tf.Qwen2_5OmniForConditionalGeneration,
    }[model_type]


def from_pretrained(path: str, **adapter_kwargs):
    """Loads a local checkpoint with the normal transformers classes and wraps it in its family's adapter."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    config = check_model_dir(path)
    family = _family_for(config["model_type"])
    from transformers import AutoTokenizer

    try:
        tokenizer = AutoTokenizer.from_pretrained(path, local_files_only=True)
    except Exception as err:  # transformers raises many types here; all mean "this tokenizer can't be read"
        raise ModelFileError(f"tokenizer files in {path} could not be loaded: {err}".splitlines()[0]) from None
    cls = _load_classes(config["model_type"])
    extra = {"enable_audio_output": False} if config["model_type"] == "qwen2_5_omni" else {}
    try:
        model, info = cls.from_pretrained(path, local_files_only=True, output_loading_info=True,
                                          attn_implementation="sdpa", **extra)
    except (OSError, RuntimeError, ValueError) as err:
        raise ModelFileError(f"weights in {path} do not match its config.json: {str(err).splitlines()[0]}") from None
    missing = [k for k in info.get("missing_keys", []) if not k.endswith("lm_head.weight")]
    if missing:
        raise ModelFileError(f"weights in {path} lack {len(missing)} tensors the config needs (first: {missing[0]}); "
                             "the checkpoint and config.json do not belong together")
    adapter = adapter_class(family).from_model(model, tokenizer, model_dir=path, **adapter_kwargs)
    adapter.model_dir = path  # add-ons trained for this checkpoint (e.g. GlimpsePrune's VIP) live beside it
    return adapter
