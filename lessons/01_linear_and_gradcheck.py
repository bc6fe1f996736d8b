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
# # Lesson 01 — The linear layer and gradient checking
#
# **You will learn**
# - the linear layer (线性层, also called a fully connected layer 全连接层) $\text{out} = xW + b$, which makes
#   every projection of a GPT: queries, keys, values, the attention output, both MLP matrices and the output head;
# - how to derive its backward pass, $dx$, $dW$ and $db$, by following each input to every output it reaches;
# - centered finite differences and the relative error `rel_error`, and why their errors are $O(h^2)$ and ~1e-10;
# - `minigpt.gradcheck.check_gradients`, the checker that every later lesson runs on every backward pass,
#   and how it catches backward passes that are wrong, even by 0.1%.
#
# minigpt has no autograd. Every layer comes with a hand-written backward pass, so we need a way to be sure
# each one is right. This lesson builds the simplest layer and the tool that checks all the others.

# %%
import os

import matplotlib.pyplot as plt
import numpy as np

from minigpt.gradcheck import check_gradients, numerical_gradient, rel_error
from minigpt.layers.linear import linear_backward, linear_forward
from minigpt.viz import save_figure

FAST = os.environ.get("MINIGPT_FAST") == "1"

# %% [markdown]
# ## The forward pass
#
# A linear layer maps each input vector of $C_\text{in}$ features to $C_\text{out}$ features:
#
# $$ \text{out}_{nj} = \sum_{i=1}^{C_\text{in}} x_{ni} W_{ij} + b_j, \qquad
#    x \in \mathbb{R}^{N \times C_\text{in}},\; W \in \mathbb{R}^{C_\text{in} \times C_\text{out}},\;
#    b \in \mathbb{R}^{C_\text{out}},\; \text{out} \in \mathbb{R}^{N \times C_\text{out}}. $$
#
# In a GPT, x is a batch of sequences, shape (B, T, C): the same W is applied to each of the $N = B \cdot T$
# position vectors, so we may always flatten the leading dimensions into N rows.
#
# minigpt stores W as (C_in, C_out), so that `out = x @ w`. PyTorch's `nn.Linear` stores the transpose,
# (C_out, C_in), and computes `x @ W.T + b`; GPT-2's checkpoints use our layout (lesson 05). When we load real
# weights (lesson 26) this is the one thing to get right.

# %% [markdown]
# ## The backward pass, derived
#
# Somewhere above this layer sits a scalar loss $L$. The layer above hands us $\text{dout} = \partial L / \partial
# \text{out}$, shape (N, C_out), and we must return the gradient of $L$ with respect to each input. The chain rule
# says: **an input's gradient is the sum, over every output it reaches, of that output's gradient times
# the local derivative.**
#
# **dx.** $x_{ni}$ appears in $\text{out}_{nj}$ for every $j$ (and in no other row), with coefficient $W_{ij}$:
#
# $$ \frac{\partial L}{\partial x_{ni}} = \sum_j \text{dout}_{nj}\, W_{ij}
#    \quad\Longrightarrow\quad dx = \text{dout}\; W^\top \qquad (N, C_\text{out}) \times (C_\text{out}, C_\text{in}) = (N, C_\text{in}). $$
#
# **dW.** $W_{ij}$ appears in $\text{out}_{nj}$ for every row $n$, with coefficient $x_{ni}$:
#
# $$ \frac{\partial L}{\partial W_{ij}} = \sum_n x_{ni}\, \text{dout}_{nj}
#    \quad\Longrightarrow\quad dW = x^\top\, \text{dout} \qquad (C_\text{in}, N) \times (N, C_\text{out}) = (C_\text{in}, C_\text{out}). $$
#
# **db.** $b_j$ appears in $\text{out}_{nj}$ for every row $n$, with coefficient 1:
#
# $$ \frac{\partial L}{\partial b_j} = \sum_n \text{dout}_{nj}
#    \quad\Longrightarrow\quad db = \textstyle\sum_n \text{dout}_{n,:} \qquad (C_\text{out},). $$
#
# Two habits to keep from this:
# - **A gradient has the shape of what it differentiates.** dx is (N, C_in), so it must be dout (N, C_out) times
#   something (C_out, C_in): only $W^\top$ fits. The shapes suggest the formula; the index derivation proves it.
# - **Reuse in the forward pass is a sum in the backward pass.** W and b are used at all N positions, so their
#   gradients sum over N. With x of shape (B, T, C) that is a sum over both B and T. Lesson 02 meets the same rule
#   again: an embedding row used by k tokens gets k contributions.

# %% [markdown]
# ## From scratch, then from the library
#
# The derivation is three lines of NumPy. We run them beside minigpt's `linear_forward` / `linear_backward`
# (which flatten any leading dimensions the same way) on a batch of B=3 sequences of T=7 positions.

# %%
rng = np.random.default_rng(0)
B, T, C_in, C_out = 3, 7, 5, 4
x = rng.standard_normal((B, T, C_in))                  # (B, T, Cin)
w = rng.standard_normal((C_in, C_out))                 # (Cin, Cout)
b = rng.standard_normal(C_out)                         # (Cout,)
dout = rng.standard_normal((B, T, C_out))              # (B, T, Cout) what the layer above hands down

# from scratch
out_np = x @ w + b                                     # (B, T, Cout)
x2 = x.reshape(-1, C_in)                               # (N, Cin)   N = B*T = 21 rows share one W
dout2 = dout.reshape(-1, C_out)                        # (N, Cout)
dx_np = dout @ w.T                                     # (B, T, Cin)
dw_np = x2.T @ dout2                                   # (Cin, Cout) summed over all N rows
db_np = dout2.sum(axis=0)                              # (Cout,)

# the library
out, cache = linear_forward(x, w, b)                   # (B, T, Cout)
dx, dw, db = linear_backward(dout, cache)              # (B, T, Cin), (Cin, Cout), (Cout,)
for name, ours, lib in [("out", out_np, out), ("dx", dx_np, dx), ("dW", dw_np, dw), ("db", db_np, db)]:
    print(f"{name:>3} {str(lib.shape):>10}  rel_error(from scratch, library) = {rel_error(ours, lib):.1e}")

# %% [markdown]
# ## Checking a gradient numerically
#
# How do we know the derivation is right? Any derivative can be *estimated* from the forward pass alone.
#
# **One number at a time.** The backward pass gives the gradient of a scalar, but the layer outputs an array. So we
# make a scalar: draw a random $\text{dout}$ once and define
#
# $$ L(x, W, b) = \sum_{n,j} \text{out}_{nj}(x, W, b)\; \text{dout}_{nj}. $$
#
# Then $\partial L / \partial \text{out} = \text{dout}$ exactly, so the backward pass called with this dout must
# return $\partial L/\partial x$, $\partial L/\partial W$, $\partial L/\partial b$. A random dout mixes every output
# into $L$, so a mistake in any output's path shows up (unless dout happens to be orthogonal to it, which has
# probability 0).
#
# **Centered differences.** Nudge one entry $\theta$ of an input by $\pm h$ and Taylor-expand:
#
# $$ L(\theta \pm h) = L \pm h L' + \tfrac{h^2}{2} L'' \pm \tfrac{h^3}{6} L''' + O(h^4) $$
#
# $$ \frac{L(\theta + h) - L(\theta)}{h} = L' + \tfrac{h}{2} L'' + O(h^2) \qquad\text{(one-sided: error } O(h)\text{)} $$
#
# $$ \frac{L(\theta + h) - L(\theta - h)}{2h} = L' + \tfrac{h^2}{6} L''' + O(h^4) \qquad\text{(centered: the even terms cancel, error } O(h^2)\text{)} $$
#
# Rounding adds an error of about $\varepsilon |L| / h$ (lesson 00), so a smaller h is not always better. In
# float64 with $h = 10^{-6}$ both errors are around $10^{-10}$.
#
# **Comparing.** Gradients can be of any size, so we compare them relative to their size:
#
# $$ \text{rel\_error}(a, b) = \frac{\max_k |a_k - b_k|}{\max_k \big(|a_k| + |b_k|\big)} $$
#
# It is 0 for equal arrays, about 1 for unrelated ones, and unchanged if both are scaled. The max in the numerator
# means a single wrong entry is enough to fail. A correct backward pass scores ~1e-10; the course's bar is
# **rel_error < 1e-6**, and real bugs score 1e-3 or (usually) far worse.
#
# For the linear layer, L is linear in each single entry of x, W and b, so $L'' = L''' = 0$: the difference
# quotients have no truncation error at all, only rounding. Let us write the loop by hand for dW.

# %%
def loss():
    out, _ = linear_forward(x, w, b)                   # (B, T, Cout) reads the current, nudged w
    return (out * dout).sum()                          # scalar L


h = 1e-6
dw_num = np.zeros_like(w)                              # (Cin, Cout)
for i in range(C_in):
    for j in range(C_out):
        old = w[i, j]
        w[i, j] = old + h
        plus = loss()
        w[i, j] = old - h
        minus = loss()
        w[i, j] = old                                  # always put it back
        dw_num[i, j] = (plus - minus) / (2 * h)
print("dW numerical vs analytic: rel_error =", f"{rel_error(dw_num, dw):.1e}")

_, dw_lib = numerical_gradient(loss, w, h=h)           # (Cin*Cout,) the library's loop, flat
print("our loop vs minigpt.gradcheck.numerical_gradient:", f"{rel_error(dw_num.reshape(-1), dw_lib):.1e}")

# %% [markdown]
# ## The checker: `check_gradients`
#
# `minigpt.gradcheck.check_gradients(forward, backward, args, names)` does all of the above for any layer:
# it calls `forward(*args) -> (out, cache)`, draws a random dout, calls `backward(dout, cache)`, and compares each
# returned gradient with centered differences of $L = \sum \text{out} \odot \text{dout}$. It checks every entry of
# small inputs and a random sample of `max_entries` (200) entries of large ones, and returns
# `{name: rel_error}`. A gradient returned as `None` (no bias, integer token ids, a mask) is skipped.
#
# This is the contract every layer of minigpt follows, and the only thing the checker needs to know about it.

# %%
errors = check_gradients(linear_forward, linear_backward, [x, w, b], names=["x", "w", "b"])
print("B=3, T=7 with bias:   ", {k: f"{v:.1e}" for k, v in errors.items()})

x1 = rng.standard_normal((1, 1, C_in))                 # (1, 1, Cin) one sequence of one token
errors_no_bias = check_gradients(linear_forward, linear_backward, [x1, w, None], names=["x", "w", "b"])   # db is None
print("B=1, T=1 without bias:", {k: f"{v:.1e}" for k, v in errors_no_bias.items()})

# %% [markdown]
# ## Catching wrong backward passes
#
# Here are four mistakes that are easy to make. We use a square layer ($C_\text{in} = C_\text{out}$) so that every
# wrong gradient still has the right shape: the shapes cannot warn us, only the numbers can.
# (A gradient of the wrong shape is refused outright: `check_gradients` raises a ValueError.)
#
# | bug | what was written | why it is wrong |
# |---|---|---|
# | transposed weight | `dx = dout @ w` | needs $W^\top$: on a square W the shapes still fit |
# | first sequence only | `dw = x[0].T @ dout[0]` | W is reused by every sequence: the sum over B is missing |
# | mean instead of sum | `dw = x2.T @ dout2 / N` | the gradient of a sum is a sum; averaging belongs to the loss |
# | 0.1% too large | `dw = 1.001 * (x2.T @ dout2)` | a tiny slip, e.g. a wrong constant somewhere |

# %%
C_sq = 6
xs = rng.standard_normal((B, T, C_sq))                 # (B, T, C)
ws = rng.standard_normal((C_sq, C_sq))                 # (C, C) square: dout @ w has the shape of dx
bs = rng.standard_normal(C_sq)                         # (C,)
N = B * T


def transposed_weight(dout, cache):
    dx, dw, db = linear_backward(dout, cache)          # (B, T, C), (C, C), (C,)
    return dout @ cache[1], dw, db                     # (B, T, C) dout @ w: should be dout @ w.T


def first_sequence_only(dout, cache):
    dx, dw, db = linear_backward(dout, cache)
    x = cache[0]                                       # (B, T, C)
    return dx, x[0].T @ dout[0], db                    # (C, C) forgot the other B-1 sequences


def mean_not_sum(dout, cache):
    dx, dw, db = linear_backward(dout, cache)
    return dx, dw / N, db                              # (C, C) averaged over the N rows


def slightly_off(dout, cache):
    dx, dw, db = linear_backward(dout, cache)
    return dx, 1.001 * dw, db                          # (C, C) 0.1% too large


backwards = {"correct": linear_backward, "transposed weight": transposed_weight,
             "first sequence only": first_sequence_only, "mean instead of sum": mean_not_sum,
             "0.1% too large": slightly_off}
bug_errors = {}
print(f"{'backward':>20} {'x':>9} {'w':>9} {'b':>9}   verdict (bar 1e-6)")
for label, backward in backwards.items():
    errs = check_gradients(linear_forward, backward, [xs, ws, bs], names=["x", "w", "b"])
    bug_errors[label] = errs
    failed = [k for k, v in errs.items() if not v < 1e-6]
    verdict = "FAIL " + ", ".join(failed) if failed else "pass"
    print(f"{label:>20} {errs['x']:9.1e} {errs['w']:9.1e} {errs['b']:9.1e}   {verdict}")

# %% [markdown]
# Each bug is flagged on exactly the gradient it broke, and the correct gradients beside it still pass: the
# checker tells us *where* to look. Two of the numbers can be predicted, which is a good test of what rel_error means.
# If the analytic gradient is $c$ times the true one $a$, then
# $\text{rel\_error} = |1 - c| \max|a| \,/\, (1 + c) \max|a| = |1 - c| / (1 + c)$:
# - mean instead of sum, $c = 1/N = 1/21$: $(1 - 1/21) / (1 + 1/21) = 20/22 \approx 0.909$;
# - 0.1% too large, $c = 1.001$: $0.001 / 2.001 \approx 5.0 \times 10^{-4}$, still 500 times the bar.

# %% [markdown]
# ## How the step size h matters
#
# The linear layer has no truncation error, so to *see* the $O(h)$ and $O(h^2)$ laws we put a nonlinearity after it,
# $\text{out} = \tanh(xW + b)$, whose backward multiplies dout by $\tanh' = 1 - \tanh^2$ and then calls the
# linear backward. We sweep h and plot the rel_error of dW for centered differences (`check_gradients(h=...)`),
# for one-sided differences (a short loop), and for the 0.1%-too-large backward.

# %%
def tanh_linear_forward(x, w, b):
    z, lin_cache = linear_forward(x, w, b)             # (B, T, C)
    out = np.tanh(z)                                   # (B, T, C)
    return out, (out, lin_cache)


def tanh_linear_backward(dout, cache):
    out, lin_cache = cache
    dz = dout * (1.0 - out * out)                      # (B, T, C) undoes out = tanh(z)
    return linear_backward(dz, lin_cache)              # dx (B, T, C), dw (C, C), db (C,)


def tanh_linear_backward_off(dout, cache):
    dx, dw, db = tanh_linear_backward(dout, cache)
    return dx, 1.001 * dw, db                          # (C, C) 0.1% too large


def one_sided_error(h):
    """rel_error of dW from (L(w + h) - L(w)) / h, for the same dout that check_gradients draws (seed 0)."""
    out, cache = tanh_linear_forward(xs, ws, bs)       # (B, T, C)
    d = np.random.default_rng(0).standard_normal(out.shape)   # (B, T, C) check_gradients' first draw
    _, dw_exact, _ = tanh_linear_backward(d, cache)    # (C, C)
    base = (out * d).sum()
    flat = ws.reshape(-1)                              # (C*C,) a view of ws
    num = np.empty(flat.size)                          # (C*C,)
    for k in range(flat.size):
        old = flat[k]
        flat[k] = old + h
        num[k] = ((tanh_linear_forward(xs, ws, bs)[0] * d).sum() - base) / h
        flat[k] = old
    return rel_error(num, dw_exact.reshape(-1))


steps = np.logspace(-1, -9, 9 if FAST else 17)         # (n_h,) from 1e-1 down to 1e-9
centered, one_sided, buggy = [], [], []
for step in steps:
    kw = dict(names=["x", "w", "b"], wrt=["w"], h=step)
    centered.append(check_gradients(tanh_linear_forward, tanh_linear_backward, [xs, ws, bs], **kw)["w"])
    buggy.append(check_gradients(tanh_linear_forward, tanh_linear_backward_off, [xs, ws, bs], **kw)["w"])
    one_sided.append(one_sided_error(step))

fig, ax = plt.subplots(figsize=(6.5, 4.2))
ax.loglog(steps, one_sided, "s-", label="one-sided, correct backward")
ax.loglog(steps, centered, "o-", label="centered, correct backward")
ax.loglog(steps, buggy, "^-", label="centered, backward 0.1% too large")
ax.axhline(1e-6, color="grey", linestyle="--", label="bar: rel_error < 1e-6")
ax.axvline(1e-6, color="grey", linestyle=":", label="h = 1e-6 (the default)")
ax.set_xlabel("step h")
ax.set_ylabel("rel_error of dW")
ax.set_title("Gradient check of tanh(xW + b) in float64")
ax.invert_xaxis()
ax.grid(alpha=0.3)
ax.legend(fontsize="small", loc="upper left", bbox_to_anchor=(1.02, 1.0), frameon=False)
step_png = save_figure(fig, "01_gradcheck_step_size")
print(f"{'h':>8} {'one-sided':>10} {'centered':>10} {'0.1% bug':>10}")
for row in zip(steps, one_sided, centered, buggy):
    print(" ".join(f"{v:10.1e}" if i else f"{v:8.0e}" for i, v in enumerate(row)))
print("saved", step_png)

# %% [markdown]
# Read the plot from left to right. For large h the truncation error dominates: the one-sided line falls by one
# decade per decade of h (slope 1, $O(h)$), the centered line by two (slope 2, $O(h^2)$). For small h rounding
# takes over ($\varepsilon / h$) and both lines rise again. Centered differences stay under the bar for every h from
# about $10^{-3}$ down to $10^{-9}$, bottoming out near $10^{-10}$; one-sided differences only dip under it for
# $h \le 10^{-6}$, with a hundred times less margin. The buggy backward sits flat at $5 \times 10^{-4}$
# whatever h is: a real bug does not go away with a better step, which is how we tell it from numerical noise.
#
# ## Why float64
#
# The same check in float32 cannot work. L is rounded to about $\varepsilon_{32} |L| \approx 10^{-7} |L|$, and the
# difference quotient divides that rounding by $2h$: with $h = 10^{-6}$ the noise is ~5% of $|L|$, comparable to the
# gradient entries themselves. Lesson 00 measured this on one function;
# here it is on the correct linear backward.

# %%
errors32 = check_gradients(linear_forward, linear_backward,
                           [a.astype(np.float32) for a in (x, w, b)], names=["x", "w", "b"])
out32, _ = linear_forward(x.astype(np.float32), w.astype(np.float32), b.astype(np.float32))   # (B, T, Cout)
print("float32, correct backward:", {k: f"{v:.1e}" for k, v in errors32.items()}, "| out dtype:", out32.dtype)

# %% [markdown]
# ## Summary
# - Linear layer: $\text{out} = xW + b$; backward $dx = \text{dout}\,W^\top$, $dW = x^\top \text{dout}$,
#   $db = \sum_n \text{dout}_n$, where the sums run over every position the weights were reused at.
# - A gradient has the shape of its input; reuse in the forward pass becomes a sum in the backward pass.
# - Gradient check: $L = \sum \text{out} \odot \text{dout}$ with a random dout, centered differences (error $O(h^2)$),
#   `rel_error` = max abs difference over max size; in float64 with $h = 10^{-6}$ a correct backward scores ~1e-10,
#   the bar is 1e-6, and bugs score 1e-3 and up, whatever h.
# - `check_gradients(forward, backward, args, names)` checks any layer that follows the
#   `forward(*args) -> (out, cache)`, `backward(dout, cache) -> grads` contract. Every later lesson uses it.
#
# ## Exercises
# 1. Add a fifth bug, `db = dout2[0]` (the bias gradient of the first row only). Predict which gradient fails before
#    running it.
# 2. Change `slightly_off` to scale by $1 + 10^{-7}$. Does the check still catch it? What is the smallest relative
#    slip it can catch at h = 1e-6, and why?
# 3. Write the gradient check for $\text{out} = (xW)^2$ (elementwise): derive the backward, then check it. Is there a
#    truncation error now? Which derivative of L decides it?
# 4. `check_gradients` samples 200 entries of large inputs. How large would the probability of missing a bug be if
#    only one entry of a (768, 3072) dW were wrong? Which kinds of bugs does sampling catch anyway?

# %% [markdown]
# ## Check

# %%
for ours, lib in [(out_np, out), (dx_np, dx), (dw_np, dw), (db_np, db)]:
    assert ours.shape == lib.shape and rel_error(ours, lib) < 1e-12
assert dx.shape == x.shape and dw.shape == w.shape and db.shape == b.shape
assert rel_error(dw_num, dw) < 1e-6 and rel_error(dw_num.reshape(-1), dw_lib) == 0.0
assert set(errors) == {"x", "w", "b"} and max(errors.values()) < 1e-6
assert set(errors_no_bias) == {"x", "w"} and max(errors_no_bias.values()) < 1e-6
assert max(bug_errors["correct"].values()) < 1e-6
assert bug_errors["transposed weight"]["x"] > 1e-2 and bug_errors["transposed weight"]["w"] < 1e-6
assert bug_errors["first sequence only"]["w"] > 1e-2 and bug_errors["first sequence only"]["x"] < 1e-6
assert abs(bug_errors["mean instead of sum"]["w"] - (N - 1) / (N + 1)) < 1e-6       # |1 - c| / (1 + c), c = 1/N
assert abs(bug_errors["0.1% too large"]["w"] - 0.001 / 2.001) < 1e-6                # c = 1.001
assert all(v < 1e-6 for k, v in bug_errors["0.1% too large"].items() if k != "w")
c_slope = np.polyfit(np.log10(steps[:3]), np.log10(centered[:3]), 1)[0]             # truncation-dominated h
o_slope = np.polyfit(np.log10(steps[:3]), np.log10(one_sided[:3]), 1)[0]
assert 1.7 < c_slope < 2.3 and 0.8 < o_slope < 1.2, (c_slope, o_slope)              # O(h^2) and O(h)
assert centered[list(np.isclose(steps, 1e-6)).index(True)] < 1e-8                  # the default h is well inside
assert min(buggy) > 4e-4                                                            # a bug is flat in h
assert max(errors32.values()) > 1e-4 and out32.dtype == np.float32                  # float32 cannot check
assert step_png.exists()
print("lesson 01 OK")
