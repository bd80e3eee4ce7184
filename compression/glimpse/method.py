"""`--method glimpse`: GlimpsePrune — a learned glimpse token and predictor decide which tokens the LLM keeps.

Settings (`glimpse:threshold=0.5,max_ratio=0.2,...`):
- `threshold` (0.5): keep tokens whose predicted probability is above it (strict, as released);
- `max_ratio` (none): cap on the kept fraction, applied over all frames of one prefill together (as released:
  per sample, not per image); `min_keep` (1): never keep fewer;
- `spread` (0 = released): add this share of each frame's tokens, evenly spaced over the ones the VIP dropped, as
  background context (our extension, keep.add_spread; it raises the kept count by that share);
- `weights` (none = `<model dir>/glimpse`): the trained modules (`vlmedge train-vip` writes them).

Unlike the other methods it prunes INSIDE the LLM: layers 0..K see every token, then hidden states and the KV of
those layers are pruned once and the later layers run on what is kept (prefill.py). It needs a query, so in a
stream (runtime/session.py) frames are committed with the session's standing prompt conditioning the glimpse
(dropped afterwards; no standing prompt: the glimpse follows the frame directly), and `ask()` redoes the last
`requery_frames` frames in the question's own prefill: frames, question and glimpse in one pruned pass, exactly
the paper's inference over those frames. Older frames keep their standing selection.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch

from vlmedge.compression.base import Compressor, FrameContext, Selection
from vlmedge.compression.registry import register
from vlmedge.errors import InputError


@register("glimpse")
@dataclass
class Glimpse(Compressor):
    threshold: float = 0.5
    max_ratio: float | None = None
    min_keep: int = 1
    spread: float = 0.0
    weights: str | None = None

    query_conditioned: ClassVar[bool] = True
    prunes_in_llm: ClassVar[bool] = True
    plain_vision: ClassVar[bool] = True  # the adapter's own vision pass, with the taps the VIP reads
    # an export adds llm_head / llm_tail / vip graphs; on an export directory `prefill` runs them (exported.py)
    export_modules: ClassVar[tuple[str, ...]] = ("vlmedge.export.glimpse",)

    def __post_init__(self):
        def check(ok: bool, msg: str):
            if not ok:
                raise InputError(f"glimpse: {msg}")

        num = (int, float)
        check(isinstance(self.threshold, num) and 0.0 < self.threshold < 1.0,
              f"threshold is a probability in (0, 1), got {self.threshold!r}")
        check(self.max_ratio is None or (isinstance(self.max_ratio, num) and 0.0 < self.max_ratio <= 1.0),
              f"max_ratio must be in (0, 1] (or none for no cap), got {self.max_ratio!r}")
        check(isinstance(self.min_keep, int) and self.min_keep >= 1, f"min_keep must be >= 1, got {self.min_keep!r}")
        check(isinstance(self.spread, num) and 0.0 <= self.spread < 1.0,
              f"spread is a share of each frame's tokens in [0, 1), got {self.spread!r}")
        self._loaded: dict[int, tuple] = {}  # per adapter: (LayerRunner, GlimpseModules); read-only weights

    def modules(self, adapter):
        """(LayerRunner, GlimpseModules) for `adapter`, loaded once and shared by every stream (read-only)."""
        key = id(adapter)
        if key not in self._loaded:
            from vlmedge.models.layer_runner import LayerRunner
            from vlmedge.compression.glimpse.modules import GlimpseModules

            path = self.weights or (getattr(adapter, "model_dir", None) and f"{adapter.model_dir}/glimpse")
            if not path:
                raise InputError("glimpse: this model was not loaded from a folder, so there is no default predictor; "
                                 "pass glimpse:weights=DIR (trained with `vlmedge train-vip`)")
            mods = GlimpseModules.load(path, adapter)
            self._loaded[key] = (LayerRunner(adapter), mods)  # the VIP runs in fp32 (spec §10: fp32 logits)
        return self._loaded[key]

    def prepare_export(self, adapter) -> None:
        """Loads the trained modules for `vlmedge export`: the vision stage exports the taps they read, and the
        glimpse stages bake them in (`taps`, `export_glimpse`)."""
        _, mods = self.modules(adapter)
        self.taps = list(mods.cfg.taps)
        self.export_glimpse = mods

    def encode_frame(self, adapter, frame, state):
        if not hasattr(adapter, "language_model"):  # an export directory
            from vlmedge.compression.glimpse.exported import layout

            return adapter.encode_frame(frame, taps=tuple(layout(adapter)["taps"]))
        _, mods = self.modules(adapter)
        return adapter.encode_frame(frame, taps=tuple(mods.cfg.taps))

    def compress(self, tokens, ctx: FrameContext, state) -> Selection:
        raise InputError("glimpse prunes inside the LLM's prefill and needs the session to run it; use it through "
                         "StreamingSession (`vlmedge eval --method glimpse`), not as a per-frame selector")

    @torch.no_grad()
    def prefill(self, adapter, cache, pieces):
        """Pruned prefill of `pieces` (prefill.Piece) into `cache`: (last logits, kept indices per frame piece)."""
        if not hasattr(adapter, "language_model"):  # an export directory: the split-LLM graphs
            from vlmedge.compression.glimpse.exported import prefill as prefill_exported

            logits, keeps, _ = prefill_exported(adapter, cache, pieces, threshold=self.threshold,
                                                max_ratio=self.max_ratio, min_keep=self.min_keep,
                                                spread=self.spread)
            return logits, keeps
        from vlmedge.compression.glimpse.prefill import prefill

        runner, mods = self.modules(adapter)
        logits, keeps, _ = prefill(runner, mods, cache, pieces, threshold=self.threshold, max_ratio=self.max_ratio,
                                   min_keep=self.min_keep, spread=self.spread)
        return logits, keeps
