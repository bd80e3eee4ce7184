"""Camera pipelines for Jetson Orin: the data in deploy/pipelines.json, and the function that builds the string.

    build_pipeline("csi", sink="fakesink") ==
        "nvarguscamerasrc sensor-id=0 ! video/x-raw(memory:NVMM),width=1920,height=1080,framerate=30/1,format=NV12"
        " ! nvvidconv flip-method=0 ! video/x-raw,format=RGBA,width=1280,height=720 ! fakesink"

The strings are what `gst-launch-1.0` and `Gst.parse_launch` take. They were checked here with stand-ins for the
NVIDIA-only elements (see tests/test_jetson_deploy.py), not on a Jetson.
"""
from __future__ import annotations

import json
import re
from dataclasses import dataclass
from functools import lru_cache
from importlib import resources
from pathlib import Path

from vlmedge.errors import InputError, UnknownNameError

PIPELINES_FILE = "pipelines.json"


def _deploy_dir() -> Path:
    return Path(str(resources.files("vlmedge.jetson"))) / "deploy"


def deploy_file(name: str) -> Path:
    """A file shipped in jetson/deploy/ (Dockerfile, service unit, pipelines.json, camera.env)."""
    path = _deploy_dir() / name
    if not path.is_file():
        raise InputError(f"{name} is missing from {path.parent} (a broken vlmedge install?)")
    return path


@dataclass(frozen=True)
class PipelineSpec:
    name: str
    description: str
    requires: tuple[str, ...]
    defaults: dict
    elements: tuple[str, ...]

    @property
    def placeholders(self) -> set[str]:
        return {m for e in self.elements for m in re.findall(r"{(\w+)}", e)}


@lru_cache(maxsize=None)
def _load(path: str) -> dict[str, PipelineSpec]:
    data = json.loads(Path(path).read_text())
    specs = {}
    for name, d in data["pipelines"].items():
        specs[name] = PipelineSpec(name, d["description"], tuple(d["requires"]), dict(d["defaults"]),
                                   tuple(d["elements"]))
    return specs


def pipelines(path: str | Path | None = None) -> dict[str, PipelineSpec]:
    return _load(str(path or deploy_file(PIPELINES_FILE)))


def pipeline_spec(name: str) -> PipelineSpec:
    specs = pipelines()
    if name not in specs:
        raise UnknownNameError(f"unknown camera pipeline {name!r}; valid names: {', '.join(specs)}")
    return specs[name]


def _check_value(key: str, value) -> str:
    text = str(value)
    # A value must stay one gst-launch token: no spaces, no '!' and no caps separators.
    if not text or re.search(r"[\s!,;]", text):
        raise InputError(f"camera pipeline setting {key}={text!r} must be a single word (no spaces, '!' or ',')")
    if key in {"width", "height", "fps", "out_width", "out_height", "sensor_id", "flip"}:
        if not re.fullmatch(r"\d+", text) or (key not in {"sensor_id", "flip"} and int(text) == 0):
            raise InputError(f"camera pipeline setting {key} must be a positive integer, got {text!r}")
        if key == "flip" and int(text) > 7:
            raise InputError(f"flip must be an nvvidconv flip-method 0-7, got {text}")
    return text


def build_pipeline(name: str, sink: str | None = None, **settings) -> str:
    """The camera pipeline `name` with `settings` over its defaults, then ` ! sink` when a sink is given.

    Settings use the placeholder names of deploy/pipelines.json (width, height, fps, out_width, out_height,
    sensor_id, flip, device); an unknown one is an error, so a typo never silently keeps the default.
    """
    spec = pipeline_spec(name)
    unknown = sorted(set(settings) - spec.placeholders)
    if unknown:
        raise InputError(f"camera pipeline {name!r} has no setting {', '.join(unknown)}; "
                         f"settings: {', '.join(sorted(spec.placeholders))}")
    values = {k: _check_value(k, v) for k, v in {**spec.defaults, **{k: v for k, v in settings.items()
                                                                       if v is not None}}.items()}
    parts = [e.format(**values) for e in spec.elements]
    if sink:
        parts.append(sink.strip())
    return " ! ".join(parts)


def vlmedge_sink(model_dir: str, memory_budget: int | None = None, sample_fps: float | None = None,
                 extra: str = "") -> str:
    """The tail that feeds the vlmedge element (issue 10) and discards the passed-through video.

    Property names follow the element's documented ones (`model`, `memory-budget` in bytes, `sample-fps`).
    """
    if re.search(r"\s", model_dir):
        raise InputError(f"model directory {model_dir!r} must not contain spaces (it becomes one gst-launch word)")
    props = [f"model={model_dir}"]
    if memory_budget:
        props.append(f"memory-budget={int(memory_budget)}")
    if sample_fps:
        props.append(f"sample-fps={float(sample_fps):g}")
    if extra:
        props.append(extra.strip())
    return "queue leaky=downstream max-size-buffers=2 ! vlmedge " + " ".join(props) + " ! fakesink sync=false"
