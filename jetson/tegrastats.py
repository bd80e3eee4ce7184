"""tegrastats: parse its lines into `TegraSample` records, and keep the latest one from a background reader.

One line per interval, fields separated by spaces; what appears depends on the module, the JetPack release and
whether tegrastats runs as root (without root, EMC and the GPU/engine clocks are left out). Forms handled:

    [MM-DD-YYYY HH:MM:SS]                       timestamp prefix (JetPack 5.1 and later)
    RAM 2254/7620MB (lfb 952x4MB)               used/total MB, largest free block: count x size
    SWAP 0/3810MB (cached 0MB)
    CPU [3%@1510,off,...]                       per core load %@MHz, or off (older: CPU [3%,1%]@1510)
    EMC_FREQ 1%@2133 | 1% | @2133               memory controller load and clock
    GR3D_FREQ 0%@[305] | 0%@[305,305] | 0%@611 | 97% | @[1000,1000]   GPU load, per-GPC clocks
    GR3D2_FREQ 0%@114                           second GPC on early JetPack 5 AGX Orin
    VIC_FREQ 729 | VIC off | NVDEC off | APE 200 | NVDLA0 off | PVA0_FREQ off   engines
    CPU@47.281C tj@47.281C GPU@-256C            temperatures (upper case on JetPack 5, lower on 6;
    cpu@52.968C/52.968C                         -256C = sensor's domain powered off; the /max form is newer)
    VDD_IN 5103mW/5103mW                        rail power: instantaneous/average (a third value on newer
                                                releases is kept as `extra`); NC 0mW/0mW rails are skipped

Rails differ by module: Orin Nano/NX report VDD_IN (module input), VDD_CPU_GPU_CV and VDD_SOC; AGX Orin
reports VDD_GPU_SOC, VDD_CPU_CV, VIN_SYS_5V0 (and on JetPack 5 VDDQ_VDD2_1V8AO), and has no single input rail.
"""
from __future__ import annotations

import datetime as _dt
import os
import re
import shutil
import subprocess
import threading
from dataclasses import asdict, dataclass, field
from typing import Callable, Iterable, Iterator

from vlmedge.errors import InputError

_DATE_RE = re.compile(r"^\d{2}-\d{2}-\d{4}$")
_TIME_RE = re.compile(r"^\d{2}:\d{2}:\d{2}$")
_USED_TOTAL_RE = re.compile(r"^(\d+)/(\d+)([kKMG]B)$")
_LFB_RE = re.compile(r"^(\d+)x(\d+)([kKMG]B)\)?$")
_SIZE_RE = re.compile(r"^(\d+)([kKMG]B)\)?$")
_LOAD_RE = re.compile(r"^(?:(\d+)%)?(?:@\[?([\d,]*)\]?)?$")
_TEMP_RE = re.compile(r"^([A-Za-z][\w]*)@(-?\d+(?:\.\d+)?)C(?:/(-?\d+(?:\.\d+)?)C)?$")
_RAIL_VALUE_RE = re.compile(r"^(\d+)(?:mW)?/(\d+)(?:mW)?(?:/(\d+)(?:mW)?)?$")
_NAME_RE = re.compile(r"^[A-Z][A-Z0-9_]*$")
SENSOR_OFF_C = -256.0

_UNIT_MB = {"kB": 1 / 1024, "KB": 1 / 1024, "MB": 1.0, "GB": 1024.0}


def _mb(value: str, unit: str) -> float:
    return int(value) * _UNIT_MB.get(unit, 1.0)


@dataclass
class CpuCore:
    index: int
    online: bool
    load_pct: int | None = None
    freq_mhz: int | None = None


@dataclass
class Engine:
    """An accelerator's state: off, or on with a clock (MHz) and sometimes a load (%)."""

    name: str
    on: bool
    freq_mhz: int | None = None
    load_pct: int | None = None


@dataclass
class Rail:
    name: str
    current_mw: int
    average_mw: int
    extra_mw: int | None = None  # a third value printed by newer releases (not interpreted here)


@dataclass
class TegraSample:
    raw: str
    timestamp: _dt.datetime | None = None
    ram_used_mb: float | None = None
    ram_total_mb: float | None = None
    lfb_blocks: int | None = None
    lfb_block_mb: float | None = None
    swap_used_mb: float | None = None
    swap_total_mb: float | None = None
    swap_cached_mb: float | None = None
    cpus: list[CpuCore] = field(default_factory=list)
    emc_load_pct: int | None = None
    emc_freq_mhz: int | None = None
    gpu_load_pct: int | None = None
    gpu_freq_mhz: list[int] = field(default_factory=list)  # per GPC
    engines: dict[str, Engine] = field(default_factory=dict)
    temps_c: dict[str, float] = field(default_factory=dict)  # lower-cased sensor names, valid readings only
    sensors_off: list[str] = field(default_factory=list)  # sensors that printed -256C
    rails: dict[str, Rail] = field(default_factory=dict)
    unparsed: list[str] = field(default_factory=list)

    # --- derived values -----------------------------------------------------------------------------------

    @property
    def cpu_load_pct(self) -> float | None:
        """Mean load of the online cores (each relative to its own current clock, as tegrastats reports)."""
        loads = [c.load_pct for c in self.cpus if c.online and c.load_pct is not None]
        return sum(loads) / len(loads) if loads else None

    @property
    def cpus_online(self) -> int:
        return sum(1 for c in self.cpus if c.online)

    @property
    def ram_used_fraction(self) -> float | None:
        if self.ram_used_mb is None or not self.ram_total_mb:
            return None
        return self.ram_used_mb / self.ram_total_mb

    @property
    def temp_max_c(self) -> float | None:
        return max(self.temps_c.values()) if self.temps_c else None

    @property
    def input_power_mw(self) -> int | None:
        """The module's input power (VDD_IN) where the module reports one (Orin Nano/NX); None on AGX Orin."""
        rail = self.rails.get("VDD_IN")
        return rail.current_mw if rail else None

    @property
    def rails_total_mw(self) -> int | None:
        """Sum of the reported rails' instantaneous power. On Orin Nano/NX VDD_IN already contains the others,
        so this is VDD_IN there; on AGX Orin it is the sum of its rails (what tegrastats can see of the module)."""
        if not self.rails:
            return None
        if "VDD_IN" in self.rails:
            return self.rails["VDD_IN"].current_mw
        return sum(r.current_mw for r in self.rails.values())

    def metrics(self) -> dict[str, float | int | None]:
        """A flat dict for session metrics / `vlmedge run --stats` (None where the line lacked the field)."""
        return {
            "ram_used_mb": self.ram_used_mb,
            "ram_total_mb": self.ram_total_mb,
            "swap_used_mb": self.swap_used_mb,
            "cpu_load_pct": None if self.cpu_load_pct is None else round(self.cpu_load_pct, 1),
            "gpu_load_pct": self.gpu_load_pct,
            "gpu_freq_mhz": max(self.gpu_freq_mhz) if self.gpu_freq_mhz else None,
            "emc_load_pct": self.emc_load_pct,
            "emc_freq_mhz": self.emc_freq_mhz,
            "temp_max_c": self.temp_max_c,
            "temp_tj_c": self.temps_c.get("tj"),
            "temp_gpu_c": self.temps_c.get("gpu"),
            "power_mw": self.rails_total_mw,
        }

    def to_dict(self) -> dict:
        d = asdict(self)
        d["timestamp"] = self.timestamp.isoformat() if self.timestamp else None
        d["metrics"] = self.metrics()
        return d


class TegrastatsParseError(InputError):
    """A line that is not tegrastats output (no RAM field)."""


def _int(text: str | None) -> int | None:
    return int(text) if text not in (None, "") else None


def _parse_load(value: str) -> tuple[int | None, list[int]] | None:
    """'97%', '0%@[305,305]', '0%@611', '@2133', '@[1000,1000]' -> (load, [MHz...]); None if not that form."""
    m = _LOAD_RE.match(value)
    if not m or (m.group(1) is None and m.group(2) is None) or value == "":
        return None
    freqs = [int(f) for f in (m.group(2) or "").split(",") if f.strip().isdigit()]
    return _int(m.group(1)), freqs


def _parse_cpus(body: str, trailing_freq: int | None) -> list[CpuCore]:
    cores = []
    for i, item in enumerate(x.strip() for x in body.split(",")):
        if item == "off":
            cores.append(CpuCore(i, online=False))
            continue
        m = re.match(r"^(\d+)%(?:@(\d+))?$", item)
        if m:
            cores.append(CpuCore(i, True, int(m.group(1)), _int(m.group(2)) or trailing_freq))
        else:
            cores.append(CpuCore(i, online=True))
    return cores


def parse_line(line: str) -> TegraSample:
    """One tegrastats line -> TegraSample. Raises TegrastatsParseError for a line without a RAM field."""
    raw = line.rstrip("\r\n")
    toks = raw.split()
    s = TegraSample(raw=raw)
    i = 0
    if len(toks) >= 2 and _DATE_RE.match(toks[0]) and _TIME_RE.match(toks[1]):
        try:
            s.timestamp = _dt.datetime.strptime(f"{toks[0]} {toks[1]}", "%m-%d-%Y %H:%M:%S")
        except ValueError:
            s.unparsed.append(f"{toks[0]} {toks[1]}")
        i = 2
    n = len(toks)
    seen_ram = False

    def nxt(k: int = 1) -> str | None:
        return toks[i + k] if i + k < n else None

    while i < n:
        tok = toks[i]
        if tok == "RAM" and nxt() and _USED_TOTAL_RE.match(nxt()):
            m = _USED_TOTAL_RE.match(nxt())
            s.ram_used_mb, s.ram_total_mb = _mb(m.group(1), m.group(3)), _mb(m.group(2), m.group(3))
            seen_ram = True
            i += 2
            if nxt(0) == "(lfb" and nxt() and _LFB_RE.match(nxt()):
                m = _LFB_RE.match(nxt())
                s.lfb_blocks, s.lfb_block_mb = int(m.group(1)), _mb(m.group(2), m.group(3))
                i += 2
            continue
        if tok == "SWAP" and nxt() and _USED_TOTAL_RE.match(nxt()):
            m = _USED_TOTAL_RE.match(nxt())
            s.swap_used_mb, s.swap_total_mb = _mb(m.group(1), m.group(3)), _mb(m.group(2), m.group(3))
            i += 2
            if nxt(0) == "(cached" and nxt() and _SIZE_RE.match(nxt()):
                m = _SIZE_RE.match(nxt())
                s.swap_cached_mb = _mb(m.group(1), m.group(2))
                i += 2
            continue
        if tok == "IRAM":  # older Jetsons: IRAM 0/252kB(lfb 252kB)
            i += 3 if nxt(2) and nxt(2).endswith(")") else 2
            continue
        if tok == "CPU" and nxt() and nxt().startswith("["):
            body = nxt()
            j = i + 1
            while "]" not in body and j + 1 < n:  # tolerate spaces inside the brackets
                j += 1
                body += toks[j]
            inner, _, after = body[1:].partition("]")
            trailing = _int(after[1:]) if after.startswith("@") and after[1:].isdigit() else None
            s.cpus = _parse_cpus(inner, trailing)
            i = j + 1
            continue
        if tok == "MTS" and nxt() == "fg":  # Xavier-era: MTS fg 0% bg 0%
            i += 5
            continue
        temp = _TEMP_RE.match(tok)
        if temp:
            name, value = temp.group(1).lower(), float(temp.group(2))
            if value <= SENSOR_OFF_C:
                s.sensors_off.append(name)
            else:
                s.temps_c[name] = value
            i += 1
            continue
        if _NAME_RE.match(tok) and nxt() is not None:
            value = nxt()
            rail = _RAIL_VALUE_RE.match(value)
            if rail and ("mW" in value or tok.startswith(("VDD", "VIN", "POM"))):
                if tok != "NC":
                    s.rails[tok] = Rail(tok, int(rail.group(1)), int(rail.group(2)), _int(rail.group(3)))
                i += 2
                continue
            if tok in ("EMC_FREQ", "EMC"):
                load = _parse_load(value)
                if load is not None:
                    s.emc_load_pct = load[0]
                    s.emc_freq_mhz = load[1][0] if load[1] else None
                    i += 2
                    continue
            if tok in ("GR3D_FREQ", "GR3D2_FREQ", "GR3D"):
                load = _parse_load(value)
                if load is not None:
                    if tok != "GR3D2_FREQ" or s.gpu_load_pct is None:
                        s.gpu_load_pct = load[0] if load[0] is not None else s.gpu_load_pct
                    s.gpu_freq_mhz.extend(load[1])
                    i += 2
                    continue
            engine = _engine(tok, value)
            if engine is not None:
                s.engines[engine.name] = engine
                i += 2
                continue
        s.unparsed.append(tok)
        i += 1
    if not seen_ram:
        raise TegrastatsParseError(f"not a tegrastats line (no 'RAM used/totalMB' field): {raw[:80]!r}")
    return s


def _engine(tok: str, value: str) -> Engine | None:
    name = tok[:-5] if tok.endswith("_FREQ") else tok
    if value == "off":
        return Engine(name, on=False)
    if value.isdigit():
        return Engine(name, on=True, freq_mhz=int(value))
    load = _parse_load(value)
    if load is not None and (load[0] is not None or load[1]):
        return Engine(name, on=True, freq_mhz=load[1][0] if load[1] else None, load_pct=load[0])
    return None


def parse_lines(lines: Iterable[str], strict: bool = False) -> Iterator[TegraSample]:
    """Parses each non-empty line; lines that are not tegrastats output are skipped unless `strict`."""
    for line in lines:
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        try:
            yield parse_line(line)
        except TegrastatsParseError:
            if strict:
                raise


def read_file(path: str | os.PathLike, strict: bool = False) -> list[TegraSample]:
    """Samples from a file of tegrastats lines (`tegrastats --logfile FILE` writes this format)."""
    try:
        with open(path, encoding="utf-8", errors="replace") as f:
            return list(parse_lines(f, strict=strict))
    except FileNotFoundError:
        raise InputError(f"tegrastats file {str(path)!r} does not exist") from None


# --- live reading -------------------------------------------------------------------------------------------


class TegrastatsUnavailable(InputError):
    """tegrastats is not on this machine (not a Jetson, or the L4T tools are not installed)."""


class TegrastatsReader:
    """Runs `tegrastats --interval N` in the background and keeps the latest parsed sample.

    Nothing starts until `start()` (or `with reader:`); `available()` says whether tegrastats is on PATH.
    `command` may replace the argv (tests feed recorded lines through it). The reader never raises from its
    thread: lines that do not parse are counted in `bad_lines`, and the process's exit is recorded.
    """

    def __init__(self, interval_ms: int = 1000, command: list[str] | None = None,
                 on_sample: Callable[[TegraSample], None] | None = None, keep: int = 1):
        if int(interval_ms) < 10:
            raise InputError(f"tegrastats interval must be at least 10 ms, got {interval_ms}")
        self.interval_ms = int(interval_ms)
        self._command = command
        self.on_sample = on_sample
        self.keep = max(1, int(keep))
        self._lock = threading.Lock()
        self._samples: list[TegraSample] = []
        self._proc: subprocess.Popen | None = None
        self._thread: threading.Thread | None = None
        self.lines_read = 0
        self.bad_lines = 0
        self.returncode: int | None = None
        self.error: str | None = None

    @property
    def command(self) -> list[str]:
        return list(self._command) if self._command else ["tegrastats", "--interval", str(self.interval_ms)]

    def available(self) -> bool:
        return shutil.which(self.command[0]) is not None or os.path.isfile(self.command[0])

    def start(self) -> "TegrastatsReader":
        if self._proc is not None:
            return self
        if not self.available():
            raise TegrastatsUnavailable(f"{self.command[0]} not found: tegrastats ships with Jetson Linux (L4T); "
                                        "on a Jetson it is /usr/bin/tegrastats")
        self._proc = subprocess.Popen(self.command, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                      stderr=subprocess.DEVNULL, text=True, bufsize=1)
        self._thread = threading.Thread(target=self._pump, name="tegrastats-reader", daemon=True)
        self._thread.start()
        return self

    def _pump(self) -> None:
        proc = self._proc
        assert proc is not None and proc.stdout is not None
        try:
            for line in proc.stdout:
                self.lines_read += 1
                try:
                    sample = parse_line(line)
                except TegrastatsParseError:
                    self.bad_lines += 1
                    continue
                with self._lock:
                    self._samples.append(sample)
                    del self._samples[:-self.keep]
                if self.on_sample is not None:
                    try:
                        self.on_sample(sample)
                    except Exception as err:  # a callback bug must not kill the reader
                        self.error = f"on_sample failed: {type(err).__name__}: {err}"
        except Exception as err:  # pragma: no cover - pipe errors on shutdown
            self.error = f"{type(err).__name__}: {err}"
        finally:
            self.returncode = proc.wait()

    @property
    def latest(self) -> TegraSample | None:
        with self._lock:
            return self._samples[-1] if self._samples else None

    @property
    def samples(self) -> list[TegraSample]:
        with self._lock:
            return list(self._samples)

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def wait_for_sample(self, timeout: float = 5.0) -> TegraSample | None:
        """Blocks until a sample arrives, the process ends, or `timeout` seconds pass."""
        deadline = _dt.datetime.now() + _dt.timedelta(seconds=timeout)
        while _dt.datetime.now() < deadline:
            sample = self.latest
            if sample is not None:
                return sample
            if self._thread is not None and not self._thread.is_alive():
                return self.latest
            threading.Event().wait(0.02)
        return self.latest

    def join(self, timeout: float | None = None) -> None:
        """Waits for the reader thread (the process's output to end)."""
        if self._thread is not None:
            self._thread.join(timeout)

    def stop(self, timeout: float = 5.0) -> None:
        proc = self._proc
        if proc is None:
            return
        if proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(timeout)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout)
        if self._thread is not None:
            self._thread.join(timeout)
        if proc.stdout is not None:
            proc.stdout.close()

    def __enter__(self) -> "TegrastatsReader":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()


def summarize(samples: list[TegraSample]) -> dict:
    """Peaks and means over a run (what `vlmedge run --stats` prints): RAM/SWAP peak, GPU/CPU load, power, the
    hottest sensor. Fields a module's lines lack stay None."""
    def values(key):
        return [v for v in (s.metrics()[key] for s in samples) if v is not None]

    def peak(key):
        v = values(key)
        return max(v) if v else None

    def mean(key):
        v = values(key)
        return round(sum(v) / len(v), 1) if v else None

    return {"samples": len(samples), "ram_used_mb_peak": peak("ram_used_mb"),
            "ram_total_mb": peak("ram_total_mb"), "swap_used_mb_peak": peak("swap_used_mb"),
            "gpu_load_pct_mean": mean("gpu_load_pct"), "gpu_load_pct_peak": peak("gpu_load_pct"),
            "cpu_load_pct_mean": mean("cpu_load_pct"), "emc_load_pct_mean": mean("emc_load_pct"),
            "power_mw_mean": mean("power_mw"), "power_mw_peak": peak("power_mw"), "temp_max_c": peak("temp_max_c")}
