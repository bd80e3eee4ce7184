"""`manifest.json`: what an export directory holds, versioned and validated before anything runs from it.

The runtime trusts nothing but the manifest: which model family and method the graphs were made for, each
stage's file with its inputs and outputs (names, dtypes, shapes with named dynamic axes), how a stream is laid
out as tokens and positions, the prompt format, precision, target, the versions that exported it, and a sha256
of every file. `Manifest.load` refuses a directory whose manifest is missing, malformed or of a newer schema,
and whose files are missing, resized or altered, with one line that says which and what to do.

Schema history: 1 = first version (vision / llm / embed stages); 2 = precision "int8" (graphs quantised by
`vlmedge calibrate quantize`, recorded in `quantization`) and `tuning` (the setting `vlmedge calibrate tune` chose).
A version-1 manifest reads as version 2 with neither record. Schema 2 also carries an optional `engines` record
(TensorRT engines built from the graphs on the device, `vlmedge build-engines`); it is optional because a reader
that does not know it still runs the ONNX graphs correctly, so it needs no new schema version.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import typing
from dataclasses import dataclass, field
from typing import Any

from vlmedge.errors import ModelFileError

SCHEMA_VERSION = 2
FORMAT = "vlmedge-export"
MANIFEST_NAME = "manifest.json"
TARGETS = ("cpu", "desktop", "orin-nano", "orin-nx", "orin-agx")
PRECISIONS = ("fp32", "fp16", "int8")
EXPORT_PRECISIONS = ("fp32", "fp16")  # what `vlmedge export` writes; int8 comes from `vlmedge calibrate quantize`
DTYPES = ("float32", "float16", "bfloat16", "int64", "int32", "bool", "uint8")


class ManifestError(ModelFileError):
    """An export directory whose manifest or files cannot be trusted (missing, altered, newer schema)."""


# ----- schema -----
@dataclass
class TensorSpec:
    """One graph input or output. `shape` holds ints for fixed axes and names for dynamic ones."""

    name: str
    dtype: str
    shape: list

    @property
    def dynamic_axes(self) -> dict[int, str]:
        return {i: d for i, d in enumerate(self.shape) if isinstance(d, str)}


@dataclass
class StageSpec:
    """One exported stage: a graph (`kind` "onnx") or a table (`kind` "npy").

    `exporter` says how the file was made ("dynamo" / "torchscript" for graphs, "numpy" for tables);
    `attrs` holds what the stage's runtime needs besides the IO (frame size, grid, taps, logits rule...).
    """

    name: str
    kind: str
    file: str
    exporter: str
    inputs: list[TensorSpec] = field(default_factory=list)
    outputs: list[TensorSpec] = field(default_factory=list)
    attrs: dict = field(default_factory=dict)

    def input(self, name: str) -> TensorSpec:
        return _by_name(self.inputs, name, f"stage {self.name!r} input")

    def output(self, name: str) -> TensorSpec:
        return _by_name(self.outputs, name, f"stage {self.name!r} output")


@dataclass
class ModelInfo:
    family: str
    source: str  # the model directory, or "tiny:<family>:seed=<n>"
    model_type: str
    hidden_size: int
    vocab_size: int
    num_layers: int
    num_kv_heads: int
    head_dim: int


@dataclass
class MethodInfo:
    name: str
    spec: str  # what `compression.get_method` turns back into the method
    settings: dict


@dataclass
class RuntimeInfo:
    """What a backend needs at run time without the torch model.

    `prompt`: the PromptFormat fields; `positions`: {"kind": "rope1d"} or {"kind": "mrope", "tokens_per_second"};
    `token_layout`: per-frame tokens as the vision stage emits them; `tokenizer`: folder (relative) with the
    tokenizer files; `pixel_norm`: mean/std/rescale applied before the vision graph; `frame_size`: [h, w].
    """

    prompt: dict
    positions: dict
    tokenizer: str
    frame_size: list
    pixel_norm: dict
    token_layout: dict
    has_audio: bool = False
    max_frames: int | None = None
    memory_plan: dict | None = None  # Jetson targets: the profile's budget, workspace and context sizing


@dataclass
class FileEntry:
    sha256: str
    bytes: int


@dataclass
class Manifest:
    schema_version: int
    format: str
    model: ModelInfo
    method: MethodInfo
    precision: str
    target: str
    opset: int
    stages: dict[str, StageSpec]
    runtime: RuntimeInfo
    versions: dict
    files: dict[str, FileEntry]
    created: str = ""
    notes: list = field(default_factory=list)
    quantization: dict | None = None  # int8: mode, calibration set, per-stage settings, the accuracy guard's report
    tuning: dict | None = None  # `calibrate tune`: targets, the chosen method spec, the sweep
    engines: dict | None = None  # {stage: record} of TensorRT engines (export/trt/engine.build_engines)

    # ----- writing -----
    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, sort_keys=False)

    def save(self, directory: str) -> str:
        """Writes `manifest.json` atomically (a half-written manifest never exists)."""
        path = os.path.join(directory, MANIFEST_NAME)
        tmp = path + ".tmp"
        with open(tmp, "w") as f:
            f.write(self.to_json() + "\n")
        os.replace(tmp, path)
        return path

    def stage(self, name: str) -> StageSpec:
        if name not in self.stages:
            raise ManifestError(f"this export has no {name!r} stage (it has: {', '.join(self.stages) or 'none'}); "
                                f"re-export with a vlmedge that provides it")
        return self.stages[name]

    # ----- reading -----
    @classmethod
    def from_dict(cls, data: Any, where: str = MANIFEST_NAME) -> "Manifest":
        if not isinstance(data, dict):
            raise ManifestError(f"{where} must hold a JSON object, got {type(data).__name__}")
        version = data.get("schema_version")
        if not isinstance(version, int) or isinstance(version, bool):
            raise ManifestError(f"{where} has no integer 'schema_version'; is this a vlmedge export?")
        if version > SCHEMA_VERSION:
            raise ManifestError(f"{where} uses manifest schema {version}, newer than this vlmedge reads "
                                f"({SCHEMA_VERSION}); upgrade vlmedge or re-export with this version")
        if version < 1:
            raise ManifestError(f"{where} has invalid schema_version {version}")
        if data.get("format") != FORMAT:
            raise ManifestError(f"{where} has format {data.get('format')!r}, expected {FORMAT!r}")
        m = _parse(cls, data, "")
        m._check(where)
        return m

    @classmethod
    def load(cls, directory: str, verify: bool = True) -> "Manifest":
        """Reads and validates `directory/manifest.json`; with `verify`, checks every file's sha256 too
        (sizes and presence are always checked)."""
        if not os.path.isdir(directory):
            raise ManifestError(f"export directory {directory!r} does not exist (make one with `vlmedge export`)")
        path = os.path.join(directory, MANIFEST_NAME)
        if not os.path.isfile(path):
            raise ManifestError(f"{path} is missing: {directory!r} is not a vlmedge export directory "
                                "(make one with `vlmedge export`)")
        try:
            with open(path) as f:
                data = json.load(f)
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
            raise ManifestError(f"{path} is not valid JSON ({err}); re-export the model") from None
        m = cls.from_dict(data, where=path)
        m.verify_files(directory, checksums=verify)
        return m

    def verify_files(self, directory: str, checksums: bool = True) -> None:
        for rel, entry in self.files.items():
            full = os.path.join(directory, rel)
            if not os.path.isfile(full):
                raise ManifestError(f"{full} is missing; the manifest lists it (sha256 {entry.sha256[:12]}...). "
                                    "Copy the whole export directory, or re-export")
            size = os.path.getsize(full)
            if size != entry.bytes:
                raise ManifestError(f"{full} has {size} bytes but the manifest records {entry.bytes}: the file was "
                                    "altered or truncated; re-export (or copy it again)")
            if checksums:
                digest = sha256_file(full)
                if digest != entry.sha256:
                    raise ManifestError(f"{full} fails its checksum (sha256 {digest[:12]}... != manifest "
                                        f"{entry.sha256[:12]}...): the file was altered; re-export")

    def _check(self, where: str) -> None:
        if self.precision not in PRECISIONS:
            raise ManifestError(f"{where}: precision {self.precision!r} is not one of {', '.join(PRECISIONS)}")
        if self.target not in TARGETS:
            raise ManifestError(f"{where}: target {self.target!r} is not one of {', '.join(TARGETS)}")
        for rel in self.files:
            if os.path.isabs(rel) or ".." in rel.replace("\\", "/").split("/"):
                raise ManifestError(f"{where}: file {rel!r} must be a path inside the export directory")
        for key, st in self.stages.items():
            if st.name != key:
                raise ManifestError(f"{where}: stage {key!r} is named {st.name!r} inside")
            if st.file not in self.files:
                raise ManifestError(f"{where}: stage {key!r} file {st.file!r} has no checksum entry in 'files'")
            for spec in st.inputs + st.outputs:
                if spec.dtype not in DTYPES:
                    raise ManifestError(f"{where}: stage {key!r} tensor {spec.name!r} has unknown dtype {spec.dtype!r}")
        for stage, rec in (self.engines or {}).items():
            if stage not in self.stages:
                raise ManifestError(f"{where}: engine record {stage!r} names no stage of this export")
            file = rec.get("file") if isinstance(rec, dict) else None
            if not isinstance(file, str) or file not in self.files:
                raise ManifestError(f"{where}: the {stage!r} engine file {file!r} has no checksum entry in 'files'; "
                                    "rebuild the engines (`vlmedge build-engines`)")
        tok = self.runtime.tokenizer
        if not any(r == tok or r.startswith(tok.rstrip("/") + "/") for r in self.files):
            raise ManifestError(f"{where}: the tokenizer folder {tok!r} has no files listed")


def _by_name(specs, name, what):
    for s in specs:
        if s.name == name:
            return s
    raise ManifestError(f"{what} {name!r} is not in the manifest (has: {', '.join(s.name for s in specs)})")


# ----- generic, typed dict → dataclass parsing with paths in the messages -----
def _parse(tp, value, path):
    label = path or "the manifest"
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if dataclasses.is_dataclass(tp):
        if not isinstance(value, dict):
            raise ManifestError(f"manifest.json: {label} must be an object, got {type(value).__name__}")
        hints = typing.get_type_hints(tp)
        kwargs = {}
        for f in dataclasses.fields(tp):
            sub = f"{path}.{f.name}" if path else f.name
            if f.name not in value:
                if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
                    raise ManifestError(f"manifest.json: required field {sub!r} is missing; re-export the model")
                continue
            kwargs[f.name] = _parse(hints[f.name], value[f.name], sub)
        return tp(**kwargs)
    if origin is typing.Union or (origin is not None and type(None) in args):
        if value is None and type(None) in args:
            return None
        inner = [a for a in args if a is not type(None)]
        return _parse(inner[0], value, path)
    if origin is dict:
        if not isinstance(value, dict):
            raise ManifestError(f"manifest.json: {label} must be an object, got {type(value).__name__}")
        vt = args[1] if args else Any
        return {k: _parse(vt, v, f"{path}.{k}") for k, v in value.items()}
    if origin is list:
        if not isinstance(value, list):
            raise ManifestError(f"manifest.json: {label} must be a list, got {type(value).__name__}")
        vt = args[0] if args else Any
        return [_parse(vt, v, f"{path}[{i}]") for i, v in enumerate(value)]
    if tp is dict or tp is list:
        if not isinstance(value, tp):
            raise ManifestError(f"manifest.json: {label} must be a {'object' if tp is dict else 'list'}, "
                                f"got {type(value).__name__}")
        return value
    if tp in (str, int, float, bool):
        ok = isinstance(value, tp) and not (tp is int and isinstance(value, bool))
        if tp is float and isinstance(value, int) and not isinstance(value, bool):
            ok, value = True, float(value)
        if not ok:
            raise ManifestError(f"manifest.json: {label} must be {tp.__name__}, got {value!r}")
        return value
    return value  # Any


# ----- helpers -----
def sha256_file(path: str, chunk: int = 1 << 22) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while True:
            block = f.read(chunk)
            if not block:
                break
            h.update(block)
    return h.hexdigest()


def file_entries(directory: str, skip: tuple[str, ...] = (MANIFEST_NAME,)) -> dict[str, FileEntry]:
    """sha256 + size of every file under `directory` (relative, '/'-separated, sorted)."""
    out = {}
    for root, _, names in os.walk(directory):
        for n in sorted(names):
            full = os.path.join(root, n)
            rel = os.path.relpath(full, directory).replace(os.sep, "/")
            if rel in skip or rel.endswith(".tmp"):
                continue
            out[rel] = FileEntry(sha256=sha256_file(full), bytes=os.path.getsize(full))
    return dict(sorted(out.items()))


def position_spec(scheme) -> dict:
    from vlmedge.models.positions import MRope, Rope1D

    if isinstance(scheme, MRope):
        return {"kind": "mrope", "rows": 3, "tokens_per_second": float(scheme.tokens_per_second)}
    if isinstance(scheme, Rope1D):
        return {"kind": "rope1d", "rows": 1}
    raise ManifestError(f"position scheme {type(scheme).__name__} has no manifest form")


def build_positions(spec: dict):
    from vlmedge.models.positions import MRope, Rope1D

    kind = spec.get("kind")
    if kind == "rope1d":
        return Rope1D()
    if kind == "mrope":
        return MRope(tokens_per_second=spec["tokens_per_second"])
    raise ManifestError(f"manifest.json: runtime.positions.kind {kind!r} is not one of rope1d, mrope")


def versions() -> dict:
    import platform

    out = {"python": platform.python_version()}
    for mod in ("vlmedge", "torch", "transformers", "onnx", "onnxscript", "onnxruntime", "numpy"):
        try:
            out[mod] = __import__(mod).__version__
        except Exception:  # noqa: BLE001 - a missing optional package is recorded as absent
            out[mod] = None
    return out
