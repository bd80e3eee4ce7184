"""Offloaded KV blocks held as int8: more stream history inside the same memory budget.

A block that leaves the live cache under the `offload` policy is only read again when a question retrieves it,
so it can wait in a smaller form. Each (layer, head, token) row of its keys and values is stored as int8 with
one absmax scale (`x ≈ q · scale`, q in [-127, 127]), the layout of per-token int8 KV caches in serving stacks
(TensorRT-LLM's and vLLM's int8/fp8 KV). Per row, not per channel (KIVI quantises keys per channel), because a
block is quantised alone and a row's scale needs no other tokens. With head_dim 64 that is 66 bytes per row
instead of 256 (fp32) or 128 (fp16): about 3.9x / 1.9x more offloaded tokens for the same bytes. Retrieval
scoring and the focused question read the dequantised tensors.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

HOST_PRECISIONS = ("int8", "full")
_SCALE_DTYPE = torch.float16  # absmax/127 of KV rows is far inside fp16's range


def quantize_rows(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """`x [..., d]` → (int8 `[..., d]`, scale `[..., 1]`) with `x ≈ q * scale` (round to nearest, absmax/127)."""
    absmax = x.abs().amax(-1, keepdim=True).float()
    scale = (absmax / 127.0).clamp_min(1e-7).to(_SCALE_DTYPE)
    # the stored scale is what dequantises: quantise with it, rounded up where rounding made it too small for
    # the row's absmax, so every element stays within half a step
    scale = torch.where(scale.float() * 127.0 < absmax, torch.nextafter(scale, torch.full_like(scale, 65504.0)),
                        scale)
    q = torch.round(x.float() / scale.float()).clamp_(-127, 127).to(torch.int8)
    return q, scale


def dequantize_rows(q: torch.Tensor, scale: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    return (q.float() * scale.float()).to(dtype)


@dataclass
class Int8BlockKV:
    """One block's per-layer (keys, values), int8 with a scale per row. Indexing and iteration give the
    dequantised `(keys, values)` of a layer in the cache's dtype, so it stands in for the list of tensor pairs
    that `take_span` returns; `planner.tensor_bytes` counts the int8 tensors and scales, i.e. what it holds."""

    keys: list  # per layer: (int8 [B, H, L, d], scale [B, H, L, 1])
    values: list
    dtype: torch.dtype

    @classmethod
    def from_pairs(cls, pairs) -> "Int8BlockKV":
        pairs = list(pairs)
        dtype = pairs[0][0].dtype if pairs else torch.float32
        return cls([quantize_rows(k) for k, _ in pairs], [quantize_rows(v) for _, v in pairs], dtype)

    @property
    def length(self) -> int:
        return int(self.keys[0][0].shape[2]) if self.keys else 0

    def key(self, layer: int) -> torch.Tensor:
        return dequantize_rows(*self.keys[layer], self.dtype)

    def value(self, layer: int) -> torch.Tensor:
        return dequantize_rows(*self.values[layer], self.dtype)

    def __len__(self) -> int:
        return len(self.keys)

    def __getitem__(self, layer: int) -> tuple[torch.Tensor, torch.Tensor]:
        return self.key(layer), self.value(layer)

    def __iter__(self):
        return (self[i] for i in range(len(self)))


def host_bytes_per_token(kv_bytes_per_token: int, element_bytes: int, head_dim: int, precision: str) -> float:
    """Bytes one offloaded token takes at `precision`, given the live cache's KV bytes per token, its element size
    and the head dim: "full" keeps the live cache's; "int8" stores a byte per element and a 2-byte scale per
    `head_dim` elements."""
    if precision == "full":
        return float(kv_bytes_per_token)
    if precision != "int8":
        from vlmedge.errors import InputError

        raise InputError(f"offload precision must be one of {', '.join(HOST_PRECISIONS)}, got {precision!r}")
    elements = kv_bytes_per_token / element_bytes
    return elements * (1 + _SCALE_DTYPE.itemsize / head_dim)
