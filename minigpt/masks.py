"""Attention masks: which keys each query may look at. True = may attend.

Dimensions: B batch, T positions; i is the query (row), j the key (column).

    causal   j <= i                                   GPT: a token sees itself and the past
    prefix   j <= i  or  j < sep[b]                   GLM: Part A (the first sep[b] tokens) is seen by
                                                      everyone, bidirectionally; Part B is causal
    banded   j <= i  and  j // window == i // window  GPT-3's "locally banded" layers
    sliding  j <= i  and  i - j < window              the last `window` tokens (Mistral, Longformer-style)
    explicit any boolean (T, T) or (B, T, T) you built yourself, checked

GPT-3 alternates dense (causal) layers with locally banded ones "similar to the Sparse Transformer",
without spelling the band out. We use the local head of the Sparse Transformer's *fixed* pattern
(Child et al. 2019, A(1) = {j : floor(j / l) = floor(i / l)}): the sequence is cut into blocks of
`window` positions and a query sees the earlier positions of its own block. The sliding window is
the other common reading of "local" (the strided pattern's local head): every query sees the same
number of keys, instead of fewer at the start of each block.

Every function takes xp=None (NumPy) or an array module (cupy) to build the mask on a device.
"""
import numpy as np

from minigpt.backend import to_numpy


def _check_T(T):
    if isinstance(T, bool) or not isinstance(T, (int, np.integer)) or T < 1:
        raise ValueError(f"T={T!r}: expected a positive integer sequence length")
    return int(T)


def _check_window(window):
    if isinstance(window, bool) or not isinstance(window, (int, np.integer)) or window < 1:
        raise ValueError(f"window={window!r}: expected an integer >= 1")
    return int(window)


def _positions(T, xp):
    """Query and key indices as a column and a row: i (T, 1), j (1, T)."""
    idx = xp.arange(T)
    return idx[:, None], idx[None, :]


def causal_mask(T, xp=None):
    """(T, T): query i sees keys 0..i."""
    xp = np if xp is None else xp
    i, j = _positions(_check_T(T), xp)
    return j <= i                                                           # (T, T)


def prefix_mask(T, sep, xp=None):
    """GLM's mask. sep int -> (T, T); sep int array (B,) -> (B, T, T), one prefix length per sample.
    The first sep[b] positions (Part A) see each other in both directions; positions from sep[b] on
    (Part B) are causal and also see all of Part A. sep = 0 is fully causal, sep = T fully bidirectional.
    """
    xp = np if xp is None else xp
    T = _check_T(T)
    sep_host = to_numpy(sep)                                                # checked on the host
    if not np.issubdtype(sep_host.dtype, np.integer) or sep_host.ndim > 1:
        raise ValueError(f"sep={sep!r}: expected an int or a 1-D integer array (one prefix length per sample)")
    bad = sep_host[(sep_host < 0) | (sep_host > T)]
    if bad.size:
        raise ValueError(f"sep={bad.tolist()} out of range: each prefix length (a Model's prefix_len) must be "
                         f"in [0, T={T}] (0 = fully causal)")
    i, j = _positions(T, xp)                                                # (T, 1), (1, T)
    sep = xp.asarray(sep_host)[..., None, None]                             # () -> (1, 1) or (B,) -> (B, 1, 1)
    return (j <= i) | (j < sep)                                             # (T, T) or (B, T, T)


def banded_mask(T, window, xp=None):
    """(T, T) GPT-3 / Sparse Transformer local band: causal, and only within one's own block of
    `window` positions (block = position // window)."""
    xp = np if xp is None else xp
    T, window = _check_T(T), _check_window(window)
    i, j = _positions(T, xp)
    return (j <= i) & (j // window == i // window)                          # (T, T)


def sliding_window_mask(T, window, xp=None):
    """(T, T): causal, and at most `window` keys back (i - j < window, the query itself included)."""
    xp = np if xp is None else xp
    T, window = _check_T(T), _check_window(window)
    i, j = _positions(T, xp)
    return (j <= i) & (i - j < window)                                      # (T, T)


def explicit_mask(mask, T, xp=None):
    """Check a mask built by hand: boolean, shape (T, T) or (B, T, T), every row allowed some key.
    Returns it as an array of xp (moved there if needed)."""
    xp = np if xp is None else xp
    T = _check_T(T)
    mask = xp.asarray(mask)
    if mask.dtype != bool:
        raise ValueError(f"explicit mask: dtype {mask.dtype}, expected bool (True = may attend)")
    if mask.ndim not in (2, 3) or mask.shape[-2:] != (T, T):
        raise ValueError(f"explicit mask: shape {mask.shape}, expected (T, T) or (B, T, T) with T={T}")
    blind = np.argwhere(~to_numpy(mask).any(axis=-1))                      # (n, 1) rows i, or (n, 2) pairs (b, i)
    if blind.size:
        shown = ", ".join(f"(batch {b[0]}, row {b[1]})" if len(b) == 2 else f"row {b[0]}"
                          for b in blind[:5].tolist())
        raise ValueError(f"explicit mask: {len(blind)} row(s) allow no key: {shown}"
                         f"{' ...' if len(blind) > 5 else ''}; every query needs at least one True")
    return mask


MASKS = {
    "causal": causal_mask,
    "prefix": prefix_mask,
    "banded": banded_mask,
    "sliding": sliding_window_mask,
    "explicit": explicit_mask,
}


def make_mask(kind, T, **kw):
    """Build a mask by name: make_mask("banded", 8, window=4), make_mask("prefix", 8, sep=[3, 5]),
    make_mask("explicit", 4, mask=m). Keyword arguments go to the builder (window, sep, mask, xp)."""
    if kind not in MASKS:
        raise ValueError(f"mask kind {kind!r} unknown: expected one of {sorted(MASKS)}")
    return MASKS[kind](T=T, **kw)
