"""Generation: the KV cache gives the logits of recomputing the whole sequence (every family, left
padding too), the decoding strategies sample what they say, and GLM fills a [MASK]."""
import numpy as np
import pytest

from minigpt.config import FAMILIES, ModelConfig
from minigpt.generate import fill_mask, generate, generate_stream, left_pad, sample_next
from minigpt.gradcheck import move_off_init
from minigpt.model import KVCache, Model

V = 40
SIZES = dict(n_layer=2, d_model=32, n_head=4, max_seq_len=24, vocab_size=V, attn_window=3)


def tiny_model(name, seed=0, dtype="float64", **overrides):
    model = Model(ModelConfig.preset(name, **{**SIZES, **overrides}), seed=seed, dtype=dtype)
    move_off_init(model)                                   # norm gains and biases away from 1 and 0
    return model


def full_logits(model, ids, pad_len=None, prefix_len=None):
    """The reference: one forward over the whole (padded) sequence, no cache."""
    return model.forward(ids, pad_len=pad_len, prefix_len=prefix_len)


def cached_logits(model, ids, prefill, pad_len=None, prefix_len=None):
    """Prefill the first `prefill` positions, then one position at a time through a KVCache."""
    B, T = ids.shape
    cache = KVCache(model, B, T, prefix_len=prefix_len, pad_len=pad_len)
    parts = [model.forward(ids[:, :prefill], kv_cache=cache)]
    for t in range(prefill, T):
        parts.append(model.forward(ids[:, t:t + 1], kv_cache=cache))
    assert cache.length == T
    return np.concatenate(parts, axis=1)                  # (B, T, V)


@pytest.mark.parametrize("name", sorted(FAMILIES))
def test_kv_cache_equals_recomputing(name):
    """float64: the cached logits of every new position equal the full forward's to 1e-10 (the two
    differ only in summation order); T = 11 runs past the GPT-3 band and the Mistral window of 3."""
    model = tiny_model(name)
    ids = np.random.default_rng(1).integers(0, V, (2, 11))
    prefix = np.array([4, 4]) if model.config.attention == "prefix" else None   # the prompt is GLM's Part A
    expected = full_logits(model, ids, prefix_len=prefix)
    got = cached_logits(model, ids, prefill=4, prefix_len=prefix)
    assert np.abs(got - expected).max() < 1e-10


@pytest.mark.parametrize("name", sorted(FAMILIES))
def test_kv_cache_equals_recomputing_with_left_padding(name):
    """Prompts of 5, 2 and 4 tokens left-padded to 5: the batch's cached logits equal the full padded
    forward's at every real position, and each sample equals that prompt run alone, unpadded."""
    model = tiny_model(name, seed=1)
    rng = np.random.default_rng(2)
    prompts = [list(rng.integers(0, V, n)) for n in (5, 2, 4)]
    ids, pad_len = left_pad(prompts, pad_id=0)
    ids = np.concatenate([ids, rng.integers(0, V, (3, 6))], axis=1)           # (3, 11) continued
    prefix = np.full(3, 5) if model.config.attention == "prefix" else None    # Part A = the padded prompt
    expected = full_logits(model, ids, pad_len=pad_len, prefix_len=prefix)
    got = cached_logits(model, ids, prefill=5, pad_len=pad_len, prefix_len=prefix)
    real = np.arange(11)[None, :] >= pad_len[:, None]                         # (3, 11) not padding
    assert np.abs(got - expected)[real].max() < 1e-10
    for b in range(3):                                                        # padding changes nothing
        alone = ids[b:b + 1, pad_len[b]:]
        sep = None if prefix is None else np.array([5 - pad_len[b]])
        np.testing.assert_allclose(full_logits(model, alone, prefix_len=sep)[0], expected[b, pad_len[b]:],
                                   rtol=0, atol=1e-10)


def test_kv_cache_holds_only_the_kv_heads():
    model = tiny_model("llama")                                              # 4 query heads, 2 kv heads
    cache = KVCache(model, 3, 10)
    assert cache.k[0].shape == (3, 2, 10, 8) and len(cache.v) == 2


def test_kv_cache_forward_keeps_nothing_for_backward():
    model = tiny_model("gpt2")
    model.forward(np.zeros((1, 3), dtype=int), kv_cache=KVCache(model, 1, 5))
    with pytest.raises(ValueError, match="forward first"):
        model.backward(np.zeros((1, 3, V)))


def test_kv_cache_errors():
    model = tiny_model("glm")
    cache = KVCache(model, 2, 4)
    with pytest.raises(ValueError, match="does not fit the KVCache"):
        model.forward(np.zeros((2, 5), dtype=int), kv_cache=cache)
    with pytest.raises(ValueError, match="does not fit the KVCache"):
        model.forward(np.zeros((3, 2), dtype=int), kv_cache=cache)
    with pytest.raises(ValueError, match="give prefix_len and pad_len to the KVCache"):
        model.forward(np.zeros((2, 2), dtype=int), prefix_len=1, kv_cache=cache)


# --- decoding strategies -------------------------------------------------------------------------

def test_sample_next_greedy_and_degenerate_filters():
    logits = np.random.default_rng(0).standard_normal((5, 30))
    rng = np.random.default_rng(0)
    greedy = logits.argmax(axis=-1)
    np.testing.assert_array_equal(sample_next(logits, rng, temperature=0), greedy)
    np.testing.assert_array_equal(sample_next(logits, rng, temperature=1.0, top_k=1), greedy)
    np.testing.assert_array_equal(sample_next(logits, rng, temperature=1.0, top_p=1e-9), greedy)


def test_sample_next_matches_the_distribution():
    """40000 draws from softmax([2, 1, 0, -1] / 0.7): each frequency within 5 binomial standard deviations."""
    logits = np.array([[2.0, 1.0, 0.0, -1.0]])
    p = np.exp(logits[0] / 0.7)
    p /= p.sum()
    n, rng = 40000, np.random.default_rng(3)
    draws = np.concatenate([sample_next(np.repeat(logits, 1000, axis=0), rng, temperature=0.7)
                            for _ in range(n // 1000)])
    freq = np.bincount(draws, minlength=4) / n
    assert np.all(np.abs(freq - p) < 5 * np.sqrt(p * (1 - p) / n)), (freq, p)


def test_sample_next_top_k_and_top_p_supports():
    probs = np.array([0.5, 0.3, 0.15, 0.05])
    logits = np.log(probs)[None].repeat(4000, axis=0)
    rng = np.random.default_rng(4)
    assert set(sample_next(logits, rng, top_k=2)) == {0, 1}
    assert set(sample_next(logits, rng, top_p=0.75)) == {0, 1}             # 0.5 + 0.3 reaches 0.75
    assert set(sample_next(logits, rng, top_p=0.85)) == {0, 1, 2}          # needs the third
    kept = sample_next(logits, rng, top_k=3)
    np.testing.assert_allclose(np.bincount(kept, minlength=4)[:3] / 4000, probs[:3] / probs[:3].sum(), atol=0.03)


@pytest.mark.parametrize("kwargs, match", [
    (dict(temperature=-1.0), "temperature"), (dict(top_k=0), "top_k"), (dict(top_p=0.0), "top_p"),
    (dict(top_p=1.5), "top_p"), (dict(max_new_tokens=-1), "max_new_tokens"),
    (dict(prompt=list(range(25))), "longer than this model's position table"),
])
def test_generate_bad_arguments(kwargs, match):
    model = tiny_model("gpt2")
    with pytest.raises(ValueError, match=match):
        generate(model, **{"prompt": [1, 2, 3], "max_new_tokens": 4, **kwargs})


def test_generate_past_the_position_table_slides_the_context():
    """max_seq_len = 24: greedy generation of 40 tokens after a 5-token prompt. Whenever the sequence
    outgrows the table, the context restarts from its last 12 tokens (positions from 0 again): the same
    tokens as recomputing each step over that window without a cache."""
    model = tiny_model("gpt2")
    out = generate(model, [1, 2, 3, 4, 5], max_new_tokens=40, temperature=0)
    seq, start = [1, 2, 3, 4, 5], 0
    for _ in range(40):
        if len(seq) - start > 24:                                            # no position 24 to feed
            start = len(seq) - 12
        seq.append(int(model.forward(np.array([seq[start:]]))[0, -1].argmax()))
    assert out == seq


# --- generate ------------------------------------------------------------------------------------

def test_generate_greedy_equals_argmax_of_full_recompute():
    model = tiny_model("llama")
    out = generate(model, [3, 1, 4], max_new_tokens=8, temperature=0)
    seq = [3, 1, 4]
    for _ in range(8):
        seq.append(int(model.forward(np.array([seq]))[0, -1].argmax()))
    assert out == seq


def test_generate_batch_of_different_lengths_equals_each_alone():
    model = tiny_model("mistral")
    prompts = [[5, 6, 7, 8, 9], [1], [2, 3]]
    together = generate(model, prompts, max_new_tokens=6, temperature=0)
    assert together == [generate(model, p, max_new_tokens=6, temperature=0) for p in prompts]


def test_generate_is_deterministic_for_a_seed_and_stops_at_stop_tokens():
    model = tiny_model("qwen3", dtype="float32")
    a = generate(model, [1, 2], max_new_tokens=10, temperature=1.0, top_k=10, seed=7)
    assert a == generate(model, [1, 2], max_new_tokens=10, temperature=1.0, top_k=10, seed=7)
    assert a != generate(model, [1, 2], max_new_tokens=10, temperature=1.0, top_k=10, seed=8)
    stop = a[4]                                                             # the third new token
    first = a[2:].index(stop)
    assert generate(model, [1, 2], max_new_tokens=10, temperature=1.0, top_k=10, seed=7, stop_tokens=[stop]) \
        == a[:2 + first]
    stream = list(generate_stream(model, [1, 2], max_new_tokens=10, temperature=1.0, top_k=10, seed=7))
    assert stream == a[2:] and all(isinstance(t, int) for t in stream)


def test_generate_leaves_the_training_mode_as_it_was():
    model = tiny_model("gpt2", dropout=0.5).train()
    generate(model, [1], max_new_tokens=2)
    assert model.training


@pytest.mark.parametrize("name", ["glm", "chatglm"])
def test_fill_mask_equals_recomputing_part_b_each_step(name):
    """Greedy filling with the cache = the argmax of a full forward over Part A + [sop] + the tokens so
    far, with GLM's positions (the [MASK]'s position, block positions 1, 2, ...) and prefix = Part A."""
    model = tiny_model(name)
    mask_id, sop_id, eop_id = 37, 38, 39
    ids = [5, 6, mask_id, 7, 8]
    filled = fill_mask(model, ids, mask_id, sop_id, eop_id, max_new_tokens=6)
    seq, m, n = ids + [sop_id], 2, len(ids)
    expected = []
    for step in range(6):
        pos = np.array([list(range(n)) + [m] * (step + 1)])
        block = np.array([[0] * n + list(range(1, step + 2))])
        token = int(model.forward(np.array([seq]), position_ids=pos, block_position_ids=block,
                                  prefix_len=n)[0, -1].argmax())
        if token == eop_id:
            break
        expected.append(token)
        seq.append(token)
    assert filled == expected and len(filled) > 0


def test_fill_mask_errors():
    with pytest.raises(ValueError, match="GLM-style"):
        fill_mask(tiny_model("gpt2"), [1, 2, 3], 3, 4, 5)
    with pytest.raises(ValueError, match="exactly one"):
        fill_mask(tiny_model("glm"), [1, 2, 3], 9, 4, 5)
