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
# # Lesson 12 — Generation: decoding strategies, the KV cache, few-shot prompting
#
# **You will learn**
# - how a causal language model writes (生成): one token at a time, each choice fed back as input, and four ways to
#   make the choice: greedy decoding (贪婪解码), and sampling (采样) with a temperature, top-k or top-p;
# - the KV cache: why the keys and values of past positions never change in a causal model, what is stored, a
#   float64 check that cached and recomputed logits agree (also for a left-padded batch of prompts), and what it saves
#   in work and costs in memory, on the textbook's own example of 256 + 256 tokens;
# - zero-shot and few-shot prompting (零样本学习 / 少样本学习, the chapter's 上下文学习, in-context learning): a tiny model,
#   its weights frozen, answers a task better when the prompt holds examples of it.
#
# The chapter ends its account of CLM with generation: the model predicts the next token from all the tokens before it,
# and repeating that step writes the text (今天天气 → 今天天气很 → 今天天气很好). LLaMA's section adds that the output
# distribution is turned into tokens "通过采样或贪婪解码等方法". This lesson builds both, makes the loop fast, and then
# uses it to measure in-context learning. It is not a training lesson: about 15 s on 2 CPU cores by default, about 5
# seconds with `MINIGPT_FAST=1` (the few-shot model then trains 250 steps instead of 1000; section 3 says what changes).

# %%
import os

import matplotlib.pyplot as plt
import numpy as np

from minigpt import Model, ModelConfig, cross_entropy
from minigpt.config import num_params
from minigpt.data.synthetic import examples_to_batch, few_shot
from minigpt.generate import generate, left_pad, sample_next
from minigpt.gradcheck import move_off_init
from minigpt.masks import attention_mask
from minigpt.model import KVCache
from minigpt.optim import AdamW, clip_grad_norm, cosine_lr
from minigpt.tokenizers import CharTokenizer
from minigpt.viz import save_figure

FAST = os.environ.get("MINIGPT_FAST") == "1"

# %% [markdown]
# ## 1. Decoding strategies
#
# At each step the model gives the logits $z \in \mathbb{R}^V$ of the last position. A decoding strategy turns them
# into one token:
#
# - **Greedy**: $y = \arg\max_i z_i$. Deterministic; the same prompt always gives the same text.
# - **Temperature** $t > 0$: draw from
#   $$ p_i(t) = \frac{e^{z_i / t}}{\sum_j e^{z_j / t}}, \qquad \log\frac{p_i(t)}{p_j(t)} = \frac{z_i - z_j}{t}. $$
#   $t = 1$ is the model's own distribution; $t < 1$ widens every log-odds gap (sharper), $t > 1$ narrows it (flatter).
#   As $t \to 0$ all the mass goes to the argmax, so greedy is the limit (`temperature=0` in the library); as
#   $t \to \infty$ the distribution becomes uniform.
# - **Top-k**: keep the set $K$ of the $k$ largest logits and renormalise,
#   $p_i = e^{z_i/t} / \sum_{j \in K} e^{z_j/t}$ for $i \in K$, else 0. The long tail of unlikely tokens, each tiny but
#   many together, can no longer be drawn.
# - **Top-p** (nucleus sampling, Holtzman et al. 2019): sort the probabilities, $p_{(1)} \ge p_{(2)} \ge \dots$, and
#   keep the smallest head whose mass reaches $p$: token $(r)$ stays when $\sum_{s < r} p_{(s)} < p$ (so the most likely
#   token always stays). Unlike a fixed $k$, the kept set is small when the model is sure and large when it is not.
#
# `minigpt.generate.sample_next` applies them in this order: divide by $t$, cut to the top $k$, softmax, cut to the
# nucleus of the tempered distribution, renormalise; then one draw by the inverse CDF (a uniform $u$, the first token
# whose cumulative probability passes $u$). First the same maths from scratch, for one vector:

# %%
def decoding_distribution(z, temperature=1.0, top_k=None, top_p=None):
    """z (V,) -> the probabilities (V,) that one decoding step draws from (a one-hot for greedy)."""
    if temperature == 0:
        return np.eye(len(z))[np.argmax(z)]                                 # (V,) greedy: all mass on the argmax
    z = z / temperature                                                     # (V,)
    if top_k is not None:
        z = np.where(z < np.sort(z)[-top_k], -np.inf, z)                    # (V,) all but the k largest out
    p = np.exp(z - z.max())
    p = p / p.sum()                                                         # (V,) softmax
    if top_p is not None:
        order = np.argsort(-p)                                              # (V,) most likely first
        ahead = np.cumsum(p[order]) - p[order]                              # (V,) mass of the tokens before each
        keep = np.zeros(len(p), dtype=bool)
        keep[order] = ahead < top_p                                         # (V,) the nucleus
        p = np.where(keep, p, 0.0)
        p = p / p.sum()                                                     # (V,) renormalised
    return p


# after "今天天气", a made-up set of candidate next tokens and logits (V = 8)
TOKENS = ["很", "真", "不", "好", "也", "晴", "热", "冷"]
PINYIN = ["hen", "zhen", "bu", "hao", "ye", "qing", "re", "leng"]          # plot labels (no CJK font needed)
z = np.array([3.0, 2.2, 1.6, 1.0, 0.5, 0.0, -0.5, -1.5])                    # (V,)
STRATEGIES = {
    "greedy": dict(temperature=0),
    "t = 1": dict(temperature=1.0),
    "t = 0.5": dict(temperature=0.5),
    "t = 2": dict(temperature=2.0),
    "top-k = 3": dict(temperature=1.0, top_k=3),
    "top-p = 0.9": dict(temperature=1.0, top_p=0.9),
    "t = 0.7, top-p = 0.9": dict(temperature=0.7, top_p=0.9),
}
dists = {name: decoding_distribution(z, **kw) for name, kw in STRATEGIES.items()}
print(f"{'strategy':>21} | " + " ".join(f"{t:>5}" for t in TOKENS) + " | kept")
for name, p in dists.items():
    print(f"{name:>21} | " + " ".join(f"{x:5.3f}" if x > 0 else "    -" for x in p) + f" | {int((p > 0).sum())}")

fig, axes = plt.subplots(1, len(dists), figsize=(2.3 * len(dists), 2.8), sharey=True)
for ax, (name, p) in zip(axes, dists.items()):
    ax.bar(range(len(z)), dists["t = 1"], color="none", edgecolor="grey", linestyle=":")   # the model's own
    ax.bar(range(len(z)), p, color="tab:blue")
    ax.set_xticks(range(len(z)), PINYIN, rotation=90, fontsize=8)
    ax.set_title(name, fontsize=9)
axes[0].set_ylabel("probability of the next token")
sampling_png = save_figure(fig, "12_decoding_strategies")
print("saved", sampling_png, "(dotted: the model's own distribution, t = 1)")

# %% [markdown]
# Read the rows: $t = 0.5$ gives 很 about three quarters of the mass, $t = 2$ spreads it over every candidate;
# top-k = 3 and top-p = 0.9 both cut the tail, top-p by mass (here it keeps four tokens at $t = 1$ but only three
# at $t = 0.7$, because the nucleus is taken after the temperature).
#
# **Does `sample_next` draw from these distributions?** `sample_next` takes a batch of logits $(B, V)$ and draws one
# token per row, so $N$ copies of $z$ give $N$ independent draws. Each token's count is binomial: its frequency
# $\hat p_i$ has standard error $\sigma_i = \sqrt{p_i(1 - p_i)/N}$. We want every $|\hat p_i - p_i| / \sigma_i$ small
# (a token lands beyond 5 standard errors by chance about once in 1.7 million), and not a single draw of a token the
# strategy removed.

# %%
N_DRAWS = 200_000
rng = np.random.default_rng(0)
zscores, outside = {}, {}
print(f"{'strategy':>21} | max |freq - p| / sigma | draws outside the kept set")
for name, kw in STRATEGIES.items():
    draws = sample_next(np.tile(z, (N_DRAWS, 1)), rng, **kw)                # (N,) one token per row
    freq = np.bincount(draws, minlength=len(z)) / N_DRAWS                   # (V,)
    p = dists[name]
    kept = p > 0
    sigma = np.sqrt(p * (1 - p) / N_DRAWS)                                  # (V,) binomial standard error
    zscores[name] = float(np.max(np.abs(freq - p)[kept & (sigma > 0)] / sigma[kept & (sigma > 0)], initial=0.0))
    outside[name] = int((freq[~kept] > 0).sum())
    print(f"{name:>21} | {zscores[name]:22.2f} | {outside[name]}")

# %% [markdown]
# (For greedy every draw is the argmax: no spread, nothing to compare but equality.)
#
# ## 2. The KV cache
#
# **Writing without a cache.** The plain loop runs the model over the whole sequence for every new token and keeps only
# the last position's logits: the step that writes token $n + 1$ processes all $n$ positions again.
#
# **Why the past never changes.** In a causal model position $t$ attends only to positions $\le t$. By induction over
# the layers, the hidden state $h^\ell_t$ of every layer $\ell$ depends only on the tokens $x_1, \dots, x_t$: true for
# the embeddings, and if true in layer $\ell - 1$, then layer $\ell$ mixes only $h^{\ell-1}_{\le t}$. So the key and
# value of position $t$ in layer $\ell$ (of a LLaMA block; GPT-2 has no RoPE and adds biases),
#
# $$ k^\ell_t = \operatorname{RoPE}_t\!\big(W_k\, \operatorname{norm}(h^{\ell-1}_t)\big), \qquad
#    v^\ell_t = W_v\, \operatorname{norm}(h^{\ell-1}_t), $$
#
# are fixed once $x_{\le t}$ is: appending $x_{t+1}$ cannot change them. The new position needs its own query, key
# and value and the keys and values of all earlier positions, which we already computed. Keep them and each step
# processes ONE position: $q_{t+1}$ attends over $[k_1 \dots k_{t+1}]$ in every layer. The arithmetic is the same as
# recomputing the last row of the full attention, so the logits agree up to the order of floating-point sums.
# (This relies on causality: in a bidirectional model such as BERT an appended token changes every earlier position.)
#
# **What `KVCache` stores.** For every layer, `k[l]` and `v[l]` of shape $(B, H_{kv}, \text{capacity}, D)$, filled up to
# `length`. The keys are stored *after* RoPE (and after Qwen3's QK-norm): the rotation of position $j$ depends only on
# $j$, so it is applied once, when $j$ is computed. Only the $H_{kv}$ key/value heads are stored, which is GQA's saving
# (lesson 17). `model.forward(new_ids, kv_cache=cache)` treats its $T$ tokens as positions `length .. length+T-1`: RoPE
# and a learned position table get those positions, the mask is `attention_mask(T, S=length+T)` (the queries are the
# last $T$ of $S$ positions), and the new keys and values are appended. The first call, over the whole prompt, is the
# *prefill*.
#
# Below: greedy decoding by hand, once recomputing everything and once with a cache, on two tiny random models in
# float64 (a GPT-2 with a learned position table, and a LLaMA with RoPE and 2 kv heads for 4 query heads), their weights
# moved off the init so that attention is far from uniform.

# %%
def greedy_by_hand(model, prompt, n_new, use_cache):
    """Greedy decoding. -> the n_new tokens, the logits each step chose from (n_new, V), positions processed."""
    seq, step_logits, work = list(prompt), [], 0
    cache = KVCache(model, 1, len(prompt) + n_new) if use_cache else None
    feed = list(prompt)                                                     # the prefill / the whole sequence
    for _ in range(n_new):
        ids = np.array([feed])                                              # (1, T)
        logits = model.forward(ids, kv_cache=cache)[0, -1]                  # (V,) the last position's
        work += ids.shape[1]
        token = int(logits.argmax())
        step_logits.append(logits)
        seq.append(token)
        feed = [token] if use_cache else list(seq)                          # cache: only the new token
    return seq[len(prompt):], np.array(step_logits), work


V_TINY, P, N_NEW = 40, 7, 9
prompt = [int(t) for t in np.random.default_rng(1).integers(0, V_TINY, P)]
tiny = {}
for preset in ("gpt2", "llama"):
    cfg = ModelConfig.preset(preset, n_layer=2, d_model=32, n_head=4, vocab_size=V_TINY, max_seq_len=32)
    tiny[preset] = Model(cfg, seed=0, dtype="float64")
    move_off_init(tiny[preset], 1)

kv_error, kv_work, kv_same_tokens = {}, {}, {}
for preset, model in tiny.items():
    tokens_full, logits_full, work_full = greedy_by_hand(model, prompt, N_NEW, use_cache=False)
    tokens_kv, logits_kv, work_kv = greedy_by_hand(model, prompt, N_NEW, use_cache=True)
    library = generate(model, prompt, max_new_tokens=N_NEW, temperature=0)[P:]   # minigpt.generate, KV cache
    kv_error[preset] = float(np.abs(logits_kv - logits_full).max())
    kv_work[preset] = (work_kv, work_full)
    kv_same_tokens[preset] = tokens_kv == tokens_full == library
    print(f"{preset:>5}: tokens {tokens_kv}  same without cache and in minigpt.generate: {kv_same_tokens[preset]}")
    print(f"       max |cached - recomputed| over the {N_NEW} steps' logits: {kv_error[preset]:.1e};  "
          f"positions processed: {work_kv} with the cache, {work_full} without")

cache = KVCache(tiny["llama"], 1, P + N_NEW)
tiny["llama"].forward(np.array([prompt]), kv_cache=cache)                   # prefill only
print(f"llama cache after the prefill: {len(cache.k)} layers of k and v, each {cache.k[0].shape} "
      f"(B, Hkv, capacity, D), length {cache.length}")

# %% [markdown]
# ### A batch of prompts of different lengths: left padding
#
# To decode several prompts at once they must share one array. Padding them on the *right* would put their last
# tokens in different columns, and the new tokens would not line up; so `left_pad` pads on the **left**, and every
# prompt ends in the last column. Two things keep the padding from changing anything (`attention_mask(..., pad_len=)`):
#
# - **padding is invisible**: key $j$ is hidden from every real query when $j < \text{pad\_len}[b]$. A padding query
#   still sees itself (one key), so no softmax row is empty; its output is never used.
# - **positions count from the first real token**: the position of column $i$ is $i - \text{pad\_len}[b]$, so RoPE and
#   the position table see each prompt exactly as if it were alone.
#
# `KVCache(model, B, capacity, pad_len=pad_len)` keeps `pad_len` for the whole generation, so every later step gets
# the same mask and positions.

# %%
prompts = [prompt, prompt[:2], prompt[2:6]]                                 # 7, 2 and 4 tokens
ids, pad_len = left_pad(prompts, pad_id=0)                                  # (3, 7), (3,)
print("left-padded ids (pad id 0; any id would do, the mask hides it):\n", ids, "\npad_len", pad_len)
print("positions:\n", tiny["llama"].block_context(3, ids.shape[1], pad_len=pad_len).pos)
mask = attention_mask(ids.shape[1], pad_len=pad_len)                        # (3, 7, 7)
print("prompt 1's mask (row = query, column = key, 1 = may attend):")
print("\n".join(" ".join("1" if m else "." for m in row) for row in mask[1]))

batch_error = {}
for preset, model in tiny.items():
    cache = KVCache(model, len(prompts), ids.shape[1] + N_NEW, pad_len=pad_len)
    logits = model.forward(ids, kv_cache=cache)[:, -1]                      # (B, V) prefill
    steps = []
    for _ in range(N_NEW):
        steps.append(logits)
        token = logits.argmax(axis=-1)                                      # (B,) greedy
        logits = model.forward(token[:, None], kv_cache=cache)[:, -1]       # (B, V) one position each
    steps = np.stack(steps, axis=1)                                         # (B, N, V)
    alone = np.stack([greedy_by_hand(model, p, N_NEW, use_cache=False)[1] for p in prompts])   # (B, N, V)
    batch_error[preset] = float(np.abs(steps - alone).max())
    print(f"{preset:>5}: batch of 3, left-padded, cached vs each prompt alone without a cache: "
          f"max |difference| {batch_error[preset]:.1e}")

# %% [markdown]
# ### Counting the work
#
# With a prompt of $P$ tokens and $N$ new tokens, both loops make $N$ forward passes. Without a cache they process
#
# $$ P + (P + 1) + \dots + (P + N - 1) = NP + \tfrac{N(N-1)}{2} $$
#
# positions; with one, the prefill of $P$ and then one position per step: $P + N - 1$ (the last token is written but
# never fed). The attention work differs even more: recomputing, the pass over $n$ positions scores $n(n+1)/2$ query-key
# pairs; with the cache, each pair $(i, j \le i)$ of the final sequence is scored once.
#
# The chapter's own example: a prompt of 256 tokens and 256 tokens to write; the model runs on the first 256 tokens,
# then 257, and so on, "进行 256 次计算，最后生成一个序列长度为 512 的输出文本". Here is that example counted.

# %%
def positions_processed(P, N, cached):
    return P + N - 1 if cached else N * P + N * (N - 1) // 2


def pairs_scored(P, N, cached):
    """Query-key pairs (i, j <= i) that attention scores, per layer and head."""
    if cached:
        return (P + N - 1) * (P + N) // 2                                    # each pair of the fed sequence once
    return sum(n * (n + 1) // 2 for n in range(P, P + N))                   # pass over n positions: n(n+1)/2


BOOK_P, BOOK_N = 256, 256
book = {
    "forward passes": (BOOK_N, BOOK_N),
    "positions processed": (positions_processed(BOOK_P, BOOK_N, False), positions_processed(BOOK_P, BOOK_N, True)),
    "query-key pairs scored": (pairs_scored(BOOK_P, BOOK_N, False), pairs_scored(BOOK_P, BOOK_N, True)),
}
print(f"prompt {BOOK_P} + {BOOK_N} new = {BOOK_P + BOOK_N} tokens in the end")
print(f"{'':>24} {'recompute':>12} {'KV cache':>10} {'ratio':>7}")
for what, (full, kv) in book.items():
    print(f"{what:>24} {full:>12,} {kv:>10,} {full / kv:>6.0f}x")

# the library's loop, counted: wrap model.forward and add up the positions it is given
model = tiny["llama"]
fed = []
model.forward = lambda ids, **kw: (fed.append(ids.shape[1]), Model.forward(model, ids, **kw))[1]
generate(model, prompt, max_new_tokens=N_NEW, temperature=0)
del model.forward                                                           # back to the class's method
print(f"minigpt.generate, P = {P}, N = {N_NEW}: {len(fed)} forward calls, {sum(fed)} positions "
      f"(P + N - 1 = {P + N_NEW - 1}: the last token is written, never fed)")

# %% [markdown]
# The cache turns 98,176 positions into 511, 192 times fewer, and the attention pairs 150 times fewer. For a prompt
# and an answer that both grow like $N$, the positions processed grow like $N$ instead of $N^2$, the attention pairs
# like $N^2$ instead of $N^3$. (`minigpt.generate` also feeds the last token it writes, in the step after it hands the
# token out: one position more than the minimum.)
#
# **What it costs.** The cache holds $2 \cdot L \cdot H_{kv} \cdot D$ numbers per position (K and V, every layer and
# kv head), 2 bytes each in float16. For the chapter's 512 positions, from each preset's config:

# %%
def kv_numbers_per_position(cfg):
    return 2 * cfg.n_layer * cfg.n_kv_head * cfg.head_dim


MiB, GiB, BOOK_LEN = 2 ** 20, 2 ** 30, BOOK_P + BOOK_N
memory = {}
print(f"{'preset':>12} {'L':>3} {'H':>3} {'Hkv':>3} {'D':>4} | {'numbers/pos':>11} {'fp16/pos':>9} "
      f"{'512 positions':>13} | {'fp16 weights':>12}")
for name in ("gpt2-small", "llama2-7b", "llama3-8b", "chatglm2-6b", "mistral-7b", "qwen3-8b"):
    cfg = ModelConfig.preset(name)
    per_position = kv_numbers_per_position(cfg) * 2                        # bytes, float16
    memory[name] = per_position
    print(f"{name:>12} {cfg.n_layer:>3} {cfg.n_head:>3} {cfg.n_kv_head:>3} {cfg.head_dim:>4} | "
          f"{kv_numbers_per_position(cfg):>11,} {per_position / 1024:>5.0f} KiB "
          f"{per_position * BOOK_LEN / MiB:>9.0f} MiB | {2 * num_params(cfg)['total'] / GiB:>8.1f} GiB")

tiny_cache = KVCache(tiny["llama"], 3, BOOK_LEN)                            # what KVCache really allocates
allocated = sum(a.nbytes for a in tiny_cache.k + tiny_cache.v)
formula = 3 * BOOK_LEN * kv_numbers_per_position(tiny["llama"].config) * 8  # float64: 8 bytes
print(f"tiny llama, B = 3, capacity {BOOK_LEN}, float64: KVCache allocates {allocated:,} bytes, formula {formula:,}")

# %% [markdown]
# For one 512-token sequence the cache is small next to the weights: 256 MiB for LLaMA-2-7B against 12.6 GiB. It is
# the batch and the context length that make it large (exercise 3; lesson 17 does 32 sequences of 4096). LLaMA-3-8B and
# Mistral-7B keep 8 kv heads for their 32 query heads, so with LLaMA-2-7B's 32 layers and $D = 128$ their caches are a
# quarter of its; Qwen3-8B does the same with 36 layers. ChatGLM2-6B keeps 2 kv groups: 14 MiB. GPT-2 small's cache is
# small because the whole model is.
#
# ## 3. Zero-shot and few-shot prompting (上下文学习)
#
# The chapter: GPT-2 aimed at zero-shot (零样本学习), solving a task without fine-tuning from a description of it;
# GPT-3 found zero-shot hard even at 175B and proposed few-shot (少样本学习): put a few examples, typically 3 to 5,
# in the prompt. The chapter calls this 上下文学习 (In-context Learning): the model learns how to solve the task from
# the examples in its context, and no weight changes.
#
# **The task** (`minigpt.data.synthetic.few_shot`, rule `"shift"`): a Caesar shift on the 6 letters a..f. Every prompt
# draws its own shift $s \in \{1, \dots, 5\}$, shows $k$ examples `x>y` with $y = x + s \pmod 6$, then asks for a letter
# not among the shown ones: `b>d,e>a,c>` → `e` ($s = 2$). Because the rule changes from prompt to prompt, no weight can
# hold it: the model must read it off the examples. That makes zero-shot ($k = 0$, the bare query `c>`) impossible *by
# construction*: every answer other than `c` is equally likely, and the best any model can do is to guess one of 5,
# chance = 1/5. This is harsher than the chapter's zero-shot, where an instruction describes the task; our prompts have
# no instructions. One example already determines $s$; more examples carry no new information, only redundancy.
#
# **The model**: a tiny LLaMA (2 layers, $C = 64$, 4 query heads, 2 kv heads), a character tokenizer over `abcdef>,`
# plus a pad token, trained on a mix of $k = 0, 1, 2, 3, 4$ with the loss on the answer letter only
# (`examples_to_batch`). The optimizer is lesson 09's AdamW with warmup, cosine decay and clipping, from
# `minigpt.optim`. A prompt with $k$ examples has $4k + 2$ characters, so one padded batch of all five $k$ would spend
# almost half its work on padding. Instead each step runs one micro-batch per $k$ (no padding inside) and adds up the
# gradients, each scaled by 1/5: every micro-batch holds the same number of answers, so the sum is the gradient of the
# mean loss over all of them, the padded batch's gradient up to rounding (gradient accumulation, as in lesson 09).

# %%
ALPHABET, RULE, K_TRAIN, K_TEST = "abcdef", "shift", (0, 1, 2, 3, 4), (0, 1, 4)
tok = CharTokenizer(ALPHABET + ">,", special_tokens=["<pad>"])
PAD = tok.special_tokens["<pad>"]
STEPS, PER_K, LR = (250 if FAST else 1000), 12, 3e-3
cfg = ModelConfig.preset("llama", n_layer=2, d_model=64, n_head=4, vocab_size=tok.vocab_size, max_seq_len=32)
icl_model = Model(cfg, seed=0)
opt = AdamW(icl_model.params, lr=LR, betas=(0.9, 0.95), eps=1e-8, weight_decay=0.1)
seen = set()                                                               # every training prompt, to compare later
losses = []
for step in range(STEPS):
    opt.lr = cosine_lr(step, LR, LR / 10, STEPS // 20, STEPS)
    icl_model.zero_grad()
    loss = 0.0
    for k in K_TRAIN:                                                       # one micro-batch per prompt length
        examples = few_shot(PER_K, k=k, rule=RULE, alphabet=ALPHABET, seed=100 * step + k)
        seen.update(ex.prompt for ex in examples)
        inputs, targets = examples_to_batch(examples, tok.encode, PAD)      # (12, 4k+2) each, the answer scored
        loss_k, dlogits = cross_entropy(icl_model.forward(inputs), targets)
        icl_model.backward(dlogits / len(K_TRAIN))                          # grads add up: the mean over all k
        loss += loss_k / len(K_TRAIN)
    clip_grad_norm(icl_model.grads, 1.0)
    opt.step(icl_model.grads)
    losses.append(loss)
print(f"{STEPS} steps of {PER_K * len(K_TRAIN)} prompts; answer loss {np.mean(losses[:10]):.2f} -> "
      f"{np.mean(losses[-20:]):.2f} (a fifth of every batch is zero-shot, whose best loss is log 5 = {np.log(5):.2f}: "
      f"the floor of the mean is {np.log(5) / len(K_TRAIN):.2f})")

# %% [markdown]
# **Measuring.** 600 new prompts for each $k$ (seeds the training never used), the weights frozen, the answer decoded
# greedily by `minigpt.generate`. All 1800 prompts go in one call: they have different lengths, so this is the
# left-padded batch of section 2 at work; we also check it against a plain forward over each $k$ alone.

# %%
N_TEST = 600
test = {k: few_shot(N_TEST, k=k, rule=RULE, alphabet=ALPHABET, seed=10 ** 6 + k) for k in K_TEST}
all_prompts = [tok.encode(ex.prompt) for k in K_TEST for ex in test[k]]
outputs = generate(icl_model, all_prompts, max_new_tokens=1, temperature=0, pad_id=PAD)
answers = np.array([out[-1] for out in outputs]).reshape(len(K_TEST), N_TEST)  # (3, N) greedy answer ids
CHANCE = 1 / (len(ALPHABET) - 1)
accuracy, unseen_accuracy, same_as_alone = {}, {}, True
print(f"{'k':>2} {'example prompt':>20} {'model':>5} {'right':>5} | {'accuracy':>8} {'± s.e.':>6} | chance | "
      f"{'seen in training':>16} | accuracy on the unseen")
for row, k in enumerate(K_TEST):
    truth = np.array([tok.encode(ex.answer)[0] for ex in test[k]])          # (N,)
    correct = answers[row] == truth                                         # (N,)
    accuracy[k] = float(correct.mean())
    alone = icl_model.eval().forward(np.array([tok.encode(ex.prompt) for ex in test[k]]))[:, -1].argmax(-1)
    same_as_alone &= bool(np.array_equal(alone, answers[row]))
    se = np.sqrt(accuracy[k] * (1 - accuracy[k]) / N_TEST)
    new = np.array([ex.prompt not in seen for ex in test[k]])               # (N,) never in a training batch
    unseen_accuracy[k] = (float(correct[new].mean()), int(new.sum())) if new.any() else None
    unseen = "-" if not new.any() else f"{correct[new].mean():.3f} of {new.sum()}"
    print(f"{k:>2} {test[k][0].prompt:>20} {tok.decode([int(answers[row, 0])]):>5} {test[k][0].answer:>5} | "
          f"{accuracy[k]:8.3f} {se:6.3f} | {CHANCE:6.2f} | {1 - new.mean():16.0%} | {unseen}")
print("batched, left-padded answers == each k alone, unpadded:", same_as_alone)

# %% [markdown]
# Zero-shot sits at chance, as it must: nothing in the prompt says which shift this one is. With examples in the
# context, the same frozen weights answer far above chance. What the numbers are depends on how long the model trained:
#
# - default run (1000 steps): 19% with no example, 100% with one, 100% with four;
# - FAST run (250 steps, a half-trained model): 18%, 51% and 59%. Here four examples beat one: the model reads the shift
#   more reliably when it can gather it from several examples, although any one of them holds all the information.
#
# Those are one seed. With three other seeds the FAST run kept the order (four ahead of one by 7 to 22 points), and
# after 1000 steps two of them also reached 100% with both, while the third ended at 93% with one example and 90% with
# four: once the rule is learned, more examples of it add nothing, as the information argument says.
#
# The last two columns are honest bookkeeping. 6 letters allow only 6 zero-shot prompts, 150 one-shot prompts and 3,600
# four-shot ones, and training draws 12 of each per step, so most test prompts also occurred in training (a zero-shot
# one with other answers: its shift was drawn afresh each time). Memorising prompt → answer would not explain the
# accuracy on the four-shot prompts training never showed: it matches the rest (FAST: 63% on 270 new prompts; default:
# all of the 23 new ones right). The weights store no rule; what the model learned is to *compute* the answer from the
# examples in front of it, which is what in-context learning means. With 26 letters nearly every prompt would be new,
# but learning the shift would take far longer than this lesson's budget.
#
# ## Summary
# - Generation (生成) repeats one step: logits of the last position → a token → appended. Greedy takes the argmax;
#   temperature reshapes softmax(z / t); top-k and top-p (nucleus) cut the tail by rank and by mass. `sample_next` draws
#   from exactly these distributions (checked within binomial error over 200,000 draws).
# - In a causal model the keys and values of past positions never change, so the KV cache keeps them (after RoPE, only
#   the $H_{kv}$ kv heads) and each step processes one position. Cached and recomputed logits agree to about 1e-15 in
#   float64, also for a left-padded batch, where padding is invisible and positions count from each prompt's first real
#   token.
# - The chapter's 256-token prompt and 256 new tokens (512 in all): 98,176 positions recomputing, 511 with the cache;
#   the cache of 512 positions is $512 \cdot 2 L H_{kv} D$ numbers: 256 MiB for LLaMA-2-7B, 64 MiB for LLaMA-3-8B (GQA).
# - Few-shot prompting (上下文学习): with 0 examples of a rule drawn per prompt the model is at chance; with 1 or 4 the
#   same frozen weights answer far above it.
#
# ## Exercises
# 1. `sample_next` takes the nucleus after the temperature. Compute the kept set of top-p = 0.9 on this lesson's `z`
#    for $t = 0.5, 1, 2$. What would a nucleus taken before the temperature keep? Show that as $t \to 0$ any top-p keeps
#    only the argmax.
# 2. Time `greedy_by_hand` with and without the cache on the tiny LLaMA in float32, for $P = N = 64$ and $128$. Does the
#    speed-up follow the ratio of positions processed? What else costs time per step?
# 3. How many 4096-token sequences fit in 80 GB next to the float16 weights, for LLaMA-2-7B and for LLaMA-3-8B?
# 4. Train on the `"lookup"` rule (a random one-to-one map per prompt; the query is one of the shown keys) with
#    $k \in \{1, 2, 3, 4\}$. Why is $k = 1$ trivial and $k = 0$ impossible? What accuracy would copying the answer of a
#    random shown example give for $k = 4$, and does your model beat it? This is associative recall, the job of an
#    induction head.

# %% [markdown]
# ## Check

# %%
assert all(zscores[name] < 5 for name in STRATEGIES), zscores                  # sample_next follows the maths
assert not any(outside.values()), outside                                       # nothing outside the kept set
assert np.array_equal(sample_next(np.tile(z, (5, 1)), rng, temperature=0), np.zeros(5))   # greedy = argmax
assert int((dists["top-k = 3"] > 0).sum()) == 3 and int((dists["top-p = 0.9"] > 0).sum()) == 4
assert max(kv_error.values()) < 1e-10 and max(batch_error.values()) < 1e-10, (kv_error, batch_error)
assert all(kv_same_tokens.values())                                             # by hand == minigpt.generate
assert all(w == (P + N_NEW - 1, N_NEW * P + N_NEW * (N_NEW - 1) // 2) for w in kv_work.values()), kv_work
assert sum(fed) == P + N_NEW - 1 and len(fed) == N_NEW
assert BOOK_P + BOOK_N == 512 and book["positions processed"] == (98_176, 511)  # the chapter's example
assert book["query-key pairs scored"][1] == 511 * 512 // 2
assert memory["llama2-7b"] == 2 * 32 * 32 * 128 * 2 == 512 * 1024               # 512 KiB per position
assert memory["llama2-7b"] * 512 == 256 * MiB and memory["llama2-7b"] == 4 * memory["llama3-8b"]
assert memory["chatglm2-6b"] == 2 * 28 * 2 * 128 * 2 and allocated == formula
assert abs(accuracy[0] - CHANCE) < 0.07, accuracy                               # zero-shot: chance (±4 s.e.)
assert accuracy[1] > CHANCE + 0.1 and accuracy[4] > accuracy[0] + 0.3, accuracy
assert accuracy[4] >= accuracy[1] - 0.05, accuracy                              # more examples: no worse
assert unseen_accuracy[4][0] > CHANCE + 0.3, unseen_accuracy                    # also on prompts never trained on
assert same_as_alone and sampling_png.exists()
print("lesson 12 OK")
