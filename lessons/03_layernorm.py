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
# # Lesson 03 — LayerNorm
#
# **You will learn**
# - what layer normalization (层归一化, LayerNorm) computes for each token, and why it is there;
# - its backward pass, derived step by step: first through the computation graph, then in closed form, and what the
#   closed form means (a projection);
# - the two classic mistakes (treating the mean or the variance as constants) and how the gradient check flags them;
# - where LayerNorm sits in a Transformer block: after the residual sum (post-norm, GPT-1) or before the sublayer
#   (pre-norm, GPT-2 onwards), previewed here and measured in lesson 11.

# %%
import os

import matplotlib.pyplot as plt
import numpy as np

from minigpt.gradcheck import check_gradients, rel_error
from minigpt.layers.linear import linear_forward
from minigpt.layers.norms import layernorm_backward, layernorm_forward
from minigpt.viz import save_figure

FAST = os.environ.get("MINIGPT_FAST") == "1"

# %% [markdown]
# ## The forward pass
#
# LayerNorm (Ba, Kiros and Hinton, 2016) works on each token's vector $x \in \mathbb{R}^C$ on its own:
#
# $$ \mu = \frac{1}{C}\sum_{c} x_c, \qquad \sigma^2 = \frac{1}{C}\sum_{c} (x_c - \mu)^2, \qquad
#    r = \frac{1}{\sqrt{\sigma^2 + \varepsilon}}, $$
#
# $$ \hat{x}_c = (x_c - \mu)\, r, \qquad y_c = w_c\, \hat{x}_c + b_c . $$
#
# $\hat{x}$ has mean 0 and variance (almost exactly) 1; the learned scale $w$ (init 1) and shift $b$ (init 0), one per
# channel, let the model undo that where it helps. The variance is the biased one (divide by C), as in the paper and
# PyTorch, and $\varepsilon = 10^{-5}$ keeps $r$ finite for a constant vector.
#
# Why normalize? A deep network keeps adding sublayer outputs onto its residual stream; without a fixed scale the
# activations, and with them the gradients, drift up or down from layer to layer. LayerNorm resets each token's vector
# to a fixed scale, whatever came before. Unlike BatchNorm it uses no statistics across the batch or across tokens,
# so it behaves the same in training and generation, for B = 1 and for any T.
#
# It also makes the output **invariant to shifting and scaling** the input: for $a > 0$,
# $\text{LN}(a x + k) = \text{LN}(x)$ (exactly when $\varepsilon = 0$). Remember this; the backward pass will show it.
#
# From scratch in NumPy, beside the library's `layernorm_forward`:

# %%
rng = np.random.default_rng(0)
B, T, C = 3, 7, 12
x = 3.0 * rng.standard_normal((B, T, C)) + 1.5         # (B, T, C) deliberately off-centre and wide
w = 1.0 + 0.1 * rng.standard_normal(C)                 # (C,)
b = 0.1 * rng.standard_normal(C)                       # (C,)
eps = 1e-5

mu = x.mean(axis=-1, keepdims=True)                    # (B, T, 1)
xc = x - mu                                            # (B, T, C)
var = (xc * xc).mean(axis=-1, keepdims=True)           # (B, T, 1)
r = 1.0 / np.sqrt(var + eps)                           # (B, T, 1)
xhat = xc * r                                          # (B, T, C)
y_np = xhat * w + b                                    # (B, T, C)

y, cache = layernorm_forward(x, w, b, eps)             # (B, T, C)
print("rel_error(from scratch, library):", f"{rel_error(y_np, y):.1e}")
print("xhat: mean per token in", np.round([xhat.mean(-1).min(), xhat.mean(-1).max()], 12).tolist(),
      "| std per token in", np.round([xhat.std(-1).min(), xhat.std(-1).max()], 6).tolist())
y_shifted, _ = layernorm_forward(2.0 * x + 7.0, w, b, eps)   # (B, T, C)
print("max |LN(2x + 7) - LN(x)|:", f"{np.abs(y_shifted - y).max():.1e}", "(not 0 only because of eps)")

# %% [markdown]
# A picture of what it does: eight tokens whose vectors have very different offsets and scales, before and after
# (with $w = 1$, $b = 0$).

# %%
n_show, C_show = 8, 64
offsets = np.linspace(-6, 6, n_show)                   # (8,)
scales = np.geomspace(0.2, 5.0, n_show)                # (8,)
x_show = offsets[:, None] + scales[:, None] * rng.standard_normal((n_show, C_show))   # (8, C) one token per row
y_show, _ = layernorm_forward(x_show, np.ones(C_show), np.zeros(C_show))              # (8, C)
fig, axes = plt.subplots(1, 2, figsize=(10, 3.6), sharey=True)
for ax, values, title in [(axes[0], x_show, "x: every token at its own offset and scale"),
                          (axes[1], y_show, "LayerNorm(x): mean 0, variance 1 per token")]:
    for t in range(n_show):
        ax.scatter(values[t], np.full(C_show, t) + rng.uniform(-0.2, 0.2, C_show), s=6)
    ax.axvline(0, color="grey", linewidth=0.8)
    ax.set_title(title)
    ax.set_xlabel("channel values")
axes[0].set_ylabel("token")
ln_png = save_figure(fig, "03_layernorm_before_after")
print("saved", ln_png)

# %% [markdown]
# ## The backward pass, step by step
#
# We are given $\text{dy} = \partial L/\partial y$ for each token and want $dx$, $dw$, $db$. The parameters are as
# easy as lesson 01's bias: $w_c$ and $b_c$ touch $y_c$ of every token n, so
#
# $$ db = \sum_n \text{dy}_n, \qquad dw = \sum_n \text{dy}_n \odot \hat{x}_n, \qquad
#    g := \frac{\partial L}{\partial \hat{x}} = \text{dy} \odot w . $$
#
# The input is harder: **every** $\hat{x}_c$ depends on **every** $x_k$, through $\mu$ and through $r$. The safest way
# is to walk the forward pass backwards, one small step at a time, adding up each variable's gradient from every
# step that used it (lesson 01's rule). Per token, in reverse order:
#
# | forward step | backward step |
# |---|---|
# | $\hat{x} = z\, r$, with $z = x - \mu$ (`xc` in the code) | $dz \mathrel{+}= g\, r$, $\quad dr = \sum_c g_c\, z_c$ |
# | $r = (\sigma^2 + \varepsilon)^{-1/2}$ | $d\sigma^2 = -\tfrac{1}{2} (\sigma^2 + \varepsilon)^{-3/2}\, dr = -\tfrac{1}{2} r^3\, dr$ |
# | $\sigma^2 = \tfrac{1}{C}\sum_c z_c^2$ | $dz \mathrel{+}= \tfrac{2}{C}\, z\, d\sigma^2$ (the second use of z) |
# | $z = x - \mu$ | $dx = dz$, $\quad d\mu = -\sum_c dz_c$ |
# | $\mu = \tfrac{1}{C}\sum_c x_c$ | $dx \mathrel{+}= \tfrac{1}{C}\, d\mu$ (the second use of x) |
#
# Every forward line becomes one backward line, and a variable used twice ($z$, $x$) collects two contributions.

# %%
dy = rng.standard_normal((B, T, C))                    # (B, T, C) from the layer above

# staged: one line per forward step, in reverse
db_np = dy.reshape(-1, C).sum(axis=0)                  # (C,)
dw_np = (dy * xhat).reshape(-1, C).sum(axis=0)         # (C,)
g = dy * w                                             # (B, T, C) dL/dxhat
dxc = g * r                                            # (B, T, C) xhat = xc * r, for xc
dr = (g * xc).sum(axis=-1, keepdims=True)              # (B, T, 1) xhat = xc * r, for r
dvar = -0.5 * r * r * r * dr                           # (B, T, 1) r = (var + eps)^(-1/2)
dxc = dxc + (2.0 / C) * xc * dvar                      # (B, T, C) var = mean(xc * xc)
dmu = -dxc.sum(axis=-1, keepdims=True)                 # (B, T, 1) xc = x - mu, for mu
dx_staged = dxc + dmu / C                              # (B, T, C) xc = x - mu for x, plus mu = mean(x)

# %% [markdown]
# ## The closed form
#
# The staged version is correct but hides what is going on. Differentiate once, by hand. From the forward pass,
#
# $$ \frac{\partial \mu}{\partial x_k} = \frac{1}{C}, \qquad
#    \frac{\partial \sigma^2}{\partial x_k} = \frac{2}{C}(x_k - \mu) - \frac{2}{C}\sum_c (x_c - \mu)\cdot\frac{1}{C}
#    = \frac{2}{C}(x_k - \mu) \quad \Big(\textstyle\sum_c (x_c - \mu) = 0\Big), $$
#
# $$ \frac{\partial r}{\partial x_k} = -\frac{1}{2}(\sigma^2 + \varepsilon)^{-3/2} \cdot \frac{2}{C}(x_k - \mu)
#    = -\frac{r^3 (x_k - \mu)}{C} = -\frac{r^2\, \hat{x}_k}{C}, $$
#
# and by the product rule on $\hat{x}_c = (x_c - \mu)\, r$:
#
# $$ \frac{\partial \hat{x}_c}{\partial x_k} = \Big(\delta_{ck} - \frac{1}{C}\Big) r + (x_c - \mu)\Big(-\frac{r^2 \hat{x}_k}{C}\Big)
#    = r\Big(\delta_{ck} - \frac{1}{C} - \frac{\hat{x}_c\, \hat{x}_k}{C}\Big). $$
#
# Summing against $g$ (the chain rule: $dx_k = \sum_c g_c\, \partial \hat{x}_c / \partial x_k$):
#
# $$ \boxed{\; dx = r \Big( g - \overline{g} - \hat{x}\; \overline{g \odot \hat{x}} \Big) \;}
#    \qquad \overline{v} := \frac{1}{C}\sum_c v_c . $$
#
# **What it means.** The bracket is $g$ with its mean removed and with its component along $\hat{x}$ removed.
# Since $\hat{x} \perp \mathbf{1}$ and $|\hat{x}|^2 = C\,\sigma^2/(\sigma^2 + \varepsilon) \approx C$, that is
# (for $\varepsilon \to 0$) the orthogonal projection of $g$ onto the directions perpendicular to $\mathbf{1}$ and
# to $\hat{x}$, scaled by $r$. It is the invariance seen in the forward pass: moving $x$ along $\mathbf{1}$ (a shift) or
# along $x - \mu$ (a rescaling) does not change the output, so the gradient has no component in those directions:
#
# $$ \sum_k dx_k = 0 \;\text{exactly}, \qquad \sum_k dx_k\, \hat{x}_k = r\, \frac{\varepsilon}{\sigma^2 + \varepsilon} \sum_c g_c \hat{x}_c \approx 0 . $$
#
# And the factor $r = 1/\sigma$: a token whose vector is large gets a small gradient, in proportion. This closed form
# is what minigpt's `layernorm_backward` computes (in three lines). We compare all three versions.

# %%
dx_closed = r * (g - g.mean(axis=-1, keepdims=True)
                 - xhat * (g * xhat).mean(axis=-1, keepdims=True))   # (B, T, C)
dx, dw, db = layernorm_backward(dy, cache)             # (B, T, C), (C,), (C,)
print("dx: staged vs library", f"{rel_error(dx_staged, dx):.1e}",
      "| closed form vs library", f"{rel_error(dx_closed, dx):.1e}")
print("dw, db from scratch vs library:", f"{rel_error(dw_np, dw):.1e}", f"{rel_error(db_np, db):.1e}")
print("sum_k dx_k per token, largest |.|:", f"{np.abs(dx.sum(axis=-1)).max():.1e}")
print("sum_k dx_k xhat_k per token, largest |.|:", f"{np.abs((dx * xhat).sum(axis=-1)).max():.1e}",
      f"(predicted largest: {np.abs(r * eps / (var + eps) * (g * xhat).sum(-1, keepdims=True)).max():.1e})")

# %% [markdown]
# ## Gradient check, and two classic mistakes
#
# Now the numbers against centered differences, with lesson 01's checker, on the odd shapes the tests use
# (B=3, T=7 and B=1, T=1, C=12). Then two wrong backward passes that people really write:
# - **mean treated as a constant**: drop the $-\overline{g}$ term (as if $\partial\mu/\partial x = 0$);
# - **variance treated as a constant**: drop the $-\hat{x}\,\overline{g\odot\hat{x}}$ term (as if $\partial r/\partial x = 0$).
#
# Both keep dw and db right, and both give dx the right shape.

# %%
def mean_as_constant(dy, cache):
    dx, dw, db = layernorm_backward(dy, cache)
    xhat, w, r = cache                                  # (B, T, C), (C,), (B, T, 1)
    g = dy * w                                          # (B, T, C)
    return r * (g - xhat * (g * xhat).mean(axis=-1, keepdims=True)), dw, db   # (B, T, C) no -mean(g)


def variance_as_constant(dy, cache):
    dx, dw, db = layernorm_backward(dy, cache)
    xhat, w, r = cache
    g = dy * w                                          # (B, T, C)
    return r * (g - g.mean(axis=-1, keepdims=True)), dw, db                    # (B, T, C) no xhat term


x1 = rng.standard_normal((1, 1, C))                    # (1, 1, C) one token
ln_errors = {
    "B=3, T=7": check_gradients(layernorm_forward, layernorm_backward, [x, w, b], names=["x", "w", "b"]),
    "B=1, T=1": check_gradients(layernorm_forward, layernorm_backward, [x1, w, b], names=["x", "w", "b"]),
    "mean as constant": check_gradients(layernorm_forward, mean_as_constant, [x, w, b], names=["x", "w", "b"]),
    "variance as constant": check_gradients(layernorm_forward, variance_as_constant, [x, w, b], names=["x", "w", "b"]),
}
print(f"{'backward':>22} {'x':>9} {'w':>9} {'b':>9}")
for label, errs in ln_errors.items():
    print(f"{label:>22} {errs['x']:9.1e} {errs['w']:9.1e} {errs['b']:9.1e}")
x_err_h5 = check_gradients(layernorm_forward, layernorm_backward, [x, w, b], names=["x", "w", "b"], h=1e-5)["x"]
print(f"dx of B=3, T=7 with h = 1e-5 instead of 1e-6: {x_err_h5:.1e}")

# %% [markdown]
# The correct backward passes everywhere. Its dx error on the wide, off-centre x (~1e-7) is higher than the others,
# but it is rounding, not a bug: it falls tenfold when h grows tenfold, the $\varepsilon/h$ signature of lesson 01.
# It is larger here because the rounding noise of the difference quotient, about $\varepsilon|L|/h$, does not depend on
# the scale of x, while dx does, through $r = 1/\sigma$: this x has $\sigma \approx 3$, so its gradient is small.
#
# The first mistake leaves the gradient with a nonzero sum, the second leaves a component along $\hat{x}$: exactly
# the directions the projection must remove. (The first one is not crazy: its formula is exactly RMSNorm's backward,
# lesson 14, right for a norm that subtracts no mean and wrong for one that does.)
#
# ## The Jacobian is a projection
#
# One more check of the closed form, on the whole Jacobian. Put C copies of one token in a batch and call the
# backward pass once with $\text{dy} = I$: row k of the result is $\partial y_k / \partial x$. With $w = 1$ and
# $\varepsilon = 0$ the derivation says $J = r\,(I - \tfrac{1}{C}\mathbf{1}\mathbf{1}^\top - \tfrac{1}{C}\hat{x}\hat{x}^\top)$,
# so $J/r$ is a projection with eigenvalue 0 twice (directions $\mathbf{1}$ and $\hat{x}$) and 1 in the other C − 2.

# %%
C_j = 8 if FAST else 16
x_tok = 2.0 * rng.standard_normal(C_j) + 0.5           # (C,) one token
x_rep = np.tile(x_tok, (C_j, 1))                       # (C, C) C copies: N = C rows
_, jcache = layernorm_forward(x_rep, np.ones(C_j), np.zeros(C_j), eps=0.0)
J = layernorm_backward(np.eye(C_j), jcache)[0]         # (C, C) row k = dy_k / dx
r_tok = jcache[2][0, 0]                                # the token's r = 1 / sigma
eigenvalues = np.sort(np.linalg.eigvalsh(J / r_tok))   # (C,) J is symmetric
print("eigenvalues of J / r:", np.round(eigenvalues, 10).tolist())

# %% [markdown]
# ## Where LayerNorm sits: post-norm and pre-norm
#
# A Transformer block has two sublayers, attention and the MLP, each wrapped in a residual connection. LayerNorm can
# go in two places:
#
# ```
#   post-norm (Transformer 2017, GPT-1):     x' = LN(x + f(x))
#
#     x ──┬──> attn ──> (+) ──> LN ──> x'
#         └──────────────┘
#
#   pre-norm (GPT-2, GPT-3, GLM, LLaMA, ...): x' = x + f(LN(x)), and one final LN before the output head
#
#     x ──┬──> LN ──> attn ──> (+) ──> x'
#         └─────────────────────┘
#
#   (f is the attention sublayer here; the MLP sublayer is wired the same way)
# ```
#
# | model | placement | norm | final norm before the head |
# |---|---|---|---|
# | Transformer (2017), GPT-1 (2018) | post: $x' = \text{LN}(x + f(x))$ | LayerNorm | no (the last block already ends in LN) |
# | GPT-2 (2019), GPT-3 (2020) | pre: $x' = x + f(\text{LN}(x))$ | LayerNorm | yes, added by GPT-2 |
# | GLM (2022) | pre | LayerNorm | yes |
# | ChatGLM-6B | DeepNorm-style: $h = \text{LN}(x)$, $x' = \alpha h + f(h)$, $\alpha = \sqrt{2L}$ | LayerNorm | yes |
# | LLaMA, ChatGLM2, GLM-4 | pre | RMSNorm (lesson 14) | yes |
#
# GPT-2's paper puts it in one sentence: *"Layer normalization was moved to the input of each sub-block, similar to a
# pre-activation residual network and an additional layer normalization was added after the final self-attention
# block."* Why it matters, in short: in pre-norm the residual stream is a plain sum, $x_L = x_0 + \sum_l f_l(\text{LN}(x_l))$,
# so the loss reaches every layer through an identity path; in post-norm every gradient to an early layer passes
# through the Jacobian of every LN above it (the projection-and-scale we just derived). Post-norm Transformers
# are known to need a careful learning-rate warmup; pre-norm ones train more easily (Xiong et al., 2020). Lesson 11
# measures the gradient norms layer by layer.
#
# One consequence is visible already, with eight toy "blocks" whose sublayer is a random linear map: in post-norm the
# residual stream is renormalized after each block; in pre-norm it keeps growing, because every block adds to it.
# That is why pre-norm needs the final LayerNorm before the head.

# %%
n_layer, C_b = (4, 16) if FAST else (8, 64)
x0 = rng.standard_normal((2, 5, C_b))                  # (B, T, C)
ws = [rng.standard_normal((C_b, C_b)) / np.sqrt(C_b) for _ in range(n_layer)]   # (C, C) each, roughly unit gain
ones, zeros = np.ones(C_b), np.zeros(C_b)              # (C,) LN at its init: w = 1, b = 0
x_pre, x_post = x0, x0
std_pre, std_post = [], []
for wl in ws:
    h, _ = layernorm_forward(x_pre, ones, zeros)       # (B, T, C)
    x_pre = x_pre + linear_forward(h, wl)[0]           # (B, T, C) pre-norm: x + f(LN(x))
    s, _ = layernorm_forward(x_post + linear_forward(x_post, wl)[0], ones, zeros)
    x_post = s                                         # (B, T, C) post-norm: LN(x + f(x))
    std_pre.append(float(x_pre.std(axis=-1).mean()))
    std_post.append(float(x_post.std(axis=-1).mean()))
print(f"{'after block':>11} {'pre-norm std':>13} {'post-norm std':>14}")
for l, (sp, sq) in enumerate(zip(std_pre, std_post), start=1):
    print(f"{l:>11} {sp:13.3f} {sq:14.6f}")

x32, _ = layernorm_forward(x.astype(np.float32), w.astype(np.float32), b.astype(np.float32))   # (B, T, C)
print("float32 in ->", x32.dtype, "out")

# %% [markdown]
# ## Summary
# - LayerNorm normalizes each token's vector to mean 0 and variance 1 over its C channels, then applies a learned
#   per-channel scale and shift. No batch statistics: the same at training and generation time.
# - Backward: $db = \sum_n \text{dy}$, $dw = \sum_n \text{dy}\odot\hat{x}$, and with $g = \text{dy}\odot w$,
#   $dx = r\,(g - \overline{g} - \hat{x}\,\overline{g\odot\hat{x}})$: derive it by walking the forward steps in
#   reverse, or by the Jacobian $r(\delta_{ck} - 1/C - \hat{x}_c\hat{x}_k/C)$.
# - The gradient is projected away from the shift and scale directions, to which the output is blind: $\sum_k dx_k = 0$.
#   Forgetting that the mean or the variance depends on x breaks exactly this, and the gradient check flags it.
# - Post-norm (GPT-1): $x' = \text{LN}(x + f(x))$. Pre-norm (GPT-2 on): $x' = x + f(\text{LN}(x))$ plus a final LN.
#
# ## Exercises
# 1. Derive the backward pass of RMSNorm, $y = w \odot x / \sqrt{\overline{x^2} + \varepsilon}$, by removing the mean
#    from the steps above. Compare with `minigpt.layers.norms.rmsnorm_backward` (lesson 14).
# 2. Repeat the eigenvalue cell with $\varepsilon = 1$. What happens to the zero eigenvalue
#    along $\hat{x}$, and why?
# 3. The staged backward computes `dmu = -dxc.sum(...)` with `dxc` already holding the variance path. Show that the
#    variance path contributes exactly 0 to `dmu`. Which line of the closed-form derivation is the same fact?
# 4. In the pre/post table, replace the random linear map by a map with gain 0.1. How does the growth of the
#    pre-norm stream change? What does GPT-2's scaled residual initialization (lesson 11) aim for?

# %% [markdown]
# ## Check

# %%
assert y.shape == (B, T, C) and dx.shape == x.shape and dw.shape == w.shape and db.shape == b.shape
assert rel_error(y_np, y) < 1e-12
assert rel_error(dx_staged, dx) < 1e-12 and rel_error(dx_closed, dx) < 1e-12
assert rel_error(dw_np, dw) < 1e-12 and rel_error(db_np, db) < 1e-12
assert np.abs(xhat.mean(axis=-1)).max() < 1e-12                               # mean 0 per token
assert np.allclose(xhat.std(axis=-1), np.sqrt(var / (var + eps))[..., 0])     # variance var / (var + eps)
assert np.abs(y_shifted - y).max() < 1e-5                                      # shift and scale invariant, up to eps
assert np.abs(dx.sum(axis=-1)).max() < 1e-12                                   # no gradient along the shift
assert np.allclose((dx * xhat).sum(-1, keepdims=True), r * eps / (var + eps) * (g * xhat).sum(-1, keepdims=True))
for label in ("B=3, T=7", "B=1, T=1"):
    assert set(ln_errors[label]) == {"x", "w", "b"} and max(ln_errors[label].values()) < 1e-6, label
for label in ("mean as constant", "variance as constant"):
    assert ln_errors[label]["x"] > 1e-2 and max(ln_errors[label]["w"], ln_errors[label]["b"]) < 1e-6, label
assert np.allclose(eigenvalues[:2], 0.0, atol=1e-10) and np.allclose(eigenvalues[2:], 1.0, atol=1e-10)
assert np.allclose(J, J.T, atol=1e-12)                                          # a symmetric projection, times r
assert all(abs(s - 1.0) < 1e-3 for s in std_post)                              # post-norm: renormalized every block
assert std_pre[-1] > 1.5 * std_pre[0] > 1.0                                    # pre-norm: the stream grows
assert x32.dtype == np.float32
assert x_err_h5 < ln_errors["B=3, T=7"]["x"] / 5                              # rounding error ~ eps / h
assert ln_png.exists()
print("lesson 03 OK")
