"""What this machine can run: one record per capability, for `vlmedge doctor`.

Each check is a plain function returning a `Check` record. A check never raises: anything that goes wrong
inside it (an import that explodes, a tool that hangs) becomes a record with `ok=False` and the reason in
`detail`, and `run_checks` adds a second guard around every check so one bad probe cannot hide the others.
Heavy optional packages (tensorrt, triton, gi) are imported only inside their checks.
"""
from __future__ import annotations

import glob
import importlib
import importlib.util
import os
import platform
import re
import shutil
import subprocess
import sys
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable

# Seconds a probed command may run (gst-inspect scans its plugin registry on first use, which can be slow).
SUBPROCESS_TIMEOUT = 30.0

TENSORRT_DOCS = "https://docs.nvidia.com/deeplearning/tensorrt/latest/installing-tensorrt/installing.html"
JETPACK_DOCS = "https://developer.nvidia.com/embedded/jetpack"
CUDA_TORCH_HINT = (
    "needs an NVIDIA GPU with its driver and a CUDA build of torch "
    "(on a CUDA machine: VLMEDGE_TORCH_INDEX_URL=https://download.pytorch.org/whl/cu128 ./bootstrap.sh setup)"
)


@dataclass
class Check:
    """One capability: whether it is there, which version, more detail, and what to install when it is not."""

    name: str
    ok: bool
    version: str | None = None
    detail: str = ""
    hint: str = ""

    def to_dict(self) -> dict:
        return asdict(self)


def _first_line(text: str) -> str:
    text = (text or "").strip()
    return text.splitlines()[0].strip() if text else ""


def _error_text(err: BaseException) -> str:
    return _first_line(f"{type(err).__name__}: {err}")


def _run(cmd: list[str], env: dict | None = None, timeout: float = SUBPROCESS_TIMEOUT) -> tuple[int, str]:
    """Runs a command and returns (exit code, stdout+stderr); a missing tool or a timeout raise."""
    proc = subprocess.run(
        cmd,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        timeout=timeout,
        env=env,
    )
    return proc.returncode, proc.stdout


# ------------------------------------------------------------------------------------------- Python


def check_python() -> Check:
    ok = sys.version_info >= (3, 10)
    return Check(
        "python",
        ok,
        platform.python_version(),
        f"{platform.python_implementation()} at {sys.executable}",
        "" if ok else "vlmedge needs Python 3.10+ (apt-get install python3 python3-venv)",
    )


def _import_version(name: str, pip_name: str | None = None, hint: str = "") -> Check:
    try:
        mod = importlib.import_module(name)
    except Exception as err:  # ImportError, or a broken install raising anything else
        return Check(name, False, None, f"not importable: {_error_text(err)}",
                     hint or f"pip install {pip_name or name} (./bootstrap.sh setup installs it)")
    return Check(name, True, str(getattr(mod, "__version__", "unknown")), "")


def check_torch() -> Check:
    rec = _import_version("torch", hint="pip install torch==2.13.0 (./bootstrap.sh setup installs it)")
    if not rec.ok:
        return rec
    import torch

    built_cuda = getattr(torch.version, "cuda", None)
    try:
        available = bool(torch.cuda.is_available())
    except Exception as err:
        available = False
        rec.detail = f"CUDA check failed: {_error_text(err)}; "
    if available:
        rec.detail += f"CUDA available: yes (CUDA {built_cuda}, {torch.cuda.device_count()} device(s))"
    elif built_cuda:
        rec.detail += f"CUDA available: no (CUDA {built_cuda} build, but no usable device)"
    else:
        rec.detail += "CUDA available: no (CPU build of torch)"
    return rec


def _nvidia_smi() -> str | None:
    """GPU names and driver version from nvidia-smi, or None where there is no nvidia-smi."""
    if not shutil.which("nvidia-smi"):
        return None
    try:
        code, out = _run(["nvidia-smi", "--query-gpu=name,driver_version", "--format=csv,noheader"])
    except Exception as err:
        return f"nvidia-smi failed: {_error_text(err)}"
    lines = [line.strip() for line in out.splitlines() if line.strip()]
    if code != 0 or not lines:
        return f"nvidia-smi exited {code}: {_first_line(out)}"
    return "nvidia-smi: " + "; ".join(lines)


def check_cuda() -> Check:
    """CUDA devices as torch sees them (names, compute capability, memory)."""
    smi = _nvidia_smi()
    try:
        import torch
    except Exception as err:
        detail = f"torch not importable: {_error_text(err)}"
        return Check("cuda", False, None, detail + (f"; {smi}" if smi else ""), "install torch first")
    built_cuda = getattr(torch.version, "cuda", None)
    try:
        available = bool(torch.cuda.is_available())
        count = torch.cuda.device_count() if available else 0
    except Exception as err:
        available, count = False, 0
        smi = f"torch.cuda failed: {_error_text(err)}" + (f"; {smi}" if smi else "")
    if not available or count == 0:
        reason = "no CUDA device visible to torch"
        if not built_cuda:
            reason += " (torch is a CPU build)"
        if smi:
            reason += f"; {smi}"
        return Check("cuda", False, built_cuda, reason, CUDA_TORCH_HINT)
    devices = []
    for i in range(count):
        try:
            props = torch.cuda.get_device_properties(i)
            devices.append(f"cuda:{i} {props.name} (sm_{props.major}{props.minor}, "
                           f"{props.total_memory / 2**30:.1f} GiB)")
        except Exception as err:
            devices.append(f"cuda:{i} ({_error_text(err)})")
    return Check("cuda", True, built_cuda, "; ".join(devices))


def check_onnxruntime() -> Check:
    rec = _import_version("onnxruntime")
    if not rec.ok:
        return rec
    import onnxruntime

    try:
        providers = list(onnxruntime.get_available_providers())
        rec.detail = "providers: " + ", ".join(providers)
    except Exception as err:
        rec.detail = f"could not list providers: {_error_text(err)}"
    return rec


def check_onnx() -> Check:
    return _import_version("onnx")


def check_transformers() -> Check:
    return _import_version("transformers")


def check_tensorrt(importer: Callable[[str], object] = importlib.import_module) -> Check:
    """TensorRT's Python runtime. A stub or placeholder package that imports but has no Builder/Logger is 'no'."""
    hint = f"needs an NVIDIA GPU; pip install tensorrt (CUDA 12 wheels) or JetPack on Jetson; see {TENSORRT_DOCS}"
    try:
        trt = importer("tensorrt")
    except Exception as err:
        return Check("tensorrt", False, None, f"not importable: {_error_text(err)}", hint)
    version = getattr(trt, "__version__", None)
    version = str(version) if version is not None else None
    missing = [attr for attr in ("Builder", "Logger") if not hasattr(trt, attr)]
    if missing:
        return Check("tensorrt", False, version,
                     f"'import tensorrt' works but it has no {'/'.join(missing)}: a stub package, not the runtime",
                     hint)
    return Check("tensorrt", True, version, f"from {getattr(trt, '__file__', '?')}")


def check_triton() -> Check:
    interpret = os.environ.get("TRITON_INTERPRET", "")
    note = f"TRITON_INTERPRET={'1 (kernels run on CPU)' if interpret == '1' else 'unset'}"
    hint = "pip install triton (Linux); without a GPU, TRITON_INTERPRET=1 runs its kernels on CPU for tests"
    try:
        triton = importlib.import_module("triton")
    except Exception as err:
        return Check("triton", False, None, f"not importable: {_error_text(err)}; {note}", hint)
    version = str(getattr(triton, "__version__", "unknown"))
    detail = note
    if interpret != "1":
        detail += "; set TRITON_INTERPRET=1 to run kernels without a GPU"
    return Check("triton", True, version, detail)


# ----------------------------------------------------------------------------------------- GStreamer

GST_APT_HINT = ("sudo apt-get install python3-gst-1.0 gir1.2-gst-plugins-base-1.0 gstreamer1.0-plugins-base "
                "gstreamer1.0-plugins-good, then ./bootstrap.sh setup (links Debian's gi into .venv)")


def check_gstreamer() -> Check:
    """GStreamer from Python: PyGObject's gi, the Gst typelib and Debian's Gst overrides."""
    try:
        from vlmedge.pipelines.gst import preload_extensions  # before Gst: see pipelines/gst.py

        preload_extensions()
        import gi

        gi.require_version("Gst", "1.0")
        from gi.repository import Gst

        Gst.init(None)
    except Exception as err:
        return Check("gstreamer", False, None, f"not importable from Python: {_error_text(err)}", GST_APT_HINT)
    gi_from = str(Path(getattr(gi, "__file__", "?")).parent)
    overrides = "gi.overrides.Gst" in sys.modules
    detail = f"PyGObject {getattr(gi, '__version__', '?')} from {gi_from}; Gst overrides: {'yes' if overrides else 'no'}"
    major, minor, micro, nano = Gst.version()
    version = f"{major}.{minor}.{micro}" + (f".{nano}" if nano else "")
    if not overrides:
        return Check("gstreamer", False, version, detail + " (gi works but without Gst's Python overrides)",
                     "sudo apt-get install python3-gst-1.0")
    return Check("gstreamer", True, version, detail)


def check_gst_tools() -> Check:
    hint = "sudo apt-get install gstreamer1.0-tools"
    tool = shutil.which("gst-inspect-1.0")
    if not tool:
        return Check("gst-tools", False, None, "gst-inspect-1.0 / gst-launch-1.0 not on PATH", hint)
    try:
        code, out = _run([tool, "--version"])
    except Exception as err:
        return Check("gst-tools", False, None, f"gst-inspect-1.0 --version failed: {_error_text(err)}", hint)
    match = re.search(r"GStreamer\s+([0-9][0-9.]*)", out)
    ok = code == 0
    return Check("gst-tools", ok, match.group(1) if match else None,
                 f"gst-launch-1.0: {'yes' if shutil.which('gst-launch-1.0') else 'no'}",
                 "" if ok else hint)


def _vlmedge_plugin_dir() -> Path | None:
    """The folder holding vlmedge's `python/` GStreamer plugin folder, when that exists."""
    try:
        spec = importlib.util.find_spec("vlmedge.pipelines")
    except Exception:
        return None
    for loc in (spec.submodule_search_locations or []) if spec else []:
        if (Path(loc) / "python").is_dir():
            return Path(loc)
    return None


def _libgstpython() -> list[str]:
    patterns = ["/usr/lib/*/gstreamer-1.0/libgstpython*.so", "/usr/lib/gstreamer-1.0/libgstpython*.so",
                "/usr/lib64/gstreamer-1.0/libgstpython*.so"]
    return sorted({p for pat in patterns for p in glob.glob(pat)})


def parse_gst_inspect_plugin(text: str) -> tuple[str | None, int | None, list[str]]:
    """(version, number of features, feature names) from `gst-inspect-1.0 PLUGIN` output."""
    version = re.search(r"^\s*Version\s+(\S+)", text, re.M)
    features = re.search(r"^\s*(\d+)\s+features?", text, re.M)
    names = re.findall(r"^  ([A-Za-z0-9_.-]+): ", text, re.M)
    return (version.group(1) if version else None, int(features.group(1)) if features else None, names)


# A minimal Python element, written to a temporary plugin folder, proves that the loader really loads Python
# elements (its embedded Python must be able to import gi and Gst), not just that libgstpython is installed.
PROBE_ELEMENT = "vlmedgedoctorprobe"
PROBE_SOURCE = f'''
import gi
gi.require_version("Gst", "1.0")
gi.require_version("GstBase", "1.0")
from gi.repository import GObject, Gst, GstBase

Gst.init(None)


class VlmedgeDoctorProbe(GstBase.BaseTransform):
    __gstmetadata__ = ("vlmedge doctor probe", "Filter", "Passes buffers through", "vlmedge")
    __gsttemplates__ = (
        Gst.PadTemplate.new("src", Gst.PadDirection.SRC, Gst.PadPresence.ALWAYS, Gst.Caps.new_any()),
        Gst.PadTemplate.new("sink", Gst.PadDirection.SINK, Gst.PadPresence.ALWAYS, Gst.Caps.new_any()),
    )


GObject.type_register(VlmedgeDoctorProbe)
__gstelementfactory__ = ("{PROBE_ELEMENT}", Gst.Rank.NONE, VlmedgeDoctorProbe)
'''


def check_gst_python() -> Check:
    """The python plugin loader (gst-python): can gst-inspect-1.0 see elements written in Python?

    Runs `gst-inspect-1.0 python` with a throwaway plugin registry and GST_PLUGIN_PATH holding a probe element
    (plus vlmedge's own `pipelines/python/` folder once it exists), so the user's registry cache is untouched.
    """
    hint = "sudo apt-get install gstreamer1.0-python3-plugin-loader python3-gst-1.0"
    libs = _libgstpython()
    tool = shutil.which("gst-inspect-1.0")
    if not tool:
        where = f"libgstpython at {libs[0]}" if libs else "no libgstpython found"
        return Check("gst-python", False, None, f"gst-inspect-1.0 not on PATH ({where})",
                     "sudo apt-get install gstreamer1.0-tools gstreamer1.0-python3-plugin-loader")
    plugin_dir = _vlmedge_plugin_dir()
    with tempfile.TemporaryDirectory(prefix="vlmedge-doctor-") as tmp:
        (Path(tmp) / "python").mkdir()
        (Path(tmp) / "python" / f"{PROBE_ELEMENT}.py").write_text(PROBE_SOURCE)
        env = dict(os.environ)
        paths = [tmp, str(plugin_dir) if plugin_dir else "", env.get("GST_PLUGIN_PATH", "")]
        env["GST_PLUGIN_PATH"] = os.pathsep.join(p for p in paths if p)
        env["GST_REGISTRY"] = str(Path(tmp) / "registry.bin")
        try:
            code, out = _run([tool, "python"], env=env)
        except Exception as err:
            return Check("gst-python", False, None, f"gst-inspect-1.0 python failed: {_error_text(err)}", hint)
    if code != 0:
        where = f" (libgstpython is at {libs[0]} but did not load)" if libs else ""
        return Check("gst-python", False, None, f"gst-inspect-1.0 does not list the python plugin{where}", hint)
    version, _, names = parse_gst_inspect_plugin(out)
    if PROBE_ELEMENT not in names:
        return Check("gst-python", False, version,
                     "loader present, but a Python element did not load (its Python cannot import gi/Gst?)",
                     "sudo apt-get install python3-gst-1.0 gir1.2-gst-plugins-base-1.0")
    ours = [n for n in names if n != PROBE_ELEMENT]
    if plugin_dir is None:
        detail = "Python elements load; vlmedge's pipelines/python/ plugin folder not found"
    else:
        detail = f"Python elements load; from {plugin_dir}/python: {', '.join(ours) or 'none'}"
    return Check("gst-python", True, version, detail)


# ------------------------------------------------------------------------------------ other tools


def check_espeak() -> Check:
    hint = "sudo apt-get install espeak-ng"
    tool = shutil.which("espeak-ng")
    if not tool:
        return Check("espeak-ng", False, None, "espeak-ng not on PATH", hint)
    try:
        code, out = _run([tool, "--version"])
    except Exception as err:
        return Check("espeak-ng", False, None, f"espeak-ng --version failed: {_error_text(err)}", hint)
    match = re.search(r"([0-9]+\.[0-9]+(?:\.[0-9]+)?)", out)
    return Check("espeak-ng", code == 0, match.group(1) if match else None, _first_line(out),
                 "" if code == 0 else hint)


def parse_l4t_release(text: str) -> str | None:
    """'R35.4.1' from /etc/nv_tegra_release ('# R35 (release), REVISION: 4.1, GCID: ...'), else None."""
    match = re.search(r"R(\d+)\s*\(release\),\s*REVISION:\s*([0-9.]+)", text)
    if not match:
        return None
    return f"R{match.group(1)}.{match.group(2).rstrip('.')}"


def check_jetson(release_file: str | os.PathLike = "/etc/nv_tegra_release",
                 model_file: str | os.PathLike = "/proc/device-tree/model") -> Check:
    hint = f"not a Jetson (only needed to deploy on one); on a Jetson, flash JetPack: {JETPACK_DOCS}"
    path = Path(release_file)
    try:
        if not path.exists():
            return Check("jetson", False, None, f"no {path}", hint)
        text = path.read_text(errors="replace")
    except Exception as err:
        return Check("jetson", False, None, f"cannot read {path}: {_error_text(err)}", hint)
    release = parse_l4t_release(text)
    model = ""
    try:
        model = Path(model_file).read_text(errors="replace").strip("\x00\n ")
    except Exception:
        pass
    if release is None:
        return Check("jetson", False, None, f"{path} present but unparsed: {_first_line(text)!r}", hint)
    return Check("jetson", True, f"L4T {release}", importlib.import_module("vlmedge.jetson.detect").doctor_detail(text, model))


# ------------------------------------------------------------------------------------------- running

CHECKS: dict[str, Callable[[], Check]] = {
    "python": check_python,
    "torch": check_torch,
    "cuda": check_cuda,
    "onnxruntime": check_onnxruntime,
    "onnx": check_onnx,
    "transformers": check_transformers,
    "tensorrt": check_tensorrt,
    "triton": check_triton,
    "gstreamer": check_gstreamer,
    "gst-tools": check_gst_tools,
    "gst-python": check_gst_python,
    "espeak-ng": check_espeak,
    "jetson": check_jetson,
}


def run_check(name: str) -> Check:
    """Runs one named check; whatever it raises becomes a failed record instead of an exception."""
    try:
        rec = CHECKS[name]()
        if not isinstance(rec, Check):
            raise TypeError(f"check returned {type(rec).__name__}, not Check")
        return rec
    except Exception as err:
        return Check(name, False, None, f"check failed: {_error_text(err)}",
                     "this is a vlmedge bug; rerun with --json and report it")


def run_checks(names: list[str] | None = None) -> list[Check]:
    return [run_check(name) for name in (names or list(CHECKS))]


def format_report(records: list[Check]) -> str:
    """One line per capability ('yes'/'no ', name, version, detail), a 'fix:' line under each 'no'."""
    width = max((len(r.name) for r in records), default=0)
    vwidth = max((len(r.version or "-") for r in records), default=1)
    lines = []
    for r in records:
        mark = "yes" if r.ok else "no "
        line = f"{mark}  {r.name:<{width}}  {(r.version or '-'):<{vwidth}}  {r.detail}".rstrip()
        lines.append(line)
        if not r.ok and r.hint:
            lines.append(f"{'':5}{'':<{width}}  fix: {r.hint}")
    return "\n".join(lines)
