"""`--method omnizip` and its two comparison baselines, as window methods of the streaming session.

Settings (`omnizip:rho_a=0.3,rho_v=0.6,...`; ρa and ρv are DISCARD ratios, as in the released config):
- `rho_a` (0.3): audio pruning ratio — `round((1 − ρa)·N_a)` dominant audio tokens are kept;
- `rho_v` (0.6): video pruning ratio — the target of the budget normalisation and the ratio of unguided windows
  (windows with video but no audio); 0.3/0.6 is the paper's "45% retained", 0.4/0.7 its "35%";
- `g` (3): pool tokens merged into each anchor (0 disables anchors, as in the core version);
- `contextual_ratio` (0.05): anchors per audio token;
- `exact_budget` (off): our extension — iterate the budget normalisation to within one token (spec §8);
- `context_windows` (4): completed windows kept as context of the sliding clip each window is compressed in
  (`stream.py`; 0 = the literal per-window form, which loses the audio guidance — see there);
- `window` (None = the model's audio/video interleaving window, `seconds_per_chunk`, 2 s for Qwen2.5-Omni):
  seconds per window.
- `odd_frames` ("dpc"; "temporal" is the release): how ISTC prunes a window's odd frames. The release keeps the
  tokens that changed most from the previous frame; "dpc" (our extension) runs DPC-KNN on every frame. Why: in
  a stream the question is about now, and the newest frame is odd half the time; under "temporal" it shows only
  what changed, so an object standing still is missing from it and the model answers as if it had left. On
  evaluation seeds 1,000,200–1,000,399 of the Omni reference model, 45% (ρa/ρv 0.3/0.6, exact budget, spread 0):
  0.883 → 0.905 (none 0.923): count 0.955 → 0.980, exists 0.825 → 0.865, where 0.935 → 0.960, appeared equal
  (0.936); 35% (0.4/0.7): 0.869 → 0.899. Questions asked right after an odd frame were a third of the losses.
  Also tried there, not taken: DPC-KNN on the newest frame and the older one pruned against it (0.892: "which
  object appeared" falls to 0.854), and odd frames preferring positions the previous frame dropped (0.891).
- `spread` (0 = the release): our extension — the share of each frame's kept video tokens spread evenly over what
  ISTC's score left out, as STC's `context`. It was the default (0.25) while odd frames were temporal (45%
  0.883 → 0.888, 35% 0.869 → 0.876 on the seeds above); with "dpc" it no longer helps (45% 0.905 / 0.903, 35%
  0.899 / 0.895 for spread 0 / 0.25), so the release's 0 is back. Also applies to `omnizip_videoonly`, as does
  `odd_frames`, so that baseline differs from OmniZip only by the audio guidance.

Baselines (same settings, so `--method omnizip_random:rho_a=0.3,rho_v=0.6` is the matched comparison):
- `omnizip_random` (`seed`, `budget`): uniformly random audio and video tokens. `budget=omnizip` (default) keeps
  exactly as many tokens as OmniZip would in every window (audio per window, video per frame), so the retention
  is equal by construction and only WHICH tokens differ; `budget=nominal` keeps `round((1 − ρa)·N_a) + anchors`
  audio and `int(P·(1 − ρv))` per frame. No merging.
- `omnizip_videoonly` (`budget`): video-only pruning without audio guidance — all audio tokens stay, video is
  pruned by ISTC at one ratio for the whole window. `budget=omnizip` (default) gives each window the same total
  (video + audio) OmniZip keeps there (video gets what is left after all the audio, spread evenly over frames);
  `budget=nominal` prunes video at ρv (more tokens than OmniZip, since no audio is pruned).

Batch size is 1 per stream by construction (one session = one stream); batched tokens raise a clear error.
A window with video but no audio (or a model without audio) uses ρv (ISTC only).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import torch

from vlmedge.compression.base import Compressor, FrameContext, Selection, WindowSelection
from vlmedge.compression.omnizip.audio import num_contextual, num_dominant
from vlmedge.compression.omnizip.clip import check_batch
from vlmedge.compression.omnizip.istc import ODD_FRAMES, istc, istc_counts, num_keep
from vlmedge.compression.omnizip.stream import (AudioPiece, OmniZipStreamState, record_window, sliding_plan,
                                                stream_window)
from vlmedge.compression.registry import register
from vlmedge.errors import InputError

DEFAULT_WINDOW_S = 2.0  # Qwen2.5-Omni's seconds_per_chunk
BUDGETS = ("omnizip", "nominal")


def _is_num(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def _is_int(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


@register("omnizip")
@dataclass
class OmniZip(Compressor):
    rho_a: float = 0.3
    rho_v: float = 0.6
    g: int = 3
    contextual_ratio: float = 0.05
    exact_budget: bool = False
    context_windows: int = 4
    window: float | None = None
    spread: float = 0.0
    odd_frames: str = "dpc"

    def __post_init__(self):
        def check(ok: bool, msg: str):
            if not ok:
                raise InputError(f"{self.name}: {msg}")

        check(_is_num(self.rho_a) and 0.0 <= self.rho_a <= 1.0,
              f"rho_a (audio pruning ratio) must be in [0, 1], got {self.rho_a!r}")
        check(_is_num(self.rho_v) and 0.0 <= self.rho_v <= 1.0,
              f"rho_v (video pruning ratio) must be in [0, 1], got {self.rho_v!r}")
        check(_is_int(self.g) and self.g >= 0,
              f"g (pool tokens merged per anchor) must be an integer >= 0, got {self.g!r}")
        check(_is_num(self.contextual_ratio) and 0.0 <= self.contextual_ratio <= 1.0,
              f"contextual_ratio must be in [0, 1], got {self.contextual_ratio!r}")
        check(isinstance(self.exact_budget, bool), "exact_budget must be true or false")
        check(_is_int(self.context_windows) and self.context_windows >= 0,
              f"context_windows must be an integer >= 0, got {self.context_windows!r}")
        check(_is_num(self.spread) and 0.0 <= self.spread < 1.0,
              f"spread (share of each frame's kept video tokens spread evenly) must be in [0, 1), got {self.spread!r}")
        check(self.odd_frames in ODD_FRAMES,
              f"odd_frames must be one of {', '.join(ODD_FRAMES)} (dpc: DPC-KNN on every frame; temporal: the "
              f"release's change against the previous frame), got {self.odd_frames!r}")
        check(self.window is None or (_is_num(self.window) and self.window > 0),
              f"window must be a positive number of seconds (or none for the model's), got {self.window!r}")

    def new_state(self) -> OmniZipStreamState:
        return OmniZipStreamState()

    def window_length(self, adapter) -> float:
        if self.window is not None:
            return float(self.window)
        cfg = getattr(getattr(adapter, "model", None), "config", None)
        return float(getattr(cfg, "seconds_per_chunk", None) or DEFAULT_WINDOW_S)

    # ----- the window form (what the session calls) -----
    def _inputs(self, frames: Sequence, audio: Sequence | None) -> tuple[torch.Tensor | None, list[AudioPiece]]:
        feats = [check_batch(f.features, "frame tokens [N, D]", 2) for f in frames]
        if feats and len({tuple(f.shape) for f in feats}) > 1:
            raise InputError(f"{self.name}: the frames of one window must share a token grid; got "
                             f"{sorted({tuple(f.shape) for f in feats})}")
        video = torch.stack(feats) if feats else None
        pieces = []
        for a in audio or []:
            f = check_batch(a.features, "audio tokens [N_a, D]", 2)
            if f.shape[0]:
                pieces.append(AudioPiece(features=f, q=a.q, k=a.k))
        return video, pieces

    def _settings(self) -> dict:
        return dict(rho_a=self.rho_a, rho_v=self.rho_v, contextual_ratio=self.contextual_ratio, g=self.g,
                    exact_budget=self.exact_budget)

    def compress_window(self, frames, frame_ctx, audio, state) -> WindowSelection:
        _need_state(state)
        video, pieces = self._inputs(frames, audio)
        res = stream_window(state, video, pieces, context=self.context_windows, spread=self.spread,
                            odd_frames=self.odd_frames, **self._settings())
        keep = torch.nonzero(res.audio_keep).flatten()
        feats = res.audio_features[keep] if res.audio_features is not None else None
        return WindowSelection(frames=[Selection(keep=k.cpu()) for k in res.video_keep],
                               audio=Selection(keep=keep.cpu(), features=feats), info=res.info)

    def compress(self, tokens, ctx: FrameContext, state) -> Selection:
        """A lone frame outside any window (not how the session runs OmniZip): an unguided one-frame window,
        i.e. DPC-KNN at ρv."""
        f = check_batch(tokens.features, "frame tokens [N, D]", 2)
        return Selection(keep=istc([f], self.rho_v, context=self.spread)[0].cpu())

    # ----- shared by the baselines -----
    def _omnizip_counts(self, state: OmniZipStreamState, video, pieces) -> tuple[list[int], int, dict]:
        """What OmniZip keeps in this window (per-frame video counts, audio count) without running ISTC or the
        merges; records the window as context like OmniZip does."""
        plan, wa = sliding_plan(state, video, pieces, **self._settings())
        last = len(wa) - 1
        ratio = plan.ratios[last]
        counts = [num_keep(video.shape[1], ratio)] * video.shape[0] if ratio is not None else []
        n_audio = int(plan.audio.keep[plan.window_audio(last)].sum())
        record_window(state, video, pieces, self.context_windows)
        return counts, n_audio, dict(ratio=ratio, audio_retention=plan.retention[last], guided=plan.guided[last])


@register("omnizip_random")
@dataclass
class OmniZipRandom(OmniZip):
    seed: int = 0
    budget: str = "omnizip"

    def __post_init__(self):
        super().__post_init__()
        if self.budget not in BUDGETS:
            raise InputError(f"{self.name}: budget must be one of {', '.join(BUDGETS)}, got {self.budget!r}")

    def compress(self, tokens, ctx: FrameContext, state) -> Selection:
        """A lone frame outside any window: `int(P·(1 − ρv))` random tokens."""
        f = check_batch(tokens.features, "frame tokens [N, D]", 2)
        gen = torch.Generator().manual_seed(self.seed * 1_000_003 + ctx.frame_index)
        keep = torch.randperm(f.shape[0], generator=gen)[:num_keep(f.shape[0], self.rho_v)]
        return Selection(keep=keep.sort().values)

    def compress_window(self, frames, frame_ctx, audio, state) -> WindowSelection:
        _need_state(state)
        video, pieces = self._inputs(frames, audio)
        n_a = sum(p.features.shape[0] for p in pieces)
        if self.budget == "omnizip":
            counts, n_audio, info = self._omnizip_counts(state, video, pieces)
        else:
            counts = [num_keep(video.shape[1], self.rho_v)] * video.shape[0] if video is not None else []
            n_dom = num_dominant(n_a, self.rho_a)
            n_audio = n_dom + num_contextual(n_a, n_dom, self.contextual_ratio, self.g)
            info = dict(ratio=self.rho_v if video is not None else None)
            record_window(state, video, pieces, 0)
        # one generator per window, from the seed and the window's index: the same stream always draws the same
        # tokens, whatever questions were asked in between
        gen = torch.Generator().manual_seed(self.seed * 1_000_003 + state.windows - 1)
        p = 0 if video is None else video.shape[1]
        sels = [Selection(keep=torch.randperm(p, generator=gen)[:c].sort().values) for c in counts]
        audio_sel = Selection(keep=torch.randperm(n_a, generator=gen)[:n_audio].sort().values)
        info.update(video_in=p * len(counts), video_kept=sum(counts), audio_in=n_a, audio_kept=n_audio)
        state.last = info
        return WindowSelection(frames=sels, audio=audio_sel, info=info)


@register("omnizip_videoonly")
@dataclass
class OmniZipVideoOnly(OmniZip):
    budget: str = "omnizip"

    def __post_init__(self):
        super().__post_init__()
        if self.budget not in BUDGETS:
            raise InputError(f"{self.name}: budget must be one of {', '.join(BUDGETS)}, got {self.budget!r}")

    def compress_window(self, frames, frame_ctx, audio, state) -> WindowSelection:
        _need_state(state)
        video, pieces = self._inputs(frames, audio)
        n_a = sum(p.features.shape[0] for p in pieces)
        if video is None:
            counts, info = [], dict(ratio=None)
            record_window(state, video, pieces, self.context_windows if self.budget == "omnizip" else 0)
        elif self.budget == "omnizip":
            oz_counts, oz_audio, oz = self._omnizip_counts(state, video, pieces)
            n_v = video.shape[0] * video.shape[1]
            total = min(n_v, max(0, sum(oz_counts) + oz_audio - n_a))
            f = video.shape[0]
            counts = [total // f + (1 if t < total % f else 0) for t in range(f)]
            info = dict(ratio=1.0 - total / n_v, omnizip_ratio=oz["ratio"], omnizip_kept=sum(oz_counts) + oz_audio)
        else:
            counts = [num_keep(video.shape[1], self.rho_v)] * video.shape[0]
            info = dict(ratio=self.rho_v)
            record_window(state, video, pieces, 0)
        keeps = (istc_counts(list(video), counts, context=self.spread, odd_frames=self.odd_frames)
                 if video is not None else [])
        p = 0 if video is None else video.shape[1]
        info.update(video_in=p * len(counts), video_kept=sum(counts), audio_in=n_a, audio_kept=n_a)
        state.last = info
        return WindowSelection(frames=[Selection(keep=k.cpu()) for k in keeps],
                               audio=Selection(keep=torch.arange(n_a)), info=info)


def _need_state(state):
    if not isinstance(state, OmniZipStreamState):
        raise TypeError("omnizip needs its per-stream state: pass the object from new_state() (one per stream)")
