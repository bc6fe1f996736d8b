"""Generation: the model writes one token at a time, each new token fed back as input.

A language model gives, for every position, logits over the next token. To continue a prompt we
take the logits of the last position, turn them into a choice (the decoding strategy below), append
the token, and repeat.

Decoding strategies, applied to the last position's logits z (V,):
    greedy        argmax z                                     temperature = 0
    temperature   p = softmax(z / t)                           t < 1 sharpens, t > 1 flattens
    top-k         keep the k largest z, the rest get -inf      no tail of absurd tokens
    top-p         keep the smallest set of most likely tokens whose probability sums to >= p
                  ("nucleus" sampling, Holtzman et al. 2019): a wide set when the model is unsure,
                  a narrow one when it is sure
and then one draw from p (the seed fixes the draws).

The KV cache. Re-running the model over the whole sequence for every new token costs O(T) positions
per token, O(T^2) for T tokens. But the keys and values of the earlier positions never change (a
causal model's position t only reads positions <= t), so we keep them, per layer, in a KVCache: the
prompt is run once (the "prefill"), then each step runs ONE position, whose query attends over the
cached keys plus its own. Same logits, a fraction of the work. The cache holds 2 * L * Hkv * D numbers
per position and sample: GQA / MQA (Hkv < H) make it smaller.

A batch of prompts of different lengths is padded on the LEFT, so that every prompt ends at the same
position and the next tokens line up: the padding is masked (no real token attends to it) and positions
count from each prompt's first real token.

GLM fills a blank: fill_mask runs the text with its [MASK] as Part A (bidirectional), then writes
Part B after [sop], every token at the [MASK]'s position with block positions 1, 2, 3, ... (see
minigpt.data.glm), until [eop].

Dimension letters: B batch, T prompt length (padded), V vocabulary, N new tokens.
"""
import numpy as np

from minigpt.backend import to_numpy
from minigpt.model import KVCache


def _check_sampling(temperature, top_k, top_p, max_new_tokens):
    if not isinstance(max_new_tokens, (int, np.integer)) or isinstance(max_new_tokens, bool) or max_new_tokens < 0:
        raise ValueError(f"max_new_tokens={max_new_tokens!r}: expected an integer >= 0")
    if not temperature >= 0:
        raise ValueError(f"temperature={temperature!r}: expected a number >= 0 (0 = greedy)")
    if top_k is not None and (not isinstance(top_k, (int, np.integer)) or top_k < 1):
        raise ValueError(f"top_k={top_k!r}: expected None or an integer >= 1")
    if top_p is not None and not 0 < top_p <= 1:
        raise ValueError(f"top_p={top_p!r}: expected None or a probability in (0, 1]")


def sample_next(logits, rng, temperature=1.0, top_k=None, top_p=None):
    """logits (B, V) -> the next token ids (B,): greedy for temperature 0, else one draw each from
    softmax(logits / temperature) restricted to the top_k largest and to the top_p nucleus."""
    z = to_numpy(logits).astype(np.float64)                                  # (B, V) on the host
    if temperature == 0:
        return z.argmax(axis=-1)                                             # (B,) greedy
    z = z / temperature
    if top_k is not None and top_k < z.shape[-1]:
        kth = np.partition(z, -top_k, axis=-1)[:, -top_k][:, None]           # (B, 1) the k-th largest
        z = np.where(z < kth, -np.inf, z)
    probs = np.exp(z - z.max(axis=-1, keepdims=True))
    probs /= probs.sum(axis=-1, keepdims=True)                               # (B, V)
    if top_p is not None and top_p < 1:
        order = np.argsort(-probs, axis=-1)                                  # (B, V) most likely first
        sorted_probs = np.take_along_axis(probs, order, axis=-1)
        before = np.cumsum(sorted_probs, axis=-1) - sorted_probs             # mass of the tokens ahead of each
        keep = np.zeros_like(probs, dtype=bool)
        np.put_along_axis(keep, order, before < top_p, axis=-1)              # the first always stays
        probs = np.where(keep, probs, 0.0)
        probs /= probs.sum(axis=-1, keepdims=True)
    u = rng.random(len(probs))[:, None]                                      # (B, 1) one uniform draw each
    return np.minimum((np.cumsum(probs, axis=-1) < u).sum(axis=-1), probs.shape[-1] - 1)   # (B,) inverse CDF


def left_pad(prompts, pad_id=0):
    """A list of B prompts (lists of ids) -> ids (B, T) padded on the left with pad_id, pad_len (B,)."""
    if len(prompts) == 0 or any(len(p) == 0 for p in prompts):
        raise ValueError("prompts: expected at least one prompt, each with at least one token")
    T = max(len(p) for p in prompts)
    ids = np.full((len(prompts), T), pad_id, dtype=np.int64)                 # (B, T)
    pad_len = np.array([T - len(p) for p in prompts], dtype=np.int64)        # (B,)
    for b, p in enumerate(prompts):
        ids[b, pad_len[b]:] = p
    return ids, pad_len


def _check_length(config, T, max_new_tokens):
    """A learned position table has max_seq_len rows: the prompt and the new tokens must fit in it (GLM's
    blank filling; generate slides its context instead)."""
    if config.position_tables and T + max_new_tokens > config.max_seq_len:
        raise ValueError(f"a prompt of {T} tokens and max_new_tokens={max_new_tokens} make {T + max_new_tokens} "
                         f"positions, but this model's position table has max_seq_len={config.max_seq_len}")


def _as_prompts(prompt):
    """A prompt (1-D ids) or a batch (list of 1-D ids, or a 2-D array) -> (list of lists, single?)."""
    if isinstance(prompt, np.ndarray) and prompt.ndim == 2:
        return [list(map(int, row)) for row in prompt], False
    if len(prompt) and np.ndim(prompt[0]) == 1:
        return [list(map(int, p)) for p in prompt], False
    return [list(map(int, prompt))], True


def generate_stream(model, prompt, max_new_tokens=64, temperature=1.0, top_k=None, top_p=None, seed=0,
                    stop_tokens=(), pad_id=0):
    """Yields the new token ids of every step: an int for one prompt, an int array (B,) for a batch.
    Stops after max_new_tokens, or when every sequence has produced one of stop_tokens (a finished
    sequence keeps being fed, its later tokens are not part of its answer: see generate).
    A model with a learned position table sees at most max_seq_len positions: when the sequence
    reaches that, the context slides, the cache is rebuilt from the last max_seq_len // 2 tokens."""
    _check_sampling(temperature, top_k, top_p, max_new_tokens)
    prompts, single = _as_prompts(prompt)
    ids, pad_len = left_pad(prompts, pad_id)                                 # (B, T), (B,)
    limit = model.config.max_seq_len if model.config.position_tables else None
    if limit is not None and ids.shape[1] > limit:
        raise ValueError(f"a prompt of {ids.shape[1]} tokens is longer than this model's position table "
                         f"(max_seq_len={limit})")
    rng = np.random.default_rng(seed)
    was_training = model.training
    model.eval()                                                             # no dropout while generating
    try:
        cache, logits = _prefill(model, ids, pad_len, max_new_tokens, limit)    # logits (B, V)
        done = np.zeros(len(ids), dtype=bool)
        for step in range(max_new_tokens):
            token = sample_next(logits, rng, temperature, top_k, top_p)      # (B,)
            yield int(token[0]) if single else token
            done |= np.isin(token, list(stop_tokens))
            if done.all() or step == max_new_tokens - 1:                     # no forward for an unused token
                return
            ids = np.concatenate([ids, token[:, None]], axis=1)              # (B, T + 1)
            if cache.length == cache.capacity:                               # the position table is full
                keep = limit // 2
                pad_len = np.maximum(pad_len - (ids.shape[1] - keep), 0)
                ids = ids[:, -keep:]
                cache, logits = _prefill(model, ids, pad_len, max_new_tokens, limit)
            else:
                logits = model.forward(token[:, None], kv_cache=cache)[:, -1]   # (B, V) one position each
    finally:
        model.train(was_training)


def _prefill(model, ids, pad_len, max_new_tokens, limit):
    """A KVCache for the sequences so far (B, T) and the logits (B, V) of their last position."""
    capacity = ids.shape[1] + max_new_tokens if limit is None else min(ids.shape[1] + max_new_tokens, limit)
    cache = KVCache(model, len(ids), capacity, pad_len=pad_len)
    return cache, model.forward(ids, kv_cache=cache)[:, -1]


def generate(model, prompt, max_new_tokens=64, temperature=1.0, top_k=None, top_p=None, seed=0,
             stop_tokens=(), pad_id=0):
    """Continue a prompt: prompt + the new tokens, as a list of ids (a list of such lists for a batch).
    Each sequence ends before its first stop token. See generate_stream for the arguments."""
    prompts, single = _as_prompts(prompt)
    answers = [[] for _ in prompts]
    finished = [False] * len(prompts)
    for step in generate_stream(model, prompts, max_new_tokens, temperature, top_k, top_p, seed, stop_tokens,
                                pad_id):
        for b, token in enumerate(np.atleast_1d(step)):
            finished[b] = finished[b] or int(token) in stop_tokens
            if not finished[b]:
                answers[b].append(int(token))
    out = [p + a for p, a in zip(prompts, answers)]
    return out[0] if single else out


def fill_mask(model, ids, mask_id, sop_id, eop_id, max_new_tokens=32, temperature=0.0, top_k=None, top_p=None,
              seed=0):
    """GLM / ChatGLM-6B: the tokens that fill the one [MASK] (mask_id) in ids (1-D), written after [sop]
    until [eop]. Part A = ids, seen bidirectionally; every Part B token sits at the [MASK]'s position,
    with block positions 1 ([sop]), 2, 3, ..."""
    cfg = model.config
    if cfg.attention != "prefix" or not cfg.block_positions:
        raise ValueError(f"fill_mask needs a GLM-style model (attention='prefix', 2D positions), this one has "
                         f"attention={cfg.attention!r}, positions={cfg.positions!r}")
    _check_sampling(temperature, top_k, top_p, max_new_tokens)
    ids = [int(t) for t in ids]
    where = [i for i, t in enumerate(ids) if t == mask_id]
    if len(where) != 1:
        raise ValueError(f"ids: expected exactly one [MASK] (id {mask_id}), found {len(where)}")
    n, m = len(ids), where[0]
    _check_length(cfg, n + 1, max_new_tokens)
    was_training = model.training
    try:
        return _fill(model.eval(), ids, n, m, sop_id, eop_id, max_new_tokens, (temperature, top_k, top_p), seed)
    finally:
        model.train(was_training)


def _fill(model, ids, n, m, sop_id, eop_id, max_new_tokens, sampling, seed):
    """fill_mask's loop: Part A + [sop] as the prefill, then one Part B token per step."""
    cache = KVCache(model, 1, n + 1 + max_new_tokens, prefix_len=n)
    pos = np.array([list(range(n)) + [m]])                                  # (1, n+1): Part A, then [sop] at m
    block = np.array([[0] * n + [1]])                                        # (1, n+1)
    logits = model.forward(np.array([ids + [sop_id]]), position_ids=pos, block_position_ids=block,
                           kv_cache=cache)[:, -1]                            # (1, V)
    rng, filled = np.random.default_rng(seed), []
    for step in range(max_new_tokens):
        token = int(sample_next(logits, rng, *sampling)[0])
        if token == eop_id:
            break
        filled.append(token)
        logits = model.forward(np.array([[token]]), position_ids=np.array([[m]]),
                               block_position_ids=np.array([[step + 2]]), kv_cache=cache)[:, -1]   # (1, V)
    return filled
