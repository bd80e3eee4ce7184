"""`vlmedge calibrate quantize`: int8 graphs of the reference export, what the guard measures and refuses."""
from __future__ import annotations

import collections
import json
import os

import numpy as np
import onnx
import pytest

from vlmedge.calibration import guard as guard_mod
from vlmedge.calibration.capture import capture
from vlmedge.calibration.int8_export import REPORT_NAME, AccuracyDropError, quantize_export
from vlmedge.calibration.quantize import QuantSettings
from vlmedge.calibration.record import load
from vlmedge.errors import InputError
from vlmedge.export.manifest import Manifest
from vlmedge.runtime import StreamingSession
from vlmedge.runtime.backends.onnxruntime import load_backend

from conftest import CALIB_METHOD as METHOD


@pytest.fixture(scope="module")
def dynamic_int8(calib_export, calib_set, tmp_path_factory):
    out = tmp_path_factory.mktemp("q") / "int8"
    manifest, report = quantize_export(calib_export, calib_set, str(out), eval_seeds=(1_000_000, 1_000_012),
                                       log=lambda s: None)
    return str(out), manifest, report


def _ops(path):
    return collections.Counter(n.op_type for n in onnx.load(path, load_external_data=False).graph.node)


def test_capture_records_every_graph_with_a_growing_cache(calib_export, calib_set):
    cs = load(calib_set)
    cap = capture(load_backend(calib_export), METHOD, cs, list(range(8)), ask_every=4, max_per_stage=None)
    assert len(cap.feeds["vision"]) == 8 and cap.feeds["vision"][0]["pixels"].shape == (1, 3, 96, 96)
    past = [f["past_key_0"].shape[2] for f in cap.feeds["llm"]]
    assert past[0] == 0 and max(past) > 8 * 40  # 8 frames of 48 kept tokens + trailer, then question steps
    assert len(cap.answers) == 2 * 8  # 8 questions after frames 4 and 8
    assert len(cap.frame_ms) == 8 and all(t > 0 for t in cap.frame_ms)


def test_dynamic_int8_export_is_quantised_valid_and_close(dynamic_int8, calib_export):
    out, manifest, report = dynamic_int8
    m = Manifest.load(out, verify=True)  # every file checksummed, schema 2
    assert m.precision == "int8" and m.quantization["settings"]["mode"] == "dynamic"
    assert m.method.spec == Manifest.load(calib_export).method.spec
    for stage in ("vision", "llm"):
        ops = _ops(os.path.join(out, m.stages[stage].file))
        assert ops["DynamicQuantizeLinear"] + ops["MatMulInteger"] >= 8, ops
        assert "dynamic int8" in m.stages[stage].attrs["quantization"]["form"]
    fp32_bytes = sum(e.bytes for r, e in Manifest.load(calib_export).files.items() if r.startswith("llm.onnx"))
    int8_bytes = sum(e.bytes for r, e in m.files.items() if r.startswith("llm.onnx"))
    assert int8_bytes < 0.4 * fp32_bytes  # int8 weights: about a quarter, plus scales
    # per-layer errors of the LLM's KV and of the vision features, on held-out frames
    layers = [k for k in report.outputs["llm"] if k.startswith("present_key_")]
    assert len(layers) == m.model.num_layers
    assert all(report.outputs["llm"][k]["mean_rel_err"] < 0.02 for k in layers), report.outputs["llm"]
    assert report.outputs["vision"]["features"]["mean_rel_err"] < 0.03
    assert report.next_token_agreement >= 0.9
    assert report.questions > 40 and report.retention is not None and report.passed
    saved = json.load(open(os.path.join(out, REPORT_NAME)))
    assert saved["passed"] and saved["outputs"]["llm"]["logits"]["max_rel_err"] == pytest.approx(
        report.outputs["llm"]["logits"]["max_rel_err"])


def test_int8_export_answers_through_the_session(dynamic_int8, calib_export):
    from vlmedge.models import camworld

    stream = camworld.generate(1_000_003, split="eval")
    answers = []
    for d in (calib_export, dynamic_int8[0]):
        s = StreamingSession(load_backend(d), METHOD, keep_logits=True)
        for i, f in enumerate(stream.frames):
            s.push_frame(f, time_s=i / stream.fps)
        answers.append(s.ask(stream.questions[0].text))
    assert answers[0].text and answers[1].text == answers[0].text
    a, b = answers[0].logits[0].float().numpy(), answers[1].logits[0].float().numpy()  # first answer token
    # dynamic int8 of every LLM matmul: under 5% on the 135-minute reference model, 5.2% on the 220-minute one
    # (its logits are sharper); the answer is the same
    assert np.linalg.norm(a - b) / np.linalg.norm(a) < 0.08


def test_static_qdq_is_symmetric_int8_for_tensorrt(calib_export, calib_set, tmp_path):
    out = tmp_path / "qdq"
    settings = QuantSettings(mode="static", calibrate_method="percentile")
    manifest, report = quantize_export(calib_export, calib_set, str(out), settings, stages=["vision"], eval_seeds=None,
                                       log=lambda s: None)
    model = onnx.load(os.path.join(out, manifest.stages["vision"].file))
    inits = {t.name: t for t in model.graph.initializer}
    zps = [n.input[2] for n in model.graph.node if n.op_type in ("QuantizeLinear", "DequantizeLinear")
           and len(n.input) > 2]
    assert len(zps) > 20
    for name in zps:  # TensorRT's explicit quantisation: int8 with zero points 0
        z = onnx.numpy_helper.to_array(inits[name])
        assert z.dtype == np.int8 and not z.any()
    assert manifest.stages["llm"].attrs.get("quantization") is None  # only the stages asked for
    assert manifest.quantization["stages"]["vision"]["calibration_runs"] == 12  # 16 frames, every 4th held out
    assert report.outputs["vision"]["features"]["mean_rel_err"] < 0.1
    assert report.retention is None and report.passed  # no camworld run asked for


def test_int4_llm_weights(calib_export, calib_set, tmp_path):
    out = tmp_path / "int4"
    manifest, report = quantize_export(calib_export, calib_set, str(out), QuantSettings(llm_weights="int4"),
                                       stages=["llm"], eval_seeds=None, log=lambda s: None)
    assert _ops(os.path.join(out, "llm.onnx"))["MatMulNBits"] >= 4 * 7  # q, k, v, o, gate, up, down per layer
    assert report.outputs["llm"]["logits"]["mean_rel_err"] < 0.1 and report.next_token_agreement >= 0.8


def test_guard_refuses_a_drop_and_leaves_the_output_alone(calib_export, calib_set, tmp_path, monkeypatch):
    def fake(fp32, int8, method, seeds, progress=None):  # the policy under test, not the measurement
        row = {"per_type": {"overall": 0.0}, "questions": 100}
        return {"fp32": {**row, "accuracy": 0.50, "frame_ms": 10.0}, "int8": {**row, "accuracy": 0.45, "frame_ms": 8.0}}

    monkeypatch.setattr("vlmedge.calibration.int8_export.accuracy_and_speed", fake)
    out = tmp_path / "int8"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    with pytest.raises(AccuracyDropError, match=r"90\.0% of fp32 accuracy, below the 97% floor") as err:
        quantize_export(calib_export, calib_set, str(out), stages=["vision"], eval_seeds=(1_000_000, 1_000_001), force=True,
                        log=lambda s: None)
    assert err.value.report.retention == pytest.approx(0.9)
    assert os.listdir(out) == ["keep.txt"]
    assert not [p for p in os.listdir(tmp_path) if ".partial" in p]  # no staging left behind
    manifest, report = quantize_export(calib_export, calib_set, str(out), stages=["vision"], eval_seeds=(1_000_000, 1_000_001),
                                       force=True, accept_drop=True, log=lambda s: None)
    assert manifest.quantization["guard"]["accepted_drop"] is True and not report.passed
    assert (out / "keep.txt").read_text() == "mine"  # files that are not the export's stay


def test_bad_requests_are_refused(calib_export, calib_set, tmp_path):
    with pytest.raises(InputError, match="must differ from --engine"):
        quantize_export(calib_export, calib_set, calib_export, log=lambda s: None)
    busy = tmp_path / "busy"
    busy.mkdir()
    (busy / "x").write_text("x")
    with pytest.raises(InputError, match="--force"):
        quantize_export(calib_export, calib_set, str(busy), log=lambda s: None)
    with pytest.raises(InputError, match="not a graph of this export"):
        quantize_export(calib_export, calib_set, str(tmp_path / "o"), stages=["vip"], log=lambda s: None)
    with pytest.raises(InputError, match="calibration method"):
        quantize_export(calib_export, calib_set, str(tmp_path / "o"), QuantSettings(mode="static", calibrate_method="kl"),
                        log=lambda s: None)
    with pytest.raises(InputError, match="quantise an fp32 export"):
        quantize_export(_int8_stub(calib_export, tmp_path), calib_set, str(tmp_path / "o2"), log=lambda s: None)


def _int8_stub(src, tmp_path):
    import shutil

    d = tmp_path / "already"
    shutil.copytree(src, d)
    m = Manifest.load(str(d))
    m.precision = "int8"
    m.save(str(d))
    return str(d)


def test_rel_err():
    a = np.array([3.0, 4.0])
    assert guard_mod.rel_err(a, a) == 0.0
    assert guard_mod.rel_err(a, np.array([3.0, 4.5])) == pytest.approx(0.1)


def test_calibrating_on_an_evaluation_stream_is_flagged():
    from vlmedge.calibration.int8_export import _warn_overlap

    said = []
    _warn_overlap({"kind": "camworld", "seed": 1_000_005}, (1_000_000, 1_000_200), said.append)
    _warn_overlap({"kind": "camworld", "seed": 7}, (1_000_000, 1_000_200), said.append)
    _warn_overlap({"kind": "file", "seed": None}, (1_000_000, 1_000_200), said.append)
    assert len(said) == 1 and "seed 1000005" in said[0] and "optimistic" in said[0]
