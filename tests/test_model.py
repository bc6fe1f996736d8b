import numpy as np
import pytest

from minigpt.config import FAMILIES, ModelConfig, num_params, param_shapes
from minigpt.gradcheck import check_model_gradients, move_off_init
from minigpt.layers.loss import cross_entropy
from minigpt.masks import causal_mask, prefix_mask
from minigpt.model import Model

TINY = dict(n_layer=2, d_model=32, max_seq_len=8, vocab_size=50, attn_window=4)
B, T = 2, 8


def tiny(name, **overrides):
    return ModelConfig.preset(name, **{**TINY, **overrides})


def batch(seed=0, shape=(B, T), vocab=50):
    rng = np.random.default_rng(seed)
    return rng.integers(0, vocab, shape), rng.integers(0, vocab, shape)


def forward_kwargs(cfg):
    """A prefix for the prefix-attention families (one per sample), nothing for the others."""
    return dict(prefix_len=np.array([3, 5])) if cfg.attention == "prefix" else {}


@pytest.mark.parametrize("name", sorted(FAMILIES))
def test_model_gradients_every_parameter(name):
    cfg = tiny(name)
    model = Model(cfg, seed=0, dtype="float64")
    move_off_init(model)
    ids, targets = batch()
    errors = check_model_gradients(model, ids, targets, **forward_kwargs(cfg))
    assert set(errors) == set(param_shapes(cfg))
    worst = max(errors, key=errors.get)
    print(f"{name}: worst rel_error {errors[worst]:.1e} ({worst})")
    assert errors[worst] < 1e-6, {k: e for k, e in errors.items() if e >= 1e-6}


@pytest.mark.parametrize("name", sorted(FAMILIES))
def test_model_gradients_odd_shapes(name):
    """B=1, T=1 (one token: attention over itself alone) and B=3, T=7 (T past the GPT-3 band, not a power of 2)."""
    cfg = tiny(name)
    model = Model(cfg, seed=0, dtype="float64")
    move_off_init(model)
    for shape in ((1, 1), (3, 7)):
        ids, targets = batch(seed=3, shape=shape)
        kwargs = dict(prefix_len=np.arange(shape[0]) * 3 % (shape[1] + 1)) if cfg.attention == "prefix" else {}
        errors = check_model_gradients(model, ids, targets, entries=2, **kwargs)
        assert max(errors.values()) < 1e-6, (shape, errors)


@pytest.mark.parametrize("name, overrides", [
    ("gpt1", dict(positions="sinusoidal")),
    ("gpt2", dict(activation="relu", tie_embeddings=False, qkv_bias=False)),
    ("gpt2", dict(activation="gelu", norm="rmsnorm", n_kv_head=1)),
    ("llama", dict(activation="geglu", n_kv_head=1, rope_pairing="interleaved", rotary_fraction=0.5)),
    ("chatglm", dict(norm="rmsnorm", tie_embeddings=False, final_norm=False)),
])
def test_model_gradients_other_switches(name, overrides):
    cfg = tiny(name, **overrides)
    model = Model(cfg, seed=0, dtype="float64")
    move_off_init(model)
    ids, targets = batch(seed=2)
    errors = check_model_gradients(model, ids, targets, entries=4, **forward_kwargs(cfg))
    assert max(errors.values()) < 1e-6, errors


def test_model_gradients_with_dropout():
    cfg = tiny("gpt2", dropout=0.3)
    model = Model(cfg, seed=0, dtype="float64").train()
    move_off_init(model)
    ids, targets = batch()

    def same_masks():  # the same dropout masks in every forward, so finite differences are meaningful
        model.dropout_rng = np.random.default_rng(7)

    errors = check_model_gradients(model, ids, targets, entries=4, prepare=same_masks)
    assert max(errors.values()) < 1e-6, errors


def test_model_gradients_with_explicit_positions():
    cfg = tiny("glm")
    model = Model(cfg, seed=0, dtype="float64")
    move_off_init(model)
    ids, targets = batch()
    pos = np.array([[0, 1, 2, 3, 4, 2, 2, 2], [0, 1, 2, 3, 4, 5, 6, 7]])
    block = np.array([[0, 0, 0, 0, 0, 1, 2, 3], [0, 0, 0, 0, 0, 0, 0, 0]])
    errors = check_model_gradients(model, ids, targets, entries=4, position_ids=pos, block_position_ids=block,
                                   prefix_len=np.array([5, 8]))
    assert max(errors.values()) < 1e-6, errors


def test_model_tied_head_accumulates_both_paths():
    tied = Model(tiny("gpt2"), seed=0, dtype="float64")
    move_off_init(tied)
    params = {k: v.copy() for k, v in tied.params.items()}
    params["lm_head"] = params["wte"].T.copy()
    untied = Model(tiny("gpt2", tie_embeddings=False), dtype="float64", params=params)
    ids, targets = batch()
    for model in (tied, untied):
        _, dlogits = cross_entropy(model.forward(ids), targets)
        model.backward(dlogits)
    embedding_path, head_path = untied.grads["wte"], untied.grads["lm_head"].T
    assert np.abs(head_path).max() > 0 and np.abs(embedding_path).max() > 0
    np.testing.assert_allclose(tied.grads["wte"], embedding_path + head_path, rtol=1e-12, atol=1e-14)


def test_model_backward_accumulates_and_zero_grad_clears():
    model = Model(tiny("llama"), seed=0, dtype="float64")
    ids, targets = batch()
    for _ in range(2):
        _, dlogits = cross_entropy(model.forward(ids), targets)
        model.backward(dlogits)
    once = Model(tiny("llama"), seed=0, dtype="float64")
    _, dlogits = cross_entropy(once.forward(ids), targets)
    once.backward(dlogits)
    np.testing.assert_allclose(model.grads["blocks.0.attn.wq"], 2 * once.grads["blocks.0.attn.wq"], rtol=1e-12)
    held = model.grads["wte"]
    model.zero_grad()
    assert held is model.grads["wte"] and not any(np.any(g) for g in model.grads.values())


@pytest.mark.parametrize("name", sorted(FAMILIES))
def test_model_params_match_config_count(name):
    cfg = tiny(name)
    model = Model(cfg)
    assert num_params(cfg)["total"] == sum(p.size for p in model.params.values()) == model.num_params()
    assert model.params.keys() == model.grads.keys()
    for key, value in model.params.items():
        assert model.grads[key].shape == value.shape and value.dtype == np.float32, key


@pytest.mark.parametrize("name", sorted(FAMILIES))
def test_model_float32_in_float32_out(name):
    cfg = tiny(name)
    model = Model(cfg)
    ids, targets = batch()
    logits = model.forward(ids, **forward_kwargs(cfg))
    assert logits.shape == (B, T, 50) and logits.dtype == np.float32
    _, dlogits = cross_entropy(logits, targets)
    model.backward(dlogits)
    assert all(g.dtype == np.float32 for g in model.grads.values())


@pytest.mark.parametrize("name", sorted(FAMILIES))
def test_model_causal_later_tokens_leave_earlier_outputs(name):
    model = Model(tiny(name), seed=0, dtype="float64")
    move_off_init(model)
    ids, _ = batch()
    base = model.forward(ids)
    for t in (2, 5):
        changed = ids.copy()
        changed[:, t] = (changed[:, t] + 1) % 50
        out = model.forward(changed)
        np.testing.assert_array_equal(out[:, :t], base[:, :t])
        assert np.all(np.abs(out[:, t:] - base[:, t:]).max(axis=-1) > 0)


@pytest.mark.parametrize("name", ["glm", "chatglm"])
def test_model_prefix_sees_itself_not_what_follows(name):
    model = Model(tiny(name), seed=0, dtype="float64")
    move_off_init(model)
    ids, _ = batch()
    P = 4
    base = model.forward(ids, prefix_len=P)
    after = ids.copy()
    after[:, P + 1] = (after[:, P + 1] + 1) % 50          # a token after the prefix
    out = model.forward(after, prefix_len=P)
    np.testing.assert_array_equal(out[:, :P], base[:, :P])
    inside = ids.copy()
    inside[:, P - 1] = (inside[:, P - 1] + 1) % 50         # the last prefix token: every prefix position sees it
    out = model.forward(inside, prefix_len=P)
    assert np.all(np.abs(out[:, :P] - base[:, :P]).max(axis=-1) > 1e-8)


def test_model_prefix_len_per_sample_and_zero_is_causal():
    model = Model(tiny("glm"), seed=0, dtype="float64")
    ids, _ = batch()
    np.testing.assert_array_equal(model.forward(ids, prefix_len=0), model.forward(ids))
    both = model.forward(ids, prefix_len=np.array([3, 6]))
    np.testing.assert_array_equal(both[0], model.forward(ids[:1], prefix_len=3)[0])
    np.testing.assert_array_equal(both[1], model.forward(ids[1:], prefix_len=6)[0])


def test_model_attn_mask_replaces_the_default():
    model = Model(tiny("glm"), seed=0, dtype="float64")
    ids, _ = batch()
    np.testing.assert_array_equal(model.forward(ids, attn_mask=causal_mask(T)), model.forward(ids))
    np.testing.assert_array_equal(model.forward(ids, attn_mask=prefix_mask(T, np.array([2, 7]))),
                                  model.forward(ids, prefix_len=np.array([2, 7])))


def test_model_gpt3_odd_layers_are_banded():
    gpt3 = Model(tiny("gpt3"), seed=0, dtype="float64")
    dense = Model(tiny("gpt3", attention_pattern="dense"), dtype="float64", params=gpt3.params)
    ids, _ = batch()
    banded_out, dense_out = gpt3.forward(ids), dense.forward(ids)
    window = gpt3.config.attn_window
    # within the first block the band is the causal mask; past it, the banded layer sees less
    np.testing.assert_allclose(banded_out[:, :window], dense_out[:, :window], rtol=1e-12)
    assert np.all(np.abs(banded_out[:, window:] - dense_out[:, window:]).max(axis=-1) > 1e-8)


def test_model_mistral_sliding_window_limits_the_reach():
    """Each layer sees the last W positions, so L layers reach L*(W-1) positions back: a change at
    position 0 reaches outputs 0..L*(W-1) and no further."""
    model = Model(tiny("mistral"), seed=0, dtype="float64")
    move_off_init(model)
    L, W = model.config.n_layer, model.config.attn_window
    reach = L * (W - 1)
    assert reach + 1 < T
    ids, _ = batch()
    changed = ids.copy()
    changed[:, 0] = (ids[:, 0] + 1) % 50
    diff = np.abs(model.forward(ids) - model.forward(changed)).max(axis=(0, 2))    # (T,) per position
    assert np.all(diff[:reach + 1] > 1e-8) and np.all(diff[reach + 1:] == 0), diff


def test_model_qwen3_qk_norm_makes_scores_scale_free():
    """QK-norm divides each head's q and k by their RMS: scaling wq and wk changes nothing (up to eps),
    while without QK-norm the same scaling sharpens the softmax and changes the logits."""
    for qk_norm, changes in ((True, False), (False, True)):
        model = Model(tiny("qwen3", qk_norm=qk_norm, norm_eps=1e-12), seed=0, dtype="float64")
        move_off_init(model)
        ids, _ = batch()
        before = model.forward(ids)
        for i in range(model.config.n_layer):
            model.params[f"blocks.{i}.attn.wq"] *= 7.0
            model.params[f"blocks.{i}.attn.wk"] *= 3.0
        after = model.forward(ids)
        assert (not np.allclose(after, before, rtol=0, atol=1e-9)) == changes, qk_norm


def test_model_init_draws_the_same_streams_as_name_based_init():
    """param_specs' init column gives the numbers the earlier rule gave (ones for norm scales, zeros for
    biases and norm shifts, N(0, std) drawn in key order, std / sqrt(2L) for wo and w_down under
    scaled_residual_init): same seed, same model."""
    for name in sorted(FAMILIES):
        cfg = tiny(name)
        rng, expected = np.random.default_rng(5), {}
        for key, shape in param_shapes(cfg).items():
            leaf = key.rsplit(".", 1)[-1]
            if "norm" in key:
                expected[key] = np.ones(shape) if leaf == "w" else np.zeros(shape)
            elif leaf in ("bq", "bk", "bv", "bo", "b_up", "b_down"):
                expected[key] = np.zeros(shape)
            else:
                residual = cfg.scaled_residual_init and leaf in ("wo", "w_down")
                expected[key] = rng.standard_normal(shape) * (cfg.init_std / np.sqrt(2 * cfg.n_layer) if residual
                                                              else cfg.init_std)
        model = Model(cfg, seed=5, dtype="float64")
        for key, value in expected.items():
            np.testing.assert_array_equal(model.params[key], value, err_msg=f"{name} {key}")


def test_model_default_positions_are_arange_and_block_zero():
    model = Model(tiny("chatglm"), seed=0, dtype="float64")
    ids, _ = batch()
    explicit = model.forward(ids, position_ids=np.arange(T), block_position_ids=np.zeros((B, T), dtype=int))
    np.testing.assert_array_equal(model.forward(ids), explicit)
    # RoPE sees relative positions only: shifting every block id by 1 changes nothing, spreading them does
    np.testing.assert_allclose(model.forward(ids, block_position_ids=np.ones((B, T), dtype=int)), explicit,
                               rtol=1e-10, atol=1e-12)
    assert not np.allclose(model.forward(ids, block_position_ids=np.arange(T)), explicit)


def test_model_dropout_only_in_train_mode():
    model = Model(tiny("gpt2", dropout=0.5), seed=0)
    ids, _ = batch()
    assert not np.array_equal(model.train().forward(ids), model.forward(ids))
    plain = Model(tiny("gpt2"), seed=0)
    np.testing.assert_array_equal(model.eval().forward(ids), plain.forward(ids))


def test_model_seed_and_scaled_residual_init():
    cfg = ModelConfig.preset("gpt2", n_layer=8, d_model=256, n_head=4)
    a, b = Model(cfg, seed=3), Model(cfg, seed=3)
    assert all(np.array_equal(a.params[k], b.params[k]) for k in a.params)
    assert not np.array_equal(a.params["wte"], Model(cfg, seed=4).params["wte"])
    assert abs(a.params["blocks.0.attn.wq"].std() - 0.02) < 0.001
    assert abs(a.params["blocks.0.attn.wo"].std() - 0.02 / 4) < 0.0005    # 0.02 / sqrt(2 * 8)
    assert abs(a.params["blocks.0.mlp.w_down"].std() - 0.02 / 4) < 0.0005
    assert np.all(a.params["blocks.0.norm1.w"] == 1) and np.all(a.params["blocks.0.attn.bq"] == 0)


def test_model_float64_matches_float32():
    ids, _ = batch()
    f64 = Model(tiny("llama"), seed=0, dtype="float64").forward(ids)
    f32 = Model(tiny("llama"), seed=0).forward(ids)
    np.testing.assert_allclose(f32, f64, rtol=1e-4, atol=1e-5)


# --- bad input -------------------------------------------------------------------------------------
@pytest.mark.parametrize("ids, match", [
    (np.zeros((2, 4)), "dtype float64"),
    (np.array([[1, 2, 50]]), "token id 50"),
    (np.array([[1, -1]]), "token id -1"),
    (np.array([1, 2, 3]), r"shape \(3,\)"),
    (np.zeros((2, 0), dtype=int), "non-empty"),
    (np.zeros((1, 9), dtype=int), "T=9"),
])
def test_model_bad_ids_is_error(ids, match):
    with pytest.raises(ValueError, match=match):
        Model(tiny("gpt2")).forward(ids)


@pytest.mark.parametrize("name, kwargs, match", [
    ("glm", dict(prefix_len=9), r"prefix_len=\[9\] out of range: expected 0 <= prefix_len <= 8"),
    ("glm", dict(prefix_len=np.array([2, -1])), r"prefix_len=\[-1\]"),
    ("glm", dict(prefix_len=np.array([1, 2, 3])), r"shape \(B,\)"),
    ("glm", dict(prefix_len=2.5), "prefix_len=2.5: expected an int"),
    ("gpt2", dict(prefix_len=3), "attention='causal'"),
    ("glm", dict(prefix_len=3, attn_mask=causal_mask(T)), "not both"),
    ("gpt2", dict(attn_mask=np.ones((T, T))), "dtype float64"),
    ("gpt2", dict(attn_mask=np.ones((3, T, T), dtype=bool)), "B=2"),
    ("gpt2", dict(pad_len=np.array([1, 2, 3])), r"shape \(B,\)"),
    ("gpt2", dict(pad_len=9), r"pad_len=\[9\] out of range"),
    ("gpt2", dict(pad_len=1, attn_mask=causal_mask(T)), "not both"),
    ("gpt2", dict(position_ids=np.arange(1, T + 1)), "position id 8 .*max_seq_len = 8"),
    ("gpt2", dict(position_ids=np.arange(T - 1)), "position_ids"),
    ("llama", dict(position_ids=-np.arange(T)), "position_ids: -1"),
    ("gpt2", dict(block_position_ids=np.zeros(T, dtype=int)), "block_position_ids"),
    ("glm", dict(block_position_ids=np.full(T, 8)), "block position id 8 .*max_seq_len = 8"),
])
def test_model_bad_forward_arguments_are_errors(name, kwargs, match):
    ids, _ = batch()
    with pytest.raises(ValueError, match=match):
        Model(tiny(name)).forward(ids, **kwargs)


def test_model_failed_forward_keeps_the_last_good_one():
    model = Model(tiny("gpt2"), dtype="float64")
    ids, targets = batch()
    _, dlogits = cross_entropy(model.forward(ids), targets)
    with pytest.raises(ValueError):
        model.forward(ids + 100)
    model.backward(dlogits)  # still the first forward's caches
    assert np.any(model.grads["wte"])


def test_model_backward_errors():
    model = Model(tiny("gpt2"))
    with pytest.raises(ValueError, match="forward first"):
        model.backward(np.zeros((B, T, 50), dtype=np.float32))
    model.forward(batch()[0])
    with pytest.raises(ValueError, match=r"\(2, 8, 50\)"):
        model.backward(np.zeros((B, T, 49), dtype=np.float32))
    with pytest.raises(ValueError, match="dtype float64, expected the model's float32"):
        model.backward(np.zeros((B, T, 50)))
    model.backward(np.zeros((B, T, 50), dtype=np.float32))  # the failed calls kept the forward's caches


def test_model_given_params_are_checked():
    cfg = tiny("llama")
    params = Model(cfg).params
    assert Model(cfg, params=params).params["wte"] is params["wte"]  # used as they are
    with pytest.raises(ValueError, match="missing keys \\(1\\): lm_head$"):
        Model(cfg, params={k: v for k, v in params.items() if k != "lm_head"})
    with pytest.raises(ValueError, match="unexpected keys \\(1\\): extra$"):
        Model(cfg, params={**params, "extra": params["wte"]})
    with pytest.raises(ValueError, match=r"shape mismatches \(1\): blocks.0.attn.wk has \(32, 32\), expected \(32, 16\)$"):
        Model(cfg, params={**params, "blocks.0.attn.wk": params["blocks.0.attn.wq"]})
    with pytest.raises(ValueError, match="ModelConfig"):
        Model({"n_layer": 2})


def test_model_attention_maps_are_each_heads_softmax():
    """attention_maps() reads the last forward's probabilities: per layer (B, H, T, T), rows summing to 1,
    causal, and head h's map is attention over the q of head h and the k of its kv head h // g."""
    from minigpt.layers.attention import attention_forward
    model = Model(tiny("llama"), seed=0, dtype="float64")                  # 4 query heads, 2 kv heads
    ids, _ = batch()
    model.forward(ids)
    maps = model.attention_maps()
    assert len(maps) == 2 and maps[0].shape == (B, 4, T, T)
    np.testing.assert_allclose(maps[1].sum(axis=-1), 1.0, rtol=1e-12)
    assert np.all(np.triu(maps[1], 1) == 0)
    cache = model._cache.blocks[1].attn.attention
    q = cache.q_grouped.reshape(B, 4, T, -1)                                # (B, H, T, D)
    _, _, probs = attention_forward(q, cache.k, cache.v, causal_mask(T), return_probs=True)
    np.testing.assert_allclose(maps[1], probs, rtol=1e-12)


@pytest.mark.parametrize("impl", ["flash-numpy", "flash-cpu"])
@pytest.mark.parametrize("name", sorted(FAMILIES))
def test_model_flash_attention_equals_the_reference(name, impl):
    """config.attention_impl swaps the attention core for a fused kernel (masks as a MaskSpec): the same
    logits and every gradient as the NumPy reference (float64, 1e-10), prefix masks and local windows too."""
    ref = Model(tiny(name), seed=0, dtype="float64")
    move_off_init(ref)
    flash = Model(tiny(name, attention_impl=impl), dtype="float64", params={k: v.copy() for k, v in ref.params.items()})
    ids, targets = batch()
    for model in (ref, flash):
        _, dlogits = cross_entropy(model.forward(ids, **forward_kwargs(model.config)), targets)
        model.zero_grad()
        model.backward(dlogits)
    np.testing.assert_allclose(flash.forward(ids, **forward_kwargs(flash.config)),
                               ref.forward(ids, **forward_kwargs(ref.config)), rtol=0, atol=1e-10)
    for key in ref.grads:
        np.testing.assert_allclose(flash.grads[key], ref.grads[key], rtol=0, atol=1e-10, err_msg=key)


def test_model_flash_attention_in_generation_and_auto():
    from minigpt.generate import generate
    ref = Model(tiny("mistral"), seed=0, dtype="float64")
    flash = Model(tiny("mistral", attention_impl="flash-cpu"), dtype="float64", params=ref.params)
    prompts = [[1, 2, 3], [4]]
    assert generate(flash, prompts, max_new_tokens=4, temperature=0) == generate(ref, prompts, max_new_tokens=4,
                                                                                   temperature=0)
    auto = Model(tiny("gpt2", attention_impl="auto"))
    assert not auto._uses_flash(8) and auto._uses_flash(256)               # CPU: flash from 256 positions
    auto.forward(batch()[0])
    assert len(auto.attention_maps()) == 2
    flash.forward(batch()[0])
    with pytest.raises(ValueError, match="flash kernel keeps no probabilities"):
        flash.attention_maps()
