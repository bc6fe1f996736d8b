import numpy as np
import pytest

from minigpt.layers.softmax import softmax_backward, softmax_forward
from layer_testing import BT, DTYPES, C, assert_gradients, assert_matches_torch, leaf, randn


@BT
@pytest.mark.parametrize("axis", [-1, 1])
def test_softmax_gradients(B, T, axis):
    rng = np.random.default_rng(0)
    assert_gradients(lambda x: softmax_forward(x, axis), lambda dout, cache: (softmax_backward(dout, cache),),
                     [2 * randn(rng, B, T, C)], ["x"], ["x"])


def test_softmax_rows_are_probabilities_even_for_huge_scores():
    x = np.array([[1000.0, 1000.0, -1000.0], [0.0, 0.0, 0.0]])
    y, _ = softmax_forward(x)
    np.testing.assert_allclose(y, [[0.5, 0.5, 0.0], [1 / 3, 1 / 3, 1 / 3]], atol=1e-15)


def test_softmax_float32_stays_float32():
    y, cache = softmax_forward(randn(np.random.default_rng(1), 3, 7, C, dtype=np.float32))
    assert y.dtype == np.float32
    assert softmax_backward(y, cache).dtype == np.float32


@DTYPES
@pytest.mark.parametrize("axis", [-1, 1])
def test_softmax_matches_torch(dtype, axis):
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(2)
    x, dout = 3 * randn(rng, 3, 7, C, dtype=dtype), randn(rng, 3, 7, C, dtype=dtype)
    y, cache = softmax_forward(x, axis)
    dx = softmax_backward(dout, cache)
    tx = leaf(torch, x)
    ty = torch.nn.functional.softmax(tx, dim=axis)
    ty.backward(torch.tensor(dout))
    assert_matches_torch(y, ty)
    assert_matches_torch(dx, tx.grad)
