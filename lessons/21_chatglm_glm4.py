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
# # Lesson 21 — ChatGLM and GLM-4
#
# **You will learn**
# - ChatGLM-6B (2023): GLM's prefix attention and 2D positions carried into rotary form (二维位置编码, 2D RoPE),
#   and DeepNorm, a post-norm block that stays trainable by up-weighting the residual;
# - ChatGLM2-6B and GLM-4-9B: back to a LLaMA-like pre-RMSNorm decoder, but with RoPE on only half of each head
#   (interleaved pairs), a bias on q, k and v only, and two shared kv groups (ChatGLM2's "multi-query" attention, 多查询注意力);
# - the backward pass of each difference, and a float64 gradient check of a tiny ChatGLM-6B and a tiny GLM-4;
# - the prefix property, numerically: a token after the prefix never changes what the prefix computes;
# - the three models' parameter counts and KV-cache sizes, read from their presets;
# - the textbook's account checked: GLM's three changes (and why the original GLM is pre-LN, not post-LN), and the
#   ChatGLM-6B / ChatGLM2 / ChatGLM3 / GLM-4 history (dates, context lengths, kv groups, training tokens).
#
# Lesson 20 trained the original GLM: pre-LayerNorm, two learned position tables, blank infilling. ChatGLM-6B kept its
# objective and its mask but changed the block; ChatGLM2 and GLM-4 changed nearly everything else.

# %%
import dataclasses
import os
import re

import numpy as np

from minigpt import Model, ModelConfig
from minigpt.config import num_params, param_shapes
from minigpt.gradcheck import check_model_gradients, move_off_init
from minigpt.masks import prefix_mask
from minigpt.viz import plot_gqa_groups, plot_mask

FAST = os.environ.get("MINIGPT_FAST") == "1"

# %% [markdown]
# ## GLM's three changes, and where its LayerNorm went
#
# The chapter lists what sets GLM's architecture apart, under the heading *"相对于 GPT 的略微修正"* (small corrections
# relative to GPT):
#
# 1. *"使用 Post Norm 而非 Pre Norm"* (Post Norm rather than Pre Norm), because *"GLM 论文提出，使用 Post Norm 可以避免 LLM
#    的数值错误"* (the GLM paper says Post Norm avoids numerical errors in LLMs);
# 2. *"使用单个线性层实现最终 token 的预测，而不是使用 MLP"* (a single linear layer predicts the output token, not an MLP);
# 3. *"激活函数从 ReLU 换成了 GeLUs"* (the activation goes from ReLU to GeLUs).
#
# The GLM paper (Du et al. 2022) lists the same three as changes to "a single Transformer": *"(1) we rearrange the order
# of layer normalization and the residual connection, which has been shown critical for large-scale language models to
# avoid numerical errors (Shoeybi et al., 2019); (2) we use a single linear layer for the output token prediction;
# (3) we replace ReLU activation functions with GeLUs"*. The rearrangement it cites is Megatron-LM's, which moved BERT's
# LayerNorm from after the residual sum to the input of each sublayer: **pre**-LN. GLM's released code does the same
# (`input_layernorm` before attention, the residual added after it), and so does minigpt's `glm` preset. Post-LN
# arrived one model later: the ChatGLM family report says *"GLM-130B leveraged DeepNorm"*, a post-LN scheme, and
# ChatGLM-6B's block is DeepNorm too (below). The presets, side by side with the GPTs:

# %%
lineage = {name: ModelConfig.preset(name) for name in ("gpt1", "gpt2", "glm", "chatglm", "chatglm2")}
outside_blocks = {name: sorted(k for k in param_shapes(c) if not k.startswith("blocks.")) for name, c in lineage.items()}
print(f"{'preset':>9} {'norm placement':>15} {'MLP activation':>15}  parameters outside the blocks")
for name, c in lineage.items():
    print(f"{name:>9} {c.norm_placement:>15} {c.mlp_activation:>15}  {', '.join(outside_blocks[name])}")

# %% [markdown]
# Every head is one matrix: the tied token table `wte` (or `lm_head` when untied), after the final norm where there is
# one; there is no MLP between the last block and the vocabulary. And no preset uses ReLU.
#
# > **Textbook vs sources: GLM's three differences**
# >
# > | | the chapter | the primary sources |
# > |---|---|---|
# > | LayerNorm | GLM uses Post Norm, unlike GPT and LLaMA | the GLM paper *rearranges* LayerNorm and residual as Megatron-LM did for BERT: **pre**-LN. Post-LN (DeepNorm) is GLM-130B's and ChatGLM-6B's |
# > | "avoids numerical errors" | said of Post Norm | said of the rearrangement, that is of pre-LN, citing Megatron-LM (Shoeybi et al. 2019) |
# > | relative to whom | GPT | BERT and the 2017 Transformer: GPT-2 was already pre-LN; GPT-1 already used GELU (*"we used the Gaussian Error Linear Unit (GELU)"*) and both GPTs predict with one (tied) linear layer. BERT is post-LN and its MLM head is an MLP (a dense layer, GELU and a LayerNorm before the output matrix); ReLU is the 2017 Transformer's (BERT took GELU from GPT: *"we use a gelu activation rather than the standard relu, following OpenAI GPT"*) |
#
# ## ChatGLM-6B
#
# **DeepNorm.** GPT-1's post-norm block $x \leftarrow \operatorname{LN}(x + f(x))$ keeps the stream at unit scale, but
# every layer's update $f(x)$ is comparable in size to the stream itself, and deep post-norm stacks diverge unless warmed up
# gently (lesson 11). DeepNet (Wang et al., 2022) keeps the post-norm and up-weights the residual by a constant
# $\alpha > 1$: $x_{l+1} = \operatorname{LN}(\alpha x_l + f(x_l))$, so each layer moves the stream by only about $1/\alpha$ of
# its size. GLM-130B and ChatGLM-6B use $\alpha = \sqrt{2L}$ ($L$ layers; $\alpha \approx 7.5$ for $L = 28$; DeepNet's own
# rule for a decoder-only model is the milder $(2L)^{1/4}$, with a down-scaled initialisation) and apply the
# LayerNorm at the *input* of each sublayer:
#
# $$ h = \operatorname{LN}(x), \qquad x \leftarrow \alpha\, h + f(h). $$
#
# That is the same computation: the $h$ of the next sublayer is $\operatorname{LN}(\alpha h + f(h))$, DeepNet's recursion
# on the $h$'s, with one extra LN on the embeddings and the final LN closing the last block.
# Backward, $h$ reaches $x'$ twice, through the scaled shortcut and through $f$:
#
# $$ \bar h = \alpha\, \bar x' + J_f^\top \bar x', \qquad \bar x = J_{\operatorname{LN}}^\top\, \bar h . $$
#
# Unlike pre-norm, every gradient passes through every LayerNorm on its way down. But $x'$ is mostly $\alpha h$, so the
# next LayerNorm's Jacobian scales like $1/\operatorname{rms}(x') \approx 1/\alpha$ and cancels the shortcut's $\alpha$: the
# gradient travels down the shortcut at about its own size, and the path through $f$ adds only a $1/\alpha$ share.
# Plain post-norm ($\alpha = 1$) mixes the two equally at every layer.
#
# **2D RoPE.** GLM gives every token two position ids (lesson 19): its position $p$ (a Part B token takes its mask's
# position) and its block position $b$ (0 in Part A, $1, 2, \dots$ inside a span). GLM added two learned tables;
# ChatGLM-6B rotates instead. Each head of $D$ channels is cut in half; the first half is rotated by $p$, the second by $b$,
# each half with rotate-half pairs $(i, i + D/4)$ and angles $\theta^{-2i/(D/2)}$:
#
# $$ \tilde q = \big[\, R_{p}\, q_{[0, D/2)} \;,\; R_{b}\, q_{[D/2, D)} \,\big], \qquad \text{the same for } k, $$
#
# so a score $\tilde q_m \cdot \tilde k_n$ depends on the positions only through $p_m - p_n$ and $b_m - b_n$. Backward, each half rotates back by
# its own angle: $\bar q_{[0, D/2)} = R_{-p}\,\bar{\tilde q}_{[0, D/2)}$, $\bar q_{[D/2, D)} = R_{-b}\,\bar{\tilde q}_{[D/2, D)}$.
#
# **The prefix mask.** The prompt ends with `[gMASK] <sop>`; everything before `<sop>` is the prefix (Part A) and is read
# bidirectionally, and generation (Part B) starts at `<sop>` and is causal: with `sep` the index of `<sop>`,
# $M_{ij} = [\,j < \text{sep}\,] \lor [\,j \le i\,]$. The rest is GPT: tanh-GELU MLP of $4C$, biases everywhere, a tied head.
#
# ## ChatGLM2-6B and GLM-4-9B
#
# - **Pre-RMSNorm**, as LLaMA: $x \leftarrow x + f(\operatorname{RMSNorm}(x))$; SwiGLU MLP; untied output layer; causal mask.
# - **Partial, interleaved RoPE.** Only the first $R = D/2$ channels of a head are rotated, in pairs $(2i, 2i+1)$, by the
#   token's single position; channels $R..D-1$ pass through unchanged. Those carry content with no position at all.
#   Backward: $\bar q_{[0,R)} = R_{-m}\bar{\tilde q}_{[0,R)}$ and $\bar q_{[R,D)} = \bar{\tilde q}_{[R,D)}$.
# - **A bias on q, k, v, none elsewhere.** $q = hW_q + b_q$, so $\bar b_q = \sum_{t} \bar q_t$, and the same for $b_k, b_v$.
#   One consequence is worth seeing: a key bias adds $q_i \cdot b_k$ to *every* score of query $i$, a constant per row, and
#   softmax ignores constants. Only where RoPE rotates $b_k$ differently at each position does it matter, so the
#   gradient of the pass-through half of $b_k$ is zero: it is $\sum_i q_i \sum_j \bar s_{ij} / \sqrt{D}$ on those channels,
#   and $\sum_j \bar s_{ij} = 0$ for every softmax row.
# - **Two kv groups.** 32 query heads share 2 kv heads: two groups of $g = 16$ query heads each (lesson 17's $g$; the GQA
#   paper would call it GQA-2). ChatGLM2's code and README call it multi-query attention (`multi_query_attention`,
#   `multi_query_group_num = 2`), but MQA proper has a single kv head. Backward sums $\bar k, \bar v$ over each group
#   (lesson 17). The KV cache shrinks 16 times, which makes long contexts far cheaper to serve (ChatGLM2 also
#   stretched the context from ChatGLM-6B's 2K tokens to 32K).

# %% [markdown]
# ## The presets, side by side
#
# Every difference is a `ModelConfig` field. Here they are for the published sizes, read from the presets
# (`*` marks rows where the three disagree).

# %%
PUBLISHED = ("chatglm-6b", "chatglm2-6b", "glm4-9b")
configs = {name: ModelConfig.preset(name) for name in PUBLISHED}
FIELDS = ("norm", "norm_placement", "positions", "rotary_fraction", "rope_pairing", "rope_theta", "attention",
          "activation", "qkv_bias", "bias", "tie_embeddings", "n_layer", "d_model", "n_head", "n_kv_head",
          "d_ff", "vocab_size", "max_seq_len")
print(f"{'field':>16}  " + "".join(f"{name:>13}" for name in PUBLISHED))
differ = set()
for field in FIELDS:
    values = [getattr(cfg, field) for cfg in configs.values()]
    if len({str(v) for v in values}) > 1:
        differ.add(field)
    print(f"{field:>16}{'*' if field in differ else ' '} " + "".join(f"{str(v):>13}" for v in values))

# %% [markdown]
# Two rows need reading: ChatGLM-6B's `rotary_fraction` 1.0 and `rope_pairing` half describe its 2D RoPE (both halves
# rotated, rotate-half inside each), and GLM-4's `rope_theta` of 5,000,000 is the `rope_ratio = 500` of GLM-4-9B-Chat's
# config times the usual 10,000: longer wavelengths for its 128K context.
#
# ## Parameter counts
#
# `num_params` adds up `param_shapes` without allocating a single weight.

# %%
PUBLISHED_COUNT = {"chatglm-6b": 6.2e9, "chatglm2-6b": 6.24e9, "glm4-9b": 9.4e9}   # as the model cards give them
counts = {name: num_params(cfg) for name, cfg in configs.items()}
print(f"{'model':>12} {'total':>15} {'embedding':>15} {'blocks':>15} {'published':>10} {'off':>7}")
for name, c in counts.items():
    off = c["total"] / PUBLISHED_COUNT[name] - 1
    print(f"{name:>12} {c['total']:>15,} {c['embedding']:>15,} {c['non_embedding']:>15,} "
          f"{PUBLISHED_COUNT[name] / 1e9:>9.2f}B {off:>+7.2%}")

print(f"\n{'per block':>12} {'attention':>13} {'MLP':>13}   KV cache per token (fp16)")
for name, cfg in configs.items():
    shapes = param_shapes(cfg)
    attn = sum(int(np.prod(s)) for k, s in shapes.items() if k.startswith("blocks.0.attn."))
    mlp = sum(int(np.prod(s)) for k, s in shapes.items() if k.startswith("blocks.0.mlp."))
    kv_bytes = 2 * cfg.n_layer * cfg.n_kv_head * cfg.head_dim * 2           # K and V, every layer, 2 bytes each
    print(f"{name:>12} {attn:>13,} {mlp:>13,}   {kv_bytes / 1024:6.0f} KiB "
          f"({kv_bytes * 32768 / 2**30:.2f} GiB for 32K tokens)")

# %% [markdown]
# ChatGLM2-6B has almost exactly ChatGLM-6B's size, arranged differently: attention shrank from $4C^2$ to about
# $2.1C^2$ per block (K and V are $C \times 256$), and the SwiGLU MLP grew to $3 \cdot C \cdot 13696 \approx 10C^2$;
# the vocabulary halved but the head is no longer tied, so the embeddings cost the same. GLM-4-9B is the same block
# with 40 layers and a 151,552-token vocabulary, whose two $V \times C$ matrices are 1.24B of its 9.4B parameters.
# And the KV cache: 16 times smaller per layer than ChatGLM-6B's.

# %%
gqa_png = plot_gqa_groups(32, 2, "21_chatglm2_kv_groups", rows=4)    # each group of 16 as a 4 x 4 block
print("saved", gqa_png)

# %% [markdown]
# ## The GLM family in the textbook
#
# The chapter's history of the family, its numbers quoted:
# - ChatGLM-6B: *"智谱于 23年 3月发布了第一个中文开源 LLM ChatGLM-6B ... ChatGLM-6B 在 1T 语料上进行预训练，支持 2K 的上下文长度"*
#   (March 2023; pretrained on 1T tokens; 2K context);
# - ChatGLM2-6B: *"在 23年 6月，智谱就开源了 ChatGLM2-6B。相对于一代，ChatGLM2 将上下文长度扩展到了 32K"*, *"引入 MQA 的注意力
#   机制，预训练任务也回归经典的 CLM"* (June 2023; 32K context; MQA; back to the classic CLM objective);
# - ChatGLM3-6B: *"发布于 23年 10月"*, and *"在模型架构上相对二代没有变化"* (October 2023; the architecture unchanged);
# - GLM-4: *"2024年 1月，智谱发布了支持 128K 上下文 ... 的 GLM-4 系列模型"* (January 2024; 128K context), and its open
#   GLM-4-9B *"在 1T token 的多语言语料库上进行预训练，上下文长度为 8K"* (pretrained on a 1T-token multilingual corpus,
#   8K context).
#
# Below, the same facts from the primary sources: the ChatGLM family report (Team GLM 2024, "ChatGLM: A Family of Large
# Language Models from GLM-130B to GLM-4 All Tools", whose Table 1 dates each open model), the models' READMEs and their
# config.json files (context = `seq_length`, heads = `num_attention_heads`, kv groups = `multi_query_group_num`), and the
# presets wherever one exists. "-" marks what is not published.

# %%
CHAPTER_FAMILY = {  # the chapter's numbers, as printed
    "ChatGLM-6B": dict(released="23年 3月", tokens="1T", context="2K"),
    "ChatGLM2-6B": dict(released="23年 6月", context="32K", attention="MQA", objective="CLM"),
    "ChatGLM3-6B": dict(released="23年 10月", architecture="没有变化"),
    "GLM-4": dict(released="2024年 1月", context="128K"),
    "GLM-4-9B": dict(tokens="1T", context="8K"),
}
SOURCE_FAMILY = {  # released (report's Table 1; GLM-4: its API date), context, heads / kv groups, training tokens
    "ChatGLM-6B": dict(released="2023-03-14", context=2048, tokens=1e12, preset="chatglm-6b"),
    "ChatGLM2-6B": dict(released="2023-06-25", context=32768, tokens=1.4e12, preset="chatglm2-6b"),
    "ChatGLM3-6B": dict(released="2023-10-27", context=8192, tokens=None, preset=("chatglm2-6b", 8192)),
    "GLM-4": dict(released="2024-01-16", context=131072, tokens=10e12, preset=None),
    "GLM-4-9B": dict(released="2024-06-05", context=8192, tokens=10e12, preset=("glm4-9b", 8192)),
}


def family_config(source):
    """The preset of a source row: a name, or (name, context) for a model whose config differs only in seq_length."""
    if source["preset"] is None:
        return None
    name, context = source["preset"] if isinstance(source["preset"], tuple) else (source["preset"], None)
    return ModelConfig.preset(name) if context is None else ModelConfig.preset(name, max_seq_len=context)


def chapter_date(text):
    """'23年 3月' -> (2023, 3); '2024年 1月' -> (2024, 1)."""
    year, month = re.match(r"(\d+)年 (\d+)月", text).groups()
    return (2000 + int(year) if len(year) == 2 else int(year), int(month))


def chapter_amount(text):
    """'2K' -> 2048 (a context length), '1T' -> 1e12 (tokens)."""
    return int(text[:-1]) * 1024 if text.endswith("K") else float(text[:-1]) * 1e12


family_configs = {model: family_config(source) for model, source in SOURCE_FAMILY.items()}
print(f"{'model':>12} {'released':>11} {'context':>8} {'heads/kv':>9} {'tokens':>7} {'parameters':>15}")
for model, source in SOURCE_FAMILY.items():
    c = family_configs[model]
    heads = f"{c.n_head}/{c.n_kv_head}" if c else "-"
    tokens = f"{source['tokens'] / 1e12:g}T" if source["tokens"] else "-"
    params = f"{num_params(c)['total']:,}" if c else "-"
    print(f"{model:>12} {source['released']:>11} {source['context']:>8} {heads:>9} {tokens:>7} {params:>15}")
chatglm3 = family_configs["ChatGLM3-6B"]
print("ChatGLM3-6B's config vs ChatGLM2-6B's, fields that differ:",
      [f.name for f in dataclasses.fields(chatglm3)
       if getattr(chatglm3, f.name) != getattr(configs["chatglm2-6b"], f.name)])

# %% [markdown]
# GLM-4's sizes are not published, so it has no preset; GLM-4-9B's base model has an 8K context (`glm4-9b` is the
# 128K chat model's config, so the base row asks it with `max_seq_len=8192`). A released GLM-4-9B-Chat-1M stretches
# the same block to a million positions.
#
# > **Textbook vs sources: the GLM family**
# >
# > | | the chapter | the primary sources |
# > |---|---|---|
# > | dates | 23年3月, 23年6月, 23年10月, 2024年1月 | right: 2023-03-14, 2023-06-25, 2023-10-27 (the report's Table 1), GLM-4 on its API from 2024-01-16; GLM-4-9B came out 2024-06-05 |
# > | ChatGLM-6B | 1T tokens, 2K | right: *"approximately one trillion tokens ... with a context length of 2,048"*; 32 heads, no kv sharing |
# > | ChatGLM2-6B context | 32K | right for the base model (`seq_length` 32768); its README adds that the dialogue stage was trained at 8K; pretrained on 1.4T tokens (README) |
# > | ChatGLM2-6B "MQA" | multi-query attention | 32 query heads share **2** kv heads (`multi_query_group_num` 2), not 1: grouped-query attention with 2 groups of 16; the code and the README call it Multi-Query Attention |
# > | ChatGLM2-6B objective | *"回归经典的 CLM"* | the README: *"ChatGLM2-6B 使用了 GLM 的混合目标函数"* (GLM's hybrid objective). What is certain is that the released model attends causally (no bidirectional prefix), which is what the `chatglm2` preset does; how much blank infilling its pretraining mixed in is not documented |
# > | ChatGLM3-6B | architecture unchanged | right: the same block as ChatGLM2-6B; `chatglm3-6b` has `seq_length` 8192 (a ChatGLM3-6B-32K was released too); training tokens not published |
# > | GLM-4 | 128K | right |
# > | GLM-4-9B tokens | 1T | **about ten trillion**: *"GLM-4-9B is pre-trained on approximately ten trillion tokens of multilingual corpus with a context length of 8192 (8K)"* (the family report) |
# > | GLM-4-9B context | 8K | right for the base model; GLM-4-9B-Chat has 128K (`seq_length` 131072), GLM-4-9B-Chat-1M one million |
#
# ## How it works, in a few lines of NumPy
#
# One forward pass for both generations, reading the weights of a `minigpt.Model`; the `if`s are exactly the
# differences above. Rotations first: `rotate` turns any list of channel pairs, and the two schemes only choose
# different pairs and different positions.

# %%
def rotate(x, pos, first, second, theta):
    """Turn channel pairs (first[i], second[i]) of x (B, H, T, D) at position pos (T,) by pos * theta^(-2i/R)."""
    R = 2 * len(first)                                                           # channels rotated
    angle = pos[:, None] * theta ** (-np.arange(0, R, 2) / R)                    # (T, R/2)
    cos, sin = np.cos(angle), np.sin(angle)                                      # (T, R/2) each
    a, b = x[..., first], x[..., second]                                         # (B, H, T, R/2) each
    out = x.copy()                                                               # (B, H, T, D)
    out[..., first], out[..., second] = a * cos - b * sin, b * cos + a * sin
    return out


def rope_2d(x, pos, block_pos, theta):
    """ChatGLM-6B: the first half of each head by the position, the second by the block position."""
    Q = x.shape[-1] // 4
    x = rotate(x, pos, np.arange(0, Q), np.arange(Q, 2 * Q), theta)                  # pairs (i, i + D/4)
    return rotate(x, block_pos, np.arange(2 * Q, 3 * Q), np.arange(3 * Q, 4 * Q), theta)


def rope_partial_interleaved(x, pos, theta):
    """ChatGLM2 / GLM-4: pairs (2i, 2i + 1) of the first half of each head; the second half passes through."""
    R = x.shape[-1] // 2
    return rotate(x, pos, np.arange(0, R, 2), np.arange(1, R, 2), theta)


def glm_forward(p, cfg, ids, pos, block_pos=None, sep=None):
    """ids (B, T) -> logits (B, T, V) for a minigpt ChatGLM-6B (deepnorm, rope2d) or ChatGLM2 / GLM-4 model."""
    B, T = ids.shape
    H, Hkv, D = cfg.n_head, cfg.n_kv_head, cfg.head_dim
    mask = np.tril(np.ones((T, T), dtype=bool))                                  # (T, T) causal
    if sep is not None:
        mask[:, :sep] = True                                                     # the prefix is seen by everyone

    def norm(x, key):
        if cfg.norm_has_bias:                                                    # LayerNorm (ChatGLM-6B)
            mu = x.mean(axis=-1, keepdims=True)
            var = ((x - mu) * (x - mu)).mean(axis=-1, keepdims=True)
            return (x - mu) / np.sqrt(var + cfg.norm_eps) * p[key + ".w"] + p[key + ".b"]
        return x / np.sqrt((x * x).mean(axis=-1, keepdims=True) + cfg.norm_eps) * p[key + ".w"]

    def heads(y, n):
        return y.reshape(B, T, n, D).transpose(0, 2, 1, 3)                       # (B, n, T, D)

    def residual(x, h, f):
        return cfg.deepnorm_alpha * h + f if cfg.norm_placement == "deepnorm" else x + f

    x = p["wte"][ids]                                                            # (B, T, C)
    for i in range(cfg.n_layer):
        w = {k.split(".", 2)[2]: v for k, v in p.items() if k.startswith(f"blocks.{i}.")}
        h = norm(x, f"blocks.{i}.norm1")                                         # (B, T, C)
        q = heads(h @ w["attn.wq"] + w["attn.bq"], H)                            # (B, H, T, D) both have a qkv bias
        k = heads(h @ w["attn.wk"] + w["attn.bk"], Hkv)                          # (B, Hkv, T, D)
        v = heads(h @ w["attn.wv"] + w["attn.bv"], Hkv)                          # (B, Hkv, T, D)
        if cfg.rotary == "rope2d":
            q, k = (rope_2d(t, pos, block_pos, cfg.rope_theta) for t in (q, k))
        else:
            q, k = (rope_partial_interleaved(t, pos, cfg.rope_theta) for t in (q, k))
        k, v = np.repeat(k, H // Hkv, axis=1), np.repeat(v, H // Hkv, axis=1)    # (B, H, T, D)
        s = np.where(mask, q @ k.transpose(0, 1, 3, 2) / np.sqrt(D), -np.inf)    # (B, H, T, T)
        a = np.exp(s - s.max(axis=-1, keepdims=True))                            # (B, H, T, T)
        a = a / a.sum(axis=-1, keepdims=True)                                    # (B, H, T, T)
        o = (a @ v).transpose(0, 2, 1, 3).reshape(B, T, H * D) @ w["attn.wo"]    # (B, T, C)
        x = residual(x, h, o + w["attn.bo"] if cfg.bias else o)                  # (B, T, C)
        h = norm(x, f"blocks.{i}.norm2")                                         # (B, T, C)
        if cfg.gated:                                                            # SwiGLU
            g = h @ w["mlp.w_gate"]                                              # (B, T, F)
            m = (g / (1 + np.exp(-g)) * (h @ w["mlp.w_up"])) @ w["mlp.w_down"]   # (B, T, C)
        else:                                                                    # tanh-GELU, with biases
            u = h @ w["mlp.w_up"] + w["mlp.b_up"]                                # (B, T, F)
            u = 0.5 * u * (1 + np.tanh(np.sqrt(2 / np.pi) * (u + 0.044715 * u * u * u)))
            m = u @ w["mlp.w_down"] + w["mlp.b_down"]                            # (B, T, C)
        x = residual(x, h, m)                                                    # (B, T, C)
    x = norm(x, "norm_f")                                                        # (B, T, C)
    return x @ (p["wte"].T if cfg.tie_embeddings else p["lm_head"])             # (B, T, V)


# %% [markdown]
# A ChatGLM-6B prompt, with made-up token ids: the question, then `[gMASK]` (where the answer "goes") and `<sop>`
# (where it starts). Positions count up to `<sop>`, which takes the `[gMASK]`'s position, as do all the generated
# tokens; block positions are 0 in the prefix and $1, 2, 3, \dots$ from `<sop>` on.

# %%
words = ["what", "does", "RoPE", "rotate", "?", "[gMASK]", "<sop>", "q", "and", "k"]
T = len(words)
ids = np.array([[3 + n for n in range(T)]])                                      # (1, T) made-up ids
sep = words.index("<sop>")                                                       # 6: the prefix is words[:6]
gmask = words.index("[gMASK]")
pos = np.where(np.arange(T) < sep, np.arange(T), gmask)                          # (T,) [0 1 2 3 4 5 5 5 5 5]
block_pos = np.where(np.arange(T) < sep, 0, np.arange(T) - sep + 1)              # (T,) [0 0 0 0 0 0 1 2 3 4]
print(f"{'token':>10}" + "".join(f"{w:>8}" for w in words))
print(f"{'position':>10}" + "".join(f"{n:>8}" for n in pos))
print(f"{'block pos':>10}" + "".join(f"{n:>8}" for n in block_pos))

TINY = dict(n_layer=2, d_model=32, n_head=4, vocab_size=50, max_seq_len=16)
tiny = {"chatglm": ModelConfig.preset("chatglm", **TINY), "glm4": ModelConfig.preset("glm4", **TINY)}
models = {name: Model(cfg, seed=0, dtype="float64") for name, cfg in tiny.items()}
rng = np.random.default_rng(0)
for model in models.values():                                                    # off the init: unit gains, zero biases
    move_off_init(model, rng)
chatglm_kwargs = dict(position_ids=pos, block_position_ids=block_pos, prefix_len=sep)

parity = {
    "chatglm": np.abs(glm_forward(models["chatglm"].params, tiny["chatglm"], ids, pos, block_pos, sep)
                      - models["chatglm"].forward(ids, **chatglm_kwargs)).max(),
    "glm4": np.abs(glm_forward(models["glm4"].params, tiny["glm4"], ids, np.arange(T))
                   - models["glm4"].forward(ids)).max(),
}
for name, err in parity.items():
    print(f"{name}: from scratch vs minigpt.Model, max abs logit difference {err:.1e}")

# %% [markdown]
# ## The prefix property
#
# Under the prefix mask, position $i < \text{sep}$ attends to keys $j < \text{sep}$ only, in every layer, so nothing after the
# prefix can reach it: its output must be *exactly* unchanged when a later token changes (masked weights are exactly 0).
# A prefix token, on the other hand, is seen by every prefix position, earlier ones included. GLM-4's causal mask
# answers differently for the second edit: only positions at or after the changed token move.

# %%
def changed_positions(model, ids, t, **kwargs):
    """Which positions' logits change when token t is replaced: a string of '.' (same) and 'x' (changed)."""
    base = model.forward(ids, **kwargs)                                          # (1, T, V)
    edited = ids.copy()
    edited[0, t] = (edited[0, t] + 17) % 50
    diff = np.abs(model.forward(edited, **kwargs) - base).max(axis=-1)[0]       # (T,)
    return "".join("x" if d > 0 else "." for d in diff), diff


after_t, inside_t = words.index("and"), words.index("rotate")
print(f"{'token edited':>25}" + "".join(f"{w:>8}" for w in words))
effects = {}
for name, kwargs in (("chatglm", chatglm_kwargs), ("glm4", {})):
    for where, t in (("after", after_t), ("inside", inside_t)):
        marks, diff = changed_positions(models[name], ids, t, **kwargs)
        effects[name, where] = diff
        print(f"{name:>7}: {words[t]!r:>8} {where:>7}" + "".join(f"{c:>8}" for c in marks))

mask = prefix_mask(T, sep)                                                       # (T, T) True = may attend
mask_png = plot_mask(mask, "ChatGLM-6B's prefix mask", "21_chatglm_prefix_mask", row_labels=words, col_labels=words,
                     boundary=sep, boundary_label=f"sep = {sep}: prefix (Part A) | generation (Part B)")
print("saved", mask_png)

# %% [markdown]
# Changing "and" (after the prefix) leaves every position before it unchanged in both models: for the prefix that is
# the mask's promise, and for `<sop>` and "q" it is plain causality. Changing "rotate" moves all six prefix positions of
# ChatGLM-6B, "what", "does" and "RoPE" included, which read it bidirectionally; under GLM-4's causal mask "what", "does" and
# "RoPE" never see it. This is why ChatGLM-6B can encode the whole prompt once, bidirectionally, and still generate
# with a KV cache: the prefix's keys and values never change as the answer grows.
#
# ## Gradient checks of the whole models
#
# `Model.backward` walks the same steps in reverse: DeepNorm's two paths into $h$, the LayerNorm, 2D rotations undone half
# by half for ChatGLM-6B; partial rotations undone, pass-through channels copied, group sums for GLM-4. We check every
# parameter tensor of both tiny models in float64 (on sampled entries, half of them
# where the analytic gradient is nonzero), with the 2D positions and prefix for ChatGLM-6B.

# %%
targets = rng.integers(0, 50, (1, T))                                            # (1, T)
ENTRIES = 4 if FAST else 8                                                       # sampled entries per large tensor
grad_errors = {"chatglm": check_model_gradients(models["chatglm"], ids, targets, ENTRIES, **chatglm_kwargs),
               "glm4": check_model_gradients(models["glm4"], ids, targets, ENTRIES)}
for name, errors in grad_errors.items():
    worst = max(errors, key=errors.get)
    print(f"{name}: {len(errors)} parameter tensors, worst rel_error {errors[worst]:.1e} ({worst})")

# %% [markdown]
# The key bias of GLM-4, whose gradient the derivation said is zero on the channels RoPE leaves alone. `bk` is
# $H_{kv} \times D$: per kv head, channels $0..R-1$ are rotated and $R..D-1$ pass through.

# %%
glm4_cfg = tiny["glm4"]
R = glm4_cfg.rotary_dim
dbk = models["glm4"].grads["blocks.0.attn.bk"].reshape(glm4_cfg.n_kv_head, glm4_cfg.head_dim)   # (Hkv, D)
print(f"|d bk| on the rotated channels 0..{R - 1}:     max {np.abs(dbk[:, :R]).max():.1e}")
print(f"|d bk| on the pass-through channels {R}..{glm4_cfg.head_dim - 1}: max {np.abs(dbk[:, R:]).max():.1e}")

# %% [markdown]
# Rounding-level zeros where the softmax cancels a constant; real gradients where the rotation makes the bias
# position-dependent. (The same cancellation makes the whole key bias of a model without RoPE, GPT-2's `bk`, useless.)
#
# ## Summary
# - ChatGLM-6B = GLM's objective and prefix mask + DeepNorm ($h = \operatorname{LN}(x)$, $x \leftarrow \sqrt{2L}\,h + f(h)$) +
#   2D RoPE (first half of each head by position, second by block position) + GELU MLP, biases, tied head.
# - ChatGLM2-6B / GLM-4-9B = pre-RMSNorm, SwiGLU, RoPE on half of each head in interleaved pairs, a qkv bias only,
#   2 kv groups, untied head, causal mask: a LLaMA with a few changes.
# - Backward: DeepNorm's $\bar h = \alpha \bar x' + J_f^\top \bar x'$; rotations undone (half by half, or only on the rotated
#   channels); bias gradients are sums over positions; kv gradients summed over groups.
# - The prefix never sees what follows it (checked to the bit); two kv groups cut the KV cache 16x.
# - Against the textbook: the original GLM is pre-LN (its "rearranged" LayerNorm); post-LN DeepNorm is GLM-130B's and
#   ChatGLM-6B's; the three changes are relative to BERT, not GPT. ChatGLM2's "MQA" has 2 kv groups; its README
#   describes GLM's hybrid objective, not plain CLM; GLM-4-9B was pretrained on about ten trillion tokens, not 1T.
#
# ## Exercises
# 1. Set `norm_placement="post"` on the tiny ChatGLM-6B (plain post-norm, $\alpha = 1$) and compare the gradient norm of
#    `blocks.0.attn.wq` with DeepNorm's, for $L = 2$ and $L = 12$. What does $\alpha$ do to the lowest layer's gradient?
# 2. In the prompt above, give `<sop>` and the answer tokens the positions 6, 7, 8, 9 instead of the `[gMASK]`'s 5, and
#    block positions all 0. Which information does the model lose?
# 3. Show that the pass-through half of `bq` *does* get a gradient. Why is the query bias different from the key bias?
# 4. Using the presets, how large would ChatGLM2-6B be with 32 kv heads (plain MHA)? And its KV cache for 32K tokens?

# %% [markdown]
# ## Check

# %%
for name, c in counts.items():
    assert abs(c["total"] / PUBLISHED_COUNT[name] - 1) < 0.01, (name, c["total"])   # within 1% of the published size
assert {"norm", "norm_placement", "positions", "attention", "activation", "n_kv_head", "tie_embeddings"} <= differ
assert configs["chatglm2-6b"].rotary_dim == 64 and configs["chatglm-6b"].deepnorm_alpha == np.sqrt(56)
for name, err in parity.items():
    assert err < 1e-12, (name, err)                                  # the NumPy cell is the library's maths
for name, errors in grad_errors.items():
    assert set(errors) == set(models[name].params), name           # every parameter tensor checked
    assert max(errors.values()) < 1e-6, (name, errors)
assert "blocks.0.attn.bo" not in models["glm4"].params and "blocks.0.attn.bk" in models["glm4"].params
assert (effects["chatglm", "after"][:after_t] == 0).all()   # bit for bit: masked weights are exactly 0
assert (effects["chatglm", "after"][after_t:] > 0).all()
assert (effects["chatglm", "inside"][:sep] > 1e-8).all()    # the whole prefix reads "rotate"
assert (effects["glm4", "inside"][:inside_t] == 0).all()    # causal: earlier positions do not
assert np.abs(dbk[:, R:]).max() < 1e-12 < np.abs(dbk[:, :R]).max()     # softmax cancels the unrotated key bias
assert mask.dtype == bool and mask[:, :sep].all() and not mask[0, sep:].any()
assert lineage["glm"].norm_placement == "pre" and lineage["chatglm"].norm_placement == "deepnorm"  # GLM is pre-LN
assert lineage["gpt1"].norm_placement == "post" and lineage["gpt2"].norm_placement == "pre"
assert all(c.mlp_activation != "relu" for c in lineage.values())            # GELU since GPT-1
for name, keys in outside_blocks.items():                                   # the head is one matrix, no MLP
    assert not [k for k in keys if k not in ("wte", "wpe", "wbpe", "lm_head", "norm_f.w", "norm_f.b")], (name, keys)
for model, chapter in CHAPTER_FAMILY.items():
    source, c = SOURCE_FAMILY[model], family_configs[model]
    if "released" in chapter:                                               # the chapter's months are right
        assert chapter_date(chapter["released"]) == tuple(int(x) for x in source["released"].split("-")[:2]), model
    if "context" in chapter:                                                # and so are its context lengths
        assert chapter_amount(chapter["context"]) == source["context"], model
    if c is not None:
        assert c.max_seq_len == source["context"] and c.n_head == 32, model
assert chapter_amount(CHAPTER_FAMILY["ChatGLM-6B"]["tokens"]) == SOURCE_FAMILY["ChatGLM-6B"]["tokens"]
assert chapter_amount(CHAPTER_FAMILY["GLM-4-9B"]["tokens"]) * 10 == SOURCE_FAMILY["GLM-4-9B"]["tokens"]  # 1T vs ~10T
assert family_configs["ChatGLM-6B"].n_kv_head == 32                         # ChatGLM-6B: plain multi-head
assert CHAPTER_FAMILY["ChatGLM2-6B"]["attention"] == "MQA" and configs["chatglm2-6b"].n_kv_head == 2 != 1
assert configs["chatglm2-6b"].attention == "causal" and configs["chatglm-6b"].attention == "prefix"
assert num_params(chatglm3) == num_params(configs["chatglm2-6b"])         # "架构 ... 没有变化"
assert [f.name for f in dataclasses.fields(chatglm3)
        if getattr(chatglm3, f.name) != getattr(configs["chatglm2-6b"], f.name)] == ["max_seq_len"]
assert family_configs["GLM-4-9B"].n_kv_head == 2 and configs["glm4-9b"].max_seq_len == 128 * 1024
assert mask_png.exists() and gqa_png.exists()
print("lesson 21 OK")
