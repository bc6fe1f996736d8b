"""The fused GELU-tanh kernel (minigpt.kernels.elementwise_cpu) against the NumPy reference it compiles."""
import numpy as np
import pytest

from minigpt.config import ModelConfig
from minigpt.kernels.elementwise_cpu import gelu_tanh_backward, gelu_tanh_forward
from minigpt.layers import activations
from minigpt.layers.loss import cross_entropy
from minigpt.model import Model


def inputs(shape=(3, 7, 37), seed=0):
    """float32 inputs over the range an MLP sees and beyond (|x| up to ~20: tanh saturated both ways)."""
    rng = np.random.default_rng(seed)
    x = (rng.standard_normal(shape) * rng.choice([0.01, 1.0, 6.0], size=shape)).astype(np.float32)
    return x, rng.standard_normal(shape).astype(np.float32)


def test_forward_equals_the_reference_to_float32_rounding():
    """tanh through exp: 1 - 2/(e + 1) loses about two float32 ulps of 1 (2.4e-7) in t near u = 0, and out is
    0.5 x (1 + t): so |out - reference| <= 4e-7 (1 + |x|) and |t - reference| <= 4e-7."""
    x, _ = inputs()
    out, cache = gelu_tanh_forward(x)
    ref_out, ref_cache = activations.gelu_tanh_forward(x)
    assert out.dtype == np.float32 and out.shape == x.shape
    assert np.all(np.abs(cache.tanh_u - ref_cache.tanh_u) <= 4e-7)
    assert np.all(np.abs(out - ref_out) <= 4e-7 * (1 + np.abs(x)))


def test_backward_equals_the_reference_and_the_caches_interchange():
    """From the same cache the fused backward is the reference formula in one loop: float32 rounding of a
    handful of operations, 1e-6 relative to |dout| (1 + |x|). Either backward follows either forward."""
    x, dout = inputs(seed=1)
    _, cache = activations.gelu_tanh_forward(x)
    dx = gelu_tanh_backward(dout, cache)
    ref = activations.gelu_tanh_backward(dout, cache)
    assert np.all(np.abs(dx - ref) <= 1e-6 * np.abs(dout) * (1 + np.abs(x)))
    _, fused_cache = gelu_tanh_forward(x)
    mixed = activations.gelu_tanh_backward(dout, fused_cache)
    assert np.all(np.abs(mixed - ref) <= 1e-6 * np.abs(dout) * (1 + np.abs(x)))


def test_non_contiguous_input_and_nan_pass_through():
    x, dout = inputs((4, 6, 10), seed=2)
    view = x.transpose(2, 0, 1)                                           # not contiguous
    out, cache = gelu_tanh_forward(view)
    np.testing.assert_array_equal(out, gelu_tanh_forward(np.ascontiguousarray(view))[0])
    bad = x.copy()
    bad[0, 0, 0] = np.nan
    assert np.isnan(gelu_tanh_forward(bad)[0][0, 0, 0])                   # a NaN is not clamped away


def test_refuses_what_it_was_not_compiled_for():
    with pytest.raises(ValueError, match="expected a float32 NumPy array, got ndarray float64"):
        gelu_tanh_forward(np.ones((2, 3)))
    _, cache = gelu_tanh_forward(np.ones((2, 3), np.float32))
    with pytest.raises(ValueError, match=r"dout \(3, 2\) float32 must match x \(2, 3\) float32"):
        gelu_tanh_backward(np.ones((3, 2), np.float32), cache)


def test_a_float32_gpt_uses_it_and_agrees_with_the_reference():
    """A float32 GPT-2 on the CPU runs its GELU fused; forcing the reference name gives the same loss and
    gradients to float32 accuracy (every gradient within 1e-4 of the largest gradient entry)."""
    cfg = ModelConfig.preset("gpt2", n_layer=2, d_model=32, n_head=4, vocab_size=50, max_seq_len=16)
    ids = np.random.default_rng(3).integers(0, 50, size=(2, 17))
    results = []
    for name in ("gelu_tanh_fused", "gelu_tanh"):
        model = Model(cfg, seed=0)
        model._activation = lambda name=name: name
        loss, dlogits = cross_entropy(model.forward(ids[:, :-1]), ids[:, 1:])
        model.backward(dlogits)
        results.append((loss, model.grads))
    assert Model(cfg)._activation() == "gelu_tanh_fused" and Model(cfg, dtype="float64")._activation() == "gelu_tanh"
    (loss_a, grads_a), (loss_b, grads_b) = results
    assert abs(loss_a - loss_b) < 1e-5
    scale = max(float(np.abs(g).max()) for g in grads_b.values())        # some grads are 0 up to rounding (bk)
    for key in grads_a:
        assert np.abs(grads_a[key] - grads_b[key]).max() <= 1e-4 * scale, key
