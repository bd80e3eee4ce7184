"""vlmedge.jetson: Jetson Orin device profiles, JetPack/L4T detection, tegrastats reading, deployment files.

One concept per module, all standard library only (safe to import anywhere, no torch):

* `profiles`      - module facts (memory, SMs, DLA, power modes) and vlmedge defaults (budget, workspace, fps)
* `detect`        - nv_tegra_release, device-tree model/compatible, meminfo, nvpmodel: `detect.detect(root)`
* `tegrastats`    - `parse_line` -> TegraSample, `TegrastatsReader` (background `tegrastats --interval N`)
* `camera`        - CSI/USB GStreamer pipelines from deploy/pipelines.json
* `service`       - the systemd unit and its environment file, rendered for a profile
* `setup_checks`  - what `vlmedge jetson setup` checks
"""
# (the `detect` function stays in its module: `from vlmedge.jetson.detect import detect`; re-exporting it here
# would shadow the submodule `vlmedge.jetson.detect`)
from vlmedge.jetson.detect import JetsonInfo, L4TRelease, jetpack_for, parse_nv_tegra_release
from vlmedge.jetson.profiles import PROFILES, BuildSettings, DeviceProfile, PowerMode, build_settings, profile, \
    profile_for_target
from vlmedge.jetson.tegrastats import TegraSample, TegrastatsReader, parse_line

__all__ = [
    "PROFILES", "BuildSettings", "DeviceProfile", "PowerMode", "build_settings", "profile", "profile_for_target",
    "JetsonInfo", "L4TRelease", "jetpack_for", "parse_nv_tegra_release",
    "TegraSample", "TegrastatsReader", "parse_line",
]
