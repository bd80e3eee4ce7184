"""Triton kernels of the `vlmedge` ops (version 1): the same results as `reference.py`, indices exactly.

Every op has a plain form (same signature and results as the reference; it allocates its outputs and may read
the keep count back to the host to slice) and an `*_into` form that writes caller-allocated outputs, launches
on the current stream, never synchronises with the host and allocates nothing (what a TensorRT plugin calls).

Selection is rank counting, never sorting: rank_i = #{j : j comes before i} in the op's order (ties: lower index
first; NaN counts as the largest value, as in torch's stable sort), over O(N^2) tiles. The K best are scattered
to out[rank_i] (score order); then one program reads the last of them (the boundary b) and writes the whole
selection again in ascending index order by a running prefix count (i is kept iff it comes before b or is b).
So `out` is its own scratch and no op needs a workspace for selection.

Kernels (N tokens, D or C the row width, B a tile):
- StcSelect: `_stc_rank_kernel` (N/B programs; per-token cosine of keys and ref_keys in fp32, recomputed per
  tile, ranks ascending), `_stc_scan_kernel` (1 program, compaction); `_arange_kernel` when n = T. T <= 8192.
  Every kernel computes a row's cosine with one helper on the same B-aligned tile shape, so they all see the
  same bits (ranks of exactly equal cosines, e.g. duplicated rows, stay consistent across kernels).
- StcMerge: `_copy_kernel` (bit copy of cached; skipped when out is cached), `_scatter_rows_kernel` (rows
  indices <- fresh, cast like torch's `.to` when dtypes differ). No token limit.
- PruneCompact and KeepCount: `_rank_scatter_kernel` (the keep count and mode decided on the device: threshold
  set, cap, min_keep; ranks only when the selection is a top-K), `_scan_kernel` (1 program: compaction, count),
  `_gather_rows_kernel` (bit copies of the kept rows). N <= 8192.
- DppGreedyMap: `_dpp_kernel` (1 program looping over the steps, vectorised over N; see its docstring). N <= 8192.
- DpcKnnSelect: `_dpc_dist_kernel` (cosine distances, `tl.dot` in IEEE fp32, into the workspace),
  `_dpc_density_kernel` (rho from the k nearest), `_dpc_score_kernel` (delta, delta * rho), then
  `_rank_scatter_kernel` and `_scan_kernel` on the scores. N <= 4096 (the workspace holds N x N), 1 <= k <= 64.
Inputs beyond these limits, or of the wrong shape, dtype, device or layout (non-contiguous inputs in the
`_into` forms), raise a ValueError (`vlmedge.errors.InputError`).

Precision: as in the references, StcSelect, PruneCompact, KeepCount and DpcKnnSelect compute in float32 whatever
the input dtype; DppGreedyMap computes in float64 for float64 kernels and in float32 otherwise. Copied rows are
bit copies (any dtype). Computed scores match torch to float32 rounding, not bitwise (summation orders differ),
so indices agree exactly wherever the reference's scores are not within rounding of a tie at the boundary.
PruneCompact's threshold is applied as an exact float32 logit cut derived from torch's (CPU) sigmoid.

Interpreter: with TRITON_INTERPRET=1 in the environment when this module is imported (triton reads it when the
kernels are decorated, i.e. at this import, not at `import triton`) the kernels run on CPU tensors; without it
CPU tensors are refused with a ValueError. Block sizes are larger under the interpreter (fewer Python steps).
"""
import contextlib
import functools
import math
import struct

import torch
import triton
import triton.language as tl

from vlmedge.errors import InputError

MAX_TOKENS = 8192
MAX_DPC_TOKENS = 4096  # its workspace holds the N x N distance matrix
MAX_DPC_K = 64
WORKSPACE_DTYPE = torch.float32  # the unit of dpp_workspace_elems / dpc_workspace_elems
COUNT_DTYPE = torch.int64  # out_count of PruneCompact / KeepCount (and KeepCount's count input)

INTERPRET = bool(triton.knobs.runtime.interpret)

if INTERPRET:  # each program step is Python work: big tiles, few steps
    _RANK_B, _CH_B, _SCAN_B, _GATHER_R, _GATHER_D, _COPY_B = 128, 256, 1024, 64, 256, 4096
    _DPC_B, _DPC_D, _DPP_N, _DPP_S, _DPP_T = 128, 128, 1024, 64, 256
else:
    _RANK_B, _CH_B, _SCAN_B, _GATHER_R, _GATHER_D, _COPY_B = 64, 64, 512, 16, 128, 1024
    _DPC_B, _DPC_D, _DPP_N, _DPP_S, _DPP_T = 64, 32, 256, 16, 64

_FLOATS = (torch.float16, torch.bfloat16, torch.float32, torch.float64)
_BITS = {1: torch.uint8, 2: torch.int16, 4: torch.int32, 8: torch.int64}


# ============================================================================ shared device helpers

@triton.jit
def _before(a, ia, b, ib, LARGEST: tl.constexpr):
    """True where (a, ia) comes before (b, ib): larger (smaller) value first, NaN the largest, then lower index."""
    a_nan = a != a
    b_nan = b != b
    if LARGEST:
        strict = (a > b) | (a_nan & (b == b))
    else:
        strict = (a < b) | (b_nan & (a == a))
    same = (a == b) | (a_nan & b_nan)
    return strict | (same & (ia < ib))


@triton.jit
def _count_before(s_i, i, s_j, j, valid_j, LARGEST: tl.constexpr):
    """[BI] number of valid j (other than i itself) that come before each i."""
    hit = _before(s_j[None, :], j[None, :], s_i[:, None], i[:, None], LARGEST)
    hit = hit & valid_j[None, :] & (j[None, :] != i[:, None])
    return tl.sum(hit.to(tl.int32), axis=1)


@triton.jit
def _scan_store(sel, rows, carry, out_ptr, K):
    """Writes the selected `rows` of one tile at out[carry + prefix] (ascending); returns the new carry."""
    s = sel.to(tl.int32)
    pos = carry + tl.cumsum(s, 0) - 1
    tl.store(out_ptr + pos, rows.to(tl.int64), mask=sel & (pos < K))
    return carry + tl.sum(s, 0)


@triton.jit
def _keep_rule(s_ptr, N, k_ptr, k_host, cut, k_exceed, cap, min_keep, K_MODE: tl.constexpr, BLOCK: tl.constexpr):
    """(by_rank, K): whether the selection is the K best by rank, and K.

    K_MODE 0: K = k_host (DpcKnn). 1: K = clamp(count[0], 0, N) (KeepCount). 2: GlimpsePrune's rule: the
    threshold set (z > cut) unless its size reaches k_exceed (i.e. mean > max_ratio), then the top `cap`;
    then the top min(min_keep, N) when fewer than min_keep are kept.
    """
    if K_MODE == 0:
        K = tl.zeros([], tl.int32) + k_host
        by_rank = K >= 0
    elif K_MODE == 1:
        c = tl.load(k_ptr)
        K = tl.minimum(tl.maximum(c, 0), N).to(tl.int32)
        by_rank = K >= 0
    else:
        kthr = tl.zeros([], tl.int32)
        for start in range(0, N, BLOCK):
            rows = start + tl.arange(0, BLOCK)
            z = tl.load(s_ptr + rows, mask=rows < N, other=float("-inf")).to(tl.float32)
            kthr += tl.sum((z > cut).to(tl.int32), 0)
        by_rank = kthr >= k_exceed
        K = tl.where(by_rank, cap, kthr)
        rescue = K < min_keep
        by_rank = by_rank | rescue
        K = tl.where(rescue, tl.minimum(tl.zeros([], tl.int32) + min_keep, N), K)
    return by_rank, K


@triton.jit
def _rank_scatter_kernel(s_ptr, N, k_ptr, k_host, cut, k_exceed, cap, min_keep, out_ptr,
                         K_MODE: tl.constexpr, LARGEST: tl.constexpr, BLOCK: tl.constexpr):
    """out[rank_i] = i for the K best of the scores `s [N]` (compared in fp32), when the selection is by rank."""
    by_rank, K = _keep_rule(s_ptr, N, k_ptr, k_host, cut, k_exceed, cap, min_keep, K_MODE, BLOCK)
    if by_rank & (K > 0) & (K < N):
        rows = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
        valid = rows < N
        s_i = tl.load(s_ptr + rows, mask=valid, other=0.0).to(tl.float32)
        rank = tl.zeros([BLOCK], tl.int32)
        for start in range(0, N, BLOCK):
            cols = start + tl.arange(0, BLOCK)
            vj = cols < N
            s_j = tl.load(s_ptr + cols, mask=vj, other=0.0).to(tl.float32)
            rank += _count_before(s_i, rows, s_j, cols, vj, LARGEST)
        tl.store(out_ptr + rank, rows.to(tl.int64), mask=valid & (rank < K))


@triton.jit
def _scan_kernel(s_ptr, N, k_ptr, k_host, cut, k_exceed, cap, min_keep, out_ptr, count_ptr,
                 K_MODE: tl.constexpr, LARGEST: tl.constexpr, WRITE_COUNT: tl.constexpr, BLOCK: tl.constexpr):
    """One program: the selection in ascending index order into out[0:K], and its size into count[0].

    By rank, the boundary b = out[K-1] (the K-th best, from `_rank_scatter_kernel`) decides: i is kept iff it
    comes before b or is b. b is read before anything is written (barrier), so `out` is its own scratch.
    """
    by_rank, K = _keep_rule(s_ptr, N, k_ptr, k_host, cut, k_exceed, cap, min_keep, K_MODE, BLOCK)
    use_b = by_rank & (K > 0) & (K < N)
    every = by_rank & (K >= N)
    b = tl.load(out_ptr + tl.maximum(K - 1, 0), mask=use_b, other=0)
    s_b = tl.load(s_ptr + b, mask=use_b, other=0.0).to(tl.float32)
    tl.debug_barrier()
    # scalar flags and the boundary as vectors (the interpreter mis-broadcasts scalar comparison results)
    zero = tl.zeros([BLOCK], tl.int32)
    by_rank_v = (zero + by_rank.to(tl.int32)) != 0
    use_b_v = (zero + use_b.to(tl.int32)) != 0
    every_v = (zero + every.to(tl.int32)) != 0
    b_v = zero.to(tl.int64) + b
    s_b_v = zero.to(tl.float32) + s_b
    carry = tl.zeros([], tl.int32)
    for start in range(0, N, BLOCK):
        rows = start + tl.arange(0, BLOCK)
        valid = rows < N
        s = tl.load(s_ptr + rows, mask=valid, other=0.0).to(tl.float32)
        ranked = every_v | (use_b_v & (_before(s, rows, s_b_v, b_v, LARGEST) | (rows == b_v)))
        if K_MODE == 2:
            sel = tl.where(by_rank_v, ranked, s > cut) & valid
        else:
            sel = ranked & valid
        carry = _scan_store(sel, rows, carry, out_ptr, K)
    if WRITE_COUNT:
        tl.store(count_ptr, carry.to(tl.int64))


@triton.jit
def _gather_rows_kernel(src_ptr, idx_ptr, count_ptr, dst_ptr, D, BR: tl.constexpr, BD: tl.constexpr):
    """dst[r] = src[idx[r]] for r < count[0] (bit copies: the pointers are integer views)."""
    r = tl.program_id(0) * BR + tl.arange(0, BR)
    c = tl.program_id(1) * BD + tl.arange(0, BD)
    rm = r < tl.load(count_ptr)
    idx = tl.load(idx_ptr + r, mask=rm, other=0)
    m = rm[:, None] & (c < D)[None, :]
    v = tl.load(src_ptr + idx[:, None] * D + c[None, :], mask=m)
    tl.store(dst_ptr + r[:, None].to(tl.int64) * D + c[None, :], v, mask=m)


@triton.jit
def _arange_kernel(out_ptr, N, BLOCK: tl.constexpr):
    rows = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    tl.store(out_ptr + rows, rows.to(tl.int64), mask=rows < N)


# ============================================================================ StcSelect / StcMerge

@triton.jit
def _cos_rows(k_ptr, r_ptr, rows, T, C, BLOCK: tl.constexpr, BLOCK_C: tl.constexpr):
    """Cosine of keys[t] and ref[t] (fp32, eps 1e-8 on each norm as torch) for a BLOCK-aligned tile of rows.

    Every kernel computes a row's similarity with this helper on the same aligned [BLOCK, BLOCK_C] tiles, so
    all of them see the same bits: the rank counting relies on it.
    """
    valid = rows < T
    base = rows.to(tl.int64) * C
    dot = tl.zeros([BLOCK], tl.float32)
    na = tl.zeros([BLOCK], tl.float32)
    nb = tl.zeros([BLOCK], tl.float32)
    for c0 in range(0, C, BLOCK_C):
        cols = c0 + tl.arange(0, BLOCK_C)
        m = valid[:, None] & (cols < C)[None, :]
        a = tl.load(k_ptr + base[:, None] + cols[None, :], mask=m, other=0.0).to(tl.float32)
        b = tl.load(r_ptr + base[:, None] + cols[None, :], mask=m, other=0.0).to(tl.float32)
        dot += tl.sum(a * b, axis=1)
        na += tl.sum(a * a, axis=1)
        nb += tl.sum(b * b, axis=1)
    den = tl.maximum(tl.sqrt_rn(na), 1e-8) * tl.maximum(tl.sqrt_rn(nb), 1e-8)
    return tl.div_rn(dot, den)


@triton.jit
def _stc_rank_kernel(k_ptr, r_ptr, T, C, n, out_ptr, BLOCK: tl.constexpr, BLOCK_C: tl.constexpr):
    """out[rank_t] = t for the n least similar tokens (rank ascending by similarity, ties lower index)."""
    rows = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    valid = rows < T
    s_i = _cos_rows(k_ptr, r_ptr, rows, T, C, BLOCK, BLOCK_C)
    rank = tl.zeros([BLOCK], tl.int32)
    for start in range(0, T, BLOCK):
        cols = start + tl.arange(0, BLOCK)
        s_j = _cos_rows(k_ptr, r_ptr, cols, T, C, BLOCK, BLOCK_C)
        rank += _count_before(s_i, rows, s_j, cols, cols < T, False)
    tl.store(out_ptr + rank, rows.to(tl.int64), mask=valid & (rank < n))


@triton.jit
def _stc_scan_kernel(k_ptr, r_ptr, T, C, n, out_ptr, BLOCK: tl.constexpr, BLOCK_C: tl.constexpr):
    """One program: out[0:n] = the selection ascending; the boundary is out[n-1] from `_stc_rank_kernel`."""
    b = tl.load(out_ptr + n - 1)
    rows_b = (b // BLOCK) * BLOCK + tl.arange(0, BLOCK)
    s_tile = _cos_rows(k_ptr, r_ptr, rows_b, T, C, BLOCK, BLOCK_C)
    s_b = tl.sum(tl.where(rows_b == b, s_tile, 0.0), 0)  # a sum keeps a NaN (max would drop it)
    tl.debug_barrier()
    b_v = tl.zeros([BLOCK], tl.int64) + b  # vectors: the interpreter mis-broadcasts scalar comparison results
    s_b_v = tl.zeros([BLOCK], tl.float32) + s_b
    carry = tl.zeros([], tl.int32)
    for start in range(0, T, BLOCK):
        rows = start + tl.arange(0, BLOCK)
        s = _cos_rows(k_ptr, r_ptr, rows, T, C, BLOCK, BLOCK_C)
        sel = (_before(s, rows, s_b_v, b_v, False) | (rows == b_v)) & (rows < T)
        carry = _scan_store(sel, rows, carry, out_ptr, n)


@triton.jit
def _copy_kernel(src_ptr, dst_ptr, numel, BLOCK: tl.constexpr):
    offs = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    m = offs < numel
    tl.store(dst_ptr + offs, tl.load(src_ptr + offs, mask=m), mask=m)


@triton.jit
def _cast_like_torch(v, DST: tl.constexpr):
    """`v` cast to DST as torch's `.to` does: half types through float32, round to nearest even.

    fp32 -> bf16 is done on the bits: Triton's interpreter truncates in that cast (compiled code rounds), and
    the integer form is the same on both (NaN becomes torch's canonical 0x7FC0).
    """
    if DST == tl.bfloat16:
        f = v.to(tl.float32)
        u = f.to(tl.uint32, bitcast=True)
        r = (u + (((u >> 16) & 1) + 0x7FFF)) >> 16
        r = tl.where(f != f, 0x7FC0, r)
        out = r.to(tl.uint16).to(tl.bfloat16, bitcast=True)
    elif DST == tl.float16:
        out = v.to(tl.float32).to(tl.float16)
    else:
        out = v.to(DST)
    return out


@triton.jit
def _scatter_rows_kernel(fresh_ptr, idx_ptr, n, T, D, out_ptr, BR: tl.constexpr, BD: tl.constexpr):
    """out[idx[r]] = fresh[r] cast to out's dtype (negative indices wrap; out-of-range rows are skipped)."""
    r = tl.program_id(0) * BR + tl.arange(0, BR)
    c = tl.program_id(1) * BD + tl.arange(0, BD)
    rm = r < n
    idx = tl.load(idx_ptr + r, mask=rm, other=0)
    idx = tl.where(idx < 0, idx + T, idx)
    rm = rm & (idx >= 0) & (idx < T)
    m = rm[:, None] & (c < D)[None, :]
    v = tl.load(fresh_ptr + r[:, None].to(tl.int64) * D + c[None, :], mask=m)
    tl.store(out_ptr + idx[:, None] * D + c[None, :], _cast_like_torch(v, out_ptr.dtype.element_ty), mask=m)


# ============================================================================ DppGreedyMap

@triton.jit
def _argmax_step(v, j, m, best_v, best_j, nan_j, NONE):
    """Running torch.argmax over blocks: first maximum; a NaN wins over everything (first NaN)."""
    isn = (v != v) & m
    nan_j = tl.minimum(nan_j, tl.min(tl.where(isn, j, NONE), 0))
    ok = m & (v == v)
    vv = tl.where(ok, v, float("-inf"))
    bm = tl.max(vv, 0)
    bj = tl.min(tl.where(ok & (vv == bm), j, NONE), 0)
    take = (bm > best_v) | ((best_j == NONE) & (bj < NONE))
    return tl.where(take, bm, best_v), tl.where(take, bj, best_j), nan_j


@triton.jit
def _sqrt_div(num, den2, W: tl.constexpr):
    """num / sqrt(den2), both correctly rounded (fp32 `/` and `tl.sqrt` are approximate on GPU, fp64 ones are not)."""
    if W == tl.float64:
        q = num / tl.sqrt(den2)
    else:
        q = tl.div_rn(num, tl.sqrt_rn(den2))
    return q


@triton.jit
def _dpp_kernel(L_ptr, r_ptr, N, steps, eps_hi, eps_mid, eps_lo, order_ptr, ws_ptr,
                HAS_REL: tl.constexpr, BN: tl.constexpr, BS: tl.constexpr, BT: tl.constexpr):
    """Greedy MAP of the DPP with kernel L [N, N] (fast-map-dpp), one program.

    Why one program: step i needs the argmax of the variances left by step i-1 and the Cholesky rows of all
    earlier picks, so the steps are strictly sequential; within a step the work (one row of L, the GEMV
    against the earlier rows of C, the variance update and the next argmax, fused) is vectorised over
    blocks of N. Cost O(steps^2 N). Workspace (dtype W = work dtype): C [steps, N], d [N], taken [N].
    Early stop when the best variance is <= eps (or NaN); the rest of the order is then the untaken tokens by
    descending relevance (lower index first; by index without relevance).
    """
    W = ws_ptr.dtype.element_ty
    if W == tl.float64:  # eps arrives as three fp32 parts that sum to it exactly
        eps = tl.full([], eps_hi, tl.float64) + tl.full([], eps_mid, tl.float64) + tl.full([], eps_lo, tl.float64)
    else:  # torch compares a float32 tensor with eps rounded to float32
        eps = tl.full([], eps_hi, tl.float32)
    c_ptr = ws_ptr
    d_ptr = ws_ptr + steps * N
    t_ptr = d_ptr + N
    NONE = tl.zeros([], tl.int32) + N
    ar = tl.arange(0, BN)
    best_v = tl.full([], float("-inf"), W)
    best_j = NONE
    nan_j = NONE
    for start in range(0, N, BN):
        j = start + ar
        m = j < N
        v = tl.load(L_ptr + j.to(tl.int64) * (N + 1), mask=m, other=0.0).to(W)
        tl.store(d_ptr + j, v, mask=m)
        tl.store(t_ptr + j, tl.zeros([BN], W), mask=m)
        best_v, best_j, nan_j = _argmax_step(v, j, m, best_v, best_j, nan_j, NONE)
    tl.debug_barrier()
    alive = (nan_j == NONE) & (best_v > eps)
    k = tl.zeros([], tl.int32)
    ars = tl.arange(0, BS)
    for i in range(steps):
        if alive:
            jj = best_j
            dj = tl.maximum(best_v, eps)
            tl.store(order_ptr + i, jj.to(tl.int64))
            tl.store(t_ptr + jj, tl.full([], 1.0, W))
            best_v = tl.full([], float("-inf"), W)
            best_j = NONE
            nan_j = NONE
            for start in range(0, N, BN):
                j = start + ar
                m = j < N
                lj = tl.load(L_ptr + jj.to(tl.int64) * N + j, mask=m, other=0.0).to(W)
                proj = tl.zeros([BN], W)
                for t0 in range(0, i, BS):
                    t = t0 + ars
                    mt = t < i
                    cj = tl.load(c_ptr + t * N + jj, mask=mt, other=0.0)
                    ct = tl.load(c_ptr + t[:, None] * N + j[None, :], mask=mt[:, None] & m[None, :], other=0.0)
                    proj += tl.sum(cj[:, None] * ct, axis=0)
                e = _sqrt_div(lj - proj, dj, W)
                tl.store(c_ptr + i * N + j, e, mask=m)
                dn = tl.load(d_ptr + j, mask=m, other=0.0) - e * e
                dn = tl.where(j == jj, float("-inf"), dn)
                tl.store(d_ptr + j, dn, mask=m)
                best_v, best_j, nan_j = _argmax_step(dn, j, m, best_v, best_j, nan_j, NONE)
            tl.debug_barrier()
            k += 1
            alive = (nan_j == NONE) & (best_v > eps)
    if k < steps:  # tail: untaken tokens, by rank counting over (relevance desc, index) or index
        need = steps - k
        art = tl.arange(0, BT)
        for u0 in range(0, N, BT):
            u = u0 + art
            mu = u < N
            free_u = mu & (tl.load(t_ptr + u, mask=mu, other=1.0) == 0.0)
            if HAS_REL:
                ru = tl.load(r_ptr + u, mask=mu, other=0.0).to(tl.float64)
            rank = tl.zeros([BT], tl.int32)
            for v0 in range(0, N, BT):
                v = v0 + art
                mv = v < N
                free_v = mv & (tl.load(t_ptr + v, mask=mv, other=1.0) == 0.0)
                if HAS_REL:
                    rv = tl.load(r_ptr + v, mask=mv, other=0.0).to(tl.float64)
                    first = _before(rv[None, :], v[None, :], ru[:, None], u[:, None], True)
                else:
                    first = v[None, :] < u[:, None]
                rank += tl.sum((first & free_v[None, :]).to(tl.int32), axis=1)
            tl.store(order_ptr + k + rank, u.to(tl.int64), mask=free_u & (rank < need))


# ============================================================================ DpcKnnSelect

@triton.jit
def _dpc_dist_kernel(x_ptr, N, D, dist_ptr, BI: tl.constexpr, BJ: tl.constexpr, BD: tl.constexpr):
    """dist[i, j] = 1 - cos(x_i, x_j) in fp32 (norms clamped at 1e-12 as F.normalize)."""
    ri = tl.program_id(0) * BI + tl.arange(0, BI)
    rj = tl.program_id(1) * BJ + tl.arange(0, BJ)
    vi = ri < N
    vj = rj < N
    acc = tl.zeros([BI, BJ], tl.float32)
    ni = tl.zeros([BI], tl.float32)
    nj = tl.zeros([BJ], tl.float32)
    for d0 in range(0, D, BD):
        c = d0 + tl.arange(0, BD)
        mc = c < D
        a = tl.load(x_ptr + ri[:, None].to(tl.int64) * D + c[None, :], mask=vi[:, None] & mc[None, :],
                    other=0.0).to(tl.float32)
        b = tl.load(x_ptr + rj[:, None].to(tl.int64) * D + c[None, :], mask=vj[:, None] & mc[None, :],
                    other=0.0).to(tl.float32)
        acc += tl.dot(a, tl.trans(b), input_precision="ieee")
        ni += tl.sum(a * a, axis=1)
        nj += tl.sum(b * b, axis=1)
    den = tl.maximum(tl.sqrt_rn(ni), 1e-12)[:, None] * tl.maximum(tl.sqrt_rn(nj), 1e-12)[None, :]
    dist = 1.0 - tl.div_rn(acc, den)
    tl.store(dist_ptr + ri[:, None].to(tl.int64) * N + rj[None, :], dist, mask=vi[:, None] & vj[None, :])


@triton.jit
def _dpc_density_kernel(dist_ptr, N, k, rho_ptr, BI: tl.constexpr, BJ: tl.constexpr):
    """rho_i = exp(-mean of the k smallest dist[i, j], j != i): k passes, each the next (value, index) minimum."""
    ri = tl.program_id(0) * BI + tl.arange(0, BI)
    vi = ri < N
    BIG = tl.zeros([BI], tl.int32) + 2147483647
    total = tl.zeros([BI], tl.float32)
    prev_v = tl.full([BI], float("-inf"), tl.float32)
    prev_j = tl.full([BI], -1, tl.int32)
    for r in range(k):
        best_v = tl.full([BI], float("inf"), tl.float32)
        best_j = BIG
        for j0 in range(0, N, BJ):
            cj = j0 + tl.arange(0, BJ)
            m = vi[:, None] & (cj < N)[None, :] & (cj[None, :] != ri[:, None])
            d = tl.load(dist_ptr + ri[:, None].to(tl.int64) * N + cj[None, :], mask=m, other=float("inf"))
            after = (d > prev_v[:, None]) | ((d == prev_v[:, None]) & (cj[None, :] > prev_j[:, None]))
            cand = m & after
            dv = tl.where(cand, d, float("inf"))
            tv = tl.min(dv, axis=1)
            tj = tl.min(tl.where(cand & (dv == tv[:, None]), cj[None, :], BIG[:, None]), axis=1)
            better = (tv < best_v) | ((tv == best_v) & (tj < best_j))
            best_v = tl.where(better, tv, best_v)
            best_j = tl.where(better, tj, best_j)
        total += best_v
        prev_v = best_v
        prev_j = best_j
    rho = tl.exp(-tl.div_rn(total, tl.zeros([BI], tl.float32) + k))
    tl.store(rho_ptr + ri, rho, mask=vi)


@triton.jit
def _dpc_score_kernel(dist_ptr, rho_ptr, N, score_ptr, BI: tl.constexpr, BJ: tl.constexpr):
    """delta_i = min dist to a strictly denser token (a peak: max(0, max_j dist)); score = delta * rho."""
    ri = tl.program_id(0) * BI + tl.arange(0, BI)
    vi = ri < N
    rho_i = tl.load(rho_ptr + ri, mask=vi, other=0.0)
    dmin = tl.full([BI], float("inf"), tl.float32)
    peak = tl.zeros([BI], tl.float32)
    for j0 in range(0, N, BJ):
        cj = j0 + tl.arange(0, BJ)
        vj = cj < N
        m = vi[:, None] & vj[None, :] & (cj[None, :] != ri[:, None])
        d = tl.load(dist_ptr + ri[:, None].to(tl.int64) * N + cj[None, :], mask=m, other=0.0)
        rho_j = tl.load(rho_ptr + cj, mask=vj, other=0.0)
        higher = m & (rho_j[None, :] > rho_i[:, None])
        dmin = tl.minimum(dmin, tl.min(tl.where(higher, d, float("inf")), axis=1))
        peak = tl.maximum(peak, tl.max(tl.where(m, d, float("-inf")), axis=1))
    delta = tl.where(dmin == float("inf"), peak, dmin)
    tl.store(score_ptr + ri, delta * rho_i, mask=vi)


# ============================================================================ host side: checks

def _fail(op: str, msg: str):
    raise InputError(f"{op}: {msg}")


def _check_tensor(op, name, t, ndim=None, dtypes=None, contiguous=True):
    if not isinstance(t, torch.Tensor):
        _fail(op, f"{name} must be a torch.Tensor, got {type(t).__name__}")
    if ndim is not None and t.ndim != ndim:
        _fail(op, f"{name} must be {ndim}-D, got shape {tuple(t.shape)}")
    if dtypes is not None and t.dtype not in dtypes:
        _fail(op, f"{name} must have dtype in {[str(d) for d in dtypes]}, got {t.dtype}")
    if contiguous and not t.is_contiguous():
        _fail(op, f"{name} must be contiguous")
    return t


def _check_device(op, *tensors):
    dev = tensors[0].device
    for t in tensors[1:]:
        if t.device != dev:
            _fail(op, f"all tensors must be on one device, got {dev} and {t.device}")
    if dev.type == "cpu" and not INTERPRET:
        _fail(op, "CPU tensors need Triton's interpreter: set TRITON_INTERPRET=1 before importing this module")
    if dev.type not in ("cpu", "cuda"):
        _fail(op, f"unsupported device {dev}")
    return dev


def _check_tokens(op, n, limit=MAX_TOKENS):
    if n < 1 or n > limit:
        _fail(op, f"token count must be in [1, {limit}], got {n}")


def _check_out(op, name, t, shape, dtype, dev):
    _check_tensor(op, name, t, dtypes=(dtype,))
    if tuple(t.shape) != tuple(shape):
        _fail(op, f"{name} must have shape {tuple(shape)}, got {tuple(t.shape)}")
    if t.device != dev:
        _fail(op, f"{name} must be on {dev}, got {t.device}")


def _bits(t: torch.Tensor) -> torch.Tensor:
    """The same memory as an integer tensor of the same element size (copies through it are bit-exact)."""
    return t.view(_BITS[t.element_size()])


def _guard(dev: torch.device):
    return torch.cuda.device(dev) if dev.type == "cuda" else contextlib.nullcontext()


def _num_dynamic(t: int, ratio: float) -> int:
    return max(1, min(int(t * ratio), t))


@functools.lru_cache(maxsize=256)
def _logit_cut(threshold: float) -> float:
    """The largest float32 z with torch.sigmoid(z) <= threshold (float32, CPU): a logit is kept iff z > cut.

    A bisection over the ordered float32 bit patterns between -inf and +inf, so the kernel's test `z > cut` keeps
    exactly the logits whose torch sigmoid exceeds the threshold (sigmoid is monotone).
    """
    def passes(key: int) -> bool:
        z = torch.tensor([_key_float(key)], dtype=torch.float32)
        return bool(torch.sigmoid(z)[0] > threshold)

    lo, hi = _float_key(float("-inf")), _float_key(float("inf"))
    if not passes(hi):
        return float("inf")
    while hi - lo > 1:  # passes(lo) is False (sigmoid(-inf) = 0 and threshold >= 0), passes(hi) is True
        mid = (lo + hi) // 2
        if passes(mid):
            hi = mid
        else:
            lo = mid
    return _key_float(lo)


def _float_key(x: float) -> int:
    u = struct.unpack("<I", struct.pack("<f", x))[0]
    return 0xFFFFFFFF - u if u & 0x80000000 else u + 0x80000000


def _key_float(key: int) -> float:
    u = key - 0x80000000 if key >= 0x80000000 else 0xFFFFFFFF - key
    return struct.unpack("<f", struct.pack("<I", u))[0]


def _f32(x: float) -> float:
    return struct.unpack("<f", struct.pack("<f", x))[0]


def _split3(x: float) -> tuple[float, float, float]:
    """x as three float32 values whose float64 sum is x (hi is x rounded to float32)."""
    if not math.isfinite(x) or abs(x) > 3.0e38:
        return x, 0.0, 0.0
    hi = _f32(x)
    mid = _f32(x - hi)
    lo = _f32(x - hi - mid)
    return hi, mid, lo


# ============================================================================ StcSelect / StcMerge

def stc_select_into(keys: torch.Tensor, ref_keys: torch.Tensor, ratio: float, out_indices: torch.Tensor) -> None:
    """StcSelect into `out_indices`.

    keys, ref_keys: [T, C] float (fp16/bf16/fp32/fp64, contiguous, same shape), 1 <= T <= 8192; ratio: float.
    out_indices: int64 [n], n = max(1, min(int(T * ratio), T)): the n tokens least cosine-similar (fp32) to the
    reference, ascending (ties: lower index). Two launches, no host synchronisation.
    """
    op = "StcSelect"
    _check_tensor(op, "keys", keys, 2, _FLOATS)
    _check_tensor(op, "ref_keys", ref_keys, 2, _FLOATS)
    if keys.shape != ref_keys.shape:
        _fail(op, f"keys {tuple(keys.shape)} and ref_keys {tuple(ref_keys.shape)} must have the same shape")
    dev = _check_device(op, keys, ref_keys)
    T, C = keys.shape
    _check_tokens(op, T)
    n = _num_dynamic(T, float(ratio))
    _check_out(op, "out_indices", out_indices, (n,), torch.int64, dev)
    with _guard(dev):
        if n >= T:
            _arange_kernel[(triton.cdiv(T, _SCAN_B),)](out_indices, T, BLOCK=_SCAN_B)
            return
        grid = (triton.cdiv(T, _RANK_B),)
        _stc_rank_kernel[grid](keys, ref_keys, T, C, n, out_indices, BLOCK=_RANK_B, BLOCK_C=_CH_B)
        _stc_scan_kernel[(1,)](keys, ref_keys, T, C, n, out_indices, BLOCK=_RANK_B, BLOCK_C=_CH_B, num_warps=8)


def stc_select(keys: torch.Tensor, ref_keys: torch.Tensor, ratio: float) -> torch.Tensor:
    """The `n` tokens whose keys are least cosine-similar to the reference's, ascending (int64 [n])."""
    _check_tensor("StcSelect", "keys", keys, 2, contiguous=False)
    _check_tensor("StcSelect", "ref_keys", ref_keys, 2, contiguous=False)
    keys, ref_keys = keys.contiguous(), ref_keys.contiguous()
    out = torch.empty(_num_dynamic(keys.shape[0], float(ratio)), dtype=torch.int64, device=keys.device)
    stc_select_into(keys, ref_keys, ratio, out)
    return out


def stc_merge_into(cached: torch.Tensor, fresh: torch.Tensor, indices: torch.Tensor, out: torch.Tensor) -> None:
    """StcMerge into `out`.

    cached: [T, D] any dtype; fresh: [n, D] (when its dtype differs from cached's, both must be floating point
    and fresh is cast like torch's `.to`: round to nearest even, to fp16/bf16 through float32); indices: int64
    [n], unique (duplicates: either row may win, as in torch); negative values count from the end; out-of-range
    rows are skipped here (the plain form raises). out: [T, D] with cached's dtype; it may be `cached` itself (in
    place: the copy is skipped). Two launches (one in place), no host synchronisation.
    """
    op = "StcMerge"
    _check_tensor(op, "cached", cached, 2)
    _check_tensor(op, "fresh", fresh, 2)
    _check_tensor(op, "indices", indices, 1, (torch.int64,))
    dev = _check_device(op, cached, fresh, indices)
    T, D = cached.shape
    n = indices.shape[0]
    if tuple(fresh.shape) != (n, D):
        _fail(op, f"fresh must have shape {(n, D)} (indices [n], cached [T, D]), got {tuple(fresh.shape)}")
    if fresh.dtype != cached.dtype and not (cached.dtype in _FLOATS and fresh.dtype in _FLOATS):
        _fail(op, f"fresh ({fresh.dtype}) can only differ in dtype from cached ({cached.dtype}) between floats")
    _check_out(op, "out", out, (T, D), cached.dtype, dev)
    with _guard(dev):
        if out.data_ptr() != cached.data_ptr() and cached.numel() > 0:
            _copy_kernel[(triton.cdiv(cached.numel(), _COPY_B),)](_bits(cached), _bits(out), cached.numel(),
                                                                  BLOCK=_COPY_B)
        if n > 0 and D > 0:
            src, dst = (_bits(fresh), _bits(out)) if fresh.dtype == cached.dtype else (fresh, out)
            grid = (triton.cdiv(n, _GATHER_R), triton.cdiv(D, _GATHER_D))
            _scatter_rows_kernel[grid](src, indices, n, T, D, dst, BR=_GATHER_R, BD=_GATHER_D)


def stc_merge(cached: torch.Tensor, fresh: torch.Tensor, indices: torch.Tensor) -> torch.Tensor:
    """`cached` with rows `indices` replaced by `fresh` (cast to cached's dtype): a new [T, D] tensor."""
    _check_tensor("StcMerge", "cached", cached, 2, contiguous=False)
    _check_tensor("StcMerge", "indices", indices, 1, contiguous=False)
    T = cached.shape[0]
    if indices.numel() and (int(indices.min()) < -T or int(indices.max()) >= T):
        _fail("StcMerge", f"indices must be in [-{T}, {T}), got min {int(indices.min())} max {int(indices.max())}")
    cached, fresh, indices = cached.contiguous(), fresh.contiguous(), indices.to(torch.int64).contiguous()
    out = torch.empty_like(cached)
    stc_merge_into(cached, fresh, indices, out)
    return out


# ============================================================================ PruneCompact / KeepCount

def _exceed_count(n: int, max_ratio: float) -> int:
    """The smallest K in [0, n] with K / n > max_ratio (Python floats, as the reference), n + 1 if none."""
    if max_ratio <= 0:
        return n + 1
    k = min(max(int(math.floor(max_ratio * n)), 0), n)
    while k > 0 and (k - 1) / n > max_ratio:
        k -= 1
    while k <= n and not k / n > max_ratio:
        k += 1
    return k


def _select_rows(op, s, features, k_ptr, k_host, cut, k_exceed, cap, min_keep, mode, largest, out_indices, out_kept,
                 out_count, dev):
    N = s.shape[0]
    D = features.shape[1]
    args = (s, N, k_ptr, k_host, cut, k_exceed, cap, min_keep)
    with _guard(dev):
        _rank_scatter_kernel[(triton.cdiv(N, _RANK_B),)](*args, out_indices, K_MODE=mode, LARGEST=largest,
                                                         BLOCK=_RANK_B)
        _scan_kernel[(1,)](*args, out_indices, out_count, K_MODE=mode, LARGEST=largest, WRITE_COUNT=True,
                           BLOCK=_SCAN_B, num_warps=8)
        if D > 0:
            grid = (triton.cdiv(N, _GATHER_R), triton.cdiv(D, _GATHER_D))
            _gather_rows_kernel[grid](_bits(features), out_indices, out_count, _bits(out_kept), D, BR=_GATHER_R,
                                      BD=_GATHER_D)


def _check_rows(op, s, sname, features, out_indices, out_kept, out_count):
    _check_tensor(op, sname, s, 1, _FLOATS)
    _check_tensor(op, "features", features, 2)
    dev = _check_device(op, s, features)
    N = s.shape[0]
    _check_tokens(op, N)
    if features.shape[0] != N:
        _fail(op, f"features must have {N} rows ({sname} [N]), got shape {tuple(features.shape)}")
    if features.element_size() not in _BITS:
        _fail(op, f"features dtype {features.dtype} is not supported")
    _check_out(op, "out_indices", out_indices, (N,), torch.int64, dev)
    _check_out(op, "out_kept", out_kept, tuple(features.shape), features.dtype, dev)
    _check_out(op, "out_count", out_count, (1,), torch.int64, dev)
    return dev


def prune_compact_into(logits: torch.Tensor, features: torch.Tensor, threshold: float, max_ratio: float,
                       min_keep: int, out_indices: torch.Tensor, out_kept: torch.Tensor,
                       out_count: torch.Tensor) -> None:
    """PruneCompact into caller buffers of the largest size.

    logits: [N] float (compared in fp32; must not contain NaN), 1 <= N <= 8192; features: [N, D] any dtype;
    threshold in [0, 1]; max_ratio in [0, 1] (0: no cap); min_keep >= 0 (0: none). Outputs: out_indices int64
    [N], out_kept [N, D] (features' dtype), out_count int64 [1] = K; only out_indices[:K] (ascending) and
    out_kept[:K] (bit copies of the kept rows) are written, the rest is left as it was. Three launches, no host
    synchronisation (the keep count is decided on the device).
    """
    op = "PruneCompact"
    dev = _check_rows(op, logits, "logits", features, out_indices, out_kept, out_count)
    threshold, max_ratio = float(threshold), float(max_ratio)
    if not 0.0 <= threshold <= 1.0:
        _fail(op, f"threshold is a probability in [0, 1], got {threshold}")
    if not 0.0 <= max_ratio <= 1.0:
        _fail(op, f"max_ratio must be in [0, 1] (0: no cap), got {max_ratio}")
    if isinstance(min_keep, bool) or int(min_keep) != min_keep or min_keep < 0:
        _fail(op, f"min_keep must be an integer >= 0, got {min_keep!r}")
    N = logits.shape[0]
    cap = int(max_ratio * N) if max_ratio > 0 else 0
    mk = min(int(min_keep), N + 1)  # K <= N, so K < min_keep is K < min(min_keep, N + 1)
    _select_rows(op, logits, features, out_count, 0, _logit_cut(threshold), _exceed_count(N, max_ratio), cap, mk,
                 2, True, out_indices, out_kept, out_count, dev)


def prune_compact(logits: torch.Tensor, features: torch.Tensor, threshold: float = 0.5, max_ratio: float = 0.0,
                  min_keep: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    """GlimpsePrune's keep rule and the kept rows: (indices int64 [K] ascending, kept [K, D])."""
    _check_tensor("PruneCompact", "logits", logits, 1, _FLOATS, contiguous=False)
    _check_tensor("PruneCompact", "features", features, 2, contiguous=False)
    if torch.isnan(logits).any():
        _fail("PruneCompact", "logits contain NaN")
    logits, features = logits.contiguous(), features.contiguous()
    N = logits.shape[0]
    idx = torch.empty(N, dtype=torch.int64, device=logits.device)
    kept = torch.empty_like(features)
    count = torch.empty(1, dtype=torch.int64, device=logits.device)
    prune_compact_into(logits, features, threshold, max_ratio, min_keep, idx, kept, count)
    k = int(count.item())
    return idx[:k], kept[:k]


def keep_count_into(scores: torch.Tensor, features: torch.Tensor, count: torch.Tensor, largest: bool,
                    out_indices: torch.Tensor, out_kept: torch.Tensor, out_count: torch.Tensor) -> None:
    """KeepCount into caller buffers of the largest size.

    scores: [N] float (compared in fp32, NaN the largest), 1 <= N <= 8192; features: [N, D] any dtype; count:
    int64 tensor of one element on the device (clamped to [0, N]); largest: keep the highest (True) or lowest.
    Outputs: out_indices int64 [N], out_kept [N, D], out_count int64 [1] = K = clamp(count, 0, N); only the
    first K entries/rows are written (ascending indices; bit copies of rows). No host synchronisation.
    """
    op = "KeepCount"
    dev = _check_rows(op, scores, "scores", features, out_indices, out_kept, out_count)
    _check_tensor(op, "count", count, dtypes=(torch.int64,))
    if count.numel() != 1 or count.device != dev:
        _fail(op, f"count must be a one-element int64 tensor on {dev}, got shape {tuple(count.shape)} on "
                  f"{count.device}")
    _select_rows(op, scores, features, count, 0, 0.0, 0, 0, 0, 1, bool(largest), out_indices, out_kept, out_count,
                 dev)


def keep_count(scores: torch.Tensor, features: torch.Tensor, count, largest: bool = True
               ) -> tuple[torch.Tensor, torch.Tensor]:
    """The `count` highest (or lowest) scoring rows, ascending: (indices int64 [count'], kept [count', D]),
    count' = clamp(count, 0, N)."""
    _check_tensor("KeepCount", "scores", scores, 1, contiguous=False)
    scores, features = scores.contiguous(), features.contiguous()
    dev = scores.device
    if isinstance(count, torch.Tensor):
        c = count.reshape(-1).to(device=dev, dtype=torch.int64)
    else:
        c = torch.tensor([int(count)], dtype=torch.int64, device=dev)
    N = scores.shape[0]
    idx = torch.empty(N, dtype=torch.int64, device=dev)
    kept = torch.empty_like(features)
    out_count = torch.empty(1, dtype=torch.int64, device=dev)
    keep_count_into(scores, features, c, largest, idx, kept, out_count)
    k = int(out_count.item())
    return idx[:k], kept[:k]


# ============================================================================ DppGreedyMap

def dpp_workspace_elems(N: int, steps: int, kernel_dtype: torch.dtype = torch.float32) -> int:
    """float32 elements (WORKSPACE_DTYPE) of the DppGreedyMap workspace: (min(max(steps, 0), N) + 2) * N values of
    the work dtype (the Cholesky rows C [steps, N], the variances d [N], the taken flags [N]); the work dtype is
    float64 for a float64 kernel (twice the float32 elements) and float32 otherwise."""
    per = 2 if kernel_dtype == torch.float64 else 1
    return (min(max(int(steps), 0), int(N)) + 2) * int(N) * per


def _workspace_as(op: str, workspace: torch.Tensor, dtype: torch.dtype, elems32: int, dev) -> torch.Tensor:
    """`workspace` (a contiguous float tensor; only its bytes count) as `dtype`, `elems32` float32 elements long."""
    _check_tensor(op, "workspace", workspace, dtypes=_FLOATS)
    nbytes = 4 * elems32
    if workspace.device != dev or workspace.numel() * workspace.element_size() < nbytes:
        _fail(op, f"workspace must hold >= {elems32} float32 elements ({nbytes} bytes) on {dev}, got "
                  f"{workspace.numel()} {workspace.dtype} on {workspace.device}")
    flat = workspace.reshape(-1).view(torch.uint8)[:nbytes]
    if flat.data_ptr() % 8:
        _fail(op, "workspace must be 8-byte aligned")
    return flat.view(dtype)


def dpp_greedy_map_into(kernel: torch.Tensor, relevance, steps: int, eps: float, out_order: torch.Tensor,
                        workspace: torch.Tensor) -> None:
    """DppGreedyMap into `out_order`.

    kernel: [N, N] float (PSD), 1 <= N <= 8192; relevance: [N] float or None (orders the tail after an early
    stop; None: ascending index); steps: int; eps: float. out_order: int64 [min(max(steps, 0), N)], the
    selection order; workspace: a contiguous float tensor of >= dpp_workspace_elems(N, steps, kernel.dtype)
    float32 elements (only its bytes count: a float64 kernel computes in float64 in the same memory). One
    launch (one program), no host synchronisation.
    """
    op = "DppGreedyMap"
    _check_tensor(op, "kernel", kernel, 2, _FLOATS)
    N = kernel.shape[0]
    if kernel.shape[1] != N:
        _fail(op, f"kernel must be square [N, N], got {tuple(kernel.shape)}")
    tensors = [kernel]
    if relevance is not None:
        _check_tensor(op, "relevance", relevance, 1, _FLOATS)
        if relevance.shape[0] != N:
            _fail(op, f"relevance must have shape ({N},), got {tuple(relevance.shape)}")
        tensors.append(relevance)
    dev = _check_device(op, *tensors)
    _check_tokens(op, N)
    s = min(max(int(steps), 0), N)
    _check_out(op, "out_order", out_order, (s,), torch.int64, dev)
    wdt = torch.float64 if kernel.dtype == torch.float64 else torch.float32
    ws = _workspace_as(op, workspace, wdt, dpp_workspace_elems(N, s, kernel.dtype), dev)
    if s == 0:
        return
    hi, mid, lo = _split3(float(eps))
    with _guard(dev):
        _dpp_kernel[(1,)](kernel, relevance if relevance is not None else kernel, N, s, hi, mid, lo, out_order,
                          ws, HAS_REL=relevance is not None, BN=_DPP_N, BS=_DPP_S, BT=_DPP_T, num_warps=8)


def dpp_greedy_map(kernel: torch.Tensor, relevance: torch.Tensor | None = None, steps: int = 1,
                   eps: float = 1e-10) -> torch.Tensor:
    """Script's exact greedy MAP order (int64 [min(steps, N)]) of the DPP with kernel `kernel`."""
    _check_tensor("DppGreedyMap", "kernel", kernel, 2, _FLOATS, contiguous=False)
    kernel = kernel.contiguous()
    if relevance is not None:
        relevance = relevance.to(kernel.device).contiguous()
    N = kernel.shape[0]
    s = min(max(int(steps), 0), N)
    out = torch.empty(s, dtype=torch.int64, device=kernel.device)
    ws = torch.empty(dpp_workspace_elems(N, s, kernel.dtype), dtype=WORKSPACE_DTYPE, device=kernel.device)
    dpp_greedy_map_into(kernel, relevance, s, eps, out, ws)
    return out


# ============================================================================ DpcKnnSelect

def dpc_workspace_elems(N: int) -> int:
    """Elements (float32) of the DpcKnnSelect workspace: N * N + 2 * N (distances [N, N], rho [N], score [N])."""
    return int(N) * int(N) + 2 * int(N)


def dpc_knn_select_into(x: torch.Tensor, n: int, k: int, out_indices: torch.Tensor,
                        workspace: torch.Tensor) -> None:
    """DpcKnnSelect into `out_indices`.

    x: [N, D] float (computed in fp32), 1 <= N <= 4096; n: int; k: 1 <= k <= 64 (min(k, N - 1) neighbours).
    out_indices: int64 [max(0, min(n, N))], ascending: the n best delta*rho (ties: lower index), all tokens when
    n >= N. workspace: a contiguous float tensor of >= dpc_workspace_elems(N) float32 elements (only its bytes
    count; unused, so it may be empty, when n <= 0 or n >= N); after a scoring run its first float32 elements
    hold dist [N*N], rho [N], score [N]. Five launches (one arange when n >= N, none when n <= 0), no host
    synchronisation.
    """
    op = "DpcKnnSelect"
    _check_tensor(op, "x", x, 2, _FLOATS)
    dev = _check_device(op, x)
    N, D = x.shape
    _check_tokens(op, N, MAX_DPC_TOKENS)
    k = int(k)
    if not 1 <= k <= MAX_DPC_K:
        _fail(op, f"k must be in [1, {MAX_DPC_K}], got {k}")
    n = int(n)
    m = max(0, min(n, N))
    _check_out(op, "out_indices", out_indices, (m,), torch.int64, dev)
    _check_tensor(op, "workspace", workspace, dtypes=_FLOATS)
    if workspace.device != dev:
        _fail(op, f"workspace must be on {dev}, got {workspace.device}")
    if m == 0:
        return
    with _guard(dev):
        if n >= N:
            _arange_kernel[(triton.cdiv(N, _SCAN_B),)](out_indices, N, BLOCK=_SCAN_B)
            return
        ws = _workspace_as(op, workspace, torch.float32, dpc_workspace_elems(N), dev)
        dist = ws[: N * N]
        rho = ws[N * N: N * N + N]
        score = ws[N * N + N: N * N + 2 * N]
        tiles = triton.cdiv(N, _DPC_B)
        _dpc_dist_kernel[(tiles, tiles)](x, N, D, dist, BI=_DPC_B, BJ=_DPC_B, BD=_DPC_D)
        _dpc_density_kernel[(tiles,)](dist, N, min(k, N - 1), rho, BI=_DPC_B, BJ=_DPC_B)
        _dpc_score_kernel[(tiles,)](dist, rho, N, score, BI=_DPC_B, BJ=_DPC_B)
        args = (score, N, out_indices, n, 0.0, 0, 0, 0)
        _rank_scatter_kernel[(triton.cdiv(N, _RANK_B),)](*args, out_indices, K_MODE=0, LARGEST=True, BLOCK=_RANK_B)
        _scan_kernel[(1,)](*args, out_indices, out_indices, K_MODE=0, LARGEST=True, WRITE_COUNT=False,
                           BLOCK=_SCAN_B, num_warps=8)


def dpc_knn_select(x: torch.Tensor, n: int, k: int = 5) -> torch.Tensor:
    """OmniZip's DPC-KNN (cosine distance) keep set of one frame's tokens `x [N, D]`: int64 [min(n, N)] ascending."""
    _check_tensor("DpcKnnSelect", "x", x, 2, _FLOATS, contiguous=False)
    x = x.contiguous()
    N = x.shape[0]
    out = torch.empty(max(0, min(int(n), N)), dtype=torch.int64, device=x.device)
    ws = torch.empty(dpc_workspace_elems(N) if 0 < int(n) < N else 0, dtype=torch.float32, device=x.device)
    dpc_knn_select_into(x, n, k, out, ws)
    return out


FUNCTIONS = {"StcSelect": stc_select, "StcMerge": stc_merge, "PruneCompact": prune_compact,
             "KeepCount": keep_count, "DppGreedyMap": dpp_greedy_map, "DpcKnnSelect": dpc_knn_select}
