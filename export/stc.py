"""STC's selective vision pass as a graph (`vision_stc_select`), registered when a method asks for it.

STC-Cacher alternates two passes (compression/stc/cacher.py). The refresh pass is the plain `vision` graph
with the blocks' internals as extra outputs (`ref_k`, `ref_v`, then `ref_q` or, for the released
`attention="selected"`, `ref_attn`, or for "tail" `ref_attn_q`, then `ref_mlp`, `[blocks, T, C]`; the method's
`vision_refs` names them).
The selective pass is this graph: pixels plus those references in,
features/trailer/taps out, each block recomputing only its `n = num_dynamic(T, ratio)` least similar tokens
(cosine of keys against the reference, ONNX TopK; indices sorted ascending) and reusing the cached MLP
outputs elsewhere (and, with the released `attention="selected"`, the cached attention outputs too). The
graph is stateless: the references live in the stream's state and go in as
inputs, so one export serves any number of streams. `n` is fixed at export (it depends on T and the ratio
only), which keeps every shape static, as TensorRT wants.
"""
from __future__ import annotations

import os

import torch

from vlmedge.compression.stc.cacher import (LayerRef, block_attention, ref_names, selective_from_indices,
                                           selective_layer)
from vlmedge.compression.stc.exported import SELECT_STAGE as STAGE
from vlmedge.compression.stc.selection import num_dynamic
from vlmedge.export.stages import (ExportError, StageExporter, VisionGraph, _stage_spec, check_graph,
                                   custom_ops_attrs, export_onnx, register_stage, sdpa_as_4d)


class STCSelectGraph(VisionGraph):
    """pixels + references → features, trailer, taps: the cacher's selective pass over every block."""

    def __init__(self, adapter, ratio: float, taps=(), custom_ops: bool = False, attention: str = "selected",
                 tail: float = 0.25):
        super().__init__(adapter, taps)
        self.ratio = float(ratio)
        self.attention = attention
        self.modes = [block_attention(attention, tail, i, len(self.parts)) for i in range(len(self.parts))]
        self.custom_ops = custom_ops

    def forward(self, pixels, ref_k, ref_v, ref_third, ref_mlp):
        # ref_third is ref_attn (released attention="selected"), ref_q ("all") or ref_attn_q ("tail": per block
        # as that block runs); the exporters want fixed positional inputs, not *refs
        a = self.adapter
        hidden = self.embed(pixels.to(a.dtype))
        got = {}
        names = ref_names(self.attention)  # the order the refs come in
        refs = (ref_k, ref_v, ref_third, ref_mlp)
        for i, p in enumerate(self.parts):
            mode = self.modes[i]
            ref = LayerRef.from_named(names, [r[i] for r in refs], mode)
            h = a.vision_tokens(hidden)
            if self.custom_ops:  # one vlmedge::StcSelect node instead of the cosine + TopK + sort decomposition
                x = p.norm1(h)
                k = p.k(x)
                idx = torch.ops.vlmedge.stc_select(k, ref.k, self.ratio)
                out = selective_from_indices(p, h, ref, idx, x=x, k=k, attention=mode)
            else:
                out, _ = selective_layer(p, h, ref, self.ratio, attention=mode)
            hidden = a.vision_hidden(out, hidden)
            if i in self.tap_blocks:
                got[i] = a.tap_to_raster(hidden, self.ctx)
        out = a.vision_project(hidden, self.ctx)
        return (out.features.float(), out.trailer.float(), *[got[b].float() for b in self.tap_blocks])


@register_stage
class STCSelectStage(StageExporter):
    name = STAGE
    order = 11  # after `vision`, whose refresh graph gives the example references
    file = "vision_stc_select.onnx"
    handles_vision = True

    def applies(self, job) -> bool:
        return getattr(job.method, "name", None) == "stc" and bool(getattr(job.method, "cacher", False))

    def export(self, job):
        m, a = job.method, job.adapter
        if m.refresh_gate:
            raise ExportError("stc: refresh_gate (our extension) is not exportable yet: the gate decides between "
                              "the two graphs from block 0's keys, which would need a third graph; export without it")
        taps = list(getattr(m, "taps", ()) or ())
        if job.custom_ops:
            if job.exporter == "torchscript":
                raise ExportError("custom ops (--custom-ops) need the dynamo exporter; drop --exporter torchscript "
                                  "or export with --no-custom-ops")
            import vlmedge.export.ops.torch_ops  # noqa: F401  (registers torch.ops.vlmedge.*)
        graph = STCSelectGraph(a, m.ratio, taps, custom_ops=job.custom_ops, attention=m.attention,
                               tail=m.tail).eval()
        ref_inputs = list(m.vision_refs)
        refresh = VisionGraph(a, taps, refs=ref_inputs, block_modes=graph.modes).eval()
        h, w = a.frame_size
        g = torch.Generator().manual_seed(0)
        first, second = (torch.randn(1, 3, h, w, generator=g) for _ in range(2))
        with torch.no_grad(), sdpa_as_4d():
            refs = refresh(first)[-len(ref_inputs):]  # a real reference: frame 1's internals
        args = (second, *refs)
        outs = ["features", "trailer", *[f"tap_{t}" for t in taps]]
        exporter = export_onnx(job, self.name, graph, args, self.file, ["pixels", *ref_inputs], outs, {})
        with torch.no_grad(), sdpa_as_4d():
            ref_out = graph(*args)
        feeds = {"pixels": second.numpy(), **{n: r.numpy() for n, r in zip(ref_inputs, refs)}}
        check = check_graph(job, self.name, os.path.join(job.out_dir, self.file), feeds, list(ref_out), outs)
        tokens = int(refs[0].shape[1])
        attrs = {"ratio": m.ratio, "attention": m.attention, "tail": m.tail, "block_modes": graph.modes,
                 "vision_tokens": tokens,
                 "dynamic_tokens": num_dynamic(tokens, m.ratio),
                 "vision_blocks": len(graph.parts), "taps": taps,
                 "references": ref_inputs,  # from the vision stage's refresh pass, [blocks, T, C] each
                 "check": check, **custom_ops_attrs(os.path.join(job.out_dir, self.file))}
        return _stage_spec(job, self.name, self.file, exporter, attrs)
