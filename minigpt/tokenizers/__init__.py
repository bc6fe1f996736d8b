"""Tokenizers (分词器): text <-> ids.

    CharTokenizer   one id per character, built from a text
    BPETokenizer    byte-level BPE like GPT-2: train, encode, decode, GPT-2's files and Hugging Face's tokenizer.json

Both: encode(str) -> list[int], decode(ids) -> str, vocab_size, special_tokens {str: id},
encode_iterable(chunks) (streaming), save(directory), load(path). load(path) below picks the class.
"""
from pathlib import Path

from minigpt.files import read_json_file
from minigpt.tokenizers.bpe import BPETokenizer
from minigpt.tokenizers.char import CharTokenizer
from minigpt.tokenizers.gpt2 import GPT2_PATTERN, bytes_to_unicode

__all__ = ["BPETokenizer", "CharTokenizer", "GPT2_PATTERN", "bytes_to_unicode", "load"]


def load(path):
    """The tokenizer saved at path (a folder or a tokenizer.json): CharTokenizer or BPETokenizer."""
    path = Path(path)
    file = path / "tokenizer.json" if path.is_dir() else path
    if file.exists() and _model_type(read_json_file(file)) == "WordLevel":
        return CharTokenizer.load(file)
    return BPETokenizer.load(path)


def _model_type(spec):
    """The "model" "type" of a tokenizer.json, or None where there is none (the loader then says what is wrong)."""
    model = spec.get("model") if isinstance(spec, dict) else None
    return model.get("type") if isinstance(model, dict) else None
