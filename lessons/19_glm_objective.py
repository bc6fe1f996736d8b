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
# # Lesson 19 — The GLM objective: autoregressive blank infilling
#
# **You will learn**
# - GLM's pretraining objective, autoregressive blank infilling (自回归空白填充): blank out spans of a text,
#   then write them back one token at a time;
# - how one sequence holds both halves, Part A (the corrupted text) and Part B (the spans), and why the
#   spans come in a random order;
# - GLM's 2D positions: a position id that says *where* a span goes and a block position id that says
#   *how far into the span* a token is;
# - the prefix attention mask (bidirectional over Part A, causal over Part B), drawn for the paper's own example, and
#   the textbook's example "I <MASK> because you <MASK>" built by the same code;
# - the three ways GLM chooses spans: short spans ([MASK]), whole sentences ([sMASK]), one long tail ([gMASK]).
#
# BERT fills blanks but predicts the hidden tokens independently of each other; GPT predicts every token
# from the left only. GLM (Du et al., 2022) does both in one objective: it reads the damaged text in full,
# like BERT, and writes each missing span left to right, like GPT.

# %%
import os
from collections import Counter

import matplotlib.pyplot as plt
import numpy as np

from minigpt.data import IGNORE_INDEX, glm_collate, glm_sample, load_corpus, poisson_length_pmf
from minigpt.layers.loss import cross_entropy
from minigpt.masks import prefix_mask
from minigpt.viz import plot_mask, save_figure

FAST = os.environ.get("MINIGPT_FAST") == "1"

# %% [markdown]
# ## The objective
#
# Take a text $x = [x_1, \dots, x_n]$ and choose spans $\{s_1, \dots, s_m\}$ of it, each a run of
# consecutive tokens $s_i = [s_{i,1}, \dots, s_{i,l_i}]$. Replace every span by ONE mask token: that is
# the corrupted text $x_{\text{corrupt}}$, **Part A**. Draw a random order $z$ of the $m$ spans
# ($Z_m$ = all permutations of $1..m$) and train the model to write the spans back in that order:
#
# $$ \max_\theta \; \mathbb{E}_{z \sim Z_m} \Big[ \sum_{i=1}^{m} \log p_\theta\big(s_{z_i} \mid x_{\text{corrupt}},\, s_{z_1}, \dots, s_{z_{i-1}}\big) \Big] $$
#
# and inside each span, token by token, autoregressively:
#
# $$ p_\theta(s_i \mid x_{\text{corrupt}}, s_{z_{<i}}) = \prod_{j=1}^{l_i} p\big(s_{i,j} \mid x_{\text{corrupt}},\, s_{z_{<i}},\, s_{i,<j}\big). $$
#
# **Part B** is the spans written out: each span gets a start token [S] (`sop`) in front as input and an end
# token [E] (`eop`) after it as target, so the model learns to stop. The shuffled order matters: the model must
# be ready to write any span with any subset of the others already known, which is what lets one model do
# cloze questions, fill in the middle of a document and generate a continuation.
#
# **Attention.** Part A tokens see all of Part A (bidirectional) but nothing of Part B; Part B tokens see
# all of Part A and the Part B tokens up to themselves (causal). With $\text{sep} = |A|$, query $i$ may attend key $j$ when
#
# $$ M_{ij} = [\, j < \text{sep} \,] \lor [\, j \le i \,] , $$
#
# the prefix mask of `minigpt.masks.prefix_mask`. It is exactly what a GPT's causal mask would be, with the
# upper triangle of the first sep × sep block opened up.
#
# **2D positions.** Each token carries two ids, added as two learned embeddings:
# - position id: Part A counts $0, 1, \dots, |A|-1$; a Part B token takes the position of its span's mask in Part A;
# - block position id: 0 in Part A; inside a Part B span $1, 2, \dots, l_i + 1$ ([S] is 1).
#
# The model therefore knows where a span belongs but not how long it is: the length is not leaked, and the
# model decides when to write [E].
#
# **The loss and its gradient.** Only Part B is predicted. With the loss mask $m_t = [t \ge \text{sep}]$, the mean
# cross-entropy over the $N_B = \sum_t m_t$ counted positions is
#
# $$ L = \frac{1}{N_B} \sum_t m_t \,\big(-\log \operatorname{softmax}(z_t)[y_t]\big), \qquad
#    \frac{\partial L}{\partial z_t} = \frac{m_t}{N_B}\,\big(\operatorname{softmax}(z_t) - \text{onehot}(y_t)\big), $$
#
# the gradient of lesson 07, multiplied by the mask: Part A rows and padding get exactly zero gradient
# (their information reaches the loss only through attention from Part B).

# %% [markdown]
# ## The paper's example
#
# GLM's Figure 2: $x = [x_1, \dots, x_6]$, spans $\{x_3\}$ and $\{x_5, x_6\}$, and the shuffled order writes
# $\{x_5, x_6\}$ first. We give the collator those spans and that order explicitly (normally it draws both).
# Token ids are made up: $x_k$ is id $10+k$, and the special tokens get their own ids.

# %%
SPECIAL = dict(mask=1, smask=2, gmask=3, sop=4, eop=5, pad=0)
NAMES = {0: "[pad]", 1: "[M]", 2: "[sM]", 3: "[gM]", 4: "[S]", 5: "[E]", IGNORE_INDEX: "-"}
NAMES.update({10 + k: f"x{k}" for k in range(1, 7)})

x = [11, 12, 13, 14, 15, 16]                                   # x1 .. x6
sample = glm_sample(x, SPECIAL, spans=[(2, 3), (4, 6)], order=[1, 0])   # {x3} = x[2:3], {x5, x6} = x[4:6]
L = len(sample.ids)


def show(sample, names):
    """Print a sample as a table: one column per token."""
    rows = [("part", ["A"] * sample.sep + ["B"] * (len(sample.ids) - sample.sep)),
            ("input", [names[t] for t in sample.ids.tolist()]),
            ("target", [names[t] for t in sample.targets.tolist()]),
            ("position", sample.position_ids.tolist()),
            ("block position", sample.block_position_ids.tolist())]
    width = max(5, *(len(str(c)) for _, cells in rows for c in cells))  # one column per token, wide enough for all
    for label, cells in rows:
        print(f"{label:>15} " + " ".join(f"{str(c):>{width}}" for c in cells))


show(sample, NAMES)
print("sep = len(Part A) =", sample.sep, "| Part B order:", sample.spans)

# %% [markdown]
# The paper counts positions from 1 (Part A `1 2 3 4 5`, Part B `5 5 5 3 3`); we count from 0, like every
# array index in this course. The block positions `1 2 3 | 1 2` restart with each span.
#
# Now the attention mask, built from sep alone, and a picture of it beside the two position rows.

# %%
mask = prefix_mask(L, sample.sep)                               # (T, T) boolean, True = may attend
labels = [NAMES[t] for t in sample.ids.tolist()]
mask_png = plot_mask(mask, "GLM's mask for the paper's example (Part A | Part B)", "19_glm_paper_mask",
                     row_labels=labels, col_labels=labels, boundary=sample.sep,
                     boundary_label=f"sep = {sample.sep}: Part A | Part B")

fig, ax = plt.subplots(figsize=(1.0 + 0.6 * L, 2.2))
rows = np.stack([sample.position_ids, sample.block_position_ids])   # (2, T)
ax.imshow(rows, cmap="Blues", vmin=-1, vmax=rows.max() + 1, aspect="auto")
for r in range(2):
    for t in range(L):
        ax.text(t, r, str(rows[r, t]), ha="center", va="center",
                color="white" if rows[r, t] > 0.6 * rows.max() else "black")
ax.axvline(sample.sep - 0.5, color="crimson", linewidth=2)         # the Part A | Part B boundary
ax.set_xticks(range(L))
ax.set_xticklabels(labels)
ax.set_yticks([0, 1])
ax.set_yticklabels(["position id", "block position id"])
ax.set_title("GLM's 2D positions (red line: sep)")
rows_png = save_figure(fig, "19_glm_paper_positions")
print("saved", mask_png, "and", rows_png)
print("\n".join("".join("#" if m else "." for m in row) + "   " + lab for row, lab in zip(mask, labels)))

# %% [markdown]
# Read the picture row by row; the red lines are sep, where Part A ends. The five Part A rows (above the line) are
# blue over the first five columns only, so $x_1$ already sees both masks and $x_4$, and nothing right of the line;
# the Part B rows (below it) see all of Part A and add a growing triangle: the first [S] sees Part A and itself,
# $x_6$ sees Part A, [S] and $x_5$, and so on.
#
# ## The textbook's example
#
# The chapter explains the objective as MLM and CLM joined: *"所谓自编码思想，其实也就是 MLM 的任务学习思路，在输入文本中
# 随机删除连续的 tokens，要求模型学习被删除的 tokens；所谓自回归思想，其实就是传统的 CLM 任务学习思路，也就是要求模型按顺序
# 重建连续 tokens"* (the autoencoding idea is MLM's: delete runs of tokens and learn to recover them; the autoregressive
# idea is CLM's: rebuild them in order). Its example:
#
# ```
# 输入：I <MASK> because you <MASK>
# 输出：<MASK> - love you; <MASK> - are a wonderful person
# ```
#
# The collator builds exactly that, with words as tokens: the two spans become one mask each in Part A, and Part B
# writes them back, one word at a time.

# %%
sentence = "I love you because you are a wonderful person".split()
word_ids = {w: 10 + i for i, w in enumerate(dict.fromkeys(sentence))}     # ids 0..9 are the specials
book_names = {**NAMES, **{i: w for w, i in word_ids.items()}, SPECIAL["mask"]: "<MASK>"}
book = glm_sample([word_ids[w] for w in sentence], SPECIAL, spans=[(1, 3), (5, 9)], order=[0, 1])
book_input = " ".join(book_names[t] for t in book.ids[:book.sep].tolist())
book_spans = [" ".join(sentence[b:e]) for b, e in book.spans]             # in Part B order
print("Part A (输入):", book_input)
print("Part B (输出):", "; ".join(f"<MASK> - {span}" for span in book_spans))
show(book, book_names)
#
# ## The loss touches Part B only
#
# Push random logits through the cross-entropy of lesson 07 with the targets and loss mask of the sample:
# the gradient rows of Part A are zero, as the derivation said.

# %%
rng = np.random.default_rng(0)
V = 17                                                          # ids 0..16 cover the specials and x1..x6
logits = rng.standard_normal((1, L, V))                         # (B, T, V)
loss, dlogits = cross_entropy(logits, sample.targets[None], loss_mask=sample.loss_mask[None])
row_norms = np.abs(dlogits[0]).sum(axis=-1)                     # (T,)
print(f"loss {loss:.3f} (uniform guessing would give log V = {np.log(V):.3f})")
print("gradient per position:", np.round(row_norms, 3).tolist())

# %% [markdown]
# ## Random spans on real text
#
# In training the collator draws everything. Span mode: lengths from a Poisson distribution with
# $\lambda = 3$, kept to $1..39$ and renormalized, drawn until at least 15% of the tokens are covered; the spans are
# placed so they never overlap or touch (two masks in a row would hide where one span ends), and Part B
# takes them in a random order. We take a passage of the built-in corpus (CPython's documentation) and cut it
# into words, a word-level tokenizer that keeps the picture readable (a real run uses lesson 10's BPE).

# %%
corpus = load_corpus("builtin")
start = corpus.index("Any object can be tested for truth value")
words = corpus[start:].split()[:60]
vocab = {w: 10 + i for i, w in enumerate(sorted(set(words)))}   # ids 0..9 stay free for the specials
word_names = dict(NAMES)
word_names.update({i: w for w, i in vocab.items()})
tokens = np.array([vocab[w] for w in words])                      # (N,)


def as_text(ids):
    return " ".join(word_names[t] for t in ids)


for mode in ("span", "sentence", "generation"):
    s = glm_sample(tokens, SPECIAL, mode=mode, seed=7,
                   sentence_end_ids=[i for w, i in vocab.items() if w.endswith((".", ":"))])
    hidden = sum(e - b for b, e in s.spans)
    print(f"--- {mode} mode: {len(s.spans)} spans, {hidden}/{len(tokens)} tokens = {hidden / len(tokens):.0%} hidden")
    print("Part A:", as_text(s.ids[:s.sep].tolist()))
    j = s.sep
    for b, e in s.spans:                                          # in Part B order
        inputs, targets = s.ids[j:j + e - b + 1].tolist(), s.targets[j:j + e - b + 1].tolist()
        assert targets == inputs[1:] + [SPECIAL["eop"]]            # each target is the next input, then [E]
        print(f"  Part B, position {s.position_ids[j]:>2}: {as_text(inputs)}   (targets: the same shifted, then [E])")
        j += e - b + 1

# %% [markdown]
# Sentence mode ([sMASK]) hides whole sentences (here: runs of words ending in '.' or ':'), again until 15% is
# covered; generation mode ([gMASK]) hides one span at the end, 50%..100% of the text, so Part B is a plain
# left-to-right continuation of Part A: with the whole text hidden it is exactly GPT's objective.
#
# Do the span lengths follow the truncated Poisson? Sample many texts and count.

# %%
n_texts = 200 if FAST else 2000
long_text = np.array([vocab[w] for w in corpus[start:].split()[:60]] * 10)   # 600 tokens
lengths, fractions = Counter(), []
for seed in range(n_texts):
    s = glm_sample(long_text, SPECIAL, seed=seed)
    lengths.update(e - b for b, e in s.spans)
    fractions.append(sum(e - b for b, e in s.spans) / len(long_text))
total = sum(lengths.values())
pmf = poisson_length_pmf(3.0, 39)
print(f"{'length':>6} {'observed':>9} {'Poisson(3) on 1..39':>20}")
for l in range(1, 9):
    print(f"{l:>6} {lengths[l] / total:9.3f} {pmf[l - 1]:20.3f}")
print(f"hidden fraction: min {min(fractions):.3f}, mean {np.mean(fractions):.3f} (at least 0.15 by construction)")

# %% [markdown]
# A batch pads samples of different lengths (a text of N tokens with m spans becomes N + 2m ids): ids with
# the pad id, targets with -100 (ignored by the loss), loss mask 0, and `sep` per row for the prefix mask.

# %%
texts = [tokens[:20], tokens[20:45], tokens[45:]]
batch = glm_collate([glm_sample(t, SPECIAL, seed=k) for k, t in enumerate(texts)], pad_id=SPECIAL["pad"])
batch_mask = prefix_mask(batch.ids.shape[1], batch.sep)            # (B, T, T)
print("ids", batch.ids.shape, "| sep", batch.sep.tolist(), "| mask", batch_mask.shape,
      "| counted targets per row", batch.loss_mask.sum(axis=1).tolist())

# %% [markdown]
# ## Summary
# - Autoregressive blank infilling (自回归空白填充): Part A is the text with each span replaced by one mask;
#   Part B writes the spans, in a random order, each as [S] + span predicted as span + [E].
# - One prefix mask does both jobs: bidirectional attention over Part A, causal over Part B.
# - Two position rows: the position of the span's mask (where it goes), and 1..l+1 inside the span (how far in).
# - Spans: Poisson(3) lengths until 15% ([MASK]), whole sentences ([sMASK]), or one long tail ([gMASK], GPT-like).
# - The textbook's "I <MASK> because you <MASK>" is one such sample: two spans, each one mask in Part A, written back
#   word by word in Part B.
# - The loss counts Part B only; Part A rows get zero gradient.
#
# ## Exercises
# 1. Give the paper's example the other order (`order=[0, 1]`). Which rows of the table change, and which stay?
# 2. Why would two touching spans be a problem in span mode but not in sentence mode?
# 3. Replace the position of a Part B token by its own index in the sequence (like GPT). What could the model then
#    learn about the span's length, and why is that cheating at test time?
# 4. In the batch above, the padding positions get causal rows of the prefix mask and so attend to real tokens.
#    Why does that never change the loss or the gradient of the real tokens?

# %% [markdown]
# ## Check

# %%
assert sample.ids.tolist() == [11, 12, 1, 14, 1, 4, 15, 16, 4, 13]
assert sample.targets.tolist() == [IGNORE_INDEX] * 5 + [15, 16, 5, 13, 5]
assert sample.position_ids.tolist() == [0, 1, 2, 3, 4, 4, 4, 4, 2, 2]
assert sample.block_position_ids.tolist() == [0, 0, 0, 0, 0, 1, 2, 3, 1, 2]
by_hand = np.zeros((L, L), dtype=bool)                         # (T, T)
by_hand[:, :5] = True                                          # everyone sees Part A
by_hand[5:, 5:] = np.tril(np.ones((L - 5, L - 5), dtype=bool))  # Part B is causal within itself
assert (mask == by_hand).all()
assert (row_norms[:sample.sep] == 0).all() and (row_norms[sample.sep:] > 0).all()
assert min(fractions) >= 0.15
assert abs(sum(l * c for l, c in lengths.items()) / total - 3 / (1 - np.exp(-3))) < 0.2   # E[L | L >= 1]
assert book_input == "I <MASK> because you <MASK>"                  # the chapter's 输入
assert book_spans == ["love you", "are a wonderful person"]         # the chapter's 输出, in order
assert book.sep == 5 and len(book.ids) == book.sep + sum(e - b + 1 for b, e in book.spans)
assert mask_png.exists() and rows_png.exists()
print("lesson 19 OK")
