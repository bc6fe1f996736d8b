"""The position-wise feed-forward network (MLP) of a Transformer block, plain and gated.

Dimension letters: B batch, T time, C channels, F hidden size of the MLP (4C in GPT;
about 8C/3 in LLaMA's gated MLP, so that its three matrices cost as much as GPT's two).

Plain MLP (GPT-1, GPT-2, GPT-3, GLM, ChatGLM-6B), applied to each token on its own:
    h   = x @ w_up + b_up                (B, T, F)   expand
    a   = act(h)                         (B, T, F)   GELU in the GPT family
    out = a @ w_down + b_down            (B, T, C)   project back
Backward runs the three lines in reverse, each with its own backward (linear.py, activations.py):
    da = dout @ w_down.T,  dw_down = a.T @ dout,  db_down = sum dout
    dh = act'(h) * da
    dx = dh @ w_up.T,      dw_up = x.T @ dh,      db_up = sum dh

Gated MLP, GLU variants (Shazeer 2020, "GLU Variants Improve Transformer"): a second
projection of x multiplies the activation entry by entry, a learned gate.
    g   = x @ w_gate                     (B, T, F)
    u   = x @ w_up                       (B, T, F)
    a   = act(g) * u                     (B, T, F)   SwiGLU with act = SiLU (LLaMA, ChatGLM2, GLM-4),
                                                     GeGLU with act = GELU
    out = a @ w_down                     (B, T, C)   no biases, as in LLaMA
Backward. The product rule splits da between the two branches:
    da = dout @ w_down.T,   dw_down = a.T @ dout
    du = da * act(g),       dg = act'(g) * (da * u)
and x, used by both projections, sums the gradients of both:
    dx = dg @ w_gate.T + du @ w_up.T,   dw_gate = x.T @ dg,   dw_up = x.T @ du
"""
from typing import Any, NamedTuple

from minigpt.layers.activations import get_activation
from minigpt.layers.linear import linear_backward, linear_forward


class MLPCache(NamedTuple):
    """What mlp_backward needs: each step's cache, and the activation's name (its backward is looked up)."""
    up_cache: Any                                                # linear: h = x @ w_up + b_up
    activation: str                                              # a name in activations.ACTIVATIONS
    act_cache: Any                                               # activation: a = act(h)
    down_cache: Any                                              # linear: out = a @ w_down + b_down


def mlp_forward(x, w_up, b_up, w_down, b_down, activation="gelu_tanh"):
    """out = act(x @ w_up + b_up) @ w_down + b_down.
    x (B, T, C), w_up (C, F), b_up (F,) or None, w_down (F, C), b_down (C,) or None  ->  out (B, T, C), cache
    activation: a name in activations.ACTIVATIONS.
    """
    act_forward, _ = get_activation(activation)
    h, up_cache = linear_forward(x, w_up, b_up)                  # (B, T, F)
    a, act_cache = act_forward(h)                                # (B, T, F)
    out, down_cache = linear_forward(a, w_down, b_down)          # (B, T, C)
    return out, MLPCache(up_cache, activation, act_cache, down_cache)


def mlp_backward(dout, cache):
    """dout (B, T, C) -> dx (B, T, C), dw_up (C, F), db_up (F,), dw_down (F, C), db_down (C,) (biases: None if absent)."""
    _, act_backward = get_activation(cache.activation)
    da, dw_down, db_down = linear_backward(dout, cache.down_cache)   # (B, T, F)  undoes out = a @ w_down + b_down
    dh = act_backward(da, cache.act_cache)                           # (B, T, F)  undoes a = act(h)
    dx, dw_up, db_up = linear_backward(dh, cache.up_cache)           # (B, T, C)  undoes h = x @ w_up + b_up
    return dx, dw_up, db_up, dw_down, db_down


class GluCache(NamedTuple):
    """What glu_backward needs for a = act(g) * u: the activation, its cache and the two factors of a."""
    activation: str                                              # a name in activations.ACTIVATIONS
    act_cache: Any                                               # activation: act_g = act(g)
    act_g: Any                                                   # (B, T, F) act(g), the gate
    u: Any                                                       # (B, T, F) x @ w_up, the gated value


class SwigluCache(NamedTuple):
    """The fused SwiGLU gate's cache (minigpt.kernels.elementwise_cpu): its two inputs, nothing computed."""
    g: Any                                                       # (B, T, F) x @ w_gate
    u: Any                                                       # (B, T, F) x @ w_up


class GatedMLPCache(NamedTuple):
    """What gated_mlp_backward needs: each step's cache."""
    gate_cache: Any                                              # linear: g = x @ w_gate
    up_cache: Any                                                # linear: u = x @ w_up
    glu_cache: Any                                               # the gate: a = act(g) * u
    down_cache: Any                                              # linear: out = a @ w_down


def glu_forward(g, u, activation):
    """The gate, a = act(g) * u entry by entry. g, u (B, T, F) -> a (B, T, F), cache.
    "silu_fused" is SwiGLU's gate compiled into one pass (minigpt.kernels.elementwise_cpu, float32 NumPy
    arrays only): the model uses it on a CPU; imported, and so compiled, only when asked for."""
    if activation == "silu_fused":
        from minigpt.kernels.elementwise_cpu import swiglu_forward
        return swiglu_forward(g, u)
    act_forward, _ = get_activation(activation)
    act_g, act_cache = act_forward(g)                            # (B, T, F)
    return act_g * u, GluCache(activation, act_cache, act_g, u)  # (B, T, F)


def glu_backward(da, cache):
    """da (B, T, F) -> dg (B, T, F), du (B, T, F): the product rule splits da between the two factors."""
    if isinstance(cache, SwigluCache):                           # the fused kernel's forward made it
        from minigpt.kernels.elementwise_cpu import swiglu_backward
        return swiglu_backward(da, cache)
    _, act_backward = get_activation(cache.activation)
    du = da * cache.act_g                                        # (B, T, F)  undoes a = act_g * u, for u
    dg = act_backward(da * cache.u, cache.act_cache)             # (B, T, F)  ... for act_g, then undoes act_g = act(g)
    return dg, du


def gated_mlp_forward(x, w_gate, w_up, w_down, activation="silu"):
    """out = (act(x @ w_gate) * (x @ w_up)) @ w_down: SwiGLU with "silu", GeGLU with "gelu" or "gelu_tanh".
    x (B, T, C), w_gate (C, F), w_up (C, F), w_down (F, C)  ->  out (B, T, C), cache
    """
    g, gate_cache = linear_forward(x, w_gate)                    # (B, T, F)
    u, up_cache = linear_forward(x, w_up)                        # (B, T, F)
    a, glu_cache = glu_forward(g, u, activation)                 # (B, T, F) act(g) * u
    out, down_cache = linear_forward(a, w_down)                  # (B, T, C)
    return out, GatedMLPCache(gate_cache, up_cache, glu_cache, down_cache)


def gated_mlp_backward(dout, cache):
    """dout (B, T, C) -> dx (B, T, C), dw_gate (C, F), dw_up (C, F), dw_down (F, C)."""
    da, dw_down, _ = linear_backward(dout, cache.down_cache)     # (B, T, F)  undoes out = a @ w_down
    dg, du = glu_backward(da, cache.glu_cache)                   # (B, T, F)  undoes a = act(g) * u
    dx_up, dw_up, _ = linear_backward(du, cache.up_cache)        # (B, T, C)  undoes u = x @ w_up
    dx_gate, dw_gate, _ = linear_backward(dg, cache.gate_cache)  # (B, T, C)  undoes g = x @ w_gate
    return dx_gate + dx_up, dw_gate, dw_up, dw_down              # x fed both projections: the gradients add
