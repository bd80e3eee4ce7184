"""The `vlmedge` custom-op domain in ONNX: schemas (check_model full_check, shape inference), the ONNX Runtime
implementation against the torch references (indices exact, rows bit-exact, data-dependent sizes), the torch custom
ops and their dynamo export, and the errors a user gets when the ops are not registered or a kernel fails."""
from __future__ import annotations

import zlib

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from onnx import TensorProto, helper

from vlmedge.export.ops import graphs, onnxruntime_ops as oo, reference as ref, schemas, torch_ops
from vlmedge.export.ops.graphs import OpSpec, make_model

ALL_OPS = list(schemas.OPS)

pytestmark = [  # torch.export's own notices during the dynamo exports
    pytest.mark.filterwarnings("ignore:# The axis name:UserWarning"),
    pytest.mark.filterwarnings("ignore:`isinstance\\(treespec, LeafSpec\\)`:FutureWarning"),
]


def _spec(op: str, dtype: str = "float32", **attrs) -> OpSpec:
    """A one-op spec with symbolic sizes (one session serves every size)."""
    D = 6
    inputs = {
        "StcSelect": {"keys": (dtype, ["T", "C"]), "ref_keys": (dtype, ["T", "C"])},
        "StcMerge": {"cached": (dtype, ["T", D]), "fresh": (dtype, ["n", D]), "indices": ("int64", ["n"])},
        "PruneCompact": {"logits": (dtype, ["N"]), "features": (dtype, ["N", D])},
        "KeepCount": {"scores": (dtype, ["N"]), "features": (dtype, ["N", D]), "count": ("int64", [])},
        "DppGreedyMap": {"kernel": (dtype, ["N", "N"]), "relevance": (dtype, ["N"])},
        "DpcKnnSelect": {"x": (dtype, ["N", D])},
    }[op]
    if op == "DppGreedyMap":
        attrs.setdefault("steps", 6)
    if op == "DpcKnnSelect":
        attrs.setdefault("n", 4)
    return OpSpec(op, inputs, attrs)


def _reference(op: str, feeds: dict[str, np.ndarray], attrs: dict) -> tuple[np.ndarray, ...]:
    """The torch reference on the same inputs, with the settings as written (decimal), outputs as numpy."""
    tensors = [torch.from_numpy(a) for a in feeds.values()]
    kw = graphs.full_attrs(op, attrs)
    if op == "KeepCount":
        kw["largest"] = bool(kw["largest"])
    out = ref.REFERENCES[op](*tensors, **kw)
    out = out if isinstance(out, tuple) else (out,)
    return tuple(o.numpy() for o in out)


def _same(got: np.ndarray, want: np.ndarray) -> None:
    """Same dtype, shape and bytes: indices exact, feature rows bit for bit."""
    assert got.dtype == want.dtype, (got.dtype, want.dtype)
    assert got.shape == want.shape, (got.shape, want.shape)
    assert got.tobytes() == want.tobytes(), (got, want)


# ---------------------------------------------------------------------------------------------------------------------
# schemas


def test_register_is_idempotent_and_complete():
    schemas.register()
    assert schemas.register() == []  # second call: nothing new, no error
    for op in ref.OPS:
        s = onnx.defs.get_schema(op, schemas.VERSION, schemas.DOMAIN)
        assert (s.domain, s.since_version, s.name) == ("vlmedge", 1, op)
        assert s.has_type_and_shape_inference_function
    imp = schemas.opset_import()
    assert (imp.domain, imp.version) == (ref.DOMAIN, ref.VERSION) == ("vlmedge", 1)


def test_register_keeps_a_compatible_registration_and_refuses_a_different_one():
    schemas.register()
    try:
        onnx.defs.deregister_schema("KeepCount", schemas.VERSION, schemas.DOMAIN)
        onnx.defs.register_schema(schemas.schema("KeepCount"))  # someone else registered the same op first
        assert schemas.register() == []
        onnx.defs.deregister_schema("KeepCount", schemas.VERSION, schemas.DOMAIN)
        S = onnx.defs.OpSchema
        onnx.defs.register_schema(S("KeepCount", schemas.DOMAIN, schemas.VERSION, "an older draft",
                                    inputs=[S.FormalParameter("scores", "tensor(float)")],
                                    outputs=[S.FormalParameter("indices", "tensor(int64)")]))
        with pytest.raises(RuntimeError, match="another schema of vlmedge::KeepCount"):
            schemas.register()
    finally:
        onnx.defs.deregister_schema("KeepCount", schemas.VERSION, schemas.DOMAIN)
        assert schemas.register() == ["KeepCount"]


@pytest.mark.parametrize("op", ALL_OPS)
def test_one_op_graph_passes_full_check(op):
    model = make_model(_spec(op))
    onnx.checker.check_model(model, full_check=True)
    (node,) = model.graph.node
    assert (node.domain, node.op_type) == ("vlmedge", op)
    assert any(o.domain == "vlmedge" and o.version == 1 for o in model.opset_import)
    kinds = {a.name: a.type for a in node.attribute}  # every attribute written, typed as the schema says
    assert kinds == {a.name: (onnx.AttributeProto.FLOAT if a.kind == "float" else onnx.AttributeProto.INT)
                     for a in schemas.OPS[op].attrs}


def _out_shapes(model):
    return [[d.dim_value if d.HasField("dim_value") else d.dim_param for d in o.type.tensor_type.shape.dim]
            for o in model.graph.output]


def test_shape_inference_static_and_symbolic_sizes():
    f = "float32"
    # static where shapes and attributes decide it; 0.7 is read as 0.7 (float32 0.699999988 would floor 7 to 6)
    assert _out_shapes(make_model(OpSpec("StcSelect", {"keys": (f, [10, 4]), "ref_keys": (f, [10, 4])},
                                         {"ratio": 0.7}))) == [[7]]
    assert _out_shapes(make_model(OpSpec("StcSelect", {"keys": (f, [0, 4]), "ref_keys": (f, [0, 4])}))) == [[0]]
    assert _out_shapes(make_model(OpSpec("DppGreedyMap", {"kernel": (f, [5, 5]), "relevance": (f, [5])},
                                         {"steps": 9}))) == [[5]]
    assert _out_shapes(make_model(OpSpec("DpcKnnSelect", {"x": (f, [8, 3])}, {"n": 3}))) == [[3]]
    keep = OpSpec("KeepCount", {"scores": (f, [12]), "features": (f, [12, 5]), "count": ("int64", [])},
                  constants={"count": 20})
    assert _out_shapes(make_model(keep)) == [[12], [12, 5]]
    # data-dependent: symbolic, shared between an op's two outputs
    assert _out_shapes(make_model(_spec("PruneCompact"))) == [["K"], ["K", 6]]
    assert _out_shapes(make_model(_spec("KeepCount"))) == [["count"], ["count", 6]]
    assert _out_shapes(make_model(_spec("StcSelect"))) == [["n"]]
    assert _out_shapes(make_model(_spec("StcMerge"))) == [["T", 6]]


@pytest.mark.parametrize("inputs, attrs, match", [
    ({"keys": ("float32", [10]), "ref_keys": ("float32", [10, 4])}, {}, "must be 2-D"),
    ({"keys": ("float32", [10, 4]), "ref_keys": ("float32", [9, 4])}, {}, "same shape"),
    ({"keys": ("int64", [10, 4]), "ref_keys": ("int64", [10, 4])}, {}, "unsupported type"),
    ({"keys": ("float32", [10, 4]), "ref_keys": ("float64", [10, 4])}, {}, "inconsistent type"),
    ({"keys": ("float32", [10, 4]), "ref_keys": ("float32", [10, 4])}, {"nope": 1}, "no attribute"),
])
def test_invalid_graphs_are_rejected(inputs, attrs, match):
    with pytest.raises(Exception, match=match):
        make_model(OpSpec("StcSelect", inputs, attrs))


def test_required_attribute_is_enforced():
    with pytest.raises(ValueError, match="steps"):
        make_model(OpSpec("DppGreedyMap", {"kernel": ("float32", [4, 4]), "relevance": ("float32", [4])}))
    node = helper.make_node("DppGreedyMap", ["k", "r"], ["o"], domain="vlmedge")  # built by hand, no steps
    g = helper.make_graph([node], "g", [helper.make_tensor_value_info("k", TensorProto.FLOAT, [4, 4]),
                                        helper.make_tensor_value_info("r", TensorProto.FLOAT, [4])],
                          [helper.make_tensor_value_info("o", TensorProto.INT64, ["S"])])
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 18), schemas.opset_import()], ir_version=10)
    with pytest.raises(Exception, match="steps"):
        onnx.checker.check_model(m, full_check=True)


# ---------------------------------------------------------------------------------------------------------------------
# ONNX Runtime against the references


def _cases(op: str, rng: np.random.Generator, dt):
    """(feeds, attrs) per case: a few sizes, including the data-dependent edges (nothing kept, everything kept)."""
    D = 6
    if op == "StcSelect":
        for t, ratio in [(1, 0.25), (10, 0.7), (37, 0.3), (64, 1.0)]:
            keys, ref_keys = (rng.standard_normal((t, 5)).astype(dt) for _ in range(2))
            yield {"keys": keys, "ref_keys": ref_keys}, {"ratio": ratio}
    elif op == "StcMerge":
        for t, n in [(1, 1), (9, 3), (40, 40)]:
            idx = np.sort(rng.choice(t, n, replace=False)).astype(np.int64)
            yield {"cached": rng.standard_normal((t, D)).astype(dt), "fresh": rng.standard_normal((n, D)).astype(dt),
                   "indices": idx}, {}
    elif op == "PruneCompact":
        for n, shift, attrs in [(1, 0.0, {}), (20, 0.0, {}), (50, 1.5, {"max_ratio": 0.3}), (30, -6.0, {"min_keep": 0}),
                                (30, -6.0, {"min_keep": 4}), (25, 2.0, {"threshold": 0.9})]:
            yield {"logits": (rng.standard_normal(n) * 2 + shift).astype(dt),
                   "features": rng.standard_normal((n, D)).astype(dt)}, attrs
    elif op == "KeepCount":
        for n, count, largest in [(1, 1, 1), (16, 0, 1), (16, 5, 1), (16, 5, 0), (16, 16, 1), (16, 40, 0), (9, -3, 1)]:
            scores = np.round(rng.standard_normal(n), 1).astype(dt)  # rounded: ties, which go to the lower index
            yield {"scores": scores, "features": rng.standard_normal((n, D)).astype(dt),
                   "count": np.array(count, np.int64)}, {"largest": largest}
    elif op == "DppGreedyMap":
        for n, rank, steps in [(1, 1, 3), (12, 12, 6), (20, 3, 8), (16, 4, 30)]:  # rank < steps: early stop, tail
            h = rng.standard_normal((n, rank))
            h /= np.linalg.norm(h, axis=1, keepdims=True)
            r = np.round(rng.random(n), 1)
            r[: n // 2 if steps > n else 0] = 0.0  # zero relevance: the variances run out, the tail orders by r
            kernel = (r[:, None] * (h @ h.T) * r[None, :]).astype(dt)
            yield {"kernel": kernel, "relevance": r.astype(dt)}, {"steps": steps}
    elif op == "DpcKnnSelect":
        for n, keep, k in [(1, 1, 5), (12, 4, 5), (30, 10, 3), (8, 0, 5), (8, 20, 5)]:
            yield {"x": rng.standard_normal((n, D)).astype(dt)}, {"n": keep, "k": k}


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("op", ALL_OPS)
def test_onnxruntime_equals_reference(op, dtype):
    rng = np.random.default_rng(zlib.crc32(f"{op}-{dtype}".encode()))
    sessions: dict[tuple, oo.Session] = {}
    sizes = set()
    for feeds, attrs in _cases(op, rng, np.dtype(dtype)):
        key = tuple(sorted(attrs.items()))
        if key not in sessions:  # attributes are part of the graph; shapes are symbolic
            sessions[key] = oo.inference_session(make_model(_spec(op, dtype, **attrs)))
        got = sessions[key].run(None, feeds)
        want = _reference(op, feeds, attrs)
        assert len(got) == len(want)
        for g, w in zip(got, want):
            _same(g, w)
        sizes.add(got[0].shape[0])
    assert len(sizes) > 1  # the cases did produce different (data-dependent) output sizes


def test_float_attribute_reads_as_the_decimal():
    """ONNX stores ratio=0.7 as float32 0.699999988; int(10 * that) would be 6. Every implementation reads 0.7."""
    assert schemas.attr_float(np.float32(0.7)) == 0.7 and schemas.attr_float(0.7) == 0.7
    keys, refk = torch.randn(10, 4), torch.randn(10, 4)
    want = ref.stc_select(keys, refk, 0.7)
    assert want.shape == (7,)
    sess = oo.inference_session(make_model(_spec("StcSelect", ratio=0.7)))
    _same(sess.run(None, {"keys": keys.numpy(), "ref_keys": refk.numpy()})[0], want.numpy())
    _same(torch.ops.vlmedge.stc_select(keys, refk, 0.7).numpy(), want.numpy())


def test_graph_without_attributes_gets_defaults():
    """A graph from elsewhere may omit attributes (ONNX defaults apply); the Python ops need them written."""
    node = helper.make_node("PruneCompact", ["logits", "features"], ["indices", "kept"], domain="vlmedge")
    g = helper.make_graph([node], "g", [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N"]),
                                        helper.make_tensor_value_info("features", TensorProto.FLOAT, ["N", 3])],
                          [helper.make_tensor_value_info("indices", TensorProto.INT64, ["K"]),
                           helper.make_tensor_value_info("kept", TensorProto.FLOAT, ["K", 3])])
    model = helper.make_model(g, opset_imports=[helper.make_opsetid("", 18), schemas.opset_import()], ir_version=10)
    onnx.checker.check_model(model, full_check=True)
    with pytest.raises(Exception) as err:  # plain session on registered options: the PyOp wants every attribute
        ort.InferenceSession(model.SerializeToString(), oo.session_options(), providers=["CPUExecutionProvider"])
    assert "with_defaults" in oo.missing_ops_hint(err.value)
    feeds = {"logits": np.linspace(-2, 2, 9, dtype=np.float32), "features": np.ones((9, 3), np.float32)}
    got = oo.inference_session(model).run(None, feeds)
    for gg, w in zip(got, _reference("PruneCompact", feeds, {})):
        _same(gg, w)
    assert len(model.graph.node[0].attribute) == 0  # the caller's model is left as it was


def test_session_from_path_and_bytes(tmp_path):
    model = make_model(_spec("DpcKnnSelect", n=3))
    path = tmp_path / "dpc.onnx"
    onnx.save(model, path)
    x = np.random.default_rng(1).standard_normal((10, 6)).astype(np.float32)
    want = _reference("DpcKnnSelect", {"x": x}, {"n": 3})[0]
    for m in (path, str(path), model.SerializeToString()):
        _same(oo.inference_session(m).run(None, {"x": x})[0], want)


def test_ops_are_declared_once_per_process():
    import importlib

    importlib.reload(oo)  # a reload must not declare the Python ops again (ORT would refuse duplicate kernels)
    test_session_options_registers_once_per_options()


def test_session_options_registers_once_per_options():
    opts = oo.session_options(oo.session_options())  # twice on the same options: registered once
    model = make_model(_spec("StcSelect"))
    sess = ort.InferenceSession(model.SerializeToString(), opts, providers=["CPUExecutionProvider"])
    keys = np.eye(4, dtype=np.float32)
    assert sess.run(None, {"keys": keys, "ref_keys": keys})[0].shape == (1,)
    assert oo.available()


# ---------------------------------------------------------------------------------------------------------------------
# errors


def test_unregistered_ops_give_an_actionable_error():
    model = make_model(_spec("StcSelect"))
    with pytest.raises(Exception) as err:
        ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    hint = oo.missing_ops_hint(err.value)
    assert hint is not None and "vlmedge::StcSelect" in hint and "session_options()" in hint
    assert oo.missing_ops_hint(RuntimeError("something else entirely")) is None


def test_unsupported_dtype_gives_an_actionable_error():
    with pytest.raises(oo.MissingOpsError, match="float16.*runs float32, float64"):
        oo.inference_session(make_model(_spec("StcMerge", "float16")))


def test_kernel_failure_raises_instead_of_aborting():
    """An exception inside a PyOp would end the process; the kernels record it and run() raises it."""
    sess = oo.inference_session(make_model(_spec("PruneCompact")))
    logits = np.array([0.5, np.nan, 1.0], np.float32)
    with pytest.raises(oo.KernelError, match="NaN") as err:
        sess.run(None, {"logits": logits, "features": np.ones((3, 6), np.float32)})
    assert err.value.__cause__ is not None
    # the same failure on a plain session: placeholders out, check_errors() raises
    plain = ort.InferenceSession(make_model(_spec("PruneCompact")).SerializeToString(), oo.session_options(),
                                 providers=["CPUExecutionProvider"])
    idx, kept = plain.run(None, {"logits": logits, "features": np.ones((3, 6), np.float32)})
    assert idx.shape == (0,) and kept.shape == (0, 6)
    with pytest.raises(oo.KernelError):
        oo.check_errors()
    oo.check_errors()  # reported once
    ok = sess.run(None, {"logits": np.array([2.0, -2.0], np.float32), "features": np.ones((2, 6), np.float32)})
    assert ok[0].tolist() == [0]


# ---------------------------------------------------------------------------------------------------------------------
# torch ops and the dynamo export


def test_torch_ops_eager_equal_reference():
    g = torch.Generator().manual_seed(3)
    keys, refk = torch.randn(20, 8, generator=g), torch.randn(20, 8, generator=g)
    assert torch.equal(torch.ops.vlmedge.stc_select(keys, refk, 0.25), ref.stc_select(keys, refk, 0.25))
    cached, fresh, idx = torch.randn(20, 4, generator=g), torch.randn(3, 4, generator=g), torch.tensor([1, 5, 7])
    assert torch.equal(torch.ops.vlmedge.stc_merge(cached, fresh, idx), ref.stc_merge(cached, fresh, idx))
    logits, feats = torch.randn(20, generator=g), torch.randn(20, 4, generator=g)
    for a, b in zip(torch.ops.vlmedge.prune_compact(logits, feats, 0.5, 0.3, 2),
                    ref.prune_compact(logits, feats, 0.5, 0.3, 2)):
        assert torch.equal(a, b)
    for a, b in zip(torch.ops.vlmedge.keep_count(logits, feats, torch.tensor(6), False),
                    ref.keep_count(logits, feats, 6, False)):
        assert torch.equal(a, b)
    L = feats @ feats.T
    assert torch.equal(torch.ops.vlmedge.dpp_greedy_map(L, logits, 7, 1e-10), ref.dpp_greedy_map(L, logits, 7))
    assert torch.equal(torch.ops.vlmedge.dpc_knn_select(feats, 5, 5), ref.dpc_knn_select(feats, 5))


class _Cacher(torch.nn.Module):
    """STC select + merge of recomputed rows, then GlimpsePrune's data-dependent compaction, then a plain op."""

    def forward(self, keys, ref_keys, cached, recomputed, logits):
        idx = torch.ops.vlmedge.stc_select(keys, ref_keys, 0.3)
        merged = torch.ops.vlmedge.stc_merge(cached, recomputed.index_select(0, idx), idx)
        kidx, kept = torch.ops.vlmedge.prune_compact(logits, merged, 0.5, 0.0, 1)
        return merged, kidx, kept * 2.0


class _Video(torch.nn.Module):
    """The other three ops: a run-time keep count, the DPP order and DPC-KNN."""

    def forward(self, scores, feats, count, kernel, relevance):
        cidx, ckept = torch.ops.vlmedge.keep_count(scores, feats, count, True)
        order = torch.ops.vlmedge.dpp_greedy_map(kernel, relevance, 5, 1e-10)
        dpc = torch.ops.vlmedge.dpc_knn_select(feats, 4, 5)
        return cidx, ckept + 1.0, order, dpc


def _cacher_args(t, seed):
    g = torch.Generator().manual_seed(seed)
    return tuple(torch.randn(*s, generator=g) for s in [(t, 8), (t, 8), (t, 6), (t, 6), (t,)])


def _video_args(n, seed):
    g = torch.Generator().manual_seed(seed)
    h = torch.nn.functional.normalize(torch.randn(n, 3, generator=g), dim=-1)
    return (torch.randn(n, generator=g), torch.randn(n, 6, generator=g), torch.tensor(n // 3), h @ h.T,
            torch.rand(n, generator=g))


@pytest.fixture(scope="module")
def exported_cacher():
    t = torch.export.Dim("T", min=2, max=4096)
    prog = torch_ops.export(_Cacher().eval(), _cacher_args(12, 0), None, dynamic_shapes=({0: t},) * 5,
                            verbose=False)
    return prog.model_proto


def _assert_runs_like_eager(model, module, args_list):
    sess = oo.inference_session(model)
    names = [i.name for i in model.graph.input]
    for args in args_list:
        got = sess.run(None, {n: a.numpy() for n, a in zip(names, args)})
        want = module(*args)
        assert len(got) == len(want)
        for gg, w in zip(got, want):
            _same(gg, w.numpy())


def test_export_emits_vlmedge_ops_and_runs_in_onnxruntime(exported_cacher):
    model = exported_cacher
    ops = [(n.domain, n.op_type) for n in model.graph.node if n.domain == "vlmedge"]
    assert ops == [("vlmedge", "StcSelect"), ("vlmedge", "StcMerge"), ("vlmedge", "PruneCompact")]
    assert {(o.domain, o.version) for o in model.opset_import} >= {("vlmedge", 1)}
    attrs = {a.name: helper.get_attribute_value(a) for n in model.graph.node if n.op_type == "StcSelect"
             for a in n.attribute}
    assert attrs["ratio"] == pytest.approx(0.3)
    onnx.checker.check_model(model, full_check=True)
    # dynamic T: two frame sizes through one session; K differs per input
    _assert_runs_like_eager(model, _Cacher(), [_cacher_args(12, 1), _cacher_args(31, 2)])


def test_exported_graph_without_the_ops_fails_actionably(exported_cacher):
    with pytest.raises(Exception) as err:
        ort.InferenceSession(exported_cacher.SerializeToString(), providers=["CPUExecutionProvider"])
    assert "session_options()" in (oo.missing_ops_hint(err.value) or "")


def test_export_translates_the_other_ops():
    model = torch_ops.export(_Video().eval(), _video_args(15, 0), None, verbose=False).model_proto
    assert [n.op_type for n in torch_ops.vlmedge_nodes(model)] == ["KeepCount", "DppGreedyMap", "DpcKnnSelect"]
    onnx.checker.check_model(model, full_check=True)
    _assert_runs_like_eager(model, _Video(), [_video_args(15, 1)])
