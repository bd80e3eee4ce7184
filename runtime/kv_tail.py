"""Setting a cache's newest entries aside and putting them back, for questions that redo recent frames.

A question that re-selects recent frames (query-conditioned methods) must prefill them again from the first
changed one on, yet leave the stream's cache as it was. Copying the tail out and appending it back costs one
copy of those entries; recomputing them would cost their prefill again.
"""
from __future__ import annotations

import torch


def take_tail(cache, start: int):
    """Copies of every layer's entries from position `start` on."""
    if hasattr(cache, "tail"):  # ONNX Runtime backend
        return cache.tail(start)
    return [(layer.keys[:, :, start:].clone(), layer.values[:, :, start:].clone()) for layer in cache.layers]


def cut_to(cache, length: int) -> None:
    """Keeps the first `length` entries (transformers 5 caches only take a negative count to drop)."""
    extra = cache.get_seq_length() - length
    if extra > 0:
        cache.crop(-extra)


def restore_tail(cache, start: int, tail) -> None:
    """Cuts the cache back to `start` entries and appends `tail` (from `take_tail(cache, start)`) after them."""
    cut_to(cache, start)
    if hasattr(cache, "extend"):  # ONNX Runtime backend
        cache.extend(tail)
    else:
        append_kv(cache, tail)


def cut_layers_to(cache, length: int) -> None:
    """Keeps the first `length` entries of EVERY layer (after a failed pruned prefill the layers may differ)."""
    for layer in getattr(cache, "layers", ()):
        if getattr(layer, "keys", None) is not None and layer.keys.shape[-2] > length:
            layer.keys = layer.keys[:, :, :length]
            layer.values = layer.values[:, :, :length]


def remove_span(cache, start: int, end: int) -> None:
    """Drops entries `[start, end)` from every layer (a frame block leaving the token store). Later entries keep
    their keys as computed: RoPE is already applied, so their positions are unchanged."""
    if end <= start:
        return
    if hasattr(cache, "remove"):  # ONNX Runtime backend
        cache.remove(start, end)
        return
    for layer in cache.layers:
        n = layer.keys.shape[-2]
        keep = torch.cat([torch.arange(0, start), torch.arange(end, n)]).to(layer.keys.device)
        layer.keys = layer.keys.index_select(-2, keep)
        layer.values = layer.values.index_select(-2, keep)


def take_span(cache, start: int, end: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Host copies of every layer's entries `[start, end)` (a block going to the offload store)."""
    return [(layer.keys[:, :, start:end].to("cpu", copy=True), layer.values[:, :, start:end].to("cpu", copy=True))
            for layer in cache.layers]


def append_kv(cache, kv: list[tuple[torch.Tensor, torch.Tensor]]) -> None:
    """Appends per-layer (keys, values) after what every layer holds (retrieved blocks, for one question)."""
    for layer, (k, v) in zip(cache.layers, kv):
        layer.keys = torch.cat([layer.keys, k.to(layer.keys.device, layer.keys.dtype)], dim=2)
        layer.values = torch.cat([layer.values, v.to(layer.values.device, layer.values.dtype)], dim=2)
