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
# # Lesson 27 — After the textbook: Mistral's sliding window and Qwen3's QK-norm
#
# **You will learn**
# - Mistral 7B's sliding-window attention: every layer sees only the last $W$ positions, yet $L$ stacked layers
#   carry information $L(W-1)$ positions back; measured on the model itself;
# - the rolling-buffer KV cache that the window allows, and its memory for Mistral 7B, computed from the config;
# - Qwen3's QK-norm: an RMSNorm on every query and key vector, why it keeps attention logits bounded, its backward
#   and a gradient check;
# - how little code two new families cost: one config field each, no new branch in the model, and both checked
#   against `transformers`.
#
# The chapter we followed ends with GLM-4, so this lesson has no textbook terms; it shows what "one block, many
# switches" buys. Mistral 7B (Jiang et al. 2023) is LLaMA with a local mask on every layer. Qwen3 (Qwen Team 2025)
# is LLaMA with its queries and keys normalised before RoPE. Both are already in the library as presets; here we
# look at what each switch does and check it.

# %%
import dataclasses
import os
import tempfile
from pathlib import Path

import numpy as np

from minigpt import hf
from minigpt.config import ModelConfig, num_params, param_shapes
from minigpt.gradcheck import check_gradients, check_model_gradients, move_off_init
from minigpt.layers.norms import qk_norm_backward, qk_norm_forward
from minigpt.masks import causal_mask, sliding_window_mask
from minigpt.model import Model
from minigpt.viz import plot_mask

FAST = os.environ.get("MINIGPT_FAST") == "1"
try:  # the comparison with transformers runs when it is installed (extra `parity`)
    import torch
    import transformers
    HAVE_TORCH = int(transformers.__version__.split(".")[0]) >= 5
except ImportError:
    HAVE_TORCH = False

# %% [markdown]
# ## Two families, two fields
#
# A preset is a dict of switches, so the question "what is new in Mistral?" has an exact answer: the fields in which its
# `ModelConfig` differs from LLaMA's. The model never tests a family name; it asks the config questions such as
# `config.local_attention(i)` ("which local mask narrows layer i?"). GPT-3's banded layers (lesson 13) already
# made the model ask it, so Mistral needed a new answer, not a new question.

# %%
llama = ModelConfig.preset("llama")
presets = {name: ModelConfig.preset(name) for name in ("mistral", "qwen3")}
extra_keys = {}
for name, cfg in presets.items():
    differ = {f.name: (getattr(llama, f.name), getattr(cfg, f.name)) for f in dataclasses.fields(ModelConfig)
              if getattr(llama, f.name) != getattr(cfg, f.name)}
    extra_keys[name] = sorted(set(param_shapes(cfg)) - set(param_shapes(llama)))
    per_block = sorted({k.split(".", 2)[2] for k in extra_keys[name]})                 # without "blocks.i."
    print(f"{name:>8} vs llama: {differ}; new tensors: "
          + (f"{per_block} in each of the {cfg.n_layer} blocks" if per_block else "none"))
print("llama never reads", sorted(llama.unused_fields()), "(its attn_window is there but unused)")
for name in ("gpt3", "mistral"):
    cfg = ModelConfig.preset(name)
    print(f"{name:>8}: local_attention(i) for the {cfg.n_layer} layers ->",
          [cfg.local_attention(i) for i in range(cfg.n_layer)])
qwen3_8b = ModelConfig.preset("qwen3-8b")
qk_params = sum(int(np.prod(s)) for k, s in param_shapes(qwen3_8b).items() if "_norm." in k)
print(f"Qwen3-8B: QK-norm adds 2 x {qwen3_8b.n_layer} layers x D={qwen3_8b.head_dim} = {qk_params:,} parameters "
      f"of {num_params(qwen3_8b)['total'] / 1e9:.2f}B")

# %% [markdown]
# ## Sliding-window attention
#
# Causal attention lets query $i$ read keys $j \le i$. The sliding window keeps only the last $W$ of them:
#
# $$ M_{ij} = [\, j \le i \ \text{and}\ i - j < W \,], \qquad \text{so row } i \text{ allows } \min(i + 1, W) \text{ keys.} $$
#
# The cost of a layer drops from $O(T^2)$ to $O(TW)$ score entries. **Backward:** nothing new. A masked score is
# $-\infty$, its probability is exactly $0$, and the softmax backward $\mathrm{d}S = P \odot (\mathrm{d}P - \sum_s P \odot \mathrm{d}P)$
# gives it a zero gradient: lesson 04's backward already handles any mask.
#
# **Reach.** In one layer, position $i$ reads positions $i - W + 1, \dots, i$. In the next layer it reads the same
# positions of the layer below, and each of them already carries up to $W - 1$ positions further back. By induction,
# after $L$ layers position $i$ depends on positions $i - L(W-1), \dots, i$. In matrix terms the boolean product of $L$ window masks is one window of
# $L(W - 1) + 1$. Mistral 7B has $W = 4096$ and $L = 32$: the paper quotes a theoretical span of about 131K
# tokens ($W \cdot L = 131{,}072$); counting the query inside its own window, as here and in `transformers`, the last
# layer reaches $32 \cdot 4095 = 131{,}040$ positions back.

# %%
T_SHOW, W_SHOW, L_SHOW = 12, 4, 2
causal = causal_mask(T_SHOW)                                                 # (T, T)
sliding = sliding_window_mask(T_SHOW, W_SHOW)                                # (T, T)
allowed = sliding.sum(axis=1)                                                # (T,) keys per query
print("keys per query, causal: ", causal.sum(axis=1).tolist())
print(f"keys per query, W = {W_SHOW}:", allowed.tolist())
reach = sliding.copy()
for _ in range(L_SHOW - 1):
    reach = (reach.astype(int) @ sliding.astype(int)) > 0                   # (T, T) one more layer
composed_ok = np.array_equal(reach, sliding_window_mask(T_SHOW, L_SHOW * (W_SHOW - 1) + 1))
print(f"{L_SHOW} windows of {W_SHOW} composed == one window of {L_SHOW * (W_SHOW - 1) + 1}: {composed_ok}")
pictures = [plot_mask(causal, "causal (LLaMA)", "27_causal_mask"),
            plot_mask(sliding, f"sliding window W = {W_SHOW} (Mistral, every layer)", "27_sliding_window_mask"),
            plot_mask(reach, f"after {L_SHOW} layers: output i depends on input j", "27_sliding_window_reach")]
print("saved", *pictures)

# %% [markdown]
# ## Reach, measured on the model
#
# The claim is easy to test: change the token at position 0 and see which positions' logits move. A tiny Mistral
# with $W = 4$ and 1, 2 or 3 layers, in float64 and moved off its init; a position outside the reach must be
# unchanged *bit for bit* (its attention weights on the changed positions are exactly 0). A LLaMA of one layer is the
# dense contrast.

# %%
W, T = 4, 14
ids = np.random.default_rng(0).integers(0, 50, (1, T))                      # (1, T)
edited = ids.copy()
edited[0, 0] = (ids[0, 0] + 7) % 50


def changed(preset, n_layer):
    cfg = ModelConfig.preset(preset, n_layer=n_layer, d_model=32, n_head=4, vocab_size=50, attn_window=W)
    model = Model(cfg, seed=0, dtype="float64")
    move_off_init(model, 1)
    return np.abs(model.forward(edited) - model.forward(ids)).max(axis=-1)[0] > 0   # (T,) did it move?


print(f"{'model':>10} {'L':>2}  position 0..{T - 1} ('x' = logits changed)  last changed  L(W-1)")
reach_table = {}
for preset, n_layer in (("llama", 1), ("mistral", 1), ("mistral", 2), ("mistral", 3)):
    moved = changed(preset, n_layer)
    last = int(np.flatnonzero(moved).max())
    reach_table[preset, n_layer] = (moved, last)
    theory = n_layer * (W - 1) if preset == "mistral" else "-"
    print(f"{preset:>10} {n_layer:>2}  {''.join('x' if m else '.' for m in moved):<38} {last:>12}  {theory:>6}")

# %% [markdown]
# ## The rolling-buffer KV cache
#
# During generation, a layer with a window never looks at a key more than $W - 1$ positions old, so the cache needs
# only $W$ entries per layer: position $i$ goes to slot $i \bmod W$ and overwrites the one that just left the window.
# The order inside the buffer does not matter: RoPE rotated each key by its own position before it was stored, and the
# softmax treats its keys as a set. The memory is $2 \cdot L \cdot H_{kv} \cdot D$ numbers per cached position (lesson 17).
# The Mistral paper reports an 8x saving at 32K tokens; the numbers below come from the `mistral-7b` preset.

# %%
buffer = [None] * W
for i in range(10):                                                          # generate positions 0..9
    buffer[i % W] = i
    assert sorted(p for p in buffer if p is not None) == list(range(max(0, i - W + 1), i + 1))
print(f"W = {W}: after position 9 the slots hold positions {buffer}, exactly the window 6..9")

m7b = ModelConfig.preset("mistral-7b")
per_token = 2 * m7b.n_layer * m7b.n_kv_head * m7b.head_dim * 2              # bytes, float16
seq = m7b.max_seq_len
full_cache, rolling_cache = per_token * seq, per_token * min(seq, m7b.attn_window)
print(f"mistral-7b: L={m7b.n_layer}, Hkv={m7b.n_kv_head}, D={m7b.head_dim}, W={m7b.attn_window}: "
      f"{per_token // 2**10} KiB per cached position (float16)")
print(f"one {seq:,}-token sequence: {full_cache / 2**30:.2f} GiB keeping every position, "
      f"{rolling_cache / 2**30:.2f} GiB with the rolling buffer ({full_cache // rolling_cache}x less)")

# %% [markdown]
# (Mistral-7B-Instruct-v0.2 turned the window off again: its `config.json` says `"sliding_window": null`. The idea
# lives on in models that mix windowed and full layers, such as Gemma 2, which alternates the two.)
#
# ## QK-norm
#
# A score is $s = q \cdot k / \sqrt{D}$. Nothing in LLaMA's block limits $|q|$ and $|k|$: if training makes them grow,
# the scores grow with the product, the softmax turns one-hot, and its gradient vanishes. Dehghani et al. (2023) traced
# the divergence of ViT-22B's training to such huge attention logits and cured it with a LayerNorm on q and k; the
# Qwen3 report adds QK-norm (and drops Qwen2's qkv bias) for stable training. Qwen3 applies RMSNorm (lesson 14)
# to each head's vector, over its $D$ channels, with one gain $\gamma_q$ for all query heads and one $\gamma_k$ for
# all key heads, before RoPE:
#
# $$ \hat q = \gamma_q \odot \frac{q}{r(q)}, \quad r(q) = \sqrt{\tfrac1D \textstyle\sum_d q_d^2 + \epsilon}, \qquad \text{same for } k. $$
#
# Since $\sum_d (q_d / r)^2 \le D$, $|\hat q| \le \sqrt D \max|\gamma_q|$, and RoPE, a rotation, keeps lengths; so by Cauchy-Schwarz
#
# $$ |s| \le \frac{|\hat q|\,|\hat k|}{\sqrt D} \le \sqrt D \, \max|\gamma_q| \, \max|\gamma_k| , $$
#
# whatever the size of $q$ and $k$. The sharpness of attention is now set by two small gain vectors, not by the
# scale of the whole residual stream. **Backward:** lesson 14's RMSNorm backward for each $(b, h, t)$ vector,
# $\bar q = \frac1r\big(\bar{\hat q}\odot\gamma_q - \tfrac{q}{r}\, \mathrm{mean}_d(\bar{\hat q}\odot\gamma_q \odot \tfrac{q}{r})\big)$;
# and because every head shares $\gamma_q$, $\bar\gamma_q = \sum_{b,h,t} \bar{\hat q} \odot q / r$ (likewise for $k$).
#
# Below, random $q, k$ ($D = 16$, 8 queries against 8 keys, no mask) are multiplied by a growing factor.

# %%
rng = np.random.default_rng(0)
D, S = 16, 8
q0, k0 = rng.standard_normal((1, 1, S, D)), rng.standard_normal((1, 1, S, D))   # (B, H, T, D), (B, Hkv, S, D)
q_w, k_w = 1 + 0.3 * rng.standard_normal(D), 1 + 0.3 * rng.standard_normal(D)   # (D,) gains, away from 1
bound = np.sqrt(D) * np.abs(q_w).max() * np.abs(k_w).max()


def scores_and_peak(q, k):
    s = q @ k.swapaxes(-1, -2) / np.sqrt(D)                                  # (1, 1, T, S)
    p = np.exp(s - s.max(axis=-1, keepdims=True))
    p = p / p.sum(axis=-1, keepdims=True)                                    # (1, 1, T, S) softmax
    return float(np.abs(s).max()), float(p.max(axis=-1).mean())             # largest |score|, mean row peak


print(f"{'scale':>6} | {'plain: max|s|':>14} {'peak p':>7} | {'QK-norm: max|s|':>16} {'peak p':>7} | bound {bound:.2f}")
qk_table = {}
for scale in (1, 4, 16, 64, 256):
    q, k = scale * q0, scale * k0
    qn, kn, _ = qk_norm_forward(q, k, q_w, k_w, eps=1e-6)                    # (1, 1, T, D), (1, 1, S, D)
    qk_table[scale] = scores_and_peak(q, k) + scores_and_peak(qn, kn)
    print(f"{scale:>6} | {qk_table[scale][0]:>14.1f} {qk_table[scale][1]:>7.3f} | "
          f"{qk_table[scale][2]:>16.3f} {qk_table[scale][3]:>7.3f} |")

# %% [markdown]
# Without the norm the largest score grows as the square of the scale and every row's peak probability goes to 1.
# With it, the scores do not move at all: RMSNorm divides the scale away (up to $\epsilon$).
#
# The gradient check of the pair, in float64, with 4 query heads sharing 2 key heads and odd sizes. `qk_norm_forward`
# has two outputs; the checker wants one, so the wrapper lays $\hat q$ and $\hat k$ end to end.

# %%
def qk_norm_one_output(q, k, q_w, k_w):
    q_out, k_out, cache = qk_norm_forward(q, k, q_w, k_w)
    return np.concatenate([q_out.reshape(-1), k_out.reshape(-1)]), (q_out.shape, k_out.shape, cache)


def qk_norm_one_output_backward(dout, packed):
    q_shape, k_shape, cache = packed
    n = int(np.prod(q_shape))
    return qk_norm_backward(dout[:n].reshape(q_shape), dout[n:].reshape(k_shape), cache)


args = [rng.standard_normal((2, 4, 5, 6)), rng.standard_normal((2, 2, 5, 6)),    # q (B, H, T, D), k (B, Hkv, S, D)
        1 + 0.3 * rng.standard_normal(6), 1 + 0.3 * rng.standard_normal(6)]     # q_w, k_w (D,)
qk_errors = check_gradients(qk_norm_one_output, qk_norm_one_output_backward, args, names=["q", "k", "q_w", "k_w"])
print("QK-norm gradient check:", {name: f"{e:.1e}" for name, e in qk_errors.items()})

# %% [markdown]
# ## Whole-model gradient checks
#
# The model's backward for both presets is the LLaMA backward with the new pieces in it: the sliding masks flow
# through the unchanged attention backward, and QK-norm's backward runs after RoPE's is undone. Every parameter
# tensor of each tiny model, float64, off its init, with $T = 9 > W = 3$ so the window actually cuts.

# %%
ENTRIES = 4 if FAST else 16                                                  # sampled entries per tensor
TINY = dict(n_layer=2, d_model=32, n_head=4, vocab_size=50, max_seq_len=16)
grad_errors = {}
for name, extra in (("mistral", dict(attn_window=3)), ("qwen3", {})):
    model = Model(ModelConfig.preset(name, **TINY, **extra), seed=0, dtype="float64")
    move_off_init(model, 2)
    g_ids, g_targets = rng.integers(0, 50, (2, 9)), rng.integers(0, 50, (2, 9))   # (B, T)
    grad_errors[name] = check_model_gradients(model, g_ids, g_targets, ENTRIES)
    worst = max(grad_errors[name], key=grad_errors[name].get)
    print(f"{name}: {len(grad_errors[name])} tensors, worst rel_error {grad_errors[name][worst]:.1e} ({worst})")

# %% [markdown]
# ## Checked against transformers
#
# Small random `MistralForCausalLM` (window 3, shorter than the 8 tokens we feed) and `Qwen3ForCausalLM` models, built
# by `transformers`, weights moved off their init, saved with `save_pretrained` and loaded with `minigpt.hf.load`.
# The logits must agree to float32 rounding. To be sure each switch is really exercised, the same weights are also run
# with the switch turned off (dense attention; no QK-norm): those logits must differ by far more.

# %%
parity = {}
if HAVE_TORCH:
    transformers.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()
    workdir = tempfile.TemporaryDirectory(prefix="minigpt-lesson27-")
    common = dict(hidden_size=32, intermediate_size=48, num_hidden_layers=2, num_attention_heads=4,
                  num_key_value_heads=2, max_position_embeddings=16, rms_norm_eps=1e-5, vocab_size=100,
                  bos_token_id=None, eos_token_id=None, pad_token_id=None,
                  rope_parameters={"rope_type": "default", "rope_theta": 500.0})
    hf_configs = {"mistral": transformers.MistralConfig(sliding_window=3, **common),
                  "qwen3": transformers.Qwen3Config(head_dim=8, **common)}
    hf_ids = rng.integers(0, 100, (2, 8))                                    # (B, T)
    for name, hf_config in hf_configs.items():
        torch.manual_seed(0)
        reference = transformers.AutoModelForCausalLM.from_config(hf_config).eval()
        with torch.no_grad():
            for p in reference.parameters():
                p.add_(0.1 * torch.randn_like(p))
            theirs = reference(torch.from_numpy(hf_ids)).logits.numpy()      # (B, T, V)
        reference.save_pretrained(Path(workdir.name) / name)
        ours = hf.load(Path(workdir.name) / name)
        cfg = ours.config
        if name == "mistral":
            off = Model(dataclasses.replace(cfg, attention_pattern="dense"), params=ours.params)
        else:
            off = Model(dataclasses.replace(cfg, qk_norm=False),
                        params={k: v for k, v in ours.params.items() if "_norm." not in k})
        parity[name] = (float(np.abs(ours.forward(hf_ids) - theirs).max()),
                        float(np.abs(off.forward(hf_ids) - theirs).max()))
        switch = f"sliding window {cfg.attn_window}" if cfg.local_attention(0) else f"qk_norm={cfg.qk_norm}"
        print(f"{type(reference).__name__:>18} loaded as {switch}: max |logit diff| {parity[name][0]:.1e}; "
              f"with the switch off {parity[name][1]:.2f}")
    workdir.cleanup()
else:
    print("torch / transformers >= 5 not importable: the comparison with transformers is skipped.")

# %% [markdown]
# ## Summary
# - Mistral = LLaMA + `attention_pattern="sliding"`: every layer masks keys with $i - j \ge W$. The attention backward
#   is unchanged (masked probabilities are 0), and $L$ layers reach $L(W-1)$ positions back, measured bit for bit.
# - The window bounds the KV cache: a rolling buffer of $W$ slots per layer, position $i$ in slot $i \bmod W$;
#   for Mistral 7B at 32K tokens, 4 GiB becomes 0.5 GiB.
# - Qwen3 = LLaMA + `qk_norm=True`: RMSNorm over the head dim of q and k before RoPE, with two $D$-vectors per layer.
#   Scores are then bounded by $\sqrt D \max|\gamma_q| \max|\gamma_k|$ however large q and k grow.
# - Neither needed a branch in the model: a field in `ModelConfig`, a mask builder and a norm that already existed.
#
# ## Exercises
# 1. Put a window on only some layers (Qwen3's own configs can do this, and Gemma alternates local and global
#    layers): write the `local_attention(i)` answer for "every fourth layer dense", and predict the reach of a 4-layer
#    model with $W = 4$ before measuring it.
# 2. Generate with a rolling buffer: write a decoding loop for the tiny Mistral that keeps $W$ keys and values per
#    layer in slots $i \bmod W$, and check its logits against `model.forward` on the whole sequence.
# 3. Show numerically that the QK-norm backward gives $\bar q \perp q$ when $\epsilon = 0$. Why must it, given that
#    the output does not change when $q$ is scaled?
# 4. With QK-norm, how can training still make attention sharper? Double `q_w` and `k_w` in the table above and
#    explain what happens to the bound and to the peak probabilities.

# %% [markdown]
# ## Check

# %%
assert (allowed == np.minimum(np.arange(T_SHOW) + 1, W_SHOW)).all()          # row i allows min(i + 1, W) keys
assert (sliding <= causal).all() and composed_ok
for (preset, n_layer), (moved, last) in reach_table.items():
    expected = T - 1 if preset == "llama" else n_layer * (W - 1)             # dense: everything after 0 moves
    assert last == expected and moved[:last + 1].all() and not moved[last + 1:].any(), (preset, n_layer, moved)
assert extra_keys["mistral"] == [] and len(extra_keys["qwen3"]) == 2 * llama.n_layer
assert full_cache == 8 * rolling_cache and per_token == 128 * 2**10          # 128 KiB per position, 8x at 32K
for scale, (plain, plain_peak, normed, normed_peak) in qk_table.items():
    assert normed <= bound, (scale, normed, bound)                           # QK-norm: bounded at every scale
assert qk_table[256][0] > bound and qk_table[256][1] > 0.99                  # plain: past the bound, near one-hot
assert abs(qk_table[256][2] / qk_table[1][2] - 1) < 1e-5                     # the norm divides the scale away
assert max(qk_errors.values()) < 1e-6, qk_errors
for name, errors in grad_errors.items():
    assert max(errors.values()) < 1e-6, (name, errors)
if HAVE_TORCH:
    assert sorted(parity) == ["mistral", "qwen3"]
    for name, (diff, switched_off) in parity.items():
        assert diff < 1e-4 and switched_off > 1e-2, (name, diff, switched_off)
assert all(p.exists() for p in pictures)
print("lesson 27 OK")
