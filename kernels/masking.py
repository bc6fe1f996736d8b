"""The masks the fused kernels support, described by a few numbers instead of a (T, S) array.

A fused kernel never reads a mask array: it asks, for each key tile and each (query, key) pair, a
predicate over integers. This module defines that rule once, in the forms below, which tests hold equal:

    key_visible(i, j, ...)          the scalar predicate: the CUDA kernel compiles it
    visible_block(i, j, ...)        the same rule on NumPy index arrays (dense_mask and flash_numpy use it)
    dense_mask(spec, B, T, S)       the whole mask as a bool (B, T, S) array, for tests and the reference

the same rule for one query as an interval of keys (the CPU kernel compiles it, and tests a key against
two numbers):

    visible_keys(i, ...)            (first, last): query i sees keys first..last, and no others

and two tile-level questions the kernels ask before touching a tile of keys:

    tile_may_be_visible(...)        False only if no (query, key) pair of the tile is visible: skip the tile
    tile_all_visible(...)           True only if every pair is visible: no per-element test needed

Positions. Query row r (0 <= r < T) is at absolute position i = q_offset + r: q_offset = S - T when a
KV cache holds the S - T earlier positions, 0 otherwise. Key column j (0 <= j < S) is at position j.

The rule. Key j is visible to query i in sample b when ALL of

    causal       j <= i,  OR  j < prefix[b]     GLM's prefix (Part A) is seen by every query, both ways
    local        window W (only when local is set):
                   "banded":   (j - pad[b]) // W == (i - pad[b]) // W
                               GPT-3 / Sparse Transformer block-local band: blocks of W positions,
                               counted from the first real token (as masks.attention_mask does)
                   "sliding":  i - j < W            Mistral: the last W positions, the query included
    padding      j >= pad[b]                     left padding (pad[b] positions at the start of sample b)
                                                 is seen by no real token,

EXCEPT that a padding query (i < pad[b]) sees exactly itself (j == i): no row is ever empty, so the
softmax never divides 0 by 0, and the batch never breaks (the caller ignores those outputs).
prefix None means 0 (plain causal), pad None means 0 (no padding); prefix = S is full bidirectional attention.

This is masks.attention_mask's rule (the reference's masks), with one difference written down: there a
padding query whose sample also has prefix > pad sees the prefix keys as well as itself (its code ORs
the prefix in before the padding rule; its docstring says "exactly itself"). Here it sees only itself.
No real token ever sees a padding position, so the difference reaches no real token's output; it
changes gradients only if a caller sends a nonzero gradient into the output of a padding row.
"""
from dataclasses import dataclass

import numpy as np

NONE, BANDED, SLIDING = 0, 1, 2                                             # the kernels' codes for `local`
LOCAL_CODES = {None: NONE, "banded": BANDED, "sliding": SLIDING}


def _per_sample(name, value):
    """None, an int, or a sequence/array of ints (one per sample) -> None, int, or tuple of ints."""
    if value is None:
        return None
    host = np.asarray(value)
    if not np.issubdtype(host.dtype, np.integer) or host.ndim > 1:
        raise ValueError(f"MaskSpec: {name}={value!r}: expected None, an int or a 1-D integer array")
    if (host < 0).any():
        raise ValueError(f"MaskSpec: {name}={host.tolist()}: lengths must be >= 0")
    return int(host) if host.ndim == 0 else tuple(int(x) for x in host)


@dataclass(frozen=True)
class MaskSpec:
    """Which keys each query may see (see the module docstring for the rule).

    q_offset  int >= 0: absolute position of query row 0 (S - T with a KV cache)
    prefix    None | int | ints (B,): GLM prefix length per sample (None = 0, causal)
    pad       None | int | ints (B,): left-padding length per sample (None = 0)
    local     None | "banded" | "sliding", with window W >= 1
    """
    q_offset: int = 0
    prefix: object = None
    pad: object = None
    local: object = None
    window: int = 0

    def __post_init__(self):
        if isinstance(self.q_offset, bool) or not isinstance(self.q_offset, (int, np.integer)) or self.q_offset < 0:
            raise ValueError(f"MaskSpec: q_offset={self.q_offset!r}: expected an int >= 0")
        object.__setattr__(self, "q_offset", int(self.q_offset))
        object.__setattr__(self, "prefix", _per_sample("prefix", self.prefix))
        object.__setattr__(self, "pad", _per_sample("pad", self.pad))
        if self.local not in LOCAL_CODES:
            raise ValueError(f"MaskSpec: local={self.local!r}: expected None, 'banded' or 'sliding'")
        if self.local is not None and (isinstance(self.window, bool) or not isinstance(self.window, (int, np.integer))
                                       or self.window < 1):
            raise ValueError(f"MaskSpec: window={self.window!r}: a local mask needs an int window >= 1")
        object.__setattr__(self, "window", int(self.window) if self.local is not None else 0)

    @classmethod
    def from_mask_args(cls, T, S=None, prefix_len=None, pad_len=None, local=None, window=None):
        """The spec of masks.attention_mask(T, S, prefix_len, pad_len, local, window): queries are the
        last T of S positions."""
        S = T if S is None else S
        return cls(q_offset=S - T, prefix=prefix_len, pad=pad_len, local=local,
                   window=window if local is not None else 0)

    @property
    def local_code(self):
        """NONE, BANDED or SLIDING: the integer the kernels branch on."""
        return LOCAL_CODES[self.local]

    def per_sample(self, B):
        """-> prefix int64 (B,), pad int64 (B,): one value per sample, 0 where None."""
        out = []
        for name, value in (("prefix", self.prefix), ("pad", self.pad)):
            value = 0 if value is None else value
            if isinstance(value, tuple) and len(value) != B:
                raise ValueError(f"MaskSpec: {name} has {len(value)} values for a batch of B={B}")
            out.append(np.broadcast_to(np.asarray(value, dtype=np.int64), (B,)).copy())   # (B,)
        return out[0], out[1]

    def check(self, B, T, S):
        """A ValueError unless the spec fits T queries against S keys in a batch of B."""
        if self.q_offset + T > S:
            raise ValueError(f"MaskSpec: q_offset={self.q_offset} + T={T} queries > S={S} keys "
                             f"(queries must be positions q_offset .. q_offset+T-1 < S)")
        prefix, pad = self.per_sample(B)
        for name, value in (("prefix", prefix), ("pad", pad)):
            if (value > S).any():
                raise ValueError(f"MaskSpec: {name}={value.tolist()} out of range: expected <= S={S}")


def key_visible(i, j, prefix, pad, local, window):
    """May the query at absolute position i see the key at position j? (ints; local is a code)
    The kernels compile this function; it is the rule of the module docstring, check by check."""
    if i < pad:                                                             # a padding query sees exactly itself
        return j == i
    if j < pad:                                                             # real queries never see padding
        return False
    if j > i and j >= prefix:                                               # causal, except GLM's prefix
        return False
    if local == BANDED:                                                     # same block (counted from pad)
        return (j - pad) // window == (i - pad) // window
    if local == SLIDING:                                                    # at most window - 1 positions back
        return i - j < window
    return True


def visible_block(i, j, prefix, pad, local, window):
    """key_visible on NumPy integer arrays that broadcast: i (n, 1), j (1, m) -> bool (n, m)."""
    real = (j >= pad) & ((j <= i) | (j < prefix))                          # causal or prefix, no padding key
    if local == BANDED:
        real = real & ((j - pad) // window == (i - pad) // window)          # same block of W
    elif local == SLIDING:
        real = real & (i - j < window)                                      # the last W positions
    return np.where(i < pad, j == i, real)                                  # padding queries: only themselves


def dense_mask(spec, B, T, S):
    """The whole mask of a spec: bool (B, T, S), True = may attend (what the reference attention takes)."""
    spec.check(B, T, S)
    prefix, pad = spec.per_sample(B)                                        # (B,), (B,)
    i = (spec.q_offset + np.arange(T))[None, :, None]                       # (1, T, 1) query positions
    j = np.arange(S)[None, None, :]                                         # (1, 1, S) key positions
    return visible_block(i, j, prefix[:, None, None], pad[:, None, None],
                         spec.local_code, spec.window)                      # (B, T, S)


def tile_may_be_visible(i_lo, i_hi, j_lo, j_hi, prefix, pad, local, window):
    """Queries i_lo..i_hi against keys j_lo..j_hi (inclusive): False only if no pair is visible.
    A kernel skips such a tile: the causal tiles above the diagonal, tiles before a window, padding."""
    if max(i_lo, j_lo) <= min(min(i_hi, j_hi), pad - 1):                    # a padding query's own key is inside
        return True
    i_lo, j_lo = max(i_lo, pad), max(j_lo, pad)                             # the real queries and the real keys
    if i_lo > i_hi or j_lo > j_hi:                                          # none of one of them
        return False
    if j_lo > i_hi and j_lo >= prefix:                                      # keys all after the queries, past prefix
        return False
    if local == SLIDING and i_lo - j_hi >= window:                          # every key too far back
        return False
    if local == BANDED and ((j_hi - pad) // window < (i_lo - pad) // window  # keys' blocks all before ...
                            or (j_lo - pad) // window > (i_hi - pad) // window):  # ... or all after the queries'
        return False
    return True


def last_visible_key(i_hi, prefix):
    """The last key any query at a position up to i_hi may see: max(i_hi, prefix - 1). Causal keys are at
    most the query's own position, GLM's prefix keys are below prefix, a padding query sees only itself,
    and a local window or padding only hides more. A kernel need not look at keys after it."""
    return max(i_hi, prefix - 1)


def visible_keys(i, prefix, pad, local, window):
    """The keys the query at position i may see, as an interval: (first, last), inclusive. Each part of
    the rule keeps an interval of keys, so together they do: causal or prefix keeps j <= max(i, prefix - 1),
    padding keeps j >= pad, "banded" keeps i's block of W, "sliding" keeps j > i - W; a padding query
    keeps only j = i. A kernel tests a key against two numbers instead of the whole rule."""
    if i < pad:                                                             # a padding query sees exactly itself
        return i, i
    first, last = pad, max(i, prefix - 1)
    if local == BANDED:                                                     # i's block: W positions from pad
        block_start = pad + (i - pad) // window * window
        first, last = max(first, block_start), min(last, block_start + window - 1)
    elif local == SLIDING:                                                  # the last W positions
        first = max(first, i - window + 1)
    return first, last


def tile_all_visible(i_lo, i_hi, j_lo, j_hi, prefix, pad, local, window):
    """Queries i_lo..i_hi against keys j_lo..j_hi (inclusive): True only if every pair is visible,
    so the kernel may skip the per-element test (most tiles below the causal diagonal)."""
    if i_lo < pad or j_lo < pad:                                            # padding in the tile: test each pair
        return False
    if j_hi > i_lo and j_hi >= prefix:                                      # the last key is after the first query
        return False
    if local == SLIDING and i_hi - j_lo >= window:                          # first key too far back for the last query
        return False
    if local == BANDED and (min(i_lo, j_lo) - pad) // window != (max(i_hi, j_hi) - pad) // window:
        return False                                                        # the tile spans two blocks
    return True
