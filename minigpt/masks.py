"""Attention masks: which keys each query may look at. True = may attend.

Dimensions: B batch, T positions; i is the query (row), j the key (column).

    causal   j <= i                                   GPT: a token sees itself and the past
    prefix   j <= i  or  j < sep[b]                   GLM: Part A (the first sep[b] tokens) is seen by
                                                      everyone, bidirectionally; Part B is causal
    banded   j <= i  and  j // window == i // window  GPT-3's "locally banded" layers
    sliding  j <= i  and  i - j < window              the last `window` tokens (Mistral, Longformer-style)
    explicit any boolean (T, T) or (B, T, T) you built yourself, checked

All four rules are one function, `attention_mask`, which also covers what generation needs: queries
that are the last T of S positions (a KV cache holds the rest) and left padding (a batch of prompts of
different lengths, padded at the start, the padding seen by no real token).

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


def _check_T(T, name="T"):
    if isinstance(T, bool) or not isinstance(T, (int, np.integer)) or T < 1:
        raise ValueError(f"{name}={T!r}: expected a positive integer sequence length")
    return int(T)


def _check_window(window):
    if isinstance(window, bool) or not isinstance(window, (int, np.integer)) or window < 1:
        raise ValueError(f"window={window!r}: expected an integer >= 1")
    return int(window)


def per_sample_lengths(name, value, limit):
    """None, an int, or a 1-D int array (one per sample) of values in [0, limit], checked on the host
    -> None, a 0-d array, or (B, 1, 1): either broadcasts against (T, S)."""
    if value is None:
        return None
    host = to_numpy(value)
    if not np.issubdtype(host.dtype, np.integer) or host.ndim > 1:
        raise ValueError(f"{name}={value!r}: expected an int or a 1-D integer array (one per sample)")
    bad = host[(host < 0) | (host > limit)]
    if bad.size:
        raise ValueError(f"{name}={bad.tolist()} out of range: expected 0 <= {name} <= {limit} (the sequence length)")
    return host if host.ndim == 0 else host.reshape(-1, 1, 1)               # () or (B, 1, 1)


def attention_mask(T, S=None, prefix_len=None, pad_len=None, local=None, window=None, xp=None):
    """The one mask rule. T queries at positions i = S-T .. S-1 (a KV cache holds the first S-T; S = T
    without one) against S keys at positions j = 0 .. S-1. Key j is visible to query i when

        j <= i  or  j < prefix_len[b]      causal; GLM's Part A (the first prefix_len[b] positions) seen by all
        and, with a local window W:
            j // W == i // W               local="banded"  (GPT-3's block-local layers; with left padding
                                                            the blocks start at the first real token)
            i - j < W                      local="sliding" (Mistral)
        and j >= pad_len[b]                left padding is invisible, except that a padding query
                                           (i < pad_len[b]) sees exactly itself: no row is ever empty.

    prefix_len, pad_len: None, an int, or an int array (B,) in [0, S].
    -> bool (T, S) or, with per-sample arrays, (B, T, S).
    """
    xp = np if xp is None else xp
    T = _check_T(T)
    S = T if S is None else _check_T(S, "S")
    if S < T:
        raise ValueError(f"S={S} keys for T={T} queries: expected S >= T (queries are the last T positions)")
    i = xp.arange(S - T, S)[:, None]                                        # (T, 1) query positions
    j = xp.arange(S)[None, :]                                               # (1, S) key positions
    visible = j <= i                                                        # (T, S)
    prefix = per_sample_lengths("prefix_len", prefix_len, S)
    if prefix is not None:
        visible = visible | (j < xp.asarray(prefix))                        # (T, S) or (B, T, S)
    pad = per_sample_lengths("pad_len", pad_len, S)
    pad = 0 if pad is None else xp.asarray(pad)                             # () or (B, 1, 1)
    if local is not None:
        if local not in ("banded", "sliding"):
            raise ValueError(f"local={local!r}: expected None, 'banded' or 'sliding'")
        window = _check_window(window)
        block_i, block_j = (i - pad) // window, (j - pad) // window         # blocks counted from the first real token
        near = (block_j == block_i) if local == "banded" else (i - j < window)   # (T, S) or (B, T, S)
        visible = visible & near
    if pad_len is not None:
        visible = xp.where(i < pad, j == i, visible & (j >= pad))           # padding sees only itself
    return visible


def causal_mask(T, xp=None):
    """(T, T): query i sees keys 0..i."""
    return attention_mask(T, xp=xp)                                         # (T, T)


def prefix_mask(T, sep, xp=None):
    """GLM's mask. sep int -> (T, T); sep int array (B,) -> (B, T, T), one prefix length per sample.
    The first sep[b] positions (Part A) see each other in both directions; positions from sep[b] on
    (Part B) are causal and also see all of Part A. sep = 0 is fully causal, sep = T fully bidirectional.
    """
    T = _check_T(T)
    sep_host = to_numpy(sep)                                                # checked on the host
    if not np.issubdtype(sep_host.dtype, np.integer) or sep_host.ndim > 1:
        raise ValueError(f"sep={sep!r}: expected an int or a 1-D integer array (one prefix length per sample)")
    bad = sep_host[(sep_host < 0) | (sep_host > T)]
    if bad.size:
        raise ValueError(f"sep={bad.tolist()} out of range: each prefix length (a Model's prefix_len) must be "
                         f"in [0, T={T}] (0 = fully causal)")
    return attention_mask(T, prefix_len=sep_host, xp=xp)                    # (T, T) or (B, T, T)


def banded_mask(T, window, xp=None):
    """(T, T) GPT-3 / Sparse Transformer local band: causal, and only within one's own block of
    `window` positions (block = position // window)."""
    return attention_mask(T, local="banded", window=_check_window(window), xp=xp)   # (T, T)


def sliding_window_mask(T, window, xp=None):
    """(T, T): causal, and at most `window` keys back (i - j < window, the query itself included)."""
    return attention_mask(T, local="sliding", window=_check_window(window), xp=xp)  # (T, T)


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
