"""Softmax: turn a vector of scores into probabilities.

Dimension letters: any shape; the softmax runs along one axis (the last by default), every
other index is a separate vector. K is the length of that axis.

Forward, per vector x of length K:
    y[i] = exp(x[i] - m) / sum_k exp(x[k] - m),     m = max_k x[k]
Subtracting m changes nothing (it cancels between top and bottom) but makes the largest
exponent exp(0) = 1, so nothing overflows.

Backward. Every y[i] depends on every x[j]:
    dy[i]/dx[j] = y[i] ([i == j] - y[j])
so, summing over i against dout:
    dx[j] = sum_i dout[i] y[i] ([i == j] - y[j]) = y[j] (dout[j] - sum_i dout[i] y[i])
Only y is needed, so the forward caches its output.
"""
from typing import Any, NamedTuple

from minigpt.backend import get_xp


class SoftmaxCache(NamedTuple):
    """What softmax_backward needs: the output and the axis it ran along."""
    y: Any                                                       # (..., K) the probabilities
    axis: int


def softmax_forward(x, axis=-1):
    """Probabilities along axis. x (..., K) -> y (..., K), cache"""
    xp = get_xp(x)
    e = xp.exp(x - x.max(axis=axis, keepdims=True))              # (..., K) largest entry exp(0) = 1
    y = e / e.sum(axis=axis, keepdims=True)                      # (..., K)
    return y, SoftmaxCache(y, axis)


def softmax_backward(dout, cache):
    """dout (..., K) -> dx (..., K)"""
    y, axis = cache
    return y * (dout - (dout * y).sum(axis=axis, keepdims=True))  # undoes the normalization (see the module docstring)
