"""Data parallelism (minigpt.parallel): shards computed on threads give the full batch's loss and gradient,
whatever the number of threads, for CLM windows and for GLM samples with different numbers of counted tokens."""
import numpy as np
import pytest

from minigpt import threads
from minigpt.config import ModelConfig
from minigpt.data.glm import GLMCollator, GLMSpecialIds
from minigpt.layers.loss import cross_entropy
from minigpt.model import Model
from minigpt.parallel import DataParallel
from minigpt.train import _clm_loss, _glm_shard_loss

V, T = 40, 12


def tiny(name, **overrides):
    return ModelConfig.preset(name, n_layer=2, d_model=24, n_head=4, vocab_size=V, max_seq_len=32, **overrides)


def clm_batch(B, seed=0):
    ids = np.random.default_rng(seed).integers(0, V, size=(B, T + 1))
    return ids[:, :-1], ids[:, 1:]


def full_batch_grads(model, inputs, targets):
    """The reference: one forward and backward over the whole batch."""
    model.zero_grad()
    loss, dlogits = cross_entropy(model.forward(inputs), targets)
    model.backward(dlogits)
    return loss, {k: g.copy() for k, g in model.grads.items()}


def assert_same_grads(got, expected, tol=1e-12):
    """Every gradient within tol of the expected one, relative to the largest expected entry of ANY parameter:
    some are zero up to rounding (a key bias cannot change a softmax), and rounding scales with the sums."""
    scale = max(float(np.abs(g).max()) for g in expected.values())
    for key, grad in expected.items():
        assert np.abs(got[key] - grad).max() <= tol * scale, key


@pytest.mark.parametrize("name", ["gpt2", "llama"])
@pytest.mark.parametrize("B, shards", [(4, 2), (5, 2), (5, 3), (2, 4)])
def test_shards_give_the_full_batch_gradient(name, B, shards):
    """float64: the shards' weighted sum equals the whole batch's gradient to rounding (B=5 splits 3 + 2;
    B=2 with 4 shards uses 2). Rounding of a sum of a few float64 terms: 1e-12 relative is generous."""
    model = Model(tiny(name), seed=1, dtype="float64")
    inputs, targets = clm_batch(B)
    loss, expected = full_batch_grads(model, inputs, targets)
    model.zero_grad()
    dp_loss = DataParallel(model, shards).forward_backward((inputs, targets), _clm_loss)
    assert abs(dp_loss - loss) < 1e-12
    assert_same_grads(model.grads, expected)


def test_glm_shards_weight_by_counted_tokens():
    """GLM samples count different numbers of Part B tokens: each shard's mean is weighted by its count,
    so the result is the mean over all counted tokens of the batch, exactly."""
    model = Model(tiny("glm"), seed=2, dtype="float64")
    special = GLMSpecialIds(mask=V - 6, smask=V - 5, gmask=V - 4, sop=V - 3, eop=V - 2, pad=V - 1)
    windows = np.random.default_rng(3).integers(0, V - 6, size=(3, 14)).tolist()        # shards of 2 and 1
    batch = GLMCollator(special, length=20)(windows, seed=[0, 1])
    counted = (batch.loss_mask != 0).sum(axis=1)
    assert counted[:2].sum() != 2 * counted[2:].sum()                    # not in proportion to the samples
    arrays = (batch.ids, batch.position_ids, batch.block_position_ids, batch.sep, batch.targets, batch.loss_mask)
    model.zero_grad()
    loss, dlogits, _ = _glm_shard_loss(model, *arrays)
    model.backward(dlogits)
    expected = {k: g.copy() for k, g in model.grads.items()}
    model.zero_grad()
    dp_loss = DataParallel(model, 2).forward_backward(arrays, _glm_shard_loss)
    assert abs(dp_loss - loss) < 1e-12
    assert_same_grads(model.grads, expected)


def test_the_result_does_not_depend_on_the_thread_count(monkeypatch):
    """The split is fixed by `shards`; one core (the shards in turn, in this thread) or three (three shard
    threads at once) only changes who computes what: float32 grads equal bit for bit."""
    inputs, targets = clm_batch(6)
    results = []
    for cores in (1, 3):
        monkeypatch.setattr(threads, "available_cores", lambda: cores)
        model = Model(tiny("gpt2"), seed=0)
        DataParallel(model, 3).forward_backward((inputs, targets), _clm_loss)
        results.append(model.grads)
    for key in results[0]:
        np.testing.assert_array_equal(results[0][key], results[1][key], err_msg=key)


def test_replicas_share_the_parameters_and_keep_their_own_grads():
    model = Model(tiny("llama"), seed=0)
    dp = DataParallel(model, 3)
    for replica in dp.replicas[1:]:
        assert replica.params is model.params and replica.grads is not model.grads
    model.params["wte"] += 1.0                                             # what an optimizer step does: in place
    assert all(r.params["wte"] is model.params["wte"] for r in dp.replicas)
    inputs, targets = clm_batch(3)
    dp.forward_backward((inputs, targets), _clm_loss)
    assert all(not g.any() for r in dp.replicas[1:] for g in r.grads.values())   # added into model.grads, reset


def test_dropout_masks_follow_the_models_stream():
    """With dropout, two runs from the same model seed draw the same masks (the shards' generators are seeded
    from model.dropout_rng, which checkpoints save)."""
    grads = []
    for _ in range(2):
        model = Model(tiny("gpt2", dropout=0.2), seed=0)
        DataParallel(model, 2).forward_backward(clm_batch(4), _clm_loss)
        grads.append(model.grads)
    for key in grads[0]:
        np.testing.assert_array_equal(grads[0][key], grads[1][key], err_msg=key)


def test_grad_scale_zero_only_evaluates():
    model = Model(tiny("gpt2"), seed=0)
    loss = DataParallel(model, 2).forward_backward(clm_batch(4), _clm_loss, grad_scale=0)
    assert np.isfinite(loss) and not any(g.any() for g in model.grads.values())


@pytest.mark.parametrize("shards", [0, -1, 1.5, True, "2"])
def test_bad_shards_are_refused(shards):
    with pytest.raises(ValueError, match=f"shards={shards!r}: expected an integer >= 1"):
        DataParallel(Model(tiny("gpt2")), shards)


def test_optimizer_updates_on_the_shard_threads_equal_the_serial_ones(monkeypatch):
    """AdamW through DataParallel.map_keys (two threads) gives the same parameters, bit for bit, as one after the
    other: every parameter is updated on its own, whichever thread does it."""
    from minigpt.optim import AdamW
    monkeypatch.setattr(threads, "available_cores", lambda: 2)
    inputs, targets = clm_batch(4)
    results = []
    for threaded in (True, False):
        model = Model(tiny("llama"), seed=0, dtype="float64")
        parallel = DataParallel(model, 2)
        optimizer = AdamW(model.params, lr=1e-2, weight_decay=0.1)
        seen = []
        for _ in range(3):
            model.zero_grad()
            parallel.forward_backward((inputs, targets), _clm_loss)
            if threaded:
                optimizer.step(model.grads, lambda work, keys: parallel.map_keys(lambda k: seen.append(k) or work(k),
                                                                                  keys))
            else:
                optimizer.step(model.grads)
        assert not threaded or sorted(seen) == sorted(list(model.params) * 3)   # every key once a step
        results.append(model.params)
    for key, value in results[0].items():
        np.testing.assert_array_equal(value, results[1][key], err_msg=key)
