"""`--method stc`: STC-Cacher in the vision stage and STC-Pruner after the projector, one state per stream.

Settings (`stc:tokens=64,ratio=0.25,...`):
- `tokens` (64): tokens kept per frame by the pruner, clamped to the frame's P.
- `ratio` (0.25): the cacher's update ratio r, the fraction of tokens each selective layer recomputes
  (not a keep ratio; the pruner's budget is `tokens`).
- `cache_interval` (2): N, a refresh (full) pass every N frames; frames in between are selective.
- `scorer` ("gaussian" | "dual_anchor"), `alpha` (0.5, dual_anchor only), `channel_ratio` (0.5).
- `cacher`, `pruner` (both on): switch either module off ("pruner only" / "cacher only" benches).
- `attention` ("tail" | "all" | "selected"), `tail` (0.25): our extension. With "all", in a selective block
  every token attends over the current keys and only the MLP stays cached for the unselected ones; "selected"
  is the release (only the recomputed tokens attend); "tail" runs "selected" in the first blocks and "all" in
  the last `ceil(tail * blocks)` (`cacher.block_attention`). "all" departs from the release on measurement:
  the released cacher leaves "ghosts" (cacher.selective_from_indices has the numbers); full STC at a third of
  the tokens went 0.884 -> 0.906 on the reference model (200 evaluation seeds), above uniform (0.898) and
  random (0.891). "all" costs every row's attention and output projection in every block, which on CPU kept
  the cacher's vision time above 0.75x of a full pass (SigLIP-so400m, 2 cores, N = 2: selective frames 0.57x
  of a full pass, 0.41x released); "tail", the default, pays it in the last quarter of the blocks only
  (0.43x) and keeps nearly all of the accuracy (`cacher.block_attention` has the numbers).
- `refresh_gate` (off), `gate_threshold` (0.85): our extension; a selective frame whose mean key cosine at
  the first block is below the threshold runs as a refresh instead.
- `memory_mode` ("full" | "legacy_subset_list"): the pruner memory's channel space (spec §9).
- `context` (0.5): our extension; the share of the pruner's `tokens` spread evenly over the frame instead of
  taken by score; 0 is the released pruner. The default departs from the release on measurement: on the
  reference model it raised full STC from 0.861 to 0.884 at a third of the tokens and from 0.782 to 0.812 at
  a ninth (200 evaluation seeds; `pruner.keep_from_scores` has the numbers and the reason).

The pruner sees a frame's compressible tokens as the adapter projects them (`FrameTokens.features`, P of
them; trailers such as LLaVA-OneVision's `image_newline` are never dropped). For LLaVA-OneVision that is the
whole SigLIP grid (the adapter does not pool streaming frames), so the spec's "64 of 196" corresponds to
`tokens = round(P * 64 / 196)` here. A "chunk" of the spec is one frame.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar, Sequence

import torch

from vlmedge.compression.base import Compressor, FrameContext, Selection
from vlmedge.compression.registry import register
from vlmedge.compression.stc.cacher import (STREAM_ATTENTION, block_attention, mean_key_similarity, ref_names,
                                           refresh_layer, selective_layer)
from vlmedge.compression.stc.pruner import MEMORY_MODES, SCORERS, prune_chunk
from vlmedge.compression.stc.state import STCStreamState, refresh_due
from vlmedge.errors import InputError


@register("stc")
@dataclass
class STC(Compressor):
    tokens: int = 64
    ratio: float = 0.25
    cache_interval: int = 2
    scorer: str = "gaussian"
    alpha: float = 0.5
    channel_ratio: float = 0.5
    cacher: bool = True
    pruner: bool = True
    refresh_gate: bool = False
    gate_threshold: float = 0.85
    memory_mode: str = "full"
    context: float = 0.5
    attention: str = "tail"
    tail: float = 0.25

    def __post_init__(self):
        def check(ok: bool, msg: str):
            if not ok:
                raise InputError(f"stc: {msg}")

        check(isinstance(self.tokens, int) and not isinstance(self.tokens, bool) and self.tokens >= 1,
              f"tokens must be a positive count of tokens kept per frame, got {self.tokens!r}")
        check(_is_num(self.ratio) and 0.0 < self.ratio <= 1.0,
              f"ratio (the cacher's update ratio r) must be in (0, 1], got {self.ratio!r}")
        check(isinstance(self.cache_interval, int) and not isinstance(self.cache_interval, bool)
              and self.cache_interval >= 1, f"cache_interval must be an integer >= 1, got {self.cache_interval!r}")
        check(self.scorer in SCORERS, f"scorer must be one of {', '.join(SCORERS)}, got {self.scorer!r}")
        check(_is_num(self.alpha) and 0.0 <= self.alpha <= 1.0, f"alpha must be in [0, 1], got {self.alpha!r}")
        check(_is_num(self.channel_ratio) and 0.0 < self.channel_ratio <= 1.0,
              f"channel_ratio must be in (0, 1], got {self.channel_ratio!r}")
        check(_is_num(self.gate_threshold) and -1.0 <= self.gate_threshold <= 1.0,
              f"gate_threshold is a cosine similarity and must be in [-1, 1], got {self.gate_threshold!r}")
        check(_is_num(self.context) and 0.0 <= self.context < 1.0,
              f"context is the share of kept tokens spread evenly over the frame and must be in [0, 1), got {self.context!r}")
        check(self.attention in STREAM_ATTENTION,
              f"attention must be one of {', '.join(STREAM_ATTENTION)} (which rows of a selective block attend), "
              f"got {self.attention!r}")
        check(_is_num(self.tail) and 0.0 < self.tail <= 1.0,
              f"tail is the share of the last vision blocks where every row attends and must be in (0, 1], "
              f"got {self.tail!r}")
        check(self.memory_mode in MEMORY_MODES,
              f"memory_mode must be one of {', '.join(MEMORY_MODES)}, got {self.memory_mode!r}")
        check(isinstance(self.cacher, bool) and isinstance(self.pruner, bool) and isinstance(self.refresh_gate, bool),
              "cacher, pruner and refresh_gate must be true or false")

    def new_state(self) -> STCStreamState:
        return STCStreamState()

    # ----- vision stage (STC-Cacher) -----
    # export: the vision stage also outputs the blocks' internals (refresh pass), export/stc.py adds the
    # selective pass; on an export directory encode_frame runs those graphs (exported.py)
    export_modules: ClassVar[tuple[str, ...]] = ("vlmedge.export.stc",)

    def block_modes(self, num_blocks: int) -> list[str]:
        """Each vision block's selective mode ("selected" | "all") under the `attention` / `tail` settings."""
        return [block_attention(self.attention, self.tail, i, num_blocks) for i in range(num_blocks)]

    @property
    def vision_refs(self) -> tuple[str, ...]:
        """Per-block internals the exported vision graph outputs for the cacher (none without it)."""
        return tuple(f"ref_{n}" for n in ref_names(self.attention)) if self.cacher else ()

    @property
    def plain_vision(self) -> bool:  # without the cacher the vision pass is the adapter's own
        return not self.cacher

    def runs_on(self, adapter) -> bool:
        """Whether this method's vision pass can run on `adapter` (a torch adapter, or an export with the stage)."""
        from vlmedge.compression.stc.exported import has_select_stage

        return not self.cacher or hasattr(adapter, "vision_embed") or has_select_stage(adapter)

    @torch.no_grad()
    def encode_frame(self, adapter, frame, state: STCStreamState, taps: Sequence[int] | None = None):
        taps = tuple(self.taps if taps is None else taps)
        if not self.cacher:
            return adapter.encode_frame(frame, taps=taps)
        _need_state(state)
        if not hasattr(adapter, "vision_embed"):  # an export directory: the exported refresh/selective graphs
            from vlmedge.compression.stc.exported import encode_exported

            return encode_exported(self, adapter, frame, state, taps)
        hidden, ctx = adapter.vision_embed(adapter.pixels(frame))
        return self.encode_hidden(adapter, hidden, ctx, state, taps)

    def encode_hidden(self, adapter, hidden, ctx, state: STCStreamState, taps: Sequence[int] = ()):
        """The blocks (cached), projector and taps for one frame's embedded patches; updates `state`."""
        n_blocks = len(adapter.vision_blocks())
        wanted = {adapter.block_index(t) for t in taps}
        num_tokens = adapter.vision_tokens(hidden).shape[0]
        refresh = refresh_due(state, n_blocks, num_tokens, self.cache_interval)
        gate_sim, gated, pre = None, False, (None, None)
        if not refresh and self.refresh_gate:
            parts = adapter.vision_layer_parts(0, ctx)
            gate_sim, x0, k0 = mean_key_similarity(parts, adapter.vision_tokens(hidden), state.refs[0])
            gated = refresh = gate_sim < self.gate_threshold
            pre = (x0, k0)
        new_refs = []
        got: dict[int, torch.Tensor] = {}
        # a refresh overwrites the previous references in place (see refresh_layer); if the frame fails half
        # way they are a mix of two frames, so they are dropped and the next frame refreshes
        reuse = list(state.refs) if refresh and len(state.refs) == n_blocks else [None] * n_blocks
        modes = self.block_modes(n_blocks)
        try:
            for i in range(n_blocks):
                parts = adapter.vision_layer_parts(i, ctx)
                h = adapter.vision_tokens(hidden)
                x, k = pre if i == 0 else (None, None)
                if refresh:
                    out, ref = refresh_layer(parts, h, x=x, k=k, attention=modes[i], into=reuse[i])
                    new_refs.append(ref)
                else:
                    out, _ = selective_layer(parts, h, state.refs[i], self.ratio, x=x, k=k, attention=modes[i])
                hidden = adapter.vision_hidden(out, hidden)
                if i in wanted:
                    got[i] = adapter.tap_to_raster(hidden, ctx)
            result = adapter.vision_project(hidden, ctx)
        except BaseException:
            if any(r is not None for r in reuse):
                state.drop_references()
            raise
        result.taps = {t: got[adapter.block_index(t)] for t in taps}
        self.advance(state, refresh, num_tokens, new_refs, gated, gate_sim)
        return result

    @staticmethod
    def advance(state: STCStreamState, refresh: bool, num_tokens: int, new_refs=None, gated: bool = False,
                gate_sim: float | None = None) -> None:
        """The state changes only once the frame went through (torch and exported paths alike)."""
        if refresh:
            state.refs, state.num_tokens = new_refs, num_tokens
            state.since_refresh, state.ref_frame = 0, state.frames
            state.refreshes += 1
            state.gated += int(gated)
        else:
            state.since_refresh += 1
            state.selective += 1
        state.last_refresh, state.last_gate_similarity = refresh, gate_sim
        state.frames += 1

    # ----- after the projector (STC-Pruner) -----
    def compress(self, tokens, ctx: FrameContext, state: STCStreamState) -> Selection:
        p = tokens.num_tokens
        if not self.pruner:
            return Selection(keep=torch.arange(p))
        _need_state(state)
        res = prune_chunk(tokens.features, state.memory, min(self.tokens, p), scorer=self.scorer, alpha=self.alpha,
                          channel_ratio=self.channel_ratio, memory_mode=self.memory_mode, context=self.context)
        return Selection(keep=res.keep[0].cpu())


def _is_num(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def _need_state(state):
    if not isinstance(state, STCStreamState):
        raise TypeError("stc needs its per-stream state: pass the object from STC.new_state() (one per stream)")
