"""TensorRT engines as part of an export, everything that runs without TensorRT: the manifest's `engines` record
(validated, kept across saves, replaced by a rebuild), `vlmedge export --engines`, `vlmedge build-engines`, and how
backends are chosen for an export directory. Engine building itself needs a GPU + TensorRT (tests/test_tensorrt.py,
scripts/gpu-check); here `build_engines` is replaced only where a test checks what the CLI does with its result."""
from __future__ import annotations

import json
import os
import shutil

import pytest

from vlmedge.cli import main
from vlmedge.export.manifest import MANIFEST_NAME, Manifest, ManifestError
from vlmedge.export.trt import engine as E

HAVE_TRT = E.tensorrt_available()


def _copy(src: str, dst) -> str:
    shutil.copytree(src, str(dst))
    return str(dst)


def _record(stages, trt="10.13.0", tag=""):
    return {s: {"file": f"{s}.engine", "precision": "fp16", "profiles": {}, "trt_version": trt,
                "plugin_version": None, "plugins": {}, "build_s": 0.5, "tag": tag} for s in stages}


def _write_engines(d, stages, content=b"engine bytes of "):
    for s in stages:
        with open(os.path.join(d, f"{s}.engine"), "wb") as f:
            f.write(content + s.encode())


# ----- the manifest record -----
def test_engines_survive_a_manifest_save(tiny_export, tmp_path):
    d = _copy(tiny_export, tmp_path / "exp")
    _write_engines(d, ("vision", "llm"))
    E.write_engine_record(d, _record(("vision", "llm")))
    m = Manifest.load(d)
    assert set(m.engines) == {"vision", "llm"}
    m.save(d)  # e.g. `calibrate tune` rewriting the manifest must not drop the engines
    again = Manifest.load(d)
    assert again.engines == m.engines and {"vision.engine", "llm.engine"} <= set(again.files)


def test_rebuild_replaces_the_record_and_its_files(tiny_export, tmp_path):
    d = _copy(tiny_export, tmp_path / "exp")
    _write_engines(d, ("vision", "llm"))
    E.write_engine_record(d, _record(("vision", "llm")))
    E.write_engine_record(d, _record(("vision",), tag="second"))
    m = Manifest.load(d)
    assert list(m.engines) == ["vision"] and m.engines["vision"]["tag"] == "second"
    assert "llm.engine" not in m.files and "vision.engine" in m.files


@pytest.mark.parametrize("edit,match", [
    (lambda data: data["engines"].update(nope={"file": "vision.engine"}), "'nope' names no stage"),
    (lambda data: data["files"].pop("llm.engine"), "'llm' engine file 'llm.engine' has no checksum entry"),
    (lambda data: data["engines"]["llm"].pop("file"), "'llm' engine file None"),
])
def test_hand_edited_engine_records_are_refused(tiny_export, tmp_path, edit, match):
    d = _copy(tiny_export, tmp_path / "exp")
    _write_engines(d, ("vision", "llm"))
    E.write_engine_record(d, _record(("vision", "llm")))
    path = os.path.join(d, MANIFEST_NAME)
    with open(path) as f:
        data = json.load(f)
    edit(data)
    with open(path, "w") as f:
        json.dump(data, f)
    with pytest.raises(ManifestError, match=match):
        Manifest.load(d)


def test_quantized_copy_leaves_engines_behind(tiny_export, tmp_path):
    from vlmedge.calibration.quantize import copy_export

    d = _copy(tiny_export, tmp_path / "exp")
    _write_engines(d, ("vision", "llm"))
    E.write_engine_record(d, _record(("vision", "llm")))
    copy_export(d, str(tmp_path / "staging"))
    left = sorted(os.listdir(tmp_path / "staging"))
    assert not [n for n in left if n.endswith(E.ENGINE_SUFFIX)] and MANIFEST_NAME not in left
    assert "vision.onnx" in left and "llm.onnx" in left


# ----- vlmedge export --engines / vlmedge build-engines -----
@pytest.mark.skipif(HAVE_TRT, reason="checks the no-TensorRT path")
def test_export_auto_skips_engines_and_says_how(tmp_path, capsys):
    out = tmp_path / "desk"
    assert main(["export", "--tiny", "llava_onevision", "--target", "desktop", "--out", str(out)]) == 0
    text = capsys.readouterr().out
    assert "TensorRT engines not built: TensorRT is not installed" in text
    assert f"vlmedge build-engines {out}" in text
    m = Manifest.load(str(out))
    assert m.target == "desktop" and m.engines is None


@pytest.mark.skipif(HAVE_TRT, reason="checks the no-TensorRT path")
def test_export_engines_build_fails_before_exporting(tmp_path, capsys):
    out = tmp_path / "never"
    assert main(["export", "--tiny", "llava_onevision", "--target", "desktop", "--engines", "build",
                 "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert "--engines build: TensorRT is not installed" in err and "pip install tensorrt" in err
    assert not out.exists()  # refused up front: no half export
    assert main(["export", "--tiny", "llava_onevision", "--engines", "build", "--out", str(out)]) == 2
    assert "target 'cpu' runs with ONNX Runtime" in capsys.readouterr().err


@pytest.mark.skipif(HAVE_TRT, reason="checks the no-TensorRT path")
def test_build_engines_without_tensorrt_says_what_to_install(tiny_export, tmp_path, capsys):
    d = _copy(tiny_export, tmp_path / "exp")
    before = open(os.path.join(d, MANIFEST_NAME)).read()
    assert main(["build-engines", d]) == 2
    err = capsys.readouterr().err
    assert "TensorRT is not installed" in err and "ONNX Runtime" in err
    assert open(os.path.join(d, MANIFEST_NAME)).read() == before


def test_build_engines_records_and_merges_a_partial_rebuild(tiny_export, tmp_path, monkeypatch, capsys):
    """What the command does with `build_engines`' result (the build itself is TensorRT's, tested on a GPU)."""
    d = _copy(tiny_export, tmp_path / "exp")
    calls = []

    def fake_build(export_dir, target, precision="fp16", stages=None, **kw):
        calls.append((target, precision, stages, kw["max_context"]))
        names = stages or ["vision", "llm"]
        _write_engines(export_dir, names, content=f"built {len(calls)} ".encode())
        return _record(names, tag=str(len(calls)))

    monkeypatch.setattr(E, "build_engines", fake_build)
    assert main(["build-engines", d, "--max-context", "1024"]) == 0
    assert calls[-1] == ("desktop", "fp16", None, 1024)  # a cpu export's engines default to the desktop target
    assert main(["build-engines", d, "--stages", "llm", "--precision", "fp32"]) == 0
    assert calls[-1][:3] == ("desktop", "fp32", ["llm"])
    m = Manifest.load(d)  # checksums of the rebuilt llm engine verify
    assert m.engines["vision"]["tag"] == "1" and m.engines["llm"]["tag"] == "2"
    assert "engines recorded in" in capsys.readouterr().out


# ----- which backend runs an export -----
def test_auto_backend_is_onnxruntime_without_engines_or_tensorrt(tiny_export, tmp_path):
    from vlmedge.runtime.backends import pick_backend
    from vlmedge.runtime.backends.onnxruntime import OrtAdapter
    from vlmedge.runtime.model_source import open_model

    assert pick_backend(tiny_export) == "onnxruntime"
    d = _copy(tiny_export, tmp_path / "exp")
    _write_engines(d, ("vision", "llm"))
    E.write_engine_record(d, _record(("vision", "llm")))
    if not HAVE_TRT:
        assert pick_backend(d) == "onnxruntime"  # engines recorded but nothing here can run them
        adapter, what = open_model(d, "auto")
        assert isinstance(adapter, OrtAdapter) and "ONNX Runtime" in what


@pytest.mark.skipif(HAVE_TRT, reason="checks the no-TensorRT path")
def test_tensorrt_backend_asked_for_without_tensorrt(tiny_export, tmp_path, capsys):
    from vlmedge.runtime.backends import load_backend

    d = _copy(tiny_export, tmp_path / "exp")
    _write_engines(d, ("vision", "llm"))
    E.write_engine_record(d, _record(("vision", "llm")))
    with pytest.raises(E.TensorRTMissingError, match="TensorRT is not installed"):
        load_backend(d, "tensorrt")
    assert main(["eval", "--engine", d, "--backend", "tensorrt", "--seeds", "1000000+1"]) == 2
    assert "TensorRT is not installed" in capsys.readouterr().err
    with pytest.raises(ManifestError, match="records no TensorRT engines"):
        load_backend(tiny_export, "tensorrt")
