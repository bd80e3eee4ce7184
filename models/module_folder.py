"""Trained add-on modules kept beside a checkpoint in a folder of their own (`glimpse/`, `retrieval/`): a
`config.json` with the dataclass that builds them and a safetensors file of their weights."""
from __future__ import annotations

import json
import os
from dataclasses import asdict


def save_folder(module, cfg, model_dir: str, folder: str, weights: str) -> str:
    from safetensors.torch import save_file

    out = os.path.join(model_dir, folder)
    os.makedirs(out, exist_ok=True)
    save_file({k: v.detach().contiguous() for k, v in module.state_dict().items()}, os.path.join(out, weights))
    with open(os.path.join(out, "config.json"), "w") as f:
        json.dump(asdict(cfg), f, indent=2)
    return out


def read_folder(path: str, folder: str, weights: str, how_to_train: str) -> tuple[str, dict]:
    """(the folder, its config.json) from the folder itself or the model folder holding it; a clear error naming
    what is missing and `how_to_train` when it is not there."""
    from vlmedge.errors import ModelFileError

    if os.path.isdir(os.path.join(path, folder)):
        path = os.path.join(path, folder)
    for p in (os.path.join(path, "config.json"), os.path.join(path, weights)):
        if not os.path.isfile(p):
            raise ModelFileError(f"no trained {folder} modules at {path}: {os.path.basename(p)} is missing; "
                                 f"{how_to_train}")
    with open(os.path.join(path, "config.json")) as f:
        return path, json.load(f)


def load_weights(module, path: str, weights: str):
    """`module` with the folder's weights, which must match it exactly; returned in eval mode."""
    from safetensors.torch import load_file

    from vlmedge.errors import ModelFileError

    w_path = os.path.join(path, weights)
    missing, unexpected = module.load_state_dict(load_file(w_path), strict=False)
    if missing or unexpected:
        raise ModelFileError(f"{w_path} does not match its config.json (missing {sorted(missing)[:4]}, "
                             f"unexpected {sorted(unexpected)[:4]})")
    return module.eval()
