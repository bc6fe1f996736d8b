"""Layers: plain forward/backward function pairs. `*_forward(...) -> (out, cache)`,
`*_backward(dout, cache) -> gradients in the order of the forward's inputs`.
Each cache is a NamedTuple defined beside its pair (LayerNormCache, AttentionCache, ...): read its
fields by name, or unpack it like a tuple. A cache holds arrays and plain values, never a function.

    from minigpt.layers import layernorm_forward, layernorm_backward

The pairs, by module:
    linear       linear
    embedding    embedding                                  (helper: check_ids)
    positions    learned_position, glm_position             (helper: sinusoidal_encoding, no parameters)
    norms        layernorm, rmsnorm, qk_norm
    activations  relu, gelu, gelu_tanh, silu                (helpers: get_activation, ACTIVATIONS)
    mlp          mlp, glu (the gate act(g) * u), gated_mlp
    softmax      softmax
    attention    attention                                  (helpers: split_heads, merge_heads)
    rope         rope, rope2d                               (helper: rope_cos_sin)
    dropout      dropout
    loss         no pair: cross_entropy returns the loss and its gradient together (and log_softmax)
"""
from minigpt.layers.activations import (ACTIVATIONS, gelu_backward, gelu_forward, gelu_tanh_backward,
                                        gelu_tanh_forward, get_activation, relu_backward, relu_forward,
                                        silu_backward, silu_forward)
from minigpt.layers.attention import attention_backward, attention_forward, merge_heads, split_heads
from minigpt.layers.dropout import dropout_backward, dropout_forward
from minigpt.layers.embedding import check_ids, embedding_backward, embedding_forward
from minigpt.layers.linear import linear_backward, linear_forward
from minigpt.layers.loss import cross_entropy, log_softmax
from minigpt.layers.mlp import (gated_mlp_backward, gated_mlp_forward, glu_backward, glu_forward, mlp_backward,
                                mlp_forward)
from minigpt.layers.norms import (layernorm_backward, layernorm_forward, qk_norm_backward, qk_norm_forward,
                                  rmsnorm_backward, rmsnorm_forward)
from minigpt.layers.positions import (glm_position_backward, glm_position_forward, learned_position_backward,
                                      learned_position_forward, sinusoidal_encoding)
from minigpt.layers.rope import rope2d_backward, rope2d_forward, rope_backward, rope_cos_sin, rope_forward
from minigpt.layers.softmax import softmax_backward, softmax_forward

__all__ = [
    "linear_forward", "linear_backward",
    "embedding_forward", "embedding_backward", "check_ids",
    "learned_position_forward", "learned_position_backward",
    "glm_position_forward", "glm_position_backward", "sinusoidal_encoding",
    "layernorm_forward", "layernorm_backward", "rmsnorm_forward", "rmsnorm_backward",
    "qk_norm_forward", "qk_norm_backward",
    "relu_forward", "relu_backward", "gelu_forward", "gelu_backward",
    "gelu_tanh_forward", "gelu_tanh_backward", "silu_forward", "silu_backward",
    "get_activation", "ACTIVATIONS",
    "mlp_forward", "mlp_backward", "glu_forward", "glu_backward", "gated_mlp_forward", "gated_mlp_backward",
    "softmax_forward", "softmax_backward",
    "attention_forward", "attention_backward", "split_heads", "merge_heads",
    "rope_forward", "rope_backward", "rope2d_forward", "rope2d_backward", "rope_cos_sin",
    "dropout_forward", "dropout_backward",
    "cross_entropy", "log_softmax",
]
