"""Export orchestration: adapter + method → an export directory (stage files, tokenizer, manifest.json).

The exporter runs every registered stage that applies (see `stages.plan`), prints progress per stage, copies
what the runtime needs besides the graphs (tokenizer files, prompt format, position scheme, pixel
normalisation, token layout) so a backend never needs the torch model, checksums every file it wrote and
writes the manifest last (a directory without a manifest is never mistaken for a finished export).
"""
from __future__ import annotations

import copy
import dataclasses
import importlib
import datetime
import json
import os
import shutil
import time
from typing import Callable

from vlmedge.errors import InputError
from vlmedge.export.manifest import (EXPORT_PRECISIONS, FORMAT, MANIFEST_NAME, SCHEMA_VERSION, TARGETS, FileEntry, Manifest,
                                     MethodInfo, ModelInfo, RuntimeInfo, StageSpec, position_spec, sha256_file,
                                     versions)
from vlmedge.export import audio as _audio_stage  # noqa: F401  (registers the omni audio stage)
from vlmedge.export.stages import ExportError, ExportJob, kv_shape, plan

TOKENIZER_DIR = "tokenizer"
EXPORTERS = ("auto", "dynamo", "torchscript")
GPU_TARGETS = ("desktop", "orin-nano", "orin-nx", "orin-agx")


def _check_options(target, precision, opset, exporter, max_frames):
    if target not in TARGETS:
        raise InputError(f"target {target!r} is not one of {', '.join(TARGETS)}")
    if precision not in EXPORT_PRECISIONS:
        hint = " (int8 comes from `vlmedge calibrate quantize` on an fp32 export)" if precision == "int8" else ""
        raise InputError(f"precision {precision!r} is not one of {', '.join(EXPORT_PRECISIONS)}{hint}")
    if not isinstance(opset, int) or not 17 <= opset <= 23:
        raise InputError(f"opset must be an integer from 17 to 23, got {opset!r}")
    if exporter not in EXPORTERS:
        raise InputError(f"exporter {exporter!r} is not one of {', '.join(EXPORTERS)}")
    if max_frames is not None and (not isinstance(max_frames, int) or max_frames < 1):
        raise InputError(f"max_frames must be a positive integer, got {max_frames!r}")


def prepare_out_dir(out_dir: str, force: bool) -> set[str]:
    """Makes `out_dir` ready; returns the files already there that this export leaves alone.

    A non-empty directory needs `force`; then the previous export's files (those its manifest lists, and
    the names this exporter writes) are removed and anything else is left in place, untouched.
    """
    if os.path.exists(out_dir) and not os.path.isdir(out_dir):
        raise InputError(f"--out {out_dir!r} is a file; give a directory")
    os.makedirs(out_dir, exist_ok=True)
    if os.listdir(out_dir):
        if not force:
            raise InputError(f"output directory {out_dir!r} is not empty; pass --force to replace the export in it "
                             "(or choose a new directory)")
        doomed = {MANIFEST_NAME}
        try:
            with open(os.path.join(out_dir, MANIFEST_NAME)) as f:
                doomed |= set(json.load(f).get("files", {}))
        except (OSError, ValueError, AttributeError):
            pass
        for name in os.listdir(out_dir):
            if name.endswith((".onnx", ".onnx.data", ".npy")) or name == TOKENIZER_DIR:
                doomed.add(name)
        for rel in doomed:
            full = os.path.normpath(os.path.join(out_dir, rel))
            if not full.startswith(os.path.normpath(out_dir) + os.sep):
                continue
            if os.path.isdir(full):
                shutil.rmtree(full)
            elif os.path.isfile(full):
                os.remove(full)
    return _all_files(out_dir)


def _all_files(directory: str) -> set[str]:
    out = set()
    for root, _, names in os.walk(directory):
        for n in names:
            out.add(os.path.relpath(os.path.join(root, n), directory).replace(os.sep, "/"))
    return out


def _half(adapter):
    adapter = copy.copy(adapter)
    adapter.model = copy.deepcopy(adapter.model).half()
    return adapter


def target_plan(adapter, target: str, precision: str | None, method) -> tuple[str, dict | None]:
    """(precision, memory plan) for `target`: Jetson targets take their precision default, the LLM's context
    sizes and the builder workspace from the device profile (the detected module when exporting on one)."""
    from vlmedge.jetson.detect import detect
    from vlmedge.jetson.profiles import build_settings, profile_for_target

    prof = profile_for_target(target, detected=detect().profile)
    if prof is None:
        return precision or "fp32", None
    n_layers, kvh, hd = kv_shape(adapter)
    weights = sum(p.numel() * p.element_size() for p in adapter.model.parameters())
    budget = getattr(method, "tokens", None)
    plan_ = build_settings(prof, weights_bytes=weights, num_layers=n_layers, num_kv_heads=kvh, head_dim=hd,
                           precision=precision, tokens_per_frame=budget if isinstance(budget, int) else None,
                           max_positions=getattr(adapter.text_config, "max_position_embeddings", None))
    return plan_.precision, dataclasses.asdict(plan_)


def export_model(adapter, out_dir: str, method="none", *, target: str = "cpu", precision: str | None = None,
                 opset: int = 18, exporter: str = "auto", force: bool = False, source: str | None = None,
                 max_frames: int | None = None, check: bool = True, custom_ops: bool | None = None,
                 log: Callable[[str], None] = print) -> Manifest:
    """Exports `adapter` for `method` into `out_dir` and returns the manifest it wrote.

    `custom_ops` (default: on for GPU/Jetson targets, whose TensorRT plugins implement them) emits the `vlmedge`
    op domain (export/ops/) where a stage has an op for a step; off, the same steps decompose to standard ops."""
    from vlmedge.compression import get_method
    from vlmedge.compression.base import runs_own_vision

    method = get_method(method)
    for module in getattr(method, "export_modules", ()):  # stages a method brings register on import
        importlib.import_module(module)
    if hasattr(method, "prepare_export"):  # e.g. GlimpsePrune loads its trained modules, whose taps the vision stage needs
        method.prepare_export(adapter)
    precision, memory_plan = target_plan(adapter, target, precision, method)
    if memory_plan and max_frames is None:
        max_frames = memory_plan["max_frames"]
    _check_options(target, precision, opset, exporter, max_frames)
    if custom_ops is None:  # TorchScript cannot translate them: an explicit torchscript export decomposes
        custom_ops = target in GPU_TARGETS and exporter != "torchscript"
    job = ExportJob(adapter=adapter, method=method, out_dir=out_dir, precision=precision, opset=opset,
                    exporter=exporter, check=check, custom_ops=bool(custom_ops), log=log)
    stages = plan(job)
    if runs_own_vision(method) and not any(s.handles_vision for s in stages):
        raise ExportError(f"method {method.name!r} changes how the vision tower runs and no export stage for it is "
                          f"registered yet; exportable methods run the plain vision stage (none, uniform, random)")
    keep = prepare_out_dir(out_dir, force)
    if precision == "fp16":
        job.adapter = adapter = _half(adapter)
    log(f"[export] {adapter.family} ({source or 'in-memory model'}) for method {method.spec()} → {out_dir} "
        f"[{precision}, target {target}, opset {opset}]; stages: {', '.join(s.name for s in stages)}")
    specs: dict[str, StageSpec] = {}
    t_all = time.perf_counter()
    for i, stage in enumerate(stages, 1):
        log(f"[export] {i}/{len(stages)} {stage.name} ...")
        t0 = time.perf_counter()
        spec = stage.export(job)
        size = _size(out_dir, spec.file)
        check_note = spec.attrs.get("check", {})
        err = f", ORT vs torch max rel err {check_note['max_rel_err']:.1e}" if "max_rel_err" in check_note else ""
        log(f"[export] {i}/{len(stages)} {stage.name}: {spec.file} {_human(size)} via {spec.exporter} "
            f"in {time.perf_counter() - t0:.1f}s{err}")
        specs[spec.name] = spec

    tok_dir = os.path.join(out_dir, TOKENIZER_DIR)
    adapter.tokenizer.save_pretrained(tok_dir)
    vision = specs.get("vision")
    layout = {
        "order": "raster over grid_hw, then the trailer tokens",
        "grid_hw": vision.attrs["grid_hw"] if vision else None,
        "tokens_per_frame": vision.attrs["tokens_per_frame"] if vision else None,
        "trailer_tokens": vision.attrs["trailer_tokens"] if vision else 0,
        "position_rows": adapter.positions.rows,
        "kept_position_ids": "original (gaps where tokens were dropped; never renumbered)",
        "compression": "runs in the session on the vision stage's features",
    }
    prompt = dataclasses.asdict(adapter.prompt)
    prompt["stop"] = list(prompt["stop"])
    notes = list(job.notes)
    if adapter.has_audio and "audio" not in specs:
        notes.append("no audio stage yet: this export answers from video only (push_audio is unavailable)")
    used = sorted({op for sp in specs.values() for op in sp.attrs.get("custom_ops", {}).get("ops", [])})
    if used:
        notes.append(f"graphs use vlmedge custom ops ({', '.join(used)}): ONNX Runtime runs them through "
                     "onnxruntime-extensions (export/ops/onnxruntime_ops.py), TensorRT through the vlmedge plugins")
    if precision == "fp16" and target == "cpu":
        notes.append("fp16 graphs are meant for GPUs: ONNX Runtime's CPU provider lacks fp16 kernels for some ops")
    runtime = RuntimeInfo(prompt=prompt, positions=position_spec(adapter.positions), tokenizer=TOKENIZER_DIR,
                          frame_size=list(adapter.frame_size), pixel_norm=dataclasses.asdict(adapter.pixel_norm),
                          token_layout=layout, has_audio="audio" in specs, max_frames=max_frames,
                          memory_plan=memory_plan)
    n_layers, kvh, hd = kv_shape(adapter)
    model = ModelInfo(family=adapter.family, source=source or "in-memory model",
                      model_type=str(adapter.model.config.model_type), hidden_size=int(adapter.hidden_size),
                      vocab_size=int(adapter.language_model().get_input_embeddings().num_embeddings),
                      num_layers=n_layers, num_kv_heads=kvh, head_dim=hd)
    written = sorted(_all_files(out_dir) - keep - {MANIFEST_NAME})
    files = {rel: FileEntry(sha256=sha256_file(os.path.join(out_dir, rel)),
                            bytes=os.path.getsize(os.path.join(out_dir, rel))) for rel in written}
    manifest = Manifest(
        schema_version=SCHEMA_VERSION, format=FORMAT, model=model,
        method=MethodInfo(name=method.name, spec=method.spec(), settings=jsonable(method.settings())),
        precision=precision, target=target, opset=opset, stages=specs, runtime=runtime, versions=versions(),
        files=files, created=datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"), notes=notes)
    manifest.save(out_dir)
    log(f"[export] done in {time.perf_counter() - t_all:.1f}s")
    return manifest


def summary_table(manifest: Manifest, out_dir: str) -> str:
    """stage | file | size | exporter | inputs, one row per stage, plus the total size."""
    rows = [("stage", "file", "size", "exporter", "inputs")]
    total = 0
    for spec in manifest.stages.values():
        size = _size(out_dir, spec.file)
        total += size
        ins = ", ".join(f"{t.name}{_shape(t.shape)}" for t in spec.inputs[:3])
        if len(spec.inputs) > 3:
            rest = spec.inputs[3:]
            kind = "KV" if all(t.name.startswith("past_") for t in rest) else "more"
            ins += f", +{len(rest)} {kind}"
        rows.append((spec.name, spec.file, _human(size), spec.exporter, ins or "-"))
    widths = [max(len(r[i]) for r in rows) for i in range(4)]
    lines = ["  ".join(c.ljust(w) for c, w in zip(r[:4], widths)) + "  " + r[4] for r in rows]
    lines.insert(1, "-" * max(len(ln) for ln in lines))
    lines.append(f"total {_human(total)} in {len(manifest.stages)} stages; manifest schema {manifest.schema_version}, "
                 f"{len(manifest.files)} files checksummed")
    for note in manifest.notes:
        lines.append(f"note: {note}")
    return "\n".join(lines)


def _size(out_dir: str, file: str) -> int:
    path = os.path.join(out_dir, file)
    size = os.path.getsize(path) if os.path.isfile(path) else 0
    data = path + ".data"
    return size + (os.path.getsize(data) if os.path.isfile(data) else 0)


def _human(n: int) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if n < 1024 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n} B"  # pragma: no cover


def _shape(shape) -> str:
    return "[" + ",".join(str(d) for d in shape) + "]"


def jsonable(d: dict) -> dict:
    return {k: (v if isinstance(v, (int, float, str, bool, type(None), list, dict)) else str(v)) for k, v in d.items()}
