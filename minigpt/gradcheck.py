"""Gradient checking: is a hand-written backward pass right?

For a layer out = f(x, w, ...) we never look at the gradients alone. We pick a random
upstream gradient `dout` and define the scalar L = sum(out * dout). Then the backward
pass must return dL/dx, dL/dw, ...; and each entry can also be estimated by centered
differences:

    dL/dx[i]  ~  (L(x[i] + h) - L(x[i] - h)) / (2h)          error O(h^2)

In float64 with h = 1e-6 the truncation error (~h^2) and the rounding error (~eps/h)
are both near 1e-10 relative, so a correct backward pass agrees to rel_error < 1e-6
and a wrong one (a missing term, a transposed weight) is off by 1e-2 or more.
"""
import numpy as np

from minigpt.backend import get_xp, to_numpy
from minigpt.layers.loss import cross_entropy


def rel_error(a, b):
    """max |a - b| / max(|a| + |b|): 0 for identical arrays, ~1 for unrelated ones."""
    a, b = to_numpy(a).astype(np.float64), to_numpy(b).astype(np.float64)
    if a.shape != b.shape:
        raise ValueError(f"rel_error: shapes differ, {a.shape} vs {b.shape}")
    denominator = np.max(np.abs(a) + np.abs(b))
    if denominator == 0:
        return 0.0
    return float(np.max(np.abs(a - b)) / denominator)


def numerical_gradient(f, x, h=1e-6, indices=None):
    """Centered-difference gradient of the scalar function f() with respect to the array x,
    which f reads and this function perturbs in place (and restores).
    indices: flat indices to estimate (default: all). Returns (flat indices, their gradients).
    Entries are written through x's own multi-index, never through x.reshape(-1): for a non-contiguous
    x (a transposed view) the reshape is a copy, and perturbing a copy would leave f unchanged.
    """
    if indices is None:
        indices = np.arange(x.size)
    grads = np.empty(len(indices), dtype=np.float64)
    for n, i in enumerate(indices):
        entry = np.unravel_index(i, x.shape)  # flat index i -> (i0, i1, ...) of x
        old = x[entry].item()
        x[entry] = old + h
        f_plus = float(f())
        x[entry] = old - h
        f_minus = float(f())
        x[entry] = old
        grads[n] = (f_plus - f_minus) / (2 * h)
    return np.asarray(indices), grads


def sample_indices(size, max_entries, rng):
    """All flat indices when there are few, else a random sample of max_entries of them."""
    if size <= max_entries:
        return np.arange(size)
    return np.sort(rng.choice(size, size=max_entries, replace=False))


def check_gradients(forward, backward, args, names=None, wrt=None, h=1e-6,
                    max_entries=200, seed=0):
    """Check every gradient of a forward/backward pair against centered differences.

    forward(*args) -> (out, cache); backward(dout, cache) -> one gradient per arg, in order
    (None for arguments that are not differentiated, like token ids or masks). Wrap a layer whose
    backward returns fewer, e.g. for the embedding:
        check_gradients(embedding_forward, lambda d, c: (None, embedding_backward(d, c)), [ids, W])
    and pass an optional input that is absent as None (linear without bias: args [x, w, None]).
    args: the forward's inputs, float64 arrays for the ones to check.
    names: a name per arg for the report (default arg0, arg1, ...).
    wrt: names to check (default: every arg whose backward gradient is not None).
    Returns {name: rel_error}, the worst error over the sampled entries of each gradient.
    """
    args = list(args)
    names = list(names) if names is not None else [f"arg{i}" for i in range(len(args))]
    if len(names) != len(args):
        raise ValueError(f"check_gradients: {len(names)} names for {len(args)} args")
    rng = np.random.default_rng(seed)

    out, cache = forward(*args)
    xp = get_xp(out)
    dout = xp.asarray(rng.standard_normal(out.shape)).astype(out.dtype)
    analytic = backward(dout, cache)
    if not isinstance(analytic, tuple):
        analytic = (analytic,)
    if len(analytic) != len(args):
        raise ValueError(f"check_gradients: backward returned {len(analytic)} gradients "
                         f"for {len(args)} forward inputs")

    def loss():
        out, _ = forward(*args)
        return (out * dout).sum()

    errors = {}
    for name, arg, grad in zip(names, args, analytic):
        if grad is None or (wrt is not None and name not in wrt):
            continue
        if grad.shape != arg.shape:
            raise ValueError(f"check_gradients: gradient of {name} has shape {grad.shape}, "
                             f"its input has shape {arg.shape}")
        idx = sample_indices(arg.size, max_entries, rng)
        idx, numeric = numerical_gradient(loss, arg, h=h, indices=idx)
        errors[name] = rel_error(to_numpy(grad).reshape(-1)[idx], numeric)
    if wrt is not None:
        missing = set(wrt) - set(errors)
        if missing:
            raise ValueError(f"check_gradients: no gradient returned for {sorted(missing)}")
    return errors


def move_off_init(model, rng=1, std=0.2):
    """Add N(0, std) noise to every parameter, in place, so no gradient path is trivially small.
    At initialisation norm gains are 1, biases 0 and attention near uniform: q and k gradients are ~1e-8,
    where a finite difference is mostly rounding. rng: a seed or a numpy Generator (drawn from in key order)."""
    rng = np.random.default_rng(rng)
    for value in model.params.values():
        value += std * rng.standard_normal(value.shape)


def check_model_gradients(model, ids, targets, entries=8, h=1e-5, seed=0, prepare=None, **forward_kwargs):
    """Check the loss gradient of every parameter tensor of a whole model against centered differences.

    The loss is minigpt's cross-entropy of model.forward(ids, **forward_kwargs) against targets. For each
    tensor, `entries` entries are sampled: half anywhere, half where the analytic gradient is nonzero (a
    random pick could land only on rows that got no gradient, like unused embedding rows).
    h = 1e-5, not 1e-6: a whole model's loss carries more rounding than one layer's output.
    A tensor whose true gradient is exactly zero (the key bias without RoPE: the softmax ignores a constant
    added to a whole row of scores) has two rounding-level values to compare, where rel_error means nothing;
    there the absolute error is reported instead.
    prepare: called before every forward (e.g. to reset the dropout rng so each forward draws the same masks).
    Use float64 and move the weights off their initialisation first, or tiny gradients (q and k at init)
    drown in rounding. Returns {param key: error}.
    """
    def loss():
        if prepare is not None:
            prepare()
        return cross_entropy(model.forward(ids, **forward_kwargs), targets)[0]

    if prepare is not None:
        prepare()
    model.zero_grad()
    model.backward(cross_entropy(model.forward(ids, **forward_kwargs), targets)[1])

    rng = np.random.default_rng(seed)
    errors = {}
    for key, param in model.params.items():
        analytic = to_numpy(model.grads[key]).reshape(-1)
        nonzero = np.flatnonzero(analytic)
        picks = rng.choice(param.size, size=min(entries // 2, param.size), replace=False)
        if nonzero.size:
            picks = np.union1d(picks, rng.choice(nonzero, size=min(entries // 2, nonzero.size), replace=False))
        idx, numeric = numerical_gradient(loss, param, h=h, indices=picks)
        if np.abs(numeric).max() < 1e-9:
            errors[key] = float(np.abs(analytic[idx] - numeric).max())
        else:
            errors[key] = rel_error(analytic[idx], numeric)
    return errors
