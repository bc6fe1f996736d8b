import re

import numpy as np
import pytest

from minigpt.layers.norms import (layernorm_backward, layernorm_forward, qk_norm_backward, qk_norm_forward,
                                  rmsnorm_backward, rmsnorm_forward)
from layer_testing import BT, DTYPES, C, assert_gradients, assert_matches_torch, leaf, randn

H = 4                                                      # query heads; Hkv in {1, 2, 4} below
HKV = pytest.mark.parametrize("Hkv", [1, 2, 4])
HEAD_DIMS = pytest.mark.parametrize("D", [6, 10])


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


# ---------------------------------------------------------------- QK-norm (Qwen3)

def qk_args(rng, B, T, Hkv, D, dtype=np.float64):
    """q (B, H, T, D), k (B, Hkv, T, D) off centre and not unit-sized, scales near 1: q, k, q_w, k_w."""
    q, k = 1 + 3 * randn(rng, B, H, T, D, dtype=dtype), 2 * randn(rng, B, Hkv, T, D, dtype=dtype)
    q_w, k_w = 1 + 0.3 * randn(rng, D, dtype=dtype), 1 + 0.3 * randn(rng, D, dtype=dtype)
    return [q, k, q_w, k_w]


def qk_norm_one_output(q, k, q_w, k_w):
    """qk_norm_forward as check_gradients wants a layer: one output, q_out and k_out flattened end to end."""
    q_out, k_out, cache = qk_norm_forward(q, k, q_w, k_w)
    return np.concatenate([q_out.reshape(-1), k_out.reshape(-1)]), (q_out.shape, k_out.shape, cache)


def qk_norm_one_output_backward(dout, packed):
    q_shape, k_shape, cache = packed
    n = int(np.prod(q_shape))
    return qk_norm_backward(dout[:n].reshape(q_shape), dout[n:].reshape(k_shape), cache)


@BT
@HKV
@HEAD_DIMS
def test_qk_norm_gradients(B, T, Hkv, D):
    rng = np.random.default_rng(7)
    names = ["q", "k", "q_w", "k_w"]
    assert_gradients(qk_norm_one_output, qk_norm_one_output_backward, qk_args(rng, B, T, Hkv, D), names, names)


def test_qk_norm_is_rmsnorm_of_each_head_vector():
    rng = np.random.default_rng(8)
    q, k, q_w, k_w = qk_args(rng, 3, 7, 2, 6)
    q_out, k_out, _ = qk_norm_forward(q, k, q_w, k_w, eps=0.0)
    for h in range(H):                                     # one head at a time, as a (B, T, D) RMSNorm
        np.testing.assert_allclose(q_out[:, h], rmsnorm_forward(q[:, h], q_w, eps=0.0)[0], rtol=1e-14)
    unit_q, unit_k, _ = qk_norm_forward(q, k, np.ones(6), np.ones(6), eps=0.0)
    np.testing.assert_allclose(np.sqrt((unit_q * unit_q).mean(axis=-1)), 1, rtol=1e-12)
    np.testing.assert_allclose(np.sqrt((unit_k * unit_k).mean(axis=-1)), 1, rtol=1e-12)


def test_qk_norm_bounds_attention_logits():
    # however large q and k grow, |q . k| / sqrt(D) <= sqrt(D) * max|q_w| * max|k_w| after the norm
    rng = np.random.default_rng(9)
    D = 10
    q, k, q_w, k_w = qk_args(rng, 2, 7, 2, D)
    q, k = 1e4 * q, 1e4 * k
    q_out, k_out, _ = qk_norm_forward(q, k, q_w, k_w)
    logits = q_out[:, :2] @ k_out.swapaxes(-1, -2) / np.sqrt(D)           # (2, 2, 7, 7): heads 0, 1 read kv 0, 1
    assert np.abs(q[:, :2] @ k.swapaxes(-1, -2) / np.sqrt(D)).max() > 1e8
    assert np.abs(logits).max() <= np.sqrt(D) * np.abs(q_w).max() * np.abs(k_w).max()


def test_qk_norm_float32_stays_float32():
    rng = np.random.default_rng(10)
    q, k, q_w, k_w = qk_args(rng, 3, 7, 2, 6, dtype=np.float32)
    q_out, k_out, cache = qk_norm_forward(q, k, q_w, k_w, eps=np.float64(1e-6))
    assert q_out.dtype == k_out.dtype == np.float32
    grads = qk_norm_backward(q_out, k_out, cache)
    assert [g.dtype for g in grads] == [np.float32] * 4
    assert [g.shape for g in grads] == [q.shape, k.shape, q_w.shape, k_w.shape]


def torch_qwen3_rmsnorm(torch, x, w, eps):
    """Qwen3RMSNorm.forward of transformers (modeling_qwen3), written out; its cast to float32 is left out
    because this test runs in float64."""
    variance = x.pow(2).mean(-1, keepdim=True)
    return w * (x * torch.rsqrt(variance + eps))


@HKV
def test_qk_norm_matches_qwen3_torch(Hkv):
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(11)
    B, T, D, eps = 3, 7, 10, 1e-6
    q, k, q_w, k_w = qk_args(rng, B, T, Hkv, D)
    dq_out, dk_out = randn(rng, B, H, T, D), randn(rng, B, Hkv, T, D)
    q_out, k_out, cache = qk_norm_forward(q, k, q_w, k_w, eps)
    dq, dk, dq_w, dk_w = qk_norm_backward(dq_out, dk_out, cache)
    # Qwen3Attention normalizes q_proj(x).view(B, T, H, D), then transposes to (B, H, T, D)
    tq, tk = leaf(torch, q.transpose(0, 2, 1, 3)), leaf(torch, k.transpose(0, 2, 1, 3))   # (B, T, H|Hkv, D)
    tq_w, tk_w = leaf(torch, q_w), leaf(torch, k_w)
    tq_out = torch_qwen3_rmsnorm(torch, tq, tq_w, eps).transpose(1, 2)                     # (B, H, T, D)
    tk_out = torch_qwen3_rmsnorm(torch, tk, tk_w, eps).transpose(1, 2)                     # (B, Hkv, T, D)
    ((tq_out * torch.tensor(dq_out)).sum() + (tk_out * torch.tensor(dk_out)).sum()).backward()
    for ours, theirs in [(q_out, tq_out), (k_out, tk_out), (dq, tq.grad.transpose(1, 2)),
                         (dk, tk.grad.transpose(1, 2)), (dq_w, tq_w.grad), (dk_w, tk_w.grad)]:
        assert_matches_torch(ours, theirs)


@pytest.mark.parametrize("which, shape", [("q_w", (5,)), ("k_w", (6, 1)), ("k_w", (10,))])
def test_qk_norm_weight_shape_is_error(which, shape):
    q, k, q_w, k_w = qk_args(np.random.default_rng(12), 1, 3, 2, 6)
    args = dict(q=q, k=k, q_w=q_w, k_w=k_w)
    args[which] = np.ones(shape)
    with pytest.raises(ValueError, match=re.escape(f"qk_norm {which} has shape {shape}, expected (6,)")):
        qk_norm_forward(**args)


def test_qk_norm_head_dims_differ_is_error():
    rng = np.random.default_rng(13)
    q, k = randn(rng, 1, 4, 3, 6), randn(rng, 1, 2, 3, 8)
    with pytest.raises(ValueError, match=re.escape("q (1, 4, 3, 6) has head dim D=6 but k (1, 2, 3, 8) has D=8")):
        qk_norm_forward(q, k, np.ones(6), np.ones(8))


def test_qk_norm_unsplit_heads_is_error():
    rng = np.random.default_rng(14)
    with pytest.raises(ValueError, match=re.escape("got (1, 3, 24) and (1, 2, 3, 6)")):
        qk_norm_forward(randn(rng, 1, 3, 24), randn(rng, 1, 2, 3, 6), np.ones(6), np.ones(6))


@pytest.mark.parametrize("bad, message", [
    ("k", "q has dtype float32 but k has dtype float64"),
    ("q_w", "qk_norm q_w has dtype float64 but x has dtype float32"),
    ("k_w", "qk_norm k_w has dtype float64 but x has dtype float32"),
])
def test_qk_norm_mixed_dtypes_is_error(bad, message):
    args = dict(zip(["q", "k", "q_w", "k_w"], qk_args(np.random.default_rng(15), 1, 3, 2, 6, dtype=np.float32)))
    args[bad] = args[bad].astype(np.float64)
    with pytest.raises(ValueError, match=message):
        qk_norm_forward(**args)
