"""The Triton kernels of the `vlmedge` ops (export/ops/triton_kernels.py) against their torch references.

Without CUDA the kernels run under Triton's interpreter on CPU tensors: TRITON_INTERPRET=1 is set here before the
kernels module is imported (triton reads it when the kernels are decorated, which happens at that import). With
CUDA every test also runs on the GPU (compiled kernels).

Inputs are fresh on every run: the "fresh" cases draw their seed from os.urandom (set VLMEDGE_OPS_SEED=<seed>
to replay one; every assertion message names the seed), the "fixed" cases use seed 1234.

Tolerances: indices must agree EXACTLY. Copied rows (kept rows, merged rows) must be bit-exact; the only
computed values in outputs are casts in StcMerge, which must equal torch's `.to` bitwise too. Where an op
computes scores in float (StcSelect, DppGreedyMap, DpcKnnSelect), the kernel and torch sum in different orders
(~1e-7 relative apart in float32), so a near-tie at the selection boundary could flip. We never accept a
mismatch; instead each such test makes its inputs well separated where it matters:
- StcSelect: the cosines are constructed on a grid (spacing 1.8/T, >= 6e-3), and the test asserts that the
  reference's similarities are >= 1e-4 apart; exact ties come only from duplicated rows (identical bits in
  both implementations), checked against the documented rule (lower index first).
- DppGreedyMap: a float64 replay of the greedy finds the first step whose decision is within 2e-5 * max(diag)
  of flipping (runner-up variance, or the eps stop test); the orders must agree exactly up to that step, and
  entirely when no step is that close (or the run stops early, robustly, before it).
- DpcKnnSelect: inputs are redrawn (seed, attempt) until the float64 scores are well conditioned: the boundary
  gap exceeds 1e-5 * max score and no near-tie of densities (within 2e-6 * max) changes any score by more.
  k = 1 is special (mutual nearest neighbours have equal densities by construction; which is "denser" is
  rounding): it is compared only where both implementations' distances are bitwise symmetric, so those ties
  are exact on both sides.
PruneCompact and KeepCount compare input values only (no arithmetic besides the sigmoid threshold, which the
kernel applies as an exact float32 logit cut taken from torch's CPU sigmoid), so random and deliberately tied
inputs must agree exactly. (On CUDA torch's sigmoid could differ from the CPU one by an ulp; a random logit
lands within an ulp of the cut with probability ~1e-7.)
"""
import os
import zlib

import pytest
import torch
import torch.nn.functional as F

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

pytest.importorskip("triton", reason="triton is not installed (a dev dependency): the Triton kernels cannot run")

from vlmedge.compression.omnizip.istc import dpc_knn_scores  # noqa: E402
from vlmedge.compression.stc.selection import key_similarity  # noqa: E402
from vlmedge.export.ops import reference as R  # noqa: E402
from vlmedge.export.ops import triton_kernels as K  # noqa: E402

FRESH_SEED = int(os.environ.get("VLMEDGE_OPS_SEED", "0")) or int.from_bytes(os.urandom(4), "little")
SEEDS = [pytest.param(1234, id="fixed"), pytest.param(FRESH_SEED, id="fresh")]
DEVICES = [
    pytest.param("cpu", marks=pytest.mark.skipif(not K.INTERPRET, reason="CPU tensors need TRITON_INTERPRET=1 set "
                                                 "before the kernels module is imported")),
    pytest.param("cuda", marks=pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")),
]
SIZES = [1, 7, 64, 300]
SENT = -(2 ** 40) - 7  # poison for int64 outputs
PATTERN = {1: 0x5A, 2: 0x5A5A, 4: 0x5A5A5A5A, 8: 0x5A5A5A5A5A5A5A5A}  # poison bits for any other output
BITS = {1: torch.uint8, 2: torch.int16, 4: torch.int32, 8: torch.int64}


def gen(seed: int, *salt) -> torch.Generator:
    """A generator for one case: the run's seed mixed with the case's parameters (stable across processes)."""
    g = torch.Generator()
    g.manual_seed((seed * 1_000_003 + zlib.crc32(repr(salt).encode())) % (2 ** 63))
    return g


def bits(t: torch.Tensor) -> torch.Tensor:
    return t.view(BITS[t.element_size()])


def poison(t: torch.Tensor) -> torch.Tensor:
    if t.dtype == torch.int64:
        t.fill_(SENT)
    else:
        bits(t).fill_(PATTERN[t.element_size()])
    return t


def poisoned(t: torch.Tensor) -> torch.Tensor:
    """Mask of the elements still holding the poison."""
    if t.dtype == torch.int64:
        return t == SENT
    return bits(t) == PATTERN[t.element_size()]


def same_bits(a: torch.Tensor, b: torch.Tensor) -> bool:
    return a.dtype == b.dtype and a.shape == b.shape and torch.equal(bits(a.contiguous()), bits(b.contiguous()))


def test_interpreter_follows_environment():
    """Triton reads TRITON_INTERPRET when a kernel is decorated: here, when the kernels module is imported."""
    import triton

    if torch.cuda.is_available() or os.environ.get("TRITON_INTERPRET") != "1":
        pytest.skip("CUDA present or TRITON_INTERPRET set otherwise: the kernels are compiled")
    assert triton.knobs.runtime.interpret
    assert K.INTERPRET, "the kernels module was imported before TRITON_INTERPRET=1 was set (by another test module?)"


# ============================================================================ StcSelect

def separated_stc(T: int, C: int, g: torch.Generator, dtype=torch.float32) -> tuple[torch.Tensor, torch.Tensor]:
    """keys, ref [T, C] whose per-token cosines are a permuted grid (spacing 1.8 / T, >= 0.45 / T from 0), random
    norms."""
    u = F.normalize(torch.randn(T, C, generator=g, dtype=torch.float64), dim=-1)
    r = torch.randn(T, C, generator=g, dtype=torch.float64)
    w = F.normalize(r - (r * u).sum(-1, keepdim=True) * u, dim=-1)
    c = ((torch.randperm(T, generator=g).double() + 0.25) / T * 1.8 - 0.9)[:, None]  # never near 0 (zero rows)
    ka = 0.5 + 1.5 * torch.rand(T, 1, generator=g, dtype=torch.float64)
    kb = 0.5 + 1.5 * torch.rand(T, 1, generator=g, dtype=torch.float64)
    return (u * ka).to(dtype), ((c * u + (1 - c * c).sqrt() * w) * kb).to(dtype)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("T", SIZES)
@pytest.mark.parametrize("C,dtype", [(2, torch.float32), (48, torch.float16)])
def test_stc_select_matches_reference(device, seed, T, C, dtype):
    keys, ref = separated_stc(T, C, gen(seed, "stc", T, C, str(dtype)), dtype)
    keys, ref = keys.to(device), ref.to(device)
    msg = f"seed={seed} T={T} C={C} {dtype}"
    sims = key_similarity(keys, ref).sort().values
    assert T == 1 or float(sims.diff().min()) > 1e-4, f"construction not separated: {msg}"
    for ratio in [0.0, 0.05, 0.25, 0.5, 0.999, 1.0, 1.5]:  # n = 1 (floor 0), ..., n = T (0.999 of 7, 1.0, 1.5)
        want = R.stc_select(keys, ref, ratio)
        got = K.stc_select(keys, ref, ratio)
        assert got.dtype == torch.int64 and got.device == keys.device
        assert torch.equal(got, want), f"{msg} ratio={ratio}: {got.tolist()} != {want.tolist()}"
        if ratio in (0.25, 1.0):
            out = poison(torch.empty_like(want))
            K.stc_select_into(keys, ref, ratio, out)
            assert torch.equal(out, want), f"_into {msg} ratio={ratio}"


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("T", [7, 64, 300])
@pytest.mark.parametrize("C", [1, 8])
def test_stc_select_ties_go_to_lower_index(device, seed, T, C):
    """Exact ties (duplicated rows, zero rows, and for C = 1 cosines of exactly +-1) against the documented rule.

    The oracle is a stable sort of the reference's own similarities: `torch.topk` in the reference does not
    promise an order among exact ties, the op's contract (lower index first) does.
    """
    g = gen(seed, "stc-ties", T, C)
    if C == 1:
        keys, ref = torch.randn(T, 1, generator=g), torch.randn(T, 1, generator=g)
    else:
        keys, ref = separated_stc(T, C, g)
        src = torch.randint(0, T, (T,), generator=g)
        dup = torch.rand(T, generator=g) < 0.5
        keys[dup], ref[dup] = keys[src[dup]], ref[src[dup]]  # duplicated rows: bit-identical similarities
        zero = torch.rand(T, generator=g) < 0.2
        keys[zero] = 0.0  # cosine exactly 0
    keys, ref = keys.to(device), ref.to(device)
    order = torch.sort(key_similarity(keys, ref), stable=True).indices
    for ratio in [0.1, 0.3, 0.5, 0.7]:
        n = max(1, min(int(T * ratio), T))
        want = order[:n].sort().values
        got = K.stc_select(keys, ref, ratio)
        assert torch.equal(got, want), f"seed={seed} T={T} C={C} ratio={ratio}: {got.tolist()} != {want.tolist()}"


# ============================================================================ StcMerge

@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("T", SIZES)
@pytest.mark.parametrize("D,cached_dtype,fresh_dtype", [(1, torch.float32, torch.float32),
                                                        (48, torch.bfloat16, torch.float32),
                                                        (48, torch.float16, torch.float32),
                                                        (5, torch.int32, torch.int32)])
def test_stc_merge(device, seed, T, D, cached_dtype, fresh_dtype):
    g = gen(seed, "merge", T, D, str(cached_dtype), str(fresh_dtype))
    msg = f"seed={seed} T={T} D={D} {cached_dtype}<-{fresh_dtype}"
    cached = (torch.randn(T, D, generator=g) * 100).to(cached_dtype).to(device)
    for n in sorted({1, max(1, T // 4), T}):
        idx = torch.randperm(T, generator=g)[:n]
        fresh = (torch.randn(n, D, generator=g, dtype=torch.float64) * 100).to(fresh_dtype).to(device)
        idx = idx.to(device)
        want = R.stc_merge(cached, fresh, idx)
        assert same_bits(K.stc_merge(cached, fresh, idx), want), f"{msg} n={n}"
        assert same_bits(K.stc_merge(cached, fresh, idx - T), want), f"negative indices {msg} n={n}"
        out = poison(torch.empty_like(cached))
        K.stc_merge_into(cached, fresh, idx, out)
        assert same_bits(out, want), f"_into {msg} n={n}"
        inplace = cached.clone()
        K.stc_merge_into(inplace, fresh, idx, inplace)
        assert same_bits(inplace, want), f"in place {msg} n={n}"


# ============================================================================ PruneCompact

RULES = [(0.5, 0.0, 1), (0.5, 0.0, 0), (0.8, 0.1, 1), (0.2, 0.3, 0), (0.3, 0.05, 4), (0.0, 0.0, 1), (1.0, 0.0, 3),
         (0.99, 0.5, 1000), (0.5, 1.0, 2)]


def check_prune(logits, features, rule, msg):
    threshold, max_ratio, min_keep = rule
    want_idx, want_kept = R.prune_compact(logits, features, threshold, max_ratio, min_keep)
    got_idx, got_kept = K.prune_compact(logits, features, threshold, max_ratio, min_keep)
    assert torch.equal(got_idx, want_idx), f"{msg} rule={rule}: {got_idx.tolist()} != {want_idx.tolist()}"
    assert same_bits(got_kept, want_kept), f"kept rows {msg} rule={rule}"
    n = logits.shape[0]
    out_idx = poison(torch.empty(n, dtype=torch.int64, device=logits.device))
    out_kept = poison(torch.empty_like(features))
    out_count = poison(torch.empty(1, dtype=torch.int64, device=logits.device))
    K.prune_compact_into(logits, features, threshold, max_ratio, min_keep, out_idx, out_kept, out_count)
    k = want_idx.shape[0]
    assert int(out_count) == k, f"_into count {msg} rule={rule}"
    assert torch.equal(out_idx[:k], want_idx) and same_bits(out_kept[:k], want_kept), f"_into {msg} rule={rule}"
    assert poisoned(out_idx[k:]).all() and poisoned(out_kept[k:]).all(), f"wrote past count {msg} rule={rule}"


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("N,D,dtype", [(1, 3, torch.float32), (7, 5, torch.int64), (64, 48, torch.bfloat16),
                                       (300, 3, torch.float32)])
def test_prune_compact(device, seed, N, D, dtype):
    g = gen(seed, "prune", N, D, str(dtype))
    features = (torch.randn(N, D, generator=g) * 50).to(dtype)
    if dtype.is_floating_point and N > 3:
        features[1, 0] = float("nan")  # rows are copied bit for bit, NaNs included
    features = features.to(device)
    tied = torch.randint(-12, 12, (N,), generator=g).float() / 4  # many exact ties, exact zeros (p = 0.5)
    smooth = torch.randn(N, generator=g) * 3
    kinds = [("tied", tied, RULES), ("smooth", smooth, RULES), ("smooth-f16", smooth.half(), RULES[:3])]
    for name, logits, rules in kinds:
        for rule in rules:
            check_prune(logits.to(device), features, rule, f"seed={seed} N={N} D={D} {dtype} {name}")


@pytest.mark.parametrize("device", DEVICES)
def test_prune_compact_edges(device):
    f = torch.arange(64 * 3, dtype=torch.float32).reshape(64, 3).to(device)
    z = torch.linspace(-4, 4, 64).to(device)
    cases = {
        "min_keep rescues an empty threshold set": (z, (1.0, 0.0, 3)),
        "min_keep larger than N keeps all": (z, (1.0, 0.0, 100)),
        "cap at max_ratio * N": (z, (0.0, 0.1, 1)),
        "cap flooring to 0, no min_keep: empty": (z, (0.0, 0.001, 0)),
        "cap flooring to 0, min_keep 1": (z, (0.0, 0.001, 1)),
        "logit 0 at threshold 0.5 is dropped (strict)": (torch.zeros(64).to(device), (0.5, 0.0, 0)),
        "equal logits: lower indices first": (torch.zeros(64).to(device), (0.4, 0.25, 1)),
        "ratio exactly at the cap is not capped": (torch.cat([torch.ones(16), -torch.ones(48)]).to(device),
                                                   (0.5, 0.25, 1)),
    }
    for name, (logits, rule) in cases.items():
        check_prune(logits, f, rule, name)
    idx, kept = K.prune_compact(z, f, 1.0, 0.0, 0)
    assert idx.numel() == 0 and kept.shape == (0, 3)


# ============================================================================ KeepCount

@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("N,D,dtype", [(1, 4, torch.float32), (7, 48, torch.float16), (64, 4, torch.float32),
                                       (300, 48, torch.float16)])
def test_keep_count(device, seed, N, D, dtype):
    g = gen(seed, "keep", N, D, str(dtype))
    features = (torch.randn(N, D, generator=g) * 10).to(dtype).to(device)
    tied = torch.randint(0, 5, (N,), generator=g).double()  # exact ties
    smooth = torch.randn(N, generator=g, dtype=torch.float64)  # float64: compared in float32, as the reference
    for name, scores in [("tied", tied), ("smooth", smooth)]:
        scores = scores.to(device)
        for largest in (True, False):
            for count in sorted({0, 1, N // 2, N - 1, N, N + 5, -3}):
                msg = f"seed={seed} N={N} D={D} {name} largest={largest} count={count}"
                want_idx, want_kept = R.keep_count(scores, features, count, largest)
                got_idx, got_kept = K.keep_count(scores, features, count, largest)
                assert torch.equal(got_idx, want_idx), f"{msg}: {got_idx.tolist()} != {want_idx.tolist()}"
                assert same_bits(got_kept, want_kept), f"kept rows {msg}"
                out_idx = poison(torch.empty(N, dtype=torch.int64, device=device))
                out_kept = poison(torch.empty_like(features))
                out_count = poison(torch.empty(1, dtype=torch.int64, device=device))
                c = torch.tensor([count], dtype=torch.int64, device=device)
                K.keep_count_into(scores, features, c, largest, out_idx, out_kept, out_count)
                k = want_idx.shape[0]
                assert int(out_count) == k, f"_into count {msg}"
                assert torch.equal(out_idx[:k], want_idx) and same_bits(out_kept[:k], want_kept), f"_into {msg}"
                assert poisoned(out_idx[k:]).all() and poisoned(out_kept[k:]).all(), f"wrote past count {msg}"


@pytest.mark.parametrize("device", DEVICES)
def test_keep_count_nan_ranks_largest(device):
    """torch's stable sort puts NaN above everything; the kernel's ranking does the same."""
    scores = torch.tensor([0.5, float("nan"), 2.0, -1.0, float("nan"), 2.0, 0.0, -0.0]).to(device)
    f = torch.arange(8.0).reshape(8, 1).to(device)
    for largest in (True, False):
        for count in range(9):
            want = R.keep_count(scores, f, count, largest)[0]
            got = K.keep_count(scores, f, torch.tensor(count), largest)[0]
            assert torch.equal(got, want), f"largest={largest} count={count}: {got.tolist()} != {want.tolist()}"


# ============================================================================ DppGreedyMap

def dpp_decisive_steps(L: torch.Tensor, steps: int, eps: float, tol: float) -> int:
    """Float64 replay of the greedy: the number of leading steps whose decisions are robust (best variance more
    than `tol` above the runner-up and away from eps); `steps` if a robust early stop comes first."""
    L = L.double().cpu()
    n = L.shape[0]
    d = L.diagonal().clone()
    C = torch.zeros(steps, n, dtype=torch.float64)
    taken = torch.zeros(n, dtype=torch.bool)
    for i in range(steps):
        dm = d.masked_fill(taken, float("-inf"))
        top = dm.topk(min(2, n - i)).values
        best = float(top[0])
        if best == 0.0 and eps > 0:
            return steps  # exact zero rows of L: a variance of exactly 0 in every implementation, a robust stop
        if abs(best - eps) <= tol:
            return i
        if best <= eps:
            return steps  # a robust stop: the tail is ordered by the given relevance, exactly
        if top.numel() > 1 and best - float(top[1]) <= tol:
            return i
        j = int(dm.argmax())
        e = (L[j] - C[:i, j] @ C[:i]) / best ** 0.5
        C[i] = e
        d = d - e * e
        taken[j] = True
    return steps


def check_dpp(L, rel, steps, eps, msg, strict=False):
    want = R.dpp_greedy_map(L, rel, steps, eps)
    got = K.dpp_greedy_map(L, rel, steps, eps)
    s = want.shape[0]
    assert got.shape == want.shape and got.dtype == torch.int64, msg
    assert torch.equal(got.sort().values, got.unique()), f"order repeats a token: {msg}"
    m = s if strict else dpp_decisive_steps(L, s, eps, 2e-5 * float(L.diagonal().abs().max()))
    assert torch.equal(got[:m], want[:m]), f"{msg}: first {m} of {got.tolist()} != {want.tolist()}"
    out = poison(torch.empty(s, dtype=torch.int64, device=L.device))
    ws = torch.full((K.dpp_workspace_elems(L.shape[0], steps, L.dtype),), float("nan"), dtype=K.WORKSPACE_DTYPE,
                    device=L.device)
    K.dpp_greedy_map_into(L, rel, steps, eps, out, ws)
    assert torch.equal(out, got), f"_into {msg}"
    return m


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("N", SIZES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_dpp_greedy_map(device, seed, N, dtype):
    """Script's kernel diag(r) S diag(r) of full rank (features wider than N), a few step counts."""
    g = gen(seed, "dpp", N, str(dtype))
    h = F.normalize(torch.randn(N, N + 16, generator=g, dtype=torch.float64), dim=-1)
    r = 0.2 + torch.rand(N, generator=g, dtype=torch.float64)
    L = (r[:, None] * (h @ h.T) * r[None, :]).to(dtype).to(device)
    for steps in sorted({1, min(N, 5), min(N, 40)} | ({N} if N <= 64 else set())):
        for rel in (None, r.to(dtype).to(device)):
            check_dpp(L, rel, steps, 1e-10, f"seed={seed} N={N} {dtype} steps={steps} rel={rel is not None}")


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("relevance", ["none", "random", "tied"])
def test_dpp_early_stop(device, seed, relevance):
    """Early stops built so that every decision is robust: the whole order, tail included, must agree."""
    g = gen(seed, "dpp-stop", relevance)
    N = 48
    rel = {"none": None, "random": torch.rand(N, generator=g),
           "tied": torch.randint(0, 3, (N,), generator=g).float()}[relevance]
    rel_d = None if rel is None else rel.to(device)
    msg = f"seed={seed} relevance={relevance}"
    scale = torch.linspace(0.5, 2.0, N, dtype=torch.float64)[torch.randperm(N, generator=g)]  # spaced by >= 0.03

    # (a) zero relevance: 8 tokens on orthonormal features with spaced scales, the other 40 have exactly zero rows
    # in L, so their variance is exactly 0 <= eps (the default 1e-10) once the 8 are taken
    live = torch.randperm(N, generator=g)[:8]
    q = torch.linalg.qr(torch.randn(64, 8, generator=g, dtype=torch.float64)).Q.T  # [8, 64] orthonormal rows
    h = torch.zeros(N, 64, dtype=torch.float64)
    h[live] = q * scale[live, None]
    L = (h @ h.T).float().to(device)
    assert dpp_decisive_steps(L, N, 1e-10, 2e-5 * 4.0) == N, f"construction: {msg}"
    got = K.dpp_greedy_map(L, rel_d, N)
    check_dpp(L, rel_d, N, 1e-10, f"zero relevance {msg}", strict=True)
    assert sorted(got[:8].tolist()) == sorted(live.tolist()), msg

    # (b) rank 4: every token a scaled copy of one of 4 basis vectors; after the 4 group leaders are taken every
    # variance is float32 rounding noise (~1e-7), far below eps = 1e-3
    group = torch.randint(0, 4, (N,), generator=g)
    group[:4] = torch.arange(4)
    h4 = F.one_hot(group, 4).double() * scale[:, None]
    L4 = (h4 @ h4.T).float().to(device)
    for steps in (3, 10, N):
        assert dpp_decisive_steps(L4, steps, 1e-3, 2e-5 * 4.0) == steps, f"construction: {msg}"
        got = K.dpp_greedy_map(L4, rel_d, steps, 1e-3)
        check_dpp(L4, rel_d, steps, 1e-3, f"rank 4 steps={steps} {msg}", strict=True)
        if steps > 4:  # the tail really is the relevance order of the rest (index order without relevance)
            rest = [t for t in range(N) if t not in got[:4].tolist()]
            if rel is not None:
                rest = sorted(rest, key=lambda t: (-float(rel[t]), t))
            assert got[4:].tolist() == rest[: steps - 4], f"tail {msg}"


@pytest.mark.parametrize("device", DEVICES)
def test_dpp_edges(device):
    L = torch.eye(5).to(device) * torch.tensor([1.0, 3.0, 2.0, 3.0, 0.5], device=device)
    assert K.dpp_greedy_map(L, None, 0).numel() == 0
    assert torch.equal(K.dpp_greedy_map(L, None, 9), R.dpp_greedy_map(L, None, 9))  # steps > N: N, ties lower first
    assert K.dpp_greedy_map(L, None, 9).tolist() == [1, 3, 2, 0, 4]
    rel = torch.tensor([0.1, 0.5, 0.5, 0.9, 0.2], device=device)
    bad = L.clone()
    bad[2, 2] = float("nan")  # NaN variance: stops at once, the whole order is by relevance
    assert torch.equal(K.dpp_greedy_map(bad, rel, 5), R.dpp_greedy_map(bad, rel, 5))
    assert K.dpp_greedy_map(bad, rel, 5).tolist() == [3, 1, 2, 4, 0]
    one = torch.full((1, 1), 2.0, device=device)
    assert K.dpp_greedy_map(one, None, 3).tolist() == [0]


# ============================================================================ DpcKnnSelect

def dpc_well_conditioned(x: torch.Tensor, n: int, k: int, tol_rho=2e-6, tol_s=1e-5) -> bool:
    """Float64 DPC-KNN scores: is the top-n boundary clear, and does no near-tie of densities move a score?"""
    N = x.shape[0]
    if not 0 < n < N:
        return True
    xn = F.normalize(x.double().cpu(), dim=-1)
    dist = 1 - xn @ xn.T
    eye = torch.eye(N, dtype=torch.bool)
    dist_inf = dist.masked_fill(eye, float("inf"))
    rho = torch.exp(-dist_inf.topk(min(k, N - 1), dim=-1, largest=False).values.mean(-1))
    peak = dist.masked_fill(eye, 0.0).max(-1).values

    def score(i, higher_row):
        delta = dist_inf[i].masked_fill(~higher_row, float("inf")).min()
        return float((peak[i] if torch.isinf(delta) else delta) * rho[i])

    higher = rho[None, :] > rho[:, None]
    s = torch.tensor([score(i, higher[i]) for i in range(N)], dtype=torch.float64)
    smax = float(s.abs().max())
    ss = s.sort(descending=True).values
    if float(ss[n - 1] - ss[n]) <= tol_s * smax:
        return False
    close = (rho[None, :] - rho[:, None]).abs() <= tol_rho * float(rho.max())
    close &= ~eye
    for i, j in close.nonzero().tolist():
        for i_above_j in (True, False):  # either order of the pair (an exact float32 tie acts as neither)
            row = higher[i].clone()
            row[j] = not i_above_j
            if abs(score(i, row) - float(s[i])) > tol_s * smax:
                return False
    return True


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("N", SIZES)
@pytest.mark.parametrize("D,k", [(16, 5), (48, 2)])
def test_dpc_knn_select(device, seed, N, D, k):
    for n in sorted({0, 1, N // 3, N - 1, N, N + 5}):
        for attempt in range(40):
            x = torch.randn(N, D, generator=gen(seed, "dpc", N, D, k, n, attempt))
            if dpc_well_conditioned(x, n, k):
                break
        else:
            pytest.fail(f"no well-conditioned draw in 40 attempts: seed={seed} N={N} D={D} k={k} n={n}")
        x = x.to(device)
        msg = f"seed={seed} attempt={attempt} N={N} D={D} k={k} n={n}"
        want = R.dpc_knn_select(x, n, k)
        got = K.dpc_knn_select(x, n, k)
        assert torch.equal(got, want), f"{msg}: {got.tolist()} != {want.tolist()}"
        out = poison(torch.empty_like(want))
        ws = torch.full((K.dpc_workspace_elems(N),), float("nan"), device=device)
        K.dpc_knn_select_into(x, n, k, out, ws)
        assert torch.equal(out, want), f"_into {msg}"
        if 0 < n < N:  # the workspace's scores are the reference's (float32 rounding apart)
            ref_score = dpc_knn_scores(x.unsqueeze(0), k)[2][0]
            torch.testing.assert_close(ws[N * N + N:], ref_score, rtol=1e-4, atol=1e-6, msg=msg)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("N", [7, 64])
def test_dpc_knn_select_k1(device, seed, N):
    """k = 1: mutual nearest neighbours have the same density exactly when the distances are bitwise symmetric,
    so neither is "denser" than the other. Whether that holds is float32 rounding, not the algorithm, so this
    case is only compared when the reference's and the kernel's distances are both bitwise symmetric."""
    x = torch.randn(N, 48, generator=gen(seed, "dpc-k1", N)).to(device)
    xn = F.normalize(x, dim=-1)
    ref_dist = 1.0 - xn @ xn.T
    ws = torch.empty(K.dpc_workspace_elems(N), device=device)
    out = torch.empty(N // 3, dtype=torch.int64, device=device)
    K.dpc_knn_select_into(x, N // 3, 1, out, ws)
    dist = ws[: N * N].view(N, N)
    if not (torch.equal(ref_dist, ref_dist.T) and torch.equal(dist, dist.T)):
        pytest.skip("distances not bitwise symmetric here: k = 1 density ties are decided by rounding")
    want = R.dpc_knn_select(x, N // 3, 1)
    assert torch.equal(out, want), f"seed={seed} N={N}: {out.tolist()} != {want.tolist()}"


# ============================================================================ checks

def test_invalid_inputs_raise_value_error():
    dev = "cuda" if not K.INTERPRET and torch.cuda.is_available() else "cpu"
    if dev == "cpu" and not K.INTERPRET:
        pytest.skip("needs the interpreter or CUDA")
    x = torch.randn(8, 4, device=dev)
    i64 = torch.zeros(2, dtype=torch.int64, device=dev)
    with pytest.raises(ValueError, match="same shape"):
        K.stc_select(x, x[:, :3].contiguous(), 0.25)
    with pytest.raises(ValueError, match="token count"):
        K.stc_select(torch.randn(K.MAX_TOKENS + 1, 2, device=dev), torch.randn(K.MAX_TOKENS + 1, 2, device=dev), 0.5)
    with pytest.raises(ValueError, match="out_indices must have shape"):
        K.stc_select_into(x, x, 0.25, torch.zeros(3, dtype=torch.int64, device=dev))
    with pytest.raises(ValueError, match="dtype"):
        K.stc_select_into(x, x, 0.25, torch.zeros(2, dtype=torch.int32, device=dev))
    with pytest.raises(ValueError, match="fresh must have shape"):
        K.stc_merge(x, torch.randn(3, 4, device=dev), i64)
    with pytest.raises(ValueError, match="indices must be in"):
        K.stc_merge(x, torch.randn(2, 4, device=dev), torch.tensor([0, 8], device=dev))
    with pytest.raises(ValueError, match="NaN"):
        K.prune_compact(torch.tensor([0.0, float("nan")], device=dev), x[:2])
    with pytest.raises(ValueError, match="threshold"):
        K.prune_compact(torch.zeros(8, device=dev), x, threshold=1.5)
    with pytest.raises(ValueError, match="features must have 8 rows"):
        K.keep_count(torch.zeros(8, device=dev), x[:5], 2)
    with pytest.raises(ValueError, match="count must be"):
        K.keep_count_into(torch.zeros(8, device=dev), x, torch.tensor([1, 2], device=dev), True,
                          torch.empty(8, dtype=torch.int64, device=dev), torch.empty_like(x),
                          torch.empty(1, dtype=torch.int64, device=dev))
    with pytest.raises(ValueError, match="square"):
        K.dpp_greedy_map(x, None, 2)
    with pytest.raises(ValueError, match="workspace"):
        K.dpp_greedy_map_into(torch.eye(4, device=dev), None, 2, 1e-10, i64, torch.empty(3, device=dev))
    with pytest.raises(ValueError, match="workspace"):  # a float64 kernel needs twice the float32 elements
        K.dpp_greedy_map_into(torch.eye(4, device=dev, dtype=torch.float64), None, 2, 1e-10, i64,
                              torch.empty(K.dpp_workspace_elems(4, 2), device=dev))
    with pytest.raises(ValueError, match="workspace"):
        K.dpc_knn_select_into(x, 3, 2, torch.empty(3, dtype=torch.int64, device=dev), torch.empty(70, device=dev))
    with pytest.raises(ValueError, match="k must be"):
        K.dpc_knn_select(x, 3, k=0)
    with pytest.raises(ValueError, match="token count"):
        K.dpc_knn_select(torch.randn(K.MAX_DPC_TOKENS + 1, 2, device=dev), 3)
    with pytest.raises(ValueError, match="contiguous"):
        K.dpc_knn_select_into(x.T, 1, 1, torch.empty(1, dtype=torch.int64, device=dev), torch.empty(80, device=dev))
