"""The training loop: every preset learns, a resumed run equals an uninterrupted one bit for bit,
and faults (NaN, Ctrl-C, a mismatched or damaged checkpoint) stop cleanly and keep the last good one."""
import itertools
import json

import numpy as np
import pytest

from minigpt import checkpoint, train as training
from minigpt.config import FAMILIES
from minigpt.train import TrainingDiverged, TrainOptions, read_log, train

SMALL = dict(n_layer=1, d_model=32, n_head=4)


def options(tmp_path, name="run", **overrides):
    base = dict(steps=8, batch_size=4, seq_len=16, eval_every=4, eval_batches=2, checkpoint_every=100,
                out=str(tmp_path / name), progress=False, sample_tokens=8, model=dict(SMALL))
    return TrainOptions(**{**base, **overrides})


def losses(out):
    return [loss for _, loss in read_log(f"{out}/log.jsonl")[0]]


@pytest.mark.parametrize("preset", sorted(FAMILIES))
def test_every_preset_learns(tmp_path, preset):
    """200 steps on the built-in corpus at a small size (2 layers: GPT-3's second is banded): the training
    loss falls by at least 30%."""
    result = train(options(tmp_path, preset=preset, steps=200, batch_size=8, seq_len=32, eval_every=200,
                           lr=3e-3, model=dict(SMALL, n_layer=2, attn_window=8)))
    curve = losses(result["out"])
    first, last = np.mean(curve[:5]), np.mean(curve[-20:])
    print(f"{preset}: loss {first:.3f} -> {last:.3f} ({1 - last / first:.0%} lower)")
    assert last <= 0.7 * first, (first, last)
    assert np.isfinite(result["val_loss"]) and result["samples"]


@pytest.mark.parametrize("preset, extra", [("gpt2", dict(model=dict(SMALL, dropout=0.1))), ("glm", {}),
                                           ("llama", dict(accumulate=2))])
def test_resume_equals_uninterrupted(tmp_path, preset, extra):
    """Stopped after step 3 and resumed: the same losses and the same final weights, bit for bit
    (dropout's and the sampler's random states, AdamW's moments and the schedule all carry over)."""
    whole = train(options(tmp_path, "whole", preset=preset, **extra))
    train(options(tmp_path, "parts", preset=preset, **extra), stop_at=3)
    assert len(losses(tmp_path / "parts")) == 3
    parts = train(options(tmp_path, "parts", preset=preset, resume=True, **extra))
    assert losses(whole["out"]) == losses(parts["out"])
    a, b = checkpoint.load(whole["out"]), checkpoint.load(parts["out"])
    assert a.step == b.step == 8
    for key in a.params:
        np.testing.assert_array_equal(a.params[key], b.params[key], err_msg=key)


def test_nan_stops_the_run_and_keeps_the_last_checkpoint(tmp_path, monkeypatch):
    opts = options(tmp_path, checkpoint_every=2, eval_every=100)             # every cross_entropy call trains
    assert opts.shards == 2                                                  # two calls per step
    real = training.cross_entropy
    calls = itertools.count(1)                                               # next() is atomic: shards are threads

    def poisoned(logits, targets, **kw):
        n = next(calls)
        loss, dlogits = real(logits, targets, **kw)
        return (float("nan"), dlogits) if n == 2 * 4 + 1 else (loss, dlogits)    # one shard of step 5

    monkeypatch.setattr(training, "cross_entropy", poisoned)
    with pytest.raises(TrainingDiverged, match="step 5: the loss is nan") as err:
        train(opts)
    assert "step-000004" in str(err.value)
    saved = checkpoint.load(opts.out)
    assert saved.step == 4 and all(np.isfinite(p).all() for p in saved.params.values())


def test_ctrl_c_saves_a_checkpoint_and_resume_continues(tmp_path, monkeypatch):
    opts = options(tmp_path)
    real = training.train_step

    def interrupted(run):
        if run.step == 3:
            raise KeyboardInterrupt
        return real(run)

    monkeypatch.setattr(training, "train_step", interrupted)
    result = train(opts)
    assert result["interrupted"] and result["step"] == 3 and checkpoint.load(opts.out).step == 3
    monkeypatch.setattr(training, "train_step", real)
    assert train(opts, resume=True)["step"] == 8


def test_resume_with_another_config_says_what_differs(tmp_path):
    train(options(tmp_path, steps=2))
    with pytest.raises(ValueError, match="n_layer: checkpoint has 1, model has 2"):
        train(options(tmp_path, steps=2, resume=True, model=dict(SMALL, n_layer=2)))


def test_resume_from_a_damaged_checkpoint_is_an_error_and_changes_nothing(tmp_path):
    opts = options(tmp_path, steps=2)
    train(opts)
    folder = checkpoint.latest(opts.out)
    weights = f"{folder}/model.safetensors"
    with open(weights, "r+b") as f:
        f.truncate(100)
    log_before = (tmp_path / "run" / "log.jsonl").read_text()
    with pytest.raises(ValueError, match="model.safetensors"):
        train(opts, resume=True, steps=4)
    assert (tmp_path / "run" / "log.jsonl").read_text() == log_before


def test_bad_options_are_errors(tmp_path):
    for overrides, match in ((dict(steps=0), "steps=0"), (dict(lr=-1.0), "lr=-1.0"),
                             (dict(warmup_steps=20), "warmup_steps=20"), (dict(tokenizer="words"), "tokenizer='words'"),
                             (dict(objective="glm"), "objective='glm' needs a prefix-attention preset")):
        with pytest.raises(ValueError, match=match):
            train(options(tmp_path, **overrides))


def test_the_log_and_the_curve(tmp_path):
    result = train(options(tmp_path))
    records = [json.loads(line) for line in (tmp_path / "run" / "log.jsonl").read_text().splitlines()]
    steps = [r for r in records if "loss" in r]
    assert [r["step"] for r in steps] == list(range(1, 9))
    assert {"lr", "grad_norm", "tokens_per_s"} <= set(steps[0])
    assert [r["step"] for r in records if "val_loss" in r] == [4, 8]
    assert (tmp_path / "run" / "loss.png").stat().st_size > 1000 and result["loss_png"].endswith("loss.png")
