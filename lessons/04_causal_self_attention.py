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
# # Lesson 04 — Softmax and causal self-attention
#
# **You will learn**
# - the softmax, why it subtracts the maximum, and its backward pass $dx = y \odot (dy - \langle dy, y\rangle)$;
# - one head of self-attention: queries, keys, values, the scale $1/\sqrt{D}$ and why it is there;
# - the causal mask of masked self-attention (掩码自注意力): token $i$ may look at tokens $0..i$ only,
#   which is what lets a GPT learn to predict every next token of a text in one pass;
# - the backward pass of attention, derived line by line, and checked against finite differences.
#
# An attention head lets every position gather information from other positions. Position $i$ asks a question
# (its query $q_i$), every position $j$ advertises what it holds (its key $k_j$) and what it would hand over
# (its value $v_j$). The answer at $i$ is an average of the values, weighted by how well each key matches the query.

# %%
import os

import matplotlib.font_manager
import numpy as np

from minigpt.gradcheck import check_gradients, rel_error
from minigpt.layers.attention import attention_backward, attention_forward
from minigpt.layers.linear import linear_forward
from minigpt.layers.softmax import softmax_backward, softmax_forward
from minigpt.masks import causal_mask
from minigpt.viz import CJK_FONTS, plot_attention, plot_mask

FAST = os.environ.get("MINIGPT_FAST") == "1"
rng = np.random.default_rng(0)

# %% [markdown]
# ## The softmax
#
# A head turns a row of scores $x \in \mathbb{R}^K$ into weights that are positive and sum to one:
#
# $$ y_i = \frac{e^{x_i}}{\sum_{k} e^{x_k}} = \frac{e^{x_i - m}}{\sum_{k} e^{x_k - m}}, \qquad m = \max_k x_k . $$
#
# The two forms are equal (the factor $e^{-m}$ cancels), but only the second is safe: $e^{x}$ overflows float64 for
# $x > 709$ and float32 for $x > 88$, while $e^{x - m} \le e^0 = 1$ never does. Adding the same constant to every
# score does not change the softmax; only differences between scores matter.

# %%
x = np.array([1000.0, 999.0, 998.0])                         # (K,) large but perfectly ordinary scores
with np.errstate(over="ignore", invalid="ignore"):
    naive = np.exp(x) / np.exp(x).sum()                      # (K,) inf / inf = nan
stable = np.exp(x - x.max()) / np.exp(x - x.max()).sum()    # (K,)
y_lib, _ = softmax_forward(x)                                # (K,) minigpt.layers.softmax
print("naive :", naive)
print("stable:", stable.round(4), "| library:", y_lib.round(4))

# %% [markdown]
# ### The backward pass
#
# Every output $y_i$ depends on every input $x_j$. By the quotient rule,
#
# $$ \frac{\partial y_i}{\partial x_j} = \frac{[i=j]\, e^{x_i} \sum_k e^{x_k} - e^{x_i} e^{x_j}}{\big(\sum_k e^{x_k}\big)^2}
#    = y_i\big([i=j] - y_j\big), \qquad J = \operatorname{diag}(y) - y\,y^\top . $$
#
# Given the upstream gradient $dy = \partial L / \partial y$, the chain rule sums over every $y_i$ that $x_j$ reaches:
#
# $$ dx_j = \sum_i dy_i\, y_i([i=j] - y_j) = y_j\, dy_j - y_j \sum_i dy_i\, y_i
#    \quad\Longrightarrow\quad dx = y \odot \big(dy - \langle dy, y \rangle\big). $$
#
# The right-hand form never builds the $K \times K$ Jacobian: it costs $O(K)$, and it needs only the output $y$,
# so the forward pass caches $y$. Two facts to check numerically: $J$ is symmetric, and every row of $J$ sums to
# zero, so $\sum_j dx_j = 0$ (shifting all scores by a constant changes nothing, so the gradient has no
# component along $(1, \dots, 1)$).

# %%
x = rng.standard_normal(5)                                   # (K,) K = 5 scores
dy = rng.standard_normal(5)                                  # (K,) an upstream gradient
y = np.exp(x - x.max()) / np.exp(x - x.max()).sum()          # (K,)
J = np.diag(y) - np.outer(y, y)                              # (K, K) J[i, j] = dy_i / dx_j
dx_jacobian = J.T @ dy                                       # (K,) sum_i dy_i J[i, j]
dx_short = y * (dy - (dy * y).sum())                         # (K,) the O(K) form

y_lib, cache = softmax_forward(x)                            # (K,)
dx_lib = softmax_backward(dy, cache)                         # (K,)
print("Jacobian form vs short form:", rel_error(dx_jacobian, dx_short))
print("short form vs library      :", rel_error(dx_short, dx_lib))
print("sum of dx (should be ~0)   :", dx_lib.sum())

softmax_errors = check_gradients(softmax_forward, softmax_backward, [rng.standard_normal((3, 7))], names=["x"])
print("gradient check (3 rows of 7):", softmax_errors)

# %% [markdown]
# ## One head of attention
#
# Take the $T$ token vectors of a sequence as the rows of $X \in \mathbb{R}^{T \times C}$. One head projects them
# to head dimension $D$ and compares every query with every key:
#
# $$ Q = X W_q,\quad K = X W_k,\quad V = X W_v \qquad (T \times D) $$
# $$ S = \frac{Q K^\top}{\sqrt{D}} \ (T \times T), \qquad P = \operatorname{softmax}_{\text{rows}}(S), \qquad O = P V \ (T \times D). $$
#
# Row $i$ of $P$ says how much position $i$ takes from each position $j$; row $i$ of $O$ is that weighted average
# of the values.
#
# **Why divide by $\sqrt{D}$.** If the entries of $q$ and $k$ are independent with mean 0 and variance 1, then
# $q \cdot k = \sum_{d=1}^{D} q_d k_d$ is a sum of $D$ terms of variance 1: its variance is $D$ and its standard
# deviation $\sqrt{D}$. With $D = 64$ the raw scores spread over tens of units, the softmax puts almost all its
# weight on one key, and its Jacobian $\operatorname{diag}(y) - y y^\top$ is nearly zero: almost no gradient gets
# through to $Q$ and $K$, and the head learns slowly or not at all.
# Dividing by $\sqrt{D}$ brings the scores back to variance 1 whatever the head size.

# %%
n_rows = 200 if FAST else 2000
print(f"{'D':>5} {'std(q.k)':>9} {'sqrt(D)':>8} {'max prob, raw':>14} {'max prob, scaled':>17}")
scale_table = {}
for D in (4, 16, 64, 256):
    q = rng.standard_normal((n_rows, 1, D))                  # (N, 1, D) one query per row
    k = rng.standard_normal((n_rows, 16, D))                 # (N, 16, D) sixteen keys per row
    s = (q @ k.swapaxes(-1, -2))[:, 0]                       # (N, 16) raw scores
    p_raw, _ = softmax_forward(s)                            # (N, 16)
    p_scaled, _ = softmax_forward(s / np.sqrt(D))            # (N, 16)
    scale_table[D] = (s.std(), p_raw.max(-1).mean(), p_scaled.max(-1).mean())
    print(f"{D:5d} {s.std():9.2f} {np.sqrt(D):8.2f} {scale_table[D][1]:14.3f} {scale_table[D][2]:17.3f}")

# %% [markdown]
# The standard deviation of the raw score grows as $\sqrt{D}$, and the largest of 16 weights heads for 1.
# After scaling, the weights look the same at every head size.
#
# ## The causal mask (掩码自注意力)
#
# A language model predicts token $i+1$ from tokens $0..i$. If position $i$ could read position $i+1$ it would
# simply copy the answer. The causal mask forbids it: query $i$ may attend key $j$ only when $j \le i$,
#
# $$ M_{ij} = [\, j \le i \,], \qquad S_{ij} \leftarrow -\infty \ \text{ where } M_{ij} \text{ is false}. $$
#
# Setting a score to $-\infty$ before the softmax gives it weight $e^{-\infty} = 0$ exactly, and the other weights
# of the row still sum to one. Every row keeps at least its diagonal, so no row is empty. (GPT-1's code wrote
# $-10^9$ instead of $-\infty$: the same weights in practice, since $e^{-10^9}$ underflows to 0.)
#
# With the mask, one forward pass over a text of $T$ tokens produces $T$ predictions at once, each from its own
# prefix: position 3 of 今天天气很好 sees 今天天气 and nothing after. Lesson 07 turns this into the training loss.

# %%
text = "今天天气很好"
T = len(text)
has_cjk_font = bool(set(CJK_FONTS) & {f.name for f in matplotlib.font_manager.fontManager.ttflist})
labels = list(text) if has_cjk_font else ["jin", "tian", "tian", "qi", "hen", "hao"]   # pinyin without a CJK font
mask = causal_mask(T)                                        # (T, T) bool, True = may attend
print(mask.astype(int))
mask_png = plot_mask(mask, "causal mask: query i sees keys j <= i", "04_causal_mask",
                     row_labels=labels, col_labels=labels)
print("saved", mask_png)

# %% [markdown]
# ### From scratch
#
# Here is a whole head in a few lines of NumPy, for one sequence: random token vectors $X$ of width $C$, random
# projections to a head of size $D$.

# %%
C, D = 16, 8
X = rng.standard_normal((T, C))                              # (T, C) one sequence of token vectors
Wq, Wk, Wv = (rng.standard_normal((C, D)) / np.sqrt(C) for _ in range(3))   # (C, D) each

Q, K, V = X @ Wq, X @ Wk, X @ Wv                             # (T, D) each
S = Q @ K.T / np.sqrt(D)                                     # (T, T) scores
S = np.where(mask, S, -np.inf)                               # (T, T) the future is -inf
P = np.exp(S - S.max(axis=-1, keepdims=True))                # (T, T) exp(-inf) = 0
P = P / P.sum(axis=-1, keepdims=True)                        # (T, T) rows sum to 1
O = P @ V                                                    # (T, D)
print("attention weights (rows: queries, columns: keys):")
print(P.round(3))

# %% [markdown]
# The library's `attention_forward` works on batches of heads, `(B, H, T, D)`, and takes the boolean mask.
# One sequence and one head is `B = H = 1`.

# %%
q, _ = linear_forward(X, Wq)                                 # (T, D)
k, _ = linear_forward(X, Wk)                                 # (T, D)
v, _ = linear_forward(X, Wv)                                 # (T, D)
out, att_cache, probs = attention_forward(q[None, None], k[None, None], v[None, None], mask=mask,
                                          return_probs=True)  # (1, 1, T, D), cache, (1, 1, T, T)
print("from scratch vs library, out  :", rel_error(O, out[0, 0]))
print("from scratch vs library, probs:", rel_error(P, probs[0, 0]))

# %% [markdown]
# ### The backward pass
#
# Walk the forward lines backwards, given $dO = \partial L / \partial O$ $(T \times D)$:
#
# 1. $O = P V$ is a matrix product (lesson 01's linear layer without bias):
#    $\; dV = P^\top dO \ (T \times D), \qquad dP = dO\, V^\top \ (T \times T).$
# 2. $P = \operatorname{softmax}(S)$ row by row: the softmax backward above, on every row,
#    $\; dS = P \odot \big(dP - \operatorname{rowsum}(dP \odot P)\big).$
#    Where the mask put $-\infty$, $P_{ij} = 0$, so $dS_{ij} = 0$: no gradient flows through a forbidden link.
# 3. $S = Q K^\top / \sqrt{D}$: $\; dQ = dS\, K / \sqrt{D}, \qquad dK = dS^\top Q / \sqrt{D}.$
# 4. $Q = X W_q$ and so on are linear layers; $X$ feeds all three, so its gradient is the sum
#    $dX = dQ\, W_q^\top + dK\, W_k^\top + dV\, W_v^\top$.
#
# Nothing new is needed: the backward of attention is two matrix products and a softmax backward.

# %%
dO = rng.standard_normal((T, D))                             # (T, D) upstream gradient
dV = P.T @ dO                                                # (T, D) undoes O = P V, for V
dP = dO @ V.T                                                # (T, T) undoes O = P V, for P
dS = P * (dP - (dP * P).sum(axis=-1, keepdims=True))         # (T, T) undoes the softmax
dQ = dS @ K / np.sqrt(D)                                     # (T, D) undoes S = Q K^T / sqrt(D), for Q
dK = dS.T @ Q / np.sqrt(D)                                   # (T, D) ... for K

dq, dk, dv = attention_backward(dO[None, None], att_cache)   # (1, 1, T, D) each
print("dQ, dK, dV from scratch vs library:",
      [f"{rel_error(a, b[0, 0]):.1e}" for a, b in ((dQ, dq), (dK, dk), (dV, dv))])
print("largest |dS| on masked entries:", np.abs(dS[~mask]).max())

# %% [markdown]
# And the library's attention against centered finite differences, in float64, with the causal mask, on a batch
# of 2 sequences and 3 heads with odd sizes:

# %%
Tc, Dc = (5, 3) if FAST else (7, 6)
qc, kc, vc = (rng.standard_normal((2, 3, Tc, Dc)) for _ in range(3))        # (B, H, T, D) each
attention_errors = check_gradients(lambda q, k, v: attention_forward(q, k, v, mask=causal_mask(Tc)),
                                   attention_backward, [qc, kc, vc], names=["q", "k", "v"])
print("gradient check:", {name: f"{err:.1e}" for name, err in attention_errors.items()})

# %% [markdown]
# ### The mask really hides the future
#
# Change the vector of the last token and nothing at earlier positions may move; change the first token and every
# position moves (they all see it).

# %%
X_last = X.copy()
X_last[-1] += 1.0                                            # (T, C) the last token changed
X_first = X.copy()
X_first[0] += 1.0                                            # (T, C) the first token changed


def one_head(X):
    """A causal head from the library pieces: X (T, C) -> (T, D)."""
    q, k, v = X @ Wq, X @ Wk, X @ Wv                         # (T, D) each
    out, _ = attention_forward(q[None, None], k[None, None], v[None, None], mask=causal_mask(len(X)))
    return out[0, 0]                                         # (T, D)


moved_last = np.abs(one_head(X_last) - out[0, 0]).max(axis=-1)     # (T,) how much each position moved
moved_first = np.abs(one_head(X_first) - out[0, 0]).max(axis=-1)   # (T,)
print("change the last token , positions moved:", (moved_last > 0).astype(int))
print("change the first token, positions moved:", (moved_first > 0).astype(int))

# %% [markdown]
# ## What a head can learn: a previous-token head
#
# The mask says where a head *cannot* look; the weights decide where it *does*. Trained GPTs have heads that
# attend to the previous token. We can build one by hand: let $X = I_T$ (token $t$ is the one-hot vector of its
# position), $W_q = \beta I$ and $W_k$ the shift that maps position $j$ to $\beta\, e_{j+1}$. Then
# $q_i \cdot k_j = \beta^2 [\, j = i - 1\,]$: after scaling, score $s = \beta^2/\sqrt{D}$ for the previous token and 0
# for the $i$ other visible keys, so
#
# $$ P_{i,\,i-1} = \frac{e^{s}}{e^{s} + i} \quad (i \ge 1), \qquad P_{0,0} = 1 . $$
#
# We pick $s = 4$: row 1 gives $e^4/(e^4 + 1) = 0.982$ to its previous token, row 5 gives $e^4/(e^4+5) = 0.916$.

# %%
s_prev = 4.0
D_prev = T                                                   # head size = number of positions
beta = np.sqrt(s_prev * np.sqrt(D_prev))                     # so that beta^2 / sqrt(D) = s_prev
X_pos = np.eye(T)                                            # (T, T) token t = one-hot of its position
Wq_prev = beta * np.eye(T)                                   # (T, D) q_i = beta e_i
Wk_prev = beta * np.eye(T, k=1)                              # (T, D) k_j = beta e_{j+1}
Wv_prev = np.eye(T)                                          # (T, D) v_j = e_j: the output says where it read
qp, kp, vp = (X_pos @ W for W in (Wq_prev, Wk_prev, Wv_prev))                # (T, D) each
out_prev, _, probs_prev = attention_forward(qp[None, None], kp[None, None], vp[None, None],
                                            mask=causal_mask(T), return_probs=True)  # (1, 1, T, D), (1, 1, T, T)
print(probs_prev[0, 0].round(3))
print("where each position read from (argmax of its output, V = I):", out_prev[0, 0].argmax(axis=-1).tolist())
attention_png = plot_attention(probs_prev[0, 0], labels, "04_previous_token_head",
                               title="a previous-token head (built by hand)")
print("saved", attention_png)

# %% [markdown]
# ## Summary
# - Softmax: subtract the row maximum (same result, no overflow). Backward: $dx = y \odot (dy - \langle dy, y\rangle)$,
#   from the Jacobian $\operatorname{diag}(y) - yy^\top$ without building it; the gradient sums to zero.
# - One head: $O = \operatorname{softmax}(QK^\top/\sqrt{D} + \text{mask})\,V$. The $1/\sqrt{D}$ keeps the scores at
#   variance 1, so the softmax does not saturate as heads grow.
# - The causal mask (掩码自注意力) sets the scores of future keys to $-\infty$: their weights are exactly 0, no gradient
#   flows through them, and position $i$'s output depends on tokens $0..i$ only.
# - The backward of attention is $dV = P^\top dO$, $dP = dO V^\top$, a softmax backward, and $dQ = dS K/\sqrt{D}$,
#   $dK = dS^\top Q/\sqrt{D}$.
#
# ## Exercises
# 1. On random unit-variance $q, k, v$ and $dO$, compute $\lVert dQ \rVert$ with `attention_backward` for $D = 4$ and
#    $D = 256$, once with the default scale and once with `scale=1.0`. What happens to the unscaled gradient at $D = 256$, and why?
# 2. Replace $-\infty$ by $-10^9$ as GPT-1 did. Are the weights still exactly 0 in float32? In float64? What happens
#    with $-10^4$ in float16 (largest finite value 65504)?
# 3. Without a mask, a head is permutation-equivariant: permuting the rows of $X$ permutes the rows of $O$. Check it,
#    then show that the causal mask breaks this — the mask is itself a source of position information.
# 4. Change $s$ in the previous-token head so that row 5 gives at least 0.99 to its previous token.

# %% [markdown]
# ## Check

# %%
assert rel_error(stable, [0.6652, 0.2447, 0.0900]) < 1e-3 and np.isnan(naive).all()   # e^0, e^-1, e^-2 over their sum
assert rel_error(dx_jacobian, dx_lib) < 1e-12 and abs(dx_lib.sum()) < 1e-12
assert max(softmax_errors.values()) < 1e-6 and max(attention_errors.values()) < 1e-6
for head_size, (std, _, _) in scale_table.items():
    assert abs(std / np.sqrt(head_size) - 1) < 0.15, (head_size, std)   # std(q.k) = sqrt(D)
assert scale_table[256][1] > 0.9 and scale_table[256][2] < 0.5   # raw scores saturate, scaled ones do not
assert out.shape == (1, 1, T, D) and probs.shape == (1, 1, T, T)
assert rel_error(O, out[0, 0]) < 1e-12 and rel_error(P, probs[0, 0]) < 1e-12
assert all(rel_error(a, b[0, 0]) < 1e-12 for a, b in ((dQ, dq), (dK, dk), (dV, dv)))
assert (probs[0, 0][~mask] == 0).all() and np.allclose(probs.sum(-1), 1.0)   # the future gets exactly 0
assert (dS[~mask] == 0).all()
assert (moved_last[:-1] == 0).all() and moved_last[-1] > 0 and (moved_first > 0).all()
i = np.arange(1, T)
assert np.allclose(probs_prev[0, 0, i, i - 1], np.exp(s_prev) / (np.exp(s_prev) + i)) and probs_prev[0, 0, 0, 0] == 1
assert np.allclose(out_prev, probs_prev)                     # V = I: each output row is its row of weights
assert out_prev[0, 0].argmax(axis=-1).tolist() == [0] + list(range(T - 1))   # position i read i - 1
out32, _ = attention_forward(*(a.astype(np.float32)[None, None] for a in (q, k, v)), mask=mask)
assert out32.dtype == np.float32
assert mask_png.exists() and attention_png.exists()
print("lesson 04 OK")
