"""Token embedding: a learned vector per vocabulary entry, looked up by token id.

Dimension letters: B batch, T time, C channels, V vocabulary size. The ids may have any
integer shape; (B, T) is the usual one. N = B * T is the number of looked-up tokens.

Forward
    out[b, t, :] = weight[ids[b, t], :]                       ids (B, T), weight (V, C) -> (B, T, C)
It is the same as one_hot(ids) @ weight, a linear layer whose input is a one-hot row,
without ever building the (N, V) one-hot matrix.

Backward. Row v of weight reaches every output position whose id is v, with weight 1, so
its gradient is the sum of dout over those positions:
    dweight[v, :] = sum over (b, t) with ids[b, t] == v of dout[b, t, :]
(from the one-hot view: dweight = one_hot(ids).T @ dout). Rows of tokens that did not occur get
zero. A token that occurs k times gets k terms: this is a scatter-ADD, not a scatter. Writing
`dweight[ids] = dout` would silently keep only one of the k terms.

How we add fast, without a Python loop over tokens: number the U distinct ids 0..U-1 (their
"slot"); then (slot, channel) names one cell of a (U, C) table, and a single `bincount` with
dout as weights sums every token's contribution into its cell. Finally the U rows are written
into the (V, C) gradient. On (8, 256) ids, V=5000, C=256 this takes 1.5 ms against 4.8 ms for
`xp.add.at(dweight, ids, dout)` (NumPy 2.4), and about as long as add.at at GPT-2's size
(V=50257, C=768).
bincount accumulates in float64; the result is stored in dout's dtype.
"""
from typing import Any, NamedTuple

from minigpt.backend import get_xp, is_integer_array


def check_ids(ids, n, what="token id", limit="V"):
    """A ValueError naming the bad id unless ids is an integer array with every entry in [0, n).
    what, limit: how the message names an id and the table size (e.g. "position id", "max_seq_len").
    """
    if not is_integer_array(ids):
        raise ValueError(f"{what}s must be an integer array, got dtype {ids.dtype}")
    bad = ids[(ids < 0) | (ids >= n)]
    if bad.size:
        raise ValueError(f"{what} {int(bad[0])} is out of range: expected 0 <= id < {limit} = {n}")


class EmbeddingCache(NamedTuple):
    """What embedding_backward needs: the looked-up ids and how many rows the table has."""
    ids: Any                                                     # (B, T) int, on the table's device
    n_rows: int                                                  # V (or P for a position table)


def embedding_forward(ids, weight):
    """Look up one row of weight per id.
    ids int (B, T) (any shape), weight (V, C)  ->  out (B, T, C), cache for embedding_backward
    """
    ids = get_xp(weight).asarray(ids)                            # the ids on weight's device
    check_ids(ids, weight.shape[0])
    out = weight[ids]                                            # (B, T, C)
    return out, EmbeddingCache(ids, weight.shape[0])


def embedding_backward(dout, cache):
    """dout (B, T, C) -> dweight (V, C): dout scatter-added into the rows of the looked-up ids."""
    ids, V = cache
    xp = get_xp(dout)
    C = dout.shape[-1]
    rows, slot = xp.unique(ids.reshape(-1), return_inverse=True)  # rows (U,) distinct ids, slot (N,) each token's row in 0..U-1
    cell = slot.reshape(-1, 1) * C + xp.arange(C)                # (N, C) flat index of (slot, channel) in a (U, C) table
    sums = xp.bincount(cell.reshape(-1), weights=dout.reshape(-1),
                       minlength=rows.size * C)                  # (U * C,) every token added into its cell
    dweight = xp.zeros((V, C), dtype=dout.dtype)                 # (V, C) ids that did not occur: zero gradient
    dweight[rows] = sums.reshape(rows.size, C)                   # (U, C) undoes out = weight[ids]
    return dweight
