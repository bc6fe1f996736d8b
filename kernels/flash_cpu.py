"""Flash attention on the CPU: the tiled online-softmax algorithm of flash_numpy.py, fused with Numba.

Dimensions: B batch, H query heads, Hkv kv heads, g = H // Hkv, T queries, S keys, D head dim,
Bq = block_q query rows and Bk = block_k key columns per tile. Read flash_numpy.py first: the
algorithm is the same, step for step; this file is about doing it fast.

Heads that share a kv head go together. With GQA, the g query heads of one kv head read the same keys
and values, and at one position they see the same keys. So a query tile of Bq positions is taken from
all g heads at once: their rows are stacked, g * Bq of them (head hh's position ii is row hh*Bq + ii),
and every product with a key or value tile serves the g heads in one BLAS call. The products keep the
size BLAS likes (64 rows: Bq = 64 // g, default_blocks) while a tile spans fewer positions, so less of
it lies above the causal diagonal: LLaMA's shape (B=4, H=8, Hkv=2, T=256, D=32, one core) forward
4.2 -> 3.8 ms, backward 7.3 -> 6.6 ms. With g = 1 (MHA) nothing is stacked or copied.

Forward. The work is cut into B * Hkv * ceil(T / Bq) independent items, one per query tile of one kv
head's g query heads, and `prange` hands them to the threads. An item finds the interval of keys each
of its query rows may see (masking.visible_keys), then walks the key tiles, up to the last key any of its
rows may see (masking.last_visible_key: the last tile is cut short there), skipping the tiles the mask
hides completely (masking.tile_may_be_visible: for a causal mask, every tile above the diagonal, which is
half the work), and hiding keys outside a row's interval only where some row does not see a key. For each
key tile it updates the running max m, sum l and output acc (the online softmax), and at the end writes
O = acc / l and L = m + log(l), the per-row log-sum-exp that the backward pass rebuilds probabilities from.

Backward. Di = rowsum(dO * O), then for every (query tile, key tile) pair the probabilities are
rebuilt, p = exp(s - L), and dV += p^T dO, dp = dO V^T, ds = p * (dp - Di), dQ += ds K, dK += ds^T Q.
dK and dV of a kv head collect from all g query heads that read it, and dQ of a query tile collects
from all key tiles. So that no two threads ever add into the same numbers, the backward's items are
(b, kv head) pairs: an item owns dK[b, kvh] and dV[b, kvh] AND dQ of the g query heads of that kv head
(query head h reads only kv head h // g, so nobody else touches them). No atomics, no per-thread copies
to reduce, no extra recomputation; the price is coarser parallelism, B * Hkv items (48 for B=4, H=12
MHA; with B * Hkv smaller than the thread count, some threads idle).

Tile products. The matrix products of a tile pair (two in the forward, five in the backward) go to
BLAS's gemm (blas_cpu.gemm): C = alpha op(A) op(B) + beta C. alpha carries the 1/sqrt(D) scale, op reads
a transposed tile where it lies (q_tile^T, v_tile^T), and beta = 1 adds a product straight into the
output: the running output acc, and dQ, dK, dV in the backward. Nothing is allocated per tile, and
nothing copied but the g heads' query rows (and dO rows, and dQ rows back) of a query tile, once per tile.
Measured on one core at 64x64x64: 114 GFLOP/s for BLAS, 35 GFLOP/s for the best plain loop Numba
vectorises without fastmath. (Through np.dot, which can neither scale nor add, every product went to a
workspace and a loop added it in: B=4, H=8, T=256, D=32 causal on one core, backward 11.8 -> 10.8 ms
with gemm; testing keys against row intervals instead of the whole rule pair by pair took the forward
6.1 -> 5.6 ms and the backward 10.8 -> 9.0 ms; NumPy's OpenBLAS instead of SciPy's, blas_cpu.py, the
forward 5.1 -> 4.3 ms and the backward 8.7 -> 7.5 ms.) The kernel's own loops
do what BLAS cannot: skip tiles, apply the mask, run the online softmax, and fuse it all so that no
(T, S) array ever exists. Tile products stay at most 2^18 multiply-adds (g * Bq * Bk * D <= 262144,
see default_blocks): below that OpenBLAS never starts threads of its own inside ours. Wider key tiles mean
fewer and larger products, which BLAS runs faster (one core, float32, the scores' product: 65 GFLOP/s
at 64 keys x 32 x 64 rows, 70 at 128 keys); cutting the last tile at the last visible key keeps their
causal work that of 64-key tiles.

Layout. Scores are kept transposed, sT (Bk, Bq): the query row index runs fastest. The softmax works
row by row (a max and a sum over the keys of each query row); with rows running fastest the sums become
elementwise updates of (Bq,) vectors, which the compiler vectorises, instead of sums along a row,
which it may not vectorise without fastmath (that would reorder additions). (The max is the exception:
a max does not depend on the order, and taking it one row at a time measured faster.) For the same reason the
running output is kept transposed, accT (D, Bq), and the exponentials of float32 tiles use a
vectorisable exp (below) instead of the C library's.

Threads. `prange` runs one worker per thread (numba.get_num_threads(), NUMBA_NUM_THREADS); each worker
allocates its workspaces once and then walks its items round-robin (items w, w + n_workers, ...), so
the tile loops allocate nothing but the few bytes in which blas_cpu.gemm hands BLAS its sizes. The
kernels release the GIL (nogil=True). minigpt runs them on Numba's "workqueue" threading layer, not its
default OpenMP, whose threads keep spinning after a kernel returns and took the cores from the NumPy work
after it (minigpt/threads.py has the numbers).

Memory beyond the inputs and outputs: L (B, H, T) and O(g*Bq*(Bk + D)) of workspace per thread:
linear in T, where the reference keeps (B, H, T, S) probabilities.

Precision: everything is computed in the input dtype (float32 or float64), like the reference, the
running max and sum included; float32 results agree with the float32 reference to about 1e-6
relative, float64 results to about 1e-15.

Compilation: Numba compiles on the first call of each dtype (a few seconds), and caches nothing on
disk (cache=False): the mask rule is imported from masking.py, and Numba's disk cache does not notice
when a function in another file changes.
"""
import math

import numpy as np
from numba import get_num_threads, njit, prange, types
from numba.extending import overload

from minigpt import threads
from minigpt.kernels import masking
from minigpt.kernels.blas_cpu import gemm

# The mask rule, compiled from its one definition in masking.py.
_visible_keys = njit(masking.visible_keys)
_tile_may_be_visible = njit(masking.tile_may_be_visible)
_last_visible_key = njit(masking.last_visible_key)
threads.sync_numba()      # the thread count and threading layer of minigpt's policy (minigpt/threads.py)


# ---------------------------------------------------------------- the public entry points

def flash_forward(q, k, v, spec, scale=None, block_q=None, block_k=None):
    """Fused attention forward.
    q (B, H, T, D), k (B, Hkv, S, D), v (B, Hkv, S, D) float32 or float64, spec a MaskSpec
    ->  O (B, H, T, D), L (B, H, T) the log-sum-exp of each row's scaled masked scores
    """
    q, k, v, scale, mask, (block_q, block_k) = _prepare(q, k, v, spec, scale, block_q, block_k)
    B, H, T, D = q.shape
    o = np.empty_like(q)                                                    # (B, H, T, D)
    L = np.empty((B, H, T), dtype=q.dtype)                                  # (B, H, T)
    _forward_kernel(q, k, v, *mask, scale, block_q, block_k, o, L)
    return o, L


def flash_backward(q, k, v, o, L, do, spec, scale=None, block_q=None, block_k=None):
    """Fused attention backward, recomputing the probabilities from L.
    q, o, do (B, H, T, D), k, v (B, Hkv, S, D), L (B, H, T)
    ->  dq (B, H, T, D), dk (B, Hkv, S, D), dv (B, Hkv, S, D)
    """
    q, k, v, scale, mask, (block_q, block_k) = _prepare(q, k, v, spec, scale, block_q, block_k)
    o, do = (np.ascontiguousarray(x, dtype=q.dtype) for x in (o, do))
    L = np.ascontiguousarray(L, dtype=q.dtype)
    if o.shape != q.shape or do.shape != q.shape or L.shape != q.shape[:3]:
        raise ValueError(f"flash_backward: o {o.shape} and do {do.shape} must be q's shape {q.shape}, "
                         f"L {L.shape} must be {q.shape[:3]}")
    dq = np.empty_like(q)                                                   # (B, H, T, D) every row written by its tile
    dk = np.zeros_like(k)                                                   # (B, Hkv, S, D)
    dv = np.zeros_like(v)                                                   # (B, Hkv, S, D)
    _backward_kernel(q, k, v, o, L, do, *mask, scale, block_q, block_k, dq, dk, dv)
    return dq, dk, dv


def _prepare(q, k, v, spec, scale, block_q, block_k):
    """Checked, C-contiguous q, k, v; the scale as a float; the mask as the kernels' arguments
    (prefix int64 (B,), pad int64 (B,), q_offset, local code, window); the tile sizes."""
    q, k, v = (np.ascontiguousarray(x) for x in (q, k, v))
    if q.ndim != 4 or k.ndim != 4 or k.shape != v.shape or k.shape[0] != q.shape[0] or k.shape[3] != q.shape[3]:
        raise ValueError(f"flash attention: q (B, H, T, D), k and v (B, Hkv, S, D) expected; "
                         f"got {q.shape}, {k.shape}, {v.shape}")
    if q.shape[1] % k.shape[1]:
        raise ValueError(f"flash attention: H={q.shape[1]} query heads are not a multiple of Hkv={k.shape[1]}")
    if not (q.dtype == k.dtype == v.dtype) or q.dtype not in (np.float32, np.float64):
        raise ValueError(f"flash attention: q, k, v must all be float32 or all float64, "
                         f"got {q.dtype}, {k.dtype}, {v.dtype}")
    B, H, T, D = q.shape
    blocks = default_blocks(D, block_q, block_k, g=H // k.shape[1])
    spec.check(B, T, k.shape[2])
    prefix, pad = spec.per_sample(B)                                        # (B,), (B,)
    scale = 1.0 / math.sqrt(D) if scale is None else float(scale)
    return q, k, v, scale, (prefix, pad, spec.q_offset, spec.local_code, spec.window), blocks


def default_blocks(D, block_q=None, block_k=None, g=1):
    """Tile sizes (block_q, block_k) for g query heads per kv head. The g heads' rows of a query tile are
    multiplied together, g * block_q rows: block_q = 64 // g positions (at least one) makes it 64 rows,
    and block_k as many keys (16 to 256) as keep a tile product (g * block_q * block_k * D multiply-adds)
    <= 2^18, OpenBLAS's one-thread limit: 128 keys for D = 32, 64 for D = 64, 32 for D = 128."""
    block_q = max(1, 64 // g) if block_q is None else int(block_q)
    block_k = max(16, min(256, 2**18 // (g * block_q * D))) if block_k is None else int(block_k)
    if block_q < 1 or block_k < 1:
        raise ValueError(f"flash attention: block_q={block_q}, block_k={block_k} must be >= 1")
    return block_q, block_k


# ---------------------------------------------------------------- exp, vectorisable

# math.exp is a call into the C library: the compiler cannot run it on 8 numbers at once, and a
# causal forward pass at T = 1024 (B=4, H=12) takes 25 million of them, as many again in the backward.
# For float32 we compute exp with arithmetic only (Cephes' expf), which the compiler does vectorise:
#     x = n ln2 + r,  n = round(x / ln2),  |r| <= ln2 / 2      (ln2 split in two parts, so n*ln2 is exact)
#     exp(r) = 1 + r + r^2 * poly(r)                           (degree 5, accurate to float32 rounding)
#     exp(x) = exp(r) * 2^n,  2^n built from its bits          (exponent field n + 127, shifted left 23)
# Measured against float64 exp on [-100, 10]: max relative error 8.2e-8 (NumPy's float32 exp: 2.0e-7).
# fastmath={"contract"} lets the compiler fuse each multiply with the add after it into one FMA instruction
# where the CPU has one (one rounding instead of two; the error measured stays 8.2e-8): 2^20 exps on one
# core 0.63 -> 0.42 ms, the flash forward 5.7 -> 5.4 ms (B=4, H=8, T=256, D=32). No other flag is allowed.
# Arguments at or below LOWEST (including the -inf of masked keys) give exactly 0. float64 keeps math.exp.
LOG2E, HALF, ONE, ZERO = np.float32(1.4426950408889634), np.float32(0.5), np.float32(1.0), np.float32(0.0)
LN2_HI, LN2_LO = np.float32(0.693359375), np.float32(-2.12194440e-4)      # ln 2 = LN2_HI + LN2_LO
P0, P1, P2 = np.float32(1.9875691500e-4), np.float32(1.3981999507e-3), np.float32(8.3334519073e-3)
P3, P4, P5 = np.float32(4.1665795894e-2), np.float32(1.6666665459e-1), np.float32(5.0000001201e-1)
LOWEST = np.float32(-87.33654)                                              # exp(LOWEST) = 2^-126, the smallest normal
BIAS = np.int32(127)                                                        # float32 exponent bias


@njit(fastmath={"contract"}, cache=False)
def _exp_float32(x):
    """exp(x) for a float32 x <= 88, with float32 arithmetic only (vectorisable)."""
    xc = LOWEST if x <= LOWEST else x                                       # keep 2^n a normal number
    n = np.floor(xc * LOG2E + HALF)                                         # nearest integer to x / ln 2
    r = xc - n * LN2_HI - n * LN2_LO                                        # x - n ln2, |r| <= ln2 / 2
    y = (((((P0 * r + P1) * r + P2) * r + P3) * r + P4) * r + P5) * (r * r) + r + ONE   # exp(r)
    two_n = np.int32((np.int32(n) + BIAS) << 23).view(np.float32)           # 2^n: exponent bits n + 127
    return ZERO if x <= LOWEST else y * two_n                               # masked (-inf) -> exactly 0; NaN stays NaN


def _exp(x):
    """exp for the kernels: _exp_float32 on float32, math.exp on float64 (chosen when Numba compiles)."""
    return math.exp(x)


@overload(_exp)
def _exp_for_type(x):
    if x == types.float32:
        return lambda x: _exp_float32(x)
    return lambda x: math.exp(x)


# ---------------------------------------------------------------- small helpers

@njit(fastmath=False, cache=False)
def _view(buf, rows, cols):
    """The first rows*cols numbers of a flat workspace as a C-contiguous (rows, cols) matrix (no copy).
    BLAS needs contiguous operands; a (rows, cols) corner of a bigger 2-D buffer would not be."""
    return buf[:rows * cols].reshape((rows, cols))


@njit(fastmath=False, cache=False)
def _visible_intervals(i_lo, nr, g, mask, keys):
    """The keys each query row of a tile of g heads sees (rows hh*nr + ii, head hh at position
    i_lo + ii; all heads at a position see the same keys): keys[0, r] .. keys[1, r], inclusive, from
    masking.visible_keys. -> first (g*nr,), last (g*nr,), and the keys every row sees:
    max(first) .. min(last) (an empty range when max(first) > min(last))."""
    first, last = keys[0, :g * nr], keys[1, :g * nr]
    for ii in range(nr):
        first[ii], last[ii] = _visible_keys(i_lo + ii, *mask)
    for hh in range(1, g):                                                  # the other heads: the same
        first[hh * nr:(hh + 1) * nr] = first[:nr]
        last[hh * nr:(hh + 1) * nr] = last[:nr]
    return first, last, first.max(), last.min()


@njit(fastmath=False, cache=False)
def _mask_transposed(sT, c0, intervals):
    """sT[jj, r] = -inf where key c0 + jj lies outside query row r's interval of visible keys. Only the
    keys that some row does not see are looked at: none in most tiles below the causal diagonal, and in a
    tile that the diagonal crosses, the keys after the first row's last one."""
    first, last, all_first, all_last = intervals
    nc, n = sT.shape
    for jj in range(nc):
        j = c0 + jj
        if all_first <= j and j <= all_last:                                # every row sees key j
            continue
        for r in range(n):                                                  # a select per number: vectorised
            sT[jj, r] = sT[jj, r] if first[r] <= j and j <= last[r] else -np.inf


@njit(fastmath=False, cache=False)
def _stack_heads(x, b, h0, g, r0, nr, buf):
    """Rows r0 .. r0+nr-1 of heads h0 .. h0+g-1 of x[b], one head's rows after the other's -> (g*nr, D),
    row hh * nr + ii = x[b, h0 + hh, r0 + ii]: copied into the workspace buf, or, for one head, a view
    (its rows already are one matrix)."""
    if g == 1:
        return x[b, h0, r0:r0 + nr]                                         # (nr, D) a view
    rows = _view(buf, g * nr, x.shape[3])                                   # (g*nr, D)
    for hh in range(g):
        for ii in range(nr):
            for d in range(x.shape[3]):
                rows[hh * nr + ii, d] = x[b, h0 + hh, r0 + ii, d]
    return rows


@njit(fastmath=False, cache=False)
def _scores_transposed(q_rows, k_tile, scale, c0, intervals, buf):
    """sT = scale * k_tile @ q_rows^T  (nc, n): the tile's scores, transposed, -inf where hidden.
    k_tile (nc, D) holds keys c0 .., q_rows (n, D) = (g*nr, D) the query tile of g heads (_stack_heads),
    whose positions see the keys of intervals; BLAS reads q_rows transposed in place."""
    sT = _view(buf, k_tile.shape[0], q_rows.shape[0])                      # (nc, g*nr) workspace
    gemm(scale, k_tile, False, q_rows, True, 0.0, sT)                       # (nc, D) @ (D, g*nr)
    _mask_transposed(sT, c0, intervals)
    return sT


# ---------------------------------------------------------------- forward

@njit(parallel=True, nogil=True, fastmath=False, cache=False)
def _forward_kernel(q, k, v, prefix, pad, q_offset, local, window, scale, block_q, block_k, o, L):
    """O and L of every query tile of every kv head's g query heads: one prange worker per thread,
    items dealt round-robin."""
    B, H, T, D = q.shape
    Hkv = k.shape[1]
    g = H // Hkv                                                            # query heads per kv head
    n_qt = (T + block_q - 1) // block_q                                     # query tiles per head
    n_items = B * Hkv * n_qt                                                # item = (b * Hkv + kvh) * n_qt + tile
    n_workers = min(get_num_threads(), n_items)
    for w in prange(n_workers):
        n_max = g * block_q                                                 # rows of a tile of g heads
        work = (np.empty(block_k * n_max, q.dtype),                         # scores, then p, transposed (Bk, g*Bq)
                np.empty(D * n_max, q.dtype),                               # the running output, transposed (D, g*Bq)
                np.empty(n_max * D, q.dtype),                               # the g heads' query rows (g*Bq, D)
                np.empty((4, n_max), q.dtype),                              # m, l, safe max, alpha per query row
                np.empty((2, n_max), np.int64))                             # each row's first and last visible key
        for item in range(w, n_items, n_workers):                           # worker w: items w, w + n_workers, ...
            b = item // (Hkv * n_qt)                                        # undo item = (b * Hkv + kvh) * n_qt + tile
            kvh = item // n_qt % Hkv
            tile = item % n_qt
            if item // n_qt % 2 == 1:                                       # every other kv head walks its tiles
                tile = n_qt - 1 - tile                                      # from the end: long and short ones mix
            r0 = tile * block_q                                             # the tile's first query position
            nr = min(block_q, T - r0)                                       # positions in it (the last may be short)
            mask = (prefix[b], pad[b], local, window)                       # sample b's mask
            _forward_tile(q, k, v, o, L, b, kvh, g, r0, nr, q_offset, mask, scale, block_k, work)


@njit(fastmath=False, cache=False)
def _forward_tile(q, k, v, o, L, b, kvh, g, r0, nr, q_offset, mask, scale, block_k, work):
    """One query tile (positions r0 .. r0+nr-1) of the g query heads that read kv head kvh, against every
    key tile it can see: writes their O and L. The g heads' rows go side by side through each product, so
    a key tile is multiplied once for all of them (GQA), in products of g*nr rows."""
    s_buf, acc_buf, q_buf, rows, keys = work
    D, S = q.shape[3], k.shape[2]
    n = g * nr                                                              # rows: head hh's position ii is hh*nr + ii
    q_rows = _stack_heads(q, b, kvh * g, g, r0, nr, q_buf)                  # (g*nr, D)
    accT = _view(acc_buf, D, n)                                             # (D, g*nr)
    accT[:, :] = 0.0
    rows[0, :n] = -np.inf                                                   # m: no key seen yet
    rows[1, :n] = 0.0                                                       # l
    i_lo = q_offset + r0                                                    # absolute position of row r0
    intervals = _visible_intervals(i_lo, nr, g, mask, keys)
    j_end = min(S, _last_visible_key(i_lo + nr - 1, mask[0]) + 1)           # no key from j_end on is visible
    for c0 in range(0, j_end, block_k):                                     # key tiles, left to right
        nc = min(block_k, j_end - c0)                                       # keys in this tile
        if not _tile_may_be_visible(i_lo, i_lo + nr - 1, c0, c0 + nc - 1, *mask):
            continue                                                        # hidden: no work at all
        sT = _scores_transposed(q_rows, k[b, kvh, c0:c0 + nc], scale, c0, intervals, s_buf)   # (nc, g*nr)
        _online_softmax(sT, rows)                                           # sT becomes p; m, l, alpha updated
        alpha = rows[3]
        for d in range(D):
            for r in range(n):
                accT[d, r] *= alpha[r]                                      # acc = alpha * acc ...
        gemm(1.0, v[b, kvh, c0:c0 + nc], True, sT, False, 1.0, accT)        # ... + (p @ v_tile)^T: (D, nc) @ (nc, g*nr)
    for hh in range(g):
        h = kvh * g + hh
        for ii in range(nr):
            r = hh * nr + ii
            for d in range(D):
                o[b, h, r0 + ii, d] = accT[d, r] / rows[1, r]               # out = acc / l
            L[b, h, r0 + ii] = rows[0, r] + math.log(rows[1, r])            # L = m + log(l)


@njit(fastmath=False, cache=False)
def _online_softmax(sT, rows):
    """Fold one tile of scores sT (nc, nr) into each row's running max m and sum l. Afterwards
    sT holds p = exp(s - m_new) and rows[3] holds alpha = exp(m_old - m_new) per row."""
    nc, nr = sT.shape
    m, l, m_safe, alpha = rows[0], rows[1], rows[2], rows[3]
    for ii in range(nr):                                                    # the new max of each row (one row
        row_max = m[ii]                                                     # at a time: measured 6% faster for
        for jj in range(nc):                                                # the whole forward than a running max
            row_max = max(row_max, sT[jj, ii])                              # per row updated key by key)
        m_safe[ii] = row_max
    for ii in range(nr):
        m_new = m_safe[ii]
        if m_new == -np.inf:                                                # the row has seen no visible key yet:
            m_safe[ii] = 0.0                                                # subtract 0, never -inf - (-inf) = nan
        alpha[ii] = _exp(m[ii] - m_safe[ii])                                # 0 while m is -inf
        l[ii] *= alpha[ii]
        m[ii] = m_new
    for jj in range(nc):
        for ii in range(nr):                                                # elementwise over rows: vectorised
            p = _exp(sT[jj, ii] - m_safe[ii])                               # 0 where masked (-inf)
            sT[jj, ii] = p
            l[ii] += p                                                      # l += rowsum(p)


# ---------------------------------------------------------------- backward

@njit(parallel=True, nogil=True, fastmath=False, cache=False)
def _backward_kernel(q, k, v, o, L, do, prefix, pad, q_offset, local, window, scale, block_q, block_k,
                     dq, dk, dv):
    """dq, dk, dv. Item = (b, kv head): it owns dk[b, kvh], dv[b, kvh] and dq of the g query heads
    h = kvh*g .. kvh*g + g-1, so no two threads ever write the same numbers."""
    B, H, T, D = q.shape
    Hkv = k.shape[1]
    g = H // Hkv                                                            # query heads per kv head
    n_items = B * Hkv                                                       # item = b * Hkv + kvh
    n_workers = min(get_num_threads(), n_items)
    for w in prange(n_workers):
        n_max = g * block_q                                                 # rows of a tile of g heads
        work = (np.empty(block_k * n_max, q.dtype),                         # scores, then p, transposed (Bk, g*Bq)
                np.empty(block_k * n_max, q.dtype),                         # dp, then ds, transposed (Bk, g*Bq)
                np.empty(n_max * D, q.dtype),                               # the g heads' query rows (g*Bq, D)
                np.empty(n_max * D, q.dtype),                               # ... their dO rows (g*Bq, D)
                np.empty(n_max * D, q.dtype),                               # ... their dQ rows (g*Bq, D)
                np.empty((2, n_max), q.dtype),                              # L and Di per query row
                np.empty((2, n_max), np.int64))                             # each row's first and last visible key
        for item in range(w, n_items, n_workers):
            b, kvh = item // Hkv, item % Hkv                                # undo item = b * Hkv + kvh
            mask = (prefix[b], pad[b], local, window)
            for r0 in range(0, T, block_q):
                nr = min(block_q, T - r0)
                _backward_tile(q, k, v, o, L, do, b, kvh, g, r0, nr, q_offset, mask, scale, block_k,
                               dq, dk, dv, work)


@njit(fastmath=False, cache=False)
def _backward_tile(q, k, v, o, L, do, b, kvh, g, r0, nr, q_offset, mask, scale, block_k, dq, dk, dv, work):
    """One query tile (positions r0 .. r0+nr-1) of the g query heads that read kv head kvh, against every
    key tile it can see: writes their dq, adds into dk[b, kvh] and dv[b, kvh]. The heads' rows are stacked
    as in the forward. s = scale * q k^T, so dq = scale * ds k and dk = scale * ds^T q."""
    s_buf, ds_buf, q_buf, do_buf, dq_buf, rows, keys = work
    D, S = q.shape[3], k.shape[2]
    n = g * nr                                                              # rows: head hh's position ii is hh*nr + ii
    q_rows = _stack_heads(q, b, kvh * g, g, r0, nr, q_buf)                  # (g*nr, D)
    do_rows = _stack_heads(do, b, kvh * g, g, r0, nr, do_buf)               # (g*nr, D)
    dq_rows = dq[b, kvh, r0:r0 + nr] if g == 1 else _view(dq_buf, n, D)     # (g*nr, D), zeros
    dq_rows[:, :] = 0.0
    Lt, Di = rows[0], rows[1]
    for hh in range(g):
        h = kvh * g + hh
        for ii in range(nr):
            r = hh * nr + ii
            Lt[r] = L[b, h, r0 + ii]
            Di[r] = 0.0
            for d in range(D):
                Di[r] += do_rows[r, d] * o[b, h, r0 + ii, d]                # Di = rowsum(dO * O)
    i_lo = q_offset + r0
    intervals = _visible_intervals(i_lo, nr, g, mask, keys)
    j_end = min(S, _last_visible_key(i_lo + nr - 1, mask[0]) + 1)
    for c0 in range(0, j_end, block_k):
        nc = min(block_k, j_end - c0)
        if not _tile_may_be_visible(i_lo, i_lo + nr - 1, c0, c0 + nc - 1, *mask):
            continue
        k_tile, v_tile = k[b, kvh, c0:c0 + nc], v[b, kvh, c0:c0 + nc]      # (nc, D) views
        pT = _scores_transposed(q_rows, k_tile, scale, c0, intervals, s_buf)    # (nc, g*nr) scores^T
        dsT = _view(ds_buf, nc, n)
        gemm(1.0, v_tile, False, do_rows, True, 0.0, dsT)                   # dp^T = v_tile dO^T  (nc, g*nr)
        for jj in range(nc):
            for r in range(n):
                pT[jj, r] = _exp(pT[jj, r] - Lt[r])                         # p = exp(s - L), 0 where masked
                dsT[jj, r] = pT[jj, r] * (dsT[jj, r] - Di[r])               # ds = p * (dp - Di)
        gemm(1.0, pT, False, do_rows, False, 1.0, dv[b, kvh, c0:c0 + nc])   # dv_tile += p^T dO      (nc, D)
        gemm(scale, dsT, False, q_rows, False, 1.0, dk[b, kvh, c0:c0 + nc])  # dk_tile += scale ds^T q (nc, D)
        gemm(scale, dsT, True, k_tile, False, 1.0, dq_rows)                 # dq_rows += scale ds k   (g*nr, D)
    if g > 1:
        for hh in range(g):
            dq[b, kvh * g + hh, r0:r0 + nr] = dq_rows[hh * nr:(hh + 1) * nr]   # each head's rows to its own dq
