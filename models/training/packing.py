"""One training sequence per stream, laid out exactly as the streaming session lays it out at inference.

The stream part (prefix, then every frame's tokens, audio chunks for omni models) is causal. Every question
becomes a block of `question_template + answer + <|im_end|>` appended after the stream, with position ids that
continue from the frame it is asked after, and an attention mask that lets it see the stream only up to that
frame (and itself causally). So one forward pass trains all of a stream's questions at once, each seeing
exactly what `StreamingSession.ask()` would show it — a stream of 8 frames with 16 questions costs barely
more than the stream alone.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import torch

from vlmedge.models.positions import PositionState


@dataclass
class Packed:
    embeds: torch.Tensor  # [L, D]
    positions: torch.Tensor  # [rows, L]
    allowed: torch.Tensor  # [L, L] bool, True = may attend
    targets: torch.Tensor  # [L] long, -100 where no loss
    answer_at: list[int] = field(default_factory=list)  # index whose logits predict each question's answer
    answers: list[int] = field(default_factory=list)  # the answer token id per question
    qtypes: list[str] = field(default_factory=list)
    frames: list = field(default_factory=list)  # per frame: (offset of its first visual token, kept grid indices)
    audio: list = field(default_factory=list)  # per audio chunk: (offset, start time s, seconds per token, tokens)


class StreamPacker:
    """Builds a `Packed` from segments pushed in stream order, mirroring `StreamingSession`."""

    def __init__(self, adapter):
        self.adapter = adapter
        self.pos = PositionState()
        self.embeds: list[torch.Tensor] = []
        self.ids: list[torch.Tensor] = []
        self.length = 0
        self.checkpoints: list[tuple[int, PositionState]] = []  # (stream length, positions) after each frame
        self.frames: list[tuple[int, torch.Tensor]] = []  # (offset of the frame's first visual token, kept indices)
        self.audio_chunks: list[tuple[int, float, float, int]] = []  # (offset, start s, s per token, tokens)
        self._text(adapter.prompt.prefix)

    def _add(self, emb, ids):
        self.embeds.append(emb)
        self.ids.append(ids)
        self.length += emb.shape[0]

    def _text(self, text: str):
        t = self.adapter.tokenize(text)
        if t.numel():
            self._add(self.adapter.embed_text_grad(t), self.adapter.positions.text(self.pos, t.numel()))

    def frame(self, tokens, time_s: float, keep: torch.Tensor | None = None, features: torch.Tensor | None = None):
        ids = self.adapter.positions.frame(self.pos, tokens.grid_hw, tokens.trailer.shape[0], time_s)
        n = tokens.num_tokens
        keep = torch.arange(n) if keep is None else keep
        feats = features if features is not None else tokens.features[keep]
        self.frames.append((self.length, keep))
        self._add(torch.cat([feats, tokens.trailer.to(feats.dtype)]), torch.cat([ids[:, keep], ids[:, n:]], dim=1))
        if self.adapter.prompt.frame_close:
            self._text(self.adapter.prompt.frame_close)
        self.checkpoints.append((self.length, self.pos.copy()))

    def audio(self, features: torch.Tensor, time_s: float, seconds_per_token: float):
        ids = self.adapter.positions.audio(self.pos, features.shape[0], time_s, seconds_per_token)
        self.audio_chunks.append((self.length, time_s, seconds_per_token, features.shape[0]))
        self._add(features, ids)
        if self.checkpoints:  # audio heard during the last frame's interval belongs to that frame's view
            self.checkpoints[-1] = (self.length, self.pos.copy())

    def build(self, questions) -> Packed:
        """`questions`: (frame_index, text, answer_word, qtype) asked right after that frame."""
        a = self.adapter
        tok = a.tokenizer
        eos = tok.eos_token_id
        stream_len = self.length
        blocks = []
        for frame, text, answer, qtype in questions:
            end, pos = self.checkpoints[frame]
            q_ids = a.tokenize(a.prompt.question_template.format(question=text))
            ans = a.tokenize(answer)
            if ans.numel() != 1:
                raise ValueError(f"answer {answer!r} is not one token of this tokenizer")
            ids = torch.cat([q_ids, ans, torch.tensor([eos])])
            p = pos.copy()
            blocks.append((end, ids, a.positions.text(p, ids.numel()), qtype))
        total = stream_len + sum(b[1].numel() for b in blocks)
        allowed = torch.zeros(total, total, dtype=torch.bool)
        allowed[:stream_len, :stream_len] = torch.ones(stream_len, stream_len, dtype=torch.bool).tril()
        targets = torch.full((total,), -100, dtype=torch.long)
        packed = Packed(embeds=None, positions=None, allowed=allowed, targets=targets, frames=list(self.frames),
                        audio=list(self.audio_chunks))
        embeds, ids_all = list(self.embeds), list(self.ids)
        start = stream_len
        for end, ids, pids, qtype in blocks:
            n = ids.numel()
            allowed[start:start + n, :end] = True
            allowed[start:start + n, start:start + n] = torch.ones(n, n, dtype=torch.bool).tril()
            # logits at the last question token predict the answer; at the answer, <|im_end|>
            targets[start + n - 3] = ids[-2]
            targets[start + n - 2] = ids[-1]
            packed.answer_at.append(start + n - 3)
            packed.answers.append(int(ids[-2]))
            packed.qtypes.append(qtype)
            embeds.append(a.embed_text_grad(ids))
            ids_all.append(pids)
            start += n
        packed.embeds = torch.cat(embeds)
        packed.positions = torch.cat(ids_all, dim=1)
        return packed


def collate(batch: list[Packed], rows: int):
    """Pads packed streams to one batch: embeds [B, L, D], positions [rows, B, L], mask [B, 1, L, L]."""
    L = max(p.embeds.shape[0] for p in batch)
    D = batch[0].embeds.shape[1]
    B = len(batch)
    embeds = batch[0].embeds.new_zeros(B, L, D)
    positions = torch.zeros(rows, B, L, dtype=torch.long)
    mask = torch.zeros(B, 1, L, L, dtype=torch.bool)
    targets = torch.full((B, L), -100, dtype=torch.long)
    for b, p in enumerate(batch):
        n = p.embeds.shape[0]
        embeds[b, :n] = p.embeds
        positions[:, b, :n] = p.positions
        mask[b, 0, :n, :n] = p.allowed
        targets[b, :n] = p.targets
    idx = torch.arange(L)
    mask[:, 0, idx, idx] = True  # padding attends to itself: a fully masked row would give NaN in SDPA
    return embeds, positions, mask, targets
