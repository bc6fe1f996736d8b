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
# # Lesson 20 — GLM: a model trained on blank infilling, filling a [MASK]
#
# **You will learn**
# - the GLM model (General Language Model, 通用语言模型; Du et al., 2022): a GPT-2 decoder with two learned position
#   tables and a prefix attention mask, and what the textbook's "three differences" are differences from;
# - a whole-model gradient check with 2D positions and the prefix mask (float64);
# - training it on lesson 19's autoregressive blank infilling (自回归空白填充) with `minigpt.train`, and reading the
#   loss of Part B in three parts: the first token of a span, the tokens inside it, and the end token [E];
# - filling a [MASK] with `minigpt.generate.fill_mask`: Part A, Part B, the positions it uses, and what it writes;
# - how much the model reads the text on each side of a blank, and a shortcut it found: counting.
#
# **Time.** Training takes 2000 steps, about 2 minutes on 2 CPU cores (at most 5 on a busy machine). With
# `MINIGPT_FAST=1` it takes 30 steps and a few seconds: the model then has only learned which characters are common
# and when to stop, and the lesson prints what changes.

# %%
import os

# One BLAS thread: this lesson multiplies small matrices, where a second OpenBLAS thread costs more than it
# gives (measured here: 3x slower per step on 2 busy cores). Set before NumPy loads; your own setting wins.
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

import tempfile
import time

import numpy as np

from minigpt import Model, ModelConfig, cross_entropy
from minigpt.data import IGNORE_INDEX, GLMCollator
from minigpt.generate import fill_mask
from minigpt.gradcheck import check_model_gradients, move_off_init
from minigpt.train import GLM_SPECIALS, TrainOptions, evaluate, prepare, train_step
from minigpt.viz import plot_curves

FAST = os.environ.get("MINIGPT_FAST") == "1"

# %% [markdown]
# ## What the textbook says, and what the paper says
#
# The textbook introduces GLM's pretraining task (预训练任务) like this: *"GLM 是一种结合了自编码思想和自回归思想的预训练方法。"*
# Autoencoding is BERT's masked language model (MLM): recover what was hidden, reading both sides. Autoregression is
# GPT's causal language model (CLM): write tokens left to right. GLM combines the two in one task:
#
# > 其核心思想是，对于一个输入序列，会类似于 MLM 一样进行随机的掩码，但遮蔽的不是和 MLM 一样的单个 token，而是每次遮蔽一连串
# > token；模型在学习时，既需要使用遮蔽部分的上下文预测遮蔽部分，在遮蔽部分内部又需要以 CLM 的方式完成被遮蔽的 tokens 的预测。
#
# with the example `输入：I <MASK> because you <MASK>` and `输出：<MASK> - love you; <MASK> - are a wonderful person`.
# Lesson 19 built exactly that: Part A is the text with each span replaced by one [MASK] and is read
# bidirectionally; Part B writes each span after a start token [S], left to right, and ends it with [E].
#
# For the architecture the textbook lists *"三点细微差异"* from GPT: *"使用 Post Norm 而非 Pre Norm"*,
# *"使用单个线性层实现最终 token 的预测，而不是使用 MLP"*, and *"激活函数从 ReLU 换成了 GeLUs"*. Two corrections, from the
# paper itself. The three changes are the paper's changes to **BERT**'s Transformer, from which GLM starts: GPT
# already had GELU and a single linear head (lesson 08). And the first change is not post-norm: the paper rearranges
# LayerNorm and the residual connection the way Megatron-LM does, with LayerNorm at the input of each sublayer
# (pre-LN, lesson 11), which is what it credits with avoiding numerical errors in large models. Post-norm returned
# later, as DeepNorm, in GLM-130B and ChatGLM-6B (lesson 21).
#
# So against GPT-2, the original GLM changes exactly two things, both for the blank-infilling task:
# - **2D positions** (`positions="glm2d"`): two learned tables, one for the position id (where a span belongs) and
#   one for the block position id (how far into its span a token is), added to the token embedding;
# - **the prefix mask** (`attention="prefix"`): Part A attends bidirectionally to itself, Part B causally.

# %%
gpt2_cfg, glm_cfg = ModelConfig.preset("gpt2"), ModelConfig.preset("glm")
print(f"{'field':>16} {'gpt2':>10} {'glm':>10}")
for field in ("norm", "norm_placement", "final_norm", "activation", "positions", "attention", "tie_embeddings"):
    print(f"{field:>16} {str(getattr(gpt2_cfg, field)):>10} {str(getattr(glm_cfg, field)):>10}")

# %% [markdown]
# The model's `forward` takes the two position rows and `prefix_len` (the length of Part A, per row):
#
# $$ h_0 = W_e[u] + W_p[\text{pos}] + W_b[\text{block}], \qquad
#    M_{ij} = [\, j < \text{sep} \,] \lor [\, j \le i \,] , $$
#
# and the rest is GPT-2's pre-LN stack and tied head. The backward pass has nothing new either: the position rows
# scatter-add their gradient into two tables instead of one (lesson 02), and the mask only changes which scores are
# $-\infty$, so the softmax backward of lesson 04 is unchanged. The loss is lesson 19's: cross-entropy on Part B only.
#
# ## A whole-model gradient check
#
# A tiny GLM in float64, a batch of three made-up texts blanked by the collator, every parameter tensor checked against
# centered differences (lesson 08's `check_model_gradients`, with the position rows and `prefix_len` passed through to
# `forward`).

# %%
CHECK_SPECIAL = dict(mask=34, smask=35, gmask=36, sop=37, eop=38, pad=39)           # ids 0..33 are "text"
check_cfg = ModelConfig.preset("glm", n_layer=2, d_model=32, n_head=4, vocab_size=40, max_seq_len=16)
check_model = Model(check_cfg, seed=0, dtype="float64")
move_off_init(check_model)                                              # off the init: no trivially tiny path
rng = np.random.default_rng(0)
check_texts = [rng.integers(0, 34, n) for n in (11, 9, 12)]             # three texts of N tokens
check_batch = GLMCollator(CHECK_SPECIAL, length=16)(check_texts, seed=0)   # ids (3, 16), sep (3,)
print("sep (len of Part A) per row:", check_batch.sep.tolist())
print("row 0 ids     ", check_batch.ids[0].tolist())
print("row 0 targets ", check_batch.targets[0].tolist())
grad_errors = check_model_gradients(check_model, check_batch.ids, check_batch.targets, entries=4 if FAST else 10,
                                    position_ids=check_batch.position_ids,
                                    block_position_ids=check_batch.block_position_ids, prefix_len=check_batch.sep)
worst = max(grad_errors, key=grad_errors.get)
print(f"{len(grad_errors)} tensors checked, including wpe and wbpe; worst rel_error {grad_errors[worst]:.1e} ({worst})")

# %% [markdown]
# ## Training on blank infilling
#
# `minigpt.train` does it all with `objective="glm"`: the character tokenizer of the built-in corpus plus GLM's six
# special tokens, random windows of the training text, and for each window lesson 19's collator (spans of Poisson(3)
# length until 15% is hidden, Part B in a random order). A window of $N$ characters with $m$ spans becomes $N + 2m$
# ids, so for sequences of 24 ids the windows hold $N = 17$ characters. We use 2 layers, $C = 64$, 4 heads and
# batches of 64 texts; the step is `minigpt.train.train_step` (lesson 09's step, with the GLM loss), and
# `evaluate` measures the Part B loss on the same held-out texts, blanked the same way, every time.

# %%
STEPS = 30 if FAST else 2000
EVAL_EVERY = 10 if FAST else 200
SEQ_LEN = 24
workdir = tempfile.TemporaryDirectory()
run = prepare(TrainOptions(preset="glm", objective="glm", steps=STEPS, batch_size=64, seq_len=SEQ_LEN, lr=3e-3,
                           eval_batches=4, out=workdir.name, progress=False, model=dict(n_layer=2)))
model, tok = run.model, run.tokenizer
special = {name: tok.special_tokens[token] for name, token in GLM_SPECIALS.items()}   # {"mask": id, ...}
TEXT_LEN = run.sampler.seq_len + 1                                      # characters per training text
V = tok.vocab_size
print(f"V = {V} ({V - len(special)} characters + {len(special)} specials: {list(GLM_SPECIALS.values())})")
print(f"{model.num_params():,} parameters; texts of {TEXT_LEN} characters -> at most {SEQ_LEN} ids")

history = {"step": [], "loss": [], "val_step": [0], "val": [evaluate(run)]}
start = time.perf_counter()
for step in range(STEPS):
    loss, norm, lr = train_step(run)                                    # one AdamW step on a GLM batch
    history["step"].append(step + 1)
    history["loss"].append(loss)
    if (step + 1) % EVAL_EVERY == 0 or step + 1 == STEPS:
        history["val_step"].append(step + 1)
        history["val"].append(evaluate(run))
seconds = time.perf_counter() - start
print(f"{STEPS} steps in {seconds:.0f} s; Part B loss on held-out text: "
      + ", ".join(f"step {s}: {v:.3f}" for s, v in zip(history["val_step"], history["val"])
                  if s in (0, STEPS) or s % (5 * EVAL_EVERY) == 0))
window = min(50, STEPS // 5)
smooth = np.convolve(history["loss"], np.ones(window) / window, mode="valid")   # (S - window + 1,)
curve_png = plot_curves({"train (Part B, each step)": (np.array(history["step"]), np.array(history["loss"])),
                         f"train (mean of {window})": (np.arange(window, STEPS + 1), smooth),
                         "validation (Part B)": (np.array(history["val_step"]), np.array(history["val"]))},
                        "20_glm_loss", xlabel="step", ylabel="cross-entropy on Part B (nats per token)",
                        title=f"GLM, {model.config.n_layer} layers, C = {model.config.d_model}: blank infilling")
print("saved", curve_png)

# %% [markdown]
# ## What did it learn? Part B in three parts
#
# One number hides three different tasks. For the **first** token of a span the model sees [S] at the blank's
# position and must look back into Part A, at the characters on both sides of the [MASK], to guess what begins there.
# **Inside** a span it also sees the span's previous character, as a CLM does. At the **end** it must predict [E]:
# decide that the span is complete. We split the held-out loss with three loss masks.

# %%
model.eval()
val_tokens = run.val_tokens


def val_texts(length, n=256):
    """n consecutive held-out texts of `length` characters."""
    return [val_tokens[i:i + length] for i in range(0, n * length, length)]


def part_b_losses(texts, seed=0, corrupt=None):
    """Held-out Part B loss split into first / inside / end tokens, for texts blanked with a fixed seed.
    corrupt(ids, sep) may change Part A's ids in place before the forward."""
    batch = run.collator(texts, seed=seed)
    ids = batch.ids.copy()                                               # (B, T)
    if corrupt is not None:
        corrupt(ids, batch.sep)
    logits = model.forward(ids, position_ids=batch.position_ids, block_position_ids=batch.block_position_ids,
                           prefix_len=batch.sep)                          # (B, T, V)
    counted = batch.targets != IGNORE_INDEX                              # (B, T) Part B, not padding
    first = counted & (batch.ids == special["sop"])                      # input [S]: predict the first token
    end = counted & (batch.targets == special["eop"])                    # target [E]
    parts = {"first": first, "inside": counted & ~first & ~end, "end [E]": end, "all": counted}
    return {name: cross_entropy(logits, batch.targets, loss_mask=mask)[0] for name, mask in parts.items()}


trained = part_b_losses(val_texts(TEXT_LEN))
freqs = np.bincount(run.train_tokens, minlength=V) / len(run.train_tokens)      # (V,)
unigram = float(-(freqs[freqs > 0] * np.log(freqs[freqs > 0])).sum())
print("held-out Part B loss: " + ", ".join(f"{k} {v:.3f}" for k, v in trained.items()))
print(f"(log V = {np.log(V):.3f}; a model that knows only the character frequencies: {unigram:.3f})")

# %% [markdown]
# The ending is the easiest part by far, the first token the hardest. Is the model really reading Part A around the
# blank? Destroy the two characters just **left** of every [MASK] (replace them by random characters), then
# the two just **right** of it, and measure again. A model that ignores one side would not notice.

# %%
def scramble(side):
    """A corrupt() for part_b_losses: the two characters on one side of each [MASK] become random ones."""
    noise = np.random.default_rng(1)

    def corrupt(ids, sep):
        for b in range(ids.shape[0]):
            for i in np.flatnonzero(ids[b, :sep[b]] == special["mask"]):
                for j in ((i - 1, i - 2) if side == "left" else (i + 1, i + 2)):
                    if 0 <= j < sep[b] and ids[b, j] != special["mask"]:
                        ids[b, j] = noise.integers(0, V - len(special))   # a random character, not a special
    return corrupt


sides = {"intact": trained, "left 2 scrambled": part_b_losses(val_texts(TEXT_LEN), corrupt=scramble("left")),
         "right 2 scrambled": part_b_losses(val_texts(TEXT_LEN), corrupt=scramble("right"))}
print(f"{'Part A':>18} {'first':>7} {'inside':>7} {'end [E]':>8}")
for name, losses in sides.items():
    print(f"{name:>18} {losses['first']:7.3f} {losses['inside']:7.3f} {losses['end [E]']:8.3f}")
left_cost = sides["left 2 scrambled"]["first"] - trained["first"]
right_cost = sides["right 2 scrambled"]["first"] - trained["first"]
print(f"first-token loss: +{left_cost:.2f} nats without the left context, +{right_cost:.2f} without the right")
if FAST:
    print("(FAST run: 30 steps do not teach the model to look at Part A yet, so both costs are about 0)")

# %% [markdown]
# Both sides matter: the first character of a span costs more when either neighbour is scrambled, so the model
# reads Part A in both directions, which a CLM cannot do. The left side matters several times more than the right
# at this size and budget: continuing a word from its start is the easier lesson, and it is learned first (the
# inside tokens, which only need the span's own previous character, are better than the first token for the same
# reason).
#
# ## A shortcut: the model counts
#
# Why is [E] so easy? Every training text has exactly the same length, 17 characters. Part A shows how many of them
# are left visible, so the number hidden is $17 - (|A| - m)$: with one blank, that **is** the span's length. Lesson 19
# kept the length out of the positions (every Part B token sits at its blank's position), but the length of the
# window gives it away, and a model that can count the tokens of Part A (an attention head that spreads evenly over
# Part A reads off $1/|A|$) can predict [E] without understanding anything. Test it: the same held-out text, cut to
# other lengths.

# %%
LENGTHS = [TEXT_LEN - 4, TEXT_LEN - 2, TEXT_LEN - 1, TEXT_LEN]
by_length = {n: part_b_losses(val_texts(n)) for n in LENGTHS}
print(f"{'text length':>12} {'first':>7} {'inside':>7} {'end [E]':>8}")
for n, losses in by_length.items():
    mark = "  <- the training length" if n == TEXT_LEN else ""
    print(f"{n:>12} {losses['first']:7.3f} {losses['inside']:7.3f} {losses['end [E]']:8.3f}{mark}")
if FAST:
    print("(FAST run: the count is not learned in 30 steps; the [E] loss hardly depends on the length yet)")

# %% [markdown]
# One character less and the [E] loss jumps from about 0.2 to about 4 nats, while the first and inside tokens barely
# change: the model's sense of where a span ends is a count, not a reading. It found the cheapest signal in its data,
# and nothing in the loss tells it not to. The real GLM trains on texts of 512 tokens with many spans each
# (15% of 512 is about 77 tokens, some 25 spans of Poisson(3) length), where the total says little about any one span.
# Texts of random length remove the shortcut altogether (exercise 2).
#
# ## Filling a [MASK]
#
# `fill_mask(model, ids, mask_id, sop_id, eop_id)` runs the generation side of the same layout: Part A is the sentence
# with one [MASK], position ids $0 \dots n-1$ and block position 0, read bidirectionally (`prefix_len` $= n$); then
# [S] at the [MASK]'s position $m$ with block position 1, and every token the model writes at position $m$ with block
# positions $2, 3, \dots$, each fed back through a KV cache (lesson 12's generation, with a prefix), greedily, until it
# writes [E]. We take a sentence of the training length so that the count above points to the true span length.

# %%
SENTENCE, HIDDEN = "the object is not", "jec"                          # 17 characters, "jec" blanked
assert len(SENTENCE) == TEXT_LEN and HIDDEN in SENTENCE
left, right = SENTENCE.split(HIDDEN)
part_a = tok.encode(left) + [special["mask"]] + tok.encode(right)      # (n,) the sentence with one [MASK]
n, m = len(part_a), part_a.index(special["mask"])
filled = fill_mask(model, part_a, special["mask"], special["sop"], special["eop"], max_new_tokens=SEQ_LEN - n - 1)

ids = part_a + [special["sop"]] + filled                                # what the model saw, in order


def show_token(t):
    """One token as a table cell: '[MASK]', '<sop>', or the character (a space shown as '_')."""
    text = tok.decode([int(t)])
    return "_" if text == " " else repr(text)[1:-1]


names = [show_token(t) for t in ids]
table = {"part": ["A"] * n + ["B"] * (len(ids) - n), "input": names,
         "position": list(range(n)) + [m] * (len(ids) - n),
         "block position": [0] * n + list(range(1, len(ids) - n + 1))}
for label, cells in table.items():
    print(f"{label:>15} " + " ".join(f"{str(c):>5}" for c in cells))
stopped = len(filled) < SEQ_LEN - n - 1
print(f"\nPart A: {tok.decode(part_a)!r}   the [MASK] is at position m = {m}")
print(f"the model writes {tok.decode(filled)!r}" + (" and then [E]" if stopped else " (and had no room for [E])")
      + f"; the hidden text was {HIDDEN!r}")

first_logits = model.forward(np.array([part_a + [special["sop"]]]), position_ids=np.array([list(range(n)) + [m]]),
                             block_position_ids=np.array([[0] * n + [1]]), prefix_len=n)[0, -1]   # (V,)
probs = np.exp(first_logits - first_logits.max())
probs /= probs.sum()
top = np.argsort(-probs)[:5]
print("first token, top 5:", ", ".join(f"{show_token(t)} {probs[t]:.2f}" for t in top))

# %% [markdown]
# The table is lesson 19's layout for one blank: Part A counts positions $0 \dots n-1$, and everything in Part B sits at
# the [MASK]'s position with block positions $1, 2, \dots$. The first row of the top-5 list is what `fill_mask`
# computes at its first step (the prefill over Part A and [S]).
#
# And the count, seen from the outside: the same blank in the same words, with the sentence cut short or made
# longer. The model writes about as many characters as the training length leaves for it.

# %%
variants = ["the ob[MASK]t is not", "the ob[MASK]t is", "the ob[MASK]t", "an exc[MASK]ion is r",
            "is eq[MASK]ent to x"]
fills = {}
for text in variants:
    a, b = text.split("[MASK]")
    ids_v = tok.encode(a) + [special["mask"]] + tok.encode(b)
    fills[text] = tok.decode(fill_mask(model, ids_v, special["mask"], special["sop"], special["eop"],
                                       max_new_tokens=SEQ_LEN - len(ids_v) - 1))
    print(f"{text!r:>26}: {len(a) + len(b):>2} visible characters, {TEXT_LEN - len(a) - len(b)} left of {TEXT_LEN}"
          f" -> writes {len(fills[text])}: {fills[text]!r}")
if FAST:
    print("(FAST run: 30 steps teach the common characters and how long spans tend to be, not words and not the "
          "count: the fills are guesses)")
workdir.cleanup()

# %% [markdown]
# In the default run the model fills the sentence of the training length exactly ('jec'), with [E] in the right
# place. For the other sentences it starts the word sensibly ('ject...', 'ect' where 'ept' was hidden) and then writes
# however many characters the count leaves, whatever the words after the blank say. A 110k-parameter model, two
# minutes of training, texts of 17 characters: enough to see every part of GLM at work, including the way a model
# takes the easiest path its data allows.
#
# The textbook closes its GLM section with a verdict: *"ChatGLM 系列模型也仅在第一代模型使用了 GLM 的预训练思想，从 ChatGLM2 开始，还是回归了传统的 CLM 建模。"*
# The primary source is less clear-cut: ChatGLM2-6B's README says *"ChatGLM2-6B 使用了 GLM 的混合目标函数"* (GLM's
# hybrid objective). What is certain is the architecture: ChatGLM2 and GLM-4 attend causally, with no bidirectional
# Part A, and have no block positions (lesson 21).

# %% [markdown]
# ## Summary
# - GLM = GPT-2's pre-LN decoder + two learned position tables (position, block position) + the prefix mask. The
#   textbook's three differences are differences from BERT, and the paper is pre-LN; post-norm came with GLM-130B.
# - Its gradient check needs nothing new: the position rows and `prefix_len` go through `forward`, every tensor
#   passes in float64.
# - `minigpt.train` with `objective="glm"` trains it; the Part B loss splits into first tokens (read Part A at
#   the blank), inside tokens (CLM-like), and [E].
# - Scrambling either side of the blank raises the first-token loss: the model reads both directions.
# - Fixed-length training texts leak each span's length through $|A|$; the tiny model learned to count, and its
#   [E] loss jumps when the text length changes.
# - `fill_mask` writes a span at the [MASK]'s position with block positions 1, 2, ... until [E].
#
# ## Exercises
# 1. Give `fill_mask` a sentence with the blank at the very start, and one with it at the very end. Which does the
#    model fill better, and how does that fit the left/right measurement above?
# 2. Remove the shortcut: write a training loop (lesson 09's, with `run.collator` and the loss of `part_b_losses`)
#    whose texts have random lengths between 8 and 17 characters. Measure the table of text lengths again.
# 3. Train the same model as a CLM (`preset="gpt2"`, same size, same steps) and compare its loss on the same
#    characters. Why is that comparison unfair in both directions?
# 4. Use `mode="generation"` in the collator ([gMASK], one long span at the end). What does Part B become, and what is
#    the relation to lesson 09's training?

# %% [markdown]
# ## Check

# %%
assert max(grad_errors.values()) < 1e-6, grad_errors                   # every tensor of the glm preset
assert set(grad_errors) == set(check_model.params) and {"wpe", "wbpe"} <= set(grad_errors)
assert all((check_batch.targets[b, :sep] == IGNORE_INDEX).all() for b, sep in enumerate(check_batch.sep))
assert abs(history["val"][0] - np.log(V)) < 0.3, history["val"][0]      # untrained: about a uniform guess
assert history["val"][-1] < (0.8 if FAST else 0.45) * history["val"][0], history["val"]   # FAST: -20%; default: -55%
assert trained["end [E]"] < trained["first"]                            # stopping is easier than starting
assert all(0 < len(f) <= SEQ_LEN for f in fills.values())
if not FAST:                                                            # what 30 steps cannot show
    assert left_cost > 0.3 and right_cost > 0.05, (left_cost, right_cost)   # both sides of the blank are read
    assert by_length[TEXT_LEN - 1]["end [E]"] > 5 * by_length[TEXT_LEN]["end [E]"]   # the count
    assert trained["first"] < unigram - 0.3                             # it uses the context for the first token
assert curve_png.exists()
print("lesson 20 OK")
