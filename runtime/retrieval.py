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


@torch.no_grad()
def score_blocks(adapter, cache, blocks, embeds: torch.Tensor, ids: torch.Tensor, layer: int | None = None):
    """One score per offloaded block for the question tokens `embeds [n, D]` at `ids [P, n]`."""
    if not blocks:
        return torch.zeros(0)
    runner = LayerRunner(adapter)
    m = runner.num_layers // 2 if layer is None else layer
    start = cache.get_seq_length()
    try:
        _, q = runner.run(embeds, ids, cache, range(0, m + 1), capture_layer=m,
                          capture_rows=torch.arange(embeds.shape[0]), capture_queries=True)
    finally:
        cut_layers_to(cache, start)
    return torch.stack([query_key_logits(q, b.kv[m][0].to(q.device)).amax(-1).float().mean() for b in blocks])


def choose(blocks, scores: torch.Tensor, allowance: int) -> list:
    """Best-scoring blocks whose lengths fit `allowance`, returned in time order."""
    chosen, used = [], 0
    for i in torch.argsort(scores, descending=True, stable=True).tolist():
        if used + blocks[i].length <= allowance:
            chosen.append(i)
            used += blocks[i].length
    return [blocks[i] for i in sorted(chosen)]
