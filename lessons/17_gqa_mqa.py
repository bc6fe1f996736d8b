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
# # Lesson 17 — Grouped-query and multi-query attention
#
# **You will learn**
# - grouped-query attention (分组查询注意力, GQA) and multi-query attention (多查询注意力, MQA): many query heads
#   share fewer key/value heads;
# - the backward pass: a shared K or V head collects the gradients of every query head in its group;
# - how to do that without copying K and V, and a gradient check for $H_{kv} \in \{1, 2, H\}$;
# - why it matters: the KV cache of LLaMA-2-70B, ChatGLM2 and GLM-4, in a memory table.
#
# Lesson 12's KV cache made generation cheap in FLOPs, but each new token must read the whole cache from memory:
# $2 \cdot L \cdot H \cdot D$ numbers per past token. For a big model that read, not the arithmetic, sets the speed, and
# the cache, not the weights, limits the batch. Shazeer (2019) kept all the query heads but gave them ONE shared
# key head and ONE value head (MQA). Ainslie et al. (2023) found a middle ground that loses less quality: $H_{kv}$
# groups (GQA). LLaMA-2-70B has 64 query heads and 8 kv heads; LLaMA-3 uses 8 kv heads at every size; ChatGLM2
# and GLM-4 use 2.

# %%
import os

import numpy as np

from minigpt.config import ModelConfig, num_params
from minigpt.gradcheck import check_gradients, rel_error
from minigpt.layers.attention import attention_backward, attention_forward, merge_heads, split_heads
from minigpt.masks import causal_mask
from minigpt.viz import plot_gqa_groups

FAST = os.environ.get("MINIGPT_FAST") == "1"

# %% [markdown]
# ## Forward
#
# $H$ query heads, $H_{kv}$ key/value heads, $H_{kv}$ divides $H$, and $g = H / H_{kv}$ query heads per group.
# Query head $h$ reads kv head $j = \lfloor h / g \rfloor$:
#
# $$ S_h = \frac{q_h K_j^\top}{\sqrt{D}}, \qquad P_h = \operatorname{softmax}(S_h + \text{mask}), \qquad O_h = P_h V_j . $$
#
# $H_{kv} = H$ ($g = 1$) is ordinary multi-head attention (MHA); $H_{kv} = 1$ is MQA; anything between is GQA.
# Only the projections change size: $W_k, W_v$ are $C \times H_{kv}D$ instead of $C \times HD$. Each query head
# still computes its own $T \times S$ scores, so the attention FLOPs are the same as MHA; what shrinks is what
# must be stored and read: K and V.
#
# ## Backward: a shared head sums its group's gradients
#
# For one head the backward is lesson 04's, with $\mathrm{d}O_h$ coming in:
#
# $$ \mathrm{d}P_h = \mathrm{d}O_h V_j^\top, \quad \mathrm{d}S_h = P_h \odot \big(\mathrm{d}P_h - \textstyle\sum_s (P_h \odot \mathrm{d}P_h)\big), \quad
#    \mathrm{d}q_h = \frac{\mathrm{d}S_h K_j}{\sqrt D}, $$
#
# and head $h$'s contributions to the kv head it read, $\frac{1}{\sqrt D}\mathrm{d}S_h^\top q_h$ and $P_h^\top \mathrm{d}O_h$.
# Now $K_j$ feeds $g$ heads. The loss depends on $K_j$ through each of them, and the multivariable chain rule adds the paths:
#
# $$ \boxed{\; \mathrm{d}K_j = \sum_{h:\ \lfloor h/g \rfloor = j} \frac{\mathrm{d}S_h^\top q_h}{\sqrt D}, \qquad
#    \mathrm{d}V_j = \sum_{h:\ \lfloor h/g \rfloor = j} P_h^\top \mathrm{d}O_h \;} $$
#
# the same rule that makes a weight used at every position sum its gradient over positions. Another way to see it:
# "repeat each kv head $g$ times, then run MHA" (Hugging Face's `repeat_kv`) is exactly the same forward, and the
# backward of a copy is a sum over the copies.
#
# **Without copying.** Copying K and V $g$ times would throw away the memory we meant to save. minigpt's
# `attention_forward` instead stacks the $g$ query heads of a group as $g \cdot T$ query rows,
# $q$: $(B, H, T, D) \to (B, H_{kv}, gT, D)$, all scored against the same $K_j$ in one matmul. In the backward,
# $\mathrm{d}S^\top q$ is then a $(S \times gT)(gT \times D)$ product: the matmul's inner sum over the $gT$ rows IS the sum over the group.

# %% [markdown]
# ## From scratch: repeat K and V, run MHA, sum back
#
# The transparent version: `np.repeat` each kv head $g$ times, do per-head attention with a causal mask (forward and
# backward as in lessons 04–05), then fold the $H$ copies of $\mathrm{d}K$ back into $H_{kv}$ heads by summing each group.
# The library never makes the copies; both must agree.

# %%
rng = np.random.default_rng(0)
B, H, T, D = 2, 6, 7, 5                                         # odd shapes: T = 7, D = 5
mask = causal_mask(T)                                           # (T, T) True = may attend


def gqa_by_repeating(q, k, v, dout):
    """GQA forward and backward by copying K and V to every query head. Returns out, dq, dk, dv."""
    H, Hkv = q.shape[1], k.shape[1]
    g = H // Hkv
    k_rep = np.repeat(k, g, axis=1)                             # (B, H, T, D) kv head j -> heads j*g .. j*g+g-1
    v_rep = np.repeat(v, g, axis=1)                             # (B, H, T, D)
    s = q @ k_rep.swapaxes(-1, -2) / np.sqrt(D)                 # (B, H, T, T)
    s = np.where(mask, s, -np.inf)                              # (B, H, T, T) causal
    p = np.exp(s - s.max(axis=-1, keepdims=True))               # (B, H, T, T)
    p = p / p.sum(axis=-1, keepdims=True)                       # (B, H, T, T)
    out = p @ v_rep                                             # (B, H, T, D)
    dp = dout @ v_rep.swapaxes(-1, -2)                          # (B, H, T, T)
    ds = p * (dp - (p * dp).sum(axis=-1, keepdims=True))        # (B, H, T, T) softmax backward
    dq = ds @ k_rep / np.sqrt(D)                                # (B, H, T, D)
    dk_rep = ds.swapaxes(-1, -2) @ q / np.sqrt(D)               # (B, H, T, D) one copy per query head
    dv_rep = p.swapaxes(-1, -2) @ dout                          # (B, H, T, D)
    dk = dk_rep.reshape(B, Hkv, g, T, D).sum(axis=2)            # (B, Hkv, T, D) undo the repeat: sum the group
    dv = dv_rep.reshape(B, Hkv, g, T, D).sum(axis=2)            # (B, Hkv, T, D)
    return out, dq, dk, dv


parity = {}
for Hkv in (H, 2, 1):                                           # MHA, GQA (groups of 3), MQA
    q = rng.standard_normal((B, H, T, D))                       # (B, H, T, D)
    k = rng.standard_normal((B, Hkv, T, D))                     # (B, Hkv, T, D)
    v = rng.standard_normal((B, Hkv, T, D))                     # (B, Hkv, T, D)
    dout = rng.standard_normal((B, H, T, D))                    # (B, H, T, D)
    mine = gqa_by_repeating(q, k, v, dout)
    out_lib, cache = attention_forward(q, k, v, mask=mask)      # (B, H, T, D), no copies of k, v
    lib = (out_lib, *attention_backward(dout, cache))           # out, dq (B, H, T, D), dk, dv (B, Hkv, T, D)
    parity[Hkv] = max(rel_error(a, b) for a, b in zip(mine, lib))
    print(f"Hkv = {Hkv} (g = {H // Hkv}): dk {lib[2].shape}, "
          f"repeat-then-sum vs library: max rel_error {parity[Hkv]:.1e}")

# %% [markdown]
# A useful special case: in MQA, if we feed the same $K, V$ to MHA by hand, head by head, each head's
# $\mathrm{d}K$ is one term of the sum, and the library's $\mathrm{d}K$ is their total.

# %%
q = rng.standard_normal((B, H, T, D))                           # (B, H, T, D)
k1 = rng.standard_normal((B, 1, T, D))                          # (B, 1, T, D) the one shared key head
v1 = rng.standard_normal((B, 1, T, D))                          # (B, 1, T, D)
dout = rng.standard_normal((B, H, T, D))                        # (B, H, T, D)
_, cache = attention_forward(q, k1, v1, mask=mask)
_, dk_mqa, _ = attention_backward(dout, cache)                  # (B, 1, T, D)
dk_terms = []
for h in range(H):                                              # each head alone, as single-head attention
    _, cache_h = attention_forward(q[:, h:h + 1], k1, v1, mask=mask)
    dk_terms.append(attention_backward(dout[:, h:h + 1], cache_h)[1])   # (B, 1, T, D) head h's share
print("MQA: dK equals the sum of the 6 single-head dK's, rel_error", rel_error(dk_mqa, sum(dk_terms)))

# %% [markdown]
# ## Gradient check
#
# The library's attention against centered differences in float64, causal mask, for $H_{kv} \in \{1, 2, H\}$,
# and once with $B = 1$, $T = 1$ (a single token attends only to itself).

# %%
grad_errors = {}
for Hkv, (b, t) in [(1, (B, T)), (2, (B, T)), (H, (B, T)), (2, (1, 1))]:
    args = [rng.standard_normal((b, H, t, D)), rng.standard_normal((b, Hkv, t, D)),
            rng.standard_normal((b, Hkv, t, D))]                # q (B, H, T, D), k, v (B, Hkv, T, D)
    errs = check_gradients(lambda q, k, v: attention_forward(q, k, v, mask=causal_mask(t)), attention_backward,
                           args, names=["q", "k", "v"])
    grad_errors[(Hkv, b, t)] = max(errs.values())
    print(f"Hkv = {Hkv}, B = {b}, T = {t}:", {name: f"{e:.1e}" for name, e in errs.items()})

# %% [markdown]
# ## Inside a block
#
# In a model the heads come from projections of the residual stream $x$ $(B, T, C)$; only $W_k, W_v$ are narrower.
# `split_heads` gives $(B, H, T, D)$ for the queries and $(B, H_{kv}, T, D)$ for keys and values.

# %%
C = H * D                                                       # 30 channels
Hkv = 2
xres = rng.standard_normal((B, T, C))                           # (B, T, C)
wq = rng.standard_normal((C, H * D)) / np.sqrt(C)               # (C, H*D)
wk = rng.standard_normal((C, Hkv * D)) / np.sqrt(C)             # (C, Hkv*D) a third of MHA's
wv = rng.standard_normal((C, Hkv * D)) / np.sqrt(C)             # (C, Hkv*D)
qh = split_heads(xres @ wq, H)                                  # (B, H, T, D)
kh = split_heads(xres @ wk, Hkv)                                # (B, Hkv, T, D)
vh = split_heads(xres @ wv, Hkv)                                # (B, Hkv, T, D)
att, _ = attention_forward(qh, kh, vh, mask=mask)               # (B, H, T, D)
y = merge_heads(att)                                            # (B, T, H*D), then @ wo as usual
print("q", qh.shape, "k", kh.shape, "v", vh.shape, "-> out", att.shape, "-> merged", y.shape)

# %% [markdown]
# ## The KV cache, measured for published models
#
# A cache holds K and V for every layer, kv head and past token: $2 \cdot L \cdot H_{kv} \cdot D$ numbers per token,
# 2 bytes each in float16. The table gives it per token, for one 4096-token sequence, and for a batch of 32 such
# sequences, beside the float16 weights. The two rows marked "as if" are LLaMA-2-70B's own sizes with the
# kv heads changed: what MHA would have cost and what MQA would save.

# %%
def kv_bytes_per_token(cfg, bytes_per_number=2):
    """K and V, every layer and kv head: 2 * L * Hkv * D numbers per token."""
    return 2 * cfg.n_layer * cfg.n_kv_head * cfg.head_dim * bytes_per_number


configs = [
    ("LLaMA-2-7B (MHA)", ModelConfig.preset("llama2-7b")),
    ("LLaMA-2-70B as if MHA", ModelConfig.preset("llama2-70b", n_kv_head=64)),
    ("LLaMA-2-70B (GQA)", ModelConfig.preset("llama2-70b")),
    ("LLaMA-2-70B as if MQA", ModelConfig.preset("llama2-70b", n_kv_head=1)),
    ("LLaMA-3-8B (GQA)", ModelConfig.preset("llama3-8b")),
    ("ChatGLM2-6B (GQA)", ModelConfig.preset("chatglm2-6b")),
    ("GLM-4-9B (GQA)", ModelConfig.preset("glm4-9b")),
]
GiB = 2 ** 30
seq, batch = 4096, 32
print(f"{'model':>22} {'L':>3} {'H':>3} {'Hkv':>3} {'D':>4} | {'KV/token':>9} {'1 x 4096':>9} {'32 x 4096':>10} | "
      f"{'weights':>8} {'params':>7}")
table = {}
for name, cfg in configs:
    per_token = kv_bytes_per_token(cfg)
    weights = 2 * num_params(cfg)["total"]                      # float16 bytes
    table[name] = (per_token, weights)
    print(f"{name:>22} {cfg.n_layer:>3} {cfg.n_head:>3} {cfg.n_kv_head:>3} {cfg.head_dim:>4} | "
          f"{per_token / 2**10:>6.0f} KiB {per_token * seq / GiB:>5.2f} GiB {per_token * seq * batch / GiB:>6.1f} GiB | "
          f"{weights / GiB:>5.1f} GiB {num_params(cfg)['total'] / 1e9:>6.2f}B")

# %% [markdown]
# Read the 70B rows: with MHA a batch of 32 long sequences would need 320 GiB of cache, more than twice the model's
# weights; GQA's 8 kv heads make it 40 GiB, 8× less, and MQA would go another 8× down, to 5 GiB. (The narrower $W_k, W_v$
# also save 9B parameters; the LLaMA-2 paper widens the MLP to keep the parameter count when it switches to GQA, which is
# the `ffn_dim_multiplier` of lesson 16.) LLaMA-2-7B has no GQA, and its cache per token is larger than LLaMA-2-70B's.
# ChatGLM2-6B and GLM-4-9B, with only 2 kv heads, have tiny caches: ChatGLM2's release notes credit its "multi-query"
# attention with 42% faster inference than ChatGLM-6B and with 8K-token dialogues fitting in 6 GB of GPU memory at INT4,
# up from 1K.
#
# ## Which query head reads which kv head
#
# One colour per group: MHA (every query head has its own kv head), GQA with 2 kv heads (ChatGLM2 / GLM-4's ratio
# at 8 heads), and MQA.

# %%
pictures = [plot_gqa_groups(8, hkv, f"17_heads_{kind}") for kind, hkv in (("mha", 8), ("gqa", 2), ("mqa", 1))]
print("saved", *pictures)

# %% [markdown]
# ## Summary
# - GQA: $H$ query heads share $H_{kv}$ kv heads, head $h$ reads kv head $\lfloor h/g \rfloor$; MHA is $H_{kv} = H$, MQA $H_{kv} = 1$.
# - Backward: $\mathrm{d}K_j$ and $\mathrm{d}V_j$ sum the contributions of the $g$ query heads of group $j$ (a copy's backward is a sum).
#   Stacking a group's queries as $gT$ rows does the sum inside one matmul, with no copies of K and V.
# - The attention FLOPs do not change; the KV cache shrinks by $g$: $2 L H_{kv} D$ numbers per token.
# - LLaMA-2-70B: 2.5 MiB per token with MHA, 320 KiB with GQA-8 (float16).
#
# ## Exercises
# 1. Ainslie et al. turn an MHA checkpoint into GQA by mean-pooling the $W_k, W_v$ columns of each group's heads, then
#    train a little more. Do it for a random $W_k$ with $H = 6$, $H_{kv} = 2$ and compare the scores before and after.
# 2. Count the parameters of one attention layer of LLaMA-2-70B with MHA and with GQA-8. What fraction of the whole
#    model is the difference?
# 3. During decoding ($T = 1$, $S$ cached keys), how many bytes of cache does one step read for each model of the table,
#    at 4096 cached tokens? At 3 TB/s of memory bandwidth, how long does that take?
# 4. Why must $H_{kv}$ divide $H$? Sketch an assignment of query heads to kv heads when it does not, and say what breaks
#    in the "stack the group as $gT$ rows" trick.

# %% [markdown]
# ## Check

# %%
assert max(parity.values()) < 1e-12, parity                                     # repeat-then-sum == library
assert rel_error(dk_mqa, sum(dk_terms)) < 1e-12                                 # MQA's dK sums the heads
assert max(grad_errors.values()) < 1e-6, grad_errors
assert qh.shape == (B, H, T, D) and kh.shape == (B, Hkv, T, D) and y.shape == (B, T, C)
per_mha, _ = table["LLaMA-2-70B as if MHA"]
per_gqa, _ = table["LLaMA-2-70B (GQA)"]
per_mqa, _ = table["LLaMA-2-70B as if MQA"]
assert per_mha == 8 * per_gqa == 64 * per_mqa                                   # the cache shrinks by g
assert per_gqa == 2 * 80 * 8 * 128 * 2 == 320 * 2**10                           # 320 KiB per token
assert table["LLaMA-2-7B (MHA)"][0] == 2**19                                    # 0.5 MiB per token
q32, k32, v32 = (t.astype(np.float32) for t in (qh, kh, vh))
out32, cache32 = attention_forward(q32, k32, v32, mask=mask)
assert out32.dtype == np.float32 and all(g.dtype == np.float32 for g in attention_backward(out32, cache32))
assert all(p.exists() for p in pictures)
print("lesson 17 OK")
