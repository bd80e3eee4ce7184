"""Memory readings for benchmarks: the KV cache a stream holds, and the process's peak since a reset point.

On CPU the peak is the kernel's resident high-water mark (VmHWM), which Linux resets when 5 is written to
/proc/self/clear_refs, so each measured method gets its own peak instead of the process-lifetime maximum that
`getrusage` reports. On CUDA it is the allocator's peak (`torch.cuda.max_memory_allocated`) for models torch
allocates; ONNX Runtime's CUDA arena and TensorRT's engine memory are not torch's, so for those
(`whole_device=True`) a thread samples the device's used memory (`cudaMemGetInfo`) every few milliseconds and
the peak is the device's, this process's context and any other process's memory included.
"""
from __future__ import annotations

import resource
import threading

import torch

POLL_S = 0.002


def kv_bytes(cache) -> int:
    """Bytes of keys and values a cache holds (transformers DynamicCache or the ONNX Runtime backend's cache)."""
    if hasattr(cache, "nbytes"):
        return int(cache.nbytes())
    total = 0
    for layer in getattr(cache, "layers", ()):
        for t in (getattr(layer, "keys", None), getattr(layer, "values", None)):
            if isinstance(t, torch.Tensor):
                total += t.numel() * t.element_size()
    return total


class PeakMemory:
    """`with PeakMemory(device) as m: ...` then `m.peak_mb` (resident set on CPU, allocated on CUDA)."""

    def __init__(self, device: str = "cpu", whole_device: bool = False):
        self.device = device
        self.whole_device = whole_device and device.startswith("cuda")
        self.peak_mb = float("nan")
        self.exact = True  # False when the CPU peak could not be reset (process-lifetime maximum)
        self._stop = threading.Event()
        self._poller = None
        self._used_max = 0

    def _poll(self) -> None:
        while True:
            free, total = torch.cuda.mem_get_info()
            self._used_max = max(self._used_max, total - free)
            if self._stop.wait(POLL_S):
                return

    def __enter__(self):
        if self.whole_device:
            torch.cuda.synchronize()
            self._stop.clear()
            self._poller = threading.Thread(target=self._poll, name="peak-memory", daemon=True)
            self._poller.start()
        elif self.device.startswith("cuda"):
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
        else:
            try:
                with open("/proc/self/clear_refs", "w") as f:
                    f.write("5")
            except OSError:
                self.exact = False
        return self

    def __exit__(self, *exc):
        if self.whole_device:
            torch.cuda.synchronize()
            self._stop.set()
            self._poller.join()
            self.peak_mb = self._used_max / 2**20
        elif self.device.startswith("cuda"):
            torch.cuda.synchronize()
            self.peak_mb = torch.cuda.max_memory_allocated() / 2**20
        else:
            self.peak_mb = _vm_hwm_mb() if self.exact else None
            if self.peak_mb is None:
                self.exact = False
                self.peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        return False


def _vm_hwm_mb() -> float | None:
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return None
