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
# # Lesson 07 — Cross-entropy and the causal language modelling objective
#
# **You will learn**
# - the causal language modelling objective (因果语言模型 CLM): predict every token from the tokens before it;
# - shifted targets: how one text of $T + 1$ tokens gives $T$ training examples in one forward pass;
# - the cross-entropy loss, the stable log-softmax (and the overflow of the naive one);
# - the gradient $\operatorname{softmax}(z) - \text{onehot}(y)$, derived and checked;
# - `ignore_index` and loss masks: padding, and counting only some tokens;
# - a first training run: a bigram model whose loss falls to a floor we can compute by hand.
#
# (The textbook spells the objective "Casual Language Model"; the term is *causal*: each prediction may depend only
# on what came before it, as an effect depends on its causes.)

# %%
import os

import numpy as np

from minigpt.data import IGNORE_INDEX
from minigpt.data.batches import windows
from minigpt.gradcheck import check_gradients, rel_error
from minigpt.layers.embedding import embedding_backward, embedding_forward
from minigpt.layers.loss import cross_entropy, log_softmax
from minigpt.tokenizers import CharTokenizer
from minigpt.viz import plot_curves

FAST = os.environ.get("MINIGPT_FAST") == "1"
rng = np.random.default_rng(0)

# %% [markdown]
# ## The objective
#
# A causal language model factorizes the probability of a text $x_1, \dots, x_n$ left to right, by the chain rule
# of probability:
#
# $$ p(x_1, \dots, x_n) = \prod_{t=1}^{n} p(x_t \mid x_1, \dots, x_{t-1}) . $$
#
# Training maximizes the log-likelihood of the training texts, that is it minimizes the mean negative
# log-probability of each next token,
#
# $$ \mathcal{L}(\theta) = -\frac{1}{N} \sum_{t} \log p_\theta(x_{t+1} \mid x_{\le t}) , $$
#
# where the model's $p_\theta(\cdot \mid x_{\le t}) = \operatorname{softmax}(z_t)$ comes from its logits $z_t \in \mathbb{R}^V$
# at position $t$. "Causal" is the same word as in lesson 04's causal mask: the prediction at position $t$ may use
# positions $\le t$ only, so it cannot peek at the token it must predict.
#
# ## Shifted targets
#
# Feed the model tokens $x_1 \dots x_T$; at position $t$ it outputs logits for $x_{t+1}$. So the targets are the inputs
# shifted left by one. From a window of $T+1$ tokens: inputs = the first $T$, targets = the last $T$. Here is the
# worked example with a character tokenizer on 今天天气很好 (6 tokens, so $T = 5$ predictions):

# %%
text = "今天天气很好"
tokenizer = CharTokenizer.from_text(text)
ids = np.array(tokenizer.encode(text))                       # (T+1,) = (6,)
V = tokenizer.vocab_size
inputs, targets = windows(ids, [0], len(ids) - 1)            # (1, T) each: the library's CLM windows
inputs_scratch, targets_scratch = ids[:-1], ids[1:]          # (T,) each: the same, by hand
print("vocabulary:", tokenizer.chars, "| ids:", ids.tolist())
print(f"{'t':>2}  {'the model has seen':<12} {'input':>5} -> target")
for t in range(len(inputs_scratch)):
    seen = tokenizer.decode(ids[:t + 1].tolist())
    print(f"{t:2d}  {seen:<12} {tokenizer.decode([int(inputs[0, t])]):>5} -> {tokenizer.decode([int(targets[0, t])])}")

# %% [markdown]
# Row 3 is the example of the textbook: having seen 今天天气, the model should say 很; row 4: after 今天天气很, 好.
# All five rows are computed in ONE forward pass over the input 今天天气很: the causal mask makes position $t$'s output
# depend on inputs $0..t$ only, so each row is an honest prediction. Nothing predicts the first token (no context),
# and the last token is never an input (no target).
#
# ## Cross-entropy and the stable log-softmax
#
# For one prediction with logits $z \in \mathbb{R}^V$ and target $y$, the loss is $-\log p_y$ with
#
# $$ \log p_y = \log \frac{e^{z_y}}{\sum_k e^{z_k}} = (z_y - m) - \log \sum_k e^{z_k - m}, \qquad m = \max_k z_k . $$
#
# Computing $p = \operatorname{softmax}(z)$ first and then $\log p$ fails in two ways: $e^{z}$ overflows for large
# logits (float32 for $z > 88.7$), and a tiny probability underflows to 0, whose log is $-\infty$ even though the
# true log-probability is a perfectly normal number like $-200$. Subtracting $m$ makes the largest term
# $e^0 = 1$, so the sum lies in $[1, V]$ and its log in $[0, \log V]$: nothing overflows, and no log of 0 is taken.

# %%
def log_softmax_naive(z):
    """log(softmax(z)) the textbook way: exponentiate, normalize, take the log."""
    e = np.exp(z)                                            # (..., V) may overflow to inf or underflow to 0
    return np.log(e / e.sum(axis=-1, keepdims=True))         # (..., V)


def log_softmax_stable(z):
    """log(softmax(z)) with the max subtracted."""
    shifted = z - z.max(axis=-1, keepdims=True)              # (..., V) largest entry 0
    return shifted - np.log(np.exp(shifted).sum(axis=-1, keepdims=True))


print(f"{'logits':>22} {'dtype':>8} {'naive':>26} {'stable':>26}")
overflow_table = {}
for scale in (1.0, 100.0, 1000.0):
    for dtype in (np.float32, np.float64):
        z = np.array([scale, 0.0, -scale], dtype=dtype)      # (V,) = (3,)
        with np.errstate(over="ignore", invalid="ignore", divide="ignore"):
            naive = log_softmax_naive(z)                     # (V,)
        stable = log_softmax_stable(z)                       # (V,)
        overflow_table[scale, dtype] = (naive, stable)
        print(f"{str([scale, 0, -scale]):>22} {np.dtype(dtype).name:>8} "
              f"{np.array2string(naive, precision=1):>26} {np.array2string(stable, precision=1):>26}")

# %% [markdown]
# At $\pm 100$ float32 already breaks: $e^{100}$ is infinite, so the top entry becomes inf/inf = nan and the others
# a finite number over inf = 0, whose log is $-\infty$. (Even without the overflow, the true $p_3 = e^{-200}$ is far
# below float32's smallest positive number, $1.4 \times 10^{-45}$.) float64 survives 100 and breaks at 1000. The stable form is right every
# time: $[0, -s, -2s] - \log(1 + e^{-s} + e^{-2s})$, which is $[0, -s, -2s]$ to rounding once $s$ is large.
# The library's `log_softmax` and `cross_entropy` use it.

# %%
z_big = np.array([[1000.0, 0.0, -1000.0]], dtype=np.float32)   # (1, V)
print("library log_softmax:", log_softmax(z_big))
loss_big, _ = cross_entropy(z_big, np.array([2]))            # target = the least likely class
print("cross_entropy with target 2:", loss_big, "(= 2000: -log p = z_max - z_2)")

# %% [markdown]
# ## The gradient: softmax minus one-hot
#
# Write the loss of one prediction as $\ell = -z_y + \log \sum_k e^{z_k}$. Differentiating,
#
# $$ \frac{\partial \ell}{\partial z_k} = -[k = y] + \frac{e^{z_k}}{\sum_j e^{z_j}} = p_k - [k = y] , \qquad
#    \nabla_z \ell = p - \text{onehot}(y) . $$
#
# So the gradient pushes the target's logit up by $1 - p_y$ and every other logit down by its probability; the
# push vanishes when the model is certain and right. Each row sums to zero (probabilities sum to one, and so does the
# one-hot). The softmax Jacobian of lesson 04 and the derivative of the log have cancelled to this simple form, which
# is why frameworks fuse softmax and cross-entropy into one operation. For the mean over $N$ predictions every row is
# divided by $N$.
#
# A useful number: if the model knows nothing, $p$ is uniform and $\ell = \log V$ for every token. A freshly
# initialized model should start near $\log V$ (here $\log 5 = 1.609$); much higher means overconfident initial logits.
#
# From scratch, for a batch of random logits, against the library:

# %%
B, T = 2, 5
logits = rng.standard_normal((B, T, V))                      # (B, T, V)
y = rng.integers(0, V, size=(B, T))                          # (B, T)

z = logits.reshape(-1, V)                                    # (N, V)
tgt = y.reshape(-1)                                          # (N,)
logp = log_softmax_stable(z)                                 # (N, V)
loss_scratch = -logp[np.arange(len(tgt)), tgt].mean()        # scalar: mean of -log p[target]
onehot = np.eye(V)[tgt]                                      # (N, V)
dz_scratch = (np.exp(logp) - onehot) / len(tgt)              # (N, V) (p - onehot) / N

loss, dlogits = cross_entropy(logits, y)                     # float, (B, T, V)
print(f"loss: scratch {loss_scratch:.6f}, library {loss:.6f}")
print("gradient, scratch vs library:", rel_error(dz_scratch.reshape(B, T, V), dlogits))
print("rows of the gradient sum to:", np.abs(dlogits.sum(-1)).max())
loss_uniform, _ = cross_entropy(np.zeros((B, T, V)), y)      # all logits equal: p uniform
print(f"uniform logits: loss {loss_uniform:.6f}, log V = {np.log(V):.6f}")

# %% [markdown]
# The gradient check needs a forward that returns an array: we wrap the scalar loss in a 0-d array, and the backward
# scales `dlogits` by the upstream gradient (a number, since the loss is one number).

# %%
def ce_forward(logits, targets):
    loss, dlogits = cross_entropy(logits, targets)
    return np.array(loss), dlogits                           # () and (B, T, V) as the cache


def ce_backward(dloss, dlogits):
    return dloss * dlogits, None                             # (B, T, V); targets are not differentiable


ce_errors = check_gradients(ce_forward, ce_backward, [logits.copy(), y], names=["logits", "targets"])
print("gradient check:", ce_errors)

# %% [markdown]
# ## Not every token counts: `ignore_index` and loss masks
#
# **Padding.** Texts in a batch have different lengths. We pad the short ones to a common $T$, and their targets get the
# value `ignore_index` (-100, the PyTorch convention): those predictions are left out of the mean, and their rows of
# the gradient are 0. The mean divides by the number of *counted* tokens.
#
# **Loss mask.** Sometimes only part of a text should be learned: the answer of a question-answer pair, Part B of
# GLM's blank infilling (lesson 19). A `loss_mask` of 0/1 per target does the same job without touching the targets.
# GPT-1's code has exactly such a mask: `lm_losses*M[:, 1:]`, with the mask shifted along with the targets.
#
# The mean over counted tokens gives every counted token the same weight. GPT-1's code averaged within each sequence
# first and then over the batch, which gives short sequences' tokens more weight; both are in use.

# %%
texts = ["今天天气很好", "天气好"]
T_pad = max(len(s) for s in texts) - 1                       # 5 predictions for the longest text
batch_ids = np.zeros((2, T_pad + 1), dtype=np.int64)         # (B, T+1) padding id 0 (its value never matters)
lengths = []
for b, s in enumerate(texts):
    batch_ids[b, :len(s)] = tokenizer.encode(s)
    lengths.append(len(s))
batch_targets = batch_ids[:, 1:].copy()                      # (B, T) the inputs would be batch_ids[:, :-1]
for b, n in enumerate(lengths):
    batch_targets[b, n - 1:] = IGNORE_INDEX                  # no target past the end of text b
print("targets:\n", batch_targets)

logits_pad = rng.standard_normal((2, T_pad, V))              # (B, T, V) as if from a model
loss_pad, dlogits_pad = cross_entropy(logits_pad, batch_targets)
counted = batch_targets != IGNORE_INDEX                      # (B, T)
per_token = -log_softmax(logits_pad)[counted, batch_targets[counted]]   # (n_counted,)
print(f"loss {loss_pad:.6f} = mean of the {counted.sum()} counted per-token losses {per_token.mean():.6f}")
logits_changed = logits_pad.copy()
logits_changed[~counted] = 1e3 * rng.standard_normal((int((~counted).sum()), V))   # garbage where nothing counts
print("loss unchanged by logits at padded positions:", cross_entropy(logits_changed, batch_targets)[0] == loss_pad)
print("gradient rows at padded positions are zero:", not dlogits_pad[~counted].any())

# %% [markdown]
# Now a loss mask on the first text: learn only the "answer" 很好, i.e. the predictions whose target is 很 or 好
# (positions 3 and 4, after 今天天气 and 今天天气很).

# %%
answer_mask = np.array([[0, 0, 0, 1, 1]])                    # (1, T)
loss_answer, dlogits_answer = cross_entropy(logits_pad[:1], batch_targets[:1], loss_mask=answer_mask)
per_token_first = -log_softmax(logits_pad[0])[np.arange(T_pad), batch_targets[0]]   # (T,)
print(f"answer-only loss {loss_answer:.6f} = mean of positions 3, 4: {per_token_first[3:].mean():.6f}")

# %% [markdown]
# ## A first training run: a bigram model
#
# The smallest causal language model predicts the next token from the current one only: a table $W \in \mathbb{R}^{V \times V}$
# of logits, row $x_t$ for the prediction after token $x_t$ (an embedding lookup, lesson 02). Gradient descent on the
# CLM loss of 今天天气很好:
#
# $$ z_t = W[x_t], \qquad W \leftarrow W - \eta\, \frac{\partial \mathcal{L}}{\partial W}, \qquad
#    \frac{\partial \mathcal{L}}{\partial W[v]} = \sum_{t:\, x_t = v} (p_t - \text{onehot}(x_{t+1}))/N . $$
#
# **The floor.** The five predictions are 今→天, 天→天, 天→气, 气→很, 很→好. After 今, 气 and 很 the next token is
# always the same, and the table can drive those three losses towards 0. But 天 is followed once by 天 and once by 气,
# and a bigram model sees only the current token: the best it can do is $p(天 \mid 天) = p(气 \mid 天) = 1/2$, a loss
# of $\log 2$ on each of those two predictions:
#
# $$ \mathcal{L}_{\min} = \frac{2 \log 2}{5} = 0.2773 . $$
#
# The loss starts at $\log 5$ (all-zero table, uniform predictions) and approaches the floor, never below it.

# %%
steps, lr = 300, 5.0
W = np.zeros((V, V))                                         # (V, V) the logit table, uniform predictions
losses = []
for step in range(steps):
    z, emb_cache = embedding_forward(inputs, W)              # (1, T, V) row x_t of the table
    loss_step, dz = cross_entropy(z, targets)                # float, (1, T, V)
    W -= lr * embedding_backward(dz, emb_cache)              # (V, V) scatter-add of the rows' gradients
    losses.append(loss_step)
floor = 2 * np.log(2) / 5
print(f"loss at step 0: {losses[0]:.4f} (log 5 = {np.log(5):.4f}); after {steps} steps: {losses[-1]:.4f}; "
      f"floor {floor:.4f}")
p_after_tian = np.exp(log_softmax(W[ids[1]]))               # (V,) the model's p(. | 天)
print("p(next | 天):", {tokenizer.chars[v]: round(float(p), 3) for v, p in enumerate(p_after_tian)})
curve_png = plot_curves({"bigram model (gradient descent)": losses,
                         f"floor = 2 log 2 / 5 = {floor:.3f}\n(no bigram model can go lower)": [floor] * steps},
                        "07_bigram_loss",
                        xlabel="step", ylabel="cross-entropy (nats)",
                        title="CLM loss of a bigram model on one sentence")
print("saved", curve_png)

# %% [markdown]
# ## Summary
# - CLM (因果语言模型): minimize $-\frac1N\sum_t \log p(x_{t+1} \mid x_{\le t})$. Targets are the inputs shifted left by
#   one; with a causal mask one forward pass scores all $T$ predictions of a window of $T+1$ tokens.
# - Compute $\log p$ as $(z - m) - \log\sum e^{z - m}$: the naive softmax-then-log overflows (nan) or underflows
#   ($-\infty$) at logits of a few hundred in float32.
# - The gradient of cross-entropy with respect to the logits is $(p - \text{onehot}(y))/N$; a uniform model scores $\log V$.
# - `ignore_index` (padding) and `loss_mask` (only some targets) remove predictions from the mean and zero their gradient.
#
# ## Exercises
# 1. Find the largest logit scale $s$ at which `log_softmax_naive([s, 0, -s])` is still finite, in float32 and
#    float64. Relate the answers to `np.finfo(dtype).max` and `.tiny`.
# 2. Implement GPT-1's weighting (mean within each sequence, then over sequences) for the padded batch above. Which
#    text's tokens gain weight, and by how much?
# 3. Extend the bigram to a trigram model (the table indexed by the last two tokens). What is its loss floor on
#    今天天气很好, and why?
# 4. Label smoothing replaces onehot(y) by $(1-\varepsilon)\,\text{onehot}(y) + \varepsilon/V$. Derive the new gradient.

# %% [markdown]
# ## Check

# %%
assert ids.shape == (6,) and inputs.shape == targets.shape == (1, 5)
assert (inputs[0] == inputs_scratch).all() and (targets[0] == targets_scratch).all()
assert tokenizer.decode(inputs[0, :4].tolist()) == "今天天气" and tokenizer.decode([int(targets[0, 3])]) == "很"
assert tokenizer.decode([int(targets[0, 4])]) == "好"
naive32, _ = overflow_table[100.0, np.float32]
assert np.isnan(naive32[0]) and np.isneginf(naive32[2])      # overflow (inf/inf) and underflow (log 0)
assert np.isfinite(overflow_table[100.0, np.float64][0]).all() and np.isnan(overflow_table[1000.0, np.float64][0][0])
for (scale, dtype), (_, stable) in overflow_table.items():
    exact = np.array([0.0, -scale, -2 * scale]) - np.log1p(np.exp(-scale) + np.exp(-2 * scale))
    assert stable.dtype == dtype and np.allclose(stable, exact, rtol=1e-6, atol=1e-6)
assert loss_big == 2000.0
assert abs(loss - loss_scratch) < 1e-12 and rel_error(dz_scratch.reshape(B, T, V), dlogits) < 1e-12
assert np.abs(dlogits.sum(-1)).max() < 1e-15 and dlogits.dtype == logits.dtype
assert abs(loss_uniform - np.log(V)) < 1e-12                  # uniform model scores log V
assert max(ce_errors.values()) < 1e-6
assert counted.sum() == 5 + 2 and abs(loss_pad - per_token.mean()) < 1e-12
assert cross_entropy(logits_changed, batch_targets)[0] == loss_pad and not dlogits_pad[~counted].any()
assert abs(loss_answer - per_token_first[3:].mean()) < 1e-12 and not dlogits_answer[0, :3].any()
assert abs(losses[0] - np.log(5)) < 1e-12                     # step 0: the all-zero table is uniform
assert floor < losses[-1] < floor + 0.01 and all(a >= b for a, b in zip(losses, losses[1:]))
tian, qi = tokenizer.encode("天气")
assert abs(p_after_tian[tian] - 0.5) < 0.02 and abs(p_after_tian[qi] - 0.5) < 0.02   # the floor's 1/2 and 1/2
loss32, dlogits32 = cross_entropy(logits.astype(np.float32), y)
assert dlogits32.dtype == np.float32 and abs(loss32 - loss) < 1e-5
assert curve_png.exists()
print("lesson 07 OK")
