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
# # Lesson 18 — LLaMA: the assembled model
#
# **You will learn**
# - how the four pieces of lessons 14-17 make one LLaMA block: pre-RMSNorm (均方根归一化), RoPE (旋转位置编码),
#   SwiGLU, and grouped-query attention (分组查询注意力, GQA), with no biases and an untied output head;
# - where LLaMA's parameters sit, key by key, and how they compare with GPT-2's at the same size;
# - the backward pass of the whole block, assembled from the pieces, and a whole-model gradient check;
# - how a tiny LLaMA and a tiny GPT-2 of about the same parameter count train on the same data, for the same steps.
#
# LLaMA (Touvron et al., 2023) introduced no new layer. It took a GPT decoder and swapped four parts for ones
# that had each proved themselves elsewhere: RMSNorm before each sublayer (Zhang & Sennrich 2019, as GPT-3 put
# LayerNorm before them), rotary positions (RoPE, Su et al. 2021, as in GPT-NeoX / GPT-J), the SwiGLU MLP (Shazeer
# 2020, as in PaLM), and it dropped every bias vector. LLaMA-2's large models (34B, 70B) and every LLaMA-3 added
# grouped-query attention (Ainslie et al. 2023); LLaMA-1 and LLaMA-2-7B/13B still have one kv head per query head.
# The tiny preset here uses GQA (4 query heads, 2 kv heads) so every piece is exercised.

# %%
import os

import numpy as np

from minigpt import Model, ModelConfig, cross_entropy
from minigpt.config import num_params, param_shapes
from minigpt.data import BatchSampler, load_corpus, split_tokens
from minigpt.gradcheck import check_model_gradients, move_off_init
from minigpt.optim import AdamW
from minigpt.tokenizers import CharTokenizer
from minigpt.viz import plot_curves

FAST = os.environ.get("MINIGPT_FAST") == "1"

# %% [markdown]
# ## The block
#
# With $x \in \mathbb{R}^{T \times C}$ the residual stream of one sequence, a LLaMA block is
#
# $$
# \begin{aligned}
# h &= \operatorname{RMSNorm}(x) = \gamma_1 \odot \frac{x}{r(x)}, \qquad r(x) = \sqrt{\tfrac{1}{C}\textstyle\sum_c x_c^2 + \epsilon} \\
# q &= h W_q, \quad k = h W_k, \quad v = h W_v
#      && q: H \text{ heads}, \; k, v: H_{kv} \text{ heads of } D = C/H \\
# \tilde q_m &= R_m\, q_m, \quad \tilde k_n = R_n\, k_n && \text{RoPE: pair } i \text{ at position } m \text{ turns by } m\,\theta^{-2i/D},\ \theta = 10^4 \\
# o^{(h)} &= \operatorname{softmax}\!\Big(\tfrac{\tilde q^{(h)} \tilde k^{(h // g)\top}}{\sqrt{D}} + M\Big)\, v^{(h // g)}
#      && g = H / H_{kv} \text{ query heads share a kv head; } M \text{ causal} \\
# x &\leftarrow x + [o^{(1)}, \dots, o^{(H)}]\, W_o \\
# h &= \operatorname{RMSNorm}(x) \text{ with its own gain } \gamma_2 \\
# x &\leftarrow x + \big(\operatorname{silu}(h W_{\text{gate}}) \odot h W_{\text{up}}\big) W_{\text{down}},
#      \qquad \operatorname{silu}(a) = a\,\sigma(a)
# \end{aligned}
# $$
#
# and after the last block $\text{logits} = \operatorname{RMSNorm}(x)\, W_{\text{head}}$, with $W_{\text{head}}$ its own
# $C \times V$ matrix (GPT-2 reuses the token embedding, $W_{\text{head}} = W_{\text{te}}^\top$).
# Against GPT-2 that is: RMSNorm for LayerNorm (no mean, no bias), rotations of q and k for a learned position table
# added to x, a gated MLP of three matrices with hidden size $F \approx \tfrac{8}{3}C$ for a plain one of two with
# $4C$ (both hold about $8C^2$ weights), fewer K/V heads than query heads, and no bias anywhere.
#
# ## Its backward pass
#
# Every piece was derived in its own lesson; the block only chains them. Writing $\bar{y} = \partial L/\partial y$:
#
# - **Residual.** $x' = x + F(\operatorname{RMSNorm}(x))$ gives $\bar x = \bar x' + J_{\text{norm}}^\top J_F^\top \bar x'$:
#   the gradient reaches every earlier block through the identity, untouched by any norm (the reason pre-norm
#   stacks train stably, lesson 11).
# - **Head** (untied): $\bar W_{\text{head}} = h^\top \bar z$, $\bar h = \bar z W_{\text{head}}^\top$. Tied, the same
#   $h^\top \bar z$ would be added (transposed) into the embedding's gradient.
# - **RMSNorm** (lesson 14), $\hat x = x / r$, $y = \gamma \odot \hat x$: $\;\bar \gamma = \sum_{t} \bar y \odot \hat x$,
#   $\;\bar x = \frac{1}{r}\big(\bar{\hat x} - \hat x \cdot \operatorname{mean}_c(\bar{\hat x} \odot \hat x)\big)$ with $\bar{\hat x} = \gamma \odot \bar y$.
# - **SwiGLU** (lesson 16), $a = hW_{\text{gate}}$, $b = hW_{\text{up}}$, $u = \operatorname{silu}(a) \odot b$, $m = uW_{\text{down}}$:
#   $\bar u = \bar m W_{\text{down}}^\top$, $\bar b = \bar u \odot \operatorname{silu}(a)$,
#   $\bar a = \bar u \odot b \odot \sigma(a)\big(1 + a(1 - \sigma(a))\big)$, $\;\bar h = \bar a W_{\text{gate}}^\top + \bar b W_{\text{up}}^\top$.
# - **RoPE** (lesson 15): $R_m$ is a rotation, so $\bar q = R_m^\top \bar{\tilde q} = R_{-m}\, \bar{\tilde q}$: rotate back.
# - **GQA** (lesson 17): kv head $j$ is read by the $g$ query heads $jg, \dots, jg + g - 1$, so its gradient is the sum of
#   what each of them sends back, $\bar k^{(j)} = \sum_{h=jg}^{jg+g-1} \bar k^{(j)}_{\text{via } h}$ (and the same for $v$).
# - **Linear without bias**: $\bar W = h^\top \bar y$, $\bar h = \bar y W^\top$, and nothing else.

# %% [markdown]
# ## GPT-2 and LLaMA, switch by switch
#
# One `ModelConfig` describes both; these are the fields in which the two presets differ.

# %%
gpt2_preset, llama_preset = ModelConfig.preset("gpt2"), ModelConfig.preset("llama")
SWITCHES = ("norm", "positions", "activation", "n_kv_head", "d_ff", "qkv_bias", "bias", "tie_embeddings",
            "scaled_residual_init")
print(f"{'field':>22} {'gpt2':>12} {'llama':>12}")
for field in SWITCHES:
    print(f"{field:>22} {str(getattr(gpt2_preset, field)):>12} {str(getattr(llama_preset, field)):>12}")

# %% [markdown]
# Both put the norm *before* each sublayer (`pre`) and both have a final norm. The tiny LLaMA has
# $d_{ff} = 192$: $\lfloor 8 \cdot 64 / 3 \rfloor = 170$ rounded up to a multiple of `multiple_of = 32` (lesson 16).
#
# ## Two models of the same size
#
# We train both on characters of the built-in corpus (CPython's documentation), so first the tokenizer: one id per
# character. Then a GPT-2 and a LLaMA with 2 layers, $C = 64$, 4 heads (LLaMA: 2 kv heads) and windows of T = 32.

# %%
text = load_corpus("builtin")
tokenizer = CharTokenizer.from_text(text)
tokens = np.array(tokenizer.encode(text), dtype=np.int64)          # (N,)
train_tokens, val_tokens = split_tokens(tokens, val_fraction=0.1)  # (0.9 N,), (0.1 N,)
V, T = tokenizer.vocab_size, 32
print(f"{len(text):,} characters, V = {V} distinct ones; {len(train_tokens):,} to train on, {len(val_tokens):,} held out")

SIZE = dict(n_layer=2, d_model=64, n_head=4, vocab_size=V, max_seq_len=T)
configs = {"GPT-2": ModelConfig.preset("gpt2", **SIZE), "LLaMA": ModelConfig.preset("llama", **SIZE)}
for name, cfg in configs.items():
    counts = num_params(cfg)
    print(f"{name:>6}: {counts['total']:,} parameters ({counts['non_embedding']:,} in the blocks, "
          f"{counts['embedding']:,} in embeddings / head)")

# %% [markdown]
# ## The parameter layout
#
# `param_shapes` lists every tensor the model allocates, in order, without allocating it. LLaMA's weights are
# (in, out), so $y = x W$: `wq` is $C \times HD$, `wk` and `wv` are $C \times H_{kv}D$ (half as wide with 2 kv heads
# for 4 query heads), and the three MLP matrices are $C \times F$, $C \times F$, $F \times C$.

# %%
llama_shapes = param_shapes(configs["LLaMA"])
gpt2_shapes = param_shapes(configs["GPT-2"])
print(f"{'LLaMA key':<22} {'shape':>10} {'count':>7}")
for key, shape in llama_shapes.items():
    print(f"{key:<22} {str(shape):>10} {int(np.prod(shape)):>7,}")


def layout(shapes):
    """The keys outside the blocks, and block 0's keys without their "blocks.0." prefix."""
    return {k.removeprefix("blocks.0.") for k in shapes if not k.startswith("blocks.") or k.startswith("blocks.0.")}


print("\nGPT-2 has, and LLaMA lacks:", sorted(layout(gpt2_shapes) - layout(llama_shapes)))
print("LLaMA has, and GPT-2 lacks:", sorted(layout(llama_shapes) - layout(gpt2_shapes)))


def block_count(shapes):
    return sum(int(np.prod(s)) for k, s in shapes.items() if k.startswith("blocks.0."))


print(f"\none block: GPT-2 {block_count(gpt2_shapes):,} = 12C^2 + 13C, "
      f"LLaMA {block_count(llama_shapes):,} = (2 + 2*Hkv/H)C^2 + 3CF + 2C")

# %% [markdown]
# A GPT-2 block is $4C^2$ of attention plus $8C^2$ of MLP, plus 13C of biases and LayerNorm parameters.
# A LLaMA block here has $3C^2$ of attention (K and V are half-width) and $3CF = 9C^2$ of MLP ($F = 3C$ after
# the rounding), and only the two RMSNorm gains. GPT-2 spends $TC$ on its position table and ties the head;
# LLaMA has no position parameters but a second $VC$ matrix for the head. The totals come out within 3%.

# %% [markdown]
# ## The LLaMA family in the textbook
#
# The chapter tells the family's history in three steps; its numbers, quoted:
# - LLaMA-1: *"Meta于2023年2月发布了LLaMA-1，包括7B、13B、30B和65B四个参数量版本"* (February 2023; four sizes);
# - LLaMA-2: *"2023年7月，Meta发布了LLaMA-2，包含7B、13B、34B和70B四个参数量版本，除了34B模型外，其他均已开源"*, and
#   *"LLaMA-2将预训练的语料扩充到了2T token，并将模型的上下文长度从2,048翻倍到了4,096"* (July 2023; all sizes but 34B
#   released; 2T training tokens; the context doubled from 2,048 to 4,096);
# - LLaMA-3: *"2024年4月，Meta发布了LLaMA-3，包括8B和70B两个参数量版本，同时透露400B的LLaMA-3还在训练中"*,
#   *"LLaMA-3支持8K长文本 ... 词表大小为128K"*, *"使用了超过15T token的预训练语料，是LLaMA-2的7倍多"* (April 2024; 8B and
#   70B, a 400B still training; 8K context; a 128K vocabulary; over 15T tokens, more than 7 times LLaMA-2's);
# - and in summary: *"模型支持从7亿到数百亿不等的参数量"*, *"LLaMA-2和LLaMA-3进一步通过引入分组查询注意力机制 ... 显著提升了
#   模型性能和应用范围"* (from 7亿 to tens of billions of parameters; LLaMA-2 and LLaMA-3 brought in grouped-query attention).
#
# Below, every size from the primary sources: the LLaMA-1 paper's Table 2 (Touvron et al., Feb 2023: layers, $C$,
# heads, training tokens), the LLaMA-2 paper's Table 1 (Touvron et al., Jul 2023: context, tokens, which sizes use
# GQA), the Llama 3 report's Table 3 (Llama Team, Jul 2024: layers, $C$, heads, kv heads, vocabulary), and the released
# `config.json` files for the MLP width $F$ and the exact vocabulary. Each row is a `ModelConfig`, so `num_params`
# counts it.

# %%
CHAPTER_LLAMA = {  # the chapter's numbers, as printed
    "LLaMA-1": dict(released="2023年2月", sizes=("7B", "13B", "30B", "65B"), context="2,048"),
    "LLaMA-2": dict(released="2023年7月", sizes=("7B", "13B", "34B", "70B"), tokens="2T", context="4,096"),
    "LLaMA-3": dict(released="2024年4月", sizes=("8B", "70B"), tokens="15T", context="8K", vocab="128K"),
}
RELEASED = {"LLaMA-1": "2023-02-24", "LLaMA-2": "2023-07-18", "LLaMA-3": "2024-04-18", "LLaMA-3.1": "2024-07-23"}
preset = ModelConfig.preset


def mha(name, n_layer, d_model, n_head):
    """A LLaMA size with one kv head per query head (multi-head attention)."""
    return preset(name, n_layer=n_layer, d_model=d_model, n_head=n_head, n_kv_head=n_head)


SOURCE_LLAMA = {  # (generation, size): (config, training tokens, the released MLP width F)
    ("LLaMA-1", "7B"): (preset("llama-7b"), 1.0e12, 11008),
    ("LLaMA-1", "13B"): (mha("llama-7b", 40, 5120, 40), 1.0e12, 13824),
    ("LLaMA-1", "33B"): (mha("llama-7b", 60, 6656, 52), 1.4e12, 17920),
    ("LLaMA-1", "65B"): (mha("llama-7b", 80, 8192, 64), 1.4e12, 22016),
    ("LLaMA-2", "7B"): (preset("llama2-7b"), 2.0e12, 11008),
    ("LLaMA-2", "13B"): (mha("llama2-7b", 40, 5120, 40), 2.0e12, 13824),
    ("LLaMA-2", "34B"): (None, 2.0e12, None),                     # trained with GQA, never released
    ("LLaMA-2", "70B"): (preset("llama2-70b"), 2.0e12, 28672),
    ("LLaMA-3", "8B"): (preset("llama3-8b"), 15e12, 14336),
    ("LLaMA-3", "70B"): (preset("llama3-8b", n_layer=80, d_model=8192, n_head=64), 15e12, 28672),
    ("LLaMA-3.1", "405B"): (preset("llama3-8b", n_layer=126, d_model=16384, n_head=128, d_ff=53248,
                                   max_seq_len=131072), 15.6e12, 53248),
}
PAPER_BILLIONS = {"7B": 6.7, "13B": 13.0, "33B": 32.5, "65B": 65.2}   # LLaMA-1 paper, Table 2 (truncated, not rounded)

print(f"{'model':>15} {'released':>11} {'L':>4} {'C':>6} {'F':>6} {'heads/kv':>9} {'context':>8} {'vocab':>7} "
      f"{'tokens':>7} {'parameters':>16}")
llama_counts = {}
for (generation, size), (c, tokens, _) in SOURCE_LLAMA.items():
    name = f"{generation}-{size}"
    if c is None:
        print(f"{name:>15} {RELEASED[generation]:>11} {'not released: GQA, 4096 context':>55} {tokens / 1e12:>6g}T")
        continue
    llama_counts[name] = num_params(c)["total"]
    print(f"{name:>15} {RELEASED[generation]:>11} {c.n_layer:>4} {c.d_model:>6} {c.d_ff:>6} "
          f"{f'{c.n_head}/{c.n_kv_head}':>9} {c.max_seq_len:>8} {c.vocab_size:>7} {tokens / 1e12:>6g}T "
          f"{llama_counts[name]:>16,}")
kv_shrink = {name: c.n_head // c.n_kv_head for (g, s), (c, _, _) in SOURCE_LLAMA.items() if c
             for name in [f"{g}-{s}"]}
print("KV cache shrink H / Hkv:", kv_shrink)

# %% [markdown]
# The three steps of the history are visible in the columns. LLaMA-1 fixed the recipe (the block of this lesson,
# 2,048 positions, a 32,000-token SentencePiece vocabulary) and trained longer than was usual then: 1T tokens for
# the two small sizes, 1.4T for the two large. LLaMA-2 kept every size's shape, doubled the context and trained on 2T
# tokens. LLaMA-3 changed the tokenizer (128,256 ids: a 128K BPE vocabulary plus 256 reserved special tokens), the
# RoPE base (500,000, lesson 15) and trained on over 15T tokens. Its 8B is the 7B's block with GQA and a wider MLP: of the 1.29B extra
# parameters, 0.79B are the larger embedding and head ($2 \times 96{,}256 \times 4096$), the wider MLP adds 1.31B
# ($32 \cdot 3 \cdot 4096 \cdot 3328$) and the shared kv heads save 0.81B ($32 \cdot 2 \cdot 4096 \cdot 3072$).
#
# **GQA's history.** Multi-query attention (one kv head for all query heads, Shazeer 2019) made decoding cheaper but
# cost quality; grouped-query attention (Ainslie et al., May 2023) sits between the two and can be made from a
# multi-head checkpoint by averaging each group's kv heads (lesson 17). LLaMA-2 (July 2023) used it only for its two
# large sizes, 34B and 70B, with 8 kv heads; every LLaMA-3 has 8 kv heads, so its KV cache is 4 (8B) to 16 (405B)
# times smaller than multi-head attention's would be.
#
# > **Textbook vs sources: the LLaMA family**
# >
# > | | the chapter | the primary sources |
# > |---|---|---|
# > | LLaMA-1 sizes | 7B, 13B, 30B, 65B | right as the weights were released (a folder named 30B); the paper calls it 33B (32.5B parameters) |
# > | LLaMA-1 parameter counts | not given | Table 2's 6.7B / 13.0B / 32.5B / 65.2B truncate the counts above (65,285,660,672 would round to 65.3B) |
# > | LLaMA-1 tokens | not given | 1.0T tokens for 7B and 13B, 1.4T for 33B and 65B (Table 2) |
# > | LLaMA-2 | 7B/13B/34B/70B, 34B unreleased, 2T tokens, 2,048 → 4,096 | right (Table 1) |
# > | LLaMA-3 | 8B and 70B, 8K, 128K vocabulary, over 15T tokens, more than 7× LLaMA-2 | right: 15T / 2T = 7.5; the vocabulary is 128,000 tokens plus 256 reserved (`vocab_size` 128256) |
# > | "400B still training" | April 2024 | released 2024-07-23 as Llama 3.1 405B: 126 layers, $C$ = 16384, 128 heads, 8 kv heads, 128K context, 15.6T tokens |
# > | *"从7亿到数百亿"* | 7亿 (0.7B) upward | the smallest LLaMA has **70亿** (7B; 6.7B counted) parameters: 7亿 is a slip for 70亿. "数百亿" (tens of billions) fits LLaMA-1/2/3 up to 70B; Llama 3.1 405B is 4,050亿 |
# > | GQA | LLaMA-2 and LLaMA-3 introduced it | LLaMA-2 only in 34B and 70B; LLaMA-2-7B and 13B keep one kv head per head; all LLaMA-3 sizes use it |
#
# ## How it works, in a few lines of NumPy
#
# Here is the whole forward pass written out, reading its weights from a `minigpt.Model`. GQA is done the obvious
# way, by repeating each kv head $g$ times (`np.repeat`); the library never materializes the copies, it reshapes the
# queries into groups instead (lesson 17). The two must agree to rounding.

# %%
def rmsnorm(x, w, eps):
    return x / np.sqrt((x * x).mean(axis=-1, keepdims=True) + eps) * w          # (B, T, C)


def rope_rotate_half(x, theta):
    """Rotate channel pairs (i, i + D/2) of x (B, H, T, D) at position m by the angle m * theta^(-2i/D)."""
    T, D = x.shape[-2:]
    angle = np.arange(T)[:, None] * theta ** (-np.arange(0, D, 2) / D)          # (T, D/2)
    cos, sin = np.cos(angle), np.sin(angle)                                      # (T, D/2) each
    a, b = x[..., :D // 2], x[..., D // 2:]                                      # (B, H, T, D/2) each
    return np.concatenate([a * cos - b * sin, b * cos + a * sin], axis=-1)       # (B, H, T, D)


def llama_forward(p, cfg, ids):
    """ids (B, T) -> logits (B, T, V), from the parameter dict p of a minigpt LLaMA."""
    B, T = ids.shape
    H, Hkv, D = cfg.n_head, cfg.n_kv_head, cfg.head_dim
    causal = np.tril(np.ones((T, T), dtype=bool))                               # (T, T)
    x = p["wte"][ids]                                                            # (B, T, C) no position vectors
    for i in range(cfg.n_layer):
        w = {k.split(".", 2)[2]: v for k, v in p.items() if k.startswith(f"blocks.{i}.")}
        h = rmsnorm(x, w["norm1.w"], cfg.norm_eps)                               # (B, T, C)
        q = (h @ w["attn.wq"]).reshape(B, T, H, D).transpose(0, 2, 1, 3)         # (B, H, T, D)
        k = (h @ w["attn.wk"]).reshape(B, T, Hkv, D).transpose(0, 2, 1, 3)       # (B, Hkv, T, D)
        v = (h @ w["attn.wv"]).reshape(B, T, Hkv, D).transpose(0, 2, 1, 3)       # (B, Hkv, T, D)
        q, k = rope_rotate_half(q, cfg.rope_theta), rope_rotate_half(k, cfg.rope_theta)
        k, v = np.repeat(k, H // Hkv, axis=1), np.repeat(v, H // Hkv, axis=1)    # (B, H, T, D) head h reads kv h // g
        s = np.where(causal, q @ k.transpose(0, 1, 3, 2) / np.sqrt(D), -np.inf)  # (B, H, T, T)
        a = np.exp(s - s.max(axis=-1, keepdims=True))                           # (B, H, T, T)
        a = a / a.sum(axis=-1, keepdims=True)                                    # (B, H, T, T) softmax
        o = (a @ v).transpose(0, 2, 1, 3).reshape(B, T, H * D)                   # (B, T, C)
        x = x + o @ w["attn.wo"]                                                 # (B, T, C) no bias
        h = rmsnorm(x, w["norm2.w"], cfg.norm_eps)                               # (B, T, C)
        gate = h @ w["mlp.w_gate"]                                               # (B, T, F)
        x = x + (gate / (1 + np.exp(-gate)) * (h @ w["mlp.w_up"])) @ w["mlp.w_down"]   # (B, T, C) SwiGLU
    return rmsnorm(x, p["norm_f.w"], cfg.norm_eps) @ p["lm_head"]                # (B, T, V) untied head


tiny = ModelConfig.preset("llama", n_layer=2, d_model=32, n_head=4, vocab_size=50, max_seq_len=8)
tiny_model = Model(tiny, seed=0, dtype="float64")
rng = np.random.default_rng(0)
move_off_init(tiny_model, rng)                                                  # off the init (unit gains)
ids = rng.integers(0, 50, (2, 8))                                                # (B, T)
targets = rng.integers(0, 50, (2, 8))                                            # (B, T)
logits_scratch = llama_forward(tiny_model.params, tiny, ids)                     # (B, T, V)
logits_library = tiny_model.forward(ids)                                         # (B, T, V)
parity = float(np.abs(logits_scratch - logits_library).max())
print("logits", logits_library.shape, "| from scratch vs minigpt.Model, max abs difference:", f"{parity:.1e}")

# %% [markdown]
# ## A whole-model gradient check
#
# `Model.backward` chains the layer backward passes listed above. We check every parameter tensor of the tiny
# LLaMA (float64, weights moved off their init so no path is trivial) against centered differences of the loss,
# on a few sampled entries each, half of them where the analytic gradient is nonzero. The step is $h = 10^{-5}$
# rather than lesson 00's $10^{-6}$: a whole model's loss carries more rounding than one layer's output.

# %%
grad_errors = check_model_gradients(tiny_model, ids, targets)
worst = max(grad_errors, key=grad_errors.get)
print(f"{len(grad_errors)} parameter tensors checked; worst rel_error {grad_errors[worst]:.1e} ({worst})")

# %% [markdown]
# ## Training both on the same budget
#
# The optimizer is `minigpt.optim.AdamW`, derived in lesson 09 (with a dozen-line version by hand, checked against
# it). For each parameter $\theta$ with gradient $g$, at step $t$:
#
# $$ m \leftarrow \beta_1 m + (1-\beta_1) g, \quad v \leftarrow \beta_2 v + (1-\beta_2) g^2, \quad
#    \theta \leftarrow \theta - \eta\Big(\frac{m / (1-\beta_1^t)}{\sqrt{v / (1-\beta_2^t)} + \epsilon} + \lambda\,\theta\Big) $$
#
# with the weight decay $\lambda\theta$ decoupled from the gradient and applied only to the weight matrices
# (`default_decay`: not to norm gains, biases or the embedding tables, lesson 09 says why; LLaMA's untied `lm_head`
# is a weight matrix and decays). $\beta = (0.9, 0.95)$ and $\lambda = 0.1$ are LLaMA's own settings. The learning
# rate is constant here: lesson 09's warmup, cosine decay and clipping are left out, so the two models differ in
# their architecture and in nothing else.
#
# Both models see exactly the same random windows (one `BatchSampler` each, same seed), with the same learning
# rate and the same number of steps. Every few steps we measure the loss on the same held-out windows.

# %%
STEPS, BATCH, LR = (15, 16, 3e-3) if FAST else (150, 16, 3e-3)
EVAL_EVERY = 5 if FAST else 25
val_batches = [BatchSampler(val_tokens, T, 64, seed=1).next_batch() for _ in range(2)]


def val_loss(model):
    return float(np.mean([cross_entropy(model.forward(x), y)[0] for x, y in val_batches]))


history = {}
for name, cfg in configs.items():
    model = Model(cfg, seed=0)                                                   # float32
    sampler = BatchSampler(train_tokens, T, BATCH, seed=0)
    opt = AdamW(model.params, lr=LR, betas=(0.9, 0.95), eps=1e-8, weight_decay=0.1)    # decay: default_decay
    train, val = [], ([0], [val_loss(model)])
    for step in range(1, STEPS + 1):
        x, y = sampler.next_batch()                                              # (B, T) each
        loss, dlogits = cross_entropy(model.forward(x), y)                       # dlogits (B, T, V)
        model.zero_grad()
        model.backward(dlogits)
        opt.step(model.grads)                                                    # AdamW, in place
        train.append(loss)
        if step % EVAL_EVERY == 0 or step == STEPS:
            val[0].append(step)
            val[1].append(val_loss(model))
    history[name] = (train, val)
    print(f"{name:>6}: train loss {np.mean(train[:5]):.3f} (first 5 steps) -> {np.mean(train[-5:]):.3f} "
          f"(last 5); held-out {val[1][0]:.3f} -> {val[1][-1]:.3f}   (log V = {np.log(V):.3f})")

curves = {}
for name, (train, (steps, vals)) in history.items():
    curves[f"{name} train"] = (np.arange(1, STEPS + 1), np.array(train))
    curves[f"{name} held-out"] = (np.array(steps), np.array(vals))
curve_png = plot_curves(curves, "18_llama_vs_gpt2", xlabel="step", ylabel="cross-entropy (nats per character)",
                        title=f"GPT-2 vs LLaMA, {SIZE['n_layer']} layers, C = {SIZE['d_model']}, same data and steps")
final = {name: vals[-1] for name, (_, (_, vals)) in history.items()}
print("saved", curve_png)
print(f"held-out loss after {STEPS} steps: " + ", ".join(f"{k} {v:.3f}" for k, v in final.items()))

# %% [markdown]
# Both start near $\log V \approx 4.6$ (a uniform guess over the characters) and fall fast: the first drop, to
# about 3.2 nats, is the models learning how often each character occurs (the entropy of the character frequencies
# is 3.25 nats); below that they use the context. The held-out windows come from the last 10% of the corpus, other
# topics, so their loss is not the training loss.
#
# In the default run (150 steps) LLaMA ends about 0.16 nats lower (2.19 against 2.35); the 15 steps of the FAST run
# stop both at the character-frequency stage, about 3.27, where the order means nothing. Read the gap with care: one
# seed, 150 steps, 100k parameters, and a learning rate shared by both rather than tuned for each; a gap this small
# can move with the seed or the learning rate (exercise 1). The case for each piece was made in its own paper, at
# far larger scale: RMSNorm matches LayerNorm at a lower cost, SwiGLU gives better quality for the same compute
# (Shazeer 2020), RoPE makes attention depend on relative positions, and GQA shrinks the KV cache $H/H_{kv}$ times for
# a small loss in quality (Ainslie et al. 2023).

# %% [markdown]
# ## Summary
# - LLaMA = a pre-norm GPT with RMSNorm, RoPE on q and k (no position table), a SwiGLU MLP with $F \approx 8C/3$,
#   no biases, an untied head, and (LLaMA-2-70B, LLaMA-3) grouped-query attention.
# - Its backward pass is the chain of the pieces' backward passes: residual identity, RMSNorm, rotate back,
#   sum over each kv group, SwiGLU's product rule; a float64 finite-difference check confirms every parameter.
# - At the same parameter count the block spends its $12C^2$ differently: less on attention (shared K/V), more on the MLP.
# - The family, from the sources: LLaMA-1 (2023-02, 7B-65B, 2K context, 1-1.4T tokens), LLaMA-2 (2023-07, 4K, 2T,
#   GQA only at 34B / 70B), LLaMA-3 (2024-04, 8K, a 128K vocabulary, over 15T tokens, GQA with 8 kv heads everywhere).
# - `minigpt.optim.AdamW` (lesson 09) trains both; same data, same steps, curves side by side.
#
# ## Exercises
# 1. Run the comparison with three seeds and two learning rates (1e-3, 1e-2). Is the ordering of the two models stable?
# 2. Give the tiny LLaMA `n_kv_head=4` (plain multi-head attention) and `d_ff=171` so its parameter count matches
#    (to 64 per block: check it with `num_params`).
#    How does its loss change? How much bigger is its KV cache?
# 3. Change `llama_forward` to pair channels $(2i, 2i+1)$ (Meta's original code) instead of $(i, i + D/2)$. The parity
#    breaks; show that permuting the columns of `wq` and `wk` (the same permutation in every head) restores it.
# 4. Turn on `tie_embeddings=True` for LLaMA. How many parameters does that save here, and at LLaMA-2-7B's size?

# %% [markdown]
# ## Check

# %%
assert logits_library.shape == (2, 8, 50) and logits_library.dtype == np.float64
assert parity < 1e-12, parity                                   # same maths, float64 rounding only
assert max(grad_errors.values()) < 1e-6, grad_errors            # every parameter of the tiny LLaMA
assert set(grad_errors) == set(tiny_model.params) and "lm_head" in grad_errors
assert not any(k.endswith((".bq", ".bk", ".bv", ".bo", ".b_up", ".b_down", ".b")) for k in llama_shapes)  # no biases
assert "wpe" not in llama_shapes and llama_shapes["blocks.0.attn.wk"] == (64, 32)   # RoPE; 2 kv heads of D = 16
assert configs["LLaMA"].d_ff == 192                             # ceil(170 / 32) * 32
n_gpt2, n_llama = (num_params(cfg)["total"] for cfg in configs.values())
assert abs(n_llama - n_gpt2) / n_gpt2 < 0.05, (n_gpt2, n_llama)  # the same budget, roughly
assert Model(configs["LLaMA"]).num_params() == n_llama
for name, (train, (steps, vals)) in history.items():
    assert abs(vals[0] - np.log(V)) < 0.2, (name, vals[0])      # untrained: close to a uniform guess
    assert vals[-1] < np.log(V) - 1.0, (name, vals[-1])         # both learned well below log V
    assert np.mean(train[-5:]) < np.log(V) - 1.0, (name, train[-5:])
assert curve_png.exists()
# the LLaMA family: the chapter's numbers against the sources and the presets
rows = {f"{g}-{s}": (c, tokens, F) for (g, s), (c, tokens, F) in SOURCE_LLAMA.items()}
assert set(CHAPTER_LLAMA["LLaMA-1"]["sizes"]) - {s for g, s in SOURCE_LLAMA if g == "LLaMA-1"} == {"30B"}  # paper: 33B
for generation in ("LLaMA-2", "LLaMA-3"):
    assert CHAPTER_LLAMA[generation]["sizes"] == tuple(s for g, s in SOURCE_LLAMA if g == generation)
for generation, chapter in CHAPTER_LLAMA.items():
    year, month = RELEASED[generation].split("-")[:2]
    assert chapter["released"] == f"{year}年{int(month)}月", (generation, chapter["released"])
    sizes = [c for (g, s), (c, _, _) in SOURCE_LLAMA.items() if g == generation and c]
    context = chapter["context"]
    assert all(c.max_seq_len == (int(context[:-1]) * 1024 if context.endswith("K") else int(context.replace(",", "")))
               for c in sizes), generation
for name, (c, tokens, F) in rows.items():
    if c is not None:
        assert c.d_ff == F, (name, c.d_ff, F)                                 # the released intermediate_size
        gqa = name not in ("LLaMA-2-7B", "LLaMA-2-13B") and not name.startswith("LLaMA-1")
        assert (c.n_kv_head == 8) if gqa else (c.n_kv_head == c.n_head), name
for size, billions in PAPER_BILLIONS.items():
    assert llama_counts[f"LLaMA-1-{size}"] // 10**8 == round(billions * 10), (size, llama_counts)  # truncated
for name, count in llama_counts.items():                                 # the names round the counts
    assert abs(count / 1e9 / float(name.split("-")[-1][:-1]) - 1) < 0.05, (name, count)
assert float(CHAPTER_LLAMA["LLaMA-2"]["tokens"][:-1]) * 1e12 == rows["LLaMA-2-7B"][1]
assert rows["LLaMA-3-8B"][1] >= float(CHAPTER_LLAMA["LLaMA-3"]["tokens"][:-1]) * 1e12
assert 7 < rows["LLaMA-3-8B"][1] / rows["LLaMA-2-7B"][1] < 8                    # "是LLaMA-2的7倍多"
assert rows["LLaMA-3-8B"][0].vocab_size == 128_000 + 256 and CHAPTER_LLAMA["LLaMA-3"]["vocab"] == "128K"
assert min(llama_counts.values()) > 9 * 7e8                                   # 70亿, not the chapter's 7亿
extra = llama_counts["LLaMA-3-8B"] - llama_counts["LLaMA-2-7B"]
assert extra == 2 * (128256 - 32000) * 4096 + 32 * 3 * 4096 * (14336 - 11008) - 32 * 2 * 4096 * (4096 - 1024)
assert kv_shrink["LLaMA-3-8B"] == 4 and kv_shrink["LLaMA-3.1-405B"] == 16 and kv_shrink["LLaMA-2-70B"] == 8
print("lesson 18 OK")
