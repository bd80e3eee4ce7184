"""Grounding loss: a training aid that shows the LLM where each question's evidence is.

Measured on the bundled LLaVA-OneVision reference model (135 min of training): linear probes read a large
object's shape from its post-projector tokens 99% of the time and the dense head names colour and quadrant
for 98-100% of tokens, yet the LLM answered "what color is the <shape>?" 49% and "where is ..." 51% of the
time, and as well from the question's frame alone as from the whole stream. The information is in the visual
tokens; the 4-layer LLM does not learn to find the right ones from one answer token of signal per question.

camworld knows which tokens show the object a question is about (`Question.refs`, `dense.token_objects`), and
when the sound a "sound" question asks about played (its audio tokens), so
this loss asks one fixed attention head of one decoder layer, at the position that predicts the answer, to put
its attention mass on those tokens: loss = -log(that head's mass on the evidence). The head is fixed so that the
layers after it can learn to read it: with the best of the layer's heads instead (max over heads), each of the 6
heads won 11-28% of the questions after 20 minutes; the best head's mass reached 0.97, yet a linear probe read
the answer's colour from the answer position at only 0.52 after that layer (from the evidence tokens
themselves: 1.00). The other heads stay free for the question words. Like the dense head it only shapes
training: the exported model is the unchanged architecture, and nothing at inference reads this head.

The attention row is recomputed from the layer's input, its q/k projections and the model's own rotary
tables (captured by a forward pre-hook), so it works with any attention backend.
"""
from __future__ import annotations

import torch
from torch import Tensor

from vlmedge.models.layer_runner import LayerRunner
from vlmedge.models.training import dense


def evidence_tokens(ex, packed, grid_hw) -> list[Tensor]:
    """Per question of example `ex`: indices into `packed`'s sequence of the tokens that hold its answer.

    Visual questions: the visual tokens that show the object(s) it is about, in every frame of its evidence span
    that the clip holds (count: every visible object; "is there a <colour> <shape>": every object of that name, or
    for a "no" the objects that share its colour or its shape, which the answer must be checked against;
    otherwise the answer's object, which camworld lists first). "sound": the audio tokens heard while the sound
    tied to its object played; "heard": those of the last sound. Empty when there is nothing to show (evidence
    dropped from every frame)."""
    out, objects = [], {}  # frame -> object id per token, computed once: a stream's questions share frames

    def objects_at(f):
        if f not in objects:
            objects[f] = dense.token_objects(ex.stream, ex.start + f, grid_hw)
        return objects[f]

    for (frame, _, _, qtype), (refs, first) in zip(ex.questions, ex.evidence):
        if qtype == "sound":
            events = [e for e in ex.stream.world.sound_events() if refs and e.obj == refs[0]]
            out.append(_sound_tokens(packed, events))
            continue
        if qtype == "heard":  # the last sound that ended by the question's frame (camworld asks no other)
            last = ex.stream.world.last_sound(ex.stream.world.config.frame_time(ex.start + frame))
            out.append(_sound_tokens(packed, [last] if last is not None else []))
            continue
        ids = list(refs) if qtype in ("count", "exists") else list(refs[:1])
        idx = []
        if ids:
            want = torch.tensor(ids)
            for f in range(max(first, 0), frame + 1):
                offset, keep = packed.frames[f]
                objs = objects_at(f)[keep]
                idx.append(offset + torch.nonzero(torch.isin(objs, want)).flatten())
        out.append(torch.cat(idx) if idx else torch.zeros(0, dtype=torch.long))
    return out


def _sound_tokens(packed, events) -> Tensor:
    """Packed indices of the audio tokens whose span overlaps one of the sound `events`."""
    idx = []
    for offset, t0, spt, n in packed.audio:
        start = t0 + spt * torch.arange(n)
        hit = torch.zeros(n, dtype=torch.bool)
        for e in events:
            hit |= (start < e.end) & (start + spt > e.start)
        idx.append(offset + torch.nonzero(hit).flatten())
    return torch.cat(idx) if idx else torch.zeros(0, dtype=torch.long)


class LayerInput:
    """Captures one decoder layer's input hidden states and rotary tables during a forward pass."""

    def __init__(self, lm, layer_idx: int):
        self.layer = lm.layers[layer_idx]
        self.hidden = self.rope = None

    def _hook(self, module, args, kwargs):
        self.hidden = args[0] if args else kwargs["hidden_states"]
        self.rope = kwargs["position_embeddings"]

    def __enter__(self):
        self._handle = self.layer.register_forward_pre_hook(self._hook, with_kwargs=True)
        return self

    def __exit__(self, *exc):
        self._handle.remove()


def attention_mass(runner: LayerRunner, layer_idx: int, hidden: Tensor, rope: tuple[Tensor, Tensor], allowed: Tensor,
                   at: Tensor, targets: list[Tensor]) -> Tensor:
    """Attention mass `[n, H]` that each head of `layer_idx` puts, at query positions `at [n]`, on the positions
    `targets[j]` (already restricted to what position `at[j]` may see). `hidden [L, D]` and `rope` (cos, sin
    `[1, L, hd]`) are that layer's input; `allowed [L, L]` the attention mask."""
    L = allowed.shape[0]
    cos, sin = rope
    q = runner.queries(layer_idx, hidden[at], cos[:, at], sin[:, at])  # [1, H, n, hd]
    k = runner.keys(layer_idx, hidden[:L], cos[:, :L], sin[:, :L])  # [1, kvH, L, hd]
    groups = q.shape[1] // k.shape[1]
    logits = torch.matmul(q.float(), k.float().repeat_interleave(groups, dim=1).transpose(-1, -2)) * q.shape[-1] ** -0.5
    logits = logits.masked_fill(~allowed[at].to(logits.device), float("-inf"))
    probs = logits.softmax(-1)[0]  # [H, n, L]
    sel = torch.zeros(len(targets), L, dtype=probs.dtype, device=probs.device)
    for j, t in enumerate(targets):
        sel[j, t.to(probs.device)] = 1.0
    return (probs * sel.unsqueeze(0)).sum(-1).transpose(0, 1)  # [n, H]


def evidence_mass(runner: LayerRunner, layer_idx: int, hidden: Tensor, rope: tuple[Tensor, Tensor], packed,
                  targets: list[Tensor]) -> Tensor:
    """Attention mass `[n, H]` that each head of `layer_idx` puts on the evidence tokens, at the answer
    position of every question of one packed sequence that has evidence it can see (rows in question order,
    the others skipped). `hidden [L, D]` and `rope` (cos, sin `[1, L, hd]`) are that layer's input."""
    # only what the question can see: an audio chunk packed after its frame is not evidence for it
    targets = [t[packed.allowed[packed.answer_at[i], t]] if t.numel() else t for i, t in enumerate(targets)]
    rows = [i for i, t in enumerate(targets) if t.numel()]
    if not rows:
        return hidden.new_zeros(0, runner.lm.config.num_attention_heads)
    at = torch.tensor([packed.answer_at[i] for i in rows])
    return attention_mass(runner, layer_idx, hidden, rope, packed.allowed, at, [targets[i] for i in rows])


def grounding_loss(mass: Tensor, head: int) -> Tensor:
    """Sum over questions of -log(the grounding head's mass on the evidence); `mass [n, H]`."""
    return -torch.log(mass[:, head].clamp_min(1e-6)).sum()


def default_layer(num_layers: int) -> int:
    """The middle decoder layer: earlier layers can gather the question's words into the answer position, later
    ones turn what this layer reads into the answer."""
    return num_layers // 2
