"""Byte-level BPE (字节对编码, byte pair encoding), trained and used the way GPT-2 does.

Training (BPETokenizer.train):
  1. Cut out the special tokens; they are never part of a merge.
  2. Pre-tokenize with GPT-2's regex: " the", " cat", "'s", "123", "\\n\\n", ... No merge ever crosses a
     pre-token boundary, so the corpus is just a table {pre-token: how often it occurs}. The 465 KB
     built-in corpus has ~103,000 pre-tokens but only ~6,000 different ones.
  3. Every pre-token starts as its UTF-8 bytes, ids 0..255. Count every adjacent pair of ids, weighted by
     the pre-token's frequency. Repeat: take the most frequent pair (a tie goes to the lexicographically
     greatest pair of byte strings, so training is deterministic), give it the next id, and replace it
     in every pre-token that contains it.
  4. Only the pre-tokens containing the merged pair change, and only their pairs change count. An index
     {pair: pre-tokens containing it} finds them, the counts are updated for just those, and a heap
     (with stale entries skipped when popped) finds the next best pair. No full recount per merge.
  5. The vocabulary: ids 0..255 are the single bytes, then one id per merge in order, then the specials.

Encoding (BPETokenizer.encode): split off special tokens, pre-tokenize, then inside each pre-token apply
the learned merges by rank (the earliest learned first, every occurrence, left to right) until none
applies. The ids of each distinct pre-token are cached, so common words cost one dictionary lookup.

Loaded tokenizers (GPT-2's own files, a tokenizer.json) keep the file's ids: GPT-2 does not put the bytes
at 0..255 ("!" is 0, the space byte is 220), so everything here goes through the vocab {id: bytes} and
the merges [(bytes, bytes)], never through "id == byte".
"""
import heapq
import json
from collections import Counter
from pathlib import Path

import regex

from minigpt.files import read_json_file
from minigpt.tokenizers.base import (Tokenizer, as_int, check_ids, check_special_tokens, read_texts, special_splitter,
                                     split_specials)
from minigpt.tokenizers.gpt2 import (GPT2_PATTERN, load_gpt2_files, parse_tokenizer_json, save_gpt2_files,
                                     tokenizer_json)

# Points where a stream of text can be cut without changing GPT-2's pre-tokens (see encode_iterable):
# a non-space followed by a space, a letter followed by a non-letter, a digit followed by a non-digit
# (never into whitespace: "\s+(?!\S)" looks ahead). Searched from the end of the text ((?r)).
_CUT = regex.compile(r"(?r)\S(?=\s)|\p{L}(?=[^\s\p{L}])|\p{N}(?=[^\s\p{N}])")

_NO_MERGE = (float("inf"), -1)                 # the rank of a pair that no merge makes: after every real one


class _GreatestFirst:
    """Heap key for a pair's byte strings: the lexicographically GREATEST pops first on equal counts."""
    __slots__ = ("key",)

    def __init__(self, key):
        self.key = key

    def __lt__(self, other):
        return self.key > other.key


def _merge(ids, pair, new_id):
    """Replace every occurrence of pair in ids (left to right, non-overlapping) by new_id."""
    a, b = pair
    out, i, n = [], 0, len(ids)
    while i < n:
        if i + 1 < n and ids[i] == a and ids[i + 1] == b:
            out.append(new_id)
            i += 2
        else:
            out.append(ids[i])
            i += 1
    return out


def count_pairs(words, freqs):
    """Weighted counts of adjacent id pairs, and for each pair the set of words it occurs in."""
    pair_counts = Counter()                             # (id_a, id_b) -> weighted count
    where = {}                                          # (id_a, id_b) -> {index of each word containing it}
    for w, (ids, f) in enumerate(zip(words, freqs)):
        for pair in zip(ids, ids[1:]):
            pair_counts[pair] += f
            where.setdefault(pair, set()).add(w)
    return pair_counts, where


def merge_in_words(pair, new_id, words, freqs, pair_counts, where):
    """Replace pair by new_id in every word holding it, updating pair_counts and where in place.

    Only those words change, so only their pairs are recounted: each word's old pairs leave the
    counts and its new pairs enter them. Returns the set of pairs whose count changed.
    """
    changed = set()
    for w in where.pop(pair):
        ids, f = words[w], freqs[w]
        new_ids = _merge(ids, pair, new_id)
        if len(new_ids) == len(ids):                    # stale index entry: an earlier merge took the pair away
            continue
        for p in zip(ids, ids[1:]):
            pair_counts[p] -= f
            changed.add(p)
        for p in zip(new_ids, new_ids[1:]):
            pair_counts[p] += f
            changed.add(p)
            where.setdefault(p, set()).add(w)
        words[w] = new_ids
    return changed


def learn_merges(word_counts, n_tokens):
    """BPE on {pre-token bytes: frequency} until the vocabulary has 256 + n_tokens entries (or no pair is left).

    Returns (vocab [bytes] indexed by id, merges [(id_a, id_b, new_id)] in order). A merge whose bytes are
    already a token reuses that token's id (as Hugging Face's trainer does), so merges can outnumber new ids.
    """
    vocab = [bytes([b]) for b in range(256)]
    token_id = {t: i for i, t in enumerate(vocab)}
    words = [list(w) for w in word_counts]              # each pre-token as its byte ids
    freqs = list(word_counts.values())
    pair_counts, where = count_pairs(words, freqs)

    def heap_entry(pair):                               # the most frequent pops first, then the greatest bytes
        return (-pair_counts[pair], _GreatestFirst((vocab[pair[0]], vocab[pair[1]])), pair)

    heap = [heap_entry(p) for p in pair_counts]
    heapq.heapify(heap)
    merges = []
    while len(vocab) < 256 + n_tokens and heap:
        neg_count, _, pair = heapq.heappop(heap)
        if pair_counts.get(pair, 0) != -neg_count:      # stale: the count changed since this entry was pushed
            continue
        merged = vocab[pair[0]] + vocab[pair[1]]
        new_id = token_id.get(merged)
        if new_id is None:
            new_id = token_id[merged] = len(vocab)
            vocab.append(merged)
        merges.append((pair[0], pair[1], new_id))
        for p in merge_in_words(pair, new_id, words, freqs, pair_counts, where):
            if pair_counts[p] > 0:                      # a fresh entry; the old ones are now stale
                heapq.heappush(heap, heap_entry(p))
            else:                                       # gone from every word (the merged pair itself included)
                del pair_counts[p]
                where.pop(p, None)
    return vocab, merges


def _ordinary_token_ids(vocab, special_ids):
    """{bytes: id} of every token that is not special; each token once, all 256 single bytes present."""
    token_id = {}
    for i, t in vocab.items():
        if i not in special_ids:
            if t in token_id:
                raise ValueError(f"vocab ids {token_id[t]} and {i} are both the token {t!r}")
            token_id[t] = i
    missing = [b for b in range(256) if bytes([b]) not in token_id]
    if missing:
        raise ValueError(f"a byte-level vocab needs all 256 single bytes; missing byte(s) {missing[:8]}")
    return token_id


def _merge_ranks(merges, token_id):
    """{(id_a, id_b): (rank, id of the merged token)}. A merge listed twice takes its LAST rank, as in
    GPT-2's encoder.py (dict(zip(merges, range(len(merges))))) and Hugging Face's BPE."""
    ranks = {}
    for rank, (a, b) in enumerate(merges):
        if a not in token_id or b not in token_id or a + b not in token_id:
            raise ValueError(f"merge {rank} ({a!r}, {b!r}): both parts and their concatenation must be tokens")
        ranks[token_id[a], token_id[b]] = (rank, token_id[a + b])
    return ranks


class BPETokenizer(Tokenizer):
    """A byte-level BPE tokenizer: vocab {id: bytes}, merges [(bytes, bytes)] in rank order, special tokens {str: id}.

    Make one with BPETokenizer.train(text, vocab_size, special_tokens), BPETokenizer.load(path) (a folder
    with tokenizer.json or vocab.json + merges.txt, or a tokenizer.json file), or from_gpt2_files.
    """

    def __init__(self, vocab, merges, special_tokens=None, cache_size=100_000):
        self.vocab = {as_int(i, "a vocab id"): bytes(t) for i, t in vocab.items()}
        if sorted(self.vocab) != list(range(len(self.vocab))):
            raise ValueError(f"vocab ids must be 0..{len(self.vocab) - 1} with none missing")
        self.merges = [(bytes(a), bytes(b)) for a, b in merges]
        self.special_tokens = dict(special_tokens or {})
        check_special_tokens(list(self.special_tokens))
        for s, i in self.special_tokens.items():
            if self.vocab.get(i) != s.encode("utf-8"):
                raise ValueError(f"special token {s!r} has id {i}, but vocab[{i}] is {self.vocab.get(i)!r}")

        token_id = _ordinary_token_ids(self.vocab, set(self.special_tokens.values()))
        self._byte_ids = [token_id[bytes([b])] for b in range(256)]
        self._ranks = _merge_ranks(self.merges, token_id)
        self._id_bytes = [self.vocab[i] for i in range(len(self.vocab))]
        self._pattern = regex.compile(GPT2_PATTERN)
        self._splitter = special_splitter(list(self.special_tokens))
        self._cache = {}                                # pre-token -> its ids
        self._cache_size = cache_size

    @property
    def vocab_size(self):
        return len(self.vocab)

    def __repr__(self):
        return (f"BPETokenizer(vocab_size={self.vocab_size}, merges={len(self.merges)}, "
                f"special_tokens={list(self.special_tokens)})")

    # ---------------------------------------------------------------- training
    @classmethod
    def train(cls, text_or_files, vocab_size, special_tokens=()):
        """Learn a byte-level BPE: ids 0..255 bytes, then merges in order, then special_tokens.

        text_or_files: a str (the text), a pathlib.Path (a UTF-8 file), or a list of them.
        vocab_size counts everything: 256 bytes + merges + specials (fewer when the text runs out of pairs).
        """
        specials = check_special_tokens(special_tokens)
        vocab_size = as_int(vocab_size, "vocab_size")
        if vocab_size < 256 + len(specials):
            raise ValueError(f"vocab_size {vocab_size} is too small: a byte-level BPE needs at least "
                             f"256 (bytes) + {len(specials)} (special tokens) = {256 + len(specials)}")
        splitter, pattern = special_splitter(specials), regex.compile(GPT2_PATTERN)
        counts = Counter()                              # pre-token str -> frequency
        for text in read_texts(text_or_files):
            for piece, is_special in split_specials(text, splitter):
                if not is_special:
                    counts.update(pattern.findall(piece))
        if not counts:
            raise ValueError("the training text is empty (nothing left once special tokens are removed)")
        word_counts = {w.encode("utf-8"): f for w, f in counts.items()}
        vocab, merges = learn_merges(word_counts, vocab_size - 256 - len(specials))
        n = len(vocab)
        all_tokens = {i: t for i, t in enumerate(vocab)}
        all_tokens.update({n + k: s.encode("utf-8") for k, s in enumerate(specials)})
        return cls(all_tokens, [(vocab[a], vocab[b]) for a, b, _ in merges],
                   {s: n + k for k, s in enumerate(specials)})

    # ---------------------------------------------------------------- encoding
    def _encode_word(self, word):
        """One pre-token -> ids: start from its bytes, apply the lowest-ranked merge present until none is."""
        ids = [self._byte_ids[b] for b in word.encode("utf-8")]
        ranks = self._ranks
        while len(ids) > 1:
            pair = min(zip(ids, ids[1:]), key=lambda p: ranks.get(p, _NO_MERGE))
            if pair not in ranks:                       # not even the best pair has a merge: done
                break
            ids = _merge(ids, pair, ranks[pair][1])
        return ids

    def encode(self, text):
        """str -> list of ids. Special tokens in the text become their ids."""
        if not isinstance(text, str):
            raise ValueError(f"encode expects a str, got {type(text).__name__}")
        ids, cache = [], self._cache
        for piece, is_special in split_specials(text, self._splitter):
            if is_special:
                ids.append(self.special_tokens[piece])
                continue
            for word in self._pattern.findall(piece):
                word_ids = cache.get(word)
                if word_ids is None:
                    word_ids = self._encode_word(word)
                    if len(cache) >= self._cache_size:  # bounded memory: start afresh when full
                        cache.clear()
                    cache[word] = word_ids
                ids.extend(word_ids)
        return ids

    def _cut_points(self, buffer):
        return (m.end() for m in _CUT.finditer(buffer))

    def decode(self, ids):
        """ids -> str. Byte sequences that are not valid UTF-8 (a token cut mid-character) become U+FFFD."""
        ids = check_ids(ids, len(self._id_bytes))
        return b"".join(self._id_bytes[i] for i in ids).decode("utf-8", errors="replace")

    def decode_bytes(self, ids):
        """ids -> the raw bytes they stand for."""
        return b"".join(self._id_bytes[i] for i in check_ids(ids, len(self._id_bytes)))

    # ---------------------------------------------------------------- files
    def save(self, directory):
        """Write tokenizer.json (Hugging Face) and vocab.json + merges.txt (GPT-2) into directory; returns it."""
        directory = Path(directory)
        save_gpt2_files(directory, self.vocab, self.merges, self.special_tokens)
        (directory / "tokenizer.json").write_text(
            json.dumps(tokenizer_json(self.vocab, self.merges, self.special_tokens), ensure_ascii=False, indent=1),
            encoding="utf-8")
        return directory

    @classmethod
    def from_gpt2_files(cls, vocab_path, merges_path):
        """GPT-2's vocab.json + merges.txt. Vocab entries no merge makes are the special tokens (<|endoftext|>)."""
        return cls._from_file(load_gpt2_files(vocab_path, merges_path), vocab_path)

    @classmethod
    def from_tokenizer_json(cls, path):
        """A Hugging Face tokenizer.json of a GPT-2 style byte-level BPE."""
        return cls._from_file(parse_tokenizer_json(read_json_file(path), str(path)), path)

    @classmethod
    def _from_file(cls, parts, path):
        """cls(vocab, merges, special_tokens) as read from path: what the constructor refuses names the file."""
        try:
            return cls(*parts)
        except ValueError as err:
            raise ValueError(f"{path}: {err}") from err

    @classmethod
    def load(cls, path):
        """A folder (tokenizer.json, else vocab.json + merges.txt) or a tokenizer.json file."""
        path = Path(path)
        if path.is_dir():
            if (path / "tokenizer.json").exists():
                return cls.from_tokenizer_json(path / "tokenizer.json")
            if (path / "vocab.json").exists() or (path / "merges.txt").exists():  # a missing one is named
                return cls.from_gpt2_files(path / "vocab.json", path / "merges.txt")
            raise ValueError(f"{path} has neither tokenizer.json nor vocab.json + merges.txt")
        if not path.exists():
            raise ValueError(f"no tokenizer at {path}")
        return cls.from_tokenizer_json(path)
