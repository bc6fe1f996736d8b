# ---
# jupyter:
#   jupytext:
#     formats: py:percent
#     text_representation:
#       extension: .py
#       format_name: percent
#   kernelspec:
#     display_name: Python 3
#     language: python
#     name: python3
# ---

# %% [markdown]
# # Lesson 10 — Tokenization: byte-level BPE from scratch
#
# **You will learn**
# - what tokenization (分词) is for, and the trade-off between characters, words and subwords;
# - UTF-8: why a byte-level tokenizer never meets an unknown character, and why Chinese costs three bytes a character;
# - byte pair encoding (字节对编码, BPE): the training loop, its tie-break, and the incremental counting that makes it fast;
# - GPT-2's pre-tokenization regex and special tokens such as `<|endoftext|>`;
# - encoding by merge rank, decoding bytes that are not valid UTF-8;
# - GPT-2's file format (vocab.json + merges.txt and its byte-to-unicode map), read by Hugging Face unchanged.
#
# Until now every lesson fed the model token ids out of thin air. A language model only ever sees integers
# $0..V-1$; the tokenizer decides what those integers mean. Its choice sets the vocabulary size $V$ (the
# embedding and the softmax both have $V$ rows), the sequence length $T$ a text needs, and what the model
# can and cannot spell.

# %%
import os
import tempfile
import time
from collections import Counter
from pathlib import Path

import matplotlib.pyplot as plt
import regex

from minigpt.data import load_corpus
from minigpt.tokenizers import GPT2_PATTERN, BPETokenizer, CharTokenizer, bytes_to_unicode
from minigpt.viz import save_figure

FAST = os.environ.get("MINIGPT_FAST") == "1"
EOT = "<|endoftext|>"

corpus = load_corpus("builtin")                       # CPython's documentation, ~465 KB of English
if FAST:
    corpus = corpus[:120_000]
VOCAB_SIZE = 600 if FAST else 1000
print(f"corpus: {len(corpus):,} characters, {len(corpus.encode('utf-8')):,} UTF-8 bytes")

# %% [markdown]
# ## Characters, words, bytes
#
# Three obvious choices, each with a flaw:
# - **words**: short sequences, but an open vocabulary: every new name, typo or inflection is out of vocabulary;
# - **characters** (字符): a small closed alphabet *for one text*, but sequences are long, and a character the
#   training text never had (an emoji, a rare 汉字) still has no id;
# - **bytes**: every string is a sequence of UTF-8 bytes, so 256 ids cover every text that will ever exist.
#   The price: UTF-8 spends 1 byte on ASCII, 2 on Greek or Cyrillic, 3 on Chinese, 4 on an emoji.
#
# BPE starts from bytes (nothing is ever unknown) and then *learns* longer tokens for what is frequent,
# so common English words end up as one id, and sequences get short again.

# %%
char_tok = CharTokenizer.from_text(corpus, special_tokens=[EOT])
print("character vocabulary of the corpus:", char_tok.vocab_size, "ids, e.g.", "".join(char_tok.chars[30:70]))
try:
    char_tok.encode("今天天气很好")
except ValueError as err:
    print("CharTokenizer:", err)
with_unk = CharTokenizer.from_text(corpus, special_tokens=[EOT], unk_token="<unk>")
print("with an <unk> token:", with_unk.decode(with_unk.encode("weather 今天天气很好")))

print(f"\n{'text':>14} {'characters':>10} {'UTF-8 bytes':>11}   bytes")
for text in ["hello", "naïve", "今天天气很好", "😀"]:
    data = text.encode("utf-8")
    print(f"{text:>14} {len(text):>10} {len(data):>11}   {data.hex(' ')}")

# %% [markdown]
# ## The algorithm
#
# **Pre-tokenization.** GPT-2 first cuts the text with a regular expression into *pre-tokens*: an optional
# space glued to a run of letters, of digits or of other symbols, English contractions, and runs of
# whitespace. No token will ever cross a pre-token boundary, so " dog" and " dog." share the token " dog"
# and never learn a token "g. T". The corpus becomes a table of pre-tokens $w$ with counts $f(w)$.
#
# **Training.** Write each pre-token as its bytes. Let $n_{ab}(w)$ be how often the pair of adjacent tokens
# $(a, b)$ occurs in $w$. The pair count over the corpus is
#
# $$ c(a, b) = \sum_w f(w)\, n_{ab}(w). $$
#
# Take $(a^*, b^*) = \arg\max c(a, b)$, with ties going to the lexicographically greatest pair of byte
# strings (so training is deterministic), make $a^*b^*$ a new token with the next free id, replace every
# occurrence (left to right, non-overlapping) in every pre-token, and repeat until the vocabulary has $V$ entries.
# Each merge shortens the corpus by $c(a^*, b^*)$ tokens (for $a^* \ne b^*$): BPE is a greedy compressor.
#
# **Making it fast.** Recounting every pair after every merge costs $O(\text{corpus})$ per merge. But a merge
# only changes the pre-tokens that contain $(a^*, b^*)$, and only their pairs change count. Keep an index
# $\text{pair} \to$ {pre-tokens containing it}; after a merge, subtract the old pairs of just those pre-tokens,
# add their new pairs, and push the changed counts onto a heap (skipping stale entries when they are popped).
#
# **Encoding.** Inside each pre-token, start from its bytes and repeatedly apply the merge with the lowest
# *rank* (the one learned first) among the adjacent pairs, until none applies: the same merges, in the same
# order, as training. Special tokens are cut out before anything else and get their own ids.
#
# **Ids.** 0..255 are the bytes, then one id per merge in order, then the special tokens.
#
# ## A tiny BPE by hand
#
# The textbook example: "low" ×5, "lower" ×2, "newest" ×6, "widest" ×3. Here are the pre-tokens:

# %%
tiny_text = " ".join(["low"] * 5 + ["lower"] * 2 + ["newest"] * 6 + ["widest"] * 3)
pretokens = Counter(regex.findall(GPT2_PATTERN, tiny_text))
print(dict(pretokens))


def count_pairs(words):
    """words {tuple of byte strings: count} -> Counter {(a, b): weighted count of adjacent pairs}."""
    pairs = Counter()
    for w, f in words.items():
        for pair in zip(w, w[1:]):
            pairs[pair] += f
    return pairs


def merge_pair(words, pair):
    """Replace every occurrence of pair (left to right) by the joined token, in every word."""
    merged = {}
    for w, f in words.items():
        out, i = [], 0
        while i < len(w):
            if w[i:i + 2] == pair:
                out.append(pair[0] + pair[1])
                i += 2
            else:
                out.append(w[i])
                i += 1
        merged[tuple(out)] = f
    return merged


def show(token):
    return token.decode("utf-8", errors="replace").replace(" ", "␣")


words = {tuple(bytes([b]) for b in w.encode("utf-8")): f for w, f in pretokens.items()}
hand_merges = []
for step in range(8):
    pairs = count_pairs(words)
    best = max(pairs, key=lambda p: (pairs[p], p))        # most frequent; ties: greatest byte strings
    tied = sorted((p for p in pairs if pairs[p] == pairs[best]), reverse=True)
    hand_merges.append(best)
    words = merge_pair(words, best)
    print(f"merge {step + 1}: ({show(best[0])}, {show(best[1])}) x{pairs[best]}"
          + (f"  [tie with {', '.join(f'({show(a)}, {show(b)})' for a, b in tied[1:])}]" if len(tied) > 1 else "")
          + "   ->  " + "  ".join("|".join(show(t) for t in w) for w in words))

# %% [markdown]
# The first merge is a tie: (s, t) and (e, s) both occur 9 times, and b"s" > b"e", so (s, t) wins.
# minigpt's `BPETokenizer.train` (incremental counts, a heap) must learn exactly the same merges:

# %%
tiny = BPETokenizer.train(tiny_text, vocab_size=256 + 8)
print("library merges:", [(show(a), show(b)) for a, b in tiny.merges])
print("same as by hand:", tiny.merges == hand_merges)

# %% [markdown]
# Encoding a word the tokenizer never saw, " lowest": start from bytes, apply the best-ranked merge present, repeat.

# %%
rank = {pair: r for r, pair in enumerate(tiny.merges)}
pieces = [bytes([b]) for b in " lowest".encode("utf-8")]
while True:
    candidates = [p for p in zip(pieces, pieces[1:]) if p in rank]
    if not candidates:
        break
    best = min(candidates, key=rank.get)
    pieces = list(merge_pair({tuple(pieces): 1}, best))[0]
    print(f"rank {rank[best]}: ({show(best[0])}, {show(best[1])})  ->  {' | '.join(show(p) for p in pieces)}")
print("library:", [show(tiny.vocab[i]) for i in tiny.encode(" lowest")], "=", tiny.encode(" lowest"))

# %% [markdown]
# ## Pre-tokenization in action
#
# The regex, `'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+`, on a mixed text
# (␣ is a space, ⏎ a newline). Note `\s+(?!\S)`: a run of spaces leaves its last space to the next word.

# %%
sample = "It's 2024: GPT-2 said   hello\n\n    x = 42  # 今天天气很好!"
print(" ¦ ".join(p.replace(" ", "␣").replace("\n", "⏎") for p in regex.findall(GPT2_PATTERN, sample)))

# %% [markdown]
# ## Training on the built-in corpus
#
# Now the real thing, with `<|endoftext|>` as a special token. First, why the incremental counts matter:
# the by-hand loop above (recount everything every merge) against the library, on the same text.

# %%
small = corpus[:40_000]
n_small = 30 if FAST else 80
words = Counter()
for w in regex.findall(GPT2_PATTERN, small):
    words[tuple(bytes([b]) for b in w.encode("utf-8"))] += 1
start = time.perf_counter()
naive = []
for _ in range(n_small):
    pairs = count_pairs(words)
    best = max(pairs, key=lambda p: (pairs[p], p))
    naive.append(best)
    words = merge_pair(words, best)
naive_s = time.perf_counter() - start
start = time.perf_counter()
fast = BPETokenizer.train(small, 256 + n_small)
fast_s = time.perf_counter() - start
print(f"{n_small} merges on 40 KB: recount every merge {naive_s:.2f} s, incremental {fast_s:.2f} s, "
      f"same merges: {fast.merges == naive}")

start = time.perf_counter()
tok = BPETokenizer.train(corpus, VOCAB_SIZE, special_tokens=[EOT])
train_s = time.perf_counter() - start
start = time.perf_counter()
ids = tok.encode(corpus)
encode_s = time.perf_counter() - start
mb = len(corpus.encode("utf-8")) / 1e6
print(f"{tok}: trained in {train_s:.2f} s; encoded {mb:.2f} MB in {encode_s:.2f} s ({mb / encode_s:.1f} MB/s)")
print(f"{len(ids):,} tokens: {len(corpus.encode('utf-8')) / len(ids):.2f} bytes per token")

print(f"\n{'rank':>4} {'id':>4}  {'merged pair':<24} new token")
for r in list(range(12)) + list(range(len(tok.merges) - 4, len(tok.merges))):
    a, b = tok.merges[r]
    print(f"{r:>4} {256 + r:>4}  {show(a):>11} + {show(b):<10} {show(a + b)}")
longest = sorted(range(256, 256 + len(tok.merges)), key=lambda i: -len(tok.vocab[i]))[:8]
print("longest tokens:", [show(tok.vocab[i]) for i in longest])

# %% [markdown]
# The first merges are what the documentation repeats most: runs of spaces (code indentation) and of dashes (the
# rules of its text tables), a space before a frequent letter, and common letter pairs ("he", "in", "on"); by the
# end the tokens are whole words and names of Python's documentation. Special tokens never take part in a merge
# and always encode to one id:

# %%
doc = f"First document.{EOT}Second document."
doc_ids = tok.encode(doc)
print(doc_ids, "->", [tok.decode([i]) for i in doc_ids])
print("special tokens:", tok.special_tokens)

# %% [markdown]
# ## English against Chinese
#
# A tokenizer is only as good as its training text. Ours saw English; on Chinese it has no merges, so every
# character costs its three UTF-8 bytes. Train a second one on the same corpus plus a few Chinese sentences
# (repeated: a stand-in for a real Chinese corpus, and sharing words with the test sentence) and compare tokens
# per character.

# %%
english = "The tokenizer splits text into pieces; a model sees only their ids."
chinese = "今天天气很好。分词器把文本切成小块，模型只看见它们的编号。"
chinese_corpus = ("今天天气很好，我们去公园散步吧。自然语言处理很有趣。分词器把文本切成小块。"
                  "模型只看见编号，不看见文字。字节对编码从字节开始，把最常见的一对合并成新的词元。") * 50
mixed = BPETokenizer.train(corpus + chinese_corpus, VOCAB_SIZE, special_tokens=[EOT])
code = "def add(a, b):\n    return a + b\n"

print(f"{'text':<9} {'chars':>5} {'bytes':>5} {'English BPE':>12} {'+Chinese BPE':>13} {'tokens/char':>12}")
for name, text in [("English", english), ("Chinese", chinese), ("code", code)]:
    n_en, n_mixed = len(tok.encode(text)), len(mixed.encode(text))
    print(f"{name:<9} {len(text):>5} {len(text.encode('utf-8')):>5} {n_en:>12} {n_mixed:>13} "
          f"{n_en / len(text):>6.2f} {n_mixed / len(text):>5.2f}")

# %% [markdown]
# ## Decoding: bytes first, then UTF-8
#
# Tokens are bytes, so a single token can hold part of a character. Decoding joins the bytes of all the ids and
# only then reads UTF-8; a byte sequence that is not valid UTF-8 becomes U+FFFD (�) instead of an error.
# That is why a chat program streaming one token at a time must hold back incomplete characters.

# %%
zh_ids = tok.encode("天气")
print("ids:", zh_ids)
print("token by token:", [tok.decode([i]) for i in zh_ids])
print("all at once:   ", tok.decode(zh_ids))

# %% [markdown]
# ## Compression against vocabulary size
#
# Any prefix of the merge list is itself a valid BPE (merge $k$ only uses tokens made by earlier merges), so
# one training run gives every smaller vocabulary. More merges, fewer tokens per byte: but each extra token
# is a row of the embedding and of the softmax.

# %%
sizes = [256, 300, 400, 600, 800] if not FAST else [256, 350, 450]
sizes.append(256 + len(tok.merges))                   # every merge learned (the special token aside)
sample_text = corpus[:100_000] if not FAST else corpus[:30_000]
n_bytes = len(sample_text.encode("utf-8"))
ratios = []
for size in sizes:
    n_merges = size - 256
    sub = BPETokenizer({i: tok.vocab[i] for i in range(size)}, tok.merges[:n_merges])
    ratios.append(n_bytes / len(sub.encode(sample_text)))
    print(f"vocab {size:>5}: {ratios[-1]:.2f} bytes per token")
fig, ax = plt.subplots(figsize=(5, 3.2))
ax.plot(sizes, ratios, "o-")
ax.set_xlabel("vocabulary size (256 bytes + merges)")
ax.set_ylabel("UTF-8 bytes per token")
ax.set_title("BPE compression on the built-in corpus")
ax.grid(alpha=0.3)
png = save_figure(fig, "10_bpe_compression")
print("saved", png)

# %% [markdown]
# ## GPT-2's files
#
# GPT-2 stores tokens as strings in JSON, so it maps every byte to a printable character: the 188 printable
# Latin-1 bytes stay themselves, the other 68 move to U+0100 and up. The space becomes "Ġ", the newline "Ċ".
# `vocab.json` maps these strings to ids and `merges.txt` lists the merges in rank order. `save()` writes both,
# plus the `tokenizer.json` of Hugging Face `tokenizers`; loading either gives back the same tokenizer.
# With GPT-2's own files, the ids are whatever vocab.json says (GPT-2's "!" is 0 and its space byte is 220),
# which is why minigpt keeps a general vocab {id: bytes} rather than assuming "id = byte".

# %%
byte_map = bytes_to_unicode()
print({repr(chr(b)): byte_map[b] for b in [ord(" "), ord("\n"), ord("\t"), ord("a"), ord("!"), 0xE4]})
folder = Path(tempfile.mkdtemp())
tok.save(folder)
print(sorted(p.name for p in folder.iterdir()))
print("merges.txt:", (folder / "merges.txt").read_text(encoding="utf-8").splitlines()[:4])
reloaded = {name: BPETokenizer.load(path) for name, path in
            [("tokenizer.json", folder / "tokenizer.json"), ("GPT-2 files", folder)]}
reloaded["GPT-2 files"] = BPETokenizer.from_gpt2_files(folder / "vocab.json", folder / "merges.txt")
probe = f"Hello, 世界! {EOT} x = 3.14\n\n  end 😀"
for name, other in reloaded.items():
    print(f"reloaded from {name}: same ids: {other.encode(probe) == tok.encode(probe)}")
try:
    from tokenizers import Tokenizer as HFTokenizer
    hf = HFTokenizer.from_file(str(folder / "tokenizer.json"))
    print("Hugging Face tokenizers gives the same ids:", hf.encode(probe).ids == tok.encode(probe))
except ImportError:
    print("(Hugging Face tokenizers is not installed: pip install tokenizers to compare)")

# %% [markdown]
# ## Summary
# - Tokenization (分词) maps text to ids. Byte-level BPE (字节对编码) starts from the 256 bytes, so nothing is ever
#   unknown, and merges the most frequent adjacent pair again and again; ties go to the greatest byte strings.
# - GPT-2's regex pre-tokenizes first; merges never cross pre-tokens or special tokens.
# - Training is fast when counts are updated only for the words a merge touches (index + heap).
# - Encoding applies merges by rank inside each pre-token; decoding joins bytes and reads UTF-8 with replacement.
# - A tokenizer trained on English spends about 3 tokens per Chinese character; train on the languages you serve.
# - GPT-2's format stores bytes through a byte-to-unicode map; our files load in Hugging Face unchanged.
#
# ## Exercises
# 1. Change the tie-break to the *smallest* pair. Which merge of the tiny example changes first?
# 2. Remove pre-tokenization (treat the whole corpus as one word). Which cross-word tokens appear in the first
#    50 merges?
# 3. `encode_iterable(lines)` gives exactly the ids of `encode("".join(lines))`. Find a text where encoding
#    each line separately with `encode` does *not* (hint: whitespace at the start of a line).
# 4. Add `<|im_start|>` and `<|im_end|>` as special tokens and encode a two-turn chat. How many ids do the markers
#    cost? And with the table above: how many times longer in tokens is a Chinese document than an English one of
#    the same number of characters, for each tokenizer, and what does that do to attention's O(T²) cost?

# %% [markdown]
# ## Check

# %%
for text in [corpus[:5000], "今天天气很好", "emoji 😀👍🏽, combining e\u0301", "", f"a{EOT}b  \n\n c", code]:
    assert tok.decode(tok.encode(text)) == text
    assert mixed.decode(mixed.encode(text)) == text
    assert list(tok.encode_iterable(text.splitlines(keepends=True))) == tok.encode(text)
assert tok.decode(ids) == corpus
assert tiny.merges == hand_merges and fast.merges == naive
assert [tok.vocab[i] for i in range(256)] == [bytes([b]) for b in range(256)]
assert tok.special_tokens == {EOT: VOCAB_SIZE - 1} and tok.encode(EOT) == [VOCAB_SIZE - 1]
assert tok.decode([tok.encode("今")[0]]) == "\ufffd"                 # a lone first byte of a 3-byte character
for other in reloaded.values():                                     # GPT-2 format and tokenizer.json round trip
    assert other.vocab == tok.vocab and other.merges == tok.merges and other.special_tokens == tok.special_tokens
assert BPETokenizer.train(corpus, VOCAB_SIZE, special_tokens=[EOT]).merges == tok.merges   # deterministic
assert len(mixed.encode(chinese)) < len(tok.encode(chinese))
assert all(b > a for a, b in zip(ratios, ratios[1:])) and png.exists()
print("lesson 10 OK")
