"""Byte-level BPE speed: minigpt's pure-Python BPETokenizer against Hugging Face `tokenizers` (Rust), same machine.

    python benchmarks/bench_bpe.py [--vocab-size 1000] [--repeats 3]

Trains a BPE on the built-in corpus (CPython's documentation topics, ~465 KB) and encodes the whole corpus.
Targets (issue 4): training a 1000-token BPE in under 10 s on one core, encoding at >= 1 MB/s.
Encoding is timed from a cold cache (a fresh tokenizer per run), and Hugging Face encodes with minigpt's
own saved tokenizer, so both produce the same ids. Rust is pinned to one thread (RAYON_NUM_THREADS=1)
so both sides use one core. Reported: the best of --repeats runs.

Hugging Face is timed twice: on the corpus as one string (what minigpt does), and as a batch of paragraphs
(encode_batch, its usual fast path, which skips the bookkeeping of offsets into one 465 KB string).
The paragraphs are cut just before a newline that follows a non-space: a pre-token boundary of GPT-2's
regex, so the ids are the same either way.
"""
import argparse
import os
import re
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("RAYON_NUM_THREADS", "1")        # before tokenizers is imported: one core, like minigpt
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from minigpt.data import load_corpus  # noqa: E402
from minigpt.tokenizers import BPETokenizer  # noqa: E402

EOT = "<|endoftext|>"


def best_time(fn, repeats):
    """(smallest wall time over repeats, the last result)."""
    best, result = float("inf"), None
    for _ in range(repeats):
        start = time.perf_counter()
        result = fn()
        best = min(best, time.perf_counter() - start)
    return best, result


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--vocab-size", type=int, default=1000)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args(argv)

    text = load_corpus("builtin")
    megabytes = len(text.encode("utf-8")) / 1e6
    print(f"corpus: built-in, {megabytes * 1000:.0f} KB; vocab_size {args.vocab_size} (incl. {EOT})")

    train_s, tok = best_time(lambda: BPETokenizer.train(text, args.vocab_size, [EOT]), args.repeats)
    encode_s, ids = best_time(lambda: BPETokenizer(tok.vocab, tok.merges, tok.special_tokens).encode(text),
                              args.repeats)
    assert tok.decode(ids) == text
    rows = [("minigpt", train_s, encode_s)]

    try:
        import tokenizers
    except ImportError:
        tokenizers = None
        print("Hugging Face tokenizers is not installed (pip install tokenizers): no comparison")
    if tokenizers is not None:
        def hf_train():
            hf = tokenizers.ByteLevelBPETokenizer()
            hf.train_from_iterator([text], vocab_size=args.vocab_size, special_tokens=[EOT], show_progress=False)
            return hf

        def hf_encode_batch(hf, paragraphs):
            return [i for encoding in hf.encode_batch(paragraphs) for i in encoding.ids]

        hf_train_s, _ = best_time(hf_train, args.repeats)
        paragraphs = re.split(r"(?<=\S)(?=\n)", text)
        with tempfile.TemporaryDirectory() as folder:
            tok.save(folder)
            path = os.path.join(folder, "tokenizer.json")
            hf_encode_s, hf_ids = best_time(lambda: tokenizers.Tokenizer.from_file(path).encode(text).ids,
                                            args.repeats)
            hf_batch_s, hf_batch_ids = best_time(lambda: hf_encode_batch(tokenizers.Tokenizer.from_file(path),
                                                                         paragraphs), args.repeats)
        assert hf_ids == hf_batch_ids == ids, "Hugging Face and minigpt disagree on the ids"
        hf_name = f"HF tokenizers {tokenizers.__version__}"
        rows += [(hf_name, hf_train_s, hf_encode_s), (f"  on {len(paragraphs):,} paragraphs", None, hf_batch_s)]

    print(f"{len(ids):,} tokens, {len(text.encode('utf-8')) / len(ids):.2f} bytes per token\n")
    print(f"{'':24s} {'train (s)':>10s} {'encode (s)':>11s} {'encode MB/s':>12s}")
    for name, tr, en in rows:
        train_column = f"{tr:10.3f}" if tr is not None else " " * 10
        print(f"{name:24s} {train_column} {en:11.3f} {megabytes / en:12.2f}")
    if len(rows) == 3:
        (_, tr, en), (_, hf_tr, hf_en), (_, _, hf_batch_en) = rows
        print(f"{'minigpt / HF (time)':24s} {tr / hf_tr:9.1f}x {en / hf_en:10.1f}x")
        print(f"{'  vs HF on paragraphs':24s} {'':10s} {en / hf_batch_en:10.1f}x")
    ok_train, ok_encode = train_s < 10.0, megabytes / encode_s >= 1.0
    print(f"\ntarget: train < 10 s: {'yes' if ok_train else 'NO'}; encode >= 1 MB/s: {'yes' if ok_encode else 'NO'}")
    return 0 if ok_train and ok_encode else 1


if __name__ == "__main__":
    sys.exit(main())
