"""GPT-2's conventions: the pre-tokenization regex, the byte-to-unicode map, and the two file formats.

GPT-2 (and every byte-level BPE after it: RoBERTa, GPT-J, LLaMA-3, Qwen, GLM-4) stores tokens as *strings*,
although a token is a sequence of bytes. To make any byte printable in a JSON file, each byte 0..255 is
mapped to one visible unicode character: the 188 bytes that are already printable Latin-1 characters map
to themselves ("a" -> "a"), the other 68 (space, control bytes, ...) are shifted to U+0100 onwards, so the
space byte 0x20 becomes "Ġ" and the newline 0x0A becomes "Ċ". A token's string is its bytes mapped one by one.

Files written and read here:
  vocab.json    {token string: id}, special tokens written as themselves ("<|endoftext|>": 50256)
  merges.txt    "#version: 0.2", then one merge a line, "Ġ t" = the bytes b" " and b"t" merged, in rank order
  tokenizer.json  Hugging Face `tokenizers`' format: a ByteLevel pre-tokenizer (GPT-2's regex, no prefix space),
                a BPE model (the same vocab and merges), a ByteLevel decoder, and the special tokens as added tokens.

In memory a tokenizer is: vocab {id: bytes}, merges [(bytes, bytes), ...] in rank order, special tokens {str: id}.
"""
import json
from pathlib import Path

from minigpt.files import read_json_file, read_utf8_file
from minigpt.tokenizers.base import (added_tokens_json, check_added_tokens, check_json_object, check_json_type,
                                     check_vocab_json)

# GPT-2's pre-tokenizer: contractions, an optional space + letters, an optional space + digits,
# an optional space + other symbols, whitespace not followed by a non-space, and any other whitespace.
GPT2_PATTERN = r"""'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"""

MERGES_HEADER = "#version: 0.2"


def bytes_to_unicode():
    """GPT-2's map {byte: printable character}: printable Latin-1 bytes stay, the other 68 move to U+0100..U+0143."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    chars = {b: chr(b) for b in printable}
    shifted = 0
    for b in range(256):
        if b not in chars:
            chars[b] = chr(256 + shifted)
            shifted += 1
    return dict(sorted(chars.items()))


BYTE_TO_CHAR = bytes_to_unicode()
CHAR_TO_BYTE = {c: b for b, c in BYTE_TO_CHAR.items()}


def token_to_string(token):
    """bytes -> GPT-2's printable string: b" the" -> "Ġthe"."""
    return "".join(BYTE_TO_CHAR[b] for b in token)


def string_to_token(string):
    """GPT-2's printable string -> bytes, or None when a character is not in the byte map (a special token)."""
    try:
        return bytes(CHAR_TO_BYTE[c] for c in string)
    except KeyError:
        return None


def _vocab_strings(vocab, special_tokens):
    """{id: string} for the files: special tokens as themselves, every other token through the byte map."""
    special_ids = {i: s for s, i in special_tokens.items()}
    return {i: special_ids[i] if i in special_ids else token_to_string(t) for i, t in vocab.items()}


def _check_unique(strings, where):
    seen = {}
    for i, s in strings.items():
        if s in seen:
            raise ValueError(f"{where}: ids {seen[s]} and {i} are both written as {s!r}; "
                             "a vocab file can hold each token string once")
        seen[s] = i


def save_gpt2_files(directory, vocab, merges, special_tokens):
    """Write directory/vocab.json and directory/merges.txt in GPT-2's format; returns the two paths."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    strings = _vocab_strings(vocab, special_tokens)
    _check_unique(strings, "vocab.json")
    vocab_path, merges_path = directory / "vocab.json", directory / "merges.txt"
    vocab_path.write_text(json.dumps({s: i for i, s in sorted(strings.items())}, ensure_ascii=False),
                          encoding="utf-8")
    lines = [MERGES_HEADER] + [f"{token_to_string(a)} {token_to_string(b)}" for a, b in merges]
    merges_path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return vocab_path, merges_path


def _vocab_from_strings(string_to_id, where):
    """{string: id} -> ({id: bytes}, {id: string that is not a byte-level token}); ids must be 0..n-1."""
    check_vocab_json(string_to_id, where)
    vocab, not_bytes = {}, {}
    for s, i in string_to_id.items():
        token = string_to_token(s)
        if token is None:                       # not in the byte map: a special token written as itself
            not_bytes[i] = s
            token = s.encode("utf-8")
        vocab[i] = token
    return vocab, not_bytes


def _read_merges_txt(path):
    """merges.txt -> [(place, [a, b])], place = "path:line: merge" for messages; the "#version" line and
    empty lines are skipped. A line that is not two tokens separated by one space is a ValueError."""
    pairs = []
    for n, line in enumerate(read_utf8_file(path).splitlines(), 1):
        if (n == 1 and line.startswith("#version")) or not line:
            continue
        parts = line.split(" ")
        if len(parts) != 2 or not all(parts):
            raise ValueError(f"{path}:{n}: a merge line is two tokens separated by one space, got {line!r}")
        pairs.append((f"{path}:{n}: merge", parts))
    return pairs


def _check_merge_pairs(merges, where):
    """The "merges" of a tokenizer.json -> [(place, [a, b])]: each merge "a b" or ["a", "b"], two non-empty strings."""
    pairs = []
    for n, m in enumerate(check_json_type(merges, list, "the model's \"merges\"", where), 1):
        parts = m.split(" ") if isinstance(m, str) else m
        if not (isinstance(parts, list) and len(parts) == 2 and all(isinstance(t, str) and t for t in parts)):
            raise ValueError(f'{where}: merge {n} must be two tokens, "a b" or ["a", "b"], got {m!r}')
        pairs.append((f"{where}: merge {n}", parts))
    return pairs


def _merges_from_pairs(pairs):
    """[(place, [a, b])] -> [(bytes, bytes)]; a token string outside GPT-2's byte map is a ValueError."""
    merges = []
    for place, (a, b) in pairs:
        ta, tb = string_to_token(a), string_to_token(b)
        if ta is None or tb is None:
            raise ValueError(f"{place} ({a!r} {b!r}) has a character outside GPT-2's byte map")
        merges.append((ta, tb))
    return merges


def _check_merges_in_vocab(pairs, merges, vocab, vocab_where):
    """Both tokens of every merge, and the token they make, must be in the vocab."""
    tokens = set(vocab.values())
    for (place, (a, b)), (ta, tb) in zip(pairs, merges):
        for what, token in (("the first token", ta), ("the second token", tb), ("the merged token", ta + tb)):
            if token not in tokens:
                raise ValueError(f"{place} ({a!r} {b!r}): {what} {token_to_string(token)!r} "
                                 f"is not in {vocab_where}")


def _special_tokens(vocab, merges, not_bytes):
    """The special tokens of a loaded vocab: entries that are neither a single byte nor made by a merge.

    GPT-2's files have exactly one: 256 bytes + 50,000 merges + "<|endoftext|>" = 50,257 tokens.
    """
    made = {bytes([b]) for b in range(256)} | {a + b for a, b in merges}
    specials = {}
    for i, token in vocab.items():
        if i in not_bytes or token not in made:
            specials[not_bytes.get(i, token.decode("utf-8", errors="replace"))] = i
    return specials


def load_gpt2_files(vocab_path, merges_path):
    """GPT-2's vocab.json + merges.txt -> (vocab {id: bytes}, merges [(bytes, bytes)], special_tokens {str: id}).
    A bad file is a ValueError naming it (and the line, in merges.txt)."""
    vocab_path, merges_path = Path(vocab_path), Path(merges_path)
    vocab, not_bytes = _vocab_from_strings(read_json_file(vocab_path), str(vocab_path))
    pairs = _read_merges_txt(merges_path)
    merges = _merges_from_pairs(pairs)
    _check_merges_in_vocab(pairs, merges, vocab, str(vocab_path))
    return vocab, merges, _special_tokens(vocab, merges, not_bytes)


def tokenizer_json(vocab, merges, special_tokens):
    """The Hugging Face `tokenizers` description (a dict for tokenizer.json) of a byte-level BPE."""
    strings = _vocab_strings(vocab, special_tokens)
    _check_unique(strings, "tokenizer.json")
    byte_level = {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": True, "use_regex": True}
    return {
        "version": "1.0",
        "truncation": None,
        "padding": None,
        "added_tokens": added_tokens_json(special_tokens),
        "normalizer": None,
        "pre_tokenizer": byte_level,
        "post_processor": None,
        "decoder": byte_level,
        "model": {
            "type": "BPE", "dropout": None, "unk_token": None, "continuing_subword_prefix": None,
            "end_of_word_suffix": None, "fuse_unk": False, "byte_fallback": False, "ignore_merges": False,
            "vocab": {s: i for i, s in sorted(strings.items())},
            "merges": [[token_to_string(a), token_to_string(b)] for a, b in merges],
        },
    }


def _expect(value, expected, what, where):
    if value != expected:
        raise ValueError(f"{where}: {what} is {value!r}; minigpt's BPETokenizer reads only {expected!r} "
                         "(a GPT-2 style byte-level BPE)")


def parse_tokenizer_json(spec, where="tokenizer.json"):
    """A tokenizer.json dict of a GPT-2 style byte-level BPE -> (vocab, merges, special_tokens).

    Anything this tokenizer would not reproduce exactly (a normalizer, a prefix space, a different
    pre-tokenizer, stripping added tokens, BPE dropout, subword prefixes) is refused with a ValueError.
    Older files, GPT-2's own among them, write no model type (a model with merges is a BPE) and write
    the subword prefix and suffix as "" rather than null; both mean the same as here.
    """
    check_json_type(spec, dict, "a tokenizer.json", where)
    if "model" not in spec:
        raise ValueError(f'{where}: no "model"; a tokenizer.json holds the vocab and merges under "model"')
    model = check_json_object(spec, "model", where)
    _expect(model.get("type", "BPE" if "merges" in model else None), "BPE", "the model type", where)
    _expect(spec.get("normalizer"), None, "the normalizer", where)
    pre = check_json_object(spec, "pre_tokenizer", where)
    _expect(pre.get("type"), "ByteLevel", "the pre-tokenizer", where)
    _expect(pre.get("add_prefix_space"), False, "the pre-tokenizer's add_prefix_space", where)
    _expect(pre.get("use_regex", True), True, "the pre-tokenizer's use_regex", where)
    _expect(model.get("dropout"), None, "the model's dropout", where)
    for key in ("continuing_subword_prefix", "end_of_word_suffix"):
        _expect(model.get(key) or None, None, f"the model's {key}", where)
    _expect(model.get("byte_fallback", False), False, "the model's byte_fallback", where)
    _expect(model.get("ignore_merges", False), False, "the model's ignore_merges", where)

    if "vocab" not in model:
        raise ValueError(f'{where}: the model has no "vocab"')
    string_to_id = dict(check_json_type(model["vocab"], dict, 'the model\'s "vocab"', where))
    added_tokens = check_added_tokens(spec.get("added_tokens"), where)
    for added in added_tokens:
        for key in ("lstrip", "rstrip", "single_word"):
            _expect(added.get(key, False), False, f"added token {added['content']!r}'s {key}", where)
        string_to_id.setdefault(added["content"], added["id"])
    vocab, not_bytes = _vocab_from_strings(string_to_id, where)
    pairs = _check_merge_pairs(model.get("merges", []), where)
    merges = _merges_from_pairs(pairs)
    _check_merges_in_vocab(pairs, merges, vocab, "the vocab")
    specials = {a["content"]: a["id"] for a in added_tokens}
    for s, i in _special_tokens(vocab, merges, not_bytes).items():
        specials.setdefault(s, i)
    return vocab, merges, specials
