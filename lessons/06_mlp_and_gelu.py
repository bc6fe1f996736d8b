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
# # Lesson 06 — The MLP and GELU
#
# **You will learn**
# - GELU, $x\,\Phi(x)$: what it is, its derivative, and how it differs from ReLU;
# - the tanh approximation that GPT-1 and GPT-2 actually used, how close it is (about $5 \times 10^{-4}$), and why
#   that matters when loading their weights;
# - the position-wise MLP of a Transformer block, $C \to 4C \to C$, its backward pass and a gradient check;
# - where the parameters of a GPT block live (two thirds of them are in the MLP).
#
# Attention mixes information *between* positions; the MLP then processes each position *on its own*, with the same
# weights everywhere. Without a nonlinearity between its two matrices the MLP would collapse into one matrix, so the
# choice of activation matters.

# %%
import os

import matplotlib.pyplot as plt
import numpy as np

from minigpt.backend import erf
from minigpt.gradcheck import check_gradients, rel_error
from minigpt.layers.activations import gelu_backward, gelu_forward, gelu_tanh_backward, gelu_tanh_forward
from minigpt.layers.mlp import mlp_backward, mlp_forward
from minigpt.viz import save_figure

FAST = os.environ.get("MINIGPT_FAST") == "1"
rng = np.random.default_rng(0)

# %% [markdown]
# ## GELU
#
# ReLU multiplies its input by a hard gate, $x \cdot [x > 0]$. GELU (Hendrycks and Gimpel, 2016) multiplies it by a
# soft one: the probability that a standard normal variable is below $x$,
#
# $$ \operatorname{GELU}(x) = x\,\Phi(x), \qquad \Phi(x) = \tfrac12\big(1 + \operatorname{erf}(x/\sqrt2)\big). $$
#
# For large positive $x$, $\Phi \to 1$ and GELU is the identity; for large negative $x$, $\Phi \to 0$ and GELU is 0,
# like ReLU. In between it is smooth, and slightly negative for $x < 0$, with a minimum near $x = -0.75$.
#
# **Derivative** (product rule, with $\Phi' = \varphi$, the normal density):
#
# $$ \operatorname{GELU}'(x) = \Phi(x) + x\,\varphi(x), \qquad \varphi(x) = \frac{e^{-x^2/2}}{\sqrt{2\pi}} . $$
#
# It is 1/2 at $x = 0$, zero at the minimum, and it overshoots 1 a little near $x \approx 1.4$ (the gate still opens
# while $x$ grows). Backward is elementwise: $dx = dy \cdot \operatorname{GELU}'(x)$.
#
# **The tanh approximation.** For speed, the GELU paper also gave an approximation,
#
# $$ \operatorname{GELU}_{\tanh}(x) = \tfrac12\, x\,\big(1 + \tanh u\big), \qquad u = \sqrt{2/\pi}\,\big(x + 0.044715\,x^3\big). $$
#
# The $\sqrt{2/\pi}$ makes the slopes of $\Phi$ and $\tfrac12(1 + \tanh u)$ agree at 0; the cubic term bends the
# tanh towards the normal CDF. Matching the $x^3$ terms of the two Taylor series would give
# $2/(3\pi) - 1/6 \approx 0.0455$; the published $0.044715$ is a slightly better fit over the whole line (we measure
# both below). Its derivative, by the product rule and $\tanh' = 1 - \tanh^2$:
#
# $$ \operatorname{GELU}_{\tanh}'(x) = \tfrac12(1 + \tanh u) + \tfrac12\, x\,(1 - \tanh^2 u)\,\sqrt{2/\pi}\,(1 + 3 \cdot 0.044715\, x^2). $$
#
# OpenAI's GPT-1 and GPT-2 code both use the tanh form (`0.5*x*(1+tf.tanh(math.sqrt(2/math.pi)*(x+0.044715*tf.pow(x, 3))))`),
# so their weights were trained with it: to reproduce GPT-2's outputs you must use it too (Hugging Face calls it
# `gelu_new`). minigpt has both, `gelu` (exact, with erf) and `gelu_tanh`.

# %%
xs = np.linspace(-5, 5, 2001 if FAST else 20001)             # (N,)
cdf = 0.5 * (1 + erf(xs / np.sqrt(2)))                       # (N,) Phi(x)
pdf = np.exp(-0.5 * xs * xs) / np.sqrt(2 * np.pi)            # (N,) phi(x)
u = np.sqrt(2 / np.pi) * (xs + 0.044715 * xs * xs * xs)      # (N,)
gelu_scratch = xs * cdf                                      # (N,)
gelu_tanh_scratch = 0.5 * xs * (1 + np.tanh(u))              # (N,)
dgelu_scratch = cdf + xs * pdf                               # (N,) GELU'(x)
du = np.sqrt(2 / np.pi) * (1 + 3 * 0.044715 * xs * xs)       # (N,) du/dx
t = np.tanh(u)                                               # (N,)
dgelu_tanh_scratch = 0.5 * (1 + t) + 0.5 * xs * (1 - t * t) * du   # (N,) product rule, tanh' = 1 - tanh^2

gelu_lib, gelu_cache = gelu_forward(xs)                      # (N,)
gelu_tanh_lib, gelu_tanh_cache = gelu_tanh_forward(xs)       # (N,)
ones = np.ones_like(xs)                                      # (N,) dout = 1 gives the derivative itself
dgelu_lib = gelu_backward(ones, gelu_cache)                  # (N,)
dgelu_tanh_lib = gelu_tanh_backward(ones, gelu_tanh_cache)   # (N,)
scratch_vs_library = {
    "GELU": rel_error(gelu_scratch, gelu_lib), "GELU_tanh": rel_error(gelu_tanh_scratch, gelu_tanh_lib),
    "GELU'": rel_error(dgelu_scratch, dgelu_lib), "GELU_tanh'": rel_error(dgelu_tanh_scratch, dgelu_tanh_lib)}
print("from scratch vs library:", {k: f"{v:.1e}" for k, v in scratch_vs_library.items()})

# %% [markdown]
# How far apart are the two, and how good is 0.044715 compared with the Taylor coefficient?

# %%
diff = gelu_lib - gelu_tanh_lib                              # (N,)
ddiff = dgelu_lib - dgelu_tanh_lib                           # (N,)
worst = np.abs(diff).argmax()
print(f"max |GELU - GELU_tanh|   = {np.abs(diff).max():.2e} at x = {xs[worst]:+.2f}")
print(f"max |GELU' - GELU_tanh'| = {np.abs(ddiff).max():.2e}")
coefficient_error = {}
for a in (0.044715, 2 / (3 * np.pi) - 1 / 6):
    approx = 0.5 * xs * (1 + np.tanh(np.sqrt(2 / np.pi) * (xs + a * xs * xs * xs)))   # (N,)
    coefficient_error[a] = np.abs(gelu_lib - approx).max()
    print(f"  coefficient {a:.6f}: max error {coefficient_error[a]:.2e}")

# %% [markdown]
# The largest gap is about $4.7 \times 10^{-4}$, near $|x| \approx 2.7$. That is far above float32's rounding
# ($\sim 10^{-7}$ relative): a model run with the wrong GELU drifts measurably from its reference outputs, layer
# after layer, even though it would train equally well either way.
#
# The figure: the two GELUs and ReLU, their difference (note the scale), and the derivatives.

# %%
fig, (ax_f, ax_d, ax_g) = plt.subplots(1, 3, figsize=(14, 3.8))
ax_f.plot(xs, np.maximum(xs, 0), color="grey", linestyle=":", label="ReLU")
ax_f.plot(xs, gelu_lib, label="GELU (erf)")
ax_f.plot(xs, gelu_tanh_lib, linestyle="--", label="GELU (tanh)")
ax_f.set_title("activations")
ax_f.set_ylabel("f(x)")
ax_f.legend()
ax_d.plot(xs, diff)
ax_d.set_title("GELU(erf) - GELU(tanh)")
ax_d.set_ylabel("GELU_erf(x) - GELU_tanh(x)")
ax_d.ticklabel_format(axis="y", style="sci", scilimits=(0, 0))
ax_g.plot(xs, (xs > 0).astype(float), color="grey", linestyle=":", label="ReLU'")
ax_g.plot(xs, dgelu_lib, label="GELU' (erf)")
ax_g.plot(xs, dgelu_tanh_lib, linestyle="--", label="GELU' (tanh)")
ax_g.set_title("derivatives")
ax_g.set_ylabel("f'(x) = df/dx")
ax_g.legend()
for ax in (ax_f, ax_d, ax_g):
    ax.set_xlabel("x")
    ax.grid(alpha=0.3)
gelu_png = save_figure(fig, "06_gelu")
print("saved", gelu_png)

# %% [markdown]
# Both backward passes against finite differences, in float64, on values spread over $[-4, 4]$:

# %%
x_check = 2 * rng.standard_normal((3, 7))                    # (3, 7)
activation_errors = {
    "gelu": check_gradients(gelu_forward, gelu_backward, [x_check.copy()], names=["x"])["x"],
    "gelu_tanh": check_gradients(gelu_tanh_forward, gelu_tanh_backward, [x_check.copy()], names=["x"])["x"]}
print("gradient check:", {k: f"{v:.1e}" for k, v in activation_errors.items()})

# %% [markdown]
# ## The MLP
#
# Each position's vector $x \in \mathbb{R}^C$ goes through
#
# $$ h = x W_1 + b_1 \ (F), \qquad a = \operatorname{GELU}(h) \ (F), \qquad y = a W_2 + b_2 \ (C), \qquad F = 4C . $$
#
# GPT-1 used $F = 3072$ for $C = 768$, exactly $4C$ (the paper: *"3072 dimensional inner states"*), and GPT-2 and
# GPT-3 kept the ratio. "Hidden" means two different things here: the MLP's hidden layer has $F$ units, while the
# model's hidden states have $C$ channels. The textbook's size table prints $F$ (3072, 6400, 49152) in a column it
# calls "Hidden_size"; lesson 13 sorts the two out. The same $W_1, W_2$ serve every position, so the layer is applied
# to a $(B, T, C)$ batch as two matrix products over $N = BT$ rows.
#
# **Backward**, bottom up, with the pieces we have:
#
# $$ da = dy\,W_2^\top,\ \ dW_2 = a^\top dy,\ \ db_2 = \textstyle\sum_n dy_n; \qquad
#    dh = da \odot \operatorname{GELU}'(h); \qquad
#    dx = dh\,W_1^\top,\ \ dW_1 = x^\top dh,\ \ db_1 = \textstyle\sum_n dh_n . $$
#
# **Where the parameters are.** The MLP holds $2 \cdot 4C^2 + 4C + C = 8C^2 + 5C$ parameters, attention $4C^2 + 4C$
# (lesson 05), so two thirds of a GPT block's weights are in its MLP. Per token the MLP also costs $8C^2$
# multiply-adds against attention's $4C^2$ for its projections (plus $2TC$ for the scores).

# %%
B, T, C = 2, 5, 12
F = 4 * C
x = rng.standard_normal((B, T, C))                           # (B, T, C)
w1 = rng.standard_normal((C, F)) / np.sqrt(C)                # (C, F)
b1 = 0.1 * rng.standard_normal(F)                            # (F,)
w2 = rng.standard_normal((F, C)) / np.sqrt(F)                # (F, C)
b2 = 0.1 * rng.standard_normal(C)                            # (C,)

h = x @ w1 + b1                                              # (B, T, F) expand
a = 0.5 * h * (1 + np.tanh(np.sqrt(2 / np.pi) * (h + 0.044715 * h * h * h)))   # (B, T, F) GELU, tanh form
y_scratch = a @ w2 + b2                                      # (B, T, C) project back
y, _ = mlp_forward(x, w1, b1, w2, b2, activation="gelu_tanh")                  # (B, T, C)
print("from scratch vs mlp_forward:", rel_error(y_scratch, y))

n_mlp = w1.size + b1.size + w2.size + b2.size
n_attn = 4 * C * C + 4 * C
print(f"C = {C}: MLP {n_mlp} parameters (8C^2 + 5C = {8 * C * C + 5 * C}), attention {n_attn}, "
      f"MLP share {n_mlp / (n_mlp + n_attn):.3f}")
print(f"GPT-2 small, C = 768: MLP share {(8 * 768 * 768 + 5 * 768) / (12 * 768 * 768 + 9 * 768):.4f}")

# %% [markdown]
# "Position-wise" can be checked directly: shuffling the positions before the MLP shuffles its outputs the same way.
# Nothing passes between positions, which is why the MLP needs no mask.

# %%
perm = rng.permutation(T)
y_perm, _ = mlp_forward(x[:, perm], w1, b1, w2, b2)          # (B, T, C)
print("MLP(x shuffled) == MLP(x) shuffled:", np.allclose(y_perm, y[:, perm]))

# %% [markdown]
# And the whole MLP against finite differences, with either GELU:

# %%
Tc = 3 if FAST else 7
xc = rng.standard_normal((3, Tc, C))                         # (B, T, C)
mlp_args = [xc, w1.copy(), b1.copy(), w2.copy(), b2.copy()]
mlp_errors = {}
for act in ("gelu", "gelu_tanh"):
    errs = check_gradients(lambda *p: mlp_forward(*p, activation=act), mlp_backward, mlp_args,
                           names=["x", "w1", "b1", "w2", "b2"], max_entries=50 if FAST else 200)
    mlp_errors[act] = max(errs.values())
    print(f"{act:9s}", {k: f"{v:.1e}" for k, v in errs.items()})

# %% [markdown]
# ## Summary
# - GELU $= x\Phi(x)$, a smooth gate; its derivative $\Phi(x) + x\varphi(x)$ is 1/2 at 0, 0 at the minimum
#   $x \approx -0.75$ and slightly above 1 near $x \approx 1.4$.
# - GPT-1 and GPT-2 used the tanh approximation $\tfrac12 x(1 + \tanh(\sqrt{2/\pi}(x + 0.044715x^3)))$; it differs from
#   the exact GELU by up to $4.7 \times 10^{-4}$: use the one the weights were trained with.
# - The MLP is $C \to 4C \to C$ with GELU in between, applied to every position on its own. Its backward is two
#   linear backwards around an elementwise one. It holds two thirds of a block's parameters.
#
# ## Exercises
# 1. Find the minimum of GELU by Newton's method on $\operatorname{GELU}'(x) = 0$ (you need $\operatorname{GELU}''$:
#    derive it). Check $x^\star \approx -0.7518$ and $\operatorname{GELU}(x^\star) \approx -0.17$.
# 2. The other approximation of the GELU paper is $x\,\sigma(1.702x)$. Add it to the plot of differences. How does its
#    worst error compare with the tanh form's?
# 3. Replace GELU by the identity. Show numerically that the MLP is then a single linear layer, and find its weight.

# %% [markdown]
# ## Check

# %%
assert max(scratch_vs_library.values()) < 1e-12
assert 4.0e-4 < np.abs(diff).max() < 5.0e-4 and abs(abs(xs[worst]) - 2.7) < 0.1   # the known gap and where it is
assert coefficient_error[0.044715] < coefficient_error[2 / (3 * np.pi) - 1 / 6]  # the fitted constant beats Taylor's
zero = np.abs(xs).argmin()
assert abs(dgelu_lib[zero] - 0.5) < 1e-12 and abs(dgelu_tanh_lib[zero] - 0.5) < 1e-12   # Phi(0) = 1/2
x_min = xs[gelu_lib.argmin()]
assert abs(x_min + 0.7518) < 0.01 and abs(gelu_lib.min() + 0.1700) < 1e-3          # GELU's minimum
assert abs(dgelu_lib[gelu_lib.argmin()]) < 1e-2 and dgelu_lib.max() > 1.0          # zero slope there; overshoot
assert max(activation_errors.values()) < 1e-6 and max(mlp_errors.values()) < 1e-6
assert y.shape == (B, T, C) and rel_error(y_scratch, y) < 1e-12 and np.allclose(y_perm, y[:, perm])
assert n_mlp == 8 * C * C + 5 * C
y32, _ = mlp_forward(*(p.astype(np.float32) for p in (x, w1, b1, w2, b2)))
assert y32.dtype == np.float32 and rel_error(y32, y) < 1e-5
assert gelu_png.exists()
print("lesson 06 OK")
