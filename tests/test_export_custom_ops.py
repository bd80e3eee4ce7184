"""Exports with the `vlmedge` op domain (`--custom-ops`): the STC selective pass as one StcSelect node per block,
checked by ONNX, run by ONNX Runtime through the onnxruntime-extensions kernels, equal to the torch model."""
from __future__ import annotations

import json
import os

import onnx
import pytest
import torch

from conftest import make_frames
from vlmedge.compression import FrameContext, get_method
from vlmedge.export import export_model
from vlmedge.export.manifest import ManifestError
from vlmedge.export.ops import schemas
from vlmedge.runtime.backends import load_backend


@pytest.fixture(scope="module")
def exported(tiny_adapters, tmp_path_factory):
    adapter = tiny_adapters["llava_onevision"]
    out = str(tmp_path_factory.mktemp("custom_ops"))
    m = export_model(adapter, out, "stc:tokens=6", custom_ops=True, log=lambda s: None)
    return adapter, out, m


def test_graph_holds_the_ops_and_passes_onnx_checking(exported):
    adapter, out, m = exported
    spec = m.stages["vision_stc_select"]
    model = onnx.load(os.path.join(out, spec.file))
    ops = [n for n in model.graph.node if n.domain == "vlmedge"]
    assert [n.op_type for n in ops] == ["StcSelect"] * spec.attrs["vision_blocks"]
    assert not any(n.op_type == "TopK" for n in model.graph.node)  # the decomposition is gone
    assert {(o.domain, o.version) for o in model.opset_import} >= {("vlmedge", 1)}
    schemas.register()
    onnx.checker.check_model(model, full_check=True)
    assert spec.attrs["custom_ops"] == {"domain": "vlmedge", "version": 1, "ops": ["StcSelect"]}
    assert spec.attrs["check"]["max_rel_err"] < 1e-4  # ORT with the custom kernels vs torch at export
    assert any("StcSelect" in n for n in m.notes)


def test_stream_on_ort_equals_torch_with_exact_indices(exported):
    adapter, out, _ = exported
    backend = load_backend(out, threads=1)
    stc = get_method("stc:tokens=6")
    st_t, st_o = stc.new_state(), stc.new_state()
    for i, frame in enumerate(make_frames(5, seed=3)):
        ref, got = stc.encode_frame(adapter, frame, st_t), stc.encode_frame(backend, frame, st_o)
        torch.testing.assert_close(got.features, ref.features.float(), rtol=1e-4, atol=1e-5)
        ctx = FrameContext(frame_index=i, time_s=float(i))
        assert stc.compress(got, ctx, st_o).keep.tolist() == stc.compress(ref, ctx, st_t).keep.tolist()
    assert (st_o.refreshes, st_o.selective) == (3, 2)  # the custom-op graph ran twice


def test_another_op_version_is_refused(exported, tmp_path):
    import shutil

    _, out, _ = exported
    d = tmp_path / "v2"
    shutil.copytree(out, d)
    path = d / "manifest.json"
    data = json.loads(path.read_text())
    data["stages"]["vision_stc_select"]["attrs"]["custom_ops"]["version"] = 2
    path.write_text(json.dumps(data))
    backend = load_backend(str(d), threads=1)
    with pytest.raises(ManifestError, match="version 2, but this vlmedge implements 'vlmedge' version 1"):
        backend.session("vision_stc_select")


def test_custom_ops_need_the_dynamo_exporter(tiny_adapters, tmp_path):
    from vlmedge.export.stages import ExportError

    with pytest.raises(ExportError, match="dynamo exporter"):
        export_model(tiny_adapters["llava_onevision"], str(tmp_path / "x"), "stc", custom_ops=True,
                     exporter="torchscript", log=lambda s: None)
