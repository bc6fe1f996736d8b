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
# # Lesson 13 — GPT-3: scale and sparse attention
#
# **You will learn**
# - to count a GPT's parameters from its shapes, $N \approx 12 L C^2$, and check the count against the published
#   sizes of GPT-1, GPT-2 and GPT-3;
# - to check a printed size table against the architecture, and find which of its columns were swapped;
# - the training compute of a dense Transformer, $6N$ FLOPs per token (forward 2, backward 4), plus attention, and
#   GPT-3's budget $6ND \approx 3.14 \times 10^{23}$ FLOPs, in A100-days;
# - GPT-3's alternating dense and locally banded attention (稀疏注意力, sparse attention): the masks, what a banded
#   layer can and cannot see, and why alternating keeps the whole context in reach.
#
# GPT-3 (Brown et al. 2020, "Language Models are Few-Shot Learners") is GPT-2's architecture scaled up more than 100x,
# to 175B parameters, with one change: *"we use alternating dense and locally banded sparse attention patterns in the
# layers of the transformer, similar to the Sparse Transformer"*.

# %%
import os
from itertools import combinations

import numpy as np

from minigpt import Model, ModelConfig, cross_entropy
from minigpt.config import flops_per_token, num_params
from minigpt.gradcheck import check_model_gradients, move_off_init
from minigpt.layers.embedding import embedding_forward
from minigpt.layers.norms import layernorm_forward
from minigpt.layers.positions import learned_position_forward
from minigpt.masks import banded_mask, causal_mask
from minigpt.viz import plot_mask

FAST = os.environ.get("MINIGPT_FAST") == "1"

# %% [markdown]
# ## Counting parameters
#
# A GPT-2/3 block (lesson 08's count): attention $4C^2 + 4C$ (Q, K, V, O with biases), MLP $8C^2 + 5C$ ($C \times 4C$
# and $4C \times C$ with biases), two LayerNorms $4C$: $12C^2 + 13C$ per block. Add the token table $VC$ (tied with
# the head, so counted once), the position table $T_{\max} C$ and the final LayerNorm $2C$:
#
# $$ N = L\,(12C^2 + 13C) + (V + T_{\max})\,C + 2C \;\approx\; 12\,L\,C^2 \quad (C \gg 1). $$
#
# GPT-3 175B: $12 \times 96 \times 12288^2 = 173.9$B in the blocks, $0.64$B in the two tables.
#
# ## Counting FLOPs
#
# A matmul $y = xW$ with $W$ of shape $(C_{\text{in}}, C_{\text{out}})$ does $C_{\text{in}} C_{\text{out}}$
# multiply-adds per token, **2 FLOPs per weight**. The backward does two matmuls of the same size (lesson 01):
# $dx = dy\,W^\top$ and $dW = x^\top dy$, **4 FLOPs per weight**. Training therefore costs about
#
# $$ 6N \text{ FLOPs per token}, \qquad \text{and } 6ND \text{ for } D \text{ training tokens.} $$
#
# Attention adds matmuls that have no weights: $QK^\top$ and $\text{probs}\cdot V$, each $T \cdot C$ multiply-adds per
# token and layer (all heads together), so $2 \cdot 2TC$ forward and $12\,L\,T\,C$ for training (the full
# $T \times T$ score matrix; a causal kernel can skip half). It matters when $12LTC$ is comparable with
# $6 \cdot 12LC^2$, that is when $T$ approaches $6C$: for GPT-3, $T = 2048$ against $6C = 73{,}728$, so attention is a
# few percent. `minigpt.config.flops_per_token` counts $6(N_{\text{non-embedding}} + VC) + 12LTC$: a lookup in a
# position table is not a matmul, but the tied head is.
#
# First our formula, in a few lines, against `num_params` and `flops_per_token` (which add up the shapes the model
# allocates), for every GPT preset.

# %%
def gpt_params(L, C, V, T_max):
    """N for a GPT-2/3 (tied head, learned positions, final LayerNorm)."""
    return L * (12 * C * C + 13 * C) + (V + T_max) * C + 2 * C


def gpt_train_flops(L, C, V, T, non_embedding):
    """Training FLOPs per token: 6 per weight of every matmul (blocks and head), and attention's 12 L T C."""
    return 6 * (non_embedding + V * C) + 12 * L * T * C


PUBLISHED = {  # parameters as published: GPT-1 paper; GPT-2 as OpenAI's released models (their corrected
    # counts: the paper had printed 117M/345M/762M/1542M); GPT-3 paper, Table 2.1
    "openai-gpt": 117e6, "gpt2-small": 124e6, "gpt2-medium": 355e6, "gpt2-large": 774e6, "gpt2-xl": 1558e6,
    "gpt3-small": 125e6, "gpt3-medium": 350e6, "gpt3-large": 760e6, "gpt3-xl": 1.3e9, "gpt3-2.7b": 2.7e9,
    "gpt3-6.7b": 6.7e9, "gpt3-13b": 13e9, "gpt3-175b": 175e9,
}
print(f"{'preset':12} {'L':>3} {'C':>6} {'H':>3} {'D':>4} {'N (presets)':>16} {'published':>10} {'off':>6} "
      f"{'train FLOPs/token':>18} {'attn share':>10}")
count_rows = {}
for name, published in PUBLISHED.items():
    c = ModelConfig.preset(name)
    n = num_params(c)
    ours = gpt_params(c.n_layer, c.d_model, c.vocab_size, c.max_seq_len) - (2 * c.d_model if not c.final_norm else 0)
    flops = flops_per_token(c)
    attention = 12 * c.n_layer * c.max_seq_len * c.d_model
    count_rows[name] = dict(n=n["total"], formula=ours, flops=flops,
                            flops_formula=gpt_train_flops(c.n_layer, c.d_model, c.vocab_size, c.max_seq_len,
                                                          n["non_embedding"]))
    print(f"{name:12} {c.n_layer:>3} {c.d_model:>6} {c.n_head:>3} {c.head_dim:>4} {n['total']:>16,} "
          f"{published / 1e6:>9,.0f}M {n['total'] / published - 1:>+6.1%} {flops:>18.3e} {attention / flops:>10.1%}")

# %% [markdown]
# Every published size is reproduced to within its rounding (GPT-3 Medium's "350M" is 356M; Table 2.1 rounds). GPT-1
# has no final LayerNorm, so its count has no $2C$ term. Two rows of Table 2.1 do not add up as printed: GPT-3 XL with 24
# heads of 128 ($3072 \ne 2048$) and GPT-3 13B with $d_\text{model} = 5140$ (not $40 \times 128$); the presets use 16 heads
# and 5120 (the head count does not change the parameter count at all; 5120 against 5140 changes it by 0.8%).
# Attention costs $T/6C$ times the blocks' matmuls: $0.44$ for GPT-3 Small ($T = 2048$, $C = 768$), a 23% share, but
# $0.028$ for GPT-3 175B, a 2.7% share. At scale the cost is $6N$.
#
# ## The textbook's size table, checked
#
# The textbook summarises GPT-1, GPT-2 and GPT-3 in a small table: 117M parameters / 12 layers / hidden size 768,
# 1.5B / 48 / 1600, and 175B / 96 / 12288. The numbers are right, but two of its columns are printed swapped.
# Below is the table as printed, value for value in its printed columns (if your printing differs, edit
# `TEXTBOOK_AS_PRINTED`). The code does not take our word for which columns are swapped: it compares every column
# with the counts computed from the presets, then tries exchanging every pair of columns and keeps the exchanges
# that make every row agree.

# %%
TEXTBOOK_AS_PRINTED = {  # the textbook's values, in the columns it printed them in
    "GPT-1": dict(params=117e6, n_layer=768, d_model=12),
    "GPT-2": dict(params=1.5e9, n_layer=1600, d_model=48),
    "GPT-3": dict(params=175e9, n_layer=12288, d_model=96),
}
PRESET_OF = {"GPT-1": "openai-gpt", "GPT-2": "gpt2-xl", "GPT-3": "gpt3-175b"}


def computed_row(preset):
    """The same quantities, from our presets (nothing typed in by hand)."""
    c = ModelConfig.preset(preset)
    return dict(params=num_params(c)["total"], n_layer=c.n_layer, d_model=c.d_model, n_head=c.n_head,
                head_dim=c.head_dim)


COMPUTED = {model: computed_row(preset) for model, preset in PRESET_OF.items()}


def agrees(column, printed, computed):
    """A parameter count is printed rounded (117M, 1.5B): within 5%. Sizes are integers: exactly."""
    if column == "params":
        return abs(printed / computed - 1) < 0.05
    return printed == computed


def find_swapped_columns(table, computed):
    """(columns that disagree somewhere, [column pairs whose exchange makes every cell agree])."""
    columns = list(next(iter(table.values())))
    wrong = [col for col in columns if any(not agrees(col, row[col], computed[m][col]) for m, row in table.items())]
    fixes = []
    for a, b in combinations(columns, 2):
        swapped = {m: {**row, a: row[b], b: row[a]} for m, row in table.items()}
        if all(agrees(col, row[col], computed[m][col]) for m, row in swapped.items() for col in columns):
            fixes.append((a, b))
    return wrong, fixes


def show(title, table, columns):
    print(title)
    print(f"  {'model':6}" + "".join(f"{col:>14}" for col in columns))
    for m, row in table.items():
        cells = [f"{row[col] / 1e9:.3g}B" if col == "params" and row[col] >= 1e9 else
                 f"{row[col] / 1e6:.4g}M" if col == "params" else str(row[col]) for col in columns]
        marks = ["" if agrees(col, row[col], COMPUTED[m][col]) else " x" for col in columns]
        print(f"  {m:6}" + "".join(f"{cell + mark:>14}" for cell, mark in zip(cells, marks)))


wrong, fixes = find_swapped_columns(TEXTBOOK_AS_PRINTED, COMPUTED)
columns = list(TEXTBOOK_AS_PRINTED["GPT-1"])
show("textbook table as printed (x = disagrees with the presets):", TEXTBOOK_AS_PRINTED, columns)
show("computed from the presets:", COMPUTED, columns + ["n_head", "head_dim"])
print("columns that disagree:", wrong, "| exchanges that fix every row:", fixes)
for a, b in fixes:
    corrected = {m: {**row, a: row[b], b: row[a]} for m, row in TEXTBOOK_AS_PRINTED.items()}
    show(f"textbook table with '{a}' and '{b}' exchanged:", corrected, columns)

# %% [markdown]
# The detector is not tuned to this one misprint. Suppose a printing had the head count and the head size exchanged
# instead (another easy misprint): build such a table from the true values and ask again.

# %%
heads_swapped = {m: {**row, "n_head": row["head_dim"], "head_dim": row["n_head"]} for m, row in COMPUTED.items()}
other_wrong, other_fixes = find_swapped_columns(heads_swapped, COMPUTED)
print("heads/head-size variant: columns that disagree:", other_wrong, "| exchanges that fix it:", other_fixes)

# %% [markdown]
# Notice what a check like this can and cannot see. GPT-1 has 12 layers and 12 heads, GPT-3 has 96 and 96: had a
# table swapped *layers and heads*, those two rows would look right, and only GPT-2's 48 layers against 25 heads
# would give it away. A check needs rows where the columns differ.
#
# ## GPT-3's training compute
#
# The paper trained every GPT-3 model on $D = 300$B tokens. With the count from our preset:

# %%
N = num_params(ModelConfig.preset("gpt3-175b"))["total"]
D = 300e9
C_6ND = 6 * N * D
with_attention = flops_per_token(ModelConfig.preset("gpt3-175b")) * D
PF_DAY = 1e15 * 86400                                                    # one petaFLOP/s for a day
A100_PEAK = 312e12                                                       # bf16 dense tensor-core peak, FLOP/s
UTILISATION = 0.5                                                        # ASSUMED: half of peak sustained
a100_days = C_6ND / (A100_PEAK * UTILISATION) / 86400
print(f"N = {N:.4g}, D = {D:.0e}:  6ND = {C_6ND:.3e} FLOPs = {C_6ND / PF_DAY:,.0f} petaFLOP/s-days")
print(f"with attention (12 L T C per token, T = 2048): {with_attention:.3e} FLOPs (+{with_attention / C_6ND - 1:.1%})")
print(f"one A100 at {A100_PEAK / 1e12:.0f} TFLOP/s x {UTILISATION:.0%} utilisation (assumed): "
      f"{a100_days:,.0f} A100-days = {a100_days / 365:.0f} A100-years")
for gpus in (1024, 4096):
    print(f"  on {gpus} A100s: {a100_days / gpus:.1f} days")
print(f"at 100% of peak (a bound no real run reaches): {C_6ND / A100_PEAK / 86400:,.0f} A100-days")

# %% [markdown]
# $6ND = 3.14 \times 10^{23}$ FLOPs, the paper's own figure (Appendix D: $3.64 \times 10^3$ petaflop/s-days,
# from the same count, 6 FLOPs per parameter per token, without attention). At an assumed 50% of an A100's bf16 peak that is about 23,000 A100-days:
# 64 years on one GPU, three weeks on a thousand. (GPT-3 itself was trained on V100 GPUs; the A100 is just a
# yardstick here. Large training runs typically report 30-50% of peak; the estimate scales as 1/utilisation.)
#
# ## Sparse attention: alternating dense and locally banded layers
#
# The paper does not say which layers come first; in minigpt the even layers (0, 2, ...) attend densely, query $i$
# sees keys $0..i$, and the odd layers are **locally banded**:
# the sequence is cut into blocks of `window` positions and a query sees only the earlier positions of its own block,
#
# $$ M^{\text{band}}_{ij} = [\, j \le i \,] \wedge [\, \lfloor j/w \rfloor = \lfloor i/w \rfloor \,] , $$
#
# the local pattern of the Sparse Transformer (Child et al. 2019). The paper does not give GPT-3's band width; our
# preset's 256 is an assumption. Drawn for $T = 16$, $w = 4$:

# %%
T_show, w_show = 16, 4
dense = causal_mask(T_show)                                              # (T, T)
band = banded_mask(T_show, w_show)                                       # (T, T)
dense_png = plot_mask(dense, "even layers: dense (causal)", "13_gpt3_dense_layer")
band_png = plot_mask(band, f"odd layers: locally banded, window {w_show}", "13_gpt3_banded_layer")
for name, m in (("dense", dense), ("banded", band)):
    print(f"{name}: {int(m.sum())} of {T_show * T_show} query-key pairs")
    print("\n".join("  " + "".join("#" if v else "." for v in row) for row in m[:8]), "\n  ...")
print("saved", dense_png, band_png)

# %% [markdown]
# How much attention does a banded layer skip? With $w$ dividing $T$, a dense causal layer has $T(T+1)/2$ pairs
# and a banded one $\frac{T}{w}\cdot\frac{w(w+1)}{2} = T(w+1)/2$, a fraction $(w+1)/(T+1)$.

# %%
T3, w3 = 2048, ModelConfig.preset("gpt3-175b").attn_window
dense_pairs = int(causal_mask(T3).sum())
band_pairs = int(banded_mask(T3, w3).sum())
print(f"T = {T3}, window = {w3}: dense {dense_pairs:,} pairs, banded {band_pairs:,} "
      f"({band_pairs / dense_pairs:.1%}); alternating layers average {(1 + band_pairs / dense_pairs) / 2:.1%} of dense")

# %% [markdown]
# A banded layer computes an eighth of the attention pairs. minigpt's reference attention builds the whole
# $T \times T$ score matrix and masks it, so here the mask changes *what* is computed, not how much; the savings
# need a kernel that skips the masked blocks (the Sparse Transformer's block-sparse kernels). And at $T = 2048$
# attention is ~3% of GPT-3's FLOPs: sparse layers pay off at long contexts, where $T$ approaches $6C$.
#
# **What can a stack of banded layers see?** Output $i$ depends on input $j$ after one layer when $M_{ij}$; after
# two layers when some $k$ has $M^{(2)}_{ik}$ and $M^{(1)}_{kj}$: a boolean matrix product. Banded layers alone never
# leave their block; one dense layer anywhere in the stack reopens the whole past.

# %%
def reach(masks):
    """(T, T) bool: which inputs j can change output i after layers with these masks (bottom first)."""
    R = np.eye(masks[0].shape[0], dtype=bool)                            # (T, T) before any layer: itself
    for M in masks:
        R = (M.astype(np.int64) @ R.astype(np.int64)) > 0                # (T, T) i sees k, k depends on j
    return R


for name, stack in (("banded, banded, banded, banded", [band] * 4),
                    ("dense, banded (GPT-3's pair)", [dense, band]),
                    ("banded, dense", [band, dense])):
    R = reach(stack)
    print(f"{name:32s} output 15 depends on inputs {np.flatnonzero(R[15]).tolist()}")

# %% [markdown]
# ## A tiny GPT-3, run
#
# The `gpt3` preset at its tiny size: 4 layers, $C = 64$, $T_{\max} = 64$, window 16, pre-norm GPT-2 blocks.
# Three checks that the model really alternates:
# 1. running the blocks one by one with masks causal, banded, causal, banded reproduces `Model.forward`;
# 2. changing one early token changes every later output (a dense layer carries it), while the same model with
#    every layer banded (`attn_mask` replaces every layer's mask) changes only that token's own block;
# 3. a whole-model gradient check in float64.

# %%
g3 = ModelConfig.preset("gpt3")
model = Model(g3, seed=0, dtype="float64")
rng = np.random.default_rng(0)
B, T = 2, g3.max_seq_len
ids = rng.integers(0, g3.vocab_size, (B, T))                             # (B, T)
targets = rng.integers(0, g3.vocab_size, (B, T))                         # (B, T)
logits = model.forward(ids)                                              # (B, T, V)
loss, dlogits = cross_entropy(logits, targets)
model.zero_grad()
model.backward(dlogits)
print(f"tiny gpt3: {model.num_params():,} parameters, logits {logits.shape}, loss {loss:.4f} "
      f"(log V = {np.log(g3.vocab_size):.4f})")

# 1. block by block, choosing each layer's mask ourselves
p, pos = model.params, np.broadcast_to(np.arange(T), (B, T))           # pos (B, T)
x = embedding_forward(ids, p["wte"])[0] + learned_position_forward(pos, p["wpe"])[0]   # (B, T, C)
layer_masks = [causal_mask(T) if i % 2 == 0 else banded_mask(T, g3.attn_window) for i in range(g3.n_layer)]
for i, m in enumerate(layer_masks):
    x, _ = model.block_forward(x, i, m, model.block_context(B, T))                       # (B, T, C)
x, _ = layernorm_forward(x, p["norm_f.w"], p["norm_f.b"], g3.norm_eps)                # (B, T, C)
by_blocks_diff = float(np.abs(x @ p["wte"].T - logits).max())                          # (B, T, V) compared
print("block by block with masks [causal, banded, causal, banded] vs Model.forward:", by_blocks_diff)

# 2. who hears about a changed token?
changed = ids.copy()
changed[:, 3] = (changed[:, 3] + 1) % g3.vocab_size                      # change token 3 of every sample
all_banded = banded_mask(T, g3.attn_window)                              # (T, T)
moved_alternating = np.flatnonzero(np.abs(model.forward(changed) - logits).max(axis=(0, 2)) > 1e-12)
moved_banded = np.flatnonzero(np.abs(model.forward(changed, attn_mask=all_banded)
                                     - model.forward(ids, attn_mask=all_banded)).max(axis=(0, 2)) > 1e-12)
print(f"token 3 changed -> alternating model: outputs {moved_alternating.min()}..{moved_alternating.max()} move; "
      f"every layer banded: outputs {moved_banded.min()}..{moved_banded.max()} move (its block of {g3.attn_window})")

# %% [markdown]
# And the gradient check, on the tiny check size (2 layers, $C = 32$, $T = 8$, $V = 50$, window 4, so layer 1 is
# banded), with lesson 08's `check_model_gradients`: weights moved off their initialisation first, and the key bias's
# exactly-zero gradient compared absolutely (lesson 08 explains both).

# %%
check_model = Model(ModelConfig.preset("gpt3", n_layer=2, d_model=32, max_seq_len=8, vocab_size=50, attn_window=4),
                    seed=0, dtype="float64")
noise = np.random.default_rng(1)
move_off_init(check_model, noise)                                        # off the initialisation
c_ids, c_targets = noise.integers(0, 50, (2, 8)), noise.integers(0, 50, (2, 8))   # (2, 8) each
errors = check_model_gradients(check_model, c_ids, c_targets, entries=4 if FAST else 10)
print(f"{len(errors)} tensors, worst error {max(errors.values()):.1e} ({max(errors, key=errors.get)})")

# %% [markdown]
# ## Summary
# - $N = L(12C^2 + 13C) + (V + T_{\max})C + 2C \approx 12LC^2$; the presets reproduce GPT-1 (117M), GPT-2 (124M-1.56B)
#   and GPT-3 (125M-175B) within their rounding.
# - A printed table can be checked mechanically: compare each column with the architecture, then find the column
#   exchange that makes every row agree. The textbook's GPT table has its layer and hidden-size columns
#   exchanged.
# - Training costs $\approx 6N$ FLOPs per token (2 forward, 4 backward per weight) plus $12LTC$ for attention. GPT-3:
#   $6ND = 3.14 \times 10^{23}$ FLOPs, about 23,000 A100-days at an assumed 50% utilisation.
# - GPT-3 alternates dense and locally banded attention. A banded layer sees only its block; the dense layers keep
#   the whole past in reach. The savings need a sparse kernel, and matter at long contexts ($T \to 6C$).
#
# ## Exercises
# 1. Count LLaMA-2-7B (`ModelConfig.preset("llama2-7b")`): its MLP has three matrices of hidden size
#    $11008 \approx 2.69\,C$ instead of two of $4C$, and no biases. How many $C^2$ per block? Why $\approx 8C/3$?
# 2. For GPT-3 175B, at which context length $T$ would attention (full square, $12LTC$) cost as much as all the
#    matmuls with weights? And with a causal kernel that skips the upper triangle?
# 3. The Chinchilla rule of thumb trains on $D \approx 20N$ tokens. How many tokens, and how many A100-days at 50%,
#    would a compute-optimal 175B model need?
# 4. Replace the banded layers by a sliding window of the same width (`minigpt.masks.sliding_window_mask`). Which
#    queries see more keys, which the same? Does `reach` still need a dense layer to see the whole past?

# %% [markdown]
# ## Check

# %%
for name, row in count_rows.items():
    assert row["n"] == row["formula"], name                    # the formula is the presets' own count
    assert row["flops"] == row["flops_formula"], name
    assert abs(row["n"] / PUBLISHED[name] - 1) < 0.02, name    # published sizes, within their rounding
assert set(wrong) == {"n_layer", "d_model"} and fixes == [("n_layer", "d_model")], (wrong, fixes)
assert set(other_wrong) == {"n_head", "head_dim"} and other_fixes == [("n_head", "head_dim")]
assert abs(C_6ND / 3.14e23 - 1) < 0.01, C_6ND                 # the GPT-3 paper's figure
assert abs(C_6ND / PF_DAY / 3640 - 1) < 0.01                   # 3.64e3 petaflop/s-days
assert 20_000 < a100_days < 27_000, a100_days
assert band_pairs == T3 * (w3 + 1) // 2 and dense_pairs == T3 * (T3 + 1) // 2
assert (reach([dense, band]) == dense).all() and (reach([band] * 4) == band).all()
assert logits.shape == (B, T, g3.vocab_size) and logits.dtype == np.float64
assert abs(loss - np.log(g3.vocab_size)) < 0.05, loss          # near-uniform predictions at initialisation
assert by_blocks_diff < 1e-12, by_blocks_diff
assert moved_alternating.tolist() == list(range(3, T))         # a dense layer carries token 3 to every later output
assert moved_banded.tolist() == list(range(3, g3.attn_window))  # banded everywhere: only token 3's own block
assert max(errors.values()) < 1e-6, {k: e for k, e in errors.items() if e >= 1e-6}
assert dense_png.exists() and band_png.exists()
print("lesson 13 OK")
