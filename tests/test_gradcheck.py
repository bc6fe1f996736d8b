import numpy as np
import pytest

from minigpt.gradcheck import check_gradients, check_model_gradients, move_off_init, numerical_gradient, rel_error


def matmul_forward(x, w):
    return x @ w, (x, w)


def matmul_backward(dout, cache):
    x, w = cache
    return dout @ w.T, x.T @ dout


def test_rel_error_identical_and_unrelated():
    a = np.array([1.0, -2.0, 3.0])
    assert rel_error(a, a) == 0.0
    assert rel_error(a, -a) == pytest.approx(1.0)
    assert rel_error(np.zeros(3), np.zeros(3)) == 0.0


def test_rel_error_shape_mismatch_is_error():
    with pytest.raises(ValueError, match=r"\(3,\) vs \(4,\)"):
        rel_error(np.zeros(3), np.zeros(4))


def test_numerical_gradient_of_cubic_and_restores_input():
    x = np.array([0.3, -1.2, 2.0])
    before = x.copy()
    _, grad = numerical_gradient(lambda: (x * x * x).sum(), x)
    np.testing.assert_allclose(grad, 3 * before * before, rtol=1e-8)
    np.testing.assert_array_equal(x, before)


def test_numerical_gradient_perturbs_a_non_contiguous_view():
    # x.T is a view whose reshape(-1) would be a copy: perturbing a copy gives a zero gradient
    x = np.arange(12.0).reshape(3, 4).T
    before = x.copy()
    idx, grad = numerical_gradient(lambda: (x * x).sum(), x)
    np.testing.assert_allclose(grad, 2 * before.reshape(-1)[idx], rtol=1e-8)
    np.testing.assert_array_equal(x, before)


def test_check_gradients_accepts_correct_backward():
    rng = np.random.default_rng(0)
    errors = check_gradients(matmul_forward, matmul_backward,
                             [rng.standard_normal((3, 5)), rng.standard_normal((5, 4))], names=["x", "w"])
    assert set(errors) == {"x", "w"}
    assert max(errors.values()) < 1e-8


def test_check_gradients_catches_wrong_backward():
    def wrong_backward(dout, cache):
        dx, dw = matmul_backward(dout, cache)
        return dx, 1.01 * dw
    rng = np.random.default_rng(0)
    errors = check_gradients(matmul_forward, wrong_backward,
                             [rng.standard_normal((3, 5)), rng.standard_normal((5, 4))], names=["x", "w"])
    assert errors["x"] < 1e-8
    assert errors["w"] > 1e-3


def test_check_gradients_samples_large_inputs():
    rng = np.random.default_rng(1)
    errors = check_gradients(matmul_forward, matmul_backward,
                             [rng.standard_normal((40, 30)), rng.standard_normal((30, 20))],
                             names=["x", "w"], max_entries=25)
    assert max(errors.values()) < 1e-8


def tiny_model():
    from minigpt import Model, ModelConfig
    cfg = ModelConfig.preset("gpt2", n_layer=1, d_model=16, n_head=2, max_seq_len=6, vocab_size=20)
    model = Model(cfg, seed=0, dtype="float64")
    rng = np.random.default_rng(1)
    move_off_init(model, rng)
    ids = rng.integers(0, 20, (2, 6))
    return model, ids, rng.integers(0, 20, (2, 6))


def test_check_model_gradients_accepts_the_model():
    model, ids, targets = tiny_model()
    errors = check_model_gradients(model, ids, targets, entries=4)
    assert set(errors) == set(model.params)
    assert max(errors.values()) < 1e-6, errors


def test_check_model_gradients_catches_a_wrong_gradient():
    model, ids, targets = tiny_model()
    backward = model.backward

    def wrong_backward(dlogits):
        backward(dlogits)
        model.grads["blocks.0.mlp.w_up"] *= 1.01          # one tensor's gradient 1% too large

    model.backward = wrong_backward
    errors = check_model_gradients(model, ids, targets, entries=4)
    assert errors["blocks.0.mlp.w_up"] > 1e-3
    assert max(e for k, e in errors.items() if k != "blocks.0.mlp.w_up") < 1e-6
