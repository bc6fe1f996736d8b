"""Cross-entropy loss of next-token prediction, with its gradient.

Dimension letters: B batch, T time, V vocabulary size. N = B * T predictions, each a row of
V logits z and a target class y.

Forward. The model's probabilities are p = softmax(z); the loss of one prediction is the
negative log-probability of the right token:
    loss_n = -log p[y] = -(z[y] - m) + log sum_k exp(z[k] - m),    m = max_k z[k]
(the log-softmax, computed with the max subtracted so no exp overflows). The batch loss is
the MEAN over the counted predictions: those whose target is not ignore_index and, when a
loss_mask is given, whose mask entry is nonzero (e.g. only the answer tokens of a chat turn).
A model that guesses uniformly scores log V: that is the loss to beat at step 0.

Backward. For one prediction,
    d loss_n / d z[k] = p[k] - [k == y]
(the softmax's derivative and the log cancel to this): push the right logit up by 1 - p[y]
and every other one down by its probability. The mean divides by the count n:
    dlogits[n, :] = (p - one_hot(y)) / n     for a counted prediction, 0 for the others.
The forward has p in hand, so cross_entropy returns the loss and dlogits together.
"""
from minigpt.backend import get_xp, is_integer_array


def log_softmax(x):
    """log(softmax(x)) along the last axis, without overflow. x (..., V) -> (..., V)"""
    xp = get_xp(x)
    shifted = x - x.max(axis=-1, keepdims=True)                  # (..., V) largest entry 0
    return shifted - xp.log(xp.exp(shifted).sum(axis=-1, keepdims=True))


def cross_entropy(logits, targets, ignore_index=-100, loss_mask=None):
    """Mean next-token cross-entropy over the counted tokens, and its gradient.
    logits (B, T, V) or (N, V); targets int (B, T) or (N,); loss_mask (B, T) or (N,), nonzero = counted
    ->  loss (a Python float), dlogits (same shape and dtype as logits)
    A token is counted when its target != ignore_index and (when given) its loss_mask is nonzero.
    """
    _check_targets(logits, targets, loss_mask)
    xp = get_xp(logits)
    V = logits.shape[-1]
    z = logits.reshape(-1, V)                                    # (N, V)
    y = xp.asarray(targets).reshape(-1)                          # (N,) on the logits' device
    counted = y != ignore_index                                  # (N,) bool
    if loss_mask is not None:
        counted &= xp.asarray(loss_mask).reshape(-1) != 0
    n = int(counted.sum())
    _check_counted(y, counted, n, V, ignore_index)
    y = xp.where(counted, y, 0)                                  # (N,) uncounted rows point at class 0; their weight is 0 below
    rows = xp.arange(y.size)                                     # (N,)
    shifted = z - z.max(axis=-1, keepdims=True)                  # (N, V) largest logit 0: exp cannot overflow
    e = xp.exp(shifted)                                          # (N, V)
    total = e.sum(axis=-1)                                       # (N,)
    logp_target = shifted[rows, y] - xp.log(total)               # (N,) log p[y]
    loss = -float(logp_target[counted].sum()) / n
    dz = e / total[:, None]                                      # (N, V) p = softmax(z)
    dz[rows, y] -= 1                                             # (N, V) p - one_hot(y)
    dz *= (counted.astype(z.dtype) / n)[:, None]                 # (N, V) mean over counted rows, zero for the others
    return loss, dz.reshape(logits.shape)                        # (B, T, V) or (N, V), like logits


def _check_targets(logits, targets, loss_mask):
    """A ValueError unless targets (and loss_mask) are integer arrays of the logits' leading shape."""
    if targets.shape != logits.shape[:-1]:
        raise ValueError(f"cross_entropy: targets have shape {targets.shape} but logits have shape "
                         f"{logits.shape}; expected targets of shape {logits.shape[:-1]}")
    if not is_integer_array(targets):
        raise ValueError(f"cross_entropy: targets must be an integer array, got dtype {targets.dtype}")
    if loss_mask is not None and loss_mask.shape != targets.shape:
        raise ValueError(f"cross_entropy: loss_mask has shape {loss_mask.shape}, "
                         f"expected the targets' shape {targets.shape}")


def _check_counted(y, counted, n, V, ignore_index):
    """A ValueError unless some token is counted (n > 0) and every counted target is a class in [0, V)."""
    if n == 0:
        raise ValueError(f"cross_entropy: no counted tokens (every target is ignore_index={ignore_index} "
                         f"or masked out by loss_mask); the mean loss is undefined")
    bad = y[counted & ((y < 0) | (y >= V))]
    if bad.size:
        raise ValueError(f"cross_entropy: target {int(bad[0])} is out of range: expected 0 <= target < V = {V}")
