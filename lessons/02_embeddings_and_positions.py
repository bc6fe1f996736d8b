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
# # Lesson 02 — Embeddings and positions
#
# **You will learn**
# - the token embedding (词嵌入): a lookup table that is secretly a linear layer on one-hot vectors, and its
#   backward pass, a **scatter-add**;
# - why the innocent-looking `dW[ids] += dout` is wrong whenever a token occurs twice, and how the gradient check
#   catches it;
# - why a Transformer needs position information at all, and the two classic ways to give it (位置编码):
#   a learned table (GPT-1, GPT-2, GPT-3) and the fixed sinusoidal encoding of the original Transformer, drawn as a heatmap;
# - a fact worth getting right: **GPT-1 learned its positions.** The textbook describes sinusoidal position encoding
#   for GPT-1 (*"GPT 沿用了 Transformer 的经典 Sinusoidal 位置编码"*, GPT kept the Transformer's classic sinusoidal
#   encoding), but the GPT-1 paper says: *"We used learned position embeddings instead of the sinusoidal version
#   proposed in the original work."*
#
# The first layer of every GPT turns token ids (B, T) into vectors (B, T, C):
# $h_0 = W_\text{te}[\text{ids}] + W_\text{pe}[\text{positions}]$. This lesson builds both halves.

# %%
import os

import numpy as np

from minigpt.data import load_corpus
from minigpt.gradcheck import check_gradients, rel_error
from minigpt.layers.embedding import embedding_backward, embedding_forward
from minigpt.layers.positions import (learned_position_backward, learned_position_forward,
                                      sinusoidal_encoding)
from minigpt.tokenizers import CharTokenizer
from minigpt.viz import plot_positional_encoding

FAST = os.environ.get("MINIGPT_FAST") == "1"

# %% [markdown]
# ## The token embedding is a linear layer
#
# A vocabulary of V tokens gets a table $W \in \mathbb{R}^{V \times C}$, one learned row per token. The forward pass
# looks rows up:
#
# $$ \text{out}_{n,:} = W_{\text{ids}_n,:} \qquad \text{ids} \in \{0..V-1\}^{N},\; \text{out} \in \mathbb{R}^{N \times C} $$
#
# (N = B·T flattened token positions). Write token $n$ as a one-hot row $e_n \in \{0,1\}^V$ with a 1 at
# $\text{ids}_n$; stacking them gives $E \in \{0,1\}^{N \times V}$ and the lookup is a matrix product:
#
# $$ \text{out} = E\,W, \qquad \text{out}_{nc} = \sum_v E_{nv} W_{vc}. $$
#
# So the embedding is lesson 01's linear layer with a one-hot input and no bias, and its weight gradient is
# lesson 01's $dW = x^\top \text{dout}$ with $x = E$:
#
# $$ dW = E^\top \text{dout}, \qquad dW_{v,:} = \sum_{n} E_{nv}\, \text{dout}_{n,:} = \sum_{n \,:\, \text{ids}_n = v} \text{dout}_{n,:}. $$
#
# Row v of the gradient is the **sum** of dout over every position where token v occurs: zero for tokens that did not
# occur, k terms for a token that occurred k times. This is a *scatter-add*. There is no gradient for the ids (they
# are integers). Nobody builds E in practice (at GPT-2's V = 50257 it would be 50257 floats per token): the forward
# is an indexing `W[ids]`, and the backward adds each row of dout into the row of W it came from.

# %% [markdown]
# ## From scratch, then from the library
#
# Our text is the textbook's running example, 今天天气很好 ("the weather is nice today"), cut into characters.
# 天 occurs twice in it, which is exactly the case that matters.

# %%
rng = np.random.default_rng(0)
text = "今天天气很好"
tok = CharTokenizer.from_text(text)                    # alphabet of 5 characters, ids 0..4 by code point
ids = np.array([tok.encode(text)])                     # (B, T) = (1, 6)
V, C_emb = tok.vocab_size, 4
print("characters:", [tok.decode([i]) for i in range(V)], "| ids:", ids.tolist())

W = rng.standard_normal((V, C_emb))                    # (V, C)
dout = rng.standard_normal(ids.shape + (C_emb,))       # (B, T, C)

# from scratch: one-hot rows, then lesson 01's linear layer
E = np.eye(V)[ids]                                     # (B, T, V) one-hot rows
out_np = E @ W                                         # (B, T, C)
dW_np = E.reshape(-1, V).T @ dout.reshape(-1, C_emb)   # (V, C) = E^T dout

# the library
out, cache = embedding_forward(ids, W)                 # (B, T, C)
dW = embedding_backward(dout, cache)                   # (V, C)
print("forward  rel_error(one-hot, library):", rel_error(out_np, out))
print("backward rel_error(one-hot, library):", rel_error(dW_np, dW))

# %% [markdown]
# ## The trap: `dW[ids] += dout`
#
# The scatter-add looks like one line of NumPy, `dW[ids] += dout`. It is wrong. NumPy evaluates `a[idx] += v` as
# `a[idx] = a[idx] + v`: it *reads* all the indexed rows, adds, then *writes* them back one by one. When an index
# repeats, every write of that row starts from the same old value, so all but one contribution are lost. The correct
# unbuffered version is `np.add.at(dW, ids, dout)`; minigpt's `embedding_backward` gets the same sums with one
# `bincount`, faster than `np.add.at` on small tables and no slower at GPT-2's size (see its docstring).

# %%
def naive_backward(dout, cache):
    ids, V = cache
    dW = np.zeros((V, dout.shape[-1]))                 # (V, C)
    dW[ids] += dout                                    # (B, T, C) into (V, C): repeated ids overwrite each other
    return None, dW                                    # no gradient for the ids


dW_naive = naive_backward(dout, cache)[1]              # (V, C)
dW_addat = np.zeros((V, C_emb))                        # (V, C)
np.add.at(dW_addat, ids, dout)                         # (V, C) unbuffered: every occurrence is added

tian = tok.encode("天")[0]
print(f"{'row':>4} {'char':>4} {'count':>5} {'library':>10} {'add.at':>10} {'naive':>10}   (column 0 of dW)")
for v in range(V):
    count = int((ids == v).sum())
    print(f"{v:>4} {tok.decode([v]):>4} {count:>5} {dW[v, 0]:10.4f} {dW_addat[v, 0]:10.4f} {dW_naive[v, 0]:10.4f}")
print("the two occurrences of 天 contribute", np.round(dout[0, ids[0] == tian, 0], 4).tolist(), "to column 0")

# %% [markdown]
# The rows of characters that occur once agree; the row of 天 keeps only one of its two contributions. The
# gradient check sees it at once. `embedding_backward` returns only dW, so for the checker we wrap it to return
# `(None, dW)`: one gradient per forward input, None for the integer ids.

# %%
def embedding_grads(dout, cache):
    return None, embedding_backward(dout, cache)       # (None, (V, C))


ids_batch = rng.integers(0, V, size=(3, 7))            # (B, T) = (3, 7): 21 tokens, 5 ids, many repeats
W_batch = rng.standard_normal((V, 12))                 # (V, C)
emb_errors = check_gradients(embedding_forward, embedding_grads, [ids_batch, W_batch], names=["ids", "W"])
naive_errors = check_gradients(embedding_forward, naive_backward, [ids_batch, W_batch], names=["ids", "W"])
print("library backward:", {k: f"{v:.1e}" for k, v in emb_errors.items()},
      "| naive backward:", {k: f"{v:.1e}" for k, v in naive_errors.items()})

# %% [markdown]
# How common are repeats? Constantly: a batch is thousands of tokens drawn from a vocabulary in which a few tokens
# (spaces, 的, "the", punctuation) are very frequent. Count them in a batch of minigpt's built-in corpus, cut into
# characters:

# %%
corpus = load_corpus()[:20000]
char_tok = CharTokenizer.from_text(corpus)
batch = np.array(char_tok.encode(corpus[:8 * 64])).reshape(8, 64)   # (B, T) = (8, 64)
distinct = np.unique(batch).size
print(f"{batch.size} tokens, {distinct} distinct ids: a naive scatter would keep {distinct} of {batch.size} "
      f"contributions and drop {1 - distinct / batch.size:.0%} of them")

# %% [markdown]
# ## Why positions?
#
# Self-attention (lesson 04) mixes the tokens by weighted sums whose weights depend only on the tokens' vectors.
# Without a mask, permute the input tokens and every output is permuted the same way: the model sees a *bag* of
# tokens, and 狗咬人 ("dog bites man") looks like 人咬狗 ("man bites dog"). (A causal mask breaks the symmetry a
# little, since token t sees exactly t+1 tokens, but every model in this course still gives positions explicitly.)
# So a position vector is added to each token's embedding:
#
# $$ h_0[b, t] = W_\text{te}[\text{ids}_{bt}] + P[t]. $$
#
# The sum passes its gradient unchanged to both terms, so $dW_\text{te}$ and $dP$ each receive the same dout (B, T, C).
#
# **Learned positions** (GPT-1, GPT-2, GPT-3, BERT): $P = W_\text{pe}[\text{position ids}]$ with a learned table
# $W_\text{pe} \in \mathbb{R}^{P_\text{max} \times C}$, exactly an embedding looked up by position instead of token:
#
# $$ dW_{\text{pe}}[p] = \sum_{(b, t) \,:\, \text{pos}_{bt} = p} \text{dout}_{bt} = \sum_b \text{dout}_{b,p} \quad (\text{positions } 0..T-1). $$
#
# Every position occurs once per sequence, so each row gets B contributions: a scatter-add again. Rows $p \ge T$ get
# nothing: a position never seen in training is never trained, which is why such a model has a hard limit,
# `max_seq_len` (512 for GPT-1, 1024 for GPT-2, 2048 for GPT-3).

# %%
B, T, C, P_max = 3, 7, 12, 10
pos_ids = np.arange(T)                                 # (T,) the same positions for every sequence
wpe = 0.02 * rng.standard_normal((P_max, C))           # (P, C) a small init, as GPT-2 uses
dout_pos = rng.standard_normal((B, T, C))              # (B, T, C)
pos_out, pos_cache = learned_position_forward(np.broadcast_to(pos_ids, (B, T)), wpe)   # (B, T, C)
dwpe = learned_position_backward(dout_pos, pos_cache)  # (P, C)
print("dwpe[:T] == dout summed over the batch:", np.allclose(dwpe[:T], dout_pos.sum(axis=0)),
      "| rows p >= T untouched:", not dwpe[T:].any())


def input_forward(ids, pos, wte, wpe):
    """h0 = wte[ids] + wpe[pos], the input layer of GPT-1 and GPT-2, from the library's pieces."""
    tok_out, tok_cache = embedding_forward(ids, wte)   # (B, T, C)
    pos_out, pos_cache = learned_position_forward(pos, wpe)   # (B, T, C)
    return tok_out + pos_out, (tok_cache, pos_cache)   # (B, T, C)


def input_backward(dout, cache):
    tok_cache, pos_cache = cache
    # the sum hands the same dout (B, T, C) to both lookups
    return None, None, embedding_backward(dout, tok_cache), learned_position_backward(dout, pos_cache)


wte = 0.02 * rng.standard_normal((V, C))               # (V, C)
input_errors = check_gradients(input_forward, input_backward,
                               [ids_batch, np.broadcast_to(pos_ids, (B, T)), wte, wpe],
                               names=["ids", "pos", "wte", "wpe"])
print("h0 = wte[ids] + wpe[pos]:", {k: f"{v:.1e}" for k, v in input_errors.items()})

# %% [markdown]
# ## The sinusoidal encoding
#
# The original Transformer (Vaswani et al., 2017) used a fixed table instead, with nothing to learn. Channel pair
# $(2i, 2i+1)$ is a sine and a cosine of the position at the angular frequency $\omega_i = 10000^{-2i/C}$:
#
# $$ \text{PE}[p, 2i] = \sin(\omega_i\, p), \qquad \text{PE}[p, 2i+1] = \cos(\omega_i\, p). $$
#
# Each pair is a clock hand turning at its own speed: the first pair turns once every $2\pi \approx 6.3$ positions,
# the last ones once every ~$2\pi \cdot 10000$ positions. Fast hands tell neighbours apart, slow hands tell
# the beginning from the end, the way a binary counter's low and high bits do. Two properties follow from the formula:
#
# - **Moving by k is a rotation.** By the angle-addition formulas,
#   $$ \begin{pmatrix} \sin \omega_i (p+k) \\ \cos \omega_i (p+k) \end{pmatrix}
#      = \begin{pmatrix} \cos \omega_i k & \sin \omega_i k \\ -\sin \omega_i k & \cos \omega_i k \end{pmatrix}
#        \begin{pmatrix} \sin \omega_i p \\ \cos \omega_i p \end{pmatrix}, $$
#   so $\text{PE}[p + k] = M_k\, \text{PE}[p]$ with one matrix $M_k$ for every p: a linear map can express
#   "k positions back". RoPE (lesson 15) builds attention on exactly this rotation.
# - **Similarity depends only on distance.** $\text{PE}[p] \cdot \text{PE}[q] = \sum_i \cos\big(\omega_i (p - q)\big)$.
#
# It is also defined for every position, which is why Vaswani et al. chose it: learned positions *"produced nearly
# identical results"*, and the sinusoids *"may allow the model to extrapolate to sequence lengths longer than the ones
# encountered during training."* GPT-1 went the other way and learned its table. Here is the table from scratch, in a
# few lines, beside the library's `sinusoidal_encoding`.

# %%
T_pe, C_pe = (64, 32) if FAST else (128, 64)
p = np.arange(T_pe)                                    # (T,)
omega = 10000.0 ** (-np.arange(0, C_pe, 2) / C_pe)     # (C/2,) one frequency per channel pair
pe_np = np.zeros((T_pe, C_pe))                         # (T, C)
pe_np[:, 0::2] = np.sin(p[:, None] * omega)            # (T, C/2) even channels
pe_np[:, 1::2] = np.cos(p[:, None] * omega)            # (T, C/2) odd channels

pe = sinusoidal_encoding(p, C_pe, dtype="float64")     # (T, C)
pe32 = sinusoidal_encoding(p, C_pe)                    # (T, C) float32, the default
print("rel_error(from scratch, library):", f"{rel_error(pe_np, pe):.1e}", "| default dtype:", pe32.dtype)
pe_png = plot_positional_encoding(pe, "02_sinusoidal_encoding",
                                  title=f"sinusoidal position encoding, T={T_pe}, C={C_pe}",
                                  colorbar_label="PE[p, c] (sin or cos, in [-1, 1])", wspace=0.35)
print("saved", pe_png)

# %% [markdown]
# In the heatmap each column is one channel along the positions. The left columns (fast hands) flip sign every
# few positions; to the right the hands slow down until, over these T positions, they barely move: sine columns
# stay near 0 (white) and cosine columns near 1 (dark red), hence the stripes. Each row, one position's vector, is a
# unique pattern of fast and slow hands. (The curves on the right are four channels spread over the frequencies: from
# channel 0, a sine that turns once every 6.3 positions, to the last channel, a cosine so slow it barely leaves 1.)
#
# Now the two properties, numerically. $M_k$ is block diagonal with one 2×2 rotation per channel pair.

# %%
def shift_matrix(k, C):
    """M_k (C, C): PE[p + k] = M_k @ PE[p] for every p."""
    M = np.zeros((C, C))                               # (C, C)
    for i, w in enumerate(10000.0 ** (-np.arange(0, C, 2) / C)):
        c, s = np.cos(w * k), np.sin(w * k)
        M[2 * i:2 * i + 2, 2 * i:2 * i + 2] = [[c, s], [-s, c]]
    return M


k = 5
shifted = pe[:-k] @ shift_matrix(k, C_pe).T            # (T-k, C) every PE[p] rotated by M_k
print(f"max |PE[p+{k}] - M_{k} PE[p]| over all p:", f"{np.abs(shifted - pe[k:]).max():.1e}")

gram = pe @ pe.T                                       # (T, T) PE[p] . PE[q]
print(f"{'p':>4} {'PE[p].PE[p+1]':>14} {'PE[p].PE[p+8]':>14} {'PE[p].PE[p+32]':>15}")
for q in (0, 10, 20):
    print(f"{q:>4} {gram[q, q + 1]:14.6f} {gram[q, q + 8]:14.6f} {gram[q, q + 32]:15.6f}")
toeplitz = max(np.abs(np.diagonal(gram, d) - gram[0, d]).max() for d in range(T_pe))
print("largest change of PE[p].PE[p+d] along p, over all d:", f"{toeplitz:.1e}")

# %% [markdown]
# ## Who used what
#
# | model | positions | table size |
# |---|---|---|
# | Transformer (2017) | sinusoidal, fixed (learned tried: "nearly identical") | any length |
# | GPT-1 (2018) | **learned** (the textbook says sinusoidal) | 512 × 768 |
# | BERT (2018) | learned | 512 × 768 (base) |
# | GPT-2 (2019) | learned | 1024 × 768 .. 1600 |
# | GPT-3 (2020) | learned | 2048 × 12288 (175B) |
# | GLM (2022) | two learned tables, position and block position (lesson 19) | |
# | ChatGLM-6B | 2D RoPE: the same two ids, as rotations (lesson 21) | |
# | LLaMA, ChatGLM2, GLM-4 | RoPE: rotations inside attention, no table added (lesson 15) | |
#
# minigpt has both absolute kinds: `ModelConfig(positions="learned")` (the GPT presets) and `positions="sinusoidal"`.

# %% [markdown]
# ## Summary
# - An embedding lookup `W[ids]` is a linear layer on one-hot rows, so $dW = E^\top \text{dout}$: each row is the
#   **sum** of dout over the positions where its token occurs (scatter-add); rows of absent tokens get zero.
# - `dW[ids] += dout` silently keeps one contribution per repeated id; `np.add.at` or minigpt's bincount-based
#   `embedding_backward` add them all. The gradient check catches the difference.
# - Attention is order-blind, so positions are added to the token vectors. A learned table (GPT-1, GPT-2, GPT-3) is
#   just another embedding, trained only up to `max_seq_len`. The sinusoidal encoding is fixed, defined for any
#   position, turns a shift by k into a fixed rotation, and makes $\text{PE}[p]\cdot\text{PE}[q]$ a function of $p - q$.
# - GPT-1 learned its positions; the sinusoidal table is the original Transformer's.
#
# ## Exercises
# 1. Replace `naive_backward` by a Python loop over tokens, `for n: dW[ids_n] += dout_n`. Is it right? Time it
#    against `embedding_backward` for ids of shape (8, 1024) and V = 50257.
# 2. In a model with tied embeddings (GPT-1, GPT-2: the output head computes $h W_\text{te}^\top$), $W_\text{te}$ is
#    used twice. What is its total gradient?
# 3. Show that with $C$ channels the sinusoidal vectors all have the same norm. What is it?
# 4. Plot `gram` (the matrix of PE[p]·PE[q]) as an image. Why is it constant along diagonals, and why does it fall
#    off away from the main diagonal?

# %% [markdown]
# ## Check

# %%
assert out.shape == (1, 6, C_emb) and dW.shape == (V, C_emb)
assert rel_error(out_np, out) == 0.0 and rel_error(dW_np, dW) < 1e-15
assert np.allclose(dW_addat, dW, rtol=0, atol=1e-15)
once = [v for v in range(V) if (ids == v).sum() == 1]
assert np.allclose(dW_naive[once], dW[once])                               # unrepeated rows agree
two = dout[0, ids[0] == tian]                                               # (2, C) the two contributions of 天
assert np.allclose(dW[tian], two.sum(axis=0))                              # the scatter-add keeps both
assert any(np.allclose(dW_naive[tian], row) for row in two)                # the naive one keeps just one
assert set(emb_errors) == {"W"} and emb_errors["W"] < 1e-6
assert naive_errors["W"] > 1e-2
assert distinct < batch.size // 4                                           # repeats are the rule, not the exception
assert np.allclose(dwpe[:T], dout_pos.sum(axis=0)) and not dwpe[T:].any()
assert set(input_errors) == {"wte", "wpe"} and max(input_errors.values()) < 1e-6
assert pe.shape == (T_pe, C_pe) and pe32.dtype == np.float32 and pe.dtype == np.float64
assert rel_error(pe_np, pe) < 1e-12
assert np.array_equal(pe[0], np.tile([0.0, 1.0], C_pe // 2))               # sin 0 = 0, cos 0 = 1
assert np.allclose(pe[:, 0], np.sin(np.arange(T_pe)))                      # omega_0 = 1
assert np.abs(pe).max() <= 1.0
assert np.allclose(np.linalg.norm(pe, axis=1), np.sqrt(C_pe / 2))          # sin^2 + cos^2 = 1 per pair
assert np.abs(shifted - pe[k:]).max() < 1e-12                              # a shift is a rotation
assert toeplitz < 1e-10                                                     # PE[p].PE[q] depends on p - q only
assert pe_png.exists()
print("lesson 02 OK")
