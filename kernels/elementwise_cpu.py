"""GELU with the tanh approximation, fused with Numba: forward and backward in one pass each (float32, CPU).

minigpt.layers.activations.gelu_tanh_forward / gelu_tanh_backward are the reference, and what the lessons
teach; these are the same formulas, entry by entry, in one compiled loop:

    forward   u = sqrt(2/pi) (x + 0.044715 x^3),  t = tanh(u),  out = 0.5 x (1 + t)       (t is cached)
    backward  dx = dout * (0.5 (1 + t) + 0.5 x (1 - t^2) sqrt(2/pi) (1 + 3 * 0.044715 x^2))

Why: NumPy runs each operator of those formulas as its own pass over an array as large as the MLP's hidden
layer (B * T * 4C numbers), eight passes forward and eleven backward, each reading and writing memory. One
loop reads x (and t, dout) once and writes once. Measured on one core for 2^20 numbers: forward 0.98 ms
against NumPy's 1.98, backward 0.48 against 2.66.

tanh is written with exp, tanh(u) = 1 - 2 / (exp(2u) + 1), and exp is flash_cpu's arithmetic-only float32
exp, which the compiler turns into vector instructions (the C library's tanh and exp it cannot). u is clamped
to [-10, 10] first: there 2 / (exp(20) + 1) = 4e-9 leaves exactly 1.0 in float32, as NumPy's tanh gives
(at 9 it would leave 1 - 6e-8, and 1 - t^2 in the backward would not be 0), and exp(20) is far from overflow.
Results agree with the NumPy reference to float32 rounding (about 5e-7 absolute on out).

The cache is the reference's GeluTanhCache(x, t): either backward can follow either forward.
"""
import math

import numpy as np
from numba import njit, prange

from minigpt import threads
from minigpt.kernels.flash_cpu import _exp
from minigpt.layers.activations import GeluTanhCache

SQRT_2_OVER_PI = np.float32(math.sqrt(2.0 / math.pi))
CUBIC = np.float32(0.044715)
U_MAX = np.float32(10.0)
HALF, ONE, TWO, THREE = np.float32(0.5), np.float32(1.0), np.float32(2.0), np.float32(3.0)
threads.sync_numba()      # the thread count and threading layer of minigpt's policy (minigpt/threads.py)


def gelu_tanh_forward(x):
    """x (...) float32 -> out (...), GeluTanhCache(x, tanh(u)): the reference's results in one pass."""
    x = _checked(x)
    out, t = np.empty_like(x), np.empty_like(x)
    _forward_kernel(x.reshape(-1), out.reshape(-1), t.reshape(-1))
    return out, GeluTanhCache(x, t)


def gelu_tanh_backward(dout, cache):
    """dout (...) float32 -> dx (...)."""
    x, t = cache
    dout = np.ascontiguousarray(dout)
    if dout.shape != x.shape or dout.dtype != x.dtype:
        raise ValueError(f"gelu_tanh_backward: dout {dout.shape} {dout.dtype} must match x {x.shape} {x.dtype}")
    dx = np.empty_like(x)
    _backward_kernel(x.reshape(-1), np.ascontiguousarray(t).reshape(-1), dout.reshape(-1), dx.reshape(-1))
    return dx


def _checked(x):
    if not isinstance(x, np.ndarray) or x.dtype != np.float32:
        raise ValueError(f"fused GELU: expected a float32 NumPy array, got {type(x).__name__} "
                         f"{getattr(x, 'dtype', '')}; minigpt.layers.activations.gelu_tanh_forward takes any")
    return np.ascontiguousarray(x)


@njit(parallel=True, nogil=True, cache=False)
def _forward_kernel(x, out, t):
    for i in prange(x.size):
        v = x[i]
        u = SQRT_2_OVER_PI * (v + CUBIC * v * v * v)                        # sqrt(2/pi) (x + 0.044715 x^3)
        u = min(max(u, -U_MAX), U_MAX)                                      # tanh is +-1 in float32 beyond
        tanh_u = ONE - TWO / (_exp(TWO * u) + ONE)
        t[i] = tanh_u
        out[i] = HALF * v * (ONE + tanh_u)


@njit(parallel=True, nogil=True, cache=False)
def _backward_kernel(x, t, dout, dx):
    for i in prange(x.size):
        v, tanh_u = x[i], t[i]
        du_dx = SQRT_2_OVER_PI * (ONE + THREE * CUBIC * v * v)
        dx[i] = dout[i] * (HALF * (ONE + tanh_u) + HALF * v * (ONE - tanh_u * tanh_u) * du_dx)
