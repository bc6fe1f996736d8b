"""The character tokenizer (字符级分词): one id per Unicode character (code point) of a fixed alphabet.

ids 0..n-1 are the characters in the order given (from_text: sorted by code point), then the special
tokens, then the unknown token when one is asked for. A character outside the alphabet is a ValueError
naming it, or, with unk_token="<unk>", becomes that token's id (and decodes to "<unk>": the character is lost).

save() writes a tokenizer.json that Hugging Face `tokenizers` also reads: a WordLevel model over the
characters, a pre-tokenizer that splits every character off ([\\s\\S], isolated), and a Fuse decoder.
"""
import json
from pathlib import Path

from minigpt.files import read_json_file
from minigpt.tokenizers.base import (Tokenizer, added_tokens_json, check_added_tokens, check_ids, check_json_object,
                                     check_json_type, check_special_tokens, check_vocab_json, read_texts,
                                     special_splitter, split_specials)

_EVERY_CHARACTER = r"[\s\S]"


class CharTokenizer(Tokenizer):
    """chars: a str or list of distinct characters -> ids 0..len-1; then special_tokens; then unk_token if given."""

    def __init__(self, chars, special_tokens=(), unk_token=None):
        chars = list(chars)
        for c in chars:
            if not isinstance(c, str) or len(c) != 1:
                raise ValueError(f"the alphabet holds single characters, got {c!r}")
        if len(set(chars)) < len(chars):
            repeated = sorted({c for c in chars if chars.count(c) > 1})
            raise ValueError(f"characters must be distinct; repeated: {repeated}")
        specials = check_special_tokens(special_tokens)
        if unk_token is not None and unk_token not in specials:
            specials += check_special_tokens([unk_token])
        clash = sorted(set(specials) & set(chars))
        if clash:
            raise ValueError(f"special token(s) {clash} are also characters of the alphabet")
        self.chars = chars
        self.unk_token = unk_token
        self.special_tokens = {s: len(chars) + k for k, s in enumerate(specials)}
        self._char_id = {c: i for i, c in enumerate(chars)}
        self._id_str = chars + specials
        self._unk_id = None if unk_token is None else self.special_tokens[unk_token]
        self._splitter = special_splitter(specials)

    @classmethod
    def from_text(cls, text_or_files, special_tokens=(), unk_token=None):
        """The alphabet of a text (str, pathlib.Path of a UTF-8 file, or a list of them), sorted by code point.
        Occurrences of special tokens are left out of the alphabet."""
        specials = check_special_tokens(special_tokens)
        splitter = special_splitter(specials)
        chars = set()
        for text in read_texts(text_or_files):
            for piece, is_special in split_specials(text, splitter):
                if not is_special:
                    chars.update(piece)
        if not chars:
            raise ValueError("the text is empty (nothing left once special tokens are removed)")
        return cls(sorted(chars), specials, unk_token)

    @property
    def vocab_size(self):
        return len(self._id_str)

    def __repr__(self):
        return (f"CharTokenizer(vocab_size={self.vocab_size}, special_tokens={list(self.special_tokens)}, "
                f"unk_token={self.unk_token!r})")

    def encode(self, text):
        """str -> list of ids, one per character; special tokens in the text become their ids."""
        if not isinstance(text, str):
            raise ValueError(f"encode expects a str, got {type(text).__name__}")
        ids = []
        for piece, is_special in split_specials(text, self._splitter):
            if is_special:
                ids.append(self.special_tokens[piece])
                continue
            for c in piece:
                i = self._char_id.get(c, self._unk_id)
                if i is None:
                    raise ValueError(f"character {c!r} (U+{ord(c):04X}) is not in this tokenizer's alphabet "
                                     f"of {len(self.chars)} characters; build it from text that has it, "
                                     "or pass unk_token='<unk>'")
                ids.append(i)
        return ids

    def _cut_points(self, buffer):
        return range(len(buffer), 0, -1)               # characters are independent: any point will do

    def decode(self, ids):
        """list of ids -> str (special tokens, the unknown token included, as their strings)."""
        return "".join(self._id_str[i] for i in check_ids(ids, len(self._id_str)))

    # ---------------------------------------------------------------- files
    def to_tokenizer_json(self):
        """The Hugging Face `tokenizers` description (a dict): WordLevel over characters, split every character."""
        return {
            "version": "1.0",
            "truncation": None,
            "padding": None,
            "added_tokens": added_tokens_json(self.special_tokens),
            "normalizer": None,
            "pre_tokenizer": {"type": "Split", "pattern": {"Regex": _EVERY_CHARACTER}, "behavior": "Isolated",
                              "invert": False},
            "post_processor": None,
            "decoder": {"type": "Fuse"},
            # an unknown character is an error unless unk_token is set ("" is never a token: HF errors too)
            "model": {"type": "WordLevel", "vocab": {s: i for i, s in enumerate(self._id_str)},
                      "unk_token": self.unk_token or ""},
        }

    def save(self, directory):
        """Write directory/tokenizer.json; returns the directory."""
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        (directory / "tokenizer.json").write_text(json.dumps(self.to_tokenizer_json(), ensure_ascii=False, indent=1),
                                                  encoding="utf-8")
        return directory

    @classmethod
    def load(cls, path):
        """A folder holding tokenizer.json, or the file itself, as written by save()."""
        path = Path(path)
        if path.is_dir():
            path = path / "tokenizer.json"
        if not path.exists():
            raise ValueError(f"no tokenizer at {path}")
        return cls.from_tokenizer_json(read_json_file(path), str(path))

    @classmethod
    def from_tokenizer_json(cls, spec, where="tokenizer.json"):
        """A tokenizer.json dict as written by save(); anything else is a ValueError that starts with where."""
        check_json_type(spec, dict, "a tokenizer.json", where)
        model, pre = check_json_object(spec, "model", where), check_json_object(spec, "pre_tokenizer", where)
        pattern = pre.get("pattern")
        if (model.get("type") != "WordLevel" or not isinstance(pattern, dict)
                or pattern.get("Regex") != _EVERY_CHARACTER):
            raise ValueError(f"{where} is not a character tokenizer written by CharTokenizer.save "
                             f"(model {model.get('type')!r}, pre-tokenizer {pre.get('type')!r})")
        added = check_added_tokens(spec.get("added_tokens"), where)
        specials = [a["content"] for a in sorted(added, key=lambda a: a["id"])]
        vocab = check_vocab_json(model.get("vocab", {}), where)
        chars = [s for s, _ in sorted(vocab.items(), key=lambda item: item[1]) if s not in specials]
        unk = model.get("unk_token") or None
        try:
            tokenizer = cls(chars, specials, unk)
        except ValueError as err:
            raise ValueError(f"{where}: {err}") from err
        if {s: i for i, s in enumerate(tokenizer._id_str)} != vocab:
            raise ValueError(f"{where}: ids are not laid out as CharTokenizer does (characters, specials, unk)")
        return tokenizer
