"""The systemd unit and environment file of the camera assistant, rendered for a profile.

deploy/vlmedge-camera.service is the template and is itself a valid unit (rendered for orin-nano-8gb);
`render_unit` rewrites the profile-dependent lines (MemoryMax, User/Group, Description) and `render_env` writes
the EnvironmentFile that carries the pipeline. `parse_unit` is a strict reader used to check both.
"""
from __future__ import annotations

import importlib.util
import re
import sysconfig
from pathlib import Path

from vlmedge.errors import InputError
from vlmedge.jetson.camera import build_pipeline, deploy_file, vlmedge_sink
from vlmedge.jetson.profiles import DeviceProfile, systemd_size

UNIT_NAME = "vlmedge-camera.service"
ENV_NAME = "camera.env"
DEFAULT_ENV_PATH = "/etc/vlmedge/camera.env"
DEFAULT_MODEL_DIR = "/var/lib/vlmedge/export"

# Keys this unit may use, per section (a typo in the template fails the test instead of being ignored).
KNOWN_KEYS = {
    "Unit": {"Description", "Documentation", "After", "Before", "Wants", "Requires", "BindsTo", "PartOf",
             "StartLimitIntervalSec", "StartLimitBurst", "ConditionPathExists"},
    "Service": {"Type", "User", "Group", "SupplementaryGroups", "EnvironmentFile", "Environment",
                "WorkingDirectory", "StateDirectory", "ExecStartPre", "ExecStart", "ExecStop", "KillSignal",
                "TimeoutStopSec", "Restart", "RestartSec", "MemoryAccounting", "MemoryMax", "MemoryHigh",
                "NoNewPrivileges", "ProtectHome", "ProtectSystem", "Nice", "CPUQuota"},
    "Install": {"WantedBy", "RequiredBy", "Alias"},
}


class UnitSyntaxError(InputError):
    pass


def parse_unit(text: str) -> dict[str, list[tuple[str, str]]]:
    """Sections -> [(key, value), ...] in order; raises UnitSyntaxError on anything systemd would not take
    (a key outside a section, a line without '=', an unknown section or key, a line continuation)."""
    sections: dict[str, list[tuple[str, str]]] = {}
    current = None
    for n, line in enumerate(text.splitlines(), 1):
        stripped = line.strip()
        if not stripped or stripped.startswith(("#", ";")):
            continue
        if stripped.endswith("\\"):
            raise UnitSyntaxError(f"line {n}: line continuations are not used in this unit")
        m = re.fullmatch(r"\[([A-Za-z]+)\]", stripped)
        if m:
            current = m.group(1)
            if current not in KNOWN_KEYS:
                raise UnitSyntaxError(f"line {n}: unknown section [{current}]")
            if current in sections:
                raise UnitSyntaxError(f"line {n}: section [{current}] appears twice")
            sections[current] = []
            continue
        if current is None:
            raise UnitSyntaxError(f"line {n}: {stripped!r} is outside any section")
        key, eq, value = stripped.partition("=")
        key = key.strip()
        if not eq or not re.fullmatch(r"[A-Za-z]+", key):
            raise UnitSyntaxError(f"line {n}: expected Key=value, got {stripped!r}")
        if key not in KNOWN_KEYS[current]:
            raise UnitSyntaxError(f"line {n}: unknown key {key!r} in [{current}]")
        sections[current].append((key, value.strip()))
    return sections


def unit_value(sections: dict[str, list[tuple[str, str]]], section: str, key: str) -> str | None:
    values = [v for k, v in sections.get(section, []) if k == key]
    return values[-1] if values else None


def render_unit(prof: DeviceProfile, user: str = "vlmedge", group: str | None = None,
                env_file: str = DEFAULT_ENV_PATH) -> str:
    """The unit for `prof`: the template with MemoryMax, User, Group, EnvironmentFile and the profile names."""
    for label, value in (("user", user), ("group", group or user), ("env file", env_file)):
        if not value or re.search(r"\s", value):
            raise InputError(f"service {label} {value!r} must be one word")
    text = deploy_file(UNIT_NAME).read_text()
    template_profile = re.search(r"profile ([\w-]+)", text).group(1)
    text = text.replace(f"profile {template_profile}", f"profile {prof.name}")
    subs = {"MemoryMax": systemd_size(prof.service_memory_max), "User": user, "Group": group or user,
            "EnvironmentFile": env_file}
    for key, value in subs.items():
        text, count = re.subn(rf"(?m)^{key}=.*$", f"{key}={value}", text)
        if count != 1:
            raise InputError(f"{UNIT_NAME} template must have exactly one {key}= line")
    return text


def plugin_dir() -> str | None:
    """The folder holding vlmedge's GStreamer `python/` plugin folder (for GST_PLUGIN_PATH), if installed."""
    spec = importlib.util.find_spec("vlmedge.pipelines")
    for loc in (spec.submodule_search_locations or []) if spec else []:
        return str(Path(loc))
    return None


def render_env(prof: DeviceProfile, camera: str = "csi", model_dir: str = DEFAULT_MODEL_DIR,
               plugin_path: str | None = None, python_path: str | None = None, **camera_settings) -> str:
    """The EnvironmentFile for the unit: the pipeline (camera front end + vlmedge element), the budget, paths."""
    pipeline = build_pipeline(camera, sink=vlmedge_sink(model_dir, prof.memory_budget, prof.sample_fps),
                              **camera_settings)
    plugin_path = plugin_path or plugin_dir() or "/opt/vlmedge/venv/lib/python3.10/site-packages/vlmedge/pipelines"
    python_path = python_path or sysconfig.get_paths().get("purelib", "")
    lines = [
        f"# {DEFAULT_ENV_PATH}: read by {UNIT_NAME} (systemd EnvironmentFile syntax).",
        f"# Written by `vlmedge jetson service` for profile {prof.name}, camera '{camera}'.",
        f"VLMEDGE_PROFILE={prof.name}",
        f"VLMEDGE_MODEL_DIR={model_dir}",
        f"VLMEDGE_MEMORY_BUDGET={prof.memory_budget}",
        f"VLMEDGE_SAMPLE_FPS={prof.sample_fps:g}",
        "# the GStreamer python plugin loader finds the vlmedge element here, and imports vlmedge from PYTHONPATH",
        f"GST_PLUGIN_PATH={plugin_path}",
        f"PYTHONPATH={python_path}",
        f'VLMEDGE_PIPELINE="{pipeline}"',
        "",
    ]
    return "\n".join(lines)


def parse_env(text: str) -> dict[str, str]:
    """A strict reader of the EnvironmentFile lines this module writes (KEY=value or KEY="value")."""
    env = {}
    for n, line in enumerate(text.splitlines(), 1):
        s = line.strip()
        if not s or s.startswith("#"):
            continue
        m = re.fullmatch(r'([A-Za-z_][A-Za-z0-9_]*)=(?:"([^"\\]*)"|([^"\s]*))', s)
        if not m:
            raise UnitSyntaxError(f"line {n}: not KEY=value or KEY=\"value\": {s!r}")
        env[m.group(1)] = m.group(2) if m.group(2) is not None else m.group(3)
    return env
