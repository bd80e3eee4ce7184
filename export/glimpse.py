"""GlimpsePrune as graphs: the LLM split at the glimpse layer K, and the VIP (registered when the method asks).

GlimpsePrune prunes inside the LLM (compression/glimpse/prefill.py): layers 0..K run on the whole stretch plus the
glimpse token, the glimpse row's raw attention logits at layer K go through the VIP with the frames' ViT taps, the
keep rule picks tokens, the hidden states and the KV of layers 0..K are pruned once, and layers K+1.. run on what
is kept. One `llm` graph cannot stop halfway, so the glimpse export adds:

* `llm_head`: layers 0..K. `glimpse_row [1]` names the row that is the glimpse token: its input is replaced by the
  trained layer-0 embedding and the per-layer embeddings are added before layers 1..K (both baked in as
  constants); `glimpse_logits [heads, past + seq]` are that row's q·kᵀ/√d at layer K (post-RoPE, no mask, no
  softmax), `hidden` the rows' output of layer K, `present_*_0..K` the head's KV.
* `llm_tail`: layers K+1..L-1, the final norm and lm_head on the kept rows, with `present_*_K+1..`.
* `vip`: one frame's glimpse logits `[tokens, heads]` + its ViT taps → keep logits `[tokens]` (frame grid fixed).

The keep rule itself (threshold, cap over all frames of the stretch, min keep) runs on the host with the same
function as the torch path (compression/glimpse/keep.py): its count is data-dependent and it spans several VIP
calls. Decode steps and unpruned prefills keep using the plain `llm` graph: after a split prefill every layer holds
the same length again. The cost is a second copy of the LLM weights (head + tail beside `llm`); see the issue note.
"""
from __future__ import annotations

import os

import torch
from torch import nn

from vlmedge.models.layer_runner import LayerRunner, query_key_logits, step_mask
from vlmedge.export.stages import (ExportError, StageExporter, _stage_spec, check_graph, export_onnx, kv_shape,
                                   register_stage)

HEAD, TAIL, VIP_STAGE = "llm_head", "llm_tail", "vip"


def kv_names(layers, kind: str) -> list[str]:
    return [f"{kind}_{part}_{i}" for i in layers for part in ("key", "value")]


def _glimpse_modules(job):
    mods = getattr(job.method, "export_glimpse", None)
    if mods is None:
        raise ExportError("glimpse: the method's trained modules were not loaded for the export (prepare_export)")
    return mods


class _Layers(nn.Module):
    """Decoder layers [lo, hi) of the adapter's language model over flat per-layer KV."""

    def __init__(self, adapter, lo: int, hi: int):
        super().__init__()
        self.lm = adapter.language_model()
        self.config = adapter.text_config
        self.lo, self.hi = lo, hi

    def cache(self, past):
        from transformers import DynamicCache

        cache = DynamicCache(config=self.config)
        for j, i in enumerate(range(self.lo, self.hi)):
            cache.update(past[2 * j], past[2 * j + 1], i)
        return cache

    def present(self, cache) -> list[torch.Tensor]:
        out = []
        for i in range(self.lo, self.hi):
            out += [cache.layers[i].keys, cache.layers[i].values]
        return out


class GlimpseHeadGraph(_Layers):
    def __init__(self, adapter, mods):
        k = int(mods.cfg.select_layer)
        super().__init__(adapter, 0, k + 1)
        self.runner = LayerRunner(adapter)
        with torch.no_grad():
            emb = torch.stack([mods.token.layer_embedding(i) for i in range(k + 1)])
        self.register_buffer("glimpse", emb.to(adapter.dtype), persistent=False)

    def forward(self, inputs_embeds, position_ids, glimpse_row, past):
        x = inputs_embeds
        n, p = x.shape[1], past[0].shape[2]
        hot = (torch.arange(n, device=x.device) == glimpse_row).to(x.dtype)[None, :, None]  # [1, n, 1]
        x = x * (1 - hot) + hot * self.glimpse[0]
        cache = self.cache(past)
        mask = step_mask(p, n, x.dtype, x.device)
        cos, sin = self.lm.rotary_emb(x, position_ids)
        row = None
        for i in range(self.lo, self.hi):
            if i > 0:
                x = x + hot * self.glimpse[i]
            if i == self.hi - 1:
                row = x[0].index_select(0, glimpse_row)  # the glimpse row's input to layer K
            out = self.lm.layers[i](x, attention_mask=mask, position_ids=None, past_key_values=cache, use_cache=True,
                                    position_embeddings=(cos, sin))
            x = out[0] if isinstance(out, tuple) else out
        # the same recomputation of the row's logits as the torch path (LayerRunner.attention_logits)
        q = self.runner.queries(self.hi - 1, row, cos.index_select(1, glimpse_row), sin.index_select(1, glimpse_row))
        logits = query_key_logits(q, cache.layers[self.hi - 1].keys)[0, :, 0]
        return (x, logits.float(), *self.present(cache))


class GlimpseTailGraph(_Layers):
    def __init__(self, adapter, k: int):
        super().__init__(adapter, k + 1, int(adapter.text_config.num_hidden_layers))
        self.head = adapter.lm_head()

    def forward(self, hidden, position_ids, logits_positions, past):
        n, p = hidden.shape[1], past[0].shape[2]
        cache = self.cache(past)
        mask = step_mask(p, n, hidden.dtype, hidden.device)
        cos, sin = self.lm.rotary_emb(hidden, position_ids)
        x = hidden
        for i in range(self.lo, self.hi):
            out = self.lm.layers[i](x, attention_mask=mask, position_ids=None, past_key_values=cache, use_cache=True,
                                    position_embeddings=(cos, sin))
            x = out[0] if isinstance(out, tuple) else out
        logits = self.head(self.lm.norm(x.index_select(1, logits_positions))).float()
        return (logits, *self.present(cache))


class VIPGraph(nn.Module):
    def __init__(self, vip, grid_hw):
        super().__init__()
        self.vip = vip
        self.grid = tuple(int(g) for g in grid_hw)

    def forward(self, attn, taps):
        return self.vip(attn, list(taps), self.grid)


def _example_llm(job, n: int, p: int, layers, seed: int):
    a = job.adapter
    _, kvh, hd = kv_shape(a)
    g = torch.Generator().manual_seed(seed)
    embeds = torch.randn(1, n, a.hidden_size, generator=g).to(job.dtype)
    ids = torch.arange(p, p + n).expand(a.positions.rows, n)
    position_ids = a.positions.model_position_ids(ids).contiguous()
    past = tuple(torch.randn(1, kvh, p, hd, generator=g).to(job.dtype) for _ in range(2 * len(layers)))
    return embeds, position_ids, past


def _dynamic(position_ids, past_names, first: str) -> dict:
    seq_axis = position_ids.dim() - 1
    out = {first: {1: ("seq", 1)}, "position_ids": {seq_axis: ("seq", 1)}}
    out.update({nm: {2: ("past", 0)} for nm in past_names})
    return out


class _GlimpseStage(StageExporter):
    def applies(self, job) -> bool:
        return getattr(job.method, "name", None) == "glimpse"


@register_stage
class GlimpseHeadStage(_GlimpseStage):
    name = HEAD
    order = 21
    file = "llm_head.onnx"

    def export(self, job):
        mods = _glimpse_modules(job)
        a, k = job.adapter, int(mods.cfg.select_layer)
        graph = GlimpseHeadGraph(a, mods).eval()
        layers = range(0, k + 1)
        n, p = 4, 5
        embeds, position_ids, past = _example_llm(job, n, p, layers, seed=1)
        args = (embeds, position_ids, torch.tensor([n - 1]), past)
        past_names = kv_names(layers, "past")
        ins = ["inputs_embeds", "position_ids", "glimpse_row", *past_names]
        outs = ["hidden", "glimpse_logits", *kv_names(layers, "present")]
        exporter = export_onnx(job, self.name, graph, args, self.file, ins, outs,
                               _dynamic(position_ids, past_names, "inputs_embeds"))
        with torch.no_grad():
            ref = graph(*args)
        feeds = {"inputs_embeds": embeds.numpy(), "position_ids": position_ids.numpy(),
                 "glimpse_row": args[2].numpy(), **{nm: t.numpy() for nm, t in zip(past_names, past)}}
        check = check_graph(job, self.name, os.path.join(job.out_dir, self.file), feeds, list(ref), outs)
        attrs = {"layers": [0, k], "select_layer": k, "glimpse_row": "index of the glimpse row among the new rows "
                 "(its input is replaced by the trained embedding); any index >= seq: no glimpse row",
                 "glimpse_logits": "[heads, past + seq] float32, raw q·kᵀ/√d of the glimpse row at layer K",
                 "check": check}
        return _stage_spec(job, self.name, self.file, exporter, attrs)


@register_stage
class GlimpseTailStage(_GlimpseStage):
    name = TAIL
    order = 22
    file = "llm_tail.onnx"

    def export(self, job):
        mods = _glimpse_modules(job)
        a, k = job.adapter, int(mods.cfg.select_layer)
        graph = GlimpseTailGraph(a, k).eval()
        layers = range(k + 1, int(a.text_config.num_hidden_layers))
        n, p = 3, 6
        embeds, position_ids, past = _example_llm(job, n, p, layers, seed=2)
        args = (embeds, position_ids, torch.tensor([n - 1]), past)
        past_names = kv_names(layers, "past")
        ins = ["hidden", "position_ids", "logits_positions", *past_names]
        outs = ["logits", *kv_names(layers, "present")]
        dynamic = _dynamic(position_ids, past_names, "hidden")
        dynamic["logits_positions"] = {0: ("nlogits", 1)}
        exporter = export_onnx(job, self.name, graph, args, self.file, ins, outs, dynamic)
        with torch.no_grad():
            ref = graph(*args)
        feeds = {"hidden": embeds.numpy(), "position_ids": position_ids.numpy(),
                 "logits_positions": args[2].numpy(), **{nm: t.numpy() for nm, t in zip(past_names, past)}}
        check = check_graph(job, self.name, os.path.join(job.out_dir, self.file), feeds, list(ref), outs)
        attrs = {"layers": [k + 1, layers.stop - 1], "check": check}
        return _stage_spec(job, self.name, self.file, exporter, attrs)


@register_stage
class VIPStage(_GlimpseStage):
    name = VIP_STAGE
    order = 23
    file = "vip.onnx"

    def export(self, job):
        import numpy as np

        mods = _glimpse_modules(job)
        a = job.adapter
        # the grid the vision stage gives (the LLM's token grid after any patch merge), from one real frame
        h, w = a.frame_size
        with torch.no_grad():
            tokens = a.encode_frame(np.zeros((h, w, 3), np.uint8))
        grid = tuple(tokens.grid_hw)
        n = grid[0] * grid[1]
        cfg = mods.vip.cfg
        graph = VIPGraph(mods.vip.float(), grid).eval()
        g = torch.Generator().manual_seed(3)
        attn = torch.randn(n, cfg.attn_dim, generator=g)
        taps = [torch.randn(n, cfg.vit_dim, generator=g) for _ in range(cfg.n_taps)]
        tap_names = [f"tap_{t}" for t in mods.cfg.taps]
        exporter = export_onnx(job, self.name, graph, (attn, tuple(taps)), self.file, ["attn", *tap_names],
                               ["logits"], {})
        with torch.no_grad():
            ref = graph(attn, tuple(taps))
        feeds = {"attn": attn.numpy(), **{nm: t.numpy() for nm, t in zip(tap_names, taps)}}
        check = check_graph(job, self.name, os.path.join(job.out_dir, self.file), feeds, [ref], ["logits"])
        attrs = {"grid_hw": list(grid), "tokens": n, "heads": int(cfg.attn_dim), "taps": list(mods.cfg.taps),
                 "select_layer": int(mods.cfg.select_layer), "vip_params": mods.vip.num_parameters(),
                 "trained": mods.cfg.trained, "precision": "float32 (spec: the VIP and its logits stay fp32)",
                 "check": check}
        return _stage_spec(job, self.name, self.file, exporter, attrs)
