import re

import numpy as np
import pytest

from minigpt.layers.mlp import (gated_mlp_backward, gated_mlp_forward, glu_backward, glu_forward, mlp_backward,
                                mlp_forward)
from layer_testing import BT, DTYPES, C, assert_gradients, assert_matches_torch, leaf, randn

F_ = 20  # hidden size, not divisible by 8


def mlp_args(rng, B, T, bias, dtype=np.float64):
    x = randn(rng, B, T, C, dtype=dtype)
    w_up, w_down = 0.3 * randn(rng, C, F_, dtype=dtype), 0.3 * randn(rng, F_, C, dtype=dtype)
    b_up = 0.3 * randn(rng, F_, dtype=dtype) if bias else None
    b_down = 0.3 * randn(rng, C, dtype=dtype) if bias else None
    return [x, w_up, b_up, w_down, b_down]


def gated_args(rng, B, T, dtype=np.float64):
    return [randn(rng, B, T, C, dtype=dtype), 0.3 * randn(rng, C, F_, dtype=dtype),
            0.3 * randn(rng, C, F_, dtype=dtype), 0.3 * randn(rng, F_, C, dtype=dtype)]


MLP_NAMES = ["x", "w_up", "b_up", "w_down", "b_down"]
GATED_NAMES = ["x", "w_gate", "w_up", "w_down"]


@BT
@pytest.mark.parametrize("activation", ["gelu_tanh", "gelu", "relu", "silu"])
def test_mlp_gradients(B, T, activation):
    rng = np.random.default_rng(0)
    assert_gradients(lambda *a: mlp_forward(*a, activation=activation), mlp_backward,
                     mlp_args(rng, B, T, bias=True), MLP_NAMES, MLP_NAMES)


def test_mlp_gradients_without_biases():
    rng = np.random.default_rng(1)
    assert_gradients(mlp_forward, mlp_backward, mlp_args(rng, 3, 7, bias=False), MLP_NAMES, ["x", "w_up", "w_down"])


@BT
@pytest.mark.parametrize("activation", ["silu", "gelu", "gelu_tanh"])
def test_gated_mlp_gradients(B, T, activation):
    rng = np.random.default_rng(2)
    assert_gradients(lambda *a: gated_mlp_forward(*a, activation=activation), gated_mlp_backward,
                     gated_args(rng, B, T), GATED_NAMES, GATED_NAMES)


@BT
@pytest.mark.parametrize("activation", ["silu", "gelu", "gelu_tanh"])
def test_glu_gradients(B, T, activation):
    """The gate a = act(g) * u alone: both inputs."""
    rng = np.random.default_rng(4)
    args = [randn(rng, B, T, F_), randn(rng, B, T, F_)]
    assert_gradients(lambda g, u: glu_forward(g, u, activation), glu_backward, args, ["g", "u"], ["g", "u"])


def test_mlps_float32_stay_float32():
    rng = np.random.default_rng(3)
    for forward, backward, args in [(mlp_forward, mlp_backward, mlp_args(rng, 3, 7, True, np.float32)),
                                    (gated_mlp_forward, gated_mlp_backward, gated_args(rng, 3, 7, np.float32))]:
        out, cache = forward(*args)
        assert out.dtype == np.float32
        assert all(g.dtype == np.float32 for g in backward(out, cache))


TORCH_ACT = {"gelu_tanh": lambda F, h: F.gelu(h, approximate="tanh"), "gelu": lambda F, h: F.gelu(h),
             "relu": lambda F, h: F.relu(h), "silu": lambda F, h: F.silu(h)}


@DTYPES
@pytest.mark.parametrize("activation", ["gelu_tanh", "gelu", "relu", "silu"])
@pytest.mark.parametrize("bias", [True, False])
def test_mlp_matches_torch(dtype, activation, bias):
    torch = pytest.importorskip("torch")
    F = torch.nn.functional
    rng = np.random.default_rng(4)
    args = mlp_args(rng, 3, 7, bias, dtype)
    dout = randn(rng, 3, 7, C, dtype=dtype)
    out, cache = mlp_forward(*args, activation=activation)
    grads = mlp_backward(dout, cache)
    tx, tw_up, tb_up, tw_down, tb_down = (leaf(torch, a) if a is not None else None for a in args)
    h = TORCH_ACT[activation](F, F.linear(tx, tw_up.T, tb_up))
    tout = F.linear(h, tw_down.T, tb_down)
    tout.backward(torch.tensor(dout))
    assert_matches_torch(out, tout)
    for ours, t in zip(grads, (tx, tw_up, tb_up, tw_down, tb_down)):
        if t is None:
            assert ours is None
        else:
            assert_matches_torch(ours, t.grad)


@DTYPES
@pytest.mark.parametrize("activation", ["silu", "gelu", "gelu_tanh"])
def test_gated_mlp_matches_torch(dtype, activation):
    torch = pytest.importorskip("torch")
    F = torch.nn.functional
    rng = np.random.default_rng(5)
    args = gated_args(rng, 3, 7, dtype)
    dout = randn(rng, 3, 7, C, dtype=dtype)
    out, cache = gated_mlp_forward(*args, activation=activation)
    grads = gated_mlp_backward(dout, cache)
    tx, tw_gate, tw_up, tw_down = (leaf(torch, a) for a in args)
    tout = (TORCH_ACT[activation](F, tx @ tw_gate) * (tx @ tw_up)) @ tw_down
    tout.backward(torch.tensor(dout))
    assert_matches_torch(out, tout)
    for ours, t in zip(grads, (tx, tw_gate, tw_up, tw_down)):
        assert_matches_torch(ours, t.grad)


def test_mlp_unknown_activation_is_error():
    rng = np.random.default_rng(6)
    with pytest.raises(ValueError, match="'swiglu'.*silu"):
        mlp_forward(*mlp_args(rng, 1, 2, True), activation="swiglu")


def test_gated_mlp_shape_mismatch_is_error():
    rng = np.random.default_rng(7)
    x, w_gate, w_up, w_down = gated_args(rng, 1, 2)
    with pytest.raises(ValueError, match=re.escape(f"(1, 2, {C})") + ".*" + re.escape(f"({C + 1}, {F_})")):
        gated_mlp_forward(x, w_gate, randn(rng, C + 1, F_), w_down)
