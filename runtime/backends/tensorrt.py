"""TensorRT backend: an export directory's engines behind the adapter surface the streaming session uses.

`load_backend(export_dir)` validates the manifest (files, checksums, schema), its engines record (every stage the
session runs has an engine; plugin version, TensorRT version and GPU match this machine) and returns a
`TrtAdapter`; `StreamingSession(load_backend(d), method)` then runs as with the ONNX Runtime backend. Engines come
from `vlmedge.export.trt.engine.build_engines` (+ `write_engine_record`), built on this machine's GPU.

The adapter surface is OrtAdapter's (runtime/backends/onnxruntime.py): tokenize, pixels, embed_text, encode_frame,
encode_audio, new_cache, forward_llm, run_stage, watch_inputs and the prompt/positions/frame_size/... attributes.
Engine IO are torch CUDA tensors; what the session gets back is what the ONNX Runtime backend gives it (float32 CPU
tensors; numpy from run_stage), so the session and the methods run unchanged.

One `EngineRunner` (engine + one execution context) per stage, opened on first use; everything runs on torch's
current CUDA stream, so torch work before and after a run is ordered with it without extra synchronisation.

The KV cache (`TrtKVCache`) stays on the GPU. The llm graph reads `past_*` `[1, kv_heads, P, head_dim]` and writes
`present_*` `[1, kv_heads, P+L, head_dim]` (past and the new tokens): each layer's keys and values live in two
device buffers used in turn — a step reads the current one and writes the other, which becomes current when the run
succeeded (a failed run leaves the cache as it was). Buffers grow in 256-token steps and are reused, so a decode step
allocates nothing. Peak KV memory is twice the held context (past and present exist together during a step, as
with any graph that returns present = concat(past, new)). `crop`, `remove`, `tail`/`extend` (kv_tail.py) copy on
the device; `layers[i].keys/.values` give views (valid until the cache changes) and accept assignments, so the
transformers-cache code paths of kv_tail work too.

A prefill longer than the engine's `seq` profile maximum is run in chunks of at most that many tokens (the same
computation with the KV cache); a context beyond the `past` maximum is refused with what to rebuild.
"""
from __future__ import annotations

import os
from typing import TYPE_CHECKING, Any, Iterable, Mapping, Sequence

import numpy as np
import torch

from vlmedge.errors import InputError
from vlmedge.export.manifest import Manifest, ManifestError, build_positions
from vlmedge.models.base import AudioTokens, FrameTokens, PromptFormat
from vlmedge.models.preprocess import PixelNorm, to_pixels

if TYPE_CHECKING:  # type checking only: TensorRT is imported when an engine is opened
    import tensorrt as trt

TORCH_DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16,
                "int64": torch.int64, "int32": torch.int32, "bool": torch.bool, "uint8": torch.uint8,
                "int8": torch.int8}
_TRT_NAMES = {"FLOAT": torch.float32, "HALF": torch.float16, "BF16": torch.bfloat16, "INT64": torch.int64,
              "INT32": torch.int32, "BOOL": torch.bool, "UINT8": torch.uint8, "INT8": torch.int8}
KV_GROW_TOKENS = 256


def torch_dtype(trt_dtype: Any) -> torch.dtype:
    """A TensorRT DataType as a torch dtype."""
    name = getattr(trt_dtype, "name", str(trt_dtype).split(".")[-1])
    if name not in _TRT_NAMES:
        raise TypeError(f"TensorRT type {name} has no torch equivalent here")
    return _TRT_NAMES[name]


# ----- one engine, one execution context -----
def _dims(d: Any) -> tuple[int, ...]:
    """A TensorRT Dims as a tuple (the stubs give Dims __len__ and __getitem__, not __iter__)."""
    return tuple(int(d[i]) for i in range(len(d)))


def _output_allocator(dtype: torch.dtype) -> Any:
    """An IOutputAllocator that hands TensorRT torch memory for an output whose shape is only known after the run
    (a data-dependent length: PruneCompact's K, KeepCount's count)."""
    import tensorrt as trt

    class TorchOutputAllocator(trt.IOutputAllocator):
        def __init__(self) -> None:
            trt.IOutputAllocator.__init__(self)
            self.dtype = dtype
            self.buffer: torch.Tensor | None = None
            self.shape: tuple[int, ...] | None = None

        def _reserve(self, size: int) -> int:
            if self.buffer is None or self.buffer.numel() < size:
                self.buffer = torch.empty(max(int(size), 1), dtype=torch.uint8, device="cuda")
            return int(self.buffer.data_ptr())

        def reallocate_output(self, tensor_name: str, memory: int, size: int, alignment: int) -> int:
            return self._reserve(size)

        def reallocate_output_async(self, tensor_name: str, memory: int, size: int, alignment: int,
                                    stream: int) -> int:
            return self._reserve(size)

        def notify_shape(self, tensor_name: str, shape: Any) -> None:
            self.shape = tuple(int(d) for d in shape)

        def result(self) -> torch.Tensor:
            if self.shape is None or self.buffer is None:
                raise RuntimeError("TensorRT did not report the output's shape")
            n = 1
            for d in self.shape:
                n *= d
            item = torch.empty((), dtype=self.dtype).element_size()
            return self.buffer[: n * item].view(self.dtype).view(self.shape).clone()

    return TorchOutputAllocator()


class EngineRunner:
    """A deserialised engine with one execution context, run on torch CUDA tensors on the current torch stream.

    `run(feeds, out=None)`: feeds by input name (any device/dtype: moved and cast to what the engine takes),
    optional preallocated outputs (contiguous, right shape and dtype); returns every output as a CUDA tensor.
    Outputs with a data-dependent shape come back through an output allocator (copied out after the run)."""

    def __init__(self, engine: bytes | str, name: str = "engine"):
        from vlmedge.export.trt.engine import (EngineMismatchError, last_trt_error, require_tensorrt, trt_logger)

        require_tensorrt()
        import tensorrt as trt

        self.name = name
        if isinstance(engine, str):
            with open(engine, "rb") as f:
                engine = f.read()
        self._runtime = trt.Runtime(trt_logger())
        eng = self._runtime.deserialize_cuda_engine(engine)
        if eng is None:
            raise EngineMismatchError(f"{name}: TensorRT could not deserialise the engine "
                                      f"({last_trt_error('built by another TensorRT version or for another GPU?')}); "
                                      "rebuild it on this machine")
        self.engine: trt.ICudaEngine = eng
        self.context: trt.IExecutionContext = eng.create_execution_context()
        self.inputs: list[str] = []
        self.outputs: list[str] = []
        self.dtypes: dict[str, torch.dtype] = {}
        for i in range(eng.num_io_tensors):
            n = eng.get_tensor_name(i)
            (self.inputs if eng.get_tensor_mode(n) == trt.TensorIOMode.INPUT else self.outputs).append(n)
            self.dtypes[n] = torch_dtype(eng.get_tensor_dtype(n))
        self.host_inputs = {n for n in self.inputs if eng.is_shape_inference_io(n)}
        self.profiles: dict[str, tuple[tuple[int, ...], tuple[int, ...], tuple[int, ...]]] = {}
        for n in self.inputs:
            if n not in self.host_inputs and any(d < 0 for d in _dims(eng.get_tensor_shape(n))):
                lo, op, hi = eng.get_tensor_profile_shape(n, 0)
                self.profiles[n] = (_dims(lo), _dims(op), _dims(hi))
        self._allocators: dict[str, Any] = {}
        self._keep: list[torch.Tensor] = []
        self._null = torch.empty(64, dtype=torch.uint8, device="cuda")  # an address for empty tensors

    def _address(self, t: torch.Tensor) -> int:
        return int(t.data_ptr()) if t.numel() else int(self._null.data_ptr())

    def run(self, feeds: Mapping[str, torch.Tensor], out: Mapping[str, torch.Tensor] | None = None
            ) -> dict[str, torch.Tensor]:
        from vlmedge.export.trt.engine import last_trt_error

        unknown = sorted(set(feeds) - set(self.inputs))
        if unknown:
            raise InputError(f"{self.name} has no input {unknown[0]!r} (inputs: {', '.join(self.inputs)})")
        dev = torch.device("cuda", torch.cuda.current_device())
        keep: list[torch.Tensor] = []
        for n in self.inputs:
            if n not in feeds:
                raise InputError(f"{self.name} needs input {n!r}")
            t = torch.as_tensor(feeds[n])
            t = (t.to("cpu", self.dtypes[n]) if n in self.host_inputs else t.to(dev, self.dtypes[n])).contiguous()
            if not self.context.set_input_shape(n, tuple(t.shape)):
                lim = self.profiles.get(n)
                rng = f" (profile: {list(lim[0])} .. {list(lim[2])})" if lim else ""
                raise InputError(f"{self.name}: input {n!r} of shape {list(t.shape)} is outside the engine{rng}")
            self.context.set_tensor_address(n, self._address(t))
            keep.append(t)
        results: dict[str, Any] = {}
        for n in self.outputs:
            shape = _dims(self.context.get_tensor_shape(n))
            if any(d < 0 for d in shape):
                if n not in self._allocators:
                    self._allocators[n] = _output_allocator(self.dtypes[n])
                    self.context.set_output_allocator(n, self._allocators[n])
                results[n] = self._allocators[n]
                continue
            o = out.get(n) if out else None
            if o is None:
                o = torch.empty(shape, dtype=self.dtypes[n], device=dev)
            elif tuple(o.shape) != shape or o.dtype != self.dtypes[n] or not o.is_contiguous() or not o.is_cuda:
                raise InputError(f"{self.name}: output {n!r} must be a contiguous CUDA {self.dtypes[n]} tensor of "
                                 f"shape {list(shape)}, got {o.dtype} {list(o.shape)}")
            self.context.set_tensor_address(n, self._address(o))
            results[n] = o
        if not self.context.execute_async_v3(torch.cuda.current_stream().cuda_stream):
            raise RuntimeError(f"{self.name}: TensorRT could not run the engine ({last_trt_error('see the log')})")
        self._keep = keep  # the inputs stay alive until the next run (the work on the stream reads them)
        return {n: (r.result() if n in self._allocators else r) for n, r in results.items()}


# ----- the KV cache on the device -----
class _LayerView:
    """`cache.layers[i]`: keys/values as views, assignable (transformers-cache code paths of kv_tail.py)."""

    def __init__(self, cache: "TrtKVCache", layer: int):
        self._cache, self._i = cache, 2 * layer

    @property
    def keys(self) -> torch.Tensor:
        return self._cache.tensor(self._i)

    @keys.setter
    def keys(self, value: torch.Tensor) -> None:
        self._cache.rewrite(self._i, [value])

    @property
    def values(self) -> torch.Tensor:
        return self._cache.tensor(self._i + 1)

    @values.setter
    def values(self, value: torch.Tensor) -> None:
        self._cache.rewrite(self._i + 1, [value])


class TrtKVCache:
    """Per-layer keys and values `[1, kv_heads, seq, head_dim]` on the device, in two buffers per tensor used in turn
    (see the module docstring), with the calls the session makes on a cache: `get_seq_length()`, `crop(n)`
    (negative: drop that many), and kv_tail's `remove`, `tail`, `extend`, `nbytes`, `layers`.
    Works on any torch device (the tests run it on CPU)."""

    def __init__(self, n_layers: int, kv_heads: int, head_dim: int, dtype: torch.dtype,
                 device: str | torch.device = "cuda", grow: int = KV_GROW_TOKENS):
        self.n_layers, self.kv_heads, self.head_dim = int(n_layers), int(kv_heads), int(head_dim)
        self.dtype, self.device, self.grow = dtype, torch.device(device), int(grow)
        empty = torch.empty(0, dtype=dtype, device=self.device)
        self._bufs = [[empty, empty] for _ in range(2 * self.n_layers)]
        self._cur = [0] * (2 * self.n_layers)
        self._len = [0] * (2 * self.n_layers)

    # ----- the buffers -----
    @property
    def _per_token(self) -> int:
        return self.kv_heads * self.head_dim

    def tensor(self, i: int) -> torch.Tensor:
        """Tensor `i` (2*layer for keys, 2*layer+1 for values) as `[1, kv_heads, len, head_dim]` (a view)."""
        n = self._len[i]
        return self._bufs[i][self._cur[i]][: n * self._per_token].view(1, self.kv_heads, n, self.head_dim)

    def target(self, i: int, length: int) -> torch.Tensor:
        """The spare buffer of tensor `i` as `[1, kv_heads, length, head_dim]`, grown when needed: where the next
        value of the tensor is written before `commit(i, length)`."""
        spare = 1 - self._cur[i]
        need = int(length) * self._per_token
        if self._bufs[i][spare].numel() < need:
            have = self._bufs[i][self._cur[i]].numel() // max(1, self._per_token)
            tokens = max(int(length), int(have * 1.5))
            tokens = -(-tokens // self.grow) * self.grow
            self._bufs[i][spare] = torch.empty(tokens * self._per_token, dtype=self.dtype, device=self.device)
        return self._bufs[i][spare][:need].view(1, self.kv_heads, int(length), self.head_dim)

    def commit(self, i: int, length: int) -> None:
        self._cur[i] = 1 - self._cur[i]
        self._len[i] = int(length)

    def rewrite(self, i: int, parts: Sequence[torch.Tensor]) -> None:
        """Tensor `i` := the concatenation of `parts` along the sequence (copied into the spare buffer)."""
        spare_ptr = self._bufs[i][1 - self._cur[i]].untyped_storage().data_ptr()
        parts = [p.clone() if p.numel() and p.untyped_storage().data_ptr() == spare_ptr else p for p in parts]
        parts = [p.to(self.device, self.dtype).reshape(1, self.kv_heads, -1, self.head_dim) for p in parts]
        length = sum(int(p.shape[2]) for p in parts)
        torch.cat(parts, dim=2, out=self.target(i, length))
        self.commit(i, length)

    # ----- what the session and kv_tail call -----
    def get_seq_length(self, layer_idx: int = 0) -> int:
        return self._len[2 * layer_idx]

    def crop(self, max_length: int) -> None:
        n = self.get_seq_length()
        if max_length < 0:
            max_length = n - abs(max_length)
        if n <= max_length:
            return
        max_length = max(0, max_length)
        for i in range(2 * self.n_layers):
            self.rewrite(i, [self.tensor(i)[:, :, :max_length]])

    def remove(self, start: int, end: int) -> None:
        """Drops entries `[start, end)` of every layer."""
        for i in range(2 * self.n_layers):
            t = self.tensor(i)
            self.rewrite(i, [t[:, :, :start], t[:, :, end:]])

    def tail(self, start: int) -> list[torch.Tensor]:
        """Copies (on the device) of every tensor's entries from `start` on."""
        return [self.tensor(i)[:, :, start:].clone() for i in range(2 * self.n_layers)]

    def extend(self, tail: Sequence[torch.Tensor]) -> None:
        """Appends entries taken with `tail()` after the current ones."""
        for i, t in enumerate(tail):
            self.rewrite(i, [self.tensor(i), t])

    @property
    def layers(self) -> list[_LayerView]:
        return [_LayerView(self, layer) for layer in range(self.n_layers)]

    def __len__(self) -> int:
        return self.n_layers

    def nbytes(self) -> int:
        return sum(self._len) * self._per_token * torch.empty((), dtype=self.dtype).element_size()

    def reserved_bytes(self) -> int:
        """Device memory the buffers hold (both of each pair, at their grown capacity)."""
        return sum(b.numel() * b.element_size() for pair in self._bufs for b in pair)


# ----- the adapter -----
class TrtAdapter:
    """The stage interface a session needs, served from an export directory's TensorRT engines."""

    def __init__(self, export_dir: str, manifest: Manifest, engines: Mapping[str, Mapping]):
        from transformers import AutoTokenizer

        from vlmedge.export.stages import llm_io_names

        self.export_dir = export_dir
        self.manifest = manifest
        self.engines = {k: dict(v) for k, v in engines.items()}
        rt = manifest.runtime
        # the non-graph parts, as OrtAdapter builds them (see the report: a shared helper would serve both)
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
            self.tokenizer = AutoTokenizer.from_pretrained(os.path.join(export_dir, rt.tokenizer),
                                                           local_files_only=True)
        except Exception as err:  # noqa: BLE001 - any failure means the copied tokenizer is unusable
            raise ManifestError(f"tokenizer in {os.path.join(export_dir, rt.tokenizer)} could not be loaded: "
                                f"{str(err).splitlines()[0] if str(err) else type(err).__name__}") from None
        self.device = "cuda"
        self._watch: Any = None
        self._features: Any = None
        self._runners: dict[str, EngineRunner] = {}
        emb = manifest.stage("embed")
        self._embed = np.load(os.path.join(export_dir, emb.file), mmap_mode="r")
        self._vision_spec = manifest.stage("vision")
        self._llm_spec = manifest.stage("llm")
        a = self._llm_spec.attrs
        self._n_layers, self._kv_heads, self._head_dim = int(a["num_layers"]), int(a["kv_heads"]), int(a["head_dim"])
        self._in_names, self._out_names = llm_io_names(self._n_layers)
        have = {t.name for t in self._llm_spec.inputs} | {t.name for t in self._llm_spec.outputs}
        lacking = [n for n in self._in_names + self._out_names if n not in have]
        if lacking:
            raise ManifestError(f"the llm stage lacks {lacking[0]!r}; re-export with this vlmedge")
        self._taps = [int(t) for t in self._vision_spec.attrs.get("taps", [])]
        self._grid = tuple(self._vision_spec.attrs["grid_hw"])
        self._vision = self.runner("vision")
        self._llm = self.runner("llm")
        self._kv_dtype = self._llm.dtypes[self._in_names[3]]
        prof = self._llm.profiles
        self._max_seq = int(prof["inputs_embeds"][2][1]) if "inputs_embeds" in prof else None
        self._max_past = int(prof[self._in_names[3]][2][2]) if self._in_names[3] in prof else None

    # ----- engines -----
    def runner(self, stage: str) -> EngineRunner:
        """The engine of a stage (opened once)."""
        if stage not in self._runners:
            spec = self.manifest.stage(stage)
            rec = self.engines.get(stage)
            if rec is None:
                raise ManifestError(f"stage {stage!r} ({spec.file}) has no TensorRT engine in this export "
                                    f"(engines: {', '.join(self.engines) or 'none'}); rebuild the engines")
            self._runners[stage] = EngineRunner(os.path.join(self.export_dir, rec["file"]), f"engine {rec['file']!r}")
        return self._runners[stage]

    def watch_inputs(self, fn: Any) -> None:
        """Calls `fn(stage, feeds)` with every engine run's inputs as numpy arrays (`None` stops); as
        OrtAdapter.watch_inputs (it copies the KV cache to the host on each LLM step: calibration only)."""
        self._watch = fn

    def run_stage(self, stage: str, feeds: Mapping[str, Any], outputs: Iterable[str] | None = None
                  ) -> dict[str, np.ndarray]:
        """Runs a stage's engine on numpy (or torch) inputs, cast to the dtypes the manifest records; returns its
        outputs by name as numpy arrays (OrtAdapter.run_stage's contract)."""
        spec = self.manifest.stage(stage)
        want = {t.name: TORCH_DTYPES.get(t.dtype, torch.float32) for t in spec.inputs}
        unknown = sorted(set(feeds) - set(want))
        if unknown:
            raise InputError(f"stage {stage!r} has no input {unknown[0]!r} (inputs: {', '.join(want)})")
        cast = {k: torch.as_tensor(np.asarray(v) if not isinstance(v, torch.Tensor) else v).to(want[k])
                for k, v in feeds.items()}
        if self._watch is not None:
            self._watch(stage, {k: v.detach().cpu().numpy() for k, v in cast.items()})
        out = self.runner(stage).run(cast)
        names = list(outputs) if outputs else [t.name for t in spec.outputs]
        missing = [n for n in names if n not in out]
        if missing:
            raise InputError(f"stage {stage!r} has no output {missing[0]!r} (outputs: {', '.join(out)})")
        return {n: out[n].cpu().numpy() for n in names}

    # ----- what the session and tools read -----
    @property
    def frame_size(self) -> tuple[int, int]:
        return self._frame_size

    @property
    def hidden_size(self) -> int:
        return int(self.manifest.model.hidden_size)

    @property
    def dtype(self) -> torch.dtype:
        return torch.float32  # what this backend hands the session; engine IO dtypes are in the engines

    def tokenize(self, text: str) -> torch.Tensor:
        ids = self.tokenizer(text, add_special_tokens=False)["input_ids"]
        return torch.tensor(ids, dtype=torch.long)

    def pixels(self, frame: Any) -> torch.Tensor:
        return to_pixels(frame, self.frame_size, self.pixel_norm, dtype=torch.float32)

    # ----- stages -----
    def encode_frame(self, frame: Any, taps: Sequence[int] = ()) -> FrameTokens:
        missing = [t for t in taps if t not in self._taps]
        if missing:
            raise InputError(f"vision taps {missing} were not exported (this export has taps {self._taps or 'none'}); "
                             "re-export with the method that reads them")
        pixels = self.pixels(frame)
        if self._watch is not None:
            self._watch("vision", {"pixels": pixels.numpy()})
        out = self._vision.run({"pixels": pixels})
        tokens = FrameTokens(features=out["features"].float().cpu(), grid_hw=self._grid,
                             trailer=out["trailer"].float().cpu())
        tokens.taps = {t: out[f"tap_{t}"].float().cpu() for t in taps}
        return tokens

    def encode_audio(self, wave: Any) -> AudioTokens:
        """A second of 16 kHz mono audio → AudioTokens, through the exported `audio` stage's engine."""
        if "audio" not in self.manifest.stages:
            raise InputError(f"this export of {self.family} has no audio stage; re-export the omni model with this "
                             "vlmedge to answer from audio")
        spec = self.manifest.stage("audio").attrs
        from transformers import WhisperFeatureExtractor

        from vlmedge.models.qwen2_5_omni import log_mel

        if self._features is None:
            self._features = WhisperFeatureExtractor.from_pretrained(
                os.path.join(self.export_dir, spec["feature_extractor"]), local_files_only=True)
        mel = log_mel(self._features, wave)
        if mel.shape[1] != spec["mel_frames"]:
            raise InputError(f"this export's audio stage takes {spec['chunk_s']:g} s chunks ({spec['mel_frames']} mel "
                             f"frames); got {mel.shape[1] * 0.01:.2f} s")
        out = self.run_stage("audio", {"mel": mel})
        return AudioTokens(features=torch.from_numpy(out["features"]), q=torch.from_numpy(out["q"]),
                           k=torch.from_numpy(out["k"]), chunks=[tuple(c) for c in spec["chunks"]],
                           seconds_per_token=float(spec["seconds_per_token"]))

    @torch.no_grad()
    def embed_text(self, ids: torch.Tensor) -> torch.Tensor:
        flat = ids.reshape(-1).numpy()
        if flat.size and (flat.min() < 0 or flat.max() >= self._embed.shape[0]):
            raise InputError(f"token id out of range 0..{self._embed.shape[0] - 1}")
        return torch.from_numpy(np.asarray(self._embed[flat], dtype=np.float32))

    def new_cache(self) -> TrtKVCache:
        return TrtKVCache(self._n_layers, self._kv_heads, self._head_dim, self._kv_dtype, "cuda")

    @torch.no_grad()
    def forward_llm(self, embeds: torch.Tensor, position_ids: torch.Tensor, cache: TrtKVCache,
                    last_only: bool = True) -> torch.Tensor:
        """Runs `embeds [L, D]` at `position_ids [rows, L]` after what `cache` holds; returns float32 CPU logits
        `[1, V]` (last token) or `[L, V]`. Prefills longer than the engine's seq maximum run in chunks. The cache is
        extended only when the whole call succeeded."""
        n = int(embeds.shape[0])
        if n == 0:
            raise InputError("forward_llm needs at least one token")
        ids = self.positions.model_position_ids(position_ids)
        step = self._max_seq or n
        before = cache.get_seq_length()
        pieces: list[torch.Tensor] = []
        try:
            for s in range(0, n, step):
                e = min(n, s + step)
                logits = self._step(embeds[s:e], ids[..., s:e], cache, last_only)
                if not last_only:
                    pieces.append(logits)
        except BaseException:
            cache.crop(before)
            raise
        out = logits if last_only else torch.cat(pieces)
        return out.float().cpu()

    def _step(self, embeds: torch.Tensor, ids: torch.Tensor, cache: TrtKVCache, last_only: bool) -> torch.Tensor:
        n = int(embeds.shape[0])
        past = cache.get_seq_length()
        if self._max_past is not None and past > self._max_past:
            raise InputError(f"the stream holds {past} tokens but the llm engine was built for at most "
                             f"{self._max_past} (its 'past' profile); rebuild the engines with a larger context "
                             "(build_engines(max_context=...)) or hold fewer frames")
        dev = torch.device("cuda", torch.cuda.current_device())
        feeds = {
            self._in_names[0]: embeds.detach().to(dev, self._llm.dtypes[self._in_names[0]]).unsqueeze(0),
            self._in_names[1]: ids.to(dev, torch.int64),
            self._in_names[2]: (torch.tensor([n - 1], device=dev) if last_only else torch.arange(n, device=dev)),
        }
        kv = {name: cache.tensor(i) for i, name in enumerate(self._in_names[3:])}
        if self._watch is not None:
            self._watch("llm", {**{k: v.cpu().numpy() for k, v in feeds.items()},
                                **{k: v.cpu().numpy() for k, v in kv.items()}})
        feeds.update(kv)
        present = {name: cache.target(i, past + n) for i, name in enumerate(self._out_names[1:])}
        out = self._llm.run(feeds, present)
        for i in range(len(present)):
            cache.commit(i, past + n)
        return out[self._out_names[0]][0]


def load_backend(export_dir: str, verify: bool = True) -> TrtAdapter:
    """Validates `export_dir/manifest.json` (files, sha256 with `verify`), its engines record (plugin version,
    TensorRT version, GPU) and opens the engines."""
    from vlmedge.export.trt.engine import (check_engine_platform, check_plugin_version, read_engine_record,
                                           require_cuda, require_tensorrt)

    manifest = Manifest.load(export_dir, verify=verify)
    for stage in ("embed", "vision", "llm"):
        manifest.stage(stage)
    record = read_engine_record(export_dir, manifest)
    if not record:
        raise ManifestError(f"{export_dir} records no TensorRT engines; build them on this machine "
                            "(vlmedge.export.trt.engine.build_engines + write_engine_record) or run the export with "
                            "ONNX Runtime (backend 'onnxruntime')")
    lacking = [s for s in ("vision", "llm") if s not in record]
    if lacking:
        raise ManifestError(f"{export_dir} has no TensorRT engine for its {lacking[0]!r} stage (engines: "
                            f"{', '.join(record)}); rebuild the engines")
    for stage, rec in record.items():
        if not os.path.isfile(os.path.join(export_dir, str(rec.get("file", "")))):
            raise ManifestError(f"the {stage!r} engine {rec.get('file')!r} is missing from {export_dir}; rebuild "
                                "the engines or copy the whole export directory")
    check_plugin_version(record)
    require_tensorrt(export_dir)
    import tensorrt as trt

    _, cc = require_cuda(export_dir)
    check_engine_platform(record, trt.__version__, cc)
    if any(rec.get("plugins") for rec in record.values()):
        from vlmedge.export.trt.plugins import register_plugins

        register_plugins()  # JIT plugins call back into Python: their definitions must exist before deserialising
    return TrtAdapter(export_dir, manifest, record)


__all__ = ["EngineRunner", "TrtKVCache", "TrtAdapter", "load_backend", "torch_dtype"]
