import math
import tracemalloc

import pytest

import numpy as np

from minigpt.config import (FAMILIES, PRESETS, ModelConfig, check_tensor_set, flops_per_token, num_params,
                            param_shapes, param_specs)

# Published parameter counts, from the model cards / papers (not from our code):
# GPT-1 paper "117M"; transformers' pretrained-model table for GPT-2 (124M, 355M, 774M, 1558M);
# GPT-3 paper Table 2.1; LLaMA-2 paper ("6.74B" in Meta's model card); LLaMA-3-8B model card 8.03B;
# ChatGLM-6B README "6.2B"; ChatGLM2-6B 6.24B; GLM-4-9B model card "9.4B"; Mistral-7B-v0.1's hub page
# "7.24B params" (the release post rounds it to 7.3B); Qwen3-8B model card "8.2B", "6.95B" non-embedding.
PUBLISHED_COUNTS = {
    "openai-gpt": 117e6,
    "gpt2-small": 124e6,
    "gpt2-medium": 355e6,
    "gpt2-large": 774e6,
    "gpt2-xl": 1558e6,
    "gpt3-175b": 175e9,
    "llama-7b": 6.74e9,
    "llama2-7b": 6.74e9,
    "llama3-8b": 8.03e9,
    "chatglm-6b": 6.2e9,
    "chatglm2-6b": 6.24e9,
    "glm4-9b": 9.4e9,
    "mistral-7b": 7.24e9,
    "qwen3-8b": 8.2e9,
}


@pytest.mark.parametrize("name", sorted(PUBLISHED_COUNTS))
def test_num_params_published_within_one_percent(name):
    total = num_params(ModelConfig.preset(name))["total"]
    published = PUBLISHED_COUNTS[name]
    assert abs(total - published) / published < 0.01, f"{name}: {total:,} vs published {published:,.0f}"


def test_num_params_qwen3_8b_non_embedding_within_one_percent():
    non_embedding = num_params(ModelConfig.preset("qwen3-8b"))["non_embedding"]
    assert abs(non_embedding - 6.95e9) / 6.95e9 < 0.01, non_embedding


def test_num_params_never_allocates_the_weights():
    # GPT-3 175B in float32 would be 700 GB; counting it must cost next to nothing
    tracemalloc.start()
    try:
        num_params(ModelConfig.preset("gpt3-175b"))
        flops_per_token(ModelConfig.preset("gpt3-175b"))
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 1_000_000, f"counting allocated {peak:,} bytes"


def test_num_params_gpt2_small_exact():
    # the exact count of the "gpt2" checkpoint on the Hugging Face hub: 124,439,808
    assert num_params(ModelConfig.preset("gpt2-small"))["total"] == 124_439_808


def test_num_params_splits_embedding_from_the_rest():
    cfg = ModelConfig.preset("gpt2-small")
    counts = num_params(cfg)
    assert counts["embedding"] == 50257 * 768 + 1024 * 768
    assert counts["total"] == counts["embedding"] + counts["non_embedding"]
    untied = num_params(ModelConfig.preset("llama2-7b"))
    assert untied["embedding"] == 2 * 32000 * 4096  # wte and lm_head


def test_param_shapes_follow_the_switches():
    cfg = ModelConfig.preset("llama", n_layer=1, d_model=64, n_head=4, n_kv_head=2)
    shapes = param_shapes(cfg)
    assert shapes["blocks.0.attn.wq"] == (64, 64)
    assert shapes["blocks.0.attn.wk"] == (64, 32)  # 2 kv heads of 16
    assert "blocks.0.attn.bq" not in shapes and "blocks.0.norm1.b" not in shapes
    assert shapes["blocks.0.mlp.w_gate"] == (64, cfg.d_ff) and shapes["lm_head"] == (64, cfg.vocab_size)
    assert "wpe" not in shapes
    glm = param_shapes(ModelConfig.preset("glm", n_layer=1))
    assert glm["wpe"] == glm["wbpe"] == (64, 64) and "lm_head" not in glm
    chatglm2 = param_shapes(ModelConfig.preset("chatglm2", n_layer=1))
    assert "blocks.0.attn.bk" in chatglm2 and "blocks.0.attn.bo" not in chatglm2


def test_swiglu_hidden_size_rounds_up_to_multiple_of():
    assert ModelConfig.preset("llama2-7b").d_ff == 11008        # int(8*4096/3) = 10922 -> 43*256
    assert ModelConfig.preset("llama2-70b").d_ff == 28672       # *1.3, multiple of 4096
    assert ModelConfig.preset("llama3-8b").d_ff == 14336        # *1.3, multiple of 1024
    assert ModelConfig.preset("gpt2", d_model=48).d_ff == 192   # plain MLP: 4C


def test_flops_per_token_is_6n_plus_attention():
    cfg = ModelConfig.preset("gpt3-175b")
    N = num_params(cfg)["non_embedding"] + cfg.vocab_size * cfg.d_model
    T = 2048
    assert flops_per_token(cfg) == 6 * N + 12 * 96 * T * 12288
    # at 175B parameters the attention term is a few percent
    assert 1.0 < flops_per_token(cfg) / (6 * 175e9) < 1.05
    assert flops_per_token(cfg, seq_len=1) < flops_per_token(cfg)


def test_preset_tiny_families_have_tiny_sizes():
    for name in FAMILIES:
        cfg = ModelConfig.preset(name)
        assert num_params(cfg)["total"] < 1e6, name


# Each family's switches as its paper / reference code has them (not read back from our presets).
FAITHFUL = {
    "gpt1": dict(norm="layernorm", norm_placement="post", final_norm=False, activation="gelu_tanh",
                 positions="learned", qkv_bias=True, bias=True, tie_embeddings=True, attention="causal"),
    "gpt2": dict(norm="layernorm", norm_placement="pre", final_norm=True, activation="gelu_tanh",
                 positions="learned", qkv_bias=True, bias=True, tie_embeddings=True, scaled_residual_init=True),
    "gpt3": dict(norm_placement="pre", final_norm=True, positions="learned", attention_pattern="alternating",
                 scaled_residual_init=True),
    "llama": dict(norm="rmsnorm", norm_placement="pre", activation="swiglu", positions="rope", rope_pairing="half",
                  rotary_fraction=1.0, qkv_bias=False, bias=False, tie_embeddings=False, attention="causal"),
    # GLM: Megatron's pre-LN blocks, final LN, word + position + block-position tables, tied output
    "glm": dict(norm="layernorm", norm_placement="pre", final_norm=True, activation="gelu_tanh",
                positions="glm2d", qkv_bias=True, bias=True, tie_embeddings=True, attention="prefix",
                scaled_residual_init=True),
    # ChatGLM-6B's GLMBlock: alpha = sqrt(2 * num_layers), 2D RoPE, gelu_impl (tanh) in a non-gated MLP
    "chatglm": dict(norm="layernorm", norm_placement="deepnorm", final_norm=True, activation="gelu_tanh",
                    positions="rope2d", qkv_bias=True, bias=True, attention="prefix"),
    # ChatGLM2: add_qkv_bias, no add_bias_linear, multi_query_group_num 2, RotaryEmbedding(rotary_dim // 2)
    # applied to (2i, 2i+1) pairs, untied output_layer, causal
    "chatglm2": dict(norm="rmsnorm", norm_placement="pre", final_norm=True, activation="swiglu", positions="rope",
                     rotary_fraction=0.5, rope_pairing="interleaved", qkv_bias=True, bias=False, n_kv_head=2,
                     tie_embeddings=False, attention="causal"),
    "glm4": dict(norm="rmsnorm", norm_placement="pre", final_norm=True, activation="swiglu", positions="rope",
                 rotary_fraction=0.5, rope_pairing="interleaved", qkv_bias=True, bias=False, n_kv_head=2,
                 tie_embeddings=False, attention="causal"),
    # Mistral 7B: LLaMA's block, GQA, and a sliding window on every layer (MistralAttention, sliding_window)
    "mistral": dict(norm="rmsnorm", norm_placement="pre", activation="swiglu", positions="rope", rope_pairing="half",
                    qkv_bias=False, bias=False, tie_embeddings=False, attention_pattern="sliding", qk_norm=False),
    # Qwen3: LLaMA's block with q_norm / k_norm (Qwen3RMSNorm over head_dim), GQA, dense causal attention
    "qwen3": dict(norm="rmsnorm", norm_placement="pre", activation="swiglu", positions="rope", rope_pairing="half",
                  qkv_bias=False, bias=False, tie_embeddings=False, attention_pattern="dense", qk_norm=True),
}


@pytest.mark.parametrize("name", sorted(FAITHFUL))
def test_preset_switches_faithful(name):
    cfg = ModelConfig.preset(name)
    got = {field: getattr(cfg, field) for field in FAITHFUL[name]}
    assert got == FAITHFUL[name]


def test_preset_published_sizes_faithful():
    chatglm = ModelConfig.preset("chatglm-6b")
    assert chatglm.deepnorm_alpha == math.sqrt(56) and chatglm.head_dim == 128 and chatglm.d_ff == 16384
    glm4 = ModelConfig.preset("glm4-9b")
    assert (glm4.rotary_dim, glm4.n_kv_head, glm4.d_ff, glm4.norm_eps) == (64, 2, 13696, 1.5625e-07)
    assert glm4.rope_theta == 10000 * 500                                    # glm-4-9b-chat's rope_ratio
    assert ModelConfig.preset("chatglm2-6b").rotary_dim == 64                # half of each 128-wide head
    llama3 = ModelConfig.preset("llama3-8b")
    assert (llama3.n_kv_head, llama3.rope_theta, llama3.vocab_size) == (8, 500000.0, 128256)
    assert ModelConfig.preset("llama-7b").n_kv_head == 32                    # LLaMA-1 and -2 7B: no GQA
    mistral = ModelConfig.preset("mistral-7b")
    assert (mistral.attn_window, mistral.n_kv_head, mistral.d_ff, mistral.norm_eps) == (4096, 8, 14336, 1e-5)
    qwen3 = ModelConfig.preset("qwen3-8b")
    assert (qwen3.n_layer, qwen3.head_dim, qwen3.n_kv_head, qwen3.rope_theta) == (36, 128, 8, 1e6)


def test_preset_overrides_apply_and_rederive_d_ff():
    cfg = ModelConfig.preset("llama2-7b", n_layer=2, d_model=64, n_head=4, n_kv_head=2, multiple_of=16)
    assert (cfg.n_layer, cfg.d_model, cfg.d_ff) == (2, 64, 176)


def test_preset_unknown_name_is_error():
    with pytest.raises(ValueError, match="gpt5"):
        ModelConfig.preset("gpt5")


def test_preset_unknown_field_is_error():
    with pytest.raises(ValueError, match="n_layers"):
        ModelConfig.preset("gpt2", n_layers=2)


@pytest.mark.parametrize("fields, match", [
    (dict(d_model=30, n_head=4), "d_model=30"),
    (dict(n_head=4, n_kv_head=3), "n_kv_head=3"),
    (dict(n_layer=0), "n_layer=0"),
    (dict(vocab_size=-5), "vocab_size=-5"),
    (dict(d_model=2.5), "d_model=2.5"),
    (dict(d_ff=0), "d_ff=0"),
    (dict(norm="batchnorm"), "batchnorm"),
    (dict(norm_placement="sandwich"), "sandwich"),
    (dict(activation="tanh"), "tanh"),
    (dict(positions="alibi"), "alibi"),
    (dict(rope_pairing="zigzag"), "zigzag"),
    (dict(attention="bidirectional"), "bidirectional"),
    (dict(attention_pattern="strided"), "strided"),
    (dict(positions="rope", d_model=24, n_head=4, rotary_fraction=0.5), "rotary dim 3"),
    (dict(positions="rope2d", d_model=24, n_head=4), "head_dim=6"),
    (dict(rotary_fraction=0.0), "rotary_fraction"),
    (dict(rotary_fraction="half"), "rotary_fraction='half'"),
    (dict(activation="swiglu", bias=False, ffn_dim_multiplier="1.3"), "ffn_dim_multiplier='1.3'"),
    (dict(dropout=1.0), "dropout=1.0"),
    (dict(norm_eps=0), "norm_eps=0"),
    (dict(tie_embeddings="yes"), "tie_embeddings"),
    (dict(qk_norm=1), "qk_norm=1"),
    (dict(attention_pattern="sliding", attn_window=0), "attn_window=0"),
    (dict(activation="swiglu", bias=True), "bias=True"),
])
def test_config_invalid_is_error(fields, match):
    with pytest.raises(ValueError, match=match):
        ModelConfig(**fields)


def test_config_defaults_derive_kv_heads_and_d_ff():
    cfg = ModelConfig(d_model=32, n_head=4)
    assert cfg.n_kv_head == 4 and cfg.d_ff == 128 and cfg.head_dim == 8


def test_every_preset_builds():
    for name in PRESETS:
        assert num_params(ModelConfig.preset(name))["total"] > 0, name


def test_config_equality_ignores_how_d_ff_was_derived():
    derived = ModelConfig.preset("llama2-7b")
    assert derived == ModelConfig.preset("llama2-7b", d_ff=11008, multiple_of=1)
    assert derived != ModelConfig.preset("llama2-7b", d_ff=11264)


# --- the questions the model asks the config ----------------------------------------------------
def test_config_answers_position_questions():
    answers = {name: (ModelConfig.preset(name).position_tables, ModelConfig.preset(name).block_positions,
                      ModelConfig.preset(name).rotary) for name in FAMILIES}
    assert answers["gpt2"] == (("wpe",), False, None)
    assert answers["glm"] == (("wpe", "wbpe"), True, None)
    assert answers["chatglm"] == ((), True, "rope2d")
    assert answers["llama"] == answers["mistral"] == answers["qwen3"] == answers["glm4"] == ((), False, "rope")
    assert ModelConfig(positions="sinusoidal").position_tables == ()


def test_config_answers_mlp_questions():
    for activation, gated, nonlinearity in (("gelu_tanh", False, "gelu_tanh"), ("relu", False, "relu"),
                                            ("swiglu", True, "silu"), ("geglu", True, "gelu")):
        cfg = ModelConfig(activation=activation, bias=not gated)
        assert (cfg.gated, cfg.mlp_activation) == (gated, nonlinearity), activation


def test_config_local_attention_per_layer():
    layers = range(4)
    assert [ModelConfig.preset("gpt3").local_attention(i) for i in layers] == [None, "banded", None, "banded"]
    assert [ModelConfig.preset("mistral").local_attention(i) for i in layers] == ["sliding"] * 4
    assert [ModelConfig.preset("llama").local_attention(i) for i in layers] == [None] * 4


def test_config_unused_fields():
    gpt2 = ModelConfig.preset("gpt2").unused_fields()
    assert gpt2 == {"rope_theta", "rotary_fraction", "rope_pairing", "attn_window"}
    assert ModelConfig.preset("chatglm").unused_fields() == {"rotary_fraction", "rope_pairing", "attn_window"}
    assert ModelConfig.preset("mistral").unused_fields() == set()


def test_param_specs_give_every_init():
    specs = param_specs(ModelConfig.preset("qwen3", n_layer=1))
    assert specs["blocks.0.attn.q_norm.w"] == ((16,), "ones") and specs["blocks.0.attn.k_norm.w"] == ((16,), "ones")
    assert specs["blocks.0.attn.wo"].init == specs["blocks.0.mlp.w_down"].init == "residual"
    assert specs["wte"].init == specs["blocks.0.attn.wq"].init == specs["lm_head"].init == "normal"
    gpt2 = param_specs(ModelConfig.preset("gpt2", n_layer=1))
    assert gpt2["blocks.0.norm1.b"].init == gpt2["blocks.0.attn.bq"].init == gpt2["blocks.0.mlp.b_up"].init == "zeros"
    assert gpt2["wpe"].init == "normal" and gpt2["norm_f.w"].init == "ones"
    assert set(param_shapes(ModelConfig.preset("qwen3"))) == set(param_specs(ModelConfig.preset("qwen3")))


def test_residual_init_std():
    assert ModelConfig.preset("gpt2", n_layer=8).residual_init_std == 0.02 / 4       # 0.02 / sqrt(2 * 8)
    assert ModelConfig.preset("llama", n_layer=8).residual_init_std == 0.02          # no scaled_residual_init


def test_check_tensor_set_lists_every_problem_together():
    expected = {"a": (2, 3), "b": (4,), "c": (1,)}
    check_tensor_set("fine", expected, {"a": np.zeros((2, 3)), "b": np.zeros(4), "c": np.zeros(1)})
    with pytest.raises(ValueError) as err:
        check_tensor_set("the tensors do not fit", expected,
                         {"a": np.zeros((3, 2)), "b": np.zeros(4), "d": np.zeros(1)})
    assert str(err.value) == ("the tensors do not fit:\n  missing keys (1): c\n  unexpected keys (1): d\n"
                              "  shape mismatches (1): a has (3, 2), expected (2, 3)")
