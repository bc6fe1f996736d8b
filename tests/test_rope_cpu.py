"""The fused RoPE kernel (minigpt.kernels.rope_cpu) against the NumPy reference: the same arithmetic, equal bits."""
import numpy as np
import pytest

from minigpt.config import ModelConfig
from minigpt.kernels import rope_cpu
from minigpt.layers import rope
from minigpt.layers.loss import cross_entropy
from minigpt.model import Model


def strided_heads(B=3, H=4, T=11, D=12, seed=0):
    """x (B, H, T, D) float32 as the model makes it: a transposed view of a (B, T, H, D) projection."""
    rng = np.random.default_rng(seed)
    return rng.standard_normal((B, T, H, D)).astype(np.float32).transpose(0, 2, 1, 3)


@pytest.mark.parametrize("pairing", ["half", "interleaved"])
@pytest.mark.parametrize("rotary_dim", [12, 6])                            # all of D, and a partial rotary
@pytest.mark.parametrize("per_sample", [False, True])                      # cos (T, P), or (B, 1, T, P)
def test_forward_and_backward_equal_the_reference_bit_for_bit(pairing, rotary_dim, per_sample):
    x = strided_heads()
    B, _, T, _ = x.shape
    positions = np.random.default_rng(1).integers(0, 50, (B, T)) if per_sample else np.arange(T)
    cos, sin = rope.rope_cos_sin(positions, rotary_dim)
    out, cache = rope_cpu.rope_forward(x, cos, sin, rotary_dim, pairing)
    ref, ref_cache = rope.rope_forward(x, cos, sin, rotary_dim, pairing)
    assert out.flags.c_contiguous and out.dtype == np.float32
    np.testing.assert_array_equal(out, ref)
    dout = strided_heads(seed=2)
    np.testing.assert_array_equal(rope_cpu.rope_backward(dout, ref_cache), rope.rope_backward(dout, cache))
    np.testing.assert_allclose(rope_cpu.rope_backward(out, cache), x, atol=1e-6)   # rotating back gives x


def test_refuses_what_it_was_not_compiled_for():
    x = strided_heads()
    cos, sin = rope.rope_cos_sin(np.arange(11), 12)
    with pytest.raises(ValueError,
                       match=r"fused RoPE: x must be a float32 NumPy array \(B, H, T, D\), got ndarray float64"):
        rope_cpu.rope_forward(x.astype(np.float64), cos, sin, 12)
    with pytest.raises(ValueError, match="cos/sin cover 11 positions, x has T=10"):
        rope_cpu.rope_forward(x[:, :, :10], cos, sin, 12)
    _, cache = rope_cpu.rope_forward(x, cos, sin, 12)
    with pytest.raises(ValueError, match="fused RoPE: dout must be a float32 NumPy array"):
        rope_cpu.rope_backward(x[0], cache)


@pytest.mark.parametrize("preset", ["llama", "glm4"])                      # half pairing; interleaved, partial
def test_a_float32_model_uses_it_and_agrees_with_the_reference(preset, monkeypatch):
    cfg = ModelConfig.preset(preset, n_layer=2, d_model=32, n_head=4, vocab_size=50, max_seq_len=16)
    ids = np.random.default_rng(3).integers(0, 50, size=(2, 17))
    results = []
    for pair in ((rope_cpu.rope_forward, rope_cpu.rope_backward), (rope.rope_forward, rope.rope_backward)):
        model = Model(cfg, seed=0)
        assert model._rope()[0] is rope_cpu.rope_forward
        monkeypatch.setattr(model, "_rope", lambda pair=pair: pair)
        loss, dlogits = cross_entropy(model.forward(ids[:, :-1]), ids[:, 1:])
        model.backward(dlogits)
        results.append((loss, model.grads))
    (loss_a, grads_a), (loss_b, grads_b) = results
    assert loss_a == loss_b
    for key in grads_a:
        np.testing.assert_array_equal(grads_a[key], grads_b[key], err_msg=key)
