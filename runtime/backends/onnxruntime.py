"""ONNX Runtime backend: an export directory behind the adapter surface the streaming session uses.

`load_backend(export_dir)` validates the manifest (files present, checksums, schema) and returns an
`OrtAdapter`; `StreamingSession(load_backend(d), method)` then runs exactly as with a torch adapter. The
session keeps working in torch tensors (positions, compression, concatenation); this backend turns them into
ONNX Runtime inputs at the graph boundary and back.

The KV cache (`OrtKVCache`) holds one OrtValue per layer for keys and values. Each LLM step binds them as
inputs with IO binding and takes the graph's present KV as the new cache, so KV never round-trips through
numpy between steps (on GPU providers it stays on the device); only `crop` (once per question) copies.
"""
from __future__ import annotations

import os

import numpy as np
import torch

from vlmedge.errors import InputError, UnknownNameError
from vlmedge.export.manifest import Manifest, ManifestError, build_positions
from vlmedge.models.base import AudioTokens, FrameTokens, PromptFormat
from vlmedge.models.preprocess import PixelNorm, to_pixels

PROVIDER_ORDER = ("TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider")
NP_DTYPES = {"float32": np.float32, "float16": np.float16, "int64": np.int64, "int32": np.int32, "bool": np.bool_}


def choose_providers(requested=None) -> list[str]:
    """The providers to use: `requested` (validated) or the best available of TensorRT, CUDA, CPU."""
    import onnxruntime as ort

    available = ort.get_available_providers()
    if requested:
        requested = [requested] if isinstance(requested, str) else list(requested)
        aliases = {"tensorrt": "TensorrtExecutionProvider", "cuda": "CUDAExecutionProvider",
                   "cpu": "CPUExecutionProvider"}
        requested = [aliases.get(p.lower(), p) for p in requested]
        missing = [p for p in requested if p not in available]
        if missing:
            raise UnknownNameError(f"ONNX Runtime provider {missing[0]!r} is not available here "
                                   f"(available: {', '.join(available)})")
        return requested
    return [p for p in PROVIDER_ORDER if p in available] or ["CPUExecutionProvider"]


def session_options(threads: int | None = None):
    """The options every stage session of an export gets (a fresh object each call: ORT's cannot be copied)."""
    import onnxruntime as ort

    opts = ort.SessionOptions()
    if threads:
        opts.intra_op_num_threads = threads
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    opts.log_severity_level = 3  # warnings (e.g. fp16 constant folding on CPU) are not actionable
    # ORT's worker threads spin after each run by default; between runs the session's own torch code (the
    # compressor, the sampler) needs those cores. Measured on the reference model, 2 cores: with spinning
    # the torch pruner took 6.3 ms per frame instead of 1.5 ms.
    opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
    opts.add_session_config_entry("session.inter_op.allow_spinning", "0")
    return opts


class OrtKVCache:
    """Per-layer keys/values as OrtValues `[1, kv_heads, seq, head_dim]`, with the two calls the session
    makes on a transformers cache: `get_seq_length()` and `crop(max_length)` (negative: drop that many)."""

    def __init__(self, n_layers: int, kv_heads: int, head_dim: int, dtype, device: str):
        import onnxruntime as ort

        self.device = device
        self.itemsize = np.dtype(dtype).itemsize
        empty = np.zeros((1, kv_heads, 0, head_dim), dtype=dtype)
        self.values = [ort.OrtValue.ortvalue_from_numpy(empty, device, 0) for _ in range(2 * n_layers)]

    def get_seq_length(self, layer_idx: int = 0) -> int:
        return int(self.values[0].shape()[2])

    def crop(self, max_length: int) -> None:
        import onnxruntime as ort

        n = self.get_seq_length()
        if max_length < 0:
            max_length = n - abs(max_length)
        if n <= max_length:
            return
        max_length = max(0, max_length)
        self.values = [ort.OrtValue.ortvalue_from_numpy(np.ascontiguousarray(v.numpy()[:, :, :max_length]),
                                                        self.device, 0) for v in self.values]

    def __len__(self) -> int:
        return len(self.values) // 2

    def nbytes(self) -> int:
        return sum(int(np.prod(v.shape())) for v in self.values) * self.itemsize

    def remove(self, start: int, end: int) -> None:
        """Drops entries `[start, end)` of every layer (see runtime/kv_tail.py)."""
        import onnxruntime as ort

        self.values = [ort.OrtValue.ortvalue_from_numpy(
            np.ascontiguousarray(np.concatenate([v.numpy()[:, :, :start], v.numpy()[:, :, end:]], axis=2)),
            self.device, 0) for v in self.values]

    def tail(self, start: int) -> list[np.ndarray]:
        """Copies of every layer's entries from `start` on (see runtime/kv_tail.py)."""
        return [np.ascontiguousarray(v.numpy()[:, :, start:]) for v in self.values]

    def extend(self, tail: list[np.ndarray]) -> None:
        """Appends entries taken with `tail()` back after the current ones."""
        import onnxruntime as ort

        self.values = [ort.OrtValue.ortvalue_from_numpy(np.ascontiguousarray(np.concatenate([v.numpy(), t], axis=2)),
                                                        self.device, 0) for v, t in zip(self.values, tail)]


class OrtAdapter:
    """The stage interface a session needs, served from an export directory by ONNX Runtime."""

    def __init__(self, export_dir: str, manifest: Manifest, providers=None, threads: int | None = None):
        from transformers import AutoTokenizer

        self.export_dir = export_dir
        self.manifest = manifest
        rt = manifest.runtime
        self.family = manifest.model.family
        self.has_audio = bool(rt.has_audio)
        self.method_spec = manifest.method.spec
        p = dict(rt.prompt)
        p["stop"] = tuple(p["stop"])
        self.prompt = PromptFormat(**p)
        self.positions = build_positions(rt.positions)
        norm = rt.pixel_norm
        self.pixel_norm = PixelNorm(tuple(norm["mean"]), tuple(norm["std"]), norm.get("rescale", 1.0 / 255.0))
        self._frame_size = (int(rt.frame_size[0]), int(rt.frame_size[1]))
        try:
            self.tokenizer = AutoTokenizer.from_pretrained(os.path.join(export_dir, rt.tokenizer), local_files_only=True)
        except Exception as err:  # noqa: BLE001 - any failure means the copied tokenizer is unusable
            raise ManifestError(f"tokenizer in {os.path.join(export_dir, rt.tokenizer)} could not be loaded: "
                                f"{str(err).splitlines()[0] if str(err) else type(err).__name__}") from None
        self.providers = choose_providers(providers)
        self.device = "cuda" if any(x in self.providers for x in PROVIDER_ORDER[:2]) else "cpu"
        self._threads = threads
        self._opts = session_options(threads)
        self._sessions: dict = {}
        self._watch = None  # watch_inputs(): calibration records each graph run's inputs
        self._features = None  # the audio stage's mel extractor, loaded on first use
        emb = manifest.stage("embed")
        self._embed = np.load(os.path.join(export_dir, emb.file), mmap_mode="r")
        self._vision_spec = manifest.stage("vision")
        self._vision = self.session("vision")
        self._llm_spec = manifest.stage("llm")
        self._llm = self.session("llm")
        a = self._llm_spec.attrs
        self._n_layers, self._kv_heads, self._head_dim = int(a["num_layers"]), int(a["kv_heads"]), int(a["head_dim"])
        self._kv_dtype = NP_DTYPES[self._llm_spec.input("past_key_0").dtype]
        self._embed_dtype = NP_DTYPES[self._llm_spec.input("inputs_embeds").dtype]
        from vlmedge.export.stages import llm_io_names

        self._in_names, self._out_names = llm_io_names(self._n_layers)
        have = {t.name for t in self._llm_spec.inputs} | {t.name for t in self._llm_spec.outputs}
        lacking = [n for n in self._in_names + self._out_names if n not in have]
        if lacking:
            raise ManifestError(f"the llm stage lacks {lacking[0]!r} (expected inputs {', '.join(self._in_names[:4])}, "
                                "...); re-export with this vlmedge")
        self._taps = [int(t) for t in self._vision_spec.attrs.get("taps", [])]
        self._grid = tuple(self._vision_spec.attrs["grid_hw"])

    # ----- any stage, for methods that bring their own graphs -----
    def session(self, stage: str):
        """The ONNX Runtime session of an ONNX stage in the manifest (opened once)."""
        import onnxruntime as ort

        if stage not in self._sessions:
            spec = self.manifest.stage(stage)
            if spec.kind != "onnx":
                raise ManifestError(f"stage {stage!r} is a {spec.kind} file, not a graph")
            path = os.path.join(self.export_dir, spec.file)
            if spec.attrs.get("custom_ops"):
                self._sessions[stage] = _custom_ops_session(stage, spec.attrs["custom_ops"], path,
                                                            session_options(self._threads), self.providers)
            else:
                self._sessions[stage] = ort.InferenceSession(path, sess_options=self._opts, providers=self.providers)
        return self._sessions[stage]

    def watch_inputs(self, fn) -> None:
        """Calls `fn(stage, feeds)` with every graph run's inputs as numpy arrays, KV included (`None` stops).
        INT8 calibration records real activations of a stream this way (calibration/capture.py); it copies the
        KV cache on each LLM step, so it is for calibration runs, not for serving."""
        self._watch = fn

    def run_stage(self, stage: str, feeds: dict, outputs=None) -> dict:
        """Runs an exported stage on numpy inputs (cast to the dtypes the manifest records); returns its
        outputs by name. A method whose runtime needs a graph of its own (e.g. a stateful vision variant)
        reaches it here without changes to this backend."""
        spec = self.manifest.stage(stage)
        want = {t.name: NP_DTYPES.get(t.dtype) for t in spec.inputs}
        unknown = sorted(set(feeds) - set(want))
        if unknown:
            raise InputError(f"stage {stage!r} has no input {unknown[0]!r} (inputs: {', '.join(want)})")
        cast = {k: np.ascontiguousarray(np.asarray(v, dtype=want[k])) for k, v in feeds.items()}
        names = list(outputs) if outputs else [t.name for t in spec.outputs]
        if self._watch is not None:
            self._watch(stage, cast)
        return dict(zip(names, self.session(stage).run(names, cast)))

    # ----- what the session and tools read -----
    @property
    def frame_size(self) -> tuple[int, int]:
        return self._frame_size

    @property
    def hidden_size(self) -> int:
        return int(self.manifest.model.hidden_size)

    @property
    def dtype(self) -> torch.dtype:
        return torch.float32  # what this backend hands the session; graph IO dtypes are in the manifest

    def tokenize(self, text: str) -> torch.Tensor:
        ids = self.tokenizer(text, add_special_tokens=False)["input_ids"]
        return torch.tensor(ids, dtype=torch.long)

    def pixels(self, frame) -> torch.Tensor:
        return to_pixels(frame, self.frame_size, self.pixel_norm, dtype=torch.float32)

    # ----- stages -----
    def encode_frame(self, frame, taps=()) -> FrameTokens:
        missing = [t for t in taps if t not in self._taps]
        if missing:
            raise InputError(f"vision taps {missing} were not exported (this export has taps {self._taps or 'none'}); "
                             "re-export with the method that reads them")
        names = ["features", "trailer", *[f"tap_{t}" for t in taps]]
        feeds = {"pixels": self.pixels(frame).numpy()}
        if self._watch is not None:
            self._watch("vision", feeds)
        out = self._vision.run(names, feeds)
        tokens = FrameTokens(features=torch.from_numpy(out[0]), grid_hw=self._grid, trailer=torch.from_numpy(out[1]))
        tokens.taps = {t: torch.from_numpy(o) for t, o in zip(taps, out[2:])}
        return tokens

    def encode_audio(self, wave):
        """A second of 16 kHz mono audio → AudioTokens, through the exported `audio` stage (export/audio.py)."""
        if "audio" not in self.manifest.stages:
            raise InputError(f"this export of {self.family} has no audio stage; re-export the omni model with this "
                             "vlmedge to answer from audio")
        spec = self.manifest.stage("audio").attrs
        mel = self._mel(wave, spec)
        if mel.shape[1] != spec["mel_frames"]:
            raise InputError(f"this export's audio stage takes {spec['chunk_s']:g} s chunks ({spec['mel_frames']} mel "
                             f"frames); got {mel.shape[1] * 0.01:.2f} s")
        out = self.run_stage("audio", {"mel": mel})
        return AudioTokens(features=torch.from_numpy(out["features"]), q=torch.from_numpy(out["q"]),
                           k=torch.from_numpy(out["k"]), chunks=[tuple(c) for c in spec["chunks"]],
                           seconds_per_token=float(spec["seconds_per_token"]))

    def _mel(self, wave, spec) -> np.ndarray:
        from transformers import WhisperFeatureExtractor

        from vlmedge.models.qwen2_5_omni import log_mel

        if self._features is None:
            self._features = WhisperFeatureExtractor.from_pretrained(
                os.path.join(self.export_dir, spec["feature_extractor"]), local_files_only=True)
        return log_mel(self._features, wave)

    @torch.no_grad()
    def embed_text(self, ids: torch.Tensor) -> torch.Tensor:
        ids = ids.reshape(-1).numpy()
        if ids.size and (ids.min() < 0 or ids.max() >= self._embed.shape[0]):
            raise InputError(f"token id out of range 0..{self._embed.shape[0] - 1}")
        return torch.from_numpy(np.asarray(self._embed[ids], dtype=np.float32))

    def new_cache(self) -> OrtKVCache:
        return OrtKVCache(self._n_layers, self._kv_heads, self._head_dim, self._kv_dtype, self.device)

    @torch.no_grad()
    def forward_llm(self, embeds: torch.Tensor, position_ids: torch.Tensor, cache: OrtKVCache,
                    last_only: bool = True) -> torch.Tensor:
        """Runs `embeds [L, D]` at `position_ids [rows, L]` after what `cache` holds; returns float32 logits
        `[1, V]` (last token) or `[L, V]`, and extends the cache only when the run succeeded."""
        import onnxruntime as ort

        n = int(embeds.shape[0])
        if n == 0:
            raise InputError("forward_llm needs at least one token")
        feeds = [
            np.ascontiguousarray(embeds.detach().float().numpy().astype(self._embed_dtype, copy=False)[None]),
            np.ascontiguousarray(self.positions.model_position_ids(position_ids).numpy().astype(np.int64)),
            np.array([n - 1], dtype=np.int64) if last_only else np.arange(n, dtype=np.int64),
        ]
        if self._watch is not None:
            self._watch("llm", {**dict(zip(self._in_names[:3], feeds)),
                                **{name: v.numpy() for name, v in zip(self._in_names[3:], cache.values)}})
        binding = self._llm.io_binding()
        for name, arr in zip(self._in_names[:3], feeds):
            binding.bind_ortvalue_input(name, ort.OrtValue.ortvalue_from_numpy(arr, self.device, 0))
        for name, value in zip(self._in_names[3:], cache.values):
            binding.bind_ortvalue_input(name, value)
        binding.bind_output("logits", "cpu")
        for name in self._out_names[1:]:
            binding.bind_output(name, self.device)
        self._llm.run_with_iobinding(binding)
        outs = binding.get_outputs()
        cache.values = list(outs[1:])
        return torch.from_numpy(outs[0].numpy()[0])


def _custom_ops_session(stage: str, record: dict, path: str, opts, providers):
    """A session for a graph with `vlmedge` domain ops: refused when the export's op version is not this
    runtime's (the ops' semantics are versioned with the domain), else run with the onnxruntime-extensions
    kernels (export/ops/onnxruntime_ops.py)."""
    from vlmedge.export.ops.reference import DOMAIN, VERSION

    if record.get("domain") != DOMAIN or int(record.get("version", -1)) != VERSION:
        raise ManifestError(f"stage {stage!r} uses custom ops of {record.get('domain')!r} version "
                            f"{record.get('version')}, but this vlmedge implements {DOMAIN!r} version {VERSION}; "
                            "re-export with this vlmedge (or --no-custom-ops)")
    try:
        from vlmedge.export.ops import onnxruntime_ops
    except ImportError as err:
        raise ManifestError(f"stage {stage!r} uses vlmedge custom ops ({', '.join(record.get('ops', []))}) and "
                            f"their ONNX Runtime kernels cannot load ({err}); `pip install onnxruntime-extensions` "
                            "or re-export with --no-custom-ops") from None
    return onnxruntime_ops.inference_session(path, onnxruntime_ops.session_options(opts),
                                             providers=providers)


def load_backend(export_dir: str, providers=None, verify: bool = True, threads: int | None = None) -> OrtAdapter:
    """Validates `export_dir/manifest.json` and its files (sha256 with `verify`) and opens the graphs."""
    manifest = Manifest.load(export_dir, verify=verify)
    for stage in ("embed", "vision", "llm"):
        manifest.stage(stage)
    return OrtAdapter(export_dir, manifest, providers=providers, threads=threads)
