"""Scaled dot-product attention with multi-head, grouped-query (GQA) and multi-query (MQA) heads.

Dimensions: B batch, T query positions, S key positions (S = T without a KV cache), C channels,
H query heads, Hkv key/value heads, g = H // Hkv query heads per kv head (the group), D head dim.

    scores = q @ k^T * scale           (B, H, T, S)      scale = 1/sqrt(D) by default
    probs  = softmax(scores | mask)    masked-out keys get probability exactly 0
    out    = probs @ v                 (B, H, T, D)

MHA has Hkv = H, MQA has Hkv = 1, GQA anything in between. Query head h reads kv head h // g.
We never copy K and V g times: the g query heads of a group are stacked as g*T query rows that
all look at the same keys, q (B, H, T, D) -> (B, Hkv, g*T, D), and one matmul per kv head does the
group. In the backward pass the same stacking makes dK = dS^T @ q and dV = probs^T @ dout sum over
the g*T rows, which is exactly the sum over the group that sharing a kv head requires.

The mask is boolean, True = may attend, of shape (T, S), (B, T, S) or (B, 1|H, T, S). Every query row
must be allowed at least one key: a row with none has no softmax (0/0), so it is an error, never a NaN.
"""
import math
from typing import Any, NamedTuple

from minigpt.backend import get_xp, to_numpy


def split_heads(x, n_head):
    """(B, T, H*D) -> (B, H, T, D). Its backward is merge_heads (a reshape and a transpose)."""
    B, T, C = x.shape
    if C % n_head:
        raise ValueError(f"split_heads: C={C} channels do not divide into n_head={n_head} heads")
    x = x.reshape(B, T, n_head, C // n_head)                                # (B, T, H, D)
    return x.transpose(0, 2, 1, 3)                                          # (B, H, T, D)


def merge_heads(x):
    """(B, H, T, D) -> (B, T, H*D). Its backward is split_heads."""
    B, H, T, D = x.shape
    x = x.transpose(0, 2, 1, 3)                                             # (B, T, H, D)
    return x.reshape(B, T, H * D)                                           # (B, T, H*D)


class AttentionCache(NamedTuple):
    """What attention_backward needs: the inputs (q stacked by group), the probabilities and the scale."""
    q_grouped: Any                                                          # (B, Hkv, g*T, D) a group's queries stacked
    k: Any                                                                  # (B, Hkv, S, D)
    v: Any                                                                  # (B, Hkv, S, D)
    probs: Any                                                              # (B, Hkv, g*T, S)
    scale: float


def attention_forward(q, k, v, mask=None, scale=None, return_probs=False):
    """Softmax(q k^T * scale) v, with kv heads shared by groups of query heads.
    q (B, H, T, D), k (B, Hkv, S, D), v (B, Hkv, S, D), mask bool (T, S) | (B, T, S) | (B, 1|H, T, S) or None
    ->  out (B, H, T, D), cache    (and probs (B, H, T, S) when return_probs=True)
    """
    xp = get_xp(q, k, v)
    mask = None if mask is None else xp.asarray(mask)                       # on q's device
    _check_inputs(q, k, v, mask)
    B, H, T, D = q.shape
    Hkv, S = k.shape[1], k.shape[2]
    g = H // Hkv
    scale = 1.0 / math.sqrt(D) if scale is None else float(scale)           # a Python float: keeps float32 float32

    qg = q.reshape(B, Hkv, g * T, D)                                        # (B, Hkv, g*T, D) a group's queries stacked
    scores = (qg @ k.swapaxes(-1, -2)) * scale                              # (B, Hkv, g*T, S)
    scores = scores.reshape(B, Hkv, g, T, S)                                # (B, Hkv, g, T, S)
    if mask is not None:
        mask = _grouped_mask(mask, Hkv, g)                                  # (B|1, Hkv|1, g|1, T, S)
        scores = xp.where(mask, scores, xp.asarray(-xp.inf, dtype=scores.dtype))
    scores = scores - scores.max(axis=-1, keepdims=True)                    # stable: row max is 0, never -inf
    e = xp.exp(scores)                                                      # masked keys: exp(-inf) = 0
    probs = e / e.sum(axis=-1, keepdims=True)                               # (B, Hkv, g, T, S)
    probs = probs.reshape(B, Hkv, g * T, S)                                 # (B, Hkv, g*T, S)
    out = probs @ v                                                         # (B, Hkv, g*T, D)
    out = out.reshape(B, H, T, D)                                           # (B, H, T, D)

    cache = AttentionCache(qg, k, v, probs, scale)
    if return_probs:
        return out, cache, probs.reshape(B, H, T, S)
    return out, cache


def attention_backward(dout, cache):
    """dout (B, H, T, D) -> dq (B, H, T, D), dk (B, Hkv, S, D), dv (B, Hkv, S, D).
    dk and dv collect the gradients of all g query heads that share each kv head.
    """
    qg, k, v, probs, scale = cache
    B, H, T, D = dout.shape
    Hkv = k.shape[1]
    dout = dout.reshape(B, Hkv, -1, D)                                      # (B, Hkv, g*T, D) like qg
    # out = probs @ v
    dprobs = dout @ v.swapaxes(-1, -2)                                      # (B, Hkv, g*T, S)
    dv = probs.swapaxes(-1, -2) @ dout                                      # (B, Hkv, S, D) sums the group's rows
    # probs = softmax(scores): dscores = probs * (dprobs - sum_j probs_j dprobs_j); 0 where masked
    dscores = probs * (dprobs - (probs * dprobs).sum(axis=-1, keepdims=True))  # (B, Hkv, g*T, S)
    # scores = qg @ k^T * scale
    dq = (dscores @ k) * scale                                              # (B, Hkv, g*T, D)
    dk = (dscores.swapaxes(-1, -2) @ qg) * scale                            # (B, Hkv, S, D) sums the group's rows
    return dq.reshape(B, H, T, D), dk, dv


# ---------------------------------------------------------------- input checks and the mask layout

def _check_inputs(q, k, v, mask):
    """A ValueError unless q, k, v have matching shapes and one dtype, and the mask (if any) fits them."""
    if q.ndim != 4 or k.ndim != 4 or v.ndim != 4:
        raise ValueError(f"attention: q, k, v must be (B, H, T, D), (B, Hkv, S, D), (B, Hkv, S, D); "
                         f"got {q.shape}, {k.shape}, {v.shape}")
    B, H, T, D = q.shape
    if k.shape != v.shape or k.shape[0] != B or k.shape[3] != D:
        raise ValueError(f"attention: k {k.shape} and v {v.shape} must both be (B={B}, Hkv, S, D={D}) "
                         f"to match q {q.shape}")
    Hkv = k.shape[1]
    if H % Hkv:
        raise ValueError(f"attention: H={H} query heads are not a multiple of Hkv={Hkv} kv heads")
    if not (q.dtype == k.dtype == v.dtype):
        raise ValueError(f"attention: q, k, v must share one dtype, got {q.dtype}, {k.dtype}, {v.dtype}")
    if mask is not None:
        _check_mask(mask, B, H, T, k.shape[2])


def _mask_4d(mask):
    """(T, S) -> (1, 1, T, S); (B, T, S) -> (B, 1, T, S); anything else as it is. A view, no copy."""
    if mask.ndim == 2:
        return mask[None, None]                                             # (1, 1, T, S)
    if mask.ndim == 3:
        return mask[:, None]                                                # (B, 1, T, S)
    return mask


def _check_mask(mask, B, H, T, S):
    """A ValueError unless mask is boolean, of an accepted shape, and lets every query row attend to a key."""
    if mask.dtype != bool:
        raise ValueError(f"attention: mask must be boolean (True = may attend), got dtype {mask.dtype}")
    given, mask = mask.shape, _mask_4d(mask)                                # given: for the error message
    if (mask.ndim != 4 or mask.shape[0] not in (1, B) or mask.shape[1] not in (1, H)
            or mask.shape[2:] != (T, S)):
        raise ValueError(f"attention: mask shape {given} does not fit: expected (T, S), (B, T, S) "
                         f"or (B, 1|H, T, S) with B={B}, H={H}, T={T}, S={S}")
    sees_something = mask.any(axis=-1)                                      # (B|1, 1|H, T)
    if not bool(sees_something.all()):
        blind = list(zip(*to_numpy(~sees_something).nonzero()))           # [(b, h, t), ...]
        every_b, every_h = mask.shape[0] == 1, mask.shape[1] == 1         # broadcast axes: the row is blind in all
        shown = ", ".join(f"(batch {'all' if every_b else b}, head {'all' if every_h else h}, row {t})"
                          for b, h, t in blind[:5])
        raise ValueError(f"attention: {len(blind)} query row(s) may attend to no key: {shown}"
                         f"{' ...' if len(blind) > 5 else ''}; every mask row needs at least one True")


def _grouped_mask(mask, Hkv, g):
    """A checked mask (see _check_mask) -> (B|1, Hkv|1, g|1, T, S), laid out like the grouped scores."""
    mask = _mask_4d(mask)                                                   # (B|1, 1|H, T, S)
    if mask.shape[1] == Hkv * g:                                            # one mask per query head
        return mask.reshape(mask.shape[0], Hkv, g, *mask.shape[2:])         # (B|1, Hkv, g, T, S)
    return mask[:, :, None]                                                 # (B|1, 1, 1, T, S)
