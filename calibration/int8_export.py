"""`vlmedge calibrate quantize`: an fp32 export + a calibration set → an int8 export, or a refusal.

Steps: the calibration set is split (every k-th frame held out); the calibration frames stream through the fp32
export with its method while every graph's inputs are recorded (capture.py); each graph is quantised
(quantize.py) into a staging directory beside the output; the accuracy guard (guard.py) compares the staged
export with fp32 on the held-out frames (per output and per layer) and on camworld evaluation seeds; only an
export that passes (or whose drop the caller accepts) is moved into the output directory, with the guard's
report in its manifest. A refused or failed run leaves the output directory as it was.
"""
from __future__ import annotations

import datetime
import json
import os
import shutil
import time

from vlmedge.calibration.capture import DEFAULT_QUESTIONS, capture
from vlmedge.calibration.guard import GuardReport, accuracy_and_speed, output_errors
from vlmedge.calibration.quantize import QuantSettings, copy_export, quantize_graph, replace_graph
from vlmedge.errors import InputError, VlmedgeError

REPORT_NAME = "quantization_report.json"


class AccuracyDropError(VlmedgeError):
    """The quantised export lost more accuracy than allowed; nothing was written."""

    def __init__(self, message: str, report: GuardReport):
        super().__init__(message)
        self.report = report


def default_mode(target: str) -> str:
    return "dynamic" if target == "cpu" else "static"  # see quantize.py for the measurement behind this


def quantize_export(export_dir: str, calib_dir: str, out_dir: str, settings: QuantSettings | None = None, *,
                    stages: list[str] | None = None, eval_seeds: tuple[int, int] | None = (1_000_000, 1_000_040),
                    max_drop: float = 0.03, accept_drop: bool = False, force: bool = False,
                    questions=DEFAULT_QUESTIONS, held_out: float = 0.25, threads: int | None = None, log=print):
    """Returns `(manifest, GuardReport)`; raises AccuracyDropError (output untouched) when the guard refuses."""
    from vlmedge.calibration.record import load as load_calibration
    from vlmedge.export.exporter import prepare_out_dir
    from vlmedge.export.manifest import Manifest, file_entries
    from vlmedge.runtime.backends.onnxruntime import load_backend

    if not 0.0 <= max_drop < 1.0:
        raise InputError(f"the allowed accuracy drop must be in [0, 1), got {max_drop}")
    if os.path.abspath(out_dir) == os.path.abspath(export_dir):
        raise InputError("--out must differ from --engine: the fp32 export is the guard's reference and stays as is")
    if os.path.isfile(out_dir) or (os.path.isdir(out_dir) and os.listdir(out_dir) and not force):
        raise InputError(f"output directory {out_dir!r} is not empty; pass --force to replace the export in it "
                         "(it is only replaced once the quantised export passed the accuracy guard)")
    fp32 = load_backend(export_dir, threads=threads)
    m = fp32.manifest
    if m.precision != "fp32":
        raise InputError(f"{export_dir} holds {m.precision} graphs; quantise an fp32 export (`vlmedge export "
                         "--precision fp32 ...`)")
    settings = settings or QuantSettings(mode=default_mode(m.target))
    settings.check()
    graphs = [n for n, s in m.stages.items() if s.kind == "onnx"]
    stages = list(stages) if stages else graphs
    unknown = [s for s in stages if s not in graphs]
    if unknown:
        raise InputError(f"stage {unknown[0]!r} is not a graph of this export (graphs: {', '.join(graphs)})")
    calib = load_calibration(calib_dir)
    _warn_overlap(calib.provenance, eval_seeds, log)
    cal_idx, held_idx = calib.split(held_out)
    method = m.method.spec

    t0 = time.perf_counter()
    log(f"[quantize] recording graph inputs: {len(cal_idx)} calibration frames through {method} on the fp32 export")
    cap = capture(fp32, method, calib, cal_idx, questions=questions,
                  progress=lambda s: log(f"[quantize]   {s}"))
    log(f"[quantize] recorded runs per stage: {cap.count()}")

    staging = os.path.join(os.path.dirname(os.path.abspath(out_dir)),
                           f".{os.path.basename(os.path.abspath(out_dir))}.partial-{os.getpid()}")
    if os.path.exists(staging):
        shutil.rmtree(staging)
    copy_export(export_dir, staging)
    try:
        per_stage = {}
        for i, name in enumerate(stages, 1):
            spec = m.stages[name]
            t1 = time.perf_counter()
            src = os.path.join(export_dir, spec.file)
            replace_graph(staging, spec.file)
            per_stage[name] = quantize_graph(src, os.path.join(staging, spec.file), name, settings,
                                             cap.feeds.get(name, []))
            log(f"[quantize] {i}/{len(stages)} {name}: {per_stage[name]['form']} in {time.perf_counter() - t1:.1f}s")
        record = {"settings": settings.to_dict(), "stages": per_stage,
                  "calibration": {"directory": os.path.abspath(calib_dir), "provenance": calib.provenance,
                                  "frames": len(cal_idx), "held_out_frames": len(held_idx),
                                  "runs_per_stage": cap.count(), "questions": list(questions)},
                  "source_export": {"directory": os.path.abspath(export_dir), "created": m.created},
                  "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")}
        staged = _write_manifest(m, staging, record, file_entries)
        int8 = load_backend(staging, threads=threads)

        log(f"[quantize] guard: outputs on {len(held_idx)} held-out frames")
        held = capture(fp32, method, calib, held_idx, questions=questions, max_per_stage=32)
        errors, agree = output_errors(fp32, int8, {k: v for k, v in held.feeds.items() if k in stages})
        end = None
        if eval_seeds:
            log(f"[quantize] guard: camworld seeds {eval_seeds[0]}..{eval_seeds[1] - 1}, fp32 then int8")
            end = accuracy_and_speed(fp32, int8, method, eval_seeds, progress=lambda s: log(f"[quantize]   {s}"))
        report = GuardReport(outputs=errors, next_token_agreement=agree,
                             accuracy_fp32=end["fp32"]["accuracy"] if end else None,
                             accuracy_int8=end["int8"]["accuracy"] if end else None,
                             frame_ms_fp32=end["fp32"]["frame_ms"] if end else None,
                             frame_ms_int8=end["int8"]["frame_ms"] if end else None,
                             seeds=list(eval_seeds) if eval_seeds else None,
                             questions=end["fp32"]["questions"] if end else 0, max_drop=max_drop,
                             per_type={k: {"fp32": end["fp32"]["per_type"][k], "int8": end["int8"]["per_type"][k]}
                                       for k in end["fp32"]["per_type"]} if end else {})
        log(report.table())
        if not report.passed and not accept_drop:
            raise AccuracyDropError(
                f"int8 keeps {report.retention:.1%} of fp32 accuracy, below the {1 - max_drop:.0%} floor; nothing was "
                f"written to {out_dir}. Try --mode static --calibrate-method entropy or percentile, quantise fewer "
                "stages (--stages), record a larger calibration set, or pass --accept-drop to keep it anyway", report)
        record["guard"] = {**report.to_dict(), "accepted_drop": bool(accept_drop and not report.passed)}
        with open(os.path.join(staging, REPORT_NAME), "w") as f:
            json.dump(record["guard"], f, indent=2)
        int8 = None
        staged = _write_manifest(m, staging, record, file_entries)
        prepare_out_dir(out_dir, force)
        for name in os.listdir(staging):
            shutil.move(os.path.join(staging, name), os.path.join(out_dir, name))
        log(f"[quantize] wrote {out_dir} in {time.perf_counter() - t0:.1f}s")
        return Manifest.load(out_dir), report
    finally:
        if os.path.isdir(staging):
            shutil.rmtree(staging)


def _warn_overlap(provenance: dict, seeds, log) -> None:
    """A set recorded from a camworld evaluation seed the guard then scores on would calibrate on the test."""
    seed = provenance.get("seed")
    if provenance.get("kind") == "camworld" and seeds and isinstance(seed, int) and seeds[0] <= seed < seeds[1]:
        log(f"[quantize] warning: the calibration set was recorded from camworld seed {seed}, one of the guard's "
            f"evaluation seeds {seeds[0]}..{seeds[1] - 1}; its accuracy is optimistic. Record from a training seed "
            "(< 1,000,000) or move --eval-seeds")


def _write_manifest(m, directory: str, record: dict, file_entries):
    import copy

    out = copy.deepcopy(m)
    out.precision = "int8"
    out.quantization = record
    for name, info in record["stages"].items():
        out.stages[name].attrs = {**out.stages[name].attrs, "quantization": info}
        out.stages[name].attrs.pop("check", None)  # the fp32 export's ORT-vs-torch check no longer describes it
    out.tuning = None  # a tuned setting was measured on the fp32 graphs; tune the int8 export again
    out.engines = None  # engines of the fp32 graphs do not run the int8 ones; build them again from these
    out.files = file_entries(directory)
    out.notes = list(out.notes) + [f"int8 ({record['settings']['mode']}) from `vlmedge calibrate quantize`"]
    out.save(directory)
    return out
