import math
import re

import numpy as np
import pytest

from minigpt.gradcheck import numerical_gradient, rel_error
from minigpt.layers.loss import cross_entropy, log_softmax
from layer_testing import BT, DTYPES, GRAD_TOL, assert_matches_torch, leaf, randn

V = 11


def case(rng, B, T, kind, dtype=np.float64):
    """logits, targets, loss_mask for a kind of counting: all tokens, some ignored, some masked, both."""
    logits = 2 * randn(rng, B, T, V, dtype=dtype)
    targets = rng.integers(0, V, size=(B, T))
    loss_mask = None
    if kind in ("ignore", "both"):
        targets[:, 1::2] = -100                          # every odd position ignored (none when T = 1)
    if kind in ("mask", "both"):
        loss_mask = np.ones((B, T), dtype=np.int64)
        loss_mask[:, 2::3] = 0                           # every third position masked out, from position 2
    return logits, targets, loss_mask


KINDS = pytest.mark.parametrize("kind", ["all", "ignore", "mask", "both"])


@BT
@KINDS
def test_cross_entropy_gradient(B, T, kind):
    rng = np.random.default_rng(0)
    logits, targets, loss_mask = case(rng, B, T, kind)
    _, dlogits = cross_entropy(logits, targets, loss_mask=loss_mask)
    _, numeric = numerical_gradient(lambda: cross_entropy(logits, targets, loss_mask=loss_mask)[0], logits)
    assert rel_error(dlogits.reshape(-1), numeric) < GRAD_TOL


def test_cross_entropy_gradient_two_dimensional_logits_and_own_ignore_index():
    rng = np.random.default_rng(1)
    logits, targets = randn(rng, 9, V), rng.integers(0, V, size=9)
    targets[[2, 5]] = 3                                  # class 3 doubles as the padding id here
    loss, dlogits = cross_entropy(logits, targets, ignore_index=3)
    _, numeric = numerical_gradient(lambda: cross_entropy(logits, targets, ignore_index=3)[0], logits)
    assert rel_error(dlogits.reshape(-1), numeric) < GRAD_TOL
    assert not dlogits[[2, 5]].any()


def test_cross_entropy_is_mean_negative_log_probability_over_counted_tokens():
    logits = np.log(np.array([[0.5, 0.25, 0.25], [0.1, 0.1, 0.8], [0.2, 0.2, 0.6]]))
    loss, _ = cross_entropy(logits, np.array([0, 2, -100]))
    assert loss == pytest.approx((-math.log(0.5) - math.log(0.8)) / 2, rel=1e-12)
    loss, _ = cross_entropy(logits, np.array([0, 2, 1]), loss_mask=np.array([True, False, True]))
    assert loss == pytest.approx((-math.log(0.5) - math.log(0.2)) / 2, rel=1e-12)


def test_cross_entropy_uniform_logits_give_log_v_and_huge_logits_stay_finite():
    loss, _ = cross_entropy(np.zeros((2, 3, V)), np.ones((2, 3), dtype=np.int64))
    assert loss == pytest.approx(math.log(V), rel=1e-12)
    logits = np.array([[1e4, -1e4, 0.0]])
    loss, dlogits = cross_entropy(logits, np.array([1]))
    assert loss == pytest.approx(2e4, rel=1e-12)
    np.testing.assert_allclose(dlogits, [[1, -1, 0]], atol=1e-12)


def test_cross_entropy_float32_stays_float32():
    logits, targets, loss_mask = case(np.random.default_rng(2), 3, 7, "both", np.float32)
    loss, dlogits = cross_entropy(logits, targets, loss_mask=loss_mask)
    assert type(loss) is float
    assert dlogits.dtype == np.float32 and dlogits.shape == logits.shape


@DTYPES
@KINDS
def test_cross_entropy_matches_torch(dtype, kind):
    torch = pytest.importorskip("torch")
    logits, targets, loss_mask = case(np.random.default_rng(3), 3, 7, kind, dtype)
    loss, dlogits = cross_entropy(logits, targets, loss_mask=loss_mask)
    torch_targets = targets.copy()
    if loss_mask is not None:
        torch_targets[loss_mask == 0] = -100             # torch has no loss_mask: a masked token is an ignored one
    tlogits = leaf(torch, logits)
    tloss = torch.nn.functional.cross_entropy(tlogits.reshape(-1, V), torch.tensor(torch_targets).reshape(-1),
                                              ignore_index=-100)
    tloss.backward()
    tol = 1e-10 if dtype == np.float64 else 1e-5 * abs(tloss.item())
    assert abs(loss - tloss.item()) < tol
    assert_matches_torch(dlogits, tlogits.grad)


@DTYPES
def test_log_softmax_matches_torch(dtype):
    torch = pytest.importorskip("torch")
    x = 5 * randn(np.random.default_rng(4), 3, 7, V, dtype=dtype)
    assert_matches_torch(log_softmax(x), torch.log_softmax(torch.tensor(x), dim=-1))


def test_cross_entropy_targets_shape_is_error():
    with pytest.raises(ValueError, match=re.escape("(2, 4)") + ".*" + re.escape("(2, 3, 11)")):
        cross_entropy(np.zeros((2, 3, V)), np.zeros((2, 4), dtype=np.int64))


def test_cross_entropy_loss_mask_shape_is_error():
    with pytest.raises(ValueError, match=re.escape("loss_mask has shape (2, 4)")):
        cross_entropy(np.zeros((2, 3, V)), np.zeros((2, 3), dtype=np.int64), loss_mask=np.ones((2, 4)))


def test_cross_entropy_float_targets_is_error():
    with pytest.raises(ValueError, match="float64"):
        cross_entropy(np.zeros((2, 3, V)), np.zeros((2, 3)))


@pytest.mark.parametrize("bad", [V, -1])
def test_cross_entropy_target_out_of_range_is_error(bad):
    targets = np.array([[0, bad, 2]])
    with pytest.raises(ValueError, match=f"target {bad} .*V = {V}"):
        cross_entropy(np.zeros((1, 3, V)), targets)


def test_cross_entropy_no_counted_tokens_is_error():
    targets = np.array([[-100, 4, 5]])
    with pytest.raises(ValueError, match="no counted tokens"):
        cross_entropy(np.zeros((1, 3, V)), targets, loss_mask=np.array([[1, 0, 0]]))
