"""The mask rule of the kernels (minigpt.kernels.masking) and the CPU flash-attention kernels
(flash_numpy: the algorithm in NumPy; flash_cpu: fused with Numba) against the NumPy reference,
minigpt.layers.attention, given the same mask as a dense array.

Errors: float64 max |kernel - reference| < 1e-10; float32 max |kernel - reference| / max |reference|
< 2e-5 (both sides computed in float32). L is checked against the log-sum-exp of the reference's
masked, scaled scores computed in float64.
"""
import subprocess
import sys

import numpy as np
import pytest

from minigpt.kernels import MaskSpec, dense_mask, get_kernels
from minigpt.kernels.masking import (key_visible, last_visible_key, tile_all_visible, tile_may_be_visible,
                                     visible_block, visible_keys)
from minigpt.layers.attention import attention_backward, attention_forward
from minigpt.masks import attention_mask, banded_mask, causal_mask, prefix_mask, sliding_window_mask

# ---------------------------------------------------------------- the mask rule


@pytest.mark.parametrize("T", [1, 5, 8, 13])
def test_dense_mask_matches_the_masks_module(T):
    np.testing.assert_array_equal(dense_mask(MaskSpec(), 1, T, T)[0], causal_mask(T))
    np.testing.assert_array_equal(dense_mask(MaskSpec(prefix=min(3, T)), 1, T, T)[0], prefix_mask(T, min(3, T)))
    sep = np.array([0, T // 2, T])
    np.testing.assert_array_equal(dense_mask(MaskSpec(prefix=sep), 3, T, T), prefix_mask(T, sep))
    for W in (1, 2, 3, 5, 100):
        np.testing.assert_array_equal(dense_mask(MaskSpec(local="banded", window=W), 1, T, T)[0], banded_mask(T, W))
        np.testing.assert_array_equal(dense_mask(MaskSpec(local="sliding", window=W), 1, T, T)[0],
                                      sliding_window_mask(T, W))


def random_mask_args(rng, B=3):
    """Random arguments of masks.attention_mask: S, T, prefix_len, pad_len, local, window."""
    S = int(rng.integers(1, 15))
    T = int(rng.integers(1, S + 1))
    prefix = rng.integers(0, S + 1, B) if rng.random() < 0.4 else None
    pad = rng.integers(0, S + 1, B) if rng.random() < 0.4 else None
    local = [None, "banded", "sliding"][int(rng.integers(3))]
    window = int(rng.integers(1, 6)) if local else None
    return S, T, prefix, pad, local, window


def test_dense_mask_matches_attention_mask_with_cache_padding_and_windows():
    """The kernels' rule and minigpt.masks.attention_mask agree everywhere, padding under a GLM prefix included."""
    rng = np.random.default_rng(0)
    for _ in range(400):
        S, T, prefix, pad, local, window = random_mask_args(rng)
        spec = MaskSpec.from_mask_args(T, S, prefix, pad, local, window)
        ours = dense_mask(spec, 3, T, S)                                       # (3, T, S)
        ref = np.broadcast_to(attention_mask(T, S, prefix, pad, local, window), (3, T, S))
        np.testing.assert_array_equal(ours, ref)
        assert (ours.sum(axis=-1) >= 1).all()                                  # no row is ever empty


def test_scalar_predicate_and_tile_checks_agree_with_dense_mask():
    rng = np.random.default_rng(1)
    for _ in range(300):
        S, T, prefix, pad, local, window = random_mask_args(rng)
        spec = MaskSpec.from_mask_args(T, S, prefix, pad, local, window)
        dense = dense_mask(spec, 3, T, S)
        prefix_b, pad_b = spec.per_sample(3)
        for b in range(3):
            rule = (int(prefix_b[b]), int(pad_b[b]), spec.local_code, spec.window)
            cells = [[key_visible(spec.q_offset + r, j, *rule) for j in range(S)] for r in range(T)]
            np.testing.assert_array_equal(np.array(cells, dtype=bool), dense[b])
            for r in range(T):                                                 # each row is one interval of keys
                first, last = visible_keys(spec.q_offset + r, *rule)
                np.testing.assert_array_equal(dense[b, r], (np.arange(S) >= first) & (np.arange(S) <= last))
            for r in range(T):                                                 # queries 0..r see no key after it
                assert not dense[b, :r + 1, last_visible_key(spec.q_offset + r, rule[0]) + 1:].any()
            for _ in range(6):                                                 # random tiles, inclusive ranges
                r0, c0 = int(rng.integers(T)), int(rng.integers(S))
                r1, c1 = int(rng.integers(r0, T)), int(rng.integers(c0, S))
                tile = dense[b, r0:r1 + 1, c0:c1 + 1]
                args = (spec.q_offset + r0, spec.q_offset + r1, c0, c1, *rule)
                assert tile_may_be_visible(*args) or not tile.any(), args     # never skips a visible pair
                assert tile.all() or not tile_all_visible(*args), args        # never skips the per-pair test wrongly


def test_tile_checks_skip_the_causal_upper_triangle():
    assert not tile_may_be_visible(0, 63, 64, 127, 0, 0, 0, 0)                 # above the diagonal: skipped
    assert tile_may_be_visible(0, 63, 64, 127, 65, 0, 0, 0)                    # ... unless the prefix reaches in
    assert tile_all_visible(64, 127, 0, 63, 0, 0, 0, 0)                        # below it: no per-pair test
    assert not tile_all_visible(0, 63, 0, 63, 0, 0, 0, 0)                      # on it: test each pair


def test_visible_block_is_the_scalar_rule():
    i, j = np.arange(6)[:, None], np.arange(6)[None, :]
    for rule in [(0, 0, 0, 0), (2, 0, 1, 3), (0, 2, 2, 2), (4, 1, 0, 0)]:
        expected = [[key_visible(a, b, *rule) for b in range(6)] for a in range(6)]
        np.testing.assert_array_equal(visible_block(i, j, *rule), expected)


@pytest.mark.parametrize("kwargs, message", [
    (dict(q_offset=-1), "q_offset=-1"),
    (dict(prefix=2.5), "prefix=2.5"),
    (dict(pad=[1, -2]), r"pad=\[1, -2\]"),
    (dict(local="dilated", window=2), "local='dilated'"),
    (dict(local="banded"), "window=0"),
])
def test_maskspec_bad_values_are_errors(kwargs, message):
    with pytest.raises(ValueError, match=message):
        MaskSpec(**kwargs)


def test_maskspec_must_fit_the_shapes():
    with pytest.raises(ValueError, match=r"q_offset=3 \+ T=4 queries > S=6"):
        dense_mask(MaskSpec(q_offset=3), 1, 4, 6)
    with pytest.raises(ValueError, match="prefix has 2 values for a batch of B=3"):
        dense_mask(MaskSpec(prefix=[1, 2]), 3, 4, 4)
    with pytest.raises(ValueError, match=r"pad=\[7\] out of range"):
        dense_mask(MaskSpec(pad=7), 1, 4, 4)


# ---------------------------------------------------------------- kernels against the reference

# name: (B, H, Hkv, T, S, D, spec, block_q, block_k); small tiles make small T cross tile edges.
CASES = {
    "causal-T129-D64-gqa": (2, 4, 2, 129, 129, 64, MaskSpec(), 64, 64),
    "causal-T64-D16-mqa": (1, 4, 1, 64, 64, 16, MaskSpec(), 16, 32),
    "causal-T7-D16-mha": (2, 2, 2, 7, 7, 16, MaskSpec(), 4, 4),
    "causal-T1": (2, 2, 1, 1, 1, 16, MaskSpec(), 64, 64),
    "prefix-per-sample": (3, 2, 1, 64, 64, 16, MaskSpec(prefix=[0, 20, 64]), 16, 16),
    "bidirectional": (1, 2, 2, 7, 7, 16, MaskSpec(prefix=7), 4, 4),
    "banded-W16": (2, 4, 2, 64, 64, 16, MaskSpec(local="banded", window=16), 16, 16),
    "banded-W5-T129": (1, 2, 1, 129, 129, 16, MaskSpec(local="banded", window=5), 32, 16),
    "sliding-W9-T129": (1, 4, 2, 129, 129, 16, MaskSpec(local="sliding", window=9), 32, 16),
    "left-padding": (3, 2, 2, 64, 64, 16, MaskSpec(pad=[0, 5, 40]), 16, 16),
    "padding-prefix-banded": (2, 2, 1, 7, 7, 16, MaskSpec(prefix=[4, 3], pad=[2, 0], local="banded", window=3), 4, 4),
    "decode-T1-S40": (2, 4, 2, 1, 40, 16, MaskSpec(q_offset=39, pad=[0, 6]), 64, 16),
    "decode-T3-S40-sliding": (2, 4, 1, 3, 40, 64, MaskSpec(q_offset=37, local="sliding", window=8), 64, 16),
}
IMPLS = ["flash-numpy", "flash-cpu"]


def reference(q, k, v, do, mask):
    """out, L, dq, dk, dv of minigpt.layers.attention; L from float64 scores."""
    out, cache = attention_forward(q, k, v, mask=mask[:, None])                # mask (B, 1, T, S)
    dq, dk, dv = attention_backward(do, cache)
    g = q.shape[1] // k.shape[1]
    k64 = np.repeat(k.astype(np.float64), g, axis=1)                           # (B, H, S, D)
    s = q.astype(np.float64) @ k64.swapaxes(-1, -2) / np.sqrt(q.shape[-1])     # (B, H, T, S)
    s = np.where(mask[:, None], s, -np.inf)
    m = s.max(axis=-1, keepdims=True)
    L = (m + np.log(np.exp(s - m).sum(axis=-1, keepdims=True)))[..., 0]       # (B, H, T)
    return out, L, dq, dk, dv


def inputs(B, H, Hkv, T, S, D, dtype, seed=0):
    rng = np.random.default_rng(seed)
    return [rng.standard_normal(shape).astype(dtype)
            for shape in [(B, H, T, D), (B, Hkv, S, D), (B, Hkv, S, D), (B, H, T, D)]]   # q, k, v, dO


def error(got, want, dtype):
    """float64: max abs error; float32: max abs error relative to the largest reference entry
    (absolute for an all-zero reference: with a single visible key, dq and dk are exactly 0)."""
    err = np.max(np.abs(got.astype(np.float64) - want.astype(np.float64)))
    largest = np.max(np.abs(want))
    return err if dtype == np.float64 or largest == 0 else err / largest


@pytest.mark.parametrize("dtype", [np.float64, np.float32], ids=["float64", "float32"])
@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("case", list(CASES))
def test_flash_matches_reference(case, impl, dtype):
    B, H, Hkv, T, S, D, spec, block_q, block_k = CASES[case]
    q, k, v, do = inputs(B, H, Hkv, T, S, D, dtype)
    want = reference(q, k, v, do, dense_mask(spec, B, T, S))
    forward, backward = get_kernels(impl)
    o, L = forward(q, k, v, spec, block_q=block_q, block_k=block_k)
    got = (o, L, *backward(q, k, v, o, L, do, spec, block_q=block_q, block_k=block_k))
    limit = 1e-10 if dtype == np.float64 else 2e-5
    for name, a, b in zip(["out", "L", "dq", "dk", "dv"], got, want):
        assert a.dtype == dtype and a.shape == b.shape, (name, a.dtype, a.shape)
        assert error(a, b, dtype) < limit, (name, error(a, b, dtype))


@pytest.mark.parametrize("impl", IMPLS)
def test_flash_scale_and_default_tiles(impl):
    """An explicit scale, default tile sizes, D=128 (smaller key tiles) and non-contiguous inputs."""
    B, H, T, D = 1, 2, 70, 128
    q, k, v, do = inputs(B, H, H, T, T, D, np.float64, seed=3)
    q = np.asfortranarray(q)                                                   # not C-contiguous
    spec = MaskSpec()
    mask = dense_mask(spec, B, T, T)
    out, cache = attention_forward(q, k, v, mask=mask[:, None], scale=0.3)
    dq_ref = attention_backward(do, cache)[0]
    forward, backward = get_kernels(impl)
    o, L = forward(q, k, v, spec, scale=0.3)
    dq = backward(q, k, v, o, L, do, spec, scale=0.3)[0]
    assert np.max(np.abs(o - out)) < 1e-10 and np.max(np.abs(dq - dq_ref)) < 1e-10


@pytest.mark.parametrize("D", [32, 64, 128])
@pytest.mark.parametrize("g", [1, 2, 4, 8, 32])
def test_flash_cpu_default_tiles_stack_64_rows_under_openblas_thread_limit(g, D):
    """The g heads of a kv head share a tile: 64 rows in all, and each product <= 2^18 multiply-adds,
    below which OpenBLAS runs it on the calling thread."""
    from minigpt.kernels.flash_cpu import default_blocks
    block_q, block_k = default_blocks(D, g=g)
    assert g * block_q == 64 and 16 <= block_k <= 256
    assert g * block_q * block_k * D <= 2**18 < g * block_q * 2 * block_k * D or block_k == 256


def test_flash_cpu_bad_inputs_are_errors():
    forward, _ = get_kernels("flash-cpu")
    q, k, v, _ = inputs(1, 3, 2, 4, 4, 8, np.float32)
    with pytest.raises(ValueError, match="H=3 query heads are not a multiple of Hkv=2"):
        forward(q, k, v, MaskSpec())
    q, k, v, _ = inputs(1, 2, 2, 4, 4, 8, np.float32)
    with pytest.raises(ValueError, match="float32 or all float64"):
        forward(q, k.astype(np.float64), v, MaskSpec())
    with pytest.raises(ValueError, match=r"q_offset=1 \+ T=4 queries > S=4"):
        forward(q, k, v, MaskSpec(q_offset=1))
    with pytest.raises(ValueError, match="impl='flash-gpu'"):
        get_kernels("flash-gpu")


def test_flash_cpu_exp_float32_is_accurate():
    """The vectorisable float32 exp of flash_cpu: within 1.5 float32 ulps of exp, and exactly 0 at -inf."""
    from minigpt.kernels.flash_cpu import _exp_float32
    x = np.concatenate([np.linspace(-87, 10, 2001), [-50.123, -1e-7, 0.0]]).astype(np.float32)
    got = np.array([_exp_float32(v) for v in x])
    want = np.exp(x.astype(np.float64))
    assert np.max(np.abs(got - want) / want) < 1.5 * 2.0**-23
    assert _exp_float32(np.float32(-np.inf)) == 0.0 and _exp_float32(np.float32(-200.0)) == 0.0


def test_importing_kernels_compiles_nothing():
    code = ("import sys, minigpt.kernels; "
            "print(any(m == 'numba' or m.startswith('numba.') for m in sys.modules))")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "False"


@pytest.mark.parametrize("impl", IMPLS)
def test_flash_attention_forward_backward_pair_matches_the_layer(impl):
    """The (out, cache) / backward(dout, cache) pair, as minigpt.layers.attention has it."""
    from minigpt.kernels import flash_attention_backward, flash_attention_forward
    B, H, Hkv, T, D = 2, 4, 2, 9, 8
    q, k, v, do = inputs(B, H, Hkv, T, T, D, np.float64, seed=5)
    spec = MaskSpec(prefix=[0, 4])
    out_ref, cache_ref = attention_forward(q, k, v, mask=dense_mask(spec, B, T, T)[:, None])
    out, cache = flash_attention_forward(q, k, v, spec, impl=impl)
    assert np.max(np.abs(out - out_ref)) < 1e-10
    for got, want in zip(flash_attention_backward(do, cache), attention_backward(do, cache_ref)):
        assert np.max(np.abs(got - want)) < 1e-10
