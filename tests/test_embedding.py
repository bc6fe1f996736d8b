import numpy as np
import pytest

from minigpt.layers.embedding import embedding_backward, embedding_forward
from layer_testing import BT, DTYPES, C, assert_gradients, assert_matches_torch, leaf, randn

V = 5  # fewer ids than tokens: repeated ids must add up


def forward(ids, weight):
    return embedding_forward(ids, weight)


def backward(dout, cache):
    return None, embedding_backward(dout, cache)        # no gradient for the ids


@BT
def test_embedding_gradients(B, T):
    rng = np.random.default_rng(0)
    ids = rng.integers(0, V, size=(B, T))
    assert_gradients(forward, backward, [ids, randn(rng, V, C)], ["ids", "weight"], ["weight"])


def test_embedding_forward_picks_rows():
    weight = np.arange(V * C, dtype=np.float64).reshape(V, C)
    ids = np.array([[4, 0, 4], [2, 2, 1]])
    out, _ = embedding_forward(ids, weight)
    assert out.shape == (2, 3, C)
    np.testing.assert_array_equal(out[1, 0], weight[2])
    np.testing.assert_array_equal(out[0, 2], weight[4])


def test_embedding_backward_adds_repeated_ids_and_zeros_unused():
    rng = np.random.default_rng(1)
    ids = np.array([[3, 1, 3, 3], [1, 0, 3, 1]], dtype=np.int32)
    dout = randn(rng, 2, 4, C)
    _, cache = embedding_forward(ids, randn(rng, V, C))
    dweight = embedding_backward(dout, cache)
    expected = np.zeros((V, C))
    for b in range(2):
        for t in range(4):
            expected[ids[b, t]] += dout[b, t]
    np.testing.assert_allclose(dweight, expected, rtol=1e-12, atol=1e-12)
    assert not dweight[[2, 4]].any()


def test_embedding_float32_stays_float32():
    rng = np.random.default_rng(2)
    out, cache = embedding_forward(rng.integers(0, V, size=(3, 7)), randn(rng, V, C, dtype=np.float32))
    assert out.dtype == np.float32
    assert embedding_backward(out, cache).dtype == np.float32


@DTYPES
def test_embedding_matches_torch(dtype):
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(3)
    ids, weight, dout = rng.integers(0, V, size=(3, 7)), randn(rng, V, C, dtype=dtype), randn(rng, 3, 7, C, dtype=dtype)
    out, cache = embedding_forward(ids, weight)
    dweight = embedding_backward(dout, cache)
    tweight = leaf(torch, weight)
    tout = torch.nn.functional.embedding(torch.tensor(ids), tweight)
    tout.backward(torch.tensor(dout))
    assert_matches_torch(out, tout)
    assert_matches_torch(dweight, tweight.grad)


def test_embedding_float_ids_is_error():
    with pytest.raises(ValueError, match="float64"):
        embedding_forward(np.array([[0.0, 1.0]]), np.zeros((V, C)))


@pytest.mark.parametrize("bad", [V, 7, -1])
def test_embedding_id_out_of_range_is_error(bad):
    ids = np.array([[0, 1], [bad, 2]])
    with pytest.raises(ValueError, match=f"token id {bad} .*V = {V}"):
        embedding_forward(ids, np.zeros((V, C)))
