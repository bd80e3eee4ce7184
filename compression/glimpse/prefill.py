"""One GlimpsePrune prefill over a stretch of the stream: frames, text, then the glimpse token.

Inference (spec §3): layers 0..K run on every token plus the glimpse; the glimpse row's raw attention logits
at layer K, restricted to each frame's visual tokens, go through the VIP with that frame's ViT taps; the keep
rule (over all frames of the stretch together, as released) picks tokens; hidden states and the KV of layers
0..K are pruned once (the glimpse and any conditioning-only text go too) and layers K+1.. run on what is kept.

Training (spec §5) runs every layer on the unpruned stretch with the glimpse inserted before the answer, so the
answer is predicted from the glimpse row onwards (the LM loss shapes the glimpse) and the VIP gets the same
layer-K row it will see at inference.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from vlmedge.compression.glimpse.keep import keep_indices_multi
from vlmedge.models.layer_runner import LayerRunner, cache_length, split_prefill


@dataclass
class Piece:
    """A run of consecutive tokens: `embeds [n, D]` at `ids [P, n]`. A frame piece starts with the frame's
    `tokens.num_tokens` compressible tokens (then its trailer); `keep=False` marks text that only conditions the
    glimpse (the standing prompt at ingest) and is dropped with it."""

    embeds: Tensor
    ids: Tensor
    tokens: object = None  # FrameTokens for a frame piece
    keep: bool = True


def frame_taps(tokens, taps: list[int]) -> list[Tensor]:
    """The VIP's inputs from a frame's ViT taps, deep → shallow, one row per LLM token (raster order): taps on a
    finer grid than the LLM's (Qwen's 2x2 patch merge) are averaged over each merge unit (spec §3 step 1)."""
    h, w = tokens.grid_hw
    out = []
    for t in taps:
        x = tokens.taps[t]
        if x.shape[0] != h * w:
            s = int(round((x.shape[0] / (h * w)) ** 0.5))
            if s * s * h * w != x.shape[0]:
                raise ValueError(f"tap {t} has {x.shape[0]} rows, not a square multiple of the {h}x{w} token grid")
            x = x.reshape(h, s, w, s, -1).mean(dim=(1, 3)).reshape(h * w, -1)
        out.append(x.float())
    return out


def glimpse_ids(ids: Tensor) -> Tensor:
    """The glimpse token's position: one past the largest id so far, on every axis (spec §3 step 2)."""
    return torch.full((ids.shape[0], 1), int(ids.max()) + 1, dtype=ids.dtype)


def frame_logits(mods, row: Tensor, pieces: list[Piece], start: int) -> list[Tensor]:
    """VIP logits per frame piece from the glimpse row `row [H, S]` (absolute key positions; the stretch begins at
    cache position `start`)."""
    out, off = [], start
    for p in pieces:
        if p.tokens is not None:
            n = p.tokens.num_tokens
            attn = row[:, off:off + n].transpose(0, 1).float()  # [N, H]
            out.append(mods.vip(attn, frame_taps(p.tokens, mods.cfg.taps), p.tokens.grid_hw))
        off += p.embeds.shape[0]
    return out


def kept_rows(pieces: list[Piece], keeps: list[Tensor]) -> Tensor:
    """Rows of the stretch that stay: each frame's kept tokens and its trailer, text that is not
    conditioning-only; the glimpse row (last) never."""
    rows, off, f = [], 0, 0
    for p in pieces:
        n = p.embeds.shape[0]
        if p.tokens is not None:
            rows.append(off + keeps[f].to(torch.long))
            rows.append(torch.arange(off + p.tokens.num_tokens, off + n))  # the trailer always stays
            f += 1
        elif p.keep:
            rows.append(torch.arange(off, off + n))
        off += n
    return torch.cat(rows) if rows else torch.zeros(0, dtype=torch.long)


def prefill(runner: LayerRunner, mods, cache, pieces: list[Piece], threshold: float = 0.5,
            max_ratio: float | None = None, min_keep: int = 1,
            spread: float = 0.0):
    """Pruned prefill of `pieces` after what `cache` holds. Returns (logits of the last kept row, kept indices per
    frame piece (ascending, into its compressible tokens), VIP logits per frame piece)."""
    start = cache_length(cache, 0)
    dtype = runner.dtype
    embeds = torch.cat([p.embeds.to(dtype) for p in pieces])
    ids = torch.cat([p.ids for p in pieces], dim=1)
    embeds = torch.cat([embeds, mods.token.layer_embedding(0).to(dtype)[None]])
    ids = torch.cat([ids, glimpse_ids(ids)], dim=1)
    found: dict = {}

    def choose(captured: Tensor) -> Tensor:
        z = frame_logits(mods, captured[0], pieces, start)
        keeps = keep_indices_multi(z, threshold=threshold, max_ratio=max_ratio, min_keep=min_keep,
                                   spread=spread) if z else []
        found["z"], found["keeps"] = z, keeps
        return kept_rows(pieces, keeps)

    logits, _, _ = split_prefill(runner, cache, embeds, ids, mods.cfg.select_layer, choose,
                                 extra=lambda layer, h: mods.token.add_before_layer(layer, h))
    return logits, found["keeps"], found["z"]


def training_forward(runner: LayerRunner, mods, pieces: list[Piece], answer_embeds: Tensor, answer_ids: Tensor):
    """Unpruned forward of `pieces`, the glimpse, then the answer tokens, on a fresh cache (autograd on).
    Returns (VIP logits per frame piece, LM logits predicting each answer token: from the glimpse row and from
    every answer token but the last)."""
    dtype = runner.dtype
    embeds = torch.cat([p.embeds.to(dtype) for p in pieces])
    ids = torch.cat([p.ids for p in pieces], dim=1)
    g_ids = glimpse_ids(ids)
    n = embeds.shape[0]
    embeds = torch.cat([embeds, mods.token.layer_embedding(0).to(dtype)[None], answer_embeds.to(dtype)])
    ids = torch.cat([ids, g_ids, answer_ids], dim=1)
    cache = runner.adapter.new_cache()
    h, captured = runner.run(embeds, ids, cache, range(0, runner.num_layers),
                             extra=lambda layer, x: mods.token.add_before_layer(layer, x, row=n),
                             capture_layer=mods.cfg.select_layer, capture_rows=torch.tensor([n]))
    z = frame_logits(mods, captured[0], pieces, 0)
    lm = runner.logits(h[n:-1]) if answer_embeds.shape[0] else None
    return z, lm
