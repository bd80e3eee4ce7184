"""Streaming OmniZip: the clip-level function applied window by window as a stream's windows complete.

A camera stream never ends, so there is no clip to run the released method on. Each window (video frames and
audio of `window` seconds, 2 s for Qwen2.5-Omni) is compressed when it completes, as the NEWEST window of a
sliding clip: the last `context` completed windows (kept in the stream's state, unpruned) plus this one.

`stream_window` returns exactly what `omnizip_clip` on that sliding clip decides for its last window — its
frames' kept tokens, its audio keep mask and its merged anchors — and never revisits earlier windows (they are
already in the KV cache). Where this differs from the released method on a whole clip:

- Dominant audio (top-(1 − ρa) by saliency), the anchors, the merges and the budget normalisation see the
  sliding clip, not the whole clip; the saliency softmax spans the sliding clip's audio (the released one spans
  the whole clip's).
- `context = 0` is the literal per-window form (anchors and merges inside the window). It is degenerate: with
  one window the top-k takes exactly `round((1 − ρa)·N_a)` tokens of every window, so `S_a` and hence the video
  ratio are the same constant in every window — no audio guidance — and with ≤ 2 guided windows the released
  normalisation never runs, so ρv is ignored in guided windows (spec §7.5). Windows must compete for audio
  tokens for the ratio to follow the audio; `context ≥ 1` gives that, `context ≥ 2` also lets the released
  normalisation run (more than two guided windows in the clip).
- The stream's first window (and any window after a reset) has no context: it is the per-window form.
- The merge scores use the sliding clip's video (max over all its frames), and an anchor of the newest window
  may absorb pool tokens of a context window, as a released anchor may absorb tokens from anywhere in the clip.
- Every window's ratio comes from its own sliding clip's normalisation, so the stream's realised video
  retention tracks ρv only approximately, even with `exact_budget` (which is exact per sliding clip).
"""
from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field
from typing import Sequence

import torch

from vlmedge.compression.omnizip.audio import merge_anchors
from vlmedge.compression.omnizip.clip import ClipPlan, check_batch, plan_clip
from vlmedge.compression.omnizip.istc import istc
from vlmedge.compression.omnizip.saliency import clip_saliency


@dataclass
class AudioPiece:
    """One pushed audio chunk: LLM-space tokens and the audio tower's last-layer q/k (`[H, T, d]`, T = 2·N_a)."""

    features: torch.Tensor
    q: torch.Tensor
    k: torch.Tensor


@dataclass
class WindowRecord:
    """What a completed window leaves for the sliding clips of later windows (unpruned, unmerged)."""

    video: torch.Tensor | None  # [F, P, D]
    audio: list[AudioPiece]


@dataclass
class OmniZipStreamState:
    """Per-stream OmniZip state: the context windows and counters. One per stream, never shared."""

    history: deque = field(default_factory=deque)
    windows: int = 0  # windows compressed so far in this stream
    last: dict | None = None  # the latest window's decisions (ratios, retention, counts)

    def reset(self) -> None:
        self.history.clear()
        self.windows = 0
        self.last = None

    def __deepcopy__(self, memo):
        # recorded windows are never modified in place, so a copy (a question's provisional flush) may share them
        return OmniZipStreamState(history=deque(self.history), windows=self.windows,
                                  last=None if self.last is None else dict(self.last))


@dataclass
class WindowResult:
    video_keep: list[torch.Tensor]  # per frame of the newest window, ascending
    audio_keep: torch.Tensor  # [N_a] bool over the newest window's audio (pieces concatenated)
    audio_features: torch.Tensor | None  # [N_a, D] the newest window's audio with its anchors merged
    plan: ClipPlan  # the sliding clip's plan (the newest window is its last)
    info: dict  # ordinal (windows before it in the stream), context (windows of context used), guided, ratio,
    # base, audio_retention (S_a), video_in/kept/kept_nominal, audio_in/kept, and the sliding clip's budget
    # target (Dg, tokens) and shortfall (Dg minus what its normalisation reached)


def record_window(state: OmniZipStreamState, video: torch.Tensor | None, audio: Sequence[AudioPiece],
                  context: int) -> None:
    """Adds a completed window to the stream's context (keeping the last `context`) and counts it."""
    if context > 0:
        state.history.append(WindowRecord(video, list(audio)))
        while len(state.history) > context:
            state.history.popleft()
    else:
        state.history.clear()
    state.windows += 1


def sliding_plan(state: OmniZipStreamState, video: torch.Tensor | None, audio: Sequence[AudioPiece], rho_a: float,
                 rho_v: float, contextual_ratio: float, g: int, exact_budget: bool) -> tuple[ClipPlan, list]:
    """Stages A–C for the sliding clip (state's context windows + this one); does not change `state`."""
    windows = [*state.history, WindowRecord(video, list(audio))]
    pieces = [p for w in windows for p in w.audio]
    for p in pieces:
        if p.q.shape[1] // 2 != p.features.shape[0]:
            raise ValueError(f"an audio piece has {p.features.shape[0]} tokens but {p.q.shape[1]} encoder frames "
                             f"of q/k (expected two frames per token)")
    scores = clip_saliency([p.q for p in pieces], [p.k for p in pieces]) if pieces else None
    wa = [torch.cat([p.features for p in w.audio]) if w.audio else None for w in windows]
    plan = plan_clip([w.video for w in windows], wa, scores, rho_a, rho_v, contextual_ratio, g, exact_budget)
    return plan, wa


def stream_window(state: OmniZipStreamState, video: torch.Tensor | None, audio: Sequence[AudioPiece], rho_a: float,
                  rho_v: float, contextual_ratio: float = 0.05, g: int = 3, exact_budget: bool = False,
                  context: int = 0, spread: float = 0.0, odd_frames: str = "temporal") -> WindowResult:
    """Compresses the newest window (`video [F, P, D]` or None, its audio pieces in order) and records it as
    context for the next windows (at most `context` kept). `spread`: ISTC's share of each frame's kept tokens
    spread evenly; `odd_frames`: "temporal" or "dpc" (`istc.istc_counts`; 0 and "temporal" are the release)."""
    video = check_batch(video, "a window's video [F, P, D]", 3)
    plan, wa = sliding_plan(state, video, audio, rho_a, rho_v, contextual_ratio, g, exact_budget)
    last = len(wa) - 1
    ratio = plan.ratios[last]
    keeps = istc(video, ratio, context=spread, odd_frames=odd_frames) if ratio is not None else []
    sl = plan.window_audio(last)
    merged = None
    if wa[last] is not None:
        flat = torch.cat([w for w in wa if w is not None])
        merged = merge_anchors(flat, plan.audio, only=range(sl.start, sl.stop))[sl]
    audio_keep = plan.audio.keep[sl]
    n_v = 0 if video is None else video.shape[0] * video.shape[1]
    n_kept_nominal = None if ratio is None else (1.0 - ratio) * n_v
    info = dict(ordinal=state.windows, context=last, guided=plan.guided[last], ratio=ratio, base=plan.base[last],
                audio_retention=plan.retention[last], video_in=n_v, video_kept=int(sum(k.numel() for k in keeps)),
                video_kept_nominal=n_kept_nominal,
                audio_in=int(audio_keep.numel()), audio_kept=int(audio_keep.sum()), target=plan.target,
                shortfall=plan.shortfall)
    record_window(state, video, audio, context)
    state.last = info
    return WindowResult(video_keep=keeps, audio_keep=audio_keep, audio_features=merged, plan=plan, info=info)
