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
# # Lesson 29 — Preference tuning: from RLHF to DPO
#
# **You will learn**
# - the third stage of ChatGPT's recipe, reinforcement learning from human feedback (人类反馈强化学习, RLHF): where its
#   reward model (奖励模型) and its PPO come from, in one page;
# - why direct preference optimization (直接偏好优化, DPO) needs neither: its loss derived from the same KL-regularised
#   objective, in a few lines, and the key step checked numerically;
# - DPO's backward pass, written by hand down to the logits and checked against finite differences;
# - the effect, measured on held-out pairs: preference accuracy and reward margin before and after, beside how far the
#   model drifted from where it started (the KL divergence), and whether it still answers in its chat template.
#
# **This lesson trains.** It pretrains a tiny LLaMA (200 steps), instruction-tunes it as lesson 28 did (2,000 steps),
# then runs DPO three times (200 steps each): about two minutes on 2 CPU cores by default (at most five), about 15
# seconds with `MINIGPT_FAST=1`, where the Check cell asks less and says what.
#
# ## The third stage
#
# The textbook names the three stages that produced ChatGPT,
# *"通过引入预训练-指令微调-人类反馈强化学习的三阶段训练，OpenAI 发布了跨时代的 ChatGPT"*
# (pretraining, instruction fine-tuning, RLHF), and ChatGLM-6B followed them, *"参考 ChatGPT 的技术思路进行 SFT 和 RLHF"*.
# Lesson 28 was the second stage. After it, a model answers in the template;
# RLHF then teaches it which of its possible answers people *prefer*: the correct one, the helpful one, the one that
# does not ramble. Preferences are easier to collect than demonstrations: it is easier to say which of two answers is
# better than to write the best one.

# %%
import atexit
import os
import shutil
import tempfile
import time
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np

from minigpt.finetune import (PREFERENCE_KINDS, answer, builtin_instructions, builtin_preferences, dpo,
                              preference_metrics, sft, task_accuracy)
from minigpt.gradcheck import check_gradients
from minigpt.preference import dpo_loss_from_logits, preference_batch
from minigpt.train import TrainOptions, train
from minigpt.viz import save_figure

FAST = os.environ.get("MINIGPT_FAST") == "1"
PRETRAIN_STEPS, SFT_STEPS, DPO_STEPS = (20, 150, 30) if FAST else (200, 2000, 200)
N_TEST_PAIRS, N_TEST, N_TRAIN = (60, 100, 3000) if FAST else (192, 250, 20000)
SIZE = dict(n_layer=3, d_model=64)                 # the llama preset, as in lesson 28
RUNS = Path(tempfile.mkdtemp(prefix="minigpt-lesson29-"))     # the run folders (kept, but not after a FAST run)
if FAST:
    atexit.register(shutil.rmtree, RUNS, ignore_errors=True)
print(f"{'FAST' if FAST else 'default'} run: {PRETRAIN_STEPS} + {SFT_STEPS} + 3 x {DPO_STEPS} steps; runs in {RUNS}")

# %% [markdown]
# ## RLHF in one page
#
# The recipe comes from Christiano et al. (2017, "Deep reinforcement learning from human preferences"), was applied
# to summaries by Stiennon et al. (2020), and to instructions by InstructGPT (Ouyang et al. 2022), whose steps 2 and 3
# are the textbook's third stage.
#
# **The data.** For a prompt $x$, the model writes several answers and a person ranks them. Each ranking gives pairs
# $(x, y_w, y_l)$: $y_w$ preferred ("won") over $y_l$ ("lost").
#
# **The reward model.** A copy of the SFT model whose output head is replaced by one number, $r_\phi(x, y)$. It is
# trained to explain the choices with the Bradley–Terry model (1952) of paired comparisons, in which the better-scored
# answer wins with probability
#
# $$ P(y_w \succ y_l \mid x) = \sigma\big(r_\phi(x, y_w) - r_\phi(x, y_l)\big), \qquad
#    L_R(\phi) = -\,\mathbb{E}_{(x, y_w, y_l)} \log \sigma\big(r_\phi(x, y_w) - r_\phi(x, y_l)\big). $$
#
# **The objective.** Then the policy $\pi_\theta$ (the model being tuned, started from the SFT model $\pi_{\text{ref}}$)
# maximises the reward of its own answers, on a leash:
#
# $$ \max_{\pi_\theta}\ \mathbb{E}_{x,\ y \sim \pi_\theta(\cdot \mid x)}\big[r_\phi(x, y)\big]
#    \;-\; \beta\, \mathbb{D}_{\text{KL}}\big(\pi_\theta(\cdot \mid x)\,\big\|\,\pi_{\text{ref}}(\cdot \mid x)\big). $$
#
# The KL term keeps the policy near the model the reward model was trained on: far from it the reward model is
# extrapolating, and a policy pushed only by $r_\phi$ learns to exploit its mistakes ("reward hacking") and forgets how
# to write.
#
# **PPO.** The answers $y$ are *sampled* from the policy itself, so the gradient cannot go through them:
# it is a reinforcement-learning problem. InstructGPT solves it with PPO (Schulman et al. 2017): generate answers,
# score them (the reward at the end, $-\beta \log \pi_\theta / \pi_{\text{ref}}$ at every token), estimate each token's
# advantage $A_t$ with a *value model* (a fourth network, trained alongside), and step on the clipped surrogate
# $\min\big(\rho_t A_t,\ \operatorname{clip}(\rho_t, 1 - \epsilon, 1 + \epsilon) A_t\big)$ with $\rho_t$ the ratio of the
# token's probability now to when it was sampled. Four models in memory (policy, reference, reward, value), generation
# inside the training loop, and many settings to tune.
#
# ## DPO: the same objective, no reward model, no PPO
#
# Rafailov et al. (2023, "Direct Preference Optimization: Your Language Model is Secretly a Reward Model") noticed that
# the objective above has a closed-form optimum. For one prompt, write it as a sum over answers $y$ and complete the KL:
#
# $$ \sum_y \pi(y)\, r(y) - \beta \sum_y \pi(y) \log\frac{\pi(y)}{\pi_{\text{ref}}(y)}
#    \;=\; -\beta\, \mathbb{D}_{\text{KL}}\Big(\pi \,\Big\|\, \tfrac{1}{Z}\, \pi_{\text{ref}}\, e^{r/\beta}\Big) + \beta \log Z,
#    \qquad Z = \sum_y \pi_{\text{ref}}(y)\, e^{r(y)/\beta}. $$
#
# A KL divergence is smallest, zero, when its two arguments are equal, so the best policy is
# $\pi^*(y) = \pi_{\text{ref}}(y)\, e^{r(y)/\beta} / Z$. Turn it around: every reward is a log-ratio of its optimal policy,
#
# $$ r(x, y) = \beta \log \frac{\pi^*(y \mid x)}{\pi_{\text{ref}}(y \mid x)} + \beta \log Z(x). $$
#
# Put that into Bradley–Terry. Only the *difference* of two rewards for the same $x$ enters, and $\beta \log Z(x)$
# cancels. What is left is a likelihood of the preferences in terms of the policy alone, to be maximised over $\theta$:
#
# $$ L_{\text{DPO}}(\theta) = -\,\mathbb{E}\,\log \sigma\Big( \beta \log \frac{\pi_\theta(y_w \mid x)}{\pi_{\text{ref}}(y_w \mid x)}
#     - \beta \log \frac{\pi_\theta(y_l \mid x)}{\pi_{\text{ref}}(y_l \mid x)} \Big). $$
#
# The reward model is gone: $\hat r(x, y) = \beta \log \pi_\theta(y \mid x) / \pi_{\text{ref}}(y \mid x)$ is the policy's
# own *implicit reward*. Sampling and PPO are gone: the loss is a logistic regression on pairs, two forward passes
# (policy and frozen reference) and one backward. The leash is still there, in $\beta$.
#
# The key step, checked on a toy problem: five answers, random rewards, a random reference. The optimum is the
# normalised $\pi_{\text{ref}}\, e^{r/\beta}$; nothing beats its objective, and its log-ratio recovers the rewards up to one
# constant, $\beta \log Z$.

# %%
rng = np.random.default_rng(0)
beta_toy = 0.5
r_toy = rng.standard_normal(5)                                        # (5,) rewards of five answers
ref_toy = rng.dirichlet(np.ones(5))                                   # (5,) the reference policy


def objective(pi):
    return float(pi @ r_toy - beta_toy * (pi * np.log(pi / ref_toy)).sum())


Z = float(ref_toy @ np.exp(r_toy / beta_toy))
best = ref_toy * np.exp(r_toy / beta_toy) / Z                         # (5,) pi*
others = [objective(rng.dirichlet(np.ones(5))) for _ in range(2000)]
implied = beta_toy * np.log(best / ref_toy) - r_toy                   # (5,) should all be -beta log Z
print(f"objective at pi*: {objective(best):.6f} = beta log Z = {beta_toy * np.log(Z):.6f}; "
      f"best of 2000 random policies: {max(others):.6f}")
print("beta log(pi*/pi_ref) - r for the five answers:", np.round(implied, 12))

# %% [markdown]
# ## The backward pass, by hand
#
# `minigpt.preference` computes the loss for $N$ pairs, from the logits of $2N$ sequences (chosen, then rejected). With
# $\log \pi(y \mid x) = \sum_{t \in \text{answer}} \log \operatorname{softmax}(z_t)[y_t]$ (the answer's tokens only, the
# same mask as SFT) and, for each pair,
#
# $$ h = \beta\big[(\log \pi_\theta(y_w) - \log \pi_{\text{ref}}(y_w)) - (\log \pi_\theta(y_l) - \log \pi_{\text{ref}}(y_l))\big],
#    \qquad L = \frac{1}{N} \sum \operatorname{softplus}(-h), $$
#
# the chain rule runs backwards in three links:
#
# $$ \frac{\partial L}{\partial h} = \frac{\sigma(h) - 1}{N}, \qquad
#    \frac{\partial h}{\partial \log \pi_\theta(y_w)} = \beta, \quad \frac{\partial h}{\partial \log \pi_\theta(y_l)} = -\beta,
#    \qquad \frac{\partial \log \pi(y)}{\partial z_t} = \operatorname{onehot}(y_t) - \operatorname{softmax}(z_t), $$
#
# so the gradient of the logits is $\frac{\beta(\sigma(h) - 1)}{N}\,(\operatorname{onehot}(y_t) - p_t)$ on a chosen
# answer's positions, the same with the opposite sign on a rejected one's, and zero on prompts, padding and the
# reference (a constant). Two things to read in it. The factor $1 - \sigma(h)$ weighs each pair by how *wrong* its
# implicit ranking still is: a pair already ranked right by a wide margin stops pulling. And the gradient raises the
# chosen answer and lowers the rejected one only *relative to each other*: nothing stops both from falling.
#
# The check: float64 logits of three pairs, centered differences on every logit entry (they are few), against
# `dpo_loss_from_logits`'s hand-written gradient.

# %%
gen = np.random.default_rng(1)
N, T, V = 3, 5, 7
logits = gen.standard_normal((2 * N, T, V))                          # (2N, T, V) chosen rows, then rejected
ref_logits = gen.standard_normal((2 * N, T, V))                      # (2N, T, V)
targets = gen.integers(0, V, (2 * N, T))                             # (2N, T)
answer_mask = np.zeros((2 * N, T), dtype=bool)
answer_mask[:, 2:] = True                                            # the last three positions are the answer
answer_mask[1, 4] = answer_mask[4, 3:] = False                       # answers of different lengths


def forward(z):
    loss, dz, _ = dpo_loss_from_logits(z, ref_logits, targets, answer_mask, beta=0.5)
    return np.array(loss), dz


grad_error = check_gradients(forward, lambda dout, dz: (dout * dz,), [logits], names=["logits"])["logits"]
_, dz, stats = dpo_loss_from_logits(logits, ref_logits, targets, answer_mask, beta=0.5)
print(f"rel_error of dL/dlogits: {grad_error:.1e}; gradient off the answers: {np.abs(dz[~answer_mask]).max()}")
print(f"policy == reference: loss {dpo_loss_from_logits(logits, logits, targets, answer_mask, 0.5)[0]:.6f} "
      f"= log 2 = {np.log(2):.6f}")

# %% [markdown]
# ## The model to tune: lesson 28 in one cell
#
# Pretraining, then SFT on the built-in instructions (the template, the masked loss), exactly as in lesson 28. The SFT
# model is also DPO's frozen reference $\pi_{\text{ref}}$.

# %%
start = time.perf_counter()
pretrained = train(TrainOptions(preset="llama", steps=PRETRAIN_STEPS, batch_size=32, seq_len=64, model=SIZE,
                                eval_every=PRETRAIN_STEPS, eval_batches=2 if FAST else 8,
                                checkpoint_every=PRETRAIN_STEPS, sample_tokens=0, progress=False,
                                out=str(RUNS / "pretrained")))
tuned = sft(pretrained["out"], "builtin", steps=SFT_STEPS, n_builtin=N_TRAIN, eval_every=SFT_STEPS,
            out=str(RUNS / "sft"))
TEST = builtin_instructions(N_TEST, "test", seed=1)
sft_tasks = task_accuracy(tuned.model, tuned.tokenizer, TEST)
print(f"pretraining + SFT in {time.perf_counter() - start:.0f} s; held-out task accuracy {sft_tasks['accuracy']:.0%}, "
      f"{sft_tasks['in_template']:.0%} of the answers closed their turn")

# %% [markdown]
# ## Preference pairs
#
# The built-in pairs ask the same kinds of question, and their preference can be checked: the task *done* over the
# task *not done* (the two numbers written side by side instead of added; the letters copied instead of reversed), and
# a short answer over a rambling one. Held out by the same rule as the instructions.

# %%
pairs = builtin_preferences(N_TEST_PAIRS, "test", seed=1)
for i in range(3):
    p = pairs[i]
    print(f"{PREFERENCE_KINDS[i]:>13}: {p.prompt[0]['content']!r:22} chosen {p.chosen!r:10} rejected {p.rejected!r}")
batch = preference_batch(pairs[:3], tuned.tokenizer, "minimal")
print(f"as a batch: ids {batch.ids.shape}, rows 0..2 chosen and 3..5 rejected; counted (answer) tokens per row:",
      batch.mask.sum(axis=1).tolist())

# %% [markdown]
# ## Before DPO
#
# With $\pi_\theta = \pi_{\text{ref}}$ every implicit reward is 0: the preference accuracy (the fraction of pairs with
# $\hat r(y_w) > \hat r(y_l)$, strictly) is 0, the margin is 0, the KL is 0. These are DPO's own measures, and they
# measure the *change* from the reference. Beside them, the model's own likelihoods: how often the SFT model already
# finds the chosen answer more likely, $\log \pi(y_w \mid x) > \log \pi(y_l \mid x)$.

# %%
def by_kind(model, ref, beta):
    """Preference metrics on the held-out pairs: all, and each kind."""
    out = {"all": preference_metrics(model, ref, pairs, tuned.tokenizer, beta=beta)}
    for k, kind in enumerate(PREFERENCE_KINDS):
        out[kind] = preference_metrics(model, ref, pairs[k::3], tuned.tokenizer, beta=beta)
    return out


before = by_kind(tuned.model, tuned.model, beta=0.5)
print(f"before: accuracy {before['all']['accuracy']:.0%}, margin {before['all']['margin']:.2f}, "
      f"KL {before['all']['kl']:.3f}; the SFT model's own likelihood prefers the chosen answer in "
      f"{before['all']['likelihood_accuracy']:.0%} of the pairs")

# %% [markdown]
# ## DPO, its leash, and pushing too hard
#
# `minigpt.finetune.dpo` steps `minigpt.preference.dpo_step` (the forward and backward above, on a frozen copy of the
# SFT model as reference) with AdamW, 16 pairs per step, learning rate $10^{-5}$. Three runs from the same SFT model:
# $\beta = 0.5$ (the default here), $\beta = 0.1$ (the DPO paper's usual value) with the same steps, and $\beta = 0.5$
# pushed five times harder (learning rate $5 \cdot 10^{-5}$).

# %%
SETTINGS = {"beta 0.5": dict(beta=0.5), "beta 0.1": dict(beta=0.1), "beta 0.5, lr x5": dict(beta=0.5, lr=5e-5)}
dpo_runs, after, after_tasks = {}, {}, {}
for name, setting in SETTINGS.items():
    start = time.perf_counter()
    dpo_runs[name] = dpo(tuned.out, "builtin", steps=DPO_STEPS, eval_every=10 if FAST else 25,
                         out=str(RUNS / ("dpo-" + name.replace(" ", "").replace(",", "-"))), **setting)
    after[name] = by_kind(dpo_runs[name].model, dpo_runs[name].ref_model, setting["beta"])
    after_tasks[name] = task_accuracy(dpo_runs[name].model, dpo_runs[name].tokenizer, TEST)
    print(f"{name}: {DPO_STEPS} steps in {time.perf_counter() - start:.0f} s")

rows = [("before (SFT)", before, sft_tasks)] + [(f"DPO, {n}", after[n], after_tasks[n]) for n in SETTINGS]
print(f"\n{'held-out':>20} {'pref. acc':>9} {'margin':>7} {'KL':>6} {'own lik.':>8} "
      f"{'log pi(y_w)':>11} {'log pi(y_l)':>11} {'task acc':>8} {'sums':>5} {'closed':>7}")
for name, m, tasks in rows:
    a = m["all"]
    print(f"{name:>20} {a['accuracy']:>9.0%} {a['margin']:>7.2f} {a['kl']:>6.3f} {a['likelihood_accuracy']:>8.0%} "
          f"{a['chosen_logp']:>11.2f} {a['rejected_logp']:>11.2f} {tasks['accuracy']:>8.0%} "
          f"{tasks['tasks']['add']:>5.0%} {tasks['in_template']:>7.0%}")
print("\npreference accuracy by kind (beta 0.5):",
      ", ".join(f"{k} {after['beta 0.5'][k]['accuracy']:.0%}" for k in PREFERENCE_KINDS))

# %%
fig, axes = plt.subplots(1, 3, figsize=(13, 3.4))
for name, run in dpo_runs.items():
    for ax, key, label in zip(axes, ("val_accuracy", "val_margin", "val_kl"),
                              ("preference accuracy", "reward margin", "KL from the reference (nats / token)")):
        steps, values = run.records(key)
        ax.plot(steps, values, marker="o", markersize=3, label=name)
        ax.set_xlabel("DPO step")
        ax.set_title(label)
        ax.grid(alpha=0.3)
axes[0].legend()
curves_png = save_figure(fig, "29_dpo_curves")
print("saved", curves_png)

# %% [markdown]
# What to read. After DPO the implicit rewards rank (nearly) every held-out pair the right way, in every kind; they
# started at 0. The model's own likelihood preferred the chosen answers already after SFT (it was taught to answer,
# and to stop), so DPO needed only small moves to make the *change* point the right way: in the default run a KL of a
# few hundredths of a nat per token, and the task accuracy is where SFT left it. The columns $\log \pi(y_w)$ and
# $\log \pi(y_l)$ show how the gap widens: the rejected answers fall far more than the chosen ones move. That is
# DPO's loss at work: it fixes only the difference.
#
# The leash. With $\beta = 0.1$ the same $h$ needs a five times larger log-ratio, so for the same steps the policy
# travels further: its KL from the reference is several times larger, for no better ranking.
#
# Pushing too hard. Five times the learning rate buys a wider margin and a larger KL, and in the default run it costs
# the sums dearly (the `sums` column), although every answer still closes its turn. The pairs never mention a right sum
# that shares digits with its question; the model generalises "do not write the question's digits back" and "stop
# after a number" further than the pairs meant. The margin on the training objective kept rising; the thing we cared
# about fell. That is over-optimisation, the reason for the KL term, in miniature.
#
# In the FAST run the SFT model has hardly learned the tasks (it has learned the template), DPO runs 30 steps, and the
# preference accuracy stays lower; the three runs are not told apart by their task accuracy (it is near 0), only by
# their margins and KL.
#
# Last, the answers, still in the template ($\beta = 0.5$):

# %%
questions = ["what is 21+34?", "reverse abcdef", "copy hgfab"]
best_run = dpo_runs["beta 0.5"]
for q, (text, ended) in zip(questions, answer(best_run.model, best_run.tokenizer,
                                              [[{"role": "user", "content": q}] for q in questions])):
    print(f"  {q!r:20} -> {text!r}" + ("" if ended else "  (did not close its turn)"))
print(f"\nthe run folder: {best_run.out}   (try: minigpt chat --run {best_run.out})")

# %% [markdown]
# ## Summary
# - RLHF fits a reward model to people's choices (Bradley–Terry: $P(y_w \succ y_l) = \sigma(r_w - r_l)$), then maximises
#   reward minus $\beta\,$KL from the SFT model with PPO: four models, sampling inside the loop.
# - The KL-regularised objective's optimum is $\pi^* \propto \pi_{\text{ref}}\, e^{r/\beta}$, so
#   $r = \beta \log \pi^*/\pi_{\text{ref}} + \beta \log Z$; in Bradley–Terry $Z$ cancels, and the preferences train the
#   policy directly: $L_{\text{DPO}} = -\log\sigma(\beta[\log\frac{\pi_\theta(y_w)}{\pi_{\text{ref}}(y_w)} - \log\frac{\pi_\theta(y_l)}{\pi_{\text{ref}}(y_l)}])$.
# - Its gradient is $\frac{\beta(\sigma(h) - 1)}{N}(\operatorname{onehot} - p)$ on the chosen answer's tokens, the
#   opposite on the rejected one's; checked to rounding by finite differences.
# - Measured: preference accuracy from 0 to (nearly) 100% on held-out pairs, the model still answering in its template;
#   $\beta$ sets how far it drifts from the reference to get there, and pushing harder widens the margin while the
#   tasks get worse (over-optimisation).
#
# ## Exercises
# 1. Add a fourth kind of pair: the right sum against the sum off by one (`"148"` over `"149"`). The SFT model's own
#    likelihood already prefers the right one most of the time. Does DPO's implicit-reward accuracy on this kind reach
#    the others'? What would the model have to learn, that the pairs cannot teach it?
# 2. Instruction-tune with a rambling answer ("148 because 85+63=148") for a third of the sums, so that the SFT model
#    rambles sometimes, then run DPO. Measure how often the greedy answer rambles before and after.
# 3. Add the SFT loss of the chosen answers to the DPO loss (a weight of 0.1, say). Does it stop the chosen answers'
#    log-probabilities from falling? What does it do to the KL?
# 4. Replace $-\log \sigma(h)$ by the squared loss $(h - \frac{1}{2\beta})^2$ (IPO, Azar et al. 2023). Derive its
#    gradient with respect to $h$, change `dpo_loss`, check it by finite differences, and compare the drift.

# %% [markdown]
# ## Check

# %%
assert max(others) <= objective(best) + 1e-12 and np.ptp(implied) < 1e-9     # pi* is the optimum; Z cancels
assert grad_error < 1e-6 and np.abs(dz[~answer_mask]).max() == 0.0            # the hand-written backward
first = dpo_runs["beta 0.5"].history[1]                                        # the first DPO step
assert abs(first["loss"] - np.log(2)) < 1e-6 and first["accuracy"] == 0.0 and first["kl"] == 0.0
assert before["all"]["accuracy"] == 0.0 and before["all"]["kl"] == 0.0
gentle, pushed = after["beta 0.5"]["all"], after["beta 0.5, lr x5"]["all"]
assert 0 < gentle["kl"] < pushed["kl"] and 0 < gentle["margin"] < pushed["margin"]
assert all(t["in_template"] >= 0.95 for t in after_tasks.values())            # still answers in the template
if FAST:
    assert gentle["accuracy"] >= 0.6                                           # 30 DPO steps on a weak SFT model
else:
    assert gentle["accuracy"] >= 0.9, gentle                                   # the acceptance bar, held out
    assert after["beta 0.1"]["all"]["kl"] > gentle["kl"]                       # the leash
    assert after_tasks["beta 0.5"]["accuracy"] >= sft_tasks["accuracy"] - 0.05  # the tasks kept
    assert after_tasks["beta 0.5, lr x5"]["tasks"]["add"] < after_tasks["beta 0.5"]["tasks"]["add"]   # pushed: worse
print("lesson 29 OK")
