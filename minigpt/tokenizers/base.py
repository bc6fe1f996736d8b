"""What every minigpt tokenizer shares: special tokens, id checks, reading text files, streaming encode.

A tokenizer maps text to a list of integer ids and back:
    encode(str) -> list[int]     decode(ids) -> str     vocab_size     special_tokens {str: id}
    encode_iterable(chunks)      a generator of ids for a stream of text chunks (e.g. the lines of a big file)
    save(directory) / load(path)

Special tokens (e.g. "<|endoftext|>") are whole strings: wherever one appears in the text it becomes its own
id, and the text on either side is tokenized separately, so no token ever spans a special token.

Reading tokenizer files: minigpt.files reads them (missing, not UTF-8, not JSON, truncated: one ValueError
that starts with the file's path), and the check_* helpers below turn JSON of the wrong shape into the same
kind of error. Loaders check a whole file before building a tokenizer: none half-loads.
"""
import functools
import operator
import re
from pathlib import Path

from minigpt.data.corpus import corpus_files
from minigpt.files import read_utf8_file


def check_special_tokens(special_tokens):
    """A list of special token strings: each a non-empty str, none repeated."""
    if isinstance(special_tokens, str):
        raise ValueError(f"special_tokens must be a list of strings, got the string {special_tokens!r}; "
                         f"write [{special_tokens!r}]")
    specials = list(special_tokens or ())
    for s in specials:
        if not isinstance(s, str):
            raise ValueError(f"a special token must be a str, got {s!r} ({type(s).__name__})")
        if not s:
            raise ValueError("a special token cannot be the empty string ''")
    repeated = sorted({s for s in specials if specials.count(s) > 1})
    if repeated:
        raise ValueError(f"special tokens must be distinct; repeated: {repeated}")
    return specials


def special_splitter(specials):
    """A compiled regex that finds any special token, the longest first where two start at the same place."""
    if not specials:
        return None
    return re.compile("|".join(re.escape(s) for s in sorted(specials, key=len, reverse=True)))


def split_specials(text, splitter):
    """Yield (piece, is_special) in order: the text between special tokens, and each special token."""
    if splitter is None:
        if text:
            yield text, False
        return
    start = 0
    for match in splitter.finditer(text):
        if match.start() > start:
            yield text[start:match.start()], False
        yield match.group(), True
        start = match.end()
    if start < len(text):
        yield text[start:], False


def as_int(value, what):
    """An integer (Python or NumPy, not bool) as int; anything else is a ValueError naming it."""
    if isinstance(value, bool):
        raise ValueError(f"{what} must be an integer, got {value!r}")
    try:
        return operator.index(value)
    except TypeError:
        raise ValueError(f"{what} must be an integer, got {value!r} ({type(value).__name__})") from None


def check_ids(ids, vocab_size):
    """ids (any iterable of integers, numpy ints included) -> list[int], each in [0, vocab_size)."""
    out = []
    for i in ids:
        i = as_int(i, "a token id")
        if not 0 <= i < vocab_size:
            raise ValueError(f"token id {i} is out of range: this tokenizer's ids are 0..{vocab_size - 1}")
        out.append(i)
    return out


def read_texts(text_or_files):
    """Training input -> list of texts. A str is text; a pathlib.Path is a UTF-8 file or a folder of them
    (every file under it, hidden ones skipped); or a list of any of these."""
    items = [text_or_files] if isinstance(text_or_files, (str, Path)) else list(text_or_files)
    texts = []
    for item in items:
        if isinstance(item, str):
            texts.append(item)
        elif isinstance(item, Path):
            files = corpus_files(item) if item.is_dir() else [item]
            texts.extend(read_utf8_file(f) for f in files)
        else:
            raise ValueError(f"training input must be str (text) or pathlib.Path (a file or folder), "
                             f"got {type(item).__name__}")
    return texts


class Tokenizer:
    """The shared interface. Subclasses set self.special_tokens {str: id} and implement encode, decode,
    vocab_size, save, and _cut_points (where a stream may be cut without changing the ids)."""

    special_tokens: dict

    def encode_iterable(self, chunks):
        """Yield the ids of "".join(chunks), identical to encode, holding only a little text at a time.

        The text is kept in a buffer until a point where cutting cannot change the tokens (for BPE:
        between a non-space and a space, or where letters meet digits or symbols; never inside a
        special token), then everything before that point is encoded and yielded.
        """
        buffer = ""
        for chunk in chunks:
            if not isinstance(chunk, str):
                raise ValueError(f"encode_iterable expects str chunks, got {type(chunk).__name__}")
            buffer += chunk
            cut = self._last_safe_cut(buffer)
            if cut:
                yield from self.encode(buffer[:cut])
                buffer = buffer[cut:]
        if buffer:
            yield from self.encode(buffer)

    @functools.cached_property
    def _special_prefixes(self):
        """Every proper prefix of a special token, and their lengths: text ending in one may continue into it."""
        prefixes = {s[:k] for s in self.special_tokens for k in range(1, len(s))}
        return prefixes, sorted({len(p) for p in prefixes})

    def _last_safe_cut(self, buffer):
        """The last cut point of buffer that no special token straddles (0 if none)."""
        prefixes, lengths = self._special_prefixes
        for cut in self._cut_points(buffer):
            if not any(buffer[max(0, cut - n):cut] in prefixes for n in lengths):
                return cut
        return 0

    def _cut_points(self, buffer):
        """Candidate cut points in buffer, from the last to the first."""
        raise NotImplementedError


def added_tokens_json(special_tokens):
    """The "added_tokens" list of a Hugging Face tokenizer.json: every special token, whole, in id order."""
    return [{"id": i, "content": s, "single_word": False, "lstrip": False, "rstrip": False,
             "normalized": False, "special": True}
            for s, i in sorted(special_tokens.items(), key=lambda item: item[1])]


# ---------------------------------------------------------------- reading tokenizer files
_JSON_KINDS = {dict: "a JSON object {...}", list: "a JSON array [...]", str: "a string"}


def json_kind(value):
    """What a JSON value is, for error messages: 'a JSON array', 'the number 1.5', 'null', ..."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, (int, float)):
        return f"the number {value!r}"
    if isinstance(value, str):
        return f"the string {value[:40]!r}" + ("..." if len(value) > 40 else "")
    return "a JSON array" if isinstance(value, list) else "a JSON object"


def check_json_type(value, kind, what, where):
    """value, when it is of the JSON kind (dict, list or str); otherwise a ValueError naming what and where."""
    if not isinstance(value, kind):
        raise ValueError(f"{where}: {what} must be {_JSON_KINDS[kind]}, got {json_kind(value)}")
    return value


def check_json_object(spec, key, where):
    """spec[key] when it is a JSON object, {} when it is missing or null; anything else is a ValueError."""
    value = spec.get(key)
    return {} if value is None else check_json_type(value, dict, f'"{key}"', where)


def check_json_id(value, what, where):
    """A token id read from a file: a JSON integer (not true/false, not 1.0)."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValueError(f"{where}: {what} must be an integer id, got {json_kind(value)}")
    return value


def check_vocab_json(vocab, where):
    """A vocab read from a file: a JSON object {token string: id}, each id an integer used once, together 0..n-1."""
    check_json_type(vocab, dict, "the vocab", where)
    owner = {}                                          # id -> the token string that has it
    for s, i in vocab.items():
        check_json_id(i, f"the id of {s!r}", where)
        if i in owner:
            raise ValueError(f"{where}: id {i} is given to two tokens, {owner[i]!r} and {s!r}")
        owner[i] = s
    missing = sorted(set(range(len(owner))) - set(owner))
    if missing:
        raise ValueError(f"{where}: token ids must be 0..{len(owner) - 1} with none missing or repeated; "
                         f"missing {missing[:5]}")
    return vocab


def check_added_tokens(added_tokens, where):
    """The "added_tokens" of a tokenizer.json: a list of objects, each with a string "content" and an integer "id"."""
    if added_tokens is None:
        return []
    check_json_type(added_tokens, list, '"added_tokens"', where)
    for n, added in enumerate(added_tokens):
        check_json_type(added, dict, f"added token {n}", where)
        for key in ("content", "id"):
            if key not in added:
                raise ValueError(f'{where}: added token {n} has no "{key}"')
        check_json_type(added["content"], str, f'added token {n}\'s "content"', where)
        check_json_id(added["id"], f"the id of added token {added['content']!r}", where)
    return added_tokens
