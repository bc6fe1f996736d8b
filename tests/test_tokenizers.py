"""Tokenizers: round trips (hypothesis), BPE training against a naive oracle, GPT-2 / Hugging Face parity, bad input."""
import io
import itertools
import json
import re
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import regex
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from minigpt.data import load_corpus
from minigpt.tokenizers import BPETokenizer, CharTokenizer, GPT2_PATTERN, bytes_to_unicode, load

EOT = "<|endoftext|>"
CHINESE = "今天天气很好。我们去公园散步吧！自然语言处理很有趣。"
CODE = 'def add(a, b):\n    """Add two numbers."""\n    return a + b  # 1 + 2 == 3\n\n\nprint(add(40, 2))\n'

# Text that stresses pre-tokenization: contractions, digit runs, space and newline runs, code, Chinese,
# emoji (4-byte UTF-8), combining marks, symbols, special tokens.
SAMPLES = [
    "",
    "Hello, world! It's 2024 and we're testing GPT-2's tokenizer; they'll see.",
    CODE,
    CHINESE,
    "今天天气很好",
    "emoji 😀👍🏽 family 👨‍👩‍👧 and flags 🇨🇳🇺🇸",
    "combining e\u0301 a\u0308 n\u0303 and precomposed é ä ñ",
    "digits 1234567890 3.14159 1,000,000 2024-01-01 0x1F",
    "   leading spaces\n\n\n   \t\ttabs\r\n windows  \n \n trailing   ",
    f"one{EOT}two {EOT} three{EOT}{EOT}\n{EOT}",
    "<|endoftext partial <|endoftext|",
    "symbols !@#$%^&*()_+-=[]{}|;':\",./<>?`~ «guillemets» — dash … ellipsis",
]

texts = st.one_of(
    st.text(),
    st.lists(st.sampled_from(list("ab 今天气很好\n\t'sé\u0301😀1,.<|>") + ["'s", "'ll", EOT, "  ", "\r\n"]))
    .map("".join),
)


@pytest.fixture(scope="module")
def corpus():
    return load_corpus("builtin")[:150_000] + "\n" + CHINESE * 3 + "\n" + CODE + EOT + "The end."


@pytest.fixture(scope="module")
def bpe(corpus):
    return BPETokenizer.train(corpus, vocab_size=420, special_tokens=[EOT, "<|im_start|>"])


@pytest.fixture(scope="module")
def saved(bpe, tmp_path_factory):
    return bpe.save(tmp_path_factory.mktemp("bpe"))


# ---------------------------------------------------------------- a naive BPE, the oracle for training
def naive_merges(text, n_merges, specials):
    """The textbook algorithm: recount every pair every time, take the most frequent, greatest bytes on a tie."""
    pieces = re.split("|".join(map(re.escape, specials)), text) if specials else [text]
    words = Counter()
    for piece in pieces:
        for w in regex.findall(GPT2_PATTERN, piece):
            words[tuple(bytes([b]) for b in w.encode("utf-8"))] += 1
    merges = []
    for _ in range(n_merges):
        pairs = Counter()
        for w, f in words.items():
            for p in zip(w, w[1:]):
                pairs[p] += f
        if not pairs:
            break
        best = max(pairs, key=lambda p: (pairs[p], p))
        merges.append(best)
        merged = Counter()
        for w, f in words.items():
            out, i = [], 0
            while i < len(w):
                if w[i:i + 2] == best:
                    out.append(best[0] + best[1])
                    i += 2
                else:
                    out.append(w[i])
                    i += 1
            merged[tuple(out)] += f
        words = merged
    return merges


def test_bpe_train_matches_naive_reference(corpus):
    text = corpus[:30000]
    tok = BPETokenizer.train(text, vocab_size=256 + 120 + 1, special_tokens=[EOT])
    assert tok.merges == naive_merges(text, 120, [EOT])


@settings(max_examples=150, deadline=None)
@given(pieces=st.lists(st.sampled_from(["a", "b", "aa", "ab", "ba", " ", " a", "\n", "今", "😀", "1", EOT]),
                       min_size=1, max_size=80),
       n_merges=st.integers(1, 25))
def test_bpe_train_matches_naive_on_small_texts(pieces, n_merges):
    # tiny alphabets make many ties and overlapping pairs ("aaa"), where incremental counting goes wrong first
    text = "".join(pieces)
    assume(text.replace(EOT, ""))
    tok = BPETokenizer.train(text, 256 + n_merges + 1, [EOT])
    assert tok.merges == naive_merges(text, n_merges, [EOT])


def test_bpe_train_is_deterministic(corpus):
    half = len(corpus) // 2
    a = BPETokenizer.train([corpus[:half], corpus[half:]], 400, [EOT])
    b = BPETokenizer.train([corpus[half:], corpus[:half]], 400, [EOT])   # same counts, other dict order
    assert a.merges == b.merges and a.vocab == b.vocab
    assert a.encode(corpus[:5000]) == b.encode(corpus[:5000])


def test_bpe_tie_goes_to_greatest_pair():
    # every pair occurs once: (b"c", b"d") > (b"a", b"b") > (b" ", b"c") as byte strings
    tok = BPETokenizer.train("ab cd", 256 + 3)
    assert tok.merges == [(b"c", b"d"), (b"a", b"b"), (b" ", b"cd")]


def test_bpe_frequency_beats_tie_break():
    tok = BPETokenizer.train("ab ab ab zz", 256 + 1)
    assert tok.merges == [(b"a", b"b")]                # 3 x (a, b) beats 1 x (z, z)


def test_bpe_ids_bytes_then_merges_then_specials(bpe):
    assert [bpe.vocab[i] for i in range(256)] == [bytes([b]) for b in range(256)]
    assert [bpe.vocab[256 + k] for k in range(len(bpe.merges))] == [a + b for a, b in bpe.merges]
    n = 256 + len(bpe.merges)
    assert bpe.special_tokens == {EOT: n, "<|im_start|>": n + 1}
    assert bpe.vocab_size == 420 == n + 2


def test_bpe_never_merges_across_pretokens():
    tok = BPETokenizer.train("ab " * 200 + "\n" * 50, 256 + 10)
    for token in tok.vocab.values():
        if len(token) > 1:                             # one whole pre-token, or a piece of one
            assert len(regex.findall(GPT2_PATTERN, token.decode())) == 1, token
    assert all(b"b " not in t for t in tok.vocab.values())


def test_bpe_specials_kept_whole(bpe):
    assert all(b"<|" not in bpe.vocab[i] for i in range(256, 256 + len(bpe.merges)))
    eot = bpe.special_tokens[EOT]
    assert bpe.encode(EOT) == [eot]
    assert bpe.encode(f"a{EOT}b") == bpe.encode("a") + [eot] + bpe.encode("b")
    assert bpe.encode("<|endoftext|") == bpe.encode("<|") + bpe.encode("endoftext") + bpe.encode("|")
    assert bpe.decode([eot]) == EOT


def test_bpe_longest_special_wins():
    tok = BPETokenizer.train("some text", 260, ["<|a|>", "<|a|><|b|>"])
    assert tok.encode("<|a|><|b|><|a|>") == [tok.special_tokens["<|a|><|b|>"], tok.special_tokens["<|a|>"]]


def test_bpe_compresses(bpe, corpus):
    ids = bpe.encode(corpus)
    assert len(ids) < 0.6 * len(corpus.encode("utf-8"))


@pytest.mark.parametrize("text", SAMPLES)
def test_bpe_round_trip_samples(bpe, text):
    assert bpe.decode(bpe.encode(text)) == text


@settings(max_examples=200, deadline=None)
@given(text=texts)
def test_bpe_round_trip_any_text(bpe, text):
    assert bpe.decode(bpe.encode(text)) == text


@settings(max_examples=100, deadline=None)
@given(data=st.binary(max_size=40))
def test_bpe_decode_invalid_utf8_replaces(bpe, data):
    assert bpe.decode(list(data)) == data.decode("utf-8", errors="replace")   # ids 0..255 are the bytes


@settings(max_examples=150, deadline=None)
@given(data=st.data())
def test_bpe_decode_any_ids_matches_hf(bpe, saved, hf_tokenizers, data):
    # any id sequence (cut multi-byte characters, specials, stray continuation bytes) decodes, never raises,
    # and replaces invalid UTF-8 exactly as Hugging Face's ByteLevel decoder does
    ids = data.draw(st.lists(st.one_of(st.integers(0, bpe.vocab_size - 1), st.integers(0x80, 0xFF)), max_size=12))
    hf = hf_tokenizers.Tokenizer.from_file(str(Path(saved) / "tokenizer.json"))
    assert bpe.decode(ids) == hf.decode(ids, skip_special_tokens=False)


def test_bpe_decode_bytes_for_streaming(bpe):
    ids = bpe.encode("天气 ok")
    assert bpe.decode_bytes(ids) == "天气 ok".encode("utf-8")
    assert b"".join(bpe.decode_bytes([i]) for i in ids).decode("utf-8") == "天气 ok"


def test_bpe_decode_invalid_utf8_examples(bpe):
    first_byte_of_jin = "今".encode()[0]
    assert bpe.decode([first_byte_of_jin]) == "\ufffd"
    assert bpe.decode([ord("a"), 0xFF, ord("b")]) == "a\ufffdb"
    assert bpe.decode(np.array([104, 105], dtype=np.int64)) == "hi"


@settings(max_examples=100, deadline=None)
@given(text=texts, sizes=st.lists(st.integers(1, 7), min_size=1, max_size=5))
def test_bpe_encode_iterable_equals_encode(bpe, text, sizes):
    chunks, start = [], 0
    for size in itertools.cycle(sizes):
        if start >= len(text):
            break
        chunks.append(text[start:start + size])
        start += size
    assert list(bpe.encode_iterable(chunks)) == bpe.encode(text)


def test_bpe_encode_iterable_lines_and_laziness(bpe, corpus):
    assert list(bpe.encode_iterable(io.StringIO(corpus))) == bpe.encode(corpus)

    def lines_then_fail():
        yield "first line of text\n"
        yield "second line\n"
        raise AssertionError("encode_iterable read further than it needed")

    first = list(itertools.islice(bpe.encode_iterable(lines_then_fail()), 3))
    assert first == bpe.encode("first line of text")[:3]


def test_bpe_encode_iterable_holds_little_text(bpe, corpus):
    # bounded memory: at every yielded id, the text read but not yet yielded is about one line, never the stream
    lines = corpus.splitlines(keepends=True)
    read = [0]                                          # bytes of text taken from the stream so far

    def stream():
        for line in lines:
            read[0] += len(line.encode("utf-8"))
            yield line

    yielded, most_held = 0, 0
    for i in bpe.encode_iterable(stream()):
        yielded += len(bpe.decode_bytes([i]))
        most_held = max(most_held, read[0] - yielded)
    longest_line = max(len(line.encode("utf-8")) for line in lines)
    assert yielded == len(corpus.encode("utf-8")) and most_held <= 2 * longest_line


def test_bpe_cache_is_bounded(corpus):
    trained = BPETokenizer.train(corpus[:20000], 300)
    tok = BPETokenizer(trained.vocab, trained.merges, cache_size=50)
    ids = tok.encode(corpus)
    assert len(tok._cache) <= 50
    assert ids == trained.encode(corpus)


# ---------------------------------------------------------------- GPT-2's files and tokenizer.json
def test_gpt2_byte_map():
    m = bytes_to_unicode()
    assert sorted(m) == list(range(256)) and len(set(m.values())) == 256
    assert m[ord(" ")] == "Ġ" and m[ord("\n")] == "Ċ" and m[ord("a")] == "a" and m[ord("!")] == "!"
    assert all(c.isprintable() and not c.isspace() for c in m.values())


def test_bpe_save_load_round_trip(bpe, saved):
    assert {p.name for p in Path(saved).iterdir()} >= {"vocab.json", "merges.txt", "tokenizer.json"}
    merges_txt = (Path(saved) / "merges.txt").read_text(encoding="utf-8").splitlines()
    assert merges_txt[0].startswith("#version") and len(merges_txt) == 1 + len(bpe.merges)
    assert json.loads((Path(saved) / "vocab.json").read_text(encoding="utf-8"))[EOT] == bpe.special_tokens[EOT]
    for loaded in (BPETokenizer.load(saved), BPETokenizer.load(Path(saved) / "tokenizer.json"),
                   BPETokenizer.from_gpt2_files(Path(saved) / "vocab.json", Path(saved) / "merges.txt"), load(saved)):
        assert loaded.vocab == bpe.vocab and loaded.merges == bpe.merges
        assert loaded.special_tokens == bpe.special_tokens
        assert all(loaded.encode(s) == bpe.encode(s) for s in SAMPLES)


def test_gpt2_layout_ids_come_from_vocab_json(tmp_path):
    """GPT-2's files do not put byte b at id b: "!" is 0 and the space byte is 220. Build such files by hand."""
    m = bytes_to_unicode()
    strings = sorted(m.values())                     # GPT-2's id order: printable bytes first, shifted ones last
    vocab = {s: i for i, s in enumerate(strings)}
    vocab.update({"Ġt": 256, "he": 257, "Ġthe": 258, EOT: 259})
    (tmp_path / "vocab.json").write_text(json.dumps(vocab, ensure_ascii=False), encoding="utf-8")
    (tmp_path / "merges.txt").write_text("#version: 0.2\nĠ t\nh e\nĠt he\n", encoding="utf-8")
    tok = BPETokenizer.from_gpt2_files(tmp_path / "vocab.json", tmp_path / "merges.txt")
    assert tok.special_tokens == {EOT: 259}
    assert tok.encode(" the") == [258]
    assert tok.encode("!") == [0] and tok.encode(" ") == [220] and tok.encode("\n") == [198]
    assert tok.encode(f"he{EOT}") == [257, 259]
    assert tok.decode([258, 259, 0]) == f" the{EOT}!"


def test_bpe_repeated_merge_takes_its_last_rank(tmp_path):
    """merges "a b", "b c", "a b": like GPT-2's encoder.py (a dict of merge -> rank), the repeat's rank 2 counts,
    so in "abc" the pair (b, c) (rank 1) merges first."""
    vocab = {s: i for i, s in enumerate(sorted(bytes_to_unicode().values()))}
    vocab.update({"ab": 256, "bc": 257})
    (tmp_path / "vocab.json").write_text(json.dumps(vocab), encoding="utf-8")
    (tmp_path / "merges.txt").write_text("#version: 0.2\na b\nb c\na b\n", encoding="utf-8")
    tok = BPETokenizer.from_gpt2_files(tmp_path / "vocab.json", tmp_path / "merges.txt")
    assert tok.encode("abc") == [vocab["a"], 257] and tok.encode("ab") == [256]


def test_bpe_refuses_tokenizer_json_it_would_not_reproduce(saved, tmp_path):
    spec = json.loads((Path(saved) / "tokenizer.json").read_text(encoding="utf-8"))
    spec["pre_tokenizer"]["add_prefix_space"] = True
    (tmp_path / "tokenizer.json").write_text(json.dumps(spec), encoding="utf-8")
    with pytest.raises(ValueError, match="add_prefix_space"):
        BPETokenizer.load(tmp_path)


def gpt2_hub_style(spec):
    """Rewrite a tokenizer.json the way GPT-2's own file on the Hugging Face hub is written (2020's format):
    no model type, "" for the subword prefix and suffix, merges as "a b" strings, a ByteLevel post-processor."""
    model = spec["model"]
    spec["model"] = {"dropout": None, "unk_token": None, "continuing_subword_prefix": "", "end_of_word_suffix": "",
                     "fuse_unk": False, "vocab": model["vocab"], "merges": [" ".join(m) for m in model["merges"]]}
    spec["pre_tokenizer"] = {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": True}
    spec["post_processor"] = {"type": "ByteLevel", "add_prefix_space": True, "trim_offsets": False}
    for added in spec["added_tokens"]:
        added["normalized"] = True
    return spec


def test_bpe_loads_gpt2_hub_style_tokenizer_json(bpe, saved, tmp_path):
    spec = gpt2_hub_style(json.loads((Path(saved) / "tokenizer.json").read_text(encoding="utf-8")))
    (tmp_path / "tokenizer.json").write_text(json.dumps(spec), encoding="utf-8")
    loaded = BPETokenizer.load(tmp_path)
    assert loaded.vocab == bpe.vocab and loaded.merges == bpe.merges and loaded.special_tokens == bpe.special_tokens
    spec["model"]["continuing_subword_prefix"] = "##"
    (tmp_path / "tokenizer.json").write_text(json.dumps(spec), encoding="utf-8")
    with pytest.raises(ValueError, match="continuing_subword_prefix is '##'"):
        BPETokenizer.load(tmp_path)


@pytest.fixture(scope="module")
def hf_tokenizers():
    return pytest.importorskip("tokenizers", reason="Hugging Face tokenizers is not installed (extra: parity)")


def test_bpe_matches_hf_bytelevel_bpe(bpe, saved, hf_tokenizers):
    from_gpt2_files = hf_tokenizers.ByteLevelBPETokenizer(str(Path(saved) / "vocab.json"),
                                                          str(Path(saved) / "merges.txt"))
    from_gpt2_files.add_special_tokens(list(bpe.special_tokens))
    from_json = hf_tokenizers.Tokenizer.from_file(str(Path(saved) / "tokenizer.json"))
    for text in SAMPLES:
        ids = bpe.encode(text)
        assert from_gpt2_files.encode(text).ids == ids, text
        assert from_json.encode(text).ids == ids, text
        assert from_json.decode(ids, skip_special_tokens=False) == text


def test_bpe_repeated_merge_matches_hf(hf_tokenizers, tmp_path):
    vocab = {s: i for i, s in enumerate(sorted(bytes_to_unicode().values()))}
    vocab.update({"ab": 256, "bc": 257, "abc": 258})
    (tmp_path / "vocab.json").write_text(json.dumps(vocab), encoding="utf-8")
    (tmp_path / "merges.txt").write_text("#version: 0.2\na b\nb c\na bc\na b\n", encoding="utf-8")
    hf = hf_tokenizers.ByteLevelBPETokenizer(str(tmp_path / "vocab.json"), str(tmp_path / "merges.txt"))
    tok = BPETokenizer.from_gpt2_files(tmp_path / "vocab.json", tmp_path / "merges.txt")
    for text in ["abc", "ab bc abcabc", "aabbcc", "cab"]:
        assert tok.encode(text) == hf.encode(text).ids, text


def test_bpe_matches_hf_on_gpt2_hub_style_file(bpe, saved, hf_tokenizers, tmp_path):
    spec = gpt2_hub_style(json.loads((Path(saved) / "tokenizer.json").read_text(encoding="utf-8")))
    (tmp_path / "tokenizer.json").write_text(json.dumps(spec), encoding="utf-8")
    hf = hf_tokenizers.Tokenizer.from_file(str(tmp_path / "tokenizer.json"))
    for text in SAMPLES:
        assert hf.encode(text).ids == BPETokenizer.load(tmp_path).encode(text) == bpe.encode(text), text


@settings(max_examples=150, deadline=None)
@given(text=texts)
def test_bpe_matches_hf_on_any_text(bpe, saved, hf_tokenizers, text):
    hf = hf_tokenizers.Tokenizer.from_file(str(Path(saved) / "tokenizer.json"))
    assert hf.encode(text).ids == bpe.encode(text)


def test_bpe_loads_hf_trained_tokenizer(hf_tokenizers, corpus, tmp_path):
    """A tokenizer.json / vocab.json that HF trained: specials first, bytes in GPT-2's order, its own merges."""
    hf = hf_tokenizers.ByteLevelBPETokenizer()
    hf.train_from_iterator([corpus], vocab_size=500, special_tokens=[EOT], show_progress=False)
    hf.save(str(tmp_path / "tokenizer.json"))
    hf.save_model(str(tmp_path))
    for tok in (BPETokenizer.load(tmp_path / "tokenizer.json"),
                BPETokenizer.from_gpt2_files(tmp_path / "vocab.json", tmp_path / "merges.txt")):
        assert tok.special_tokens == {EOT: 0}
        for text in SAMPLES + [corpus[:3000]]:
            assert tok.encode(text) == hf.encode(text).ids, text
            assert tok.decode(tok.encode(text)) == text


def test_bpe_matches_transformers_gpt2_tokenizer(bpe, saved, tmp_path):
    transformers = pytest.importorskip("transformers", reason="transformers is not installed (extra: parity)")
    gpt2_only = tmp_path / "gpt2_files"                 # just vocab.json + merges.txt, as GPT-2 shipped them
    gpt2_only.mkdir()
    for name in ("vocab.json", "merges.txt"):
        (gpt2_only / name).write_bytes((Path(saved) / name).read_bytes())
    for folder in (gpt2_only, saved):
        hf = transformers.GPT2TokenizerFast.from_pretrained(str(folder))
        hf.add_special_tokens({"additional_special_tokens": ["<|im_start|>"]})
        for text in SAMPLES:
            assert hf.encode(text) == bpe.encode(text), (folder.name, text)


# ---------------------------------------------------------------- CharTokenizer
def test_char_ids_sorted_then_specials_then_unk():
    tok = CharTokenizer.from_text(f"banana{EOT}cab", [EOT], unk_token="<unk>")
    assert tok.chars == ["a", "b", "c", "n"]
    assert tok.special_tokens == {EOT: 4, "<unk>": 5} and tok.vocab_size == 6
    assert tok.encode(f"cab{EOT}") == [2, 0, 1, 4]
    assert tok.encode("cat") == [2, 0, 5] and tok.decode([2, 0, 5]) == "ca<unk>"


def test_char_unknown_character_names_it():
    tok = CharTokenizer.from_text("abc")
    with pytest.raises(ValueError, match=r"'好' \(U\+597D\)"):
        tok.encode("ab好")


@settings(max_examples=200, deadline=None)
@given(text=texts)
def test_char_round_trip_any_text(text):
    tok = CharTokenizer.from_text(text + "x", special_tokens=[EOT])
    assert tok.decode(tok.encode(text)) == text
    assert list(tok.encode_iterable([text[:3], text[3:7], text[7:]])) == tok.encode(text)


@pytest.mark.parametrize("text", [s for s in SAMPLES if s])
def test_char_round_trip_samples(text):
    tok = CharTokenizer.from_text(text)
    assert tok.decode(tok.encode(text)) == text and len(tok.encode(text)) == len(text)


def test_char_save_load(tmp_path, hf_tokenizers):
    tok = CharTokenizer.from_text(CHINESE + CODE + SAMPLES[5], [EOT], unk_token="<unk>")
    tok.save(tmp_path)
    for loaded in (CharTokenizer.load(tmp_path), load(tmp_path), load(tmp_path / "tokenizer.json")):
        assert isinstance(loaded, CharTokenizer)
        assert loaded.chars == tok.chars and loaded.special_tokens == tok.special_tokens
    hf = hf_tokenizers.Tokenizer.from_file(str(tmp_path / "tokenizer.json"))
    text = f"今天 return{EOT}😀 é x"
    assert hf.encode(text).ids == tok.encode(text)
    assert hf.decode(tok.encode(text), skip_special_tokens=False) == tok.decode(tok.encode(text))


# ---------------------------------------------------------------- bad input
@pytest.mark.parametrize("make, match", [
    (lambda: BPETokenizer.train("hello", 256, [EOT]), r"vocab_size 256 is too small.*257"),
    (lambda: BPETokenizer.train("hello", 100), r"vocab_size 100 is too small"),
    (lambda: BPETokenizer.train("hello", 300, [""]), "empty string"),
    (lambda: BPETokenizer.train("hello", 300, EOT), "list of strings"),
    (lambda: BPETokenizer.train("hello", 300, [EOT, EOT]), "repeated"),
    (lambda: BPETokenizer.train("", 300), "training text is empty"),
    (lambda: BPETokenizer.train(EOT * 3, 300, [EOT]), "training text is empty"),
    (lambda: BPETokenizer.train("hello", 300.5), "vocab_size must be an integer"),
    (lambda: CharTokenizer.from_text(""), "text is empty"),
    (lambda: CharTokenizer.from_text("abc", [""]), "empty string"),
    (lambda: CharTokenizer(["a", "a"]), "repeated"),
    (lambda: CharTokenizer(["a", "bc"]), "single characters"),
])
def test_bad_input_names_the_problem(make, match):
    with pytest.raises(ValueError, match=match):
        make()


def test_bad_file_not_utf8(tmp_path):
    path = tmp_path / "latin1.txt"
    path.write_bytes("café".encode("latin-1"))
    for make in (BPETokenizer.train, lambda p, n: CharTokenizer.from_text(p)):
        with pytest.raises(ValueError, match=r"latin1.txt: not UTF-8 text: byte offset 3"):
            make(path, 300)


def test_train_from_files_and_folders(tmp_path, corpus):
    (tmp_path / "a.txt").write_text(corpus[:10000], encoding="utf-8")
    (tmp_path / "b.txt").write_text(corpus[10000:20000], encoding="utf-8")
    from_texts = BPETokenizer.train([corpus[:10000], corpus[10000:20000]], 300).merges
    assert BPETokenizer.train([tmp_path / "a.txt", tmp_path / "b.txt"], 300).merges == from_texts
    assert BPETokenizer.train(tmp_path, 300).merges == from_texts


@pytest.mark.parametrize("tok", [BPETokenizer.train("hello world", 260), CharTokenizer.from_text("hello world")],
                         ids=["bpe", "char"])
def test_decode_bad_ids_name_the_id(tok):
    n = tok.vocab_size
    with pytest.raises(ValueError, match=rf"token id {n} is out of range.*0\.\.{n - 1}"):
        tok.decode([0, n])
    with pytest.raises(ValueError, match="token id -1 is out of range"):
        tok.decode([-1])
    with pytest.raises(ValueError, match="must be an integer, got 1.5"):
        tok.decode([1.5])
    with pytest.raises(ValueError, match="expects a str"):
        tok.encode(b"bytes")


def test_bpe_surrogate_is_a_value_error(bpe):
    with pytest.raises(ValueError, match="surrogates not allowed"):
        bpe.encode("a\ud800b")


# ---------------------------------------------------------------- bad tokenizer files
def edit_json(change):
    """A file edit: parse the JSON, let change(spec) edit it in place, write it back."""
    def edit(data):
        spec = json.loads(data)
        change(spec)
        return json.dumps(spec, ensure_ascii=False).encode("utf-8")
    return edit


def replace_json(make):
    """A file edit: parse the JSON, write make(spec) instead."""
    return lambda data: json.dumps(make(json.loads(data)), ensure_ascii=False).encode("utf-8")


def cut_at(fraction):
    """A file edit: truncate at the first comma after that fraction of the file (never inside a character)."""
    return lambda data: data[:data.index(b",", int(len(data) * fraction))]


def edit_lines(change):
    """A file edit on the lines of merges.txt: change(lines) edits the list in place."""
    def edit(data):
        lines = data.decode("utf-8").split("\n")
        change(lines)
        return "\n".join(lines).encode("utf-8")
    return edit


def cut_inside_last_character(data):
    """The file cut between the two bytes of its last "Ġ" (U+0120, UTF-8 c4 a0): truncated mid-character."""
    return data[:data.rindex("Ġ".encode("utf-8")) + 1]


def cut_after_first_token_of_last_line(data):
    """The file cut just before the space of its last merge line: the line keeps only one token."""
    return data[:data.rstrip(b"\n").rindex(b" ")]


GARBAGE = bytes([0x89, 0x50, 0x4E, 0x47, 0x0D, 0x0A, 0x1A, 0x0A, 0x00, 0xFF, 0xFE, 0x80]) * 8
NOT_UTF8 = (r"not UTF-8 text: byte offset \d+", UnicodeDecodeError)
NOT_JSON = (r"not valid JSON: .* \(line \d+, column \d+\)", json.JSONDecodeError)
TRUNCATED_JSON = (r"not valid JSON: .*is the file truncated\?", json.JSONDecodeError)


def second_token_unknown(spec):
    spec["model"]["merges"][0] = ["Ġ", "zzqqxx"]


def duplicate_id(spec):
    vocab = spec["model"]["vocab"]
    vocab["zzqqxx"] = vocab["a"]


@pytest.mark.parametrize("edit, match, cause", [
    (cut_at(0.5), *TRUNCATED_JSON),
    (lambda data: data.rstrip()[:-1], *TRUNCATED_JSON),
    (lambda data: GARBAGE, *NOT_UTF8),
    (lambda data: b"", "the file is empty", None),
    (lambda data: b"vocab: {a: 1}", *NOT_JSON),
    (replace_json(lambda spec: [spec]), "a tokenizer.json must be a JSON object .*got a JSON array", None),
    (edit_json(lambda spec: spec.pop("model")), 'no "model"', None),
    (replace_json(lambda spec: {**spec, "model": ["BPE"]}), '"model" must be a JSON object .*got a JSON array', None),
    (edit_json(lambda spec: spec["model"].pop("vocab")), 'the model has no "vocab"', None),
    (edit_json(lambda spec: spec["model"].update(vocab=["a", "b"])), '"vocab" must be a JSON object', None),
    (edit_json(lambda spec: spec["model"]["vocab"].update(a="3")),
     "the id of 'a' must be an integer id, got the string '3'", None),
    (edit_json(lambda spec: spec["model"]["vocab"].update(a=3.0)),
     "the id of 'a' must be an integer id, got the number 3.0", None),
    (edit_json(duplicate_id), r"id \d+ is given to two tokens, 'a' and 'zzqqxx'", None),
    (edit_json(lambda spec: spec["model"]["vocab"].update(zzqqxx=100_000)),
     r"token ids must be 0\.\.\d+ with none missing", None),
    (edit_json(lambda spec: spec["model"].update(merges=[["Ġ", "t", "he"]])), r"merge 1 must be two tokens", None),
    (edit_json(lambda spec: spec["model"].update(merges=["Ġt"])), r"merge 1 must be two tokens", None),
    (edit_json(second_token_unknown),
     r"merge 1 \('Ġ' 'zzqqxx'\): the second token 'zzqqxx' is not in the vocab", None),
    (edit_json(lambda spec: spec["model"]["merges"].insert(0, ["好", "t"])), r"merge 1 .* outside GPT-2's byte map",
     None),
    (edit_json(lambda spec: spec.update(added_tokens={"<|endoftext|>": 1})), '"added_tokens" must be a JSON array',
     None),
    (edit_json(lambda spec: spec["added_tokens"][0].pop("id")), 'added token 0 has no "id"', None),
])
def test_bad_tokenizer_json_names_file_and_problem(saved, tmp_path, edit, match, cause):
    path = tmp_path / "tokenizer.json"
    path.write_bytes(edit((Path(saved) / "tokenizer.json").read_bytes()))
    for read in (BPETokenizer.load, BPETokenizer.from_tokenizer_json, load):
        with pytest.raises(ValueError, match=match) as info:
            read(path)
        assert str(info.value).startswith(f"{path}: "), str(info.value)
        assert isinstance(info.value.__cause__, cause) if cause else info.value.__cause__ is None


@pytest.mark.parametrize("name, edit, match, cause", [
    ("vocab.json", cut_at(0.3), *TRUNCATED_JSON),
    ("vocab.json", lambda data: GARBAGE, *NOT_UTF8),
    ("vocab.json", replace_json(lambda vocab: list(vocab)),
     "the vocab must be a JSON object .*got a JSON array", None),
    ("vocab.json", edit_json(lambda vocab: vocab.update(a=None)), "the id of 'a' must be an integer id, got null",
     None),
    ("vocab.json", edit_json(lambda vocab: vocab.update(a=True)), "the id of 'a' must be an integer id, got true",
     None),
    ("vocab.json", edit_json(lambda vocab: vocab.pop("Ġ")), r"token ids must be 0\.\.\d+ with none missing", None),
    ("merges.txt", cut_after_first_token_of_last_line, r"merges.txt:\d+: a merge line is two tokens", None),
    ("merges.txt", cut_inside_last_character, r"not UTF-8 text: .*\(unexpected end of data\)", UnicodeDecodeError),
    ("merges.txt", lambda data: GARBAGE, *NOT_UTF8),
    ("merges.txt", edit_lines(lambda lines: lines.insert(2, "Ġ t he")),
     r"merges.txt:3: a merge line is two tokens separated by one space, got 'Ġ t he'", None),
    ("merges.txt", edit_lines(lambda lines: lines.insert(2, "Ġt ")),
     r"merges.txt:3: a merge line is two tokens", None),
    ("merges.txt", edit_lines(lambda lines: lines.insert(2, "Ġ zzqqxx")),
     r"merges.txt:3: merge \('Ġ' 'zzqqxx'\): the second token 'zzqqxx' is not in .*vocab.json", None),
    ("merges.txt", edit_lines(lambda lines: lines.insert(2, "q z")),
     r"merges.txt:3: merge \('q' 'z'\): the merged token 'qz' is not in .*vocab.json", None),
])
def test_bad_gpt2_files_name_file_and_problem(saved, tmp_path, name, edit, match, cause):
    for file in ("vocab.json", "merges.txt"):
        (tmp_path / file).write_bytes((Path(saved) / file).read_bytes())
    path = tmp_path / name
    path.write_bytes(edit(path.read_bytes()))
    for read in (lambda: BPETokenizer.load(tmp_path), lambda: load(tmp_path),
                 lambda: BPETokenizer.from_gpt2_files(tmp_path / "vocab.json", tmp_path / "merges.txt")):
        with pytest.raises(ValueError, match=match) as info:
            read()
        assert str(info.value).startswith(str(path)), str(info.value)
        assert isinstance(info.value.__cause__, cause) if cause else info.value.__cause__ is None


@pytest.mark.parametrize("missing", ["vocab.json", "merges.txt"])
def test_missing_gpt2_file_is_named(saved, tmp_path, missing):
    present = {"vocab.json": "merges.txt", "merges.txt": "vocab.json"}[missing]
    (tmp_path / present).write_bytes((Path(saved) / present).read_bytes())
    with pytest.raises(ValueError, match=f"^{re.escape(str(tmp_path / missing))}: no such file$") as info:
        BPETokenizer.load(tmp_path)
    assert isinstance(info.value.__cause__, FileNotFoundError)


def test_no_tokenizer_files_at_all(tmp_path):
    with pytest.raises(ValueError, match="has neither tokenizer.json nor vocab.json"):
        BPETokenizer.load(tmp_path)
    for read in (BPETokenizer.load, CharTokenizer.load, load):
        with pytest.raises(ValueError, match="no tokenizer at"):
            read(tmp_path / "nothing_here.json")


def test_bpe_constructor_errors_name_the_file(saved, tmp_path):
    """What only the constructor checks (all 256 single bytes are tokens) still names the file."""
    spec = json.loads((Path(saved) / "tokenizer.json").read_text(encoding="utf-8"))
    vocab = spec["model"]["vocab"]
    del vocab[bytes_to_unicode()[0]]                    # byte 0, which no merge uses; renumber the ids after it
    spec["model"]["vocab"] = {s: i for i, s in enumerate(sorted(vocab, key=vocab.get))}
    for added in spec["added_tokens"]:
        added["id"] = spec["model"]["vocab"][added["content"]]
    path = tmp_path / "tokenizer.json"
    path.write_text(json.dumps(spec, ensure_ascii=False), encoding="utf-8")
    with pytest.raises(ValueError, match=r"needs all 256 single bytes; missing byte\(s\) \[0\]") as info:
        BPETokenizer.load(path)
    assert str(info.value).startswith(f"{path}: ")
    assert isinstance(info.value.__cause__, ValueError)   # the constructor's own message, kept as the cause


@pytest.fixture
def char_saved(tmp_path):
    return CharTokenizer.from_text("banana cab", ["<|endoftext|>"], unk_token="<unk>").save(tmp_path / "char")


@pytest.mark.parametrize("edit, match, cause", [
    (cut_at(0.5), *TRUNCATED_JSON),
    (lambda data: GARBAGE, *NOT_UTF8),
    (edit_json(lambda spec: spec["model"]["vocab"].update(a="0")), "the id of 'a' must be an integer id", None),
    (edit_json(lambda spec: spec["model"]["vocab"].update(ab=len(spec["model"]["vocab"]))),
     "the alphabet holds single characters, got 'ab'", ValueError),
    (edit_json(lambda spec: spec["model"].update(vocab={"a": 0, "b": 0})), "id 0 is given to two tokens", None),
    (edit_json(lambda spec: spec["pre_tokenizer"].update(pattern="[\\s\\S]")), "is not a character tokenizer", None),
    (edit_json(lambda spec: spec["added_tokens"].append("<pad>")), "added token 2 must be a JSON object", None),
])
def test_bad_char_tokenizer_json_names_file_and_problem(char_saved, edit, match, cause):
    path = char_saved / "tokenizer.json"
    path.write_bytes(edit(path.read_bytes()))
    for read in (CharTokenizer.load, load):
        with pytest.raises(ValueError, match=match) as info:
            read(char_saved)
        assert str(info.value).startswith(str(path)), str(info.value)
        assert isinstance(info.value.__cause__, cause) if cause else info.value.__cause__ is None
