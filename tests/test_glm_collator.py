"""GLM's blank-infilling collator: the paper's example exactly, and round trips on thousands of random texts."""
import math

import numpy as np
import pytest

from minigpt.data import (IGNORE_INDEX, GLMCollator, GLMSample, GLMSpecialIds, glm_collate, glm_sample,
                          poisson_length_pmf, sample_spans)
from minigpt.masks import prefix_mask

SPECIAL = dict(mask=100, smask=101, gmask=102, sop=103, eop=104, pad=0)
M, SM, GM, S, E = 100, 101, 102, 103, 104
X = [11, 12, 13, 14, 15, 16]                     # x1..x6 of the paper's Figure 2


def paper_sample():
    # spans {x3} = tokens[2:3] and {x5, x6} = tokens[4:6]; Part B writes {x5, x6} first
    return glm_sample(X, SPECIAL, spans=[(2, 3), (4, 6)], order=[1, 0])


def test_glm_paper_example_ids_and_targets():
    s = paper_sample()
    x1, x2, x3, x4, x5, x6 = X
    assert s.ids.tolist() == [x1, x2, M, x4, M, S, x5, x6, S, x3]
    assert s.targets.tolist() == [IGNORE_INDEX] * 5 + [x5, x6, E, x3, E]
    assert s.loss_mask.tolist() == [0] * 5 + [1] * 5
    assert s.sep == 5
    assert s.spans == [(4, 6), (2, 3)]


def test_glm_paper_example_position_rows():
    s = paper_sample()
    paper_positions = [1, 2, 3, 4, 5, 5, 5, 5, 3, 3]             # Figure 2(c), counted from 1
    assert s.position_ids.tolist() == [p - 1 for p in paper_positions]
    assert s.block_position_ids.tolist() == [0, 0, 0, 0, 0, 1, 2, 3, 1, 2]


def test_glm_paper_example_attention_mask():
    s = paper_sample()
    # Figure 2(d), by hand: every token sees Part A (x1 x2 M x4 M); Part B also sees itself and earlier Part B.
    expected = np.zeros((10, 10), dtype=bool)
    expected[:, :5] = True
    for i in range(5, 10):
        expected[i, 5:i + 1] = True
    np.testing.assert_array_equal(prefix_mask(len(s.ids), s.sep), expected)


def test_glm_explicit_spans_any_given_order():
    # the spans may be given in any order; `order` indexes the list as given
    a = glm_sample(X, SPECIAL, spans=[(4, 6), (2, 3)], order=[0, 1])
    b = paper_sample()
    for name in ("ids", "targets", "position_ids", "block_position_ids"):
        np.testing.assert_array_equal(getattr(a, name), getattr(b, name))


def rebuild(sample, mask_id):
    """Fill every mask of Part A with its Part B span, found through the position ids (independent of the collator)."""
    ids, sep = sample.ids.tolist(), sample.sep
    part_a, tail = ids[:sep], list(range(sep, len(ids)))
    starts = [j for j in tail if sample.block_position_ids[j] == 1]     # each Part B span begins with [sop]
    assert all(ids[j] == S for j in starts)
    filled = {}
    for k, j0 in enumerate(starts):
        j1 = starts[k + 1] if k + 1 < len(starts) else len(ids)
        block = sample.targets[j0:j1].tolist()
        assert block[-1] == E and E not in block[:-1]
        assert ids[j0 + 1:j1] == block[:-1]                            # teacher forcing: input = target shifted
        assert sample.block_position_ids[j0:j1].tolist() == list(range(1, j1 - j0 + 1))
        where = set(sample.position_ids[j0:j1].tolist())
        assert len(where) == 1
        p = where.pop()
        assert part_a[p] == mask_id and p not in filled
        filled[p] = block[:-1]
    assert sorted(filled) == [p for p, t in enumerate(part_a) if t == mask_id]
    out = []
    for p, t in enumerate(part_a):
        out += filled[p] if t == mask_id else [t]
    return out


def random_text(seed, low=1, high=160, vocab=90):
    r = np.random.default_rng(10_000_000 + seed)
    return r.integers(0, vocab, size=int(r.integers(low, high + 1)))


def check_layout(s, n_tokens):
    sep, L = s.sep, len(s.ids)
    assert L == n_tokens + 2 * len(s.spans)
    assert s.position_ids[:sep].tolist() == list(range(sep))
    assert not s.block_position_ids[:sep].any()
    assert (s.targets[:sep] == IGNORE_INDEX).all() and (s.targets[sep:] != IGNORE_INDEX).all()
    assert s.loss_mask.tolist() == [0.0] * sep + [1.0] * (L - sep)


def test_glm_span_mode_rebuilds_hidden_tokens_on_thousands_of_seeds():
    orders_seen = set()
    for seed in range(3000):
        tokens = random_text(seed)
        s = glm_sample(tokens, SPECIAL, mode="span", seed=seed)
        assert rebuild(s, M) == tokens.tolist()
        check_layout(s, len(tokens))
        lengths = [e - b for b, e in s.spans]
        assert sum(lengths) >= 0.15 * len(tokens)
        assert all(1 <= n <= 39 for n in lengths)
        left_to_right = sorted(s.spans)
        assert all(e0 < b1 for (_, e0), (b1, _) in zip(left_to_right, left_to_right[1:]))  # apart, never touching
        if len(s.spans) > 1:
            orders_seen.add(s.spans == left_to_right)
    assert orders_seen == {True, False}                                     # Part B order is shuffled


def test_glm_span_mode_draws_no_span_beyond_the_target():
    # spans are drawn until they cover 15%: without the last one drawn they fell short, so without the
    # longest one they fall short too
    for seed in range(300):
        tokens = random_text(seed, low=20, high=400)
        lengths = [e - b for b, e in glm_sample(tokens, SPECIAL, seed=seed).spans]
        assert sum(lengths) - max(lengths) < 0.15 * len(tokens)


@pytest.mark.parametrize("percent", [15, 30, 50])
def test_glm_span_mode_covers_the_ratio_on_short_texts(percent):
    # short texts are where a drawn span may not fit (e.g. a length of 5 in 4 tokens) and is redrawn;
    # the redraw must still reach the target, and leave a token between spans
    for n in range(1, 41):
        target = max(1, -(-percent * n // 100))                            # ceil(percent% of n), in integers
        for seed in range(60):
            spans = sample_spans(n, np.random.default_rng(seed), mask_ratio=percent / 100)
            assert sum(e - b for b, e in spans) >= target, (n, seed, spans)
            assert 0 <= spans[0][0] and spans[-1][1] <= n
            assert all(e0 < b1 for (_, e0), (b1, _) in zip(spans, spans[1:])), (n, seed, spans)


def test_glm_span_lengths_follow_truncated_poisson():
    expected = np.array([math.exp(-3.0) * 3.0 ** k / math.factorial(k) for k in range(1, 40)])
    np.testing.assert_allclose(poisson_length_pmf(3.0, 39), expected / expected.sum(), rtol=1e-12)
    lengths = []
    rng = np.random.default_rng(0)
    for _ in range(10):
        lengths += [e - b for b, e in sample_spans(20_000, rng)]
    mean = 3.0 / (1 - math.exp(-3.0))                                      # E[L | L >= 1], tail past 39 negligible
    assert abs(np.mean(lengths) - mean) < 0.05


def sentence_text(seed):
    r = np.random.default_rng(20_000_000 + seed)
    n_sent = int(r.integers(1, 12))
    parts = [np.append(r.integers(0, 90, size=int(r.integers(0, 15))), 95) for _ in range(n_sent)]
    if r.random() < 0.5:                                                    # a last sentence without its full stop
        parts.append(r.integers(0, 90, size=int(r.integers(1, 6))))
    return np.concatenate(parts)


def test_glm_sentence_mode_masks_whole_sentences():
    for seed in range(1500):
        tokens = sentence_text(seed)
        s = glm_sample(tokens, SPECIAL, mode="sentence", seed=seed, sentence_end_ids=[95])
        assert rebuild(s, SM) == tokens.tolist()
        check_layout(s, len(tokens))
        assert sum(e - b for b, e in s.spans) >= 0.15 * len(tokens)
        for b, e in s.spans:
            assert b == 0 or tokens[b - 1] == 95                            # starts a sentence
            assert e == len(tokens) or tokens[e - 1] == 95                  # ends one
            assert 95 not in tokens[b:e - 1].tolist()                       # exactly one sentence


def test_glm_generation_mode_one_span_at_the_end():
    for seed in range(1500):
        tokens = random_text(seed)
        N = len(tokens)
        s = glm_sample(tokens, SPECIAL, mode="generation", seed=seed)
        assert rebuild(s, GM) == tokens.tolist()
        check_layout(s, N)
        [(b, e)] = s.spans
        assert e == N and math.ceil(0.5 * N) <= e - b <= N
        assert s.ids[s.sep - 1] == GM


def test_glm_short_texts():
    s = glm_sample([7], SPECIAL, seed=0)                                    # one token: all of it is the span
    assert s.ids.tolist() == [M, S, 7] and s.targets.tolist() == [IGNORE_INDEX, 7, E]
    for n in range(1, 8):
        for seed in range(50):
            tokens = np.arange(n) + 1
            assert rebuild(glm_sample(tokens, SPECIAL, seed=seed), M) == tokens.tolist()


def test_glm_sample_deterministic_for_a_seed():
    tokens = random_text(1, low=100, high=100)
    a, b = glm_sample(tokens, SPECIAL, seed=5), glm_sample(tokens, SPECIAL, seed=5)
    np.testing.assert_array_equal(a.ids, b.ids)
    assert a.spans == b.spans
    assert any(glm_sample(tokens, SPECIAL, seed=k).spans != a.spans for k in range(6, 10))


def test_glm_collate_pads_every_row():
    samples = [paper_sample(), glm_sample([21, 22, 23], SPECIAL, spans=[(1, 2)])]
    batch = glm_collate(samples, pad_id=0)
    assert batch.ids.shape == (2, 10) and batch.sep.tolist() == [5, 3]
    assert batch.ids[1].tolist() == [21, M, 23, S, 22] + [0] * 5
    assert batch.targets[1].tolist() == [IGNORE_INDEX] * 3 + [22, E] + [IGNORE_INDEX] * 5
    assert batch.loss_mask[1].tolist() == [0, 0, 0, 1, 1, 0, 0, 0, 0, 0]
    assert batch.position_ids[1].tolist() == [0, 1, 2, 1, 1, 0, 0, 0, 0, 0]
    assert batch.block_position_ids[1].tolist() == [0, 0, 0, 1, 2, 0, 0, 0, 0, 0]
    np.testing.assert_array_equal(batch.ids[0], paper_sample().ids)
    assert batch.loss_mask.dtype == np.float32 and batch.ids.dtype == np.int64
    assert glm_collate(samples, pad_id=0, length=12).ids.shape == (2, 12)
    with pytest.raises(ValueError, match=r"length=9 is shorter than the longest sample \(10"):
        glm_collate(samples, pad_id=0, length=9)


def test_glm_collator_deterministic_batches():
    texts = [random_text(k) for k in range(8)]
    collate = GLMCollator(SPECIAL, mode="span")
    a, b, c = collate(texts, seed=3), collate(texts, seed=3), collate(texts, seed=4)
    np.testing.assert_array_equal(a.ids, b.ids)
    assert a.ids.shape != c.ids.shape or not np.array_equal(a.ids, c.ids)
    assert a.ids.shape[0] == 8 and (a.ids[a.loss_mask == 0] != S).all()
    # every row rebuilds its text
    for row, tokens in enumerate(texts):
        L = len(tokens) + 2 * int((a.ids[row, :a.sep[row]] == M).sum())
        s = GLMSample(a.ids[row, :L], a.targets[row, :L], a.loss_mask[row, :L], a.position_ids[row, :L],
                      a.block_position_ids[row, :L], int(a.sep[row]), spans=[])
        assert rebuild(s, M) == tokens.tolist()


def test_glm_collator_sentence_and_generation_modes():
    texts = [sentence_text(k) for k in range(6)]
    batch = GLMCollator(SPECIAL, mode="sentence", sentence_end_ids=[95], length=80)(texts, seed=1)
    assert batch.ids.shape == (6, 80) and ((batch.ids == SM).sum(axis=1) >= 1).all()
    batch = GLMCollator(SPECIAL, mode="generation")(texts, seed=1)
    assert ((batch.ids == GM).sum(axis=1) == 1).all()
    assert (batch.ids[np.arange(6), batch.sep - 1] == GM).all()          # [gMASK] ends Part A
    with pytest.raises(ValueError, match="sentence mode needs sentence_end_ids"):
        GLMCollator(SPECIAL, mode="sentence")


@pytest.mark.parametrize("kwargs, message", [
    (dict(spans=[(1, 3), (2, 4)]), r"spans \(1, 3\) and \(2, 4\) overlap"),
    (dict(spans=[(1, 2), (2, 4)]), r"spans \(1, 2\) and \(2, 4\) touch"),
    (dict(spans=[(4, 7)]), r"span \(4, 7\) is not a non-empty range inside 0..6"),
    (dict(spans=[(3, 3)]), r"span \(3, 3\)"),
    (dict(spans=[]), "spans is empty"),
    (dict(spans=[(0, 1), (3, 4)], order=[0, 0]), r"order=\[0, 0\] is not a permutation"),
    (dict(mode="fill"), "mode='fill': expected one of"),
    (dict(mode="sentence"), "sentence mode needs sentence_end_ids"),
    (dict(mode="generation", spans=[(1, 3)]), "generation mode takes one span that ends at the end"),
    (dict(mask_ratio=0.6), "mask_ratio=0.6: span mode covers at most half"),
    (dict(mask_ratio=0.0), "mask_ratio=0.0"),
])
def test_glm_sample_bad_arguments(kwargs, message):
    with pytest.raises(ValueError, match=message):
        glm_sample(X, SPECIAL, **kwargs)


def test_glm_sample_bad_tokens_and_special_ids():
    with pytest.raises(ValueError, match="non-empty 1-D sequence of integer ids"):
        glm_sample([], SPECIAL)
    with pytest.raises(ValueError, match="non-empty 1-D"):
        glm_sample([1.5, 2.0], SPECIAL)
    with pytest.raises(ValueError, match="tokens hold the negative id -3"):
        glm_sample([1, -3, 2], SPECIAL)
    with pytest.raises(ValueError, match="tokens hold special id 100 at position 2"):
        glm_sample([1, 2, M, 4], SPECIAL)
    with pytest.raises(ValueError, match=r"special ids miss \['pad'\]"):
        glm_sample(X, {k: v for k, v in SPECIAL.items() if k != "pad"})
    with pytest.raises(ValueError, match="special ids must differ"):
        GLMSpecialIds(mask=1, smask=1, gmask=2, sop=3, eop=4, pad=0)
    with pytest.raises(ValueError, match="special id sop=-1"):
        GLMSpecialIds(mask=1, smask=2, gmask=3, sop=-1, eop=4, pad=0)
