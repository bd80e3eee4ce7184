"""One bench run: accuracy of every variant on the reference model, then latency on a realistically shaped one.

Accuracy needs a trained model (the bundled reference, or `--model`); latency needs realistic shapes, which
the reference model does not have, so the two halves use different models and say so in every table. Both
halves run every variant in this one process, so ratios compare runs made under the same conditions.
"""
from __future__ import annotations

import os
import sys
import time
from dataclasses import dataclass, field

from vlmedge.bench.plan import METHODS, variants

# timing shapes per family: bench/shapes.py DEFAULT_SHAPES
QUICK = {"ratios": (0.327, 0.111), "seeds": (1_000_000, 1_000_040), "timing_streams": 1, "repeats": 2}
FULL = {"ratios": (0.5, 0.327, 0.2, 0.111), "seeds": (1_000_000, 1_000_200), "timing_streams": 2, "repeats": 3}
# OmniZip's two published settings are total retentions (its ρa/ρv pairs), not visual keep ratios
OMNI_RATIOS = (0.45, 0.35)


@dataclass
class BenchResult:
    config: dict
    accuracy: list = field(default_factory=list)  # {"label", "family", "keep", "report": EvalReport}
    timing: list = field(default_factory=list)  # TimingResult
    skipped: dict = field(default_factory=dict)
    wall_s: float = 0.0


def log(msg: str) -> None:
    print(f"[bench] {msg}", file=sys.stderr, flush=True)


def run_bench(methods=METHODS, ratios=None, quick: bool = False, seeds=None, shape: str | None = None,
              repeats: int | None = None, timing_streams: int | None = None, accuracy_model=None,
              accuracy_name: str = "", do_accuracy: bool = True, do_timing: bool = True,
              work_dir: str = "bench-results", jobs: int = 1, accuracy_source: tuple[str, str] | None = None,
              timing_backend: str = "torch", family: str | None = None) -> BenchResult:
    """`jobs` > 1 evaluates the accuracy variants in that many worker processes, each opening the model from
    `accuracy_source` ((model spec, backend) as `runtime.model_source.open_model` takes them) with an equal
    share of the threads. Timing always runs in this process, alone, with `timing_backend` (bench/exported.py:
    torch, onnxruntime, tensorrt or auto — the GPU mode). `family` picks the default timing shape and ratios
    (default: the accuracy model's family, else LLaVA-OneVision)."""
    import torch

    from vlmedge.bench import shapes
    from vlmedge.bench.exported import ExportedModels, device_of, resolve_backend
    from vlmedge.bench.timing import time_method
    from vlmedge.models import camworld
    from vlmedge.runtime.evaluation import evaluate

    preset = QUICK if quick else FULL
    family = family or getattr(accuracy_model, "family", None) or "llava_onevision"
    ratios = tuple(ratios or (OMNI_RATIOS if family == "qwen2_5_omni" else preset["ratios"]))
    seeds = tuple(seeds or preset["seeds"])
    shape_obj = shapes.get_shape(shape or shapes.default_shape(family, quick))
    repeats = repeats or preset["repeats"]
    timing_streams = timing_streams or preset["timing_streams"]
    backend = resolve_backend(timing_backend) if do_timing else "torch"
    t0 = time.perf_counter()
    result = BenchResult(config={
        "quick": quick, "methods": list(methods), "ratios": list(ratios), "seeds": list(seeds),
        "accuracy_model": accuracy_name, "timing_model": shape_obj.description, "timing_shape": shape_obj.name,
        "repeats": repeats, "timing_streams": timing_streams, "backend": backend, "device": "cpu",
        "threads": torch.get_num_threads(), "torch": torch.__version__,
    })

    if do_accuracy:
        adapter = accuracy_model
        probe = adapter.encode_frame(camworld.generate(seeds[0], split="eval").frames[0])
        plan, skipped = variants(methods, ratios, probe.num_tokens, adapter.has_audio, _glimpse_dir(adapter))
        result.skipped.update(skipped)
        if jobs > 1 and accuracy_source is None:
            raise ValueError("jobs > 1 needs accuracy_source, so that each worker can open the model")
        reports = (_evaluate_in_workers(accuracy_source, [v.spec for v in plan], seeds, accuracy_name, jobs)
                   if jobs > 1 else (evaluate(adapter, v.spec, seeds, name=accuracy_name) for v in plan))
        for i, (v, rep) in enumerate(zip(plan, reports)):
            result.accuracy.append({"label": v.label, "family": v.family, "keep": v.keep, "report": rep})
            log(f"accuracy {i + 1}/{len(plan)} {v.label:<24} overall {rep.accuracy['overall']:.3f} "
                f"tokens {rep.tokens_per_frame:.1f} ({rep.wall_s:.0f} s)")

    if do_timing:
        log(f"building {shape_obj.description} with random weights")
        adapter = shapes.build(shape_obj)
        # an untrained predictor of the right shape times like a trained one (its count is set by the cap)
        timing_glimpse = None
        if "glimpse" in methods:
            from vlmedge.compression.glimpse.modules import GlimpseModules

            timing_glimpse = GlimpseModules.for_adapter(adapter).save(os.path.join(work_dir, "timing-model"))
        plan, skipped = variants(methods, ratios, shape_obj.tokens_per_frame, adapter.has_audio, timing_glimpse)
        plan = [v for v in plan if v.label != "glimpse"]  # uncapped: an untrained predictor's count means nothing
        for m, why in skipped.items():
            result.skipped.setdefault(m, why)
        streams = [camworld.generate(seeds[0] + i, split="eval") for i in range(timing_streams)]
        exported = (ExportedModels(adapter, backend, work_dir, shape_obj.name, log=log) if backend != "torch"
                    else None)
        try:
            with torch.no_grad():
                for i, v in enumerate(plan):
                    model = exported.get(v.spec) if exported else adapter
                    result.config["device"] = device_of(model)
                    t = time_method(model, v.spec, streams, label=v.label, model=shape_obj.name, backend=backend,
                                    repeats=repeats, device=device_of(model))
                    result.timing.append(t)
                    log(f"timing {i + 1}/{len(plan)} {v.label:<24} vision {t.value('vision_ms'):.0f} ms "
                        f"prefill {t.value('prefill_ms'):.0f} ms tokens {t.value('tokens_kept'):.0f}")
        finally:
            if exported:
                exported.close()
    result.wall_s = time.perf_counter() - t0
    return result


def _evaluate_in_workers(source: tuple[str, str], specs: list[str], seeds, name: str, jobs: int):
    """EvalReports of `specs`, in order, from `jobs` spawned processes. Evaluation is one stream at a time on
    a small model, where a second thread in one process gains far less than a second process does."""
    import multiprocessing as mp
    from concurrent.futures import ProcessPoolExecutor

    import torch

    threads = max(1, torch.get_num_threads() // jobs)
    with ProcessPoolExecutor(jobs, mp_context=mp.get_context("spawn"), initializer=_worker_open,
                             initargs=(source, threads)) as pool:
        futures = [pool.submit(_worker_evaluate, spec, tuple(seeds), name) for spec in specs]
        for f in futures:
            yield f.result()


_WORKER_MODEL = None


def _worker_open(source: tuple[str, str], threads: int) -> None:
    import torch

    from vlmedge.runtime.model_source import open_model

    global _WORKER_MODEL
    torch.set_num_threads(threads)
    _WORKER_MODEL = open_model(*source)[0]


def _worker_evaluate(spec: str, seeds: tuple[int, int], name: str):
    from vlmedge.runtime.evaluation import evaluate

    return evaluate(_WORKER_MODEL, spec, seeds, name=name)


def _glimpse_dir(adapter) -> str | None:
    d = getattr(adapter, "model_dir", None) if adapter is not None else None
    return os.path.join(d, "glimpse") if d and os.path.isfile(os.path.join(d, "glimpse", "config.json")) else None
