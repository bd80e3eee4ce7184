"""TensorRT: the plugins (export/trt/plugins.py), the engine builder (export/trt/engine.py) and the TensorRT backend
(runtime/backends/tensorrt.py).

Everywhere: mypy against tensorrt-stubs; the failure messages without TensorRT or a GPU; the plugin-version and
platform checks; the optimisation profiles of a real export; the ONNX rewrite the parser needs; the plugin
descriptors and implementation signatures against a stand-in `tensorrt.plugin`; the AOT kernels against the torch
references (Triton's interpreter) and their PTX launch ABI; the device KV cache (on CPU).
With a CUDA GPU and TensorRT (`@pytest.mark.gpu`, run by scripts/gpu-check): a one-plugin engine per op against
reference.py, and the reference export's engines against ONNX Runtime.
"""
from __future__ import annotations

import dataclasses
import importlib.util
import inspect
import os
import re
import shutil
import subprocess
import sys
import textwrap
import types
import typing

import numpy as np
import onnx
import pytest
import torch
from onnx import helper

from vlmedge.errors import VlmedgeError
from vlmedge.export.manifest import Manifest, ManifestError
from vlmedge.export.ops import reference as ref
from vlmedge.export.ops import schemas
from vlmedge.export.ops.graphs import OpSpec, full_attrs, make_model
from vlmedge.export.trt import engine as E
from vlmedge.export.trt import plugins as P

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TRT_FILES = ["export/trt/__init__.py", "export/trt/plugins.py", "export/trt/engine.py", "runtime/backends/tensorrt.py"]
HAVE_GPU_TRT = torch.cuda.is_available() and E.tensorrt_available()
needs_gpu_trt = pytest.mark.skipif(
    not HAVE_GPU_TRT, reason="needs a CUDA GPU and TensorRT (cuda: %s, tensorrt: %s)"
    % (torch.cuda.is_available(), E.tensorrt_available()))


def _copy(src: str, dst) -> str:
    shutil.copytree(src, str(dst))
    return str(dst)


# ---------------------------------------------------------------------------------------------------------------------
# (a) mypy against tensorrt-stubs


def _split_params(s: str) -> list[str]:
    parts, depth, cur = [], 0, ""
    for ch in s:
        depth += ch in "([{"
        depth -= ch in ")]}"
        if ch == "," and depth == 0:
            parts.append(cur)
            cur = ""
        else:
            cur += ch
    return parts + ([cur] if cur.strip() else [])


def _fix_def(line: str) -> str:
    m = re.match(r"^(\s*def \w+\()(.*)(\)\s*(->.*)?:\s*(\.\.\.)?\s*)$", line)
    if not m:
        return line
    out, seen_default = [], False
    for p in _split_params(m.group(2)):
        q = re.sub(r"^(\s*)in(\s*:)", r"\1in_\2", p)  # `in` is a keyword
        q = re.sub(r":\s*\.\.\.\s*$", ": typing.Any", q)
        if q.strip() == "*":
            seen_default = False
        elif "=" in q:
            seen_default = True
        elif seen_default and not q.strip().startswith("*"):
            q += " = ..."  # a parameter without default after one with a default
        out.append(q)
    return m.group(1) + ",".join(out) + re.sub(r"->\s*\.\.\.\s*:", "-> typing.Any:", m.group(3))


def repaired_stubs(dest: str) -> str | None:
    """A copy of tensorrt-stubs that mypy can parse, or None when the stubs are not installed.

    tensorrt-stubs 10.13 are generated and, as shipped, (1) sit in `tensorrt/` without a py.typed marker, so mypy
    skips them ("module is installed, but missing library stubs"), and (2) do not parse: parameters named `in`,
    parameters without defaults after defaulted ones, `...` as a type, an undefined `capsule`, and a module-level
    `bool: DataType` that shadows the builtin in every `-> bool`. The copy fixes exactly these, and goes on mypy's
    path ahead of site-packages."""
    found = 0
    for pkg in ("tensorrt", "tensorrt_bindings"):
        spec = importlib.util.find_spec(pkg)
        dirs = list(spec.submodule_search_locations or []) if spec else []
        src = next((d for d in dirs if any(f.endswith(".pyi") for f in os.listdir(d))), None)
        if src is None:
            continue
        found += 1
        os.makedirs(os.path.join(dest, pkg), exist_ok=True)
        for fn in os.listdir(src):
            if not fn.endswith(".pyi"):
                continue
            with open(os.path.join(src, fn)) as f:
                lines = f.read().splitlines()
            fixed = []
            for ln in lines:
                if ln.lstrip().startswith("def "):
                    ln = _fix_def(ln)
                if not ln.startswith("bool:"):
                    ln = re.sub(r"(?<![\w.'\"])bool(?![\w'\"])", "builtins.bool", ln)
                fixed.append(re.sub(r"\bcapsule\b", "typing.Any", ln))
            head = 1 if fixed and fixed[0].startswith("from __future__") else 0
            text = "\n".join(fixed[:head] + ["import builtins", "import typing"] + fixed[head:]) + "\n"
            compile(text, fn, "exec")  # parses now
            with open(os.path.join(dest, pkg, fn), "w") as f:
                f.write(text)
    return dest if found == 2 else None


MYPY_CONFIG = """\
[mypy]
mypy_path = {stubs}
python_version = {py}
ignore_missing_imports = True
follow_imports = silent
cache_dir = {cache}
# the stubs' own leftovers are not ours to check
[mypy-tensorrt.*,tensorrt_bindings.*]
ignore_errors = True
# big typed libraries: analysing them costs ~30 s and checks nothing of ours (their types become Any)
[mypy-torch.*,transformers.*,onnxruntime.*,onnx.*,onnxscript.*,triton.*,numpy.*,tokenizers.*,safetensors.*,PIL.*]
follow_imports = skip
"""


def test_mypy_against_tensorrt_stubs(tmp_path):
    pytest.importorskip("mypy")
    stubs = repaired_stubs(str(tmp_path / "stubs"))
    if stubs is None:
        pytest.skip("tensorrt-stubs (tensorrt/*.pyi, tensorrt_bindings/*.pyi) are not installed")
    cfg = tmp_path / "mypy.ini"
    cfg.write_text(MYPY_CONFIG.format(stubs=stubs, py=f"{sys.version_info[0]}.{sys.version_info[1]}",
                                      cache=tmp_path / "cache"))
    # the stubs are really used: a wrong call into them is an error
    bad = tmp_path / "bad.py"
    bad.write_text("def f() -> None:\n    import tensorrt as trt\n    trt.Builder(1)\n")
    cmd = [sys.executable, "-m", "mypy", "--config-file", str(cfg), "--no-error-summary"]
    r = subprocess.run(cmd + [str(bad)], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert 'Argument 1 to "Builder" has incompatible type "int"; expected "ILogger"' in r.stdout, r.stdout + r.stderr
    r = subprocess.run(cmd + TRT_FILES, cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stdout + r.stderr


def test_no_module_level_tensorrt_import():
    """Importing the TensorRT modules never imports TensorRT (they must load on machines without it)."""
    code = ("import sys\nimport vlmedge.export.trt, vlmedge.export.trt.engine, vlmedge.export.trt.plugins\n"
            "import vlmedge.runtime.backends.tensorrt\nassert 'tensorrt' not in sys.modules, 'tensorrt imported'\n")
    r = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120,
                       env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert r.returncode == 0, r.stderr


# ---------------------------------------------------------------------------------------------------------------------
# (b) failure modes without TensorRT / GPU


def _fake_tensorrt(**attrs) -> types.ModuleType:
    m = types.ModuleType("tensorrt")
    m.__dict__.update(attrs)
    return m


def test_tensorrt_missing_says_what_and_how(monkeypatch, tiny_export):
    monkeypatch.setitem(sys.modules, "tensorrt", None)  # import tensorrt -> ImportError
    assert not E.tensorrt_available()
    with pytest.raises(E.TensorRTMissingError) as e:
        E.build_engines(tiny_export, "desktop", log=lambda s: None)
    msg = str(e.value)
    assert isinstance(e.value, VlmedgeError) and "\n" not in msg
    for part in ("TensorRT is not installed", "not importable", "JetPack", "pip install tensorrt",
                 "ONNX Runtime", tiny_export):
        assert part in msg, (part, msg)


def test_stub_only_tensorrt_is_not_tensorrt(monkeypatch):
    """`tensorrt-stubs` alone make `import tensorrt` succeed as a namespace package without libraries."""
    monkeypatch.setitem(sys.modules, "tensorrt", _fake_tensorrt())  # no Builder: stubs only
    assert not E.tensorrt_available()
    with pytest.raises(E.TensorRTMissingError, match="found only type stubs"):
        E.require_tensorrt()
    with pytest.raises(E.TensorRTMissingError):
        P.register_plugins()


def test_no_gpu_says_so(monkeypatch, tiny_export):
    monkeypatch.setitem(sys.modules, "tensorrt", _fake_tensorrt(Builder=object, __version__="10.13.0"))
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(E.NoCudaDeviceError) as e:
        E.build_engines(tiny_export, "desktop", log=lambda s: None)
    assert "no CUDA GPU" in str(e.value) and "ONNX Runtime" in str(e.value) and tiny_export in str(e.value)


def test_build_request_errors(monkeypatch, tiny_export):
    with pytest.raises(E.EngineBuildError, match="GPU targets"):
        E.build_engines(tiny_export, "cpu", log=lambda s: None)
    with pytest.raises(E.EngineBuildError, match="precision 'int4'"):
        E.build_engines(tiny_export, "desktop", precision="int4", log=lambda s: None)
    # a Jetson engine built on another GPU would not run on the Jetson
    monkeypatch.setitem(sys.modules, "tensorrt", _fake_tensorrt(Builder=object, __version__="10.13.0"))
    monkeypatch.setattr(E, "require_cuda", lambda d=None: ("NVIDIA H200", (9, 0)))
    with pytest.raises(E.EngineBuildError, match="built on the Jetson itself.*sm_90"):
        E.build_engines(tiny_export, "orin-nano", log=lambda s: None)
    with pytest.raises(E.EngineBuildError, match="no stage 'nope'"):
        E.build_engines(tiny_export, "desktop", stages=["nope"], log=lambda s: None)


def test_network_mode_rules(tiny_export):
    info = E.inspect_graph(onnx.load(os.path.join(tiny_export, "llm.onnx"), load_external_data=False))
    assert info.plugin_ops == {} and not info.qdq and not info.ort_only and info.float_type == "float32"
    assert E.network_mode("fp16", info) == ("fp16", "weakly-typed")
    assert E.network_mode("fp32", info) == ("fp32", "strongly-typed")
    with pytest.raises(E.EngineBuildError, match="QDQ"):
        E.network_mode("int8", info)
    fp16 = dataclasses.replace(info, float_type="float16")
    assert E.network_mode("fp16", fp16) == ("fp16", "strongly-typed")
    with pytest.raises(E.EngineBuildError, match="fp32 export"):
        E.network_mode("fp32", fp16)
    assert E.network_mode("fp16", dataclasses.replace(info, qdq=True)) == ("int8", "weakly-typed")
    with pytest.raises(E.EngineBuildError, match="MatMulNBits.*--mode static"):
        E.network_mode("int8", dataclasses.replace(info, ort_only=["MatMulNBits"]))


def test_load_backend_needs_engines(tiny_export):
    from vlmedge.runtime.backends.tensorrt import load_backend

    with pytest.raises(ManifestError, match="records no TensorRT engines"):
        load_backend(tiny_export)


# ---------------------------------------------------------------------------------------------------------------------
# (c) plugin version, platform, the manifest record


def test_plugin_version_mismatch_is_refused():
    E.check_plugin_version({"llm": {"file": "llm.engine", "plugin_version": None},
                            "vision": {"file": "vision.engine", "plugin_version": P.PLUGIN_VERSION}})
    with pytest.raises(E.PluginVersionError) as e:
        E.check_plugin_version({"vision_stc_select": {"file": "vision_stc_select.engine", "plugin_version": "0"}})
    msg = str(e.value)
    assert "vision_stc_select.engine" in msg and "version 0" in msg and f"version {P.PLUGIN_VERSION}" in msg
    with pytest.raises(E.PluginVersionError):  # one stage's record works too
        E.check_plugin_version({"file": "x.engine", "plugin_version": "2"})


def test_platform_mismatch_is_refused():
    rec = {"llm": {"file": "llm.engine", "trt_version": "10.8.0", "compute_capability": "8.7", "device": "Orin"}}
    E.check_engine_platform(rec, "10.8.0", (8, 7))
    with pytest.raises(E.EngineMismatchError, match="TensorRT 10.8.0.*TensorRT 10.13.0"):
        E.check_engine_platform(rec, "10.13.0", (8, 7))
    with pytest.raises(E.EngineMismatchError, match="compute capability 8.7.*9.0"):
        E.check_engine_platform(rec, "10.8.0", (9, 0))


def test_engine_record_in_manifest(tiny_export, tmp_path):
    from vlmedge.runtime.backends.tensorrt import load_backend

    d = _copy(tiny_export, tmp_path / "exp")
    for s in ("vision", "llm"):
        (tmp_path / "exp" / f"{s}.engine").write_bytes(b"not an engine " + s.encode())
    record = {s: {"file": f"{s}.engine", "precision": "fp16", "profiles": {}, "trt_version": "10.13.0",
                  "plugin_version": "999" if s == "vision" else None, "plugins": {"StcMerge": "jit"} if s == "vision"
                  else {}, "build_s": 1.0} for s in ("vision", "llm")}
    E.write_engine_record(d, record)
    m = Manifest.load(d)  # the engine files are checksummed like every other file
    assert {"vision.engine", "llm.engine"} <= set(m.files)
    assert E.read_engine_record(d, m) == record
    with pytest.raises(E.PluginVersionError, match="version 999"):  # refused before anything touches TensorRT
        load_backend(d)
    (tmp_path / "exp" / "llm.engine").write_bytes(b"altered")
    with pytest.raises(ManifestError, match="llm.engine"):
        Manifest.load(d)


def test_plugin_versions_for_the_manifest():
    v = P.plugin_versions()
    assert v["plugin_version"] == P.PLUGIN_VERSION == "1" and v["namespace"] == "vlmedge" and v["op_version"] == 1
    assert set(v["implementations"]) == set(ref.OPS)
    assert {op for op, how in v["implementations"].items() if how == "aot+jit"} == set(P.AOT_OPS)
    assert set(P.JIT_ONLY) == set(ref.OPS) - set(P.AOT_OPS)


# ---------------------------------------------------------------------------------------------------------------------
# (d) optimisation profiles from a real manifest


def _with_runtime(m: Manifest, **changes) -> Manifest:
    return dataclasses.replace(m, runtime=dataclasses.replace(m.runtime, **changes))


def test_profiles_from_the_export(tiny_export):
    m = Manifest.load(tiny_export)
    layout = m.runtime.token_layout
    per = layout["tokens_per_frame"] + layout["trailer_tokens"]
    hidden, (kvh, hd) = m.model.hidden_size, (m.model.num_kv_heads, m.model.head_dim)
    lim = E.context_limits(m)  # cpu export: no memory plan, no max_frames
    assert (lim.max_context, lim.opt_context, lim.tokens_per_frame) == (E.DEFAULT_MAX_CONTEXT, 2048, per)
    assert lim.max_seq == E.PROMPT_TOKENS  # max(512, 2 x per frame), within the context
    prof = E.optimisation_profiles(m)
    assert set(prof) == {"vision", "llm"} and prof["vision"] == {}  # the vision graph is static
    llm = prof["llm"]
    assert llm["inputs_embeds"] == {"min": [1, 1, hidden], "opt": [1, per, hidden], "max": [1, 512, hidden]}
    assert llm["position_ids"] == {"min": [1, 1], "opt": [1, per], "max": [1, 512]}
    assert llm["logits_positions"] == {"min": [1], "opt": [1], "max": [512]}
    past = {"min": [1, kvh, 0, hd], "opt": [1, kvh, 2048, hd], "max": [1, kvh, 4096, hd]}
    assert all(llm[f"past_{k}_{i}"] == past for i in range(m.model.num_layers) for k in ("key", "value"))
    assert len(llm) == 3 + 2 * m.model.num_layers

    # max_frames: round64(frames x tokens per frame + 512)
    lim = E.context_limits(_with_runtime(m, max_frames=100))
    want = -(-(100 * per + 512) // 64) * 64
    assert (lim.max_context, lim.opt_context, lim.max_frames) == (want, -(-want // 2 // 64) * 64, 100)
    assert "100 frames" in lim.rule

    # a Jetson memory plan decides (as build_settings sizes it for the module)
    from vlmedge.jetson.profiles import build_settings, profile

    plan = build_settings(profile("orin-nano-8gb"), weights_bytes=10 << 20, num_layers=m.model.num_layers,
                          num_kv_heads=kvh, head_dim=hd, tokens_per_frame=per, max_positions=8192)
    pm = _with_runtime(m, memory_plan=plan.to_dict(), max_frames=plan.max_frames)
    lim = E.context_limits(pm)
    assert (lim.max_context, lim.opt_context) == (plan.max_context_tokens, plan.opt_context_tokens)
    assert "memory plan of orin-nano-8gb" in lim.rule
    past = E.optimisation_profiles(pm)["llm"]["past_key_0"]
    assert (past["min"][2], past["opt"][2], past["max"][2]) == (0, plan.opt_context_tokens, plan.max_context_tokens)
    # an explicit max_context wins
    assert E.context_limits(pm, max_context=1000).max_context == 1000
    with pytest.raises(E.EngineBuildError):
        E.context_limits(m, max_context=0)


def test_unknown_dynamic_axis_needs_a_rule(tiny_export):
    m = Manifest.load(tiny_export)
    llm = m.stages["llm"]
    first = dataclasses.replace(llm.inputs[0], shape=[1, "chunk", llm.inputs[0].shape[2]])
    odd = dataclasses.replace(llm, inputs=[first] + llm.inputs[1:])
    m2 = dataclasses.replace(m, stages={**m.stages, "llm": odd})
    with pytest.raises(E.EngineBuildError, match="dynamic axis 'chunk'.*axis_overrides"):
        E.optimisation_profiles(m2)
    prof = E.optimisation_profiles(m2, axis_overrides={"chunk": (1, 8, 32)})
    assert prof["llm"]["inputs_embeds"]["opt"][1] == 8 and prof["llm"]["inputs_embeds"]["max"][1] == 32
    with pytest.raises(E.EngineBuildError, match="min <= opt <= max"):
        E.optimisation_profiles(m2, axis_overrides={"chunk": (4, 2, 8)})


# ---------------------------------------------------------------------------------------------------------------------
# the ONNX rewrite for TensorRT's parser


def _static_spec(op: str, dtype: str = "float32") -> tuple[OpSpec, dict[str, np.ndarray]]:
    """A one-op spec with static shapes and inputs for it (ties in the scores on purpose)."""
    rng = np.random.default_rng(zlib_seed(op))
    N, D = 48, 20
    f = np.dtype(dtype)
    if op == "StcSelect":
        feeds = {"keys": rng.standard_normal((N, D)), "ref_keys": rng.standard_normal((N, D))}
        attrs = {"ratio": 0.3}
    elif op == "StcMerge":
        idx = np.sort(rng.permutation(N)[:9])
        feeds = {"cached": rng.standard_normal((N, D)), "fresh": rng.standard_normal((9, D)), "indices": idx}
        attrs = {}
    elif op == "PruneCompact":
        feeds = {"logits": rng.standard_normal(N) * 2, "features": rng.standard_normal((N, D))}
        attrs = {"threshold": 0.6, "max_ratio": 0.25, "min_keep": 2}
    elif op == "KeepCount":
        feeds = {"scores": rng.integers(0, 6, N), "features": rng.standard_normal((N, D)),
                 "count": np.array(13, dtype=np.int64)}
        attrs = {"largest": 1}
    elif op == "DppGreedyMap":
        x = rng.standard_normal((N, 8))
        x /= np.linalg.norm(x, axis=1, keepdims=True)
        feeds = {"kernel": x @ x.T, "relevance": rng.random(N)}
        attrs = {"steps": 12}
    else:
        feeds = {"x": rng.standard_normal((N, D))}
        attrs = {"n": 10, "k": 5}
    feeds = {k: (v.astype(np.int64) if k in ("indices", "count") else v.astype(f)) for k, v in feeds.items()}
    inputs = {k: (v.dtype, list(v.shape)) for k, v in feeds.items()}
    return OpSpec(op, inputs, attrs), feeds


def zlib_seed(text: str) -> int:
    import zlib

    return zlib.crc32(text.encode())


@pytest.mark.parametrize("op", list(ref.OPS))
def test_prepare_onnx_maps_nodes_to_plugins(op):
    spec, _ = _static_spec(op)
    model = make_model(spec)
    out, ops = E.prepare_onnx(model)
    assert ops == {op: 1}
    node = next(n for n in out.graph.node if n.domain == "vlmedge")
    attrs = {a.name: a for a in node.attribute}
    assert helper.get_attribute_value(attrs["plugin_namespace"]) == b"vlmedge"
    want = full_attrs(op, spec.attrs)
    for name, kind in P.ATTRIBUTES[op]:  # every plugin attribute, typed as the plugin declares it
        assert attrs[name].type == (onnx.AttributeProto.FLOAT if kind == "float" else onnx.AttributeProto.INT)
        assert helper.get_attribute_value(attrs[name]) == pytest.approx(want[name])
    assert not any(a.name == "plugin_namespace" for n in model.graph.node for a in n.attribute)  # a copy


def test_prepare_onnx_fills_defaults_and_refuses_gaps():
    g = helper.make_graph([helper.make_node("PruneCompact", ["l", "f"], ["i", "k"], domain="vlmedge")], "g",
                          [helper.make_tensor_value_info("l", onnx.TensorProto.FLOAT, [8]),
                           helper.make_tensor_value_info("f", onnx.TensorProto.FLOAT, [8, 3])],
                          [helper.make_tensor_value_info("i", onnx.TensorProto.INT64, ["K"])])
    out, _ = E.prepare_onnx(helper.make_model(g))
    got = {a.name: helper.get_attribute_value(a) for a in out.graph.node[0].attribute}
    assert got == {"threshold": pytest.approx(0.5), "max_ratio": 0.0, "min_keep": 1, "plugin_namespace": b"vlmedge"}
    g.node[0].CopyFrom(helper.make_node("DppGreedyMap", ["l", "f"], ["i"], domain="vlmedge"))
    with pytest.raises(E.EngineBuildError, match="required attribute 'steps'"):
        E.prepare_onnx(helper.make_model(g))
    g.node[0].CopyFrom(helper.make_node("DppGreedyMap", ["l"], ["i"], domain="vlmedge", steps=3))
    with pytest.raises(E.EngineBuildError, match="takes all 2"):
        E.prepare_onnx(helper.make_model(g))
    plain = helper.make_model(helper.make_graph([helper.make_node("Relu", ["l"], ["i"])], "g", g.input[:1], g.output))
    assert E.prepare_onnx(plain) == (plain, {})


def test_plugin_attributes_match_the_schemas():
    for op, attrs in P.ATTRIBUTES.items():
        assert [(a.name, a.kind) for a in schemas.OPS[op].attrs] == list(attrs), op


# ---------------------------------------------------------------------------------------------------------------------
# the plugin definitions against a stand-in tensorrt.plugin (what TensorRT checks when it registers them)


class _Expr:
    """A shape expression: a constant (`value`), symbolic (`value` None) or TensorRT's placeholder (`is_fake`)."""

    def __init__(self, value=None, fake=False, name="?"):
        self.value, self.is_fake, self.name = value, fake, name

    @property
    def is_constant(self):
        if self.is_fake:
            raise RuntimeError("fake shape expression")
        return self.value is not None

    def constant_value(self):
        return self.value

    def __floordiv__(self, k):
        return _Expr(None if self.value is None else self.value // k, self.is_fake, f"{self.name}//{k}")


def _fake_trtp():
    class TensorDesc:
        def __init__(self, dims=(), dtype=None):
            self.shape_expr, self.dtype = list(dims), dtype

        def like(self):
            return TensorDesc(self.shape_expr, self.dtype)

    class SizeTensorDesc(TensorDesc):
        def __init__(self, opt, upper):
            super().__init__((), "INT32")
            self.opt, self.upper_bound = opt, upper

        def expr(self):
            return ("size", self)

    class Tensor:
        pass

    class SymExprs:
        pass

    class SymIntExprs(SymExprs):
        pass

    class KernelLaunchParams:
        pass

    class SymInt32:
        pass

    defs: dict[str, dict] = {}
    op = types.SimpleNamespace()

    def deco(kind):
        def make(pid):
            def wrap(fn):
                defs.setdefault(pid, {})[kind] = fn
                ns, name = pid.split("::")
                if not hasattr(op, ns):
                    setattr(op, ns, types.SimpleNamespace())
                setattr(getattr(op, ns), name, defs[pid])
                return fn
            return wrap
        return make

    trtp = types.ModuleType("tensorrt.plugin")
    trtp.__dict__.update(
        TensorDesc=TensorDesc, SizeTensorDesc=SizeTensorDesc, Tensor=Tensor, SymExprs=SymExprs,
        SymIntExprs=SymIntExprs, KernelLaunchParams=KernelLaunchParams, SymInt32=SymInt32, op=op, defs=defs,
        register=deco("register"), impl=deco("impl"), aot_impl=deco("aot_impl"),
        from_shape_expr=lambda dims, dtype: TensorDesc(dims, dtype),
        size_tensor=lambda opt, upper: SizeTensorDesc(opt, upper),
        min=lambda a, b: ("min", a, b), cdiv=lambda a, b: ("cdiv", a, b))
    return trtp


@pytest.fixture
def fake_plugins(monkeypatch):
    trtp = _fake_trtp()
    dt = types.SimpleNamespace(INT64="INT64", INT32="INT32", FLOAT="FLOAT", HALF="HALF")
    trt = _fake_tensorrt(Builder=object, DataType=dt, plugin=trtp, __version__="10.13.0")
    monkeypatch.setitem(sys.modules, "tensorrt", trt)
    monkeypatch.setitem(sys.modules, "tensorrt.plugin", trtp)
    assert P.register_plugins() == {op: ("aot+jit" if op in P.AOT_OPS else "jit") for op in ref.OPS}
    assert P.register_plugins() == {op: ("aot+jit" if op in P.AOT_OPS else "jit") for op in ref.OPS}  # idempotent
    return trtp


def test_plugin_signatures_are_what_tensorrt_accepts(fake_plugins):
    """tensorrt.plugin's rules: register(tensors: TensorDesc..., attrs: int|float...) -> TensorDesc or
    Tuple[TensorDesc, ...] (real classes, no defaults); impl(tensors, attrs subset in order, outputs, stream);
    aot_impl(tensors, attrs, outputs, tactic) -> Tuple[str|bytes, str|bytes, KernelLaunchParams, SymExprs]."""
    trtp = fake_plugins
    for op in ref.OPS:
        d = trtp.defs[P.plugin_id(op)]
        assert set(d) == ({"register", "impl", "aot_impl"} if op in P.AOT_OPS else {"register", "impl"}), op
        sig = inspect.signature(d["register"])
        tensors = [p.name for p in schemas.OPS[op].inputs]
        attrs = [a for a, _ in P.ATTRIBUTES[op]]
        assert list(sig.parameters) == tensors + attrs, op
        for name, p in sig.parameters.items():
            assert p.default is inspect.Parameter.empty, (op, name)
            want = trtp.TensorDesc if name in tensors else {"float": float, "int": int}[dict(P.ATTRIBUTES[op])[name]]
            assert p.annotation is want, (op, name, p.annotation)  # a class, not a string
        ret = sig.return_annotation
        n_out = len(schemas.OPS[op].outputs) + (op in ("PruneCompact", "KeepCount"))  # + the size tensor
        if n_out == 1:
            assert ret is trtp.TensorDesc, op
        else:
            assert typing.get_origin(ret) is tuple and typing.get_args(ret) == (trtp.TensorDesc,) * n_out, op
        impl = list(inspect.signature(d["impl"]).parameters)
        assert impl[:len(tensors)] == tensors and impl[-2:] == ["outputs", "stream"], op
        assert [a for a in impl if a in attrs] == impl[len(tensors):-2], op
        if "aot_impl" in d:
            s = inspect.signature(d["aot_impl"])
            assert list(s.parameters) == tensors + attrs + ["outputs", "tactic"], op
            args = typing.get_args(s.return_annotation)
            assert len(args) == 4 and args[2] is trtp.KernelLaunchParams and args[3] is trtp.SymExprs, op


def test_plugin_descriptors_give_the_output_shapes(fake_plugins):
    trtp = fake_plugins
    desc = {op: trtp.defs[P.plugin_id(op)]["register"] for op in ref.OPS}
    T = trtp.TensorDesc

    def t(*dims, dtype="FLOAT"):
        return T([d if isinstance(d, _Expr) else _Expr(d) for d in dims], dtype)

    # StcSelect: n from T and the float32-stored ratio read as its decimal (0.7 -> 7 of 10, not 6)
    out = desc["StcSelect"](t(10, 4), t(10, 4), float(np.float32(0.7)))
    assert out.shape_expr == [7] and out.dtype == "INT64"
    with pytest.raises(ValueError, match="build-time token count"):
        desc["StcSelect"](t(None, 4), t(None, 4), 0.5)
    fake = _Expr(fake=True)
    assert desc["StcSelect"](t(fake, 4), t(fake, 4), 0.5).shape_expr == [fake]  # type-only pass
    assert desc["StcMerge"](t(10, 4, dtype="HALF"), t(3, 4), t(3)).dtype == "HALF"
    # data-dependent: a size tensor (upper bound N), shared by both outputs, last
    for op, extra in (("PruneCompact", (0.5, 0.0, 1)), ("KeepCount", (1,))):
        ins = (t(12), t(12, 5, dtype="HALF")) + ((t(dtype="INT64"),) if op == "KeepCount" else ())
        idx, kept, size = desc[op](*ins, *extra)
        assert isinstance(size, trtp.SizeTensorDesc) and size.upper_bound.value == 12 and size.opt.value == 6
        assert idx.shape_expr == [("size", size)] and idx.dtype == "INT64"
        assert kept.shape_expr[0] == ("size", size) and kept.shape_expr[1].value == 5 and kept.dtype == "HALF"
    assert desc["DppGreedyMap"](t(5, 5), t(5), 9, 1e-10).shape_expr == [5]
    n = _Expr(name="N")
    assert desc["DppGreedyMap"](t(n, n), t(n), 9, 1e-10).shape_expr == [("min", n, 9)]
    assert desc["DpcKnnSelect"](t(8, 3), 3, 5).shape_expr == [3]
    assert desc["DpcKnnSelect"](t(8, 3), -2, 5).shape_expr == [0]
    assert desc["DpcKnnSelect"](t(8, 3), 30, 5).shape_expr == [8]


# ---------------------------------------------------------------------------------------------------------------------
# the AOT kernels: against the references (Triton's interpreter, CPU) and their PTX launch ABI


AOT_CHECK = textwrap.dedent("""
    import torch
    from vlmedge.export.trt import plugins as P
    from vlmedge.export.ops import reference as R
    k = P.aot_kernels()
    g = torch.Generator().manual_seed(0)
    for T, D, n, dt in [(37, 70, 9, torch.float32), (5, 3, 5, torch.float16), (129, 130, 1, torch.float32)]:
        cached = torch.randn(T, D, generator=g).to(dt); fresh = torch.randn(n, D, generator=g).to(dt)
        idx = torch.randperm(T, generator=g)[:n].sort().values
        out = torch.empty_like(cached)
        k.stc_merge[(T, -(-D // 128))](cached, fresh, idx, n, D, out, **k.stc_merge_consts)
        assert torch.equal(out, R.stc_merge(cached, fresh, idx)), ("StcMerge", T, D, n)
    for largest in (True, False):
        for N, D, c in [(150, 33, 40), (150, 33, 0), (150, 33, 150), (150, 33, 400), (150, 33, -3), (7, 5, 3),
                        (1, 3, 1)]:
            scores = torch.randint(0, 5, (N,), generator=g).float()  # many ties: lower index first
            feats = torch.randn(N, D, generator=g).half()
            oi = torch.full((N,), -1, dtype=torch.int64); ok = torch.zeros(N, D).half()
            oc = torch.zeros((), dtype=torch.int32)
            k.keep_count[(1,)](scores, feats, torch.tensor(c), N, D, oi, ok, oc, LARGEST=largest,
                               **k.keep_count_consts)
            ri, rk = R.keep_count(scores, feats, c, largest)
            m = int(oc)
            assert m == ri.numel() and torch.equal(oi[:m], ri) and torch.equal(ok[:m], rk), ("KeepCount", N, c)
    print("AOT kernels match")
""")


def test_aot_kernels_match_references_in_the_interpreter():
    env = {**os.environ, "TRITON_INTERPRET": "1", "OMP_NUM_THREADS": "1"}
    r = subprocess.run([sys.executable, "-c", AOT_CHECK], cwd=ROOT, capture_output=True, text=True, timeout=300,
                       env=env)
    assert r.returncode == 0 and "AOT kernels match" in r.stdout, r.stdout + r.stderr[-3000:]


@pytest.mark.skipif(os.environ.get("TRITON_INTERPRET") == "1",
                    reason="AOT compilation needs compiled-mode Triton; under TRITON_INTERPRET=1 (set by conftest "
                           "without CUDA) the kernels are interpreted; scripts/gpu-check runs it on a GPU")
def test_aot_kernels_compile_to_the_tensorrt_launch_abi():
    """PTX for Orin (sm_87) compiles here without a GPU: TensorRT passes (inputs, int32 scalars, outputs); Triton
    appends two scratch pointers TensorRT leaves null, so the kernels must need no scratch (compile_aot checks)."""
    pytest.importorskip("triton")
    k = P.aot_kernels()
    cases = [(k.stc_merge, {"cached": "*fp16", "fresh": "*fp16", "indices": "*i64", "N": "i32", "D": "i32",
                            "out": "*fp16"}, k.stc_merge_consts),
             (k.keep_count, {"scores": "*fp32", "features": "*fp16", "count": "*i64", "N": "i32", "D": "i32",
                             "out_indices": "*i64", "out_kept": "*fp16", "out_count": "*i32"},
              {"LARGEST": True, **k.keep_count_consts})]
    for kernel, sig, consts in cases:
        try:
            name, ptx, warps, shared = P.compile_aot(kernel, sig, consts, arch=87)
        except (ImportError, FileNotFoundError, OSError) as err:  # no CUDA backend / ptxas in this Triton
            pytest.skip(f"Triton cannot compile for sm_87 here: {err}")
        entry = ptx[ptx.index(f".entry {name}("):]
        params = entry[: entry.index(")")].count(".param")
        assert params == len(sig) + 2, (name, params)  # + global_scratch, profile_scratch
        assert ".target sm_87" in ptx and warps >= 1 and shared >= 0


def test_triton_types_of_tensorrt_types():
    dt = types.SimpleNamespace
    assert P.triton_pointer(dt(name="HALF")) == "*fp16" and P.torch_dtype_name(dt(name="INT64")) == "int64"
    with pytest.raises(TypeError):
        P.triton_pointer(dt(name="FP8"))
    assert P.stc_count(10, 0.7) == 7 and P.stc_count(0, 0.5) == 0 and P.stc_count(3, 0.01) == 1


# ---------------------------------------------------------------------------------------------------------------------
# the device KV cache (runs on CPU here)


def test_kv_cache_steps_and_kv_tail_paths():
    from vlmedge.runtime import kv_tail
    from vlmedge.runtime.backends.tensorrt import TrtKVCache

    c = TrtKVCache(2, 3, 4, torch.float32, "cpu", grow=8)
    want = [torch.zeros(1, 3, 0, 4) for _ in range(4)]
    g = torch.Generator().manual_seed(0)

    def step(n):  # what forward_llm does: write present into the spare buffers, then commit
        p = c.get_seq_length()
        for i in range(4):
            new = torch.randn(1, 3, n, 4, generator=g)
            c.target(i, p + n).copy_(torch.cat([c.tensor(i), new], 2))
            want[i] = torch.cat([want[i], new], 2)
        for i in range(4):
            c.commit(i, p + n)

    def same():
        for i in range(4):
            assert torch.equal(c.tensor(i), want[i]), i
            assert c.tensor(i).is_contiguous()

    step(5), step(1), step(13), same()
    assert c.get_seq_length() == 19 and len(c) == 2 and c.nbytes() == 4 * 19 * 12 * 4
    c.crop(-3)
    want[:] = [w[:, :, :-3] for w in want]
    same()
    tail = kv_tail.take_tail(c, 4)
    kv_tail.cut_to(c, 4)
    assert c.get_seq_length() == 4
    kv_tail.restore_tail(c, 4, tail)
    same()
    kv_tail.remove_span(c, 2, 6)
    want[:] = [torch.cat([w[:, :, :2], w[:, :, 6:]], 2) for w in want]
    same()
    kv_tail.append_kv(c, kv_tail.take_span(c, 1, 3))  # the transformers-cache paths: layers[i].keys/.values
    want[:] = [torch.cat([w, w[:, :, 1:3]], 2) for w in want]
    same()
    kv_tail.cut_layers_to(c, 5)
    want[:] = [w[:, :, :5] for w in want]
    same()
    c.crop(100)  # longer than held: nothing changes
    same()
    reserved = c.reserved_bytes()
    step(1)
    assert c.reserved_bytes() == reserved  # a decode step reuses the buffers


# ---------------------------------------------------------------------------------------------------------------------
# (e) on a GPU with TensorRT


def _reference_outputs(op: str, feeds: dict[str, np.ndarray], attrs: dict) -> list[np.ndarray]:
    kw = full_attrs(op, attrs)
    if op == "KeepCount":
        kw["largest"] = bool(kw["largest"])
    out = ref.REFERENCES[op](*[torch.from_numpy(v) for v in feeds.values()], **kw)
    return [o.numpy() for o in (out if isinstance(out, tuple) else (out,))]


GPU_CASES = ([(op, "jit", "float32") for op in ref.OPS] + [(op, "aot", "float32") for op in P.AOT_OPS]
             + [(op, impl, "float16") for op in P.AOT_OPS for impl in ("jit", "aot")])


@pytest.mark.gpu
@needs_gpu_trt
@pytest.mark.parametrize("op,impl,dtype", GPU_CASES, ids=[f"{o}-{i}-{d}" for o, i, d in GPU_CASES])
def test_one_plugin_engine_matches_reference(op, impl, dtype):
    from vlmedge.runtime.backends.tensorrt import EngineRunner

    spec, feeds = _static_spec(op, dtype)
    data, info = E.build_engine(make_model(spec), precision="fp32" if dtype == "float32" else "fp16",
                                graph_precision="fp32" if dtype == "float32" else "fp16", aot=impl == "aot", name=op)
    assert info["plugins"] == {op: impl}
    out = EngineRunner(data, op).run({k: torch.from_numpy(v) for k, v in feeds.items()})
    torch.cuda.synchronize()
    want = _reference_outputs(op, feeds, spec.attrs)
    names = [p.name for p in schemas.OPS[op].outputs]
    for name, w in zip(names, want):
        got = out[name].cpu().numpy()
        assert got.dtype == w.dtype and got.shape == w.shape, (name, got.shape, w.shape)
        assert got.tobytes() == w.tobytes(), (name, got, w)  # indices exact, rows bit for bit


@pytest.mark.gpu
@pytest.mark.slow
@needs_gpu_trt
def test_reference_export_engines_match_onnxruntime(tmp_path):
    from vlmedge.export import export_model
    from vlmedge.models import from_pretrained
    from vlmedge.models.reference_models import reference_dir
    from vlmedge.runtime.backends.onnxruntime import load_backend as load_ort
    from vlmedge.runtime.backends.tensorrt import TrtKVCache, load_backend as load_trt

    d = str(tmp_path / "ref")
    export_model(from_pretrained(reference_dir("llava_onevision")), d, "none", target="desktop", precision="fp32",
                 log=lambda s: None)
    logs: list[str] = []
    record = E.build_engines(d, "desktop", precision="fp32", timing_cache=str(tmp_path / "timing.cache"),
                             tf32=False, log=logs.append)
    assert set(record) == {"vision", "llm"} and all(r["trt_version"] for r in record.values())
    assert any("1/2 vision" in ln for ln in logs) and os.path.isfile(tmp_path / "timing.cache")
    E.write_engine_record(d, record)
    trt_b, ort_b = load_trt(d), load_ort(d, providers=["CPUExecutionProvider"])

    frame = np.random.default_rng(0).integers(0, 256, (trt_b.frame_size[0], trt_b.frame_size[1], 3), dtype=np.uint8)
    ft, fo = trt_b.encode_frame(frame), ort_b.encode_frame(frame)
    scale = float(fo.features.abs().max())
    assert float((ft.features - fo.features).abs().max()) <= 1e-3 * scale  # fp32 (no TF32), other kernels
    ids = trt_b.tokenize("Describe what happens in the video.")
    emb = torch.cat([trt_b.embed_text(ids), fo.features])
    pos = torch.arange(emb.shape[0]).expand(trt_b.positions.rows, -1)
    ct, co = trt_b.new_cache(), ort_b.new_cache()
    assert isinstance(ct, TrtKVCache)
    lt, lo = trt_b.forward_llm(emb, pos, ct, last_only=False), ort_b.forward_llm(emb, pos, co, last_only=False)
    assert lt.shape == lo.shape and float((lt - lo).abs().max()) <= 1e-3 * float(lo.abs().max())
    assert ct.get_seq_length() == co.get_seq_length() == emb.shape[0]
    nxt_t, nxt_o = int(lt[-1].argmax()), int(lo[-1].argmax())
    assert nxt_t == nxt_o
    p = emb.shape[0]
    for _ in range(4):  # greedy decode in step
        e = trt_b.embed_text(torch.tensor([nxt_t]))
        q = torch.full((trt_b.positions.rows, 1), p)
        nxt_t = int(trt_b.forward_llm(e, q, ct)[-1].argmax())
        nxt_o = int(ort_b.forward_llm(e, q, co)[-1].argmax())
        assert nxt_t == nxt_o
        p += 1
    ct.crop(-3)
    assert ct.get_seq_length() == p - 3
