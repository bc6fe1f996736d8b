"""Elementwise activation functions and their derivatives.

Dimension letters: any shape; every function acts on each entry on its own, so each backward
is dx = dout * f'(x), entry by entry.

ReLU (the original Transformer's MLP):
    f(x)  = max(x, 0)
    f'(x) = 1 where x > 0, else 0

GELU (GPT-1, GPT-2, GPT-3, GLM), x weighted by the probability Phi(x) that a standard normal is below x:
    f(x)  = x Phi(x),   Phi(x) = (1 + erf(x / sqrt(2))) / 2
    f'(x) = Phi(x) + x phi(x),   phi(x) = exp(-x^2 / 2) / sqrt(2 pi), the normal density (product rule)

GELU, tanh approximation (what GPT-2's released code and weights use):
    f(x)  = x (1 + tanh(u)) / 2,   u = sqrt(2/pi) (x + 0.044715 x^3)
    f'(x) = (1 + tanh(u)) / 2 + x (1 - tanh(u)^2) / 2 * sqrt(2/pi) (1 + 3 * 0.044715 x^2)
            (product rule; tanh' = 1 - tanh^2; chain rule through u)

SiLU, also called Swish (the gate of LLaMA's and ChatGLM2's SwiGLU):
    f(x)  = x s(x),   s(x) = 1 / (1 + exp(-x)), the logistic sigmoid
    f'(x) = s + x s (1 - s) = s (1 + x (1 - s))        using s' = s (1 - s)
We compute s as (1 + tanh(x/2)) / 2, the same function, written so that no exp can overflow.

Each forward caches what its derivative needs, computed once, in a named tuple: the mask, Phi, tanh(u) or s.
"""
import math
from typing import Any, NamedTuple

from minigpt.backend import erf, get_xp

SQRT_2_OVER_PI = math.sqrt(2.0 / math.pi)
INV_SQRT_2 = 1.0 / math.sqrt(2.0)
INV_SQRT_2PI = 1.0 / math.sqrt(2.0 * math.pi)


class ReluCache(NamedTuple):
    """What relu_backward needs: where the input was positive."""
    positive: Any                                                # (...) bool, x > 0


def relu_forward(x):
    """max(x, 0). x (...) -> out (...), cache"""
    xp = get_xp(x)
    return xp.maximum(x, 0), ReluCache(x > 0)


def relu_backward(dout, cache):
    """dout (...) -> dx (...): the gradient passes where x was positive."""
    return dout * cache.positive                                 # undoes max(x, 0): 1 where x > 0, else 0


class GeluCache(NamedTuple):
    """What gelu_backward needs: the input and Phi(x)."""
    x: Any                                                       # (...)
    cdf: Any                                                     # (...) Phi(x)


def gelu_forward(x):
    """Exact GELU, x Phi(x) with the error function. x (...) -> out (...), cache"""
    cdf = 0.5 * (1.0 + erf(x * INV_SQRT_2))                      # (...) Phi(x)
    return x * cdf, GeluCache(x, cdf)


def gelu_backward(dout, cache):
    """dout (...) -> dx (...)"""
    x, cdf = cache
    xp = get_xp(x)
    pdf = xp.exp(-0.5 * x * x) * INV_SQRT_2PI                    # (...) phi(x)
    return dout * (cdf + x * pdf)                                # undoes x * Phi(x) (product rule)


class GeluTanhCache(NamedTuple):
    """What gelu_tanh_backward needs: the input and tanh(u)."""
    x: Any                                                       # (...)
    tanh_u: Any                                                  # (...) tanh(sqrt(2/pi) (x + 0.044715 x^3))


# GELU-tanh runs on every MLP entry of a GPT (SiLU: of a LLaMA), so their functions update one scratch array in place
# (`a *= b`) instead of writing each formula as one expression: every operator of an expression allocates a
# fresh array as large as x, and in a training step fresh memory cost as much as the arithmetic (the two
# together took 90 of a 400 ms step, half that in place). Each line's comment gives the formula so far.

def gelu_tanh_forward(x):
    """GELU with the tanh approximation of GPT-2. x (...) -> out (...), cache"""
    xp = get_xp(x)
    t = x * x                                                    # (...) x^2
    t *= 0.044715 * SQRT_2_OVER_PI
    t += SQRT_2_OVER_PI
    t *= x                                                       # u = sqrt(2/pi) (x + 0.044715 x^3)
    t = xp.tanh(t)                                               # tanh(u)
    out = t + 1.0
    out *= x
    out *= 0.5                                                   # 0.5 x (1 + tanh(u))
    return out, GeluTanhCache(x, t)


def gelu_tanh_backward(dout, cache):
    """dout (...) -> dx (...)"""
    x, t = cache
    du_dx = x * x                                                # (...) x^2
    du_dx *= 3.0 * 0.044715 * SQRT_2_OVER_PI
    du_dx += SQRT_2_OVER_PI                                      # du/dx = sqrt(2/pi) (1 + 3 * 0.044715 x^2)
    dx = 1.0 - t * t                                             # 1 - tanh(u)^2, the derivative of tanh
    dx *= du_dx
    dx *= x
    dx += t
    dx += 1.0
    dx *= 0.5                                                    # f'(x) = 0.5 (1 + t) + 0.5 x (1 - t^2) du/dx
    dx *= dout                                                   # undoes 0.5 x (1 + tanh(u)) (product rule)
    return dx


class SiluCache(NamedTuple):
    """What silu_backward needs: the input and its sigmoid."""
    x: Any                                                       # (...)
    sigmoid: Any                                                 # (...) s(x)


def silu_forward(x):
    """SiLU / Swish, x * sigmoid(x). x (...) -> out (...), cache. In place, as GELU-tanh above."""
    xp = get_xp(x)
    s = xp.tanh(x * 0.5)
    s += 1.0
    s *= 0.5                                                     # (...) sigmoid(x) = (1 + tanh(x/2)) / 2, overflow-free
    return x * s, SiluCache(x, s)


def silu_backward(dout, cache):
    """dout (...) -> dx (...)"""
    x, s = cache
    dx = 1.0 - s
    dx *= x
    dx += 1.0
    dx *= s                                                      # f'(x) = s (1 + x (1 - s)), using s' = s (1 - s)
    dx *= dout                                                   # undoes x * s(x) (product rule)
    return dx


ACTIVATIONS = {
    "relu": (relu_forward, relu_backward),
    "gelu": (gelu_forward, gelu_backward),
    "gelu_tanh": (gelu_tanh_forward, gelu_tanh_backward),
    "silu": (silu_forward, silu_backward),
}


def get_activation(name):
    """(forward, backward) for an activation name; an unknown name is a ValueError listing the known ones.
    "gelu_tanh_fused" is gelu_tanh compiled into one pass (minigpt.kernels.elementwise_cpu, float32 NumPy
    arrays only): the model uses it on a CPU; imported, and so compiled, only when asked for."""
    if name == "gelu_tanh_fused":
        from minigpt.kernels.elementwise_cpu import gelu_tanh_backward as backward, gelu_tanh_forward as forward
        return forward, backward
    if name not in ACTIVATIONS:
        raise ValueError(f"activation {name!r} is unknown; expected one of {sorted(ACTIVATIONS)}")
    return ACTIVATIONS[name]
