"""Choosing offloaded blocks for a question (the token store's `offload` policy), ReKV-style.

The question's tokens run through the LLM's layers up to a middle layer `m` after what the cache holds (then
are cut away again), and their post-RoPE queries at `m` score each offloaded block: the mean over heads and
question tokens of the largest q·k/√d over the block's keys at `m` — how strongly the question would attend to
the block's best-matching token. ReKV scores per layer; one middle layer, where features are already semantic
but not yet specialised to the next token, keeps the cost at one partial prefill of the question and one small
matmul per block. Blocks are taken best first up to the token allowance and go back in time order.

Two options depart from ReKV's score (session settings `retrieval_positions`, `retrieval_score`), measured on the
bundled reference model with recall questions (a clip's "what color appeared just before the <colour> <shape> ?"
asked 4, 6 or 10 clips later, ~130-170 stored blocks; how often the evidence ranks among the 7 blocks a question
retrieves, chance 0.04):
- `adjacent`: blocks scored as if they ended where the question starts. In place, RoPE makes the score a
  function of distance as much as of content: the evidence ranked among the best 7 for half the questions 6
  clips back but at median rank 157 of 174 ten clips back (0 of 38); attention heads picked for retrieving at
  one distance were heads that prefer that distance (0.90 there, 0 of 38 ten clips back), which is why no head
  calibration ships.
- `heads="all"`: every head of every layer votes, each standardised over the candidates (`combine_heads`):
  with `adjacent`, 0.32 ten clips back and 0.26 four clips back, against 0.18 and 0.20 for the middle layer's
  plain mean.
Neither moves the soak's answers on this 4-layer model (docs/bench/soak.md): retrieval still misses the evidence
two times in three, and given the exact evidence clip the model answers 0.47.
- `learned` (runtime/retrieval_scorer.py, trained per model with `vlmedge train-retrieval`): a probe on every
  block's cached values against the question's embeddings. The model's attention does not look things up across
  a long stream, but its values say what a frame shows. It is the only score here that finds the evidence
  (docs/bench/soak.md); ReKV's stays the default because it needs nothing trained.
`choose(..., before=N)` (session `retrieval_context`) brings each retrieved block's N predecessors: a frame that
shows what the question names comes after what led up to it.
"""
from __future__ import annotations

import torch

from vlmedge.models.layer_runner import LayerRunner, _rotate_half
from vlmedge.runtime.kv_tail import cut_layers_to


RETRIEVAL_SCORES = {"middle-layer": "middle", "all-heads": "all", "learned": "learned"}  # -> score_blocks(heads=)


def block_keys(kv, layer: int):
    """An offloaded block's keys at `layer` (full-precision pairs or `kv_quant.Int8BlockKV`)."""
    return kv.key(layer) if hasattr(kv, "key") else kv[layer][0]


def block_values(kv, layer: int):
    """An offloaded block's values at `layer`."""
    return kv.value(layer) if hasattr(kv, "value") else kv[layer][1]


def learned_scores(scorer, cache, blocks, embeds: torch.Tensor, live=()) -> torch.Tensor:
    """`retrieval_scorer.RetrievalScorer`'s score for each offloaded then each live block: it reads their cached
    values at its layers and the question's input embeddings, and runs nothing through the LLM."""
    layers = scorer.cfg.layers
    views = [{m: block_values(b.kv, m) for m in layers} for b in blocks]
    views += [{m: cache.layers[m].values[:, :, b.start:b.start + b.length] for m in layers} for b in live]
    return scorer.score(embeds, views)


def _adjacent_deltas(cands, q_start: int, on: bool) -> list[int]:
    """Per candidate, the shift that makes it end right where the question starts (0: left where it is).

    Cached keys carry RoPE at their original positions, and q·k under RoPE depends on the distance, so scored
    in place an old block competes from thousands of positions away and a recent one from a few hundred. On the
    reference model that put the evidence of a question about 10 clips back (3,000+ positions) at median rank 157
    of 174 blocks, where 6 clips back it was among the best 7 for half the questions. Moved next to the question,
    every block is scored at the same distances, which is also where a focused question reads it
    (`focus_positions="compact"`)."""
    return [q_start - b.span[1] if on and b.span is not None else 0 for b in cands]


def _block_scores(q: torch.Tensor, keys: list, deltas: list[int], adapter, chunk: int = 256) -> torch.Tensor:
    """`[len(keys), H]`: per block and query head, the max over the block's keys of q·k/√d, mean over the
    question's tokens. Blocks go through in padded batches; a block moved by d is scored with the queries turned
    by -d (RoPE: q·R(d)k = R(-d)q·k), a few query rows instead of all of its keys."""
    _, H, n, hd = q.shape
    out = []
    for i in range(0, len(keys), chunk):
        ks, ds = keys[i:i + chunk], deltas[i:i + chunk]
        kvh, longest = ks[0].shape[1], max(k.shape[2] for k in ks)
        K = q.new_zeros(len(ks), kvh, longest, hd)
        pad = torch.ones(len(ks), longest, dtype=torch.bool, device=q.device)
        for j, k in enumerate(ks):
            K[j, :, :k.shape[2]] = k[0].to(q.device, q.dtype)
            pad[j, :k.shape[2]] = False
        qs = q.expand(len(ks), H, n, hd)
        if any(ds):
            cos, sin = (t.to(q.device, q.dtype)[:, None, None, :] for t in _rotations(adapter, [-d for d in ds]))
            qs = qs * cos + _rotate_half(qs) * sin
        logits = torch.matmul(qs, K.repeat_interleave(H // kvh, dim=1).transpose(-1, -2)) * hd ** -0.5
        out.append(logits.masked_fill(pad[:, None, None, :], float("-inf")).amax(-1).float().mean(-1))
    return torch.cat(out) if out else torch.zeros(0, H)


@torch.no_grad()
def head_scores(adapter, cache, blocks, embeds: torch.Tensor, ids: torch.Tensor, heads, live=(),
                adjacent: bool = True) -> torch.Tensor:
    """`[len(blocks) + len(live), len(heads)]`: for each (layer, head) in `heads`, each offloaded block's then each
    live block's score (`_block_scores`). The question runs through the layers once, up to the deepest one asked
    for (queries captured at each asked layer on the way), and is cut away again. `adjacent`: each block scored as
    if it ended where the question starts (`_adjacent_deltas`)."""
    runner = LayerRunner(adapter)
    deltas = _adjacent_deltas(list(blocks) + list(live), int(ids[:, 0].min()), adjacent)
    layers = sorted({int(m) for m, _ in heads})
    start = cache.get_seq_length()
    per_layer, hidden, done = {}, embeds, -1
    try:
        for m in layers:
            hidden, q = runner.run(hidden, ids, cache, range(done + 1, m + 1), capture_layer=m,
                                   capture_rows=torch.arange(embeds.shape[0]), capture_queries=True)
            done = m
            keys = [block_keys(b.kv, m) for b in blocks]
            keys += [cache.layers[m].keys[:, :, b.start:b.start + b.length] for b in live]
            per_layer[m] = _block_scores(q, keys, deltas, adapter)
    finally:
        cut_layers_to(cache, start)
    return torch.stack([per_layer[int(m)][:, int(h)] for m, h in heads], dim=1)


def combine_heads(table: torch.Tensor) -> torch.Tensor:
    """One score per candidate from a `head_scores` table: each head's scores standardised over the candidates,
    then summed. Heads differ in scale (raw q·k spans 2-8 on one head and 20-40 on another), so a plain sum
    would be one head's vote; standardised, each head counts the same."""
    if table.shape[0] < 2:
        return torch.zeros(table.shape[0])
    return ((table - table.mean(0)) / (table.std(0, unbiased=False) + 1e-6)).sum(1)


def score_blocks(adapter, cache, blocks, embeds: torch.Tensor, ids: torch.Tensor, layer: int | None = None,
                 live=None, heads="middle", adjacent: bool = False, scorer=None):
    """One score per offloaded block for the question tokens `embeds [n, D]` at `ids [P, n]`; with `live` (a list
    of blocks still in the cache, by their `start`/`length`; may be empty), `(offloaded scores, live scores)`.

    `heads`: "middle" (default) the plain mean over the heads of `layer` (default the middle one), ReKV's score;
    "all" every head of every layer, or a list of (layer, head) pairs, combined by `combine_heads` over offloaded
    and live candidates together; "learned" the trained `scorer` (`learned_scores`). `adjacent`: every block scored
    as if it ended where the question starts (`_adjacent_deltas`); False (default) scores keys where they are."""
    if not blocks and not live:
        return torch.zeros(0) if live is None else (torch.zeros(0), torch.zeros(0))
    n_layers, n_heads = adapter.text_config.num_hidden_layers, adapter.text_config.num_attention_heads
    if heads == "learned":
        if scorer is None:
            raise ValueError("heads='learned' needs the trained scorer")
        scores = learned_scores(scorer, cache, blocks, embeds, live or ())
    elif heads == "middle":
        m = n_layers // 2 if layer is None else layer
        scores = head_scores(adapter, cache, blocks, embeds, ids, [(m, h) for h in range(n_heads)], live or (),
                             adjacent).mean(1)
    else:
        if heads == "all":
            heads = [(m, h) for m in range(n_layers) for h in range(n_heads)]
        scores = combine_heads(head_scores(adapter, cache, blocks, embeds, ids, heads, live or (), adjacent))
    return scores if live is None else (scores[:len(blocks)], scores[len(blocks):])


def choose(blocks, scores: torch.Tensor, allowance: int, before: int = 0) -> list:
    """Best-scoring blocks whose lengths fit `allowance`, returned in time order (a focused question passes live
    and offloaded blocks together, so they compete for the allowance). `before` > 0: each block taken also brings
    up to `before` candidates just before it in time, nearest first, while they fit. A block that matches what a
    question names shows the thing once it is there; a backward-tracing question ("what appeared just before the
    red square ?") asks about what led up to it, which only the frames before hold."""
    order = sorted(range(len(blocks)), key=lambda i: blocks[i].time_s)
    rank = {i: r for r, i in enumerate(order)}
    chosen, used = set(), 0
    for i in torch.argsort(scores, descending=True, stable=True).tolist():
        if i in chosen or used + blocks[i].length > allowance:
            continue
        chosen.add(i)
        used += blocks[i].length
        for j in reversed(order[max(0, rank[i] - before):rank[i]]):
            if j not in chosen and used + blocks[j].length <= allowance:
                chosen.add(j)
                used += blocks[j].length
    return [blocks[i] for i in sorted(chosen)]


def _rotations(adapter, deltas: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
    """(cos, sin) `[len(deltas), head_dim]`: row i moves post-RoPE vectors by `deltas[i]` positions. RoPE rotates
    each channel pair by position x frequency, so rotating a cached key by delta x frequency equals computing it
    at the shifted position. Every RoPE row moves by the same delta, which for M-RoPE is again one angle per
    frequency."""
    runner = LayerRunner(adapter)
    ids = torch.tensor([int(d) for d in deltas], dtype=torch.long).expand(adapter.positions.rows, -1)
    cos, sin = runner.rotary(torch.zeros(1, len(deltas), 1), ids)
    scale = float(getattr(runner.lm.rotary_emb, "attention_scaling", 1.0) or 1.0)  # the keys carry it already
    return cos[0] / scale, sin[0] / scale


def key_shift(adapter, delta: int, n: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(cos, sin) `[n, head_dim]` that move `n` post-RoPE keys by `delta` positions (`_rotations`). The same for
    every layer, so `focus` computes it once per block."""
    cos, sin = _rotations(adapter, [delta])
    return cos.expand(n, -1), sin.expand(n, -1)


def shift_keys(keys: torch.Tensor, shift: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
    """`keys [B, H, L, hd]` rotated by `key_shift`'s (cos, sin)."""
    cos, sin = (t.to(keys.device, keys.dtype) for t in shift)
    return keys * cos + _rotate_half(keys) * sin


def focus(cache, prefix: int, parts, shifts=None, adapter=None) -> "callable":
    """Makes the cache hold only its first `prefix` entries followed by `parts` (time order): a live block
    `(start, length)` or an offloaded block's per-layer (keys, values). Returns the function that puts the full
    cache back. The stream's own tensors are only set aside, never copied: the question's context is the only new
    memory, and it is at most prefix + the retrieval allowance + the local blocks. `shifts` (one per part, with
    `adapter`): move each part's keys by that many positions (`shift_keys`); the moved keys are new tensors too."""
    saved = [(layer.keys, layer.values) for layer in cache.layers]
    lengths = [p[1] if isinstance(p, tuple) else getattr(p, "length", None) or p[0][0].shape[2] for p in parts]
    rotations = [key_shift(adapter, d, n) if d else None for d, n in zip(shifts or [0] * len(parts), lengths)]
    for li, layer in enumerate(cache.layers):
        k, v = saved[li]
        ks, vs = [k[:, :, :prefix]], [v[:, :, :prefix]]
        for j, part in enumerate(parts):
            if isinstance(part, tuple):
                start, length = part
                pk, pv = k[:, :, start:start + length], v[:, :, start:start + length]
            else:
                pk, pv = (t.to(k.device, k.dtype) for t in part[li])
            ks.append(shift_keys(pk, rotations[j]) if rotations[j] is not None else pk)
            vs.append(pv)
        layer.keys, layer.values = torch.cat(ks, dim=2), torch.cat(vs, dim=2)

    def restore():
        for layer, (k, v) in zip(cache.layers, saved):
            layer.keys, layer.values = k, v

    return restore

