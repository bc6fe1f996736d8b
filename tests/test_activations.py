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
