"""Normalization layers: LayerNorm (GPT-1, GPT-2, GPT-3, GLM) and RMSNorm (LLaMA, ChatGLM2, GLM-4).

Dimension letters: B batch, T time, C channels. x may have any leading dimensions; every
C-vector is normalized on its own. N is the number of such vectors (B * T).

LayerNorm (Ba et al. 2016), per C-vector x:
    mean = (1/C) sum_c x[c]
    var  = (1/C) sum_c (x[c] - mean)^2
    rstd = 1 / sqrt(var + eps)
    xhat = (x - mean) * rstd                     mean 0, variance 1
    out  = xhat * w + b                          a learned scale and shift per channel

Backward. The parameters are easy: w[c] and b[c] reach out[n, c] for every n:
    dw = sum_n dout[n] * xhat[n],   db = sum_n dout[n]
For x, let g = dout * w (= dL/dxhat). Every xhat[c] depends on every x[k] through mean and
rstd, and differentiating mean, var and rstd gives
    d xhat[c] / d x[k] = rstd * ([c == k] - 1/C - xhat[c] xhat[k] / C)
so, summing over c against g:
    dx = rstd * (g - mean(g) - xhat * mean(g * xhat))
Read it as: take g, remove its mean (the part that moving the mean would undo) and its component
along xhat (the part that rescaling would undo), then scale by rstd.

RMSNorm (Zhang and Sennrich 2019) drops the mean and the shift:
    rstd = 1 / sqrt((1/C) sum_c x[c]^2 + eps)
    xhat = x * rstd
    out  = xhat * w
and, with g = dout * w, the same derivation without the mean term gives
    d xhat[c] / d x[k] = rstd * ([c == k] - xhat[c] xhat[k] / C)
    dx = rstd * (g - xhat * mean(g * xhat)),     dw = sum_n dout[n] * xhat[n]
"""
from minigpt.backend import get_xp


def _check_param(name, p, x):
    if p.shape != (x.shape[-1],):
        raise ValueError(f"{name} has shape {p.shape}, expected ({x.shape[-1]},) for x of shape {x.shape}")
    if p.dtype != x.dtype:
        raise ValueError(f"{name} has dtype {p.dtype} but x has dtype {x.dtype}: they must match "
                         f"(a mix would silently upcast)")


def layernorm_forward(x, w, b, eps=1e-5):
    """Normalize each C-vector of x to mean 0 and variance 1, then scale and shift.
    x (B, T, C), w (C,), b (C,)  ->  out (B, T, C), cache for layernorm_backward
    """
    _check_param("layernorm w", w, x)
    _check_param("layernorm b", b, x)
    eps = float(eps)                                             # a NumPy float64 eps would turn float32 x into float64
    xp = get_xp(x)
    mean = x.mean(axis=-1, keepdims=True)                        # (B, T, 1)
    xc = x - mean                                                # (B, T, C)
    var = (xc * xc).mean(axis=-1, keepdims=True)                 # (B, T, 1) biased variance, as in the paper and PyTorch
    rstd = 1.0 / xp.sqrt(var + eps)                              # (B, T, 1)
    xhat = xc * rstd                                             # (B, T, C)
    out = xhat * w + b                                           # (B, T, C)
    return out, (xhat, w, rstd)


def layernorm_backward(dout, cache):
    """dout (B, T, C) -> dx (B, T, C), dw (C,), db (C,)."""
    xhat, w, rstd = cache
    C = dout.shape[-1]
    db = dout.reshape(-1, C).sum(axis=0)                         # (C,)       undoes + b, summed over B, T
    dw = (dout * xhat).reshape(-1, C).sum(axis=0)                # (C,)       undoes xhat * w, for w
    g = dout * w                                                 # (B, T, C)  undoes xhat * w, for xhat
    dx = rstd * (g - g.mean(axis=-1, keepdims=True)
                 - xhat * (g * xhat).mean(axis=-1, keepdims=True))   # (B, T, C) undoes the normalization
    return dx, dw, db


def rmsnorm_forward(x, w, eps=1e-6):
    """Divide each C-vector of x by its root mean square, then scale.
    x (B, T, C), w (C,)  ->  out (B, T, C), cache for rmsnorm_backward
    """
    _check_param("rmsnorm w", w, x)
    eps = float(eps)                                             # as in layernorm_forward: keep float32 float32
    xp = get_xp(x)
    rstd = 1.0 / xp.sqrt((x * x).mean(axis=-1, keepdims=True) + eps)   # (B, T, 1)
    xhat = x * rstd                                              # (B, T, C)
    out = xhat * w                                               # (B, T, C)
    return out, (xhat, w, rstd)


def rmsnorm_backward(dout, cache):
    """dout (B, T, C) -> dx (B, T, C), dw (C,)."""
    xhat, w, rstd = cache
    dw = (dout * xhat).reshape(-1, dout.shape[-1]).sum(axis=0)   # (C,)       undoes xhat * w, for w
    g = dout * w                                                 # (B, T, C)  undoes xhat * w, for xhat
    dx = rstd * (g - xhat * (g * xhat).mean(axis=-1, keepdims=True))  # (B, T, C) undoes x * rstd
    return dx, dw
