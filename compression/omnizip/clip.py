"""The clip-level OmniZip (spec §3, core version): stages A–D over a clip given as a sequence of windows.

A window (2 s for Qwen2.5-Omni, `seconds_per_chunk`) holds its video frames `[F, P, D]` and its audio tokens
`[N_a, D]`; either may be missing. This is the released `omnizip()` with the token runs it detects from
`input_ids` given explicitly:

- window i is GUIDED when it has both video and audio; its video ratio comes from its own audio retention.
  The released code pairs the i-th video run with the i-th audio run by order; pairing by window is the same
  for the interleaved layout and stays right when a window lacks one modality;
- windows with video but no audio are unguided and use ρv (also when the clip has no audio at all: stages A–C
  are skipped; the released Qwen2.5 code crashes there, spec §7.4);
- the budget target is `Dg = ρv·N_v − ρv·Σ_unguided s` with `N_v` all video tokens of the clip;
- ISTC runs per window with frame parity counted inside the window (the released code runs one ISTC over a
  trailing run of unguided video; the parity differs only there).

`plan_clip` computes stages A–C (what every window keeps of its audio, its video ratio, the merges);
`omnizip_clip` adds stage D (ISTC) and the merged audio features.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Sequence

import torch

from vlmedge.compression.omnizip.audio import AudioSelection, merge_anchors, select_audio
from vlmedge.compression.omnizip.istc import istc, num_keep
from vlmedge.compression.omnizip.ratios import guided_ratios
from vlmedge.errors import InputError


def check_batch(x: torch.Tensor | None, what: str, ndim: int) -> torch.Tensor | None:
    """Accepts `[...]` or `[1, ...]`; anything with a batch above 1 is the clear error the spec asks for."""
    if x is None:
        return None
    if x.ndim == ndim + 1:
        if x.shape[0] != 1:
            raise InputError(f"OmniZip supports batch size 1 per stream; got B={x.shape[0]} ({what})")
        x = x[0]
    if x.ndim != ndim:
        raise InputError(f"OmniZip: {what} must have {ndim} dimensions (or a batch of 1), got shape {tuple(x.shape)}")
    return x


@dataclass
class ClipPlan:
    audio: AudioSelection  # over the clip's audio tokens (all windows concatenated)
    audio_offsets: list[int]  # window i's audio tokens are [audio_offsets[i], audio_offsets[i+1])
    ratios: list[float | None]  # per window, the video discard ratio (None: no video)
    base: list[float | None]  # per window, Eq. 5's ratio before normalisation (guided windows only)
    retention: list[float | None]  # per window, S_a (windows with audio)
    guided: list[bool]
    target: float = 0.0  # Dg
    shortfall: float = 0.0
    exact_passes: int = 0

    def window_audio(self, i: int) -> slice:
        return slice(self.audio_offsets[i], self.audio_offsets[i + 1])


@dataclass
class ClipResult:
    plan: ClipPlan
    video_keep: list[list[torch.Tensor]]  # per window, per frame: kept indices (ascending)
    audio_keep: torch.Tensor  # [N_a] bool over the clip's audio tokens
    audio_features: torch.Tensor | None  # [N_a, D]: the clip's audio with the anchors merged
    extras: dict = field(default_factory=dict)


def plan_clip(video: Sequence[torch.Tensor | None], audio: Sequence[torch.Tensor | None],
              scores: torch.Tensor | None, rho_a: float, rho_v: float, contextual_ratio: float = 0.05, g: int = 3,
              exact_budget: bool = False) -> ClipPlan:
    """Stages A–C for a clip of windows: `video[i] [F_i, P, D]` or None, `audio[i] [N_a_i, D]` or None, and the
    saliency `scores [Σ N_a_i]` of the clip's audio (see `saliency.clip_saliency`)."""
    if len(video) != len(audio):
        raise ValueError(f"{len(video)} video windows but {len(audio)} audio windows")
    video = [check_batch(v, "a window's video [F, P, D]", 3) for v in video]
    audio = [check_batch(a, "a window's audio [N_a, D]", 2) for a in audio]
    n_a = [0 if a is None else a.shape[0] for a in audio]
    offsets = [0]
    for n in n_a:
        offsets.append(offsets[-1] + n)
    sizes = [0 if v is None else v.shape[0] * v.shape[1] for v in video]
    has_video = [v is not None and v.shape[0] > 0 for v in video]
    dim = next((x.shape[-1] for x in (*audio, *video) if x is not None), 1)
    dev = next((x.device for x in (*audio, *video) if x is not None), torch.device("cpu"))
    if offsets[-1]:
        a_all = torch.cat([a for a in audio if a is not None and a.shape[0]])
    else:
        a_all = torch.zeros(0, dim, device=dev)
    if offsets[-1]:
        if scores is None or scores.shape != (offsets[-1],):
            got = None if scores is None else tuple(scores.shape)
            raise ValueError(f"the clip has {offsets[-1]} audio tokens but the saliency scores are {got}")
        vids = [v.reshape(-1, v.shape[-1]) for v, h in zip(video, has_video) if h]
        v_all = torch.cat(vids) if vids else None
        sel = select_audio(a_all, v_all, scores, rho_a, contextual_ratio, g)
    else:  # no audio: stages A–C are skipped, every window is unguided
        empty = torch.zeros(0, dtype=torch.bool, device=dev)
        sel = AudioSelection(keep=empty, dominant=empty.clone(), anchors=torch.zeros(0, dtype=torch.long, device=dev))
    retention = [float(sel.keep[offsets[i]:offsets[i + 1]].float().mean()) if n_a[i] else None
                 for i in range(len(video))]
    guided = [has_video[i] and n_a[i] > 0 for i in range(len(video))]
    gi = [i for i in range(len(video)) if guided[i]]
    unguided_tokens = sum(sizes[i] for i in range(len(video)) if has_video[i] and not guided[i])
    wr = guided_ratios([retention[i] for i in gi], [sizes[i] for i in gi], rho_v, exact_budget, unguided_tokens)
    ratios: list[float | None] = [rho_v if h else None for h in has_video]
    base: list[float | None] = [None] * len(video)
    for j, i in enumerate(gi):
        ratios[i], base[i] = wr.ratios[j], wr.base[j]
    return ClipPlan(audio=sel, audio_offsets=offsets, ratios=ratios, base=base, retention=retention, guided=guided,
                    target=wr.target, shortfall=wr.shortfall, exact_passes=wr.passes)


def omnizip_clip(video: Sequence[torch.Tensor | None], audio: Sequence[torch.Tensor | None],
                 scores: torch.Tensor | None, rho_a: float, rho_v: float, contextual_ratio: float = 0.05, g: int = 3,
                 exact_budget: bool = False, odd_frames: str = "temporal") -> ClipResult:
    """The whole method on one clip: what every window keeps of its frames and audio, and the merged audio.
    `odd_frames="dpc"`: DPC-KNN on every frame (our extension, `istc.istc_counts`)."""
    plan = plan_clip(video, audio, scores, rho_a, rho_v, contextual_ratio, g, exact_budget)
    video = [check_batch(v, "a window's video [F, P, D]", 3) for v in video]
    keeps = [istc(v, plan.ratios[i], odd_frames=odd_frames) if plan.ratios[i] is not None else []
             for i, v in enumerate(video)]
    a_all = [check_batch(a, "a window's audio [N_a, D]", 2) for a in audio]
    a_all = [a for a in a_all if a is not None and a.shape[0]]
    merged = merge_anchors(torch.cat(a_all), plan.audio) if a_all else None
    return ClipResult(plan=plan, video_keep=keeps, audio_keep=plan.audio.keep, audio_features=merged)


def realised_video_keep(plan: ClipPlan, frames_per_window: Sequence[int], p: Sequence[int]) -> list[int]:
    """Per window, the integer count of video tokens ISTC keeps (per-frame flooring included)."""
    return [0 if r is None else f * num_keep(pp, r) for r, f, pp in zip(plan.ratios, frames_per_window, p)]


__all__ = ["ClipPlan", "ClipResult", "plan_clip", "omnizip_clip", "realised_video_keep", "check_batch"]
