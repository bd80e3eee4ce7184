"""Binding loss: a training aid that ties each sound to the object whose arrival it announces.

"Which sound played when the red square appeared?" needs the LLM to join two streams by time. After 40
minutes of the transplanted Omni run every visual type was at 0.73-0.96 and the audio tower named the sound
at each audio token 99% of the time (`audio_dense`), yet "sound" stayed at chance (0.16 on 98 validation
questions, answering "beep" or "hiss" whatever played), and the grounding head put only 0.35 (median) of its
mass on the right audio tokens: a question names an object, and nothing in an audio token says which object
arrived with it. In the packed layout (as in Qwen2.5-Omni) a second's audio comes after that second's frames,
so audio tokens can look back at the frames of their own time. This loss asks one head of an early decoder
layer, at every audio token of a sound tied to an arrival, to put its attention mass on that object's visual
tokens in the frames it can see from the arrival on: loss = mean over those audio tokens of -log(mass). Then
the audio tokens carry the object's identity, and the question's grounding (grounding.py) can find them by
content. A training aid only, as the other heads: the exported model is unchanged and nothing reads it at
inference.
"""
from __future__ import annotations

import torch
from torch import Tensor

from vlmedge.models.training import dense


def default_layer(num_layers: int) -> int:
    """The first decoder layer that can already mix (layer 1): the audio tokens must carry the object's identity
    by the grounding layer (the middle one) for the question to find them."""
    return min(1, num_layers - 1)


def sound_bindings(ex, packed, grid_hw) -> tuple[Tensor, list[Tensor]]:
    """Query positions `[n]` (packed indices of audio tokens heard while a sound tied to an arriving object
    played) and, per query, the packed indices of that object's visual tokens in the frames of the clip from
    its arrival up to what the query can see. Empty when the clip holds no such pair."""
    stream = ex.stream
    events = [e for e in stream.world.sound_events() if e.obj >= 0]
    at, targets = [], []
    objects = {}
    for e in events:
        first = max(0, int(e.start * stream.fps) - ex.start)  # the clip's first frame at or after the arrival
        obj_tokens = []
        for f in range(first, len(packed.frames)):
            if f not in objects:
                objects[f] = dense.token_objects(stream, ex.start + f, grid_hw)
            offset, keep = packed.frames[f]
            obj_tokens.append(offset + torch.nonzero(objects[f][keep] == e.obj).flatten())
        obj_tokens = torch.cat(obj_tokens) if obj_tokens else torch.zeros(0, dtype=torch.long)
        if not obj_tokens.numel():
            continue
        for offset, t0, spt, n in packed.audio:
            start = t0 + spt * torch.arange(n)
            hit = torch.nonzero((start < e.end) & (start + spt > e.start)).flatten()
            for j in hit.tolist():
                pos = offset + j
                seen = obj_tokens[packed.allowed[pos, obj_tokens]]
                if seen.numel():
                    at.append(pos)
                    targets.append(seen)
    return torch.tensor(at, dtype=torch.long), targets
