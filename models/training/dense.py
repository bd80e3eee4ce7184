"""Dense per-token supervision for reference-model training: what each visual token shows, from the generator.

A question gives one answer token of signal per few hundred visual tokens, so a from-scratch vision tower
learns colour, shape and position slowly (the bundled model sat at chance on "where" and "small" after 157
minutes). camworld knows what every patch shows, so a small linear head on the post-projector tokens is
trained to name, for each token, the colour, shape and size of the object covering it and that object's
quadrant (or "none"). This is a training aid only: the head is not part of the bundled model, and inference
sees exactly the architecture the adapters load.
"""
from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from vlmedge.models.camworld.config import COLOURS, QUADRANTS, SHAPES, SIZES
from vlmedge.models.camworld.world import quadrant_of

# label sets, index 0 = "no object on this token"
HEADS: dict[str, tuple[str, ...]] = {
    "colour": ("none", *COLOURS),
    "shape": ("none", *SHAPES),
    "size": ("none", *SIZES),
    "quadrant": ("none", *QUADRANTS),
}
MIN_COVER = 0.25  # share of a token's pixels an object's box must cover for the token to show it
# A small object's shape shows on 2x2 tokens, each holding a corner of it: a linear probe on the bundled LLaVA
# model's tokens read it at 0.65 (0.98 for large objects), and those tokens are ~16% of object tokens, so the
# mean loss barely sees them. Weighting them up spends the dense head's capacity where the small-object
# question needs it.
SMALL_WEIGHT = 3.0


def token_objects(stream, frame: int, grid_hw: tuple[int, int]) -> torch.Tensor:
    """`[h*w]` int64 (raster order): the id of the object each token shows, -1 for none. A token shows the object
    whose box covers the largest share of it, if that share is at least MIN_COVER."""
    h, w = grid_hw
    H, W = stream.config.height, stream.config.width
    ys, xs = np.linspace(0, H, h + 1), np.linspace(0, W, w + 1)
    out = np.full((h, w), -1, np.int64)
    best = np.zeros((h, w))
    for oid in range(len(stream.world.objects)):
        x0, y0, x1, y1 = (int(v) for v in stream.boxes[frame, oid])
        if x0 < 0:
            continue
        # overlap of the box with every token cell, as a share of the cell
        ox = np.clip(np.minimum(xs[1:], x1) - np.maximum(xs[:-1], x0), 0, None)
        oy = np.clip(np.minimum(ys[1:], y1) - np.maximum(ys[:-1], y0), 0, None)
        cover = np.outer(oy, ox) / np.outer(np.diff(ys), np.diff(xs))
        take = (cover >= MIN_COVER) & (cover > best)
        out[take] = oid
        best[take] = cover[take]
    return torch.from_numpy(out.reshape(h * w))


def token_labels(stream, frame: int, grid_hw: tuple[int, int]) -> torch.Tensor:
    """`[h*w, len(HEADS)]` int64 labels (raster order) of one frame's tokens on a `grid_hw` token grid."""
    ids = token_objects(stream, frame, grid_hw)
    table = np.zeros((len(stream.world.objects) + 1, len(HEADS)), np.int64)  # last row: "none" for id -1
    for oid, obj in enumerate(stream.world.objects):
        x0, y0, x1, y1 = (int(v) for v in stream.boxes[frame, oid])
        if x0 < 0:
            continue
        quad = quadrant_of((x0 + x1) / 2, (y0 + y1) / 2, stream.config)
        table[oid] = [HEADS["colour"].index(obj.colour), HEADS["shape"].index(obj.shape),
                      HEADS["size"].index(obj.size), HEADS["quadrant"].index(quad)]
    return torch.from_numpy(table[ids.numpy()])


class DenseHead(nn.Module):
    """One linear classifier per label set over the tokens the LLM receives.

    The features are layer-normed first: a from-scratch vision tower's tokens share a large common component
    (cosine ~0.8 to their mean), and a bare linear head on them barely moves; the LLM normalises its inputs too.
    """

    def __init__(self, dim: int):
        super().__init__()
        self.norm = nn.LayerNorm(dim)
        self.proj = nn.Linear(dim, sum(len(v) for v in HEADS.values()))

    def loss(self, features: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Mean cross-entropy over heads and tokens; also the per-head token accuracy (for the log)."""
        logits = self.proj(self.norm(features.float()))
        small = torch.where(labels[:, 2] == HEADS["size"].index("small"), SMALL_WEIGHT, 1.0).to(logits.device)
        total, acc, k = 0.0, [], 0
        for j, names in enumerate(HEADS.values()):
            part = logits[:, k:k + len(names)]
            k += len(names)
            # object tokens are rare (a few percent): weight them up so "none everywhere" is not a cheap optimum
            weight = torch.ones(len(names), device=part.device)
            weight[1:] = 4.0
            w = weight[labels[:, j]] * small
            total = total + (F.cross_entropy(part, labels[:, j], reduction="none") * w).sum() / w.sum()
            obj = labels[:, j] > 0
            acc.append((part[obj].argmax(-1) == labels[obj, j]).float().mean() if obj.any() else part.new_tensor(1.0))
        return total / len(HEADS), torch.stack(acc)


def vision_side_params(adapter) -> list:
    """Every trainable parameter but the LLM's (vision tower, projector; an audio tower gets no gradient from
    silent streams, so AdamW leaves it alone)."""
    llm = {id(p) for m in (adapter.language_model(), adapter.lm_head()) for p in m.parameters()}
    return [p for p in adapter.model.parameters() if p.requires_grad and id(p) not in llm]


def silent_streams(rng: np.random.Generator, n: int) -> list:
    """`n` camworld training streams without their sound track (vision-only stages need no audio)."""
    from vlmedge.models import camworld
    from vlmedge.models.camworld.config import WorldConfig
    from vlmedge.models.training.data import VALIDATION_SEED_START

    quiet = WorldConfig(audio=False)
    return [camworld.generate(int(s), quiet) for s in rng.integers(0, VALIDATION_SEED_START, n)]


def warm_decay(opt, lr: float, step: int, frac: float) -> None:
    """The vision stages' schedule: a 50-step warm-up, then a linear decay to a tenth over the budget (`frac`)."""
    for g in opt.param_groups:
        g["lr"] = lr * min(1.0, (step + 1) / 50) * (1.0 - 0.9 * frac)


def pretrain_vision(adapter, head: DenseHead, minutes: float, rng: np.random.Generator, lr: float, log,
                    streams_per_step: int = 4) -> int:
    """Dense-only warm-up of the vision side (tower + projector) before any question is asked.

    A from-scratch tower trained through the LLM alone barely leaves its initialisation (the bundled model's
    block weights stayed within a few percent of their initial norms after 157 minutes): its tokens keep the
    colour but lose position after the first block (a linear probe read the quadrant at 0.74 from the embeddings
    and 0.32 after block 1) and never carry shape, so "where" and "small" sat at chance. Trained on these labels
    alone, the tower is cheap (no LLM pass: hundreds of frames a second on 2 cores) and learns shape and
    position in minutes, as a real VLM starts from a pretrained vision encoder. The LLM is not touched.
    Returns the number of steps taken.
    """
    import time

    params = vision_side_params(adapter) + list(head.parameters())
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=0.01, betas=(0.9, 0.98))
    budget, t0, last, step, acc = minutes * 60.0, time.perf_counter(), 0.0, 0, None
    while time.perf_counter() - t0 < budget:
        warm_decay(opt, lr, step, (time.perf_counter() - t0) / budget)
        streams = silent_streams(rng, streams_per_step)
        tokens = adapter.encode_frames([f for s in streams for f in s.frames])
        labels = torch.cat([token_labels(s, i, tokens[0].grid_hw) for s in streams for i in range(s.num_frames)])
        loss, a = head.loss(torch.cat([t.features for t in tokens]), labels)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        step += 1
        acc = a.detach() if acc is None else 0.95 * acc + 0.05 * a.detach()
        now = time.perf_counter()
        if now - last > 30 or step == 1:
            last = now
            log(f"[train] vision warm-up step {step} {(now - t0) / 60:4.1f}/{minutes:.0f} min loss {loss.item():.3f} "
                "tokens " + " ".join(f"{n}:{x:.2f}" for n, x in zip(HEADS, acc.tolist())))
    return step
