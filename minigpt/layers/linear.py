"""Linear (fully connected) layer: out = x @ w + b.

Dimension letters: Cin input features, Cout output features. x may carry any leading
dimensions, written "...": (B, T) for a batch of sequences. Below, N is their product, the
number of vectors the same weights are applied to.

Forward
    out[n, j] = sum_i x[n, i] w[i, j] + b[j]                 x (N, Cin), w (Cin, Cout), b (Cout,)

Backward. We are given dout = dL/dout (N, Cout) and follow every path by which an input
reaches the loss (the chain rule sums over paths):
    x[n, i] reaches every out[n, j], with weight w[i, j]:
        dx[n, i] = sum_j dout[n, j] w[i, j]                  dx = dout @ w.T      (N, Cin)
    w[i, j] reaches out[n, j] for every n, with weight x[n, i]:
        dw[i, j] = sum_n x[n, i] dout[n, j]                  dw = x.T @ dout      (Cin, Cout)
    b[j] reaches out[n, j] for every n, with weight 1:
        db[j] = sum_n dout[n, j]                             db = dout.sum(0)     (Cout,)
A quick check on any such formula: each gradient has the shape of what it differentiates.
"""
from typing import Any, NamedTuple


class LinearCache(NamedTuple):
    """What linear_backward needs: the input, the weight, and whether there was a bias."""
    x: Any                                           # (..., Cin)
    w: Any                                           # (Cin, Cout)
    has_bias: bool


def linear_forward(x, w, b=None):
    """out = x @ w + b.
    x (..., Cin), w (Cin, Cout), b (Cout,) or None  ->  out (..., Cout), cache for linear_backward
    """
    _check_inputs(x, w, b)
    # One (N, Cin) @ (Cin, Cout) product: NumPy runs a 3-D x @ w as one product per leading index, 20% slower.
    out = x.reshape(-1, x.shape[-1]) @ w             # (N, Cout)
    if b is not None:
        out += b                                     # (N, Cout) b broadcasts over the rows; in place, no copy
    return out.reshape(*x.shape[:-1], w.shape[1]), LinearCache(x, w, b is not None)   # (..., Cout)


def linear_backward(dout, cache):
    """dout (..., Cout) -> dx (..., Cin), dw (Cin, Cout), db (Cout,) or None when there was no bias."""
    x, w, has_bias = cache
    x2 = x.reshape(-1, x.shape[-1])                  # (N, Cin)         every leading position is one row
    dout2 = dout.reshape(-1, dout.shape[-1])         # (N, Cout)
    dx = dout2 @ w.T                                 # (N, Cin)         undoes out = x @ w, for x
    dw = x2.T @ dout2                                # (Cin, Cout)      undoes out = x @ w, for w, summed over N
    db = dout2.sum(axis=0) if has_bias else None     # (Cout,)          undoes the broadcast of b over N
    return dx.reshape(x.shape), dw, db               # dx (..., Cin)


def _check_inputs(x, w, b):
    if w.ndim != 2 or x.shape[-1] != w.shape[0]:
        raise ValueError(f"linear: x has shape {x.shape} and w has shape {w.shape}; "
                         f"expected x (..., Cin) and w (Cin, Cout) with the same Cin")
    if b is not None and b.shape != (w.shape[1],):
        raise ValueError(f"linear: b has shape {b.shape}, expected ({w.shape[1]},) for w of shape {w.shape}")
    if x.dtype != w.dtype or (b is not None and b.dtype != w.dtype):
        raise ValueError(f"linear: x, w, b must share one dtype (a mix would silently upcast), got "
                         f"{x.dtype}, {w.dtype}, {None if b is None else b.dtype}")
