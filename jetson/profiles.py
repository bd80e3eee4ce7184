"""Jetson Orin device profiles: what each module is, and the vlmedge defaults that follow from it.

A profile holds two kinds of values, kept apart on purpose:

* **Facts** about the module (memory, GPU SMs and CUDA cores, DLA count, nvpmodel power modes) from NVIDIA's
  Jetson Orin module data sheets and the Jetson Linux developer guide. Anything not certain carries a
  comment saying so. On a device, `/etc/nvpmodel.conf` is the source of truth for power modes (see
  `vlmedge.jetson.detect.read_power_modes`); the table here is what `vlmedge jetson info` falls back to.
* **vlmedge defaults** derived from the facts by rules stated below (memory budget, TensorRT workspace,
  sample fps, tokens per frame). These are starting points chosen without a device to measure on, not
  measurements; tune them with `vlmedge bench` on the board.

All Orin modules share one GPU architecture: Ampere, compute capability 8.7 (`sm_87`), 128 CUDA cores per SM.
Precisions: FP16 and INT8 run on the tensor cores (BF16/TF32 exist on Ampere but TensorRT on Orin is used with
FP16/INT8 here); there is no FP8 (that needs sm_89+), and the DLA runs only FP16/INT8.

Memory on Jetson is shared: the CPU, the GPU, the camera stack (Argus/ISP, NVMM buffers) and the OS all draw
from the same LPDDR5, so a budget must leave room for all of them (`default_memory_budget`).
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field

from vlmedge.errors import InputError, UnknownNameError

GiB = 1 << 30
MiB = 1 << 20

GPU_ARCH = "sm_87"
COMPUTE_CAPABILITY = (8, 7)
CUDA_CORES_PER_SM = 128  # Ampere GA10B
PRECISIONS = ("fp16", "int8")  # what TensorRT engines for Orin are built in (DLA: the same two)
NOT_ON_ORIN = ("fp8", "fp4")  # need Ada/Hopper/Blackwell tensor cores

# --- the memory-budget rule -------------------------------------------------------------------------------
# budget = nominal memory - OS reserve - camera reserve - 10% headroom, rounded down to 256 MiB.
#   OS reserve (1.5 GiB): kernel and firmware carve-outs (not even in MemTotal), systemd, networking, sshd,
#     nvargus-daemon; assumes a headless system (`systemctl set-default multi-user.target`; the desktop
#     takes roughly another 1 GiB).
#   camera reserve (0.75 GiB): NVMM capture buffers, ISP/VIC working memory and GStreamer queues for one
#     1080p30 camera.
#   10% headroom: the CUDA context, page cache for model files, and nvmap fragmentation.
OS_RESERVE = 1536 * MiB
CAMERA_RESERVE = 768 * MiB
HEADROOM_FRACTION = 0.10
BUDGET_ROUNDING = 256 * MiB
# The service's MemoryMax is the budget plus what the process needs outside the planner's budget
# (Python, GStreamer, ONNX Runtime/TensorRT libraries).
PROCESS_OVERHEAD = 1 * GiB
# TensorRT builder workspace (MemoryPoolType.WORKSPACE) for on-device builds: 1/8 of nominal memory, at most
# 8 GiB. The build also holds the ONNX graph and the weights in the same shared memory, so a larger pool only
# makes the builder try tactics that then fail to allocate (and on the 8 GB boards can trigger the OOM killer).
WORKSPACE_FRACTION = 1 / 8
WORKSPACE_CAP = 8 * GiB


def default_memory_budget(total_bytes: int) -> int:
    """vlmedge's memory budget for a board with `total_bytes` of (nominal) memory; the rule is above."""
    raw = total_bytes - OS_RESERVE - CAMERA_RESERVE - HEADROOM_FRACTION * total_bytes
    return max(0, int(raw // BUDGET_ROUNDING) * BUDGET_ROUNDING)


def default_workspace(total_bytes: int) -> int:
    return int(min(WORKSPACE_CAP, total_bytes * WORKSPACE_FRACTION))


@dataclass(frozen=True)
class PowerMode:
    """One nvpmodel mode: its id (`sudo nvpmodel -m ID`), its name in /etc/nvpmodel.conf, its power budget
    in watts (None for MAXN / MAXN_SUPER, which are uncapped)."""

    id: int
    name: str
    watts: float | None


@dataclass(frozen=True)
class DeviceProfile:
    name: str
    module: str
    part_numbers: tuple[str, ...]  # P-numbers as they appear in /proc/device-tree/compatible
    family: str  # the `--target` this profile serves: orin-nano | orin-nx | orin-agx
    memory_gb: int  # nominal LPDDR5
    memory_bus_bits: int
    memory_bandwidth_gbs: float  # data sheet peak, non-super modes
    cpu_cores: int  # Arm Cortex-A78AE
    gpu_sms: int
    tensor_cores: int
    dla_cores: int
    power_modes: tuple[PowerMode, ...]  # JetPack 5.1.x - 6.1 nvpmodel.conf
    super_power_modes: tuple[PowerMode, ...] = ()  # JetPack 6.2 "super" nvpmodel.conf, where known
    sample_fps: float = 1.0  # vlmedge default frames sampled per second
    tokens_per_frame: int = 64  # vlmedge default visual tokens kept per frame after compression
    notes: tuple[str, ...] = field(default_factory=tuple)

    @property
    def gpu_arch(self) -> str:
        return GPU_ARCH

    @property
    def cuda_cores(self) -> int:
        return self.gpu_sms * CUDA_CORES_PER_SM

    @property
    def memory_bytes(self) -> int:
        return self.memory_gb * GiB

    @property
    def memory_budget(self) -> int:
        return default_memory_budget(self.memory_bytes)

    @property
    def trt_workspace(self) -> int:
        return default_workspace(self.memory_bytes)

    @property
    def service_memory_max(self) -> int:
        return self.memory_budget + PROCESS_OVERHEAD

    @property
    def precisions(self) -> tuple[str, ...]:
        return PRECISIONS

    @property
    def default_precision(self) -> str:
        return "fp16"

    def check_precision(self, precision: str) -> str:
        """The precision, lower-cased, or an InputError saying what Orin supports."""
        p = precision.lower()
        if p in NOT_ON_ORIN:
            raise InputError(f"{p} is not supported on Jetson Orin ({GPU_ARCH} has no FP8/FP4 tensor cores); "
                             f"use one of {', '.join(PRECISIONS)}")
        if p not in PRECISIONS and p != "fp32":
            raise InputError(f"precision {precision!r} is not one of {', '.join(PRECISIONS)} (or fp32) for {self.name}")
        return p

    def power_mode(self, name_or_id: str | int, super_modes: bool = False) -> PowerMode:
        modes = self.super_power_modes if super_modes else self.power_modes
        for m in modes:
            if str(m.id) == str(name_or_id) or m.name.lower() == str(name_or_id).lower():
                return m
        raise UnknownNameError(f"{self.name} has no power mode {name_or_id!r}; modes: "
                               + ", ".join(f"{m.id}={m.name}" for m in modes))

    def max_power_mode(self, super_modes: bool = False) -> PowerMode:
        """MAXN / MAXN_SUPER where the table has it, else the mode with the highest wattage."""
        modes = self.super_power_modes if super_modes and self.super_power_modes else self.power_modes
        uncapped = [m for m in modes if m.watts is None]
        return uncapped[0] if uncapped else max(modes, key=lambda m: m.watts or 0)

    def to_dict(self) -> dict:
        d = asdict(self)
        d.update(gpu_arch=self.gpu_arch, cuda_cores=self.cuda_cores, precisions=list(self.precisions),
                 default_precision=self.default_precision, memory_budget_bytes=self.memory_budget,
                 trt_workspace_bytes=self.trt_workspace, service_memory_max_bytes=self.service_memory_max)
        return d


def _modes(*rows: tuple[int, str, float | None]) -> tuple[PowerMode, ...]:
    return tuple(PowerMode(i, n, w) for i, n, w in rows)


# Sources: NVIDIA Jetson AGX Orin / Orin NX / Orin Nano series module data sheets and the "Supported Modes and
# Power Efficiency" tables of the Jetson Linux developer guide (r35.x, r36.x). Power-mode names are written as
# /etc/nvpmodel.conf spells them (AGX Orin uses MODE_xxW names, Orin NX/Nano plain xxW names).
PROFILES: dict[str, DeviceProfile] = {p.name: p for p in (
    DeviceProfile(
        name="orin-nano-4gb", module="Jetson Orin Nano 4GB", part_numbers=("p3767-0004",), family="orin-nano",
        memory_gb=4, memory_bus_bits=64, memory_bandwidth_gbs=34.0, cpu_cores=6, gpu_sms=4, tensor_cores=16,
        dla_cores=0,
        # Uncertain: ids/names of the 4GB module's modes are from memory of its nvpmodel.conf (10W default,
        # 7W low); verify with `vlmedge jetson info` (it reads /etc/nvpmodel.conf on the device).
        power_modes=_modes((0, "10W", 10), (1, "7W", 7)),
        # JetPack 6.2 gives the 4GB module a super configuration too (up to 25W, MAXN_SUPER); its mode ids are
        # not known here, so none are listed: /etc/nvpmodel.conf on the device has them.
        sample_fps=0.5, tokens_per_frame=32,
        notes=("4 GB shared memory leaves little for a VLM: prefer a small LLM and strong compression",),
    ),
    DeviceProfile(
        name="orin-nano-8gb", module="Jetson Orin Nano 8GB", part_numbers=("p3767-0003", "p3767-0005"),
        family="orin-nano", memory_gb=8, memory_bus_bits=128, memory_bandwidth_gbs=68.0, cpu_cores=6, gpu_sms=8,
        tensor_cores=32, dla_cores=0,
        power_modes=_modes((0, "15W", 15), (1, "7W", 7)),
        # JetPack 6.2 (L4T R36.4.3+) super configuration of the Orin Nano (developer kit p3767-0005 and 8GB
        # module p3767-0003): memory bandwidth rises to 102 GB/s and these modes appear.
        super_power_modes=_modes((0, "15W", 15), (1, "25W", 25), (2, "MAXN_SUPER", None), (3, "7W", 7)),
        sample_fps=1.0, tokens_per_frame=64,
        notes=("p3767-0005 is the developer-kit module (8 GB, SD card)",),
    ),
    DeviceProfile(
        name="orin-nx-8gb", module="Jetson Orin NX 8GB", part_numbers=("p3767-0001",), family="orin-nx",
        memory_gb=8, memory_bus_bits=128, memory_bandwidth_gbs=102.4, cpu_cores=6, gpu_sms=8, tensor_cores=32,
        dla_cores=1,  # the 8GB NX has one NVDLA v2 engine; the 16GB NX has two
        power_modes=_modes((0, "MAXN", None), (1, "10W", 10), (2, "15W", 15), (3, "20W", 20)),
        # JetPack 6.2 adds a super configuration (up to 40W, MAXN_SUPER); ids not listed here (uncertain).
        sample_fps=1.0, tokens_per_frame=96,
    ),
    DeviceProfile(
        name="orin-nx-16gb", module="Jetson Orin NX 16GB", part_numbers=("p3767-0000",), family="orin-nx",
        memory_gb=16, memory_bus_bits=128, memory_bandwidth_gbs=102.4, cpu_cores=8, gpu_sms=8, tensor_cores=32,
        dla_cores=2,
        power_modes=_modes((0, "MAXN", None), (1, "10W", 10), (2, "15W", 15), (3, "25W", 25)),
        # JetPack 6.2 super configuration: MAXN_SUPER is mode 0 there and a 40W mode is added; the other ids
        # are not certain, so the list is left to /etc/nvpmodel.conf.
        sample_fps=2.0, tokens_per_frame=128,
    ),
    DeviceProfile(
        name="agx-orin-32gb", module="Jetson AGX Orin 32GB", part_numbers=("p3701-0004",), family="orin-agx",
        memory_gb=32, memory_bus_bits=256, memory_bandwidth_gbs=204.8, cpu_cores=8, gpu_sms=14, tensor_cores=56,
        dla_cores=2,
        power_modes=_modes((0, "MAXN", None), (1, "MODE_15W", 15), (2, "MODE_30W", 30), (3, "MODE_40W", 40)),
        sample_fps=2.0, tokens_per_frame=196,
    ),
    DeviceProfile(
        name="agx-orin-64gb", module="Jetson AGX Orin 64GB", part_numbers=("p3701-0005",), family="orin-agx",
        memory_gb=64, memory_bus_bits=256, memory_bandwidth_gbs=204.8, cpu_cores=12, gpu_sms=16, tensor_cores=64,
        dla_cores=2,
        power_modes=_modes((0, "MAXN", None), (1, "MODE_15W", 15), (2, "MODE_30W", 30), (3, "MODE_50W", 50)),
        sample_fps=2.0, tokens_per_frame=256,
    ),
)}

# p3701-0000 is the module of the first AGX Orin developer kits. Uncertain: it is sold as a 32 GB kit but is
# believed to carry the 64GB module's CPU/GPU configuration; detection decides by the memory the kernel reports
# (`detect.identify`), and the SM counts of the chosen profile may then be off for this one SKU.
AMBIGUOUS_PARTS = {"p3701-0000": ("agx-orin-32gb", "agx-orin-64gb")}

# `vlmedge export --target` names a family; off the device the smallest-memory member is assumed (a budget
# that fits the smaller board also fits the larger one). On the device, detection picks the exact module.
TARGET_DEFAULT = {"orin-nano": "orin-nano-8gb", "orin-nx": "orin-nx-8gb", "orin-agx": "agx-orin-32gb"}
ALIASES = {
    "nano": "orin-nano-8gb", "orin-nano": "orin-nano-8gb", "orin-nano-super": "orin-nano-8gb",
    "nx": "orin-nx-16gb", "orin-nx": "orin-nx-16gb", "agx": "agx-orin-64gb", "orin-agx": "agx-orin-64gb",
    "agx-orin": "agx-orin-64gb",
}


def profile(name: str) -> DeviceProfile:
    """The profile called `name` (a profile name, or an alias such as `orin-nano`), else UnknownNameError."""
    key = (name or "").strip().lower().replace("_", "-")
    if key in PROFILES:
        return PROFILES[key]
    if key in ALIASES:
        return PROFILES[ALIASES[key]]
    raise UnknownNameError(f"unknown Jetson profile {name!r}; valid names: {', '.join(PROFILES)} "
                           f"(aliases: {', '.join(sorted(ALIASES))})")


def profile_for_part(part: str) -> DeviceProfile | None:
    part = part.lower()
    for p in PROFILES.values():
        if part in p.part_numbers:
            return p
    return None


def profile_for_target(target: str, detected: DeviceProfile | None = None) -> DeviceProfile | None:
    """The profile an export for `--target` should use: None for cpu/desktop, the detected module when it is of
    the target's family (building on the device), else the family's smallest-memory member."""
    if target not in TARGET_DEFAULT:
        return None
    if detected is not None and detected.family == target:
        return detected
    return PROFILES[TARGET_DEFAULT[target]]


# --- export-time sizing ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class BuildSettings:
    """What an export/engine build for one profile takes from it."""

    profile: str
    gpu_arch: str
    precision: str
    memory_budget_bytes: int
    workspace_bytes: int
    kv_bytes_per_token: int
    max_context_tokens: int  # TensorRT optimisation-profile max for the LLM's past-KV length
    opt_context_tokens: int  # ... and its opt value
    tokens_per_frame: int
    max_frames: int
    sample_fps: float

    def to_dict(self) -> dict:
        return asdict(self)


def kv_bytes_per_token(num_layers: int, num_kv_heads: int, head_dim: int, bytes_per_element: int = 2) -> int:
    """2 (K and V) x layers x kv_heads x head_dim x bytes per element, as ARCHITECTURE.md's planner counts."""
    return 2 * num_layers * num_kv_heads * head_dim * bytes_per_element


def build_settings(prof: DeviceProfile, *, weights_bytes: int, num_layers: int, num_kv_heads: int, head_dim: int,
                   precision: str | None = None, tokens_per_frame: int | None = None, prompt_tokens: int = 512,
                   max_positions: int | None = None) -> BuildSettings:
    """Sizes an export for `prof`: the budget left after weights and builder workspace becomes KV capacity,
    which sets the optimisation-profile maximum of the LLM's context and the number of frames a stream holds.

    Raises InputError when the weights alone do not fit the profile's budget.
    """
    precision = prof.check_precision(precision or prof.default_precision)
    kv_elem = 4 if precision == "fp32" else 2  # KV stays fp16 for int8 engines
    per_token = kv_bytes_per_token(num_layers, num_kv_heads, head_dim, kv_elem)
    budget, workspace = prof.memory_budget, prof.trt_workspace
    free = budget - int(weights_bytes) - workspace
    if free < per_token * (prompt_tokens + 1):
        raise InputError(f"the model's weights ({weights_bytes / GiB:.2f} GiB) and a {workspace / GiB:.2f} GiB "
                         f"builder workspace leave no KV room in {prof.name}'s {budget / GiB:.2f} GiB budget; "
                         f"use a smaller model, int8 weights, or a larger module")
    max_ctx = free // per_token
    if max_positions:
        max_ctx = min(max_ctx, int(max_positions))
    max_ctx = int(max_ctx // 64 * 64) or int(max_ctx)  # multiples of 64 keep TensorRT's tactics simple
    tpf = int(tokens_per_frame or prof.tokens_per_frame)
    frames = max(0, (max_ctx - prompt_tokens) // tpf)
    opt = max(64, int(math.ceil(max_ctx / 2 / 64) * 64)) if max_ctx >= 128 else max_ctx
    return BuildSettings(profile=prof.name, gpu_arch=prof.gpu_arch, precision=precision, memory_budget_bytes=budget,
                         workspace_bytes=workspace, kv_bytes_per_token=per_token, max_context_tokens=max_ctx,
                         opt_context_tokens=min(opt, max_ctx), tokens_per_frame=tpf, max_frames=frames,
                         sample_fps=prof.sample_fps)


def format_bytes(n: int | float | None) -> str:
    if n is None:
        return "-"
    n = float(n)
    if n >= GiB:
        return f"{n / GiB:.2f} GiB"
    return f"{n / MiB:.0f} MiB"


def systemd_size(n: int) -> str:
    """Bytes as a systemd size (MemoryMax=): whole MiB with the M suffix."""
    return f"{int(n // MiB)}M"
