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
# # Lesson 28 — Instruction tuning: from a language model to an assistant
#
# **You will learn**
# - where instruction tuning (指令微调, supervised fine-tuning, SFT) sits in the three stages that turned GPT-3 into
#   ChatGPT;
# - how a conversation becomes tokens: a chat template, its special tokens added to a pretrained tokenizer and model
#   without changing a single old weight, and the loss mask that marks what the model must learn to write;
# - the SFT loss and its gradient: the cross-entropy of lesson 07, counted on the assistant's tokens only;
# - what masking the prompt buys, measured: SFT with and without it, side by side;
# - the effect, measured: a pretrained model that cannot follow a single instruction, and the same model after SFT
#   answering held-out instructions it has never seen.
#
# **This lesson trains.** By default it pretrains a tiny LLaMA for 200 steps and fine-tunes it twice for 2,000 steps:
# about three minutes on 2 CPU cores (at most five). With `MINIGPT_FAST=1` it runs the same code for a few hundred
# steps in about 15 seconds; the Check cell then asks less of the model, and says what.
#
# ## Three stages
#
# The textbook sums up how ChatGPT came about in one sentence:
#
# > *"在 GPT 系列模型的基础上，通过引入预训练-指令微调-人类反馈强化学习的三阶段训练，OpenAI 发布了跨时代的 ChatGPT，引发了大模型的热潮。"*
#
# On top of the GPT models, a training in three stages (pretraining, instruction fine-tuning, reinforcement learning
# from human feedback) produced ChatGPT. ChatGLM followed the same recipe:
#
# > *"在 GLM 模型（即使用原生 GLM 架构及预训练任务的早期预训练模型）的基础上，参考 ChatGPT 的技术思路进行 SFT 和 RLHF，智谱于 23年 3月发布了第一个中文开源 LLM ChatGLM-6B"*
#
# A pretrained GLM, then SFT and RLHF, gave ChatGLM-6B in March 2023.
#
# The primary source for the recipe is InstructGPT (Ouyang et al. 2022, "Training language models to follow
# instructions with human feedback"), which counts differently: after pretraining it has three steps of its own,
# (1) supervised fine-tuning on answers written by people, (2) a reward model trained on people's rankings of answers,
# (3) reinforcement learning (PPO) against that reward model. The textbook's third stage is InstructGPT's steps 2 and 3.
# This lesson is step 1; lesson 29 is the rest.
#
# Why a second stage at all? A pretrained model continues text. Asked "what is 85+63?", it writes whatever tends to
# follow such a line in its corpus. SFT shows it conversations, a question and the answer we want, until answering
# is what tends to follow.

# %%
import atexit
import os
import shutil
import tempfile
import time
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
from matplotlib.patches import Rectangle

from minigpt import checkpoint, cross_entropy
from minigpt.chat import add_chat_tokens, encode_chat
from minigpt.finetune import (TASKS, answer, builtin_instructions, encode_conversations, grow_vocab, load_init,
                              sft, sft_batch, task_accuracy)
from minigpt.train import TrainOptions, train
from minigpt.viz import plot_curves, save_figure

FAST = os.environ.get("MINIGPT_FAST") == "1"
PRETRAIN_STEPS, SFT_STEPS, N_TEST, N_TRAIN = (20, 150, 100, 3000) if FAST else (200, 2000, 250, 20000)
SIZE = dict(n_layer=3, d_model=64)                 # the llama preset: 4 heads, 2 kv heads, RoPE, SwiGLU
RUNS = Path(tempfile.mkdtemp(prefix="minigpt-lesson28-"))     # the run folders (kept, but not after a FAST run)
if FAST:
    atexit.register(shutil.rmtree, RUNS, ignore_errors=True)
print(f"{'FAST' if FAST else 'default'} run: {PRETRAIN_STEPS} pretraining steps, {SFT_STEPS} SFT steps; runs in {RUNS}")

# %% [markdown]
# ## Stage 1: a pretrained model
#
# A tiny LLaMA (3 layers, $C = 64$, lesson 18), trained on the characters of the built-in corpus with the training
# loop of lesson 09. It writes something like documentation, and knows nothing of questions and answers.

# %%
start = time.perf_counter()
pretrained = train(TrainOptions(preset="llama", steps=PRETRAIN_STEPS, batch_size=32, seq_len=64, model=SIZE,
                                eval_every=PRETRAIN_STEPS, eval_batches=2 if FAST else 8,
                                checkpoint_every=PRETRAIN_STEPS, sample_tokens=60, progress=False,
                                out=str(RUNS / "pretrained")))
PRETRAINED = pretrained["out"]
pretrain_seconds = time.perf_counter() - start
print(f"pretrained in {pretrain_seconds:.0f} s; held-out loss {pretrained['val_loss']:.3f} nats per character")
print("it writes:", repr(pretrained["samples"][0][:100]))

# %% [markdown]
# ## The instructions
#
# Instruction data are conversations. `minigpt.finetune` builds them from the synthetic tasks of lesson 12 and from the
# built-in corpus, each with exactly one right answer, so that the model's answers can be checked:

# %%
examples = builtin_instructions(len(TASKS), "train")
for ex in examples:
    print(f"{ex.task:>8}: user {ex.messages[0]['content']!r:34} -> assistant {ex.answer!r}")
TEST = builtin_instructions(N_TEST, "test", seed=1)
print(f"\n{N_TEST} held-out instructions, e.g. {TEST[0].messages[0]['content']!r}")

# %% [markdown]
# `rule` is in-context learning (上下文学习) in miniature: the rule, copy (`xyz>xyz`) or reverse (`xyz>zyx`), is drawn
# afresh for every question and shown only in the prompt. A question is held out when the CRC-32 of its text is
# 0 modulo 10, so no held-out question is ever trained on: to answer it, the model must have learned the task, not the
# question. 2-digit sums cannot be memorized either: there are 10,000 of them, and one in ten is held out.
#
# ## The chat template as tokens
#
# The model reads one flat sequence. The `minimal` template of `minigpt.chat` writes each turn between special tokens:
# `<|user|>...<|end|><|assistant|>...<|end|>`. The pretrained tokenizer has never seen them, so `add_chat_tokens`
# appends them, with the next free ids: every old id keeps its meaning.

# %%
saved = checkpoint.load(PRETRAINED)
old_tokenizer, old_model = saved.tokenizer, saved.model()
tokenizer = add_chat_tokens(old_tokenizer, "minimal")
V_old, V_new = old_tokenizer.vocab_size, tokenizer.vocab_size
print(f"vocabulary {V_old} -> {V_new}:", {s: tokenizer.special_tokens[s] for s in
                                          ("<|system|>", "<|user|>", "<|assistant|>", "<|end|>")})

# %% [markdown]
# The model needs a row of the token embedding for each new token (and, with LLaMA's untied head, a column of the
# output matrix). `grow_vocab` copies every weight and draws only the new rows and columns, from $N(0, 0.02^2)$ as at
# initialisation: on old tokens the grown model computes exactly what the pretrained one did. (Stanford Alpaca's
# training script starts its new rows at the mean of the old ones instead; either way, no old row moves.)

# %%
model = grow_vocab(old_model, V_new)
probe = np.array([old_tokenizer.encode("The import statement")])                         # (1, T)
same_logits = float(np.abs(model.forward(probe)[..., :V_old] - old_model.forward(probe)).max())
print(f"wte {old_model.params['wte'].shape} -> {model.params['wte'].shape}, "
      f"lm_head {old_model.params['lm_head'].shape} -> {model.params['lm_head'].shape}")
print(f"logits of the old tokens, grown vs pretrained: max difference {same_logits:.1e} (float32 rounding: the "
      "wider matrix product adds in another order)")

# %% [markdown]
# Now a conversation of two exchanges, encoded by `encode_chat`, which also returns the **loss mask**: 1 on the tokens
# the model must learn to *write* (the assistant's answers, and the `<|end|>` that closes each, so that it learns to
# stop), 0 on what it is only given to *read* (the user's turns, the role tokens).

# %%
conversation = [{"role": "user", "content": "what is 85+63?"}, {"role": "assistant", "content": "148"},
                {"role": "user", "content": "copy ab"}, {"role": "assistant", "content": "ab"}]
ids, mask = encode_chat(conversation, tokenizer, "minimal")
pieces = [tokenizer.decode([i]) for i in ids]
print(len(ids), "tokens;", "".join(f"[{p}]" if m else p for p, m in zip(pieces, mask)), "  ([...] = mask 1)")


def draw_tokens(pieces, mask, name, title):
    """The tokens in a row, special ones shaded, and the loss mask under them."""
    fig, ax = plt.subplots(figsize=(0.36 * len(pieces) + 0.6, 2.2))
    for i, (piece, m) in enumerate(zip(pieces, mask)):
        special = piece.startswith("<|")
        ax.add_patch(Rectangle((i, 1), 1, 1.6, facecolor="#fde68a" if special else "#e5e7eb", edgecolor="white"))
        ax.text(i + 0.5, 1.8, piece if special else repr(piece)[1:-1], ha="center", va="center",
                rotation=90 if special else 0, fontsize=7 if special else 10)
        ax.add_patch(Rectangle((i, 0), 1, 0.9, facecolor="#2b6cb0" if m else "#f4f4f4", edgecolor="white"))
        ax.text(i + 0.5, 0.45, str(m), ha="center", va="center", color="white" if m else "#666666", fontsize=9)
    ax.set_xlim(0, len(pieces))
    ax.set_ylim(0, 2.6)
    ax.set_yticks([0.45, 1.8])
    ax.set_yticklabels(["loss mask", "token"])
    ax.set_xticks([])
    ax.set_title(title)
    for side in ("top", "right", "bottom", "left"):
        ax.spines[side].set_visible(False)
    return save_figure(fig, name)


template_png = draw_tokens(pieces, mask, "28_chat_template_mask",
                           "the minimal chat template as tokens; the loss counts the blue ones")
print("saved", template_png)

# %% [markdown]
# Published templates differ only in their text. LLaMA-3's writes role names between header tokens, and the same
# conversation reads (the masked tokens in brackets):

# %%
llama3_tokenizer = add_chat_tokens(old_tokenizer, "llama3")
ids3, mask3 = encode_chat(conversation, llama3_tokenizer, "llama3")
print("".join(f"[{llama3_tokenizer.decode([i])}]" if m else llama3_tokenizer.decode([i])
              for i, m in zip(ids3, mask3)).replace("\n", "\\n"))

# %% [markdown]
# ## The SFT loss
#
# With the ids $x_1 \dots x_T$ and the mask $m_1 \dots m_T$, the model predicts token $t+1$ at position $t$; the loss
# counts a prediction when its *target* is masked in:
#
# $$ L_{\text{SFT}} = -\frac{1}{n} \sum_{t:\ m_{t+1} = 1} \log p_\theta(x_{t+1} \mid x_{\le t}), \qquad n = \#\{t : m_{t+1} = 1\}. $$
#
# It is lesson 07's cross-entropy over a subset of positions, so its gradient is lesson 07's too, restricted: with
# $p_t = \operatorname{softmax}(z_t)$,
#
# $$ \frac{\partial L_{\text{SFT}}}{\partial z_t} = \frac{m_{t+1}}{n}\,\big(p_t - \operatorname{onehot}(x_{t+1})\big), $$
#
# zero at every position whose target is a prompt token. No new backward is needed: `sft_batch` writes the target
# $-100$ (cross_entropy's `ignore_index`) wherever the mask is 0, and on the padding that makes the rows of a batch
# one length (Stanford Alpaca's training script marks its prompts with the same $-100$). Below, the gradient of one
# batch is checked to vanish exactly where it should.

# %%
rows = encode_conversations([conversation, conversation[:2]], tokenizer, "minimal")
inputs, targets = sft_batch(rows)                                                        # (B, T) each
loss, dlogits = cross_entropy(model.forward(inputs), targets)                            # dlogits (B, T, V)
counted = targets != -100                                                                # (B, T)
print(f"batch {inputs.shape}: {int(counted.sum())} counted targets of {counted.size}; loss {loss:.3f} "
      f"(log V = {np.log(V_new):.3f})")
print("targets of row 1:", tokenizer.decode(targets[1][counted[1]].tolist()))
zero_off_mask = float(np.abs(dlogits[~counted]).max())
print(f"largest |dL/dz| where the target is not counted: {zero_off_mask}")

# %% [markdown]
# ## Before SFT
#
# The grown model, asked the held-out questions in the template and decoded greedily. An answer is right when it is
# exactly the expected text *and* the model closed its turn with `<|end|>`.

# %%
before_model, before_tokenizer, _ = load_init(PRETRAINED)
before = task_accuracy(before_model, before_tokenizer, TEST)
print(f"before SFT: {before['accuracy']:.0%} right, {before['in_template']:.0%} of the answers closed their turn")
for ex, (text, ended) in list(zip(TEST, before["answers"]))[:3]:
    print(f"  {ex.messages[0]['content']!r:34} -> {text!r}" + ("" if ended else "  (never closed its turn)"))

# %% [markdown]
# ## SFT, with and without masking the prompt
#
# `minigpt.finetune.sft` is a training loop like lesson 09's (AdamW, warmup and cosine decay, clipping), on random
# batches of 32 conversations of the built-in set, from the pretrained run; it writes a run folder that
# `minigpt sample` and `minigpt chat` can open. We run it twice from the same start, with the same batches: once
# counting the assistant's tokens only, once counting every token. Both are measured the same way: the loss per
# *answer* token on held-out conversations, and task accuracy.

# %%
runs = {}
for name, masked in (("masked prompt", True), ("no mask", False)):
    start = time.perf_counter()
    runs[name] = sft(PRETRAINED, "builtin", steps=SFT_STEPS, mask_prompt=masked, eval_every=max(SFT_STEPS // 8, 1),
                     n_builtin=N_TRAIN, out=str(RUNS / ("sft" if masked else "sft-no-mask")))
    val = runs[name].records("val_loss")[1]
    print(f"{name:>14}: {SFT_STEPS} steps in {time.perf_counter() - start:.0f} s, held-out answer loss "
          f"{val[0]:.3f} -> {val[-1]:.3f} nats per answer token")
curves = {name: tuple(a[1:] for a in result.records("val_loss")) for name, result in runs.items()}   # from the 1st eval
curve_png = plot_curves(curves, "28_sft_mask_vs_no_mask", xlabel="SFT step",
                        ylabel="held-out loss per answer token (nats)",
                        title="SFT with and without masking the prompt")
print("saved", curve_png)

# %%
results = {"before SFT": before}
results.update({f"SFT, {name}": task_accuracy(r.model, r.tokenizer, TEST) for name, r in runs.items()})
print(f"{'held-out accuracy':>22} {'all':>6} " + " ".join(f"{t:>8}" for t in TASKS) + f" {'closed turn':>12}")
for name, acc in results.items():
    print(f"{name:>22} {acc['accuracy']:>6.0%} " + " ".join(f"{acc['tasks'][t]:>8.0%}" for t in TASKS)
          + f" {acc['in_template']:>12.0%}")
after = results["SFT, masked prompt"]

# %% [markdown]
# What to read in the table. Before SFT the model answers nothing right, and it does not even stop: `<|end|>` was
# never in its data. After SFT with the prompt masked (the default run), it answers most held-out questions right
# (copy, reverse, the shown rule and the first word nearly always; 2-digit sums, which need carries, less often)
# and closes every turn.
#
# Without the mask, the same steps go partly into predicting the *questions*: random letters and random numbers,
# which no model can predict. In the default run that costs accuracy (the sums suffer most) and the held-out answer
# loss ends clearly higher. The prompt is not useless as a target in general (a real user's question is text worth
# modelling, and some recipes keep it), but here it is noise, and it competes with the answers for the gradient.
#
# In the FAST run, 150 steps are too few for either model to answer much: both learn the template (they close their
# turns) and the answer loss falls, but the accuracies are low and the two runs are not told apart. The comparison
# needs the default run.
#
# ## Talking to it
#
# `minigpt chat --run <run folder>` does the same as the cell below, one line at a time (the template applied, the
# answer streamed, the history kept within the context). New questions, none of them in the training data:

# %%
tuned = runs["masked prompt"]
questions = ["what is 21+34?", "copy hgfab", "reverse abcdef", "like xyz>zyx: bbcad", "first word: import the module"]
for q, (text, ended) in zip(questions, answer(tuned.model, tuned.tokenizer, [[{"role": "user", "content": q}]
                                                                            for q in questions])):
    print(f"  {q!r:30} -> {text!r}" + ("" if ended else "  (not closed)"))
print(f"\nthe run folder: {tuned.out}   (try: minigpt chat --run {tuned.out})")

# %% [markdown]
# ## Summary
# - ChatGPT's recipe, in the textbook's words, is pretraining, instruction fine-tuning, then RLHF; InstructGPT splits
#   the last stage into a reward model and PPO. SFT is the second stage: the same next-token loss, on conversations.
# - A chat template turns a conversation into one sequence; its special tokens get new ids and new embedding rows,
#   and no old weight changes (the grown model's old logits are identical).
# - The loss mask marks the assistant's tokens; the SFT gradient is cross-entropy's $p - \operatorname{onehot}$ on those
#   positions and exactly zero elsewhere (ignore_index $-100$).
# - Masking the prompt spends every step on the answers. Here, with random prompts, it learns faster and generalizes
#   better than counting every token.
# - After a couple of thousand steps the tiny model answers held-out instructions it could not answer before, and
#   closes its turns: a language model became (a very small) assistant.
#
# ## Exercises
# 1. Fine-tune from a *random* model of the same size instead of the pretrained run: pass
#    `(Model(cfg), tokenizer)` as `sft`'s init. Which tasks does the pretraining help, and which not at all?
# 2. Pack several conversations into one row of 64 tokens instead of padding each. What must the attention mask and the
#    positions do so that a conversation cannot read the one packed before it (`Model.forward`'s `attn_mask` and
#    `position_ids`)? How many more answer tokens does a step see?
# 3. Sums are the hardest task. Train with `tasks=("add",)` only, or with twice the steps: how close to 100% does the
#    tiny model get, and does its accuracy depend on whether a carry is needed?
# 4. Train in the `llama3` template instead (`template="llama3"`). How many tokens does its header cost per turn for a
#    character tokenizer, and does the accuracy change?

# %% [markdown]
# ## Check

# %%
assert pieces[:1] == ["<|user|>"] and mask == [0] * 17 + [1] * 4 + [0] * 10 + [1] * 3      # "148<|end|>", "ab<|end|>"
assert same_logits < 1e-5 and model.params["wte"].shape == (V_new, 64) and V_new == V_old + 4
assert zero_off_mask == 0.0 and np.abs(dlogits[counted]).max() > 0
assert before["accuracy"] <= 0.05 and before["in_template"] <= 0.1       # before SFT: nothing, and it never stops
assert after["in_template"] >= 0.9                                       # after SFT: it closes its turns
val_start, val_end = runs["masked prompt"].records("val_loss")[1][[0, -1]]
assert val_end < val_start - 1.5                                         # the answer loss falls by 1.5 nats or more
if FAST:
    assert after["accuracy"] >= before["accuracy"]                       # 150 steps: the template, not yet the tasks
else:
    assert after["accuracy"] >= 0.8, after["accuracy"]                   # the acceptance bar: >= 80% held out
    assert after["accuracy"] > results["SFT, no mask"]["accuracy"]
    assert runs["masked prompt"].history[-1]["val_loss"] < runs["no mask"].history[-1]["val_loss"]
assert template_png.exists() and curve_png.exists() and checkpoint.load(tuned.out).state["template"] == "minimal"
print("lesson 28 OK")
