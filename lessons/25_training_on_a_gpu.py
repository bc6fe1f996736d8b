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
# # Lesson 25 — Training on a GPU
#
# **You will learn**
# - how one code base runs on the CPU (NumPy) and on a GPU (CuPy): every function asks `xp = get_xp(x)` for the
#   module that owns its arrays, and the device is chosen once, where arrays are made
#   (`Model(config, device="cuda")`, or `MINIGPT_DEVICE=cuda`);
# - what lives on the device during training (parameters, gradients, the optimizer's moments, activations, the
#   token ids once the embedding has taken them) and what stays on the host (tokenizer, batch sampling, token
#   sampling in generation, the loss as a Python float, logs, checkpoints), and where each transfer happens;
# - a few training steps run on the CPU and, when there is a GPU, on the GPU too, with the losses compared.
#
# The textbook does not cover the mechanics of GPU training, so there is no textbook term here. It does give the
# scale: LLaMA's 65B model "在2,048张A100 80G GPU上训练了近21天" (trained for almost 21 days on 2,048 A100 80G GPUs).
#
# **What this lesson ran.** The cells run on whatever this machine has. Without a GPU (CuPy not installed, or no
# device) only the CPU part runs, and the lesson says so; the GPU comparison is then not executed.

# %%
import os
import time

import numpy as np

from minigpt import Model, ModelConfig, cross_entropy
from minigpt.backend import cupy_available, get_xp, to_numpy
from minigpt.generate import generate
from minigpt.optim import AdamW, clip_grad_norm

FAST = os.environ.get("MINIGPT_FAST") == "1"
GPU = cupy_available()
DEVICES = ["cpu", "cuda"] if GPU else ["cpu"]
print("CuPy sees a GPU:", GPU, "| devices this lesson runs on:", DEVICES)
if not GPU:
    print("no GPU found: every cell below runs on the CPU (NumPy); the GPU comparison is skipped")

# %% [markdown]
# ## One code, two devices: `get_xp`
#
# CuPy copies NumPy's API: `cupy.exp`, `cupy.zeros`, `a @ b`, slicing and broadcasting behave the same, but the
# arrays live in GPU memory and each operation launches a kernel there. `minigpt.backend.get_xp(*arrays)` returns
# `cupy` when CuPy works and the arrays are CuPy arrays, else `numpy`. A layer written against `xp` runs on both;
# for example a softmax (lesson 04):

# %%
def softmax(x):
    """softmax along the last axis, on x's own device. x (..., n) -> (..., n)"""
    xp = get_xp(x)                                              # numpy or cupy: whoever owns x
    e = xp.exp(x - x.max(axis=-1, keepdims=True))
    return e / e.sum(axis=-1, keepdims=True)


x = np.array([[1.0, 2.0, 3.0]], dtype=np.float32)             # (1, 3)
p_cpu = softmax(x)
print("numpy:", get_xp(x).__name__, np.round(p_cpu, 4))
if GPU:
    import cupy

    p_gpu = softmax(cupy.asarray(x))                            # the same function, a CuPy array in and out
    print("cupy: ", get_xp(p_gpu).__name__, np.round(to_numpy(p_gpu), 4))

# %% [markdown]
# No layer in `minigpt` names a device. The device is decided in one place, when the model makes its parameters:
# `Model(config, device=...)` with `"cpu"` or `"cuda"` (default: `$MINIGPT_DEVICE`, else `"cpu"`). From then on
# everything follows the arrays:
#
# | what | where | made or moved by |
# |---|---|---|
# | parameters | device | `Model(..., device=)` creates them there (`to_device` for given weights) |
# | gradients, activations, caches | device | computed from the parameters, so on their device |
# | AdamW's `exp_avg`, `exp_avg_sq` | device | `zeros_like(p)`: the parameter's device and dtype |
# | token ids | host, then device | the sampler makes NumPy ids; `embedding_forward` moves them (`xp.asarray`) |
# | the loss | host | `cross_entropy` returns a Python `float`: one small copy and a wait for the GPU, per step |
# | tokenizer, batch sampling, logs | host | plain Python and NumPy |
# | sampling a token (generation) | host | `to_numpy(logits[:, -1])`: one row of logits copied back per step |
# | checkpoints | host | `state_dict` / `save` copy with `to_numpy` |
#
# So in a training step the large arrays never cross: per step only the ids (B x T integers) go to the device and
# one float (the loss) and the gradient norm come back. A copy is slow compared to GPU arithmetic, and it also
# synchronises (the CPU waits for every launched kernel), so where the copies are is where a GPU program loses time.
#
# ## A few training steps
#
# A tiny GPT (2 layers, $d = 64$) learns to continue a fixed pattern of token ids; the same seed gives the same
# initial weights on every device (they are drawn with NumPy and then moved). We record the loss per step and,
# after the last step, which module owns each kind of array.

# %%
config = ModelConfig(vocab_size=32, n_layer=2, d_model=64, n_head=4, max_seq_len=32)
STEPS = 10 if FAST else 30
B, T = 8, 32
data = np.arange(4000) * 7 % 32                                 # a periodic token stream: learnable
rng = np.random.default_rng(0)
starts = rng.integers(0, data.size - T - 1, size=(STEPS, B))   # the same batches for every device


def train(device):
    """STEPS AdamW steps on device: -> (losses, {what: module of its array}, model, seconds)."""
    model = Model(config, seed=0, device=device)
    opt = AdamW(model.params, lr=3e-3)
    losses = []
    start = time.perf_counter()
    for step in range(STEPS):
        ids = np.stack([data[s:s + T] for s in starts[step]])           # (B, T) NumPy, on the host
        targets = np.stack([data[s + 1:s + T + 1] for s in starts[step]])
        model.zero_grad()
        logits = model.forward(ids)                             # (B, T, V) on the device
        loss, dlogits = cross_entropy(logits, targets)          # loss: a Python float (copied back)
        model.backward(dlogits)
        clip_grad_norm(model.grads, 1.0)
        opt.step(model.grads)                                   # in place, on the device
        losses.append(loss)
    seconds = time.perf_counter() - start
    where = {"param wte": model.params["wte"], "grad wte": model.grads["wte"],
             "AdamW exp_avg": opt.state["exp_avg"]["wte"], "logits": logits, "ids (as given)": ids}
    where = {k: type(a).__module__.split(".")[0] for k, a in where.items()} | {"loss": type(loss).__name__}
    return losses, where, model, seconds


runs = {device: train(device) for device in DEVICES}
for device, (losses, where, _, seconds) in runs.items():
    print(f"{device}: loss {losses[0]:.3f} -> {losses[-1]:.3f} in {STEPS} steps, {seconds:.2f} s")
    print("   arrays live in:", where)
if GPU:
    loss_diff = max(abs(a - b) for a, b in zip(runs["cpu"][0], runs["cuda"][0]))
    print(f"max |loss cpu - loss cuda| over {STEPS} steps: {loss_diff:.1e}")

# %% [markdown]
# On the CPU every array is a NumPy array. On a GPU the parameters, gradients, moments and logits are CuPy
# arrays while the ids stay the NumPy arrays the sampler made (the embedding copies them over), and the loss is a
# float. The two devices compute in float32 with different kernels (cuBLAS instead of OpenBLAS, other summation
# orders), so their losses should agree to float32 rounding, not bit for bit; the Check asserts a difference below
# $10^{-3}$ (this is run only where there is a GPU: see the first cell's output). Do not expect a GPU to be faster
# on a model this small: every operation is a kernel launch of a few microseconds on arrays too small to fill the
# device; a GPU wins when the matrices are large (exercise 1).
#
# ## Generation: sampling on the host
#
# `generate` runs the model on its device and copies the last position's logits back with `to_numpy` to sample
# the next token with NumPy; the token id then goes back to the device with the next forward.

# %%
model = runs[DEVICES[-1]][2]
prompt = [int(t) for t in data[:8]]
continuation = generate(model, prompt, max_new_tokens=8, temperature=0.0)   # 0: greedy
expected = [int(t) for t in data[:16]]
print("prompt     ", prompt)
print("generated  ", continuation)
print("the pattern", expected, "| continued correctly:", continuation == expected)

# %% [markdown]
# ## Summary
# - `get_xp(x)` returns the array module (NumPy or CuPy) that owns `x`; layers written with `xp` run on either.
# - The device is chosen where the parameters are made, `Model(config, device="cuda")` or `MINIGPT_DEVICE=cuda`;
#   gradients, activations and AdamW's moments follow the parameters.
# - Per training step only the ids go to the device and the loss (a float) comes back; generation copies one
#   row of logits back per token and samples on the host; checkpoints copy everything back with `to_numpy`.
# - Here: the CPU run learned the pattern in a few steps; the GPU run and the CPU/GPU loss comparison ran only if
#   the first cell found a GPU (it printed which).
#
# ## Exercises
# 1. Time `train("cuda")` against `train("cpu")` for `d_model` 64, 512 and 2048. From which size does the GPU win,
#    and why does it lose for small models?
# 2. Add `float(model.params["wte"].sum())` inside the training loop and time it on a GPU. Why is it slow even
#    though it copies one number?
# 3. Set `MINIGPT_DEVICE=cuda` and create `Model(config)` without a device. Where is the device read, and what
#    error do you get on a machine without a GPU?

# %% [markdown]
# ## Check

# %%
cpu_losses, cpu_where = runs["cpu"][0], runs["cpu"][1]
assert all(np.isfinite(cpu_losses))
assert cpu_losses[-1] < cpu_losses[0] - 0.5, cpu_losses        # it learned on the CPU
assert set(cpu_where.values()) == {"numpy", "float"}, cpu_where
assert np.allclose(p_cpu.sum(), 1.0)
assert continuation[:8] == prompt and len(continuation) == 16
assert continuation == expected, continuation                # greedy decoding continues the pattern
if GPU:
    gpu_where = runs["cuda"][1]
    assert gpu_where["param wte"] == gpu_where["grad wte"] == gpu_where["AdamW exp_avg"] == "cupy", gpu_where
    assert loss_diff < 1e-3, loss_diff                          # the same training on both devices
print("lesson 25 OK")
