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
# # Lesson 23 — A Numba CPU kernel for flash attention
#
# **You will learn**
# - what Numba's `@njit` does (compiles a Python function of loops and NumPy arrays to machine code on its first
#   call), and what `parallel=True` with `prange` adds (the loop's iterations are shared among threads);
# - how `minigpt.kernels.flash_cpu` runs lesson 22's algorithm in parallel: the forward over query tiles, the backward
#   over (batch, kv head) pairs, and why that choice means no two threads ever add into the same $\mathrm{d}K$ or $\mathrm{d}V$;
# - the kernel checked against the NumPy reference in float32 and float64, and timed against it, in ms and GFLOP/s.
#
# Lesson 22's `flash_numpy` has the right memory but is slow: Python walks every tile, and each step is a small NumPy
# call. `flash_cpu` is the same algorithm, step for step, with the loops compiled and the tile products sent to BLAS.
# The textbook does not cover kernels, so there is no textbook term here. This lesson compiles several kernels:
# expect about 15 s of compilation on 2 cores, in the fast mode too.

# %%
import math
import os
import time

import numba
import numpy as np
from numba import njit, prange

from minigpt.kernels import MaskSpec, dense_mask
from minigpt.kernels.flash_cpu import default_blocks, flash_backward, flash_forward
from minigpt.layers.attention import attention_backward, attention_forward

FAST = os.environ.get("MINIGPT_FAST") == "1"
print("Numba", numba.__version__, "threads:", numba.get_num_threads())

# %% [markdown]
# ## `@njit`, `parallel=True` and `prange`
#
# `@njit` ("no Python" mode) reads the function's types from the arguments of its first call, compiles it with LLVM,
# and from then on runs machine code: loops over array elements cost what they cost in C. A new argument type
# (float64 after float32) triggers another compilation. With `parallel=True`, a loop written `for i in prange(n)` is
# split into chunks run by a pool of threads (`numba.get_num_threads()`, set by `NUMBA_NUM_THREADS`). Numba does
# not check for races: if two iterations write the same element, the result is wrong, silently. Each iteration
# must own what it writes.
#
# A small example in the shape of attention: the log-sum-exp of every row of a matrix, each row an independent
# iteration, so each thread writes only its own rows of `out`. The first call includes the compilation.

# %%
@njit(parallel=True)
def row_logsumexp(s):
    """out[i] = log(sum_j exp(s[i, j])), stable; rows in parallel. s (n, m) -> (n,)"""
    n, m = s.shape
    out = np.empty(n, dtype=s.dtype)
    for i in prange(n):                                         # each thread takes a chunk of rows
        mx = -np.inf
        for j in range(m):                                      # the row's max
            mx = max(mx, s[i, j])
        total = 0.0
        for j in range(m):                                      # the row's sum of exp(s - max)
            total += math.exp(s[i, j] - mx)
        out[i] = mx + math.log(total)                           # written by this iteration only
    return out


rng = np.random.default_rng(0)
s = rng.standard_normal((2000, 1000))                           # (2000, 1000)
lse_numpy = np.log(np.exp(s - s.max(1, keepdims=True)).sum(1)) + s.max(1)   # (2000,)
start = time.perf_counter()
lse = row_logsumexp(s)                                          # compiles, then runs
first_call = time.perf_counter() - start
start = time.perf_counter()
lse = row_logsumexp(s)
second_call = time.perf_counter() - start
start = time.perf_counter()
np.log(np.exp(s - s.max(1, keepdims=True)).sum(1)) + s.max(1)
numpy_call = time.perf_counter() - start
lse_error = abs(lse - lse_numpy).max()
print(f"first call {first_call * 1e3:.0f} ms (compilation included), second call {second_call * 1e3:.1f} ms, "
      f"NumPy {numpy_call * 1e3:.1f} ms; max |difference| {lse_error:.1e}")

# %% [markdown]
# ## How `flash_cpu` parallelises
#
# **Forward.** Every query tile is independent: it reads $q$, $K$, $V$ and writes only its own rows of $O$ and $L$.
# With GQA the $g$ query heads of one kv head read the same $K$ and $V$, so `flash_cpu` takes a query tile from all
# $g$ of them at once, their rows stacked into one matrix, and multiplies each key tile once for all of them. The work
# items are $B \cdot H_{kv} \cdot \lceil T / B_q \rceil$ (query tile, kv head, sample) triples, and `prange` deals
# them to the threads. Inside an item the key-tile loop is lesson 22's online softmax, compiled, with the
# two tile products $Q K^\top$ and $P V$ done by BLAS's gemm, $C \leftarrow \alpha\, AB + \beta C$
# (`kernels/blas_cpu.py`): $\alpha$ carries the $1/\sqrt{D}$ scale and $\beta = 1$ adds $PV$ into the running
# output in place (and, in the backward, each tile's share into $\mathrm{d}Q$, $\mathrm{d}K$, $\mathrm{d}V$).
#
# **Backward.** Here tiles are not independent: $\mathrm{d}Q$ of a query tile sums over key tiles, and
# $\mathrm{d}K$, $\mathrm{d}V$ of a key tile sum over all query tiles *and*, with GQA, over the $g$ query heads that
# share the kv head (lesson 17). If items were query tiles, two threads could add into the same $\mathrm{d}K$ rows at
# once and lose updates. `flash_cpu` instead makes one item per (sample $b$, kv head $j$): that item owns
# $\mathrm{d}K[b, j]$, $\mathrm{d}V[b, j]$, and $\mathrm{d}Q$ of query heads $jg \dots jg + g - 1$, the only heads that
# read kv head $j$. No element has two writers, so there are no atomics and no per-thread copies to add up.
# The price: only $B \cdot H_{kv}$ items, fewer than the threads when the batch is small and $H_{kv}$ is 1 or 2.
# The table shows who writes what for $B = 2$, $H = 8$, $H_{kv} = 2$.

# %%
Bo, Ho, Hkvo = 2, 8, 2
go = Ho // Hkvo
owners = {}                                                     # (array, b, head) -> the backward item writing it
for item in range(Bo * Hkvo):
    b, j = item // Hkvo, item % Hkvo                            # as in _backward_kernel: item = b * Hkv + kvh
    for name, heads in (("dk", [j]), ("dv", [j]), ("dq", range(j * go, j * go + go))):
        for h in heads:
            assert (name, b, h) not in owners                   # a second writer would be a race
            owners[(name, b, h)] = item
    print(f"item {item}: b = {b}, kv head {j}: writes dk[{b},{j}], dv[{b},{j}], dq[{b},{j * go}:{j * go + go}]")
print(f"{len(owners)} (array, sample, head) blocks, each with exactly one writer; "
      f"{Bo * Hkvo} items for {numba.get_num_threads()} threads")

# %% [markdown]
# ## Checked against the reference
#
# A causal GQA case (8 query heads, 2 kv heads, $T$ not a multiple of the 64-row tile, $D = 32$). In float64 the
# kernel agrees with the reference to rounding; in float32 we compare both float32 results with the float64 reference
# and report the relative error $\max|x - x_{64}| / \max|x_{64}|$: the kernel should be as close as the reference is.
# The first calls compile the forward and the backward, once per dtype.

# %%
B, H, Hkv, T, D = 2, 8, 2, 200, 32
spec = MaskSpec()                                               # causal
mask = dense_mask(spec, B, T, T)                                # (B, T, T)
x64 = [rng.standard_normal((B, H, T, D)), rng.standard_normal((B, Hkv, T, D)),
       rng.standard_normal((B, Hkv, T, D)), rng.standard_normal((B, H, T, D))]   # q, k, v, dO


def reference(q, k, v, do):
    out, cache = attention_forward(q, k, v, mask=mask)
    return (out, *attention_backward(do, cache))               # out, dq, dk, dv


def flash(q, k, v, do):
    out, L = flash_forward(q, k, v, spec)
    return (out, *flash_backward(q, k, v, out, L, do, spec))


compile_s = {}
results = {}
for dtype in (np.float64, np.float32):
    args = [x.astype(dtype) for x in x64]
    start = time.perf_counter()
    results["flash", dtype] = flash(*args)                      # first call of this dtype: compiles
    compile_s[dtype] = time.perf_counter() - start
    results["reference", dtype] = reference(*args)
names = ("out", "dq", "dk", "dv")
err64 = {n: abs(a - b).max() for n, a, b in zip(names, results["flash", np.float64], results["reference", np.float64])}
rel32 = {impl: {n: abs(a - b).max() / abs(b).max() for n, a, b in zip(names, results[impl, np.float32],
                                                                         results["reference", np.float64])}
         for impl in ("flash", "reference")}
print("first call (compile + run):", {np.dtype(t).name: f"{s:.1f} s" for t, s in compile_s.items()})
print("float64, flash-cpu vs reference, max abs error:", {n: f"{e:.1e}" for n, e in err64.items()})
for impl in ("flash", "reference"):
    print(f"float32 {impl:>9} vs float64 reference, rel error:", {n: f"{e:.1e}" for n, e in rel32[impl].items()})

# %% [markdown]
# ## Timed against the reference
#
# One sample, 8 heads, $D = 64$, float32, causal, at two lengths. Each time is the best of two runs after a warm-up
# (the kernels are compiled already; a first call would add the seconds above). The GFLOP/s are nominal, as in
# `benchmarks/attention.py`: the forward counts $4 B H T^2 D$ operations (two matmuls of $2 B H T^2 D$), halved for
# causal, the backward 2.5 times the forward; the same count for both, so the column compares times. For larger shapes and torch's
# SDPA, run `python benchmarks/attention.py`.

# %%
def best_of(fn, repeats):
    fn()                                                        # warm-up
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times)


def gflops(B, H, T, D, seconds, backward):
    """Nominal GFLOP/s: forward 4*B*H*T^2*D halved for causal, backward 2.5x the forward."""
    return 4 * B * H * T * T * D / 2 * (3.5 if backward else 1.0) / seconds / 1e9


Bt, Ht, Dt = 1, 8, 64
Tt = (512, 1024) if FAST else (1024, 2048)
timing = {}
print(f"{'T':>5} {'impl':<10} {'fwd ms':>8} {'GFLOP/s':>8} {'fwd+bwd ms':>11} {'GFLOP/s':>8}")
for Tn in Tt:
    q, k, v, do = (rng.standard_normal((Bt, Ht, Tn, Dt)).astype(np.float32) for _ in range(4))
    spec_t, mask_t = MaskSpec(), dense_mask(MaskSpec(), Bt, Tn, Tn)
    impls = {
        "reference": (lambda: attention_forward(q, k, v, mask=mask_t),
                      lambda: attention_backward(do, attention_forward(q, k, v, mask=mask_t)[1])),
        "flash-cpu": (lambda: flash_forward(q, k, v, spec_t),
                      lambda: flash_backward(q, k, v, *flash_forward(q, k, v, spec_t), do, spec_t)),
    }
    for name, (fwd, fwd_bwd) in impls.items():
        t_f, t_fb = best_of(fwd, 2), best_of(fwd_bwd, 2)
        timing[Tn, name] = (t_f, t_fb)
        print(f"{Tn:>5} {name:<10} {t_f * 1e3:>8.1f} {gflops(Bt, Ht, Tn, Dt, t_f, False):>8.1f} "
              f"{t_fb * 1e3:>11.1f} {gflops(Bt, Ht, Tn, Dt, t_fb, True):>8.1f}")
speedup = {Tn: timing[Tn, "reference"][1] / timing[Tn, "flash-cpu"][1] for Tn in Tt}
print("fwd+bwd speed-up of flash-cpu over the reference:", {Tn: f"{s:.1f}x" for Tn, s in speedup.items()},
      f"(tiles {default_blocks(Dt)})")

# %% [markdown]
# From $T \approx 1024$ the kernel is several times faster (3x to 15x in our runs on 2 busy cores): the reference writes
# and reads several $(H, T, T)$ arrays through memory and computes the masked half of the scores too, while the kernel
# skips the hidden tiles and keeps each tile in cache. At short lengths it need not win: starting a parallel region costs a fixed few milliseconds (more on a busy
# machine, where a thread waits for a free core), and at $T = 256$ in one test run the reference was twice as fast.
# The numbers depend on the machine, its load and the BLAS threads (`OPENBLAS_NUM_THREADS`); the table is what
# this run measured.
#
# **Threads.** Numba's default threading layer on these machines is OpenMP, and DESIGN.md §4 records that right
# after a Numba parallel kernel, torch's OpenMP threads in the same process ran four times slower, so a program that
# mixes the two should set `NUMBA_THREADING_LAYER=workqueue` before the first kernel runs (the benchmark instead
# times each implementation in its own process).
#
# ## Summary
# - `@njit` compiles on the first call for each argument type (seconds here); later calls run machine code.
#   `parallel=True` with `prange` shares a loop's iterations among threads, and the iterations must not write the same data.
# - `flash_cpu`'s forward parallelises over (sample, kv head, query tile); its backward over (sample, kv head), so each
#   item owns its $\mathrm{d}K$, $\mathrm{d}V$ and the $\mathrm{d}Q$ of its $g$ query heads: no races, no atomics.
# - It matches the reference to about $10^{-15}$ in float64 and is as accurate as the reference in float32,
#   with lesson 22's $O(T)$ memory; from $T \approx 1024$ it is several times faster than the reference (not
#   necessarily at short $T$, where fixed costs dominate).
#
# ## Exercises
# 1. Time `row_logsumexp` with `numba.set_num_threads(1)` and with all threads. How close to linear is the speed-up,
#    and why can a loop of 2000 rows not use many more threads well?
# 2. Write a `prange` loop over query tiles that adds into a shared `dk`, run it twice on the same input, and compare:
#    the race the backward's (sample, kv head) items avoid.
# 3. For MQA with $B = 1$ ($H_{kv} = 1$) the backward has a single item. Propose another split (for instance over
#    key tiles, each owning rows of $\mathrm{d}K$, $\mathrm{d}V$) and say what it must do about $\mathrm{d}Q$.

# %% [markdown]
# ## Check

# %%
assert lse_error < 1e-10
assert len(owners) == Bo * (2 * Hkvo + Ho)                                     # every block has one writer
assert max(err64.values()) < 1e-10, err64                                       # float64 == reference
assert max(rel32["flash"].values()) < 1e-5, rel32                              # float32 is float32-accurate
assert max(rel32["flash"].values()) < 10 * max(rel32["reference"].values()) + 1e-6, rel32
assert all(r.dtype == np.float32 for r in results["flash", np.float32])
assert results["flash", np.float32][2].shape == (B, Hkv, T, D)
assert speedup[Tt[-1]] > 1, speedup                                            # faster than the reference
print("lesson 23 OK")
