import numpy as np
import pytest

from minigpt.gradcheck import check_gradients
from minigpt.layers.rope import (rope2d_backward, rope2d_forward, rope_backward, rope_cos_sin,
                                 rope_forward)

PAIRINGS = ["half", "interleaved"]


def randn(*shape, dtype=np.float64, seed=0):
    return np.random.default_rng(seed).standard_normal(shape).astype(dtype)


def batch_positions(B, T):
    """(B, T) position ids with a different offset per sample (as after left padding)."""
    return np.arange(T)[None, :] + 3 * np.arange(B)[:, None]


# ---------------------------------------------------------------- gradient checks (float64)

@pytest.mark.parametrize("pairing", PAIRINGS)
@pytest.mark.parametrize("B,T,D,rotary_dim", [(3, 7, 6, 6), (1, 7, 10, 4), (3, 1, 10, 10), (1, 1, 6, 2)])
@pytest.mark.parametrize("batched_positions", [False, True])
def test_rope_gradient(pairing, B, T, D, rotary_dim, batched_positions):
    position_ids = batch_positions(B, T) if batched_positions else np.arange(T) + 2
    cos, sin = rope_cos_sin(position_ids, rotary_dim, theta=100.0, dtype="float64")
    x = randn(B, 4, T, D)
    errors = check_gradients(lambda x: rope_forward(x, cos, sin, rotary_dim, pairing), rope_backward,
                             [x], names=["x"])
    assert errors["x"] < 1e-6


@pytest.mark.parametrize("B,T,D", [(3, 7, 12), (1, 1, 4), (1, 7, 8), (3, 1, 12)])
def test_rope2d_gradient(B, T, D):
    position_ids = batch_positions(B, T)
    block_ids = np.maximum(position_ids - 4, 0)
    x = randn(B, 4, T, D, seed=1)
    errors = check_gradients(lambda x: rope2d_forward(x, position_ids, block_ids), rope2d_backward,
                             [x], names=["x"])
    assert errors["x"] < 1e-6


# ---------------------------------------------------------------- properties

def test_rope_cos_sin_values_by_hand():
    # theta = 100, R = 4: inv_freq = [100^0, 100^-0.5] = [1, 0.1]
    cos, sin = rope_cos_sin(np.array([0, 3]), 4, theta=100.0, dtype="float64")
    assert cos.shape == (2, 2)
    np.testing.assert_allclose(cos, [[1, 1], [np.cos(3), np.cos(0.3)]], rtol=1e-15)
    np.testing.assert_allclose(sin, [[0, 0], [np.sin(3), np.sin(0.3)]], rtol=1e-15)


def test_rope_cos_sin_shapes_broadcast_against_heads():
    cos, sin = rope_cos_sin(np.arange(5), 6)
    assert cos.shape == sin.shape == (5, 3) and cos.dtype == np.float32
    cos, sin = rope_cos_sin(batch_positions(2, 5), 6)
    assert cos.shape == sin.shape == (2, 1, 5, 3)
    out, _ = rope_forward(randn(2, 4, 5, 6), cos, sin)
    assert out.shape == (2, 4, 5, 6)


def test_rope_batched_positions_rotate_each_sample_by_its_own_angles():
    x = randn(2, 3, 5, 6)
    position_ids = batch_positions(2, 5)
    out, _ = rope_forward(x, *rope_cos_sin(position_ids, 6, dtype="float64"))
    for b in range(2):
        alone, _ = rope_forward(x[b:b + 1], *rope_cos_sin(position_ids[b], 6, dtype="float64"))
        np.testing.assert_allclose(out[b:b + 1], alone, rtol=1e-14, atol=1e-15)
    # (B, T, P) cos/sin, without the head axis, mean the same thing
    cos, sin = rope_cos_sin(position_ids, 6, dtype="float64")
    out3, _ = rope_forward(x, cos[:, 0], sin[:, 0])
    np.testing.assert_array_equal(out3, out)


def test_rope_rotates_the_right_pairs_by_hand():
    # x = e_0 at position 1 (angle 1 for pair 0): pair 0 is (0, 2) for "half", (0, 1) for "interleaved"
    x = np.zeros((1, 1, 1, 4))
    x[..., 0] = 1.0
    cos, sin = rope_cos_sin(np.array([1]), 4, dtype="float64")
    half, _ = rope_forward(x, cos, sin, pairing="half")
    inter, _ = rope_forward(x, cos, sin, pairing="interleaved")
    np.testing.assert_allclose(half[0, 0, 0], [np.cos(1), 0, np.sin(1), 0], atol=1e-15)
    np.testing.assert_allclose(inter[0, 0, 0], [np.cos(1), np.sin(1), 0, 0], atol=1e-15)


def test_rope_interleaved_is_half_on_permuted_channels():
    D, R = 10, 6
    perm = np.r_[np.arange(0, R, 2), np.arange(1, R, 2), np.arange(R, D)]  # interleaved layout -> half layout
    x = randn(2, 3, 7, D)
    cos, sin = rope_cos_sin(np.arange(7), R, dtype="float64")
    inter, _ = rope_forward(x, cos, sin, R, "interleaved")
    half, _ = rope_forward(x[..., perm], cos, sin, R, "half")
    np.testing.assert_allclose(inter[..., perm], half, rtol=1e-14, atol=1e-15)


@pytest.mark.parametrize("pairing", PAIRINGS)
@pytest.mark.parametrize("rotary_dim", [10, 4])
def test_rope_scores_depend_only_on_relative_position(pairing, rotary_dim):
    # the same q and k vectors placed at every position m, n: q_m . k_n must be a function of m - n
    T, D = 9, 10
    q = np.broadcast_to(randn(D, seed=2), (1, 1, T, D)).copy()
    k = np.broadcast_to(randn(D, seed=3), (1, 1, T, D)).copy()
    cos, sin = rope_cos_sin(np.arange(T), rotary_dim, dtype="float64")
    q_rot, _ = rope_forward(q, cos, sin, rotary_dim, pairing)
    k_rot, _ = rope_forward(k, cos, sin, rotary_dim, pairing)
    scores = q_rot[0, 0] @ k_rot[0, 0].T                                   # (T, T): [m, n] = q_m . k_n
    for offset in range(-T + 1, T):
        diagonal = np.diagonal(scores, offset=-offset)                     # all (m, n) with m - n = offset
        np.testing.assert_allclose(diagonal, diagonal[0], rtol=1e-12, atol=1e-12)
    assert np.ptp(np.diagonal(scores, 0)) < 1e-12 and np.abs(scores[1, 0] - scores[0, 1]) > 1e-3


@pytest.mark.parametrize("pairing", PAIRINGS)
def test_rope_preserves_norms_and_position_zero_is_identity(pairing):
    x = randn(3, 4, 7, 10)
    cos, sin = rope_cos_sin(np.arange(7) * 11, 8, dtype="float64")
    out, _ = rope_forward(x, cos, sin, pairing=pairing)
    np.testing.assert_allclose(np.linalg.norm(out, axis=-1), np.linalg.norm(x, axis=-1), rtol=1e-13)
    np.testing.assert_array_equal(out[..., 0, :], x[..., 0, :])           # position 0: angle 0
    np.testing.assert_array_equal(out[..., 8:], x[..., 8:])               # channels past rotary_dim pass through


@pytest.mark.parametrize("pairing", PAIRINGS)
def test_rope_backward_is_the_inverse_rotation(pairing):
    x = randn(2, 3, 7, 6)
    out, cache = rope_forward(x, *rope_cos_sin(np.arange(7), 6, dtype="float64"), pairing=pairing)
    np.testing.assert_allclose(rope_backward(out, cache), x, rtol=1e-13, atol=1e-14)


def test_rope_float32_in_float32_out_even_with_float64_angles():
    x = randn(2, 3, 7, 6, dtype=np.float32)
    cos, sin = rope_cos_sin(np.arange(7), 6, dtype="float64")
    out, cache = rope_forward(x, cos, sin)
    assert out.dtype == np.float32 and rope_backward(out, cache).dtype == np.float32
    out2d, cache2d = rope2d_forward(randn(2, 3, 7, 8, dtype=np.float32), np.arange(7), np.zeros(7, np.int64))
    assert out2d.dtype == np.float32 and rope2d_backward(out2d, cache2d).dtype == np.float32


def test_rope2d_halves_follow_their_own_position_ids():
    x = randn(3, 2, 7, 12)
    position_ids, block_ids = batch_positions(3, 7), (batch_positions(3, 7) * 5) % 4
    out, _ = rope2d_forward(x, position_ids, block_ids, theta=10000.0)
    first, _ = rope_forward(x[..., :6], *rope_cos_sin(position_ids, 6, dtype="float64"), 6, "half")
    second, _ = rope_forward(x[..., 6:], *rope_cos_sin(block_ids, 6, dtype="float64"), 6, "half")
    np.testing.assert_allclose(out, np.concatenate([first, second], axis=-1), rtol=1e-14, atol=1e-15)


# ---------------------------------------------------------------- bad input

@pytest.mark.parametrize("rotary_dim", [5, 0, -2])
def test_rope_cos_sin_bad_rotary_dim_is_error(rotary_dim):
    with pytest.raises(ValueError, match=f"rotary_dim={rotary_dim}"):
        rope_cos_sin(np.arange(4), rotary_dim)


def test_rope_numpy_integer_rotary_dim_is_accepted():
    # e.g. rotary_dim = np.int64(D * 0.5) computed with NumPy: an integer, and even
    cos, sin = rope_cos_sin(np.arange(4), np.int64(4), dtype="float64")
    x = randn(1, 2, 4, 6)
    out, _ = rope_forward(x, cos, sin, rotary_dim=np.int64(4))
    np.testing.assert_array_equal(out, rope_forward(x, cos, sin, rotary_dim=4)[0])


def test_rope_forward_odd_rotary_dim_is_error():
    cos, sin = rope_cos_sin(np.arange(4), 4)
    with pytest.raises(ValueError, match="rotary_dim=3"):
        rope_forward(randn(1, 2, 4, 6), cos, sin, rotary_dim=3)


def test_rope_rotary_dim_larger_than_head_is_error():
    cos, sin = rope_cos_sin(np.arange(4), 8)
    with pytest.raises(ValueError, match=r"rotary_dim=8.*D=6"):
        rope_forward(randn(1, 2, 4, 6), cos, sin)


def test_rope_rotary_dim_not_matching_cos_is_error():
    cos, sin = rope_cos_sin(np.arange(4), 4)
    with pytest.raises(ValueError, match="rotary_dim=6 needs 3"):
        rope_forward(randn(1, 2, 4, 6), cos, sin, rotary_dim=6)


def test_rope_positions_not_matching_T_is_error():
    cos, sin = rope_cos_sin(np.arange(5), 6)
    with pytest.raises(ValueError, match="T=4"):
        rope_forward(randn(1, 2, 4, 6), cos, sin)


def test_rope_positions_for_another_batch_is_error():
    cos, sin = rope_cos_sin(batch_positions(2, 4), 6)
    with pytest.raises(ValueError, match=r"batch of 2.*B=3"):
        rope_forward(randn(3, 2, 4, 6), cos, sin)


def test_rope_unknown_pairing_is_error():
    cos, sin = rope_cos_sin(np.arange(4), 6)
    with pytest.raises(ValueError, match="'neox'"):
        rope_forward(randn(1, 2, 4, 6), cos, sin, pairing="neox")


def test_rope_float_positions_is_error():
    with pytest.raises(ValueError, match="float64"):
        rope_cos_sin(np.arange(4.0), 6)


def test_rope2d_head_dim_not_divisible_by_4_is_error():
    with pytest.raises(ValueError, match="D=10"):
        rope2d_forward(randn(1, 2, 4, 10), np.arange(4), np.arange(4))


# ---------------------------------------------------------------- parity with transformers

def torch_cos_sin(torch, position_ids, rotary_dim, theta):
    """HF's cos/sin layout, cat((freqs, freqs), -1), built in float64 with HF's formula."""
    inv_freq = 1.0 / (theta ** (torch.arange(0, rotary_dim, 2, dtype=torch.float64) / rotary_dim))
    freqs = torch.tensor(position_ids, dtype=torch.float64)[..., None] * inv_freq   # (B, T, P)
    emb = torch.cat((freqs, freqs), dim=-1)                                          # (B, T, R)
    return emb.cos(), emb.sin()


def hf_grads(apply, q, k, dq_out, dk_out, cos, sin):
    """Forward and autograd gradients of an HF apply_rotary_pos_emb(q, k, cos, sin)."""
    import torch
    tq, tk = torch.tensor(q, requires_grad=True), torch.tensor(k, requires_grad=True)
    q_out, k_out = apply(tq, tk, cos.to(tq.dtype), sin.to(tq.dtype))
    (q_out * torch.tensor(dq_out)).sum().add((k_out * torch.tensor(dk_out)).sum()).backward()
    return [t.detach().numpy() for t in (q_out, k_out, tq.grad, tk.grad)]


def ours(q, k, dq_out, dk_out, cos, sin, rotary_dim, pairing):
    q_out, q_cache = rope_forward(q, cos, sin, rotary_dim, pairing)
    k_out, k_cache = rope_forward(k, cos, sin, rotary_dim, pairing)
    return [q_out, k_out, rope_backward(dq_out, q_cache), rope_backward(dk_out, k_cache)]


def assert_close(mine, theirs, dtype):
    for name, a, b in zip(["q", "k", "dq", "dk"], mine, theirs):
        assert a.dtype == dtype, name
        if dtype == np.float64:
            assert np.max(np.abs(a - b)) < 1e-10, name
        else:
            assert np.max(np.abs(a - b)) / np.max(np.abs(b)) < 1e-5, name


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_rope_half_parity_with_hf_llama(dtype):
    torch = pytest.importorskip("torch")
    llama = pytest.importorskip("transformers.models.llama.modeling_llama")
    B, H, Hkv, T, D, theta = 3, 4, 2, 7, 10, 500.0
    q, k = randn(B, H, T, D, dtype=dtype, seed=4), randn(B, Hkv, T, D, dtype=dtype, seed=5)
    dq_out, dk_out = randn(B, H, T, D, dtype=dtype, seed=6), randn(B, Hkv, T, D, dtype=dtype, seed=7)
    position_ids = batch_positions(B, T)
    cos, sin = rope_cos_sin(position_ids, D, theta, dtype="float64")
    theirs = hf_grads(llama.apply_rotary_pos_emb, q, k, dq_out, dk_out,
                      *torch_cos_sin(torch, position_ids, D, theta))
    assert_close(ours(q, k, dq_out, dk_out, cos, sin, D, "half"), theirs, dtype)


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("rotary_dim", [4, 6, 12])
def test_rope_interleaved_partial_parity_with_hf_glm(dtype, rotary_dim):
    torch = pytest.importorskip("torch")
    glm = pytest.importorskip("transformers.models.glm.modeling_glm")
    B, H, Hkv, T, D, theta = 3, 4, 1, 7, 12, 10000.0
    q, k = randn(B, H, T, D, dtype=dtype, seed=8), randn(B, Hkv, T, D, dtype=dtype, seed=9)
    dq_out, dk_out = randn(B, H, T, D, dtype=dtype, seed=10), randn(B, Hkv, T, D, dtype=dtype, seed=11)
    position_ids = batch_positions(B, T)
    cos, sin = rope_cos_sin(position_ids, rotary_dim, theta, dtype="float64")
    theirs = hf_grads(glm.apply_rotary_pos_emb, q, k, dq_out, dk_out,
                      *torch_cos_sin(torch, position_ids, rotary_dim, theta))
    assert_close(ours(q, k, dq_out, dk_out, cos, sin, rotary_dim, "interleaved"), theirs, dtype)


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("rotary_dim", [4, 10])
def test_rope_half_partial_parity_with_hf_gpt_neox(dtype, rotary_dim):
    # GPT-NeoX rotates the first rotary_dim channels with rotate_half and passes the rest through
    torch = pytest.importorskip("torch")
    neox = pytest.importorskip("transformers.models.gpt_neox.modeling_gpt_neox")
    B, H, Hkv, T, D, theta = 3, 4, 4, 7, 10, 10000.0
    q, k = randn(B, H, T, D, dtype=dtype, seed=16), randn(B, Hkv, T, D, dtype=dtype, seed=17)
    dq_out, dk_out = randn(B, H, T, D, dtype=dtype, seed=18), randn(B, Hkv, T, D, dtype=dtype, seed=19)
    position_ids = batch_positions(B, T)
    cos, sin = rope_cos_sin(position_ids, rotary_dim, theta, dtype="float64")
    theirs = hf_grads(neox.apply_rotary_pos_emb, q, k, dq_out, dk_out,
                      *torch_cos_sin(torch, position_ids, rotary_dim, theta))
    assert_close(ours(q, k, dq_out, dk_out, cos, sin, rotary_dim, "half"), theirs, dtype)


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_rope2d_parity_with_chatglm6b_recipe_on_hf_helpers(dtype):
    # ChatGLM-6B: q1, q2 = q.chunk(2, -1); RotaryEmbedding(D/2); q1 by position ids, q2 by block
    # position ids, each with rotate_half; then cat. Rebuilt here from HF LLaMA's helpers.
    torch = pytest.importorskip("torch")
    llama = pytest.importorskip("transformers.models.llama.modeling_llama")
    B, H, T, D = 3, 4, 7, 12
    q, k = randn(B, H, T, D, dtype=dtype, seed=12), randn(B, H, T, D, dtype=dtype, seed=13)
    dq_out, dk_out = randn(B, H, T, D, dtype=dtype, seed=14), randn(B, H, T, D, dtype=dtype, seed=15)
    position_ids = np.minimum(batch_positions(B, T), 4)                   # Part B shares the [MASK] position
    block_ids = np.maximum(batch_positions(B, T) - 4, 0)
    cos_p, sin_p = torch_cos_sin(torch, position_ids, D // 2, 10000.0)
    cos_b, sin_b = torch_cos_sin(torch, block_ids, D // 2, 10000.0)

    def chatglm_apply(tq, tk, *_):
        q1, q2 = tq.chunk(2, dim=-1)
        k1, k2 = tk.chunk(2, dim=-1)
        q1, k1 = llama.apply_rotary_pos_emb(q1, k1, cos_p.to(tq.dtype), sin_p.to(tq.dtype))
        q2, k2 = llama.apply_rotary_pos_emb(q2, k2, cos_b.to(tq.dtype), sin_b.to(tq.dtype))
        return torch.cat([q1, q2], dim=-1), torch.cat([k1, k2], dim=-1)

    theirs = hf_grads(chatglm_apply, q, k, dq_out, dk_out, cos_p, sin_p)
    q_out, q_cache = rope2d_forward(q, position_ids, block_ids)
    k_out, k_cache = rope2d_forward(k, position_ids, block_ids)
    mine = [q_out, k_out, rope2d_backward(dq_out, q_cache), rope2d_backward(dk_out, k_cache)]
    assert_close(mine, theirs, dtype)


@pytest.mark.parametrize("family", ["llama", "glm"])
def test_rope_cos_sin_parity_with_hf_rotary_embedding(family):
    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    if family == "llama":
        from transformers.models.llama.modeling_llama import LlamaRotaryEmbedding as Rotary
        config = transformers.LlamaConfig(hidden_size=40, num_attention_heads=4, rope_theta=500.0)
        rotary_dim, theta = 10, 500.0
    else:
        from transformers.models.glm.modeling_glm import GlmRotaryEmbedding as Rotary
        config = transformers.GlmConfig(hidden_size=48, num_attention_heads=4, head_dim=12,
                                        partial_rotary_factor=0.5)
        rotary_dim, theta = 6, 10000.0
    position_ids = batch_positions(2, 9)
    cos, sin = Rotary(config)(torch.zeros(1), torch.tensor(position_ids))  # float32 (B, T, R)
    ours_cos, ours_sin = rope_cos_sin(position_ids, rotary_dim, theta)     # float32 (B, 1, T, R/2)
    half = rotary_dim // 2
    np.testing.assert_allclose(ours_cos[:, 0], cos[..., :half].numpy(), atol=1e-5)
    np.testing.assert_allclose(ours_sin[:, 0], sin[..., :half].numpy(), atol=1e-5)
    np.testing.assert_array_equal(cos[..., :half].numpy(), cos[..., half:].numpy())   # the cat((f, f)) layout
