"""Frame validation and pixel normalisation, shared by every family.

Frames arrive from cameras and files as HxWx3 uint8 RGB (numpy or torch). Anything else is rejected with a
message that says what was expected, so a bad frame never reaches the model (and never kills a stream).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from vlmedge.errors import InputError


@dataclass(frozen=True)
class PixelNorm:
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    rescale: float = 1.0 / 255.0


SIGLIP_NORM = PixelNorm((0.5, 0.5, 0.5), (0.5, 0.5, 0.5))
CLIP_NORM = PixelNorm((0.48145466, 0.4578275, 0.40821073), (0.26862954, 0.26130258, 0.27577711))


def norm_from_dir(model_dir: str | None, default: PixelNorm) -> PixelNorm:
    """The checkpoint's own pixel mean/std from `preprocessor_config.json`, when it has one."""
    import json
    import os

    path = os.path.join(model_dir, "preprocessor_config.json") if model_dir else ""
    if not path or not os.path.isfile(path):
        return default
    with open(path) as f:
        pp = json.load(f)
    if "image_mean" in pp and "image_std" in pp:
        return PixelNorm(tuple(pp["image_mean"]), tuple(pp["image_std"]), pp.get("rescale_factor", 1.0 / 255.0))
    return default


def frame_size_from_dir(model_dir: str | None, default: tuple[int, int]) -> tuple[int, int]:
    """A fixed streaming frame size recorded as `size: {height, width}` in `preprocessor_config.json`."""
    import json
    import os

    path = os.path.join(model_dir, "preprocessor_config.json") if model_dir else ""
    if path and os.path.isfile(path):
        with open(path) as f:
            size = json.load(f).get("size", {})
        if isinstance(size, dict) and "height" in size and "width" in size:
            return int(size["height"]), int(size["width"])
    return default


def validate_frame(frame) -> torch.Tensor:
    """Returns the frame as a uint8 torch tensor `[H, W, 3]`, or raises `InputError` saying what is wrong."""
    if isinstance(frame, np.ndarray):
        arr = frame
        kind = "numpy array"
    elif isinstance(frame, torch.Tensor):
        arr = frame
        kind = "torch tensor"
    else:
        raise InputError(f"a frame must be an HxWx3 uint8 RGB numpy array or torch tensor, got {type(frame).__name__}")
    shape = tuple(arr.shape)
    if len(shape) != 3:
        raise InputError(f"a frame must have shape (H, W, 3) RGB, got a {kind} of shape {shape}")
    if shape[2] != 3:
        hint = " (channels-first? use frame.transpose(1, 2, 0))" if shape[0] == 3 else ""
        hint = hint or (" (RGBA? drop the alpha channel: frame[..., :3])" if shape[2] == 4 else "")
        raise InputError(f"a frame must have 3 channels last (H, W, 3) RGB, got shape {shape}{hint}")
    if shape[0] < 2 or shape[1] < 2:
        raise InputError(f"a frame must be at least 2x2 pixels, got shape {shape}")
    dtype = str(arr.dtype).replace("torch.", "")
    if dtype != "uint8":
        raise InputError(f"a frame must be uint8 (0-255), got dtype {dtype}; convert with (x * 255).round().astype('uint8') for 0-1 floats")
    return torch.from_numpy(np.ascontiguousarray(arr)) if isinstance(arr, np.ndarray) else arr.contiguous()


def to_pixels(frame, size_hw: tuple[int, int], norm: PixelNorm, dtype=torch.float32) -> torch.Tensor:
    """HxWx3 uint8 → `[1, 3, h, w]` normalised floats at the tower's input size (bicubic, as HF processors)."""
    x = validate_frame(frame).permute(2, 0, 1).unsqueeze(0).float()
    if tuple(x.shape[-2:]) != tuple(size_hw):
        x = F.interpolate(x, size=size_hw, mode="bicubic", align_corners=False).clamp_(0, 255)
    x = x * norm.rescale
    mean = torch.tensor(norm.mean).view(1, 3, 1, 1)
    std = torch.tensor(norm.std).view(1, 3, 1, 1)
    return ((x - mean) / std).to(dtype)


def qwen_patchify(pixels: torch.Tensor, patch: int, temporal_patch: int, merge: int) -> tuple[torch.Tensor, tuple[int, int, int]]:
    """`[1, 3, H, W]` → Qwen's flattened patches `[grid_h*grid_w, 3*T*P*P]` and grid_thw (1, grid_h, grid_w).

    A still frame is repeated `temporal_patch` times (what Qwen's processor does for images). Patches are
    ordered merge-window by merge-window, so each run of merge*merge consecutive patches is one LLM token.
    """
    _, c, h, w = pixels.shape
    gh, gw = h // patch, w // patch
    x = pixels.repeat(temporal_patch, 1, 1, 1)  # [T, C, H, W]
    x = x.reshape(1, temporal_patch, c, gh // merge, merge, patch, gw // merge, merge, patch)
    x = x.permute(0, 3, 6, 4, 7, 2, 1, 5, 8)
    return x.reshape(gh * gw, c * temporal_patch * patch * patch), (1, gh, gw)
