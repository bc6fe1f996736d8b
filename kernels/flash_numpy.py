"""Flash attention, the algorithm in plain NumPy: tiles, an online softmax, and a backward that recomputes.

Dimensions: B batch, H query heads, Hkv kv heads, g = H // Hkv query heads per kv head, T queries,
S keys, D head dim; Bq and Bk the tile sizes (block_q query rows, block_k key columns).

Why. The reference attention (minigpt.layers.attention) builds the (T, S) score matrix of every head
and keeps the probabilities for the backward pass: memory grows as T*S. Flash attention (Dao et al.
2022) never holds more than one (Bq, Bk) tile of scores, and saves only what the backward needs to
rebuild them: memory grows as T.

Forward, one query tile (Bq rows of one head) at a time. Walk the key tiles left to right, keeping
three running quantities per query row: m, the largest score seen so far; l, the sum of exp(score - m)
so far; acc, the sum of exp(score - m) * v so far. A new key tile with scores s (Bq, Bk) brings
    m_new = max(m, rowmax(s))
    p     = exp(s - m_new)                    this tile's unnormalised probabilities
    alpha = exp(m - m_new)                    rescales what was summed against the old maximum
    l     = alpha * l + rowsum(p)
    acc   = alpha * acc + p @ v_tile
and after the last tile out = acc / l: exactly softmax(s) @ v, because every term carries the same
factor exp(-m_final) / l. This is the "online softmax" (Milakov & Gimelshein 2018). Masked keys get
the score -inf, so p = 0; a row that has seen no visible key yet keeps m = -inf, and we subtract 0
instead of -inf there so that exp never sees -inf - (-inf) = nan.

Tiles the mask hides completely (above the causal diagonal, before a local window, padding) are
skipped without computing anything: that is where a causal kernel saves half its work.

Saved for backward: the output O (B, H, T, D) and one number per query row, the log-sum-exp
    L = m + log(l) = log(sum_j exp(s_j))      (natural log, of the scaled, masked scores)
from which any probability is rebuilt in one step: p_ij = exp(s_ij - L_i).

Backward. With dO given, the softmax backward needs sum_j p_ij dp_ij for each row, and that equals
    Di = rowsum(dO * O)                       since dp_ij = dO_i . v_j and O_i = sum_j p_ij v_j
so it is known before any tile is revisited. Then, for every (query tile, key tile) pair again:
    s  = q k^T * scale;  p = exp(s - L)       the forward's probabilities, rebuilt (0 where masked)
    dV += p^T dO                              out = p @ v
    dp = dO V^T
    ds = p * (dp - Di)                        the softmax backward, row by row
    dQ += ds K * scale;  dK += ds^T Q * scale    s = q k^T * scale
Recomputing s costs two more tile matmuls than keeping p would, and saves the T*S memory.

Grouped-query heads: query head h reads kv head h // g, and dK, dV of a kv head sum over its g query heads.
"""
import math

import numpy as np

from minigpt.kernels.masking import tile_may_be_visible, visible_block


def _tiles(n, size):
    """[(start, stop), ...] covering 0..n-1 in tiles of `size` (the last one may be shorter)."""
    return [(start, min(start + size, n)) for start in range(0, n, size)]


def flash_forward(q, k, v, spec, scale=None, block_q=64, block_k=64):
    """Tiled attention with an online softmax.
    q (B, H, T, D), k (B, Hkv, S, D), v (B, Hkv, S, D), spec a MaskSpec
    ->  O (B, H, T, D), L (B, H, T) the log-sum-exp of each row's scaled masked scores
    """
    B, H, T, D = q.shape
    Hkv, S = k.shape[1], k.shape[2]
    g = H // Hkv                                                            # query heads per kv head
    scale = 1.0 / math.sqrt(D) if scale is None else float(scale)
    spec.check(B, T, S)
    prefix, pad = spec.per_sample(B)                                        # (B,), (B,)
    o = np.empty_like(q)                                                    # (B, H, T, D)
    L = np.empty((B, H, T), dtype=q.dtype)                                  # (B, H, T)
    for b in range(B):
        rule = (prefix[b], pad[b], spec.local_code, spec.window)           # sample b's mask
        for h in range(H):
            for r0, r1 in _tiles(T, block_q):
                i = spec.q_offset + np.arange(r0, r1)                       # (Bq,) query positions
                qs = q[b, h, r0:r1] * scale                                 # (Bq, D) scaled once per tile
                o[b, h, r0:r1], L[b, h, r0:r1] = _forward_tile(qs, k[b, h // g], v[b, h // g], i, rule, block_k)
    return o, L


def _forward_tile(qs, k, v, i, rule, block_k):
    """One tile of scaled queries qs (Bq, D) at positions i (Bq,) against all keys k, v (S, D)
    -> out (Bq, D), L (Bq,)."""
    Bq, D = qs.shape
    m = np.full(Bq, -np.inf, dtype=qs.dtype)                               # (Bq,) running max
    l = np.zeros(Bq, dtype=qs.dtype)                                        # (Bq,) running sum of exp(s - m)
    acc = np.zeros((Bq, D), dtype=qs.dtype)                                 # (Bq, D) running sum of exp(s - m) v
    for c0, c1 in _tiles(k.shape[0], block_k):
        if not tile_may_be_visible(i[0], i[-1], c0, c1 - 1, *rule):
            continue                                                        # the mask hides the whole tile
        j = np.arange(c0, c1)                                               # (Bk,) key positions
        s = qs @ k[c0:c1].T                                                 # (Bq, Bk) scaled scores
        s = np.where(visible_block(i[:, None], j[None, :], *rule), s, -np.inf)   # (Bq, Bk) masked
        m_new = np.maximum(m, s.max(axis=1))                                # (Bq,)
        m_safe = np.where(m_new == -np.inf, 0, m_new).astype(qs.dtype)      # (Bq,) rows with no key yet: 0
        p = np.exp(s - m_safe[:, None])                                     # (Bq, Bk) 0 where masked
        alpha = np.exp(m - m_safe)                                          # (Bq,) rescales the old sums
        l = alpha * l + p.sum(axis=1)                                       # (Bq,)
        acc = alpha[:, None] * acc + p @ v[c0:c1]                           # (Bq, D)
        m = m_new
    return acc / l[:, None], m + np.log(l)                                  # (Bq, D), (Bq,)


def flash_backward(q, k, v, o, L, do, spec, scale=None, block_q=64, block_k=64):
    """The backward of flash_forward, recomputing the probabilities tile by tile from L.
    q, o, do (B, H, T, D), k, v (B, Hkv, S, D), L (B, H, T)
    ->  dq (B, H, T, D), dk (B, Hkv, S, D), dv (B, Hkv, S, D)
    """
    B, H, T, D = q.shape
    Hkv, S = k.shape[1], k.shape[2]
    g = H // Hkv
    scale = 1.0 / math.sqrt(D) if scale is None else float(scale)
    spec.check(B, T, S)
    prefix, pad = spec.per_sample(B)
    Di = (do * o).sum(axis=-1)                                              # (B, H, T) = rowsum(p * dp)
    dq, dk, dv = np.zeros_like(q), np.zeros_like(k), np.zeros_like(v)
    for b in range(B):
        rule = (prefix[b], pad[b], spec.local_code, spec.window)
        for h in range(H):
            kvh = h // g                                                    # the kv head this query head reads
            for r0, r1 in _tiles(T, block_q):
                rows = slice(r0, r1)
                i = spec.q_offset + np.arange(r0, r1)                       # (Bq,) query positions
                qs = q[b, h, rows] * scale                                  # (Bq, D)
                tile = (qs, do[b, h, rows], L[b, h, rows], Di[b, h, rows], i)
                dq[b, h, rows] = _backward_tile(tile, k[b, kvh], v[b, kvh], dk[b, kvh], dv[b, kvh],
                                                rule, block_k) * scale
    return dq, dk, dv


def _backward_tile(tile, k, v, dk, dv, rule, block_k):
    """One query tile against all key tiles: adds into dk, dv (S, D) in place, returns dq / scale (Bq, D)."""
    qs, do, L, Di, i = tile                                                 # (Bq, D), (Bq, D), (Bq,), (Bq,), (Bq,)
    dq = np.zeros_like(qs)                                                  # (Bq, D)
    for c0, c1 in _tiles(k.shape[0], block_k):
        if not tile_may_be_visible(i[0], i[-1], c0, c1 - 1, *rule):
            continue
        j = np.arange(c0, c1)                                               # (Bk,)
        s = qs @ k[c0:c1].T                                                 # (Bq, Bk) as in the forward
        s = np.where(visible_block(i[:, None], j[None, :], *rule), s, -np.inf)
        p = np.exp(s - L[:, None])                                          # (Bq, Bk) the forward's probabilities
        dv[c0:c1] += p.T @ do                                               # (Bk, D)  out = p @ v
        dp = do @ v[c0:c1].T                                                # (Bq, Bk)
        ds = p * (dp - Di[:, None])                                         # (Bq, Bk) softmax backward
        dq += ds @ k[c0:c1]                                                 # (Bq, D)  s = qs @ k^T
        dk[c0:c1] += ds.T @ qs                                              # (Bk, D)  (qs carries the scale)
    return dq
