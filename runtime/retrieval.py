"""Choosing offloaded blocks for a question (the token store's `offload` policy), ReKV-style.

The question's tokens run through the LLM's layers up to a middle layer `m` after what the cache holds (then
are cut away again), and their post-RoPE queries at `m` score each offloaded block: the mean over heads and
question tokens of the largest q·k/√d over the block's keys at `m` — how strongly the question would attend to
the block's best-matching token. ReKV scores per layer; one middle layer, where features are already semantic
but not yet specialised to the next token, keeps the cost at one partial prefill of the question and one small
matmul per block. Blocks are taken best first up to the token allowance and go back in time order.
"""
from __future__ import annotations

import torch

from vlmedge.models.layer_runner import LayerRunner, query_key_logits
from vlmedge.runtime.kv_tail import cut_layers_to


def _score(q, keys):
    """The question's strongest attention into the block: max over the block's keys of q·k/√d, mean over heads and
    question tokens (ReKV's). Measured on the reference model (24 recall questions, 137 blocks, the evidence clip
    among the 7 best): 0.75 at the middle layer with this score; 0.17 with max minus the block's mean."""
    return query_key_logits(q, keys).amax(-1).float().mean()


@torch.no_grad()
def score_blocks(adapter, cache, blocks, embeds: torch.Tensor, ids: torch.Tensor, layer: int | None = None,
                 live=None):
    """One score per offloaded block for the question tokens `embeds [n, D]` at `ids [P, n]`; with `live` (a list
    of blocks still in the cache, by their `start`/`length`; may be empty), `(offloaded scores, live scores)`."""
    if not blocks and not live:
        return torch.zeros(0) if live is None else (torch.zeros(0), torch.zeros(0))
    runner = LayerRunner(adapter)
    m = runner.num_layers // 2 if layer is None else layer
    start = cache.get_seq_length()
    try:
        _, q = runner.run(embeds, ids, cache, range(0, m + 1), capture_layer=m,
                          capture_rows=torch.arange(embeds.shape[0]), capture_queries=True)
        keys = cache.layers[m].keys
        live_scores = [_score(q, keys[:, :, b.start:b.start + b.length]) for b in live or ()]
    finally:
        cut_layers_to(cache, start)
    scores = torch.stack([_score(q, b.kv[m][0].to(q.device)) for b in blocks]) if blocks else torch.zeros(0)
    if live is None:
        return scores
    return scores, torch.stack(live_scores) if live_scores else torch.zeros(0)


def choose(blocks, scores: torch.Tensor, allowance: int) -> list:
    """Best-scoring blocks whose lengths fit `allowance`, returned in time order (a focused question passes live
    and offloaded blocks together, so they compete for the allowance)."""
    chosen, used = [], 0
    for i in torch.argsort(scores, descending=True, stable=True).tolist():
        if used + blocks[i].length <= allowance:
            chosen.append(i)
            used += blocks[i].length
    return [blocks[i] for i in sorted(chosen)]


def key_shift(adapter, delta: int, n: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(cos, sin) `[n, head_dim]` that move post-RoPE keys by `delta` positions: RoPE rotates each channel pair
    by position x frequency, so rotating cached keys by `delta` x frequency equals computing them at the shifted
    position. Every RoPE row moves by the same `delta`, which for M-RoPE is again one angle per frequency. The
    same for every layer, so `focus` computes it once per block."""
    from vlmedge.models.layer_runner import LayerRunner

    runner = LayerRunner(adapter)
    ids = torch.full((adapter.positions.rows, n), int(delta), dtype=torch.long)
    cos, sin = runner.rotary(torch.zeros(1, n, 1), ids)
    scale = float(getattr(runner.lm.rotary_emb, "attention_scaling", 1.0) or 1.0)  # the keys carry it already
    return cos[0] / scale, sin[0] / scale


def shift_keys(keys: torch.Tensor, shift: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
    """`keys [B, H, L, hd]` rotated by `key_shift`'s (cos, sin)."""
    from vlmedge.models.layer_runner import _rotate_half

    cos, sin = (t.to(keys.device, keys.dtype) for t in shift)
    return keys * cos + _rotate_half(keys) * sin


def focus(cache, prefix: int, parts, shifts=None, adapter=None) -> "callable":
    """Makes the cache hold only its first `prefix` entries followed by `parts` (time order): a live block
    `(start, length)` or an offloaded block's per-layer (keys, values). Returns the function that puts the full
    cache back. The stream's own tensors are only set aside, never copied: the question's context is the only new
    memory, and it is at most prefix + the retrieval allowance + the local blocks. `shifts` (one per part, with
    `adapter`): move each part's keys by that many positions (`shift_keys`); the moved keys are new tensors too."""
    saved = [(layer.keys, layer.values) for layer in cache.layers]
    lengths = [p[1] if isinstance(p, tuple) else p[0][0].shape[2] for p in parts]
    rotations = [key_shift(adapter, d, n) if d else None for d, n in zip(shifts or [0] * len(parts), lengths)]
    for li, layer in enumerate(cache.layers):
        k, v = saved[li]
        ks, vs = [k[:, :, :prefix]], [v[:, :, :prefix]]
        for j, part in enumerate(parts):
            if isinstance(part, tuple):
                start, length = part
                pk, pv = k[:, :, start:start + length], v[:, :, start:start + length]
            else:
                pk, pv = part[li][0].to(k.device, k.dtype), part[li][1].to(v.device, v.dtype)
            ks.append(shift_keys(pk, rotations[j]) if rotations[j] is not None else pk)
            vs.append(pv)
        layer.keys, layer.values = torch.cat(ks, dim=2), torch.cat(vs, dim=2)

    def restore():
        for layer, (k, v) in zip(cache.layers, saved):
            layer.keys, layer.values = k, v

    return restore
