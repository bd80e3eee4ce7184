"""Running the LLM layer by layer: the split prefill GlimpsePrune needs (spec glimpseprune.md §3, §7, §10).

GlimpsePrune runs decoder layers 0..K on the full prompt plus the glimpse token, reads the glimpse token's raw
attention logits at layer K, prunes the hidden states and the KV of layers 0..K once, and then runs layers
K+1..L-1 on the kept tokens only. The Hugging Face model's `forward` cannot do this: it runs every layer, and it
builds one causal mask from `cache.get_seq_length()` (layer 0's length), which is wrong as soon as layers hold
different lengths (after pruning, layers 0..K hold prefix + kept tokens while layers K+1.. hold only the prefix).

Two primitives live here:

* `LayerRunner.run` calls the decoder layers itself, building each layer's 4-D mask from that layer's own cache
  length, with the model's rotary embedding (M-RoPE for the Qwen2.5 families), an optional per-layer hook that
  may change the hidden states before a layer (the learned glimpse embeddings), and an explicit recomputation of
  one or more query rows' raw attention logits (q·kᵀ/√d, post-RoPE, GQA keys repeated, no mask, no softmax) at
  one layer, so SDPA/FA kernels that return no weights still work and gradients flow to the hook's inputs.
* `prune_cache` keeps, in the given layers, the entries before `start` plus the chosen entries after it.

Kept tokens keep their original position ids (gaps remain); the causal mask is index-based, so gaps change
only RoPE, as intended.
"""
from __future__ import annotations

import sys
from typing import Callable

import torch
from torch import Tensor
from transformers.cache_utils import DynamicCache, DynamicLayer

Extra = Callable[[int, Tensor], Tensor]


def _rotate_half(x: Tensor) -> Tensor:
    x1, x2 = x[..., : x.shape[-1] // 2], x[..., x.shape[-1] // 2:]
    return torch.cat((-x2, x1), dim=-1)


def _default_rope(q: Tensor, k: Tensor, cos: Tensor, sin: Tensor, unsqueeze_dim: int = 1):
    cos, sin = cos.unsqueeze(unsqueeze_dim), sin.unsqueeze(unsqueeze_dim)
    return q * cos + _rotate_half(q) * sin, k * cos + _rotate_half(k) * sin


def cache_length(cache: DynamicCache, layer_idx: int) -> int:
    """Entries cache layer `layer_idx` holds now (0 for a layer that was never written)."""
    if layer_idx >= len(cache.layers):
        return 0
    return int(cache.layers[layer_idx].get_seq_length())


def step_mask(past: int, n: int, dtype: torch.dtype, device) -> Tensor:
    """Additive mask `[1, 1, n, past + n]` for n new rows after `past` cached entries: every row sees all the cached
    entries and, causally, the new rows up to itself. Additive float (0 / dtype min) so eager attention (which adds
    the mask) and SDPA (which accepts float masks) read it the same way."""
    rows = torch.arange(n, device=device)[:, None]
    cols = torch.arange(past + n, device=device)[None, :]
    allowed = cols <= past + rows
    mask = torch.zeros(n, past + n, dtype=dtype, device=device)
    mask.masked_fill_(~allowed, torch.finfo(dtype).min)
    return mask[None, None]


class LayerRunner:
    """Runs chosen decoder layers of an adapter's language model over explicit hidden states and a KV cache.

    Hidden states are `[L, D]` (no batch dimension) and position ids `[P, L]` in our scheme (`adapter.positions`),
    exactly as `Adapter.forward_llm` takes them. Running every layer and then `logits` reproduces `forward_llm`.
    """

    def __init__(self, adapter):
        self.adapter = adapter
        self.lm = adapter.language_model()
        self.head = adapter.lm_head()
        self.config = self.lm.config

    @property
    def num_layers(self) -> int:
        return int(self.config.num_hidden_layers)

    @property
    def dtype(self) -> torch.dtype:
        return self.adapter.dtype

    def rotary(self, hidden3: Tensor, position_ids: Tensor) -> tuple[Tensor, Tensor]:
        """(cos, sin) `[1, L, head_dim]` for `hidden3 [1, L, D]` at our position ids `[P, L]`, from the model's
        own rotary embedding (M-RoPE sections are already recombined there for the Qwen2.5 families)."""
        pos = self.adapter.positions.model_position_ids(position_ids.to(hidden3.device))
        return self.lm.rotary_emb(hidden3, pos)

    def _mask(self, past: int, n: int, dtype, device) -> Tensor | None:
        impl = getattr(self.config, "_attn_implementation", "sdpa") or "sdpa"
        if "flash" in impl or n == 1:
            # One new row sees every key, which is what no mask means. FA kernels take no 4-D mask; their causal
            # mask is aligned bottom-right (new rows after the cache), which is the same pattern.
            return None
        if past == 0 and impl == "sdpa":
            # transformers' SDPA wrapper then sets is_causal (fast kernels). Never pass None with past > 0: for
            # q_len > 1 it would also set is_causal and crop the keys to the first q_len entries.
            return None
        return step_mask(past, n, dtype, device)

    def run(self, hidden: Tensor, position_ids: Tensor, cache: DynamicCache, layers: range,
            extra: Extra | None = None, capture_layer: int | None = None, capture_rows: Tensor | None = None,
            capture_queries: bool = False):
        """Runs decoder `layers` (ascending) on `hidden [L, D]` at `position_ids [P, L]`, appended after whatever
        `cache` holds for each of those layers (lengths may differ per layer; each layer's mask uses its own).

        `extra(layer_idx, hidden [L, D]) -> [L, D]` is applied before every layer in `layers` (layer 0 included:
        the caller decides which layers to change; it must not change the number of rows).
        With `capture_layer` (which must be in `layers`) the result is `(hidden, logits)` where `logits
        [len(capture_rows), n_heads, S]` are the raw attention logits q·kᵀ·head_dim^-0.5 of the new rows
        `capture_rows` (indices into the L new rows; default: the last row) against all S keys of that layer
        (cached + new), post-RoPE, GQA keys repeated, with no mask and no softmax (causally masked columns of
        earlier rows are included as computed). Without `capture_layer` the result is `hidden [L, D]`.
        `capture_queries=True` captures those rows' post-RoPE queries `[1, H, n, head_dim]` instead (for scoring
        keys that are not in the cache, e.g. offloaded blocks).
        No final norm is applied (see `logits`). Autograd is on unless the caller disables it.
        """
        layers = range(layers.start, layers.stop, layers.step) if isinstance(layers, range) else layers
        idx = list(layers)
        if any(b <= a for a, b in zip(idx, idx[1:])):
            raise ValueError(f"layers must be ascending, got {idx}")
        if idx and not (0 <= idx[0] and idx[-1] < self.num_layers):
            raise ValueError(f"layers {idx[0]}..{idx[-1]} out of range: the model has {self.num_layers} layers")
        if capture_layer is not None and capture_layer not in idx:
            raise ValueError(f"capture_layer {capture_layer} is not among the layers run ({idx})")
        for i in idx:
            kind = self.config.layer_types[i] if getattr(self.config, "layer_types", None) else "full_attention"
            if kind != "full_attention":
                raise NotImplementedError(f"layer {i} is {kind!r}; only full-attention layers are supported")
        if hidden.dim() != 2:
            raise ValueError(f"hidden must be [L, D], got {tuple(hidden.shape)}")
        n = hidden.shape[0]
        if position_ids.shape[-1] != n:
            raise ValueError(f"position_ids {tuple(position_ids.shape)} do not match {n} rows")
        if capture_rows is not None:
            capture_rows = torch.as_tensor(capture_rows).reshape(-1).long()
            if capture_rows.numel() and not (-n <= int(capture_rows.min()) and int(capture_rows.max()) < n):
                raise ValueError(f"capture_rows {capture_rows.tolist()} out of range for {n} new rows")

        h = hidden.to(self.dtype).unsqueeze(0)
        cos, sin = self.rotary(h, position_ids)
        captured = None
        for i in idx:
            if extra is not None:
                h = extra(i, h[0])
                if h.shape[0] != n:
                    raise ValueError(f"extra changed the number of rows at layer {i}: {n} -> {h.shape[0]}")
                h = h.unsqueeze(0)
            layer = self.lm.layers[i]
            mask = self._mask(cache_length(cache, i), n, h.dtype, h.device)
            h_in = h
            out = layer(h, attention_mask=mask, position_ids=None, past_key_values=cache, use_cache=True,
                        position_embeddings=(cos, sin))
            h = out[0] if isinstance(out, tuple) else out
            if i == capture_layer:
                rows = (torch.tensor([n - 1], device=h.device) if capture_rows is None
                        else capture_rows.to(h.device) % n)
                captured = (self.queries(i, h_in[0, rows], cos[:, rows], sin[:, rows]) if capture_queries
                            else self.attention_logits(i, h_in[0, rows], cos[:, rows], sin[:, rows], cache))
        hidden_out = h[0]
        return hidden_out if capture_layer is None else (hidden_out, captured)

    def queries(self, layer_idx: int, layer_input_rows: Tensor, cos: Tensor, sin: Tensor) -> Tensor:
        """Post-RoPE queries `[1, H, n, head_dim]` of rows given by their layer input `[n, D]` and rotary tables."""
        return self._project(layer_idx, "q_proj", layer_input_rows, cos, sin)

    def keys(self, layer_idx: int, layer_input_rows: Tensor, cos: Tensor, sin: Tensor) -> Tensor:
        """Post-RoPE keys `[1, kvH, n, head_dim]` of rows given by their layer input `[n, D]` and rotary tables."""
        return self._project(layer_idx, "k_proj", layer_input_rows, cos, sin)

    def _project(self, layer_idx: int, proj: str, layer_input_rows: Tensor, cos: Tensor, sin: Tensor) -> Tensor:
        layer = self.lm.layers[layer_idx]
        attn = layer.self_attn
        head_dim = int(attn.head_dim)
        x = layer.input_layernorm(layer_input_rows)
        v = getattr(attn, proj)(x).view(1, x.shape[0], -1, head_dim).transpose(1, 2)  # [1, heads, n, hd]
        rope = getattr(sys.modules.get(type(attn).__module__), "apply_rotary_pos_emb", None) or _default_rope
        v, _ = rope(v, v, cos, sin)
        return v

    def attention_logits(self, layer_idx: int, layer_input_rows: Tensor, cos: Tensor, sin: Tensor,
                         cache: DynamicCache) -> Tensor:
        """Raw logits `[n, H, S]` of query rows (given by their layer input `[n, D]` and rotary tables
        `[1, n, head_dim]`) against every key cache layer `layer_idx` holds (after the layer ran)."""
        return query_key_logits(self.queries(layer_idx, layer_input_rows, cos, sin),
                                cache.layers[layer_idx].keys)[0].transpose(0, 1)

    def logits(self, hidden_last: Tensor) -> Tensor:
        """lm_head(norm(h)) in float32 for `h [n, D]` (the last layer's output rows)."""
        return self.head(self.lm.norm(hidden_last)).float()


def query_key_logits(q: Tensor, keys: Tensor) -> Tensor:
    """`q [1, H, n, hd]` (post-RoPE) against `keys [1, kvH, S, hd]` (post-RoPE, GQA repeated here) →
    `[1, H, n, S]` raw logits q·kᵀ/√hd."""
    groups = q.shape[1] // keys.shape[1]
    if groups > 1:
        keys = keys.repeat_interleave(groups, dim=1)
    return torch.matmul(q, keys.transpose(-1, -2).to(q.dtype)) * q.shape[-1] ** -0.5


def prune_cache(cache: DynamicCache, layers: range, start: int, keep_local: Tensor) -> None:
    """In every cache layer in `layers`, keeps entries `[0, start)` plus `start + keep_local` (ascending, unique
    indices into the entries from `start` on); the rest are dropped. In place, by reassigning the layer's
    `.keys`/`.values` (transformers 5.x `DynamicLayer`; `crop` only removes from the end)."""
    keep_local = torch.as_tensor(keep_local).reshape(-1).long()
    if keep_local.numel() > 1 and not bool((keep_local[1:] > keep_local[:-1]).all()):
        raise ValueError("keep_local must be strictly ascending")
    if keep_local.numel() and int(keep_local[0]) < 0:
        raise ValueError("keep_local must be non-negative")
    for i in layers:
        layer = cache.layers[i]
        if type(layer) is not DynamicLayer:
            raise TypeError(f"cache layer {i} is a {type(layer).__name__}; only plain DynamicLayer can be pruned")
        length = layer.get_seq_length()
        if start > length:
            raise ValueError(f"cache layer {i} holds {length} entries, fewer than start={start}")
        if keep_local.numel() and start + int(keep_local[-1]) >= length:
            raise ValueError(f"cache layer {i}: keep index {int(keep_local[-1])} past its {length - start} entries "
                             f"after start={start}")
        index = torch.cat([torch.arange(start, device=layer.keys.device),
                           start + keep_local.to(layer.keys.device)])
        layer.keys = layer.keys.index_select(-2, index)
        layer.values = layer.values.index_select(-2, index)


def split_prefill(runner: LayerRunner, cache: DynamicCache, hidden: Tensor, position_ids: Tensor, K: int,
                  keep_local_fn: Callable[[Tensor], Tensor], extra: Extra | None = None,
                  capture_rows: Tensor | None = None):
    """One-shot pruned prefill: layers 0..K on `hidden [L, D]` (with `extra`, capturing `capture_rows`' logits at
    K; default the last row, i.e. the glimpse token), then `keep = keep_local_fn(captured)` (ascending local
    indices into the L rows; drop the glimpse row here), `prune_cache` of layers 0..K, and layers K+1.. on the kept
    rows (no `extra`: glimpse embeddings past K are unused at inference). All cache layers must hold the same
    length on entry. Returns `(logits of the last kept row [1, V], keep, captured)`."""
    start = cache_length(cache, 0)
    if any(cache_length(cache, i) != start for i in range(runner.num_layers)):
        raise ValueError("split_prefill needs every cache layer to hold the same length on entry")
    h, captured = runner.run(hidden, position_ids, cache, range(0, K + 1), extra=extra, capture_layer=K,
                             capture_rows=capture_rows)
    keep = torch.as_tensor(keep_local_fn(captured)).reshape(-1).long().to(h.device)
    prune_cache(cache, range(0, K + 1), start, keep)
    h = runner.run(h[keep], position_ids[:, keep.to(position_ids.device)], cache, range(K + 1, runner.num_layers))
    return runner.logits(h[-1:]), keep, captured
