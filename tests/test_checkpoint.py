"""minigpt.checkpoint: save a run, load it back bit for bit, restore it in place, survive crashes.

Bad checkpoints are made by really damaging files on disk (truncating, overwriting bytes, rewriting
JSON); crashes by making one step of save() fail, with and without the cleanup that an exception runs
(a killed process runs none). The optimizer is a stand-in with minigpt.optim's state_dict contract, so
these tests do not depend on optim.py.
"""
import hashlib
import json
import os
import shutil

import numpy as np
import pytest
from safetensors import SafetensorError
from safetensors.numpy import load_file, save_file

import minigpt
from minigpt import checkpoint
from minigpt.tokenizers import CharTokenizer

EOT = "<|endoftext|>"


def tiny_config(**overrides):
    return minigpt.ModelConfig.preset("llama", n_layer=1, d_model=32, vocab_size=50, max_seq_len=16, **overrides)


class FakeAdamW:
    """The optimizer contract checkpoint.py relies on: state_dict() gives JSON scalars and {param key: array}
    dicts; load_state_dict(state) takes them back (copying into its own arrays, refusing a wrong set)."""

    def __init__(self, params, lr=3e-4):
        self.lr, self.step_count = lr, 0
        self.exp_avg = {k: np.zeros_like(v) for k, v in params.items()}
        self.exp_avg_sq = {k: np.zeros_like(v) for k, v in params.items()}

    def fake_steps(self, n, seed=0):
        """Fill the moments with distinct numbers, as a few real steps would."""
        rng = np.random.default_rng(seed)
        self.step_count += n
        for k in self.exp_avg:
            self.exp_avg[k][...] = rng.standard_normal(self.exp_avg[k].shape)
            self.exp_avg_sq[k][...] = self.exp_avg[k] * self.exp_avg[k]
        return self

    def state_dict(self):
        return {"step": self.step_count, "lr": self.lr, "betas": [0.9, 0.95],
                "exp_avg": {k: v.copy() for k, v in self.exp_avg.items()},
                "exp_avg_sq": {k: v.copy() for k, v in self.exp_avg_sq.items()}}

    def load_state_dict(self, state):
        if set(state["exp_avg"]) != set(self.exp_avg):
            raise ValueError("load_state_dict: the state's parameters are not this optimizer's")
        self.step_count, self.lr = state["step"], state["lr"]
        for k in self.exp_avg:
            self.exp_avg[k][...] = state["exp_avg"][k]
            self.exp_avg_sq[k][...] = state["exp_avg_sq"][k]


def training_run(seed=1, dtype="float32", **overrides):
    """A model, its optimizer a few steps in, and a caller's state with an RNG state mid-stream."""
    model = minigpt.Model(tiny_config(**overrides), seed=seed, dtype=dtype)
    optimizer = FakeAdamW(model.params).fake_steps(5, seed=seed)
    rng = np.random.default_rng(seed)
    rng.random(7)
    state = {"step": 5, "rng": rng.bit_generator.state, "data": {"epoch": 0, "position": 1234}, "loss": 3.25}
    return model, optimizer, state


def saved_run(tmp_path, steps=(1,), **kwargs):
    """A run folder with a checkpoint at each step; returns (run_dir, model, optimizer) of the last."""
    run_dir = tmp_path / "run"
    for step in steps:
        model, optimizer, state = training_run(seed=step)
        checkpoint.save(run_dir, model, optimizer, state={**state, "step": step}, **kwargs)
    return run_dir, model, optimizer


def assert_params_equal(a, b):
    assert list(a) == list(b)
    for key in a:
        assert a[key].dtype == b[key].dtype and np.array_equal(a[key], b[key]), key


def rewrite_tensors(folder, name, tensors):
    """Replace a .safetensors file AND its record in state.json: a checkpoint consistently written with the
    wrong content (by other code, or by hand), not one damaged afterwards."""
    save_file(tensors, str(folder / name))
    state_path = folder / "state.json"
    meta = json.loads(state_path.read_text())
    data = (folder / name).read_bytes()
    meta["files"][name] = {"bytes": len(data), "sha256": hashlib.sha256(data).hexdigest()}
    state_path.write_text(json.dumps(meta))


def leftovers(run_dir):
    """Temporary files and folders in a run folder."""
    return sorted([n for n in os.listdir(run_dir / "checkpoints") if n.startswith(".")] +
                  [n for n in os.listdir(run_dir) if n.endswith(".tmp")])


# ------------------------------------------------------------------------------ round trips
@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("tie", [False, True])
def test_save_load_round_trip_bit_identical(tmp_path, dtype, tie):
    model, optimizer, state = training_run(dtype=dtype, tie_embeddings=tie)
    path = checkpoint.save(tmp_path / "run", model, optimizer, state=state)
    ck = checkpoint.load(tmp_path / "run")
    assert ck.path == path == checkpoint.latest(tmp_path / "run") == str(tmp_path / "run/checkpoints/step-000005")
    assert ck.config == model.config and ck.dtype == np.dtype(dtype) and ck.step == 5
    assert ("lm_head" in ck.params) is not tie
    assert_params_equal(ck.params, model.params)
    saved = optimizer.state_dict()
    assert {k: v for k, v in ck.optimizer_state.items() if not isinstance(v, dict)} == \
        {"step": 5, "lr": 3e-4, "betas": [0.9, 0.95]}
    for entry in ("exp_avg", "exp_avg_sq"):
        assert_params_equal(dict(sorted(ck.optimizer_state[entry].items())), dict(sorted(saved[entry].items())))
    assert ck.state == state and ck.tokenizer is None
    assert checkpoint.load(path).state == state                   # a checkpoint folder loads directly too


def test_layout_of_a_run_folder(tmp_path):
    run_dir, model, _ = saved_run(tmp_path, steps=(123,))
    assert json.loads((run_dir / "checkpoint.json").read_text()) == {"latest": "step-000123", "step": 123}
    folder = run_dir / "checkpoints/step-000123"
    assert sorted(os.listdir(folder)) == ["model.safetensors", "optimizer.safetensors", "state.json"]
    assert set(load_file(str(folder / "model.safetensors"))) == set(model.params)
    assert set(load_file(str(folder / "optimizer.safetensors"))) == \
        {f"{entry}/{k}" for entry in ("exp_avg", "exp_avg_sq") for k in model.params}
    meta = json.loads((folder / "state.json").read_text())
    assert meta["optimizer"] == {"step": 5, "lr": 3e-4, "betas": [0.9, 0.95]}
    assert meta["optimizer_arrays"] == ["exp_avg", "exp_avg_sq"] and meta["dtype"] == "float32"
    assert meta["config"]["d_model"] == 32 and meta["state"]["step"] == 123
    assert set(meta["files"]) == {"model.safetensors", "optimizer.safetensors"}


def test_save_without_optimizer(tmp_path):
    model, _, state = training_run()
    path = checkpoint.save(tmp_path / "run", model, state=state)
    assert sorted(os.listdir(path)) == ["model.safetensors", "state.json"]
    ck = checkpoint.load(path)
    assert ck.optimizer_state is None and ck.state == state
    assert_params_equal(ck.model().params, model.params)


def test_rng_state_continues_with_identical_numbers(tmp_path):
    rng = np.random.default_rng(2024)
    rng.standard_normal(1001)
    model, _, _ = training_run()
    checkpoint.save(tmp_path / "run", model, state={"step": 1, "rng": rng.bit_generator.state,
                                                    "dropout_rng": model.dropout_rng.bit_generator.state})
    state = json.loads((tmp_path / "run/checkpoints/step-000001/state.json").read_text())["state"]
    assert state["rng"]["state"]["state"] >= 2 ** 64                        # a big int, written exactly
    resumed = np.random.default_rng()
    resumed.bit_generator.state = checkpoint.load(tmp_path / "run").state["rng"]
    assert np.array_equal(resumed.standard_normal(100), rng.standard_normal(100))
    assert np.array_equal(resumed.integers(0, 2 ** 62, 10), rng.integers(0, 2 ** 62, 10))


def test_char_tokenizer_saved_and_loaded_back(tmp_path):
    tok = CharTokenizer.from_text(f"banana cab 今天{EOT}", [EOT], unk_token="<unk>")
    model, optimizer, state = training_run()
    path = checkpoint.save(tmp_path / "run", model, optimizer, state=state, tokenizer=tok)
    assert "tokenizer.json" in os.listdir(path)
    loaded = checkpoint.load(tmp_path / "run").tokenizer
    assert isinstance(loaded, CharTokenizer)
    text = f"cab 今天 banana{EOT}xyz"
    assert loaded.encode(text) == tok.encode(text) and loaded.decode(tok.encode(text)) == tok.decode(tok.encode(text))


# ------------------------------------------------------------------------------ restore
def test_restore_into_a_differently_seeded_model_in_place(tmp_path):
    run_dir, saved_model, saved_optimizer = saved_run(tmp_path, steps=(3,))
    model = minigpt.Model(tiny_config(), seed=99)
    optimizer = FakeAdamW(model.params)
    arrays = {k: v for k, v in model.params.items()}
    assert not np.array_equal(model.params["wte"], saved_model.params["wte"])
    ck = checkpoint.restore(run_dir, model, optimizer)
    assert ck.step == 3 and ck.state["data"] == {"epoch": 0, "position": 1234}
    assert all(model.params[k] is arrays[k] for k in arrays)                # the same arrays, overwritten
    assert_params_equal(model.params, saved_model.params)
    assert optimizer.step_count == 5 and optimizer.lr == 3e-4
    assert_params_equal(optimizer.exp_avg, saved_optimizer.exp_avg)
    assert_params_equal(optimizer.exp_avg_sq, saved_optimizer.exp_avg_sq)


def test_restore_casts_to_the_models_dtype(tmp_path):
    model64, _, state = training_run(dtype="float64")
    checkpoint.save(tmp_path / "run", model64, state=state)
    model32 = minigpt.Model(tiny_config(), seed=7, dtype="float32")
    checkpoint.restore(tmp_path / "run", model32)
    for k, v in model32.params.items():
        assert v.dtype == np.float32 and np.array_equal(v, model64.params[k].astype(np.float32))


def test_restore_refuses_another_config_listing_each_field(tmp_path):
    run_dir, _, _ = saved_run(tmp_path)
    model = minigpt.Model(tiny_config(rope_theta=500000.0, norm_eps=1e-6), seed=7)
    before = {k: v.copy() for k, v in model.params.items()}
    with pytest.raises(ValueError) as err:
        checkpoint.restore(run_dir, model)
    assert "rope_theta: checkpoint has 10000.0, model has 500000.0" in str(err.value)
    assert "norm_eps: checkpoint has 1e-05, model has 1e-06" in str(err.value)
    assert "step-000001" in str(err.value)
    assert_params_equal(model.params, before)


def test_restore_ignores_the_fields_that_do_not_compare(tmp_path):
    run_dir, saved_model, _ = saved_run(tmp_path)                 # multiple_of=32 gave d_ff=96
    model = minigpt.Model(tiny_config(multiple_of=1, d_ff=96), seed=7)
    checkpoint.restore(run_dir, model)
    assert_params_equal(model.params, saved_model.params)


def test_restore_with_bad_tensors_changes_nothing(tmp_path):
    run_dir, _, _ = saved_run(tmp_path)
    folder = run_dir / "checkpoints/step-000001"
    tensors = load_file(str(folder / "model.safetensors"))
    tensors["wte"] = tensors["wte"][:, :16].copy()
    rewrite_tensors(folder, "model.safetensors", tensors)
    model = minigpt.Model(tiny_config(), seed=7)
    before = {k: v.copy() for k, v in model.params.items()}
    with pytest.raises(ValueError, match=r"wte has \(50, 16\), expected \(50, 32\)"):
        checkpoint.restore(run_dir, model, FakeAdamW(model.params))
    assert_params_equal(model.params, before)


def test_restore_when_the_optimizer_refuses_changes_nothing(tmp_path):
    run_dir, _, _ = saved_run(tmp_path)
    model = minigpt.Model(tiny_config(), seed=7)
    before = {k: v.copy() for k, v in model.params.items()}
    other = FakeAdamW({"x": np.zeros(3, np.float32)})
    with pytest.raises(ValueError, match="not this optimizer's"):
        checkpoint.restore(run_dir, model, other)
    assert_params_equal(model.params, before)


def test_restore_an_optimizer_from_a_checkpoint_without_one(tmp_path):
    model, _, state = training_run()
    checkpoint.save(tmp_path / "run", model, state=state)
    fresh = minigpt.Model(tiny_config(), seed=7)
    before = {k: v.copy() for k, v in fresh.params.items()}
    with pytest.raises(ValueError, match="holds no optimizer state"):
        checkpoint.restore(tmp_path / "run", fresh, FakeAdamW(fresh.params))
    assert_params_equal(fresh.params, before)


# ------------------------------------------------------------------------------ keeping and replacing
def test_keep_prunes_older_checkpoints(tmp_path):
    run_dir, _, _ = saved_run(tmp_path, steps=(1, 2, 3, 10, 20))
    assert sorted(os.listdir(run_dir / "checkpoints")) == ["step-000010", "step-000020"]
    model, _, state = training_run()
    checkpoint.save(run_dir, model, state={**state, "step": 30}, keep=1)
    assert os.listdir(run_dir / "checkpoints") == ["step-000030"]


def test_keep_none_keeps_every_checkpoint(tmp_path):
    run_dir, _, _ = saved_run(tmp_path, steps=(1, 2, 3), keep=None)
    assert sorted(os.listdir(run_dir / "checkpoints")) == ["step-000001", "step-000002", "step-000003"]


def test_saving_a_step_again_replaces_it(tmp_path):
    run_dir, _, _ = saved_run(tmp_path, steps=(1, 2))
    for again, name in enumerate(["step-000002.1", "step-000002", "step-000002.1"]):
        model, optimizer, state = training_run(seed=50 + again)
        path = checkpoint.save(run_dir, model, optimizer, state={**state, "step": 2})
        assert path == checkpoint.latest(run_dir) == str(run_dir / "checkpoints" / name)
        assert_params_equal(checkpoint.load(run_dir).params, model.params)
        assert sorted(os.listdir(run_dir / "checkpoints")) == ["step-000001", name] and not leftovers(run_dir)


def test_resuming_from_an_earlier_step_keeps_it_the_latest(tmp_path):
    run_dir, _, _ = saved_run(tmp_path, steps=(10, 20))
    model, _, state = training_run(seed=15)
    checkpoint.save(run_dir, model, state={**state, "step": 15})      # resumed at 10, saved at 15
    assert checkpoint.latest(run_dir).endswith("step-000015")
    assert sorted(os.listdir(run_dir / "checkpoints")) == ["step-000010", "step-000015", "step-000020"]
    assert_params_equal(checkpoint.load(run_dir).params, model.params)


# ------------------------------------------------------------------------------ bad input: nothing written
@pytest.mark.parametrize("bad, where", [
    ({"n": np.int64(3)}, r"state\['n'\] is a numpy.int64"),
    ({"lr": np.float32(0.5)}, r"state\['lr'\] is a numpy.float32"),
    ({"rng": {"state": (1, 2)}}, r"state\['rng'\]\['state'\] is a tuple .*give it back as a list"),
    ({"seen": {1, 2}}, r"state\['seen'\] is a set"),
    ({"ids": [0, np.arange(2)]}, r"state\['ids'\]\[1\] is a numpy.ndarray"),
    ({"by_id": {3: "x"}}, r"state\['by_id'\] has the key 3 \(int\)"),
    ({"fn": print}, r"state\['fn'\] is a builtin_function_or_method"),
])
def test_non_json_state_names_the_key_and_writes_nothing(tmp_path, bad, where):
    model, optimizer, state = training_run()
    with pytest.raises(ValueError, match=where):
        checkpoint.save(tmp_path / "run", model, optimizer, state={**state, **bad})
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("state, message", [
    (None, r"state\['step'\]"), ({"epoch": 1}, r"state\['step'\]"), ({"step": -1}, "-1"),
    ({"step": True}, "True"), ({"step": 2.0}, "2.0"), ({"step": np.int64(2)}, "int64"),
])
def test_save_needs_a_step(tmp_path, state, message):
    model, _, _ = training_run()
    with pytest.raises(ValueError, match=message):
        checkpoint.save(tmp_path / "run", model, state=state)
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("keep", [0, -1, 1.5, True])
def test_save_needs_a_sensible_keep(tmp_path, keep):
    model, _, state = training_run()
    with pytest.raises(ValueError, match="keep="):
        checkpoint.save(tmp_path / "run", model, state=state, keep=keep)


def test_optimizer_array_of_another_dtype_is_refused(tmp_path):
    model, optimizer, state = training_run()
    optimizer.exp_avg["wte"] = optimizer.exp_avg["wte"].astype(np.float16)
    with pytest.raises(ValueError, match=r"optimizer state\['exp_avg'\]\['wte'\] is float16"):
        checkpoint.save(tmp_path / "run", model, optimizer, state=state)
    assert not (tmp_path / "run").exists()


def test_optimizer_scalar_that_is_not_json_is_refused(tmp_path):
    model, optimizer, state = training_run()
    optimizer.lr = np.float16(1e-3)
    with pytest.raises(ValueError, match=r"optimizer state\['lr'\] is a numpy.float16"):
        checkpoint.save(tmp_path / "run", model, optimizer, state=state)


# ------------------------------------------------------------------------------ bad input: damaged files
def test_no_checkpoint_yet(tmp_path):
    (tmp_path / "run").mkdir()
    assert checkpoint.latest(tmp_path / "run") is None and checkpoint.latest(tmp_path / "absent") is None
    model = minigpt.Model(tiny_config())
    for call in (lambda: checkpoint.load(tmp_path / "run"), lambda: checkpoint.restore(tmp_path / "run", model)):
        with pytest.raises(ValueError, match=r"run: no checkpoint yet: there is no checkpoint.json"):
            call()
    with pytest.raises(ValueError, match="absent: no such folder"):
        checkpoint.load(tmp_path / "absent")


def test_checkpoint_json_naming_a_missing_folder(tmp_path):
    run_dir, _, _ = saved_run(tmp_path)
    shutil.rmtree(run_dir / "checkpoints/step-000001")
    for call in (checkpoint.latest, checkpoint.load):
        with pytest.raises(ValueError, match=r"checkpoint.json: names the checkpoint 'step-000001', but .* does not"):
            call(run_dir)


@pytest.mark.parametrize("text, message", [
    ('{"latest": "step-0000', "not valid JSON.*truncated"),
    ('["step-000001"]', "expected a JSON object"),
    ('{"latest": "../../etc"}', r"\"latest\" should name a folder in checkpoints/, found '../../etc'"),
    ('{"step": 1}', r'"latest" should name a folder .*, found None'),
])
def test_damaged_checkpoint_json(tmp_path, text, message):
    run_dir, _, _ = saved_run(tmp_path)
    (run_dir / "checkpoint.json").write_text(text)
    with pytest.raises(ValueError, match=f"checkpoint.json: {message}"):
        checkpoint.load(run_dir)


@pytest.mark.parametrize("name", ["model.safetensors", "optimizer.safetensors"])
@pytest.mark.parametrize("damage", ["truncate", "header"])
def test_unreadable_safetensors(tmp_path, name, damage):
    run_dir, _, _ = saved_run(tmp_path)
    path = run_dir / "checkpoints/step-000001" / name
    data = path.read_bytes()
    path.write_bytes(data[:len(data) // 2] if damage == "truncate" else data[:8] + b"#" * 12 + data[20:])
    with pytest.raises(ValueError, match=f"{name}: not a readable .safetensors file: corrupt, truncated") as err:
        checkpoint.load(run_dir)
    assert isinstance(err.value.__cause__, SafetensorError)


def test_bfloat16_safetensors(tmp_path):
    run_dir, _, _ = saved_run(tmp_path)
    header = json.dumps({"wte": {"dtype": "BF16", "shape": [2], "data_offsets": [0, 4]}}).encode()
    path = run_dir / "checkpoints/step-000001/model.safetensors"
    path.write_bytes(len(header).to_bytes(8, "little") + header + bytes(4))
    with pytest.raises(ValueError, match=r"model.safetensors: not a readable .*NumPy lacks \(KeyError: 'BF16'\)"):
        checkpoint.load(run_dir)


@pytest.mark.parametrize("name", ["model.safetensors", "optimizer.safetensors"])
def test_overwritten_tensor_bytes_are_caught(tmp_path, name):
    run_dir, _, _ = saved_run(tmp_path)
    path = run_dir / "checkpoints/step-000001" / name
    data = bytearray(path.read_bytes())
    data[-40:-8] = bytes(32)                                    # inside the last tensor: still parses
    path.write_bytes(bytes(data))
    with pytest.raises(ValueError, match=f"{name}: its bytes differ from those saved .*the file is damaged"):
        checkpoint.load(run_dir)


def test_missing_tensor_file(tmp_path):
    run_dir, _, _ = saved_run(tmp_path)
    os.remove(run_dir / "checkpoints/step-000001/optimizer.safetensors")
    with pytest.raises(ValueError, match="optimizer.safetensors: no such file") as err:
        checkpoint.load(run_dir)
    assert isinstance(err.value.__cause__, FileNotFoundError)


INVALID = '"config" is not a valid ModelConfig: '


def edit_state_json(run_dir, edit):
    path = run_dir / "checkpoints/step-000001/state.json"
    meta = json.loads(path.read_text())
    edit(meta)
    path.write_text(json.dumps(meta))


@pytest.mark.parametrize("edit, message", [
    (lambda m: m.pop("config"), 'has no "config"'),
    (lambda m: m.pop("files"), 'has no "files"'),
    (lambda m: m.update(state=[1]), r'"state" should be an object, found \[1\]'),
    (lambda m: m.update(optimizer=3), '"optimizer" should be an object or null, found 3'),
    (lambda m: m["config"].update(n_head=5), INVALID + "d_model=32 is not divisible by n_head=5"),
    (lambda m: m["config"].update(n_layer=0), INVALID + "n_layer=0: expected an integer > 0"),
    (lambda m: m["config"].update(colour="red"), INVALID + ".*unexpected keyword argument 'colour'"),
    (lambda m: m.update(dtype="float16"), r'"dtype": dtype=\'float16\''),
])
def test_bad_state_json(tmp_path, edit, message):
    run_dir, _, _ = saved_run(tmp_path)
    edit_state_json(run_dir, edit)
    with pytest.raises(ValueError, match=f"state.json: {message}"):
        checkpoint.load(run_dir)


def test_state_json_that_is_not_json(tmp_path):
    run_dir, _, _ = saved_run(tmp_path)
    path = run_dir / "checkpoints/step-000001/state.json"
    path.write_bytes(path.read_bytes()[:100])
    with pytest.raises(ValueError, match="state.json: not valid JSON") as err:
        checkpoint.load(run_dir)
    assert isinstance(err.value.__cause__, json.JSONDecodeError)


def test_tensors_missing_or_of_the_wrong_shape(tmp_path):
    run_dir, _, _ = saved_run(tmp_path)
    folder = run_dir / "checkpoints/step-000001"
    tensors = load_file(str(folder / "model.safetensors"))
    del tensors["norm_f.w"]
    tensors["blocks.0.attn.wk"] = tensors["blocks.0.attn.wk"].T.copy()     # (C, Hkv*D) = (32, 16) stored (16, 32)
    tensors["blocks.0.attn.bq"] = np.zeros(32, np.float32)
    rewrite_tensors(folder, "model.safetensors", tensors)
    with pytest.raises(ValueError) as err:
        checkpoint.load(run_dir)
    message = str(err.value)
    assert "model.safetensors: the tensors do not fit the config in state.json" in message
    assert "missing keys (1): norm_f.w" in message and "unexpected keys (1): blocks.0.attn.bq" in message
    assert "shape mismatches (1): blocks.0.attn.wk has (16, 32), expected (32, 16)" in message


def test_tensor_of_another_dtype_in_the_file(tmp_path):
    run_dir, _, _ = saved_run(tmp_path)
    folder = run_dir / "checkpoints/step-000001"
    tensors = load_file(str(folder / "model.safetensors"))
    tensors["wte"] = tensors["wte"].astype(np.float16)
    rewrite_tensors(folder, "model.safetensors", tensors)
    with pytest.raises(ValueError, match=r"model.safetensors: wte is float16; expected float32"):
        checkpoint.load(run_dir)
    tensors["wte"] = tensors["wte"].astype(np.float64)          # float64 in a float32 checkpoint
    rewrite_tensors(folder, "model.safetensors", tensors)
    with pytest.raises(ValueError, match=r"wte is float64; expected float32"):
        checkpoint.load(run_dir)


@pytest.mark.parametrize("change, message", [
    (lambda t: t.update({"momentum/wte": t["exp_avg/wte"]}), r"the tensor 'momentum/wte' belongs to no entry"),
    (lambda t: t.update({"exp_avg/wte": t["exp_avg/wte"][:3].copy()}), r"'exp_avg' arrays .*wte has \(3, 32\)"),
    (lambda t: t.update({"exp_avg/nope": t["exp_avg/wte"]}), r"'exp_avg' arrays .*unexpected keys \(1\): nope"),
    (lambda t: [t.pop(k) for k in list(t) if k.startswith("exp_avg_sq/")],
     r"no tensors for the optimizer entry 'exp_avg_sq'"),
    (lambda t: t.update({"exp_avg/wte": t["exp_avg/wte"].astype(np.float16)}), r"exp_avg/wte is float16"),
])
def test_bad_optimizer_tensors(tmp_path, change, message):
    run_dir, _, _ = saved_run(tmp_path)
    folder = run_dir / "checkpoints/step-000001"
    tensors = load_file(str(folder / "optimizer.safetensors"))
    change(tensors)
    rewrite_tensors(folder, "optimizer.safetensors", tensors)
    with pytest.raises(ValueError, match=f"(?s)optimizer.safetensors: .*{message}"):
        checkpoint.load(run_dir)


def test_damaged_tokenizer_file(tmp_path):
    tok = CharTokenizer.from_text("banana cab")
    model, _, state = training_run()
    path = checkpoint.save(tmp_path / "run", model, state=state, tokenizer=tok)
    tokenizer_json = os.path.join(path, "tokenizer.json")
    with open(tokenizer_json, "r+b") as f:
        f.seek(10)
        f.write(b"XX")
    with pytest.raises(ValueError, match="tokenizer.json: its bytes differ from those saved"):
        checkpoint.load(tmp_path / "run")


# ------------------------------------------------------------------------------ crashes
def failing_on_call(real, n, exc=OSError("simulated crash")):
    """real, except that its n-th call raises (after doing half the work, for save_file)."""
    calls = []

    def wrapper(*args, **kwargs):
        calls.append(args)
        if len(calls) == n:
            if real is checkpoint.save_file:                     # leave a file cut short, like a crash would
                real(*args, **kwargs)
                with open(args[1], "r+b") as f:
                    f.truncate(os.path.getsize(args[1]) // 2)
            raise exc
        return real(*args, **kwargs)
    return wrapper


def crash_points():
    """(name, where to patch, what, which call), in the order save() reaches them."""
    return {
        "model file": (checkpoint, "save_file", 1), "optimizer file": (checkpoint, "save_file", 2),
        "first fsync": (os, "fsync", 1), "state.json": (checkpoint, "_write_json", 1),
        "folder fsync": (checkpoint, "_fsync_dir", 2), "rename": (os, "rename", 1),
        "checkpoint.json written": (checkpoint, "_write_json", 2), "checkpoint.json replace": (os, "replace", 1),
    }


@pytest.mark.parametrize("killed", [False, True], ids=["exception", "killed"])
@pytest.mark.parametrize("point", list(crash_points()))
def test_a_crash_while_saving_leaves_the_previous_checkpoint(tmp_path, monkeypatch, point, killed):
    run_dir, first_model, _ = saved_run(tmp_path, steps=(1,))
    model, optimizer, state = training_run(seed=2)
    owner, name, n = crash_points()[point]
    tok = CharTokenizer.from_text("ab")
    with monkeypatch.context() as patch:
        if killed:                                               # a killed process cleans nothing up
            patch.setattr(checkpoint, "_abandon", lambda path: None)
        patch.setattr(owner, name, failing_on_call(getattr(owner, name), n))
        with pytest.raises(OSError, match="simulated crash"):
            checkpoint.save(run_dir, model, optimizer, state={**state, "step": 2}, tokenizer=tok)
    ck = checkpoint.load(run_dir)
    assert ck.step == 1
    assert_params_equal(ck.params, first_model.params)
    if not killed:
        assert not leftovers(run_dir)
    else:                                                        # left for the next save to remove
        assert leftovers(run_dir) or point == "checkpoint.json written"   # (the folder was renamed already)
    checkpoint.save(run_dir, model, optimizer, state={**state, "step": 3})
    assert checkpoint.load(run_dir).step == 3 and not leftovers(run_dir)


def test_a_crash_in_the_tokenizers_save_leaves_the_previous_checkpoint(tmp_path, monkeypatch):
    run_dir, _, _ = saved_run(tmp_path, steps=(1,))
    tok = CharTokenizer.from_text("ab")

    def half_save(folder):
        with open(os.path.join(folder, "tokenizer.json"), "w") as f:
            f.write('{"mod')
        raise OSError("simulated crash")
    monkeypatch.setattr(tok, "save", half_save)
    model, _, state = training_run(seed=2)
    with pytest.raises(OSError, match="simulated crash"):
        checkpoint.save(run_dir, model, state={**state, "step": 2}, tokenizer=tok)
    assert checkpoint.load(run_dir).step == 1 and not leftovers(run_dir)


@pytest.mark.parametrize("point, owner, name, n, expect", [
    ("renaming the new folder", os, "rename", 1, "old"),
    ("pointing at it", os, "replace", 1, "old"),
    ("deleting the old folder", os, "rename", 2, "new"),
])
def test_a_crash_while_saving_the_latest_step_again(tmp_path, monkeypatch, point, owner, name, n, expect):
    run_dir, old_model, _ = saved_run(tmp_path, steps=(1, 2))
    new_model, _, state = training_run(seed=50)
    with monkeypatch.context() as patch:
        patch.setattr(checkpoint, "_abandon", lambda path: None)
        patch.setattr(owner, name, failing_on_call(getattr(owner, name), n))
        with pytest.raises(OSError, match="simulated crash"):
            checkpoint.save(run_dir, new_model, state={**state, "step": 2})
    ck = checkpoint.load(run_dir)
    assert ck.step == 2
    assert_params_equal(ck.params, (old_model if expect == "old" else new_model).params)
    checkpoint.save(run_dir, new_model, state={**state, "step": 3})
    kept = sorted(os.listdir(run_dir / "checkpoints"))
    assert len(kept) == 2 and kept[0].startswith("step-000002") and kept[1] == "step-000003"
    assert not leftovers(run_dir)


def test_leftovers_of_a_killed_save_are_removed_by_the_next(tmp_path):
    run_dir, _, _ = saved_run(tmp_path, steps=(1,))
    partial = run_dir / "checkpoints/.tmp-step-000002-deadbeef"
    partial.mkdir()
    (partial / "model.safetensors").write_bytes(b"\x00" * 10)
    (run_dir / "checkpoint.json.tmp").write_text('{"latest": "step-0')
    assert checkpoint.load(run_dir).step == 1
    model, _, state = training_run()
    checkpoint.save(run_dir, model, state={**state, "step": 2})
    assert not leftovers(run_dir) and checkpoint.load(run_dir).step == 2


@pytest.mark.skipif(not os.path.isdir("/proc/self/fd"), reason="needs /proc/self/fd to name fsynced files")
def test_every_file_and_folder_is_fsynced_before_the_switch(tmp_path, monkeypatch):
    synced, replaced = [], []
    real_fsync, real_replace = os.fsync, os.replace

    def fsync(fd):
        synced.append(os.readlink(f"/proc/self/fd/{fd}"))
        real_fsync(fd)

    def replace(src, dst):
        replaced.append((len(synced), os.path.basename(dst)))
        real_replace(src, dst)
    monkeypatch.setattr(os, "fsync", fsync)
    monkeypatch.setattr(os, "replace", replace)
    model, optimizer, state = training_run()
    run_dir = os.path.realpath(tmp_path) + "/run"
    folder = checkpoint.save(run_dir, model, optimizer, state=state, tokenizer=CharTokenizer.from_text("ab"))
    [(switch, target)] = replaced
    assert target == "checkpoint.json"
    before = synced[:switch]
    [tmp] = {os.path.dirname(p) for p in before if os.path.basename(p) == "state.json"}
    assert os.path.basename(tmp).startswith(".tmp-step-000005-")
    assert {os.path.relpath(p, tmp) for p in before if p.startswith(tmp)} == set(os.listdir(folder)) | {"."}
    assert before.index(os.path.join(tmp, "state.json")) > before.index(os.path.join(tmp, "model.safetensors"))
    assert os.path.join(run_dir, "checkpoints") in before and os.path.join(run_dir, "checkpoint.json.tmp") in before
    assert synced[switch:] == [run_dir]                          # the switch itself, put on disk
