"""Shared helpers for the layer tests: odd shapes, the gradient check, PyTorch comparisons.

Torch is never imported here: parity tests call `pytest.importorskip("torch")` themselves,
so they skip with a clear reason where torch is not installed.
"""
import numpy as np
import pytest

from minigpt.gradcheck import check_gradients, rel_error

C = 12                                                     # not divisible by 8
BT = pytest.mark.parametrize("B, T", [(1, 1), (1, 7), (3, 1), (3, 7)])
DTYPES = pytest.mark.parametrize("dtype", [np.float64, np.float32])
GRAD_TOL = 1e-6                                            # float64 centered differences vs the backward pass


def randn(rng, *shape, dtype=np.float64):
    return rng.standard_normal(shape).astype(dtype)


def assert_gradients(forward, backward, args, names, expected):
    """Every gradient named in `expected` is checked and has rel_error < GRAD_TOL; returns the errors."""
    errors = check_gradients(forward, backward, args, names=names)
    assert set(errors) == set(expected), f"checked {sorted(errors)}, expected {sorted(expected)}"
    worst = {name: err for name, err in errors.items() if not err < GRAD_TOL}
    assert not worst, f"rel_error >= {GRAD_TOL}: {worst}"
    return errors


def leaf(torch, a):
    """A torch leaf tensor with gradient tracking, sharing a's dtype."""
    return torch.tensor(a, requires_grad=True)


def assert_matches_torch(ours, theirs):
    """float64: max abs error < 1e-10; float32: rel_error < 1e-5. Same dtype and shape."""
    theirs = theirs.detach().numpy()
    assert ours.dtype == theirs.dtype, (ours.dtype, theirs.dtype)
    assert ours.shape == theirs.shape, (ours.shape, theirs.shape)
    if ours.dtype == np.float64:
        assert np.max(np.abs(ours - theirs), initial=0.0) < 1e-10
    else:
        assert rel_error(ours, theirs) < 1e-5
