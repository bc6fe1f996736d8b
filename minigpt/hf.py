"""Hugging Face checkpoints: load them into a minigpt Model, save a Model as one. No torch needed.

A checkpoint is a folder with config.json (the architecture, in Hugging Face's field names) and the
weights in one or more .safetensors files (a big model is split into shards, listed by
model.safetensors.index.json). safetensors is a JSON header of names, dtypes, shapes and offsets,
followed by the raw bytes: NumPy reads it directly.

Six families map onto ModelConfig, each described once, by a `Family` in FAMILIES:

    model_type    HF class               minigpt config
    gpt2          GPT2LMHeadModel        pre-LayerNorm, final LayerNorm, learned positions, tied head
    openai-gpt    OpenAIGPTLMHeadModel   GPT-1: POST-LayerNorm, no final norm, learned positions, tied head
    llama         LlamaForCausalLM       pre-RMSNorm, RoPE (rotate-half pairs), SwiGLU, GQA, no biases
    glm           GlmForCausalLM         GLM-4: LLaMA with q/k/v biases and RoPE on half of each head,
                                         interleaved pairs
    mistral       MistralForCausalLM     LLaMA with a sliding-window mask on every layer
    qwen3         Qwen3ForCausalLM       LLaMA with QK-norm (RMSNorm over the head dim of q and k)

A Family holds the switches every model of it has, how to read and write the config.json fields that
vary, and its tensor names. Which family a ModelConfig belongs to is found by a round trip through each
family's config.json (write, read back, compare): there is no second, hand-kept table to disagree.

Where the names differ, so do the layouts:
  - minigpt stores every weight as (in, out), y = x @ w. GPT-1 and GPT-2 use Conv1D, which stores
    (in, out) too; the LLaMA-style families use nn.Linear, which stores (out, in): those are transposed.
  - GPT-1/2 fuse the three projections into one c_attn (C, 3C) = [wq | wk | wv] along the output axis.
  - GLM fuses the SwiGLU input projections into gate_up_proj (2F, C) = [w_gate | w_up] (output axis first).
  - A tied head is the embedding: HF saves no lm_head.weight then (or an equal copy).

One table, `name_table`, lists for a config every HF tensor as (HF name, our keys, transposed?): loading
splits by it, `to_hf_state_dict` joins by it, so the two can never disagree.

Dimension letters: C channels (d_model), H heads, Hkv kv heads, D head dim, F mlp hidden, V vocab.
"""
import dataclasses
import json
import os
import re
import shutil
import tempfile
from dataclasses import dataclass
from typing import Callable

import numpy as np
from safetensors import safe_open
from safetensors.numpy import save_file

from minigpt.backend import resolve_dtype, to_numpy
from minigpt.config import TRAINING_FIELDS, ModelConfig, check_tensor_set, param_shapes
from minigpt.files import read_json_object
from minigpt.model import Model

# Activation names. transformers' ACT2FN: "gelu" is the exact erf GELU, "gelu_new" and
# "gelu_pytorch_tanh" the tanh approximation. GPT-1 has its own table (modeling_openai.ACT_FNS)
# in which "gelu" means gelu_new, the tanh approximation.
_GPT2_ACT = {"gelu_new": "gelu_tanh", "gelu_pytorch_tanh": "gelu_tanh", "gelu": "gelu", "relu": "relu"}
_GPT1_ACT = {"gelu": "gelu_tanh", "relu": "relu"}
_GATED_ACT = {"silu": "swiglu", "gelu": "geglu"}  # act(gate) * up; minigpt's GeGLU gate is the exact GELU

# Buffers that older checkpoints saved next to the weights (the causal mask of GPT-1/2, RoPE's
# inverse frequencies): not parameters, recomputed by every implementation, skipped on load.
_BUFFERS = re.compile(r"(\.attn\.(bias|masked_bias)|\.rotary_emb\.inv_freq)$")


def _hf_name(table, ours):
    """The first HF name that a table maps to our name. When the family cannot express ours, its first
    name: the config still writes, and reading it back shows the difference (see family_of)."""
    return next((hf for hf, mine in table.items() if mine == ours), next(iter(table)))


# ---------------------------------------------------------------------------------------------
# the families
# ---------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Family:
    """One Hugging Face architecture: all that hf.py needs to read it, write it and recognise it."""
    model_type: str          # config.json "model_type"
    architecture: str        # the transformers class that "architectures" names
    style: str               # "gpt": Conv1D (in, out) weights, fused c_attn; "llama": nn.Linear (out, in)
    defaults: dict           # transformers' values of the config.json fields a file may leave out
    switches: dict           # the ModelConfig fields that every model of this family has
    read: Callable           # (get, problems) -> the family's own ModelConfig fields; unsupported -> problems
    write: Callable          # ModelConfig -> the family's own config.json fields
    embeddings: tuple = ()   # GPT style: the names of the token and position tables
    fused_gate_up: bool = False  # GLM: one gate_up_proj (2F, C) = [w_gate | w_up]

    @property
    def prefix(self):
        """The base model's name in front of every tensor name."""
        return "transformer" if self.style == "gpt" else "model"


def _read_gpt2(get, problems):
    if get("activation_function") not in _GPT2_ACT:
        problems.append(f"activation_function={get('activation_function')!r} (supported: {', '.join(_GPT2_ACT)})")
    if not get("scale_attn_weights"):
        problems.append("scale_attn_weights=false (minigpt always scales scores by 1/sqrt(D))")
    if get("scale_attn_by_inverse_layer_idx"):
        problems.append("scale_attn_by_inverse_layer_idx=true")
    if get("add_cross_attention"):
        problems.append("add_cross_attention=true (a decoder-only model has no cross-attention)")
    inner = get("n_inner")
    return dict(activation=_GPT2_ACT.get(get("activation_function")),
                d_ff=inner if inner is not None else 4 * get("n_embd"))


def _read_gpt1(get, problems):
    if get("afn") not in _GPT1_ACT:
        problems.append(f"afn={get('afn')!r} (supported: {', '.join(_GPT1_ACT)})")
    return dict(activation=_GPT1_ACT.get(get("afn")), d_ff=4 * get("n_embd"))   # OpenAIGPT's MLP is 4C wide


def _read_llama(get, problems):
    if get("attention_bias"):
        problems.append("attention_bias=true (it adds an o_proj bias, and minigpt's SwiGLU models have "
                        "no attention-output or MLP biases)")
    if get("mlp_bias"):
        problems.append("mlp_bias=true (minigpt's gated MLP has no biases)")
    return {}  # LlamaRotaryEmbedding rotates the whole head whatever partial_rotary_factor says


def _read_glm(get, problems):
    # GLM's attention_bias adds q, k, v biases (its o_proj never has one)
    return dict(qkv_bias=bool(get("attention_bias")), rotary_fraction=get("partial_rotary_factor"))


def _read_mistral(get, problems):
    window = get("sliding_window")
    if window is None:
        return dict(attention_pattern="dense")
    return dict(attention_pattern="sliding", attn_window=window)


def _read_qwen3(get, problems):
    if get("attention_bias"):
        problems.append("attention_bias=true (Qwen3's adds q, k, v and o_proj biases; minigpt's SwiGLU "
                        "models have no attention-output bias)")
    layer_types = get("layer_types") or []
    if get("use_sliding_window") or "sliding_attention" in layer_types:
        problems.append("use_sliding_window=true (Qwen3's sliding window covers only some layers; "
                        "minigpt's 'sliding' pattern is every layer, as in Mistral)")
    return {}


GPT_SWITCHES = dict(norm="layernorm", positions="learned", qkv_bias=True, bias=True, attention="causal",
                    attention_pattern="dense", dropout=0.0)
LLAMA_SWITCHES = dict(norm="rmsnorm", norm_placement="pre", final_norm=True, positions="rope", bias=False,
                      attention="causal", dropout=0.0, scaled_residual_init=False, qk_norm=False)
ROTATE_HALF = dict(rope_pairing="half", rotary_fraction=1.0, qkv_bias=False)
LLAMA_DEFAULTS = dict(vocab_size=32000, hidden_size=4096, intermediate_size=11008, num_hidden_layers=32,
                      num_attention_heads=32, num_key_value_heads=None, head_dim=None, hidden_act="silu",
                      max_position_embeddings=2048, initializer_range=0.02, rms_norm_eps=1e-6,
                      tie_word_embeddings=False, rope_theta=10000.0, partial_rotary_factor=1.0)

FAMILIES = {family.model_type: family for family in (
    Family("gpt2", "GPT2LMHeadModel", "gpt",
           defaults=dict(vocab_size=50257, n_positions=1024, n_embd=768, n_layer=12, n_head=12, n_inner=None,
                         activation_function="gelu_new", layer_norm_epsilon=1e-5, initializer_range=0.02,
                         tie_word_embeddings=True, scale_attn_weights=True, scale_attn_by_inverse_layer_idx=False,
                         add_cross_attention=False),
           switches=dict(GPT_SWITCHES, norm_placement="pre", final_norm=True, scaled_residual_init=True),
           read=_read_gpt2,
           write=lambda c: dict(n_inner=c.d_ff, activation_function=_hf_name(_GPT2_ACT, c.activation)),
           embeddings=("wte", "wpe")),
    Family("openai-gpt", "OpenAIGPTLMHeadModel", "gpt",
           defaults=dict(vocab_size=40478, n_positions=512, n_embd=768, n_layer=12, n_head=12, afn="gelu",
                         layer_norm_epsilon=1e-5, initializer_range=0.02, tie_word_embeddings=True),
           switches=dict(GPT_SWITCHES, norm_placement="post", final_norm=False, scaled_residual_init=False),
           read=_read_gpt1,
           write=lambda c: dict(afn=_hf_name(_GPT1_ACT, c.activation)),
           embeddings=("tokens_embed", "positions_embed")),
    Family("llama", "LlamaForCausalLM", "llama",
           defaults=dict(LLAMA_DEFAULTS, attention_bias=False, mlp_bias=False),
           switches=dict(LLAMA_SWITCHES, **ROTATE_HALF, attention_pattern="dense"),
           read=_read_llama,
           write=lambda c: dict(attention_bias=False, mlp_bias=False)),
    Family("glm", "GlmForCausalLM", "llama",
           defaults=dict(LLAMA_DEFAULTS, vocab_size=151552, intermediate_size=13696, num_hidden_layers=40,
                         num_key_value_heads=2, head_dim=128, max_position_embeddings=131072,
                         rms_norm_eps=1.5625e-07, attention_bias=True, partial_rotary_factor=0.5),
           switches=dict(LLAMA_SWITCHES, rope_pairing="interleaved", attention_pattern="dense"),
           read=_read_glm,
           write=lambda c: dict(attention_bias=c.qkv_bias, partial_rotary_factor=c.rotary_fraction),
           fused_gate_up=True),
    Family("mistral", "MistralForCausalLM", "llama",
           defaults=dict(LLAMA_DEFAULTS, intermediate_size=14336, num_key_value_heads=8,
                         max_position_embeddings=4096 * 32, sliding_window=4096),
           switches=dict(LLAMA_SWITCHES, **ROTATE_HALF),
           read=_read_mistral,
           write=lambda c: dict(sliding_window=c.attn_window if c.attention_pattern == "sliding" else None)),
    Family("qwen3", "Qwen3ForCausalLM", "llama",
           defaults=dict(LLAMA_DEFAULTS, vocab_size=151936, intermediate_size=22016, num_key_value_heads=32,
                         head_dim=128, max_position_embeddings=32768, attention_bias=False,
                         use_sliding_window=False, layer_types=None),
           switches=dict(LLAMA_SWITCHES, **ROTATE_HALF, attention_pattern="dense", qk_norm=True),
           read=_read_qwen3,
           write=lambda c: dict(attention_bias=False, use_sliding_window=False)),
)}
MODEL_TYPES = tuple(FAMILIES)


# ---------------------------------------------------------------------------------------------
# config.json <-> ModelConfig
# ---------------------------------------------------------------------------------------------

def _rope(hf, defaults, problems):
    """{rope_theta, partial_rotary_factor} from either config.json style; scaled RoPE goes into problems.
    transformers 5 writes rope_parameters = {rope_type, rope_theta, partial_rotary_factor?};
    older files have rope_theta / partial_rotary_factor at the top and rope_scaling (None or a dict)."""
    rope = hf.get("rope_parameters") or hf.get("rope_scaling") or {}
    rope_type = rope.get("rope_type", rope.get("type", "default"))
    if rope_type != "default":
        problems.append(f"rope_type={rope_type!r} (RoPE scaling; minigpt implements plain RoPE, 'default')")
    return {name: float(rope.get(name, hf.get(name, defaults[name])))
            for name in ("rope_theta", "partial_rotary_factor")}


def _read_gpt_sizes(get, problems):
    return dict(vocab_size=get("vocab_size"), n_layer=get("n_layer"), d_model=get("n_embd"), n_head=get("n_head"),
                n_kv_head=get("n_head"), max_seq_len=get("n_positions"), norm_eps=float(get("layer_norm_epsilon")))


def _read_llama_sizes(get, problems):
    d_model, n_head = get("hidden_size"), get("num_attention_heads")
    head_dim = get("head_dim") or d_model // n_head
    if get("hidden_act") not in _GATED_ACT:
        problems.append(f"hidden_act={get('hidden_act')!r} (supported: {', '.join(_GATED_ACT)})")
    if n_head * head_dim != d_model:
        problems.append(f"head_dim={head_dim} with num_attention_heads={n_head} and hidden_size={d_model}: "
                        f"minigpt's head dim is hidden_size // num_attention_heads = {d_model // n_head}")
    return dict(vocab_size=get("vocab_size"), n_layer=get("num_hidden_layers"), d_model=d_model, n_head=n_head,
                n_kv_head=get("num_key_value_heads") or n_head, d_ff=get("intermediate_size"),
                max_seq_len=get("max_position_embeddings"), norm_eps=float(get("rms_norm_eps")),
                activation=_GATED_ACT.get(get("hidden_act")), rope_theta=get("rope_theta"))


def config_from_hf(hf):
    """A ModelConfig from the dict of a config.json. Unsupported model types or features: ValueError
    listing them. Dropout is 0 (the model is for inference and comparison); set config.dropout to
    fine-tune with it."""
    model_type = hf.get("model_type")
    if model_type not in FAMILIES:
        raise ValueError(f"model_type={model_type!r} is not supported; supported: {', '.join(MODEL_TYPES)}")
    family = FAMILIES[model_type]
    problems = []
    known = {**family.defaults, **hf}
    if family.style == "llama":
        known.update(_rope(hf, family.defaults, problems))

    def get(name):  # a config.json field, or transformers' default when the file leaves it out
        return known[name]

    read_sizes = _read_gpt_sizes if family.style == "gpt" else _read_llama_sizes
    fields = dict(family.switches, **read_sizes(get, problems), **family.read(get, problems),
                  tie_embeddings=bool(get("tie_word_embeddings")), init_std=float(get("initializer_range")))
    if problems:
        raise ValueError(f"{model_type} checkpoint uses features minigpt does not implement: " + "; ".join(problems))
    return ModelConfig(**fields)


def _write(config, family):
    """The config.json dict of config, written as this family (whether or not the family can express it)."""
    c = config
    hf = {"model_type": family.model_type, "architectures": [family.architecture], "vocab_size": c.vocab_size,
          "initializer_range": c.init_std, "tie_word_embeddings": c.tie_embeddings,
          # minigpt knows no tokenizer: no special ids (the HF defaults may lie outside a small vocab)
          "bos_token_id": None, "eos_token_id": None, "pad_token_id": None}
    if family.style == "gpt":
        # minigpt drops the embeddings and each sublayer's output (embd_pdrop, resid_pdrop), never the
        # attention probabilities (attn_pdrop)
        hf.update(n_layer=c.n_layer, n_embd=c.d_model, n_head=c.n_head, n_positions=c.max_seq_len,
                  layer_norm_epsilon=c.norm_eps, embd_pdrop=c.dropout, resid_pdrop=c.dropout, attn_pdrop=0.0)
    else:
        # LLaMA-style models drop only attention probabilities, which minigpt never does (its embedding
        # and residual dropout has no field in these configs)
        hf.update(hidden_size=c.d_model, intermediate_size=c.d_ff, num_hidden_layers=c.n_layer,
                  num_attention_heads=c.n_head, num_key_value_heads=c.n_kv_head, head_dim=c.head_dim,
                  hidden_act=_hf_name(_GATED_ACT, c.activation), max_position_embeddings=c.max_seq_len,
                  rms_norm_eps=c.norm_eps, attention_dropout=0.0,
                  rope_parameters={"rope_type": "default", "rope_theta": c.rope_theta})
    extra = family.write(c)
    if "partial_rotary_factor" in extra:                      # transformers 5 keeps it in rope_parameters
        hf["rope_parameters"]["partial_rotary_factor"] = extra.pop("partial_rotary_factor")
    hf.update(extra)
    return hf


def _differences(config, family):
    """How config differs from what the family can express: config written as the family's config.json
    and read back; every architecture field that changed on the way. [] when it maps."""
    try:
        back = config_from_hf(_write(config, family))
    except ValueError as err:
        return [str(err)]
    skip = set(TRAINING_FIELDS) | config.unused_fields() | back.unused_fields()
    return [f"{f.name}={getattr(config, f.name)!r} ({family.model_type} has {getattr(back, f.name)!r})"
            for f in dataclasses.fields(ModelConfig)
            if f.compare and f.name not in skip and getattr(config, f.name) != getattr(back, f.name)]


def family_of(config):
    """The Family this config maps onto, or a ValueError saying, for each family, what differs."""
    why = {}
    for model_type, family in FAMILIES.items():
        why[model_type] = _differences(config, family)
        if not why[model_type]:
            return family
    lines = "\n".join(f"  {model_type}: " + "; ".join(diff) for model_type, diff in why.items())
    raise ValueError(f"this config maps to no Hugging Face family minigpt can write:\n{lines}")


def model_type_of(config):
    """The HF model_type this config maps onto, or a ValueError saying, for each family, why not."""
    return family_of(config).model_type


def config_to_hf(config):
    """The config.json dict (transformers field names) for a config that maps to an HF family."""
    return _write(config, family_of(config))


# ---------------------------------------------------------------------------------------------
# the name table
# ---------------------------------------------------------------------------------------------

def _gpt_names(config, family, add):
    P, (wte, wpe) = family.prefix, family.embeddings
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
    if config.final_norm:
        add(f"{P}.ln_f.weight", ["norm_f.w"])
        add(f"{P}.ln_f.bias", ["norm_f.b"])


def _llama_names(config, family, add):
    P = family.prefix
    add(f"{P}.embed_tokens.weight", ["wte"])
    for i in range(config.n_layer):
        h, b = f"{P}.layers.{i}", f"blocks.{i}"
        add(f"{h}.input_layernorm.weight", [f"{b}.norm1.w"])
        for proj, x in (("q_proj", "q"), ("k_proj", "k"), ("v_proj", "v")):
            add(f"{h}.self_attn.{proj}.weight", [f"{b}.attn.w{x}"], True)
            if config.qkv_bias:
                add(f"{h}.self_attn.{proj}.bias", [f"{b}.attn.b{x}"])
        add(f"{h}.self_attn.o_proj.weight", [f"{b}.attn.wo"], True)
        if config.qk_norm:
            add(f"{h}.self_attn.q_norm.weight", [f"{b}.attn.q_norm.w"])
            add(f"{h}.self_attn.k_norm.weight", [f"{b}.attn.k_norm.w"])
        add(f"{h}.post_attention_layernorm.weight", [f"{b}.norm2.w"])
        if family.fused_gate_up:
            add(f"{h}.mlp.gate_up_proj.weight", [f"{b}.mlp.w_gate", f"{b}.mlp.w_up"], True)  # (2F, C)
        else:
            add(f"{h}.mlp.gate_proj.weight", [f"{b}.mlp.w_gate"], True)
            add(f"{h}.mlp.up_proj.weight", [f"{b}.mlp.w_up"], True)
        add(f"{h}.mlp.down_proj.weight", [f"{b}.mlp.w_down"], True)
    add(f"{P}.norm.weight", ["norm_f.w"])


def name_table(config, model_type):
    """[(hf_name, [our keys], transposed)] for every tensor of the HF checkpoint, in HF order.
    The HF tensor is concat(our tensors, axis=-1), transposed when `transposed` (nn.Linear)."""
    family, rows = FAMILIES[model_type], []

    def add(hf_name, keys, transposed=False):
        rows.append((hf_name, keys, transposed))

    (_gpt_names if family.style == "gpt" else _llama_names)(config, family, add)
    if not config.tie_embeddings:
        add("lm_head.weight", ["lm_head"], True)
    return rows


def _hf_shape(shapes, keys, transposed):
    """The shape of the HF tensor made from our tensors with these keys."""
    shape = shapes[keys[0]][:-1] + (sum(shapes[k][-1] for k in keys),)  # concat along the last axis
    return shape[::-1] if transposed else shape


def to_hf_state_dict(config, tensors):
    """Any dict keyed like model.params (parameters or gradients) -> {HF name: NumPy array} in HF layout.
    Fused tensors are concatenated, nn.Linear weights transposed. A tied head appears once, as the
    embedding (as in save_pretrained and in torch's named_parameters(), whose .grad holds both paths)."""
    model_type = model_type_of(config)
    check_tensor_set(f"to_hf_state_dict: the tensors do not match a {model_type} config",
                     param_shapes(config), tensors)
    out = {}
    for hf_name, keys, transposed in name_table(config, model_type):
        parts = [to_numpy(tensors[key]) for key in keys]
        t = parts[0] if len(parts) == 1 else np.concatenate(parts, axis=-1)  # fused: [q | k | v], [gate | up]
        out[hf_name] = np.ascontiguousarray(t.T if transposed else t)       # (out, in) for nn.Linear
    return out


# ---------------------------------------------------------------------------------------------
# reading files: every error names the file
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
    """{name: array} of one .safetensors file; a corrupt or truncated file is a ValueError naming it."""
    out, bf16 = {}, []
    try:
        with safe_open(path, framework="numpy") as f:
            for name in f.keys():
                if f.get_slice(name).get_dtype() == "BF16":
                    bf16.append(name)
                else:
                    out[name] = f.get_tensor(name)
        out.update(_read_bf16(path, bf16))
    except Exception as err:  # safetensors' own error type, or ours from a truncated bfloat16 tensor
        raise ValueError(f"{path}: not a readable .safetensors file, corrupt or truncated ({err})") from err
    return out


def _checkpoint_files(path):
    """The .safetensors files of a checkpoint folder, the way transformers picks them."""
    single, index = os.path.join(path, "model.safetensors"), os.path.join(path, "model.safetensors.index.json")
    if os.path.exists(single):
        return [single]
    if os.path.exists(index):
        weight_map = read_json_object(index).get("weight_map")
        if not isinstance(weight_map, dict):
            raise ValueError(f"{index}: expected a \"weight_map\" object of tensor name -> file name")
        files = [os.path.join(path, name) for name in sorted(set(weight_map.values()))]
        gone = [file for file in files if not os.path.isfile(file)]
        if gone:
            raise ValueError(f"{index}: lists shard(s) that are not in the folder: {', '.join(gone)}")
        return files
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

def _read_config(path):
    """config.json of a checkpoint folder: its ModelConfig and its Family."""
    if not os.path.isdir(path):
        raise ValueError(f"{path}: no such folder (expected a Hugging Face checkpoint folder with "
                         f"config.json and *.safetensors)")
    config_path = os.path.join(path, "config.json")
    if not os.path.isfile(config_path):
        raise ValueError(f"{path}: no config.json (expected a Hugging Face checkpoint folder)")
    hf = read_json_object(config_path)
    try:
        config = config_from_hf(hf)
    except (ValueError, TypeError) as err:  # TypeError: a field of the wrong type ("n_embd": "32")
        raise ValueError(f"{config_path}: {err}") from err
    return config, FAMILIES[hf["model_type"]]


def _checkpoint_tensors(path, family, config):
    """The checkpoint's tensors under their full HF names, old buffers dropped, a tied lm_head copy
    checked and dropped."""
    tensors = {k: v for k, v in read_tensors(path).items() if not _BUFFERS.search(k)}
    prefix = family.prefix + "."
    if not any(k.startswith(prefix) for k in tensors):  # a base-model checkpoint: "h.0...", "wte.weight"
        tensors = {k if k == "lm_head.weight" else prefix + k: v for k, v in tensors.items()}
    if config.tie_embeddings and "lm_head.weight" in tensors:  # some checkpoints store the tied copy
        head, embedding = tensors.pop("lm_head.weight"), name_table(config, family.model_type)[0][0]
        if embedding in tensors and not np.array_equal(head, tensors[embedding]):
            raise ValueError(f"{path}: config.json ties the head to the embedding (tie_word_embeddings=true) "
                             f"but lm_head.weight differs from {embedding}")
    return tensors


def load(path, dtype="float32", device=None):
    """A Model from a Hugging Face checkpoint folder (config.json + *.safetensors, one file or shards),
    cast to dtype, on device ("cpu", "cuda"; None: MINIGPT_DEVICE or the CPU)."""
    dtype = resolve_dtype(dtype)
    path = os.fspath(path)
    config, family = _read_config(path)
    tensors = _checkpoint_tensors(path, family, config)
    layout, shapes = name_table(config, family.model_type), param_shapes(config)
    check_tensor_set(f"{path}: the weights do not match config.json ({family.model_type})",
                     {hf_name: _hf_shape(shapes, keys, transposed) for hf_name, keys, transposed in layout}, tensors)
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
