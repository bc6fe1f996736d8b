"""Batches for causal language modelling (CLM, 因果语言模型): tokenize once, then sample windows.

The corpus is encoded ONCE and stored as a flat array of token ids in a .npy file, uint16 when every
id fits in 16 bits (GPT-2's 50257 do), else uint32. Training opens it with np.load(mmap_mode="r"):
the operating system pages it in on demand, so a corpus far bigger than memory works the same way.

A training example is a random window of T+1 consecutive tokens starting at i:

    inputs  = tokens[i   : i+T]
    targets = tokens[i+1 : i+T+1]        (the next token at every position)

Dimension letters: B batch, T time (sequence length), N number of tokens.
"""
import os
import tempfile
from pathlib import Path

import numpy as np

UINT16_MAX_VOCAB = 1 << 16   # ids 0..65535 fit in uint16


def token_dtype(vocab_size):
    """uint16 when every id (0..vocab_size-1) fits in 16 bits, else uint32."""
    if vocab_size < 1:
        raise ValueError(f"vocab_size={vocab_size}: expected a positive size")
    if vocab_size > 1 << 32:
        raise ValueError(f"vocab_size={vocab_size} does not fit uint32 token ids")
    return np.dtype(np.uint16) if vocab_size <= UINT16_MAX_VOCAB else np.dtype(np.uint32)


def encode_tokens(data, tokenizer=None):
    """Token ids as an int64 array (N,): data is a str (encoded with tokenizer.encode) or ids already."""
    if isinstance(data, str):
        if tokenizer is None:
            raise ValueError("data is text: pass tokenizer= (any object with .encode(str) -> ids)")
        data = tokenizer.encode(data)
    ids = np.asarray(data)
    if ids.size == 0:
        return np.zeros(0, dtype=np.int64)
    if ids.ndim != 1 or not np.issubdtype(ids.dtype, np.integer):
        raise ValueError(f"token ids must be a 1-D sequence of integers, got shape {ids.shape} dtype {ids.dtype}")
    if ids.min() < 0:
        raise ValueError(f"token ids must be >= 0, found {int(ids.min())}")
    return ids.astype(np.int64, copy=False)


def save_tokens(ids, path, vocab_size=None):
    """Write ids to path as a .npy file of uint16/uint32, atomically (temp file + os.replace).

    vocab_size picks the dtype (default: largest id + 1); an id >= vocab_size -> ValueError.
    A crash mid-write never leaves a half-written file at path. Returns the Path.
    """
    ids = encode_tokens(ids)
    if ids.size == 0:
        raise ValueError("no tokens to save: the encoded corpus is empty")
    top = int(ids.max())
    if vocab_size is None:
        vocab_size = top + 1
    if top >= vocab_size:
        raise ValueError(f"token id {top} is out of range for vocab_size={vocab_size}")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=path.name + ".", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            np.save(f, ids.astype(token_dtype(vocab_size)))
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        os.unlink(tmp)
        raise
    return path


def load_tokens(path):
    """The token file at path as a read-only memory map (N,) of uint16/uint32."""
    tokens = np.load(Path(path), mmap_mode="r")
    if tokens.ndim != 1 or tokens.dtype not in (np.uint16, np.uint32):
        raise ValueError(f"{path} does not hold a token file: shape {tokens.shape}, dtype {tokens.dtype}")
    return tokens


def prepare_tokens(data, path, tokenizer=None, vocab_size=None):
    """Tokenize once, store in path, return the memory-mapped tokens (N,).

    data: text (needs tokenizer) or ids. vocab_size defaults to tokenizer.vocab_size when there is one.
    """
    if vocab_size is None and tokenizer is not None:
        vocab_size = getattr(tokenizer, "vocab_size", None)
    save_tokens(encode_tokens(data, tokenizer), path, vocab_size)
    return load_tokens(path)


def split_tokens(tokens, val_fraction=0.1):
    """(train, val): the first 1 - val_fraction of the tokens and the rest, as views (no copy)."""
    if not 0.0 <= val_fraction < 1.0:
        raise ValueError(f"val_fraction={val_fraction}: expected 0 <= val_fraction < 1")
    n_val = int(round(len(tokens) * val_fraction))
    cut = len(tokens) - n_val
    return tokens[:cut], tokens[cut:]


def _check_lengths(n_tokens, seq_len, batch_size):
    for name, value in (("seq_len", seq_len), ("batch_size", batch_size)):
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
            raise ValueError(f"{name}={value!r}: expected an integer")
    if seq_len < 1 or batch_size < 1:
        raise ValueError(f"seq_len={seq_len}, batch_size={batch_size}: both must be >= 1")
    if seq_len + 1 > n_tokens:
        raise ValueError(f"seq_len={seq_len} is longer than the data: {n_tokens} tokens hold windows of at most "
                         f"{n_tokens - 1} inputs (each needs seq_len + 1 tokens with its shifted target)")


def windows(tokens, starts, seq_len):
    """inputs, targets int64 (B, T) for windows starting at starts (B,)."""
    index = np.asarray(starts)[:, None] + np.arange(seq_len + 1)    # (B, T+1)
    chunk = np.asarray(tokens[index], dtype=np.int64)                 # (B, T+1)
    return chunk[:, :-1], chunk[:, 1:]                                # (B, T), (B, T)


class BatchSampler:
    """Random CLM windows, deterministic for a seed, with a state that resumes exactly.

        sampler = BatchSampler(train_tokens, seq_len=64, batch_size=16, seed=0)
        x, y = sampler.next_batch()            # int64 (B, T) each; y is x shifted by one
        state = sampler.state_dict()           # JSON-serializable
        ...
        sampler.load_state_dict(state)         # the next batches are the same as before

    Every start i is drawn uniformly from 0..N-T-1 (the window i..i+T must hold the last target).
    """

    def __init__(self, tokens, seq_len, batch_size, seed=0):
        _check_lengths(len(tokens), seq_len, batch_size)
        self.tokens = tokens
        self.seq_len = int(seq_len)
        self.batch_size = int(batch_size)
        self.seed = int(seed)
        self.rng = np.random.default_rng(seed)
        self.step = 0

    def next_batch(self):
        """inputs, targets: int64 (B, T)."""
        starts = self.rng.integers(0, len(self.tokens) - self.seq_len, size=self.batch_size)   # (B,)
        self.step += 1
        return windows(self.tokens, starts, self.seq_len)

    def __iter__(self):
        return self

    def __next__(self):
        return self.next_batch()

    def state_dict(self):
        """Where the sampler is: the generator's exact state and the batches drawn so far (JSON-able)."""
        return {"seed": self.seed, "step": self.step, "seq_len": self.seq_len, "batch_size": self.batch_size,
                "n_tokens": len(self.tokens), "bit_generator": self.rng.bit_generator.state}

    def load_state_dict(self, state):
        """Continue exactly where state_dict() was taken. A state for other data or shapes -> ValueError."""
        for key in ("seq_len", "batch_size", "n_tokens"):
            mine = len(self.tokens) if key == "n_tokens" else getattr(self, key)
            if state[key] != mine:
                raise ValueError(f"sampler state has {key}={state[key]} but this sampler has {key}={mine}")
        self.rng.bit_generator.state = state["bit_generator"]
        self.seed = int(state["seed"])
        self.step = int(state["step"])


def sequential_batches(tokens, seq_len, batch_size):
    """Non-overlapping windows in order, for an evaluation pass that sees each token once.

    Yields (inputs, targets) int64 (b, T) with b <= batch_size (the last batch may be smaller).
    """
    _check_lengths(len(tokens), seq_len, batch_size)
    starts = np.arange(0, len(tokens) - seq_len, seq_len)                # every full window
    for k in range(0, len(starts), batch_size):
        yield windows(tokens, starts[k:k + batch_size], seq_len)
