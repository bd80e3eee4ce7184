"""The session's tracked bytes against the process's measured memory (RSS; this machine has no GPU).

A model whose KV is tens of MB is needed for RSS to see it above the interpreter's noise: a LLaVA-OneVision
shape with a 1-block 64-wide tower (256 tokens per 128-px frame) in front of an 8-layer, 8-KV-head, 512-wide
decoder, so one token's KV is 2 × 8 × 8 × 64 × 4 B = 32 KiB (weights ~84 MB, random: answers are not read).

RSS is read after gc and glibc's malloc_trim, so it counts what the process holds rather than heap pages the
allocator keeps after the cache's per-step concatenations (without the trim, 120 MiB of KV showed as 133 MiB).
Margins, from measurement on this machine: 120.5 MiB of tracked KV growth grew RSS by 120.9 MiB (ratio 1.003), so
the ratio must be within [0.95, 1.10]; once the token store is full, 8 more frames moved RSS by +0.03 MiB, allowed
4 MiB, while the tracked total stays under the budget."""
import ctypes
import gc

import numpy as np
import pytest
import torch

from vlmedge.bench.shapes import Shape, build
from vlmedge.runtime import StreamingSession
from vlmedge.runtime.planner import weights_bytes
from vlmedge.runtime.soak import rss_bytes

KV_HEAVY = Shape("kv-heavy", "1-block tower + 8-layer 512-wide decoder, 32 KiB of KV per token",
                 128, 8, 64, 128, 1, 2, 512, 1024, 8, 8, 8, 1000)
MiB = 2 ** 20


@pytest.fixture(scope="module")
def adapter():
    return build(KV_HEAVY)


def _frames(n, seed=0):
    rng = np.random.default_rng(seed)
    return [rng.integers(0, 256, (128, 128, 3), dtype=np.uint8) for _ in range(n)]


def _settled():
    """RSS once Python's garbage is collected and glibc has handed freed heap pages back: what the process holds,
    not what the allocator keeps around after the cache's per-step concatenations."""
    gc.collect()
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except OSError:  # not glibc: measure as is
        pass
    return rss_bytes()


def test_tracked_weights_are_the_parameters(adapter):
    params = sum(p.numel() * p.element_size() for p in adapter.model.parameters())
    bufs = sum(b.numel() * b.element_size() for b in adapter.model.buffers())
    assert weights_bytes(adapter) == params + bufs  # tied embeddings counted once


def test_rss_grows_with_the_tracked_kv(adapter):
    torch.set_num_threads(1)
    s = StreamingSession(adapter, "none")
    frames = _frames(16)
    s.push_frame(frames[0], 0.0)
    m0, r0 = s.memory(), _settled()
    for i, f in enumerate(frames[1:], 1):
        s.push_frame(f, float(i))
    m1, r1 = s.memory(), _settled()
    kv = m1["kv"] - m0["kv"]
    per_token = 2 * 8 * 8 * 64 * 4
    assert kv == (s.stream_tokens - m0["kv"] // per_token) * per_token  # tracked KV is exactly the cache's bytes
    assert kv > 100 * MiB
    ratio = (r1 - r0) / kv
    print(f"tracked KV +{kv / MiB:.1f} MiB, RSS +{(r1 - r0) / MiB:.1f} MiB (ratio {ratio:.3f})")
    assert 0.95 <= ratio <= 1.10, f"RSS grew {(r1 - r0) / MiB:.1f} MiB for {kv / MiB:.1f} MiB of tracked KV"


def test_a_full_store_keeps_rss_flat_inside_the_budget(adapter):
    torch.set_num_threads(1)
    s = StreamingSession(adapter, "none", memory_budget="200MiB")
    frames = _frames(24, seed=1)
    capacity = s.store.capacity_tokens
    i = 0
    while s.stream_tokens + 300 < capacity:  # fill the store
        s.push_frame(frames[i % len(frames)], float(i))
        i += 1
    for _ in range(2):  # the first evictions settle the allocator
        s.push_frame(frames[i % len(frames)], float(i))
        i += 1
    m0, r0 = s.memory(), _settled()
    for _ in range(8):
        s.push_frame(frames[i % len(frames)], float(i))
        i += 1
        assert s.memory()["total"] <= s.plan.budget_bytes
    m1, r1 = s.memory(), _settled()
    assert s.store.evicted_blocks >= 8
    print(f"full store: KV {m1['kv'] / MiB:.1f} MiB, RSS {(r1 - r0) / MiB:+.2f} MiB over 8 frames, tracked "
          f"{m1['total'] / MiB:.1f} of {s.plan.budget_bytes / MiB:.0f} MiB")
    assert abs(m1["kv"] - m0["kv"]) <= 300 * 32 * 1024  # within one frame of the capacity
    assert abs(r1 - r0) <= 4 * MiB, f"RSS moved {(r1 - r0) / MiB:+.1f} MiB over 8 evicting frames"
