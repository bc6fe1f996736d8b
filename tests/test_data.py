"""minigpt.data: the corpus, token files, CLM batches and the synthetic tasks."""
import json

import numpy as np
import pytest

from minigpt.data import (BatchSampler, addition, builtin_corpus, copy_task, examples_to_batch, few_shot,
                          load_corpus, load_tokens, prepare_tokens, reverse_task, save_tokens, sequential_batches,
                          split_tokens, token_dtype)
from minigpt.data import batches as batches_module


# ------------------------------------------------------------------------------------------------ corpus

def test_builtin_corpus_is_cpython_docs_and_deterministic():
    from pydoc_data.topics import topics
    text = load_corpus("builtin")
    assert 400_000 < len(text) < 600_000
    assert text == builtin_corpus() == load_corpus()
    assert topics["assert"].strip() in text
    assert text.index(topics["assert"].strip()) < text.index(topics["while"].strip())   # sorted by topic


def test_load_corpus_file_utf8(tmp_path):
    path = tmp_path / "a.txt"
    path.write_text("今天天气很好\nhello 👋\n", encoding="utf-8")
    assert load_corpus(path) == "今天天气很好\nhello 👋\n"
    path.write_bytes("\ufeffbom".encode("utf-8"))
    assert load_corpus(str(path)) == "bom"


def test_load_corpus_folder_sorted_recursive(tmp_path):
    (tmp_path / "sub").mkdir()
    (tmp_path / "b.txt").write_text("second", encoding="utf-8")
    (tmp_path / "a.txt").write_text("first", encoding="utf-8")
    (tmp_path / "sub" / "c.md").write_text("third", encoding="utf-8")
    (tmp_path / ".hidden").write_bytes(b"\xff not text, skipped")
    assert load_corpus(tmp_path) == "first\nsecond\nthird"


def test_load_corpus_missing_path(tmp_path):
    with pytest.raises(FileNotFoundError, match="nope.txt.*does not exist"):
        load_corpus(tmp_path / "nope.txt")


def test_load_corpus_empty(tmp_path):
    with pytest.raises(ValueError, match="corpus source '' is empty"):
        load_corpus("")
    (tmp_path / "empty.txt").write_text("  \n", encoding="utf-8")
    with pytest.raises(ValueError, match="empty.txt.*is empty"):
        load_corpus(tmp_path / "empty.txt")
    (tmp_path / "folder").mkdir()
    with pytest.raises(ValueError, match="folder.*has no files"):
        load_corpus(tmp_path / "folder")


def test_load_corpus_not_utf8_names_file_and_offset(tmp_path):
    (tmp_path / "ok.txt").write_text("fine", encoding="utf-8")
    (tmp_path / "latin1.txt").write_bytes("abc caf\xe9!".encode("latin-1"))
    with pytest.raises(ValueError, match=r"latin1.txt: not UTF-8 text: byte offset 7 \(bytes e9 21\)"):
        load_corpus(tmp_path)


# ------------------------------------------------------------------------------------------------ token files

def test_token_dtype_by_vocab_size():
    assert token_dtype(256) == np.uint16
    assert token_dtype(50257) == np.uint16
    assert token_dtype(65536) == np.uint16            # ids 0..65535
    assert token_dtype(65537) == np.uint32
    assert token_dtype(151552) == np.uint32           # GLM-4
    with pytest.raises(ValueError, match="vocab_size=0"):
        token_dtype(0)


def test_save_and_load_tokens_memmap(tmp_path):
    ids = np.array([0, 5, 65535, 7])
    path = save_tokens(ids, tmp_path / "t.bin", vocab_size=65536)
    tokens = load_tokens(path)
    assert isinstance(tokens, np.memmap) and tokens.dtype == np.uint16
    assert tokens.tolist() == ids.tolist()
    big = load_tokens(save_tokens([70_000, 1], tmp_path / "big.npy"))
    assert big.dtype == np.uint32 and big.tolist() == [70_000, 1]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["big.npy", "t.bin"]        # no temp files left


def test_save_tokens_bad_ids_keep_the_old_file(tmp_path):
    path = save_tokens([1, 2, 3], tmp_path / "t.npy", vocab_size=10)
    with pytest.raises(ValueError, match="token id 12 is out of range for vocab_size=10"):
        save_tokens([1, 12], path, vocab_size=10)
    with pytest.raises(ValueError, match="token ids must be >= 0, found -1"):
        save_tokens([1, -1], path)
    with pytest.raises(ValueError, match="encoded corpus is empty"):
        save_tokens([], path)
    assert load_tokens(path).tolist() == [1, 2, 3]


def test_save_tokens_crash_mid_write_is_atomic(tmp_path, monkeypatch):
    path = save_tokens([1, 2, 3], tmp_path / "t.npy")

    def crash(*args, **kwargs):
        raise OSError("disk full")
    monkeypatch.setattr(batches_module.np, "save", crash)
    with pytest.raises(OSError, match="disk full"):
        save_tokens([4, 5, 6, 7], path)
    monkeypatch.undo()
    assert load_tokens(path).tolist() == [1, 2, 3]
    assert [p.name for p in tmp_path.iterdir()] == ["t.npy"]


class CharCodes:
    """A stand-in tokenizer: one id per character, its code point."""
    vocab_size = 0x110000

    def encode(self, text):
        return [ord(c) for c in text]


def test_prepare_tokens_with_a_tokenizer(tmp_path):
    tokens = prepare_tokens("héllo 你", tmp_path / "c.npy", tokenizer=CharCodes())
    assert tokens.dtype == np.uint32 and tokens.tolist() == [ord(c) for c in "héllo 你"]
    with pytest.raises(ValueError, match="pass tokenizer="):
        prepare_tokens("text", tmp_path / "d.npy")


def test_split_tokens():
    tokens = np.arange(100, dtype=np.uint16)
    train, val = split_tokens(tokens, 0.1)
    assert train.tolist() == list(range(90)) and val.tolist() == list(range(90, 100))
    assert np.shares_memory(train, tokens)
    assert len(split_tokens(tokens, 0.0)[1]) == 0
    with pytest.raises(ValueError, match="val_fraction=1.0"):
        split_tokens(tokens, 1.0)


# ------------------------------------------------------------------------------------------------ CLM batches

def test_batch_sampler_targets_are_inputs_shifted(tmp_path):
    tokens = load_tokens(save_tokens(np.arange(1000) % 50_000, tmp_path / "t.npy"))
    x, y = BatchSampler(tokens, seq_len=7, batch_size=3, seed=0).next_batch()
    assert x.shape == y.shape == (3, 7) and x.dtype == y.dtype == np.int64
    starts = x[:, 0]
    np.testing.assert_array_equal(x, starts[:, None] + np.arange(7))
    np.testing.assert_array_equal(y, starts[:, None] + np.arange(1, 8))


def test_batch_sampler_deterministic_for_a_seed():
    tokens = np.arange(500)
    a = [BatchSampler(tokens, 8, 4, seed=1).next_batch()[0] for _ in range(2)]
    np.testing.assert_array_equal(a[0], a[1])
    assert not np.array_equal(a[0], BatchSampler(tokens, 8, 4, seed=2).next_batch()[0])


def test_batch_sampler_reaches_every_window():
    tokens = np.arange(12)
    sampler = BatchSampler(tokens, seq_len=5, batch_size=16, seed=0)
    starts = {int(s) for _ in range(20) for s in sampler.next_batch()[0][:, 0]}
    assert starts == set(range(12 - 5))                  # 0..6: the last window's target is the last token


def test_batch_sampler_resumes_exactly_from_json_state():
    tokens = np.arange(10_000)
    sampler = BatchSampler(tokens, 16, 4, seed=7)
    for _ in range(5):
        sampler.next_batch()
    state = json.loads(json.dumps(sampler.state_dict()))
    assert state["step"] == 5
    expected = [sampler.next_batch() for _ in range(3)]
    resumed = BatchSampler(tokens, 16, 4, seed=123)
    resumed.load_state_dict(state)
    for (x0, y0), (x1, y1) in zip(expected, (resumed.next_batch() for _ in range(3))):
        np.testing.assert_array_equal(x0, x1)
        np.testing.assert_array_equal(y0, y1)
    assert resumed.step == 8 and resumed.seed == 7


def test_batch_sampler_state_for_other_shapes_rejected():
    state = BatchSampler(np.arange(100), 16, 4).state_dict()
    with pytest.raises(ValueError, match="sampler state has seq_len=16 but this sampler has seq_len=8"):
        BatchSampler(np.arange(100), 8, 4).load_state_dict(state)
    with pytest.raises(ValueError, match="n_tokens=100 but this sampler has n_tokens=99"):
        BatchSampler(np.arange(99), 16, 4).load_state_dict(state)


def test_batch_sampler_sequence_longer_than_data():
    BatchSampler(np.arange(9), seq_len=8, batch_size=2).next_batch()         # 9 tokens: exactly one window
    with pytest.raises(ValueError, match="seq_len=9 is longer than the data: 9 tokens"):
        BatchSampler(np.arange(9), seq_len=9, batch_size=2)
    with pytest.raises(ValueError, match="seq_len=4 is longer than the data: 0 tokens"):
        BatchSampler(split_tokens(np.arange(50), 0.0)[1], 4, 2)
    with pytest.raises(ValueError, match="seq_len=0, batch_size=2"):
        BatchSampler(np.arange(9), seq_len=0, batch_size=2)
    with pytest.raises(ValueError, match="seq_len=4.5: expected an integer"):
        BatchSampler(np.arange(9), seq_len=4.5, batch_size=2)
    with pytest.raises(ValueError, match="batch_size='2': expected an integer"):
        list(sequential_batches(np.arange(9), seq_len=4, batch_size="2"))


def test_sequential_batches_see_each_token_once():
    tokens = np.arange(103)
    batches = list(sequential_batches(tokens, seq_len=10, batch_size=4))
    assert [x.shape for x, _ in batches] == [(4, 10), (4, 10), (2, 10)]
    inputs = np.concatenate([x for x, _ in batches]).ravel()
    targets = np.concatenate([y for _, y in batches]).ravel()
    assert inputs.tolist() == list(range(100)) and targets.tolist() == list(range(1, 101))


# ------------------------------------------------------------------------------------------------ synthetic tasks

def test_addition_is_correct_and_deterministic():
    examples = addition(200, digits=3, seed=4)
    assert examples == addition(200, digits=3, seed=4) != addition(200, digits=3, seed=5)
    for ex in examples:
        a, b = ex.prompt.rstrip("=").split("+")
        assert ex.prompt.endswith("=") and int(ex.answer) == int(a) + int(b) and max(int(a), int(b)) < 1000
        assert ex.text == ex.prompt + ex.answer


def test_copy_and_reverse_tasks():
    copies = copy_task(100, length=(2, 5), alphabet="xyz", seed=1)
    reverses = reverse_task(100, length=(2, 5), alphabet="xyz", seed=1)
    for c, r in zip(copies, reverses):
        s = c.prompt[:-1]
        assert c.prompt == r.prompt == s + "|" and 2 <= len(s) <= 5 and set(s) <= set("xyz")
        assert c.answer == s and r.answer == s[::-1]
    with pytest.raises(ValueError, match=r"length=\(0, 3\)"):
        copy_task(3, length=(0, 3))


def parse_few_shot(ex):
    *pairs, query = ex.prompt.split(",")
    return [tuple(p.split(">")) for p in pairs], query.rstrip(">")


def test_few_shot_shift_rule_is_consistent():
    for ex in few_shot(300, k=4, rule="shift", seed=2):
        pairs, query = parse_few_shot(ex)
        shifts = {(ord(y) - ord(x)) % 26 for x, y in pairs + [(query, ex.answer)]}
        assert len(pairs) == 4 and len(shifts) == 1 and 0 not in shifts
        assert query not in [x for x, _ in pairs]                       # the model has to infer the rule
    zero = few_shot(5, k=0, seed=0)
    assert all(len(ex.prompt) == 2 and ex.prompt.endswith(">") for ex in zero)


def test_few_shot_lookup_rule_recalls_a_shown_key():
    for ex in few_shot(300, k=5, rule="lookup", seed=3):
        pairs, query = parse_few_shot(ex)
        mapping = dict(pairs)
        assert len(mapping) == 5 and mapping[query] == ex.answer


def test_few_shot_bad_arguments():
    with pytest.raises(ValueError, match="rule='copy'"):
        few_shot(3, rule="copy")
    with pytest.raises(ValueError, match="k=0 does not fit rule='lookup'"):
        few_shot(3, k=0, rule="lookup")
    with pytest.raises(ValueError, match="k=26 does not fit rule='shift'"):
        few_shot(3, k=26)


def test_examples_to_batch_scores_only_answers():
    examples = addition(2, seed=0)                          # 85+63=148, 51+26=77
    encode = CharCodes().encode
    x, y = examples_to_batch(examples, encode, pad_id=0)
    assert x.shape == y.shape == (2, 8)
    assert x[0].tolist() == encode("85+63=14")
    assert y[0].tolist() == [-100] * 5 + encode("148")
    assert x[1].tolist() == encode("51+26=7") + [0]
    assert y[1].tolist() == [-100] * 5 + encode("77") + [-100]
