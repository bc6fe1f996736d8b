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
# # Lesson 09 — The training loop: AdamW, warmup + cosine, clipping, accumulation
#
# **You will learn**
# - gradient descent and momentum, and why one learning rate is too big for some directions and too small for others;
# - Adam's two moments and its bias correction (where the $1 - \beta^t$ comes from), derived and measured;
# - AdamW's **decoupled** weight decay against L2 regularization, and which parameters should not decay;
# - the warmup + cosine learning-rate schedule, and global-norm gradient clipping;
# - gradient accumulation: $k$ micro-batches give exactly the gradient of one batch $k$ times as big;
# - a short training loop that uses every piece, run on a tiny GPT-1 (lesson 08) over the built-in corpus: the
#   pretraining (预训练) of the textbook, at toy scale, with its loss curve and a sample.
#
# Lessons 01-08 computed gradients; this one uses them. Every piece is written out by hand first and then taken
# from `minigpt.optim` (optimizers, schedules, clipping) and `minigpt.train` (the step), after checking that the
# two agree.
#
# **Time.** The training run at the end takes 1500 steps, one to two minutes on 2 CPU cores (at most 5 on a busy
# machine); with `MINIGPT_FAST=1` it takes 40 steps and a few seconds, and the lesson says what changes.

# %%
import os

# One BLAS thread: this lesson multiplies small matrices, where a second OpenBLAS thread costs more than it
# gives (measured here: 3x slower per step on 2 busy cores). Set before NumPy loads; your own setting wins.
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

import math
import tempfile
import time

import matplotlib.pyplot as plt
import numpy as np

from minigpt import Model, ModelConfig, cross_entropy
from minigpt.data import BatchSampler, load_corpus, sequential_batches, split_tokens
from minigpt.generate import generate
from minigpt.optim import SGD, AdamW, clip_grad_norm, cosine_lr, default_decay, linear_lr
from minigpt.tokenizers import CharTokenizer
from minigpt.train import TrainOptions, prepare, train_step
from minigpt.viz import plot_curves, save_figure

FAST = os.environ.get("MINIGPT_FAST") == "1"

# %% [markdown]
# ## Gradient descent, and why it is slow
#
# Training minimizes the mean loss $L(\theta)$ over the data. The gradient $g = \nabla L(\theta)$ points uphill, and a
# small step against it lowers the loss to first order: $L(\theta - \eta g) \approx L(\theta) - \eta \lVert g \rVert^2$.
# Stochastic gradient descent (SGD) takes that step with the gradient of one batch, an unbiased but noisy estimate:
#
# $$ \theta_t = \theta_{t-1} - \eta\, g_t . $$
#
# How large may $\eta$ be? Near a minimum the loss is a quadratic bowl, $L \approx \tfrac12 \sum_i \lambda_i w_i^2$ in the
# eigen-directions of its curvature (the Hessian), so $g_i = \lambda_i w_i$ and one step multiplies each coordinate by
# $(1 - \eta \lambda_i)$. It shrinks only when $|1 - \eta\lambda_i| < 1$, i.e. $\eta < 2/\lambda_{\max}$; and then the
# flattest direction shrinks by $(1 - \eta\lambda_{\min}) \approx 1 - 2\lambda_{\min}/\lambda_{\max}$ per step. A bowl
# 100 times steeper one way than the other (condition number $\kappa = 100$) needs on the order of $\kappa$ steps.
#
# **Momentum** keeps a running sum of past gradients and steps along it (torch's form, the one `minigpt.optim.SGD` uses):
#
# $$ b_t = \mu\, b_{t-1} + g_t, \qquad \theta_t = \theta_{t-1} - \eta\, b_t . $$
#
# Along a direction where the gradient keeps its sign, $b$ grows towards $g/(1-\mu)$: ten times the step for $\mu = 0.9$.
# Along a direction where it flips sign every step (the steep walls of the valley), the terms cancel. So momentum
# speeds up the flat direction without making the steep one unstable.
#
# **Adam** (next section) goes further: it divides each coordinate's step by that coordinate's own running gradient
# size, so every weight moves by about $\eta$ per step whatever its curvature.
#
# Here are the three on the valley $L = \tfrac12(w_0^2 + 100\, w_1^2)$, from $w = (1, 1)$: SGD just under its stability
# limit, momentum at the same rate, Adam at a rate of the size of the distance to travel. The optimizers are the
# library's (`minigpt.optim`); they update a dict of arrays in place, like a model's `params`.

# %%
CURVATURE = np.array([1.0, 100.0])                                       # (2,) lambda_min, lambda_max


def valley_loss(w):
    return 0.5 * float((CURVATURE * w * w).sum())


def descend(make_optimizer, steps=200):
    """Run an optimizer on the valley from w = (1, 1); the loss after each step."""
    params = {"w": np.array([1.0, 1.0])}                                 # (2,)
    opt = make_optimizer(params)
    losses = [valley_loss(params["w"])]
    for _ in range(steps):
        opt.step({"w": CURVATURE * params["w"]})                         # g = lambda * w
        losses.append(valley_loss(params["w"]))
    return np.array(losses)


valley = {"SGD, lr 0.019 (limit 2/100)": descend(lambda p: SGD(p, lr=0.019)),
          "SGD + momentum 0.9, lr 0.019": descend(lambda p: SGD(p, lr=0.019, momentum=0.9)),
          "Adam, lr 0.05": descend(lambda p: AdamW(p, lr=0.05, weight_decay=0.0))}
print(f"{'loss after step':>30} " + " ".join(f"{s:>8}" for s in (0, 25, 50, 100, 200)))
for name, losses in valley.items():
    print(f"{name:>30} " + " ".join(f"{losses[s]:8.1e}" for s in (0, 25, 50, 100, 200)))

fig, ax = plt.subplots(figsize=(6, 3.6))
for name, losses in valley.items():
    ax.semilogy(losses, label=name)
ax.set_xlabel("step")
ax.set_ylabel("loss")
ax.set_title(r"the valley $\frac{1}{2}(w_0^2 + 100 w_1^2)$")
ax.legend(fontsize=8)
valley_png = save_figure(fig, "09_valley")
print("saved", valley_png)

# %% [markdown]
# Plain SGD shrinks the flat coordinate by only $1 - 0.019 = 0.981$ per step, so after 200 steps its loss is still
# around $10^{-4}$; momentum, at the same learning rate, is some thousands of times lower. Adam does not look at the
# curvature at all: at first each coordinate moves by about the learning rate per step, whichever its $\lambda$, and
# it overshoots and swings across the valley floor on its way down (the dips in its curve are the weights crossing 0).
#
# ## Adam: two moments and the bias correction
#
# Adam (Kingma & Ba, 2015) keeps two running means per weight, the first and second moments of its gradient:
#
# $$ m_t = \beta_1 m_{t-1} + (1-\beta_1)\, g_t, \qquad v_t = \beta_2 v_{t-1} + (1-\beta_2)\, g_t^2, \qquad m_0 = v_0 = 0, $$
#
# and steps by $\eta\, \hat m_t / (\sqrt{\hat v_t} + \epsilon)$ with the corrected moments
# $\hat m_t = m_t / (1-\beta_1^t)$, $\hat v_t = v_t / (1-\beta_2^t)$. Where does $1 - \beta^t$ come from? Unroll the
# recursion from $m_0 = 0$:
#
# $$ m_t = (1-\beta_1) \sum_{i=1}^{t} \beta_1^{\,t-i}\, g_i , \qquad
#    \mathbb{E}[m_t] = \mathbb{E}[g]\,(1-\beta_1)\sum_{j=0}^{t-1}\beta_1^{\,j} = \mathbb{E}[g]\,(1-\beta_1^{\,t}) $$
#
# if the gradients have a steady mean. The weights of the average sum to $1 - \beta_1^t$, not 1: the missing
# $\beta_1^t$ is the weight given to the starting value 0. Dividing by $1 - \beta_1^t$ undoes exactly that shrinkage
# (and the same for $v$ with $\beta_2$). It matters in the first $\sim 1/(1-\beta)$ steps and fades to 1 afterwards.
#
# It matters most for $v$: with $\beta_2 = 0.999$ the uncorrected $v_1 = 0.001\, g_1^2$, so
# $m_1/\sqrt{v_1} = 0.1\, g_1 / (0.0316\, |g_1|)$: the first step would be $3.16\,\eta$, three times the intended size,
# at the moment the weights are most fragile. Corrected, it is $\eta\,\mathrm{sign}(g_1)$ (up to $\epsilon$). Here it
# is for a constant gradient, with LLaMA's $\beta = (0.9, 0.95)$ and Adam's default $(0.9, 0.999)$:

# %%
print(f"{'t':>5} {'1-0.9^t':>8} {'1-0.95^t':>9} {'1-0.999^t':>10} | step / lr, uncorrected: {'(0.9,0.95)':>11} "
      f"{'(0.9,0.999)':>12} | corrected")
for t in (1, 2, 5, 10, 50, 1000):
    b1t, b2t, b3t = 1 - 0.9 ** t, 1 - 0.95 ** t, 1 - 0.999 ** t    # m_t = b1t * g, v_t = b2t * g^2 for constant g
    print(f"{t:>5} {b1t:8.3f} {b2t:9.3f} {b3t:10.4f} | {'':>24}{b1t / math.sqrt(b2t):11.3f} "
          f"{b1t / math.sqrt(b3t):12.3f} | {1.0:.3f}")

# %% [markdown]
# Without the correction and with $\beta_2 = 0.999$ the step even grows, to $6.5\,\eta$ around step 10 ($m$ recovers
# faster than $v$), and needs hundreds of steps to come back to $\eta$; with $\beta_2 = 0.95$ it is too small at first
# instead. After the correction the step is $\eta$ from the first update on. Two more properties follow from the ratio
# $\hat m / \sqrt{\hat v}$: it is **invariant to the scale of the loss** (multiply $L$ by 1000 and both numerator and
# denominator grow by 1000; only $\epsilon = 10^{-8}$ notices), and its size is about $\eta$ per weight when the
# gradient is steady, smaller when it is noisy ($|\mathbb{E}g| < \sqrt{\mathbb{E}g^2}$).
#
# ## Weight decay: L2 or decoupled
#
# Weight decay pulls weights towards 0 a little every step, a prior that small weights generalize better.
# The classic way is **L2 regularization**: add $\tfrac{\lambda}{2}\lVert\theta\rVert^2$ to the loss, which adds
# $\lambda\theta$ to the gradient. For SGD that is the same thing as shrinking the weights:
# $\theta - \eta(g + \lambda\theta) = (1 - \eta\lambda)\,\theta - \eta g$. For Adam it is not: the extra $\lambda\theta$
# enters $m$ and $v$ and is divided by $\sqrt{\hat v}$ like the rest of the gradient. A weight with large gradients
# hardly decays; a weight with tiny gradients gets a normalized step of about $\eta$ towards 0 every step.
#
# **AdamW** (Loshchilov & Hutter, 2019, "Decoupled Weight Decay Regularization") takes the decay out of the ratio:
#
# $$ \theta_t = (1 - \eta_t\lambda)\,\theta_{t-1} - \eta_t\, \frac{\hat m_t}{\sqrt{\hat v_t} + \epsilon} . $$
#
# Every decayed weight shrinks by the same factor, and because the factor holds $\eta_t$, the decay follows the
# schedule. GPT-1 already used it: *"We also employed a modified version of L2 regularization proposed in [37], with
# w = 0.01 on all non bias or gain weights"*, [37] being Loshchilov & Hutter.
#
# Measure it: three weights start at 1.0 and see gradients that only oscillate, $\pm s$ with $s = 10^{-3}, 1, 100$,
# so the data never moves them on average. L2 inside Adam is the library's AdamW without decay, fed $g + \lambda\theta$.

# %%
SCALES = np.array([1e-3, 1.0, 100.0])                                   # (3,) gradient scale of each weight
DECAY_LR, DECAY_LAMBDA, DECAY_STEPS = 0.01, 0.1, 300


def decay_run(decoupled):
    params = {"w": np.ones(3)}                                           # (3,)
    opt = AdamW(params, lr=DECAY_LR, weight_decay=DECAY_LAMBDA if decoupled else 0.0, decay={"w"})
    for t in range(DECAY_STEPS):
        g = SCALES * (-1.0) ** t                                         # (3,) +s, -s, +s, ...
        opt.step({"w": g if decoupled else g + DECAY_LAMBDA * params["w"]})
    return params["w"]


adam_l2, adamw_w = decay_run(False), decay_run(True)
print(f"after {DECAY_STEPS} steps, lr {DECAY_LR}, lambda {DECAY_LAMBDA}; pure decay would give "
      f"(1 - lr lambda)^{DECAY_STEPS} = {(1 - DECAY_LR * DECAY_LAMBDA) ** DECAY_STEPS:.3f}")
print(f"{'gradient scale s':>18} {'Adam + L2':>10} {'AdamW':>8}")
for s, a, b in zip(SCALES, adam_l2, adamw_w):
    print(f"{s:18g} {a:10.3f} {b:8.3f}")

# %% [markdown]
# With L2, the weight with tiny gradients is decayed almost to 0 (its normalized step is all decay), and the weight
# with large gradients hardly at all: the regularization depends on the gradient scale, which has nothing to do with
# how large the weight should be. AdamW gives all three the same factor.
#
# **What decays.** Decay is a prior "this weight's natural value is 0, its size is free". That fits the matrices of
# attention and the MLP (and an untied output head). It does not fit:
# - **norm gains** (natural value 1: decay would fight the normalization) and **biases** (their value is set by the data,
#   a shift, not a free size): the 1-D parameters;
# - **embedding tables**: a row gets a gradient only when its token is in the batch, but decay shrinks every row every
#   step, so the rows of rare tokens would fade between their updates. (nanoGPT decays them anyway; GPT-1's rule above
#   does too. `default_decay(params, decay_embeddings=True)` gives that rule.)
#
# `minigpt.optim.default_decay` returns the keys that decay, and `AdamW(params)` uses it unless told otherwise:

# %%
gpt1_cfg = ModelConfig.preset("gpt1", n_layer=2, d_model=32, n_head=4, max_seq_len=16, vocab_size=50)
small = Model(gpt1_cfg, seed=0, dtype="float64")
decayed = default_decay(small.params)
print("decays:       ", sorted(k.removeprefix("blocks.0.") for k in decayed if not k.startswith("blocks.1.")))
print("does not decay:", sorted(k.removeprefix("blocks.0.") for k in small.params
                                if k not in decayed and not k.startswith("blocks.1.")))
n_decayed = sum(small.params[k].size for k in decayed)
print(f"(block 0 shown; block 1 is the same) {n_decayed:,} of {small.num_params():,} parameters decay")

# %% [markdown]
# ## AdamW by hand, and the library's
#
# The whole update, for each parameter array $p$ with gradient $g$, in a dozen lines:

# %%
def adamw_by_hand(params, grads, state, lr, betas=(0.9, 0.95), eps=1e-8, weight_decay=0.1, decay=()):
    """One AdamW step of every param, in place. state = {"t": 0, "m": {}, "v": {}}."""
    b1, b2 = betas
    state["t"] += 1
    t = state["t"]
    for key, p in params.items():
        g = grads[key]
        m = state["m"].setdefault(key, np.zeros_like(p))
        v = state["v"].setdefault(key, np.zeros_like(p))
        m[...] = b1 * m + (1 - b1) * g                                   # first moment: running mean of g
        v[...] = b2 * v + (1 - b2) * g * g                               # second moment: running mean of g^2
        m_hat = m / (1 - b1 ** t)                                        # bias corrections
        v_hat = v / (1 - b2 ** t)
        if key in decay:
            p *= 1 - lr * weight_decay                                   # decoupled: outside the ratio
        p -= lr * m_hat / (np.sqrt(v_hat) + eps)


# %% [markdown]
# `minigpt.optim.AdamW` computes the same thing in the order of `torch.optim.AdamW` (`m += (1 - beta1) * (g - m)`,
# `denom = sqrt(v) / sqrt(1 - beta2**t) + eps`), with two scratch arrays instead of a new array per operator. The two
# orders round differently, so in float64 they agree to rounding error, not bit for bit. Train two copies of a
# float64 GPT-1 for five steps on the same batches, one with each:

# %%
rng = np.random.default_rng(0)
check_batches = [(rng.integers(0, 50, (4, 16)), rng.integers(0, 50, (4, 16))) for _ in range(5)]   # (B, T) each
by_hand, by_library = Model(gpt1_cfg, seed=0, dtype="float64"), Model(gpt1_cfg, seed=0, dtype="float64")
hand_state = {"t": 0, "m": {}, "v": {}}
library_opt = AdamW(by_library.params, lr=1e-2, betas=(0.9, 0.95), eps=1e-8, weight_decay=0.1)
for x, y in check_batches:
    for model in (by_hand, by_library):
        model.zero_grad()
        model.backward(cross_entropy(model.forward(x), y)[1])
    adamw_by_hand(by_hand.params, by_hand.grads, hand_state, lr=1e-2, decay=default_decay(by_hand.params))
    library_opt.step(by_library.grads)
adamw_diff = max(float(np.abs(by_hand.params[k] - by_library.params[k]).max()) for k in by_hand.params)
moved = max(float(np.abs(by_library.params[k] - small.params[k]).max()) for k in small.params)
print(f"after 5 steps the weights moved by up to {moved:.3f}; max |hand - library| = {adamw_diff:.1e}")

scale_free = {"w": np.ones(4)}
loud = {"w": np.ones(4)}
g_small = np.array([0.3, -0.02, 1e-3, 5.0])                              # (4,)
for params, factor in ((scale_free, 1.0), (loud, 1000.0)):
    opt = AdamW(params, lr=0.1, weight_decay=0.0)
    for _ in range(3):
        opt.step({"w": factor * g_small})
scale_diff = float(np.abs(scale_free["w"] - loud["w"]).max())
print(f"gradients x1000: the weights after 3 Adam steps differ by {scale_diff:.1e} (eps = 1e-8 beside sqrt(v) = 1e-3 "
      f"for the smallest gradient: a 1e-5 relative change of its step)")

# %% [markdown]
# ## The learning-rate schedule: warmup, then a cosine
#
# Two reasons not to keep $\eta$ constant. **At the start**, the weights are random, the loss surface is steep and
# Adam's $v$ is an average of very few gradients: large steps there can throw the model somewhere it never recovers
# from (post-norm models such as GPT-1 are known to need it, Xiong et al. 2020). So the rate rises linearly over the
# first steps, the **warmup**. **At the end**, the noise of the batch gradients keeps the weights rattling around the
# minimum at a distance proportional to $\eta$; lowering $\eta$ lets them settle. The cosine lowers it smoothly:
#
# $$ \eta(s) = \begin{cases} \eta_{\max}\, \dfrac{s+1}{W} & s < W \\[6pt]
#    \eta_{\min} + \tfrac12\big(1 + \cos(\pi r)\big)(\eta_{\max} - \eta_{\min}), \quad r = \dfrac{s - W}{S - W} & W \le s < S \\[6pt]
#    \eta_{\min} & s \ge S \end{cases} $$
#
# for steps $s = 0, 1, \dots$, $W$ warmup steps and $S$ steps in all. GPT-1: *"The learning rate was increased linearly
# from zero over the first 2000 updates and annealed to 0 using a cosine schedule."* LLaMA: AdamW with
# $\beta = (0.9, 0.95)$, a cosine down to 10% of the peak, weight decay 0.1, gradient clipping at 1.0 and 2000
# warmup steps. Those are `minigpt.train`'s defaults too ($\eta_{\min} = \eta_{\max}/10$, warmup 5% of the steps).

# %%
STEPS = 40 if FAST else 1500                                             # the training run below
WARMUP, LR, MIN_LR = max(1, STEPS // 20), 3e-3, 3e-4
schedule = np.array([cosine_lr(s, LR, MIN_LR, WARMUP, STEPS) for s in range(STEPS + 1)])   # (S+1,)
straight = np.array([linear_lr(s, LR, MIN_LR, WARMUP, STEPS) for s in range(STEPS + 1)])   # (S+1,)
boundaries = {"step 0": schedule[0], f"step W-1 = {WARMUP - 1}": schedule[WARMUP - 1],
              f"middle of the cosine, step {WARMUP + (STEPS - WARMUP) // 2}": schedule[WARMUP + (STEPS - WARMUP) // 2],
              f"step S = {STEPS}": schedule[STEPS]}
for name, value in boundaries.items():
    print(f"{name:>36}: lr = {value:.3e}")
schedule_png = plot_curves({"warmup + cosine (cosine_lr)": schedule, "warmup + linear (linear_lr)": straight},
                           "09_schedule", xlabel="step", ylabel="learning rate",
                           title=f"warmup {WARMUP} steps, peak {LR:g}, down to {MIN_LR:g} at step {STEPS}")
print("saved", schedule_png)

# %% [markdown]
# The first step already moves ($\eta_{\max}/W$, not 0), step $W-1$ reaches the peak, the middle of the cosine is
# halfway between peak and floor, and from step $S$ on the rate stays at $\eta_{\min}$. The cosine spends longer near
# the peak than the straight line and flattens out at the end.
#
# ## Gradient clipping by the global norm
#
# One unlucky batch can produce a gradient far larger than usual (a spike). Clipping caps the length of the
# **whole** gradient, all parameter arrays taken as one vector:
#
# $$ N = \sqrt{\textstyle\sum_k \lVert g_k \rVert^2}, \qquad g_k \leftarrow g_k \cdot \min\!\Big(1, \frac{c}{N}\Big)
#    \quad \text{for every } k . $$
#
# It keeps the direction and only shortens the step (clipping each array on its own would change the direction).
# Because Adam divides by $\sqrt{\hat v}$, a rescaled gradient still moves each weight by about $\eta$; what clipping
# protects is the moments, which would otherwise remember the spike for $1/(1-\beta_2)$ steps. The returned norm is
# worth logging: a rising gradient norm is often the first sign of trouble.

# %%
small.zero_grad()
x, y = check_batches[0]
small.backward(cross_entropy(small.forward(x), y)[1])
before = {k: g.copy() for k, g in small.grads.items()}
norm_by_hand = math.sqrt(sum(float((g * g).sum()) for g in before.values()))
norm_returned = clip_grad_norm(small.grads, max_norm=0.5 * norm_by_hand)   # in place; returns the norm before
norm_after = math.sqrt(sum(float((g * g).sum()) for g in small.grads.values()))
flat_before = np.concatenate([g.reshape(-1) for g in before.values()])
flat_after = np.concatenate([g.reshape(-1) for g in small.grads.values()])
cosine = float(flat_before @ flat_after / np.linalg.norm(flat_before) / np.linalg.norm(flat_after))
print(f"global norm by hand {norm_by_hand:.6f}, clip_grad_norm returned {norm_returned:.6f}")
print(f"clipped to c = {0.5 * norm_by_hand:.6f}: norm after {norm_after:.6f}, cosine(before, after) = {cosine:.12f}")

# %% [markdown]
# ## Gradient accumulation
#
# A batch of $B$ windows may not fit in memory. Split it into $k$ micro-batches of $b = B/k$ windows. The loss is a
# mean over the $B \cdot T$ predicted tokens, and each micro-batch's loss $L_j$ is a mean over its $b \cdot T$; with equal
# counts the big mean is the mean of the small ones, and the gradient is linear:
#
# $$ L = \frac{1}{BT}\sum_{\text{all}} \ell = \frac{1}{k}\sum_{j=1}^{k} L_j
#    \quad\Longrightarrow\quad \nabla L = \sum_{j=1}^{k} \nabla\Big(\frac{L_j}{k}\Big). $$
#
# `Model.backward` **adds** into `model.grads` (it never overwrites them), so backward of each micro-batch with its
# `dlogits` divided by $k$, and no `zero_grad` in between, leaves exactly $\nabla L$ in the grads. Checked in float64:

# %%
acc_model = Model(gpt1_cfg, seed=0, dtype="float64")
x_big = rng.integers(0, 50, (8, 16))                                     # (B, T), B = 8
y_big = rng.integers(0, 50, (8, 16))                                     # (B, T)
acc_model.zero_grad()
big_loss, dlogits = cross_entropy(acc_model.forward(x_big), y_big)
acc_model.backward(dlogits)
one_batch = {k: g.copy() for k, g in acc_model.grads.items()}

K = 4                                                                    # micro-batches of b = 2
acc_model.zero_grad()
acc_loss = 0.0
for j in range(K):
    xs, ys = x_big[2 * j:2 * j + 2], y_big[2 * j:2 * j + 2]               # (b, T) each
    loss_j, dlogits_j = cross_entropy(acc_model.forward(xs), ys)
    acc_model.backward(dlogits_j / K)                                    # grads += d(L_j / K)
    acc_loss += loss_j / K
accumulation_diff = max(float(np.abs(acc_model.grads[k] - one_batch[k]).max()) for k in one_batch)
print(f"one batch of 8: loss {big_loss:.12f}; 4 micro-batches of 2: loss {acc_loss:.12f}")
print(f"max |accumulated gradient - one-batch gradient| = {accumulation_diff:.1e}")

# %% [markdown]
# Equal up to rounding. The equality needs the same number of counted tokens in every micro-batch; exercise 2 looks
# at what happens when a loss mask makes the counts differ.
#
# ## Training a tiny GPT-1
#
# Now the loop. The data: the built-in corpus (CPython's documentation), one token per character, the last 10% held
# out for validation. The model: lesson 08's GPT-1 (post-norm, learned positions, tied head) with 4 layers,
# $C = 64$, 4 heads and windows of $T = 64$ characters. The optimizer: AdamW with LLaMA's settings.

# %%
text = load_corpus("builtin")
tokenizer = CharTokenizer.from_text(text)
tokens = np.array(tokenizer.encode(text), dtype=np.int64)               # (N,)
train_tokens, val_tokens = split_tokens(tokens, val_fraction=0.1)       # (0.9 N,), (0.1 N,)
V, T, BATCH = tokenizer.vocab_size, 64, 16
cfg = ModelConfig.preset("gpt1", vocab_size=V, max_seq_len=T)           # 4 layers, C = 64, 4 heads
model = Model(cfg, seed=0)                                              # float32
opt = AdamW(model.params, lr=LR, betas=(0.9, 0.95), eps=1e-8, weight_decay=0.1)
sampler = BatchSampler(train_tokens, T, BATCH, seed=0)
val_windows = [batch for _, batch in zip(range(8), sequential_batches(val_tokens, T, BATCH))]   # 8 x (B, T) pairs
print(f"{len(text):,} characters, V = {V}; {cfg.n_layer} layers, C = {cfg.d_model}, {model.num_params():,} "
      f"parameters; {STEPS} steps of {BATCH} x {T} tokens")


def val_loss(model):
    """The mean loss over the same 8 held-out batches every time."""
    return float(np.mean([cross_entropy(model.forward(x), y)[0] for x, y in val_windows]))


# %% [markdown]
# One step is ten lines: the rate from the schedule, zeroed grads, a batch, forward, loss, backward, clipping, the
# update. (With accumulation, the middle four lines would run $k$ times with `dlogits / k`.)

# %%
EVAL_EVERY = 10 if FAST else 100
history = {"step": [], "loss": [], "lr": [], "norm": [], "val_step": [0], "val": [val_loss(model)]}
start = time.perf_counter()
for step in range(STEPS):
    lr = cosine_lr(step, LR, MIN_LR, WARMUP, STEPS)                      # warmup, then the cosine
    opt.lr = lr
    model.zero_grad()
    x, y = sampler.next_batch()                                          # (B, T) each; y is x shifted by one
    logits = model.forward(x)                                            # (B, T, V)
    loss, dlogits = cross_entropy(logits, y)                             # mean over B*T tokens; (B, T, V)
    model.backward(dlogits)                                              # model.grads += dL/dtheta
    norm = clip_grad_norm(model.grads, 1.0)                              # the global norm before clipping
    opt.step(model.grads)                                                # AdamW, in place
    for key, value in (("step", step + 1), ("loss", loss), ("lr", lr), ("norm", norm)):
        history[key].append(value)
    if (step + 1) % EVAL_EVERY == 0 or step + 1 == STEPS:
        history["val_step"].append(step + 1)
        history["val"].append(val_loss(model))
seconds = time.perf_counter() - start
print(f"{STEPS} steps in {seconds:.0f} s ({STEPS * BATCH * T / seconds:,.0f} tokens/s)")
for s, v in list(zip(history["val_step"], history["val"]))[:: max(1, len(history["val"]) // 6)]:
    print(f"step {s:>5}: validation loss {v:.3f}")
print(f"step {history['val_step'][-1]:>5}: validation loss {history['val'][-1]:.3f}   (log V = {math.log(V):.3f})")
clipped = np.array(history["norm"]) > 1.0                               # (S,) steps where clipping acted
print(f"gradient norm: largest {max(history['norm']):.2f} (step {int(np.argmax(history['norm'])) + 1}); clipped on "
      f"{clipped[:STEPS // 2].mean():.0%} of the steps of the first half, {clipped[STEPS // 2:].mean():.0%} of the "
      f"second")

# %% [markdown]
# The library's `minigpt.train.train_step` is this step (with accumulation and a check for a NaN loss), and
# `minigpt.train.prepare` builds the same tokenizer, model, AdamW and sampler from a `TrainOptions`. Same options,
# same seeds: its first steps must give our losses exactly. One switch differs from the library's default: by
# default `minigpt train` splits each batch into `shards=2` halves that run at the same time on two cores and adds
# their gradients (data parallelism, `minigpt.parallel`: the same gradient up to the order of the float sums, about
# 1.4x faster on 2 cores); `shards=1` is the one forward and backward over the whole batch written above.

# %%
COMPARE = 3 if FAST else 5
with tempfile.TemporaryDirectory() as out:
    run = prepare(TrainOptions(preset="gpt1", steps=STEPS, batch_size=BATCH, seq_len=T, lr=LR, min_lr=MIN_LR,
                               warmup_steps=WARMUP, weight_decay=0.1, grad_clip=1.0, shards=1, out=out,
                               progress=False))
    library_losses = [train_step(run)[0] for _ in range(COMPARE)]
print("our loop:         ", [f"{v:.6f}" for v in history["loss"][:COMPARE]])
print("minigpt.train_step:", [f"{v:.6f}" for v in library_losses])

# %%
window = min(25, STEPS // 4)
smooth = np.convolve(history["loss"], np.ones(window) / window, mode="valid")   # (S - window + 1,)
curve_png = plot_curves({"train (each step)": (np.array(history["step"]), np.array(history["loss"])),
                         f"train (mean of {window})": (np.arange(window, STEPS + 1), smooth),
                         "validation": (np.array(history["val_step"]), np.array(history["val"]))},
                        "09_loss", xlabel="step", ylabel="cross-entropy (nats per character)",
                        title=f"tiny GPT-1 on the built-in corpus, {STEPS} steps")
print("saved", curve_png)
fell_by = 1 - history["val"][-1] / history["val"][0]
print(f"validation loss {history['val'][0]:.3f} -> {history['val'][-1]:.3f}: it fell by {fell_by:.0%}")

prompt = "The "
sample = generate(model, tokenizer.encode(prompt), max_new_tokens=60 if FAST else 240, temperature=0.8, top_k=20,
                  seed=0)
print("sample (temperature 0.8, top-k 20):\n" + tokenizer.decode(sample))

# %% [markdown]
# Reading the curve. At step 0 the loss is near $\log V$, a uniform guess over the characters. It falls fast to about
# 3.2 nats: the model has learned how often each character occurs (the entropy of the character frequencies is about
# 3.25 nats), and a sample at that point is letters and spaces in plausible proportions. That is where the FAST run
# (40 steps) stops: its validation loss falls by about 30%, and its sample is still gibberish. The default run goes on
# to use the context: the validation loss ends near 1.76 nats, 62% below where it started, and the sample has English
# words, Python names and the indented layout of the documentation, with many invented words: 200k parameters and a
# minute or two. The validation windows are the last 10% of the corpus (other topics), which is why validation
# sits above the training loss.
#
# In the default run the gradient norm tells its own story: clipping at 1.0 acts now and then early on, and on nearly
# every step of the second half, because the gradient norm grows as the loss falls. That is harmless here: when every
# gradient is scaled by a similar factor, Adam's ratio $\hat m / \sqrt{\hat v}$ hardly changes. Clipping is there for the
# single spike.

# %% [markdown]
# ## Summary
# - SGD: $\theta \leftarrow \theta - \eta g$, stable only for $\eta < 2/\lambda_{\max}$, slow along flat directions;
#   momentum sums past gradients, $b \leftarrow \mu b + g$, and speeds up the directions where they agree.
# - Adam: running means $m$ of $g$ and $v$ of $g^2$, corrected by $1 - \beta^t$ because they start at 0 (the weights
#   of the average sum to $1 - \beta^t$); the step $\eta\,\hat m/(\sqrt{\hat v} + \epsilon)$ is about $\eta$ per weight,
#   whatever the gradient's scale.
# - AdamW decays outside the ratio, $\theta \leftarrow (1 - \eta\lambda)\theta$, the same for every decayed weight;
#   matrices decay, norm gains, biases and embedding tables do not.
# - Warmup then cosine; clip the global gradient norm; $k$ micro-batches with `dlogits / k` and no `zero_grad` in
#   between give exactly the big batch's gradient (equal token counts).
# - A step: lr from the schedule, zero_grad, forward, loss, backward, clip, `opt.step`: `minigpt.train.train_step`.
#
# ## Exercises
# 1. Train without warmup (`WARMUP = 1`) and with a learning rate of 1e-2, with and without clipping. Which run goes
#    wrong first, and does the gradient-norm history show it before the loss does?
# 2. GLM (lesson 20) computes its loss on Part B only, so micro-batches count different numbers of tokens. Show that
#    averaging the micro-batch means with weight $1/k$ is then not the mean over all counted tokens, and write the
#    weights that make it exact.
# 3. Remove the bias correction from `adamw_by_hand` and train with $\beta_2 = 0.999$. How large are the first steps
#    (use the table above), and what happens to the loss in the first 20 steps?
# 4. Replace AdamW by `SGD(model.params, lr=..., momentum=0.9)` and find the best learning rate for 300 steps. How far
#    is its final loss from AdamW's?

# %% [markdown]
# ## Check

# %%
assert valley["SGD + momentum 0.9, lr 0.019"][100] < valley["SGD, lr 0.019 (limit 2/100)"][100] / 5
assert adam_l2[0] < 0.1 * adamw_w[0] and adam_l2[2] > 0.95                 # L2 in Adam: decay depends on scale
assert np.allclose(adamw_w, adamw_w[0], atol=1e-3)                         # AdamW: one factor for all
assert decayed == {k for k, p in small.params.items() if p.ndim == 2} - {"wte", "wpe"}
assert adamw_diff < 1e-12 and moved > 1e-2, (adamw_diff, moved)            # hand AdamW == minigpt.optim.AdamW
assert scale_diff < 1e-5, scale_diff                                     # eps / sqrt(v) = 1e-5 at most
assert math.isclose(schedule[0], LR / WARMUP) and math.isclose(schedule[WARMUP - 1], LR)
assert math.isclose(schedule[WARMUP + (STEPS - WARMUP) // 2], (LR + MIN_LR) / 2, rel_tol=0.02)
assert schedule[STEPS] == MIN_LR and all(np.diff(schedule[WARMUP - 1:]) <= 0)
assert math.isclose(norm_returned, norm_by_hand, rel_tol=1e-12) and abs(norm_after / (0.5 * norm_by_hand) - 1) < 1e-5
assert cosine > 1 - 1e-12
assert accumulation_diff < 1e-12 and abs(acc_loss - big_loss) < 1e-12
assert library_losses == history["loss"][:COMPARE]                         # our loop == minigpt.train.train_step
assert abs(history["val"][0] - math.log(V)) < 0.2                          # untrained: a uniform guess
assert fell_by > (0.25 if FAST else 0.5), fell_by                          # FAST: > 25%; default: > 50%
assert all(math.isfinite(v) for v in history["loss"]) and curve_png.exists() and schedule_png.exists()
assert len(sample) == len(tokenizer.encode(prompt)) + (60 if FAST else 240)
print("lesson 09 OK")
