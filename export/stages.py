"""Stage exporters: each turns one part of an adapter into a file of an export directory.

Stages are registered by name (`@register_stage`); the exporter asks every registered stage whether it
applies to the (adapter, method) being exported and runs those in `order`. A method or a new stage adds its
graphs by registering a stage (e.g. an STC vision stage with `replaces = ("vision",)` that applies when the
method is STC) — the exporter's core never changes.

Built-in stages:
- `embed`: the token embedding table as `embed_tokens.npy` (a lookup; no graph needed).
- `vision`: pixels `[1, 3, H, W]` float32 (already resized and normalised) → `features [N, D]` (raster order),
  `trailer [T, D]` (tokens every frame ends with, e.g. LLaVA-OneVision's image_newline; T may be 0) and one
  `tap_<i>` output per vision-block output the method reads. Traced from the adapter's block-by-block path
  with each block taken apart (`vision_layer_parts`, the same pieces STC's cacher recomputes from). The frame
  size is fixed per export: SigLIP's position table is fixed, and the Qwen towers' window layout (window
  index, windows, rotary tables) depends on the grid, so it is computed once for the adapter's `frame_size`
  and recorded; another size is another export (`--image-size`).
- `llm`: one graph for prefill and decode: `inputs_embeds [1, L, D]`, `position_ids` (`[1, L]` for 1-D
  RoPE, `[3, 1, L]` for M-RoPE), `logits_positions [K]` (int64 rows of the L new tokens to compute logits
  for: `[L-1]` for the last one, `0..L-1` for all), `past_key_<i>`/`past_value_<i>` `[1, kv_heads, P, head_dim]`
  → `logits [1, K, V]` float32 and `present_key_<i>`/`present_value_<i>` `[1, kv_heads, P+L, head_dim]`.
  L, P and K are dynamic (P may be 0). The causal mask over past + new tokens is built inside the graph from
  the lengths, so gapped position ids (kept tokens keep their original ids) only change RoPE.
"""
from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass, field
from typing import Any, Callable, ClassVar

import numpy as np
import torch
from torch import nn

from vlmedge.errors import VlmedgeError
from vlmedge.export.manifest import StageSpec, TensorSpec
from vlmedge.models.base import kv_shape as config_kv_shape

# ----- the job every stage sees -----


@dataclass
class ExportJob:
    adapter: Any
    method: Any
    out_dir: str
    precision: str = "fp32"
    opset: int = 18
    exporter: str = "auto"  # "auto" (dynamo, then TorchScript), "dynamo" or "torchscript"
    check: bool = True  # run each graph once in ONNX Runtime against torch and record the error
    custom_ops: bool = False  # emit `vlmedge` domain ops (export/ops/) where a stage has them, instead of decompositions
    log: Callable[[str], None] = print
    notes: list[str] = field(default_factory=list)

    @property
    def dtype(self) -> torch.dtype:
        return torch.float16 if self.precision == "fp16" else torch.float32


class ExportError(VlmedgeError):
    """A stage that could not be exported (the message names the stage, the exporters tried and why)."""


# ----- registry -----
class StageExporter:
    """Base class: `export(job)` writes the stage's file(s) under `job.out_dir` and returns its manifest entry."""

    name: ClassVar[str] = ""
    order: ClassVar[int] = 100
    replaces: ClassVar[tuple[str, ...]] = ()  # stages this one stands in for when both apply
    handles_vision: ClassVar[bool] = False  # runs the vision tower the way a method's own encode_frame does

    def applies(self, job: ExportJob) -> bool:
        return True

    def export(self, job: ExportJob) -> StageSpec:  # pragma: no cover - per stage
        raise NotImplementedError


_STAGES: dict[str, type[StageExporter]] = {}


def register_stage(cls: type[StageExporter]) -> type[StageExporter]:
    if not cls.name:
        raise ValueError(f"{cls.__name__} has no stage name")
    if cls.name in _STAGES and _STAGES[cls.name] is not cls:
        raise ValueError(f"stage {cls.name!r} registered twice")
    _STAGES[cls.name] = cls
    return cls


def registered_stages() -> dict[str, type[StageExporter]]:
    return dict(_STAGES)


def plan(job: ExportJob) -> list[StageExporter]:
    """The stages to run for this job, in order: every applicable stage not replaced by another one."""
    active = [cls() for cls in _STAGES.values()]
    active = [s for s in active if s.applies(job)]
    replaced = {r for s in active for r in s.replaces}
    return sorted((s for s in active if s.name not in replaced), key=lambda s: (s.order, s.name))


# ----- shared export machinery -----
TORCH_TO_NAME = {torch.float32: "float32", torch.float16: "float16", torch.bfloat16: "bfloat16",
                 torch.int64: "int64", torch.int32: "int32", torch.bool: "bool", torch.uint8: "uint8"}
ONNX_ELEM = {1: "float32", 2: "uint8", 6: "int32", 7: "int64", 9: "bool", 10: "float16", 16: "bfloat16"}


@contextlib.contextmanager
def sdpa_as_4d():
    """While tracing: runs 3-D `scaled_dot_product_attention` calls (`[heads, T, hd]`, as the adapters'
    `vision_layer_parts.attend` makes them) as 4-D with a batch of one. Same maths; the ONNX translation of
    SDPA in onnxscript 0.7 only takes 4-D inputs."""
    import torch.nn.functional as F

    orig = F.scaled_dot_product_attention

    def sdpa(q, k, v, attn_mask=None, *args, **kwargs):
        if q.dim() == 3:
            if attn_mask is not None and attn_mask.dim() >= 2:
                attn_mask = attn_mask.unsqueeze(0)
            return orig(q.unsqueeze(0), k.unsqueeze(0), v.unsqueeze(0), attn_mask, *args, **kwargs).squeeze(0)
        return orig(q, k, v, attn_mask, *args, **kwargs)

    F.scaled_dot_product_attention = sdpa
    try:
        yield
    finally:
        F.scaled_dot_product_attention = orig


def _flat(args) -> list[torch.Tensor]:
    out = []
    for a in args:
        out.extend(_flat(a) if isinstance(a, (tuple, list)) else [a])
    return out


def _dynamic_shapes(args, names, dynamic: dict[str, dict[int, tuple[str, int]]]):
    """`dynamic`: input name → {axis: (dim name, min)} → the nested `dynamic_shapes` torch.export wants."""
    dims: dict[str, torch.export.Dim] = {}
    it = iter(names)

    def one(a):
        if isinstance(a, (tuple, list)):
            return tuple(one(x) for x in a)
        spec = dynamic.get(next(it), {})
        out = {}
        for axis, (dname, lo) in spec.items():
            if dname not in dims:
                dims[dname] = torch.export.Dim(dname, min=lo)
            out[axis] = dims[dname]
        return out or None

    return tuple(one(a) for a in args)


def _remove(path: str) -> None:
    for p in (path, path + ".data"):
        if os.path.exists(p):
            os.remove(p)


def export_onnx(job: ExportJob, stage: str, module: nn.Module, args: tuple, file: str, input_names: list[str],
                output_names: list[str], dynamic: dict[str, dict[int, tuple[str, int]]]) -> str:
    """Exports `module(*args)` to `job.out_dir/file`; returns the exporter that worked ("dynamo" or
    "torchscript"). With `job.exporter == "auto"` the dynamo exporter is tried first and TorchScript only
    when it fails (the reason goes to the log and the manifest notes)."""
    path = os.path.join(job.out_dir, file)
    order = {"auto": ["dynamo", "torchscript"], "dynamo": ["dynamo"], "torchscript": ["torchscript"]}[job.exporter]
    extra = {}
    if job.custom_ops:  # the `vlmedge` ops translate through the dynamo exporter only (stages check the exporter)
        from vlmedge.export.ops.torch_ops import TRANSLATION_TABLE

        extra["custom_translation_table"] = TRANSLATION_TABLE
    errors: list[str] = []
    last: Exception | None = None
    for kind in order:
        _remove(path)
        try:
            with torch.no_grad(), sdpa_as_4d(), _quiet():
                if kind == "dynamo":
                    torch.onnx.export(module, args, path, dynamo=True, input_names=input_names,
                                      output_names=output_names, opset_version=job.opset,
                                      dynamic_shapes=_dynamic_shapes(args, input_names, dynamic), optimize=True,
                                      external_data=True, **extra)
                else:
                    axes = {n: {ax: d for ax, (d, _) in spec.items()} for n, spec in dynamic.items()}
                    torch.onnx.export(module, args, path, dynamo=False, input_names=input_names,
                                      output_names=output_names, opset_version=min(job.opset, 20),
                                      dynamic_axes=axes, do_constant_folding=True)
            if not os.path.isfile(path):
                raise RuntimeError("the exporter wrote no file")
            _name_outputs(path, output_names)
            if errors:
                job.notes.append(f"{stage}: exported with {kind} after {'; '.join(errors)}")
            return kind
        except Exception as err:  # noqa: BLE001 - exporter failures come in many types; all are reported
            first = next((ln for ln in str(err).splitlines() if ln.strip() and "Exception summary" not in ln), "")
            summary = f"{type(err).__name__}: {first[:300]}"
            for ln in str(err).splitlines():  # the torch.onnx report puts the cause after "Exception summary"
                if ln.startswith("<class"):
                    summary = ln[:300]
                    break
            errors.append(f"{kind} failed: {summary}")
            last = err
            job.log(f"[export]   {stage}: the {kind} exporter failed ({summary})")
            _remove(path)
    raise ExportError(f"stage {stage!r} could not be exported to ONNX ({'; '.join(errors)}); "
                      "rerun with --debug for the full trace") from last


def uses_custom_ops(path: str) -> list[str]:
    """The `vlmedge` domain ops a graph file uses (empty for a standard-ops graph)."""
    import onnx

    from vlmedge.export.ops.reference import DOMAIN

    model = onnx.load(path, load_external_data=False)
    return sorted({n.op_type for n in model.graph.node if n.domain == DOMAIN})


def custom_ops_attrs(path: str) -> dict:
    """What a stage spec records about the `vlmedge` ops its graph uses: the runtime refuses a domain version
    it does not implement."""
    from vlmedge.export.ops.reference import DOMAIN, VERSION

    ops = uses_custom_ops(path)
    return {"custom_ops": {"domain": DOMAIN, "version": VERSION, "ops": ops}} if ops else {}


def _name_outputs(path: str, names: list[str]) -> None:
    """Gives graph outputs the names asked for. The TorchScript exporter leaves an output that is a constant
    (LLaVA-OneVision's image_newline trailer) under its internal name; an Identity node renames it."""
    import onnx

    model = onnx.load(path, load_external_data=False)
    outs = model.graph.output
    if [o.name for o in outs] == list(names) or len(outs) != len(names):
        return
    for o, want in zip(outs, names):
        if o.name != want:
            model.graph.node.append(onnx.helper.make_node("Identity", [o.name], [want], name=f"rename_{want}"))
            o.name = want
    onnx.save(model, path)


@contextlib.contextmanager
def _quiet():
    """The exporters print progress and warn a lot; keep the user's console to our own progress lines."""
    import io
    import logging
    import warnings

    sink = io.StringIO()
    loggers = [logging.getLogger(n) for n in ("torch.onnx", "torch.export", "torch._dynamo", "onnxscript", "onnx_ir")]
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings(), contextlib.redirect_stdout(sink):
            warnings.simplefilter("ignore")
            yield
    finally:
        for lg, lv in zip(loggers, levels):
            lg.setLevel(lv)


def graph_io(path: str) -> tuple[list[TensorSpec], list[TensorSpec]]:
    """Inputs and outputs as the saved ONNX graph declares them (the manifest records what the file holds)."""
    import onnx

    model = onnx.load(path, load_external_data=False)

    def spec(v):
        t = v.type.tensor_type
        shape = [d.dim_param if d.dim_param else int(d.dim_value) for d in t.shape.dim]
        return TensorSpec(name=v.name, dtype=ONNX_ELEM.get(t.elem_type, str(t.elem_type)), shape=shape)

    inits = {i.name for i in model.graph.initializer}
    return ([spec(v) for v in model.graph.input if v.name not in inits], [spec(v) for v in model.graph.output])


def check_graph(job: ExportJob, stage: str, path: str, feeds: dict[str, np.ndarray], ref: list[torch.Tensor],
                names: list[str]) -> dict:
    """Runs the graph once in ONNX Runtime (CPU) on the example inputs and compares with torch."""
    if not job.check:
        return {"skipped": "check disabled"}
    import onnxruntime as ort

    try:
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = max(1, torch.get_num_threads())
        opts.log_severity_level = 3
        if uses_custom_ops(path):
            from vlmedge.export.ops import onnxruntime_ops

            sess = onnxruntime_ops.inference_session(path, onnxruntime_ops.session_options(opts),
                                                     providers=["CPUExecutionProvider"])
        else:
            sess = ort.InferenceSession(path, sess_options=opts, providers=["CPUExecutionProvider"])
        got = sess.run(names, feeds)
    except Exception as err:  # noqa: BLE001
        msg = str(err).splitlines()[0][:200]
        if job.precision == "fp16":  # ORT's CPU provider lacks fp16 kernels for some ops; GPUs have them
            job.log(f"[export]   {stage}: not checked on CPU ({msg})")
            return {"skipped": f"ONNX Runtime CPU could not run the fp16 graph: {msg}"}
        raise ExportError(f"stage {stage!r}: ONNX Runtime cannot run the exported graph ({msg})") from None
    abs_err = rel_err = 0.0
    for r, g in zip(ref, got):
        r = r.detach().float().numpy()
        g = np.asarray(g, dtype=np.float32)
        if r.shape != g.shape:
            raise ExportError(f"stage {stage!r}: the exported graph gives shape {g.shape}, torch {r.shape}")
        if r.size:
            d = float(np.abs(r - g).max())
            abs_err = max(abs_err, d)
            rel_err = max(rel_err, d / max(float(np.abs(r).max()), 1e-12))
    limit = 1e-3 if job.precision == "fp32" else 5e-2
    if rel_err > limit:
        raise ExportError(f"stage {stage!r}: ONNX Runtime differs from torch by {rel_err:.2e} (relative to the "
                          f"largest value; limit {limit:g}) on the example inputs; the export is wrong")
    return {"max_abs_err": abs_err, "max_rel_err": rel_err}


def _stage_spec(job, name, file, exporter, attrs) -> StageSpec:
    inputs, outputs = graph_io(os.path.join(job.out_dir, file))
    return StageSpec(name=name, kind="onnx", file=file, exporter=exporter, inputs=inputs, outputs=outputs, attrs=attrs)


# ----- embed -----
@register_stage
class EmbedStage(StageExporter):
    """The input embedding table `[vocab, hidden]`, written as .npy (memory-mapped by the runtime)."""

    name = "embed"
    order = 0
    file = "embed_tokens.npy"

    def export(self, job):
        a = job.adapter
        vocab = int(a.language_model().get_input_embeddings().num_embeddings)
        dtype = np.float16 if job.precision == "fp16" else np.float32
        path = os.path.join(job.out_dir, self.file)
        table = np.lib.format.open_memmap(path, mode="w+", dtype=dtype, shape=(vocab, a.hidden_size))
        step = 4096
        with torch.no_grad():
            for s in range(0, vocab, step):  # through the adapter, so any embedding scale is included
                ids = torch.arange(s, min(vocab, s + step))
                table[s: s + len(ids)] = a.embed_text(ids).float().numpy().astype(dtype)
        table.flush()
        del table
        return StageSpec(name=self.name, kind="npy", file=self.file, exporter="numpy", inputs=[],
                         outputs=[TensorSpec("table", "float16" if job.precision == "fp16" else "float32",
                                             [vocab, a.hidden_size])],
                         attrs={"lookup": "row i is the embedding of token id i"})


# ----- vision -----
VisionEmbed = Callable[[torch.Tensor], torch.Tensor]
_VISION_EMBED: dict[str, Callable[[Any, Any], VisionEmbed]] = {}


def register_vision_embed(family: str):
    """Per-family traceable patch embedding, for towers whose `vision_embed` computes its layout with
    data-dependent Python (the Qwen window index). Default: the adapter's own `vision_embed`."""

    def wrap(fn):
        _VISION_EMBED[family] = fn
        return fn

    return wrap


def _qwen_embed(adapter, ctx) -> VisionEmbed:
    vis = adapter._visual
    window_index = ctx.extras["window_index"]

    def embed(pixels):
        patches, _ = adapter.vision_patches(pixels)
        hidden = vis.patch_embed(patches.to(adapter.dtype))
        # the window layout for this frame size, computed once at export (it depends only on the grid)
        return vis.permute_input_for_window_attn(hidden, window_index, seq_len=hidden.shape[0])

    return embed


register_vision_embed("qwen2_5_vl")(_qwen_embed)
register_vision_embed("qwen2_5_omni")(_qwen_embed)


class VisionGraph(nn.Module):
    """pixels `[1, 3, H, W]` float32 → features, trailer, taps (float32), for the adapter's fixed frame size.

    With `refs` (names from REF_NAMES), also those internals of every block as STC's cacher keeps them
    (compression/stc/cacher.py `LayerRef`), stacked over blocks in the tower's dtype, each `[blocks, T, C]`:
    `ref_k`, `ref_v`, `ref_q` (projected keys/values/queries), `ref_attn` (attention output after its
    projection), `ref_mlp` (MLP output), `ref_attn_q` (`ref_attn` in blocks whose `block_modes` entry is
    "selected", `ref_q` where it is "all": the cacher's "tail" setting)."""

    def __init__(self, adapter, taps=(), refs=(), block_modes=None):
        super().__init__()
        self.adapter = adapter
        self.model = adapter.model  # registers the weights
        h, w = adapter.frame_size
        with torch.no_grad():
            _, self.ctx = adapter.vision_embed(torch.zeros(1, 3, h, w, dtype=adapter.dtype))
        n = len(adapter.vision_blocks())
        # everything the blocks need besides hidden states is a constant of the frame size
        self.parts = [adapter.vision_layer_parts(i, self.ctx) for i in range(n)]
        self.taps = list(taps)
        self.tap_blocks = [adapter.block_index(t) for t in self.taps]
        unknown = [r for r in refs if r not in REF_NAMES]
        if unknown:
            raise ValueError(f"unknown block internals {unknown}; choose from {REF_NAMES}")
        self.refs = list(refs)
        if "ref_attn_q" in self.refs and (block_modes is None or len(block_modes) != n):
            raise ValueError(f"ref_attn_q needs each of the {n} blocks' mode (block_modes)")
        self.block_modes = list(block_modes) if block_modes is not None else None
        maker = _VISION_EMBED.get(adapter.family)
        self.embed = maker(adapter, self.ctx) if maker else (lambda px: adapter.vision_embed(px)[0])

    def forward(self, pixels):
        a = self.adapter
        hidden = self.embed(pixels.to(a.dtype))
        got, kept = {}, []
        for i, p in enumerate(self.parts):
            h = a.vision_tokens(hidden)
            x = p.norm1(h)
            rows = torch.arange(h.shape[0])
            k, v = p.k(x), p.v(x)
            q = p.q(x)
            attn = p.attend(rows, q, k, v)
            h1 = h + attn
            mlp = p.mlp(p.norm2(h1))
            hidden = a.vision_hidden(h1 + mlp, hidden)
            if self.refs:
                have = {"ref_k": k, "ref_v": v, "ref_q": q, "ref_attn": attn, "ref_mlp": mlp}
                if "ref_attn_q" in self.refs:
                    have["ref_attn_q"] = attn if self.block_modes[i] == "selected" else q
                kept.append([have[n] for n in self.refs])
            if i in self.tap_blocks:
                got[i] = a.tap_to_raster(hidden, self.ctx)
        out = a.vision_project(hidden, self.ctx)
        refs = [torch.stack([r[j] for r in kept]) for j in range(len(self.refs))] if self.refs else []
        return (out.features.float(), out.trailer.float(), *[got[b].float() for b in self.tap_blocks], *refs)


REF_NAMES = ["ref_k", "ref_v", "ref_q", "ref_attn", "ref_attn_q", "ref_mlp"]  # per-block internals, see VisionGraph


@register_stage
class VisionStage(StageExporter):
    name = "vision"
    order = 10
    file = "vision.onnx"

    def export(self, job):
        a = job.adapter
        taps = list(getattr(job.method, "taps", ()) or ())
        refs = list(getattr(job.method, "vision_refs", ()) or ())
        modes = job.method.block_modes(len(a.vision_blocks())) if hasattr(job.method, "block_modes") else None
        graph = VisionGraph(a, taps, refs, block_modes=modes).eval()
        h, w = a.frame_size
        pixels = torch.randn(1, 3, h, w, generator=torch.Generator().manual_seed(0))
        tap_names = [f"tap_{t}" for t in taps]
        outs = ["features", "trailer", *tap_names, *refs]
        exporter = export_onnx(job, self.name, graph, (pixels,), self.file, ["pixels"], outs, {})
        with torch.no_grad(), sdpa_as_4d():
            ref = graph(pixels)
            eager = a.encode_frame(np.zeros((h, w, 3), np.uint8))  # grid and trailer as the adapter reports them
        check = check_graph(job, self.name, os.path.join(job.out_dir, self.file), {"pixels": pixels.numpy()},
                            list(ref), outs)
        attrs = {
            "frame_size": [h, w],
            "grid_hw": list(eager.grid_hw),
            "tokens_per_frame": eager.num_tokens,
            "trailer_tokens": int(eager.trailer.shape[0]),
            "taps": taps,
            "refs": refs,
            "vision_blocks": len(graph.parts),
            "fixed_resolution": True,
            "resolution_note": ("window index, windows and rotary tables are computed for this grid at export"
                                if a.family in _VISION_EMBED else "the position embedding table is fixed-size"),
            "path": "adapter blocks taken apart (vision_layer_parts)",
            "check": check,
        }
        return _stage_spec(job, self.name, self.file, exporter, attrs)


# ----- llm -----
class LLMGraph(nn.Module):
    """The HF language model + lm_head over flat KV tensors (no Cache object crosses the graph boundary)."""

    def __init__(self, adapter):
        super().__init__()
        self.lm = adapter.language_model()
        self.head = adapter.lm_head()
        self.config = adapter.text_config
        self.n_layers = int(self.config.num_hidden_layers)

    def forward(self, inputs_embeds, position_ids, logits_positions, past):
        from transformers import DynamicCache

        cache = DynamicCache(config=self.config)
        for i in range(self.n_layers):
            cache.update(past[2 * i], past[2 * i + 1], i)
        p, n = past[0].shape[2], inputs_embeds.shape[1]
        # causal over everything cached plus the new tokens; position ids never enter the mask
        rows = torch.arange(n, device=inputs_embeds.device).unsqueeze(1) + p
        cols = torch.arange(p + n, device=inputs_embeds.device).unsqueeze(0)
        mask = (cols <= rows)[None, None]
        out = self.lm(inputs_embeds=inputs_embeds, position_ids=position_ids, past_key_values=cache,
                      attention_mask=mask, use_cache=True)
        logits = self.head(out.last_hidden_state.index_select(1, logits_positions)).float()
        present = []
        for layer in cache.layers[: self.n_layers]:
            present += [layer.keys, layer.values]
        return (logits, *present)


def kv_shape(adapter) -> tuple[int, int, int]:
    return config_kv_shape(adapter.text_config)


def llm_io_names(n_layers: int) -> tuple[list[str], list[str]]:
    kv = [f"{d}_{kind}_{i}" for d in ("past",) for i in range(n_layers) for kind in ("key", "value")]
    pres = [f"present_{kind}_{i}" for i in range(n_layers) for kind in ("key", "value")]
    return ["inputs_embeds", "position_ids", "logits_positions", *kv], ["logits", *pres]


@register_stage
class LLMStage(StageExporter):
    name = "llm"
    order = 20
    file = "llm.onnx"

    def export(self, job):
        a = job.adapter
        graph = LLMGraph(a).eval()
        n_layers, kvh, hd = kv_shape(a)
        rows = a.positions.rows
        p, n, k = 5, 3, 2  # distinct example sizes so no dynamic axis is specialised
        g = torch.Generator().manual_seed(0)
        embeds = torch.randn(1, n, a.hidden_size, generator=g).to(job.dtype)
        ids = torch.arange(p, p + n).expand(rows, n)
        position_ids = a.positions.model_position_ids(ids).contiguous()
        past = tuple(torch.randn(1, kvh, p, hd, generator=g).to(job.dtype) for _ in range(2 * n_layers))
        args = (embeds, position_ids, torch.arange(n - k, n), past)
        in_names, out_names = llm_io_names(n_layers)
        seq_axis = position_ids.dim() - 1
        dynamic = {"inputs_embeds": {1: ("seq", 1)}, "position_ids": {seq_axis: ("seq", 1)},
                   "logits_positions": {0: ("nlogits", 1)}}
        dynamic.update({nm: {2: ("past", 0)} for nm in in_names[3:]})
        exporter = export_onnx(job, self.name, graph, args, self.file, in_names, out_names, dynamic)
        with torch.no_grad():
            ref = graph(*args)
        feeds = {nm: t.numpy() for nm, t in zip(in_names, _flat(args))}
        check = check_graph(job, self.name, os.path.join(job.out_dir, self.file), feeds, list(ref), out_names)
        attrs = {
            "num_layers": n_layers, "kv_heads": kvh, "head_dim": hd,
            "kv_layout": "[1, kv_heads, seq, head_dim] per layer, keys and values apart",
            "position_rows": rows,
            "position_ids_layout": "[1, L]" if rows == 1 else f"[{rows}, 1, L]",
            "logits": "float32 [1, K, vocab] for the new-token rows in logits_positions ([L-1] = last only)",
            "mask": "causal over past + new tokens, built in the graph from their lengths",
            "check": check,
        }
        return _stage_spec(job, self.name, self.file, exporter, attrs)


__all__ = ["ExportJob", "ExportError", "StageExporter", "register_stage", "registered_stages", "plan",
           "register_vision_embed", "export_onnx", "check_graph", "graph_io", "VisionGraph", "LLMGraph", "REF_NAMES",
           "kv_shape", "llm_io_names", "sdpa_as_4d"]
