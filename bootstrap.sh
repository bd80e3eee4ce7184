#!/usr/bin/env bash
# vlmedge's one entry point on a fresh Debian/Ubuntu machine that has only Python 3.10+.
#
#   ./bootstrap.sh demo [ARGS...]   set up, then run `.venv/bin/vlmedge demo ARGS...`
#   ./bootstrap.sh test [ARGS...]   set up, then run `.venv/bin/python -m pytest -q ARGS...`
#   ./bootstrap.sh setup            set up only
#
# Setting up is idempotent and fast the second time:
#   1. missing Debian packages (GStreamer + its Python bindings and plugin loader, espeak-ng) are installed
#      with apt-get (through sudo when not root; `apt-get update` runs only when something is missing);
#   2. `.venv` is created when missing;
#   3. torch is installed first (VLMEDGE_TORCH_SPEC, default torch==2.13.0), then `pip install -e '.[dev,bench]'`
#      under the pinned versions of constraints.txt, then the serving packages (PyTriton, tritonclient);
#      this step is skipped while a stamp in .venv records the same hash of pyproject.toml, setup.py, this
#      script and the torch settings;
#   4. Debian's `gi` (PyGObject with the Gst overrides) is made importable from the venv through a folder of
#      symlinks in .venv and a .pth file, without exposing the rest of the system dist-packages.
#
# Environment:
#   VLMEDGE_PYTHON          interpreter that creates .venv (default: python3 on PATH)
#   VLMEDGE_TORCH_SPEC      pip requirement for torch (default: torch==2.13.0)
#   VLMEDGE_TORCH_INDEX_URL pip --index-url for the torch step only, e.g. https://download.pytorch.org/whl/cpu
#                           for the CPU wheel, or .../whl/cu128 for a CUDA build (default: pip's configuration)
#   VLMEDGE_SKIP_APT=1      do not touch Debian packages
#   VLMEDGE_SKIP_SERVING=1  do not install PyTriton/tritonclient (`vlmedge serve`; its tests then skip)
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
cd "$ROOT"

VENV="$ROOT/.venv"
STAMP="$VENV/.vlmedge-bootstrap.stamp"
GI_DIR="$VENV/vlmedge-system-gi"
GI_PTH_NAME="vlmedge-system-gi.pth"
TORCH_SPEC="${VLMEDGE_TORCH_SPEC:-torch==2.13.0}"
TORCH_INDEX_URL="${VLMEDGE_TORCH_INDEX_URL:-}"
TRT_STUBS_VERSION=10.13.0.35.1
# `vlmedge serve` (Triton Inference Server through PyTriton) and its client. PyTriton declares numpy<2, which
# only its Python stub needs (runtime/serving/launch.py gives the stub a NumPy 1 environment of its own), and
# tritonclient an old ml-dtypes it does not import for our datatypes: both come without dependencies, and their
# real dependencies are listed here (pinned in constraints.txt).
SERVING_NO_DEPS=(nvidia-pytriton==0.7.0 tritonclient==2.73.0)
SERVING_DEPS=(pyzmq sh typing_inspect wrapt importlib_metadata grpcio python-rapidjson urllib3 aiohttp
              geventhttpclient greenlet)
APT_PACKAGES=(
    gstreamer1.0-tools
    gstreamer1.0-plugins-base
    gstreamer1.0-plugins-good
    gstreamer1.0-x  # pango: textoverlay draws answers over the video
    gstreamer1.0-libav  # H.264 and AAC: camera recordings, RTSP streams
    python3-gst-1.0
    gstreamer1.0-python3-plugin-loader
    gir1.2-gst-plugins-base-1.0
    espeak-ng
)

T0=$SECONDS
log() { echo "[bootstrap] $*"; }
warn() { echo "[bootstrap] WARNING: $*" >&2; }
die() { echo "[bootstrap] ERROR: $*" >&2; exit 1; }

usage() {
    cat <<'EOF'
usage: ./bootstrap.sh demo [ARGS...]   set everything up, then run the demo
       ./bootstrap.sh test [ARGS...]   set everything up, then run the test suite (args go to pytest)
       ./bootstrap.sh setup            set everything up only
EOF
}

# ---------------------------------------------------------------------------------------------- apt
setup_apt() {
    if [[ "${VLMEDGE_SKIP_APT:-}" == 1 ]]; then
        log "skipping Debian packages (VLMEDGE_SKIP_APT=1)"
        return
    fi
    local missing=() pkg
    if command -v dpkg-query >/dev/null 2>&1; then
        for pkg in "${APT_PACKAGES[@]}"; do
            if ! dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed"; then
                missing+=("$pkg")
            fi
        done
    else
        missing=("${APT_PACKAGES[@]}")
    fi
    if [[ ${#missing[@]} -eq 0 ]]; then
        log "Debian packages: all present"
        return
    fi
    if ! command -v apt-get >/dev/null 2>&1; then
        warn "apt-get not found; install these (or your system's equivalents) for GStreamer and audio:"
        warn "  ${missing[*]}"
        warn "continuing: the GStreamer tests will be skipped"
        return
    fi
    local sudo=()
    if [[ $(id -u) -ne 0 ]]; then
        if ! command -v sudo >/dev/null 2>&1; then
            warn "not root and no sudo; as root run: apt-get install -y ${missing[*]}"
            warn "continuing: the GStreamer tests will be skipped"
            return
        fi
        sudo=(sudo)
        # No terminal to type a password into (CI, pipes): fail fast instead of hanging.
        [[ -t 0 ]] || sudo=(sudo -n)
    fi
    log "installing Debian packages: ${missing[*]}"
    if ! "${sudo[@]}" env DEBIAN_FRONTEND=noninteractive apt-get update -qq \
        || ! "${sudo[@]}" env DEBIAN_FRONTEND=noninteractive \
            apt-get install -y -qq --no-install-recommends "${missing[@]}"; then
        warn "apt-get failed; install by hand: apt-get install ${missing[*]}"
        warn "continuing: the GStreamer tests will be skipped"
    fi
}

# --------------------------------------------------------------------------------------------- venv
setup_venv() {
    local py="${VLMEDGE_PYTHON:-python3}"
    if [[ -x "$VENV/bin/python" ]] && "$VENV/bin/python" -c "import sys" >/dev/null 2>&1; then
        log "venv: $VENV ($("$VENV/bin/python" -c 'import platform; print(platform.python_version())'))"
        return
    fi
    command -v "$py" >/dev/null 2>&1 || die "no '$py' on PATH; install Python 3.10+ (apt-get install python3 python3-venv)"
    "$py" -c 'import sys; sys.exit(sys.version_info < (3, 10))' \
        || die "$py is $("$py" -V 2>&1); vlmedge needs Python 3.10+ (set VLMEDGE_PYTHON to another interpreter)"
    log "creating venv with $("$py" -V 2>&1) at $VENV"
    rm -rf "$VENV"
    if ! "$py" -m venv "$VENV" 2>/dev/null; then
        rm -rf "$VENV"
        # Debian/Ubuntu ship venv's ensurepip separately (python3-venv / python3.X-venv).
        local minor venvpkg
        minor="$("$py" -c 'import sys; print(f"{sys.version_info[0]}.{sys.version_info[1]}")')"
        venvpkg="python${minor}-venv"
        if command -v apt-get >/dev/null 2>&1 && [[ "${VLMEDGE_SKIP_APT:-}" != 1 ]]; then
            local sudo=()
            if [[ $(id -u) -ne 0 ]]; then sudo=(sudo); [[ -t 0 ]] || sudo=(sudo -n); fi
            log "'$py -m venv' failed; installing $venvpkg"
            "${sudo[@]}" env DEBIAN_FRONTEND=noninteractive apt-get update -qq || true
            "${sudo[@]}" env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$venvpkg" \
                || "${sudo[@]}" env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq python3-venv \
                || die "could not install $venvpkg; install it by hand and rerun"
            "$py" -m venv "$VENV" || die "'$py -m venv $VENV' failed"
        else
            die "'$py -m venv' failed; install your Python's venv module (Debian/Ubuntu: $venvpkg)"
        fi
    fi
}

# ---------------------------------------------------------------------------------------------- pip
deps_hash() {
    {
        cat pyproject.toml setup.py bootstrap.sh constraints.txt
        echo "torch=$TORCH_SPEC index=$TORCH_INDEX_URL"
        "$VENV/bin/python" -c 'import sys; print(sys.version)'
    } | sha256sum | cut -d' ' -f1
}

setup_pip() {
    local want
    want="$(deps_hash)"
    if [[ -f "$STAMP" && "$(cat "$STAMP")" == "$want" && -x "$VENV/bin/vlmedge" ]]; then
        log "Python packages: up to date (stamp matches)"
        return
    fi
    rm -f "$STAMP"
    local pip=("$VENV/bin/python" -m pip)
    local quiet=(--quiet)
    [[ -t 1 && -z "${CI:-}" ]] || quiet+=(--progress-bar off)

    # torch first and pinned, so that the editable install below finds it satisfied and pulls nothing larger.
    local torch_pin="${TORCH_SPEC#torch==}"
    if [[ "$torch_pin" != "$TORCH_SPEC" ]] && "$VENV/bin/python" - "$torch_pin" <<'EOF' 2>/dev/null
import sys
from importlib.metadata import version
sys.exit(version("torch").split("+")[0] != sys.argv[1])
EOF
    then
        log "torch: $("$VENV/bin/python" -c 'from importlib.metadata import version; print(version("torch"))') already installed"
    else
        local index=()
        [[ -n "$TORCH_INDEX_URL" ]] && index=(--index-url "$TORCH_INDEX_URL")
        log "installing $TORCH_SPEC${TORCH_INDEX_URL:+ from $TORCH_INDEX_URL} (a large download the first time)"
        "${pip[@]}" install "${quiet[@]}" "${index[@]}" "$TORCH_SPEC"
    fi

    log "installing vlmedge in editable mode with its dev extras"
    "${pip[@]}" install "${quiet[@]}" -c constraints.txt -e '.[dev,bench]'
    # TensorRT's type stubs only: their package depends on TensorRT itself, whose libraries no package index
    # here serves, so they come without dependencies (mypy checks export/trt against them; see tests).
    "${pip[@]}" install "${quiet[@]}" --no-deps "tensorrt-stubs==$TRT_STUBS_VERSION"
    if [[ "${VLMEDGE_SKIP_SERVING:-}" == 1 ]]; then
        log "skipping the serving packages (VLMEDGE_SKIP_SERVING=1): vlmedge serve and its tests will not run"
    else
        log "installing the serving packages (PyTriton with its bundled Triton server, tritonclient)"
        "${pip[@]}" install "${quiet[@]}" -c constraints.txt "${SERVING_DEPS[@]}"
        "${pip[@]}" install "${quiet[@]}" --no-deps "${SERVING_NO_DEPS[@]}"
    fi
    echo "$want" >"$STAMP"
}

# ------------------------------------------------------------------------------------ Debian's gi
setup_gi() {
    local site sys_py sys_dist venv_minor sys_minor
    site="$("$VENV/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')"
    sys_py=/usr/bin/python3
    if [[ ! -x "$sys_py" ]]; then
        warn "no $sys_py: cannot link Debian's gi into the venv (GStreamer tests will be skipped)"
        return
    fi
    # Ask Debian's own Python where its gi lives (normally /usr/lib/python3/dist-packages).
    sys_dist="$("$sys_py" -c 'import gi, os; print(os.path.dirname(os.path.dirname(gi.__file__)))' 2>/dev/null || true)"
    if [[ -z "$sys_dist" || ! -d "$sys_dist/gi" ]]; then
        warn "Debian's python3 cannot import gi (apt-get install python3-gst-1.0); GStreamer tests will be skipped"
        return
    fi
    venv_minor="$("$VENV/bin/python" -c 'import sys; print("%d.%d" % sys.version_info[:2])')"
    sys_minor="$("$sys_py" -c 'import sys; print("%d.%d" % sys.version_info[:2])')"
    if [[ "$venv_minor" != "$sys_minor" ]]; then
        # gi's C extension (_gi.cpython-3XX-*.so) only loads in the Python minor version it was built for.
        warn "the venv runs Python $venv_minor but Debian's python3 is $sys_minor: Debian's gi C extension is"
        warn "built for $sys_minor and cannot load, so gi is not linked (GStreamer tests will be skipped);"
        warn "to fix: rm -rf .venv && VLMEDGE_PYTHON=$sys_py ./bootstrap.sh setup"
        rm -f "$site/$GI_PTH_NAME"
        rm -rf "$GI_DIR"
        return
    fi
    # Only gi itself: the rest of the system dist-packages stays invisible to the venv.
    mkdir -p "$GI_DIR"
    ln -sfn "$sys_dist/gi" "$GI_DIR/gi"
    echo "$GI_DIR" >"$site/$GI_PTH_NAME"
    if "$VENV/bin/python" -c "import gi; gi.require_version('Gst', '1.0'); from gi.repository import Gst" 2>/dev/null; then
        log "Debian's gi linked into the venv ($sys_dist/gi): GStreamer importable"
    else
        warn "Debian's gi is linked into the venv but 'from gi.repository import Gst' fails there"
        warn "(check: .venv/bin/python -c \"import gi; gi.require_version('Gst','1.0'); from gi.repository import Gst\")"
    fi
}

setup() {
    setup_apt
    setup_venv
    setup_pip
    setup_gi
    log "ready in $((SECONDS - T0))s"
}

# --------------------------------------------------------------------------------------------- main
cmd="${1:-}"
case "$cmd" in
    demo)
        shift
        setup
        log "running: .venv/bin/vlmedge demo $*"
        exec "$VENV/bin/vlmedge" demo "$@"
        ;;
    test)
        shift
        setup
        log "running: .venv/bin/python -m pytest -q $*"
        rc=0
        "$VENV/bin/python" -m pytest -q "$@" || rc=$?
        if [[ $rc -eq 5 ]]; then
            echo "[bootstrap] ERROR: pytest collected no tests" >&2
            exit 1
        fi
        exit "$rc"
        ;;
    setup)
        setup
        ;;
    -h | --help | help)
        usage
        ;;
    *)
        usage >&2
        exit 2
        ;;
esac
