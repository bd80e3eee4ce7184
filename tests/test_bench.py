"""`vlmedge bench`: the variant plan, the timing and memory readings, the reports and the command end to end."""
import json
import math

import pytest

from vlmedge.bench import report, shapes
from vlmedge.bench.memory import PeakMemory, kv_bytes
from vlmedge.bench.plan import variants
from vlmedge.bench.run import run_bench
from vlmedge.bench.timing import Measured, time_method
from vlmedge.errors import InputError
from vlmedge.models import camworld


def test_plan_matches_token_counts_across_methods():
    plan, skipped = variants(["none", "uniform", "stc", "script", "omnizip", "glimpse"], [0.327], 196, False)
    specs = {v.label: v.spec for v in plan}
    assert specs["stc 33%"] == "stc:tokens=64" and specs["stc pruner only 33%"] == "stc:cacher=false,tokens=64"
    assert specs["stc cacher only"] == "stc:pruner=false" and specs["uniform 33%"] == "uniform:ratio=0.327"
    assert specs["stc released 33%"] == "stc:tokens=64,context=0,attention=selected"
    assert specs["stc cacher only released"] == "stc:pruner=false,attention=selected"
    assert specs["stc cacher only all"] == "stc:pruner=false,attention=all"
    assert specs["stc all 33%"] == "stc:tokens=64,attention=all"
    assert specs["script dpp-only 33%"] == "script:ratio=0.327,gsp_ratio=0"
    assert specs["script spec kernel 33%"] == "script:ratio=0.327,theta=none,relevance_source=llm_embed"
    assert skipped["omnizip"].startswith("needs an audio")
    assert "glimpse" in skipped or "glimpse ≤33%" in specs
    plan, _ = variants(["glimpse"], [0.111], 144, False, glimpse_weights="W")
    specs = {v.label: v.spec for v in plan}
    assert specs == {"glimpse": "glimpse:weights=W", "glimpse ≤11%": "glimpse:weights=W,max_ratio=0.111",
                     "glimpse spread ≤11%": "glimpse:weights=W,max_ratio=0.111,spread=0.05"}
    with pytest.raises(InputError, match="unknown bench method"):
        variants(["fastv"], [0.5], 196, False)
    with pytest.raises(InputError, match="keep ratios"):
        variants(["uniform"], [1.5], 196, False)


def test_measured_is_median_and_spread():
    m = Measured.of([3.0, 1.0, 2.0, float("nan")])
    assert (m.median, m.spread, len(m.runs)) == (2.0, 2.0, 3)


def test_timing_counts_tokens_kv_and_memory():
    adapter = shapes.build(shapes.get_shape("tiny"))
    streams = [camworld.generate(1_000_000, split="eval")]
    full = time_method(adapter, "none", streams, repeats=1, warmup=0, decode_tokens=2)
    half = time_method(adapter, "uniform:ratio=0.25", streams, repeats=1, warmup=0, decode_tokens=2)
    assert full.value("tokens_in") == 16 and full.value("tokens_kept") == 16 and half.value("tokens_kept") == 4
    assert full.frames_per_run == streams[0].num_frames
    # the KV cache holds prefix + per frame (kept + newline): fewer tokens, proportionally fewer bytes
    per_token = 2 * 2 * 2 * 16 * 4  # layers * (k, v) * kv_heads * head_dim (64 / 4 heads) * fp32
    n_frames = streams[0].num_frames
    assert full.value("kv_mb") * 2**20 - half.value("kv_mb") * 2**20 == pytest.approx(n_frames * 12 * per_token)
    assert full.value("vision_ms") > 0 and full.value("prefill_ms") > 0 and full.value("peak_mb") > 0


def test_kv_bytes_reads_the_cache():
    adapter = shapes.build(shapes.get_shape("tiny"))
    cache = adapter.new_cache()
    assert kv_bytes(cache) == 0
    with PeakMemory() as peak:
        pass
    assert peak.peak_mb > 0


def test_bench_end_to_end_writes_tables(tiny_adapters, tmp_path):
    res = run_bench(methods=["none", "uniform", "stc", "script"], ratios=[0.5], quick=True,
                    seeds=(1_000_000, 1_000_002), shape="tiny", repeats=1, timing_streams=1,
                    accuracy_model=tiny_adapters["llava_onevision"], accuracy_name="tiny")
    labels = [a["label"] for a in res.accuracy]
    assert labels == [t.label for t in res.timing]
    assert labels[:2] == ["none", "uniform 50%"] and "stc cacher only" in labels and "script dpp-only 50%" in labels
    uni = next(a["report"] for a in res.accuracy if a["label"] == "uniform 50%")
    assert uni.tokens_per_frame_std == 0.0 and uni.tokens_per_frame > 0  # a fixed budget: no spread
    md = report.markdown(res)
    assert "| none |" in md and "1.00×" in md and "Accuracy" in md and "audio ms" not in md
    data = json.loads(json.dumps(report.to_json(res)))
    assert {t["label"] for t in data["timing"]} == set(labels)
    pngs = report.plots(res, str(tmp_path))
    for p in pngs:
        assert (tmp_path / p.split("/")[-1]).stat().st_size > 1000
    stc = next(t for t in res.timing if t.label == "stc 50%")
    assert stc.value("tokens_kept") == 8 and not math.isnan(stc.value("vision_ms"))


def test_bench_command_refuses_contradictory_options(capsys):
    from vlmedge.cli import main

    assert main(["bench", "--no-accuracy", "--no-timing"]) == 2
    assert "nothing to measure" in capsys.readouterr().err
    assert main(["bench", "--ratios", "a,b", "--no-timing"]) == 2


def test_backends_compares_torch_and_onnx_runtime_on_exported_models(tmp_path, capsys):
    """`vlmedge bench --backends`: each model is exported for the method, both backends play the same streams,
    and the table holds every metric with its ratio."""
    import json

    from vlmedge.cli import main

    assert main(["bench", "--backends", "--tiny", "--shape", "tiny", "--method", "stc:tokens=4", "--repeats", "1",
                 "--streams", "1", "--out", str(tmp_path)]) == 0
    md = capsys.readouterr().out
    assert md.count("| vision ms / frame |") == 2 and "**per frame, all stages**" in md
    data = json.loads((tmp_path / "backends.json").read_text())
    assert [r["model"] for r in data["rows"]] == ["tiny-random", "tiny"]
    for row in data["rows"]:
        for backend in ("torch", "onnxruntime"):
            m = row[backend]["metrics"]
            assert m["vision_ms"]["median"] > 0 and m["prefill_ms"]["median"] > 0 and m["tokens_kept"]["median"] == 4
        assert (tmp_path / f"export-{row['model']}" / "vision_stc_select.onnx").exists()


def test_accuracy_in_worker_processes_equals_one_process():
    from vlmedge.runtime.model_source import open_model

    source = ("tiny:llava_onevision", "torch")
    model = open_model(*source)[0]
    kw = dict(methods=["none", "uniform", "stc"], ratios=[0.5], seeds=(1_000_000, 1_000_002), do_timing=False,
              accuracy_model=model, accuracy_name="tiny")
    serial = run_bench(**kw)
    parallel = run_bench(**kw, jobs=2, accuracy_source=source)
    assert [a["label"] for a in parallel.accuracy] == [a["label"] for a in serial.accuracy]
    for a, b in zip(serial.accuracy, parallel.accuracy):
        assert a["report"].accuracy == b["report"].accuracy and a["report"].answers == b["report"].answers
        assert a["report"].tokens_per_frame == b["report"].tokens_per_frame
    with pytest.raises(ValueError, match="accuracy_source"):
        run_bench(**kw, jobs=2)


def test_timing_through_onnx_runtime_exports_each_variant_and_cleans_up(tmp_path):
    kw = dict(methods=["none", "uniform", "stc"], ratios=[0.5], seeds=(1_000_000, 1_000_001), shape="tiny",
              repeats=1, timing_streams=1, do_accuracy=False, work_dir=str(tmp_path))
    eager = run_bench(**kw)
    ort = run_bench(**kw, timing_backend="onnxruntime")
    assert ort.config["backend"] == "onnxruntime" and ort.config["device"] == "cpu"
    assert [t.label for t in ort.timing] == [t.label for t in eager.timing]
    for a, b in zip(eager.timing, ort.timing):
        assert b.backend == "onnxruntime"
        assert a.value("tokens_kept") == b.value("tokens_kept") and a.value("tokens_in") == b.value("tokens_in")
        assert b.value("vision_ms") > 0 and b.value("prefill_ms") > 0 and b.value("peak_mb") > 0
    assert not [p for p in tmp_path.iterdir() if p.name.startswith("export-")]  # one export at a time, then none


def test_timing_backend_choice_says_why_tensorrt_cannot_run(monkeypatch):
    import torch

    from vlmedge.bench import exported

    with pytest.raises(InputError, match="timing backend must be one of"):
        exported.resolve_backend("cuda")
    if exported.engines_buildable_here():
        pytest.skip("this machine can build TensorRT engines")
    with pytest.raises(InputError, match="cannot run here"):
        exported.resolve_backend("tensorrt")
    monkeypatch.setattr(exported, "ort_has_cuda", lambda: False)
    assert exported.resolve_backend("auto") == "torch"
    monkeypatch.setattr(exported, "ort_has_cuda", lambda: True)
    assert exported.resolve_backend("auto") == "onnxruntime"
    assert exported.device_of(shapes.build(shapes.get_shape("tiny"))) == "cpu" or torch.cuda.is_available()


def test_stage_clock_waits_for_the_device_on_cuda(monkeypatch, tiny_adapters):
    import torch

    from vlmedge.runtime import StreamingSession

    s = StreamingSession(tiny_adapters["llava_onevision"], "none")
    calls = []
    monkeypatch.setattr(torch.cuda, "synchronize", lambda *a: calls.append(1))
    s.push_frame(camworld.generate(1_000_000, split="eval").frames[0], 0.0)
    assert not calls  # a CPU model never touches CUDA
    s._cuda = True
    s.push_frame(camworld.generate(1_000_000, split="eval").frames[1], 0.5)
    assert len(calls) >= 4  # every stage boundary of the frame


def test_whole_device_peak_samples_used_device_memory(monkeypatch):
    import time

    import torch

    used = iter([100, 300, 200] + [150] * 10_000)
    monkeypatch.setattr(torch.cuda, "synchronize", lambda *a: None)
    monkeypatch.setattr(torch.cuda, "mem_get_info", lambda *a: (1000 - next(used), 1000))
    with PeakMemory("cuda", whole_device=True) as m:
        time.sleep(0.05)
    assert m.peak_mb == 300 / 2**20


def test_omnizip_rows_use_the_papers_ratio_pairs_with_both_baselines_at_the_same_retention():
    from vlmedge.bench.plan import omnizip_rhos

    plan, _ = variants(["none", "omnizip"], [0.45, 0.35], 64, True)
    specs = {v.label: v.spec for v in plan}
    assert specs["omnizip 45%"] == "omnizip:rho_a=0.3,rho_v=0.6,exact_budget=true"  # the paper's "45% retained"
    assert specs["omnizip 35%"] == "omnizip:rho_a=0.4,rho_v=0.7,exact_budget=true"  # and its "35%"
    assert specs["omnizip random 45%"] == "omnizip_random:rho_a=0.3,rho_v=0.6,exact_budget=true"
    assert specs["omnizip video-only 35%"] == "omnizip_videoonly:rho_a=0.4,rho_v=0.7,exact_budget=true"
    # with audio a sixth of the tokens (Omni at 2 fps), each pair keeps its nominal share of all tokens
    for k in (0.45, 0.35, 0.25):
        rho = dict(kv.split("=") for kv in omnizip_rhos(k).split(","))
        kept = (1 - float(rho["rho_a"])) / 6 + (1 - float(rho["rho_v"])) * 5 / 6
        assert kept == pytest.approx(k, abs=1e-3)
    assert omnizip_rhos(0.02) == "rho_a=0.73,rho_v=1" and omnizip_rhos(0.9) == "rho_a=0,rho_v=0.15"


def test_omni_timing_shape_builds_the_thinker_and_times_omnizip_against_its_baselines():
    from vlmedge.bench.shapes import default_shape

    assert default_shape("qwen2_5_omni", quick=True) == "qwen2.5-omni-3b-short"
    assert default_shape("llava_onevision", quick=False) == "siglip-base+qwen2-0.5b"
    big = shapes.get_shape("qwen2.5-omni-3b")
    assert big.tokens_per_frame == 64 and big.family == "qwen2_5_omni"
    shape = shapes.get_shape("tiny-omni")
    adapter = shapes.build(shape)
    assert adapter.has_audio and adapter.family == "qwen2_5_omni"
    res = run_bench(methods=["none", "omnizip"], ratios=[0.45], seeds=(1_000_000, 1_000_001), shape="tiny-omni",
                    repeats=1, timing_streams=1, do_accuracy=False, family="qwen2_5_omni")
    labels = [t.label for t in res.timing]
    assert labels == ["none", "omnizip 45%", "omnizip released 45%", "omnizip random 45%", "omnizip video-only 45%"]
    none, oz, rnd = (next(t for t in res.timing if t.label == x) for x in labels[:3])
    assert none.value("tokens_kept") == none.value("tokens_in") == shape.tokens_per_frame
    # equal retention by construction: the random baseline keeps OmniZip's count in every window
    assert oz.value("tokens_kept") == rnd.value("tokens_kept") < none.value("tokens_kept")
    assert oz.value("prefill_ms") > 0 and none.value("audio_ms") > 0 and oz.value("audio_ms") > 0
    table = report.timing_table(res.timing)
    assert "| audio ms |" in table.split("\n")[0]


def test_omni_accuracy_table_reports_retention_of_all_tokens(tiny_adapters):
    res = run_bench(methods=["none", "omnizip"], ratios=[0.45], seeds=(1_000_000, 1_000_002), do_timing=False,
                    accuracy_model=tiny_adapters["qwen2_5_omni"], accuracy_name="tiny-omni")
    by = {a["label"]: a["report"] for a in res.accuracy}
    assert by["none"].retention is None  # a frame method never drops audio
    for label in ("omnizip 45%", "omnizip random 45%", "omnizip video-only 45%"):
        assert 0.2 < by[label].retention < 0.7 and by[label].audio_retention is not None
    assert by["omnizip 45%"].retention == pytest.approx(by["omnizip random 45%"].retention)
    assert by["omnizip video-only 45%"].audio_retention == 1.0  # video-only keeps every audio token
    rows = report.accuracy_table(res.accuracy).split("\n")
    assert "| kept (video+audio) |" in rows[0]
    oz_row = next(r for r in rows if r.startswith("| omnizip 45% |"))
    assert f"{by['omnizip 45%'].retention:.1%} (audio " in oz_row
    assert next(r for r in rows if r.startswith("| none |")).split(" | ")[2] == "–"


def test_kept_count_shows_its_spread_only_where_it_varies():
    from types import SimpleNamespace

    from vlmedge.runtime.evaluation import kept_text

    assert kept_text(SimpleNamespace(tokens_per_frame=16.0, tokens_per_frame_std=0.0)) == "16.0"
    assert kept_text(SimpleNamespace(tokens_per_frame=24.2, tokens_per_frame_std=5.13)) == "24.2 ± 5.1"
    assert kept_text(SimpleNamespace(tokens_per_frame=24.2)) == "24.2"  # reports written before the field
