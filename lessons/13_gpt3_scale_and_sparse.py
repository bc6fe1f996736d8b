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
# # Lesson 13 — GPT-3: scale and sparse attention
#
# **You will learn**
# - to count a GPT's parameters from its shapes, $N \approx 12 L C^2$, and check the count against the published
#   sizes of GPT-1, GPT-2 and GPT-3;
# - to read the textbook's GPT size table column by column: its "Hidden_size" is the MLP width $4C$ and its
#   "注意力维度" (attention dimension) is $d_\text{model}$, and why those names confuse;
# - what GPT-1, GPT-2 and GPT-3 were pretrained on (预训练语料), and which printed sizes the papers actually give;
# - the training compute of a dense Transformer, $6N$ FLOPs per token (forward 2, backward 4), plus attention, and
#   GPT-3's budget $6ND \approx 3.14 \times 10^{23}$ FLOPs, in A100-days;
# - zero-shot, few-shot and in-context learning (上下文学习), and the three training stages from GPT-3 to ChatGPT;
# - GPT-3's alternating dense and locally banded attention (稀疏注意力, sparse attention): the masks, what a banded
#   layer can and cannot see, and why alternating keeps the whole context in reach.
#
# GPT-3 (Brown et al. 2020, "Language Models are Few-Shot Learners") is GPT-2's architecture scaled up more than 100x,
# to 175B parameters, with one change: *"we use alternating dense and locally banded sparse attention patterns in the
# layers of the transformer, similar to the Sparse Transformer"*.

# %%
import os
import re

import numpy as np

from minigpt import Model, ModelConfig, cross_entropy
from minigpt.config import flops_per_token, num_params
from minigpt.data import load_corpus
from minigpt.gradcheck import check_model_gradients, move_off_init
from minigpt.layers.embedding import embedding_forward
from minigpt.layers.norms import layernorm_forward
from minigpt.layers.positions import learned_position_forward
from minigpt.masks import banded_mask, causal_mask
from minigpt.viz import plot_mask

FAST = os.environ.get("MINIGPT_FAST") == "1"

# %% [markdown]
# ## Counting parameters
#
# A GPT-2/3 block (lesson 08's count): attention $4C^2 + 4C$ (Q, K, V, O with biases), MLP $8C^2 + 5C$ ($C \times 4C$
# and $4C \times C$ with biases), two LayerNorms $4C$: $12C^2 + 13C$ per block. Add the token table $VC$ (tied with
# the head, so counted once), the position table $T_{\max} C$ and the final LayerNorm $2C$:
#
# $$ N = L\,(12C^2 + 13C) + (V + T_{\max})\,C + 2C \;\approx\; 12\,L\,C^2 \quad (C \gg 1). $$
#
# GPT-3 175B: $12 \times 96 \times 12288^2 = 173.9$B in the blocks, $0.64$B in the two tables.
#
# ## Counting FLOPs
#
# A matmul $y = xW$ with $W$ of shape $(C_{\text{in}}, C_{\text{out}})$ does $C_{\text{in}} C_{\text{out}}$
# multiply-adds per token, **2 FLOPs per weight**. The backward does two matmuls of the same size (lesson 01):
# $dx = dy\,W^\top$ and $dW = x^\top dy$, **4 FLOPs per weight**. Training therefore costs about
#
# $$ 6N \text{ FLOPs per token}, \qquad \text{and } 6ND \text{ for } D \text{ training tokens.} $$
#
# Attention adds matmuls that have no weights: $QK^\top$ and $\text{probs}\cdot V$, each $T \cdot C$ multiply-adds per
# token and layer (all heads together), so $2 \cdot 2TC$ forward and $12\,L\,T\,C$ for training (the full
# $T \times T$ score matrix; a causal kernel can skip half). It matters when $12LTC$ is comparable with
# $6 \cdot 12LC^2$, that is when $T$ approaches $6C$: for GPT-3, $T = 2048$ against $6C = 73{,}728$, so attention is a
# few percent. `minigpt.config.flops_per_token` counts $6(N_{\text{non-embedding}} + VC) + 12LTC$: a lookup in a
# position table is not a matmul, but the tied head is.
#
# First our formula, in a few lines, against `num_params` and `flops_per_token` (which add up the shapes the model
# allocates), for every GPT preset.

# %%
def gpt_params(L, C, V, T_max):
    """N for a GPT-2/3 (tied head, learned positions, final LayerNorm)."""
    return L * (12 * C * C + 13 * C) + (V + T_max) * C + 2 * C


def gpt_train_flops(L, C, V, T, non_embedding):
    """Training FLOPs per token: 6 per weight of every matmul (blocks and head), and attention's 12 L T C."""
    return 6 * (non_embedding + V * C) + 12 * L * T * C


PUBLISHED = {  # parameters as published: GPT-1, the 117M the GPT-2 paper gives its smallest model, "equivalent to the
    # original GPT" (the GPT-1 paper prints no total); GPT-2 as OpenAI's released models (their corrected counts: the
    # paper had printed 117M/345M/762M/1542M); GPT-3 paper, Table 2.1
    "openai-gpt": 117e6, "gpt2-small": 124e6, "gpt2-medium": 355e6, "gpt2-large": 774e6, "gpt2-xl": 1558e6,
    "gpt3-small": 125e6, "gpt3-medium": 350e6, "gpt3-large": 760e6, "gpt3-xl": 1.3e9, "gpt3-2.7b": 2.7e9,
    "gpt3-6.7b": 6.7e9, "gpt3-13b": 13e9, "gpt3-175b": 175e9,
}
print(f"{'preset':12} {'L':>3} {'C':>6} {'H':>3} {'D':>4} {'N (presets)':>16} {'published':>10} {'off':>6} "
      f"{'train FLOPs/token':>18} {'attn share':>10}")
count_rows = {}
for name, published in PUBLISHED.items():
    c = ModelConfig.preset(name)
    n = num_params(c)
    ours = gpt_params(c.n_layer, c.d_model, c.vocab_size, c.max_seq_len) - (2 * c.d_model if not c.final_norm else 0)
    flops = flops_per_token(c)
    attention = 12 * c.n_layer * c.max_seq_len * c.d_model
    count_rows[name] = dict(n=n["total"], formula=ours, flops=flops,
                            flops_formula=gpt_train_flops(c.n_layer, c.d_model, c.vocab_size, c.max_seq_len,
                                                          n["non_embedding"]))
    print(f"{name:12} {c.n_layer:>3} {c.d_model:>6} {c.n_head:>3} {c.head_dim:>4} {n['total']:>16,} "
          f"{published / 1e6:>9,.0f}M {n['total'] / published - 1:>+6.1%} {flops:>18.3e} {attention / flops:>10.1%}")

# %% [markdown]
# Every published size is reproduced to within its rounding (GPT-3 Medium's "350M" is 356M; Table 2.1 rounds). GPT-1
# has no final LayerNorm, so its count has no $2C$ term. Two rows of Table 2.1 do not add up as printed: GPT-3 XL with 24
# heads of 128 ($3072 \ne 2048$) and GPT-3 13B with $d_\text{model} = 5140$ (not $40 \times 128$); the presets use 16 heads
# and 5120 (the head count does not change the parameter count at all; 5120 against 5140 changes it by 0.8%).
# Attention costs $T/6C$ times the blocks' matmuls: $0.44$ for GPT-3 Small ($T = 2048$, $C = 768$), a 23% share, but
# $0.028$ for GPT-3 175B, a 2.7% share. At scale the cost is $6N$.
#
# ## The textbook's size table, column by column
#
# The chapter sums up GPT-1 to GPT-3 in one table ("下表总结了从 GPT-1 到 GPT-3 的模型结构、预训练语料大小的变化"), printed
# like this:
#
# |模型|Decoder Layer|Hidden_size|注意力头数|注意力维度|总参数量|预训练语料|
# |---|---|---|---|---|---|---|
# |GPT-1|12|3072|12|768|0.12B|5GB|
# |GPT-2|48|6400|25|1600|1.5B|40GB|
# |GPT-3|96|49152|96|12288|175B|570GB|
#
# (注意力头数: attention heads; 注意力维度: attention dimension; 总参数量: total parameters; 预训练语料: pretraining
# corpus.) Two column names need care. **"Hidden_size" holds $4C$**, the width of the MLP's hidden layer: GPT-1's paper
# describes *"768 dimensional states and 12 attention heads"* and, for the MLP, *"3072 dimensional inner states"*.
# **"注意力维度" holds $d_\text{model} = C$**, all heads together, $H \cdot D$. The names collide with Hugging Face
# transformers, where `hidden_size` means $d_\text{model}$ (BERT, LLaMA; GPT-2's config keeps its own name `n_embd` and
# maps `hidden_size` onto it) and the MLP width is `intermediate_size` (GPT-2: `n_inner`, None meaning $4C$; ChatGLM:
# `ffn_hidden_size`). "Hidden" names the MLP's hidden layer in one vocabulary and the model's hidden states in the other.
# The chapter's own prose uses the second meaning: GPT-1 has *"768 的隐藏层维度"*, GPT-2 *"隐藏层维度达到了 1600"*.
#
# Below, the table is quoted as a dict, cell for cell, and each column is asked of the presets: nothing from the table
# is typed a second time.

# %%
TEXTBOOK_TABLE = {  # the chapter's GPT size table, every cell as printed (counts and sizes as strings, as printed)
    "GPT-1": {"Decoder Layer": 12, "Hidden_size": 3072, "注意力头数": 12, "注意力维度": 768,
              "总参数量": "0.12B", "预训练语料": "5GB"},
    "GPT-2": {"Decoder Layer": 48, "Hidden_size": 6400, "注意力头数": 25, "注意力维度": 1600,
              "总参数量": "1.5B", "预训练语料": "40GB"},
    "GPT-3": {"Decoder Layer": 96, "Hidden_size": 49152, "注意力头数": 96, "注意力维度": 12288,
              "总参数量": "175B", "预训练语料": "570GB"},
}
PRESET_OF = {"GPT-1": "openai-gpt", "GPT-2": "gpt2-xl", "GPT-3": "gpt3-175b"}
COLUMN_IS = {  # what each size column holds, as a question to a preset
    "Decoder Layer": ("L, the number of blocks", lambda c: c.n_layer),
    "Hidden_size": ("F = 4C, the MLP's hidden width", lambda c: c.d_ff),
    "注意力头数": ("H, the attention heads", lambda c: c.n_head),
    "注意力维度": ("H * D = C, d_model", lambda c: c.n_head * c.head_dim),
}


def pad(text, width):
    """text left-aligned in `width` terminal columns (a Chinese character takes two)."""
    return text + " " * (width - sum(2 if ord(ch) > 0x2E80 else 1 for ch in text))


size_checks = {}
print(f"{'model':6} {pad('column', 14)} {'printed':>8} {'preset':>8}  what it is")
for model, row in TEXTBOOK_TABLE.items():
    c = ModelConfig.preset(PRESET_OF[model])
    for column, (meaning, ask) in COLUMN_IS.items():
        size_checks[model, column] = (row[column], ask(c))
        print(f"{model:6} {pad(column, 14)} {row[column]:>8} {ask(c):>8}  {meaning}")
    print(f"{'':6} {'':14} {'':>8} {4 * c.d_model:>8}  4C, for comparison (C = d_model = {c.d_model})")

# %% [markdown]
# The four size columns agree with the architecture once they are read this way, and the layers and heads columns were
# right all along (GPT-2 XL: 48 layers, 25 heads of 64; the GPT-2 paper itself lists only layers and $d_\text{model}$, the
# 25 heads come from the released model). Now the two columns that are not sizes. A parameter count is printed
# rounded: "0.12B" to two decimals, "1.5B" to one, "175B" to none. Round each source's count the same way and compare.

# %%
def printed_number(cell, unit):
    """'0.12B' -> (0.12e9, 2 decimals); '5GB' -> (5e9, 0)."""
    digits = cell[:-len(unit)]
    decimals = len(digits.split(".")[1]) if "." in digits else 0
    return float(digits) * 1e9, decimals


PAPER_PARAMS = {  # the counts the papers print: GPT-1's paper prints none, and the GPT-2 paper's Table 2 gives 117M for
    # its smallest model, "equivalent to the original GPT"; GPT-2 XL is "1542M" there; GPT-3's Table 2.1 says 175.0B
    "GPT-1": 117e6, "GPT-2": 1542e6, "GPT-3": 175.0e9,
}
param_checks = {}
print(f"{'model':6} {'printed':>8} {'paper, rounded so':>18} {'preset count':>16} {'preset, rounded so':>19}")
for model, row in TEXTBOOK_TABLE.items():
    value, decimals = printed_number(row["总参数量"], "B")
    ours = num_params(ModelConfig.preset(PRESET_OF[model]))["total"]
    param_checks[model] = (round(value / 1e9, decimals), round(PAPER_PARAMS[model] / 1e9, decimals),
                           round(ours / 1e9, decimals), ours / PAPER_PARAMS[model] - 1)
    paper, preset = (f"{x:.{decimals}f}B" for x in param_checks[model][1:3])
    print(f"{model:6} {row['总参数量']:>8} {paper:>18} {ours:>16,} {preset:>19}")

# %% [markdown]
# Every printed count is the paper's count, rounded. GPT-2's is the only one the weights would not give: the GPT-2
# paper's four sizes (117M, 345M, 762M, 1542M) were each a little low, and the released models have 124M, 355M, 774M
# and 1,557,611,200 parameters, "1.6B" at the table's precision. The table follows the paper.
#
# **The corpus column.** The GPT-2 paper gives WebText's size itself: *"slightly over 8 million documents for a total of
# 40 GB of text"*. The GPT-3 paper gives 570 GB for one source only: *"The CommonCrawl data was downloaded from 41
# shards of monthly CommonCrawl covering 2016 to 2019, constituting 45TB of compressed plaintext before filtering and
# 570GB after filtering"*. GPT-1's paper gives no size in bytes at all: BooksCorpus *"contains over 7,000 unique
# unpublished books"*. Its builders (Zhu et al. 2015) count 11,038 books and about 985 million words, and BERT's paper
# uses 800M words of it. So "5GB" is an estimate, and we can redo it: words times bytes per word of English text, from
# 5 (short words, prose) up to what our built-in corpus measures (technical documentation, longer words).

# %%
corpus_text = load_corpus("builtin")
bytes_per_word = len(corpus_text.encode("utf-8")) / len(corpus_text.split())
books_low, books_high = 800e6 * 5, 985e6 * bytes_per_word                 # bytes: BERT's word count, Zhu et al.'s
SOURCE_CORPUS = {"GPT-2": 40e9, "GPT-3": 570e9}                          # bytes, as the papers print them
corpus_checks = {model: printed_number(row["预训练语料"], "GB")[0] for model, row in TEXTBOOK_TABLE.items()}
print(f"built-in corpus: {bytes_per_word:.1f} bytes per word -> BooksCorpus is {books_low / 1e9:.1f} to "
      f"{books_high / 1e9:.1f} GB; the table says {corpus_checks['GPT-1'] / 1e9:.0f} GB")
for model, size in SOURCE_CORPUS.items():
    print(f"{model}: table {corpus_checks[model] / 1e9:.0f} GB, paper {size / 1e9:.0f} GB")

# %% [markdown]
# > **Textbook vs sources: the GPT size table**
# >
# > | cell | the chapter | the primary sources |
# > |---|---|---|
# > | Hidden_size 3072 / 6400 / 49152 | under a name that reads as $d_\text{model}$ | the MLP width $4C$ (GPT-1: "3072 dimensional inner states"; transformers: `intermediate_size`, GPT-2's `n_inner`) |
# > | 注意力维度 768 / 1600 / 12288 | "attention dimension" | $d_\text{model} = H \cdot D$, transformers' `hidden_size`; the chapter's prose calls it 隐藏层维度 |
# > | 总参数量 GPT-1 0.12B | GPT-1's size | the GPT-1 paper prints no total; 117M is the GPT-2 paper's; the weights have 116,534,784 |
# > | 总参数量 GPT-2 1.5B | GPT-2's size | the GPT-2 paper's 1542M; the released GPT-2 XL has 1,557,611,200 (1.56B) |
# > | 预训练语料 GPT-1 5GB | BooksCorpus, "大小为 5GB" | not in the paper ("over 7,000 unique unpublished books"); an estimate from 0.8-1B words |
# > | 预训练语料 GPT-3 570GB | all the data, "共采样了 45T、清洗后 570GB" | Common Crawl alone: 45 TB compressed, 570 GB after filtering; the mix adds WebText2, two book corpora and Wikipedia |
# > | layers, heads | 12/48/96 layers, 12/25/96 heads | right (GPT-2's 25 heads: the released config) |
#
# GPT-3's whole training mix, the paper's Table 2.2 (tokens of each source; the share of the training batches drawn from
# it, higher-quality sources sampled more often than their size; all models trained on 300B tokens):
#
# | source | tokens | weight in the mix |
# |---|---|---|
# | Common Crawl (filtered) | 410B | 60% |
# | WebText2 | 19B | 22% |
# | Books1 | 12B | 8% |
# | Books2 | 55B | 8% |
# | Wikipedia | 3B | 3% |
#
# (The weights are rounded and add up to 101%. The paper equates the 570 GB of Common Crawl with *"roughly ... 400
# billion byte-pair-encoded tokens"*, about 1.4 bytes a token, while GPT-2's BPE averages roughly 4 characters of English
# per token; the paper does not reconcile the two, so quote the GB and the tokens as printed and compute with the tokens.)
#
# ## GPT-3's training compute
#
# The paper trained every GPT-3 model on $D = 300$B tokens. With the count from our preset:

# %%
GPT3_MIX = {"Common Crawl (filtered)": (410e9, 0.60), "WebText2": (19e9, 0.22), "Books1": (12e9, 0.08),
            "Books2": (55e9, 0.08), "Wikipedia": (3e9, 0.03)}                # Table 2.2: (tokens, weight)
N = num_params(ModelConfig.preset("gpt3-175b"))["total"]
D = 300e9
print(f"Common Crawl: {GPT3_MIX['Common Crawl (filtered)'][1] * D / 1e9:.0f}B of the {D / 1e9:.0f}B training tokens, "
      f"{GPT3_MIX['Common Crawl (filtered)'][1] * D / GPT3_MIX['Common Crawl (filtered)'][0]:.2f} epochs of it "
      f"(Table 2.2: 0.44)")
C_6ND = 6 * N * D
with_attention = flops_per_token(ModelConfig.preset("gpt3-175b")) * D
PF_DAY = 1e15 * 86400                                                    # one petaFLOP/s for a day
A100_PEAK = 312e12                                                       # bf16 dense tensor-core peak, FLOP/s
UTILISATION = 0.5                                                        # ASSUMED: half of peak sustained
a100_days = C_6ND / (A100_PEAK * UTILISATION) / 86400
print(f"N = {N:.4g}, D = {D:.0e}:  6ND = {C_6ND:.3e} FLOPs = {C_6ND / PF_DAY:,.0f} petaFLOP/s-days")
print(f"with attention (12 L T C per token, T = 2048): {with_attention:.3e} FLOPs (+{with_attention / C_6ND - 1:.1%})")
print(f"one A100 at {A100_PEAK / 1e12:.0f} TFLOP/s x {UTILISATION:.0%} utilisation (assumed): "
      f"{a100_days:,.0f} A100-days = {a100_days / 365:.0f} A100-years")
for gpus in (1024, 4096):
    print(f"  on {gpus} A100s: {a100_days / gpus:.1f} days")
print(f"at 100% of peak (a bound no real run reaches): {C_6ND / A100_PEAK / 86400:,.0f} A100-days")
megatron_days = 8 * N * D / (1024 * 140e12) / 86400                      # 8 FLOPs/weight/token (recomputation), 140 TFLOP/s
print(f"8ND on 1024 A100s at 140 TFLOP/s each: {megatron_days:.1f} days")

# %% [markdown]
# $6ND = 3.14 \times 10^{23}$ FLOPs, the paper's own figure (Appendix D: $3.64 \times 10^3$ petaflop/s-days,
# from the same count, 6 FLOPs per parameter per token, without attention). At an assumed 50% of an A100's bf16 peak
# that is about 23,000 A100-days: 64 years on one GPU, three weeks on a thousand. (Large training runs typically report
# 30-50% of peak; the estimate scales as 1/utilisation.)
#
# The chapter: *"根据推算，GPT-3 需要在 1024张 A100（80GB 显存）的分布式训练集群上训练 1个月"* (by estimate, GPT-3 needs a
# month on a cluster of 1024 A100s). Our 23 days and Narayanan et al.'s (2021, Megatron-LM) 34 days (8 FLOPs per weight
# per token because they recompute activations in the backward, at a measured 140 TFLOP/s per GPU) agree with it. It is
# an estimate for hardware GPT-3 never ran on: *"All models were trained on V100 GPU's on part of a high-bandwidth
# cluster provided by Microsoft"*.
#
# ## Zero-shot, few-shot and in-context learning (上下文学习)
#
# GPT-2 aimed at **zero-shot** (零样本学习): in the chapter's words, *"不对模型进行微调，直接要求模型解决任务"* (no fine-tuning:
# ask the model to solve the task directly), by describing the task in the prompt, *"不使用任何训练样本"* (no training
# examples at all). With GPT-3 the chapter introduces **few-shot** (少样本学习): *"few-shot 一般会在 prompt（也就是模型的输入）中
# 增加 3~5个示例"* (few-shot usually adds 3 to 5 examples to the prompt), and *"few-shot 也被称为上下文学习（In-context
# Learning）"*. Its two prompts, quoted:

# %%
ZERO_SHOT = "请你判断‘这真是一个绝佳的机会’的情感是正向还是负向，如果是正向，输出1；否则输出0"
FEW_SHOT = ("请你判断‘这真是一个绝佳的机会’的情感是正向还是负向，如果是正向，输出1；否则输出0。"
            "你可以参考以下示例来判断：‘你的表现非常好’——1；‘太糟糕了’——0；‘真是一个好主意’——1。")
demonstrations = re.findall(r"‘([^’]+)’——([01])", FEW_SHOT)                # (text, label) pairs
print("few-shot = zero-shot prompt + demonstrations:", FEW_SHOT.startswith(ZERO_SHOT))
print(f"{len(demonstrations)} demonstrations:", demonstrations)
print("GPT-3's context window (n_ctx):", ModelConfig.preset("gpt3-175b").max_seq_len, "tokens")

# %% [markdown]
# The only difference between the two prompts is text; the weights are the same. That is the whole idea: the "learning"
# happens in the forward pass, conditioned on the demonstrations, with no gradient step. Lesson 12 compares zero-shot
# and few-shot prompts on a tiny trained model.
#
# > **Textbook vs sources: few-shot**
# >
# > | | the chapter | the GPT-3 paper (Brown et al. 2020) |
# > |---|---|---|
# > | few-shot | "3~5个示例" | K demonstrations, *"We typically set K in the range of 10 to 100 as this is how many examples can fit in the model's context window"* ($n_\text{ctx} = 2048$); one-shot (K = 1) is a setting of its own |
# > | in-context learning | another name for few-shot | the paper glosses few-shot the same way (*"few-shot learning", or in-context learning where we allow as many demonstrations as will fit*), and also measures the "in-context learning abilities" of zero- and one-shot |
# > | who started it | GPT-3 *"提出了 few-shot 的重要思想"* | GPT-3 says its *"use of in-context learning is also similar to"* GPT-2's; it studied the settings systematically, across K and model size |
#
# ## From GPT-3 to ChatGPT: three stages
#
# The chapter closes the GPT story with *"通过引入预训练-指令微调-人类反馈强化学习的三阶段训练，OpenAI 发布了跨时代的
# ChatGPT"*: three training stages, **预训练** (pretraining, this lesson's CLM at scale), **指令微调** (instruction tuning,
# supervised fine-tuning on demonstrations, SFT) and **人类反馈强化学习** (reinforcement learning from human feedback, RLHF).
# The recipe is InstructGPT's (Ouyang et al. 2022), whose paper counts the steps after pretraining: (1) supervised
# fine-tuning on demonstrations, (2) a reward model trained on human comparisons, (3) PPO against that reward model; the
# chapter's third stage is steps 2 and 3 together. OpenAI's ChatGPT announcement says it was trained *"using the same
# methods as InstructGPT, but with slight differences in the data collection setup"*. This course builds the second stage in
# lesson 28 (SFT on instruction pairs) and a stand-in for the third in lesson 29: DPO (Rafailov et al. 2023) trains on
# the same kind of human comparisons and optimizes the same KL-regularized objective as RLHF, without a reward model or PPO.
#
# ## Sparse attention: alternating dense and locally banded layers
#
# > **Textbook vs sources: GPT-3's attention.** The chapter: *"由于巨大的模型体量使用了稀疏注意力机制来取代传统的注意力机制"*
# > (because of its huge size it used sparse attention *in place of* traditional attention). The GPT-3 paper: *"we use
# > alternating dense and locally banded sparse attention patterns in the layers of the transformer, similar to the
# > Sparse Transformer"*. Half of the layers keep dense attention; the sparse ones do not replace it. The paper gives no
# > reason for the choice.
#
# The paper does not say which layers come first; in minigpt the even layers (0, 2, ...) attend densely, query $i$
# sees keys $0..i$, and the odd layers are **locally banded**:
# the sequence is cut into blocks of `window` positions and a query sees only the earlier positions of its own block,
#
# $$ M^{\text{band}}_{ij} = [\, j \le i \,] \wedge [\, \lfloor j/w \rfloor = \lfloor i/w \rfloor \,] , $$
#
# the local pattern of the Sparse Transformer (Child et al. 2019). The paper does not give GPT-3's band width; our
# preset's 256 is an assumption. Drawn for $T = 16$, $w = 4$:

# %%
T_show, w_show = 16, 4
dense = causal_mask(T_show)                                              # (T, T)
band = banded_mask(T_show, w_show)                                       # (T, T)
dense_png = plot_mask(dense, "even layers: dense (causal)", "13_gpt3_dense_layer")
band_png = plot_mask(band, f"odd layers: locally banded, window {w_show}", "13_gpt3_banded_layer")
for name, m in (("dense", dense), ("banded", band)):
    print(f"{name}: {int(m.sum())} of {T_show * T_show} query-key pairs")
    print("\n".join("  " + "".join("#" if v else "." for v in row) for row in m[:8]), "\n  ...")
print("saved", dense_png, band_png)

# %% [markdown]
# How much attention does a banded layer skip? With $w$ dividing $T$, a dense causal layer has $T(T+1)/2$ pairs
# and a banded one $\frac{T}{w}\cdot\frac{w(w+1)}{2} = T(w+1)/2$, a fraction $(w+1)/(T+1)$.

# %%
T3, w3 = 2048, ModelConfig.preset("gpt3-175b").attn_window
dense_pairs = int(causal_mask(T3).sum())
band_pairs = int(banded_mask(T3, w3).sum())
print(f"T = {T3}, window = {w3}: dense {dense_pairs:,} pairs, banded {band_pairs:,} "
      f"({band_pairs / dense_pairs:.1%}); alternating layers average {(1 + band_pairs / dense_pairs) / 2:.1%} of dense")

# %% [markdown]
# A banded layer computes an eighth of the attention pairs. minigpt's reference attention builds the whole
# $T \times T$ score matrix and masks it, so here the mask changes *what* is computed, not how much; the savings
# need a kernel that skips the masked blocks (the Sparse Transformer's block-sparse kernels). And at $T = 2048$
# attention is ~3% of GPT-3's FLOPs: sparse layers pay off at long contexts, where $T$ approaches $6C$.
#
# **What can a stack of banded layers see?** Output $i$ depends on input $j$ after one layer when $M_{ij}$; after
# two layers when some $k$ has $M^{(2)}_{ik}$ and $M^{(1)}_{kj}$: a boolean matrix product. Banded layers alone never
# leave their block; one dense layer anywhere in the stack reopens the whole past.

# %%
def reach(masks):
    """(T, T) bool: which inputs j can change output i after layers with these masks (bottom first)."""
    R = np.eye(masks[0].shape[0], dtype=bool)                            # (T, T) before any layer: itself
    for M in masks:
        R = (M.astype(np.int64) @ R.astype(np.int64)) > 0                # (T, T) i sees k, k depends on j
    return R


for name, stack in (("banded, banded, banded, banded", [band] * 4),
                    ("dense, banded (GPT-3's pair)", [dense, band]),
                    ("banded, dense", [band, dense])):
    R = reach(stack)
    print(f"{name:32s} output 15 depends on inputs {np.flatnonzero(R[15]).tolist()}")

# %% [markdown]
# ## A tiny GPT-3, run
#
# The `gpt3` preset at its tiny size: 4 layers, $C = 64$, $T_{\max} = 64$, window 16, pre-norm GPT-2 blocks.
# Three checks that the model really alternates:
# 1. running the blocks one by one with masks causal, banded, causal, banded reproduces `Model.forward`;
# 2. changing one early token changes every later output (a dense layer carries it), while the same model with
#    every layer banded (`attn_mask` replaces every layer's mask) changes only that token's own block;
# 3. a whole-model gradient check in float64.

# %%
g3 = ModelConfig.preset("gpt3")
model = Model(g3, seed=0, dtype="float64")
rng = np.random.default_rng(0)
B, T = 2, g3.max_seq_len
ids = rng.integers(0, g3.vocab_size, (B, T))                             # (B, T)
targets = rng.integers(0, g3.vocab_size, (B, T))                         # (B, T)
logits = model.forward(ids)                                              # (B, T, V)
loss, dlogits = cross_entropy(logits, targets)
model.zero_grad()
model.backward(dlogits)
print(f"tiny gpt3: {model.num_params():,} parameters, logits {logits.shape}, loss {loss:.4f} "
      f"(log V = {np.log(g3.vocab_size):.4f})")

# 1. block by block, choosing each layer's mask ourselves
p, pos = model.params, np.broadcast_to(np.arange(T), (B, T))           # pos (B, T)
x = embedding_forward(ids, p["wte"])[0] + learned_position_forward(pos, p["wpe"])[0]   # (B, T, C)
layer_masks = [causal_mask(T) if i % 2 == 0 else banded_mask(T, g3.attn_window) for i in range(g3.n_layer)]
for i, m in enumerate(layer_masks):
    x, _ = model.block_forward(x, i, m, model.block_context(B, T))                       # (B, T, C)
x, _ = layernorm_forward(x, p["norm_f.w"], p["norm_f.b"], g3.norm_eps)                # (B, T, C)
by_blocks_diff = float(np.abs(x @ p["wte"].T - logits).max())                          # (B, T, V) compared
print("block by block with masks [causal, banded, causal, banded] vs Model.forward:", by_blocks_diff)

# 2. who hears about a changed token?
changed = ids.copy()
changed[:, 3] = (changed[:, 3] + 1) % g3.vocab_size                      # change token 3 of every sample
all_banded = banded_mask(T, g3.attn_window)                              # (T, T)
moved_alternating = np.flatnonzero(np.abs(model.forward(changed) - logits).max(axis=(0, 2)) > 1e-12)
moved_banded = np.flatnonzero(np.abs(model.forward(changed, attn_mask=all_banded)
                                     - model.forward(ids, attn_mask=all_banded)).max(axis=(0, 2)) > 1e-12)
print(f"token 3 changed -> alternating model: outputs {moved_alternating.min()}..{moved_alternating.max()} move; "
      f"every layer banded: outputs {moved_banded.min()}..{moved_banded.max()} move (its block of {g3.attn_window})")

# %% [markdown]
# And the gradient check, on the tiny check size (2 layers, $C = 32$, $T = 8$, $V = 50$, window 4, so layer 1 is
# banded), with lesson 08's `check_model_gradients`: weights moved off their initialisation first, and the key bias's
# exactly-zero gradient compared absolutely (lesson 08 explains both).

# %%
check_model = Model(ModelConfig.preset("gpt3", n_layer=2, d_model=32, max_seq_len=8, vocab_size=50, attn_window=4),
                    seed=0, dtype="float64")
noise = np.random.default_rng(1)
move_off_init(check_model, noise)                                        # off the initialisation
c_ids, c_targets = noise.integers(0, 50, (2, 8)), noise.integers(0, 50, (2, 8))   # (2, 8) each
errors = check_model_gradients(check_model, c_ids, c_targets, entries=4 if FAST else 10)
print(f"{len(errors)} tensors, worst error {max(errors.values()):.1e} ({max(errors, key=errors.get)})")

# %% [markdown]
# ## Summary
# - $N = L(12C^2 + 13C) + (V + T_{\max})C + 2C \approx 12LC^2$; the presets reproduce GPT-1 (117M), GPT-2 (124M-1.56B)
#   and GPT-3 (125M-175B) within their rounding.
# - The textbook's GPT table, checked cell by cell against the presets: layers and heads as printed; "Hidden_size" is
#   the MLP width $4C$ (3072 / 6400 / 49152, transformers' `intermediate_size`) and "注意力维度" is $d_\text{model}$
#   (768 / 1600 / 12288, transformers' `hidden_size`); the counts are the papers' (GPT-2's 1.5B is the paper's 1542M,
#   the weights have 1.56B).
# - Corpora: WebText is 40 GB (GPT-2 paper); GPT-3's 45 TB -> 570 GB is Common Crawl alone, one of five sources of a
#   300B-token mix; GPT-1's "5GB" is an estimate of BooksCorpus, which its paper sizes only in books.
# - Training costs $\approx 6N$ FLOPs per token (2 forward, 4 backward per weight) plus $12LTC$ for attention. GPT-3:
#   $6ND = 3.14 \times 10^{23}$ FLOPs, about 23,000 A100-days at an assumed 50% utilisation: the chapter's "a month on
#   1024 A100s" is this kind of estimate (GPT-3 itself was trained on V100s).
# - Zero-shot: only a description of the task; few-shot: demonstrations in the prompt (the chapter: 3~5; the GPT-3
#   paper: typically 10 to 100), both "in-context learning", with no weight update. ChatGPT added 指令微调 and
#   人类反馈强化学习 (SFT, RLHF) after 预训练.
# - GPT-3 alternates dense and locally banded attention (it does not replace dense attention). A banded layer sees
#   only its block; the dense layers keep the whole past in reach. The savings need a sparse kernel, and matter at long contexts ($T \to 6C$).
#
# ## Exercises
# 1. Count LLaMA-2-7B (`ModelConfig.preset("llama2-7b")`): its MLP has three matrices of hidden size
#    $11008 \approx 2.69\,C$ instead of two of $4C$, and no biases. How many $C^2$ per block? Why $\approx 8C/3$?
# 2. For GPT-3 175B, at which context length $T$ would attention (full square, $12LTC$) cost as much as all the
#    matmuls with weights? And with a causal kernel that skips the upper triangle?
# 3. The Chinchilla rule of thumb trains on $D \approx 20N$ tokens. How many tokens, and how many A100-days at 50%,
#    would a compute-optimal 175B model need?
# 4. Replace the banded layers by a sliding window of the same width (`minigpt.masks.sliding_window_mask`). Which
#    queries see more keys, which the same? Does `reach` still need a dense layer to see the whole past?

# %% [markdown]
# ## Check

# %%
for name, row in count_rows.items():
    assert row["n"] == row["formula"], name                    # the formula is the presets' own count
    assert row["flops"] == row["flops_formula"], name
    assert abs(row["n"] / PUBLISHED[name] - 1) < 0.02, name    # published sizes, within their rounding
for (model, column), (printed, from_preset) in size_checks.items():
    assert printed == from_preset, (model, column, printed, from_preset)   # the chapter's sizes, read as COLUMN_IS says
for model, row in TEXTBOOK_TABLE.items():
    c = ModelConfig.preset(PRESET_OF[model])
    assert row["Hidden_size"] == 4 * c.d_model == c.d_ff and row["注意力维度"] == c.d_model   # F = 4C; C = d_model
    printed, from_paper, from_preset, off = param_checks[model]
    assert printed == from_paper, model                        # each printed count is its paper's, rounded
    assert abs(off) < 0.011, (model, off)                      # and the weights agree with the paper within 1.1%
assert [param_checks[m][2] == param_checks[m][0] for m in TEXTBOOK_TABLE] == [True, False, True]   # GPT-2: 1.6B
assert corpus_checks["GPT-2"] == SOURCE_CORPUS["GPT-2"] and corpus_checks["GPT-3"] == SOURCE_CORPUS["GPT-3"]
assert books_low < corpus_checks["GPT-1"] < books_high, (books_low, books_high)   # "5GB": a fair estimate
assert abs(sum(w for _, w in GPT3_MIX.values()) - 1.01) < 1e-9            # Table 2.2's rounded weights
assert round(GPT3_MIX["Common Crawl (filtered)"][1] * D / GPT3_MIX["Common Crawl (filtered)"][0], 2) == 0.44
assert 15 < a100_days / 1024 < 45 and 33 < megatron_days < 35  # "1024张 A100 ... 1个月"
assert FEW_SHOT.startswith(ZERO_SHOT) and len(demonstrations) == 3           # the chapter's "3~5个示例"
assert [label for _, label in demonstrations] == ["1", "0", "1"]
assert ModelConfig.preset("gpt3-175b").max_seq_len == 2048                   # the n_ctx that holds K = 10..100
assert abs(C_6ND / 3.14e23 - 1) < 0.01, C_6ND                 # the GPT-3 paper's figure
assert abs(C_6ND / PF_DAY / 3640 - 1) < 0.01                   # 3.64e3 petaflop/s-days
assert 20_000 < a100_days < 27_000, a100_days
assert band_pairs == T3 * (w3 + 1) // 2 and dense_pairs == T3 * (T3 + 1) // 2
assert (reach([dense, band]) == dense).all() and (reach([band] * 4) == band).all()
assert logits.shape == (B, T, g3.vocab_size) and logits.dtype == np.float64
assert abs(loss - np.log(g3.vocab_size)) < 0.05, loss          # near-uniform predictions at initialisation
assert by_blocks_diff < 1e-12, by_blocks_diff
assert moved_alternating.tolist() == list(range(3, T))         # a dense layer carries token 3 to every later output
assert moved_banded.tolist() == list(range(3, g3.attn_window))  # banded everywhere: only token 3's own block
assert max(errors.values()) < 1e-6, {k: e for k, e in errors.items() if e >= 1e-6}
assert dense_png.exists() and band_png.exists()
print("lesson 13 OK")
