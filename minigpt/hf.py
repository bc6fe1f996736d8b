"""Hugging Face checkpoints: load them into a minigpt Model, save a Model as one. No torch needed.

A checkpoint is a folder with config.json (the architecture, in Hugging Face's field names) and the
weights in one or more .safetensors files (a big model is split into shards, listed by
model.safetensors.index.json). safetensors is a JSON header of names, dtypes, shapes and offsets,
followed by the raw bytes: NumPy reads it directly.

Four families map onto ModelConfig:

    model_type    HF class               minigpt config
    gpt2          GPT2LMHeadModel        pre-LayerNorm, final LayerNorm, learned positions, tied head
    openai-gpt    OpenAIGPTLMHeadModel   GPT-1: POST-LayerNorm, no final norm, learned positions, tied head
    llama         LlamaForCausalLM       pre-RMSNorm, RoPE (rotate-half pairs), SwiGLU, GQA, no biases
    glm           GlmForCausalLM         GLM-4: LLaMA with q/k/v biases and RoPE on half of each head,
                                         interleaved pairs

Where the names differ, so do the layouts:
  - minigpt stores every weight as (in, out), y = x @ w. GPT-1 and GPT-2 use Conv1D, which stores
    (in, out) too; LLaMA and GLM use nn.Linear, which stores (out, in): those are transposed.
  - GPT-1/2 fuse the three projections into one c_attn (C, 3C) = [wq | wk | wv] along the output axis.
  - GLM fuses the SwiGLU input projections into gate_up_proj (2F, C) = [w_gate | w_up] (output axis first).
  - A tied head is the embedding: HF saves no lm_head.weight then (or an equal copy).

One table, `name_table`, lists for a config every HF tensor as (HF name, our keys, transposed?): loading
splits by it, `to_hf_state_dict` joins by it, so the two can never disagree.

Dimension letters: C channels (d_model), H heads, Hkv kv heads, D head dim, F mlp hidden, V vocab.
"""
import json
import os
import re
import shutil
import tempfile

import numpy as np
from safetensors import safe_open
from safetensors.numpy import save_file

from minigpt.backend import resolve_dtype, to_numpy
from minigpt.config import ModelConfig, param_shapes
from minigpt.model import Model

MODEL_TYPES = ("gpt2", "openai-gpt", "llama", "glm")
ARCHITECTURES = {"gpt2": "GPT2LMHeadModel", "openai-gpt": "OpenAIGPTLMHeadModel",
                 "llama": "LlamaForCausalLM", "glm": "GlmForCausalLM"}
PREFIX = {"gpt2": "transformer", "openai-gpt": "transformer", "llama": "model", "glm": "model"}

# Activation names. transformers' ACT2FN: "gelu" is the exact erf GELU, "gelu_new" and
# "gelu_pytorch_tanh" the tanh approximation. GPT-1 has its own table (modeling_openai.ACT_FNS)
# in which "gelu" means gelu_new, the tanh approximation.
_GPT2_ACT = {"gelu_new": "gelu_tanh", "gelu_pytorch_tanh": "gelu_tanh", "gelu": "gelu", "relu": "relu"}
_GPT1_ACT = {"gelu": "gelu_tanh", "relu": "relu"}
_GATED_ACT = {"silu": "swiglu", "gelu": "geglu"}  # act(gate) * up; minigpt's GeGLU gate is the exact GELU

# Buffers that older checkpoints saved next to the weights (the causal mask of GPT-1/2, RoPE's
# inverse frequencies): not parameters, recomputed by every implementation, skipped on load.
_BUFFERS = re.compile(r"(\.attn\.(bias|masked_bias)|\.rotary_emb\.inv_freq)$")

# transformers' defaults for the config.json fields that a checkpoint may leave out.
_HF_DEFAULTS = {
    "gpt2": dict(vocab_size=50257, n_positions=1024, n_embd=768, n_layer=12, n_head=12, n_inner=None,
                 activation_function="gelu_new", layer_norm_epsilon=1e-5, initializer_range=0.02,
                 tie_word_embeddings=True, scale_attn_weights=True, scale_attn_by_inverse_layer_idx=False,
                 add_cross_attention=False),
    "openai-gpt": dict(vocab_size=40478, n_positions=512, n_embd=768, n_layer=12, n_head=12, afn="gelu",
                       layer_norm_epsilon=1e-5, initializer_range=0.02, tie_word_embeddings=True),
    "llama": dict(vocab_size=32000, hidden_size=4096, intermediate_size=11008, num_hidden_layers=32,
                  num_attention_heads=32, num_key_value_heads=None, head_dim=None, hidden_act="silu",
                  max_position_embeddings=2048, initializer_range=0.02, rms_norm_eps=1e-6,
                  tie_word_embeddings=False, attention_bias=False, mlp_bias=False, rope_theta=10000.0),
    "glm": dict(vocab_size=151552, hidden_size=4096, intermediate_size=13696, num_hidden_layers=40,
                num_attention_heads=32, num_key_value_heads=2, head_dim=128, hidden_act="silu",
                max_position_embeddings=131072, initializer_range=0.02, rms_norm_eps=1.5625e-07,
                tie_word_embeddings=False, attention_bias=True, rope_theta=10000.0, partial_rotary_factor=0.5),
}


# ---------------------------------------------------------------------------------------------
# config.json <-> ModelConfig
# ---------------------------------------------------------------------------------------------

def _rope(hf, model_type, problems):
    """(theta, partial_rotary_factor) from either config.json style; scaled RoPE goes into problems.
    transformers 5 writes rope_parameters = {rope_type, rope_theta, partial_rotary_factor?};
    older files have rope_theta / partial_rotary_factor at the top and rope_scaling (None or a dict)."""
    defaults = _HF_DEFAULTS[model_type]
    rope = hf.get("rope_parameters") or hf.get("rope_scaling") or {}
    rope_type = rope.get("rope_type", rope.get("type", "default"))
    if rope_type != "default":
        problems.append(f"rope_type={rope_type!r} (RoPE scaling; minigpt implements plain RoPE, 'default')")
    theta = rope.get("rope_theta", hf.get("rope_theta", defaults["rope_theta"]))
    partial = rope.get("partial_rotary_factor", hf.get("partial_rotary_factor",
                                                       defaults.get("partial_rotary_factor", 1.0)))
    return float(theta), float(partial)


def _unsupported(model_type, problems):
    if problems:
        raise ValueError(f"{model_type} checkpoint uses features minigpt does not implement: " + "; ".join(problems))


def config_from_hf(hf):
    """A ModelConfig from the dict of a config.json. Unsupported model types or features: ValueError
    listing them. Dropout is 0 (the model is for inference and comparison); set config.dropout to
    fine-tune with it."""
    model_type = hf.get("model_type")
    if model_type not in MODEL_TYPES:
        raise ValueError(f"model_type={model_type!r} is not supported; supported: {', '.join(MODEL_TYPES)}")

    def get(name):  # a config.json field, or transformers' default when the file leaves it out
        return hf.get(name, _HF_DEFAULTS[model_type][name])

    problems = []
    if model_type in ("gpt2", "openai-gpt"):
        table = _GPT2_ACT if model_type == "gpt2" else _GPT1_ACT
        act_field = "activation_function" if model_type == "gpt2" else "afn"
        if get(act_field) not in table:
            problems.append(f"{act_field}={get(act_field)!r} (supported: {', '.join(table)})")
        if model_type == "gpt2":
            if not get("scale_attn_weights"):
                problems.append("scale_attn_weights=false (minigpt always scales scores by 1/sqrt(D))")
            if get("scale_attn_by_inverse_layer_idx"):
                problems.append("scale_attn_by_inverse_layer_idx=true")
            if get("add_cross_attention"):
                problems.append("add_cross_attention=true (a decoder-only model has no cross-attention)")
        _unsupported(model_type, problems)
        d_model = get("n_embd")
        inner = get("n_inner") if model_type == "gpt2" else None
        gpt1 = model_type == "openai-gpt"
        return ModelConfig(
            vocab_size=get("vocab_size"), n_layer=get("n_layer"), d_model=d_model, n_head=get("n_head"),
            n_kv_head=get("n_head"), d_ff=inner if inner is not None else 4 * d_model,
            max_seq_len=get("n_positions"), norm="layernorm", norm_eps=float(get("layer_norm_epsilon")),
            norm_placement="post" if gpt1 else "pre", final_norm=not gpt1, activation=table[get(act_field)],
            positions="learned", qkv_bias=True, bias=True, tie_embeddings=bool(get("tie_word_embeddings")),
            attention="causal", attention_pattern="dense", dropout=0.0,
            init_std=float(get("initializer_range")), scaled_residual_init=not gpt1)

    # llama and glm
    theta, partial = _rope(hf, model_type, problems)
    d_model, n_head = get("hidden_size"), get("num_attention_heads")
    n_kv_head = get("num_key_value_heads") or n_head
    head_dim = get("head_dim") or d_model // n_head
    if get("hidden_act") not in _GATED_ACT:
        problems.append(f"hidden_act={get('hidden_act')!r} (supported: {', '.join(_GATED_ACT)})")
    if n_head * head_dim != d_model:
        problems.append(f"head_dim={head_dim} with num_attention_heads={n_head} and hidden_size={d_model}: "
                        f"minigpt's head dim is hidden_size // num_attention_heads = {d_model // n_head}")
    if model_type == "llama":
        if get("attention_bias"):
            problems.append("attention_bias=true (it adds an o_proj bias, and minigpt's SwiGLU models have "
                            "no attention-output or MLP biases)")
        if get("mlp_bias"):
            problems.append("mlp_bias=true (minigpt's gated MLP has no biases)")
        partial = 1.0  # LlamaRotaryEmbedding rotates the whole head whatever the config says
    _unsupported(model_type, problems)
    return ModelConfig(
        vocab_size=get("vocab_size"), n_layer=get("num_hidden_layers"), d_model=d_model, n_head=n_head,
        n_kv_head=n_kv_head, d_ff=get("intermediate_size"), max_seq_len=get("max_position_embeddings"),
        norm="rmsnorm", norm_eps=float(get("rms_norm_eps")), norm_placement="pre", final_norm=True,
        activation=_GATED_ACT[get("hidden_act")], positions="rope", rope_theta=theta, rotary_fraction=partial,
        rope_pairing="half" if model_type == "llama" else "interleaved",
        # GLM's attention_bias adds q, k, v biases (its o_proj never has one); LLaMA's must be false here
        qkv_bias=bool(get("attention_bias")), bias=False,
        tie_embeddings=bool(get("tie_word_embeddings")), attention="causal", attention_pattern="dense",
        dropout=0.0, init_std=float(get("initializer_range")), scaled_residual_init=False)


def _family_requirements(config):
    """For each HF family, the list of ways this config differs from it (empty = it maps)."""
    c = config
    common = []
    if c.attention != "causal":
        common.append(f"attention={c.attention!r} (HF causal LMs are causal)")
    if c.attention_pattern != "dense":
        common.append(f"attention_pattern={c.attention_pattern!r} (HF models here are dense)")
    gpt = list(common)
    if c.norm != "layernorm":
        gpt.append(f"norm={c.norm!r} (needs layernorm)")
    if c.positions != "learned":
        gpt.append(f"positions={c.positions!r} (needs learned)")
    if c.n_kv_head != c.n_head:
        gpt.append(f"n_kv_head={c.n_kv_head} (needs n_kv_head == n_head = {c.n_head})")
    if not (c.qkv_bias and c.bias):
        gpt.append(f"qkv_bias={c.qkv_bias}, bias={c.bias} (needs both True)")
    gpt2, gpt1 = list(gpt), list(gpt)
    if c.norm_placement != "pre" or not c.final_norm:
        gpt2.append(f"norm_placement={c.norm_placement!r}, final_norm={c.final_norm} (needs 'pre', True)")
    if c.activation not in _GPT2_ACT.values():
        gpt2.append(f"activation={c.activation!r} (needs one of {sorted(set(_GPT2_ACT.values()))})")
    if c.norm_placement != "post" or c.final_norm:
        gpt1.append(f"norm_placement={c.norm_placement!r}, final_norm={c.final_norm} (needs 'post', False)")
    if c.activation not in _GPT1_ACT.values():
        gpt1.append(f"activation={c.activation!r} (needs one of {sorted(set(_GPT1_ACT.values()))})")
    if c.d_ff != 4 * c.d_model:
        gpt1.append(f"d_ff={c.d_ff} (OpenAIGPT's MLP is 4 * d_model = {4 * c.d_model})")
    rot = list(common)
    if c.norm != "rmsnorm" or c.norm_placement != "pre" or not c.final_norm:
        rot.append(f"norm={c.norm!r}, norm_placement={c.norm_placement!r}, final_norm={c.final_norm} "
                   f"(needs 'rmsnorm', 'pre', True)")
    if c.positions != "rope":
        rot.append(f"positions={c.positions!r} (needs rope)")
    if c.activation not in _GATED_ACT.values():
        rot.append(f"activation={c.activation!r} (needs one of {sorted(set(_GATED_ACT.values()))})")
    llama, glm = list(rot), list(rot)
    if c.rope_pairing != "half" or c.rotary_fraction != 1.0:
        llama.append(f"rope_pairing={c.rope_pairing!r}, rotary_fraction={c.rotary_fraction} (needs 'half', 1.0)")
    if c.qkv_bias:
        llama.append("qkv_bias=True (LLaMA's attention_bias would also add an o_proj bias)")
    if c.rope_pairing != "interleaved":
        glm.append(f"rope_pairing={c.rope_pairing!r} (needs 'interleaved')")
    return {"gpt2": gpt2, "openai-gpt": gpt1, "llama": llama, "glm": glm}


def model_type_of(config):
    """The HF model_type this config maps onto, or a ValueError saying, for each family, why not."""
    reqs = _family_requirements(config)
    for model_type in MODEL_TYPES:
        if not reqs[model_type]:
            return model_type
    why = "\n".join(f"  {t}: " + "; ".join(r) for t, r in reqs.items())
    raise ValueError(f"this config maps to no Hugging Face family minigpt can write:\n{why}")


def config_to_hf(config):
    """The config.json dict (transformers field names) for a config that maps to an HF family."""
    c, model_type = config, model_type_of(config)
    hf = {"model_type": model_type, "architectures": [ARCHITECTURES[model_type]], "vocab_size": c.vocab_size,
          "initializer_range": c.init_std, "tie_word_embeddings": c.tie_embeddings,
          # minigpt knows no tokenizer: no special ids (the HF defaults may lie outside a small vocab)
          "bos_token_id": None, "eos_token_id": None, "pad_token_id": None}
    if model_type in ("gpt2", "openai-gpt"):
        # minigpt drops the embeddings and each sublayer's output (embd_pdrop, resid_pdrop), never the
        # attention probabilities (attn_pdrop)
        hf.update(n_layer=c.n_layer, n_embd=c.d_model, n_head=c.n_head, n_positions=c.max_seq_len,
                  layer_norm_epsilon=c.norm_eps, embd_pdrop=c.dropout, resid_pdrop=c.dropout, attn_pdrop=0.0)
        if model_type == "gpt2":
            act = {v: k for k, v in _GPT2_ACT.items() if k != "gelu_pytorch_tanh"}
            hf.update(n_inner=c.d_ff, activation_function=act[c.activation])
        else:
            hf.update(afn={v: k for k, v in _GPT1_ACT.items()}[c.activation])
        return hf
    hf.update(hidden_size=c.d_model, intermediate_size=c.d_ff, num_hidden_layers=c.n_layer,
              num_attention_heads=c.n_head, num_key_value_heads=c.n_kv_head, head_dim=c.head_dim,
              hidden_act={v: k for k, v in _GATED_ACT.items()}[c.activation], max_position_embeddings=c.max_seq_len,
              # LLaMA / GLM drop only attention probabilities, which minigpt never does (its embedding and
              # residual dropout has no field in these configs)
              rms_norm_eps=c.norm_eps, attention_bias=c.qkv_bias, attention_dropout=0.0,
              rope_parameters={"rope_type": "default", "rope_theta": c.rope_theta})
    if model_type == "llama":
        hf["mlp_bias"] = False
    else:
        hf["rope_parameters"]["partial_rotary_factor"] = c.rotary_fraction
    return hf


# ---------------------------------------------------------------------------------------------
# the name table
# ---------------------------------------------------------------------------------------------

def name_table(config, model_type):
    """[(hf_name, [our keys], transposed)] for every tensor of the HF checkpoint, in HF order.
    The HF tensor is concat(our tensors, axis=-1), transposed when `transposed` (nn.Linear)."""
    P = PREFIX[model_type]
    rows = []

    def add(hf_name, keys, transposed=False):
        rows.append((hf_name, keys, transposed))

    if model_type in ("gpt2", "openai-gpt"):
        wte, wpe = ("wte", "wpe") if model_type == "gpt2" else ("tokens_embed", "positions_embed")
        add(f"{P}.{wte}.weight", ["wte"])
        add(f"{P}.{wpe}.weight", ["wpe"])
        for i in range(config.n_layer):
            h, b = f"{P}.h.{i}", f"blocks.{i}"
            add(f"{h}.ln_1.weight", [f"{b}.norm1.w"])
            add(f"{h}.ln_1.bias", [f"{b}.norm1.b"])
            add(f"{h}.attn.c_attn.weight", [f"{b}.attn.wq", f"{b}.attn.wk", f"{b}.attn.wv"])  # (C, 3C)
            add(f"{h}.attn.c_attn.bias", [f"{b}.attn.bq", f"{b}.attn.bk", f"{b}.attn.bv"])    # (3C,)
            add(f"{h}.attn.c_proj.weight", [f"{b}.attn.wo"])
            add(f"{h}.attn.c_proj.bias", [f"{b}.attn.bo"])
            add(f"{h}.ln_2.weight", [f"{b}.norm2.w"])
            add(f"{h}.ln_2.bias", [f"{b}.norm2.b"])
            add(f"{h}.mlp.c_fc.weight", [f"{b}.mlp.w_up"])
            add(f"{h}.mlp.c_fc.bias", [f"{b}.mlp.b_up"])
            add(f"{h}.mlp.c_proj.weight", [f"{b}.mlp.w_down"])
            add(f"{h}.mlp.c_proj.bias", [f"{b}.mlp.b_down"])
        if model_type == "gpt2":
            add(f"{P}.ln_f.weight", ["norm_f.w"])
            add(f"{P}.ln_f.bias", ["norm_f.b"])
    else:
        add(f"{P}.embed_tokens.weight", ["wte"])
        for i in range(config.n_layer):
            h, b = f"{P}.layers.{i}", f"blocks.{i}"
            add(f"{h}.input_layernorm.weight", [f"{b}.norm1.w"])
            for proj, x in (("q_proj", "q"), ("k_proj", "k"), ("v_proj", "v")):
                add(f"{h}.self_attn.{proj}.weight", [f"{b}.attn.w{x}"], True)
                if config.qkv_bias:
                    add(f"{h}.self_attn.{proj}.bias", [f"{b}.attn.b{x}"])
            add(f"{h}.self_attn.o_proj.weight", [f"{b}.attn.wo"], True)
            add(f"{h}.post_attention_layernorm.weight", [f"{b}.norm2.w"])
            if model_type == "llama":
                add(f"{h}.mlp.gate_proj.weight", [f"{b}.mlp.w_gate"], True)
                add(f"{h}.mlp.up_proj.weight", [f"{b}.mlp.w_up"], True)
            else:
                add(f"{h}.mlp.gate_up_proj.weight", [f"{b}.mlp.w_gate", f"{b}.mlp.w_up"], True)  # (2F, C)
            add(f"{h}.mlp.down_proj.weight", [f"{b}.mlp.w_down"], True)
        add(f"{P}.norm.weight", ["norm_f.w"])
    if not config.tie_embeddings:
        add("lm_head.weight", ["lm_head"], True)
    return rows


def _hf_shape(shapes, keys, transposed):
    """The shape of the HF tensor made from our tensors with these keys."""
    shape = shapes[keys[0]][:-1] + (sum(shapes[k][-1] for k in keys),)  # concat along the last axis
    return shape[::-1] if transposed else shape


def _problems(what, missing, unexpected, mismatched):
    """One ValueError listing every missing key, unexpected key and shape mismatch (None when none)."""
    lines = []
    if missing:
        lines.append(f"missing keys ({len(missing)}): {', '.join(missing)}")
    if unexpected:
        lines.append(f"unexpected keys ({len(unexpected)}): {', '.join(unexpected)}")
    if mismatched:
        lines.append(f"shape mismatches ({len(mismatched)}): " + ", ".join(
            f"{k} has {tuple(got)}, expected {tuple(want)}" for k, got, want in mismatched))
    return ValueError(f"{what}:\n  " + "\n  ".join(lines)) if lines else None


def to_hf_state_dict(config, tensors):
    """Any dict keyed like model.params (parameters or gradients) -> {HF name: NumPy array} in HF layout.
    Fused tensors are concatenated, nn.Linear weights transposed. A tied head appears once, as the
    embedding (as in save_pretrained and in torch's named_parameters(), whose .grad holds both paths)."""
    model_type = model_type_of(config)
    layout = name_table(config, model_type)
    expected = param_shapes(config)
    missing = [k for k in expected if k not in tensors]
    unexpected = [k for k in tensors if k not in expected]
    mismatched = [(k, tuple(tensors[k].shape), shape) for k, shape in expected.items()
                  if k in tensors and tuple(tensors[k].shape) != shape]
    error = _problems(f"to_hf_state_dict: the tensors do not match a {model_type} config",
                      missing, unexpected, mismatched)
    if error:
        raise error
    out = {}
    for hf_name, keys, transposed in layout:
        parts = [to_numpy(tensors[key]) for key in keys]
        t = parts[0] if len(parts) == 1 else np.concatenate(parts, axis=-1)  # fused: [q | k | v], [gate | up]
        out[hf_name] = np.ascontiguousarray(t.T if transposed else t)       # (out, in) for nn.Linear
    return out


# ---------------------------------------------------------------------------------------------
# reading safetensors
# ---------------------------------------------------------------------------------------------

def _read_bf16(path, names):
    """bfloat16 tensors (NumPy has no bfloat16): a bf16 number is the top 16 bits of a float32."""
    with open(path, "rb") as f:
        header_len = int.from_bytes(f.read(8), "little")
        header = json.loads(f.read(header_len))
        start = 8 + header_len
        out = {}
        for name in names:
            begin, end = header[name]["data_offsets"]
            f.seek(start + begin)
            bits = np.frombuffer(f.read(end - begin), dtype="<u2").astype(np.uint32) << 16
            out[name] = bits.view(np.float32).reshape(header[name]["shape"])
    return out


def _read_file(path):
    out, bf16 = {}, []
    with safe_open(path, framework="numpy") as f:
        for name in f.keys():
            if f.get_slice(name).get_dtype() == "BF16":
                bf16.append(name)
            else:
                out[name] = f.get_tensor(name)
    out.update(_read_bf16(path, bf16))
    return out


def _checkpoint_files(path):
    """The .safetensors files of a checkpoint folder, the way transformers picks them."""
    single, index = os.path.join(path, "model.safetensors"), os.path.join(path, "model.safetensors.index.json")
    if os.path.exists(single):
        return [single]
    if os.path.exists(index):
        with open(index, encoding="utf-8") as f:
            weight_map = json.load(f)["weight_map"]
        return [os.path.join(path, name) for name in sorted(set(weight_map.values()))]
    files = sorted(os.path.join(path, n) for n in os.listdir(path) if n.endswith(".safetensors"))
    if not files:
        raise ValueError(f"{path}: no .safetensors file (pytorch_model.bin checkpoints need torch to read; "
                         f"convert them with save_pretrained(..., safe_serialization=True))")
    return files


def read_tensors(path):
    """{name: NumPy array} of every tensor in the checkpoint folder (all shards)."""
    tensors = {}
    for file in _checkpoint_files(path):
        part = _read_file(file)
        twice = sorted(set(part) & set(tensors))
        if twice:
            raise ValueError(f"{path}: tensors stored in more than one file: {', '.join(twice)}")
        tensors.update(part)
    return tensors


# ---------------------------------------------------------------------------------------------
# load and save
# ---------------------------------------------------------------------------------------------

def load(path, dtype="float32", device=None):
    """A Model from a Hugging Face checkpoint folder (config.json + *.safetensors, one file or shards),
    cast to dtype, on device ("cpu", "cuda"; None: MINIGPT_DEVICE or the CPU)."""
    dtype = resolve_dtype(dtype)
    config_path = os.path.join(path, "config.json")
    if not os.path.isfile(config_path):
        raise ValueError(f"{path}: no config.json (expected a Hugging Face checkpoint folder)")
    with open(config_path, encoding="utf-8") as f:
        hf = json.load(f)
    config = config_from_hf(hf)
    model_type = hf["model_type"]
    tensors = {k: v for k, v in read_tensors(path).items() if not _BUFFERS.search(k)}
    prefix = PREFIX[model_type] + "."
    if not any(k.startswith(prefix) for k in tensors):  # a base-model checkpoint: "h.0...", "wte.weight"
        tensors = {k if k == "lm_head.weight" else prefix + k: v for k, v in tensors.items()}

    layout, shapes = name_table(config, model_type), param_shapes(config)
    expected = {hf_name: _hf_shape(shapes, keys, transposed) for hf_name, keys, transposed in layout}
    extra_head = None
    if config.tie_embeddings and "lm_head.weight" in tensors:  # some checkpoints store the tied copy
        extra_head = tensors.pop("lm_head.weight")
    missing = [k for k in expected if k not in tensors]
    unexpected = [k for k in tensors if k not in expected]
    mismatched = [(k, tuple(tensors[k].shape), shape) for k, shape in expected.items()
                  if k in tensors and tuple(tensors[k].shape) != shape]
    error = _problems(f"{path}: the weights do not match config.json ({model_type})", missing, unexpected, mismatched)
    if error:
        raise error
    embedding = layout[0][0]
    if extra_head is not None and not np.array_equal(extra_head, tensors[embedding]):
        raise ValueError(f"{path}: config.json ties the head to the embedding (tie_word_embeddings=true) "
                         f"but lm_head.weight differs from {embedding}")

    params = {}
    for hf_name, keys, transposed in layout:
        t = tensors[hf_name]
        t = t.T if transposed else t                               # back to (in, out)
        splits = np.cumsum([shapes[key][-1] for key in keys])[:-1]  # unfuse [q | k | v], [gate | up]
        for key, part in zip(keys, np.split(t, splits, axis=-1)):
            params[key] = np.ascontiguousarray(part, dtype=dtype)
    return Model(config, device=device, dtype=dtype, params=params)


def save(model, path):
    """Write config.json + model.safetensors that transformers.AutoModelForCausalLM.from_pretrained loads.
    Each file is written to a temporary name first and moved into place with os.replace, so a reader
    never sees half a file. A config that maps to no HF family: ValueError saying why."""
    hf = config_to_hf(model.config)
    tensors = to_hf_state_dict(model.config, model.params)
    hf["dtype"] = str(next(iter(tensors.values())).dtype)
    os.makedirs(path, exist_ok=True)
    tmp = tempfile.mkdtemp(prefix=".minigpt-save-", dir=path)
    try:
        save_file(tensors, os.path.join(tmp, "model.safetensors"), metadata={"format": "pt"})
        with open(os.path.join(tmp, "config.json"), "w", encoding="utf-8") as f:
            json.dump(hf, f, indent=2, sort_keys=True)
            f.write("\n")
        for name in ("model.safetensors", "config.json"):  # weights first: config.json last marks it complete
            os.replace(os.path.join(tmp, name), os.path.join(path, name))
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return path
