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
# # Lesson 08 — GPT-1: the post-norm decoder, assembled
#
# **You will learn**
# - GPT-1's architecture (Radford et al. 2018, "Improving Language Understanding by Generative Pre-Training",
#   生成式预训练): a stack of 12 decoder blocks, each masked self-attention (掩码自注意力) and an MLP;
# - the **post-norm** block (后置层归一化, Post-LN), $x \leftarrow \mathrm{LN}(x + \mathrm{attn}(x))$,
#   $x \leftarrow \mathrm{LN}(x + \mathrm{mlp}(x))$, forward and backward, written out with the layers of lessons 01-07
#   and compared with `minigpt.Model`;
# - the whole model: embeddings in, a tied output head out, and why the tied embedding gets two gradients;
# - a whole-model gradient check in float64, every parameter tensor, and two traps it has to step around;
# - positions: GPT-1 **learned** its position embeddings; the textbook says sinusoidal. Both are one switch here;
# - the textbook's GPT-1 checked point by point: post-norm (the chapter describes pre-norm), its size, its data
#   (BooksCorpus), and how it compares with BERT-base.
#
# GPT-1 is the causal language model (因果语言模型) of lesson 07 with a Transformer decoder in the middle:
# token ids $(B, T)$ in, next-token logits $(B, T, V)$ out.

# %%
import os

import matplotlib.pyplot as plt
import numpy as np

from minigpt import Model, ModelConfig, cross_entropy
from minigpt.config import num_params, param_shapes
from minigpt.gradcheck import check_model_gradients, move_off_init
from minigpt.layers.attention import attention_backward, attention_forward, merge_heads, split_heads
from minigpt.layers.embedding import embedding_backward, embedding_forward
from minigpt.layers.linear import linear_backward, linear_forward
from minigpt.layers.mlp import mlp_backward, mlp_forward
from minigpt.layers.norms import layernorm_backward, layernorm_forward
from minigpt.layers.positions import learned_position_backward, learned_position_forward, sinusoidal_encoding
from minigpt.masks import causal_mask
from minigpt.viz import save_figure

FAST = os.environ.get("MINIGPT_FAST") == "1"

# %% [markdown]
# ## The model
#
# Token ids $u \in \{0..V-1\}^{B \times T}$. With the token table $W_e$ $(V, C)$ and the position table $W_p$
# $(T_{\max}, C)$:
#
# $$ h_0 = W_e[u] + W_p[0..T-1] \qquad (B, T, C) $$
#
# then $L$ blocks. GPT-1 puts each LayerNorm **after** the residual sum (post-norm, as in the 2017 Transformer):
#
# $$ z = h + \mathrm{Attn}(h), \quad y = \mathrm{LN}_1(z), \quad r = y + \mathrm{MLP}(y), \quad h' = \mathrm{LN}_2(r) $$
#
# where $\mathrm{Attn}(h) = \mathrm{concat}_{\text{heads}}\big(\mathrm{softmax}(QK^\top/\sqrt{D} + M)\,V\big) W_o + b_o$
# with $Q, K, V = hW_q + b_q,\ hW_k + b_k,\ hW_v + b_v$ and the causal mask $M$ (lessons 04-05), and
# $\mathrm{MLP}(y) = \mathrm{GELU}(yW_{\text{up}} + b_{\text{up}})W_{\text{down}} + b_{\text{down}}$ with a hidden size $4C$ (lesson 06).
# There is no LayerNorm after the last block: its $\mathrm{LN}_2$ already normalized the output. The head reuses the
# token table (tied weights) and the loss is lesson 07's:
#
# $$ \text{logits} = h_L W_e^\top \quad (B, T, V), \qquad \mathcal{L} = \mathrm{CE}(\text{logits}, \text{targets}). $$
#
# ### Backward through one block
#
# Walk the four forward lines in reverse, with $g = \partial\mathcal{L}/\partial h'$ and $\mathrm{LN}^\top$ the
# LayerNorm backward of lesson 03, $\mathrm{LN}^\top(g) = \tfrac{1}{\sigma}\big(\tilde g - \overline{\tilde g} - \hat x\,\overline{\tilde g \hat x}\big)$, $\tilde g = g \odot w$:
#
# $$ dr = \mathrm{LN}_2^\top(g), \qquad dy = dr + \mathrm{MLP}^\top(dr), \qquad dz = \mathrm{LN}_1^\top(dy), \qquad dh = dz + \mathrm{Attn}^\top(dz). $$
#
# The residual "+" copies the gradient to both of its inputs, so each sum becomes a sum of two gradients. But note
# **where the LayerNorms sit: on the residual path itself.** Every gradient that reaches a block from the loss has
# been through the two LayerNorm backwards of every block above it; there is no path that skips them. Lesson 11 (GPT-2)
# moves the norms off that path and measures what changes.
#
# ### The tied head gets two gradients
#
# $W_e$ is used twice: as a lookup at the bottom and as the output matrix at the top. Its gradient is the sum of
# both uses (a variable used twice gets the sum of its gradients):
#
# $$ \frac{\partial \mathcal{L}}{\partial W_e} = \underbrace{\mathrm{scatter\_add}_u\big(\tfrac{\partial \mathcal{L}}{\partial h_0}\big)}_{\text{lookup, lesson 02}} \;+\; \underbrace{\Big(\sum_{b,t} h_L^\top\, \tfrac{\partial \mathcal{L}}{\partial\, \text{logits}}\Big)^{\!\top}}_{\text{head: } dW = x^\top dy \text{ of lesson 01, transposed}} . $$
#
# ### Counting the parameters
#
# Per block: $Q, K, V, O$ are four $C \times C$ matrices plus four biases ($4C^2 + 4C$); the MLP is $C \times 4C$ and
# $4C \times C$ plus biases ($8C^2 + 5C$); two LayerNorms have a scale and a shift each ($4C$). Total
#
# $$ N = (V + T_{\max})\,C + L\,(12C^2 + 13C). $$
#
# GPT-1: $L = 12$, $C = 768$, 12 heads, $T_{\max} = 512$, a BPE vocabulary of $V = 40{,}478$.

# %% [markdown]
# ## One block, written out with the layer functions
#
# A GPT-1 at a size we can check by hand: 2 layers, $C = 32$, 4 heads, $T = 8$, $V = 50$, in float64.
# `ModelConfig.preset("gpt1", ...)` has every GPT-1 switch: post-norm, no final norm, tanh-GELU, biases, tied head,
# learned positions.

# %%
cfg = ModelConfig.preset("gpt1", n_layer=2, d_model=32, n_head=4, max_seq_len=8, vocab_size=50)
print({k: getattr(cfg, k) for k in ("norm_placement", "final_norm", "activation", "positions", "tie_embeddings")})
model = Model(cfg, seed=0, dtype="float64")

rng = np.random.default_rng(0)
B, T = 2, 8
ids = rng.integers(0, cfg.vocab_size, (B, T))                           # (B, T)
targets = rng.integers(0, cfg.vocab_size, (B, T))                       # (B, T)
pos = np.broadcast_to(np.arange(T), (B, T))                             # (B, T) positions 0..T-1
mask = causal_mask(T)                                                   # (T, T) True = may attend


def block_forward(x, p, i):
    """GPT-1's post-norm block i. x (B, T, C) -> (B, T, C), and the caches for block_backward."""
    n, H = f"blocks.{i}.", cfg.n_head
    q, cq = linear_forward(x, p[n + "attn.wq"], p[n + "attn.bq"])       # (B, T, C)
    k, ck = linear_forward(x, p[n + "attn.wk"], p[n + "attn.bk"])       # (B, T, C)
    v, cv = linear_forward(x, p[n + "attn.wv"], p[n + "attn.bv"])       # (B, T, C)
    o, ca = attention_forward(split_heads(q, H), split_heads(k, H), split_heads(v, H), mask)  # (B, H, T, D)
    a, co = linear_forward(merge_heads(o), p[n + "attn.wo"], p[n + "attn.bo"])             # (B, T, C)
    y, c1 = layernorm_forward(x + a, p[n + "norm1.w"], p[n + "norm1.b"], cfg.norm_eps)     # (B, T, C) LN1(x + attn(x))
    m, cm = mlp_forward(y, p[n + "mlp.w_up"], p[n + "mlp.b_up"], p[n + "mlp.w_down"],
                        p[n + "mlp.b_down"], cfg.activation)                               # (B, T, C)
    out, c2 = layernorm_forward(y + m, p[n + "norm2.w"], p[n + "norm2.b"], cfg.norm_eps)   # (B, T, C) LN2(y + mlp(y))
    return out, (cq, ck, cv, ca, co, c1, cm, c2)


def gpt1_forward(p, ids):
    """The whole model: ids (B, T) -> logits (B, T, V), and the caches."""
    x, c_emb = embedding_forward(ids, p["wte"])                          # (B, T, C)
    pe, c_pos = learned_position_forward(pos, p["wpe"])                  # (B, T, C)
    x = x + pe                                                           # (B, T, C) h_0
    blocks = []
    for i in range(cfg.n_layer):
        x, c = block_forward(x, p, i)                                    # (B, T, C)
        blocks.append(c)
    logits, c_head = linear_forward(x, p["wte"].T)                       # (B, T, V) tied head: h_L @ W_e^T
    return logits, (c_emb, c_pos, blocks, c_head)


logits, caches = gpt1_forward(model.params, ids)                        # (B, T, V)
forward_diff = float(np.abs(logits - model.forward(ids)).max())
print("logits", logits.shape, "| max |ours - minigpt.Model| =", forward_diff)

# %% [markdown]
# The same numbers as `minigpt.Model`: the same layer functions in the same order. Now the backward, line by line
# in reverse; each line says which forward line it undoes.

# %%
def block_backward(dout, cache, i, grads):
    """dout (B, T, C) -> dx (B, T, C); the block's parameter gradients written into grads."""
    n, H = f"blocks.{i}.", cfg.n_head
    cq, ck, cv, ca, co, c1, cm, c2 = cache
    dr, grads[n + "norm2.w"], grads[n + "norm2.b"] = layernorm_backward(dout, c2)   # undoes out = LN2(r)
    dy, grads[n + "mlp.w_up"], grads[n + "mlp.b_up"], grads[n + "mlp.w_down"], grads[n + "mlp.b_down"] = \
        mlp_backward(dr, cm)                                                         # undoes m = mlp(y)
    dy = dy + dr                                                                     # r = y + m: y got both
    dz, grads[n + "norm1.w"], grads[n + "norm1.b"] = layernorm_backward(dy, c1)      # undoes y = LN1(z)
    do, grads[n + "attn.wo"], grads[n + "attn.bo"] = linear_backward(dz, co)         # (B, T, C) undoes a = o Wo + bo
    dq, dk, dv = attention_backward(split_heads(do, H), ca)                          # (B, H, T, D) each
    dx = dz                                                                          # z = x + a: x got dz directly
    for name, d, c in (("q", dq, cq), ("k", dk, ck), ("v", dv, cv)):
        dpart, grads[n + f"attn.w{name}"], grads[n + f"attn.b{name}"] = linear_backward(merge_heads(d), c)
        dx = dx + dpart                                                              # (B, T, C) x fed q, k and v
    return dx


def gpt1_backward(dlogits, caches):
    """dlogits (B, T, V) -> {key: gradient} for every parameter."""
    c_emb, c_pos, blocks, c_head = caches
    grads = {}
    dx, dhead, _ = linear_backward(dlogits, c_head)                      # (B, T, C), (C, V) undoes logits = x W_e^T
    for i in reversed(range(cfg.n_layer)):
        dx = block_backward(dx, blocks[i], i, grads)                     # (B, T, C)
    grads["wpe"] = learned_position_backward(dx, c_pos)                  # (T_max, C) undoes + W_p[pos]
    grads["wte"] = embedding_backward(dx, c_emb) + dhead.T               # (V, C) the lookup's and the head's
    return grads


loss, dlogits = cross_entropy(logits, targets)
ours = gpt1_backward(dlogits, caches)
model.zero_grad()
model.backward(dlogits)
backward_diff = max(float(np.abs(ours[k] - model.grads[k]).max()) for k in model.params)
grad_scale = max(float(np.abs(model.grads[k]).max()) for k in model.params)
print(f"loss {loss:.4f} (log V = {np.log(cfg.vocab_size):.4f}) | {len(ours)} gradients, largest entry "
      f"{grad_scale:.1e}, worst |ours - minigpt.Model| {backward_diff:.1e}")

# %% [markdown]
# Every gradient agrees with the library's `Model.backward` (compared absolutely: one of them is exactly zero,
# see below). The library walks the same layer backwards: its `block_forward` / `block_backward` pair is steered
# by `norm_placement`, and "post" is the code above. From here on we use `minigpt.Model`.
#
# The loss at initialisation is close to $\log V$: with weights of std 0.02 the logits are small, every token gets
# probability near $1/V$, and the cross-entropy of a uniform guess is $\log V$.
#
# ## A whole-model gradient check
#
# Both implementations above could share a mistake, so we check the library against centered differences,
# $\partial\mathcal{L}/\partial\theta_j \approx (\mathcal{L}(\theta_j + h) - \mathcal{L}(\theta_j - h))/2h$, for
# **every parameter tensor**, at a few sampled entries of each. Two traps:
#
# 1. **Tiny gradients at initialisation.** With std-0.02 weights the attention scores are nearly 0, softmax is
#    nearly uniform, and $W_q$, $W_k$ hardly move the loss: in the lowest block their gradients are ~1e-8. The loss
#    itself is ~4, so its rounding error in float64 is a few times 4·1e-16, and divided by $2h = 2 \cdot 10^{-5}$ (the
#    whole-model check uses $h = 10^{-5}$) that is a few 1e-11 in the finite difference: a few tenths of a percent of
#    the gradient. A correct backward would "fail" with a relative error of ~1e-3. So we first move every weight off
#    its initialisation (add noise of std 0.2, like a model some way into training), which makes every path carry
#    signal.
# 2. **Gradients that are exactly zero.** The key bias $b_k$ adds $q \cdot b_k$ to every score of a query row, the
#    same constant for every key, and softmax ignores a constant added to a row. So
#    $\partial\mathcal{L}/\partial b_k = 0$ exactly; the backward returns rounding-level values, the finite
#    difference ~1e-11 of noise, and their relative error is meaningless. For such a tensor we compare absolutely.

# %%
# `minigpt.gradcheck.check_model_gradients` is lesson 01's `numerical_gradient` loop run over the loss of the
# whole model: for each parameter tensor it samples `entries` entries (half anywhere, half where the analytic
# gradient is nonzero), perturbs each by +-h, reruns forward + cross-entropy, and returns {key: rel_error}
# (the absolute error for a tensor whose true gradient is 0, trap 2).
ENTRIES = 4 if FAST else 12
move_off_init(model)
errors = check_model_gradients(model, ids, targets, ENTRIES)
for key, err in errors.items():
    if key.startswith(("wte", "wpe", "blocks.0.")):
        print(f"{key:22s} {str(model.params[key].shape):11s} {err:.1e}")
print(f"... {len(errors)} tensors in all (the other block looks the same); worst {max(errors.values()):.1e}")

# %%
fig, ax = plt.subplots(figsize=(10, 3.6))
keys = list(errors)
ax.bar(range(len(keys)), [max(errors[k], 1e-16) for k in keys], color="#2b6cb0")
ax.axhline(1e-6, color="crimson", linestyle="--", label="pass bar 1e-6")
ax.set_yscale("log")
ax.set_xticks(range(len(keys)))
ax.set_xticklabels(keys, rotation=90, fontsize=7)
ax.set_ylabel("error (rel; abs for b_k)")
ax.set_title(f"GPT-1 ({cfg.n_layer} layers, C={cfg.d_model}): gradient check of every parameter tensor, float64")
ax.legend()
check_png = save_figure(fig, "08_gpt1_gradcheck")
print("saved", check_png)

# %% [markdown]
# ## Positions: learned (GPT-1), not sinusoidal
#
# The paper is explicit: *"We used learned position embeddings instead of the sinusoidal version proposed in the
# original work."* GPT-1's $W_p$ is a $512 \times 768$ table trained like the token table (GPT-2 and GPT-3 kept
# that). The textbook's description gives GPT-1 the sinusoidal encoding of the 2017 Transformer; that is the
# *original Transformer's* choice, not GPT-1's. In minigpt it is one switch, `positions="sinusoidal"`: the table is
# then computed, $\mathrm{PE}[p, 2i] = \sin(p/10000^{2i/C})$, $\mathrm{PE}[p, 2i+1] = \cos(p/10000^{2i/C})$, and has
# no parameters and no gradient.

# %%
cfg_sin = ModelConfig.preset("gpt1", n_layer=2, d_model=32, n_head=4, max_seq_len=8, vocab_size=50,
                             positions="sinusoidal")
sin_model = Model(cfg_sin, seed=0, dtype="float64")
print("'wpe' in learned model:", "wpe" in model.params, "| in sinusoidal model:", "wpe" in sin_model.params)

table = sinusoidal_encoding(np.arange(T), cfg.d_model, "float64")      # (T, C)
x_sin = embedding_forward(ids, sin_model.params["wte"])[0] + table      # (B, T, C) h_0 with the fixed table
for i in range(cfg.n_layer):
    x_sin, _ = block_forward(x_sin, sin_model.params, i)                 # (B, T, C)
sin_diff = float(np.abs(x_sin @ sin_model.params["wte"].T - sin_model.forward(ids)).max())   # (B, T, V) compared
print("sinusoidal model: max |ours - minigpt.Model| =", sin_diff)

move_off_init(sin_model)
sin_errors = check_model_gradients(sin_model, ids, targets, ENTRIES)
print(f"sinusoidal model: {len(sin_errors)} tensors checked, worst error {max(sin_errors.values()):.1e}")

published = ModelConfig.preset("openai-gpt")
published_sin = ModelConfig.preset("openai-gpt", positions="sinusoidal")
saved = num_params(published)["total"] - num_params(published_sin)["total"]
print(f"GPT-1 at full size: the learned table is {published.max_seq_len} x {published.d_model} = {saved:,} "
      f"parameters, {saved / num_params(published)['total']:.2%} of the model")

# %% [markdown]
# The difference is small in parameters but real in behaviour: a learned table knows only the positions it has
# rows for (`Model` refuses $T > T_{\max}$ with learned positions), while the sinusoidal formula gives a vector for any
# position. At initialisation the learned table is noise of std 0.02, and training alone decides what each row
# means.
#
# ## GPT-1 at its real size
#
# `ModelConfig.preset("openai-gpt")` has the published sizes. `param_shapes` lists every tensor without
# allocating one, so we can count a 117M-parameter model for free.

# %%
shapes = param_shapes(published)
groups = {"token embedding wte (V, C)": ["wte"], "position table wpe (T_max, C)": ["wpe"],
          "attention, 12 blocks": [k for k in shapes if ".attn." in k],
          "MLP, 12 blocks": [k for k in shapes if ".mlp." in k],
          "LayerNorms, 12 blocks": [k for k in shapes if ".norm" in k]}
counted = {name: sum(int(np.prod(shapes[k])) for k in keys) for name, keys in groups.items()}
total = num_params(published)["total"]
for name, n in counted.items():
    print(f"{name:32s} {n:>12,} {n / total:7.1%}")
print(f"{'total':32s} {total:>12,}   (117M in the GPT-2 paper)")
L_, C_, V_, P_ = published.n_layer, published.d_model, published.vocab_size, published.max_seq_len
formula = (V_ + P_) * C_ + L_ * (12 * C_ * C_ + 13 * C_)
print(f"formula (V + T_max) C + L (12 C^2 + 13 C) = {formula:,}")

# %% [markdown]
# A quarter of GPT-1 is its vocabulary table; the blocks are $12 \times 7.09$M. Lesson 13 does this counting for
# GPT-2 and GPT-3, where the blocks dominate completely.
#
# ## The textbook's GPT-1, checked
#
# The chapter describes GPT-1 as *"使用了 12层 Decoder Block 和 768 的隐藏层维度，模型参数量仅有 1.17亿（0.12B），在大小为
# 5GB 的 BooksCorpus 数据集上预训练得到"* (12 decoder blocks, hidden size 768, only 117 million parameters, pretrained on
# the 5 GB BooksCorpus), and compares it with BERT-base: *"GPT-1 的参数规模与预训练规模和 BERT-base 是大致相当的"* (about
# the same size and pretraining data as BERT-base). Its walk through the block says the LayerNorm was moved *before*
# attention: *"将 LayerNorm 层从 Transformer 的注意力层之后提到了注意力层之前"*, then *"会先进行 LayerNorm，再进行掩码注意力计算"*.
#
# The architecture is easy to test: in GPT-1's post-norm block the last operation is a LayerNorm, so every block's
# output, undone by that LayerNorm's scale and shift, has mean 0 and variance 1 at every position. A pre-norm block
# ends with a residual sum and has no such property.

# %%
CHAPTER_GPT1 = {"layers": 12, "hidden": 768, "params": 1.17e8}          # "12层 ... 768 ... 1.17亿"
BERT_BASE = {"params": 110e6, "words": 800e6 + 2500e6}                  # BERT paper: BooksCorpus + English Wikipedia
GPT1_WORDS = 800e6                                                      # BooksCorpus, as BERT counts it
fresh = Model(cfg, seed=1, dtype="float64")
h = embedding_forward(ids, fresh.params["wte"])[0] + learned_position_forward(pos, fresh.params["wpe"])[0]  # (B, T, C)
post_out, _ = block_forward(h, fresh.params, 0)                         # (B, T, C) GPT-1's block
z = (post_out - fresh.params["blocks.0.norm2.b"]) / fresh.params["blocks.0.norm2.w"]   # (B, T, C) LN2's scale undone
pre = Model(ModelConfig.preset("gpt1", n_layer=2, d_model=32, n_head=4, max_seq_len=8, vocab_size=50,
                               norm_placement="pre"), seed=1, dtype="float64")
pre_out, _ = pre.block_forward(h, 0, mask, pre.block_context(B, T))     # (B, T, C) the chapter's description
print(f"GPT-1 block output: per-position mean within {np.abs(z.mean(-1)).max():.1e} of 0, "
      f"variance {z.var(-1).min():.6f}..{z.var(-1).max():.6f}")
print(f"pre-norm block output: variance {pre_out.var(-1).min():.4f}..{pre_out.var(-1).max():.4f} (the stream's scale)")
print(f"chapter: {CHAPTER_GPT1['layers']} layers, C = {CHAPTER_GPT1['hidden']}, {CHAPTER_GPT1['params'] / 1e6:.0f}M | "
      f"preset: {published.n_layer} layers, C = {published.d_model}, {total / 1e6:.1f}M")
print(f"BERT-base: {BERT_BASE['params'] / 1e6:.0f}M parameters, {BERT_BASE['words'] / 1e9:.1f}B words; "
      f"GPT-1: {total / 1e6:.0f}M, {GPT1_WORDS / 1e9:.1f}B words ({BERT_BASE['words'] / GPT1_WORDS:.1f}x less text)")

# %% [markdown]
# > **Textbook vs sources: GPT-1**
# >
# > | | the chapter | the primary sources |
# > |---|---|---|
# > | LayerNorm | moved before attention (pre-norm) | **post-norm**, as in the 2017 Transformer: OpenAI's released code computes `norm(x + a)` and then `norm(n + m)`; the move to pre-norm is GPT-2's (lesson 11), which the chapter itself says later (*"将 Post-Norm 改为了 Pre-Norm"*) |
# > | positions | *"沿用了 Transformer 的经典 Sinusoidal 位置编码"* | **learned**: *"We used learned position embeddings instead of the sinusoidal version proposed in the original work"* |
# > | MLP | *"两个一维卷积核"* (two 1-D convolutions), "no big difference" from linear layers | a width-1 convolution *is* a linear layer, exactly (lesson 05): OpenAI's `conv1d` is $xW + b$ |
# > | size | 12 layers, 768, 1.17亿 | right; the 117M is the GPT-2 paper's (its smallest model is *"equivalent to the original GPT"*), the GPT-1 paper prints no total; the weights have 116,534,784 |
# > | data | *"大小为 5GB 的 BooksCorpus"* | the paper gives no size in bytes: *"over 7,000 unique unpublished books"*; 5 GB is an estimate (lesson 13 redoes it) |
# > | vs BERT-base | same size and same pretraining data | same size (110M), but BERT-base read BooksCorpus **and** English Wikipedia, 3.3B words against GPT-1's 0.8B: about 4x the text |
#
# The activation and the head are as the chapter says: GELU (the paper: *"For the activation function, we used the
# Gaussian Error Linear Unit (GELU)"*) and a linear layer to the vocabulary, here tied to the token table.
#
# ## Summary
# - GPT-1 = token + **learned** position embeddings → $L$ post-norm blocks → tied head $h_L W_e^\top$, no final
#   norm.
# - Post-norm: $y = \mathrm{LN}_1(x + \mathrm{attn}(x))$, $h' = \mathrm{LN}_2(y + \mathrm{mlp}(y))$. Its backward is the
#   forward in reverse; each residual sum adds two gradients, and every gradient passes through every LayerNorm
#   above it.
# - A tied weight collects the gradients of both its uses.
# - A whole-model gradient check needs weights moved off their tiny initialisation, and an absolute comparison for
#   gradients that are exactly zero (the key bias).
# - $N = (V + T_{\max})C + L(12C^2 + 13C)$: 116.5M for GPT-1.
# - Against the textbook: GPT-1 is post-norm with learned positions (pre-norm came with GPT-2); 12 layers, $C = 768$,
#   117M as printed; its BooksCorpus is sized in books, not bytes, and is about a quarter of BERT-base's text.
#
# ## Exercises
# 1. Remove the `move_off_init(model)` line and rerun the gradient check. Which tensors fail, and by how much? Explain the
#    numbers with the rounding argument above.
# 2. Set `tie_embeddings=False`: which new key appears, how many parameters does full-size GPT-1 gain, and which of
#    the two terms of $\partial\mathcal{L}/\partial W_e$ is left?
# 3. Prove that $\partial\mathcal{L}/\partial b_k = 0$ for any input. Does the same hold for $b_q$? Check with the
#    gradients printed above.
# 4. Use `norm_placement="pre", final_norm=True` (lesson 11's wiring) and change `block_forward` to match; compare with
#    `minigpt.Model` again.

# %% [markdown]
# ## Check

# %%
assert logits.shape == (B, T, cfg.vocab_size) and logits.dtype == np.float64
assert forward_diff < 1e-12, forward_diff                      # same layers, same order: equal up to rounding
assert backward_diff < 1e-12 * grad_scale, (backward_diff, grad_scale)
assert set(ours) == set(model.params) == set(errors)
assert abs(loss - np.log(cfg.vocab_size)) < 0.05, loss         # near-uniform predictions at initialisation
assert max(errors.values()) < 1e-6, {k: e for k, e in errors.items() if e >= 1e-6}
assert max(sin_errors.values()) < 1e-6, sin_errors
assert "wpe" in model.params and "wpe" not in sin_model.params and sin_diff < 1e-12
assert saved == published.max_seq_len * published.d_model == 512 * 768
assert formula == total == 116_534_784 and abs(total / 117e6 - 1) < 0.01
assert (published.n_layer, published.d_model) == (CHAPTER_GPT1["layers"], CHAPTER_GPT1["hidden"])
assert round(total / 1e9, 2) == 0.12 and abs(total / CHAPTER_GPT1["params"] - 1) < 0.01     # "1.17亿（0.12B）"
assert published.norm_placement == "post" and not published.final_norm and published.positions == "learned"
assert np.abs(z.mean(-1)).max() < 1e-12 and np.abs(z.var(-1) - 1).max() < 1e-3   # a LayerNorm ends GPT-1's block
assert pre_out.var(-1).max() < 0.1                              # a pre-norm block's output is the small raw stream
assert abs(total / BERT_BASE["params"] - 1) < 0.1 and BERT_BASE["words"] / GPT1_WORDS > 4
assert check_png.exists()
print("lesson 08 OK")
