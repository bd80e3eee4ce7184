"""PyTorch eager against ONNX Runtime for one method: the same streams through the session on each backend,
in one process, per model (the reference model and a realistically shaped one with random weights).

Each model is exported for the method first (`vlmedge export`, fp32, into the work folder), then both backends
play the same camworld streams (`timing.time_method`): per-frame vision / compress / prefill ms, time to the
first answer token, decode tokens/s and peak memory, with ORT/torch ratios (below 1: ONNX Runtime is faster or
smaller). Peak memory is the process's for that run, so the backend timed second also carries what the first
left allocated; the two are reported side by side, not subtracted.
"""
from __future__ import annotations

import os

from vlmedge.bench.timing import TimingResult, time_method

COMPARED = (("vision_ms", "vision ms / frame"), ("compress_ms", "compress ms / frame"),
            ("prefill_ms", "prefill ms / frame"), ("ttft_ms", "first token ms"), ("decode_tok_s", "decode tok/s"),
            ("peak_mb", "peak MB"))


def compare_backends(models, method: str, streams, repeats: int, work_dir: str, log=print) -> list[dict]:
    """`models`: [(name, torch adapter or a function building one)], built one at a time so a model's weights
    are not resident while another is timed. Returns one row per model: {"model", "torch", "onnxruntime",
    "export_s"}."""
    import time

    from vlmedge.export import export_model
    from vlmedge.runtime.backends import load_backend

    rows = []
    for name, adapter in models:
        adapter = adapter() if callable(adapter) else adapter
        out = os.path.join(work_dir, f"export-{name}")
        log(f"{name}: exporting for {method} to {out}")
        t0 = time.perf_counter()
        export_model(adapter, out, method, force=True, source=name, log=lambda m: log(m.removeprefix("[export] ")))
        export_s = time.perf_counter() - t0
        timed = {}
        for backend, model in (("torch", adapter), ("onnxruntime", load_backend(out))):
            timed[backend] = time_method(model, method, streams, label=f"{name} {backend}", model=name,
                                         backend=backend, repeats=repeats,
                                         progress=lambda r, n, b=backend: log(f"{name} {b}: run {r}/{n}"))
            log(f"{name} {backend}: vision {timed[backend].value('vision_ms'):.1f} ms, prefill "
                f"{timed[backend].value('prefill_ms'):.1f} ms per frame")
        rows.append({"model": name, "export_s": export_s, **timed})
    return rows


def markdown(rows: list[dict], method: str, threads: int) -> str:
    lines = [f"Method `{method}`, fp32, CPU, {threads} threads; medians over repeated runs (spread in brackets); "
             "ratio = ONNX Runtime / torch (below 1: ONNX Runtime is faster; for decode tok/s above 1 is faster).", ""]
    for row in rows:
        t, o = row["torch"], row["onnxruntime"]
        lines += [f"**{row['model']}** (export {row['export_s']:.0f} s, {t.frames_per_run} frames per run)", "",
                  "| metric | torch | ONNX Runtime | ratio |", "|---|---|---|---|"]
        for key, label in COMPARED:
            a, b = t.metrics[key], o.metrics[key]
            ratio = b.median / a.median if a.median else float("nan")
            lines.append(f"| {label} | {a.median:.2f} ({a.spread:.2f}) | {b.median:.2f} ({b.spread:.2f}) | {ratio:.2f}× |")
        frame_t = sum(t.value(k) for k in ("vision_ms", "compress_ms", "prefill_ms"))
        frame_o = sum(o.value(k) for k in ("vision_ms", "compress_ms", "prefill_ms"))
        lines += [f"| **per frame, all stages** | {frame_t:.2f} | {frame_o:.2f} | {frame_o / frame_t:.2f}× |", ""]
    return "\n".join(lines)


def to_json(rows: list[dict]) -> list[dict]:
    def res(t: TimingResult) -> dict:
        return {"label": t.label, "backend": t.backend, "runs": t.runs, "frames_per_run": t.frames_per_run,
                "metrics": {k: {"median": m.median, "spread": m.spread, "runs": m.runs} for k, m in t.metrics.items()}}

    return [{"model": r["model"], "export_s": r["export_s"], "torch": res(r["torch"]),
             "onnxruntime": res(r["onnxruntime"])} for r in rows]
