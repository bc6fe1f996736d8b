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
# # Lesson 14 — RMSNorm
#
# **You will learn**
# - RMSNorm (均方根归一化, root mean square normalization), the norm of LLaMA, ChatGLM2 and GLM-4: LayerNorm
#   without the mean and without the bias;
# - its backward pass, derived by hand, and why the gradient is orthogonal to the input;
# - how RMSNorm and LayerNorm differ geometrically (a picture in two dimensions);
# - what dropping the mean saves, measured against LayerNorm.
#
# Lesson 03 built LayerNorm: subtract the mean, divide by the standard deviation, scale and shift.
# Zhang and Sennrich (2019) asked which half of that does the work. Their answer: the re-scaling. Dividing by
# the size of the vector keeps activations from growing or shrinking through depth; re-centering adds little.
# So they removed it, and the mean's reduction and subtraction with it.

# %%
import os
import time

import matplotlib.pyplot as plt
import numpy as np

from minigpt.gradcheck import check_gradients, rel_error
from minigpt.layers.norms import layernorm_backward, layernorm_forward, rmsnorm_backward, rmsnorm_forward
from minigpt.viz import save_figure

FAST = os.environ.get("MINIGPT_FAST") == "1"

# %% [markdown]
# ## The forward pass
#
# For one C-vector $x$ (one token's channels) and a learned gain $w \in \mathbb{R}^C$:
#
# $$ r = \sqrt{\tfrac{1}{C}\textstyle\sum_{c} x_c^2 + \varepsilon}, \qquad \hat{x} = \frac{x}{r}, \qquad y = w \odot \hat{x}. $$
#
# $r$ is the root mean square of $x$, so $\hat x$ has root mean square 1: $\|\hat x\|^2 = C$ (a little less
# because of $\varepsilon$), every $\hat x$ lies on the sphere of radius $\sqrt C$. Compare LayerNorm:
#
# | | LayerNorm | RMSNorm |
# |---|---|---|
# | centre | $x - \mu$ | (none) |
# | divide by | $\sqrt{\operatorname{var}(x) + \varepsilon}$ | $\sqrt{\operatorname{mean}(x^2) + \varepsilon}$ |
# | parameters | gain $w$ and bias $b$ ($2C$) | gain $w$ ($C$) |
# | invariant to | $x \to \alpha x + \beta\mathbf{1}$ | $x \to \alpha x$ ($\alpha > 0$) |
#
# When the mean of $x$ is already zero, $\operatorname{mean}(x^2) = \operatorname{var}(x)$ and the two coincide (with $b = 0$).
#
# ## The backward pass
#
# Let $g = \partial L/\partial \hat x = \mathrm{d}y \odot w$. The gain is easy: $w_c$ multiplies $\hat x_c$ of every
# token $n$, so $\partial L / \partial w = \sum_n \mathrm{d}y_n \odot \hat x_n$.
#
# For $x$, every $\hat x_c = x_c / r$ depends on every $x_k$ through $r$. From $r^2 = \frac1C\sum_c x_c^2 + \varepsilon$,
# $2r\,\partial r/\partial x_k = 2x_k/C$, so $\partial r/\partial x_k = x_k/(Cr) = \hat x_k / C$. The quotient rule gives
#
# $$ \frac{\partial \hat x_c}{\partial x_k} = \frac{\delta_{ck}}{r} - \frac{x_c}{r^2}\frac{\hat x_k}{C}
#    = \frac{1}{r}\Big(\delta_{ck} - \frac{\hat x_c \hat x_k}{C}\Big), $$
#
# a Jacobian $J = \frac1r\big(I - \frac1C \hat x \hat x^\top\big)$, symmetric. Then $\mathrm{d}x = J^\top g$:
#
# $$ \boxed{\;\mathrm{d}x = \frac{1}{r}\Big(g - \hat x \cdot \operatorname{mean}_c(g \odot \hat x)\Big)\;} $$
#
# LayerNorm's formula from lesson 03 had one more term, $-\operatorname{mean}(g)$, the gradient of the mean we no longer subtract.
#
# **Reading the formula.** With $\varepsilon = 0$, $\|\hat x\|^2 = C$ and $I - \frac1C\hat x\hat x^\top$ is the projection
# that removes the component along $x$. So $\mathrm{d}x \perp x$: since $y(\alpha x) = y(x)$, moving $x$ along itself
# changes nothing, and the gradient has nothing to say in that direction. With $\varepsilon > 0$ a tiny
# component survives; we compute it below. The factor $1/r$ says: a large input gets a small gradient, as for LayerNorm.

# %% [markdown]
# ## From scratch in NumPy
#
# Five lines, for one batch of vectors. Then the same numbers from `minigpt.layers.norms`.

# %%
rng = np.random.default_rng(0)
B, T, C = 3, 7, 12                                             # odd shapes: T not a power of 2, C not a multiple of 8
eps = 1e-6
x = rng.standard_normal((B, T, C)) * 3.0 + 0.5                 # (B, T, C) float64, mean not zero
w = 1.0 + 0.1 * rng.standard_normal(C)                         # (C,)
dy = rng.standard_normal((B, T, C))                            # (B, T, C) an upstream gradient

r = np.sqrt((x * x).mean(axis=-1, keepdims=True) + eps)        # (B, T, 1) root mean square
xhat = x / r                                                   # (B, T, C)
y = xhat * w                                                   # (B, T, C)
g = dy * w                                                     # (B, T, C) dL/dxhat
dx = (g - xhat * (g * xhat).mean(axis=-1, keepdims=True)) / r  # (B, T, C) the boxed formula
dw = (dy * xhat).sum(axis=(0, 1))                              # (C,)

y_lib, cache = rmsnorm_forward(x, w, eps=eps)                  # (B, T, C)
dx_lib, dw_lib = rmsnorm_backward(dy, cache)                   # (B, T, C), (C,)
print("forward  rel_error vs library:", rel_error(y, y_lib))
print("backward rel_error vs library: dx", rel_error(dx, dx_lib), "| dw", rel_error(dw, dw_lib))

# %% [markdown]
# The gradient is almost orthogonal to $x$. Exactly: $x \cdot \mathrm{d}x = r\,\hat x\cdot\mathrm{d}x
# = (\hat x \cdot g)\big(1 - \|\hat x\|^2/C\big)$, and $\|\hat x\|^2/C = \frac{r^2 - \varepsilon}{r^2}$, so
#
# $$ x \cdot \mathrm{d}x = (\hat x \cdot g)\,\frac{\varepsilon}{r^2}, $$
#
# about $10^{-7}$ of $|\hat x \cdot g|$ here. And scaling $x$ by a positive number leaves $y$ unchanged (up to $\varepsilon$),
# while shifting it does not; LayerNorm ignores both.

# %%
along = (x * dx).sum(axis=-1)                                  # (B, T) x . dx per token
predicted = (xhat * g).sum(axis=-1) * eps / (r[..., 0] * r[..., 0])   # (B, T) the formula above
print("max |x . dx|:", np.abs(along).max(), "| formula:", np.abs(predicted).max(),
      "| rel_error", rel_error(along, predicted))

zeros = np.zeros(C)                                            # (C,) LayerNorm bias
for name, x2 in (("scaled 5x", 5.0 * x), ("shifted +2", x + 2.0)):
    rms_change = np.abs(rmsnorm_forward(x2, w, eps=0.0)[0] - rmsnorm_forward(x, w, eps=0.0)[0]).max()
    ln_change = np.abs(layernorm_forward(x2, w, zeros, eps=0.0)[0] - layernorm_forward(x, w, zeros, eps=0.0)[0]).max()
    print(f"x {name:>10}: RMSNorm output moves {rms_change:.1e}, LayerNorm output moves {ln_change:.1e}")

# %% [markdown]
# ## Gradient check
#
# The library's pair against centered differences, in float64, for both the input and the gain (lesson 01's checker).

# %%
errors = check_gradients(lambda x, w: rmsnorm_forward(x, w, eps=eps), rmsnorm_backward,
                         [x.copy(), w.copy()], names=["x", "w"])
errors_b1 = check_gradients(lambda x, w: rmsnorm_forward(x, w, eps=eps), rmsnorm_backward,
                            [rng.standard_normal((1, 1, 5)), rng.standard_normal(5)], names=["x", "w"])
print("B=3, T=7, C=12:", {k: f"{v:.1e}" for k, v in errors.items()})
print("B=1, T=1, C=5 :", {k: f"{v:.1e}" for k, v in errors_b1.items()})

# %% [markdown]
# ## The picture in two dimensions
#
# With $C = 2$ the difference is stark. RMSNorm sends every point to the circle of radius $\sqrt 2$ (it keeps
# the direction). LayerNorm first subtracts the mean, which leaves $(\frac{a-b}{2}, \frac{b-a}{2})$, a point
# on the line $x_1 + x_2 = 0$, then scales it to variance 1: only two outputs are possible, $(1, -1)$ and
# $(-1, 1)$. In $C$ dimensions LayerNorm keeps $C - 2$ degrees of freedom (no mean, fixed size), RMSNorm
# keeps $C - 1$ (fixed size).

# %%
points = rng.standard_normal((200, 2)) + np.array([1.0, 0.5])           # (N, 2) a blob off the origin
rms_pts, _ = rmsnorm_forward(points, np.ones(2), eps=1e-12)              # (N, 2)
ln_pts, _ = layernorm_forward(points, np.ones(2), np.zeros(2), eps=1e-12)  # (N, 2)

fig, ax = plt.subplots(figsize=(5.2, 5.2))
angle = np.linspace(0, 2 * np.pi, 200)                                    # (200,)
ax.plot(np.sqrt(2) * np.cos(angle), np.sqrt(2) * np.sin(angle), color="lightgrey", lw=1)
ax.scatter(points[:, 0], points[:, 1], s=8, alpha=0.4, label="input x")
ax.scatter(rms_pts[:, 0], rms_pts[:, 1], s=10, label="RMSNorm(x): radius √2")
ax.scatter(ln_pts[:, 0], ln_pts[:, 1], s=80, marker="x", color="crimson", label="LayerNorm(x): ±(1, -1)")
ax.axhline(0, color="grey", lw=0.5)
ax.axvline(0, color="grey", lw=0.5)
ax.set_aspect("equal")
ax.set_xlabel("channel 0")
ax.set_ylabel("channel 1")
ax.set_title("C = 2: where the norms send the points (w = 1)")
ax.legend(loc="lower right", fontsize="small")
picture = save_figure(fig, "14_rmsnorm_vs_layernorm_2d")
print("saved", picture)

# %% [markdown]
# ## What dropping the mean saves
#
# Per row of C numbers, LayerNorm's forward does two reductions (the mean, then the variance of the centered
# vector) and writes a centered copy; RMSNorm does one reduction and no subtraction. The backward loses one
# reduction (mean of $g$) and, with no bias, the $\mathrm{d}b$ column sum. Both are memory-bound: they read
# and write each number a few times and do almost no arithmetic, so the saving shows up as fewer passes over
# memory. Zhang and Sennrich report 7%–64% faster models; the norm alone gains more than a whole model does.
#
# Measured on this machine, float32, the best of several runs (the numbers vary from machine to machine,
# which is why they are printed and never asserted):

# %%
def best_time(fn, repeats):
    """The fastest of `repeats` calls, in milliseconds."""
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return 1000 * min(times)


sizes = [(512, 768)] if FAST else [(4096, 768), (2048, 4096)]   # (N rows = B*T, C)
repeats = 3 if FAST else 15
timings = []
print(f"{'N x C':>12} | {'LN fwd':>8} {'RMS fwd':>8} {'ratio':>6} | {'LN f+b':>8} {'RMS f+b':>8} {'ratio':>6}   (ms)")
for N, Cbig in sizes:
    xb = rng.standard_normal((N, Cbig)).astype(np.float32)      # (N, C)
    wb = np.ones(Cbig, dtype=np.float32)                        # (C,)
    bb = np.zeros(Cbig, dtype=np.float32)                       # (C,)
    dyb = rng.standard_normal((N, Cbig)).astype(np.float32)     # (N, C)
    ln_f = best_time(lambda: layernorm_forward(xb, wb, bb), repeats)
    rms_f = best_time(lambda: rmsnorm_forward(xb, wb), repeats)
    ln_fb = best_time(lambda: layernorm_backward(dyb, layernorm_forward(xb, wb, bb)[1]), repeats)
    rms_fb = best_time(lambda: rmsnorm_backward(dyb, rmsnorm_forward(xb, wb)[1]), repeats)
    timings.append((N, Cbig, ln_f, rms_f, ln_fb, rms_fb))
    print(f"{f'{N} x {Cbig}':>12} | {ln_f:8.2f} {rms_f:8.2f} {ln_f / rms_f:6.2f} | "
          f"{ln_fb:8.2f} {rms_fb:8.2f} {ln_fb / rms_fb:6.2f}")

# %% [markdown]
# A ratio above 1 means RMSNorm is faster by that factor. In a whole model the norms are a few percent of the
# time (the matmuls dominate), so the end-to-end gain is smaller; on a GPU, where a fused norm kernel reads
# $x$ once either way, the gap narrows further. What RMSNorm reliably gives is simplicity: one statistic, one
# parameter vector, and in practice the same quality.

# %% [markdown]
# ## Summary
# - RMSNorm: $y = w \odot x / \sqrt{\operatorname{mean}(x^2) + \varepsilon}$. No centering, no bias; invariant to
#   scaling $x$, not to shifting it. Equal to LayerNorm (with $b = 0$) on zero-mean inputs.
# - Backward: $\mathrm{d}x = \frac1r\big(g - \hat x\,\operatorname{mean}(g \odot \hat x)\big)$ with $g = \mathrm{d}y \odot w$,
#   and $\mathrm{d}w = \sum_n \mathrm{d}y \odot \hat x$: LayerNorm's formula minus the mean term.
# - The gradient is orthogonal to $x$ up to $\varepsilon/r^2$: the norm cannot see the direction it divides out.
# - It saves a reduction and a pass over memory in both directions; LLaMA, ChatGLM2 and GLM-4 use it.
#
# ## Exercises
# 1. Derive $\mathrm{d}x$ for the "pRMSNorm" of the same paper, which estimates $r$ from the first $p\%$ of the
#    channels only. Which entries of the Jacobian become zero?
# 2. Show that LayerNorm(x) = RMSNorm(x − mean(x)) (with $b = 0$) and use it to derive LayerNorm's backward from
#    RMSNorm's by the chain rule through the centering, a projection $I - \frac1C\mathbf{1}\mathbf{1}^\top$.
# 3. Set $\varepsilon = 0$ and feed $x = 0$. What do the forward and the backward return, and why does every
#    real implementation keep $\varepsilon$?
# 4. Time the two norms in float64 as well. Does the ratio change? Why might it?

# %% [markdown]
# ## Check

# %%
assert y_lib.shape == (B, T, C) and dx_lib.shape == (B, T, C) and dw_lib.shape == (C,)
assert rel_error(y, y_lib) < 1e-12 and rel_error(dx, dx_lib) < 1e-12 and rel_error(dw, dw_lib) < 1e-12
assert max(errors.values()) < 1e-6 and max(errors_b1.values()) < 1e-6, (errors, errors_b1)
assert np.allclose(np.sqrt((xhat * xhat).mean(axis=-1)), 1.0, atol=1e-6)        # unit root mean square
assert rel_error(along, predicted) < 1e-6                                         # x . dx = (xhat . g) eps / r^2
xc = x - x.mean(axis=-1, keepdims=True)                                           # (B, T, C) zero-mean input
assert rel_error(rmsnorm_forward(xc, w, eps=1e-5)[0], layernorm_forward(xc, w, zeros, eps=1e-5)[0]) < 1e-12
assert np.allclose(np.abs(ln_pts), 1.0, atol=1e-6) and np.allclose((rms_pts * rms_pts).sum(-1), 2.0, atol=1e-6)
out32, cache32 = rmsnorm_forward(x.astype(np.float32), w.astype(np.float32))
grads32 = rmsnorm_backward(dy.astype(np.float32), cache32)                      # float32 in, float32 out
assert out32.dtype == np.float32 and all(d.dtype == np.float32 for d in grads32)
assert picture.exists() and len(timings) == len(sizes)
print("lesson 14 OK")
