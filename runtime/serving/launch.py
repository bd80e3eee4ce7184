"""Making PyTriton's bundled Triton server run its Python stub on the interpreter that started it.

PyTriton hosts Python callables through Triton's Python backend: the server starts a `triton_python_backend_stub`
per model, a C++ program that embeds CPython, and that stub talks to this process. Two things go wrong on a
machine like a pyenv-built Python with NumPy 2 (both seen on Debian 12 with PyTriton 0.7.0):

1. The stub links `libpython3.X.so.1.0` by name, so the dynamic loader picks the system's copy (Debian's
   3.11.2) instead of the one of the interpreter that runs vlmedge (pyenv 3.11.7); the system library then runs
   the pyenv standard library and fails, e.g. with
   `'_thread.RLock' object has no attribute '_recursion_count'`. The fix: this interpreter's LIBDIR goes first
   on the server's LD_LIBRARY_PATH.
2. The stub's pybind11 predates NumPy 2 (it looks for `numpy.core.multiarray` and reads NumPy 1's descriptor
   layout): under NumPy 2 every tensor arrives as zeros and outputs come back empty, without an error. The
   stub finds its packages through the `python` first on PATH, which PyTriton points at `sys.exec_prefix/bin`.
   The fix: a small side environment on the same interpreter holding only NumPy 1.26 (and an ml_dtypes that
   accepts it), with a `.pth` line that appends this environment's site-packages for everything else, and
   PyTriton pointed at it. This process keeps NumPy 2; tensors cross as raw shared-memory buffers, so the two
   NumPy versions never exchange objects.
"""
from __future__ import annotations

import contextlib
import hashlib
import json
import os
import pathlib
import site
import subprocess
import sys
import sysconfig

from vlmedge.errors import VlmedgeError

STUB_NUMPY = "numpy==1.26.4"
STUB_ML_DTYPES = "ml_dtypes==0.5.4"  # tritonclient (imported by the stub) needs ml_dtypes; 0.5.4 runs on NumPy 1.26
STUB_ENV_VAR = "VLMEDGE_TRITON_STUB_ENV"


class ServingSetupError(VlmedgeError):
    """The machine cannot host the Triton server as it is; the message says what to install or set."""


def require_pytriton():
    try:
        import pytriton  # noqa: F401
        import tritonclient.grpc  # noqa: F401
    except ImportError as err:
        raise ServingSetupError(
            f"serving needs PyTriton and tritonclient ({err}); install them with "
            "`pip install nvidia-pytriton==0.7.0 --no-deps` plus their dependencies (see docs/serving.md)") from err


def libpython_dir() -> str | None:
    """This interpreter's shared-library directory when it has a shared libpython (None: statically linked)."""
    if not sysconfig.get_config_var("Py_ENABLE_SHARED"):
        return None
    libdir = sysconfig.get_config_var("LIBDIR")
    soname = sysconfig.get_config_var("INSTSONAME") or sysconfig.get_config_var("LDLIBRARY")
    if libdir and soname and os.path.exists(os.path.join(libdir, soname)):
        return libdir
    return None


def numpy_major() -> int:
    import numpy

    return int(numpy.__version__.split(".")[0])


def default_stub_env() -> pathlib.Path:
    """One side environment per interpreter + environment (its .pth names this environment's site-packages)."""
    key = hashlib.sha1(f"{sys.executable}|{sys.prefix}".encode()).hexdigest()[:10]
    base = pathlib.Path(os.environ.get("XDG_CACHE_HOME", pathlib.Path.home() / ".cache"))
    return base / "vlmedge" / f"triton-stub-py{sys.version_info[0]}{sys.version_info[1]}-{key}"


def _stub_site(env: pathlib.Path) -> pathlib.Path:
    return env / "lib" / f"python{sys.version_info[0]}.{sys.version_info[1]}" / "site-packages"


def prepare_stub_env(env: str | os.PathLike | None = None, log=print) -> pathlib.Path | None:
    """The stub's environment: None when this environment already suits the stub (NumPy 1), else the side
    environment, made on first use (needs pip and PyPI or a wheel cache once)."""
    if numpy_major() < 2:
        return None
    if sys.version_info >= (3, 13):
        raise ServingSetupError(
            f"this Python {sys.version_info[0]}.{sys.version_info[1]} has NumPy 2 and there is no NumPy 1 for it, "
            "but PyTriton 0.7.0's Python stub works only with NumPy 1; serve from Python 3.10-3.12")
    env = pathlib.Path(env or os.environ.get(STUB_ENV_VAR) or default_stub_env())
    marker = env / "vlmedge-stub-env.json"
    wanted = {"python": sys.version.split()[0], "executable": sys.executable, "numpy": STUB_NUMPY,
              "ml_dtypes": STUB_ML_DTYPES, "site_packages": [p for p in site.getsitepackages() if os.path.isdir(p)]}
    try:
        if json.loads(marker.read_text()) == wanted:
            return env
    except (OSError, ValueError):
        pass
    log(f"preparing the Triton Python stub's environment in {env} (NumPy 1 beside this environment's NumPy 2; once)")
    base = getattr(sys, "_base_executable", sys.executable)
    cmds = [[base, "-m", "venv", "--clear", "--without-pip", str(env)],
            [sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--disable-pip-version-check",
             "--target", str(_stub_site(env)), STUB_NUMPY, STUB_ML_DTYPES]]
    for cmd in cmds:
        done = subprocess.run(cmd, capture_output=True, text=True)
        if done.returncode != 0:
            raise ServingSetupError(
                f"could not prepare the Triton stub environment ({' '.join(cmd)} failed: "
                f"{(done.stderr or done.stdout).strip().splitlines()[-1:]}); run that command by hand with network "
                f"access, or point {STUB_ENV_VAR} at an environment of this Python with {STUB_NUMPY}")
    # appended after the side site-packages, so its NumPy 1 wins and everything else comes from here
    (_stub_site(env) / "zz-vlmedge-main-env.pth").write_text("\n".join(wanted["site_packages"]) + "\n")
    marker.write_text(json.dumps(wanted, indent=1))
    return env


@contextlib.contextmanager
def server_environment(stub_env: str | os.PathLike | None = None, log=print):
    """While it is open, a Triton server started by PyTriton (which copies os.environ when it starts) runs its
    Python stub on this interpreter; afterwards os.environ is as it was."""
    require_pytriton()
    import pytriton.server.triton_server as triton_server

    libdir = libpython_dir()
    if libdir is None:
        raise ServingSetupError(
            f"this Python ({sys.executable}) has no shared libpython, and Triton's Python stub embeds one; use a "
            "Python built with --enable-shared (pyenv: PYTHON_CONFIGURE_OPTS=--enable-shared pyenv install X.Y.Z)")
    env_dir = prepare_stub_env(stub_env, log=log)
    if env_dir is not None and not hasattr(triton_server, "get_triton_python_backend_python_env"):
        raise ServingSetupError("this PyTriton has no get_triton_python_backend_python_env(); the NumPy 2 workaround "
                                "is written for nvidia-pytriton 0.7.0: install that version")
    saved_ld = os.environ.get("LD_LIBRARY_PATH")
    saved_env_fn = getattr(triton_server, "get_triton_python_backend_python_env", None)
    os.environ["LD_LIBRARY_PATH"] = libdir + (os.pathsep + saved_ld if saved_ld else "")
    if env_dir is not None:
        triton_server.get_triton_python_backend_python_env = lambda: env_dir
    try:
        yield
    finally:
        if saved_ld is None:
            os.environ.pop("LD_LIBRARY_PATH", None)
        else:
            os.environ["LD_LIBRARY_PATH"] = saved_ld
        if env_dir is not None:
            triton_server.get_triton_python_backend_python_env = saved_env_fn
