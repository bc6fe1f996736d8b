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

QK-norm (Qwen3) is RMSNorm applied to every query vector and every key vector of every head, over
the head dimension D, right after the q/k projections and before RoPE. One learned scale q_w (D,) is
shared by all query heads, one k_w (D,) by all key heads (extra letters: H query heads, Hkv key/value
heads, S key positions, D head dim). Why: an attention logit is q . k / sqrt(D). Without the norm it
grows with the lengths of q and k; when those drift up in training, the softmax turns one-hot and
training can diverge (Dehghani et al. 2023, "Scaling Vision Transformers to 22 Billion Parameters",
normalized q and k with LayerNorm against exactly this). After the norm every q and k vector has root
mean square at most 1 before its scale, so |q . k| / sqrt(D) <= sqrt(D) * max|q_w| * max|k_w|: the
logits can only grow through the two small weight vectors. RoPE only rotates, so the bound holds after it.
Nothing new to derive: it IS rmsnorm_forward / rmsnorm_backward on the last axis of q and of k.
"""
from typing import Any, NamedTuple

from minigpt.backend import get_xp


class LayerNormCache(NamedTuple):
    """What layernorm_backward needs: the normalized input, the scale, and 1 / std."""
    xhat: Any                                                    # (B, T, C) (x - mean) * rstd
    w: Any                                                       # (C,)
    rstd: Any                                                    # (B, T, 1)


def layernorm_forward(x, w, b, eps=1e-5):
    """Normalize each C-vector of x to mean 0 and variance 1, then scale and shift.
    x (B, T, C), w (C,), b (C,)  ->  out (B, T, C), cache for layernorm_backward
    """
    _check_param("layernorm w", w, x)
    _check_param("layernorm b", b, x)
    eps = float(eps)                                             # a NumPy float64 eps would turn float32 x into float64
    xp = get_xp(x)
    mean = _row_mean(x)                                          # (B, T, 1)
    xc = x - mean                                                # (B, T, C)
    var = _row_mean(xc * xc)                                     # (B, T, 1) biased variance, as in the paper and PyTorch
    rstd = 1.0 / xp.sqrt(var + eps)                              # (B, T, 1)
    xhat = xc * rstd                                             # (B, T, C)
    out = xhat * w
    out += b                                                     # (B, T, C) xhat * w + b
    return out, LayerNormCache(xhat, w, rstd)


def layernorm_backward(dout, cache):
    """dout (B, T, C) -> dx (B, T, C), dw (C,), db (C,)."""
    xhat, w, rstd = cache
    C = dout.shape[-1]
    db = dout.reshape(-1, C).sum(axis=0)                         # (C,)       undoes + b, summed over B, T
    dw = (dout * xhat).reshape(-1, C).sum(axis=0)                # (C,)       undoes xhat * w, for w
    g = dout * w                                                 # (B, T, C)  undoes xhat * w, for xhat
    dx = rstd * (g - _row_mean(g) - xhat * _row_mean(g * xhat))  # (B, T, C) undoes the normalization
    return dx, dw, db


class RMSNormCache(NamedTuple):
    """What rmsnorm_backward needs: the normalized input, the scale, and 1 / rms."""
    xhat: Any                                                    # (B, T, C) x * rstd
    w: Any                                                       # (C,)
    rstd: Any                                                    # (B, T, 1)


def rmsnorm_forward(x, w, eps=1e-6, *, w_name="rmsnorm w"):
    """Divide each C-vector of x by its root mean square, then scale.
    x (B, T, C), w (C,)  ->  out (B, T, C), cache for rmsnorm_backward
    w_name: what an error message calls w (qk_norm_forward passes "qk_norm q_w" and "qk_norm k_w").
    """
    _check_param(w_name, w, x)
    eps = float(eps)                                             # as in layernorm_forward: keep float32 float32
    xp = get_xp(x)
    rstd = 1.0 / xp.sqrt(_row_mean(x * x) + eps)                # (B, T, 1)
    xhat = x * rstd                                              # (B, T, C)
    out = xhat * w                                               # (B, T, C)
    return out, RMSNormCache(xhat, w, rstd)


def rmsnorm_backward(dout, cache):
    """dout (B, T, C) -> dx (B, T, C), dw (C,)."""
    xhat, w, rstd = cache
    dw = (dout * xhat).reshape(-1, dout.shape[-1]).sum(axis=0)   # (C,)       undoes xhat * w, for w
    g = dout * w                                                 # (B, T, C)  undoes xhat * w, for xhat
    dx = rstd * (g - xhat * _row_mean(g * xhat))                 # (B, T, C) undoes x * rstd
    return dx, dw


class QKNormCache(NamedTuple):
    """What qk_norm_backward needs: the RMSNorm caches of the queries and of the keys."""
    q_cache: RMSNormCache                                        # xhat (B, H, T, D), q_w (D,), rstd (B, H, T, 1)
    k_cache: RMSNormCache                                        # xhat (B, Hkv, S, D), k_w (D,), rstd (B, Hkv, S, 1)


def qk_norm_forward(q, k, q_w, k_w, eps=1e-6):
    """Qwen3's QK-norm: RMSNorm of every query and key vector over its head dim D, scales shared by all heads.
    q (B, H, T, D), k (B, Hkv, S, D), q_w (D,), k_w (D,)  ->  q_out (B, H, T, D), k_out (B, Hkv, S, D), cache
    """
    _check_qk(q, k)
    q_out, q_cache = rmsnorm_forward(q, q_w, eps, w_name="qk_norm q_w")    # (B, H, T, D)   each (b, h, t) on its own
    k_out, k_cache = rmsnorm_forward(k, k_w, eps, w_name="qk_norm k_w")    # (B, Hkv, S, D)
    return q_out, k_out, QKNormCache(q_cache, k_cache)


def qk_norm_backward(dq_out, dk_out, cache):
    """dq_out (B, H, T, D), dk_out (B, Hkv, S, D) -> dq (B, H, T, D), dk (B, Hkv, S, D), dq_w (D,), dk_w (D,).
    dq_w sums over every query vector of every head (all share q_w); dk_w likewise over the keys.
    """
    dq, dq_w = rmsnorm_backward(dq_out, cache.q_cache)          # (B, H, T, D), (D,)    undoes q_out
    dk, dk_w = rmsnorm_backward(dk_out, cache.k_cache)          # (B, Hkv, S, D), (D,)  undoes k_out
    return dq, dk, dq_w, dk_w


def _row_mean(x):
    """The mean of each C-vector: (..., C) -> (..., 1). The same numbers as x.mean(axis=-1, keepdims=True),
    without NumPy's Python-level wrapper of mean, which cost 8% of the time of generating a token."""
    return x.sum(axis=-1, keepdims=True) / x.shape[-1]


def _check_param(name, p, x):
    if p.shape != (x.shape[-1],):
        raise ValueError(f"{name} has shape {p.shape}, expected ({x.shape[-1]},) for x of shape {x.shape}")
    if p.dtype != x.dtype:
        raise ValueError(f"{name} has dtype {p.dtype} but x has dtype {x.dtype}: they must match "
                         f"(a mix would silently upcast)")


def _check_qk(q, k):
    """q and k split into heads, with one head dim and one dtype (rmsnorm_forward checks q_w and k_w)."""
    if q.ndim != 4 or k.ndim != 4:
        raise ValueError(f"qk_norm: q and k must be (B, H, T, D) and (B, Hkv, S, D), got {q.shape} and {k.shape}")
    if q.shape[-1] != k.shape[-1]:
        raise ValueError(f"qk_norm: q {q.shape} has head dim D={q.shape[-1]} but k {k.shape} has "
                         f"D={k.shape[-1]}; expected the same D")
    if q.dtype != k.dtype:
        raise ValueError(f"qk_norm: q has dtype {q.dtype} but k has dtype {k.dtype}: they must match")
