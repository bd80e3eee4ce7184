"""Dense per-token supervision for the audio tower: which sound each audio token hears, from the generator.

The Omni model's only audio question ("which sound played when the red square appeared") gives one answer
token per question, and it needs two skills at once: naming the sound and finding when the object arrived.
After 210 minutes of training it sat at chance (0.21, chance 0.2) while the visual dense loss had taught the
vision side in minutes. camworld knows every sound event's span, so a linear head on the tower's LLM-space
tokens is trained to name the sound playing at each token's time (or "none"), as `dense.DenseHead` does for
visual tokens. A training aid only: the head is not part of the bundled model.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from vlmedge.models.camworld.config import SOUNDS, SPEECH_WORDS

LABELS: tuple[str, ...] = ("none", *SOUNDS, *SPEECH_WORDS)
EVENT_WEIGHT = 4.0  # sound tokens are a minority of the track (events last ~0.3 s): weight them up


def token_sounds(stream, second: int, n_tokens: int) -> torch.Tensor:
    """`[n_tokens]` int64: the label index of the sound playing at the centre of each of the tokens that encode
    second `second` of the stream's audio (0: none). Overlapping events: the later one wins."""
    centres = second + (torch.arange(n_tokens, dtype=torch.float64) + 0.5) / n_tokens
    out = torch.zeros(n_tokens, dtype=torch.int64)
    for e in stream.world.sound_events():
        out[(centres >= e.start) & (centres < e.end)] = LABELS.index(e.sound)
    return out


class AudioHead(nn.Module):
    """A linear classifier over the audio tokens the LLM receives (layer-normed first, as DenseHead)."""

    def __init__(self, dim: int):
        super().__init__()
        self.norm = nn.LayerNorm(dim)
        self.proj = nn.Linear(dim, len(LABELS))

    def loss(self, features: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Weighted cross-entropy over tokens, and the accuracy on tokens that hear a sound (for the log)."""
        logits = self.proj(self.norm(features.float()))
        w = torch.where(labels > 0, EVENT_WEIGHT, 1.0)
        loss = (F.cross_entropy(logits, labels, reduction="none") * w).sum() / w.sum()
        hit = labels > 0
        acc = (logits[hit].argmax(-1) == labels[hit]).float().mean() if hit.any() else logits.new_tensor(1.0)
        return loss, acc


def stream_loss(head: AudioHead, streams) -> tuple[torch.Tensor, torch.Tensor] | None:
    """The head's loss over every encoded second of `streams` (their `audio_tokens`), or None without audio."""
    feats, labels = [], []
    for s in streams:
        for sec, tok in enumerate(getattr(s, "audio_tokens", None) or []):
            tok = tok.reshape(-1, tok.shape[-1])
            feats.append(tok)
            labels.append(token_sounds(s, sec, tok.shape[0]))
    if not feats:
        return None
    return head.loss(torch.cat(feats), torch.cat(labels))
