"""Dropout (Srivastava et al. 2014), in its "inverted" form, as GPT-1 and GPT-2 train with it.

Dimension letters: any shape; every entry is kept or dropped on its own.

Forward, in training, with drop probability p:
    keep[i] ~ Bernoulli(1 - p)                   drawn fresh on every call
    out[i]  = x[i] * keep[i] / (1 - p)
Dividing by 1 - p keeps the expected value of every entry equal to x[i], so at evaluation
time dropout is simply switched off (out = x) and nothing needs rescaling.

Backward. out[i] = x[i] * m[i] with the constant m = keep / (1 - p), so
    dx[i] = dout[i] * m[i]
the same mask: a dropped entry passes no gradient.

The mask is drawn on the CPU from a NumPy Generator and then moved to x's device, so one seed
gives the same mask on every device and for both float32 and float64.
"""
from typing import Any, NamedTuple

from minigpt.backend import get_xp


class DropoutCache(NamedTuple):
    """What dropout_backward needs: the scaled keep-mask the forward multiplied by."""
    mask: Any                                                    # (...) 0 or 1 / (1 - p), in x's dtype


def dropout_forward(x, p, rng, train=True):
    """Zero each entry with probability p and scale the rest by 1 / (1 - p); identity when p == 0 or not train.
    x (...), p in [0, 1), rng a numpy.random.Generator  ->  out (...), cache
    When dropout is off, out is x itself (no copy) and the cache is None.
    """
    _check_p(p)
    if not train or p == 0:
        return x, None
    p = float(p)                                                 # a NumPy float64 p would turn float32 x into float64
    xp = get_xp(x)
    keep = xp.asarray(rng.random(x.shape) >= p)                  # (...) bool, True with probability 1 - p
    mask = keep.astype(x.dtype) / (1 - p)                        # (...) 0 or 1 / (1 - p), in x's dtype
    return x * mask, DropoutCache(mask)


def dropout_backward(dout, cache):
    """dout (...) -> dx (...): the forward's mask again (dout itself when dropout was off)."""
    if cache is None:
        return dout
    return dout * cache.mask                                     # undoes out = x * mask


def _check_p(p):
    if not 0 <= p < 1:
        raise ValueError(f"dropout p={p} is out of range: expected 0 <= p < 1")
