"""`vlmedge train-reference`: trains a reference model from scratch on camworld, resumable across sessions.

Time, not steps, is the budget (a CPU session has a wall clock): the learning rate follows a cosine over
elapsed training time, so a run stopped by its budget ends at a low rate. The work folder holds the full
training state (model, optimiser, RNG, type weights, learning curve) and is written every few minutes;
running the same command again resumes from it. The bundled checkpoint (standard Hugging Face layout) is
written to the output folder at every checkpoint and at the end.
"""
from __future__ import annotations

import contextlib
import json
import math
import os
import time
from dataclasses import asdict, dataclass

import numpy as np
import torch
import torch.nn.functional as F

from vlmedge.errors import InputError
from vlmedge.models.layer_runner import LayerRunner
from vlmedge.models.training import audio_dense, binding, data, dense, grounding
from vlmedge.models.training.token_drop import DEFAULT_MODES, TokenDrop, keep_indices
from vlmedge.models.training.packing import StreamPacker, collate
from vlmedge.models.training.reference import BUILDERS, FRAME


@dataclass
class TrainConfig:
    family: str
    out: str
    work: str
    minutes: float = 120.0  # total training time across all resumed runs
    seed: int = 0
    batch: int = 8  # streams per step
    questions: int = 18  # questions per stream
    crop_start: float = 0.9  # share of streams trained as short evidence clips at the start ...
    crop_end: float = 0.25  # ... falling linearly to this share at 70% of the budget
    lr: float = 1.5e-3
    warmup: int = 150
    min_lr_frac: float = 0.05
    weight_decay: float = 0.01
    checkpoint_minutes: float = 5.0
    eval_minutes: float = 10.0
    val_streams: int = 48
    threads: int = 0  # 0: all cores
    max_steps: int = 0  # 0: no limit besides the time budget (tests use a few steps)
    shape: str = "reference"  # "tiny": the small test config of the same architecture
    aux_weight: float = 0.5  # weight of the dense per-token loss (dense.py); 0 trains on answers alone
    vision_minutes: float = 10.0  # from scratch: dense-only warm-up of the vision side first (part of `minutes`)
    restart_schedule: bool = False  # continuing: a new warm-up and cosine over the minutes still left
    token_drop: float = 0.0  # share of training clips shown with visual tokens dropped (token_drop.py)
    token_drop_modes: tuple[str, ...] = DEFAULT_MODES  # selections drawn per dropped clip; repeats weight
    ground_weight: float = 0.0  # weight of the grounding loss (grounding.py); 0: off (and not measured)
    ground_layer: int = -1  # decoder layer it supervises; -1: the middle one
    ground_head: int = 0  # attention head of that layer it supervises
    extra_qtypes: tuple[str, ...] = ()  # training-only question types (camworld.TRAINING_QTYPES), never scored
    init_from: str = ""  # a trained model of another family: LLM copied, vision distilled (transplant.py)
    audio_weight: float = 0.0  # weight of the dense audio loss (audio_dense.py); omni only; 0: off
    bind_weight: float = 0.0  # weight of the sound-to-object binding loss (binding.py); omni only; 0: off
    bind_layer: int = -1  # decoder layer it supervises; -1: binding.default_layer
    bind_head: int = 0  # attention head of that layer it supervises


def grounding_layer(adapter, cfg: TrainConfig) -> int | None:
    """The decoder layer the grounding loss reads, or None when it is off."""
    if cfg.ground_weight <= 0:
        return None
    n = int(adapter.language_model().config.num_hidden_layers)
    layer = grounding.default_layer(n) if cfg.ground_layer < 0 else cfg.ground_layer
    if layer >= n:
        raise InputError(f"--ground-layer {layer} is out of range: the model has {n} decoder layers (0..{n - 1})")
    heads = int(adapter.language_model().config.num_attention_heads)
    if not 0 <= cfg.ground_head < heads:
        raise InputError(f"--ground-head {cfg.ground_head} is out of range: the layers have {heads} heads (0..{heads - 1})")
    return layer


def binding_layer(adapter, cfg: TrainConfig) -> int | None:
    """The decoder layer the binding loss reads, or None when it is off."""
    if cfg.bind_weight <= 0:
        return None
    if not adapter.has_audio:
        raise InputError(f"--bind-weight ties sounds to objects; {cfg.family} has no audio")
    lm = adapter.language_model().config
    layer = binding.default_layer(int(lm.num_hidden_layers)) if cfg.bind_layer < 0 else cfg.bind_layer
    if not 0 <= layer < int(lm.num_hidden_layers):
        raise InputError(f"--bind-layer {layer} is out of range: the model has {lm.num_hidden_layers} decoder layers")
    if not 0 <= cfg.bind_head < int(lm.num_attention_heads):
        raise InputError(f"--bind-head {cfg.bind_head} is out of range: the layers have {lm.num_attention_heads} heads")
    return layer


def qtypes_for(family: str, extra: tuple[str, ...] = ()) -> tuple[str, ...]:
    """The question types a model trains on: the scored ones of its modality, then `extra` training-only ones."""
    from vlmedge.models import camworld

    unknown = [q for q in extra if q not in camworld.TRAINING_QTYPES]
    if unknown:
        raise InputError(f"unknown training-only question type(s) {', '.join(unknown)}: choose from "
                         f"{', '.join(camworld.TRAINING_QTYPES)}")
    base = tuple(camworld.QTYPES) if family == "qwen2_5_omni" else tuple(camworld.VISUAL_QTYPES)
    if "heard" in extra and family != "qwen2_5_omni":
        raise InputError(f"'heard' asks about the audio track, which a {family} model does not hear: drop it from "
                         "--extra-qtypes or train qwen2_5_omni")
    return base + tuple(q for q in extra if q not in base)


def pack_example(adapter, ex, tokens, family: str, rng: np.random.Generator | None = None):
    """One clip's frames (and for omni models, each complete second of audio) in session order; with
    `ex.drop`, each frame keeps only the tokens `token_drop.keep_indices` picks (positions kept)."""
    packer = StreamPacker(adapter)
    stream = ex.stream
    per_sec = int(round(stream.fps))
    for i, tok in zip(range(ex.start, ex.end), tokens):
        keep = None
        if ex.drop is not None:
            keep = keep_indices(ex.drop, dense.token_labels(stream, i, tok.grid_hw)[:, 0] > 0, rng, tok.features)
        packer.frame(tok, stream.frame_time(i), keep=keep)
        if family == "qwen2_5_omni" and stream.audio.size and (i + 1) % per_sec == 0:
            sec = (i + 1) // per_sec - 1
            packer.audio(stream.audio_tokens[sec], float(sec), 0.04)
    return packer.build(ex.questions)


def attach_audio_tokens(adapter, streams, family):
    """Omni: encode each stream's audio one second at a time (one audio-encoder window), as the session does."""
    if family != "qwen2_5_omni":
        return
    tower = adapter.model.model.audio_tower
    for s in streams:
        sr = s.sample_rate
        s.audio_tokens = []
        for k in range(len(s.audio) // sr):
            mel = adapter.mel(s.audio[k * sr:(k + 1) * sr]).to(adapter.dtype)
            s.audio_tokens.append(tower(mel, feature_lens=torch.tensor([mel.shape[1]])).last_hidden_state)


def forward_batch(adapter, examples, family, rng: np.random.Generator | None = None, ground_layer: int | None = None,
                  bind_layer: int | None = None):
    """Logits of one padded batch; with `ground_layer`, also each example's evidence attention mass at that
    layer (`grounding.evidence_mass`, `[questions with evidence, heads]`), else None; with `bind_layer`, each
    example's attention mass from tied sounds' audio tokens onto their objects (`binding`, `[audio tokens,
    heads]`), else None."""
    streams = list({id(ex.stream): ex.stream for ex in examples}.values())
    tokens = adapter.encode_frames([f for ex in examples for f in ex.stream.frames[ex.start:ex.end]])
    attach_audio_tokens(adapter, streams, family)
    packed, k = [], 0
    for ex in examples:
        n = ex.end - ex.start
        packed.append(pack_example(adapter, ex, tokens[k:k + n], family, rng))
        k += n
    embeds, positions, mask, targets = collate(packed, adapter.positions.rows)
    if ground_layer is None and bind_layer is None:
        return adapter.forward_packed(embeds, positions, mask), targets, packed, tokens, None, None
    runner = LayerRunner(adapter)
    with contextlib.ExitStack() as stack:
        cap = stack.enter_context(grounding.LayerInput(runner.lm, ground_layer)) if ground_layer is not None else None
        bcap = stack.enter_context(grounding.LayerInput(runner.lm, bind_layer)) if bind_layer is not None else None
        logits = adapter.forward_packed(embeds, positions, mask)
    masses = binds = None
    grid = tokens[0].grid_hw
    if cap is not None:
        cos, sin = cap.rope
        masses = [grounding.evidence_mass(runner, ground_layer, cap.hidden[b], (cos[b:b + 1], sin[b:b + 1]), p,
                                          grounding.evidence_tokens(ex, p, grid))
                  for b, (ex, p) in enumerate(zip(examples, packed))]
    if bcap is not None:
        cos, sin = bcap.rope
        binds = []
        for b, (ex, p) in enumerate(zip(examples, packed)):
            at, tg = binding.sound_bindings(ex, p, grid)
            binds.append(grounding.attention_mass(runner, bind_layer, bcap.hidden[b], (cos[b:b + 1], sin[b:b + 1]),
                                                  p.allowed, at, tg) if at.numel()
                         else bcap.hidden.new_zeros(0, runner.lm.config.num_attention_heads))
    return logits, targets, packed, tokens, masses, binds


def dense_loss(head, examples, tokens):
    """The dense head's loss over every frame of the batch (frames shared by overlapping crops count once)."""
    feats, labels, seen, k = [], [], set(), 0
    for ex in examples:
        for i in range(ex.start, ex.end):
            tok = tokens[k]
            k += 1
            if (id(ex.stream), i) in seen:
                continue
            seen.add((id(ex.stream), i))
            feats.append(tok.features)
            labels.append(dense.token_labels(ex.stream, i, tok.grid_hw))
    return head.loss(torch.cat(feats), torch.cat(labels))


def length_buckets(examples, slack: float = 1.3):
    """Examples of similar length together (one forward pass each), so short clips are not padded to the
    length of whole streams: a bucket's padded size stays within `slack` of its real size."""
    order = sorted(examples, key=lambda e: e.end - e.start)
    buckets, cur = [], []
    for e in order:
        n = e.end - e.start
        if cur and n * (len(cur) + 1) > slack * (sum(c.end - c.start for c in cur) + n):
            buckets.append(cur)
            cur = []
        cur.append(e)
    return buckets + ([cur] if cur else [])


def correct_by_type(logits, packed) -> list[tuple[str, float]]:
    out = []
    for b, p in enumerate(packed):
        pred = logits[b, p.answer_at].argmax(-1).tolist()
        out += [(q, float(x == y)) for q, x, y in zip(p.qtypes, pred, p.answers)]
    return out


@torch.no_grad()
def validate(adapter, cfg: TrainConfig) -> dict[str, float]:
    adapter.model.eval()
    rng = np.random.default_rng(12345)
    hits: dict[str, list[float]] = {}
    ground: list[float] = []
    types = qtypes_for(cfg.family, cfg.extra_qtypes)
    seeds = range(data.VALIDATION_SEED_START, data.VALIDATION_SEED_START + cfg.val_streams)
    for chunk in range(0, len(seeds), cfg.batch):
        ex = [e for s in seeds[chunk:chunk + cfg.batch] for e in data.stream_example(s, rng, {q: 1 for q in types})]
        logits, _, packed, _, masses, _ = forward_batch(adapter, ex, cfg.family, ground_layer=grounding_layer(adapter, cfg))
        for q, c in correct_by_type(logits, packed):
            hits.setdefault(q, []).append(c)
        if masses is not None:
            ground += [float(v) for m in masses for v in m[:, cfg.ground_head]]
    adapter.model.train()
    acc = {q: float(np.mean(v)) for q, v in sorted(hits.items())}
    # training-only types are reported but stay out of the mean, so curves with and without them compare
    acc["mean"] = float(np.mean([v for q, v in acc.items() if q not in cfg.extra_qtypes]))
    if ground:  # the grounding head's attention mass on the evidence (not part of the mean)
        acc["ground"] = float(np.mean(ground))
    return acc


def export(adapter, out: str, meta: dict) -> None:
    os.makedirs(out, exist_ok=True)
    adapter.model.save_pretrained(out)
    adapter.tokenizer.save_pretrained(out)
    norm = adapter.pixel_norm
    with open(os.path.join(out, "preprocessor_config.json"), "w") as f:
        json.dump({"image_mean": list(norm.mean), "image_std": list(norm.std), "rescale_factor": norm.rescale,
                   "size": {"height": FRAME, "width": FRAME}}, f, indent=2)
    with open(os.path.join(out, "training.json"), "w") as f:
        json.dump(meta, f, indent=2)


def train(cfg: TrainConfig, log=print) -> dict:
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    os.makedirs(cfg.work, exist_ok=True)
    state_path = os.path.join(cfg.work, "train_state.pt")
    if cfg.shape == "tiny":
        from vlmedge.models import tiny
        from vlmedge.models.training.reference import reference_words

        torch.manual_seed(cfg.seed)
        adapter = tiny(cfg.family, seed=cfg.seed, words=reference_words())
    else:
        adapter = BUILDERS[cfg.family](cfg.seed)
    model = adapter.model
    model.train()
    head = dense.DenseHead(adapter.hidden_size) if cfg.aux_weight > 0 else None
    if cfg.audio_weight > 0 and not adapter.has_audio:
        raise InputError(f"--audio-weight trains the audio tower; {cfg.family} has none")
    audio_head = audio_dense.AudioHead(adapter.hidden_size) if cfg.audio_weight > 0 else None
    # settings checked before minutes of warm-up are spent
    g_layer, b_layer = grounding_layer(adapter, cfg), binding_layer(adapter, cfg)
    params = [p for p in model.parameters() if p.requires_grad] + [p for h in (head, audio_head) if h
                                                                    for p in h.parameters()]
    decay = [p for p in params if p.ndim >= 2]
    no_decay = [p for p in params if p.ndim < 2]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": cfg.weight_decay}, {"params": no_decay, "weight_decay": 0.0}],
                            lr=cfg.lr, betas=(0.9, 0.98))
    rng = np.random.default_rng(cfg.seed)
    weights = data.TypeWeights(qtypes_for(cfg.family, cfg.extra_qtypes))
    step, elapsed, curve = 0, 0.0, []
    warm_from = 0  # step the learning-rate warm-up counts from (restarted when the optimiser state is fresh)
    sched_from = 0.0  # elapsed seconds the cosine (and the crop curriculum) start from
    bundled_meta = os.path.join(cfg.out, "training.json")
    if not os.path.isfile(state_path) and os.path.isfile(bundled_meta):
        # Only the bundled checkpoint survives between sessions (the optimiser state is too large to commit):
        # continue from its weights and bookkeeping with fresh Adam moments and a short new warm-up.
        with open(bundled_meta) as f:
            meta = json.load(f)
        # through from_pretrained: transformers renames some keys between the module tree and the files
        saved = type(model).from_pretrained(cfg.out, local_files_only=True)
        try:
            model.load_state_dict(saved.state_dict())
        except RuntimeError:
            raise RuntimeError(f"{cfg.out} does not match the {cfg.family} {cfg.shape} shape; move it away to start afresh") from None
        step, elapsed, curve = meta["steps"], meta["train_minutes_2_cores"] * 60, meta.get("curve", [])
        weights.error.update(meta.get("type_error", {}))
        if "rng" in meta:
            rng.bit_generator.state = meta["rng"]
        warm_from = step
        if cfg.restart_schedule:
            sched_from = elapsed
        log(f"[train] continuing {cfg.family} from the bundled weights at step {step} (fresh optimiser state)")
    elif os.path.isfile(state_path):
        st = torch.load(state_path, weights_only=False)
        model.load_state_dict(st["model"])
        opt.load_state_dict(st["optim"])
        rng.bit_generator.state = st["rng"]
        torch.set_rng_state(st["torch_rng"])
        weights.error.update(st["type_error"])  # a type added since the checkpoint starts at full error
        step, elapsed, curve = st["step"], st["elapsed"], st["curve"]
        warm_from, sched_from = st.get("warm_from", 0), st.get("sched_from", 0.0)
        if cfg.restart_schedule:  # as from the bundled weights: a new warm-up and cosine over the minutes left
            warm_from, sched_from = step, elapsed
        if head is not None and st.get("dense_head"):
            head.load_state_dict(st["dense_head"])
        if audio_head is not None and st.get("audio_head"):
            audio_head.load_state_dict(st["audio_head"])
        log(f"[train] resumed {cfg.family} at step {step}, {elapsed / 60:.1f} of {cfg.minutes:.0f} min")
    n_params = sum(p.numel() for p in model.parameters())
    log(f"[train] {cfg.family}: {n_params / 1e6:.2f} M parameters, batch {cfg.batch} streams x {cfg.questions} questions, "
        f"budget {cfg.minutes:.0f} min, threads {torch.get_num_threads()}")
    budget = cfg.minutes * 60.0
    dropper = TokenDrop(cfg.token_drop, modes=tuple(cfg.token_drop_modes))

    def save():
        torch.save({"model": model.state_dict(), "optim": opt.state_dict(), "rng": rng.bit_generator.state,
                    "torch_rng": torch.get_rng_state(), "type_error": weights.error, "step": step,
                    "elapsed": elapsed, "curve": curve, "config": asdict(cfg), "warm_from": warm_from,
                    "sched_from": sched_from, "dense_head": head.state_dict() if head else None,
                    "audio_head": audio_head.state_dict() if audio_head else None},
                   state_path + ".tmp")
        os.replace(state_path + ".tmp", state_path)  # never leave a half-written state behind
        meta = {"family": cfg.family, "seed": cfg.seed, "steps": step, "train_minutes_2_cores": round(elapsed / 60, 2),
                "config": asdict(cfg), "curve": curve, "type_error": weights.error, "rng": rng.bit_generator.state}
        export(adapter, cfg.out, meta)

    if step == 0 and elapsed == 0.0 and cfg.init_from:
        from vlmedge.models import Adapter
        from vlmedge.models.training import transplant

        teacher = Adapter.from_pretrained(cfg.init_from)
        transplant.copy_language_model(adapter, teacher)
        log(f"[train] LLM copied from {cfg.init_from} ({teacher.family}); distilling its vision tokens")
        t0 = time.perf_counter()
        # a from-scratch tower: the rate of the dense warm-up's default, not the (lower) rate that suits the copied LLM
        n = transplant.distill_vision(adapter, teacher, cfg.vision_minutes, rng, max(cfg.lr, 1.5e-3), log, head)
        elapsed = sched_from = time.perf_counter() - t0
        log(f"[train] vision distillation done: {n} steps in {elapsed / 60:.1f} min")
        del teacher
    elif step == 0 and elapsed == 0.0 and head is not None and cfg.vision_minutes > 0:
        t0 = time.perf_counter()
        n = dense.pretrain_vision(adapter, head, cfg.vision_minutes, rng, cfg.lr, log)
        elapsed = sched_from = time.perf_counter() - t0
        log(f"[train] vision warm-up done: {n} steps in {elapsed / 60:.1f} min")
    last_ckpt = last_eval = time.perf_counter()
    last_log, t_start, loss_avg, dense_acc, ground_avg, audio_acc = 0.0, time.perf_counter(), None, None, None, None
    bind_avg = None
    while elapsed < budget and not (cfg.max_steps and step >= cfg.max_steps):
        t0 = time.perf_counter()
        frac = min(1.0, max(0.0, (elapsed - sched_from) / max(budget - sched_from, 1.0)))
        warm = cfg.warmup if warm_from == 0 or cfg.restart_schedule else cfg.warmup // 3
        lr = cfg.lr * min(1.0, (step + 1 - warm_from) / warm) * (cfg.min_lr_frac + (1 - cfg.min_lr_frac) * 0.5 * (1 + math.cos(math.pi * frac)))
        for g in opt.param_groups:
            g["lr"] = lr
        # cropped clips first, whole streams more and more: p(crop) falls from crop_start to crop_end
        p_crop = cfg.crop_start + (cfg.crop_end - cfg.crop_start) * min(1.0, frac / 0.7)
        examples = []
        for s in data.training_seeds(rng, cfg.batch):
            # A seed's clips share one drop plan, and a dropped seed's questions follow the errors made on dropped
            # clips: "how many" is right on full frames and wrong on pruned ones, and one shared estimate gave
            # it a single question per stream (a few counts on object-only frames per hundred steps).
            plan = dropper.plan(rng)
            counts = weights.per_type(cfg.questions, dropped=plan is not None)
            for e in data.stream_example(s, rng, counts, crop=bool(rng.random() < p_crop)):
                e.drop = plan
                examples.append(e)
        groups = length_buckets(examples)
        n_targets = sum(2 * len(e.questions) for e in examples)
        opt.zero_grad(set_to_none=True)
        loss_sum = 0.0
        for group in filter(None, groups):
            logits, targets, packed, tokens, masses, binds = forward_batch(adapter, group, cfg.family, rng, g_layer, b_layer)
            loss = F.cross_entropy(logits.float().reshape(-1, logits.shape[-1]), targets.reshape(-1),
                                   ignore_index=-100, reduction="sum") / n_targets
            if masses is not None:
                # per question, like the answer loss (two targets per question, hence the factor 2)
                loss = loss + cfg.ground_weight * 2 * sum(grounding.grounding_loss(m, cfg.ground_head)
                                                          for m in masses) / n_targets
                best = torch.cat([m.detach()[:, cfg.ground_head] for m in masses])
                if best.numel():
                    ground_avg = float(best.mean()) if ground_avg is None else 0.9 * ground_avg + 0.1 * float(best.mean())
            if binds is not None:
                # per example: the mean over its bound audio tokens, weighted like one question's targets
                bl = [-torch.log(m[:, cfg.bind_head].clamp_min(1e-6)).mean() for m in binds if m.numel()]
                if bl:
                    loss = loss + cfg.bind_weight * 2 * sum(bl) / n_targets
                    got = float(torch.cat([m.detach()[:, cfg.bind_head] for m in binds]).mean())
                    bind_avg = got if bind_avg is None else 0.9 * bind_avg + 0.1 * got
            if head is not None:
                aux, aux_acc = dense_loss(head, group, tokens)
                # each group's share of the step, as the answer loss is normalised over the whole step
                loss = loss + cfg.aux_weight * aux * (sum(2 * len(e.questions) for e in group) / n_targets)
                dense_acc = aux_acc if dense_acc is None else 0.9 * dense_acc + 0.1 * aux_acc
            heard = audio_dense.stream_loss(audio_head, {id(e.stream): e.stream for e in group}.values()) \
                if audio_head is not None else None
            if heard is not None:
                loss = loss + cfg.audio_weight * heard[0] * (sum(2 * len(e.questions) for e in group) / n_targets)
                a = float(heard[1])
                audio_acc = a if audio_acc is None else 0.9 * audio_acc + 0.1 * a
            loss.backward()
            loss_sum += loss.item()
            for b, p in enumerate(packed):
                for q, c in correct_by_type(logits[b:b + 1].detach(), [p]):
                    weights.update(q, c, dropped=group[b].drop is not None)
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        step += 1
        elapsed += time.perf_counter() - t0
        loss_avg = loss_sum if loss_avg is None else 0.98 * loss_avg + 0.02 * loss_sum
        now = time.perf_counter()
        if now - last_log > 30 or step == 1:
            last_log = now
            err = " ".join(f"{q}:{1 - e:.2f}" for q, e in weights.error.items())
            log(f"[train] step {step} {elapsed / 60:5.1f}/{cfg.minutes:.0f} min lr {lr:.2e} loss {loss_avg:.3f} "
                f"{(now - t0):.2f}s/step  train acc {err}"
                + ("" if dense_acc is None else "  tokens " + " ".join(
                    f"{n}:{a:.2f}" for n, a in zip(dense.HEADS, dense_acc.tolist())))
                + ("" if ground_avg is None else f"  evidence mass {ground_avg:.2f}")
                + ("" if audio_acc is None else f"  sounds {audio_acc:.2f}")
                + ("" if bind_avg is None else f"  binding mass {bind_avg:.2f}"))
        last = elapsed >= budget or (cfg.max_steps and step >= cfg.max_steps)
        if now - last_eval > cfg.eval_minutes * 60 or last:
            acc = validate(adapter, cfg)
            curve.append({"minutes": round(elapsed / 60, 1), "step": step, **{k: round(v, 3) for k, v in acc.items()}})
            log(f"[train] validation at {elapsed / 60:.1f} min: " + " ".join(f"{k} {v:.3f}" for k, v in acc.items()))
            last_eval = time.perf_counter()
        if now - last_ckpt > cfg.checkpoint_minutes * 60 or last:
            save()
            last_ckpt = time.perf_counter()
            log(f"[train] checkpoint at step {step} -> {cfg.out}")
    if step == 0 or not os.path.isfile(os.path.join(cfg.out, "model.safetensors")):
        save()
    log(f"[train] done: {step} steps, {elapsed / 60:.1f} min of training ({(time.perf_counter() - t_start) / 60:.1f} min this run)")
    return {"steps": step, "minutes": elapsed / 60, "curve": curve}
