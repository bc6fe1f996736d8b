"""The fused GELU-tanh and SwiGLU kernels (minigpt.kernels.elementwise_cpu) against the NumPy reference they compile."""
import numpy as np
import pytest

from minigpt.config import ModelConfig
from minigpt.kernels.elementwise_cpu import gelu_tanh_backward, gelu_tanh_forward, swiglu_backward, swiglu_forward
from minigpt.layers import activations
from minigpt.layers.mlp import glu_backward, glu_forward
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


def test_swiglu_equals_the_reference_to_float32_rounding():
    """a = g s u with s = 1/(1 + exp(-g)) against the reference's s = (1 + tanh(g/2))/2: each s is within a
    few float32 ulps of 1 absolute (the reference's 1 + tanh loses relative precision as s -> 0), so
    |a - reference| <= 4e-7 |g u| plus one rounding of a. The backward's few operations: 1e-6 relative to
    |da| (|u| + |g u| + |g|)."""
    g, u = inputs(seed=4)
    da = np.random.default_rng(5).standard_normal(g.shape).astype(np.float32)
    a, cache = swiglu_forward(g, u)
    ref, ref_cache = glu_forward(g, u, "silu")
    assert a.dtype == np.float32 and a.shape == g.shape
    assert np.all(np.abs(a - ref) <= 4e-7 * np.abs(g * u) + 1.2e-7 * np.abs(ref))
    dg, du = swiglu_backward(da, cache)
    ref_dg, ref_du = glu_backward(da, ref_cache)
    bound = 1e-6 * np.abs(da) * (np.abs(u) + np.abs(g * u) + np.abs(g))
    assert np.all(np.abs(dg - ref_dg) <= bound) and np.all(np.abs(du - ref_du) <= bound)


def test_swiglu_through_glu_and_its_checks():
    g, u = inputs((2, 5, 9), seed=6)
    a, cache = glu_forward(g.transpose(0, 2, 1), u.transpose(0, 2, 1), "silu_fused")   # not contiguous
    np.testing.assert_array_equal(a, swiglu_forward(np.ascontiguousarray(g.transpose(0, 2, 1)),
                                                    np.ascontiguousarray(u.transpose(0, 2, 1)))[0])
    assert [x.shape for x in glu_backward(np.ones_like(a), cache)] == [a.shape, a.shape]
    assert np.isnan(swiglu_forward(np.float32([np.nan, 1]), np.float32([1, 1]))[0][0])
    with pytest.raises(ValueError, match="fused SwiGLU: expected a float32 NumPy array, got ndarray float64"):
        swiglu_forward(np.ones(3), np.ones(3, np.float32))
    with pytest.raises(ValueError, match=r"fused SwiGLU: u \(4,\) float32 must match g \(3,\) float32"):
        swiglu_forward(np.ones(3, np.float32), np.ones(4, np.float32))
    with pytest.raises(ValueError, match=r"fused SwiGLU: da \(2,\) float32 must match g \(3,\) float32"):
        swiglu_backward(np.ones(2, np.float32), swiglu_forward(np.ones(3, np.float32), np.ones(3, np.float32))[1])


@pytest.mark.parametrize("preset, fused", [("gpt2", "gelu_tanh_fused"), ("llama", "silu_fused")])
def test_a_float32_model_uses_it_and_agrees_with_the_reference(preset, fused):
    """A float32 GPT-2 (LLaMA) on the CPU runs its GELU (SwiGLU gate) fused; forcing the reference name gives
    the same loss and gradients to float32 accuracy (every gradient within 1e-4 of the largest gradient entry)."""
    cfg = ModelConfig.preset(preset, n_layer=2, d_model=32, n_head=4, vocab_size=50, max_seq_len=16)
    ids = np.random.default_rng(3).integers(0, 50, size=(2, 17))
    results = []
    for name in (fused, cfg.mlp_activation):
        model = Model(cfg, seed=0)
        model._activation = lambda name=name: name
        loss, dlogits = cross_entropy(model.forward(ids[:, :-1]), ids[:, 1:])
        model.backward(dlogits)
        results.append((loss, model.grads))
    assert Model(cfg)._activation() == fused and Model(cfg, dtype="float64")._activation() == cfg.mlp_activation
    (loss_a, grads_a), (loss_b, grads_b) = results
    assert abs(loss_a - loss_b) < 1e-5
    scale = max(float(np.abs(g).max()) for g in grads_b.values())        # some grads are 0 up to rounding (bk)
    for key in grads_a:
        assert np.abs(grads_a[key] - grads_b[key]).max() <= 1e-4 * scale, key
