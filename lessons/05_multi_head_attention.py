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
# # Lesson 05 — Multi-head attention
#
# **You will learn**
# - why a Transformer runs H small heads side by side instead of one big one, at the same cost;
# - `split_heads` and `merge_heads`: a reshape and a transpose, each the other's backward pass;
# - the whole multi-head attention layer, forward and backward, put together from lesson 01's linear layer and
#   lesson 04's attention, and checked as one unit against finite differences;
# - what GPT's "Conv1D" is: a linear layer whose weight is stored (in, out), the transpose of `torch.nn.Linear`'s.
#
# A single head produces one weighted average of the values per position. A token often needs several things
# at once: the previous token, the subject of the sentence, the matching bracket. Multi-head attention gives it
# H heads, each with its own queries, keys and values of size $D = C/H$, and concatenates their answers.

# %%
import os

import numpy as np

from minigpt.gradcheck import check_gradients, numerical_gradient, rel_error
from minigpt.layers.attention import attention_backward, attention_forward, merge_heads, split_heads
from minigpt.layers.linear import linear_backward, linear_forward
from minigpt.masks import causal_mask

FAST = os.environ.get("MINIGPT_FAST") == "1"
rng = np.random.default_rng(0)

# %% [markdown]
# ## Splitting the channels into heads
#
# The queries of all heads come out of ONE linear layer, $Q = XW_q$ with $W_q \in \mathbb{R}^{C \times C}$: head $h$
# owns channels $hD .. (h+1)D - 1$. `split_heads` makes that explicit:
#
# $$ (B, T, C) \xrightarrow{\text{reshape}} (B, T, H, D) \xrightarrow{\text{transpose}} (B, H, T, D), $$
#
# so that the heads become a batch dimension and one batched matrix product serves them all. `merge_heads` is the
# inverse, $(B, H, T, D) \to (B, T, H, D) \to (B, T, C)$: it puts the heads' outputs side by side again.
#
# **Backward.** Both functions only move entries around: output entry $n$ is input entry $\pi(n)$ for a fixed
# permutation $\pi$. The gradient of a permutation is the inverse permutation (each input entry went to exactly
# one place, so its gradient comes from exactly that place). Hence the backward of `split_heads` is `merge_heads`,
# and the backward of `merge_heads` is `split_heads`. No cache is needed.

# %%
B, T, C, H = 2, 5, 12, 3
D = C // H
x = rng.standard_normal((B, T, C))                           # (B, T, C)
xh = split_heads(x, H)                                       # (B, H, T, D)
print("split:", x.shape, "->", xh.shape, "| merged back equals x:", np.array_equal(merge_heads(xh), x))
print("head 1 is channels 4..7:", np.array_equal(xh[:, 1], x[..., D:2 * D]))

# %% [markdown]
# ## The layer
#
# With $X \in \mathbb{R}^{B \times T \times C}$, weights $W_q, W_k, W_v, W_o \in \mathbb{R}^{C \times C}$ and biases:
#
# $$
# \begin{aligned}
# Q &= XW_q + b_q,\quad K = XW_k + b_k,\quad V = XW_v + b_v & (B, T, C) \\
# Q_h, K_h, V_h &= \text{split}(Q), \text{split}(K), \text{split}(V) & (B, H, T, D) \\
# O_h &= \operatorname{softmax}\!\big(Q_h K_h^\top/\sqrt{D} + \text{mask}\big)\, V_h & (B, H, T, D) \\
# Y &= \text{merge}(O_h)\, W_o + b_o & (B, T, C)
# \end{aligned}
# $$
#
# **Backward**, line by line from the bottom, each step the backward of a layer we already have:
#
# 1. $Y = OW_o + b_o$ (linear): $dO = dY\,W_o^\top$, $dW_o = O^\top dY$, $db_o = \sum dY$.
# 2. $O = \text{merge}(O_h)$: $dO_h = \text{split}(dO)$.
# 3. attention (lesson 04): $dQ_h, dK_h, dV_h$.
# 4. $Q_h = \text{split}(Q)$: $dQ = \text{merge}(dQ_h)$, and the same for K and V.
# 5. three linear layers: $dW_q = X^\top dQ$, $db_q = \sum dQ$, etc. $X$ feeds all three, so
#    $dX = dQ\,W_q^\top + dK\,W_k^\top + dV\,W_v^\top$: a variable used several times collects the sum of its gradients.
#
# The sizes: 4 matrices of $C \times C$ and 4 biases, $4C^2 + 4C$ parameters, whatever H is. The score products cost
# $H \cdot T^2 \cdot D = T^2 C$ multiply-adds per sequence, also independent of H. Many heads are free.

# %%
def mha_forward(x, wq, bq, wk, bk, wv, bv, wo, bo, n_head, mask):
    """Causal multi-head self-attention from the library pieces. x (B, T, C) -> y (B, T, C), cache"""
    q, q_cache = linear_forward(x, wq, bq)                   # (B, T, C)
    k, k_cache = linear_forward(x, wk, bk)                   # (B, T, C)
    v, v_cache = linear_forward(x, wv, bv)                   # (B, T, C)
    q, k, v = split_heads(q, n_head), split_heads(k, n_head), split_heads(v, n_head)   # (B, H, T, D) each
    o, att_cache = attention_forward(q, k, v, mask=mask)     # (B, H, T, D)
    o = merge_heads(o)                                       # (B, T, C)
    y, o_cache = linear_forward(o, wo, bo)                   # (B, T, C)
    return y, (n_head, q_cache, k_cache, v_cache, att_cache, o_cache)


def mha_backward(dy, cache):
    """dy (B, T, C) -> dx, dwq, dbq, dwk, dbk, dwv, dbv, dwo, dbo (the forward's array inputs, in order)."""
    n_head, q_cache, k_cache, v_cache, att_cache, o_cache = cache
    do, dwo, dbo = linear_backward(dy, o_cache)              # (B, T, C)     undoes y = o @ wo + bo
    do = split_heads(do, n_head)                             # (B, H, T, D)  undoes merge_heads
    dq, dk, dv = attention_backward(do, att_cache)           # (B, H, T, D) each
    dx_q, dwq, dbq = linear_backward(merge_heads(dq), q_cache)   # (B, T, C)  undoes split_heads, then q = x @ wq + bq
    dx_k, dwk, dbk = linear_backward(merge_heads(dk), k_cache)   # (B, T, C)
    dx_v, dwv, dbv = linear_backward(merge_heads(dv), v_cache)   # (B, T, C)
    return dx_q + dx_k + dx_v, dwq, dbq, dwk, dbk, dwv, dbv, dwo, dbo   # x fed all three projections


def init_params(C, rng):
    """Weights (C, C) with std 1/sqrt(C) and small random biases (C,), in the forward's order."""
    params = []
    for _ in range(4):
        params += [rng.standard_normal((C, C)) / np.sqrt(C), 0.1 * rng.standard_normal(C)]
    return params                                            # [wq, bq, wk, bk, wv, bv, wo, bo]


params = init_params(C, rng)
wq, bq, wk, bk, wv, bv, wo, bo = params
mask = causal_mask(T)                                        # (T, T)
y, cache = mha_forward(x, *params, n_head=H, mask=mask)      # (B, T, C)
print("y", y.shape, y.dtype)

# %% [markdown]
# The claim "many heads are free" in numbers, for GPT-2 small ($C = 768$, $T = 1024$, one sequence). Parameters and
# multiply-adds do not move with H; what does grow is the attention matrix, $H \cdot T^2$ probabilities that the
# backward pass needs (lesson 22 removes it).

# %%
C_gpt2, T_gpt2 = 768, 1024
print(f"{'H':>3} {'D':>4} {'parameters':>11} {'projection MACs':>16} {'score+value MACs':>17} {'probs entries':>14}")
cost_table = {}
for n_head in (1, 4, 12, 64):
    params_count = 4 * C_gpt2 * C_gpt2 + 4 * C_gpt2                    # wq, wk, wv, wo and their biases
    proj_macs = 4 * T_gpt2 * C_gpt2 * C_gpt2                           # four (T, C) @ (C, C) products
    attn_macs = 2 * n_head * T_gpt2 * T_gpt2 * (C_gpt2 // n_head)      # Q K^T and P V, per head (T, T, D)
    cost_table[n_head] = (params_count, proj_macs, attn_macs, n_head * T_gpt2 * T_gpt2)
    print(f"{n_head:3d} {C_gpt2 // n_head:4d} {params_count:11,d} {proj_macs:16,d} {attn_macs:17,d} "
          f"{n_head * T_gpt2 * T_gpt2:14,d}")

# %% [markdown]
# ### The same layer, head by head
#
# The batched code hides the heads in a dimension. Written out with a loop over heads and explicit channel slices,
# in plain NumPy, it must give the same answer:

# %%
def mha_loop(x, wq, bq, wk, bk, wv, bv, wo, bo, n_head):
    """Multi-head causal attention, one head at a time. x (B, T, C) -> (B, T, C)"""
    B, T, C = x.shape
    D = C // n_head
    Q, K, V = x @ wq + bq, x @ wk + bk, x @ wv + bv          # (B, T, C) each
    future = np.triu(np.ones((T, T), dtype=bool), k=1)       # (T, T) True above the diagonal
    heads = []
    for h in range(n_head):
        cols = slice(h * D, (h + 1) * D)                     # this head's channels
        S = Q[..., cols] @ K[..., cols].swapaxes(1, 2) / np.sqrt(D)   # (B, T, T)
        S[:, future] = -np.inf                               # (B, T, T) causal mask
        P = np.exp(S - S.max(axis=-1, keepdims=True))        # (B, T, T)
        P /= P.sum(axis=-1, keepdims=True)                   # (B, T, T)
        heads.append(P @ V[..., cols])                       # (B, T, D)
    return np.concatenate(heads, axis=-1) @ wo + bo          # (B, T, C)


y_loop = mha_loop(x, *params, n_head=H)                      # (B, T, C)
print("loop over heads vs library composition:", rel_error(y_loop, y))

# %% [markdown]
# Concatenating the heads and multiplying by $W_o$ is the same as letting each head write through its own
# $D$ rows of $W_o$ and adding: $\text{merge}(O_h)W_o = \sum_h O_h W_o[hD:(h+1)D,\, :]$. Each head adds its own
# contribution to the output.

# %%
o_heads = attention_forward(*(split_heads(x @ w + b, H) for w, b in ((wq, bq), (wk, bk), (wv, bv))),
                            mask=mask)[0]                    # (B, H, T, D)
per_head = [o_heads[:, h] @ wo[h * D:(h + 1) * D] for h in range(H)]   # H arrays (B, T, C)
print("sum of per-head contributions vs y:", rel_error(sum(per_head) + bo, y))

# %% [markdown]
# ### Gradient check of the whole layer
#
# Every one of the nine inputs, in float64, against centered differences (up to 200 sampled entries each).
# One of them is special. The key bias $b_k$ adds $q_i \cdot b_k$ to *every* score of row $i$, the same amount for
# every key, and the softmax ignores a constant added to a row (lesson 04). So $\partial L/\partial b_k = 0$ exactly:
# the key bias is a parameter that can never learn. (That holds while keys enter only through $q \cdot k$: RoPE,
# lesson 15, rotates $b_k$ differently at each position and gives it a gradient.) Its relative error would compare
# two rounding noises, so we check it apart: both gradients must be at the noise level.

# %%
Bc, Tc = (1, 4) if FAST else (3, 7)
xc = rng.standard_normal((Bc, Tc, C))                        # (B, T, C)
names = ["x", "wq", "bq", "wk", "bk", "wv", "bv", "wo", "bo"]
args_c = [xc, *init_params(C, rng)]


def mha_c(*args):
    return mha_forward(*args, n_head=H, mask=causal_mask(Tc))


mha_errors = check_gradients(mha_c, mha_backward, args_c, names=names, wrt=[n for n in names if n != "bk"],
                             max_entries=60 if FAST else 200)
for name, err in mha_errors.items():
    print(f"  d{name:3s} rel_error {err:.1e}")

y_c, cache_c = mha_c(*args_c)                                # (B, T, C)
dy_c = rng.standard_normal(y_c.shape)                        # (B, T, C)
dbk = mha_backward(dy_c, cache_c)[4]                         # (C,)
_, dbk_numeric = numerical_gradient(lambda: (mha_c(*args_c)[0] * dy_c).sum(), args_c[4])   # (C,)
print(f"  dbk: largest |analytic| {np.abs(dbk).max():.1e}, largest |numeric| {np.abs(dbk_numeric).max():.1e}")

# %% [markdown]
# ## GPT's "Conv1D" is a linear layer
#
# OpenAI's GPT-1 and GPT-2 code computes every projection of a block with a function `conv1d`: a 1-D convolution with
# kernel width 1 over the sequence. A convolution of width 1 looks at one position at a time, so it is a linear
# layer applied to every token; the code even computes it as `matmul(x, w) + b`. Its weight is stored as
# (in, out) = $(C_\text{in}, C_\text{out})$ (in the TensorFlow checkpoints with an extra leading axis of size 1, the
# kernel width), and Hugging Face keeps that layout in `transformers.pytorch_utils.Conv1D`, while `torch.nn.Linear`
# stores (out, in) and computes $x W^\top + b$. So a GPT-2 checkpoint's `c_attn`, `c_proj`, `c_fc` weights are the
# *transpose* of what an `nn.Linear` wants. minigpt stores weights (in, out) like GPT-2, so they load as they are.
#
# GPT-2's `attn.c_attn` is also a *fused* projection: one Conv1D from $C$ to $3C$ whose output columns are
# $[\,Q \mid K \mid V\,]$. Cutting its weight into three column blocks gives $W_q, W_k, W_v$; `attn.c_proj` is $W_o$.

# %%
try:
    import torch
    from transformers.pytorch_utils import Conv1D
except ImportError:                                          # transformers is optional: the layout is explained above
    Conv1D = None

if Conv1D is not None:
    torch.manual_seed(0)
    c_attn = Conv1D(3 * C, C).double()                      # nf = 3C outputs, nx = C inputs
    with torch.no_grad():
        c_attn.bias.normal_()
        conv_out = c_attn(torch.from_numpy(x)).numpy()      # (B, T, 3C)
    w_attn = c_attn.weight.detach().numpy()                  # (C, 3C): (in, out), like minigpt
    b_attn = c_attn.bias.detach().numpy()                    # (3C,)
    print("Conv1D weight shape:", tuple(w_attn.shape), "= (in, out)")

    ours, _ = linear_forward(x, w_attn, b_attn)              # (B, T, 3C) minigpt, weight as is
    as_linear = torch.nn.Linear(C, 3 * C).double()           # weight (out, in) = (3C, C)
    with torch.no_grad():
        as_linear.weight.copy_(c_attn.weight.T)              # the transpose
        as_linear.bias.copy_(c_attn.bias)
        linear_out = as_linear(torch.from_numpy(x)).numpy()  # (B, T, 3C)
        conv1d_out = torch.nn.functional.conv1d(             # a true convolution of kernel width 1
            torch.from_numpy(x).transpose(1, 2),             # (B, C, T): channels first
            c_attn.weight.T[:, :, None], c_attn.bias,        # kernel (3C, C, 1)
        ).transpose(1, 2).numpy()                            # (B, T, 3C)
    conv1d_parity = {"minigpt linear_forward": rel_error(ours, conv_out),
                     "nn.Linear with weight.T": rel_error(linear_out, conv_out),
                     "conv1d, kernel width 1": rel_error(conv1d_out, conv_out)}
    for what, err in conv1d_parity.items():
        print(f"  Conv1D vs {what:24s} rel_error {err:.1e}")

    wq2, wk2, wv2 = np.split(w_attn, 3, axis=1)              # (C, C) each: columns [Q | K | V]
    bq2, bk2, bv2 = np.split(b_attn, 3)                      # (C,) each
    fused_thirds = np.split(conv_out, 3, axis=-1)            # 3 x (B, T, C): GPT-2's q, k, v
    split_errors = [rel_error(third, linear_forward(x, w3, b3)[0])     # (B, T, C) each, from the split weights
                    for third, w3, b3 in zip(fused_thirds, (wq2, wk2, wv2), (bq2, bk2, bv2))]
    print("q, k, v from the fused c_attn vs from the three column blocks:", [f"{e:.1e}" for e in split_errors])
else:
    print("transformers is not installed: Conv1D(nf, nx) holds weight (nx, nf) = (in, out) and computes x @ w + b")

# %% [markdown]
# ## Summary
# - H heads of size $D = C/H$ cost the same as one head of size $C$: the same $4C^2 + 4C$ parameters and
#   $T^2 C$ score products. Each head has its own attention pattern and writes through its own $D$ rows of $W_o$.
# - `split_heads` $(B,T,C) \to (B,H,T,D)$ and `merge_heads` back are permutations of entries: each is the other's
#   backward pass.
# - The layer's backward is the composition of backwards we already had; $X$ feeds Q, K and V, so $dX$ is a sum of three.
# - The key bias never gets a gradient: it shifts a whole row of scores by one constant, which the softmax ignores.
# - GPT's Conv1D is a linear layer stored (in, out); `nn.Linear` stores (out, in), hence the transpose when loading
#   GPT-2 weights into PyTorch layers, and none in minigpt. `c_attn` fuses $W_q, W_k, W_v$ column-wise.
#
# ## Exercises
# 1. Fuse the three projections yourself: one `linear_forward` with `np.concatenate([wq, wk, wv], axis=1)`, then
#    `np.split`. Check that $y$ is unchanged, and write the backward (hint: the gradients concatenate the same way).
# 2. Set $H = 1$ and $H = C$ (heads of size 1). Does `mha_forward` still run? What can a head of size 1 compute?
# 3. Count multiply-adds of the layer for $T = 1024$, $C = 768$, $H = 12$ (GPT-2 small): the four projections
#    against the two attention products. At which $T$ do they break even?

# %% [markdown]
# ## Check

# %%
assert xh.shape == (B, H, T, D) and np.array_equal(merge_heads(split_heads(x, H)), x)
assert np.array_equal(split_heads(merge_heads(xh), H), xh)
assert y.shape == (B, T, C) and y.dtype == np.float64
assert len({row[:3] for row in cost_table.values()}) == 1 and cost_table[12][3] == 12 * cost_table[1][3]
assert rel_error(y_loop, y) < 1e-12 and rel_error(sum(per_head) + bo, y) < 1e-12
assert set(mha_errors) == set(names) - {"bk"} and max(mha_errors.values()) < 1e-6, mha_errors
assert np.abs(dbk).max() < 1e-12 and np.abs(dbk_numeric).max() < 1e-6   # the key bias gets no gradient
dparams = mha_backward(np.ones_like(y), cache)
assert all(g.shape == p.shape for g, p in zip(dparams, [x, *params]))
assert np.allclose(dparams[-1], B * T)                       # dbo = sum of dy over all B*T positions
y32, _ = mha_forward(x.astype(np.float32), *(p.astype(np.float32) for p in params), n_head=H, mask=mask)
assert y32.dtype == np.float32 and rel_error(y32, y) < 1e-5
if Conv1D is not None:
    assert max(conv1d_parity.values()) < 1e-12 and max(split_errors) < 1e-12
    assert w_attn.shape == (C, 3 * C) and as_linear.weight.shape == (3 * C, C)
print("lesson 05 OK")
