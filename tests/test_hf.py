"""minigpt.hf: Hugging Face checkpoints in and out.

Two halves. The first needs no torch: checkpoints written by minigpt.hf.save or by hand with
safetensors.numpy, and the errors for bad ones. The second (extra `parity`: torch + transformers)
builds a small random transformers model of each family, saves it with save_pretrained, loads it
with minigpt.hf.load, and compares logits and every parameter's loss gradient with torch autograd;
then minigpt.hf.save goes back into transformers. No network: every config is built here.
"""
import json
import os

import numpy as np
import pytest
from safetensors.numpy import load_file, save_file

from minigpt import hf
from minigpt.config import ModelConfig, param_shapes
from minigpt.layers.loss import cross_entropy
from minigpt.model import Model

B, T, V = 2, 8, 100
FAMILY_PRESETS = {"gpt2": "gpt2", "openai-gpt": "gpt1", "llama": "llama", "glm": "glm4", "mistral": "mistral",
                  "qwen3": "qwen3"}


def tiny(preset, **overrides):
    sizes = dict(vocab_size=V, n_layer=2, d_model=32, n_head=4, max_seq_len=16)
    if ModelConfig.preset(preset).attention_pattern == "sliding":
        sizes["attn_window"] = 3                             # T = 8 reaches past the window
    return ModelConfig.preset(preset, **{**sizes, **overrides})


def random_ids(seed=0):
    return np.random.default_rng(seed).integers(0, V, size=(B, T))


def saved_model(tmp_path, preset="gpt2", seed=0, **overrides):
    """A random minigpt model and the folder it was saved to."""
    model = Model(tiny(preset, **overrides), seed=seed)
    return model, hf.save(model, str(tmp_path / "ckpt"))


def rewrite_weights(path, change):
    """Apply change(tensors) to a checkpoint's model.safetensors, in place."""
    file = os.path.join(path, "model.safetensors")
    tensors = load_file(file)
    change(tensors)
    save_file(tensors, file, metadata={"format": "pt"})


def rewrite_config(path, change):
    file = os.path.join(path, "config.json")
    with open(file) as f:
        config = json.load(f)
    change(config)
    with open(file, "w") as f:
        json.dump(config, f)


# --- without torch ----------------------------------------------------------------------------

@pytest.mark.parametrize("model_type", hf.MODEL_TYPES)
def test_layout_covers_every_param_exactly_once(model_type):
    preset = FAMILY_PRESETS[model_type]
    for config in (tiny(preset), tiny(preset, tie_embeddings=not ModelConfig.preset(preset).tie_embeddings)):
        used = [key for _, keys, _ in hf.name_table(config, model_type) for key in keys]
        assert sorted(used) == sorted(param_shapes(config)), config


@pytest.mark.parametrize("model_type", hf.MODEL_TYPES)
def test_save_load_roundtrip_params_and_logits(tmp_path, model_type):
    model, path = saved_model(tmp_path, FAMILY_PRESETS[model_type])
    with open(os.path.join(path, "config.json")) as f:
        assert json.load(f)["model_type"] == model_type
    loaded = hf.load(path)
    assert loaded.config == model.config
    assert sorted(loaded.params) == sorted(model.params)
    for key, value in model.params.items():
        np.testing.assert_array_equal(loaded.params[key], value, err_msg=key)
    ids = random_ids()
    np.testing.assert_array_equal(loaded.forward(ids), model.forward(ids))


def test_load_dtype_float64(tmp_path):
    model, path = saved_model(tmp_path, "llama")
    loaded = hf.load(path, dtype="float64")
    assert all(p.dtype == np.float64 for p in loaded.params.values())
    ids = random_ids()
    np.testing.assert_allclose(loaded.forward(ids), model.forward(ids), atol=1e-4)


def test_to_hf_state_dict_fuses_and_transposes():
    config = tiny("glm4")
    model = Model(config, seed=1)
    sd = hf.to_hf_state_dict(config, model.params)
    p = model.params
    c_in, f = config.d_model, config.d_ff
    np.testing.assert_array_equal(sd["model.layers.1.self_attn.q_proj.weight"], p["blocks.1.attn.wq"].T)  # (out, in)
    gate_up = sd["model.layers.0.mlp.gate_up_proj.weight"]                                 # (2F, C)
    assert gate_up.shape == (2 * f, c_in)
    np.testing.assert_array_equal(gate_up[:f], p["blocks.0.mlp.w_gate"].T)
    np.testing.assert_array_equal(gate_up[f:], p["blocks.0.mlp.w_up"].T)
    np.testing.assert_array_equal(sd["lm_head.weight"], p["lm_head"].T)

    config = tiny("gpt2")
    model = Model(config, seed=1)
    sd = hf.to_hf_state_dict(config, model.params)
    c_attn = sd["transformer.h.1.attn.c_attn.weight"]                                     # Conv1D: (in, out)
    np.testing.assert_array_equal(c_attn, np.concatenate(
        [model.params[f"blocks.1.attn.w{x}"] for x in "qkv"], axis=1))
    assert "lm_head.weight" not in sd                                                      # tied: the embedding


def test_to_hf_state_dict_lists_missing_unexpected_and_mismatched():
    config = tiny("gpt2")
    tensors = dict(Model(config).params)
    del tensors["blocks.0.attn.wq"], tensors["norm_f.b"]
    tensors["blocks.0.attn.w_extra"] = np.zeros(3)
    tensors["wpe"] = np.zeros((3, 3))
    with pytest.raises(ValueError) as err:
        hf.to_hf_state_dict(config, tensors)
    for text in ("missing keys (2)", "blocks.0.attn.wq", "norm_f.b", "unexpected keys (1)", "blocks.0.attn.w_extra",
                 "shape mismatches (1)", "wpe has (3, 3), expected (16, 32)"):
        assert text in str(err.value)


def test_load_unsupported_model_type(tmp_path):
    _, path = saved_model(tmp_path)
    rewrite_config(path, lambda c: c.update(model_type="bert"))
    with pytest.raises(ValueError, match="model_type='bert' is not supported; supported: gpt2, openai-gpt, llama, glm, "
                                         "mistral, qwen3") as err:
        hf.load(path)
    assert os.path.join(path, "config.json") in str(err.value)       # the message names the file


def test_load_lists_every_missing_key(tmp_path):
    _, path = saved_model(tmp_path)
    gone = ["transformer.h.1.attn.c_attn.weight", "transformer.ln_f.bias", "transformer.wpe.weight"]
    rewrite_weights(path, lambda t: [t.pop(k) for k in gone])
    with pytest.raises(ValueError, match="missing keys \\(3\\)") as err:
        hf.load(path)
    assert all(k in str(err.value) for k in gone)
    assert "unexpected" not in str(err.value)


def test_load_lists_every_unexpected_key(tmp_path):
    _, path = saved_model(tmp_path)
    extra = ["transformer.h.2.ln_1.weight", "score.weight"]
    rewrite_weights(path, lambda t: t.update({k: np.ones(32, np.float32) for k in extra}))
    with pytest.raises(ValueError, match="unexpected keys \\(2\\)") as err:
        hf.load(path)
    assert all(k in str(err.value) for k in extra)
    assert "missing" not in str(err.value)


def test_load_lists_every_shape_mismatch(tmp_path):
    _, path = saved_model(tmp_path, "llama")
    def change(t):
        t["model.layers.0.self_attn.k_proj.weight"] = np.zeros((32, 32), np.float32)   # as if no GQA
        t["model.norm.weight"] = np.zeros(31, np.float32)
    rewrite_weights(path, change)
    with pytest.raises(ValueError, match="shape mismatches \\(2\\)") as err:
        hf.load(path)
    assert "model.layers.0.self_attn.k_proj.weight has (32, 32), expected (16, 32)" in str(err.value)
    assert "model.norm.weight has (31,), expected (32,)" in str(err.value)


def test_load_reports_all_kinds_of_problems_together(tmp_path):
    _, path = saved_model(tmp_path, "glm4")
    def change(t):
        del t["model.layers.1.mlp.down_proj.weight"]
        t["model.layers.1.self_attn.o_proj.bias"] = np.zeros(32, np.float32)
        t["model.layers.0.mlp.gate_up_proj.weight"] = np.zeros((2, 32), np.float32)
    rewrite_weights(path, change)
    with pytest.raises(ValueError) as err:
        hf.load(path)
    for text in ("missing keys (1)", "unexpected keys (1)", "shape mismatches (1)"):
        assert text in str(err.value)


def test_load_unsupported_features_are_errors(tmp_path):
    _, path = saved_model(tmp_path, "llama")
    cases = [
        (lambda c: c.update(rope_parameters={"rope_type": "llama3", "rope_theta": 5e5, "factor": 8.0}),
         "rope_type='llama3'"),
        (lambda c: c.update(head_dim=16), "head_dim=16"),
        (lambda c: c.update(hidden_act="gelu_new"), "hidden_act='gelu_new'"),
        (lambda c: c.update(mlp_bias=True), "mlp_bias=true"),
        (lambda c: c.update(attention_bias=True), "attention_bias=true"),
    ]
    for change, message in cases:
        saved = json.load(open(os.path.join(path, "config.json")))
        rewrite_config(path, change)
        with pytest.raises(ValueError, match=message.replace("(", r"\(")):
            hf.load(path)
        rewrite_config(path, lambda c: (c.clear(), c.update(saved)))
    _, path = saved_model(tmp_path / "gpt2")
    rewrite_config(path, lambda c: c.update(activation_function="quick_gelu", scale_attn_by_inverse_layer_idx=True))
    with pytest.raises(ValueError, match="activation_function='quick_gelu'.*scale_attn_by_inverse_layer_idx"):
        hf.load(path)


def test_config_from_hf_reads_old_and_new_rope_fields():
    base = dict(model_type="glm", vocab_size=V, hidden_size=32, intermediate_size=48, num_hidden_layers=1,
                num_attention_heads=4, num_key_value_heads=2, head_dim=8, max_position_embeddings=16)
    new = hf.config_from_hf({**base, "rope_parameters": {"rope_type": "default", "rope_theta": 500.0,
                                                         "partial_rotary_factor": 0.25}})
    old = hf.config_from_hf({**base, "rope_theta": 500.0, "partial_rotary_factor": 0.25, "rope_scaling": None})
    assert new == old
    assert (new.rope_theta, new.rotary_fraction, new.rope_pairing) == (500.0, 0.25, "interleaved")
    default = hf.config_from_hf(base)                        # GlmConfig's defaults: theta 10000, half the head
    assert (default.rope_theta, default.rotary_fraction, default.qkv_bias) == (10000.0, 0.5, True)
    gpt1 = hf.config_from_hf({"model_type": "openai-gpt", "afn": "gelu", "vocab_size": V, "n_embd": 32,
                              "n_layer": 1, "n_head": 4, "n_positions": 16})
    # modeling_openai.ACT_FNS["gelu"] is gelu_new, the tanh approximation; GPT-1 is post-norm
    assert (gpt1.activation, gpt1.norm_placement, gpt1.final_norm) == ("gelu_tanh", "post", False)
    gpt2 = hf.config_from_hf({"model_type": "gpt2", "activation_function": "gelu", "vocab_size": V,
                              "n_embd": 32, "n_layer": 1, "n_head": 4, "n_positions": 16})
    assert gpt2.activation == "gelu"                         # ACT2FN["gelu"] is the exact erf GELU


def test_config_to_hf_dropout_where_minigpt_drops():
    """minigpt drops embeddings and sublayer outputs, never attention probabilities."""
    gpt2 = hf.config_to_hf(tiny("gpt2", dropout=0.1))
    assert (gpt2["embd_pdrop"], gpt2["resid_pdrop"], gpt2["attn_pdrop"]) == (0.1, 0.1, 0.0)
    assert hf.config_to_hf(tiny("llama", dropout=0.1))["attention_dropout"] == 0.0


def test_save_unmappable_config_says_why(tmp_path):
    model = Model(tiny("chatglm"))
    with pytest.raises(ValueError, match="maps to no Hugging Face family") as err:
        hf.save(model, str(tmp_path / "out"))
    assert "norm_placement='deepnorm'" in str(err.value) and "positions='rope2d'" in str(err.value)
    assert not os.path.exists(tmp_path / "out" / "model.safetensors")


def test_save_replaces_files_atomically_and_leaves_no_temp(tmp_path):
    model, path = saved_model(tmp_path, "llama", seed=0)
    (tmp_path / "ckpt" / "tokenizer.json").write_text("{}")
    other = Model(model.config, seed=1)
    hf.save(other, path)
    assert sorted(os.listdir(path)) == ["config.json", "model.safetensors", "tokenizer.json"]
    np.testing.assert_array_equal(hf.load(path).params["wte"], other.params["wte"])


def test_save_that_fails_leaves_the_old_checkpoint(tmp_path, monkeypatch):
    model, path = saved_model(tmp_path, "gpt2", seed=0)
    before = {name: (tmp_path / "ckpt" / name).read_bytes() for name in os.listdir(path)}

    def half_written(tensors, file, metadata=None):
        with open(file, "wb") as f:
            f.write(b"\0" * 100)
        raise OSError("disk full")

    monkeypatch.setattr(hf, "save_file", half_written)
    with pytest.raises(OSError, match="disk full"):
        hf.save(Model(model.config, seed=1), path)
    assert {name: (tmp_path / "ckpt" / name).read_bytes() for name in os.listdir(path)} == before
    np.testing.assert_array_equal(hf.load(path).params["wte"], model.params["wte"])


def test_load_sharded_checkpoint(tmp_path):
    model, path = saved_model(tmp_path, "llama")
    tensors = load_file(os.path.join(path, "model.safetensors"))
    os.remove(os.path.join(path, "model.safetensors"))
    names = sorted(tensors)
    shards = {"model-00001-of-00002.safetensors": names[: len(names) // 2],
              "model-00002-of-00002.safetensors": names[len(names) // 2:]}
    for file, keys in shards.items():
        save_file({k: tensors[k] for k in keys}, os.path.join(path, file), metadata={"format": "pt"})
    index = {"metadata": {}, "weight_map": {k: file for file, keys in shards.items() for k in keys}}
    with open(os.path.join(path, "model.safetensors.index.json"), "w") as f:
        json.dump(index, f)
    loaded = hf.load(path)
    for key, value in model.params.items():
        np.testing.assert_array_equal(loaded.params[key], value, err_msg=key)


def test_load_base_model_keys_and_old_buffers(tmp_path):
    """Hub GPT-2 files name tensors without the "transformer." prefix and carry the causal-mask buffers."""
    model, path = saved_model(tmp_path)
    def change(t):
        for k in list(t):
            t[k[len("transformer."):]] = t.pop(k)
        t["h.0.attn.bias"] = np.ones((1, 1, 16, 16), np.float32)
        t["h.0.attn.masked_bias"] = np.array(-1e4, np.float32)
    rewrite_weights(path, change)
    np.testing.assert_array_equal(hf.load(path).params["blocks.1.mlp.w_up"], model.params["blocks.1.mlp.w_up"])


def test_load_tied_head_copy_must_equal_embedding(tmp_path):
    model, path = saved_model(tmp_path)
    rewrite_weights(path, lambda t: t.update({"lm_head.weight": t["transformer.wte.weight"].copy()}))
    np.testing.assert_array_equal(hf.load(path).params["wte"], model.params["wte"])
    rewrite_weights(path, lambda t: t.update({"lm_head.weight": t["transformer.wte.weight"] + 1}))
    with pytest.raises(ValueError, match="lm_head.weight differs"):
        hf.load(path)


def test_load_bfloat16_weights(tmp_path):
    """NumPy has no bfloat16: the loader widens the 16 bits to float32 itself."""
    model, path = saved_model(tmp_path, "glm4")
    tensors = load_file(os.path.join(path, "model.safetensors"))
    header, blobs, offset = {"__metadata__": {"format": "pt"}}, [], 0
    for name, t in tensors.items():
        bits = (t.astype(np.float32).view(np.uint32) >> 16).astype("<u2")  # truncate to bfloat16
        blob = bits.tobytes()
        header[name] = {"dtype": "BF16", "shape": list(t.shape), "data_offsets": [offset, offset + len(blob)]}
        blobs.append(blob)
        offset += len(blob)
    raw = json.dumps(header).encode()
    raw += b" " * (-len(raw) % 8)
    with open(os.path.join(path, "model.safetensors"), "wb") as f:
        f.write(len(raw).to_bytes(8, "little") + raw + b"".join(blobs))
    loaded = hf.load(path)
    for key, value in model.params.items():
        truncated = (value.view(np.uint32) & np.uint32(0xFFFF0000)).view(np.float32)
        np.testing.assert_array_equal(loaded.params[key], truncated, err_msg=key)


def test_load_without_safetensors_is_a_clear_error(tmp_path):
    _, path = saved_model(tmp_path)
    os.remove(os.path.join(path, "model.safetensors"))
    with pytest.raises(ValueError, match="no .safetensors file"):
        hf.load(path)


def test_family_of_every_preset():
    """Found by round trip through each family's config.json; the families HF has no class for say why."""
    expected = {"gpt1": "openai-gpt", "gpt2": "gpt2", "llama": "llama", "chatglm2": "glm", "glm4": "glm",
                "mistral": "mistral", "qwen3": "qwen3"}
    for preset, model_type in expected.items():
        assert hf.model_type_of(tiny(preset)) == model_type, preset
    reasons = {"gpt3": "attention_pattern='alternating'", "glm": "positions='glm2d'", "chatglm": "positions='rope2d'"}
    for preset, reason in reasons.items():
        with pytest.raises(ValueError, match="maps to no Hugging Face family") as err:
            hf.model_type_of(tiny(preset))
        assert reason in str(err.value) and all(f"  {t}: " in str(err.value) for t in hf.MODEL_TYPES)


def test_family_of_ignores_what_the_config_never_reads(tmp_path):
    """A window without local attention, RoPE settings without RoPE, and the training-only fields
    (dropout, init) change no weight: such a config still maps, and loads back as its family."""
    config = tiny("gpt2", attn_window=5, rope_theta=123.0, rope_pairing="interleaved", dropout=0.1,
                  scaled_residual_init=False)
    assert hf.model_type_of(config) == "gpt2"
    assert hf.model_type_of(tiny("llama", attn_window=5, init_std=0.05)) == "llama"
    assert hf.model_type_of(tiny("mistral", attn_window=5)) == "mistral"
    with pytest.raises(ValueError, match=r"rotary_fraction=0.5 \(llama has 1.0\)"):
        hf.model_type_of(tiny("llama", rotary_fraction=0.5, rope_pairing="half", qkv_bias=True))


def test_config_from_hf_mistral_window_and_qwen3_sliding_layers():
    base = dict(vocab_size=V, hidden_size=32, intermediate_size=48, num_hidden_layers=2, num_attention_heads=4,
                num_key_value_heads=2, max_position_embeddings=16)
    windowed = hf.config_from_hf(dict(base, model_type="mistral", sliding_window=5))
    assert (windowed.attention_pattern, windowed.attn_window) == ("sliding", 5)
    assert [windowed.local_attention(i) for i in range(2)] == ["sliding", "sliding"]
    dense = hf.config_from_hf(dict(base, model_type="mistral", sliding_window=None))
    assert dense.attention_pattern == "dense"
    assert hf.model_type_of(dense) == "llama"                  # a window-less Mistral IS a LLaMA
    qwen = hf.config_from_hf(dict(base, model_type="qwen3", head_dim=8))
    assert qwen.qk_norm and qwen.n_kv_head == 2
    with pytest.raises(ValueError, match="use_sliding_window=true"):
        hf.config_from_hf(dict(base, model_type="qwen3", head_dim=8, use_sliding_window=True, sliding_window=4))
    with pytest.raises(ValueError, match="attention_bias=true"):
        hf.config_from_hf(dict(base, model_type="qwen3", head_dim=8, attention_bias=True))


def test_mistral_window_changes_the_logits():
    """The window is real: at T = 8 > window 3 the same weights without it give other logits."""
    config = tiny("mistral")
    windowed = Model(config, seed=0, dtype="float64")
    dense = Model(tiny("llama"), dtype="float64", params=windowed.params)
    ids = random_ids()
    diff = np.abs(windowed.forward(ids) - dense.forward(ids))      # (B, T, V)
    assert diff[:, :3].max() == 0 and diff[:, 3:].max() > 1e-4      # rows 0-2 see the same keys either way


# --- files that are not checkpoints: one ValueError naming the file ----------------------------

def test_load_missing_folder(tmp_path):
    with pytest.raises(ValueError, match="nowhere: no such folder"):
        hf.load(str(tmp_path / "nowhere"))


@pytest.mark.parametrize("text, message", [
    ('{"model_type": "gpt2", "n_embd": 32', "not valid JSON"),
    ("[1, 2, 3]", "expected a JSON object"),
    (b"\xff\xfe\x00garbage", "not UTF-8 text"),
    ('{"model_type": "gpt2", "n_embd": "32", "n_layer": 2, "n_head": 4}', "d_model='32'"),
])
def test_load_malformed_config_json_names_the_file(tmp_path, text, message):
    _, path = saved_model(tmp_path)
    file = os.path.join(path, "config.json")
    with open(file, "wb") as f:
        f.write(text if isinstance(text, bytes) else text.encode())
    with pytest.raises(ValueError, match=message) as err:
        hf.load(path)
    assert str(err.value).startswith(file + ": ")


def test_load_malformed_config_chains_the_json_error(tmp_path):
    _, path = saved_model(tmp_path)
    (tmp_path / "ckpt" / "config.json").write_text("{oops")
    with pytest.raises(ValueError) as err:
        hf.load(path)
    assert isinstance(err.value.__cause__, json.JSONDecodeError)


@pytest.mark.parametrize("damage", ["truncate", "garbage", "bad header"])
def test_load_corrupt_safetensors_names_the_file(tmp_path, damage):
    _, path = saved_model(tmp_path, "llama")
    file = os.path.join(path, "model.safetensors")
    data = open(file, "rb").read()
    broken = {"truncate": data[: len(data) // 2], "garbage": os.urandom(len(data)),
              "bad header": len(b"{nope").to_bytes(8, "little") + b"{nope" + data[8:]}[damage]
    with open(file, "wb") as f:
        f.write(broken)
    with pytest.raises(ValueError, match="not a readable .safetensors file") as err:
        hf.load(path)
    assert str(err.value).startswith(file + ": ")
    assert err.value.__cause__ is not None                          # safetensors' own error, chained


def test_load_bad_shard_index_names_the_file(tmp_path):
    _, path = saved_model(tmp_path, "llama")
    os.rename(os.path.join(path, "model.safetensors"), os.path.join(path, "model-00001-of-00002.safetensors"))
    index = os.path.join(path, "model.safetensors.index.json")
    with open(index, "w") as f:
        json.dump({"weight_map": {"model.norm.weight": "model-00001-of-00002.safetensors",
                                  "lm_head.weight": "model-00002-of-00002.safetensors"}}, f)
    with pytest.raises(ValueError, match="model-00002-of-00002.safetensors") as err:
        hf.load(path)
    assert str(err.value).startswith(index + ": ")
    with open(index, "w") as f:
        f.write("{")
    with pytest.raises(ValueError, match="not valid JSON") as err:
        hf.load(path)
    assert str(err.value).startswith(index + ": ")


# --- parity with transformers (extra `parity`) ------------------------------------------------

def parity_libs():
    """(torch, transformers), or skip the test saying which is missing. transformers 5 or later:
    the configs below use its rope_parameters (4.x would silently ignore it and use theta 10000)."""
    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers", minversion="5.0")
    return torch, transformers


def hf_model(model_type, seed=0):
    """A small random transformers model of this family, eval mode, float32. Weights are perturbed
    well away from the 0.02-std init (norm gains ~1 +- 0.1, biases ~0.1) so every path matters."""
    torch, transformers = parity_libs()
    common = dict(vocab_size=V, bos_token_id=None, eos_token_id=None, pad_token_id=None)
    if model_type == "gpt2":
        config = transformers.GPT2Config(n_embd=32, n_layer=2, n_head=4, n_positions=16, n_inner=48,
                                         resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0, **common)
    elif model_type == "openai-gpt":
        config = transformers.OpenAIGPTConfig(n_embd=32, n_layer=2, n_head=4, n_positions=16,
                                              resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0, **common)
    elif model_type == "llama":
        config = transformers.LlamaConfig(hidden_size=32, intermediate_size=48, num_hidden_layers=2,
                                          num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=16,
                                          rms_norm_eps=1e-5, **common,
                                          rope_parameters={"rope_type": "default", "rope_theta": 500.0})
    elif model_type == "mistral":   # a window of 3 positions: T = 8 reaches past it
        config = transformers.MistralConfig(hidden_size=32, intermediate_size=48, num_hidden_layers=2,
                                            num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=16,
                                            rms_norm_eps=1e-5, sliding_window=3, **common,
                                            rope_parameters={"rope_type": "default", "rope_theta": 500.0})
    elif model_type == "qwen3":
        config = transformers.Qwen3Config(hidden_size=32, intermediate_size=48, num_hidden_layers=2,
                                          num_attention_heads=4, num_key_value_heads=2, head_dim=8,
                                          max_position_embeddings=16, rms_norm_eps=1e-5, **common,
                                          rope_parameters={"rope_type": "default", "rope_theta": 500.0})
    elif model_type == "glm":
        config = transformers.GlmConfig(hidden_size=32, intermediate_size=48, num_hidden_layers=2,
                                        num_attention_heads=4, num_key_value_heads=2, head_dim=8,
                                        max_position_embeddings=16, rms_norm_eps=1e-5,
                                        rope_parameters={"rope_type": "default", "rope_theta": 500.0,
                                                         "partial_rotary_factor": 0.5}, **common)
    else:
        raise ValueError(f"no test model for {model_type!r}")
    torch.manual_seed(seed)
    model = transformers.AutoModelForCausalLM.from_config(config).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.1 * torch.randn_like(p))
    return model


def torch_float64(monkeypatch):
    """The RMSNorms (LLaMA, GLM, Mistral, Qwen3, and Qwen3's QK-norm) and the rotary embeddings compute
    in float32 whatever the model's dtype (for bf16 stability): patched to compute in the input's dtype,
    so a float64 comparison measures our arithmetic, not theirs."""
    torch, _ = parity_libs()
    from transformers.models.glm import modeling_glm
    from transformers.models.llama import modeling_llama
    from transformers.models.mistral import modeling_mistral
    from transformers.models.qwen3 import modeling_qwen3

    def rmsnorm(self, x):
        return self.weight * (x * torch.rsqrt((x * x).mean(-1, keepdim=True) + self.variance_epsilon))

    def rotary(self, x, position_ids):
        dim = 2 * self.inv_freq.numel()
        theta = self.config.rope_parameters["rope_theta"]
        inv_freq = 1.0 / theta ** (torch.arange(0, dim, 2, dtype=torch.float64) / dim)
        freqs = position_ids[..., None].to(torch.float64) * inv_freq                    # (B, T, R/2)
        emb = torch.cat((freqs, freqs), dim=-1)
        return emb.cos().to(x.dtype), emb.sin().to(x.dtype)

    for module, name in ((modeling_llama, "Llama"), (modeling_glm, "Glm"), (modeling_mistral, "Mistral"),
                         (modeling_qwen3, "Qwen3")):
        monkeypatch.setattr(getattr(module, name + "RMSNorm"), "forward", rmsnorm)
        monkeypatch.setattr(getattr(module, name + "RotaryEmbedding"), "forward", rotary)


@pytest.mark.parametrize("model_type", hf.MODEL_TYPES)
def test_load_logits_match_transformers_float32(tmp_path, model_type):
    torch, _ = parity_libs()
    reference = hf_model(model_type)
    reference.save_pretrained(tmp_path, safe_serialization=True)
    model = hf.load(str(tmp_path))
    assert hf.model_type_of(model.config) == model_type
    ids = random_ids()
    with torch.no_grad():
        expected = reference(torch.from_numpy(ids)).logits.numpy()
    logits = model.forward(ids)
    assert logits.dtype == np.float32
    assert np.abs(logits - expected).max() < 1e-4


@pytest.mark.parametrize("model_type", hf.MODEL_TYPES)
def test_load_logits_and_every_gradient_match_torch_float64(tmp_path, monkeypatch, model_type):
    """float64 on both sides: the only differences left are rounding of the order of 1e-16 per
    operation, amplified a little by depth, so logits agree to 1e-10 and each gradient tensor to
    1e-9 of its largest entry. Anything wrong in a layout or a formula shows up as O(1) error."""
    torch, _ = parity_libs()
    torch_float64(monkeypatch)
    reference = hf_model(model_type)
    reference.save_pretrained(tmp_path, safe_serialization=True)
    reference = reference.double()
    model = hf.load(str(tmp_path), dtype="float64")

    ids, targets = random_ids(0), random_ids(1)
    out = reference(torch.from_numpy(ids), labels=None).logits                        # (B, T, V)
    ref_loss = torch.nn.functional.cross_entropy(out.reshape(-1, V), torch.from_numpy(targets).reshape(-1))
    ref_loss.backward()
    logits = model.forward(ids)
    assert np.abs(logits - out.detach().numpy()).max() < 1e-10
    loss, dlogits = cross_entropy(logits, targets)
    assert abs(loss - ref_loss.item()) < 1e-12
    model.zero_grad()
    model.backward(dlogits)

    grads = hf.to_hf_state_dict(model.config, model.grads)
    named = dict(reference.named_parameters())
    assert sorted(grads) == sorted(named)
    for name, p in named.items():
        expected = p.grad.numpy()
        err = np.abs(grads[name] - expected).max() / np.abs(expected).max()
        assert err < 1e-9, (name, err)


@pytest.mark.parametrize("model_type", hf.MODEL_TYPES)
def test_save_roundtrips_into_transformers(tmp_path, model_type):
    torch, transformers = parity_libs()
    reference = hf_model(model_type)
    reference.save_pretrained(tmp_path / "hf", safe_serialization=True)
    model = hf.load(str(tmp_path / "hf"))
    hf.save(model, str(tmp_path / "ours"))
    again = transformers.AutoModelForCausalLM.from_pretrained(str(tmp_path / "ours")).eval()
    assert type(again) is type(reference)
    ids = torch.from_numpy(random_ids())
    with torch.no_grad():
        assert torch.equal(again(ids).logits, reference(ids).logits)


def test_save_of_a_minigpt_model_matches_its_logits_in_transformers(tmp_path):
    """Models born in minigpt, including variants the parity tests above do not build (tied LLaMA,
    untied GPT-1/2, exact-GELU GPT-2, GeGLU LLaMA), run the same in transformers."""
    torch, transformers = parity_libs()
    configs = (tiny("glm4"), tiny("llama", tie_embeddings=True), tiny("gpt2", activation="gelu", tie_embeddings=False),
               tiny("gpt1", tie_embeddings=False), tiny("llama", activation="geglu"))
    for i, config in enumerate(configs):
        model = Model(config, seed=i)
        for key, value in model.params.items():  # move off the init (zeros biases, unit norm gains)
            value += 0.1 * np.random.default_rng(i).standard_normal(value.shape).astype(value.dtype)
        path = hf.save(model, str(tmp_path / str(i)))
        theirs = transformers.AutoModelForCausalLM.from_pretrained(path).eval()
        ids = random_ids(i)
        with torch.no_grad():
            expected = theirs(torch.from_numpy(ids)).logits.numpy()
        assert np.abs(model.forward(ids) - expected).max() < 1e-4, config
