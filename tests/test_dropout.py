import numpy as np
import pytest

from minigpt.layers.dropout import dropout_backward, dropout_forward
from layer_testing import BT, DTYPES, C, assert_gradients, assert_matches_torch, leaf, randn

P = 0.3


@BT
def test_dropout_gradients(B, T):
    rng = np.random.default_rng(0)
    forward = lambda x: dropout_forward(x, P, np.random.default_rng(1))    # a fresh rng per call: the same mask
    assert_gradients(forward, lambda dout, cache: (dropout_backward(dout, cache),), [randn(rng, B, T, C)], ["x"], ["x"])


def test_dropout_keeps_1_minus_p_and_rescales():
    x = np.ones((200, 500))
    out, _ = dropout_forward(x, P, np.random.default_rng(2))
    kept = out != 0
    assert abs(kept.mean() - (1 - P)) < 0.005
    np.testing.assert_allclose(out[kept], 1 / (1 - P))
    assert abs(out.mean() - 1) < 0.01                   # inverted dropout keeps the expected value


def test_dropout_same_seed_same_mask_in_both_dtypes():
    x = randn(np.random.default_rng(3), 3, 7, C)
    out64, _ = dropout_forward(x, P, np.random.default_rng(4))
    out32, _ = dropout_forward(x.astype(np.float32), P, np.random.default_rng(4))
    other, _ = dropout_forward(x, P, np.random.default_rng(5))
    np.testing.assert_array_equal(out64 == 0, out32 == 0)
    assert not np.array_equal(out64 == 0, other == 0)


@pytest.mark.parametrize("p, train", [(0.0, True), (P, False)])
def test_dropout_off_is_identity(p, train):
    x = randn(np.random.default_rng(6), 3, 7, C)
    out, cache = dropout_forward(x, p, np.random.default_rng(7), train=train)
    np.testing.assert_array_equal(out, x)
    np.testing.assert_array_equal(dropout_backward(2 * x, cache), 2 * x)


def test_dropout_float32_stays_float32():
    out, cache = dropout_forward(randn(np.random.default_rng(8), 3, 7, C, dtype=np.float32), P, np.random.default_rng(9))
    assert out.dtype == np.float32
    assert dropout_backward(out, cache).dtype == np.float32


def test_dropout_numpy_float_p_keeps_float32():
    # NumPy 2: float32 array / np.float64 scalar is float64; p read from a NumPy array must not upcast
    out, cache = dropout_forward(randn(np.random.default_rng(8), 3, 7, C, dtype=np.float32), np.float64(P),
                                 np.random.default_rng(9))
    assert out.dtype == np.float32 and dropout_backward(out, cache).dtype == np.float32


@DTYPES
def test_dropout_matches_torch_with_the_same_mask(dtype):
    """torch's RNG differs from NumPy's, so torch applies OUR mask (read off our output) by hand."""
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(10)
    x, dout = randn(rng, 3, 7, C, dtype=dtype), randn(rng, 3, 7, C, dtype=dtype)
    out, cache = dropout_forward(x, P, np.random.default_rng(11))
    dx = dropout_backward(dout, cache)
    keep = torch.tensor(out != 0)
    tx = leaf(torch, x)
    tout = tx * keep / (1 - P)
    tout.backward(torch.tensor(dout))
    assert_matches_torch(out, tout)
    assert_matches_torch(dx, tx.grad)


@pytest.mark.parametrize("p", [1.0, -0.1, 1.5])
def test_dropout_bad_p_is_error(p):
    with pytest.raises(ValueError, match=f"p={p}"):
        dropout_forward(np.ones(3), p, np.random.default_rng(0))
