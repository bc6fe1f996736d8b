import re

import numpy as np
import pytest

from minigpt.layers.linear import linear_backward, linear_forward
from layer_testing import BT, DTYPES, C, assert_gradients, assert_matches_torch, leaf, randn

COUT = 10


@BT
@pytest.mark.parametrize("bias", [True, False])
def test_linear_gradients(B, T, bias):
    rng = np.random.default_rng(0)
    x, w = randn(rng, B, T, C), randn(rng, C, COUT)
    b = randn(rng, COUT) if bias else None
    expected = ["x", "w", "b"] if bias else ["x", "w"]
    assert_gradients(linear_forward, linear_backward, [x, w, b], ["x", "w", "b"], expected)


def test_linear_gradients_two_dimensional_input():
    rng = np.random.default_rng(1)
    assert_gradients(linear_forward, linear_backward,
                     [randn(rng, 5, C), randn(rng, C, COUT), randn(rng, COUT)], ["x", "w", "b"], ["x", "w", "b"])


def test_linear_no_bias_gives_none():
    rng = np.random.default_rng(2)
    out, cache = linear_forward(randn(rng, 2, 3, C), randn(rng, C, COUT))
    assert linear_backward(out, cache)[2] is None


def test_linear_float32_stays_float32():
    rng = np.random.default_rng(3)
    x, w, b = (randn(rng, *s, dtype=np.float32) for s in [(3, 7, C), (C, COUT), (COUT,)])
    out, cache = linear_forward(x, w, b)
    assert out.dtype == np.float32
    assert all(g.dtype == np.float32 for g in linear_backward(out, cache))


@DTYPES
@pytest.mark.parametrize("bias", [True, False])
def test_linear_matches_torch(dtype, bias):
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(4)
    x, w, b, dout = randn(rng, 3, 7, C, dtype=dtype), randn(rng, C, COUT, dtype=dtype), \
        randn(rng, COUT, dtype=dtype), randn(rng, 3, 7, COUT, dtype=dtype)
    out, cache = linear_forward(x, w, b if bias else None)
    dx, dw, db = linear_backward(dout, cache)
    tx, tw, tb = leaf(torch, x), leaf(torch, w), leaf(torch, b)
    tout = torch.nn.functional.linear(tx, tw.T, tb if bias else None)    # torch keeps weights as (Cout, Cin)
    tout.backward(torch.tensor(dout))
    assert_matches_torch(out, tout)
    assert_matches_torch(dx, tx.grad)
    assert_matches_torch(dw, tw.grad)
    if bias:
        assert_matches_torch(db, tb.grad)


def test_linear_shape_mismatch_is_error():
    with pytest.raises(ValueError, match=re.escape("(2, 3, 5)") + ".*" + re.escape("(4, 6)")):
        linear_forward(np.zeros((2, 3, 5)), np.zeros((4, 6)))


def test_linear_bias_shape_is_error():
    with pytest.raises(ValueError, match=re.escape("b has shape (5,)") + ".*" + re.escape("(6,)")):
        linear_forward(np.zeros((2, 4)), np.zeros((4, 6)), np.zeros(5))


def test_linear_mixed_dtypes_is_error():
    x, w = np.zeros((2, 3), dtype=np.float32), np.zeros((3, 4), dtype=np.float64)
    with pytest.raises(ValueError, match="float32, float64, None"):
        linear_forward(x, w)
    with pytest.raises(ValueError, match="float64, float64, float32"):
        linear_forward(x.astype(np.float64), w, np.zeros(4, dtype=np.float32))
