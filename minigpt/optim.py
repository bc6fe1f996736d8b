"""Optimizers (SGD, AdamW), learning-rate schedules and gradient clipping.

An optimizer turns the gradients of one step into a change of the parameters. It holds the model's
params dict {key: array} and updates every array IN PLACE (p -= ...), so model.params[k] stays the
same object and everything that holds it (the model, a KV cache, a test) sees the new values.
opt.step(grads) takes a dict with the same keys and shapes (model.grads). opt.lr is a plain
attribute: the trainer sets it from a schedule before every step.

Notation, per parameter array p with gradient g (all elementwise), lr the learning rate,
wd the weight decay, t the number of steps taken, counting this one (t = 1 on the first step).

SGD, as torch.optim.SGD (dampening 0):
    g   = g + wd * p                       L2 weight decay: the gradient of (wd/2) |p|^2 added to the loss
    buf = momentum * buf + g               a running sum of past gradients, decaying by momentum per step
    d   = g + momentum * buf               with nesterov: look ahead along the momentum
    d   = buf                              without nesterov (and d = g when momentum == 0)
    p   = p - lr * d
torch creates buf as a copy of g on the first step; here buf starts at 0, and momentum * 0 + g = g
exactly, so the two agree bit for bit without a special first step.

AdamW (Loshchilov and Hutter 2019, "Decoupled Weight Decay Regularization"), as torch.optim.AdamW:
    p = p * (1 - lr * wd)                  decoupled weight decay, only for the keys in the decay set
    m = m + (1 - beta1) * (g - m)          = beta1 m + (1 - beta1) g: running mean of g (torch's lerp)
    v = beta2 * v + (1 - beta2) * g * g    running mean of g^2: the scale of each weight's gradient
    denom = sqrt(v) / sqrt(1 - beta2^t) + eps
    p = p - (lr / (1 - beta1^t)) * m / denom
Bias correction: m and v start at 0, and m_t = (1 - beta1) sum_{i=1..t} beta1^(t-i) g_i, whose
weights sum to 1 - beta1^t, not 1. Dividing by (1 - beta1^t) (and sqrt(1 - beta2^t) for sqrt(v))
undoes that shrinkage; it matters in the first ~1/(1 - beta) steps and fades to 1 afterwards.
The step m / sqrt(v) has size ~lr per weight whatever the gradient's scale: Adam normalizes each
weight by its own running gradient size. That is why weight decay must be DECOUPLED: Adam with L2
decay (wd * p added to g) divides the decay by sqrt(v) too, so weights with large gradients decay
less. AdamW shrinks every decayed weight by the same factor (1 - lr * wd) per step, and because the
factor contains lr, the decay follows the learning-rate schedule.
The operations are in the order of torch's single-tensor (foreach=False) implementation, so float64
results agree with torch to about 1e-16 (torch's lerp uses a fused multiply-add; NumPy has none).

Schedules (plain functions of the step, 0-based: step 0 is the first update):
    warmup (step < warmup_steps):   lr = max_lr * (step + 1) / warmup_steps
    cosine:  r = (step - warmup_steps) / (total_steps - warmup_steps),
             lr = min_lr + 0.5 * (1 + cos(pi * r)) * (max_lr - min_lr)       r from 0 to 1
    linear:  lr = max_lr - r * (max_lr - min_lr)
    after total_steps:              lr = min_lr
Global gradient-norm clipping (Pascanu et al. 2013), over ALL gradient arrays together:
    total = sqrt(sum_k |g_k|^2) = |(|g_1|, ..., |g_K|)|       the norm of the per-array norms
    coef  = max_norm / (total + 1e-6);   if coef < 1: g_k = g_k * coef for every k
It keeps the direction of the whole gradient and only shortens it: one bad batch cannot throw the
weights far. A non-finite total is returned as is and the grads are left alone (see clip_grad_norm).
"""
import math
import numbers
import operator

import numpy as np

from minigpt.backend import get_xp, to_numpy
from minigpt.config import check_tensor_set

EMBEDDING_TABLES = ("wte", "wpe", "wbpe")   # config.EMBEDDING_KEYS without lm_head, a Linear's weight


def default_decay(params, decay_embeddings=False):
    """The keys that weight decay applies to by default: the weight matrices (ndim >= 2).
    params {key: array} -> set of keys.

    Decay pulls every decayed weight toward 0 a little each step, so only weights whose natural
    value is 0 and whose size is free should decay:
    - matrices of the attention and the MLP (and an untied lm_head) decay;
    - norm gains (ndim 1) never: their natural value is 1, and decay would fight the normalization;
    - biases (ndim 1) never: their scale is set by the data (a mean to shift by), not a free size;
    - the embedding tables wte, wpe, wbpe not, unless decay_embeddings=True: a row is updated only
      when its token (or position) occurs in the batch, but decay shrinks every row every step, so
      the rows of rare tokens would decay away between their few updates. (nanoGPT decays all
      matrices, embeddings included: decay_embeddings=True gives its rule.)
    """
    return {key for key, p in params.items()
            if p.ndim >= 2 and (decay_embeddings or key not in EMBEDDING_TABLES)}


class Optimizer:
    """What SGD and AdamW share: the params they update in place, lr, the step count t, one state
    array per param for each name in BUFFERS, the checks of the grads, and state_dict / load_state_dict.
    A subclass defines HYPER (the names of its JSON-able hyper-parameters besides step and lr),
    _validated(hyper) -> the checked values, and _update(key, p, g, lr)."""
    HYPER = ()
    BUFFERS = ()

    def __init__(self, params, lr, **hyper):
        _check_params(params)
        self.params = params                                     # the model's dict itself, never copied
        for name, value in self._validated(dict(lr=lr, **hyper)).items():
            setattr(self, name, value)                           # self.lr, self.betas, ...
        self.t = 0                                               # steps taken so far
        self.state = {name: {k: get_xp(p).zeros_like(p) for k, p in params.items()}  # in p's dtype and device
                      for name in self.BUFFERS}

    def step(self, grads, map_keys=None):
        """One update of every param from grads {key: array} (same keys, shapes and dtypes as params).
        map_keys(update, keys) runs update(key) for every key, e.g. on several threads at once (each param is
        updated on its own; minigpt.parallel.DataParallel.map_keys); None: one after the other."""
        _check_params(grads, "grads")
        check_tensor_set("grads do not fit the optimizer's params", _shapes(self.params), grads)
        _check_dtypes(self.params, grads)
        lr = _check_lr(self.lr)                                  # the caller may have set opt.lr since
        self.t += 1

        def update(key):
            self._update(key, self.params[key], grads[key], lr)

        if map_keys is None:
            for key in self.params:
                update(key)
        else:
            map_keys(update, list(self.params))

    def state_dict(self):
        """The whole state: JSON-able scalars, and {buffer name: {key: NumPy array}} (copies, on the host).
        Rule for a checkpoint writer: a value that is a dict of arrays goes to safetensors, all else to JSON."""
        state = {"optimizer": type(self).__name__, "step": self.t, "lr": float(self.lr)}
        state.update({name: _jsonable(getattr(self, name)) for name in self.HYPER})
        for name, arrays in self.state.items():
            # to_numpy returns a NumPy array itself (a GPU array it copies); .copy() makes it a snapshot
            state[name] = {k: to_numpy(a).copy() for k, a in arrays.items()}
        return state

    def load_state_dict(self, state):
        """Restore a state_dict(): everything is checked first, so a bad state changes nothing."""
        _check_state_names(type(self).__name__, state, ("optimizer", "step", "lr", *self.HYPER, *self.BUFFERS))
        hyper = self._validated({name: state[name] for name in ("lr", *self.HYPER)})
        step = _check_step(state["step"])
        for name in self.BUFFERS:
            _check_params(state[name], f"state[{name!r}]")
            check_tensor_set(f"state[{name!r}] does not fit the optimizer's params", _shapes(self.params), state[name])
        for name, value in hyper.items():
            setattr(self, name, value)
        self.t = step
        for name, arrays in self.state.items():
            for k, a in arrays.items():
                a[...] = get_xp(a).asarray(state[name][k], dtype=a.dtype)  # onto a's device, a copy


class AdamW(Optimizer):
    """torch.optim.AdamW's arguments and maths (see the module docstring), with decay groups:
    decay is the collection of param keys that weight decay applies to, None for default_decay(params).
    State per param, in its dtype and on its device: exp_avg (m) and exp_avg_sq (v), torch's names."""
    HYPER = ("betas", "eps", "weight_decay", "decay")
    BUFFERS = ("exp_avg", "exp_avg_sq")

    def __init__(self, params, lr=3e-4, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.01, decay=None):
        _check_params(params)
        decay = default_decay(params) if decay is None else decay
        super().__init__(params, lr, betas=betas, eps=eps, weight_decay=weight_decay, decay=decay)
        self._fused_update = _fused_adamw(params)

    def _validated(self, hyper):
        """The hyper-parameters checked and normalized (floats, a tuple, a set), or a ValueError."""
        return dict(lr=_check_lr(hyper["lr"]), betas=_check_betas(hyper["betas"]),
                    eps=_check_nonnegative("eps", hyper["eps"]),
                    weight_decay=_check_nonnegative("weight_decay", hyper["weight_decay"]),
                    decay=_check_decay(hyper["decay"], self.params))

    def _update(self, key, p, g, lr):
        """One AdamW step: p, m and v updated in place from the gradient g (all the same shape)."""
        xp = get_xp(p)
        m, v = self.state["exp_avg"][key], self.state["exp_avg_sq"][key]
        beta1, beta2 = self.betas
        decay = 1 - lr * self.weight_decay if key in self.decay else 1.0      # decoupled weight decay's factor
        step_size = lr / (1 - beta1 ** self.t)                   # Python floats, as torch computes them:
        sqrt_bias2 = (1 - beta2 ** self.t) ** 0.5                # lr / bias1 and sqrt(bias2)
        if self._fused_update is not None and all(x.flags.c_contiguous for x in (p, g, m, v)):
            self._fused_update(p, g, m, v, decay, self.betas, self.eps, sqrt_bias2, step_size)  # the lines below
            return                                                                              # in one pass
        if decay != 1.0:
            p *= decay                                           # decoupled weight decay, before the Adam step
        # Two scratch arrays, reused by every line below: written as m = beta1 * m + (1 - beta1) * g,
        # NumPy would allocate a fresh full-size array for every operator (about ten per param per step).
        tmp, denom = xp.empty_like(p), xp.empty_like(p)
        xp.subtract(g, m, out=tmp)
        tmp *= 1 - beta1
        m += tmp                                                 # m = m + (1 - beta1) (g - m)
        xp.multiply(g, 1 - beta2, out=tmp)
        tmp *= g
        v *= beta2
        v += tmp                                                 # v = beta2 v + (1 - beta2) g g
        xp.sqrt(v, out=denom)
        denom /= sqrt_bias2
        denom += self.eps                                        # denom = sqrt(v) / sqrt(bias2) + eps
        xp.multiply(m, -step_size, out=tmp)
        tmp /= denom
        p += tmp                                                 # p = p - (lr / bias1) m / denom


def _fused_adamw(params):
    """minigpt.kernels.adamw_cpu.adamw_update when every param is a float32 NumPy array, else None: the
    lines of AdamW._update in one compiled pass per param instead of 13 NumPy passes, bit for bit the same
    numbers (AdamW step of the LLaMA benchmark model 5.6 -> 1.9 ms). Imported here, in the caller's thread,
    and not first by the threads that share out a step's keys (Numba must not be imported by two at once)."""
    if not params or not all(isinstance(p, np.ndarray) and p.dtype == np.float32 for p in params.values()):
        return None
    from minigpt.kernels.adamw_cpu import adamw_update
    return adamw_update


class SGD(Optimizer):
    """torch.optim.SGD's maths (dampening 0; see the module docstring). weight_decay is L2 decay on
    every param, as in torch. State per param: momentum_buffer (zeros until the first step)."""
    HYPER = ("momentum", "weight_decay", "nesterov")
    BUFFERS = ("momentum_buffer",)

    def __init__(self, params, lr, momentum=0.0, weight_decay=0.0, nesterov=False):
        super().__init__(params, lr, momentum=momentum, weight_decay=weight_decay, nesterov=nesterov)

    def _validated(self, hyper):
        """The hyper-parameters checked and normalized, or a ValueError."""
        momentum = _check_nonnegative("momentum", hyper["momentum"])
        nesterov = hyper["nesterov"]
        if not isinstance(nesterov, bool):
            raise ValueError(f"nesterov={nesterov!r}: expected True or False")
        if nesterov and momentum == 0:
            raise ValueError("nesterov=True needs momentum > 0")
        return dict(lr=_check_lr(hyper["lr"]), momentum=momentum, nesterov=nesterov,
                    weight_decay=_check_nonnegative("weight_decay", hyper["weight_decay"]))

    def _update(self, key, p, g, lr):
        """One SGD step: p (and the momentum buffer) updated in place from the gradient g."""
        if self.weight_decay != 0:
            g = g + self.weight_decay * p                        # a new array: the caller's grads stay as they are
        if self.momentum != 0:
            buf = self.state["momentum_buffer"][key]
            buf *= self.momentum
            buf += g                                             # buf = momentum buf + g
            g = g + self.momentum * buf if self.nesterov else buf
        p -= lr * g


def _warmup(step, max_lr, warmup_steps):
    """Linear warmup: max_lr * (step + 1) / warmup_steps, for step < warmup_steps."""
    return max_lr * (step + 1) / warmup_steps


def cosine_lr(step, max_lr, min_lr, warmup_steps, total_steps):
    """The learning rate at step (0-based): linear warmup, cosine from max_lr to min_lr, then min_lr.
        step < warmup_steps:          max_lr * (step + 1) / warmup_steps
        warmup_steps <= step < total: min_lr + 0.5 (1 + cos(pi r)) (max_lr - min_lr),
                                      r = (step - warmup_steps) / (total_steps - warmup_steps)
        step >= total_steps:          min_lr
    The warmup convention is llm.c's and build-nanogpt's: the first step already moves (lr > 0), the
    last warmup step (warmup_steps - 1) reaches max_lr, and the cosine starts at max_lr (r = 0).
    nanoGPT's train.py divides by (warmup_steps + 1) instead and reaches max_lr one step later."""
    _check_schedule(step, max_lr, min_lr, warmup_steps, total_steps)
    if step < warmup_steps:
        return float(_warmup(step, max_lr, warmup_steps))
    if step >= total_steps:
        return float(min_lr)
    r = (step - warmup_steps) / (total_steps - warmup_steps)     # 0 at the end of warmup, -> 1 at total_steps
    return float(min_lr + 0.5 * (1.0 + math.cos(math.pi * r)) * (max_lr - min_lr))


def linear_lr(step, max_lr, min_lr, warmup_steps, total_steps):
    """As cosine_lr, with a straight line from max_lr (end of warmup) to min_lr (total_steps):
        warmup_steps <= step < total: max_lr - r (max_lr - min_lr)"""
    _check_schedule(step, max_lr, min_lr, warmup_steps, total_steps)
    if step < warmup_steps:
        return float(_warmup(step, max_lr, warmup_steps))
    if step >= total_steps:
        return float(min_lr)
    r = (step - warmup_steps) / (total_steps - warmup_steps)
    return float(max_lr - r * (max_lr - min_lr))


def constant_lr(step, lr, warmup_steps=0):
    """lr after an optional linear warmup (lr * (step + 1) / warmup_steps for step < warmup_steps)."""
    _check_count("step", step)
    _check_count("warmup_steps", warmup_steps)
    lr = _check_lr(lr)
    return float(_warmup(step, lr, warmup_steps)) if step < warmup_steps else lr


def clip_grad_norm(grads, max_norm):
    """Scale every gradient in place so that their global L2 norm is at most max_norm, as
    torch.nn.utils.clip_grad_norm_ does. grads {key: array} -> the global norm BEFORE clipping (float).
    Per-array norms are computed in the grads' dtype, as torch does. A non-finite norm (inf or nan
    somewhere in the grads) is returned as is and the grads are left untouched, where torch would
    multiply them all by nan: the caller decides (a trainer skips the step), and the grads still
    show which array went bad."""
    _check_params(grads, "grads")
    max_norm = _check_max_norm(max_norm)
    arrays = list(grads.values())
    if not arrays:
        return 0.0
    xp = get_xp(*arrays)
    norms = xp.stack([xp.linalg.norm(g.reshape(-1)) for g in arrays])  # (K,) one norm per array
    total = float(xp.linalg.norm(norms))                         # the norm of the norms; one sync with the GPU
    if not math.isfinite(total):
        return total
    coef = max_norm / (total + 1e-6)
    if coef < 1:
        for g in arrays:
            g *= coef                                            # in place: the caller's arrays, same direction
    return total


# ---- checks ---------------------------------------------------------------------------------------

def _check_params(params, what="params"):
    """params must be a dict {key: array}."""
    if not isinstance(params, dict):
        raise ValueError(f"{what} must be a dict {{key: array}} (like model.params), got {type(params).__name__}")
    bad = [k for k, p in params.items() if not hasattr(p, "shape") or not hasattr(p, "dtype")]
    if bad:
        raise ValueError(f"{what} values must be arrays; not arrays: {', '.join(map(str, bad))}")


def _shapes(params):
    return {k: p.shape for k, p in params.items()}


def _check_dtypes(params, grads):
    """A grad must have its param's dtype: nothing silently upcasts (a float64 grad on a float32 param)."""
    bad = [f"{k} is {grads[k].dtype}, param is {p.dtype}" for k, p in params.items() if grads[k].dtype != p.dtype]
    if bad:
        raise ValueError("grads do not fit the optimizer's params: dtype mismatches: " + ", ".join(bad))


def _check_number(name, value):
    """value as a finite Python float, or a ValueError naming it."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not math.isfinite(value):
        raise ValueError(f"{name}={value!r}: expected a finite real number")
    return float(value)


def _check_nonnegative(name, value):
    value = _check_number(name, value)
    if value < 0:
        raise ValueError(f"{name}={value!r}: expected >= 0")
    return value


def _check_lr(lr):
    return _check_nonnegative("lr", lr)


def _check_max_norm(max_norm):
    """max_norm > 0; inf is allowed (measure the norm, never clip)."""
    if isinstance(max_norm, bool) or not isinstance(max_norm, numbers.Real) or not max_norm > 0:
        raise ValueError(f"max_norm={max_norm!r}: expected a number > 0")
    return float(max_norm)


def _check_betas(betas):
    """(beta1, beta2), each in [0, 1)."""
    if isinstance(betas, str) or not hasattr(betas, "__len__") or len(betas) != 2:
        raise ValueError(f"betas={betas!r}: expected a pair (beta1, beta2)")
    for i, beta in enumerate(betas):
        if not 0 <= _check_number(f"betas[{i}]", beta) < 1:
            raise ValueError(f"betas[{i}]={beta!r}: expected 0 <= beta < 1")
    return tuple(float(beta) for beta in betas)


def _check_decay(decay, params):
    """decay: a collection of param keys -> a set; an unknown key is an error (a typo would silently not decay)."""
    if isinstance(decay, (str, bytes)) or not hasattr(decay, "__iter__"):
        raise ValueError(f"decay={decay!r}: expected None or a collection of param keys")
    decay = set(decay)
    unknown = sorted(map(str, decay - set(params)))
    if unknown:
        raise ValueError(f"decay names keys that are not params: {', '.join(unknown)}")
    return decay


def _check_count(name, value):
    """A step count: an int >= 0 (NumPy ints too), else a ValueError naming it."""
    try:
        count = operator.index(value)
    except TypeError:
        raise ValueError(f"{name}={value!r}: expected an integer >= 0") from None
    if isinstance(value, bool) or count < 0:
        raise ValueError(f"{name}={value!r}: expected an integer >= 0")
    return count


def _check_step(step):
    return _check_count("step", step)


def _check_schedule(step, max_lr, min_lr, warmup_steps, total_steps):
    """The arguments of cosine_lr / linear_lr, each checked by name."""
    _check_count("step", step)
    warmup_steps = _check_count("warmup_steps", warmup_steps)
    total_steps = _check_count("total_steps", total_steps)
    max_lr = _check_nonnegative("max_lr", max_lr)
    min_lr = _check_nonnegative("min_lr", min_lr)
    if warmup_steps > total_steps:
        raise ValueError(f"warmup_steps={warmup_steps} > total_steps={total_steps}")
    if min_lr > max_lr:
        raise ValueError(f"min_lr={min_lr} > max_lr={max_lr}")


def _check_state_names(optimizer, state, names):
    """A state dict must have exactly these names, and come from the same kind of optimizer."""
    if not isinstance(state, dict):
        raise ValueError(f"state must be a dict (from state_dict()), got {type(state).__name__}")
    if state.get("optimizer", optimizer) != optimizer:                 # first: it explains all the other names
        raise ValueError(f"state is from a {state['optimizer']!r} optimizer, not {optimizer!r}")
    missing = [n for n in names if n not in state]
    unknown = sorted(str(n) for n in state if n not in names)
    if missing or unknown:
        raise ValueError(f"{optimizer} state: missing names: {missing or 'none'}; unknown names: {unknown or 'none'}")


def _jsonable(value):
    """A hyper-parameter as JSON can hold it: a tuple as a list, a set as a sorted list."""
    if isinstance(value, (set, frozenset)):
        return sorted(value)
    return list(value) if isinstance(value, tuple) else value
