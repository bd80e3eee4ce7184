"""`vlmedge export` + the ONNX Runtime backend: graphs equal the torch adapters (tiny configs of all three
families), the session runs unchanged on them, and a damaged or hand-edited export is refused.

Tolerances (fp32): vision tokens 1e-4 relative to the largest value; stream logits atol 1e-4 (measured
~3e-7 on these configs); greedy answers token for token.
"""
import dataclasses
import json
import os
import shutil

import numpy as np
import pytest
import torch

from conftest import FAMILIES, make_frames
from vlmedge.compression.baselines import NoCompression
from vlmedge.errors import InputError, UnknownNameError
from vlmedge.export import export_model
from vlmedge.export.manifest import MANIFEST_NAME, Manifest, ManifestError
from vlmedge.runtime import StreamingSession
from vlmedge.runtime.backends import load_backend

VISION_RTOL = 1e-4
LOGITS_ATOL = 1e-4
QUESTION = "what color is the square ?"


@pytest.fixture(scope="module", params=FAMILIES)
def exported(request, tiny_adapters, tmp_path_factory):
    """(family, torch adapter, export dir, ORT backend): one dynamo export per family for the module, made for
    STC (its vision graph is the plain one plus the blocks' internals, so every plain method runs on it too)."""
    family = request.param
    adapter = tiny_adapters[family]
    out = str(tmp_path_factory.mktemp(f"export_{family}"))
    export_model(adapter, out, "stc", source=f"tiny:{family}:seed=0", log=lambda m: None)
    return family, adapter, out, load_backend(out, threads=1)


def _rel(a, b):
    a, b = a.detach().float(), b.detach().float()
    return float((a - b).abs().max() / b.abs().max().clamp_min(1e-12))


def test_manifest_records_stages_and_runtime(exported):
    family, adapter, out, backend = exported
    m = backend.manifest
    assert m.model.family == family and m.method.name == "stc" and m.method.spec.startswith("stc:")
    audio = ["audio"] if adapter.has_audio else []
    assert list(m.stages) == ["embed", "vision", "vision_stc_select", *audio, "llm"]
    assert {m.stages["vision"].exporter, m.stages["llm"].exporter} == {"dynamo"}  # the preferred exporter works
    llm = m.stages["llm"]
    assert [t.name for t in llm.inputs[:3]] == ["inputs_embeds", "position_ids", "logits_positions"]
    assert llm.input("inputs_embeds").shape[1] == "seq" and llm.input("past_key_0").shape[2] == "past"
    assert llm.input("position_ids").shape == ([3, 1, "seq"] if adapter.positions.rows == 3 else [1, "seq"])
    vis = m.stages["vision"]
    assert vis.attrs["frame_size"] == list(adapter.frame_size) and vis.input("pixels").shape == [1, 3, *adapter.frame_size]
    assert vis.attrs["check"]["max_rel_err"] < VISION_RTOL
    assert m.runtime.positions["kind"] == ("mrope" if adapter.positions.rows == 3 else "rope1d")
    assert backend.prompt == adapter.prompt
    assert all(len(e.sha256) == 64 for e in m.files.values()) and "llm.onnx" in m.files
    assert backend.providers == ["CPUExecutionProvider"] or "CPUExecutionProvider" in backend.providers


def test_vision_tokens_match_torch(exported):
    family, adapter, out, backend = exported
    for frame in make_frames(3, seed=5):
        ref, got = adapter.encode_frame(frame), backend.encode_frame(frame)
        assert got.grid_hw == ref.grid_hw and got.features.shape == ref.features.shape
        assert _rel(got.features, ref.features) <= VISION_RTOL
        assert got.trailer.shape == ref.trailer.shape
        if ref.trailer.numel():
            assert _rel(got.trailer, ref.trailer) <= VISION_RTOL


def test_text_embedding_and_all_position_logits(exported):
    family, adapter, out, backend = exported
    ids = adapter.tokenize(adapter.prompt.prefix + " what is there ?")
    torch.testing.assert_close(backend.embed_text(ids), adapter.embed_text(ids).float())
    assert backend.tokenize("what is there ?").tolist() == adapter.tokenize("what is there ?").tolist()
    from vlmedge.models.positions import PositionState

    pos = adapter.positions.text(PositionState(), ids.numel())
    ref = adapter.forward_llm(adapter.embed_text(ids), pos, adapter.new_cache(), last_only=False)
    cache = backend.new_cache()
    got = backend.forward_llm(backend.embed_text(ids), pos, cache, last_only=False)
    assert cache.get_seq_length() == ids.numel()
    torch.testing.assert_close(got, ref, atol=LOGITS_ATOL, rtol=1e-4)
    cache.crop(-3)
    assert cache.get_seq_length() == ids.numel() - 3


@pytest.mark.parametrize("method", ["none", "uniform:ratio=0.25", "stc:tokens=6", "script:ratio=0.25"])
def test_stream_logits_and_answer_match_torch(exported, method):
    family, adapter, out, backend = exported
    frames = make_frames(3)
    answers, tokens = [], []
    for ad in (adapter, backend):
        session = StreamingSession(ad, method, keep_logits=True)
        for i, f in enumerate(frames):
            session.push_frame(f, time_s=float(i))
        before = session.stream_tokens
        answers.append(session.ask(QUESTION, max_new_tokens=4))
        assert session.stream_tokens == before, "ask() must leave the cache as it was"
        tokens.append(before)
    ref, got = answers
    assert tokens[0] == tokens[1]
    assert got.token_ids == ref.token_ids and got.text == ref.text and got.stopped_by == ref.stopped_by
    assert got.requeried_frames == ref.requeried_frames == (3 if method.startswith("script") else 0)
    torch.testing.assert_close(torch.stack(got.logits), torch.stack(ref.logits), atol=LOGITS_ATOL, rtol=1e-4)


def test_stc_cacher_and_pruner_match_torch_frame_by_frame(exported):
    """Refresh frames run the vision graph (with the blocks' internals out), selective frames the
    vision_stc_select graph fed the stream's references: tokens and kept indices equal torch's."""
    from vlmedge.compression import FrameContext, get_method

    family, adapter, out, backend = exported
    stc = get_method("stc:tokens=6")
    st_t, st_o = stc.new_state(), stc.new_state()
    for i, frame in enumerate(make_frames(5, seed=11)):
        ref, got = stc.encode_frame(adapter, frame, st_t), stc.encode_frame(backend, frame, st_o)
        assert st_o.last_refresh == st_t.last_refresh == (i % 2 == 0)  # refresh, selective, refresh, ...
        assert _rel(got.features, ref.features) <= VISION_RTOL, f"frame {i}"
        ctx = FrameContext(frame_index=i, time_s=float(i))
        keep_t, keep_o = stc.compress(ref, ctx, st_t).keep, stc.compress(got, ctx, st_o).keep
        assert keep_o.tolist() == keep_t.tolist(), f"frame {i}"
    assert (st_o.refreshes, st_o.selective) == (3, 2)
    spec = backend.manifest.stage("vision_stc_select")
    n_tokens = spec.attrs["vision_tokens"]
    assert spec.attrs["dynamic_tokens"] == max(1, int(n_tokens * 0.25)) and spec.attrs["check"]["max_rel_err"] < 1e-4
    assert spec.input("ref_k").shape[:2] == [spec.attrs["vision_blocks"], n_tokens]
    # the default "tail": the selected-rows pass in the first blocks, every row in the last, one stacked
    # ref_attn_q slot holding each block's attention output or queries
    assert spec.attrs["block_modes"] == stc.block_modes(spec.attrs["vision_blocks"])
    assert set(spec.attrs["block_modes"]) == {"selected", "all"}
    assert spec.attrs["references"] == ["ref_k", "ref_v", "ref_attn_q", "ref_mlp"]


def test_stc_settings_the_export_cannot_serve_are_refused(exported):
    family, adapter, out, backend = exported
    session = StreamingSession(backend, "stc:ratio=0.5")
    with pytest.raises(InputError, match="stc:ratio=0.25"):
        session.push_frame(make_frames(1)[0], time_s=0.0)
    for spec in ("stc:attention=selected", "stc:attention=all", "stc:tail=1"):
        session = StreamingSession(backend, spec)
        with pytest.raises(InputError, match="stc:attention=tail,tail=0.25"):
            session.push_frame(make_frames(1)[0], time_s=0.0)
    session = StreamingSession(backend, "stc:cacher=false,tokens=4")  # the pruner alone needs no extra graph
    assert session.push_frame(make_frames(1)[0], time_s=0.0).tokens_kept == 4


def test_audio_stage_matches_torch_and_takes_one_second_chunks(exported):
    family, adapter, out, backend = exported
    assert backend.has_audio is adapter.has_audio
    if not adapter.has_audio:
        with pytest.raises(InputError, match="no audio stage"):
            backend.encode_audio(None)
    else:
        wave = np.random.default_rng(4).uniform(-0.5, 0.5, 16000).astype(np.float32)
        ref, got = adapter.encode_audio(wave), backend.encode_audio(wave)
        for name in ("features", "q", "k"):
            assert getattr(got, name).shape == getattr(ref, name).shape
            assert _rel(getattr(got, name), getattr(ref, name)) <= VISION_RTOL, name
        assert got.chunks == ref.chunks and got.seconds_per_token == ref.seconds_per_token
        with pytest.raises(InputError, match="1 s chunks"):
            backend.encode_audio(wave[:8000])
    with pytest.raises(InputError, match="taps"):
        backend.encode_frame(make_frames(1)[0], taps=[0])
    frame = make_frames(1)[0]  # the generic stage runner gives what encode_frame gives
    out = backend.run_stage("vision", {"pixels": backend.pixels(frame).numpy()})
    torch.testing.assert_close(torch.from_numpy(out["features"]), backend.encode_frame(frame).features)


@pytest.mark.parametrize("method", ["none", "omnizip"])
def test_audio_video_stream_matches_torch(exported, method):
    """Omni models on ONNX Runtime: video and audio a second at a time, OmniZip's audio-guided windows included."""
    family, adapter, out, backend = exported
    if not adapter.has_audio:
        pytest.skip("video-only family")
    rng = np.random.default_rng(2)
    waves = [rng.uniform(-0.5, 0.5, 16000).astype(np.float32) for _ in range(3)]
    answers = []
    for ad in (adapter, backend):
        session = StreamingSession(ad, method, keep_logits=True)
        for i, f in enumerate(make_frames(6)):
            session.push_frame(f, time_s=i * 0.5)
            if i % 2 == 1:
                session.push_audio(waves[i // 2], time_s=float(i // 2))
        answers.append(session.ask("what sound played ?", max_new_tokens=4))
    ref, got = answers
    assert got.token_ids == ref.token_ids and got.stream_tokens == ref.stream_tokens
    torch.testing.assert_close(torch.stack(got.logits), torch.stack(ref.logits), atol=LOGITS_ATOL, rtol=1e-4)


# ----- a damaged or hand-edited export is refused -----
@pytest.fixture(scope="module")
def llava_export(tiny_adapters, tmp_path_factory):
    out = str(tmp_path_factory.mktemp("export_src"))
    export_model(tiny_adapters["llava_onevision"], out, "none", exporter="torchscript", log=lambda m: None)
    return out


@pytest.fixture
def llava_copy(llava_export, tmp_path):
    dst = str(tmp_path / "copy")
    shutil.copytree(llava_export, dst)
    return dst


def _edit_manifest(d, fn):
    path = os.path.join(d, MANIFEST_NAME)
    with open(path) as f:
        data = json.load(f)
    fn(data)
    with open(path, "w") as f:
        json.dump(data, f)


def test_loader_refuses_missing_file(llava_copy):
    os.remove(os.path.join(llava_copy, "vision.onnx"))
    with pytest.raises(ManifestError, match=r"vision\.onnx is missing"):
        load_backend(llava_copy)


def test_loader_refuses_altered_file(llava_copy):
    path = os.path.join(llava_copy, "embed_tokens.npy")
    with open(path, "r+b") as f:  # same size, one byte changed: only the checksum can tell
        f.seek(-5, os.SEEK_END)
        b = f.read(1)
        f.seek(-5, os.SEEK_END)
        f.write(bytes([b[0] ^ 0xFF]))
    with pytest.raises(ManifestError, match="fails its checksum"):
        load_backend(llava_copy)
    load_backend(llava_copy, verify=False, threads=1)  # sizes still match; checksums skipped on request
    with open(path, "ab") as f:
        f.write(b"\0")
    with pytest.raises(ManifestError, match="bytes but the manifest records"):
        load_backend(llava_copy, verify=False)


def test_loader_refuses_newer_schema_and_bad_manifests(llava_copy):
    good = Manifest.load(llava_copy)
    _edit_manifest(llava_copy, lambda d: d.update(schema_version=d["schema_version"] + 1))
    with pytest.raises(ManifestError, match="newer than this vlmedge reads.*upgrade vlmedge"):
        load_backend(llava_copy)
    _edit_manifest(llava_copy, lambda d: d.update(schema_version=good.schema_version, precision="int3"))
    with pytest.raises(ManifestError, match="precision 'int3'"):
        load_backend(llava_copy)
    _edit_manifest(llava_copy, lambda d: (d.update(precision="fp32"), d["stages"]["llm"].update(file=7)))
    with pytest.raises(ManifestError, match=r"stages\.llm\.file must be str"):
        load_backend(llava_copy)
    _edit_manifest(llava_copy, lambda d: (d["stages"]["llm"].update(file="llm.onnx"), d["files"].update({"../x": d["files"]["llm.onnx"]})))
    with pytest.raises(ManifestError, match="inside the export directory"):
        load_backend(llava_copy)
    os.remove(os.path.join(llava_copy, MANIFEST_NAME))
    with pytest.raises(ManifestError, match="not a vlmedge export directory"):
        load_backend(llava_copy)


# ----- the CLI, --force and the TorchScript path -----
def test_cli_refuses_non_empty_out_dir_without_force(tmp_path, capsys):
    from vlmedge.cli import main

    out = tmp_path / "out"
    out.mkdir()
    (out / "notes.txt").write_text("keep me")
    assert main(["export", "--tiny", "llava_onevision", "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert "not empty" in err and "--force" in err
    assert sorted(os.listdir(out)) == ["notes.txt"]
    assert main(["export", "--tiny", "nosuchfamily", "--out", str(tmp_path / "x")]) == 2
    assert "supported: llava_onevision" in capsys.readouterr().err


def test_cli_force_replaces_an_export_with_torchscript_graphs(tmp_path, capsys, tiny_adapters):
    from vlmedge.cli import main

    out = tmp_path / "out"
    args = ["export", "--tiny", "llava_onevision", "--method", "uniform:ratio=0.25", "--out", str(out),
            "--exporter", "torchscript"]
    assert main(args) == 0
    (out / "notes.txt").write_text("keep me")
    assert main(args + ["--force", "--target", "orin-nano", "--precision", "fp32"]) == 0  # orin's default is fp16
    text = capsys.readouterr().out
    assert "stage" in text and "vision.onnx" in text and "llm.onnx" in text and "torchscript" in text
    backend = load_backend(str(out), threads=1)
    m = backend.manifest
    assert (out / "notes.txt").read_text() == "keep me" and "notes.txt" not in m.files
    assert m.target == "orin-nano" and m.method.spec == "uniform:ratio=0.25" and backend.method_spec == m.method.spec
    assert {s.exporter for s in m.stages.values()} == {"numpy", "torchscript"}
    adapter = tiny_adapters["llava_onevision"]  # the CLI's --tiny seed 0 is the same model
    frame = make_frames(1, seed=9)[0]
    ref, got = adapter.encode_frame(frame), backend.encode_frame(frame)
    assert _rel(got.features, ref.features) <= VISION_RTOL and _rel(got.trailer, ref.trailer) <= VISION_RTOL


# ----- extending the exporter without editing it -----
def test_a_registered_stage_can_replace_vision(monkeypatch, tiny_adapters, tmp_path):
    from vlmedge.export import stages

    @dataclasses.dataclass
    class CachedVision(NoCompression):  # a method that runs the vision tower its own way (as STC does)
        def encode_frame(self, adapter, frame, state):
            return adapter.encode_frame(frame)

    job = stages.ExportJob(adapter=tiny_adapters["qwen2_5_vl"], method=CachedVision(), out_dir=str(tmp_path))
    assert [s.name for s in stages.plan(job)] == ["embed", "vision", "llm"]
    with pytest.raises(stages.ExportError, match="changes how the vision tower runs"):
        export_model(tiny_adapters["qwen2_5_vl"], str(tmp_path / "a"), CachedVision(), log=lambda m: None)

    class MyVision(stages.StageExporter):
        name, order, replaces, handles_vision = "vision_custom", 10, ("vision",), True

        def applies(self, job):
            return isinstance(job.method, CachedVision)

    monkeypatch.setitem(stages._STAGES, "vision_custom", MyVision)
    assert [s.name for s in stages.plan(job)] == ["embed", "vision_custom", "llm"]
    assert [s.name for s in stages.plan(dataclasses.replace(job, method=NoCompression()))] == ["embed", "vision", "llm"]


def test_vision_taps_are_exported_in_raster_order(tiny_adapters, tmp_path):
    """A method that reads vision-block outputs gets them as extra graph outputs (Qwen: window order undone)."""
    from vlmedge.export import stages

    @dataclasses.dataclass
    class Tapped(NoCompression):
        taps = (0, -1)

    adapter = tiny_adapters["qwen2_5_vl"]
    job = stages.ExportJob(adapter=adapter, method=Tapped(), out_dir=str(tmp_path), log=lambda m: None)
    spec = stages.VisionStage().export(job)
    assert [t.name for t in spec.outputs] == ["features", "trailer", "tap_0", "tap_-1"]
    import onnxruntime as ort

    sess = ort.InferenceSession(str(tmp_path / spec.file), providers=["CPUExecutionProvider"])
    frame = make_frames(1, seed=2)[0]
    got = sess.run(None, {"pixels": adapter.pixels(frame).numpy()})
    ref = adapter.encode_frame(frame, taps=[0, -1])
    for t, g in zip([0, -1], got[2:]):
        assert _rel(torch.from_numpy(g), ref.taps[t]) <= VISION_RTOL


def test_bad_options_and_providers(tiny_adapters, tmp_path):
    from vlmedge.runtime.backends.onnxruntime import choose_providers

    a = tiny_adapters["llava_onevision"]
    with pytest.raises(InputError, match="precision 'int8'.*calibrate"):
        export_model(a, str(tmp_path / "p"), precision="int8")
    with pytest.raises(InputError, match="target 'jetson'"):
        export_model(a, str(tmp_path / "t"), target="jetson")
    with pytest.raises(UnknownNameError, match="provider"):
        choose_providers(["NoSuchExecutionProvider"])
    assert choose_providers()[-1] == "CPUExecutionProvider"
    with pytest.raises(UnknownNameError, match="backend"):
        load_backend(str(tmp_path), backend="tensorflow")


def test_fp16_export_records_dtypes_and_stays_close(tiny_adapters, tmp_path):
    """fp16 graphs (meant for GPU providers) still run on ORT's CPU provider for these ops; answers stay close."""
    adapter = tiny_adapters["llava_onevision"]
    m = export_model(adapter, str(tmp_path), "none", precision="fp16", exporter="torchscript", log=lambda m: None)
    assert next(adapter.model.parameters()).dtype == torch.float32, "exporting fp16 must not touch the caller's model"
    assert m.stages["llm"].input("inputs_embeds").dtype == "float16" and m.stages["llm"].input("past_key_0").dtype == "float16"
    assert m.stages["llm"].output("logits").dtype == "float32" and m.stages["embed"].outputs[0].dtype == "float16"
    backend = load_backend(str(tmp_path), threads=1)
    frames = make_frames(2)
    logits = []
    for ad in (adapter, backend):
        s = StreamingSession(ad, "none", keep_logits=True)
        for i, f in enumerate(frames):
            s.push_frame(f, time_s=float(i))
        logits.append(torch.stack(s.ask(QUESTION, max_new_tokens=2).logits))
    torch.testing.assert_close(logits[1], logits[0], atol=2e-2, rtol=2e-2)


def test_auto_falls_back_to_torchscript_and_says_so(monkeypatch, tiny_adapters, tmp_path):
    from vlmedge.export.stages import ExportError

    real = torch.onnx.export

    def dynamo_fails(*args, dynamo=True, **kwargs):
        if dynamo:
            raise RuntimeError("simulated dynamo failure")
        return real(*args, dynamo=False, **kwargs)

    monkeypatch.setattr(torch.onnx, "export", dynamo_fails)
    logs = []
    m = export_model(tiny_adapters["llava_onevision"], str(tmp_path / "a"), log=logs.append)
    assert m.stages["vision"].exporter == m.stages["llm"].exporter == "torchscript"
    assert any("vision" in n and "simulated dynamo failure" in n for n in m.notes)
    assert any("the dynamo exporter failed" in line for line in logs)

    def all_fail(*args, **kwargs):
        raise RuntimeError("nothing works")

    monkeypatch.setattr(torch.onnx, "export", all_fail)
    with pytest.raises(ExportError, match=r"stage 'vision' could not be exported.*dynamo failed.*torchscript failed"):
        export_model(tiny_adapters["llava_onevision"], str(tmp_path / "b"), log=logs.append)


def test_jetson_target_takes_precision_and_sizing_from_the_profile(tiny_adapters, tmp_path):
    from vlmedge.export.manifest import Manifest

    adapter = tiny_adapters["qwen2_5_vl"]
    m = export_model(adapter, str(tmp_path), "uniform:tokens=6", target="orin-nano", exporter="torchscript",
                     log=lambda m: None)
    plan = m.runtime.memory_plan
    assert m.precision == "fp16" and plan["profile"] == "orin-nano-8gb" and plan["gpu_arch"] == "sm_87"
    assert m.runtime.max_frames == plan["max_frames"] > 0 and plan["workspace_bytes"] > 0
    assert Manifest.load(str(tmp_path)).runtime.memory_plan == plan  # survives the round trip and validation
    with pytest.raises(Exception, match="fp8|FP8|precision"):
        export_model(adapter, str(tmp_path / "x"), "none", target="orin-nx", precision="fp8", log=lambda m: None)
    cpu = export_model(adapter, str(tmp_path / "cpu"), "none", exporter="torchscript", log=lambda m: None)
    assert cpu.precision == "fp32" and cpu.runtime.memory_plan is None
