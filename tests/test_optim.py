"""minigpt.optim: SGD and AdamW against torch.optim, schedules against independent formulas,
gradient clipping against torch.nn.utils.clip_grad_norm_, state round trips, in-place updates,
bad input, and the optimizer on a real Model (decay groups, a falling loss, gradient accumulation).
Only the parity tests need torch."""
import copy
import json
import math

import numpy as np
import pytest

import minigpt
from minigpt.optim import SGD, AdamW, clip_grad_norm, constant_lr, cosine_lr, default_decay, linear_lr

# odd shapes: a matrix, a bias vector, an embedding table, a norm gain
SHAPES = {"blocks.0.attn.wq": (5, 3), "blocks.0.attn.bq": (3,), "wte": (7, 5), "blocks.0.norm1.w": (5,)}
STEPS = 20


def _params(dtype=np.float64, seed=0):
    rng = np.random.default_rng(seed)
    return {k: rng.standard_normal(shape).astype(dtype) for k, shape in SHAPES.items()}


def _grads(n=STEPS, dtype=np.float64, seed=1):
    rng = np.random.default_rng(seed)
    return [{k: rng.standard_normal(shape).astype(dtype) for k, shape in SHAPES.items()} for _ in range(n)]


def _run(opt, grads):
    for g in grads:
        opt.step(g)
    return opt


def _torch_run(torch, params, grads, make_torch_opt):
    """The same steps with a torch optimizer; make_torch_opt({key: tensor}) -> torch.optim.Optimizer."""
    tp = {k: torch.tensor(p.copy(), requires_grad=True) for k, p in params.items()}
    opt = make_torch_opt(tp)
    for g in grads:
        for k, t in tp.items():
            t.grad = torch.tensor(g[k].copy())
        opt.step()
    return {k: t.detach().numpy() for k, t in tp.items()}


def _max_error(ours, theirs, relative=False):
    """The largest absolute difference over all arrays; relative: divided by each array's largest |value|
    (float32 rounds differently from torch, which fuses multiply-adds; one ulp of a small element is not the test)."""
    errors = []
    for k in ours:
        diff = np.abs(ours[k].astype(np.float64) - theirs[k].astype(np.float64)).max()
        errors.append(diff / np.abs(theirs[k]).max() if relative else diff)
    return max(errors)


# ---- parity with torch.optim --------------------------------------------------------------------

ADAMW_CASES = [dict(lr=1e-2, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.01, decay=None),
               dict(lr=3e-2, betas=(0.9, 0.95), eps=1e-6, weight_decay=0.1, decay=None),
               dict(lr=1e-2, betas=(0.8, 0.99), eps=1e-8, weight_decay=0.1, decay=set(SHAPES)),
               dict(lr=1e-2, betas=(0.0, 0.5), eps=1e-8, weight_decay=0.0, decay=set())]


def _torch_adamw(torch, case, decay):
    def make(tp):
        groups = [{"params": [t for k, t in tp.items() if k in decay], "weight_decay": case["weight_decay"]},
                  {"params": [t for k, t in tp.items() if k not in decay], "weight_decay": 0.0}]
        return torch.optim.AdamW([g for g in groups if g["params"]], lr=case["lr"], betas=case["betas"],
                                 eps=case["eps"], foreach=False)
    return make


@pytest.mark.parametrize("case", ADAMW_CASES)
@pytest.mark.parametrize("dtype, tol", [(np.float64, 1e-12), (np.float32, 1e-6)])
def test_adamw_matches_torch(case, dtype, tol):
    torch = pytest.importorskip("torch")
    params, grads = _params(dtype), _grads(dtype=dtype)
    start = {k: p.copy() for k, p in params.items()}
    opt = _run(AdamW(params, **case), grads)
    expected = _torch_run(torch, start, grads, _torch_adamw(torch, case, opt.decay))
    assert _max_error(params, expected, relative=dtype == np.float32) < tol
    assert all(p.dtype == dtype for p in params.values())
    assert all(m.dtype == dtype for m in opt.state["exp_avg"].values())


@pytest.mark.parametrize("case", ADAMW_CASES)
def test_fused_float32_adamw_is_the_numpy_update_bit_for_bit(case):
    """float32 NumPy params step through minigpt.kernels.adamw_cpu, one pass per param; the numbers must be
    exactly those of AdamW._update's NumPy lines (float64 above holds those to torch), params and state alike,
    after 20 steps with decayed and undecayed keys. A multiply-add fused into an FMA would already differ."""
    fused_params, plain_params = _params(np.float32), _params(np.float32)
    fused, plain = AdamW(fused_params, **case), AdamW(plain_params, **case)
    plain._fused_update = None                                                 # the NumPy lines
    assert fused._fused_update is not None
    _run(fused, _grads(dtype=np.float32)), _run(plain, _grads(dtype=np.float32))
    for k in SHAPES:
        assert np.array_equal(fused_params[k], plain_params[k]), k
        for name in AdamW.BUFFERS:
            assert np.array_equal(fused.state[name][k], plain.state[name][k]), (name, k)


def test_fused_adamw_checks_its_arrays():
    """The kernel's entry point names a wrong shape or a non-float32 / non-contiguous array; AdamW itself
    takes the NumPy lines for such arrays, and float64 or mixed params never go to the kernel."""
    from minigpt.kernels.adamw_cpu import adamw_update
    p, m, v = (np.zeros((3, 4), np.float32) for _ in range(3))
    with pytest.raises(ValueError, match=r"g has shape \(4, 3\)"):
        adamw_update(p, np.zeros((4, 3), np.float32), m, v, 1.0, (0.9, 0.99), 1e-8, 1.0, 1e-3)
    with pytest.raises(ValueError, match="g must be a C-contiguous float32 array, got float64"):
        adamw_update(p, np.zeros((3, 4)), m, v, 1.0, (0.9, 0.99), 1e-8, 1.0, 1e-3)
    with pytest.raises(ValueError, match="m must be a C-contiguous float32"):
        adamw_update(p, np.zeros((3, 4), np.float32), np.zeros((4, 3), np.float32).T, v,
                     1.0, (0.9, 0.99), 1e-8, 1.0, 1e-3)
    assert AdamW(_params(np.float64))._fused_update is None
    mixed = dict(_params(np.float32), extra=np.zeros(3))
    assert AdamW(mixed)._fused_update is None


SGD_CASES = [dict(lr=0.1), dict(lr=0.1, momentum=0.9), dict(lr=0.05, momentum=0.9, nesterov=True),
             dict(lr=0.1, weight_decay=0.01), dict(lr=0.05, momentum=0.8, weight_decay=0.1),
             dict(lr=0.05, momentum=0.9, weight_decay=0.1, nesterov=True)]


@pytest.mark.parametrize("case", SGD_CASES)
@pytest.mark.parametrize("dtype, tol", [(np.float64, 1e-12), (np.float32, 1e-6)])
def test_sgd_matches_torch(case, dtype, tol):
    torch = pytest.importorskip("torch")
    params, grads = _params(dtype), _grads(dtype=dtype)
    start = {k: p.copy() for k, p in params.items()}
    _run(SGD(params, **case), grads)
    expected = _torch_run(torch, start, grads, lambda tp: torch.optim.SGD(list(tp.values()), foreach=False, **case))
    assert _max_error(params, expected, relative=dtype == np.float32) < tol


@pytest.mark.parametrize("max_norm", [0.5, 1e3])                 # clipped, not clipped
@pytest.mark.parametrize("dtype, tol", [(np.float64, 1e-12), (np.float32, 1e-6)])
def test_clip_grad_norm_matches_torch(max_norm, dtype, tol):
    torch = pytest.importorskip("torch")
    grads = _grads(1, dtype)[0]
    tensors = [torch.tensor(g.copy(), requires_grad=True) for g in grads.values()]
    for t, g in zip(tensors, grads.values()):
        t.grad = torch.tensor(g.copy())
    expected_norm = float(torch.nn.utils.clip_grad_norm_(tensors, max_norm, foreach=False))
    before = {k: g.copy() for k, g in grads.items()}
    norm = clip_grad_norm(grads, max_norm)
    assert isinstance(norm, float)
    assert abs(norm - expected_norm) <= tol * expected_norm
    expected = {k: t.grad.numpy() for k, t in zip(grads, tensors)}
    assert _max_error(grads, expected, relative=dtype == np.float32) < tol
    clipped = norm > max_norm
    assert clipped == (max_norm == 0.5)
    assert all(np.array_equal(grads[k], before[k]) for k in grads) == (not clipped)


# ---- clipping without torch ---------------------------------------------------------------------

def test_clip_grad_norm_is_the_global_norm_and_keeps_direction():
    grads = {"a": np.array([3.0, 0.0]), "b": np.array([[0.0], [4.0]])}   # global norm 5
    ids = {k: id(g) for k, g in grads.items()}
    assert clip_grad_norm(grads, 1.0) == 5.0
    assert {k: id(g) for k, g in grads.items()} == ids                    # scaled in place
    np.testing.assert_allclose(grads["a"], [3.0 / (5 + 1e-6), 0.0], rtol=1e-15)
    np.testing.assert_allclose(grads["b"][:, 0], [0.0, 4.0 / (5 + 1e-6)], rtol=1e-15)
    assert clip_grad_norm(grads, math.inf) == pytest.approx(1.0, rel=1e-6)  # max_norm=inf: only measure


@pytest.mark.parametrize("bad", [np.nan, np.inf])
def test_clip_grad_norm_nonfinite_returns_norm_and_leaves_grads(bad):
    grads = _grads(1)[0]
    grads["wte"][2, 3] = bad
    before = {k: g.copy() for k, g in grads.items()}
    norm = clip_grad_norm(grads, 1.0)
    assert not math.isfinite(norm)
    assert all(np.array_equal(grads[k], before[k], equal_nan=True) for k in grads)


def test_clip_grad_norm_rejects_bad_max_norm_and_handles_empty():
    assert clip_grad_norm({}, 1.0) == 0.0
    for bad in (0, -1.0, math.nan, "1", True):
        with pytest.raises(ValueError, match="max_norm"):
            clip_grad_norm(_grads(1)[0], bad)


# ---- schedules -----------------------------------------------------------------------------------

def _cosine_expected(step, max_lr, min_lr, warmup, total):
    """An independent re-statement: warmup as a table of w evenly spaced values ending at max_lr,
    then 0.5 (1 + cos x) written as cos^2(x / 2)."""
    if step < warmup:
        return np.linspace(max_lr / warmup, max_lr, warmup)[step]
    if step >= total:
        return min_lr
    return min_lr + (max_lr - min_lr) * math.cos(math.pi / 2 * (step - warmup) / (total - warmup)) ** 2


def _linear_expected(step, max_lr, min_lr, warmup, total):
    if step < warmup:
        return np.linspace(max_lr / warmup, max_lr, warmup)[step]
    return float(np.interp(step, [warmup, total], [max_lr, min_lr]))     # np.interp holds min_lr beyond total


SCHEDULE_CASES = [(6e-4, 6e-5, 10, 50), (1.0, 0.0, 0, 7), (3e-4, 3e-4, 4, 9), (1e-3, 1e-4, 5, 5), (2.0, 0.5, 1, 2)]


@pytest.mark.parametrize("schedule, expected", [(cosine_lr, _cosine_expected), (linear_lr, _linear_expected)])
@pytest.mark.parametrize("max_lr, min_lr, warmup, total", SCHEDULE_CASES)
def test_schedule_matches_independent_formula(schedule, expected, max_lr, min_lr, warmup, total):
    for step in range(total + 10):
        lr = schedule(step, max_lr, min_lr, warmup, total)
        assert isinstance(lr, float)
        assert lr == pytest.approx(expected(step, max_lr, min_lr, warmup, total), rel=1e-12, abs=1e-15), step


def test_schedule_boundaries():
    max_lr, min_lr, warmup, total = 1.0, 0.1, 4, 12
    for schedule in (cosine_lr, linear_lr):
        assert schedule(0, max_lr, min_lr, warmup, total) == 0.25                  # (0 + 1) / 4: the first step moves
        assert schedule(warmup - 1, max_lr, min_lr, warmup, total) == max_lr        # warmup ends at max_lr
        assert schedule(warmup, max_lr, min_lr, warmup, total) == max_lr            # the decay starts there
        assert schedule(total, max_lr, min_lr, warmup, total) == min_lr
        assert schedule(10 * total, max_lr, min_lr, warmup, total) == min_lr
    assert cosine_lr(8, max_lr, min_lr, warmup, total) == pytest.approx(0.55)      # halfway: the mean
    assert linear_lr(8, max_lr, min_lr, warmup, total) == pytest.approx(0.55)
    assert [constant_lr(s, 0.5, warmup_steps=2) for s in range(4)] == [0.25, 0.5, 0.5, 0.5]
    assert constant_lr(0, 0.5) == 0.5


@pytest.mark.parametrize("args, name", [((-1, 1.0, 0.1, 2, 10), "step"), ((0, 1.0, 0.1, -2, 10), "warmup_steps"),
                                        ((0, 1.0, 0.1, 2, -10), "total_steps"), ((0, 1.0, 0.1, 11, 10), "warmup_steps"),
                                        ((0, 0.1, 1.0, 2, 10), "min_lr"), ((0, -1.0, -2.0, 2, 10), "max_lr"),
                                        ((1.5, 1.0, 0.1, 2, 10), "step"), ((0, math.nan, 0.1, 2, 10), "max_lr")])
def test_schedule_rejects_bad_arguments(args, name):
    for schedule in (cosine_lr, linear_lr):
        with pytest.raises(ValueError, match=name):
            schedule(*args)
    with pytest.raises(ValueError, match="lr"):
        constant_lr(0, -1.0)
    with pytest.raises(ValueError, match="warmup_steps"):
        constant_lr(0, 1.0, warmup_steps=-1)


# ---- state, in place, errors -------------------------------------------------------------------

def _through_json_and_copies(state):
    """What a checkpoint does: dicts of arrays to one file (copied here), everything else through JSON."""
    arrays = {k: {name: a.copy() for name, a in v.items()} for k, v in state.items() if isinstance(v, dict)}
    scalars = json.loads(json.dumps({k: v for k, v in state.items() if k not in arrays}))
    return {**scalars, **arrays}


@pytest.mark.parametrize("make", [lambda p: AdamW(p, lr=1e-2, betas=(0.9, 0.95), weight_decay=0.1),
                                  lambda p: SGD(p, lr=0.05, momentum=0.9, weight_decay=0.01, nesterov=True)])
@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_state_dict_round_trip_continues_bit_identically(make, dtype):
    grads = _grads(2 * 7, dtype)
    params = _params(dtype)
    opt = _run(make(params), grads[:7])
    state = opt.state_dict()
    for value in state.values():                                  # the checkpoint rule holds
        assert all(isinstance(a, np.ndarray) for a in value.values()) if isinstance(value, dict) else json.dumps(value)
    resumed_params = {k: p.copy() for k, p in params.items()}
    resumed = make(resumed_params)
    resumed.lr = 123.0                                            # overwritten by the load
    resumed.load_state_dict(_through_json_and_copies(state))
    assert resumed.state_dict()["lr"] == state["lr"] and resumed.t == 7
    _run(opt, grads[7:])
    _run(resumed, grads[7:])
    assert all(np.array_equal(params[k], resumed_params[k]) for k in params)
    assert all(resumed_params[k].dtype == dtype for k in params)


def test_state_dict_holds_copies():
    params = _params()
    opt = _run(AdamW(params, lr=1e-2), _grads(3))
    state = opt.state_dict()
    assert state["step"] == 3 and state["decay"] == ["blocks.0.attn.wq"] and state["betas"] == [0.9, 0.999]
    state["exp_avg"]["wte"][...] = 7.0                            # changing the snapshot changes nothing
    assert not np.any(opt.state["exp_avg"]["wte"] == 7.0)
    fresh = AdamW(_params(), lr=1e-2)
    fresh.load_state_dict(state)
    state["exp_avg"]["wte"][...] = 9.0                            # nor does changing the state after a load
    assert np.all(fresh.state["exp_avg"]["wte"] == 7.0)


def test_step_updates_model_params_in_place_and_leaves_grads():
    model = minigpt.Model(minigpt.ModelConfig.preset("gpt2", n_layer=1, d_model=32, max_seq_len=8, vocab_size=50))
    ids = {k: id(p) for k, p in model.params.items()}
    before = {k: p.copy() for k, p in model.params.items()}
    rng = np.random.default_rng(0)
    grads = {k: rng.standard_normal(p.shape).astype(p.dtype) for k, p in model.params.items()}
    grads_before = {k: g.copy() for k, g in grads.items()}
    for opt in (AdamW(model.params, lr=1e-2), SGD(model.params, lr=0.1, momentum=0.9, weight_decay=0.1)):
        opt.step(grads)
    assert {k: id(p) for k, p in model.params.items()} == ids
    assert all(not np.array_equal(model.params[k], before[k]) for k in ids)
    assert all(np.array_equal(grads[k], grads_before[k]) for k in grads)
    assert all(p.dtype == np.float32 for p in model.params.values())


def _assert_step_fails(opt, grads, match):
    params_before = {k: p.copy() for k, p in opt.params.items()}
    t = opt.t
    with pytest.raises(ValueError, match=match):
        opt.step(grads)
    assert opt.t == t and all(np.array_equal(opt.params[k], params_before[k]) for k in params_before)


def test_step_rejects_bad_grads_and_lr():
    for opt in (AdamW(_params(), lr=1e-2), SGD(_params(), lr=0.1)):
        grads = _grads(1)[0]
        _assert_step_fails(opt, {k: g for k, g in grads.items() if k != "wte"}, "(?s)missing keys.*wte")
        _assert_step_fails(opt, {**grads, "extra": np.zeros(2)}, "(?s)unexpected keys.*extra")
        _assert_step_fails(opt, {**grads, "wte": np.zeros((5, 7))}, r"wte has \(5, 7\), expected \(7, 5\)")
        _assert_step_fails(opt, {**grads, "wte": grads["wte"].astype(np.float32)}, "wte is float32")
        _assert_step_fails(opt, [grads], "dict")
        opt.lr = -1e-3
        _assert_step_fails(opt, grads, "lr")


@pytest.mark.parametrize("kwargs, match", [(dict(lr=-1.0), "lr"), (dict(lr=math.inf), "lr"), (dict(betas=(0.9, 1.0)), "betas"),
                                           (dict(betas=(-0.1, 0.9)), "betas"), (dict(betas=0.9), "betas"),
                                           (dict(betas=(0.9, 0.99, 0.999)), "betas"), (dict(eps=-1e-8), "eps"),
                                           (dict(weight_decay=-0.1), "weight_decay"), (dict(decay={"wte", "nope"}), "nope"),
                                           (dict(decay="wte"), "decay")])
def test_adamw_rejects_bad_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        AdamW(_params(), **kwargs)


@pytest.mark.parametrize("kwargs, match", [(dict(lr=-0.1), "lr"), (dict(lr=0.1, momentum=-0.9), "momentum"),
                                           (dict(lr=0.1, nesterov=True), "nesterov"),
                                           (dict(lr=0.1, weight_decay=-1.0), "weight_decay")])
def test_sgd_rejects_bad_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        SGD(_params(), **kwargs)
    with pytest.raises(ValueError, match="dict"):
        SGD([np.zeros(3)], lr=0.1)


def test_load_state_dict_rejects_bad_state_and_changes_nothing():
    params = _params()
    state = _run(AdamW(params, lr=1e-2), _grads(2)).state_dict()
    opt = AdamW(_params(), lr=5e-3)
    before = opt.state_dict()
    bad_states = [({**state, "momentum": 0.9}, "unknown names.*momentum"),
                  ({k: v for k, v in state.items() if k != "eps"}, "missing names.*eps"),
                  ({**state, "optimizer": "SGD"}, "SGD"),
                  ({**state, "exp_avg": {**state["exp_avg"], "wte": np.zeros((5, 7))}}, "(?s)exp_avg.*wte has"),
                  ({**state, "exp_avg_sq": {}}, "(?s)exp_avg_sq.*missing keys"),
                  ({**state, "decay": ["wte", "nope"]}, "nope"),
                  ({**state, "betas": [0.9, 1.5]}, "betas"),
                  ({**state, "step": -1}, "step"),
                  ({**state, "lr": -1.0}, "lr")]
    for bad, match in bad_states:
        with pytest.raises(ValueError, match=match):
            opt.load_state_dict(bad)
        after = opt.state_dict()
        assert {k: v for k, v in after.items() if not isinstance(v, dict)} == \
               {k: v for k, v in before.items() if not isinstance(v, dict)}
        assert all(np.array_equal(after["exp_avg"][k], before["exp_avg"][k]) for k in SHAPES)
    with pytest.raises(ValueError, match="AdamW"):
        SGD(_params(), lr=0.1).load_state_dict(state)


# ---- with a real Model ---------------------------------------------------------------------------

def _tiny(preset, **overrides):
    cfg = minigpt.ModelConfig.preset(preset, n_layer=1, d_model=32, max_seq_len=8, vocab_size=50, **overrides)
    return minigpt.Model(cfg, dtype="float64")


def test_default_decay_on_real_models():
    gpt2 = _tiny("gpt2")
    matrices = {f"blocks.0.attn.{w}" for w in ("wq", "wk", "wv", "wo")} | {"blocks.0.mlp.w_up", "blocks.0.mlp.w_down"}
    assert default_decay(gpt2.params) == matrices
    assert default_decay(gpt2.params, decay_embeddings=True) == matrices | {"wte", "wpe"}
    llama = _tiny("llama")
    assert default_decay(llama.params) == matrices | {"blocks.0.mlp.w_gate", "lm_head"}
    assert "wbpe" not in default_decay(_tiny("glm").params)
    assert AdamW(llama.params).decay == default_decay(llama.params)


def _batch(k=1, b=2, T=8, seed=0):
    rng = np.random.default_rng(seed)
    tokens = rng.integers(0, 50, size=(k * b, T + 1))
    return tokens[:, :-1], tokens[:, 1:]


def test_adamw_lowers_the_loss_of_a_real_model():
    model = _tiny("gpt2")
    ids, targets = _batch(b=4)
    opt = AdamW(model.params, lr=1e-2, weight_decay=0.1)
    losses = []
    for _ in range(8):
        loss, dlogits = minigpt.cross_entropy(model.forward(ids), targets)
        model.zero_grad()
        model.backward(dlogits)
        clip_grad_norm(model.grads, 1.0)
        opt.step(model.grads)
        losses.append(loss)
    assert losses[-1] < losses[0] - 0.5, losses


def test_gradient_accumulation_matches_one_large_batch():
    """k micro-batches, each loss scaled by 1/k, accumulated into model.grads == one batch k times larger."""
    k, b = 3, 2
    model = _tiny("llama")
    ids, targets = _batch(k=k, b=b)
    _, dlogits = minigpt.cross_entropy(model.forward(ids), targets)
    model.zero_grad()
    model.backward(dlogits)
    full = {key: g.copy() for key, g in model.grads.items()}
    model.zero_grad()
    for i in range(k):
        rows = slice(i * b, (i + 1) * b)
        _, dlogits = minigpt.cross_entropy(model.forward(ids[rows]), targets[rows])
        model.backward(dlogits / k)                               # the mean over k micro-batches
    assert max(np.abs(model.grads[key] - full[key]).max() for key in full) < 1e-12
