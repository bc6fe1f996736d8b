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
# # Lesson 26 — Real weights: Hugging Face checkpoints in and out, without PyTorch
#
# **You will learn**
# - what a checkpoint folder holds: `config.json` (the architecture) and `*.safetensors` (the weights), and how to
#   read a safetensors file with nothing but `struct`, `json` and NumPy;
# - bfloat16, the 16-bit format most large models ship in, which NumPy does not have, and how to widen it exactly;
# - how Hugging Face names and stores the same numbers minigpt keeps: `Conv1D` (in, out) against `nn.Linear`
#   (out, in), the fused `c_attn` and `gate_up_proj`, GQA's narrow k / v projections, tied output heads;
# - why gradients map to Hugging Face's layout exactly as parameters do (checked by finite differences);
# - how to write a minigpt model back as a checkpoint that `transformers` loads, and how to check the two agree.
#
# Everything so far ran on weights we drew ourselves. The models people actually use (GPT-2, LLaMA, GLM-4) are
# published as files on the Hugging Face Hub, in the layout of the `transformers` library. This lesson reads and
# writes that layout. Nothing is downloaded: the lesson makes its own small checkpoints, and the last section says
# how to point the same code at a real `gpt2` folder.

# %%
import json
import os
import struct
import tempfile
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
from safetensors.numpy import load_file

from minigpt import hf
from minigpt.config import ModelConfig
from minigpt.gradcheck import numerical_gradient, rel_error, sample_indices
from minigpt.layers.loss import cross_entropy
from minigpt.model import Model
from minigpt.viz import save_figure

FAST = os.environ.get("MINIGPT_FAST") == "1"
try:  # the last section compares with transformers when it is installed; everything else needs neither
    import torch
    import transformers
    HAVE_TORCH = True
except ImportError:
    HAVE_TORCH = False
print("torch + transformers importable:", HAVE_TORCH)

WORKDIR = tempfile.TemporaryDirectory(prefix="minigpt-lesson26-")  # removed when the lesson ends
ROOT = Path(WORKDIR.name)
B, T, V = 2, 8, 100
rng = np.random.default_rng(0)
ids = rng.integers(0, V, size=(B, T))                        # (B, T)
targets = rng.integers(0, V, size=(B, T))                    # (B, T)

# %% [markdown]
# ## A checkpoint is two files
#
# A Hugging Face model folder holds
# - `config.json`: the architecture, in `transformers`' field names (`"model_type": "gpt2"`, `"n_embd": 768`, ...);
# - `model.safetensors`: every weight, by name. A big model is split into shards `model-00001-of-00004.safetensors`, ...,
#   listed by `model.safetensors.index.json` (name -> file);
# - and files we do not need for the forward pass: the tokenizer (`tokenizer.json`, lesson 10),
#   `generation_config.json` (sampling defaults).
#
# Older folders have `pytorch_model.bin` instead: a Python *pickle*, which needs torch to read and can run arbitrary code
# when loaded. safetensors was made to fix both: it is a JSON header followed by raw bytes, so any language can read it
# and reading it executes nothing.
#
# First, a checkpoint to look at. A random tiny GPT-2 from minigpt, moved off its initialisation (biases 0, norm gains 1)
# so that every tensor matters, written with `minigpt.hf.save`.

# %%
def tiny(preset):
    """A 2-layer d_model=32 model of a family, with random weights away from the init."""
    config = ModelConfig.preset(preset, vocab_size=V, n_layer=2, d_model=32, n_head=4, max_seq_len=16)
    model = Model(config, seed=1)
    noise = np.random.default_rng(2)
    for value in model.params.values():
        value += (0.1 * noise.standard_normal(value.shape)).astype(value.dtype)  # same shape and dtype
    return model


ours = {family: tiny(preset) for family, preset in (("gpt2", "gpt2"), ("llama", "llama"), ("glm", "glm4"))}
paths = {family: hf.save(model, str(ROOT / family)) for family, model in ours.items()}
gpt2_file = Path(paths["gpt2"]) / "model.safetensors"
print("files:", sorted(os.listdir(paths["gpt2"])), "| model.safetensors:", gpt2_file.stat().st_size, "bytes")
print(json.loads((Path(paths["gpt2"]) / "config.json").read_text()))

# %% [markdown]
# ## Reading safetensors by hand
#
# The format is, byte for byte:
#
# | bytes | content |
# |---|---|
# | 0 .. 7 | N, the header length: an unsigned 64-bit integer, little-endian |
# | 8 .. 8+N-1 | the header: UTF-8 JSON `{name: {"dtype": "F32", "shape": [...], "data_offsets": [begin, end]}, "__metadata__": {...}}`, padded with spaces to a multiple of 8 |
# | 8+N .. end | the data: every tensor's bytes, C order (row-major), little-endian, back to back |
#
# `data_offsets` count from the start of the data, not of the file. The padding keeps the data 8-byte aligned, so a
# reader can map the file into memory and view each tensor in place, without copying. `struct.unpack("<Q", ...)` reads
# the length (`<` little-endian, `Q` unsigned 64-bit), `json.loads` the header, `np.frombuffer` each tensor.

# %%
raw = gpt2_file.read_bytes()
(n_header,) = struct.unpack("<Q", raw[:8])                   # header length N
header = json.loads(raw[8:8 + n_header])                     # {name: {dtype, shape, data_offsets}}
data = raw[8 + n_header:]                                    # the tensors' bytes, back to back
metadata = header.pop("__metadata__")
print(f"N = {n_header} header bytes (ends with {raw[8 + n_header - 6:8 + n_header]!r}), metadata {metadata}, "
      f"{len(header)} tensors, {len(data)} data bytes")
by_offset = sorted(header.items(), key=lambda item: item[1]["data_offsets"][0])
print(f"{'name':40s} {'dtype':5s} {'shape':10s} {'data_offsets':>16s}")
for name, info in by_offset[:6] + by_offset[-2:]:
    print(f"{name:40s} {info['dtype']:5s} {str(tuple(info['shape'])):10s} {str(info['data_offsets']):>16s}")

NUMPY_DTYPES = {"F64": "<f8", "F32": "<f4", "F16": "<f2", "I64": "<i8", "I32": "<i4", "U8": "u1", "BOOL": "?"}


def read_by_hand(name):
    """One tensor, straight from the bytes."""
    info = header[name]
    begin, end = info["data_offsets"]
    flat = np.frombuffer(data[begin:end], dtype=NUMPY_DTYPES[info["dtype"]])  # (prod(shape),)
    return flat.reshape(info["shape"])                                         # C order


by_hand = {name: read_by_hand(name) for name in header}
library = load_file(str(gpt2_file))                          # safetensors.numpy: {name: array}
print("hand-read == safetensors.numpy.load_file for every tensor:",
      sorted(by_hand) == sorted(library) and all(np.array_equal(by_hand[k], library[k]) for k in library))
tiles = [info["data_offsets"] for _, info in by_offset]
print("the tensors tile the data exactly (no gaps, no overlaps):",
      tiles[0][0] == 0 and all(a[1] == b[0] for a, b in zip(tiles, tiles[1:])) and tiles[-1][1] == len(data))

# %% [markdown]
# The picture of the same file: the 8 length bytes, the JSON header, then the tensors in the order the writer chose
# (the safetensors writer orders them by dtype, then by name: not in model order).

# %%
KIND_COLORS = {"embedding": "tab:blue", "attention": "tab:orange", "mlp": "tab:green", "norm": "tab:red"}


def kind(name):
    if ".attn." in name:
        return "attention"
    if ".mlp." in name:
        return "mlp"
    return "norm" if ".ln_" in name else "embedding"


fig, ax = plt.subplots(figsize=(10, 2.2))
ax.broken_barh([(0, 8 + n_header)], (0, 1), color="0.6")
for name, info in by_offset:
    begin, end = info["data_offsets"]
    ax.broken_barh([(8 + n_header + begin, end - begin)], (0, 1), color=KIND_COLORS[kind(name)],
                   edgecolor="white", linewidth=0.3)
ax.annotate(f"8-byte length + JSON header ({8 + n_header:,} bytes)", xy=((8 + n_header) / 2, 1.0),
            xytext=(0.04 * len(raw), 1.27), fontsize=8, va="center",
            arrowprops=dict(arrowstyle="->", color="0.3"))                # inside the axes, pointing at the grey bar
labels = [k if k != "norm" else "norm (128 bytes each: too thin to see)" for k in KIND_COLORS]
ax.legend(handles=[plt.Rectangle((0, 0), 1, 1, color=c) for c in KIND_COLORS.values()], labels=labels,
          loc="upper center", bbox_to_anchor=(0.5, -0.35), ncol=4, fontsize=8)
ax.set_xlim(0, len(raw))
ax.set_ylim(0, 1.5)
ax.set_yticks([])
ax.set_xlabel("byte offset in model.safetensors")
ax.set_title("A safetensors file: a header that says where each tensor is, then the raw numbers")
layout_png = save_figure(fig, "26_safetensors_layout")
print("saved", layout_png)

# %% [markdown]
# ## bfloat16: the dtype NumPy lacks
#
# A float32 is 1 sign bit, 8 exponent bits and 23 mantissa bits. **bfloat16** keeps the sign and the 8 exponent bits
# and only 7 mantissa bits: it is exactly the top 16 bits of a float32. So it covers the same range as float32
# (float16, with 5 exponent bits, overflows above 65504) in 2 bytes a number instead of 4, with 2 to 3 significant
# decimal digits. LLaMA, GLM-4 and most large models are published in bfloat16.
#
# NumPy has no bfloat16, but widening is exact and free: read the 16-bit words, put them in the top half of 32-bit
# words (`<< 16`), and view those as float32. Going the other way by dropping the low 16 bits (truncation) changes a
# number $x = (1.m)_2 \cdot 2^e$ by less than one unit in the 7th mantissa bit, $2^{e-7} \le 2^{-7}|x|$:
# a relative error below $2^{-7} \approx 0.8\%$ (half that when rounding to nearest, as `torch` does).
#
# Let us write a bfloat16 copy of the GLM-4 checkpoint by hand, the reader above run backwards, and load it with
# `minigpt.hf.load` (which widens BF16 tensors as just described).

# %%
def write_bf16_safetensors(tensors, file):
    """A safetensors file with every tensor truncated to bfloat16, written byte by byte."""
    header, blobs, offset = {"__metadata__": {"format": "pt"}}, [], 0
    for name in sorted(tensors):
        bits = tensors[name].astype(np.float32).view(np.uint32) >> 16    # same shape: the top 16 bits
        blob = bits.astype("<u2").tobytes()                              # 2 bytes a number
        header[name] = {"dtype": "BF16", "shape": list(tensors[name].shape),
                        "data_offsets": [offset, offset + len(blob)]}
        blobs.append(blob)
        offset += len(blob)
    text = json.dumps(header).encode()
    text += b" " * (-len(text) % 8)                                      # pad the header to a multiple of 8
    Path(file).write_bytes(struct.pack("<Q", len(text)) + text + b"".join(blobs))


glm_bf16 = ROOT / "glm-bf16"
glm_bf16.mkdir()
glm_config = json.loads((Path(paths["glm"]) / "config.json").read_text())
(glm_bf16 / "config.json").write_text(json.dumps({**glm_config, "dtype": "bfloat16"}))
write_bf16_safetensors(load_file(str(Path(paths["glm"]) / "model.safetensors")), glm_bf16 / "model.safetensors")
widened = hf.load(str(glm_bf16))                             # float32 params, from bfloat16 bits
bf16_rel_err = max(float(np.max(np.abs(widened.params[k] - p) / np.abs(p))) for k, p in ours["glm"].params.items())
sizes = [(Path(p) / "model.safetensors").stat().st_size for p in (paths["glm"], glm_bf16)]
print(f"float32 file {sizes[0]} bytes, bfloat16 file {sizes[1]} bytes; worst relative change "
      f"{bf16_rel_err:.2e} < 2^-7 = {2.0 ** -7:.2e}")

# %% [markdown]
# ## The maths: one linear map, three layouts
#
# minigpt computes every projection as $y = xW + b$ with a row vector $x \in \mathbb{R}^{C_\text{in}}$ and
# $W \in \mathbb{R}^{C_\text{in} \times C_\text{out}}$: weights are stored **(in, out)**.
#
# - PyTorch's `nn.Linear` (LLaMA, GLM-4) computes $y = xA^\top + b$ with $A \in \mathbb{R}^{C_\text{out} \times C_\text{in}}$,
#   stored **(out, in)**. So $W = A^\top$: load transposes, save transposes back.
# - GPT-1 and GPT-2 use `Conv1D`, a name left over from OpenAI's TensorFlow code, where the projection was written as a
#   width-1 convolution. It computes $y = xW + b$ with $W$ stored **(in, out)**, like ours: no transpose.
#
# A square matrix ($C_\text{in} = C_\text{out}$, e.g. LLaMA's `q_proj` when $HD = C$) has the same shape both ways:
# forgetting the transpose passes every shape check and silently computes something else. That is why layouts are
# checked by values (logits), not by shapes.
#
# **Fused projections.** Three products with the same input are one product with the weights side by side:
# $[\,q \mid k \mid v\,] = x\,[\,W_q \mid W_k \mid W_v\,] + [\,b_q \mid b_k \mid b_v\,]$. GPT-2 stores that
# `c_attn` $\in \mathbb{R}^{C \times 3C}$; loading splits its columns into three. GLM-4 fuses SwiGLU's two input
# projections into `gate_up_proj`, an `nn.Linear` with $2F$ outputs, so its rows are stacked:
# $A_{gu} = \begin{bmatrix} A_\text{gate} \\ A_\text{up} \end{bmatrix} \in \mathbb{R}^{2F \times C}$ and
# $x A_{gu}^\top = [\, x A_\text{gate}^\top \mid x A_\text{up}^\top \,]$, hence
# $W_\text{gate} = A_{gu}[{:}F]^\top$, $W_\text{up} = A_{gu}[F{:}]^\top$ (gate first: GLM's code does
# `gate, up = gate_up_proj(x).chunk(2, dim=-1)`). With GQA, `k_proj` and `v_proj` have only $H_{kv} D$ outputs.
#
# **Tied heads.** GPT-2 computes its logits with the embedding matrix $E$ (`wte`, $V \times C$):
# $\text{logits} = h E^\top$. The file then has no `lm_head.weight` at all (some writers store an equal copy).
#
# **Gradients map the same way.** Every mapping above only moves entries: the HF tensors are
# $\theta_\text{HF} = P(\theta)$ for a fixed rearrangement $P$. The loss is the same function either way,
# $L_\text{HF}(P(\theta)) = L(\theta)$, and each HF entry *is* one of our entries, so its derivative is that entry's
# derivative: $\nabla_{\theta_\text{HF}} L = P(\nabla_\theta L)$. Spelled out:
# - transpose: $A_{ij} = W_{ji}$ gives $\partial L / \partial A_{ij} = \partial L / \partial W_{ji}$. From the linear
#   layer's backward (lesson 01), $\partial L/\partial W = x^\top\, \partial L/\partial y$ and, for $y = xA^\top$,
#   $\partial L/\partial A = (\partial L/\partial y)^\top x = (x^\top\, \partial L/\partial y)^\top$: the same numbers, transposed;
# - fuse: column block $j$ of `c_attn` is $W_q$, $W_k$ or $W_v$, and each output column depends only on its own weight
#   column, so $\partial L/\partial W_{qkv} = [\,\partial L/\partial W_q \mid \partial L/\partial W_k \mid \partial L/\partial W_v\,]$;
# - tie: one tensor used twice gets the sum of both paths (the multivariable chain rule),
#   $\partial L/\partial E = \text{scatter}_\text{ids}(\partial L/\partial x_\text{emb}) + (\partial L/\partial\,\text{logits})^\top h$,
#   a $(V, C)$ matrix: $(V, BT)$ times $(BT, C)$. minigpt's backward accumulates both into `grads["wte"]`.
#
# That is why `minigpt.hf.to_hf_state_dict` takes "any dict keyed like `model.params`": parameters or gradients.
#
# One more layout lives in the *values*, not the shapes: RoPE pairs. HF LLaMA rotates the pairs $(i, i + D/2)$
# ("rotate-half"); Meta's original checkpoints rotate $(2i, 2i+1)$ ("interleaved"), and HF's conversion script
# permuted the rows of `q_proj` and `k_proj` so that rotate-half on the converted weights equals interleaved on the
# original ones. GLM-4 in `transformers` keeps interleaved pairs on the first half of each head. minigpt reads
# this from the family (`rope_pairing`, `rotary_fraction`), so no weight is permuted on load.

# %% [markdown]
# ## config.json -> ModelConfig
#
# `minigpt.hf.config_from_hf` translates the field names and fills in what the `model_type` implies but never writes
# (LLaMA is RMSNorm, RoPE, SwiGLU; GLM-4 adds q/k/v biases and rotates half of each head with interleaved pairs).

# %%
loaded = {family: hf.load(path) for family, path in paths.items()}
configs = {family: json.loads((Path(path) / "config.json").read_text()) for family, path in paths.items()}
FIELDS = [  # ModelConfig field, GPT-2's config.json name, LLaMA's and GLM's
    ("d_model", "n_embd", "hidden_size"), ("n_layer", "n_layer", "num_hidden_layers"),
    ("n_head", "n_head", "num_attention_heads"), ("n_kv_head", None, "num_key_value_heads"),
    ("d_ff", "n_inner", "intermediate_size"), ("max_seq_len", "n_positions", "max_position_embeddings"),
    ("norm_eps", "layer_norm_epsilon", "rms_norm_eps"), ("activation", "activation_function", "hidden_act"),
    ("tie_embeddings", "tie_word_embeddings", "tie_word_embeddings"),
    ("qkv_bias", None, "attention_bias")]
print(f"{'ModelConfig field':18s} | " + " | ".join(f"{f:42s}" for f in ("gpt2", "llama", "glm (GLM-4)")))
for field, gpt_name, rot_name in FIELDS:
    cells = []
    for family in paths:
        name = gpt_name if family == "gpt2" else rot_name
        source = f"{name}={configs[family][name]}" if name else "(implied)"
        cells.append(f"{source} -> {getattr(loaded[family].config, field)}")
    print(f"{field:18s} | " + " | ".join(f"{c:42s}" for c in cells))
for field in ("norm", "norm_placement", "positions", "rope_pairing", "rotary_fraction", "bias"):
    print(f"{field:18s} | " + " | ".join(f"{'(model_type) -> ' + str(getattr(loaded[f].config, field)):42s}"
                                         for f in paths))

# %% [markdown]
# ## From Hugging Face names to ours, by hand
#
# Here is the whole mapping for GPT-2 and for GLM-4 in a few lines each: look up, split, transpose. (LLaMA is GLM-4
# without the biases and with separate `gate_proj` and `up_proj`: an exercise.)

# %%
def gpt2_by_hand(t, config):
    """HF GPT-2 tensors {name: array} -> minigpt params."""
    p = {"wte": t["transformer.wte.weight"], "wpe": t["transformer.wpe.weight"]}  # (V, C), (max_seq_len, C)
    for i in range(config.n_layer):
        h, b = f"transformer.h.{i}.", f"blocks.{i}."
        p[b + "attn.wq"], p[b + "attn.wk"], p[b + "attn.wv"] = np.split(
            t[h + "attn.c_attn.weight"], 3, axis=1)                                        # (C, 3C) -> 3 x (C, C)
        p[b + "attn.bq"], p[b + "attn.bk"], p[b + "attn.bv"] = np.split(t[h + "attn.c_attn.bias"], 3)  # 3 x (C,)
        p[b + "attn.wo"], p[b + "attn.bo"] = t[h + "attn.c_proj.weight"], t[h + "attn.c_proj.bias"]   # (C, C), (C,)
        p[b + "mlp.w_up"], p[b + "mlp.b_up"] = t[h + "mlp.c_fc.weight"], t[h + "mlp.c_fc.bias"]       # (C, F), (F,)
        p[b + "mlp.w_down"], p[b + "mlp.b_down"] = t[h + "mlp.c_proj.weight"], t[h + "mlp.c_proj.bias"]  # (F, C)
        for ours_name, theirs in (("norm1", "ln_1"), ("norm2", "ln_2")):
            p[b + ours_name + ".w"], p[b + ours_name + ".b"] = t[h + theirs + ".weight"], t[h + theirs + ".bias"]
    p["norm_f.w"], p["norm_f.b"] = t["transformer.ln_f.weight"], t["transformer.ln_f.bias"]  # (C,) each
    return p                                                   # no lm_head: logits = h @ wte.T


def glm4_by_hand(t, config):
    """HF GLM-4 tensors (GlmForCausalLM) -> minigpt params. nn.Linear weights are (out, in): transpose."""
    F = config.d_ff
    p = {"wte": t["model.embed_tokens.weight"], "norm_f.w": t["model.norm.weight"],      # (V, C), (C,)
         "lm_head": t["lm_head.weight"].T}                                                # (V, C) -> (C, V)
    for i in range(config.n_layer):
        h, b = f"model.layers.{i}.", f"blocks.{i}."
        for x in "qkv":
            p[b + f"attn.w{x}"] = t[h + f"self_attn.{x}_proj.weight"].T                   # (C, H*D) / (C, Hkv*D)
            p[b + f"attn.b{x}"] = t[h + f"self_attn.{x}_proj.bias"]                       # (H*D,) / (Hkv*D,)
        p[b + "attn.wo"] = t[h + "self_attn.o_proj.weight"].T                             # (H*D, C)
        gate_up = t[h + "mlp.gate_up_proj.weight"]                                        # (2F, C): [gate; up]
        p[b + "mlp.w_gate"], p[b + "mlp.w_up"] = gate_up[:F].T, gate_up[F:].T             # (C, F) each
        p[b + "mlp.w_down"] = t[h + "mlp.down_proj.weight"].T                             # (F, C)
        p[b + "norm1.w"] = t[h + "input_layernorm.weight"]                                # (C,)
        p[b + "norm2.w"] = t[h + "post_attention_layernorm.weight"]                       # (C,)
    return p


BY_HAND = {"gpt2": gpt2_by_hand, "glm": glm4_by_hand}
for family, convert in BY_HAND.items():
    tensors = hf.read_tensors(paths[family])                  # {HF name: array}, all shards
    mine = convert(tensors, loaded[family].config)
    same = sorted(mine) == sorted(loaded[family].params) and all(
        np.array_equal(mine[k], loaded[family].params[k]) for k in mine)
    print(f"{family}: by hand == minigpt.hf.load, bit for bit, for all {len(mine)} params: {same}")

# %% [markdown]
# Now the two bugs that no shape check catches: a GLM-4 loaded with `gate_up_proj`'s halves swapped, and one whose
# square `q_proj` (here $HD = C = 32$) was not transposed.

# %%
glm_tensors = hf.read_tensors(paths["glm"])
glm_ref = loaded["glm"].forward(ids)                           # (B, T, V)
bugs = {}
swapped = glm4_by_hand(glm_tensors, loaded["glm"].config)
for i in range(loaded["glm"].config.n_layer):
    b = f"blocks.{i}.mlp."
    swapped[b + "w_gate"], swapped[b + "w_up"] = swapped[b + "w_up"], swapped[b + "w_gate"]
bugs["[up | gate] instead of [gate | up]"] = swapped
untransposed = glm4_by_hand(glm_tensors, loaded["glm"].config)
untransposed["blocks.0.attn.wq"] = glm_tensors["model.layers.0.self_attn.q_proj.weight"]  # (C, C): fits either way
bugs["q_proj of layer 0 not transposed"] = untransposed
for bug, params in bugs.items():
    diff = np.abs(Model(loaded["glm"].config, params=params).forward(ids) - glm_ref).max()
    bugs[bug] = float(diff)
    print(f"{bug:38s}: loads without complaint, max |logit diff| = {diff:.3f}")

# %% [markdown]
# ## The library's table
#
# `minigpt.hf` keeps the mapping as ONE table per config, a list of (HF name, our keys, transposed?). Loading splits by
# it, `to_hf_state_dict` concatenates by it, so the two directions cannot disagree. Here it is for the three families
# (layer 0; every other layer repeats it with its own index).

# %%
def short(keys):
    """blocks.0.attn.wq, blocks.0.attn.wk -> blocks.0.attn.{wq,wk}"""
    if len(keys) == 1:
        return keys[0]
    stem = keys[0].rsplit(".", 1)[0]
    return stem + ".{" + ",".join(k.rsplit(".", 1)[1] for k in keys) + "}"


def shapes_of(arrays):
    """(32, 32), (32, 32), (32, 32) -> 3 x (32, 32)"""
    shapes = [str(a.shape) for a in arrays]
    if len(set(shapes)) > 1:
        return " + ".join(shapes)
    return shapes[0] if len(shapes) == 1 else f"{len(shapes)} x {shapes[0]}"


def how(keys, transposed):
    parts = (["transpose"] if transposed else []) + ([f"split in {len(keys)}"] if len(keys) > 1 else [])
    return ", ".join(parts) or "copy"


for family, model in loaded.items():
    config = model.config
    hf_shapes = {k: v.shape for k, v in hf.to_hf_state_dict(config, model.params).items()}
    print(f"\n{family}: {hf.FAMILIES[family].architecture}  (H={config.n_head}, Hkv={config.n_kv_head}, "
          f"tied head: {config.tie_embeddings})")
    print(f"  {'Hugging Face name':47s} {'HF shape':10s} {'minigpt key(s)':27s} {'minigpt shape':13s} how")
    for hf_name, keys, transposed in hf.name_table(config, family):
        if any(f".{n}." in hf_name for n in range(1, config.n_layer)):
            continue                                               # layers 1.. repeat layer 0
        shape = shapes_of([model.params[k] for k in keys])
        print(f"  {hf_name:47s} {str(hf_shapes[hf_name]):10s} {short(keys):27s} {shape:13s} {how(keys, transposed)}")
    if config.tie_embeddings:
        print(f"  {'(no lm_head.weight)':47s} {'':10s} {'wte, used as the head':27s} {'':13s} tied: logits = h @ wte.T")

# %% [markdown]
# ## Gradients in Hugging Face's layout, checked by finite differences
#
# The derivation above says `to_hf_state_dict(config, model.grads)` is the gradient of the loss with respect to the
# HF tensors. We can test that claim without torch: perturb one entry of an HF tensor, rebuild the model from the
# perturbed tensors with the hand mapping, and take the centered difference of the loss (float64, $h = 10^{-6}$,
# the bar `rel_error < 1e-6` from lesson 00). The entries tested include the fused `c_attn`, the tied `wte` (both
# paths), and GLM-4's fused, transposed `gate_up_proj`.

# %%
n_entries = 6 if FAST else 20
grad_errors = {}
for family, names in (("gpt2", ["transformer.wte.weight", "transformer.h.0.attn.c_attn.weight",
                                "transformer.h.1.mlp.c_proj.weight"]),
                      ("glm", ["model.layers.0.mlp.gate_up_proj.weight", "model.layers.1.self_attn.k_proj.weight",
                               "model.layers.0.self_attn.q_proj.bias", "lm_head.weight"])):
    model64 = hf.load(paths[family], dtype="float64")
    _, dlogits = cross_entropy(model64.forward(ids), targets)      # (B, T, V)
    model64.zero_grad()
    model64.backward(dlogits)
    hf_grads = hf.to_hf_state_dict(model64.config, model64.grads)  # {HF name: gradient in HF layout}
    tensors64 = {k: v.astype(np.float64) for k, v in hf.read_tensors(paths[family]).items()}

    def loss_of_hf_tensors():
        model = Model(model64.config, dtype="float64", params=BY_HAND[family](tensors64, model64.config))
        return cross_entropy(model.forward(ids), targets)[0]

    for name in names:
        idx = sample_indices(tensors64[name].size, n_entries, np.random.default_rng(3))
        idx, numeric = numerical_gradient(loss_of_hf_tensors, tensors64[name], indices=idx)
        grad_errors[name] = rel_error(hf_grads[name].reshape(-1)[idx], numeric)
        print(f"{family:5s} {name:42s} {str(tensors64[name].shape):10s} rel_error {grad_errors[name]:.1e}")

# %% [markdown]
# ## Exporting back: `minigpt.hf.save`
#
# `hf.save(model, folder)` writes `config.json` and `model.safetensors` with `transformers`' names and layouts (the
# table run backwards). Each file goes to a temporary name first and is then moved into place, `config.json` last, so
# no reader ever sees half a checkpoint; other files in the folder (a tokenizer) are left alone.
#
# The round trip must be exact: load, save again, and the bytes are identical; the reloaded model has the same
# parameters and the same logits, bit for bit. A config no HF family can express is refused, with the reasons.

# %%
roundtrip = {}
for family, model in ours.items():
    again_path = hf.save(loaded[family], str(ROOT / f"{family}-again"))
    same_bytes = all((Path(paths[family]) / f).read_bytes() == (Path(again_path) / f).read_bytes()
                     for f in ("config.json", "model.safetensors"))
    reloaded = hf.load(again_path)
    same_params = all(np.array_equal(reloaded.params[k], v) for k, v in model.params.items())
    logits = reloaded.forward(ids)                             # (B, T, V)
    roundtrip[family] = (same_bytes, same_params, float(np.abs(logits - model.forward(ids)).max()), logits)
    print(f"{family:5s} save -> load -> save: identical files {same_bytes}, identical params {same_params}, "
          f"max |logit diff| {roundtrip[family][2]}")

try:
    hf.save(Model(ModelConfig.preset("chatglm", n_layer=1, d_model=32, n_head=4, vocab_size=V)), str(ROOT / "no"))
except ValueError as err:
    print("\nChatGLM-6B:", err)

# %% [markdown]
# ## Checking against transformers
#
# Everything above is minigpt checking itself. The real test is the reference implementation: build small random
# models with `transformers` itself (GPT-2, LLaMA with GQA: 4 query heads sharing 2 kv heads, GLM-4), save them with
# `save_pretrained`, load them with `minigpt.hf.load`, and compare logits (float32: the differences are rounding,
# ~1e-7, and we ask for < 1e-4) and every parameter's loss gradient (mapped with `to_hf_state_dict`, relative to each
# tensor's largest entry). Then `minigpt.hf.save` goes back and `from_pretrained` must give the very same logits.
# The weights are perturbed off `transformers`' init for the same reason as ours: zero biases and unit norm gains
# would hide a wrongly mapped bias or gain. This section runs when torch and transformers are installed
# (`pip install -e ".[parity]"`); without them, the round trip above is the check.

# %%
parity = {}
if HAVE_TORCH:
    transformers.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()

    def random_hf_model(family):
        common = dict(vocab_size=V, bos_token_id=None, eos_token_id=None, pad_token_id=None)
        if family == "gpt2":
            config = transformers.GPT2Config(n_embd=32, n_layer=2, n_head=4, n_positions=16, **common)
        elif family == "llama":
            config = transformers.LlamaConfig(hidden_size=32, intermediate_size=48, num_hidden_layers=2,
                                              num_attention_heads=4, num_key_value_heads=2,
                                              max_position_embeddings=16, **common)
        else:
            config = transformers.GlmConfig(hidden_size=32, intermediate_size=48, num_hidden_layers=2,
                                            num_attention_heads=4, num_key_value_heads=2, head_dim=8,
                                            max_position_embeddings=16, **common)
        torch.manual_seed(0)
        model = transformers.AutoModelForCausalLM.from_config(config).eval()  # eval: dropout off
        with torch.no_grad():
            for p in model.parameters():
                p.add_(0.1 * torch.randn_like(p))
        return model

    for family in ("gpt2", "llama", "glm"):
        reference = random_hf_model(family)
        reference.save_pretrained(ROOT / f"hf-{family}")
        model = hf.load(str(ROOT / f"hf-{family}"))
        out = reference(torch.from_numpy(ids)).logits                               # (B, T, V)
        torch.nn.functional.cross_entropy(out.reshape(-1, V), torch.from_numpy(targets).reshape(-1)).backward()
        logits = model.forward(ids)                                                 # (B, T, V)
        _, dlogits = cross_entropy(logits, targets)
        model.zero_grad()
        model.backward(dlogits)
        grads = hf.to_hf_state_dict(model.config, model.grads)
        named = dict(reference.named_parameters())
        grad_err = max(float(np.abs(grads[k] - p.grad.numpy()).max() / np.abs(p.grad.numpy()).max())
                       for k, p in named.items())
        hf.save(model, str(ROOT / f"back-{family}"))
        back = transformers.AutoModelForCausalLM.from_pretrained(str(ROOT / f"back-{family}")).eval()
        with torch.no_grad():
            identical = torch.equal(back(torch.from_numpy(ids)).logits, out.detach())
        parity[family] = dict(cls=type(reference).__name__, n=len(named), same_keys=sorted(grads) == sorted(named),
                              logits=float(np.abs(logits - out.detach().numpy()).max()), grads=grad_err,
                              back=identical)
    print(f"{'family':6s} {'transformers class':18s} {'tensors':>7s} {'max |logit diff|':>17s} "
          f"{'worst grad rel diff':>20s}  save -> from_pretrained")
    for family, r in parity.items():
        print(f"{family:6s} {r['cls']:18s} {r['n']:7d} {r['logits']:17.2e} {r['grads']:20.2e}  "
              f"{'identical logits' if r['back'] else 'DIFFERENT'}")
else:
    print("torch / transformers not importable: the comparison with transformers is skipped "
          "(the save -> load round trip above needs neither).")

# %% [markdown]
# ## Using real weights
#
# On a machine with a network connection, download a checkpoint once, for example GPT-2 small (124M parameters,
# 0.5 GB in float32) with the Hub's command-line tool:
#
# ```bash
# huggingface-cli download openai-community/gpt2 config.json model.safetensors tokenizer.json --local-dir gpt2
# ```
#
# (newer `huggingface_hub` versions call it `hf download`), or from the "Files" tab of the model's page. Then,
# with no torch anywhere:
#
# ```python
# import numpy as np
# import minigpt
# from minigpt.tokenizers import load as load_tokenizer
#
# model = minigpt.hf.load("gpt2")                   # ModelConfig from config.json, weights from model.safetensors
# tok = load_tokenizer("gpt2")                      # GPT-2's byte-level BPE from tokenizer.json (lesson 10)
# ids = np.array([tok.encode("The capital of France is")])    # (1, T), T <= 1024 = n_positions
# logits = model.forward(ids)                       # (1, T, 50257)
# print(tok.decode([int(logits[0, -1].argmax())]))  # the most likely next token
# ```
#
# Things a learner will meet on real folders:
# - The Hub's GPT-2 file is older than the `transformers` class: its names lack the `transformer.` prefix
#   (`h.0.attn.c_attn.weight`) and it carries each layer's causal mask as a buffer `h.0.attn.bias`. `hf.load`
#   accepts both (buffers are recomputed by every implementation and skipped).
# - Memory: `hf.load` reads everything into NumPy at the dtype asked for (float32 by default). A 7B LLaMA is
#   6.7e9 x 4 bytes = 27 GB in float32; GLM-4-9B, 38 GB. Start with GPT-2, or a small LLaMA-architecture
#   model such as TinyLlama-1.1B (4.4 GB in float32).
# - Only the four families of this course load: `model_type` `gpt2`, `openai-gpt`, `llama`, `glm`. GLM-4's own
#   release (THUDM/glm-4-9b) uses custom code (`"model_type": "chatglm"`, fused `query_key_value`): look for the copy
#   converted to `transformers`' Glm classes, whose `config.json` says `"model_type": "glm"`. RoPE scaling
#   (LLaMA-3.1's `"rope_type": "llama3"`) is not implemented: `hf.load` says so instead of loading a model that
#   would be wrong at long range.
# - To check a loaded real model, do what the last section did on random ones: run the same ids through
#   `transformers` and compare logits. After fine-tuning in minigpt, `minigpt.hf.save(model, "out")` and copy
#   the tokenizer files into `out/`: `AutoModelForCausalLM.from_pretrained("out")` then loads it.

# %% [markdown]
# ## Summary
# - A checkpoint is `config.json` + safetensors. safetensors is an 8-byte length, a JSON header of
#   name -> dtype, shape, byte offsets, then raw little-endian C-order bytes: `struct`, `json` and `np.frombuffer`
#   read it, no torch needed. bfloat16 is the top half of a float32: widen with `<< 16`.
# - Layouts: ours and `Conv1D` are (in, out), `nn.Linear` is (out, in); fused tensors are concatenated along the
#   output axis (columns for Conv1D's `c_attn`, rows for `nn.Linear`'s `gate_up_proj`); a tied head is the embedding.
# - Every mapping only moves entries, so gradients map exactly like parameters: `to_hf_state_dict` serves both.
# - Shape checks cannot catch a swapped fusion or a missing transpose of a square matrix: compare logits.
# - `minigpt.hf.load` / `save` round-trip bit for bit, and agree with `transformers` to float32 rounding.
#
# ## Exercises
# 1. Write `llama_by_hand(t, config)` in the style of `glm4_by_hand` (separate `gate_proj` / `up_proj`, no biases)
#    and check it against `hf.load(paths["llama"]).params`.
# 2. HF's LLaMA conversion permutes each head's rows of `q_proj` and `k_proj`:
#    `w.reshape(H, D // 2, 2, C).transpose(0, 2, 1, 3).reshape(H * D, C)`. Show with `minigpt.layers.rope` that
#    rotate-half RoPE on the permuted weights gives the same attention scores as interleaved RoPE on the original.
# 3. Round to nearest instead of truncating in `write_bf16_safetensors` (add `0x7FFF + ((u >> 16) & 1)` to the
#    32-bit pattern `u` before the shift: round half to even). What is the worst relative error now, and why?
# 4. ChatGLM2 and GLM-4's original checkpoints fuse q, k and v into one `query_key_value` (an `nn.Linear` with
#    $HD + 2H_{kv}D$ outputs) and gate and up into `dense_h_to_4h`. Write the splitting lines for one layer.

# %% [markdown]
# ## Check

# %%
assert n_header % 8 == 0 and metadata == {"format": "pt"} and len(header) == len(library)
assert all(np.array_equal(by_hand[k], library[k]) and by_hand[k].dtype == np.float32 for k in library)
assert tiles[0][0] == 0 and all(a[1] == b[0] for a, b in zip(tiles, tiles[1:])) and tiles[-1][1] == len(data)
assert "transformer.wte.weight" in header and "lm_head.weight" not in header            # tied: no head stored
assert header["transformer.h.0.attn.c_attn.weight"]["shape"] == [32, 96]                # Conv1D (in, 3 * out)
assert layout_png.exists()
assert sizes[1] * 2 < sizes[0] + 4096 and bf16_rel_err < 2.0 ** -7 and bf16_rel_err > 0  # half the bytes, < 2^-7
for family, convert in BY_HAND.items():
    mine = convert(hf.read_tensors(paths[family]), loaded[family].config)
    assert sorted(mine) == sorted(loaded[family].params)
    assert all(np.array_equal(mine[k], loaded[family].params[k]) for k in mine), family  # by hand == library
assert glm_tensors["model.layers.0.mlp.gate_up_proj.weight"].shape == (2 * loaded["glm"].config.d_ff, 32)
assert glm_tensors["model.layers.0.self_attn.k_proj.weight"].shape == (2 * 8, 32)       # GQA: Hkv * D rows
assert all(diff > 1e-2 for diff in bugs.values()), bugs                                 # silent bugs show in logits
assert all(err < 1e-6 for err in grad_errors.values()), grad_errors                     # float64 gradient check
for family, (same_bytes, same_params, diff, logits) in roundtrip.items():
    assert same_bytes and same_params and diff == 0.0, family
    assert logits.shape == (B, T, V) and logits.dtype == np.float32
assert loaded["llama"].config.n_kv_head == 2 and loaded["glm"].config.rope_pairing == "interleaved"
if HAVE_TORCH:
    assert sorted(parity) == ["glm", "gpt2", "llama"]
    for family, r in parity.items():
        assert r["same_keys"] and r["back"], (family, r)
        assert r["logits"] < 1e-4, (family, r)                 # float32 parity with transformers
        assert r["grads"] < 1e-3, (family, r)                  # float32 gradients, relative to each tensor's max
WORKDIR.cleanup()
print("lesson 26 OK")
