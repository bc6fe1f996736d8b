# ---
# jupyter:
#   jupytext:
#     formats: py:percent
#     text_representation:
#       extension: .py
#       format_name: percent
#   kernelspec:
#     display_name: Python 3
#     language: python
#     name: python3
# ---

# %% [markdown]
# # Lesson 24 — A Numba CUDA kernel for flash attention
#
# **You will learn**
# - how a GPU runs a kernel: a grid of blocks, each a group of threads that share a small fast memory (shared
#   memory) and can wait for each other at a barrier (`cuda.syncthreads()`);
# - how `minigpt.kernels.flash_cuda` maps lesson 22's algorithm onto that: one block per (query tile, sample x head),
#   one thread per query row, the key and value tiles staged in shared memory, the online softmax in each thread's
#   registers; and a backward of three kernels in which no two threads ever write the same number;
# - the kernel run and checked against the NumPy reference in float32: on a GPU when there is one, otherwise in
#   Numba's CUDA simulator, which is correct but slow, so that no time measured there says anything about a GPU.
#
# The textbook does not cover kernels, so there is no textbook term here. Read lesson 23 first (Numba, `@njit`) and
# `kernels/flash_cuda.py`, whose opening prose this lesson follows.
#
# **The simulator must be chosen before Numba is imported.** `NUMBA_ENABLE_CUDASIM=1` is read once, when `numba`
# is first imported, so the first cell decides: if CuPy imports and sees a GPU (`minigpt.backend.cupy_available()`,
# which imports neither Numba nor the kernels) the lesson uses the real device; otherwise it switches the
# simulator on. A value already in the environment is kept (`setdefault`).

# %%
import os

from minigpt.backend import cupy_available

GPU = cupy_available()
if not GPU:
    os.environ.setdefault("NUMBA_ENABLE_CUDASIM", "1")         # before anything imports numba

import math  # noqa: E402
import time  # noqa: E402

import numba  # noqa: E402
import numpy as np  # noqa: E402
from numba import cuda, float32  # noqa: E402

from minigpt.kernels import MaskSpec, dense_mask  # noqa: E402
from minigpt.kernels.flash_cuda import default_blocks_cuda, flash_backward_cuda, flash_forward_cuda  # noqa: E402
from minigpt.layers.attention import attention_backward, attention_forward  # noqa: E402

FAST = os.environ.get("MINIGPT_FAST") == "1"
SIM = numba.config.ENABLE_CUDASIM == 1
GPU = GPU and not SIM                                           # NUMBA_ENABLE_CUDASIM=1 given by hand wins
print("Numba", numba.__version__, "| CuPy sees a GPU:", GPU, "| CUDA simulator:", SIM)
if SIM:
    print("no GPU here: the kernels run in Numba's CUDA simulator (each thread a Python thread), on tiny shapes")

# %% [markdown]
# ## Grid, blocks, threads, shared memory, barriers
#
# A CUDA kernel is one function run by many threads. They are grouped in **blocks** (up to 1024 threads; a block
# runs on one streaming multiprocessor), and the blocks form a **grid**. A launch `kernel[grid, threads](args)`
# says how many of each; inside, a thread knows its place from `cuda.blockIdx` and `cuda.threadIdx` and computes
# from them which data it owns. Memory comes in three kinds that matter here:
#
# | memory | who sees it | size | speed |
# |---|---|---|---|
# | global (`q`, `k`, `v`, the outputs) | every thread of every block | GBs | slow; fastest when neighbouring threads read neighbouring addresses (coalesced) |
# | shared (`cuda.shared.array`) | the threads of one block | 48 KB per block declared statically | fast, on chip |
# | registers / local (`cuda.local.array`) | one thread | a few hundred bytes | fastest |
#
# Threads of a block do not run in lock-step as a whole: when some of them write shared memory and others then
# read it, a **barrier** `cuda.syncthreads()` is needed between the two, and *every* thread of the block must reach
# it (a barrier inside an `if` that only some threads take hangs or corrupts the block).
#
# The smallest example with all four ideas: each block sums its 32 numbers. Thread $t$ copies element
# $32 \cdot \text{block} + t$ into shared memory; a barrier; then a tree: in round $s = 16, 8, 4, 2, 1$ thread $t < s$
# adds element $t + s$ into element $t$, with a barrier after every round because the next round reads what
# this one wrote.

# %%
THREADS = 32


@cuda.jit
def block_sums(x, out):
    """out[b] = sum of x[32 b : 32 b + 32]; one block per 32 numbers, one thread per number."""
    buf = cuda.shared.array(THREADS, float32)                   # one per block, seen by its 32 threads
    t = cuda.threadIdx.x                                        # 0..31: this thread's place in the block
    i = cuda.blockIdx.x * THREADS + t                           # its element of x
    buf[t] = x[i] if i < x.shape[0] else float32(0.0)           # the last block may run past the end
    cuda.syncthreads()                                          # all 32 copies are in before anyone adds
    s = THREADS // 2
    while s > 0:
        if t < s:
            buf[t] += buf[t + s]                                # reads what the last round wrote
        cuda.syncthreads()                                      # outside the if: every thread reaches it
        s //= 2
    if t == 0:
        out[cuda.blockIdx.x] = buf[0]


xs = np.random.default_rng(0).standard_normal(100).astype(np.float32)   # (100,)
n_blocks = (xs.size + THREADS - 1) // THREADS                   # 4 blocks, the last one 4 numbers long
sums_dev = cuda.device_array(n_blocks, np.float32)
block_sums[n_blocks, THREADS](cuda.to_device(xs), sums_dev)     # launch: grid of 4 blocks, 32 threads each
sums = sums_dev.copy_to_host()
sums_want = np.add.reduceat(xs, np.arange(0, xs.size, THREADS))
sums_error = abs(sums - sums_want).max()
print("block sums:", np.round(sums, 4), f"max |difference| from NumPy {sums_error:.1e}")

# %% [markdown]
# ## The forward kernel's layout
#
# Lesson 22's algorithm walks, for one query tile of $B_q$ rows, over the key tiles, keeping per row a running
# maximum $m$, sum $\ell$ and output $\mathrm{acc}$. On the GPU:
#
# - **grid** $(\lceil T / B_q \rceil,\; B \cdot H)$: `blockIdx.x` is the query tile, `blockIdx.y` $= b H + h$ the sample and
#   head; the kv head is $h // g$ (GQA, lesson 17). All tiles of all heads run at once, as far as the GPU has room.
# - **block** of $B_q$ threads: thread $t$ owns query row $r_0 + t$. Its scaled query row, $\mathrm{acc}$ ($D$ numbers),
#   $m$ and $\ell$ live in its registers / local memory for the whole kernel: they never go to global memory.
# - **shared memory**: per key tile, the block copies $K$ and $V$ ($B_k \times D$ each) from global memory once,
#   every thread a strided share (thread $t$ takes flat elements $t, t + B_q, \dots$: coalesced), and then all
#   $B_q$ threads read them. Without it every thread would read the whole tile from global memory: $B_q$ times the traffic.
# - **two barriers per key tile**: after the copy (the tile is complete before anyone reads it) and after the
#   update (no one overwrites the tile while a slower thread still reads it). A causal tile that is fully hidden is
#   skipped, and the test uses only the tile's corners, so all threads of a block take the same branch and all reach
#   the barriers.
# - at the end thread $t$ writes its row of $O = \mathrm{acc} / \ell$ and $L = m + \log \ell$ (kept for the backward).
#
# **Backward without atomics.** $\mathrm{d}K_j$ and $\mathrm{d}V_j$ sum over query rows, $\mathrm{d}Q_i$ over keys.
# Many blocks adding into the same numbers would need atomic adds (slow, and their order makes float32 results
# vary from run to run). Instead three kernels each own what they write:
# `_row_dot` ($D_i = \sum_d \mathrm{d}O_{id} O_{id}$, one thread per row); `dkdv`, one block per (key tile, sample x
# kv head), thread $t$ owning key $c_0 + t$ and walking the query tiles of the $g$ heads that read it (staging $Q$,
# $\mathrm{d}O$, $L$, $D$ in shared memory); and `dq`, laid out like the forward. Both recompute
# $p = \exp(s - L)$: the price of no atomics is computing $s$ and $\mathrm{d}p$ twice. The table gives the launches
# for a realistic shape and for the one this lesson runs.

# %%
def launches(B, H, Hkv, T, S, D, BQ=None, BK=None):
    """The four launches of a forward + backward: name -> (grid, threads per block, shared bytes per block)."""
    BQ, BK = default_blocks_cuda(D, BQ, BK)
    return {
        "forward": (((T + BQ - 1) // BQ, B * H), BQ, 2 * BK * D * 4),          # Ks, Vs
        "_row_dot": (((B * H * T + 127) // 128,), 128, 0),
        "dkdv": (((S + BK - 1) // BK, B * Hkv), BK, 2 * BQ * D * 4 + 2 * BQ * 4),   # Qs, dOs, Ls, Ds
        "dq": (((T + BQ - 1) // BQ, B * H), BQ, 2 * BK * D * 4),               # Ks, Vs
    }


# the shape run below: on a GPU a real one; in the simulator a tiny one, with small tiles so that there are
# several query and key tiles and the last one is short (T = 40: tiles of 16, 16, 8; fast mode T = 12: 8, 4)
if GPU:
    RUN = dict(B=2, H=8, Hkv=2, T=1024, S=1024, D=64, BQ=None, BK=None)
elif FAST:
    RUN = dict(B=1, H=2, Hkv=1, T=12, S=12, D=8, BQ=8, BK=8)
else:
    RUN = dict(B=1, H=4, Hkv=2, T=40, S=40, D=16, BQ=16, BK=16)
for title, shape in (("B=4, H=16, Hkv=4, T=2048, D=64 (a GPU-sized case)",
                      dict(B=4, H=16, Hkv=4, T=2048, S=2048, D=64)), ("the case run below: " + str(RUN), RUN)):
    print(title)
    for name, (grid, threads, shared) in launches(**shape).items():
        print(f"  {name:<9} grid {str(grid):<12} {threads:>4} threads/block, {shared:>6} B shared, "
              f"{math.prod(grid) * threads:>8} threads in all")

# %% [markdown]
# ## Run and check against the reference
#
# Causal attention with GQA (in the simulator's fast mode MQA: 2 query heads, 1 kv head). Both the kernel and the reference
# compute in float32; the error is $\max|x - x_\text{ref}| / \max|x_\text{ref}|$, as in `tests/test_kernels_cuda.py`,
# and float32 rounding puts it near $10^{-7}$. On a GPU the inputs are CuPy arrays, passed to the kernels without a
# copy; in the simulator they are NumPy arrays, which `flash_cuda` copies to the (simulated) device and back.
#
# **Timing.** The simulator runs every thread of a block as a Python thread and every array access in the
# interpreter: it is thousands of times slower than the reference here, and its time says nothing about a GPU.
# So the lesson prints a time only when it ran on a GPU (after a warm-up launch, which compiles).

# %%
B, H, Hkv, T, S, D = (RUN[k] for k in ("B", "H", "Hkv", "T", "S", "D"))
blocks = dict(block_q=RUN["BQ"], block_k=RUN["BK"])
spec = MaskSpec()                                               # causal
rng = np.random.default_rng(0)
q, do = (rng.standard_normal((B, H, T, D)).astype(np.float32) for _ in range(2))    # (B, H, T, D)
k, v = (rng.standard_normal((B, Hkv, S, D)).astype(np.float32) for _ in range(2))  # (B, Hkv, S, D)

out_ref, cache = attention_forward(q, k, v, mask=dense_mask(spec, B, T, S)[:, None])  # float32 reference
want = (out_ref, *attention_backward(do, cache))               # out, dq, dk, dv

if GPU:
    import cupy

    args = [cupy.asarray(x) for x in (q, k, v, do)]

    def run_kernels():
        o, L = flash_forward_cuda(*args[:3], spec, **blocks)
        return (o, *flash_backward_cuda(*args[:3], o, L, args[3], spec, **blocks))

    run_kernels()                                               # warm-up: compiles the kernels
    cupy.cuda.Device().synchronize()
    start = time.perf_counter()
    got = run_kernels()
    cupy.cuda.Device().synchronize()                            # launches are asynchronous: wait for the end
    kernel_s = time.perf_counter() - start
    got = [cupy.asnumpy(x) for x in got]                        # the one transfer back, for the comparison
else:
    start = time.perf_counter()
    o, L = flash_forward_cuda(q, k, v, spec, **blocks)          # NumPy in: copied to the simulator and back
    got = (o, *flash_backward_cuda(q, k, v, o, L, do, spec, **blocks))
    kernel_s = time.perf_counter() - start
start = time.perf_counter()
_, cache2 = attention_forward(q, k, v, mask=dense_mask(spec, B, T, S)[:, None])
attention_backward(do, cache2)
reference_s = time.perf_counter() - start

names = ("out", "dq", "dk", "dv")
rel = {n: float(abs(a.astype(np.float64) - b).max() / abs(b).max()) for n, a, b in zip(names, got, want)}
print("float32 flash-cuda vs float32 reference, rel error:", {n: f"{e:.1e}" for n, e in rel.items()})
if GPU:
    print(f"forward + backward on the GPU: {kernel_s * 1e3:.2f} ms; NumPy reference on the CPU: {reference_s * 1e3:.0f} ms")
else:
    print(f"simulator, forward + backward: {kernel_s:.1f} s (Python threads; not a GPU timing), "
          f"NumPy reference: {reference_s * 1e3:.1f} ms")

# %% [markdown]
# In the simulator the relative errors are float32 rounding (around $10^{-7}$), for the output and all three
# gradients: the block layout, the barriers and the ownership of every written number are right. What the
# simulator cannot show is speed, nor every GPU fault (its Python threads are scheduled by the interpreter, not
# in warps, so a race may happen not to show there); `tests/test_kernels_cuda.py` repeats the check on a GPU when there is one.
#
# ## Summary
# - A kernel runs as a grid of blocks of threads; a thread finds its data from `blockIdx` and `threadIdx`. Threads
#   of a block share fast shared memory and meet at `cuda.syncthreads()`, which every thread of the block must reach.
# - `flash_cuda`'s forward: one block per (query tile, sample x head), one thread per query row with its online
#   softmax state in registers, each $K$/$V$ tile copied once into shared memory and read by all the block's
#   threads, two barriers per tile.
# - The backward is three kernels (`_row_dot`, `dkdv`, `dq`), each the only writer of its outputs: no atomics, at
#   the cost of computing the scores twice.
# - In the simulator (no GPU here) the kernel matches the reference to float32 rounding; the simulator's times
#   are not GPU times.
#
# ## Exercises
# 1. Move the `cuda.syncthreads()` in `block_sums`'s loop inside the `if t < s:`. What does the CUDA programming
#    guide say about such a barrier, and does the simulator catch it?
# 2. With $D = 64$ and 64 x 64 tiles the forward declares 32 KB of shared memory per block. How many such blocks
#    fit on one multiprocessor with 228 KB (an H100 or H200), and how many threads is that?
# 3. For $T = 1$ (decoding one token) the forward launches $B \cdot H$ blocks of which only one thread per block
#    does work. Propose a layout for decoding (for instance split the keys among the threads and combine their
#    $(m, \ell, \mathrm{acc})$ as in lesson 22's merge).

# %% [markdown]
# ## Check

# %%
assert sums_error < 1e-5, sums_error
assert SIM or GPU                                                   # the kernels ran somewhere
assert all(g.dtype == np.float32 for g in got)
assert got[0].shape == (B, H, T, D) and got[2].shape == (B, Hkv, S, D)
assert max(rel.values()) < 2e-5, rel                                # float32-accurate, as the tests require
assert launches(4, 16, 4, 2048, 2048, 64)["forward"] == ((32, 64), 64, 32768)
print("lesson 24 OK")
