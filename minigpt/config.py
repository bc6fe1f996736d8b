"""ModelConfig: every switch in which GPT-1/2/3, LLaMA, GLM, ChatGLM, Mistral and Qwen3 differ, and their presets.

A decoder-only model is one recipe with a handful of switches:

    norm            "layernorm" (GPT, GLM, ChatGLM-6B) | "rmsnorm" (LLaMA, ChatGLM2, GLM-4)
    norm_placement  "pre"      x = x + f(LN(x))                      GPT-2/3, LLaMA, GLM, ChatGLM2, GLM-4
                    "post"     x = LN(x + f(x))                      GPT-1 (and the 2017 Transformer)
                    "deepnorm" h = LN(x); x = alpha*h + f(h)         ChatGLM-6B, alpha = sqrt(2 * n_layer)
    activation      "gelu_tanh" | "gelu" | "relu" (plain 2-layer MLP) | "swiglu" | "geglu" (gated MLP)
    positions       "learned" (GPT-1/2/3) | "sinusoidal" (the 2017 Transformer) | "rope" (LLaMA, ChatGLM2, GLM-4)
                    | "glm2d" (GLM: two learned tables, position and block position) | "rope2d" (ChatGLM-6B: 2D RoPE)
    attention       "causal" | "prefix" (GLM's Part A sees itself bidirectionally)
    attention_pattern "dense" | "alternating" (GPT-3: odd layers locally banded, blocks of attn_window)
                    | "sliding" (Mistral: every layer sees the last attn_window positions)
    qk_norm         False | True (Qwen3: RMSNorm over the head dim of every query and key, before RoPE)

and sizes: vocab_size V, n_layer L, d_model C, n_head H, n_kv_head Hkv (GQA / MQA), d_ff F, max_seq_len.

The model, the Hugging Face converter and the lessons never compare these strings themselves: they
ask the config a question (`config.position_tables`, `config.rotary`, `config.mlp_activation`,
`config.local_attention(i)`, ...), so each switch is decided here, once.

`ModelConfig.preset(name, **overrides)` gives each family at a tiny size that trains on a laptop CPU
("gpt1", "gpt2", "gpt3", "llama", "glm", "chatglm", "chatglm2", "glm4", "mistral", "qwen3") and the
published models at their real sizes for counting ("gpt2-xl", "gpt3-175b", "llama2-7b", "glm4-9b",
"mistral-7b", "qwen3-8b", ...; see PRESETS).

Counting never allocates a weight: `param_specs(config)` lists every parameter's shape and how it is
initialised (the model allocates exactly these), `num_params(config)` adds them up,
`flops_per_token(config)` estimates training compute.
"""
import dataclasses
import math
from dataclasses import dataclass, field
from typing import NamedTuple

NORMS = ("layernorm", "rmsnorm")
NORM_PLACEMENTS = ("pre", "post", "deepnorm")
ACTIVATIONS = ("gelu_tanh", "gelu", "relu", "swiglu", "geglu")
POSITIONS = ("learned", "sinusoidal", "rope", "glm2d", "rope2d")
ROPE_PAIRINGS = ("half", "interleaved")
ATTENTIONS = ("causal", "prefix")
ATTENTION_PATTERNS = ("dense", "alternating", "sliding")
ATTENTION_IMPLS = ("reference", "flash-numpy", "flash-cpu", "flash-cuda", "auto")
GATE_ACTIVATIONS = {"swiglu": "silu", "geglu": "gelu"}   # a gated MLP's name -> the nonlinearity on its gate
# Fields that shape training but not the function the weights compute (a checkpoint does not record them)
TRAINING_FIELDS = ("dropout", "init_std", "scaled_residual_init")


@dataclass
class ModelConfig:
    """The architecture of one decoder-only model. Validated on construction (ValueError names the bad field)."""
    vocab_size: int = 256
    n_layer: int = 4
    d_model: int = 64
    n_head: int = 4
    n_kv_head: int | None = None          # None -> n_head (multi-head); 1 is MQA; in between is GQA
    d_ff: int | None = None               # MLP hidden size; None -> 4*d_model, or the SwiGLU rule below
    max_seq_len: int = 64                 # rows of the learned position tables ("learned", "glm2d"): the longest T
                                          # they take; RoPE and sinusoidal positions have no table and no limit
    norm: str = "layernorm"
    norm_eps: float = 1e-5
    norm_placement: str = "pre"
    final_norm: bool = True
    activation: str = "gelu_tanh"
    positions: str = "learned"
    rope_theta: float = 10000.0
    rotary_fraction: float = 1.0          # fraction of the head dim that RoPE rotates (ChatGLM2 / GLM-4: 0.5)
    rope_pairing: str = "half"            # "half": pairs (i, i + rd/2), HF LLaMA; "interleaved": (2i, 2i+1)
    qkv_bias: bool = True
    bias: bool = True                     # attention output projection and MLP biases
    tie_embeddings: bool = True           # logits = h @ wte.T instead of a separate lm_head
    attention: str = "causal"
    attention_pattern: str = "dense"
    attn_window: int = 16                 # local attention: GPT-3's banded layers see their own block of
                                          # attn_window positions, Mistral's sliding window the last attn_window
    # How attention is computed, not what: the NumPy reference (the oracle), a fused flash kernel
    # (minigpt.kernels), or "auto" (flash-cuda on a GPU, flash-cpu on a CPU from model.AUTO_FLASH_CPU_MIN_T = 64
    # positions, where it was measured faster).
    attention_impl: str = field(default="auto", compare=False)
    qk_norm: bool = False                 # Qwen3: RMSNorm (weights q_norm.w, k_norm.w of size D) on q and k per head
    dropout: float = 0.0
    init_std: float = 0.02
    scaled_residual_init: bool = False    # GPT-2: residual projections (attn.wo, mlp.w_down) get std / sqrt(2L)
    # How a gated MLP's d_ff is derived when d_ff is None. Once d_ff is set they change nothing, so two
    # configs with the same d_ff compare equal whatever these say (compare=False).
    multiple_of: int = field(default=1, compare=False)   # hidden rounded up to a multiple of this (LLaMA: 256)
    ffn_dim_multiplier: float | None = field(default=None, compare=False)  # LLaMA-2-70B / 3: scale before rounding

    def __post_init__(self):
        for name in ("vocab_size", "n_layer", "d_model", "n_head", "max_seq_len", "attn_window", "multiple_of"):
            _check_positive_int(name, getattr(self, name))
        if self.n_kv_head is None:
            self.n_kv_head = self.n_head
        _check_positive_int("n_kv_head", self.n_kv_head)
        for name, known in (("norm", NORMS), ("norm_placement", NORM_PLACEMENTS), ("activation", ACTIVATIONS),
                            ("positions", POSITIONS), ("rope_pairing", ROPE_PAIRINGS),
                            ("attention", ATTENTIONS), ("attention_pattern", ATTENTION_PATTERNS),
                            ("attention_impl", ATTENTION_IMPLS)):
            if getattr(self, name) not in known:
                raise ValueError(f"{name}={getattr(self, name)!r}: expected one of {known}")
        for name in ("final_norm", "qkv_bias", "bias", "tie_embeddings", "qk_norm", "scaled_residual_init"):
            if not isinstance(getattr(self, name), bool):
                raise ValueError(f"{name}={getattr(self, name)!r}: expected True or False")
        for name in ("norm_eps", "rope_theta", "init_std"):
            value = getattr(self, name)
            if not _is_number(value) or not value > 0:
                raise ValueError(f"{name}={value!r}: expected a number > 0")
        if not _is_number(self.dropout) or not 0 <= self.dropout < 1:
            raise ValueError(f"dropout={self.dropout!r}: expected a probability in [0, 1)")
        if self.d_model % self.n_head:
            raise ValueError(f"d_model={self.d_model} is not divisible by n_head={self.n_head}: "
                             f"expected d_model % n_head == 0")
        if self.n_head % self.n_kv_head:
            raise ValueError(f"n_head={self.n_head} is not divisible by n_kv_head={self.n_kv_head}: "
                             f"expected each kv head to serve a whole group of query heads")
        if not _is_number(self.rotary_fraction) or not 0 < self.rotary_fraction <= 1:
            raise ValueError(f"rotary_fraction={self.rotary_fraction!r}: expected a fraction in (0, 1]")
        if self.positions == "rope" and (self.rotary_dim == 0 or self.rotary_dim % 2):
            raise ValueError(f"rotary dim {self.rotary_dim} (head_dim={self.head_dim} * rotary_fraction="
                             f"{self.rotary_fraction}): expected an even number > 0, RoPE rotates pairs")
        if self.positions == "rope2d" and self.head_dim % 4:
            raise ValueError(f"head_dim={self.head_dim} with positions='rope2d': expected a multiple of 4 "
                             f"(two halves, each rotated in pairs)")
        if self.gated and self.bias:
            raise ValueError(f"bias=True with activation={self.activation!r}: gated MLPs have no biases here "
                             f"(as in LLaMA, ChatGLM2, GLM-4); expected bias=False")
        if self.ffn_dim_multiplier is not None and not (_is_number(self.ffn_dim_multiplier)
                                                        and self.ffn_dim_multiplier > 0):
            raise ValueError(f"ffn_dim_multiplier={self.ffn_dim_multiplier!r}: expected None or a number > 0")
        if self.d_ff is None:
            self.d_ff = self._default_d_ff()
        _check_positive_int("d_ff", self.d_ff)

    def _default_d_ff(self):
        """4*C for a plain MLP. A gated MLP has three matrices instead of two, so LLaMA shrinks the hidden
        size to 2/3 of 4*C (same parameter count), scales it by ffn_dim_multiplier, and rounds up."""
        if not self.gated:
            return 4 * self.d_model
        hidden = int(2 * 4 * self.d_model / 3)
        if self.ffn_dim_multiplier is not None:
            hidden = int(self.ffn_dim_multiplier * hidden)
        return self.multiple_of * math.ceil(hidden / self.multiple_of)

    @property
    def head_dim(self):
        """D = C / H."""
        return self.d_model // self.n_head

    @property
    def rotary_dim(self):
        """How many of a head's D channels RoPE rotates (positions='rope')."""
        return int(self.head_dim * self.rotary_fraction)

    # --- the questions the model asks: each family switch decided once, here ---------------------
    @property
    def gated(self):
        """True for SwiGLU / GeGLU (three MLP matrices: gate, up, down), False for the plain 2-layer MLP."""
        return self.activation in GATE_ACTIVATIONS

    @property
    def mlp_activation(self):
        """The nonlinearity of the MLP: on the hidden layer of a plain MLP, on the gate of a gated one
        ("silu" for SwiGLU, "gelu" for GeGLU)."""
        return GATE_ACTIVATIONS.get(self.activation, self.activation)

    @property
    def position_tables(self):
        """The learned position tables added to the token embeddings: ("wpe",) for "learned",
        ("wpe", "wbpe") for GLM's two ids, () for the rest. A table has max_seq_len rows, which limits T."""
        return {"learned": ("wpe",), "glm2d": ("wpe", "wbpe")}.get(self.positions, ())

    @property
    def block_positions(self):
        """True when tokens carry GLM's second position id, the block position ("glm2d", "rope2d")."""
        return self.positions in ("glm2d", "rope2d")

    @property
    def rotary(self):
        """How q and k are rotated: "rope" (one position id), "rope2d" (ChatGLM-6B: two), or None."""
        return self.positions if self.positions in ("rope", "rope2d") else None

    @property
    def norm_has_bias(self):
        """LayerNorm learns a shift b besides the scale w; RMSNorm only the scale."""
        return self.norm == "layernorm"

    @property
    def residual_init_std(self):
        """The init std of the residual projections (attn.wo, mlp.w_down): init_std / sqrt(2L) with
        GPT-2's scaled_residual_init, so the residual stream's variance does not grow with depth."""
        return self.init_std / math.sqrt(2 * self.n_layer) if self.scaled_residual_init else self.init_std

    @property
    def deepnorm_alpha(self):
        """ChatGLM-6B's residual scale alpha = sqrt(2 * n_layer) (norm_placement='deepnorm')."""
        return math.sqrt(2 * self.n_layer)

    def local_attention(self, layer):
        """Which local mask narrows layer `layer`'s attention: None (dense), "banded" (GPT-3's odd
        layers: a block of attn_window positions) or "sliding" (Mistral: the last attn_window positions)."""
        if self.attention_pattern == "sliding":
            return "sliding"
        if self.attention_pattern == "alternating" and layer % 2 == 1:
            return "banded"
        return None

    def unused_fields(self):
        """The fields this config never reads (rope_theta without RoPE, attn_window without local
        attention, ...): two configs that differ only there build the same model."""
        unused = set()
        if self.rotary != "rope":
            unused |= {"rotary_fraction", "rope_pairing"}
        if self.rotary is None:
            unused.add("rope_theta")
        if self.attention_pattern == "dense":
            unused.add("attn_window")
        return unused

    @classmethod
    def preset(cls, name, **overrides):
        """A named architecture, optionally with some fields changed: preset("llama", n_layer=2).
        Tiny trainable sizes: gpt1 gpt2 gpt3 llama glm chatglm chatglm2 glm4. Published sizes: see PRESETS."""
        if name not in PRESETS:
            raise ValueError(f"unknown preset {name!r}: expected one of {sorted(PRESETS)}")
        fields = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(overrides) - fields)
        if unknown:
            raise ValueError(f"unknown ModelConfig field(s) {unknown}: expected some of {sorted(fields)}")
        return cls(**{**PRESETS[name], **overrides})


def _is_number(value):
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _check_positive_int(name, value):
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise ValueError(f"{name}={value!r}: expected an integer > 0")


# --- presets ---------------------------------------------------------------------------------------
# The tiny sizes share V=256 (bytes), L=4, C=64, H=4, T=64: a few seconds per hundred steps on a laptop.
TINY = dict(vocab_size=256, n_layer=4, d_model=64, n_head=4, max_seq_len=64)

# LLaMA (2023): pre-RMSNorm, rotate-half RoPE, SwiGLU, no biases, untied head, GQA (LLaMA-2-70B, LLaMA-3).
LLAMA = dict(norm="rmsnorm", norm_placement="pre", final_norm=True, activation="swiglu", positions="rope",
             rope_pairing="half", qkv_bias=False, bias=False, tie_embeddings=False, n_kv_head=2, multiple_of=32)

FAMILIES = {
    # GPT-1 (Radford et al. 2018): learned positions, post-norm blocks, no final norm, tied head.
    "gpt1": dict(norm="layernorm", norm_placement="post", final_norm=False, activation="gelu_tanh",
                 positions="learned", qkv_bias=True, bias=True, tie_embeddings=True),
    # GPT-2 (2019): LayerNorm moved to the input of each sublayer, one more after the last block,
    # residual projections initialised with 0.02 / sqrt(2L).
    "gpt2": dict(norm="layernorm", norm_placement="pre", final_norm=True, activation="gelu_tanh",
                 positions="learned", qkv_bias=True, bias=True, tie_embeddings=True, scaled_residual_init=True),
    # GPT-3 (2020): GPT-2 with layers alternating dense and locally banded sparse attention.
    "gpt3": dict(norm="layernorm", norm_placement="pre", final_norm=True, activation="gelu_tanh",
                 positions="learned", qkv_bias=True, bias=True, tie_embeddings=True, scaled_residual_init=True,
                 attention_pattern="alternating", attn_window=16),
    "llama": LLAMA,
    # GLM (Du et al. 2022): pre-LN + final LN, two learned position tables, Part A attends bidirectionally.
    "glm": dict(norm="layernorm", norm_placement="pre", final_norm=True, activation="gelu_tanh",
                positions="glm2d", qkv_bias=True, bias=True, tie_embeddings=True, attention="prefix",
                scaled_residual_init=True),
    # ChatGLM-6B (2023): h = LN(x); x = sqrt(2L)*h + f(h) (DeepNorm), 2D RoPE, prefix mask, tanh-GELU MLP
    # ("OpenAI's gelu" in its code), biases everywhere, final LN. Its lm_head is tied to the word
    # embeddings (transformers ties them; 6.2B parameters is the tied count).
    "chatglm": dict(norm="layernorm", norm_placement="deepnorm", final_norm=True, activation="gelu_tanh",
                    positions="rope2d", qkv_bias=True, bias=True, tie_embeddings=True, attention="prefix"),
    # ChatGLM2-6B (2023): pre-RMSNorm, qkv bias only, SwiGLU, RoPE on half of each head with interleaved
    # pairs, 2 kv groups ("multi-query" in its code), untied output layer, causal attention.
    "chatglm2": dict(norm="rmsnorm", norm_placement="pre", final_norm=True, activation="swiglu",
                     positions="rope", rotary_fraction=0.5, rope_pairing="interleaved", qkv_bias=True,
                     bias=False, tie_embeddings=False, n_kv_head=2, multiple_of=32),
    # GLM-4 (2024): the ChatGLM2 architecture, bigger vocabulary and more layers.
    "glm4": dict(norm="rmsnorm", norm_placement="pre", final_norm=True, activation="swiglu",
                 positions="rope", rotary_fraction=0.5, rope_pairing="interleaved", qkv_bias=True,
                 bias=False, tie_embeddings=False, n_kv_head=2, multiple_of=32),
    # After the textbook. Mistral 7B (Jiang et al. 2023): LLaMA whose every layer sees only the last
    # attn_window positions (a sliding window; stacked layers still reach further back).
    "mistral": dict(LLAMA, attention_pattern="sliding", attn_window=16),
    # Qwen3 (2025): LLaMA with QK-norm, an RMSNorm over each head's query and key before RoPE.
    "qwen3": dict(LLAMA, qk_norm=True),
}

GPT2_SIZES = dict(vocab_size=50257, max_seq_len=1024)
GPT3_SIZES = dict(vocab_size=50257, max_seq_len=2048, attn_window=256)  # the paper does not give the band width
LLAMA_SIZES = dict(vocab_size=32000, n_layer=32, d_model=4096, n_head=32, n_kv_head=32, multiple_of=256)

# (name, n_layer, d_model, n_head): GPT-2's four sizes; GPT-3's eight (the paper's Table 2.1, with two
# misprints fixed: XL's 24 heads of 128 do not make d_model 2048, so 16 heads of 128; 13B's d_model is
# printed as 5140, and 40 heads of 128 make 5120).
GPT2_TABLE = [("gpt2-small", 12, 768, 12), ("gpt2-medium", 24, 1024, 16), ("gpt2-large", 36, 1280, 20),
              ("gpt2-xl", 48, 1600, 25)]
GPT3_TABLE = [("gpt3-small", 12, 768, 12), ("gpt3-medium", 24, 1024, 16), ("gpt3-large", 24, 1536, 16),
              ("gpt3-xl", 24, 2048, 16), ("gpt3-2.7b", 32, 2560, 32), ("gpt3-6.7b", 32, 4096, 32),
              ("gpt3-13b", 40, 5120, 40), ("gpt3-175b", 96, 12288, 96)]

PUBLISHED = {
    # name: (family, sizes). Sources: each model's paper / config.json.
    "openai-gpt": ("gpt1", dict(vocab_size=40478, n_layer=12, d_model=768, n_head=12, max_seq_len=512)),
    **{name: ("gpt2", dict(GPT2_SIZES, n_layer=L, d_model=C, n_head=H)) for name, L, C, H in GPT2_TABLE},
    **{name: ("gpt3", dict(GPT3_SIZES, n_layer=L, d_model=C, n_head=H)) for name, L, C, H in GPT3_TABLE},
    "llama-7b": ("llama", dict(LLAMA_SIZES, max_seq_len=2048, norm_eps=1e-6)),
    "llama2-7b": ("llama", dict(LLAMA_SIZES, max_seq_len=4096)),
    "llama2-70b": ("llama", dict(LLAMA_SIZES, n_layer=80, d_model=8192, n_head=64, n_kv_head=8, max_seq_len=4096,
                                 multiple_of=4096, ffn_dim_multiplier=1.3)),
    "llama3-8b": ("llama", dict(LLAMA_SIZES, vocab_size=128256, n_kv_head=8, max_seq_len=8192, rope_theta=500000.0,
                                multiple_of=1024, ffn_dim_multiplier=1.3)),
    "chatglm-6b": ("chatglm", dict(vocab_size=130528, n_layer=28, d_model=4096, n_head=32, d_ff=16384,
                                   max_seq_len=2048)),
    "chatglm2-6b": ("chatglm2", dict(vocab_size=65024, n_layer=28, d_model=4096, n_head=32, n_kv_head=2,
                                     d_ff=13696, max_seq_len=32768)),
    # as THUDM/glm-4-9b-chat: rope_ratio 500 -> theta 10000 * 500
    "glm4-9b": ("glm4", dict(vocab_size=151552, n_layer=40, d_model=4096, n_head=32, n_kv_head=2, d_ff=13696,
                             max_seq_len=131072, norm_eps=1.5625e-07, rope_theta=5e6)),
    # as mistralai/Mistral-7B-v0.1's config.json: a 4096-position window
    "mistral-7b": ("mistral", dict(vocab_size=32000, n_layer=32, d_model=4096, n_head=32, n_kv_head=8, d_ff=14336,
                                   max_seq_len=32768, attn_window=4096, norm_eps=1e-5)),
    # as Qwen/Qwen3-8B's config.json
    "qwen3-8b": ("qwen3", dict(vocab_size=151936, n_layer=36, d_model=4096, n_head=32, n_kv_head=8, d_ff=12288,
                               max_seq_len=40960, norm_eps=1e-6, rope_theta=1e6)),
}

PRESETS = {name: dict(TINY, **switches) for name, switches in FAMILIES.items()}
PRESETS.update({name: dict(FAMILIES[family], **sizes) for name, (family, sizes) in PUBLISHED.items()})


# --- the parameters: shapes and initialisation -------------------------------------------------------
INITS = ("normal", "residual", "zeros", "ones")


class ParamSpec(NamedTuple):
    """One parameter: its shape, and how Model initialises it. init is "normal" (N(0, init_std)),
    "residual" (N(0, residual_init_std): the projections that write into the residual stream),
    "zeros" (biases, LayerNorm shifts) or "ones" (norm scales)."""
    shape: tuple
    init: str


def param_specs(config):
    """Every parameter's key, shape and init, in model order; Model allocates exactly these.
    Weights are (in, out): y = x @ w."""
    C, V, F, D = config.d_model, config.vocab_size, config.d_ff, config.head_dim
    HD, KD = config.n_head * D, config.n_kv_head * D
    specs = {"wte": ParamSpec((V, C), "normal")}
    for table in config.position_tables:
        specs[table] = ParamSpec((config.max_seq_len, C), "normal")

    def add(key, shape, init, present=True):
        if present:
            specs[key] = ParamSpec(shape, init)

    def norm(prefix, width=C):
        add(prefix + ".w", (width,), "ones")
        add(prefix + ".b", (width,), "zeros", config.norm_has_bias)

    for i in range(config.n_layer):
        p = f"blocks.{i}."
        norm(p + "norm1")
        for name, width in (("q", HD), ("k", KD), ("v", KD)):
            add(p + f"attn.w{name}", (C, width), "normal")
            add(p + f"attn.b{name}", (width,), "zeros", config.qkv_bias)
        add(p + "attn.q_norm.w", (D,), "ones", config.qk_norm)
        add(p + "attn.k_norm.w", (D,), "ones", config.qk_norm)
        add(p + "attn.wo", (HD, C), "residual")
        add(p + "attn.bo", (C,), "zeros", config.bias)
        norm(p + "norm2")
        add(p + "mlp.w_gate", (C, F), "normal", config.gated)
        add(p + "mlp.w_up", (C, F), "normal")
        add(p + "mlp.b_up", (F,), "zeros", config.bias)
        add(p + "mlp.w_down", (F, C), "residual")
        add(p + "mlp.b_down", (C,), "zeros", config.bias)
    if config.final_norm:
        norm("norm_f")
    add("lm_head", (C, V), "normal", not config.tie_embeddings)
    return specs


def param_shapes(config):
    """Every parameter's key and shape, in model order (param_specs without the inits)."""
    return {key: spec.shape for key, spec in param_specs(config).items()}


def check_tensor_set(what, expected, tensors):
    """The one check of a set of named tensors against the shapes it should have: a ValueError that
    lists every missing key, every unexpected key and every shape mismatch together, or nothing.
    what: how the message begins ("params do not fit the config"); expected: {key: shape}."""
    missing = [k for k in expected if k not in tensors]
    unexpected = [k for k in tensors if k not in expected]
    mismatched = [f"{k} has {tuple(tensors[k].shape)}, expected {tuple(shape)}" for k, shape in expected.items()
                  if k in tensors and tuple(tensors[k].shape) != tuple(shape)]
    lines = [f"{title} ({len(keys)}): {', '.join(keys)}" for title, keys in
             (("missing keys", missing), ("unexpected keys", unexpected), ("shape mismatches", mismatched)) if keys]
    if lines:
        raise ValueError(f"{what}:\n  " + "\n  ".join(lines))


EMBEDDING_KEYS = ("wte", "wpe", "wbpe", "lm_head")


def num_params(config):
    """{"total", "embedding", "non_embedding"} parameter counts, from shapes alone.
    embedding: the vocabulary and position tables (wte, wpe, wbpe, and an untied lm_head), as in Kaplan
    et al. 2020; non_embedding: everything else (the blocks and the final norm)."""
    total = embedding = 0
    for key, shape in param_shapes(config).items():
        size = math.prod(shape)
        total += size
        embedding += size if key in EMBEDDING_KEYS else 0
    return {"total": total, "embedding": embedding, "non_embedding": total - embedding}


def flops_per_token(config, seq_len=None):
    """Training FLOPs (forward + backward) per token, for sequences of seq_len (default max_seq_len):

        6 * (N + V*C)  +  12 * L * T * H * D

    N = non-embedding parameters, V*C = the output head (one matmul, tied or not). A matmul with a
    (in, out) weight costs 2*in*out FLOPs per token forward (a multiply and an add) and twice that
    backward (dx and dw): 6 per weight. Attention adds, per layer and token, QK^T (2*T*H*D) and
    probs @ V (2*T*H*D) forward, again x3 for training: 12*L*T*H*D (PaLM, Chowdhery et al. 2022,
    Appendix B). This counts the full T x T score matrix, as the reference implementation computes it;
    a causal kernel that skips the masked upper triangle does about half (6*L*T*H*D, Kaplan's term).
    Norms, softmax, activations and embedding lookups are O(C) per token and left out."""
    T = config.max_seq_len if seq_len is None else seq_len
    _check_positive_int("seq_len", T)
    counts = num_params(config)
    head = config.vocab_size * config.d_model
    attention = 12 * config.n_layer * T * config.n_head * config.head_dim
    return 6 * (counts["non_embedding"] + head) + attention
