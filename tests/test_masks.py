import numpy as np
import pytest

from minigpt.masks import (attention_mask, banded_mask, causal_mask, explicit_mask, make_mask, prefix_mask,
                           sliding_window_mask)


def grid(rows):
    """A boolean mask from rows of '1'/'.' characters, as one would draw it on paper."""
    return np.array([[c == "1" for c in row] for row in rows])


def test_causal_mask_small_case():
    expected = grid(["1...",
                     "11..",
                     "111.",
                     "1111"])
    np.testing.assert_array_equal(causal_mask(4), expected)
    assert causal_mask(4).dtype == bool


def test_causal_mask_single_position():
    np.testing.assert_array_equal(causal_mask(1), [[True]])


def test_banded_mask_T5_window2_by_hand():
    # blocks {0, 1}, {2, 3}, {4}: causal inside each block, nothing across blocks
    expected = grid(["1....",
                     "11...",
                     "..1..",
                     "..11.",
                     "....1"])
    np.testing.assert_array_equal(banded_mask(5, 2), expected)


def test_banded_mask_T7_window3_by_hand():
    expected = grid(["1......",
                     "11.....",
                     "111....",
                     "...1...",
                     "...11..",
                     "...111.",
                     "......1"])
    np.testing.assert_array_equal(banded_mask(7, 3), expected)


def test_banded_mask_window_at_least_T_is_causal():
    np.testing.assert_array_equal(banded_mask(6, 6), causal_mask(6))
    np.testing.assert_array_equal(banded_mask(6, 100), causal_mask(6))


def test_sliding_window_mask_T5_window2_by_hand():
    expected = grid(["1....",
                     "11...",
                     ".11..",
                     "..11.",
                     "...11"])
    np.testing.assert_array_equal(sliding_window_mask(5, 2), expected)


def test_sliding_window_mask_window1_is_diagonal():
    np.testing.assert_array_equal(sliding_window_mask(4, 1), np.eye(4, dtype=bool))


def test_prefix_mask_scalar_sep_by_hand():
    # Part A = positions 0, 1 (bidirectional); Part B = 2, 3, 4 (causal, sees all of Part A)
    expected = grid(["11...",
                     "11...",
                     "111..",
                     "1111.",
                     "11111"])
    np.testing.assert_array_equal(prefix_mask(5, 2), expected)


def test_prefix_mask_per_sample_sep():
    mask = prefix_mask(4, np.array([0, 3, 4]))
    assert mask.shape == (3, 4, 4)
    np.testing.assert_array_equal(mask[0], causal_mask(4))           # sep = 0: fully causal
    np.testing.assert_array_equal(mask[1], grid(["111.",
                                                 "111.",
                                                 "111.",
                                                 "1111"]))
    np.testing.assert_array_equal(mask[2], np.ones((4, 4), bool))    # sep = T: fully bidirectional


def test_prefix_mask_accepts_list_of_seps():
    np.testing.assert_array_equal(prefix_mask(3, [1, 2]), prefix_mask(3, np.array([1, 2])))


def test_make_mask_dispatches_by_name():
    np.testing.assert_array_equal(make_mask("causal", 4), causal_mask(4))
    np.testing.assert_array_equal(make_mask("banded", 5, window=2), banded_mask(5, 2))
    np.testing.assert_array_equal(make_mask("sliding", 5, window=3), sliding_window_mask(5, 3))
    np.testing.assert_array_equal(make_mask("prefix", 5, sep=[1, 2]), prefix_mask(5, [1, 2]))
    m = causal_mask(3)
    np.testing.assert_array_equal(make_mask("explicit", 3, mask=m), m)


def test_explicit_mask_accepts_batched_boolean():
    m = np.stack([causal_mask(3), np.ones((3, 3), bool)])
    assert explicit_mask(m, 3) is m


def test_make_mask_unknown_kind_lists_known_kinds():
    with pytest.raises(ValueError, match=r"'dilated'.*banded.*causal.*explicit.*prefix.*sliding"):
        make_mask("dilated", 4)


@pytest.mark.parametrize("window", [0, -3, 1.5, True])
def test_banded_and_sliding_bad_window_is_error(window):
    with pytest.raises(ValueError, match=f"window={window!r}"):
        banded_mask(5, window)
    with pytest.raises(ValueError, match=f"window={window!r}"):
        sliding_window_mask(5, window)


@pytest.mark.parametrize("T", [0, -1, 2.0])
def test_bad_length_is_error(T):
    with pytest.raises(ValueError, match=f"T={T!r}"):
        causal_mask(T)


def test_prefix_mask_sep_out_of_range_is_error():
    with pytest.raises(ValueError, match=r"sep=\[6\].*\[0, T=5\]"):
        prefix_mask(5, 6)
    with pytest.raises(ValueError, match=r"sep=\[-1\]"):
        prefix_mask(5, np.array([2, -1, 3]))


def test_prefix_mask_float_sep_is_error():
    with pytest.raises(ValueError, match="sep=2.5"):
        prefix_mask(5, 2.5)


def test_explicit_mask_wrong_dtype_is_error():
    with pytest.raises(ValueError, match="dtype int64"):
        explicit_mask(np.tril(np.ones((3, 3), dtype=np.int64)), 3)


def test_explicit_mask_wrong_shape_is_error():
    with pytest.raises(ValueError, match=r"shape \(3, 4\).*T=3"):
        explicit_mask(np.ones((3, 4), bool), 3)


def test_explicit_mask_empty_row_is_error():
    m = causal_mask(4).copy()
    m[2] = False
    with pytest.raises(ValueError, match=r"1 row\(s\) allow no key: row 2;"):
        explicit_mask(m, 4)


def test_explicit_mask_empty_row_in_a_batch_is_error_naming_the_sample():
    m = np.stack([causal_mask(4)] * 3)
    m[1, 3] = False
    m[2, 0] = False
    with pytest.raises(ValueError, match=r"2 row\(s\) allow no key: \(batch 1, row 3\), \(batch 2, row 0\);"):
        explicit_mask(m, 4)


# --- attention_mask: the one rule, with a KV cache and left padding ----------------------------------
@pytest.mark.parametrize("kwargs", [dict(), dict(prefix_len=3), dict(local="banded", window=3),
                                    dict(local="sliding", window=2), dict(pad_len=np.array([0, 2]))])
def test_attention_mask_cached_rows_are_the_last_rows(kwargs):
    """T queries after S - T cached positions see what the last T rows of the full (S, S) mask see."""
    full = attention_mask(7, **kwargs)
    for T in (1, 3):
        np.testing.assert_array_equal(attention_mask(T, 7, **kwargs), full[..., 7 - T:, :])


def test_attention_mask_left_padding():
    m = attention_mask(5, pad_len=np.array([0, 2]))                           # (2, 5, 5)
    np.testing.assert_array_equal(m[0], causal_mask(5))
    assert m[1, 2:, :2].sum() == 0                                            # real tokens never see padding
    np.testing.assert_array_equal(m[1, :2], np.eye(5, dtype=bool)[:2])        # padding sees only itself
    np.testing.assert_array_equal(m[1, 2:, 2:], causal_mask(3))               # the rest is the unpadded mask


def test_attention_mask_banded_blocks_start_at_the_first_real_token():
    m = attention_mask(7, local="banded", window=2, pad_len=np.array([3]))    # (1, 7, 7)
    np.testing.assert_array_equal(m[0, 3:, 3:], banded_mask(4, 2))


def test_attention_mask_bad_arguments():
    with pytest.raises(ValueError, match="S=3 keys for T=4 queries"):
        attention_mask(4, 3)
    with pytest.raises(ValueError, match="local='dilated'"):
        attention_mask(4, local="dilated", window=2)
    with pytest.raises(ValueError, match=r"pad_len=\[5\] out of range"):
        attention_mask(4, pad_len=np.array([1, 5]))
