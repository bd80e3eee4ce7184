"""Starting a reference model from a trained one of another family: its LLM copied, its vision side distilled.

The Omni thinker trained from scratch reached 0.58 on validation after 210 minutes on 2 cores (colour 0.63,
"where" 0.46), while the LLaVA-OneVision model of the same LLM shape and tokenizer reached 0.91. Their LLMs are
the same Qwen2 decoder (only the rotary positions differ: M-RoPE, whose text positions equal 1-D RoPE), so the
trained decoder carries over as it is. Measured before any training: the Omni model with the LLaVA decoder,
fed the LLaVA tower's tokens pooled 2x2 to its 6x6 grid at M-RoPE positions, answered "where" at 0.71 and
"small" at 0.80 (24 validation streams). The Omni vision tower is then taught to produce those pooled tokens
(distillation: a real VLM also starts from a trained encoder), and ordinary training adapts the decoder to the
new positions and the audio. Reproducible: the teacher is a committed folder, and the run records it.
"""
from __future__ import annotations

import time

import numpy as np
import torch
import torch.nn.functional as F

from vlmedge.errors import InputError

_SAME = ("hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads", "num_key_value_heads",
         "vocab_size")


def copy_language_model(student, teacher) -> None:
    """Copies the teacher's decoder, embeddings and LM head into the student (same shape and vocabulary, or
    InputError saying what differs)."""
    s_cfg, t_cfg = student.language_model().config, teacher.language_model().config
    diff = [f"{k} {getattr(t_cfg, k)} vs {getattr(s_cfg, k)}" for k in _SAME if getattr(s_cfg, k) != getattr(t_cfg, k)]
    if student.tokenizer.get_vocab() != teacher.tokenizer.get_vocab():
        diff.append("the tokenizers' vocabularies")
    if diff:
        raise InputError("--init-from needs a model whose LLM has the same shape and tokenizer; differs: "
                         + ", ".join(diff))
    with torch.no_grad():
        student.language_model().load_state_dict(teacher.language_model().state_dict())
        student.lm_head().weight.copy_(teacher.lm_head().weight)


def pooled_targets(teacher_tokens, grid_hw: tuple[int, int]) -> torch.Tensor:
    """The teacher's frame tokens average-pooled to the student's grid, `[frames * h * w, D]` in raster order."""
    out = []
    for t in teacher_tokens:
        h, w = t.grid_hw
        g = t.features.float().T.reshape(1, -1, h, w)
        out.append(F.adaptive_avg_pool2d(g, grid_hw).reshape(g.shape[1], -1).T)
    return torch.cat(out)


def relative_error(got: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Mean squared distance over tokens relative to the targets' mean squared norm (0: exact; 1: all zeros)."""
    return (got - target).pow(2).sum(-1).mean() / target.pow(2).sum(-1).mean()


def distill_vision(student, teacher, minutes: float, rng: np.random.Generator, lr: float, log, head=None,
                   streams_per_step: int = 4, max_steps: int = 0) -> int:
    """Trains the student's vision tower and projector to reproduce the teacher's pooled frame tokens (relative
    squared error) for `minutes` (or `max_steps`). The student's LLM is untouched; `head` (the dense head), when given, learns
    to read the student's tokens on the side (detached: it does not pull the tower). Returns the steps taken."""
    from vlmedge.models.training.dense import silent_streams, token_labels, vision_side_params, warm_decay

    params = vision_side_params(student)
    opt = torch.optim.AdamW(params + (list(head.parameters()) if head else []), lr=lr, weight_decay=0.01,
                            betas=(0.9, 0.98))
    budget, t0, last, step, err, cos = minutes * 60.0, time.perf_counter(), 0.0, 0, None, None
    teacher.model.eval()
    while time.perf_counter() - t0 < budget and not (max_steps and step >= max_steps):
        warm_decay(opt, lr, step, (time.perf_counter() - t0) / budget)
        streams = silent_streams(rng, streams_per_step)
        frames = [f for s in streams for f in s.frames]
        mine = student.encode_frames(frames)
        with torch.no_grad():
            target = pooled_targets(teacher.encode_frames(frames), mine[0].grid_hw)
        got = torch.cat([t.features for t in mine]).float()
        loss = relative_error(got, target)
        if head is not None:
            labels = torch.cat([token_labels(s, i, mine[0].grid_hw) for s in streams for i in range(s.num_frames)])
            loss = loss + head.loss(got.detach(), labels)[0]
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        step += 1
        with torch.no_grad():
            e = float(relative_error(got, target))
            c = float(F.cosine_similarity(got, target, dim=-1).mean())
        err = e if err is None else 0.95 * err + 0.05 * e
        cos = c if cos is None else 0.95 * cos + 0.05 * c
        now = time.perf_counter()
        if now - last > 30 or step == 1:
            last = now
            log(f"[train] vision distillation step {step} {(now - t0) / 60:4.1f}/{minutes:.0f} min "
                f"relative error {err:.3f} cosine {cos:.3f}")
    return step
