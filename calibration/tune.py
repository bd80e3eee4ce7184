"""`vlmedge calibrate tune`: the most accurate setting of the export's method that meets a latency and a memory
target on this machine, written into the manifest, with a plot of the accuracy/latency frontier.

Every setting of a grid (GRIDS, or the caller's) streams the calibration set through the export with ONNX
Runtime, exactly as a camera would, and is measured three ways:

* latency — the 90th percentile per-frame time (vision + compression + prefill), after two warm-up frames;
* memory — the export's weights plus the KV cache a stream of `frames` frames holds at the setting's measured
  tokens per frame (and a prompt and a question), which is what the planner budgets;
* accuracy — with `seeds`, camworld accuracy on those seeds (ground truth; for the camworld reference models);
  without, agreement with the uncompressed model (`none` on the same export) on questions asked along the
  calibration stream, which needs no labels and so works on a deployment's own footage.

Only settings the export's graphs support are swept: what a graph fixes at export (STC's update ratio, the
tokens its selective pass recomputes) stays as exported, so a tuned setting runs on the same files.
"""
from __future__ import annotations

import datetime
import os
import time
from dataclasses import asdict, dataclass

import numpy as np

from vlmedge.calibration.capture import DEFAULT_QUESTIONS, capture
from vlmedge.errors import InputError

# Settings each method's runtime can change without re-exporting; the caller's grid replaces these.
GRIDS = {
    "uniform": {"ratio": [0.11, 0.2, 0.33, 0.5, 0.75]},
    "random": {"ratio": [0.11, 0.2, 0.33, 0.5, 0.75]},
    "stc": {"tokens": [16, 32, 47, 64, 96], "cache_interval": [1, 2, 4]},
    "script": {"ratio": [0.11, 0.2, 0.33, 0.5]},
    "omnizip": {"rho_v": [0.4, 0.6, 0.75], "rho_a": [0.2, 0.3, 0.5]},
    "glimpse": {"max_ratio": [0.11, 0.2, 0.33]},
}
FIXED_AT_EXPORT = {"stc": ("ratio",)}  # baked into vision_stc_select.onnx
# Agreement is scored on every question after every second frame: with 8 questions and 48 frames, 192 answers, so
# one answer moves it by half a point rather than the two points of asking every fourth frame.
ASK_EVERY = 2


@dataclass
class Trial:
    spec: str
    settings: dict
    accuracy: float
    latency_ms: float  # p90 per frame
    median_ms: float
    tokens_per_frame: float
    memory_bytes: int
    meets_latency: bool = False
    meets_memory: bool = False

    @property
    def feasible(self) -> bool:
        return self.meets_latency and self.meets_memory


def parse_grid(text: str) -> dict:
    """`tokens=16,32,64;cache_interval=1,2` → {"tokens": [16, 32, 64], "cache_interval": [1, 2]}."""
    grid = {}
    for part in filter(None, (p.strip() for p in text.split(";"))):
        if "=" not in part:
            raise InputError(f"grid entry {part!r} must be NAME=V1,V2,... (entries separated by ';')")
        name, values = part.split("=", 1)
        vals = [_number(v.strip()) for v in values.split(",") if v.strip()]
        if not vals:
            raise InputError(f"grid entry {name!r} has no values")
        grid[name.strip()] = vals
    return grid


def _number(v: str):
    for cast in (int, float):
        try:
            return cast(v)
        except ValueError:
            pass
    return v


def settings_grid(method, grid: dict | None) -> list[dict]:
    """Every combination of `grid` (default: GRIDS for the method) as settings overrides, validated by name."""
    import itertools

    grid = grid if grid is not None else GRIDS.get(method.name)
    if not grid:
        raise InputError(f"method {method.name!r} has no settings to tune; export with a compression method "
                         f"({', '.join(GRIDS)}) or pass --grid")
    known = method.settings()
    for name in grid:
        if name not in known:
            raise InputError(f"{method.name} has no setting {name!r} (settings: {', '.join(known)})")
        if name in FIXED_AT_EXPORT.get(method.name, ()):
            raise InputError(f"{method.name}'s {name!r} is fixed by the exported graphs; re-export with the value "
                             f"you want (vlmedge export --method {method.name}:{name}=...) and tune the rest")
    names = list(grid)
    return [dict(zip(names, combo)) for combo in itertools.product(*(grid[n] for n in names))]


def with_settings(method, overrides: dict) -> str:
    """The method spec with `overrides` applied (other settings as exported)."""
    from vlmedge.compression import get_method

    base = {k: v for k, v in method.settings().items() if v is not None}
    merged = {**base, **overrides}
    spec = method.name + ":" + ",".join(f"{k}={v}" for k, v in merged.items()) if merged else method.name
    return get_method(spec).spec()  # validates the values (ranges, types) with the method's own checks


def memory_bytes(adapter, tokens_per_frame: float, prompt_tokens: int, frames: int, question_tokens: int = 64) -> int:
    """Weights on disk (the graphs and tables the export loads) + the KV of `frames` frames, prompt and question."""
    from vlmedge.jetson.profiles import kv_bytes_per_token

    m = adapter.manifest
    weights = sum(e.bytes for rel, e in m.files.items() if rel.endswith((".onnx", ".data", ".npy")))
    per_token = kv_bytes_per_token(m.model.num_layers, m.model.num_kv_heads, m.model.head_dim,
                                   np.dtype(m.stage("llm").input("past_key_0").dtype).itemsize)
    tokens = prompt_tokens + question_tokens + frames * tokens_per_frame
    return int(weights + per_token * tokens)


def tune(export_dir: str, calib_dir: str, *, target_latency_ms: float, memory_budget: int | None = None,
         frames: int | None = None, grid: dict | None = None, seeds: tuple[int, int] | None = None,
         questions=DEFAULT_QUESTIONS, plot: str | None = None, write: bool = True, threads: int | None = None,
         log=print) -> tuple[Trial, list[Trial]]:
    """Sweeps, picks and (with `write`) records the chosen setting in the export's manifest; returns
    (chosen, all trials). InputError when no setting meets the targets (nothing written)."""
    from vlmedge.calibration.record import load as load_calibration
    from vlmedge.compression import get_method
    from vlmedge.runtime.backends.onnxruntime import load_backend

    if target_latency_ms <= 0:
        raise InputError(f"--target-latency must be positive (ms per frame), got {target_latency_ms}")
    adapter = load_backend(export_dir, threads=threads)
    m = adapter.manifest
    method = get_method(m.method.spec)
    combos = settings_grid(method, grid)
    frames = frames or m.runtime.max_frames or 64
    calib = load_calibration(calib_dir)
    indices = list(range(len(calib)))
    if len(indices) < 4:
        raise InputError(f"{calib_dir} holds {len(indices)} frames; tuning needs at least 4 "
                         "(record more with `vlmedge calibrate record --frames N`)")
    reference = None
    if seeds is None:
        log(f"[tune] reference answers: {len(indices)} calibration frames without compression")
        reference = capture(adapter, "none", calib, indices, questions=questions, ask_every=ASK_EVERY,
                            record=False).answers
    prompt_tokens = _prompt_tokens(adapter, method)
    trials = []
    t0 = time.perf_counter()
    for n, overrides in enumerate(combos, 1):
        spec = with_settings(method, overrides)
        run = capture(adapter, spec, calib, indices, questions=questions, ask_every=ASK_EVERY, record=False)
        ms = np.asarray(run.frame_ms[2:] or run.frame_ms)
        if seeds is not None:
            from vlmedge.runtime.evaluation import evaluate

            acc = evaluate(adapter, spec, seeds).accuracy["overall"]
        else:
            acc = float(np.mean([a == b for a, b in zip(run.answers, reference)]))
        tpf = float(np.mean(run.stream_tokens_per_frame))
        trial = Trial(spec=spec, settings=overrides, accuracy=acc, latency_ms=float(np.percentile(ms, 90)),
                      median_ms=float(np.median(ms)), tokens_per_frame=float(np.mean(run.tokens_per_frame)),
                      memory_bytes=memory_bytes(adapter, tpf, prompt_tokens, frames))
        trial.meets_latency = trial.latency_ms <= target_latency_ms
        trial.meets_memory = memory_budget is None or trial.memory_bytes <= memory_budget
        trials.append(trial)
        log(f"[tune] {n}/{len(combos)} {_label(overrides)}: accuracy {acc:.3f}, p90 {trial.latency_ms:.2f} ms, "
            f"{trial.tokens_per_frame:.0f} tokens/frame, {trial.memory_bytes / 2**20:.1f} MiB"
            f"{'' if trial.feasible else '  (misses a target)'}")
    feasible = [t for t in trials if t.feasible]
    if plot:
        frontier_plot(trials, None if not feasible else _best(feasible), target_latency_ms, plot,
                      "agreement with uncompressed" if seeds is None else "camworld accuracy")
    if not feasible:
        fastest = min(trials, key=lambda t: t.latency_ms)
        raise InputError(f"no setting of {method.name} meets p90 <= {target_latency_ms:g} ms per frame"
                         + (f" within {memory_budget / 2**20:.1f} MiB" if memory_budget else "")
                         + f"; the fastest ({_label(fastest.settings)}) takes {fastest.latency_ms:.2f} ms and "
                         f"{fastest.memory_bytes / 2**20:.1f} MiB. Relax the targets, widen --grid, or quantise "
                         "the export (`vlmedge calibrate quantize`); the manifest was not changed")
    chosen = _best(feasible)
    log(f"[tune] chose {chosen.spec}: accuracy {chosen.accuracy:.3f}, p90 {chosen.latency_ms:.2f} ms "
        f"(target {target_latency_ms:g}), {chosen.memory_bytes / 2**20:.1f} MiB in {time.perf_counter() - t0:.0f}s")
    if write:
        record = {"target_latency_ms": target_latency_ms, "memory_budget_bytes": memory_budget, "frames": frames,
                  "accuracy": "camworld" if seeds is not None else "agreement with uncompressed answers",
                  "seeds": list(seeds) if seeds else None, "calibration": os.path.abspath(calib_dir),
                  "exported_spec": m.tuning["exported_spec"] if m.tuning else m.method.spec,
                  "chosen": asdict(chosen), "trials": [asdict(t) for t in trials],
                  "machine": _machine(threads),
                  "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")}
        write_choice(export_dir, chosen.spec, record)
    return chosen, trials


def _best(trials: list[Trial]) -> Trial:
    return max(trials, key=lambda t: (round(t.accuracy, 6), -t.latency_ms))


def _label(overrides: dict) -> str:
    return ",".join(f"{k}={v}" for k, v in overrides.items())


def _prompt_tokens(adapter, method) -> int:
    from vlmedge.runtime import StreamingSession

    return StreamingSession(adapter, method.spec(), max_new_tokens=1).stream_tokens


def _machine(threads) -> dict:
    import platform

    return {"cpu": platform.processor() or platform.machine(), "cores": os.cpu_count(), "threads": threads}


def write_choice(export_dir: str, spec: str, record: dict) -> None:
    """The chosen method spec becomes the export's method (what `vlmedge run --engine` uses by default); the
    sweep is kept in `tuning`. Only manifest.json changes, atomically."""
    from vlmedge.compression import get_method
    from vlmedge.export.exporter import jsonable
    from vlmedge.export.manifest import Manifest

    m = Manifest.load(export_dir, verify=False)
    method = get_method(spec)
    m.method.spec = method.spec()
    m.method.settings = jsonable(method.settings())
    m.tuning = record
    m.save(export_dir)


def frontier_plot(trials: list[Trial], chosen: Trial | None, target_ms: float, path: str, ylabel: str) -> str | None:
    """Accuracy vs p90 latency of every trial, the Pareto frontier, the target and the chosen point."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    from vlmedge.bench.report import save_figure

    fig, ax = plt.subplots(figsize=(6.4, 4.4))
    ok = [t for t in trials if t.meets_memory]
    over = [t for t in trials if not t.meets_memory]
    ax.scatter([t.latency_ms for t in ok], [t.accuracy for t in ok], s=22, color="#4C72B0", label="settings")
    if over:
        ax.scatter([t.latency_ms for t in over], [t.accuracy for t in over], s=22, marker="x", color="#999999",
                   label="over the memory budget")
    front, best = [], -1.0
    for t in sorted(ok, key=lambda t: (t.latency_ms, -t.accuracy)):
        if t.accuracy > best:
            front.append(t)
            best = t.accuracy
    if front:
        ax.plot([t.latency_ms for t in front], [t.accuracy for t in front], "-", color="#4C72B0", lw=1,
                label="frontier")
    ax.axvline(target_ms, color="#DD8452", ls="--", lw=1, label=f"target {target_ms:g} ms")
    if chosen is not None:
        ax.scatter([chosen.latency_ms], [chosen.accuracy], s=140, facecolors="none", edgecolors="#C44E52", lw=2,
                   label=f"chosen: {_label(chosen.settings)}")
    ax.set_xlabel("per-frame latency, p90 (ms)")
    ax.set_ylabel(ylabel)
    ax.set_title("Accuracy / latency of the swept settings")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    out_dir, name = os.path.split(os.path.abspath(path))
    os.makedirs(out_dir, exist_ok=True)
    return save_figure(plt, fig, out_dir, name)
