"""Absolute position encodings: what tells attention WHERE a token is.

Dimension letters: B batch, T time, C channels, P the number of rows of a position table
(max_seq_len). Attention itself is blind to order (permute the tokens and every token's output
permutes the same way), so a position vector is added to each token's embedding.

Sinusoidal (Vaswani et al. 2017, "Attention Is All You Need"), a fixed table, no parameters:
    PE[pos, 2i]   = sin(pos / 10000^(2i/C))
    PE[pos, 2i+1] = cos(pos / 10000^(2i/C))
Each channel pair (2i, 2i+1) is a clock hand turning at its own frequency, from one turn per
2*pi positions (i = 0) down to one per 2*pi*10000 positions. Moving k positions on turns every
hand by a fixed angle, so PE[pos + k] is a rotation of PE[pos], the same for every pos.
With odd C the last channel is a sine without its cosine partner.
Nothing to learn, so no backward.

Learned (GPT-1, GPT-2, GLM): a table wpe (P, C) looked up by position id, exactly an
embedding (see embedding.py): out = wpe[position_ids], and the backward scatter-adds
dout into the rows of the positions used:
    dwpe[p, :] = sum over tokens at position p of dout[token, :]

GLM's two-dimensional positions (Du et al. 2022, "GLM: General Language Model Pretraining with
Autoregressive Blank Infilling"). Every token carries two ids:
    position_ids        its position in the corrupted text (Part A); a token of a blank span
                        (Part B) takes the position of the [MASK] that its span replaced;
    block_position_ids  its position inside its span: 0 for Part A, 1, 2, ... within a span.
Each id has its own learned table and the two vectors are added:
    out = wpe[position_ids] + wbpe[block_position_ids]
The sum passes dout unchanged to both lookups, so each table gets its own scatter-add:
    dwpe = scatter_add(position_ids, dout),  dwbpe = scatter_add(block_position_ids, dout)
"""
import math
from typing import NamedTuple

from minigpt.backend import get_xp, is_integer_array
from minigpt.layers.embedding import EmbeddingCache, check_ids, embedding_backward


def sinusoidal_encoding(positions, C, dtype="float32"):
    """The fixed sine/cosine table of the Transformer at the given integer positions.
    positions int (T,) or (B, T)  ->  PE (T, C) or (B, T, C) in dtype. Odd C is allowed.
    """
    xp = get_xp(positions)
    positions = xp.asarray(positions)
    if not is_integer_array(positions):
        raise ValueError(f"positions must be an integer array, got dtype {positions.dtype}")
    even = xp.arange(0, C, 2)                                    # (ceil(C/2),) the channels 2i
    inv_freq = xp.exp(even * (-math.log(10000.0) / C))           # (ceil(C/2),) 1 / 10000^(2i/C)
    angle = positions[..., None] * inv_freq                      # (..., T, ceil(C/2)) float64, for accuracy at large pos
    pe = xp.empty(positions.shape + (C,), dtype=dtype)           # (..., T, C)
    pe[..., 0::2] = xp.sin(angle)                                # channels 0, 2, 4, ...
    pe[..., 1::2] = xp.cos(angle[..., :C // 2])                  # channels 1, 3, 5, ... (one fewer when C is odd)
    return pe


def learned_position_forward(position_ids, wpe, *, what="position id"):
    """Look up one learned position vector per position id.
    position_ids int (T,) or (B, T), wpe (P, C)  ->  out (T, C) or (B, T, C), cache
    It is an embedding lookup, so its cache is an EmbeddingCache (ids = position_ids, n_rows = P).
    what: how an error names an id ("block position id" for GLM's second table).
    """
    position_ids = get_xp(wpe).asarray(position_ids)
    check_ids(position_ids, wpe.shape[0], what=what, limit="max_seq_len")
    out = wpe[position_ids]                                      # (B, T, C)
    return out, EmbeddingCache(position_ids, wpe.shape[0])


def learned_position_backward(dout, cache):
    """dout (B, T, C) -> dwpe (P, C): dout scatter-added into the rows of the positions used."""
    return embedding_backward(dout, cache)                       # undoes out = wpe[position_ids]


class GlmPositionCache(NamedTuple):
    """What glm_position_backward needs: the caches of the two lookups."""
    pos_cache: EmbeddingCache                                    # wpe[position_ids]
    block_cache: EmbeddingCache                                  # wbpe[block_position_ids]


def glm_position_forward(position_ids, block_position_ids, wpe, wbpe):
    """GLM's 2D positions: wpe[position_ids] + wbpe[block_position_ids].
    position_ids, block_position_ids int (B, T) (or (T,)), wpe (P, C), wbpe (P, C)  ->  out (B, T, C), cache
    """
    _check_glm_positions(position_ids, block_position_ids, wpe, wbpe)
    pos, pos_cache = learned_position_forward(position_ids, wpe)                # (B, T, C)
    block, block_cache = learned_position_forward(block_position_ids, wbpe, what="block position id")  # (B, T, C)
    return pos + block, GlmPositionCache(pos_cache, block_cache)


def glm_position_backward(dout, cache):
    """dout (B, T, C) -> dwpe (P, C), dwbpe (P, C)."""
    dwpe = learned_position_backward(dout, cache.pos_cache)      # the sum hands dout to both lookups
    dwbpe = learned_position_backward(dout, cache.block_cache)
    return dwpe, dwbpe


def _check_glm_positions(position_ids, block_position_ids, wpe, wbpe):
    if position_ids.shape != block_position_ids.shape:
        raise ValueError(f"glm positions: position_ids has shape {position_ids.shape} but "
                         f"block_position_ids has shape {block_position_ids.shape}; expected the same")
    if wpe.shape[1:] != wbpe.shape[1:]:
        raise ValueError(f"glm positions: wpe has shape {wpe.shape} but wbpe has shape {wbpe.shape}; "
                         f"expected the same C")
