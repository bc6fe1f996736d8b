"""The fused LayerNorm and RMSNorm kernels (minigpt.kernels.norms_cpu) against the NumPy reference they compile."""
import numpy as np
import pytest

from minigpt.config import ModelConfig
from minigpt.kernels import norms_cpu
from minigpt.layers import norms
from minigpt.layers.loss import cross_entropy
from minigpt.model import Model

EPS32 = float(np.finfo(np.float32).eps)


def inputs(shape=(3, 7, 37), seed=0):
    """float32 rows with an offset and a spread that differ per row (a LayerNorm's input is not centred)."""
    rng = np.random.default_rng(seed)
    rows = shape[:-1] + (1,)
    x = rng.standard_normal(shape) * rng.uniform(0.1, 10, rows) + rng.uniform(-5, 5, rows)
    w, b = rng.standard_normal(shape[-1]), rng.standard_normal(shape[-1])
    return x.astype(np.float32), w.astype(np.float32), b.astype(np.float32), rng.standard_normal(shape).astype(np.float32)


def bound(C, *scales):
    """A float32 sum of C terms is off by at most about log2(C) (pairwise, NumPy) plus a few (8 partial sums,
    here) ulps of the sum of their sizes; every output is a handful of operations on such sums. Allow
    (log2 C + 16) ulps of the product of the sizes involved."""
    size = 1.0
    for s in scales:
        size = size * s
    return (np.log2(C) + 16) * EPS32 * size


def test_layernorm_forward_and_backward_equal_the_reference():
    x, w, b, dout = inputs()
    C = x.shape[-1]
    out, cache = norms_cpu.layernorm_forward(x, w, b, 1e-5)
    ref, ref_cache = norms.layernorm_forward(x, w, b, 1e-5)
    assert out.dtype == np.float32 and out.shape == x.shape and cache.rstd.shape == ref_cache.rstd.shape
    xhat_size = np.abs(ref_cache.xhat).max()
    assert np.all(np.abs(cache.xhat - ref_cache.xhat) <= bound(C, 1 + xhat_size))
    assert np.all(np.abs(out - ref) <= bound(C, 1 + xhat_size, np.abs(w) + np.abs(b)))
    np.testing.assert_allclose(cache.rstd, ref_cache.rstd, rtol=bound(C, 1))
    dx, dw, db = norms_cpu.layernorm_backward(dout, ref_cache)
    ref_dx, ref_dw, ref_db = norms.layernorm_backward(dout, ref_cache)
    g_size = np.abs(dout * w).max() * (1 + xhat_size)
    assert np.all(np.abs(dx - ref_dx) <= bound(C, g_size, ref_cache.rstd))
    N = x.size // C
    assert np.all(np.abs(dw - ref_dw) <= bound(N, np.abs(dout * ref_cache.xhat).reshape(-1, C).sum(axis=0)))
    assert np.all(np.abs(db - ref_db) <= bound(N, np.abs(dout).reshape(-1, C).sum(axis=0)))


def test_rmsnorm_forward_and_backward_equal_the_reference():
    x, w, _, dout = inputs(seed=1)
    C = x.shape[-1]
    out, cache = norms_cpu.rmsnorm_forward(x, w, 1e-6)
    ref, ref_cache = norms.rmsnorm_forward(x, w, 1e-6)
    assert out.dtype == np.float32 and out.shape == x.shape and cache.rstd.shape == ref_cache.rstd.shape
    assert np.all(np.abs(cache.xhat - ref_cache.xhat) <= bound(C, np.abs(ref_cache.xhat) + 1))
    assert np.all(np.abs(out - ref) <= bound(C, np.abs(ref_cache.xhat) + 1, np.abs(w)))
    dx, dw = norms_cpu.rmsnorm_backward(dout, cache)
    ref_dx, ref_dw = norms.rmsnorm_backward(dout, ref_cache)
    g_size = np.abs(dout * w).max() * (1 + np.abs(ref_cache.xhat).max())
    assert np.all(np.abs(dx - ref_dx) <= bound(C, g_size, ref_cache.rstd))
    N = x.size // C
    assert np.all(np.abs(dw - ref_dw) <= bound(N, np.abs(dout * ref_cache.xhat).reshape(-1, C).sum(axis=0)))


def test_non_contiguous_input_and_nan_pass_through():
    x, w, b, _ = inputs((4, 6, 10), seed=2)
    view = x.transpose(1, 0, 2)                                           # rows not contiguous
    np.testing.assert_array_equal(norms_cpu.layernorm_forward(view, w, b)[0],
                                  norms_cpu.layernorm_forward(np.ascontiguousarray(view), w, b)[0])
    bad = x.copy()
    bad[1, 2, 3] = np.nan
    out = norms_cpu.rmsnorm_forward(bad, w)[0]
    assert np.isnan(out[1, 2]).all() and not np.isnan(np.delete(out.reshape(-1, 10), 8, axis=0)).any()


def test_refuses_what_it_was_not_compiled_for():
    x, w, b, _ = inputs((2, 3, 4))
    with pytest.raises(ValueError, match="fused LayerNorm: expected a float32 NumPy array, got ndarray float64"):
        norms_cpu.layernorm_forward(x.astype(np.float64), w, b)
    with pytest.raises(ValueError, match=r"rmsnorm w has shape \(3,\), expected \(4,\)"):
        norms_cpu.rmsnorm_forward(x, w[:3])
    _, cache = norms_cpu.rmsnorm_forward(x, w)
    with pytest.raises(ValueError, match=r"fused RMSNorm: dout \(3, 2, 4\) must have the shape of the forward's x"):
        norms_cpu.rmsnorm_backward(x.transpose(1, 0, 2), cache)


@pytest.mark.parametrize("preset", ["gpt2", "llama"])
def test_a_float32_model_uses_them_and_agrees_with_the_reference(preset, monkeypatch):
    """A float32 model on the CPU runs its norms fused; with the reference module instead, the same loss and
    gradients to float32 accuracy (every gradient within 1e-4 of the largest gradient entry)."""
    cfg = ModelConfig.preset(preset, n_layer=2, d_model=32, n_head=4, vocab_size=50, max_seq_len=16)
    ids = np.random.default_rng(3).integers(0, 50, size=(2, 17))
    results = []
    for module in (norms_cpu, norms):
        model = Model(cfg, seed=0)
        assert model._norms() is norms_cpu and Model(cfg, dtype="float64")._norms() is norms
        monkeypatch.setattr(model, "_norms", lambda module=module: module)
        loss, dlogits = cross_entropy(model.forward(ids[:, :-1]), ids[:, 1:])
        model.backward(dlogits)
        results.append((loss, model.grads))
    (loss_a, grads_a), (loss_b, grads_b) = results
    assert abs(loss_a - loss_b) < 1e-5
    scale = max(float(np.abs(g).max()) for g in grads_b.values())
    for key in grads_a:
        assert np.abs(grads_a[key] - grads_b[key]).max() <= 1e-4 * scale, key
