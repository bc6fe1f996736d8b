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
# # Lesson 11 — GPT-2: pre-norm, the final LayerNorm, and scaled residual init
#
# **You will learn**
# - the three architectural changes from GPT-1 to GPT-2 (Radford et al. 2019, "Language Models are Unsupervised
#   Multitask Learners"): LayerNorm moved to the input of each sublayer (**pre-norm**, 前置层归一化, Pre-LN), one
#   more LayerNorm after the last block, and residual projections initialised with std $0.02/\sqrt{2L}$;
# - why pre-norm gives the gradient a path that no LayerNorm touches, derived from the backward pass;
# - how to measure gradient norms per layer at initialisation, post-norm against pre-norm, in a 12-layer model;
# - why the residual stream grows with depth, and how the scaled initialisation stops it (measured);
# - the textbook's GPT-2 (sizes, WebText, zero-shot 零样本学习) checked against the paper and the presets.
#
# The paper, section 2.3: *"Layer normalization was moved to the input of each sub-block, similar to a
# pre-activation residual network and an additional layer normalization was added after the final self-attention
# block. A modified initialization which accounts for the accumulation on the residual path with model depth is
# used. We scale the weights of residual layers at initialization by a factor of $1/\sqrt{N}$ where $N$ is the number
# of residual layers."* The paper does not say what exactly $N$ counts. Each block adds two residual branches to the
# stream (attention and MLP), so $N = 2L$: that is the reading Hugging Face's GPT-2 and nanoGPT implement, std
# $0.02/\sqrt{2L}$ on the two output projections. (OpenAI's released GPT-2 code, written to run trained weights,
# initialises every matrix with std 0.02.)

# %%
import os

import numpy as np

from minigpt import Model, ModelConfig, cross_entropy
from minigpt.config import num_params
from minigpt.data import load_corpus
from minigpt.gradcheck import check_model_gradients, move_off_init
from minigpt.layers.attention import attention_forward, merge_heads, split_heads
from minigpt.layers.embedding import embedding_forward
from minigpt.layers.linear import linear_backward, linear_forward
from minigpt.layers.mlp import mlp_forward
from minigpt.layers.norms import layernorm_backward, layernorm_forward
from minigpt.layers.positions import learned_position_forward
from minigpt.masks import causal_mask
from minigpt.viz import plot_curves

FAST = os.environ.get("MINIGPT_FAST") == "1"

# %% [markdown]
# ## Post-norm and pre-norm, forward and backward
#
# GPT-1 (lesson 08) normalizes **after** each residual sum; GPT-2 normalizes the **input** of each sublayer and
# leaves the sum alone:
#
# $$ \text{post (GPT-1):}\quad y = \mathrm{LN}_1(x + \mathrm{Attn}(x)), \qquad x' = \mathrm{LN}_2(y + \mathrm{MLP}(y)) $$
#
# $$ \text{pre (GPT-2):}\quad y = x + \mathrm{Attn}(\mathrm{LN}_1(x)), \qquad x' = y + \mathrm{MLP}(\mathrm{LN}_2(y)) $$
#
# The pre-norm backward, reading the two lines in reverse with $g = \partial\mathcal{L}/\partial x'$:
#
# $$ dy = g + \mathrm{LN}_2^\top\big(\mathrm{MLP}^\top(g)\big), \qquad dx = dy + \mathrm{LN}_1^\top\big(\mathrm{Attn}^\top(dy)\big). $$
#
# Each line is "$g$ itself, plus a branch". Unrolled over all blocks above layer $l$,
#
# $$ \frac{\partial\mathcal{L}}{\partial x_l} = \frac{\partial\mathcal{L}}{\partial x_L} + \sum_{\text{sublayers } k \ge l} (\text{branch terms}), $$
#
# so the gradient at the top reaches every layer **unchanged**, along the residual stream, with the branches added
# on the way. In post-norm, the same unrolling is a **product**,
#
# $$ \frac{\partial\mathcal{L}}{\partial x_l} = (I + J_{\mathrm{Attn}})^\top J_{\mathrm{LN}_1}^\top (I + J_{\mathrm{MLP}})^\top J_{\mathrm{LN}_2}^\top \cdots \frac{\partial\mathcal{L}}{\partial x_L}, \qquad J_{\mathrm{LN}} = \frac{1}{\sigma}\,\mathrm{diag}(w)\Big(I - \tfrac{1}{C}\mathbf{1}\mathbf{1}^\top - \tfrac{1}{C}\hat x \hat x^\top\Big), $$
#
# with one LayerNorm Jacobian per sublayer, each scaling by $w/\sigma$ ($\sigma$: the std of that LayerNorm's input)
# and projecting two directions away. Nothing guarantees that a product of $2L$ of those stays near 1: that is the
# usual explanation of why deep post-norm Transformers need learning-rate warmup and careful tuning (Xiong et al.
# 2020, "On Layer Normalization in the Transformer Architecture"), and why GPT-2 and almost everything after it
# (GPT-3, LLaMA, GLM, GLM-4) is pre-norm. Below we measure what this looks like at initialisation.
#
# ### The residual stream grows, hence the final LayerNorm
#
# In pre-norm nothing normalizes the stream itself: $x_L = x_0 + \sum_{k=1}^{2L} f_k$ with $f_k$ the output of
# sublayer $k$. At initialisation the $f_k$ are uncorrelated with each other and with $x_0$ (independent random
# weights), so variances add:
#
# $$ \mathrm{Var}(x_L) = \mathrm{Var}(x_0) + \sum_{k=1}^{2L} \mathrm{Var}(f_k). $$
#
# The stream's scale grows with depth (and during training). GPT-1's last operation was a LayerNorm, so its head
# always saw a normalized vector; pre-norm's last operation is a "+", so GPT-2 adds $\mathrm{LN}_f$ before the head:
# $\text{logits} = \mathrm{LN}_f(x_L)\, W_e^\top$.
#
# ### Scaled residual initialisation
#
# Each $f_k$ ends in a projection, $f_k = h_k W_o$ (attention) or $h_k W_{\text{down}}$ (MLP), with $n_{\text{in}}$
# inputs. For independent entries, $\mathrm{Var}(f_k) = n_{\text{in}}\,\sigma_o^2\,\mathbb{E}[h_k^2]$. The inputs
# $h_k$ come from a LayerNorm'd stream, so their scale does not depend on depth. Initialising $W_o$ and
# $W_{\text{down}}$ with $\sigma_o = 0.02/\sqrt{2L}$ instead of $0.02$ divides every $\mathrm{Var}(f_k)$ by $2L$, and then
#
# $$ \mathrm{Var}(x_L) - \mathrm{Var}(x_0) = \frac{1}{2L}\sum_{k=1}^{2L} \mathrm{Var}_{0.02}(f_k) \approx \text{the average sublayer's variance}, $$
#
# which does not grow with $L$. Prediction: without scaling the added variance is about $2L$ times larger.

# %% [markdown]
# ## The pre-norm block, written out
#
# The tiny `gpt2` preset ($L = 4$, $C = 64$, 4 heads, $V = 256$ bytes) in float64. We run the whole model with the
# layer functions and compare with `minigpt.Model`.

# %%
cfg = ModelConfig.preset("gpt2")
print({k: getattr(cfg, k) for k in ("norm_placement", "final_norm", "scaled_residual_init", "n_layer", "d_model")})
model = Model(cfg, seed=0, dtype="float64")

text = load_corpus("builtin")
data = np.frombuffer(text.encode("utf-8"), dtype=np.uint8).astype(np.int64)   # (N,) bytes as token ids
rng = np.random.default_rng(0)
B, T = (4, 16) if FAST else (8, 32)
starts = rng.integers(0, len(data) - T - 1, B)
ids = np.stack([data[s:s + T] for s in starts])                          # (B, T)
targets = np.stack([data[s + 1:s + T + 1] for s in starts])              # (B, T) the next byte
pos = np.broadcast_to(np.arange(T), (B, T))                              # (B, T)
mask = causal_mask(T)                                                    # (T, T)


def prenorm_block(x, p, i):
    """GPT-2's block i: x (B, T, C) -> (B, T, C)."""
    n, H = f"blocks.{i}.", cfg.n_head
    h, _ = layernorm_forward(x, p[n + "norm1.w"], p[n + "norm1.b"], cfg.norm_eps)         # (B, T, C) LN1(x)
    q, k, v = (linear_forward(h, p[n + f"attn.w{c}"], p[n + f"attn.b{c}"])[0] for c in "qkv")  # (B, T, C) each
    o, _ = attention_forward(split_heads(q, H), split_heads(k, H), split_heads(v, H), mask)  # (B, H, T, D)
    y = x + linear_forward(merge_heads(o), p[n + "attn.wo"], p[n + "attn.bo"])[0]          # (B, T, C) x + attn(LN1(x))
    h, _ = layernorm_forward(y, p[n + "norm2.w"], p[n + "norm2.b"], cfg.norm_eps)         # (B, T, C) LN2(y)
    m, _ = mlp_forward(h, p[n + "mlp.w_up"], p[n + "mlp.b_up"], p[n + "mlp.w_down"], p[n + "mlp.b_down"],
                       cfg.activation)                                                     # (B, T, C)
    return y + m                                                                           # (B, T, C) y + mlp(LN2(y))


p = model.params
x = embedding_forward(ids, p["wte"])[0] + learned_position_forward(pos, p["wpe"])[0]      # (B, T, C)
for i in range(cfg.n_layer):
    x = prenorm_block(x, p, i)                                                             # (B, T, C)
x, _ = layernorm_forward(x, p["norm_f.w"], p["norm_f.b"], cfg.norm_eps)                   # (B, T, C) the final LN
logits = x @ p["wte"].T                                                                    # (B, T, V) tied head
block_diff = float(np.abs(logits - model.forward(ids)).max())
print("logits", logits.shape, "| max |ours - minigpt.Model| =", block_diff)

# %% [markdown]
# Identical. For the measurements we need what `Model.forward` does not return: the residual stream after every
# block, and its gradient. `Model.block_forward` / `Model.block_backward` run one block (wired by the config:
# post or pre), so a short loop gives us everything, for any wiring.

# %%
def run_layers(model, ids, targets):
    """Forward and backward one block at a time. Returns the stream after each block [x_0, ..., x_L]
    (B, T, C) each, the loss gradient at each of them, and the loss; the blocks' parameter gradients
    are accumulated into model.grads (zeroed first)."""
    p, cfg = model.params, model.config
    model.zero_grad()
    x = embedding_forward(ids, p["wte"])[0] + learned_position_forward(pos, p["wpe"])[0]  # (B, T, C)
    xs, caches = [x], []
    context = model.block_context(*ids.shape)                           # positions (and RoPE angles) every block reads
    for i in range(cfg.n_layer):
        x, cache = model.block_forward(x, i, mask, context)              # (B, T, C)
        xs.append(x)
        caches.append(cache)
    if cfg.final_norm:
        x, norm_cache = layernorm_forward(x, p["norm_f.w"], p["norm_f.b"], cfg.norm_eps)   # (B, T, C)
    logits, head_cache = linear_forward(x, p["wte"].T)                   # (B, T, V)
    loss, dlogits = cross_entropy(logits, targets)
    dx = linear_backward(dlogits, head_cache)[0]                         # (B, T, C) undoes the head
    if cfg.final_norm:
        dx = layernorm_backward(dx, norm_cache)[0]                       # undoes the final LN
    dxs = [dx]
    for i in reversed(range(cfg.n_layer)):
        dx = model.block_backward(dx, i, caches[i])                      # (B, T, C), block i's grads accumulated
        dxs.append(dx)
    return xs, dxs[::-1], loss


def block_grad_norms(model):
    """The norm of the gradient of each block's parameters, all tensors of the block together. (L,)"""
    return np.array([np.sqrt(sum(float((g * g).sum()) for k, g in model.grads.items() if k.startswith(f"blocks.{i}.")))
                     for i in range(model.config.n_layer)])


xs, dxs, loss = run_layers(model, ids, targets)
ours = dict(model.grads)
model.zero_grad()
model.backward(cross_entropy(model.forward(ids), targets)[1])
loop_diff = max(float(np.abs(ours[k] - model.grads[k]).max()) for k in ours if k.startswith("blocks."))
print(f"loss {loss:.4f} (log 256 = {np.log(256):.4f}); block gradients of the loop vs Model.backward: {loop_diff:.1e}")

# %% [markdown]
# ## Gradient norms per layer at initialisation: post-norm against pre-norm
#
# Three 12-layer models that differ only in the switches this lesson is about ($C = 64$, 4 heads, std 0.02):
# - **post-norm**: GPT-1's wiring (`norm_placement="post"`, no final norm);
# - **pre-norm**: GPT-2's wiring with GPT-1's plain initialisation (`scaled_residual_init=False`);
# - **GPT-2**: pre-norm and the scaled residual initialisation.
#
# For each, the loss gradient on the same batch of text, and per block the norm of the gradient of all its
# parameters together, averaged over a few random initialisations.

# %%
L = 12
SEEDS = 1 if FAST else 3
wirings = {
    "post-norm (GPT-1)": ModelConfig.preset("gpt1", n_layer=L),
    "pre-norm, plain init": ModelConfig.preset("gpt2", n_layer=L, scaled_residual_init=False),
    "pre-norm + scaled init (GPT-2)": ModelConfig.preset("gpt2", n_layer=L),
}
grad_norms, stream_std, stream_grad = {}, {}, {}
for name, c in wirings.items():
    runs = []
    for seed in range(SEEDS):
        m = Model(c, seed=seed, dtype="float64")
        xs, dxs, _ = run_layers(m, ids, targets)
        runs.append(block_grad_norms(m))
    grad_norms[name] = np.mean(runs, axis=0)                             # (L,) averaged over seeds
    stream_std[name] = np.array([x.std() for x in xs])                   # (L+1,) of the last seed
    stream_grad[name] = np.array([np.linalg.norm(d) for d in dxs])       # (L+1,)

blocks = np.arange(L)
grad_png = plot_curves({name: (blocks, g) for name, g in grad_norms.items()}, "11_grad_norm_per_layer",
                       xlabel="block l (0 = nearest the embeddings)", ylabel="gradient norm of block l's parameters",
                       title=f"{L}-layer model at initialisation")
print(f"{'block':>5} " + " ".join(f"{name:>31}" for name in grad_norms))
for i in blocks:
    print(f"{i:>5} " + " ".join(f"{g[i]:31.4f}" for g in grad_norms.values()))
print("saved", grad_png)

# %% [markdown]
# One rule explains all three curves. A LayerNorm does not see its input's scale, $\mathrm{LN}(a x) = \mathrm{LN}(x)$,
# so its Jacobian scales like $1/\sigma$ (the formula above): a stream twice as large needs a change twice as large
# to matter, and the gradient with respect to it is about half. The table below shows it:
# $\lVert\partial\mathcal{L}/\partial x_l\rVert \cdot \mathrm{std}(x_l)$ is nearly the same number at every layer, in
# every wiring. So the gradients follow the scale of the stream:
#
# - **Post-norm**: every block's output is a LayerNorm output, std 1, so blocks 1-11 have the same small gradients
#   (and at this initialisation each sublayer adds little, $f(x) \ll x$, so each LayerNorm's input has
#   $\sigma \approx 1$: the product of Jacobians is harmless at step 0). Block 0 is the exception: its first
#   LayerNorm sees the raw embeddings, std $\approx 0.02\sqrt{2} = 0.028$, and its backward multiplies by
#   $1/\sigma \approx 35$. That large gradient goes to what is added at full size to the small embeddings: the
#   embeddings themselves and block 0's attention output bias $b_o$, which carries almost all of block 0's norm.
# - **Pre-norm, plain init**: the stream keeps the embeddings' small scale and grows as blocks add to it (0.028 to
#   0.11), so the gradients are large, and *decrease* with depth.
# - **GPT-2**: with the scaled init the stream hardly grows (0.028 to 0.035), and the per-block gradients are much
#   flatter (max/min about 1.4 against about 4).

# %%
print(f"{'layer':>5} | {'std of the stream x_l':^36} | {'|dL/dx_l| * std(x_l)':^36}")
print(f"{'':>5} | {'post':>11} {'pre':>11} {'GPT-2':>12} | {'post':>11} {'pre':>11} {'GPT-2':>12}")
for l in (0, 1, 2, 4, 8, L):
    stds = [stream_std[n][l] for n in wirings]
    prods = [stream_grad[n][l] * stream_std[n][l] for n in wirings]
    print(f"{l:>5} | " + " ".join(f"{s:11.4f}" for s in stds) + "  | " + " ".join(f"{q:11.5f}" for q in prods))

# %% [markdown]
# This is the picture at step 0 of a small model. The difficulties reported for deep post-norm Transformers show up
# once training moves the weights: the sublayers stop being small, the LayerNorm Jacobians stop being near-identities,
# and the product of $2L$ of them is no longer harmless. Xiong et al. 2020 analyse the gradients at initialisation
# and show why post-norm needs a learning-rate warmup while pre-norm trains without one; Liu et al. 2020
# ("Understanding the Difficulty of Training Transformers") trace post-norm's instability to its heavy dependence on
# the residual branches. Pre-norm's price is the growing stream, and the next two sections are GPT-2's answers to it.
#
# ## The final LayerNorm
#
# How large does the stream get before the head? Pre-norm models of growing depth, with the plain and the scaled
# init: the std of the top of the stream $x_L$, and the std of the logits without and with $\mathrm{LN}_f$ (the
# same weights, `final_norm=False` given the same parameters minus `norm_f`). We keep the streams for the
# variance measurement further down.

# %%
depths = (2, 4, 12) if FAST else (2, 4, 8, 12, 24)
print(f"{'L':>3} {'std x_L (plain)':>16} {'std x_L (scaled)':>17} {'logits std, no LN_f':>20} {'with LN_f':>10}")
final_rows, streams = [], {}
for depth in depths:
    plain = Model(ModelConfig.preset("gpt2", n_layer=depth, scaled_residual_init=False), seed=0, dtype="float64")
    scaled = Model(ModelConfig.preset("gpt2", n_layer=depth), seed=0, dtype="float64")
    no_final = Model(ModelConfig.preset("gpt2", n_layer=depth, scaled_residual_init=False, final_norm=False),
                     dtype="float64", params={k: v for k, v in plain.params.items() if not k.startswith("norm_f")})
    streams[depth] = (run_layers(plain, ids, targets)[0], run_layers(scaled, ids, targets)[0])  # L+1 x (B, T, C)
    top_plain, top_scaled = streams[depth][0][-1], streams[depth][1][-1]                      # (B, T, C) each
    row = (depth, top_plain.std(), top_scaled.std(), no_final.forward(ids).std(), plain.forward(ids).std())
    final_rows.append(row)
    print(f"{row[0]:>3} {row[1]:16.4f} {row[2]:17.4f} {row[3]:20.4f} {row[4]:10.4f}")

# %% [markdown]
# Without $\mathrm{LN}_f$ the head's input, and so the logits, scale with the stream, which depends on the depth (and,
# during training, on everything else). With $\mathrm{LN}_f$ the head always sees a vector of std 1 (times the learned
# scale $w$), exactly as GPT-1's head did after its last post-norm LayerNorm: the logits have the same scale,
# $\approx 0.02\sqrt{C} = 0.16$, at every depth.
#
# ## Scaled residual initialisation, measured
#
# First the init itself: in the GPT-2 preset, $W_o$ and $W_{\text{down}}$ of every block have std $0.02/\sqrt{2L}$,
# everything else 0.02.

# %%
g2 = Model(ModelConfig.preset("gpt2", n_layer=L), seed=0, dtype="float64")
for key in ("blocks.0.attn.wq", "blocks.0.attn.wo", "blocks.0.mlp.w_up", "blocks.0.mlp.w_down"):
    print(f"{key:20s} std {g2.params[key].std():.5f}")
print(f"0.02 / sqrt(2L) = {0.02 / np.sqrt(2 * L):.5f} for L = {L}")

# %% [markdown]
# Now the variance of the stream after every block, $L = 12$, plain against scaled; then the added variance
# $\mathrm{Var}(x_L) - \mathrm{Var}(x_0)$ for several depths, against the prediction "ratio $\approx 2L$".

# %%
var_plain = [float(x.var()) for x in streams[L][0]]                     # (L+1,)
var_scaled = [float(x.var()) for x in streams[L][1]]                    # (L+1,)
var_png = plot_curves({"plain init, std 0.02": var_plain, "scaled init, std 0.02/sqrt(2L)": var_scaled},
                      "11_residual_variance", xlabel="after block l (0 = the embeddings)",
                      ylabel="Var of the residual stream x_l", title=f"pre-norm, {L} layers, at initialisation")
print("saved", var_png)

print(f"{'L':>3} {'added var, plain':>17} {'added var, scaled':>18} {'ratio':>7} {'2L':>4}")
ratios = {}
for depth in depths:
    added = [float(stream[-1].var() - stream[0].var()) for stream in streams[depth]]   # plain, scaled
    ratios[depth] = added[0] / added[1]
    print(f"{depth:>3} {added[0]:17.2e} {added[1]:18.2e} {ratios[depth]:7.1f} {2 * depth:>4}")

# %% [markdown]
# The plain init's added variance grows in proportion to $L$; the scaled one stays at the same small value at every
# depth, and the ratio tracks $2L$, as derived. (Not exactly $2L$: the $f_k$ are only approximately independent,
# and the scaled and plain streams feed slightly different inputs to later layers.)
#
# ## A whole-model gradient check
#
# As in lesson 08: every parameter tensor of a tiny GPT-2 (2 layers, $C = 32$, $T = 8$, $V = 50$), float64, sampled
# entries, weights moved off their initialisation first, the key bias (whose gradient is exactly zero) compared
# absolutely.

# %%
check_cfg = ModelConfig.preset("gpt2", n_layer=2, d_model=32, max_seq_len=8, vocab_size=50)
check_model = Model(check_cfg, seed=0, dtype="float64")
noise = np.random.default_rng(1)
move_off_init(check_model, noise)                                        # off the initialisation
c_ids, c_targets = noise.integers(0, 50, (2, 8)), noise.integers(0, 50, (2, 8))   # (2, 8) each
errors = check_model_gradients(check_model, c_ids, c_targets, entries=4 if FAST else 10)
print(f"{len(errors)} tensors, worst error {max(errors.values()):.1e} ({max(errors, key=errors.get)})")

# %% [markdown]
# ## GPT-2 in the textbook: sizes, data, zero-shot
#
# The chapter: GPT-2 *"将 Post-Norm 改为了 Pre-Norm"* (changed post-norm to pre-norm) because *"由于模型层数增加、体量增大，
# 梯度消失和爆炸的风险也不断增加"* (with more layers and a bigger model, the risk of vanishing and exploding gradients
# grows): the measurements above are that argument in numbers. Its sizes: *"GPT-2 的 Decoder Block 层数达到了48（注意，
# GPT-2 共发布了四种规格的模型，此处我们仅指规格最大的 GPT-2 模型），隐藏层维度达到了 1600，模型整体参数量达 15亿（1.5B），
# 使用了自己抓取的 40GB 大小的 WebText 数据集进行预训练"* (48 blocks, four released sizes of which this is the largest,
# hidden size 1600, 1.5B parameters, pretrained on WebText, 40 GB, crawled by OpenAI), *"不管是模型结构还是预训练大小都超过了
# 1代一个数量级"* (an order of magnitude beyond GPT-1 in both). The four sizes are presets:

# %%
CHAPTER_GPT2 = {"layers": 48, "hidden": 1600, "params": 1.5e9, "corpus_GB": 40, "sizes": 4}
GPT1_PARAMS, GPT1_CORPUS_GB = 117e6, 5                                    # lesson 08 / the chapter's table
sizes = {name: ModelConfig.preset(name) for name in ("gpt2-small", "gpt2-medium", "gpt2-large", "gpt2-xl")}
for name, c in sizes.items():
    print(f"{name:12} {c.n_layer:>3} layers  C = {c.d_model:>5}  {c.n_head:>3} heads  "
          f"{num_params(c)['total']:>14,} parameters")
xl = sizes["gpt2-xl"]
xl_params = num_params(xl)["total"]
print(f"GPT-2 XL over GPT-1: {xl_params / GPT1_PARAMS:.1f}x the parameters, "
      f"{CHAPTER_GPT2['corpus_GB'] / GPT1_CORPUS_GB:.0f}x the text")

# %% [markdown]
# All as printed: 48 layers and $C = 1600$ for the largest of four sizes, 1.5B parameters (the GPT-2 paper's "1542M";
# the released weights have 1.56B, see lesson 13), and the paper's own figure for WebText, *"slightly over 8 million
# documents for a total of 40 GB of text"*. "An order of magnitude" is 13x in parameters and 8x in text.
#
# The chapter also gives GPT-2 its aim: **zero-shot** (零样本学习), *"不对模型进行微调，直接要求模型解决任务"* (no
# fine-tuning: ask the model to solve the task directly), by describing the task in the prompt; the GPT-2 paper's title
# says it, "Language Models are Unsupervised Multitask Learners". Lesson 12 compares zero-shot and few-shot prompts on a
# tiny trained model, and lesson 13 follows the idea to GPT-3's few-shot prompts.
#
# ## Summary
# - Pre-norm, $x \leftarrow x + f(\mathrm{LN}(x))$: the backward is "$g$ plus a branch" at every sublayer, so the loss
#   gradient reaches every layer along the residual stream untouched by any LayerNorm. Post-norm multiplies it by
#   $2L$ LayerNorm Jacobians.
# - LayerNorm ignores scale, so the gradient with respect to the stream goes like 1/std of the stream. Measured at
#   initialisation (12 layers): post-norm's block 0 gets >10x the gradient of the others (its LayerNorm sees the small
#   raw embeddings); pre-norm's gradients fall with depth as the stream grows; GPT-2's are much flatter.
# - Pre-norm never normalizes the stream, so GPT-2 adds a final LayerNorm before the head.
# - Scaled residual init, std $0.02/\sqrt{2L}$ on $W_o$ and $W_{\text{down}}$: the stream's added variance drops by
#   $\approx 2L$ and no longer grows with depth.
# - The textbook's GPT-2 (48 layers, $C = 1600$, 1.5B, 40 GB of WebText, four sizes) matches the paper and the presets;
#   its aim was zero-shot: tasks described in the prompt, no fine-tuning.
#
# ## Exercises
# 1. Change `wirings` to use `init_std=0.1` for all three models. What happens to the post-norm curve, and to the
#    gap between the two pre-norm curves? Explain with $\mathrm{Var}(f_k) = n_{\text{in}}\sigma^2\mathbb{E}[h^2]$.
# 2. Predict the added variance of a 48-layer plain-init model from the table, then measure it.
# 3. Show that $\mathrm{LN}(a x) = \mathrm{LN}(x)$ for $a > 0$ (up to $\epsilon$) and derive from it that
#    $J_{\mathrm{LN}}(a x) = J_{\mathrm{LN}}(x)/a$. How does that explain the pre-norm curve?
# 4. The DeepNorm of ChatGLM-6B (lesson 21) keeps the LayerNorm on the residual path but scales the stream by
#    $\alpha = \sqrt{2L}$ first. Measure its per-layer gradient norms with `norm_placement="deepnorm"`.

# %% [markdown]
# ## Check

# %%
assert logits.shape == (B, T, 256) and logits.dtype == np.float64
assert block_diff < 1e-12, block_diff                          # the same layers in the same order
assert loop_diff < 1e-12, loop_diff                            # the per-block loop is Model.backward
post, pre, gpt2 = (grad_norms[n] for n in wirings)
assert post[0] > 5 * np.median(post[1:]), post                 # block 0's LayerNorm divides by the embeddings' std
assert post[1:].max() / post[1:].min() < 1.5, post             # otherwise flat: LayerNorm inputs have sigma ~ 1
assert pre[0] > 2 * pre[-1], pre                               # the growing stream shrinks the upper gradients
assert gpt2.max() / gpt2.min() < 1.6, gpt2                     # the scaled init keeps them nearly flat
for name in wirings:                                           # LayerNorm's scale invariance: |dL/dx_l| ~ 1/std(x_l)
    prod = stream_grad[name] * stream_std[name]
    assert prod.max() / prod.min() < 1.5, (name, prod)
assert all(abs(row[4] - final_rows[0][4]) < 0.02 for row in final_rows)   # with LN_f: the same logit scale at any depth
assert final_rows[-1][3] > 2 * final_rows[0][3]                # without LN_f: the logits grow with the stream
for depth, ratio in ratios.items():
    assert depth < ratio < 4 * depth, (depth, ratio)           # the added variance drops by ~2L
assert abs(g2.params["blocks.3.attn.wo"].std() / (0.02 / np.sqrt(2 * L)) - 1) < 0.05
assert abs(g2.params["blocks.3.attn.wq"].std() / 0.02 - 1) < 0.05
assert max(errors.values()) < 1e-6, {k: e for k, e in errors.items() if e >= 1e-6}
assert (xl.n_layer, xl.d_model, xl.n_head) == (CHAPTER_GPT2["layers"], CHAPTER_GPT2["hidden"], 25)
assert len(sizes) == CHAPTER_GPT2["sizes"] and max(c.n_layer for c in sizes.values()) == 48
assert round(1542e6 / 1e9, 1) == CHAPTER_GPT2["params"] / 1e9 and abs(xl_params / 1542e6 - 1) < 0.011   # paper vs weights
assert 8 <= xl_params / GPT1_PARAMS < 20 and CHAPTER_GPT2["corpus_GB"] / GPT1_CORPUS_GB == 8   # "一个数量级", roughly
assert grad_png.exists() and var_png.exists()
print("lesson 11 OK")
