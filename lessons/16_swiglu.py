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
# # Lesson 16 — SwiGLU: the gated MLP
#
# **You will learn**
# - the SiLU (Swish) activation and its derivative;
# - the gated linear unit (门控线性单元, GLU) family, and SwiGLU, the MLP of LLaMA, ChatGLM2 and GLM-4;
# - the backward pass of a gated MLP: the product rule splits the gradient between the two branches, and
#   $x$, read by both, sums what comes back;
# - why LLaMA's hidden size is $\frac{8}{3}d$ rounded up to `multiple_of`: $d = 4096 \to 11008$.
#
# GPT's MLP (lesson 06) is $\mathrm{GELU}(xW_1)W_2$ with a hidden size of $4d$. Shazeer (2020) tried replacing the
# activation by a *gate*: a second projection of $x$ that multiplies the activation entry by entry. The gated
# variants trained to lower perplexity at the same cost; of their success the paper says only that "we attribute
# their success, as all else, to divine benevolence". LLaMA adopted SwiGLU, and most open models followed.

# %%
import os

import numpy as np

from minigpt.config import ModelConfig
from minigpt.gradcheck import check_gradients, rel_error
from minigpt.layers.activations import gelu_forward, relu_forward, silu_backward, silu_forward
from minigpt.layers.mlp import gated_mlp_backward, gated_mlp_forward
from minigpt.viz import plot_curves

FAST = os.environ.get("MINIGPT_FAST") == "1"

# %% [markdown]
# ## SiLU
#
# The sigmoid linear unit (Swish with $\beta = 1$) weights $x$ by the logistic sigmoid $\sigma(x) = 1/(1 + e^{-x})$:
#
# $$ \mathrm{SiLU}(x) = x\,\sigma(x), \qquad \mathrm{SiLU}'(x) = \sigma(x) + x\,\sigma(x)\big(1 - \sigma(x)\big) = \sigma(x)\big(1 + x(1 - \sigma(x))\big), $$
#
# by the product rule and $\sigma' = \sigma(1 - \sigma)$. It looks like GELU ($x\Phi(x)$, with the normal CDF in place of the
# sigmoid): smooth, $\approx x$ for large $x$, $\approx 0$ for very negative $x$, and a dip below zero in between.
# The bottom of the dip is where $1 + x(1 - \sigma) = 0$, i.e. $\sigma = 1 + 1/x$, so there
# $\mathrm{SiLU}(x) = x\sigma = x + 1$: the minimum value is the minimiser plus one ($x^\* \approx -1.278$).

# %%
xs = np.linspace(-6, 4, 2001)                                   # (N,) float64
silu, silu_cache = silu_forward(xs)                             # (N,)
dsilu = silu_backward(np.ones_like(xs), silu_cache)             # (N,) SiLU'(x), dout = 1
sigma = 1 / (1 + np.exp(-xs))                                   # (N,) by the textbook formula
print("library SiLU vs x * sigmoid(x): rel_error", rel_error(silu, xs * sigma),
      "| derivative:", rel_error(dsilu, sigma * (1 + xs * (1 - sigma))))
lo, hi = -2.0, -0.5                                            # SiLU' < 0 at -2, > 0 at -0.5: bisect for SiLU' = 0
for _ in range(60):
    mid = np.array((lo + hi) / 2)                               # () float64
    slope = silu_backward(np.ones_like(mid), silu_forward(mid)[1])   # () SiLU'(mid)
    lo, hi = (mid, hi) if slope < 0 else (lo, mid)
x_star = float(lo + hi) / 2
silu_min = float(silu_forward(np.array(x_star))[0])
print(f"minimum: SiLU({x_star:.6f}) = {silu_min:.6f}, and x* + 1 = {x_star + 1:.6f}")
figure = plot_curves({"SiLU(x) = x σ(x)": (xs, silu), "SiLU'(x)": (xs, dsilu),
                      "GELU(x) = x Φ(x)": (xs, gelu_forward(xs)[0]), "ReLU(x)": (xs, relu_forward(xs)[0])},
                     "16_silu", xlabel="x", ylabel="value", title="SiLU, its derivative, GELU and ReLU")
print("saved", figure)

# %% [markdown]
# ## The gated MLP
#
# With $x \in \mathbb{R}^{C}$ (one token), $W_g, W_u \in \mathbb{R}^{C\times F}$ and $W_d \in \mathbb{R}^{F\times C}$, no biases:
#
# $$ g = xW_g, \quad u = xW_u, \quad a = \mathrm{SiLU}(g) \odot u, \quad y = aW_d . $$
#
# $u$ carries the content, $\mathrm{SiLU}(g)$ decides per hidden unit how much of it passes. With $\sigma$ in place of
# SiLU this is Dauphin et al.'s GLU (2017); with GELU it is GeGLU; with SiLU, SwiGLU. In LLaMA's code
# $W_g, W_u, W_d$ are `w1`, `w3`, `w2`; in Hugging Face `gate_proj`, `up_proj`, `down_proj`.
#
# **Backward.** Take $\mathrm{d}y$ and undo one line at a time, bottom up:
#
# $$ \mathrm{d}a = \mathrm{d}y\,W_d^\top, \qquad \mathrm{d}W_d = a^\top \mathrm{d}y $$
#
# The product $a = s \odot u$ with $s = \mathrm{SiLU}(g)$ sends to each factor the other factor (product rule):
#
# $$ \mathrm{d}u = \mathrm{d}a \odot s, \qquad \mathrm{d}s = \mathrm{d}a \odot u, \qquad \mathrm{d}g = \mathrm{d}s \odot \mathrm{SiLU}'(g) $$
#
# and the two projections each give a weight gradient; $x$ fed both, so its gradients add:
#
# $$ \mathrm{d}W_g = x^\top \mathrm{d}g, \qquad \mathrm{d}W_u = x^\top \mathrm{d}u, \qquad \mathrm{d}x = \mathrm{d}g\,W_g^\top + \mathrm{d}u\,W_u^\top . $$
#
# (For a batch, $x^\top$ means the tokens flattened to rows, $(BT, C)^\top$: the weight gradients sum over tokens.)
# The forward caches $x$, $g$, $\sigma(g)$, $s$, $u$ and $a$, so the backward recomputes nothing.

# %% [markdown]
# ## From scratch in NumPy, then the library

# %%
rng = np.random.default_rng(0)
B, T, C, F = 3, 7, 12, 20                                       # odd shapes: T = 7, C not a multiple of 8
x = rng.standard_normal((B, T, C))                              # (B, T, C) float64
w_gate = rng.standard_normal((C, F)) / np.sqrt(C)               # (C, F)
w_up = rng.standard_normal((C, F)) / np.sqrt(C)                 # (C, F)
w_down = rng.standard_normal((F, C)) / np.sqrt(F)               # (F, C)
dy = rng.standard_normal((B, T, C))                             # (B, T, C) upstream gradient

g = x @ w_gate                                                  # (B, T, F)
u = x @ w_up                                                    # (B, T, F)
sig = 1 / (1 + np.exp(-g))                                      # (B, T, F) sigma(g)
s = g * sig                                                     # (B, T, F) SiLU(g)
a = s * u                                                       # (B, T, F)
y = a @ w_down                                                  # (B, T, C)

da = dy @ w_down.T                                              # (B, T, F)
dw_down = a.reshape(-1, F).T @ dy.reshape(-1, C)                # (F, C)
du = da * s                                                     # (B, T, F)
dg = da * u * sig * (1 + g * (1 - sig))                         # (B, T, F) ds * SiLU'(g)
dw_gate = x.reshape(-1, C).T @ dg.reshape(-1, F)                # (C, F)
dw_up = x.reshape(-1, C).T @ du.reshape(-1, F)                  # (C, F)
dx = dg @ w_gate.T + du @ w_up.T                                # (B, T, C) both branches

y_lib, cache = gated_mlp_forward(x, w_gate, w_up, w_down, activation="silu")   # (B, T, C)
grads_lib = gated_mlp_backward(dy, cache)                       # dx, dw_gate, dw_up, dw_down
parity = {name: rel_error(mine, lib) for name, mine, lib in
          zip(["y", "dx", "dw_gate", "dw_up", "dw_down"], [y, dx, dw_gate, dw_up, dw_down], [y_lib, *grads_lib])}
print("from scratch vs library:", {k: f"{v:.1e}" for k, v in parity.items()})

# %% [markdown]
# ## Gradient check
#
# Every input and weight against centered differences, float64, for SwiGLU and for GeGLU (the same layer
# with GELU as the gate's activation), and once more with B = 1, T = 1.

# %%
grad_errors = {}
for act in ("silu", "gelu"):
    for shape in ((B, T, C), (1, 1, C)):
        errs = check_gradients(lambda x, wg, wu, wd: gated_mlp_forward(x, wg, wu, wd, activation=act),
                               gated_mlp_backward,
                               [rng.standard_normal(shape), w_gate.copy(), w_up.copy(), w_down.copy()],
                               names=["x", "w_gate", "w_up", "w_down"])
        grad_errors[(act, shape)] = max(errs.values())
        print(f"{act:>4} {str(shape):>11}:", {k: f"{v:.1e}" for k, v in errs.items()})

# %% [markdown]
# ## The hidden size: 8/3 d, rounded up
#
# GPT's MLP has two matrices of $d \times 4d$: $8d^2$ weights, and $2 \cdot 8d^2 = 16d^2$ FLOPs per token forward. A gated
# MLP has three matrices of $d \times F$. To keep the same parameters and FLOPs,
#
# $$ 3dF = 8d^2 \quad\Longrightarrow\quad F = \tfrac{8}{3}d = \tfrac{2}{3}\cdot 4d . $$
#
# $\frac{8}{3}\cdot 4096 = 10922.67$ is an awkward number for a matrix: GPU matmul tiles and tensor-parallel shards want
# multiples of a power of two. So LLaMA's code takes the integer part and rounds it **up** to a multiple of `multiple_of`
# (256 for LLaMA-1 and LLaMA-2-7B/13B); LLaMA-2-70B and LLaMA-3 also scale by `ffn_dim_multiplier` before rounding:
#
# ```python
# hidden = int(2 * (4 * d) / 3)                            # 10922 for d = 4096
# if ffn_dim_multiplier is not None:
#     hidden = int(ffn_dim_multiplier * hidden)
# hidden = multiple_of * ((hidden + multiple_of - 1) // multiple_of)   # ceil to a multiple: 11008
# ```
#
# Here is that rule in four lines, next to `ModelConfig`'s (which applies it when `d_ff` is not given) and next to the
# `intermediate_size` in each model's published config.

# %%
def llama_hidden(d, multiple_of, ffn_dim_multiplier=None):
    """LLaMA's MLP hidden size for model width d."""
    hidden = int(2 * 4 * d / 3)
    if ffn_dim_multiplier is not None:
        hidden = int(ffn_dim_multiplier * hidden)
    return multiple_of * ((hidden + multiple_of - 1) // multiple_of)


rows = [  # name, config, published intermediate_size
    ("LLaMA-7B", ModelConfig.preset("llama-7b"), 11008),
    ("LLaMA-13B", ModelConfig.preset("llama-7b", n_layer=40, d_model=5120, n_head=40, n_kv_head=40), 13824),
    ("LLaMA-33B", ModelConfig.preset("llama-7b", n_layer=60, d_model=6656, n_head=52, n_kv_head=52), 17920),
    ("LLaMA-65B", ModelConfig.preset("llama-7b", n_layer=80, d_model=8192, n_head=64, n_kv_head=64), 22016),
    ("LLaMA-2-70B", ModelConfig.preset("llama2-70b"), 28672),
    ("LLaMA-3-8B", ModelConfig.preset("llama3-8b"), 14336),
]
print(f"{'model':>12} {'d':>6} {'8d/3':>9} {'mult.':>5} {'x ffn':>5} {'F (rule)':>9} {'F (config)':>10} "
      f"{'published':>9} {'F/d':>5} {'MLP params':>11} {'vs 8d^2':>7}")
hidden_rows = []
for name, cfg, published in rows:
    d = cfg.d_model
    F_rule = llama_hidden(d, cfg.multiple_of, cfg.ffn_dim_multiplier)
    mlp_params = 3 * d * cfg.d_ff                                # w_gate, w_up, w_down
    hidden_rows.append((name, F_rule, cfg.d_ff, published))
    print(f"{name:>12} {d:>6} {8 * d / 3:>9.2f} {cfg.multiple_of:>5} {str(cfg.ffn_dim_multiplier or '-'):>5} "
          f"{F_rule:>9} {cfg.d_ff:>10} {published:>9} {cfg.d_ff / d:>5.2f} {mlp_params / 1e6:>10.1f}M "
          f"{mlp_params / (8 * d * d):>7.3f}")

# %% [markdown]
# Rounding up costs little: LLaMA-7B's MLP has 0.8% more weights than $8d^2$. LLaMA-2-70B's and LLaMA-3's multiplier of 1.3
# spends deliberately more on the MLP, partly paying for the attention weights that GQA saved (lesson 17).
# Not every model uses the rule: ChatGLM2-6B and GLM-4-9B simply state $F = 13696$ ($\approx 3.34\,d$) in their configs.

# %%
glm4 = ModelConfig.preset("glm4-9b")
print(f"GLM-4-9B: d = {glm4.d_model}, F = {glm4.d_ff} = {glm4.d_ff / glm4.d_model:.3f} d, "
      f"activation {glm4.activation!r}")

# %% [markdown]
# ## Summary
# - SiLU$(x) = x\sigma(x)$, SiLU$' = \sigma(1 + x(1-\sigma))$; its minimum is $x^\* + 1 \approx -0.278$ at $x^\* \approx -1.278$.
# - SwiGLU: $y = (\mathrm{SiLU}(xW_g)\odot xW_u)W_d$, no biases. GeGLU swaps in GELU.
# - Backward: the product rule gives $\mathrm{d}u = \mathrm{d}a\odot s$ and $\mathrm{d}g = (\mathrm{d}a\odot u)\odot\mathrm{SiLU}'(g)$;
#   $\mathrm{d}x$ sums both branches.
# - Three matrices instead of two: $F = \frac83 d$ keeps parameters and FLOPs equal to GPT's $4d$ MLP; LLaMA rounds it up to a
#   multiple of 256: $4096 \to 10922 \to 11008$.
#
# ## Exercises
# 1. Write the backward of the original GLU, $(\sigma(xW_g) \odot xW_u)W_d$, and check it with `check_gradients`
#    (hint: `ACTIVATIONS` in `minigpt.layers.activations` maps a name to a forward/backward pair).
# 2. Count the FLOPs per token of forward + backward for LLaMA-7B's MLP and GPT's $4d$ MLP at $d = 4096$.
#    What fraction of the extra 0.8% comes from the rounding?
# 3. Why is $\lim_{x\to\infty} \mathrm{SiLU}'(x) = 1$ but $\mathrm{SiLU}'(x) > 1$ somewhere? Find the maximum of $\mathrm{SiLU}'$ on the grid.
# 4. ReGLU uses ReLU as the gate. Which hidden units get exactly zero gradient for $W_u$, and why does SwiGLU avoid that?

# %% [markdown]
# ## Check

# %%
assert y_lib.shape == (B, T, C) and y_lib.dtype == np.float64
assert max(parity.values()) < 1e-12, parity                                   # from scratch == library
assert max(grad_errors.values()) < 1e-6, grad_errors
assert abs(x_star + 1.2785) < 1e-3 and abs(silu_min - (x_star + 1)) < 1e-12     # min value = minimiser + 1
assert silu_min <= silu.min() + 1e-12                                         # no grid point is lower
for name, F_rule, F_config, published in hidden_rows:
    assert F_rule == F_config == published, (name, F_rule, F_config, published)
assert ModelConfig.preset("llama-7b").d_ff == 11008
cfg7 = ModelConfig.preset("llama-7b")
assert 3 * cfg7.d_model * cfg7.d_ff / (8 * cfg7.d_model ** 2) < 1.01            # rounding up costs < 1% extra
out32, cache32 = gated_mlp_forward(*(t.astype(np.float32) for t in (x, w_gate, w_up, w_down)))
grads32 = gated_mlp_backward(dy.astype(np.float32), cache32)                    # float32 in, float32 out
assert out32.dtype == np.float32 and all(d.dtype == np.float32 for d in grads32)
assert figure.exists()
print("lesson 16 OK")
