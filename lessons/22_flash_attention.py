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
# # Lesson 22 — Online softmax and flash attention
#
# **You will learn**
# - the online softmax: a softmax computed in one pass over the scores, in pieces, with a running maximum and a
#   running sum that are rescaled as new pieces arrive; derived, and followed step by step on one row;
# - flash attention's forward pass (Dao et al. 2022): tiles of queries against tiles of keys, never the whole
#   $T \times S$ score matrix, saving only the output $O$ and one number per query row, the log-sum-exp $L$;
# - its backward pass by recomputation, with $D_i = \sum_d \mathrm{d}O_{id} O_{id}$ replacing the row sums of $P \odot \mathrm{d}P$; derived;
# - both checked against the NumPy reference on a causal GQA case, the memory measured ($O(T)$ against $O(T^2)$),
#   and a picture of the tiles a causal mask lets the kernel skip.
#
# The textbook chapter stops at the models and does not cover attention kernels, so this lesson has no textbook term.
# The reference attention of lessons 04 and 17 builds the $(T, S)$ probabilities of every head and keeps them for the
# backward pass: at $T = 4096$, 12 heads and float32 that is 768 MiB per sample per layer. Flash attention computes the
# same numbers (up to rounding) with memory linear in $T$. The algorithm is `minigpt.kernels.flash_numpy`; lesson 23
# runs it fast with Numba.

# %%
import math
import os
import tracemalloc

import matplotlib.pyplot as plt
import numpy as np
from matplotlib.patches import Patch

from minigpt.kernels import MaskSpec, dense_mask
from minigpt.kernels.flash_numpy import flash_backward, flash_forward
from minigpt.kernels.masking import tile_all_visible, tile_may_be_visible
from minigpt.layers.attention import attention_backward, attention_forward
from minigpt.masks import attention_mask
from minigpt.viz import save_figure

FAST = os.environ.get("MINIGPT_FAST") == "1"

# %% [markdown]
# ## The online softmax
#
# The stable softmax of a row $s_1 \dots s_n$ subtracts the maximum, $m = \max_j s_j$:
# $\operatorname{softmax}(s)_j = e^{s_j - m} / \ell$ with $\ell = \sum_j e^{s_j - m}$. That seems to need two passes,
# one for $m$ and one for $\ell$. Suppose instead the scores arrive in pieces, and after the first $t$ of them we hold
# $m_t = \max_{j \le t} s_j$ and $\ell_t = \sum_{j \le t} e^{s_j - m_t}$. A new piece with scores $s_j$, $j \in$ new, gives
#
# $$ m_{t+1} = \max\big(m_t, \max_{j \in \text{new}} s_j\big), \qquad
#    \ell_{t+1} = \underbrace{e^{m_t - m_{t+1}}}_{\alpha}\, \ell_t + \sum_{j \in \text{new}} e^{s_j - m_{t+1}} , $$
#
# because every old term $e^{s_j - m_t}$ becomes $e^{s_j - m_{t+1}}$ when multiplied by $\alpha = e^{m_t - m_{t+1}} \le 1$.
# No exponent is ever positive, so nothing overflows. Attention wants $\sum_j \operatorname{softmax}(s)_j\, v_j$, and the
# same trick carries an unnormalised output: $\mathrm{acc}_{t+1} = \alpha\, \mathrm{acc}_t + \sum_{j \in \text{new}} e^{s_j - m_{t+1}} v_j$.
# At the end $\mathrm{acc}/\ell$ is exactly $\sum_j \operatorname{softmax}(s)_j v_j$: every term carries the same factor
# $e^{-m}/\ell$. This is Milakov and Gimelshein's (2018) online softmax. One row of 12 scores, in pieces of 4:

# %%
rng = np.random.default_rng(0)
s = rng.standard_normal(12) * 3                                 # (12,) one row of scores
vals = rng.standard_normal((12, 2))                             # (12, 2) the values they weight
m, l, acc = -np.inf, 0.0, np.zeros(2)                           # nothing seen yet
print(f"{'piece':>5} {'max of piece':>12} {'m':>7} {'alpha':>7} {'l':>8}")
for t, c0 in enumerate(range(0, 12, 4)):
    piece = s[c0:c0 + 4]                                        # (4,)
    m_new = max(m, piece.max())
    alpha = math.exp(m - m_new)                                 # rescales the old sums (0 on the first piece)
    p = np.exp(piece - m_new)                                   # (4,)
    l = alpha * l + p.sum()
    acc = alpha * acc + p @ vals[c0:c0 + 4]                     # (2,)
    m = m_new
    print(f"{t:>5} {piece.max():>12.3f} {m:>7.3f} {alpha:>7.3f} {l:>8.4f}")
softmax = np.exp(s - s.max()) / np.exp(s - s.max()).sum()       # (12,) the two-pass softmax
online_error = max(abs(acc / l - softmax @ vals).max(), abs(m + math.log(l) - np.log(np.exp(s).sum())))
print("online acc / l vs softmax @ v, and m + log l vs log-sum-exp: max abs error", f"{online_error:.1e}")

# %% [markdown]
# $m + \log \ell = \log \sum_j e^{s_j}$ is the row's **log-sum-exp** $L$. It is all that is needed to rebuild any
# probability later in one step: $p_j = e^{s_j - L}$.
#
# ## The tiled forward
#
# Cut the queries into tiles of $B_q$ rows and the keys into tiles of $B_k$ columns. For one query tile, walk the
# key tiles left to right with the per-row $m, \ell, \mathrm{acc}$ above:
#
# $$ S = \tfrac{1}{\sqrt D} Q_{\text{tile}} K_{\text{tile}}^\top \ (\text{masked} \to -\infty), \quad
#    m' = \max(m, \operatorname{rowmax} S), \quad P = e^{S - m'}, \quad \alpha = e^{m - m'}, $$
# $$ \ell \leftarrow \alpha \ell + \operatorname{rowsum} P, \qquad \mathrm{acc} \leftarrow \alpha\, \mathrm{acc} + P V_{\text{tile}}, $$
#
# then $O = \mathrm{acc} / \ell$ and $L = m + \log \ell$. At any moment only one $(B_q, B_k)$ tile of scores exists. The
# forward saves $O$ $(B, H, T, D)$ and $L$ $(B, H, T)$, nothing of size $T \times S$. A key tile that the mask hides
# completely (for a causal mask, every tile above the diagonal) is skipped without computing anything. With GQA
# (lesson 17) query head $h$ simply reads kv head $\lfloor h / g \rfloor$.
#
# Here it is from scratch for one head and a causal mask, checked against the reference; then the library's
# `flash_forward` (the same loop, plus batches, heads, GQA and every mask of `MaskSpec`).

# %%
def flash_one_head(q, k, v, block=16):
    """Causal attention of one head, q, k, v (T, D), by tiles with an online softmax -> O (T, D), L (T,)."""
    T, D = q.shape
    O, L = np.empty_like(q), np.empty(T)
    for r0 in range(0, T, block):                               # one query tile: rows r0 .. r1-1
        r1 = min(r0 + block, T)
        i = np.arange(r0, r1)[:, None]                          # (Bq, 1) query positions
        m, l, acc = np.full(r1 - r0, -np.inf), np.zeros(r1 - r0), np.zeros((r1 - r0, D))
        for c0 in range(0, r1, block):                          # key tiles after the last query are skipped
            c1 = min(c0 + block, T)
            j = np.arange(c0, c1)[None, :]                      # (1, Bk) key positions
            S = np.where(j <= i, q[r0:r1] @ k[c0:c1].T / math.sqrt(D), -np.inf)   # (Bq, Bk) causal
            m_new = np.maximum(m, S.max(axis=1))                # (Bq,) never -inf: key c0 <= every query here
            P = np.exp(S - m_new[:, None])                      # (Bq, Bk)
            alpha = np.exp(m - m_new)                           # (Bq,)
            l = alpha * l + P.sum(axis=1)
            acc = alpha[:, None] * acc + P @ v[c0:c1]           # (Bq, D)
            m = m_new
        O[r0:r1], L[r0:r1] = acc / l[:, None], m + np.log(l)
    return O, L


T1, D1 = 50, 8
q1, k1, v1 = (rng.standard_normal((1, 1, T1, D1)) for _ in range(3))   # (1, 1, T, D)
O1, L1 = flash_one_head(q1[0, 0], k1[0, 0], v1[0, 0])
ref1, _ = attention_forward(q1, k1, v1, mask=attention_mask(T1))
scratch_error = abs(O1 - ref1[0, 0]).max()
print(f"from scratch, T = {T1}, tiles of 16: max |O - reference| = {scratch_error:.1e}")

# %% [markdown]
# ## The backward, by recomputation
#
# Per row $i$, with $P_{ij} = e^{S_{ij} - L_i}$, $O_i = \sum_j P_{ij} V_j$ and $\mathrm{d}O$ given, lesson 04's backward is
#
# $$ \mathrm{d}V_j = \sum_i P_{ij}\, \mathrm{d}O_i, \quad \mathrm{d}P_{ij} = \mathrm{d}O_i \cdot V_j, \quad
#    \mathrm{d}S_{ij} = P_{ij}\Big(\mathrm{d}P_{ij} - \sum_{j'} P_{ij'}\, \mathrm{d}P_{ij'}\Big), \quad
#    \mathrm{d}Q_i = \tfrac{1}{\sqrt D}\sum_j \mathrm{d}S_{ij} K_j, \quad \mathrm{d}K_j = \tfrac{1}{\sqrt D}\sum_i \mathrm{d}S_{ij} Q_i . $$
#
# The row sum in $\mathrm{d}S$ runs over all keys, which a tile does not have. But
#
# $$ D_i \equiv \sum_{j} P_{ij}\, \mathrm{d}P_{ij} = \sum_j P_{ij}\, (\mathrm{d}O_i \cdot V_j)
#    = \mathrm{d}O_i \cdot \Big(\sum_j P_{ij} V_j\Big) = \mathrm{d}O_i \cdot O_i = \operatorname{rowsum}(\mathrm{d}O \odot O)_i , $$
#
# a $D$-long dot product known before any tile is touched. So the backward computes $D$ once, then revisits every
# (query tile, key tile) pair: recompute $S$, rebuild $P = e^{S - L}$ (the forward's probabilities exactly, with no
# new softmax), and accumulate $\mathrm{d}V \mathrel{+}= P^\top \mathrm{d}O$, $\mathrm{d}P = \mathrm{d}O\, V^\top$,
# $\mathrm{d}S = P \odot (\mathrm{d}P - D)$, $\mathrm{d}Q \mathrel{+}= \mathrm{d}S\, K / \sqrt D$,
# $\mathrm{d}K \mathrel{+}= \mathrm{d}S^\top Q / \sqrt D$. Recomputing $S$ costs one more tile matmul than storing
# $P$ would; it saves the $T \times S$ memory. First the identity on the reference's own numbers, then
# the library's forward and backward against the reference on a causal GQA case in float64
# (8 query heads, 2 kv heads, $T$ not a multiple of the tile).

# %%
B, H, Hkv, T, D = 2, 8, 2, 150, 16
q = rng.standard_normal((B, H, T, D))                           # (B, H, T, D)
k = rng.standard_normal((B, Hkv, T, D))                         # (B, Hkv, T, D)
v = rng.standard_normal((B, Hkv, T, D))                         # (B, Hkv, T, D)
dO = rng.standard_normal((B, H, T, D))                          # (B, H, T, D)
spec = MaskSpec()                                               # causal
mask = dense_mask(spec, B, T, T)                                # (B, T, T) the same rule as a dense array
assert (mask == attention_mask(T)).all()

ref_out, cache = attention_forward(q, k, v, mask=mask)
ref_grads = attention_backward(dO, cache)                       # dq, dk, dv
P = cache.probs.reshape(B, H, T, T)                             # (B, H, T, T) what the reference keeps
dP = dO @ np.repeat(v, H // Hkv, axis=1).swapaxes(-1, -2)       # (B, H, T, T)
identity_error = abs((P * dP).sum(-1) - (dO * ref_out).sum(-1)).max()
print(f"rowsum(P * dP) vs rowsum(dO * O): max abs difference {identity_error:.1e}")

O, L = flash_forward(q, k, v, spec, block_q=32, block_k=32)    # O (B, H, T, D), L (B, H, T)
grads = flash_backward(q, k, v, O, L, dO, spec, block_q=32, block_k=32)
errors = {"O": abs(O - ref_out).max()}
errors.update({name: abs(a - b).max() for name, a, b in zip(("dq", "dk", "dv"), grads, ref_grads)})
s_full = q @ np.repeat(k, H // Hkv, axis=1).swapaxes(-1, -2) / math.sqrt(D)   # (B, H, T, T) all scores
s_full = np.where(mask[:, None], s_full, -np.inf)                               # causal
errors["L"] = abs(L - np.log(np.exp(s_full).sum(-1))).max()
print("flash_numpy vs reference, float64, causal GQA 8/2, T = 150, tiles 32x32, max abs error:")
print("   ", {name: f"{e:.1e}" for name, e in errors.items()})

# %% [markdown]
# ## Memory: $O(T)$ against $O(T^2)$
#
# `tracemalloc` sees every NumPy array. We measure the peak of one forward plus one backward, beyond the inputs, for
# one sample with 4 heads ($D = 32$, float64) at a few $T$. The reference's peak holds several $(H, T, T)$ arrays at once
# (scores, probabilities, their gradients); flash attention holds $O$, $L$, the gradients and one tile.

# %%
def peak_bytes(fn):
    """Peak bytes NumPy allocates while fn() runs (tracemalloc), beyond what was live before."""
    tracemalloc.start()
    before = tracemalloc.get_traced_memory()[0]
    fn()
    peak = tracemalloc.get_traced_memory()[1] - before
    tracemalloc.stop()
    return peak


def reference_step(q, k, v, do):
    out, cache = attention_forward(q, k, v, mask=attention_mask(q.shape[2]))
    return attention_backward(do, cache)


def flash_step(q, k, v, do):
    out, L = flash_forward(q, k, v, MaskSpec())
    return flash_backward(q, k, v, out, L, do, MaskSpec())


Ts = (128, 256, 512) if FAST else (256, 512, 1024)
memory = {}
print(f"{'T':>5} | {'reference MiB':>13} {'flash MiB':>9} | {'ratio':>6}")
for Tm in Ts:
    x = [rng.standard_normal((1, 4, Tm, 32)) for _ in range(4)]   # q, k, v, dO (1, 4, T, 32)
    memory[Tm] = (peak_bytes(lambda: reference_step(*x)), peak_bytes(lambda: flash_step(*x)))
    print(f"{Tm:>5} | {memory[Tm][0] / 2**20:>13.2f} {memory[Tm][1] / 2**20:>9.2f} | "
          f"{memory[Tm][0] / memory[Tm][1]:>6.1f}")
growth = [(memory[b][0] / memory[a][0], memory[b][1] / memory[a][1]) for a, b in zip(Ts, Ts[1:])]
print("each doubling of T multiplies the reference's peak by",
      ", ".join(f"{r:.2f}" for r, _ in growth), "and flash's by", ", ".join(f"{f:.2f}" for _, f in growth))

# %% [markdown]
# The reference's peak grows about four-fold per doubling of $T$ (the $T^2$ arrays dominate), flash attention's
# two-fold: at the largest $T$ above the gap is already more than an order of magnitude, and it widens
# linearly with $T$. (Lesson 23's kernel in Numba keeps the same memory and is also fast.)
#
# ## Which tiles a causal mask skips
#
# For $T = 512$ and $64 \times 64$ tiles, the grid of (query tile, key tile) pairs. `tile_may_be_visible` says a tile
# has no visible pair at all: skipped, no matmul. `tile_all_visible` says every pair is visible: no per-element mask
# test. Only the diagonal tiles need the element-wise mask.

# %%
Tg, blk = 512, 64
n = Tg // blk
kind = np.zeros((n, n), dtype=int)                              # 0 skipped, 1 partial, 2 full
for a in range(n):
    for b in range(n):
        box = (a * blk, a * blk + blk - 1, b * blk, b * blk + blk - 1)   # i_lo, i_hi, j_lo, j_hi
        if tile_may_be_visible(*box, 0, 0, 0, 0):             # prefix 0, pad 0, no local window
            kind[a, b] = 2 if tile_all_visible(*box, 0, 0, 0, 0) else 1
counts = {name: int((kind == c).sum()) for c, name in enumerate(("skipped", "partial", "full"))}
colours = ["#dddddd", "#f4a261", "#2a9d8f"]
fig, ax = plt.subplots(figsize=(4.6, 4.2))
ax.imshow(kind, cmap=plt.matplotlib.colors.ListedColormap(colours), vmin=0, vmax=2)
ax.set_xticks(range(n), [f"{b * blk}" for b in range(n)], fontsize=7)
ax.set_yticks(range(n), [f"{a * blk}" for a in range(n)], fontsize=7)
ax.set_xlabel("key tile (first position)")
ax.set_ylabel("query tile (first position)")
ax.set_title(f"causal, T = {Tg}, {blk}x{blk} tiles: {counts['skipped']} of {n * n} skipped")
ax.legend(handles=[Patch(color=c, label=f"{name} ({counts[name]})") for c, name in zip(colours, counts)],
          loc="upper right", fontsize=7)
tile_png = save_figure(fig, "22_causal_tiles")
print(counts, "saved", tile_png)

# %% [markdown]
# 28 of 64 tiles are skipped: the kernel computes 36 of 64 tiles, 56% of the unmasked work (the 8 diagonal
# tiles are computed whole and then about half masked). With $n$ tiles per side it computes $n(n+1)/2$ of $n^2$, which
# tends to one half as $T$ grows: that is where a causal flash kernel gets its factor of two.
#
# ## Summary
# - Online softmax: keep a running max $m$ and sum $\ell$; a new piece rescales the old sum (and the old output) by
#   $\alpha = e^{m_{\text{old}} - m_{\text{new}}}$. The result equals the two-pass softmax exactly up to rounding.
# - Flash forward: query tiles against key tiles, one $(B_q, B_k)$ score tile at a time; saves $O$ and
#   $L = m + \log \ell$, so memory is $O(T)$, and fully masked tiles are skipped (about half the work when causal).
# - Flash backward: $D_i = \operatorname{rowsum}(\mathrm{d}O \odot O)_i$ replaces $\sum_j P_{ij} \mathrm{d}P_{ij}$,
#   and $P = e^{S - L}$ is recomputed tile by tile: two extra matmul passes instead of $T^2$ memory.
# - Checked in float64 against the reference on causal GQA: errors near $10^{-15}$.
#
# ## Exercises
# 1. Change the online-softmax cell to process the row in pieces of 1, then of 12. Which quantities change, and
#    which do not?
# 2. In `flash_one_head`, replace `m_new` by a fixed $m = 0$ (no running max). Feed scores scaled by 100 and watch what
#    breaks, and why the running max cannot be skipped in float32.
# 3. Count the tiles skipped for a sliding window of $W = 128$ at $T = 512$ (`tile_may_be_visible` with `local = 2`,
#    `window = 128`). What fraction of the full work is left, and how does it scale with $T$?
# 4. The backward needs $O$ only through $D_i$. Store $D$ instead of $O$ in the forward: what does it save, and what
#    does a caller of the layer lose?

# %% [markdown]
# ## Check

# %%
assert online_error < 1e-12 and scratch_error < 1e-12 and identity_error < 1e-12
assert max(errors.values()) < 1e-10, errors                                    # flash == reference, float64
assert O.shape == (B, H, T, D) and L.shape == (B, H, T)
assert grads[0].shape == q.shape and grads[1].shape == k.shape and grads[2].shape == v.shape
assert all(2.5 < r < 4.5 and 1.5 < f < 2.5 for r, f in growth), growth          # T^2 against T
assert memory[Ts[-1]][0] > 8 * memory[Ts[-1]][1], memory
assert counts == {"skipped": 28, "partial": 8, "full": 28}, counts
assert tile_png.exists()
print("lesson 22 OK")
