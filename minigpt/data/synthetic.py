"""Small synthetic tasks whose right answer is known: for lessons, tests and quick training runs.

Each generator returns a list of Example(prompt, answer), deterministic for a seed:

    addition(3, seed=0)               85+63=            -> 148
    copy_task(2, seed=0)              eccaaab|          -> eccaaab
    reverse_task(2, seed=0)           eccaaab|          -> baaacce
    few_shot(2, k=3, seed=0)          t>e,e>p,k>v,l>    -> w      (a hidden rule shown k times, then a query)

few_shot is the in-context-learning task (上下文学习): its rule is drawn afresh for every example, so a
model cannot memorize it in its weights; it has to read it off the k examples in the prompt.
k=0 is the zero-shot version of the same query.
"""
from dataclasses import dataclass

import numpy as np

LETTERS = "abcdefghijklmnopqrstuvwxyz"


@dataclass(frozen=True)
class Example:
    prompt: str
    answer: str

    @property
    def text(self):
        return self.prompt + self.answer


def _check_count(n):
    if n < 0:
        raise ValueError(f"n={n}: expected a number of examples >= 0")


def addition(n, digits=2, seed=0):
    """n sums of two random integers with up to `digits` digits: prompt "a+b=", answer str(a + b)."""
    _check_count(n)
    if digits < 1:
        raise ValueError(f"digits={digits}: expected >= 1")
    rng = np.random.default_rng(seed)
    ab = rng.integers(0, 10 ** digits, size=(n, 2))                       # (n, 2)
    return [Example(f"{a}+{b}=", str(a + b)) for a, b in ab.tolist()]


def _strings(rng, n, length, alphabet):
    lo, hi = length
    if not 1 <= lo <= hi:
        raise ValueError(f"length={length}: expected (min, max) with 1 <= min <= max")
    if not alphabet:
        raise ValueError("alphabet is empty")
    sizes = rng.integers(lo, hi + 1, size=n)                              # (n,)
    return ["".join(alphabet[i] for i in rng.integers(0, len(alphabet), size=m)) for m in sizes.tolist()]


def copy_task(n, length=(1, 8), alphabet="abcdefgh", sep="|", seed=0):
    """n random strings (length drawn uniformly from the (min, max) range): prompt s + sep, answer s."""
    _check_count(n)
    rng = np.random.default_rng(seed)
    return [Example(s + sep, s) for s in _strings(rng, n, length, alphabet)]


def reverse_task(n, length=(1, 8), alphabet="abcdefgh", sep="|", seed=0):
    """n random strings: prompt s + sep, answer s reversed."""
    _check_count(n)
    rng = np.random.default_rng(seed)
    return [Example(s + sep, s[::-1]) for s in _strings(rng, n, length, alphabet)]


FEW_SHOT_RULES = ("shift", "lookup")


def few_shot(n, k=4, rule="shift", alphabet=LETTERS, seed=0):
    """n few-shot prompts: k examples "x>y" of a hidden rule, then a query "q>"; the answer is rule(q).

    rule "shift":  y is x moved s places along the alphabet (cyclically), s drawn per example in
                   1..len(alphabet)-1; the query letter is not among the shown ones, so the model must
                   infer s. k=0 gives the zero-shot prompt "q>".
    rule "lookup": a random one-to-one mapping of the alphabet, drawn per example; the query is one of
                   the k shown keys (associative recall, what induction heads do). Needs k >= 1.
    """
    _check_count(n)
    if rule not in FEW_SHOT_RULES:
        raise ValueError(f"rule={rule!r}: expected one of {FEW_SHOT_RULES}")
    needed = k + 1 if rule == "shift" else k
    if k < 0 or (rule == "lookup" and k < 1) or needed > len(alphabet):
        raise ValueError(f"k={k} does not fit rule={rule!r} with {len(alphabet)} letters "
                         f"(shift: 0 <= k < {len(alphabet)}; lookup: 1 <= k <= {len(alphabet)})")
    rng = np.random.default_rng(seed)
    V = len(alphabet)
    examples = []
    for _ in range(n):
        letters = rng.permutation(V)[:needed]                              # distinct letters, (needed,)
        if rule == "shift":
            s = int(rng.integers(1, V))
            image = (np.arange(V) + s) % V                                   # (V,) where each letter goes
            shown, query = letters[:k], int(letters[k])
        else:
            image = rng.permutation(V)                                       # (V,)
            shown, query = letters, int(letters[rng.integers(0, k)])
        pairs = [f"{alphabet[x]}>{alphabet[image[x]]}," for x in shown.tolist()]
        examples.append(Example("".join(pairs) + f"{alphabet[query]}>", alphabet[image[query]]))
    return examples


def examples_to_batch(examples, encode, pad_id, ignore_index=-100):
    """Encode prompt and answer separately, pad, and score only the answer.

    -> inputs int64 (B, T), targets int64 (B, T) where T = longest (prompt + answer) - 1:
    inputs are the text without its last token, targets the text shifted by one, with
    ignore_index on every prompt token and on padding (so a loss counts only the answers).
    encode: str -> list of ids (e.g. tokenizer.encode).
    """
    if not examples:
        raise ValueError("no examples to batch")
    rows = []
    for ex in examples:
        prompt, answer = list(encode(ex.prompt)), list(encode(ex.answer))
        if not prompt or not answer:
            raise ValueError(f"example {ex!r} encodes to an empty prompt or answer")
        rows.append((prompt + answer, len(prompt)))
    T = max(len(seq) for seq, _ in rows) - 1
    inputs = np.full((len(rows), T), pad_id, dtype=np.int64)                # (B, T)
    targets = np.full((len(rows), T), ignore_index, dtype=np.int64)         # (B, T)
    for b, (seq, n_prompt) in enumerate(rows):
        inputs[b, :len(seq) - 1] = seq[:-1]
        # targets[j] = seq[j+1]; the answer is seq[n_prompt:], predicted from j = n_prompt-1 on
        targets[b, n_prompt - 1:len(seq) - 1] = seq[n_prompt:]
    return inputs, targets
