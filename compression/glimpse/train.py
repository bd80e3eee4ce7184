"""`vlmedge train-vip`: trains GlimpsePrune's glimpse token and VIP for one model on camworld (spec §5, §10).

The ViT and the LLM stay frozen. Each sample is a camworld training stream up to a question's frame, played the
way the session's `ask()` sees it (prompt prefix, every frame with all its tokens, the question, the glimpse,
the answer). Loss = Dice + 0.1·BCE of each frame's VIP logits against a token mask drawn from the generator's
object boxes (the objects the question is about, as they appear in that frame; all visible objects when the
question names none, e.g. "is there a red circle ?" → "no") + the LM loss of the answer from the glimpse row on.
A quarter of the samples have no question (one frame, glimpse right after it, all visible objects as the target)
— what the glimpse sees when a stream has no standing prompt. Time is the budget; progress every 30 s.
"""
from __future__ import annotations

import math
import sys
import time
from dataclasses import dataclass

import numpy as np
import torch

from vlmedge.compression.glimpse.keep import gt_token_mask, keep_mask
from vlmedge.compression.glimpse.loss import mask_loss
from vlmedge.compression.glimpse.prefill import Piece, training_forward

VAL_SEED_START = 990_000  # training seeds held out for validation (never trained on; eval seeds stay untouched)


@dataclass
class VIPTrainConfig:
    minutes: float = 20.0
    lr: float = 1e-3
    warmup: int = 50
    accum: int = 4
    no_question_share: float = 0.25
    val_samples: int = 48
    seed: int = 0
    le_weight: float = 1.0


def _log(msg: str) -> None:
    print(f"[train-vip] {msg}", file=sys.stderr, flush=True)


def frame_target(stream, frame: int, objects, grid_hw) -> torch.Tensor:
    """Token mask of `objects` as drawn in `frame` (boxes are pixel x0,y0,x1,y1 with exclusive ends; -1 = unseen)."""
    h_px, w_px = stream.frames.shape[1:3]
    boxes = []
    for oid in objects:
        x0, y0, x1, y1 = (int(v) for v in stream.boxes[frame, oid])
        if x0 < 0 or x1 <= x0 or y1 <= y0:
            continue
        # the last covered pixel's centre, so a box ending on a patch border does not spill into the next cell
        boxes.append([x0 / w_px, y0 / h_px, (x1 - 0.5) / w_px, (y1 - 0.5) / h_px])
    return gt_token_mask(boxes, grid_hw)


def visible(stream, frame: int) -> list[int]:
    return [o for o in range(stream.boxes.shape[1]) if stream.boxes[frame, o, 0] >= 0]


def build_sample(adapter, mods, seed: int, rng: np.random.Generator, no_question: bool):
    """(pieces, answer embeds, answer ids, answer token ids, targets per frame) for one training sample."""
    from vlmedge.models import camworld
    from vlmedge.models.positions import PositionState

    stream = camworld.generate(seed, split="train")
    qtypes = camworld.VISUAL_QTYPES if not adapter.has_audio else camworld.QTYPES
    qs = camworld.sample_questions(stream, rng, per_type=1, qtypes=qtypes)
    pos = PositionState()
    pieces = []

    def text(t: str, keep=True):
        ids = adapter.tokenize(t)
        if ids.numel():
            pieces.append(Piece(adapter.embed_text(ids), adapter.positions.text(pos, ids.numel()), keep=keep))

    text(adapter.prompt.prefix)
    if no_question or not qs:
        frames, q = [int(rng.integers(stream.num_frames))], None
    else:
        q = qs[int(rng.integers(len(qs)))]
        frames = list(range(q.frame + 1))
    targets = []
    with torch.no_grad():
        for f in frames:
            tok = adapter.encode_frame(stream.frames[f], taps=tuple(mods.cfg.taps))
            ids = adapter.positions.frame(pos, tok.grid_hw, tok.trailer.shape[0], stream.frame_time(f))
            pieces.append(Piece(torch.cat([tok.features, tok.trailer.to(tok.features.dtype)]), ids, tok))
            if adapter.prompt.frame_close:
                text(adapter.prompt.frame_close)
            objs = list(q.refs) if q is not None and q.refs else visible(stream, f)
            targets.append(frame_target(stream, f, objs, tok.grid_hw).float())
        if q is None:
            return pieces, None, None, None, targets
        text(adapter.prompt.question_template.format(question=q.text))
        end = adapter.tokenizer.convert_tokens_to_ids("<|im_end|>")
        ans = torch.cat([adapter.tokenize(q.answer), torch.tensor([end])])
        a_ids = adapter.positions.text(pos.copy(), ans.numel() + 1)[:, 1:]  # one id for the glimpse first
        return pieces, adapter.embed_text(ans), a_ids, ans, targets


def sample_loss(runner, mods, sample, cfg: VIPTrainConfig):
    pieces, a_emb, a_ids, a_tok, targets = sample
    if a_emb is None:
        a_emb = torch.zeros(0, runner.lm.config.hidden_size)
        a_ids = torch.zeros(pieces[-1].ids.shape[0], 0, dtype=torch.long)
    z, lm = training_forward(runner, mods, pieces, a_emb, a_ids)
    mask = mask_loss(z, targets)
    lm_loss = torch.nn.functional.cross_entropy(lm, a_tok) if lm is not None else torch.zeros(())
    return mask + cfg.le_weight * lm_loss, z, targets, float(lm_loss.detach())


@torch.no_grad()
def validate(runner, mods, adapter, cfg: VIPTrainConfig) -> dict:
    """Mean over held-out samples: Dice loss, kept fraction and recall of target tokens at threshold 0.5."""
    mods.eval()
    rng = np.random.default_rng(12345)
    kept, recall, losses = [], [], []
    for i in range(cfg.val_samples):
        s = build_sample(adapter, mods, VAL_SEED_START + i, rng, no_question=False)
        loss, z, targets, _ = sample_loss(runner, mods, s, cfg)
        losses.append(float(loss))
        for zi, t in zip(z, targets):
            k = keep_mask(zi.detach())
            kept.append(float(k.float().mean()))
            if t.sum() > 0:
                recall.append(float((k & t.bool()).sum() / t.sum()))
    mods.train()
    return {"loss": float(np.mean(losses)), "kept": float(np.mean(kept)), "recall": float(np.mean(recall))}


def train_vip(adapter, mods, cfg: VIPTrainConfig) -> dict:
    from vlmedge.models.layer_runner import LayerRunner

    for p in adapter.model.parameters():
        p.requires_grad_(False)
    runner = LayerRunner(adapter)
    mods.train()
    opt = torch.optim.AdamW(mods.parameters(), lr=cfg.lr, weight_decay=0.0)
    rng = np.random.default_rng(cfg.seed)
    budget = cfg.minutes * 60.0
    t0 = last_log = time.perf_counter()
    step, history, run = 0, [], {"loss": [], "lm": []}
    _log(f"{sum(p.numel() for p in mods.parameters()) / 1e6:.2f} M trainable parameters; ViT and LLM frozen; "
         f"glimpse at layer {mods.cfg.select_layer} of {runner.num_layers}; taps {mods.cfg.taps}; {cfg.minutes:g} min")
    while time.perf_counter() - t0 < budget:
        frac = (time.perf_counter() - t0) / budget
        lr = cfg.lr * min(1.0, (step + 1) / cfg.warmup) * (0.05 + 0.95 * 0.5 * (1 + math.cos(math.pi * frac)))
        for g in opt.param_groups:
            g["lr"] = lr
        opt.zero_grad()
        for _ in range(cfg.accum):
            seed = int(rng.integers(0, VAL_SEED_START))
            sample = build_sample(adapter, mods, seed, rng, no_question=rng.random() < cfg.no_question_share)
            loss, _, _, lm = sample_loss(runner, mods, sample, cfg)
            (loss / cfg.accum).backward()
            run["loss"].append(float(loss.detach()))
            run["lm"].append(lm)
        torch.nn.utils.clip_grad_norm_(mods.parameters(), 1.0)
        opt.step()
        step += 1
        now = time.perf_counter()
        if now - last_log > 30 or now - t0 >= budget:
            last_log = now
            _log(f"step {step} {(now - t0) / 60:4.1f}/{cfg.minutes:g} min lr {lr:.1e} "
                 f"loss {np.mean(run['loss'][-40:]):.3f} (lm {np.mean(run['lm'][-40:]):.3f})")
    val = validate(runner, mods, adapter, cfg)
    _log(f"validation: loss {val['loss']:.3f}, kept {val['kept']:.1%} of tokens, recall of target tokens "
         f"{val['recall']:.1%}")
    history.append({"step": step, **val})
    mods.eval()
    return {"steps": step, "minutes": round((time.perf_counter() - t0) / 60, 2), "lr": cfg.lr, "accum": cfg.accum,
            "validation": val}
