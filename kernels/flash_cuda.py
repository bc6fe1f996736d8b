"""Flash attention on an NVIDIA GPU: the tiled online-softmax algorithm of flash_numpy.py as Numba CUDA kernels.

Dimensions: B batch, H query heads, Hkv kv heads, g = H // Hkv, T queries, S keys, D head dim;
BQ query rows and BK keys per tile. Read flash_numpy.py first: the algorithm is the same.

The GPU's shape. A kernel runs as a grid of blocks; a block is a group of threads that run on one
multiprocessor and share a small, fast scratchpad, shared memory, and can wait for each other at a
barrier, cuda.syncthreads(). Global memory (where q, k, v live) is large and slow; reading it is fastest
when neighbouring threads read neighbouring addresses (coalesced). Each thread also has registers and a
private local array. Flash attention maps onto this directly: a tile of keys and values is read from
global memory ONCE per block into shared memory, and then every thread of the block reuses it.

Forward: one block per (query tile, batch x head), grid (ceil(T / BQ), B * H), BQ threads; thread t
owns query row r0 + t. It keeps its scaled query row, its running output acc (D numbers), its running
max m and sum l in registers/local memory. For each key tile the block can see (the skip test uses the
tile's corners only, so every thread of the block takes the same decision and no thread misses a barrier):
    1. the block copies K and V of the tile into shared memory, each thread a strided share;
    2. syncthreads: the copy is complete before anyone reads it;
    3. each thread computes its row's BK scores, masks them, and folds them into m, l, acc (online softmax);
    4. syncthreads: nobody overwrites the tile while a slower thread still reads it.
At the end each thread writes its row of O = acc / l and L = m + log(l).

Backward, without atomics: dK and dV sum over query rows, dQ sums over keys. Instead of letting many
blocks add into the same numbers (atomics, or races), three kernels each own what they write:
    _row_dot:  Di = rowsum(dO * O), one thread per query row;
    dK, dV:    one block per (key tile, batch x kv head), BK threads, thread t owns key row c0 + t; it walks
               the query tiles of the g query heads that read this kv head, staging Q, dO, L, Di in shared
               memory, and accumulates its key's dK and dV rows in local memory;
    dQ:        one block per (query tile, batch x head), like the forward: it walks the key tiles again
               and accumulates its row's dQ.
Both recompute p = exp(s - L) from the saved L; the price of no atomics is computing s and dp twice.

Saved for backward: O and L (B, H, T) only, as on the CPU. Everything is float32.

Arrays: CuPy arrays on a GPU go to the kernels without a copy (Numba reads __cuda_array_interface__),
and the outputs are CuPy arrays. NumPy arrays are copied to the device and the results back; that is
how the kernels run in Numba's CUDA simulator (NUMBA_ENABLE_CUDASIM=1, set before numba is imported),
which executes every thread as a Python thread: correct, and slow, so use small shapes there.
"""
import functools
import math

import numpy as np
from numba import config, cuda, float32

from minigpt.backend import get_xp
from minigpt.kernels import masking

NEG_INF = np.float32(-np.inf)
ZERO = np.float32(0.0)

# The mask rule, compiled for the device from its one definition in masking.py.
_key_visible = cuda.jit(device=True)(masking.key_visible)
_tile_may_be_visible = cuda.jit(device=True)(masking.tile_may_be_visible)
_tile_all_visible = cuda.jit(device=True)(masking.tile_all_visible)


# ---------------------------------------------------------------- device functions (one thread's work)

@cuda.jit(device=True)
def _stage_rows(dst, src, b, h, start, n, t, n_threads, scale):
    """The block copies rows start .. start+n-1 of src[b, h] (each D long) into shared dst, times scale.
    Thread t takes flat elements t, t + n_threads, ...: neighbouring threads read neighbouring addresses."""
    D = dst.shape[1]
    for idx in range(t, n * D, n_threads):                                  # flat index over the (n, D) tile
        row = idx // D                                                      # idx = row * D + d
        d = idx % D
        dst[row, d] = src[b, h, start + row, d] * scale                     # src row start + row of head h


@cuda.jit(device=True)
def _dot(x, y, row):
    """sum_d x[d] * y[row, d], in float32."""
    acc = ZERO
    for d in range(x.shape[0]):
        acc += x[d] * y[row, d]
    return acc


@cuda.jit(device=True)
def _forward_row(q_row, Ks, Vs, s, acc, m, l, i, c0, nc, all_visible, rule):
    """One thread, one query row at position i, one staged key tile (keys c0 .. c0+nc-1):
    the online softmax. Returns the new (m, l); updates acc in place."""
    prefix, pad, local, window = rule
    tile_max = NEG_INF
    for jj in range(nc):                                                    # jj: key c0 + jj of the tile
        x = _dot(q_row, Ks, jj)                                             # the scaled score q_i . k_j
        if not all_visible and not _key_visible(i, c0 + jj, prefix, pad, local, window):
            x = NEG_INF                                                     # hidden key
        s[jj] = x
        tile_max = max(tile_max, x)
    m_new = max(m, tile_max)
    if m_new == NEG_INF:                                                    # no visible key for this row yet
        return m, l
    alpha = math.exp(m - m_new)                                             # rescales the old sums; 0 if m = -inf
    for d in range(acc.shape[0]):
        acc[d] *= alpha
    l *= alpha
    for jj in range(nc):
        p = math.exp(s[jj] - m_new)                                         # 0 for hidden keys
        l += p
        for d in range(acc.shape[0]):
            acc[d] += p * Vs[jj, d]                                         # acc += p v_j
    return m_new, l


@cuda.jit(device=True)
def _key_row_grads(k_row, v_row, dk, dv, Qs, dOs, Ls, Ds, j, i_lo, nr, rule):
    """One thread, one key row j, one staged query tile (positions i_lo .. i_lo+nr-1): adds the tile's
    share of dk_j = sum_i ds_ij q_i (q staged with its scale) and dv_j = sum_i p_ij dO_i."""
    prefix, pad, local, window = rule
    for ii in range(nr):                                                    # ii: query row i_lo + ii of the tile
        if not _key_visible(i_lo + ii, j, prefix, pad, local, window):
            continue                                                        # p = 0: nothing to add
        p = math.exp(_dot(k_row, Qs, ii) - Ls[ii])                          # p = exp(s - L), the forward's
        ds = p * (_dot(v_row, dOs, ii) - Ds[ii])                            # ds = p * (dO_i . v_j - Di)
        for d in range(dk.shape[0]):
            dv[d] += p * dOs[ii, d]
            dk[d] += ds * Qs[ii, d]


@cuda.jit(device=True)
def _query_row_grad(q_row, do_row, dq, Ks, Vs, L_i, D_i, i, c0, nc, rule):
    """One thread, one query row at position i, one staged key tile: dq_i += sum_j ds_ij k_j (unscaled)."""
    prefix, pad, local, window = rule
    for jj in range(nc):                                                    # jj: key c0 + jj of the tile
        if not _key_visible(i, c0 + jj, prefix, pad, local, window):
            continue
        p = math.exp(_dot(q_row, Ks, jj) - L_i)
        ds = p * (_dot(do_row, Vs, jj) - D_i)
        for d in range(dq.shape[0]):
            dq[d] += ds * Ks[jj, d]


# ---------------------------------------------------------------- kernels (one factory per tile shape)
# Shared and local arrays need sizes known when the kernel compiles: each factory closes over BQ, BK, D
# and is cached, so each tile shape compiles once.

@functools.lru_cache(maxsize=None)
def _forward_kernel(BQ, BK, D):
    @cuda.jit
    def forward(q, k, v, prefix, pad, q_offset, local, window, scale, o, L):
        H, T, S = q.shape[1], q.shape[2], k.shape[2]
        t = cuda.threadIdx.x                                                # this thread's row in the tile
        r0 = cuda.blockIdx.x * BQ                                           # the tile's first query row
        b = cuda.blockIdx.y // H                                            # blockIdx.y = b * H + h
        h = cuda.blockIdx.y % H
        kvh = h // (H // k.shape[1])                                        # query head h reads kv head h // g
        r = r0 + t                                                          # this thread's query row
        live = r < T                                                        # the last tile may be short
        i_lo, i_hi = q_offset + r0, q_offset + min(r0 + BQ, T) - 1          # absolute positions of the tile's rows
        rule = (prefix[b], pad[b], local, window)
        Ks = cuda.shared.array((BK, D), float32)                            # the key tile
        Vs = cuda.shared.array((BK, D), float32)                            # the value tile
        q_row = cuda.local.array(D, float32)
        acc = cuda.local.array(D, float32)
        s = cuda.local.array(BK, float32)                                   # this row's scores of one tile
        for d in range(D):
            q_row[d] = q[b, h, r, d] * scale if live else ZERO
            acc[d] = ZERO
        m, l = NEG_INF, ZERO
        for c0 in range(0, S, BK):                                          # c0: the key tile's first key
            nc = min(BK, S - c0)                                            # keys in this tile
            if not _tile_may_be_visible(i_lo, i_hi, c0, c0 + nc - 1, *rule):
                continue                                                    # same answer for all threads of the block
            _stage_rows(Ks, k, b, kvh, c0, nc, t, BQ, float32(1.0))
            _stage_rows(Vs, v, b, kvh, c0, nc, t, BQ, float32(1.0))
            cuda.syncthreads()                                              # the K, V tiles are complete before use
            if live:
                all_visible = _tile_all_visible(i_lo, i_hi, c0, c0 + nc - 1, *rule)
                m, l = _forward_row(q_row, Ks, Vs, s, acc, m, l, q_offset + r, c0, nc, all_visible, rule)
            cuda.syncthreads()                                              # all reads done before the next overwrite
        if live:
            for d in range(D):
                o[b, h, r, d] = acc[d] / l                                  # out = acc / l
            L[b, h, r] = m + math.log(l)                                    # L = m + log(l)
    return forward


@cuda.jit
def _row_dot(o, do, Di):
    """Di[b, h, r] = sum_d dO * O: one thread per query row."""
    H, T = o.shape[1], o.shape[2]
    row = cuda.grid(1)                                                      # blockIdx.x * blockDim.x + threadIdx.x
    if row < o.shape[0] * H * T:                                            # the last block may run past the end
        b = row // (H * T)                                                  # row = (b * H + h) * T + r
        h = row // T % H
        r = row % T
        acc = ZERO
        for d in range(o.shape[3]):
            acc += do[b, h, r, d] * o[b, h, r, d]
        Di[b, h, r] = acc


@functools.lru_cache(maxsize=None)
def _dkdv_kernel(BQ, BK, D):
    @cuda.jit
    def dkdv(q, k, v, do, L, Di, prefix, pad, q_offset, local, window, scale, dk, dv):
        H, T, Hkv, S = q.shape[1], q.shape[2], k.shape[1], k.shape[2]
        g = H // Hkv                                                        # query heads per kv head
        t = cuda.threadIdx.x                                                # this thread's key in the tile
        c0 = cuda.blockIdx.x * BK                                           # the tile's first key
        b = cuda.blockIdx.y // Hkv                                          # blockIdx.y = b * Hkv + kvh
        kvh = cuda.blockIdx.y % Hkv
        j = c0 + t                                                          # this thread's key position
        live = j < S
        j_hi = min(c0 + BK, S) - 1                                          # the tile's last key
        rule = (prefix[b], pad[b], local, window)
        Qs = cuda.shared.array((BQ, D), float32)                            # a query tile, scaled
        dOs = cuda.shared.array((BQ, D), float32)                           # its dO
        Ls = cuda.shared.array(BQ, float32)                                 # its L
        Ds = cuda.shared.array(BQ, float32)                                 # its Di
        k_row, v_row = cuda.local.array(D, float32), cuda.local.array(D, float32)
        dk_row, dv_row = cuda.local.array(D, float32), cuda.local.array(D, float32)
        for d in range(D):
            k_row[d] = k[b, kvh, j, d] if live else ZERO
            v_row[d] = v[b, kvh, j, d] if live else ZERO
            dk_row[d] = ZERO
            dv_row[d] = ZERO
        for h in range(kvh * g, kvh * g + g):                               # the query heads that read kv head kvh
            for r0 in range(0, T, BQ):                                      # r0: the query tile's first row
                nr = min(BQ, T - r0)
                if not _tile_may_be_visible(q_offset + r0, q_offset + r0 + nr - 1, c0, j_hi, *rule):
                    continue                                                # same answer for all threads of the block
                _stage_rows(Qs, q, b, h, r0, nr, t, BK, scale)
                _stage_rows(dOs, do, b, h, r0, nr, t, BK, float32(1.0))
                for ii in range(t, nr, BK):                                 # thread t copies rows t, t + BK, ...
                    Ls[ii] = L[b, h, r0 + ii]
                    Ds[ii] = Di[b, h, r0 + ii]
                cuda.syncthreads()                                          # the query tile is complete before use
                if live:
                    _key_row_grads(k_row, v_row, dk_row, dv_row, Qs, dOs, Ls, Ds, j, q_offset + r0, nr, rule)
                cuda.syncthreads()                                          # all reads done before the next overwrite
        if live:
            for d in range(D):
                dk[b, kvh, j, d] = dk_row[d]                                # Qs carried the scale
                dv[b, kvh, j, d] = dv_row[d]
    return dkdv


@functools.lru_cache(maxsize=None)
def _dq_kernel(BQ, BK, D):
    @cuda.jit
    def dq_kernel(q, k, v, do, L, Di, prefix, pad, q_offset, local, window, scale, dq):
        H, T, S = q.shape[1], q.shape[2], k.shape[2]
        t = cuda.threadIdx.x                                                # this thread's row in the tile
        r0 = cuda.blockIdx.x * BQ                                           # the tile's first query row
        b = cuda.blockIdx.y // H                                            # blockIdx.y = b * H + h
        h = cuda.blockIdx.y % H
        kvh = h // (H // k.shape[1])                                        # query head h reads kv head h // g
        r = r0 + t                                                          # this thread's query row
        live = r < T
        i_lo, i_hi = q_offset + r0, q_offset + min(r0 + BQ, T) - 1          # absolute positions of the tile's rows
        rule = (prefix[b], pad[b], local, window)
        Ks = cuda.shared.array((BK, D), float32)
        Vs = cuda.shared.array((BK, D), float32)
        q_row, do_row = cuda.local.array(D, float32), cuda.local.array(D, float32)
        dq_row = cuda.local.array(D, float32)
        for d in range(D):
            q_row[d] = q[b, h, r, d] * scale if live else ZERO
            do_row[d] = do[b, h, r, d] if live else ZERO
            dq_row[d] = ZERO
        L_i = L[b, h, r] if live else ZERO
        D_i = Di[b, h, r] if live else ZERO
        for c0 in range(0, S, BK):                                          # c0: the key tile's first key
            nc = min(BK, S - c0)
            if not _tile_may_be_visible(i_lo, i_hi, c0, c0 + nc - 1, *rule):
                continue                                                    # same answer for all threads of the block
            _stage_rows(Ks, k, b, kvh, c0, nc, t, BQ, float32(1.0))
            _stage_rows(Vs, v, b, kvh, c0, nc, t, BQ, float32(1.0))
            cuda.syncthreads()                                              # the K, V tiles are complete before use
            if live:
                _query_row_grad(q_row, do_row, dq_row, Ks, Vs, L_i, D_i, q_offset + r, c0, nc, rule)
            cuda.syncthreads()                                              # all reads done before the next overwrite
        if live:
            for d in range(D):
                dq[b, h, r, d] = dq_row[d] * scale                          # s = q k^T * scale: dq = scale * ds k
    return dq_kernel


# ---------------------------------------------------------------- the public entry points

def flash_forward_cuda(q, k, v, spec, scale=None, block_q=None, block_k=None):
    """Fused attention forward on the GPU (or in the simulator).
    q (B, H, T, D), k (B, Hkv, S, D), v (B, Hkv, S, D) float32, CuPy (zero-copy) or NumPy (copied)
    ->  O (B, H, T, D), L (B, H, T) as CuPy arrays for CuPy inputs, NumPy arrays for NumPy inputs
    """
    B, H, T, D = q.shape
    (q, k, v), xp = _on_device([q, k, v])
    scale, mask, (BQ, BK) = _prepare(q, k, v, spec, scale, block_q, block_k, xp)
    o, L = _empty((B, H, T, D), xp), _empty((B, H, T), xp)
    grid = ((T + BQ - 1) // BQ, B * H)                                      # (query tiles, batch x heads)
    _forward_kernel(BQ, BK, D)[grid, BQ](q, k, v, *mask, scale, o, L)
    return _to_caller(o, xp), _to_caller(L, xp)


def flash_backward_cuda(q, k, v, o, L, do, spec, scale=None, block_q=None, block_k=None):
    """Fused attention backward on the GPU (or in the simulator), recomputing the probabilities from L.
    q, o, do (B, H, T, D), k, v (B, Hkv, S, D), L (B, H, T) float32
    ->  dq (B, H, T, D), dk (B, Hkv, S, D), dv (B, Hkv, S, D)
    """
    B, H, T, D = q.shape
    Hkv, S = k.shape[1], k.shape[2]
    (q, k, v, o, L, do), xp = _on_device([q, k, v, o, L, do])
    scale, mask, (BQ, BK) = _prepare(q, k, v, spec, scale, block_q, block_k, xp)
    if o.shape != q.shape or do.shape != q.shape or L.shape != (B, H, T):
        raise ValueError(f"flash_backward_cuda: o {o.shape} and do {do.shape} must be q's shape {q.shape}, "
                         f"L {L.shape} must be {(B, H, T)}")
    Di = _empty((B, H, T), xp)                                              # rowsum(dO * O)
    _row_dot[(B * H * T + 127) // 128, 128](o, do, Di)                      # one thread per query row
    dq, dk, dv = _empty(q.shape, xp), _empty(k.shape, xp), _empty(v.shape, xp)
    grid_k = ((S + BK - 1) // BK, B * Hkv)                                  # (key tiles, batch x kv heads)
    _dkdv_kernel(BQ, BK, D)[grid_k, BK](q, k, v, do, L, Di, *mask, scale, dk, dv)
    grid_q = ((T + BQ - 1) // BQ, B * H)                                    # (query tiles, batch x heads)
    _dq_kernel(BQ, BK, D)[grid_q, BQ](q, k, v, do, L, Di, *mask, scale, dq)
    return _to_caller(dq, xp), _to_caller(dk, xp), _to_caller(dv, xp)


def default_blocks_cuda(D, block_q=None, block_k=None):
    """(BQ, BK): 64 x 64 up to D = 64, 32 x 32 up to D = 128, so that two (tile, D) float32 arrays fit
    in the 48 KB of shared memory a block may declare statically."""
    if D > 128:
        raise ValueError(f"flash-cuda: head dim D={D} > 128 is not supported (shared memory, local arrays)")
    default = 64 if D <= 64 else 32
    BQ = default if block_q is None else int(block_q)
    BK = default if block_k is None else int(block_k)
    if not (1 <= BQ <= 1024 and 1 <= BK <= 1024) or 2 * max(BQ, BK) * D * 4 > 48 * 1024:
        raise ValueError(f"flash-cuda: block_q={BQ}, block_k={BK} with D={D}: need 1..1024 threads and "
                         f"2 * max(block_q, block_k) * D * 4 bytes <= 48 KB of shared memory")
    return BQ, BK


def _prepare(q, k, v, spec, scale, block_q, block_k, xp):
    """Checks; the scale as float32; the mask as kernel arguments (prefix, pad on the device); the tiles."""
    if q.ndim != 4 or k.ndim != 4 or k.shape != v.shape or k.shape[0] != q.shape[0] or k.shape[3] != q.shape[3]:
        raise ValueError(f"flash-cuda: q (B, H, T, D), k and v (B, Hkv, S, D) expected; "
                         f"got {q.shape}, {k.shape}, {v.shape}")
    if q.shape[1] % k.shape[1]:
        raise ValueError(f"flash-cuda: H={q.shape[1]} query heads are not a multiple of Hkv={k.shape[1]}")
    if not (q.dtype == k.dtype == v.dtype == np.float32):
        raise ValueError(f"flash-cuda: q, k, v must be float32, got {q.dtype}, {k.dtype}, {v.dtype}")
    B, H, T, D = q.shape
    spec.check(B, T, k.shape[2])
    blocks = default_blocks_cuda(D, block_q, block_k)
    prefix, pad = _on_device(list(spec.per_sample(B)), xp)[0]               # int64 (B,) each
    scale = np.float32(1.0 / math.sqrt(D) if scale is None else scale)
    return scale, (prefix, pad, spec.q_offset, spec.local_code, spec.window), blocks


def _on_device(arrays, xp=None):
    """-> (device arrays, xp). CuPy arrays (anything with __cuda_array_interface__) pass as they are,
    C-contiguous, with xp = cupy; NumPy arrays are copied to the device (or the simulator's), xp = None."""
    if xp is not None or all(hasattr(x, "__cuda_array_interface__") for x in arrays):
        xp = xp or get_xp(*arrays)
        return [xp.ascontiguousarray(xp.asarray(x)) for x in arrays], xp
    if not (config.ENABLE_CUDASIM or cuda.is_available()):
        raise RuntimeError("flash-cuda needs an NVIDIA GPU with CUDA, or Numba's CUDA simulator: set "
                           "NUMBA_ENABLE_CUDASIM=1 in the environment before numba is first imported")
    return [cuda.to_device(np.ascontiguousarray(x)) for x in arrays], None


def _empty(shape, xp):
    """A float32 device array: CuPy's when the inputs are CuPy arrays, else Numba's."""
    return xp.empty(shape, dtype=np.float32) if xp is not None else cuda.device_array(shape, np.float32)


def _to_caller(x, xp):
    """CuPy arrays stay on the device; Numba device arrays come back as NumPy arrays."""
    return x if xp is not None else x.copy_to_host()
