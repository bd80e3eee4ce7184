"""`vlmedge jetson setup`: is this Jetson ready to run the camera assistant, and what to fix if not.

Each check returns a `SetupCheck` with status ok / warn / fail and, unless ok, a `fix` line. A failed
*required* check makes the command exit non-zero; warnings never do. TensorRT, GStreamer and the python plugin
loader are checked by the same functions `vlmedge doctor` uses. Every probe is injectable so tests can run the
checks over recorded fixture trees (`root`) without a device.
"""
from __future__ import annotations

import glob
import importlib
import os
import shutil
import subprocess
from dataclasses import asdict, dataclass
from typing import Callable

from vlmedge.jetson.detect import RECOMMENDED_L4T_MAJOR, SUPPORTED_L4T_MAJORS, JetsonInfo, detect
from vlmedge.jetson.profiles import GiB, format_bytes

JETPACK_URL = "https://developer.nvidia.com/embedded/jetpack"
CAMERA_MODES = ("any", "csi", "usb", "none")
ARGUS_SOCKET = "tmp/argus_socket"


@dataclass
class SetupCheck:
    name: str
    status: str  # ok | warn | fail
    detail: str
    fix: str = ""
    required: bool = True

    @property
    def failed(self) -> bool:
        return self.status == "fail" and self.required

    def to_dict(self) -> dict:
        return asdict(self)


def gst_element_exists(name: str) -> bool:
    """Whether GStreamer can create element `name` (in-process through gi, else `gst-inspect-1.0 --exists`)."""
    try:
        import gi

        gi.require_version("Gst", "1.0")
        from gi.repository import Gst

        Gst.init(None)
        return Gst.ElementFactory.find(name) is not None
    except Exception:
        tool = shutil.which("gst-inspect-1.0")
        if not tool:
            return False
        try:
            return subprocess.run([tool, "--exists", name], stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                  stderr=subprocess.DEVNULL, timeout=30).returncode == 0
        except Exception:
            return False


def _from_doctor(check) -> tuple[bool, str, str]:
    rec = check()
    detail = " ".join(x for x in (rec.version or "", rec.detail or "") if x).strip()
    return rec.ok, detail, rec.hint


def check_release(info: JetsonInfo) -> SetupCheck:
    rel = info.release
    if rel is None:
        return SetupCheck("jetson-linux", "fail", f"no readable {os.path.join(info.root, 'etc/nv_tegra_release')}",
                          f"flash JetPack 6 on the Jetson (SDK Manager, or the SD card image): {JETPACK_URL}")
    jp = rel.jetpack or "unknown"
    text = f"L4T {rel.tag}, JetPack {jp}" + ("" if rel.jetpack_exact else " (release line)")
    if rel.major not in SUPPORTED_L4T_MAJORS:
        return SetupCheck("jetson-linux", "fail", text + "; vlmedge supports L4T R35 (JetPack 5.1) and R36 (JetPack 6)",
                          f"flash JetPack 6: {JETPACK_URL}")
    if rel.major < RECOMMENDED_L4T_MAJOR:
        return SetupCheck("jetson-linux", "warn", text + "; JetPack 5 has Python 3.8 (its TensorRT and GStreamer "
                          "bindings cannot load into vlmedge's Python 3.10+), CUDA 11.4, TensorRT 8.5",
                          f"upgrade to JetPack 6 (Python 3.10, CUDA 12.6, TensorRT 10.3): {JETPACK_URL}",
                          required=False)
    return SetupCheck("jetson-linux", "ok", text)


def check_module(info: JetsonInfo) -> SetupCheck:
    if info.profile is not None:
        super_note = ", super device tree" if info.super_config else ""
        return SetupCheck("module", "ok", f"{info.model or '?'} -> profile {info.profile.name} "
                                          f"({info.identified_by}{super_note})")
    if info.is_orin:
        return SetupCheck("module", "warn", f"{info.model or '?'}: {info.identified_by}",
                          "pass --profile NAME to vlmedge jetson info/service (vlmedge jetson profiles lists them)",
                          required=False)
    return SetupCheck("module", "fail", f"{info.model or 'no device-tree model'}: {info.identified_by}",
                      "vlmedge's Jetson support covers the Orin modules (Nano, NX, AGX)")


def check_memory(info: JetsonInfo) -> SetupCheck:
    if info.mem_total is None:
        return SetupCheck("memory", "warn", "no /proc/meminfo", "", required=False)
    prof = info.profile
    budget = prof.memory_budget if prof else None
    detail = f"MemTotal {format_bytes(info.mem_total)}"
    if info.mem_available is not None:
        detail += f", available {format_bytes(info.mem_available)}"
    if budget is not None:
        detail += f", profile budget {format_bytes(budget)}"
    if not info.swap_total:
        detail += ", no swap"
    if budget is not None and info.mem_available is not None and info.mem_available < budget + GiB // 2:
        return SetupCheck("memory", "warn", detail + " (less available than the budget needs)",
                          "free memory: boot without the desktop (sudo systemctl set-default multi-user.target, "
                          "then reboot) and stop other GPU processes", required=False)
    return SetupCheck("memory", "ok", detail, required=False)


def check_power_mode(info: JetsonInfo) -> SetupCheck:
    if not info.power_modes:
        return SetupCheck("power-mode", "warn", "no /etc/nvpmodel.conf", "", required=False)
    names = {m.id: m.name for m in info.power_modes}
    best = next((m for m in info.power_modes if m.name.upper() == "MAXN_SUPER"), None) or \
        next((m for m in info.power_modes if m.name.upper().startswith("MAXN")), None)
    if best is None:
        best = max(info.power_modes, key=lambda m: int("".join(c for c in m.name if c.isdigit()) or 0))
    cur = info.power_mode_current
    detail = "modes " + ", ".join(f"{i}={n}" for i, n in names.items())
    if cur is None:
        return SetupCheck("power-mode", "warn", detail + "; current mode unknown",
                          f"sudo nvpmodel -q shows it; sudo nvpmodel -m {best.id} selects {best.name}", required=False)
    detail = f"current {cur}={names.get(cur, '?')}; " + detail
    if cur != best.id:
        return SetupCheck("power-mode", "warn", detail,
                          f"for full speed: sudo nvpmodel -m {best.id} ({best.name}); sudo jetson_clocks pins clocks "
                          "for benchmarks", required=False)
    return SetupCheck("power-mode", "ok", detail, required=False)


def check_python_module(name: str, check: Callable, hint_extra: str) -> SetupCheck:
    ok, detail, hint = _from_doctor(check)
    if ok:
        return SetupCheck(name, "ok", detail)
    return SetupCheck(name, "fail", detail, f"{hint}; {hint_extra}" if hint_extra else hint)


VENV_HINT = ("in a virtual environment, create it with --system-site-packages so JetPack's tensorrt and gi "
             "modules are visible")


def check_tensorrt(importer: Callable = importlib.import_module) -> SetupCheck:
    from vlmedge import doctor

    ok, detail, _ = _from_doctor(lambda: doctor.check_tensorrt(importer))
    if ok:
        return SetupCheck("tensorrt", "ok", detail)
    return SetupCheck("tensorrt", "fail", detail,
                      "sudo apt-get install nvidia-jetpack (or just python3-libnvinfer for TensorRT's Python "
                      f"bindings); {VENV_HINT}")


def check_gstreamer() -> SetupCheck:
    from vlmedge import doctor

    return check_python_module("gstreamer", doctor.check_gstreamer, VENV_HINT)


def check_gst_python() -> SetupCheck:
    from vlmedge import doctor

    return check_python_module("gst-python", doctor.check_gst_python, "")


def _video_devices(root: str) -> list[str]:
    return sorted(glob.glob(os.path.join(root, "dev", "video*")))


def check_camera_devices(root: str, camera: str) -> SetupCheck:
    required = camera != "none"
    devices = _video_devices(root)
    if not devices:
        return SetupCheck("camera-devices", "fail" if required else "warn", "no /dev/video* device",
                          "connect the camera; CSI: sudo /opt/nvidia/jetson-io/jetson-io.py selects the sensor "
                          "overlay on the developer kits, then reboot; USB: check lsusb and dmesg",
                          required=required)
    usable = [d for d in devices if os.access(d, os.R_OK | os.W_OK)]
    shown = ", ".join(os.path.relpath(d, root) if root != "/" else d for d in devices)
    if not usable:
        return SetupCheck("camera-devices", "fail" if required else "warn", f"{shown}: no read/write access",
                          "sudo usermod -aG video $USER, then log out and in (the service runs with group video)",
                          required=required)
    return SetupCheck("camera-devices", "ok", f"{shown} ({len(usable)} usable)", required=required)


def check_element(name: str, has_element: Callable[[str], bool], required: bool, fix: str) -> SetupCheck:
    if has_element(name):
        return SetupCheck(name, "ok", "GStreamer element present", required=required)
    return SetupCheck(name, "fail" if required else "warn", "GStreamer element not found", fix, required=required)


NV_GST_FIX = ("NVIDIA's accelerated GStreamer plugins come with JetPack: sudo apt-get install nvidia-l4t-gstreamer; "
              "in a container, run it with --runtime nvidia")


def check_argus(root: str, camera: str) -> SetupCheck:
    required = camera == "csi"
    path = os.path.join(root, ARGUS_SOCKET)
    if os.path.exists(path):
        return SetupCheck("argus-daemon", "ok", f"{path} present", required=required)
    return SetupCheck("argus-daemon", "fail" if required else "warn", f"no {path} (nvargus-daemon not running?)",
                      "sudo systemctl restart nvargus-daemon; in a container mount "
                      "-v /tmp/argus_socket:/tmp/argus_socket",
                      required=required)


def run_setup_checks(root: str = "/", camera: str = "any", *, has_element: Callable[[str], bool] | None = None,
                     importer: Callable = importlib.import_module, include_python: bool = True) -> list[SetupCheck]:
    """All checks, in the order a user should fix them. `include_python=False` skips the TensorRT/GStreamer
    probes (tests over fixture trees use it, since those probe this machine, not the fixture)."""
    if camera not in CAMERA_MODES:
        raise ValueError(f"camera must be one of {CAMERA_MODES}, got {camera!r}")
    has_element = has_element or gst_element_exists
    info = detect(root)
    checks = [check_release(info), check_module(info), check_memory(info), check_power_mode(info)]
    if include_python:
        checks += [check_tensorrt(importer), check_gstreamer(), check_gst_python()]
    checks.append(check_element("nvvidconv", has_element, camera != "none", NV_GST_FIX))
    checks.append(check_element("nvarguscamerasrc", has_element, camera == "csi", NV_GST_FIX))
    if camera in ("usb", "any"):
        checks.append(check_element("v4l2src", has_element, camera == "usb",
                                    "sudo apt-get install gstreamer1.0-plugins-good"))
    checks.append(check_camera_devices(root, camera))
    if camera in ("csi", "any"):
        checks.append(check_argus(root, camera))
    return checks


def exit_code(checks: list[SetupCheck]) -> int:
    return 1 if any(c.failed for c in checks) else 0


def format_checks(checks: list[SetupCheck]) -> str:
    width = max((len(c.name) for c in checks), default=0)
    lines = []
    for c in checks:
        mark = {"ok": "ok  ", "warn": "warn", "fail": "FAIL" if c.required else "warn"}[c.status]
        lines.append(f"{mark}  {c.name:<{width}}  {c.detail}".rstrip())
        if c.status != "ok" and c.fix:
            lines.append(f"{'':6}{'':<{width}}  fix: {c.fix}")
    failed = [c.name for c in checks if c.failed]
    lines.append(f"required checks failed: {', '.join(failed)}" if failed else "all required checks passed")
    return "\n".join(lines)
