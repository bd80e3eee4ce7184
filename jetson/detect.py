"""Which Jetson this is: L4T/JetPack release, module and carrier, memory, power modes.

Everything reads files under a `root` (default "/"), so tests point it at recorded fixture trees
(tests/fixtures/jetson/<board>/...). Sources, as they appear on a device:

* `/etc/nv_tegra_release`, first line `# R36 (release), REVISION: 4.3, GCID: 38968081, BOARD: generic, EABI:
  aarch64, DATE: Wed Jan  8 01:49:37 UTC 2025` (BOARD is `t186ref` on R35, `generic` on R36), then
  `# KERNEL_VARIANT: oot` and TARGET_USERSPACE_LIB_DIR lines.
* `/proc/device-tree/model`: one string with a trailing NUL, e.g. `NVIDIA Jetson Orin Nano Developer Kit\\0`.
* `/proc/device-tree/compatible`: NUL-separated, most specific first, e.g.
  `nvidia,p3768-0000+p3767-0005\\0nvidia,p3767-0005\\0nvidia,tegra234\\0` (carrier+module, module, SoC); the
  JetPack 6.2 super device trees add a `-super` suffix to the first entry.
* `/proc/meminfo` (MemTotal decides between memory variants of one P-number),
  `/etc/nvpmodel.conf` (`< POWER_MODEL ID=0 NAME=15W >` lines) and `/var/lib/nvpmodel/status`
  (`pmode:0002 fmode:...`) for the power modes the device really has.

Nothing here raises on a missing or odd file: an unreadable source gives None and the record says what was
found. Nothing guesses either: an L4T release not in the table maps to its JetPack major line ("6.x"), marked
inexact.
"""
from __future__ import annotations

import os
import re
from dataclasses import asdict, dataclass, field
from pathlib import Path

from vlmedge.jetson.profiles import AMBIGUOUS_PARTS, PROFILES, DeviceProfile, GiB, profile_for_part

RELEASE_FILE = "etc/nv_tegra_release"
MODEL_FILE = "proc/device-tree/model"
COMPATIBLE_FILE = "proc/device-tree/compatible"
MEMINFO_FILE = "proc/meminfo"
NVPMODEL_CONF = "etc/nvpmodel.conf"
NVPMODEL_STATUS = "var/lib/nvpmodel/status"

# L4T release -> JetPack release (NVIDIA's JetPack archive). Only releases known to pair are listed.
L4T_TO_JETPACK = {
    "35.1.0": "5.0.2",
    "35.2.1": "5.1",
    "35.3.1": "5.1.1",
    "35.4.1": "5.1.2",
    "35.5.0": "5.1.3",
    "35.6.0": "5.1.4",
    "35.6.1": "5.1.5",
    "36.2.0": "6.0 DP",
    "36.3.0": "6.0",
    "36.4.0": "6.1",
    "36.4.3": "6.2",
    "36.4.4": "6.2.1",
}
# Release lines: R35 = JetPack 5.x (Ubuntu 20.04, CUDA 11.4, TensorRT 8.5), R36 = JetPack 6.x (Ubuntu 22.04,
# CUDA 12.2 on 6.0 and 12.6 on 6.1/6.2, TensorRT 8.6 on 6.0 and 10.3 on 6.1/6.2).
L4T_MAJOR_TO_JETPACK = {35: "5.x", 36: "6.x"}
SUPPORTED_L4T_MAJORS = (35, 36)
RECOMMENDED_L4T_MAJOR = 36

_RELEASE_RE = re.compile(r"#\s*R(\d+)\s*\(release\),\s*REVISION:\s*([0-9.]+)", re.I)
_FIELD_RE = re.compile(r"\b(GCID|BOARD|EABI|DATE):\s*([^,\n]*)")
_PART_RE = re.compile(r"\bp(\d{4})-(\d{4})\b", re.I)


@dataclass(frozen=True)
class L4TRelease:
    major: int
    revision: str  # "4.3"
    gcid: str | None = None
    board: str | None = None
    date: str | None = None
    kernel_variant: str | None = None

    @property
    def version(self) -> str:
        """'36.4.3' (revision padded to two parts: R36 REVISION 4.3 -> 36.4.3, REVISION 3.0 -> 36.3.0)."""
        parts = [p for p in self.revision.split(".") if p != ""]
        while len(parts) < 2:
            parts.append("0")
        return ".".join([str(self.major), *parts])

    @property
    def tag(self) -> str:
        """'R36.4.3', the spelling NVIDIA's docs and container tags use."""
        return f"R{self.version}"

    @property
    def jetpack(self) -> str | None:
        return jetpack_for(self.version)[0]

    @property
    def jetpack_exact(self) -> bool:
        return jetpack_for(self.version)[1]


def parse_nv_tegra_release(text: str) -> L4TRelease | None:
    """The release from /etc/nv_tegra_release's text, or None if its first line is not in L4T's format."""
    if not text:
        return None
    m = _RELEASE_RE.search(text)
    if not m:
        return None
    first = text[m.start():].splitlines()[0]
    fields = {k.upper(): v.strip() for k, v in _FIELD_RE.findall(first)}
    variant = re.search(r"KERNEL_VARIANT:\s*(\S+)", text)
    return L4TRelease(major=int(m.group(1)), revision=m.group(2).rstrip("."), gcid=fields.get("GCID"),
                      board=fields.get("BOARD"), date=fields.get("DATE"),
                      kernel_variant=variant.group(1) if variant else None)


def jetpack_for(l4t_version: str) -> tuple[str | None, bool]:
    """(JetPack version, exact) for an L4T version like '36.4.3' (or 'R36.4.3').

    Releases in the table map exactly; other R35/R36 releases map to their line ('5.x', '6.x') with
    exact=False; anything else gives (None, False).
    """
    v = l4t_version.strip().lstrip("Rr")
    if v in L4T_TO_JETPACK:
        return L4T_TO_JETPACK[v], True
    try:
        major = int(v.split(".")[0])
    except ValueError:
        return None, False
    return L4T_MAJOR_TO_JETPACK.get(major), False


# --- reading the files --------------------------------------------------------------------------------------


def _path(root: str | os.PathLike, rel: str) -> Path:
    return Path(root) / rel


def _read_bytes(root, rel) -> bytes | None:
    try:
        return _path(root, rel).read_bytes()
    except OSError:
        return None


def _read_text(root, rel) -> str | None:
    data = _read_bytes(root, rel)
    return None if data is None else data.decode("utf-8", errors="replace")


def read_release(root: str | os.PathLike = "/") -> L4TRelease | None:
    return parse_nv_tegra_release(_read_text(root, RELEASE_FILE) or "")


def clean_model(raw: bytes | str | None) -> str | None:
    """The device-tree model string without its trailing NUL (and stray whitespace); None if empty."""
    if raw is None:
        return None
    if isinstance(raw, bytes):
        raw = raw.decode("utf-8", errors="replace")
    text = raw.split("\x00")[0].strip()
    return text or None


def read_model(root: str | os.PathLike = "/") -> str | None:
    return clean_model(_read_bytes(root, MODEL_FILE))


def parse_compatible(raw: bytes | str | None) -> list[str]:
    if raw is None:
        return []
    if isinstance(raw, bytes):
        raw = raw.decode("utf-8", errors="replace")
    return [s.strip() for s in raw.split("\x00") if s.strip()]


def read_compatible(root: str | os.PathLike = "/") -> list[str]:
    return parse_compatible(_read_bytes(root, COMPATIBLE_FILE))


def parse_meminfo(text: str | None) -> dict[str, int]:
    """/proc/meminfo as bytes per field ('MemTotal': 7802880 * 1024, ...)."""
    out = {}
    for line in (text or "").splitlines():
        m = re.match(r"^(\w+(?:\(\w+\))?):\s+(\d+)(?:\s+kB)?", line)
        if m:
            out[m.group(1)] = int(m.group(2)) * (1024 if "kB" in line else 1)
    return out


def read_meminfo(root: str | os.PathLike = "/") -> dict[str, int]:
    return parse_meminfo(_read_text(root, MEMINFO_FILE))


@dataclass(frozen=True)
class NvpMode:
    id: int
    name: str


def parse_nvpmodel_conf(text: str | None) -> list[NvpMode]:
    """The `< POWER_MODEL ID=n NAME=... >` entries of /etc/nvpmodel.conf, in file order."""
    modes = []
    for m in re.finditer(r"<\s*POWER_MODEL\s+ID\s*=\s*(\d+)\s+NAME\s*=\s*([^\s>]+)\s*>", text or ""):
        modes.append(NvpMode(int(m.group(1)), m.group(2)))
    return modes


def parse_nvpmodel_default(text: str | None) -> int | None:
    m = re.search(r"<\s*PM_CONFIG\s+DEFAULT\s*=\s*(\d+)\s*>", text or "")
    return int(m.group(1)) if m else None


def parse_nvpmodel_status(text: str | None) -> int | None:
    """The current mode id from /var/lib/nvpmodel/status ('pmode:0002 fmode:quiet' -> 2)."""
    m = re.search(r"pmode:\s*(\d+)", text or "")
    return int(m.group(1)) if m else None


def parse_nvpmodel_query(text: str | None) -> tuple[str | None, int | None]:
    """(name, id) from `nvpmodel -q` ('NV Power Mode: 15W\\n0\\n'; newer releases print a fan line first)."""
    text = text or ""
    name = re.search(r"NV Power Mode:\s*(\S+)", text)
    mode_id = None
    if name:
        after = text[name.end():].split()
        if after and after[0].isdigit():
            mode_id = int(after[0])
    return (name.group(1) if name else None), mode_id


def read_power_modes(root: str | os.PathLike = "/") -> tuple[list[NvpMode], int | None, int | None]:
    """(modes in /etc/nvpmodel.conf, its default id, the current id from nvpmodel's status file)."""
    conf = _read_text(root, NVPMODEL_CONF)
    return parse_nvpmodel_conf(conf), parse_nvpmodel_default(conf), parse_nvpmodel_status(
        _read_text(root, NVPMODEL_STATUS))


# --- identifying the module ---------------------------------------------------------------------------------


def parts_from_compatible(compatible: list[str]) -> tuple[list[str], bool]:
    """(P-numbers in order of appearance, super) from the compatible list; module parts are p3767/p3701 here
    but carriers (p3768, p3737, p3509) appear too, so callers match them against the profile table."""
    parts, is_super = [], False
    for entry in compatible:
        if entry.lower().endswith("-super"):
            is_super = True
        for a, b in _PART_RE.findall(entry):
            p = f"p{a}-{b}"
            if p not in parts:
                parts.append(p)
    return parts, is_super


def _family_from_model(model: str | None) -> str | None:
    m = (model or "").lower()
    if "orin" not in m:
        return None
    if "agx" in m:
        return "orin-agx"
    if "nano" in m:
        return "orin-nano"
    if " nx" in m or m.endswith("nx"):
        return "orin-nx"
    return None


def _closest_by_memory(candidates: list[DeviceProfile], mem_total: int | None) -> DeviceProfile | None:
    if not candidates:
        return None
    if mem_total is None:
        return None if len(candidates) > 1 else candidates[0]
    # The kernel sees less than the nominal size (firmware carve-outs: an 8 GB Orin Nano reports about 7.4 GiB),
    # so a variant matches when MemTotal is between 80% and 102% of its nominal size.
    fits = [p for p in candidates if p.memory_bytes * 0.80 <= mem_total <= p.memory_bytes * 1.02]
    return min(fits, key=lambda p: p.memory_gb) if fits else None


def identify(model: str | None, compatible: list[str],
             mem_total: int | None = None) -> tuple[DeviceProfile | None, str]:
    """(profile, how it was decided) from the device-tree model and compatible strings and MemTotal bytes."""
    parts, _ = parts_from_compatible(compatible)
    for part in parts:
        prof = profile_for_part(part)
        if prof is not None:
            return prof, f"module {part} in /proc/device-tree/compatible"
        if part in AMBIGUOUS_PARTS:
            prof = _closest_by_memory([PROFILES[n] for n in AMBIGUOUS_PARTS[part]], mem_total)
            if prof is not None:
                return prof, f"module {part} (memory variant from MemTotal {mem_total / GiB:.1f} GiB)"
            return None, f"module {part} needs MemTotal to tell its memory variant apart"
    family = _family_from_model(model)
    if family is None:
        soc = "tegra234 (Orin)" if any("tegra234" in c for c in compatible) else None
        return None, (f"SoC {soc} but no known module part number" if soc else "not a known Jetson Orin module")
    prof = _closest_by_memory([p for p in PROFILES.values() if p.family == family], mem_total)
    if prof is None:
        return None, f"model says {family} but the memory variant is unknown (no MemTotal)"
    return prof, f"model string ({family}) and MemTotal {mem_total / GiB:.1f} GiB"


@dataclass
class JetsonInfo:
    root: str
    release: L4TRelease | None
    model: str | None
    compatible: list[str]
    part_numbers: list[str]
    super_config: bool  # the device tree is a JetPack 6.2 "super" one
    mem_total: int | None
    mem_available: int | None
    swap_total: int | None
    profile: DeviceProfile | None
    identified_by: str
    power_modes: list[NvpMode] = field(default_factory=list)
    power_mode_default: int | None = None
    power_mode_current: int | None = None

    @property
    def is_jetson(self) -> bool:
        return self.release is not None or any("tegra" in c for c in self.compatible)

    @property
    def is_orin(self) -> bool:
        return self.profile is not None or any("tegra234" in c for c in self.compatible)

    @property
    def jetpack(self) -> str | None:
        return self.release.jetpack if self.release else None

    @property
    def current_power_mode_name(self) -> str | None:
        for m in self.power_modes:
            if m.id == self.power_mode_current:
                return m.name
        return None

    def to_dict(self) -> dict:
        d = asdict(self)
        d["profile"] = self.profile.name if self.profile else None
        if self.release:
            d["release"].update(version=self.release.version, jetpack=self.release.jetpack,
                                jetpack_exact=self.release.jetpack_exact)
        d.update(is_jetson=self.is_jetson, is_orin=self.is_orin, current_power_mode=self.current_power_mode_name)
        return d


def detect(root: str | os.PathLike = "/") -> JetsonInfo:
    """Reads everything above under `root` and identifies the module; never raises for missing files."""
    release = read_release(root)
    model = read_model(root)
    compatible = read_compatible(root)
    mem = read_meminfo(root)
    mem_total = mem.get("MemTotal")
    parts, is_super = parts_from_compatible(compatible)
    prof, how = identify(model, compatible, mem_total)
    if model and model.lower().endswith(" super"):
        is_super = True
    modes, default, current = read_power_modes(root)
    return JetsonInfo(root=str(root), release=release, model=model, compatible=compatible, part_numbers=parts,
                      super_config=is_super, mem_total=mem_total, mem_available=mem.get("MemAvailable"),
                      swap_total=mem.get("SwapTotal"), profile=prof, identified_by=how, power_modes=modes,
                      power_mode_default=default, power_mode_current=current)


def doctor_detail(release_text: str, model: str | None, root: str | os.PathLike | None = None) -> str:
    """One line for `vlmedge doctor`'s jetson row: model, JetPack, and the vlmedge profile where it is known.

    Never raises (doctor checks must not); with `root` it also reads compatible/meminfo to pick the profile.
    """
    try:
        release = parse_nv_tegra_release(release_text or "")
        bits = [model or "unknown model"]
        if release is not None:
            jp, exact = jetpack_for(release.version)
            if jp:
                bits.append(f"JetPack {jp}" + ("" if exact else f" (L4T {release.version} not in vlmedge's table)"))
        if root is not None:
            info = detect(root)
            prof = info.profile
        else:
            prof, _ = identify(model, [], None)
        if prof is not None:
            bits.append(f"profile {prof.name}")
        elif _family_from_model(model):
            bits.append("profile: see `vlmedge jetson info`")
        return "; ".join(bits)
    except Exception as err:  # pragma: no cover - a doctor row must never raise
        return f"{model or ''} (jetson detail failed: {type(err).__name__}: {err})".strip()
