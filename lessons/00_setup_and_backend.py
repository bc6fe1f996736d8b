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
# # Lesson 00 — Setup and the array backend
#
# **You will learn**
# - how minigpt writes every layer once and runs it on NumPy (CPU) or CuPy (GPU) through `get_xp`;
# - the shape vocabulary used in every lesson: B batch, T time (sequence position), C channels, V vocabulary;
# - why training uses float32 but gradient checks use float64 (双精度 double precision).
#
# Everything in this course is a plain array computation. A language model maps token ids `(B, T)` to
# logits `(B, T, V)`: for each of the B sequences and each of the T positions, a score for every word of the vocabulary.

# %%
import os

import numpy as np

from minigpt.backend import cupy_available, get_xp, resolve_device, to_numpy

FAST = os.environ.get("MINIGPT_FAST") == "1"

# %% [markdown]
# ## Arrays and shapes
#
# A batch of B=2 sequences of T=5 token ids, embedded into C=4 channels, has shape (B, T, C).
# Reductions name the axis they remove; `keepdims=True` keeps it as size 1 so the result still broadcasts.

# %%
B, T, C = 2, 5, 4
rng = np.random.default_rng(0)
x = rng.standard_normal((B, T, C)).astype(np.float32)     # (B, T, C)
mean = x.mean(axis=-1, keepdims=True)                      # (B, T, 1)
centered = x - mean                                        # (B, T, C): broadcasting repeats the mean over C
print("x", x.shape, x.dtype, "| mean", mean.shape, "| centered", centered.shape)

# %% [markdown]
# ## One code path, two devices: `get_xp`
#
# A layer never writes `np.exp`. It asks the arrays which module owns them:
#
# ```python
# xp = get_xp(x)          # numpy for a NumPy array, cupy for a CuPy array
# out = xp.exp(x - x.max(axis=-1, keepdims=True))
# ```
#
# CuPy copies NumPy's API, so the same line runs on the GPU when `x` lives there. The device is chosen once,
# where arrays are made (`Model(config, device="cuda")` or the environment variable `MINIGPT_DEVICE`),
# and everything downstream follows the arrays.

# %%
def softmax(x):
    """A softmax that runs on whichever device x lives on."""
    xp = get_xp(x)
    e = xp.exp(x - x.max(axis=-1, keepdims=True))
    return e / e.sum(axis=-1, keepdims=True)


print("backend of x:", get_xp(x).__name__, "| CuPy with a GPU here:", cupy_available())
print("device chosen:", resolve_device())
p = softmax(x)
print("softmax rows sum to 1:", np.allclose(to_numpy(p).sum(axis=-1), 1.0))

# %% [markdown]
# ## float32 for training, float64 for checking
#
# A gradient check compares a hand-derived derivative with the centered difference
#
# $$ f'(x) \approx \frac{f(x+h) - f(x-h)}{2h}, $$
#
# whose truncation error is about $h^2 |f'''|/6$. But $f(x \pm h)$ are rounded to the machine precision
# $\varepsilon$, which adds an error of about $\varepsilon |f| / h$. The best step balances the two,
# $h^\* \approx \varepsilon^{1/3}$, where the error is about $\varepsilon^{2/3}$:
#
# | dtype | $\varepsilon$ | best $h$ | best relative error |
# |---|---|---|---|
# | float32 | 1.2e-7 | ~5e-3 | ~1e-5 |
# | float64 | 2.2e-16 | ~6e-6 | ~1e-10 |
#
# float32 cannot tell a correct gradient (error 1e-5) from a slightly wrong one; float64 can (1e-10 against 1e-2).
# That is why every gradient check in this course runs in float64 with $h = 10^{-6}$, and the bar is `rel_error < 1e-6`.
# Let us measure it on $f(x) = \sin(x)\,x^3$ at $x = 0.7$.

# %%
def f(x):
    return np.sin(x) * x * x * x


def f_prime(x):
    return np.cos(x) * x * x * x + 3 * np.sin(x) * x * x


steps = [1e-1, 1e-2, 1e-3, 1e-4, 1e-6] if FAST else [1e-1, 1e-2, 1e-3, 1e-4, 1e-5, 1e-6, 1e-7, 1e-8]
errors = {}
print(f"{'h':>8} {'float32 error':>15} {'float64 error':>15}")
for h in steps:
    row = []
    for dtype in (np.float32, np.float64):
        x0, step = dtype(0.7), dtype(h)
        numeric = (f(x0 + step) - f(x0 - step)) / (2 * step)
        exact = f_prime(np.float64(0.7))
        row.append(abs(float(numeric) - exact) / abs(exact))
    errors[h] = row
    print(f"{h:8.0e} {row[0]:15.2e} {row[1]:15.2e}")

# %% [markdown]
# float32's error never gets below about 1e-5 and grows again for small h (rounding); float64 reaches about 1e-10
# near h = 1e-5 .. 1e-6. Note also that `float32 in gives float32 out` in every layer: an innocent
# `np.array([0.5])` (a float64 array) multiplied into a float32 tensor would silently upcast it.

# %%
a = np.ones(3, dtype=np.float32)                           # (3,)
print("float32 * Python float:", (a * 0.5).dtype, "| float32 * float64 array:", (a * np.array([0.5])).dtype)

# %% [markdown]
# ## Summary
# - Layers call `xp = get_xp(x)` and so run unchanged on NumPy or CuPy; the device is picked where arrays are made.
# - Shapes are named B, T, C, V; every shape-changing line of minigpt says the new shape in a comment.
# - Centered differences have error ~h² + ε/h: float64 checks gradients to ~1e-10, float32 only to ~1e-5.
#
# ## Exercises
# 1. Add a line to the table for h = 1e-10 in float64. Why does the error grow again?
# 2. Replace the centered difference by the one-sided $(f(x+h) - f(x))/h$. What is the best error now, and at which h?
# 3. On a machine with a GPU, `pip install -e ".[gpu]"` and run `softmax(cupy.asarray(x))`: what does `get_xp` return?

# %% [markdown]
# ## Check

# %%
assert get_xp(x) is np and p.shape == (B, T, C) and p.dtype == np.float32
assert np.allclose(to_numpy(p).sum(axis=-1), 1.0, atol=1e-6)
best32 = min(e[0] for e in errors.values())
best64 = min(e[1] for e in errors.values())
assert best64 < 1e-9, best64             # float64 centered differences are good to ~1e-10
assert best32 > 100 * best64, (best32, best64)  # float32 is orders of magnitude worse
assert (a * 0.5).dtype == np.float32 and (a * np.array([0.5])).dtype == np.float64   # Python floats never upcast
print("lesson 00 OK")
