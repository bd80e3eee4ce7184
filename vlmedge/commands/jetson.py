"""`vlmedge jetson`: device info, setup checks, tegrastats, camera pipelines and the service files on Jetson Orin."""
from __future__ import annotations

import argparse
import json
import statistics
import sys


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "jetson", help="Jetson Orin: detect the module, check setup, read tegrastats, write service files",
        description="Jetson Orin support: the detected module and its vlmedge profile (memory budget, TensorRT "
                    "workspace, power modes), a setup check that says what to fix, tegrastats parsing, the "
                    "camera pipelines, and the systemd service of the camera assistant.")
    jsub = p.add_subparsers(dest="jetson_command", metavar="SUBCOMMAND")
    p.set_defaults(func=lambda args: _help(p))

    def root_arg(q):
        q.add_argument("--root", default="/", metavar="DIR",
                       help="read the device files under DIR instead of / (e.g. a recorded tree; default: /)")

    q = jsub.add_parser("info", help="the detected module, L4T/JetPack, profile and memory",
                        description="Detects the module from /etc/nv_tegra_release and /proc/device-tree and shows "
                                    "its vlmedge profile. Exits 1 when this is not a Jetson Orin and no --profile "
                                    "is given.")
    root_arg(q)
    q.add_argument("--profile", metavar="NAME", help="show this profile instead of the detected one")
    q.add_argument("--json", action="store_true", help="print JSON")
    q.set_defaults(func=run_info)

    q = jsub.add_parser("profiles", help="list the Orin profiles",
                        description="One line per profile: memory, GPU, DLA, budget, workspace, defaults.")
    q.add_argument("--json", action="store_true", help="print JSON")
    q.set_defaults(func=run_profiles)

    q = jsub.add_parser("setup", help="check JetPack, TensorRT, GStreamer, the plugin loader and the camera",
                        description="Checks what the camera assistant needs on this Jetson and prints what to fix. "
                                    "Exits 1 when a required check fails (warnings do not). With --root, the device "
                                    "files are read there; the TensorRT/GStreamer probes still test this Python.")
    root_arg(q)
    q.add_argument("--camera", default="any", choices=["any", "csi", "usb", "none"],
                   help="which camera the setup is for: csi needs Argus, usb needs v4l2src, any needs a "
                        "/dev/video* device, none skips the camera (default: any)")
    q.add_argument("--json", action="store_true", help="print JSON")
    q.set_defaults(func=run_setup)

    q = jsub.add_parser("tegrastats", help="parse tegrastats live or from a file",
                        description="Runs `tegrastats --interval MS` and prints N parsed samples, or parses a file "
                                    "of tegrastats lines (e.g. from `tegrastats --logfile FILE`). Run as root for "
                                    "EMC and GPU clocks (tegrastats hides them otherwise).")
    q.add_argument("--file", metavar="PATH", help="parse this file instead of running tegrastats")
    q.add_argument("--lines", type=int, default=5, metavar="N",
                   help="samples to read live, or to show from --file (0: all of the file; default: 5)")
    q.add_argument("--interval", type=int, default=1000, metavar="MS", help="live sampling interval (default: 1000)")
    q.add_argument("--json", action="store_true", help="one JSON object per sample")
    q.set_defaults(func=run_tegrastats)

    q = jsub.add_parser("pipeline", help="print a camera pipeline (CSI or USB) for gst-launch-1.0",
                        description="Builds the camera front end from jetson/deploy/pipelines.json; with --model it "
                                    "ends in the vlmedge element, otherwise in --sink.")
    q.add_argument("--camera", default="csi", help="csi, usb or usb-mjpeg (default: csi)")
    q.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="override a pipeline setting (width, height, fps, out_width, out_height, sensor_id, flip, "
                        "device); repeatable")
    q.add_argument("--model", metavar="DIR", help="end in the vlmedge element reading this export directory")
    q.add_argument("--profile", metavar="NAME", help="profile for the element's memory budget and sample fps")
    q.add_argument("--sink", default="fakesink", help="sink when there is no --model (default: fakesink)")
    q.set_defaults(func=run_pipeline)

    q = jsub.add_parser("service", help="write the systemd unit and environment file for a profile",
                        description="Renders jetson/deploy/vlmedge-camera.service (MemoryMax from the profile's "
                                    "budget) and its camera.env (the pipeline into the vlmedge element). Prints both, "
                                    "or writes them to --out.")
    root_arg(q)
    q.add_argument("--profile", metavar="NAME", help="profile (default: the detected module)")
    q.add_argument("--camera", default="csi", help="csi, usb or usb-mjpeg (default: csi)")
    q.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override a pipeline setting")
    q.add_argument("--model-dir", default="/var/lib/vlmedge/export", metavar="DIR",
                   help="export directory the service runs (default: /var/lib/vlmedge/export)")
    q.add_argument("--user", default="vlmedge", help="user (and group) the service runs as (default: vlmedge)")
    q.add_argument("--out", metavar="DIR", help="write vlmedge-camera.service and camera.env here")
    q.set_defaults(func=run_service)


def _help(parser) -> int:
    parser.print_help()
    return 2


def _settings(items: list[str]) -> dict[str, str]:
    from vlmedge.errors import InputError

    out = {}
    for item in items:
        key, eq, value = item.partition("=")
        if not eq or not key.strip():
            raise InputError(f"--set takes KEY=VALUE, got {item!r}")
        out[key.strip().replace("-", "_")] = value.strip()
    return out


def _profile_or_detected(name: str | None, root: str):
    from vlmedge.errors import InputError
    from vlmedge.jetson.detect import detect
    from vlmedge.jetson.profiles import profile

    if name:
        return profile(name), None
    info = detect(root)
    if info.profile is None:
        raise InputError(f"no Jetson Orin module detected under {root} ({info.identified_by}); "
                         "pass --profile NAME (see `vlmedge jetson profiles`)")
    return info.profile, info


# ------------------------------------------------------------------------------------------------- info


def _profile_lines(prof) -> list[tuple[str, str]]:
    from vlmedge.jetson.profiles import CAMERA_RESERVE, HEADROOM_FRACTION, OS_RESERVE, format_bytes

    modes = " ".join(f"{m.id}={m.name}" for m in prof.power_modes)
    rows = [
        ("profile", f"{prof.name}: {prof.module} ({', '.join(prof.part_numbers)})"),
        ("GPU", f"{prof.gpu_arch}, {prof.gpu_sms} SMs, {prof.cuda_cores} CUDA cores, {prof.tensor_cores} tensor cores;"
                f" DLA cores: {prof.dla_cores}; CPU: {prof.cpu_cores}x Cortex-A78AE"),
        ("memory", f"{prof.memory_gb} GB LPDDR5 ({prof.memory_bus_bits}-bit, {prof.memory_bandwidth_gbs:g} GB/s)"),
        ("budget", f"{format_bytes(prof.memory_budget)} (nominal - {format_bytes(OS_RESERVE)} OS - "
                   f"{format_bytes(CAMERA_RESERVE)} camera - {HEADROOM_FRACTION:.0%}); TensorRT workspace "
                   f"{format_bytes(prof.trt_workspace)}; service MemoryMax {format_bytes(prof.service_memory_max)}"),
        ("precisions", f"{', '.join(prof.precisions)} (default {prof.default_precision}); no fp8 on Orin"),
        ("defaults", f"sample {prof.sample_fps:g} fps, {prof.tokens_per_frame} tokens/frame"),
        ("power modes", modes + (" | JetPack 6.2 super: " + " ".join(f"{m.id}={m.name}"
                                                                    for m in prof.super_power_modes)
                                 if prof.super_power_modes else "")),
    ]
    return rows


def run_info(args) -> int:
    from vlmedge.jetson.detect import detect
    from vlmedge.jetson.profiles import format_bytes, profile

    info = detect(args.root)
    prof = profile(args.profile) if args.profile else info.profile
    if args.json:
        out = {"detected": info.to_dict(), "profile": prof.to_dict() if prof else None}
        print(json.dumps(out, indent=2, default=str))
        return 0 if (prof is not None) else 1
    rows: list[tuple[str, str]] = []
    if info.is_jetson:
        parts = ", ".join(info.part_numbers) or "-"
        tree = ", super device tree" if info.super_config else ""
        rows.append(("model", f"{info.model or '?'} (parts {parts}{tree})"))
        if info.release:
            jp = info.release.jetpack or "unknown"
            exact = "" if info.release.jetpack_exact else ", release line"
            rows.append(("L4T", f"{info.release.tag} (JetPack {jp}{exact})"))
        else:
            rows.append(("L4T", "no /etc/nv_tegra_release"))
        rows.append(("detected", f"{info.profile.name if info.profile else 'no profile'} ({info.identified_by})"))
        if info.mem_total:
            mem = f"MemTotal {format_bytes(info.mem_total)}"
            if info.mem_available is not None:
                mem += f", available {format_bytes(info.mem_available)}"
            mem += f", swap {format_bytes(info.swap_total) if info.swap_total else 'none'}"
            rows.append(("memory now", mem))
        if info.power_modes:
            cur = info.power_mode_current
            rows.append(("nvpmodel", (f"current {cur}={info.current_power_mode_name}; " if cur is not None else "")
                         + "modes " + " ".join(f"{m.id}={m.name}" for m in info.power_modes)))
    else:
        rows.append(("detected", f"not a Jetson under {args.root} (no /etc/nv_tegra_release, no tegra device tree)"))
    if prof is not None:
        rows += _profile_lines(prof)
    width = max(len(k) for k, _ in rows)
    for k, v in rows:
        print(f"{k:<{width}}  {v}")
    if prof is None:
        print("(pass --profile NAME to show a profile; `vlmedge jetson profiles` lists them)")
        return 1
    return 0


def run_profiles(args) -> int:
    from vlmedge.jetson.profiles import PROFILES, format_bytes

    if args.json:
        print(json.dumps({n: p.to_dict() for n, p in PROFILES.items()}, indent=2))
        return 0
    header = ("profile", "module", "mem", "SMs", "cores", "DLA", "budget", "workspace", "fps", "tok/frame")
    rows = [header] + [(p.name, p.module, f"{p.memory_gb} GB", str(p.gpu_sms), str(p.cuda_cores), str(p.dla_cores),
                        format_bytes(p.memory_budget), format_bytes(p.trt_workspace), f"{p.sample_fps:g}",
                        str(p.tokens_per_frame)) for p in PROFILES.values()]
    widths = [max(len(r[i]) for r in rows) for i in range(len(header))]
    for r in rows:
        print("  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip())
    return 0


# ------------------------------------------------------------------------------------------------ setup


def run_setup(args) -> int:
    from vlmedge.jetson.setup_checks import exit_code, format_checks, run_setup_checks

    checks = run_setup_checks(args.root, args.camera)
    code = exit_code(checks)
    if args.json:
        print(json.dumps({"checks": [c.to_dict() for c in checks], "ok": code == 0}, indent=2))
    else:
        print(f"vlmedge jetson setup (camera: {args.camera})")
        print(format_checks(checks))
    return code


# ------------------------------------------------------------------------------------------- tegrastats


def _sample_line(s) -> str:
    m = s.metrics()
    parts = [s.timestamp.strftime("%H:%M:%S") if s.timestamp else "--:--:--"]
    if s.ram_total_mb is not None:
        parts.append(f"RAM {s.ram_used_mb:.0f}/{s.ram_total_mb:.0f} MB")
    if s.swap_total_mb:
        parts.append(f"swap {s.swap_used_mb:.0f}/{s.swap_total_mb:.0f}")
    if s.cpus:
        load = m["cpu_load_pct"]
        parts.append(f"CPU {'-' if load is None else f'{load:.0f}%'} ({s.cpus_online}/{len(s.cpus)} on)")
    if s.gpu_load_pct is not None or s.gpu_freq_mhz:
        gpu = f"GPU {'-' if s.gpu_load_pct is None else f'{s.gpu_load_pct}%'}"
        if m["gpu_freq_mhz"]:
            gpu += f" @{m['gpu_freq_mhz']} MHz"
        parts.append(gpu)
    if s.emc_load_pct is not None or s.emc_freq_mhz:
        parts.append(f"EMC {'-' if s.emc_load_pct is None else f'{s.emc_load_pct}%'}"
                     + (f" @{s.emc_freq_mhz}" if s.emc_freq_mhz else ""))
    if m["temp_tj_c"] is not None:
        parts.append(f"tj {m['temp_tj_c']:.1f}C")
    elif m["temp_max_c"] is not None:
        parts.append(f"max {m['temp_max_c']:.1f}C")
    if s.rails:
        label = "VDD_IN" if "VDD_IN" in s.rails else "rails"
        parts.append(f"{label} {m['power_mw']} mW")
    return "  ".join(parts)


def _summary(samples) -> str:
    def stat(values, unit, fmt="{:.0f}"):
        values = [v for v in values if v is not None]
        if not values:
            return None
        return f"mean {fmt.format(statistics.fmean(values))}{unit}, max {fmt.format(max(values))}{unit}"

    bits = []
    for label, key, unit in (("GPU", "gpu_load_pct", "%"), ("power", "power_mw", " mW"),
                             ("RAM used", "ram_used_mb", " MB"), ("tj", "temp_tj_c", "C")):
        text = stat([s.metrics()[key] for s in samples], unit)
        if text:
            bits.append(f"{label} {text}")
    return f"{len(samples)} samples: " + ("; ".join(bits) if bits else "no numeric fields")


def run_tegrastats(args) -> int:
    from vlmedge.errors import InputError
    from vlmedge.jetson.tegrastats import TegrastatsReader, read_file

    if args.lines < 0:
        raise InputError(f"--lines must be 0 or more, got {args.lines}")
    if args.file:
        samples = read_file(args.file)
        if not samples:
            raise InputError(f"{args.file} holds no tegrastats lines")
        if args.lines:
            samples = samples[:args.lines]
    else:
        if args.lines == 0:
            raise InputError("--lines 0 (everything) only applies to --file; give a number of live samples")
        samples = []
        reader = TegrastatsReader(interval_ms=args.interval, keep=1,
                                  on_sample=lambda s: samples.append(s) if len(samples) < args.lines else None)
        if not reader.available():
            raise InputError("tegrastats is not on this machine (it ships with Jetson Linux); "
                             "pass --file PATH to parse recorded lines")
        with reader:
            timeout = max(5.0, args.lines * args.interval / 1000 * 2 + 5)
            import time

            deadline = time.monotonic() + timeout
            while len(samples) < args.lines and time.monotonic() < deadline and reader.running:
                time.sleep(0.05)
        if not samples:
            raise InputError(f"tegrastats printed no parsable line in {timeout:.0f} s")
    for s in samples:
        if args.json:
            print(json.dumps({"timestamp": s.timestamp.isoformat() if s.timestamp else None, **s.metrics(),
                              "rails_mw": {k: r.current_mw for k, r in s.rails.items()},
                              "temps_c": s.temps_c}))
        else:
            print(_sample_line(s))
    if not args.json:
        print(_summary(samples))
    sys.stdout.flush()
    return 0


# ----------------------------------------------------------------------------------------- pipeline/service


def run_pipeline(args) -> int:
    from vlmedge.jetson.camera import build_pipeline, vlmedge_sink
    from vlmedge.jetson.profiles import profile

    sink = args.sink
    if args.model:
        prof = profile(args.profile) if args.profile else None
        sink = vlmedge_sink(args.model, prof.memory_budget if prof else None, prof.sample_fps if prof else None)
    print(build_pipeline(args.camera, sink=sink, **_settings(args.set)))
    return 0


def run_service(args) -> int:
    import os

    from vlmedge.jetson.service import ENV_NAME, UNIT_NAME, render_env, render_unit

    prof, _ = _profile_or_detected(args.profile, args.root)
    unit = render_unit(prof, user=args.user)
    env = render_env(prof, camera=args.camera, model_dir=args.model_dir, **_settings(args.set))
    if args.out:
        os.makedirs(args.out, exist_ok=True)
        for name, text in ((UNIT_NAME, unit), (ENV_NAME, env)):
            with open(os.path.join(args.out, name), "w") as f:
                f.write(text)
        print(f"wrote {os.path.join(args.out, UNIT_NAME)} and {os.path.join(args.out, ENV_NAME)} "
              f"(profile {prof.name}, MemoryMax from a {prof.memory_budget / 2**30:.2f} GiB budget)")
        print(f"install: sudo install -m 644 {os.path.join(args.out, UNIT_NAME)} /etc/systemd/system/ && "
              f"sudo install -D -m 644 {os.path.join(args.out, ENV_NAME)} /etc/vlmedge/{ENV_NAME}")
    else:
        print(f"# ---- /etc/systemd/system/{UNIT_NAME}")
        print(unit, end="")
        print(f"# ---- /etc/vlmedge/{ENV_NAME}")
        print(env, end="")
    return 0
