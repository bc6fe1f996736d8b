import warnings

import numpy as np
import pytest

from minigpt.layers.activations import ACTIVATIONS, get_activation
from layer_testing import BT, DTYPES, C, assert_gradients, assert_matches_torch, leaf, randn

NAMES = pytest.mark.parametrize("name", sorted(ACTIVATIONS))


def torch_activation(torch, name):
    F = torch.nn.functional
    return {"relu": F.relu,
            "gelu": lambda x: F.gelu(x, approximate="none"),
            "gelu_tanh": lambda x: F.gelu(x, approximate="tanh"),
            "silu": F.silu}[name]


@NAMES
@BT
def test_activation_gradients(name, B, T):
    forward, backward = ACTIVATIONS[name]
    rng = np.random.default_rng(0)
    x = 2 * randn(rng, B, T, C)
    assert_gradients(forward, lambda dout, cache: (backward(dout, cache),), [x], ["x"], ["x"])


@NAMES
def test_activation_float32_stays_float32(name):
    forward, backward = ACTIVATIONS[name]
    out, cache = forward(randn(np.random.default_rng(1), 3, 7, C, dtype=np.float32))
    assert out.dtype == np.float32
    assert backward(out, cache).dtype == np.float32


@NAMES
@DTYPES
def test_activation_matches_torch(name, dtype):
    torch = pytest.importorskip("torch")
    forward, backward = ACTIVATIONS[name]
    rng = np.random.default_rng(2)
    x, dout = 3 * randn(rng, 3, 7, C, dtype=dtype), randn(rng, 3, 7, C, dtype=dtype)
    out, cache = forward(x)
    dx = backward(dout, cache)
    tx = leaf(torch, x)
    tout = torch_activation(torch, name)(tx)
    tout.backward(torch.tensor(dout))
    assert_matches_torch(out, tout)
    assert_matches_torch(dx, tx.grad)


@NAMES
@pytest.mark.parametrize("x", [np.float64(0.7), np.array(-1.3), np.array([[0.4]])], ids=["scalar", "0-d", "2-d"])
def test_activation_takes_any_shape_even_a_scalar(name, x):
    """Elementwise means any shape: a NumPy scalar or 0-d array too (lesson 16 asks SiLU'(x) at one x); the
    in-place updates of GELU-tanh and SiLU must not assume an array they can write into."""
    forward, backward = ACTIVATIONS[name]
    big, big_cache = forward(np.full((2, 3), float(x.ravel()[0]) if np.ndim(x) else float(x)))
    out, cache = forward(x)
    dx = backward(np.ones_like(x), cache)
    assert np.shape(out) == np.shape(x) == np.shape(dx)
    assert np.allclose(out, big.ravel()[0], rtol=1e-15, atol=0)
    assert np.allclose(dx, backward(np.ones_like(big), big_cache).ravel()[0], rtol=1e-15, atol=0)


@NAMES
def test_activation_extreme_inputs_are_finite_and_quiet(name):
    forward, backward = ACTIVATIONS[name]
    x = np.array([-1e4, -100.0, 100.0, 1e4], dtype=np.float32)
    with warnings.catch_warnings():
        warnings.simplefilter("error")                   # an overflow in exp would be a RuntimeWarning
        out, cache = forward(x)
        dx = backward(np.ones_like(x), cache)
    np.testing.assert_allclose(out, [0, 0, 100, 1e4], atol=1e-6)
    np.testing.assert_allclose(dx, [0, 0, 1, 1], atol=1e-6)


def test_unknown_activation_is_error():
    with pytest.raises(ValueError, match="'swish'.*gelu_tanh"):
        get_activation("swish")
