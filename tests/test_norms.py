import re

import numpy as np
import pytest

from minigpt.layers.norms import layernorm_backward, layernorm_forward, rmsnorm_backward, rmsnorm_forward
from layer_testing import BT, DTYPES, C, assert_gradients, assert_matches_torch, leaf, randn


def params(rng, dtype=np.float64):
    """A scale near 1 and a shift near 0, but not exactly: a bug that ignores them must show."""
    return 1 + 0.3 * randn(rng, C, dtype=dtype), 0.3 * randn(rng, C, dtype=dtype)


@BT
def test_layernorm_gradients(B, T):
    rng = np.random.default_rng(0)
    w, b = params(rng)
    assert_gradients(layernorm_forward, layernorm_backward, [2 + 3 * randn(rng, B, T, C), w, b],
                     ["x", "w", "b"], ["x", "w", "b"])


@BT
def test_rmsnorm_gradients(B, T):
    rng = np.random.default_rng(1)
    w, _ = params(rng)
    assert_gradients(rmsnorm_forward, rmsnorm_backward, [2 + 3 * randn(rng, B, T, C), w], ["x", "w"], ["x", "w"])


def test_layernorm_normalizes_each_vector():
    rng = np.random.default_rng(2)
    out, _ = layernorm_forward(5 + 4 * randn(rng, 3, 7, C), np.ones(C), np.zeros(C), eps=0.0)
    np.testing.assert_allclose(out.mean(axis=-1), 0, atol=1e-12)
    np.testing.assert_allclose(out.var(axis=-1), 1, rtol=1e-12)


def test_rmsnorm_gives_unit_root_mean_square():
    rng = np.random.default_rng(3)
    out, _ = rmsnorm_forward(5 + 4 * randn(rng, 3, 7, C), np.ones(C), eps=0.0)
    np.testing.assert_allclose(np.sqrt((out * out).mean(axis=-1)), 1, rtol=1e-12)


def test_norms_float32_stay_float32():
    rng = np.random.default_rng(4)
    x = randn(rng, 3, 7, C, dtype=np.float32)
    w, b = params(rng, np.float32)
    for forward, backward, args in [(layernorm_forward, layernorm_backward, (x, w, b)),
                                    (rmsnorm_forward, rmsnorm_backward, (x, w))]:
        out, cache = forward(*args)
        assert out.dtype == np.float32
        assert all(g.dtype == np.float32 for g in backward(out, cache))


def test_norms_numpy_float_eps_keeps_float32():
    # NumPy 2: float32 array + np.float64 scalar is float64; an eps read from a NumPy array must not upcast
    rng = np.random.default_rng(4)
    x = randn(rng, 3, 7, C, dtype=np.float32)
    w, b = params(rng, np.float32)
    assert layernorm_forward(x, w, b, eps=np.float64(1e-5))[0].dtype == np.float32
    assert rmsnorm_forward(x, w, eps=np.float64(1e-6))[0].dtype == np.float32


@DTYPES
def test_layernorm_matches_torch(dtype):
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(5)
    x, dout = 2 + 3 * randn(rng, 3, 7, C, dtype=dtype), randn(rng, 3, 7, C, dtype=dtype)
    w, b = params(rng, dtype)
    out, cache = layernorm_forward(x, w, b, eps=1e-5)
    dx, dw, db = layernorm_backward(dout, cache)
    tx, tw, tb = leaf(torch, x), leaf(torch, w), leaf(torch, b)
    tout = torch.nn.functional.layer_norm(tx, (C,), tw, tb, eps=1e-5)
    tout.backward(torch.tensor(dout))
    for ours, theirs in [(out, tout), (dx, tx.grad), (dw, tw.grad), (db, tb.grad)]:
        assert_matches_torch(ours, theirs)


@DTYPES
def test_rmsnorm_matches_torch(dtype):
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(6)
    x, dout = 2 + 3 * randn(rng, 3, 7, C, dtype=dtype), randn(rng, 3, 7, C, dtype=dtype)
    w, _ = params(rng, dtype)
    out, cache = rmsnorm_forward(x, w, eps=1e-6)
    dx, dw = rmsnorm_backward(dout, cache)
    tx, tw = leaf(torch, x), leaf(torch, w)
    tout = torch.nn.functional.rms_norm(tx, (C,), tw, eps=1e-6)
    tout.backward(torch.tensor(dout))
    for ours, theirs in [(out, tout), (dx, tx.grad), (dw, tw.grad)]:
        assert_matches_torch(ours, theirs)


def test_layernorm_weight_shape_is_error():
    with pytest.raises(ValueError, match=re.escape("w has shape (5,), expected (12,)")):
        layernorm_forward(np.zeros((2, 3, C)), np.ones(5), np.zeros(C))


def test_layernorm_bias_shape_is_error():
    with pytest.raises(ValueError, match=re.escape("b has shape (1, 12), expected (12,)")):
        layernorm_forward(np.zeros((2, 3, C)), np.ones(C), np.zeros((1, C)))


def test_rmsnorm_weight_shape_is_error():
    with pytest.raises(ValueError, match=re.escape("w has shape (13,), expected (12,)")):
        rmsnorm_forward(np.zeros((2, 3, C)), np.ones(13))


@pytest.mark.parametrize("norm", ["layernorm", "rmsnorm"])
def test_norm_mixed_dtypes_is_error(norm):
    x = np.zeros((2, 3, 12), dtype=np.float32)
    w, b = np.ones(12), np.zeros(12, dtype=np.float32)
    with pytest.raises(ValueError, match="w has dtype float64 but x has dtype float32"):
        layernorm_forward(x, w, b) if norm == "layernorm" else rmsnorm_forward(x, w)
