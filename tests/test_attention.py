import numpy as np
import pytest

from minigpt.gradcheck import check_gradients
from minigpt.layers.attention import attention_backward, attention_forward, merge_heads, split_heads
from minigpt.masks import make_mask

MASK_KINDS = ["causal", "prefix", "banded", "sliding", "none"]


def qkv(B, H, Hkv, T, D, S=None, dtype=np.float64, seed=0):
    rng = np.random.default_rng(seed)
    S = T if S is None else S
    return (rng.standard_normal((B, H, T, D)).astype(dtype),
            rng.standard_normal((B, Hkv, S, D)).astype(dtype),
            rng.standard_normal((B, Hkv, S, D)).astype(dtype))


def build_mask(kind, B, T):
    """A mask of each kind; prefix gets a different Part A length per sample (0 = fully causal)."""
    if kind == "none":
        return None
    if kind == "prefix":
        return make_mask("prefix", T, sep=np.arange(B) * 3 % (T + 1))     # (B, T, T)
    if kind in ("banded", "sliding"):
        return make_mask(kind, T, window=3)                                # (T, T)
    return make_mask(kind, T)


def forward_with(mask, scale=None):
    return lambda q, k, v: attention_forward(q, k, v, mask=mask, scale=scale)


# ---------------------------------------------------------------- gradient checks (float64)

@pytest.mark.parametrize("kind", MASK_KINDS)
@pytest.mark.parametrize("Hkv", [1, 2, 4])
def test_attention_gradients_every_mask_and_group(kind, Hkv):
    B, H, T, D = 3, 4, 7, 6
    q, k, v = qkv(B, H, Hkv, T, D)
    errors = check_gradients(forward_with(build_mask(kind, B, T)), attention_backward, [q, k, v],
                             names=["q", "k", "v"], max_entries=60)
    assert set(errors) == {"q", "k", "v"}
    assert max(errors.values()) < 1e-6, errors


@pytest.mark.parametrize("kind", MASK_KINDS)
@pytest.mark.parametrize("B,T", [(1, 1), (1, 7), (3, 1)])
def test_attention_gradients_small_batch_and_length(kind, B, T):
    q, k, v = qkv(B, 4, 2, T, 10, seed=1)
    errors = check_gradients(forward_with(build_mask(kind, B, T)), attention_backward, [q, k, v],
                             names=["q", "k", "v"], max_entries=60)
    assert max(errors.values()) < 1e-6, errors


def test_attention_gradients_fewer_queries_than_keys_with_scale():
    # a KV cache step: T = 2 new queries look at S = 7 keys, the last two of which are their own
    T, S = 2, 7
    mask = kv_cache_mask(T, S)                                             # (T, S)
    q, k, v = qkv(3, 4, 2, T, 6, S=S, seed=2)
    errors = check_gradients(forward_with(mask, scale=0.3), attention_backward, [q, k, v],
                             names=["q", "k", "v"])
    assert max(errors.values()) < 1e-6, errors


def kv_cache_mask(T, S):
    """(T, S): the T new queries are the last T of S positions; each sees the cache and itself, causally."""
    return np.arange(S)[None, :] <= np.arange(S - T, S)[:, None]


@pytest.mark.parametrize("Hkv", [1, 2, 4])
@pytest.mark.parametrize("B", [1, 3])
def test_attention_gradients_one_new_query_against_a_kv_cache(Hkv, B):
    # generation with a KV cache: T = 1 query, S = 7 keys (the cache plus its own)
    q, k, v = qkv(B, 4, Hkv, 1, 10, S=7, seed=10)
    errors = check_gradients(forward_with(kv_cache_mask(1, 7)), attention_backward, [q, k, v],
                             names=["q", "k", "v"])
    assert set(errors) == {"q", "k", "v"}
    assert max(errors.values()) < 1e-6, errors


@pytest.mark.parametrize("heads_axis", [1, 4])
def test_attention_gradients_four_dim_mask(heads_axis):
    rng = np.random.default_rng(3)
    mask = rng.random((3, heads_axis, 5, 5)) < 0.5
    mask[..., 0] = True                                                    # every row sees key 0
    q, k, v = qkv(3, 4, 2, 5, 6, seed=3)
    errors = check_gradients(forward_with(mask), attention_backward, [q, k, v], names=["q", "k", "v"])
    assert max(errors.values()) < 1e-6, errors


# ---------------------------------------------------------------- properties

def test_attention_probs_rows_sum_to_one_and_masked_are_zero():
    q, k, v = qkv(3, 4, 2, 7, 6)
    mask = build_mask("banded", 3, 7)
    out, _, probs = attention_forward(q, k, v, mask=mask, return_probs=True)
    assert out.shape == (3, 4, 7, 6) and probs.shape == (3, 4, 7, 7)
    np.testing.assert_allclose(probs.sum(axis=-1), 1.0, atol=1e-12)
    assert np.all(probs[:, :, ~mask] == 0.0)


def test_attention_matches_written_out_softmax_for_one_head():
    q, k, v = qkv(1, 1, 1, 4, 6)
    s = q[0, 0] @ k[0, 0].T / np.sqrt(6)
    s = np.where(np.tril(np.ones((4, 4), bool)), s, -np.inf)
    p = np.exp(s - s.max(axis=1, keepdims=True))
    p /= p.sum(axis=1, keepdims=True)
    out, _ = attention_forward(q, k, v, mask=make_mask("causal", 4))
    np.testing.assert_allclose(out[0, 0], p @ v[0, 0], rtol=1e-12, atol=1e-14)


@pytest.mark.parametrize("Hkv", [1, 2])
def test_gqa_equals_mha_with_repeated_kv_and_grads_sum_over_group(Hkv):
    B, H, T, D = 3, 4, 7, 6
    g = H // Hkv
    q, k, v = qkv(B, H, Hkv, T, D, seed=4)
    mask = build_mask("causal", B, T)
    k_rep, v_rep = np.repeat(k, g, axis=1), np.repeat(v, g, axis=1)        # head h gets kv head h // g
    out, cache = attention_forward(q, k, v, mask=mask)
    out_rep, cache_rep = attention_forward(q, k_rep, v_rep, mask=mask)
    np.testing.assert_allclose(out, out_rep, rtol=1e-12, atol=1e-13)
    dout = np.random.default_rng(5).standard_normal(out.shape)
    dq, dk, dv = attention_backward(dout, cache)
    dq_rep, dk_rep, dv_rep = attention_backward(dout, cache_rep)
    np.testing.assert_allclose(dq, dq_rep, rtol=1e-12, atol=1e-13)
    np.testing.assert_allclose(dk, dk_rep.reshape(B, Hkv, g, T, D).sum(axis=2), rtol=1e-12, atol=1e-13)
    np.testing.assert_allclose(dv, dv_rep.reshape(B, Hkv, g, T, D).sum(axis=2), rtol=1e-12, atol=1e-13)


def test_attention_float32_in_float32_out():
    q, k, v = qkv(3, 4, 2, 7, 6, dtype=np.float32)
    out, cache, probs = attention_forward(q, k, v, mask=build_mask("prefix", 3, 7), return_probs=True)
    assert out.dtype == np.float32 and probs.dtype == np.float32
    grads = attention_backward(np.ones_like(out), cache)
    assert [g.dtype for g in grads] == [np.float32] * 3


def test_attention_numpy_float_scale_keeps_float32():
    # NumPy 2: float32 array * np.float64 scalar is float64; a scale computed with NumPy must not upcast
    q, k, v = qkv(1, 2, 1, 3, 6, dtype=np.float32)
    out, cache = attention_forward(q, k, v, scale=np.float64(0.5))
    assert out.dtype == np.float32
    assert [g.dtype for g in attention_backward(out, cache)] == [np.float32] * 3


def test_attention_large_scores_stay_finite():
    q, k, v = qkv(1, 2, 2, 5, 6)
    out, cache = attention_forward(1e4 * q, k, v, mask=build_mask("sliding", 1, 5))
    grads = attention_backward(np.ones_like(out), cache)
    assert np.all(np.isfinite(out)) and all(np.all(np.isfinite(g)) for g in grads)


def test_single_allowed_key_copies_its_value():
    # sliding window 1: every query sees only itself, so out[t] = v[t] exactly
    q, k, v = qkv(2, 4, 4, 5, 6)
    out, _ = attention_forward(q, k, v, mask=make_mask("sliding", 5, window=1))
    np.testing.assert_allclose(out, v, rtol=1e-12, atol=1e-14)


def test_split_and_merge_heads_round_trip():
    x = np.arange(3 * 5 * 12, dtype=np.float64).reshape(3, 5, 12)
    heads = split_heads(x, 4)
    assert heads.shape == (3, 4, 5, 3)
    np.testing.assert_array_equal(heads[1, 2, 3], x[1, 3, 6:9])           # head 2 = channels 6..8
    np.testing.assert_array_equal(merge_heads(heads), x)


# ---------------------------------------------------------------- bad input

def test_heads_not_divisible_is_error():
    q, k, v = qkv(1, 4, 3, 5, 6)
    with pytest.raises(ValueError, match=r"H=4.*Hkv=3"):
        attention_forward(q, k, v)


def test_kv_shapes_not_lining_up_is_error():
    q, k, v = qkv(2, 4, 2, 5, 6)
    with pytest.raises(ValueError, match=r"\(2, 2, 5, 5\)"):
        attention_forward(q, k, v[..., :5])
    with pytest.raises(ValueError, match="D=6"):
        attention_forward(q, k[..., :4], v[..., :4])
    with pytest.raises(ValueError, match=r"\(B, H, T, D\)"):
        attention_forward(q[0], k, v)


def test_mixed_dtypes_is_error():
    q, k, v = qkv(1, 2, 2, 3, 6)
    with pytest.raises(ValueError, match="float32"):
        attention_forward(q.astype(np.float32), k, v)


def test_mask_wrong_shape_is_error():
    q, k, v = qkv(2, 4, 2, 5, 6)
    with pytest.raises(ValueError, match=r"mask shape \(4, 4\) .*T=5, S=5"):
        attention_forward(q, k, v, mask=make_mask("causal", 4))
    with pytest.raises(ValueError, match=r"mask shape \(3, 5, 5\) .*B=2"):
        attention_forward(q, k, v, mask=np.ones((3, 5, 5), bool))
    with pytest.raises(ValueError, match=r"mask shape \(2, 3, 5, 5\)"):
        attention_forward(q, k, v, mask=np.ones((2, 3, 5, 5), bool))


def test_mask_not_boolean_is_error():
    q, k, v = qkv(1, 2, 2, 3, 6)
    with pytest.raises(ValueError, match="int64"):
        attention_forward(q, k, v, mask=np.ones((3, 3), dtype=np.int64))


def test_empty_mask_row_is_error_naming_batch_and_row():
    q, k, v = qkv(3, 4, 2, 5, 6)
    mask = make_mask("prefix", 5, sep=[0, 2, 5]).copy()
    mask[1, 3] = False                                                     # sample 1, query 3 sees nothing
    with pytest.raises(ValueError, match=r"\(batch 1, head all, row 3\)"):
        attention_forward(q, k, v, mask=mask)


def test_empty_mask_row_in_one_head_is_error_naming_head():
    q, k, v = qkv(2, 4, 2, 5, 6)
    mask = np.ones((2, 4, 5, 5), bool)
    mask[0, 2, 4] = False
    with pytest.raises(ValueError, match=r"\(batch 0, head 2, row 4\)"):
        attention_forward(q, k, v, mask=mask)


def test_split_heads_not_divisible_is_error():
    with pytest.raises(ValueError, match=r"C=10.*n_head=4"):
        split_heads(np.zeros((1, 2, 10)), 4)


# ---------------------------------------------------------------- parity with PyTorch

def torch_attention(q, k, v, mask, gqa_mode, dout, scale=None):
    """Forward and autograd gradients of torch's scaled_dot_product_attention."""
    torch = pytest.importorskip("torch")
    F = torch.nn.functional
    tq, tk, tv = (torch.tensor(a, requires_grad=True) for a in (q, k, v))
    tmask = None
    if mask is not None:
        tmask = torch.tensor(mask if mask.ndim != 3 else mask[:, None])   # (B, 1, T, S) broadcasts over heads
    g = q.shape[1] // k.shape[1]
    if gqa_mode == "enable_gqa":
        out = F.scaled_dot_product_attention(tq, tk, tv, attn_mask=tmask, enable_gqa=True, scale=scale)
    else:
        out = F.scaled_dot_product_attention(tq, tk.repeat_interleave(g, dim=1), tv.repeat_interleave(g, dim=1),
                                             attn_mask=tmask, scale=scale)
    out.backward(torch.tensor(dout))
    return [t.detach().numpy() for t in (out, tq.grad, tk.grad, tv.grad)]


def max_relative(a, b):
    return float(np.max(np.abs(a - b)) / np.max(np.abs(b)))


@pytest.mark.parametrize("kind", MASK_KINDS)
@pytest.mark.parametrize("Hkv,gqa_mode", [(4, "enable_gqa"), (2, "enable_gqa"), (1, "enable_gqa"),
                                          (2, "repeat_interleave")])
def test_attention_parity_with_torch_float64(kind, Hkv, gqa_mode):
    pytest.importorskip("torch")
    B, H, T, D = 3, 4, 7, 6
    q, k, v = qkv(B, H, Hkv, T, D, seed=6)
    mask = build_mask(kind, B, T)
    out, cache = attention_forward(q, k, v, mask=mask)
    dout = np.random.default_rng(7).standard_normal(out.shape)
    ours = [out, *attention_backward(dout, cache)]
    theirs = torch_attention(q, k, v, mask, gqa_mode, dout)
    for name, a, b in zip(["out", "dq", "dk", "dv"], ours, theirs):
        assert np.max(np.abs(a - b)) < 1e-10, name


@pytest.mark.parametrize("kind", MASK_KINDS)
@pytest.mark.parametrize("Hkv", [1, 2, 4])
def test_attention_parity_with_torch_float32(kind, Hkv):
    pytest.importorskip("torch")
    q, k, v = qkv(3, 4, Hkv, 7, 10, dtype=np.float32, seed=8)
    mask = build_mask(kind, 3, 7)
    out, cache = attention_forward(q, k, v, mask=mask)
    dout = np.random.default_rng(9).standard_normal(out.shape).astype(np.float32)
    ours = [out, *attention_backward(dout, cache)]
    theirs = torch_attention(q, k, v, mask, "enable_gqa", dout)
    for name, a, b in zip(["out", "dq", "dk", "dv"], ours, theirs):
        assert a.dtype == np.float32
        assert max_relative(a, b) < 1e-5, name


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("T", [1, 3])
def test_attention_parity_with_torch_kv_cache_and_scale(dtype, T):
    # S = 7 keys, T new queries at the end, an explicit scale (as a model with its own 1/sqrt(D) convention)
    pytest.importorskip("torch")
    q, k, v = qkv(3, 4, 2, T, 6, S=7, dtype=dtype, seed=11)
    mask = kv_cache_mask(T, 7)
    out, cache = attention_forward(q, k, v, mask=mask, scale=0.3)
    dout = np.random.default_rng(12).standard_normal(out.shape).astype(dtype)
    ours = [out, *attention_backward(dout, cache)]
    theirs = torch_attention(q, k, v, mask, "enable_gqa", dout, scale=0.3)
    for name, a, b in zip(["out", "dq", "dk", "dv"], ours, theirs):
        assert a.dtype == dtype
        if dtype == np.float64:
            assert np.max(np.abs(a - b)) < 1e-10, name
        else:
            assert max_relative(a, b) < 1e-5, name


@pytest.mark.parametrize("batch_axis", [1, 3])
def test_attention_parity_with_torch_per_head_mask(batch_axis):
    # a (B, H, T, S) mask, every sample and head its own pattern; (1, H, T, S) shares one over the batch
    pytest.importorskip("torch")
    rng = np.random.default_rng(13)
    mask = rng.random((batch_axis, 4, 5, 5)) < 0.5
    mask[..., 0] = True                                                    # every row sees key 0
    q, k, v = qkv(3, 4, 2, 5, 6, seed=13)
    out, cache = attention_forward(q, k, v, mask=mask)
    dout = rng.standard_normal(out.shape)
    ours = [out, *attention_backward(dout, cache)]
    theirs = torch_attention(q, k, v, mask, "enable_gqa", dout)
    for name, a, b in zip(["out", "dq", "dk", "dv"], ours, theirs):
        assert np.max(np.abs(a - b)) < 1e-10, name

