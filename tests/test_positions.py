import math
import re

import numpy as np
import pytest

from minigpt.layers.positions import (glm_position_backward, glm_position_forward, learned_position_backward,
                                      learned_position_forward, sinusoidal_encoding)
from layer_testing import BT, DTYPES, C, assert_gradients, assert_matches_torch, leaf, randn

P = 9  # rows of the position tables (max_seq_len)


def formula(pos, C):
    """PE[pos, 2i] = sin(pos / 10000^(2i/C)), PE[pos, 2i+1] = cos(pos / 10000^(2i/C)), entry by entry."""
    row = []
    for c in range(C):
        i2 = c - c % 2                                   # the 2i of this channel's pair
        angle = pos / 10000 ** (i2 / C)
        row.append(math.sin(angle) if c % 2 == 0 else math.cos(angle))
    return row


@pytest.mark.parametrize("C_", [12, 13, 1])
@DTYPES
def test_sinusoidal_encoding_matches_formula(C_, dtype):
    positions = np.array([0, 1, 2, 5, 17, 300, 2047])
    pe = sinusoidal_encoding(positions, C_, dtype)
    assert pe.shape == (7, C_) and pe.dtype == dtype
    expected = np.array([formula(p, C_) for p in positions])
    if dtype == np.float64:
        assert np.max(np.abs(pe - expected)) < 1e-10
    else:
        assert np.max(np.abs(pe - expected)) < 1e-6


def test_sinusoidal_encoding_batched_positions():
    positions = np.array([[0, 1, 2], [4, 4, 0]])
    pe = sinusoidal_encoding(positions, C, np.float64)
    assert pe.shape == (2, 3, C)
    np.testing.assert_allclose(pe[1, 1], formula(4, C), atol=1e-12)


@pytest.mark.parametrize("C_", [12, 13])
def test_sinusoidal_encoding_matches_transformers_distilbert(C_):
    # DistilBERT's table has the same layout (sin on even channels, cos on odd); it builds it in float32,
    # so this is the float32 parity check (float64 is checked against the formula above)
    torch = pytest.importorskip("torch")
    distilbert = pytest.importorskip("transformers.models.distilbert.modeling_distilbert")
    theirs = torch.empty(300, C_)
    distilbert.create_sinusoidal_embeddings(300, C_, theirs)
    assert_matches_torch(sinusoidal_encoding(np.arange(300), C_, np.float32), theirs)


def test_sinusoidal_encoding_float_positions_is_error():
    with pytest.raises(ValueError, match="float64"):
        sinusoidal_encoding(np.array([0.0, 1.0]), C)


# learned positions: an embedding table indexed by position id

def learned_backward(dout, cache):
    return None, learned_position_backward(dout, cache)


@BT
def test_learned_position_gradients(B, T):
    rng = np.random.default_rng(0)
    ids = np.broadcast_to(np.arange(T), (B, T)).copy()   # every row uses the same positions: they add up over B
    assert_gradients(learned_position_forward, learned_backward, [ids, randn(rng, P, C)], ["ids", "wpe"], ["wpe"])


def test_learned_position_one_dimensional_ids():
    rng = np.random.default_rng(1)
    wpe = randn(rng, P, C)
    out, cache = learned_position_forward(np.arange(7), wpe)
    np.testing.assert_array_equal(out, wpe[:7])
    dwpe = learned_position_backward(np.ones((7, C)), cache)
    np.testing.assert_array_equal(dwpe[:, 0], [1] * 7 + [0] * (P - 7))


def test_learned_position_float32_stays_float32():
    rng = np.random.default_rng(2)
    out, cache = learned_position_forward(rng.integers(0, P, size=(3, 7)), randn(rng, P, C, dtype=np.float32))
    assert out.dtype == np.float32
    assert learned_position_backward(out, cache).dtype == np.float32


@DTYPES
def test_learned_position_matches_torch(dtype):
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(2)
    ids, wpe, dout = rng.integers(0, P, size=(3, 7)), randn(rng, P, C, dtype=dtype), randn(rng, 3, 7, C, dtype=dtype)
    out, cache = learned_position_forward(ids, wpe)
    dwpe = learned_position_backward(dout, cache)
    twpe = leaf(torch, wpe)
    tout = torch.nn.functional.embedding(torch.tensor(ids), twpe)
    tout.backward(torch.tensor(dout))
    assert out.dtype == dwpe.dtype == dtype
    assert_matches_torch(out, tout)
    assert_matches_torch(dwpe, twpe.grad)


def test_learned_position_out_of_range_is_error():
    with pytest.raises(ValueError, match=f"position id {P} .*max_seq_len = {P}"):
        learned_position_forward(np.arange(P + 1), np.zeros((P, C)))


# GLM's 2D positions: two learned tables, added

def glm_ids(rng, B, T):
    """Part A positions 0..a-1, then one span whose tokens all take the [MASK]'s position, block ids 1, 2, ..."""
    pos, block = np.zeros((B, T), dtype=np.int64), np.zeros((B, T), dtype=np.int64)
    for b in range(B):
        a = int(rng.integers(1, T + 1))
        mask_at = int(rng.integers(0, a))
        pos[b] = np.concatenate([np.arange(a), np.full(T - a, mask_at)])
        block[b, a:] = np.arange(1, T - a + 1)
    return pos, block


def glm_backward(dout, cache):
    return (None, None) + glm_position_backward(dout, cache)


@BT
def test_glm_position_gradients(B, T):
    rng = np.random.default_rng(3)
    pos, block = glm_ids(rng, B, T)
    assert_gradients(glm_position_forward, glm_backward, [pos, block, randn(rng, P, C), randn(rng, P, C)],
                     ["position_ids", "block_position_ids", "wpe", "wbpe"], ["wpe", "wbpe"])


def test_glm_position_float32_stays_float32():
    rng = np.random.default_rng(4)
    pos, block = glm_ids(rng, 3, 7)
    out, cache = glm_position_forward(pos, block, randn(rng, P, C, dtype=np.float32), randn(rng, P, C, dtype=np.float32))
    assert out.dtype == np.float32
    assert all(g.dtype == np.float32 for g in glm_position_backward(out, cache))


@DTYPES
def test_glm_position_matches_torch(dtype):
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(5)
    pos, block = glm_ids(rng, 3, 7)
    wpe, wbpe, dout = randn(rng, P, C, dtype=dtype), randn(rng, P, C, dtype=dtype), randn(rng, 3, 7, C, dtype=dtype)
    out, cache = glm_position_forward(pos, block, wpe, wbpe)
    dwpe, dwbpe = glm_position_backward(dout, cache)
    twpe, twbpe = leaf(torch, wpe), leaf(torch, wbpe)
    F = torch.nn.functional
    tout = F.embedding(torch.tensor(pos), twpe) + F.embedding(torch.tensor(block), twbpe)
    tout.backward(torch.tensor(dout))
    assert_matches_torch(out, tout)
    assert_matches_torch(dwpe, twpe.grad)
    assert_matches_torch(dwbpe, twbpe.grad)


def test_glm_position_shape_mismatch_is_error():
    with pytest.raises(ValueError, match=re.escape("(2, 3)") + ".*" + re.escape("(2, 4)")):
        glm_position_forward(np.zeros((2, 3), dtype=int), np.zeros((2, 4), dtype=int), np.zeros((P, C)), np.zeros((P, C)))


def test_glm_block_position_out_of_range_is_error():
    block = np.array([[0, 1, 2, 12]])
    with pytest.raises(ValueError, match=f"position id 12 .*max_seq_len = {P}"):
        glm_position_forward(np.zeros((1, 4), dtype=int), block, np.zeros((P, C)), np.zeros((P, C)))
