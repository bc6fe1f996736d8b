"""GLM's autoregressive blank infilling (自回归空白填充; Du et al., 2022, "GLM: General Language Model
Pretraining with Autoregressive Blank Infilling"), as a data collator.

Take a text x = [x1, ..., xN] and blank out some spans s_1..s_m of it.
  Part A: the text with each span replaced by ONE mask token ([MASK], [sMASK] or [gMASK]).
  Part B: the spans, in a random order, each written as  [sop] + span  and predicted as  span + [eop].
The model reads Part A with full (bidirectional) attention, and writes Part B left to right, each
token seeing all of Part A and the Part B tokens before it. That is the prefix mask of minigpt.masks
with sep = len(Part A). The objective, for the span order z (a random permutation):

    max  E_z [ sum_i  log p(s_{z_i} | x_corrupt, s_{z_1}, ..., s_{z_{i-1}}) ]

Two position rows tell the model where it is:
  position ids        Part A: 0 .. len(A)-1;  a Part B token: the position of its span's mask in Part A
  block position ids  Part A: 0;              a Part B token: 1 .. L+1 within its span ([sop] = 1)
so the model knows WHERE a span goes (row 1) and how far into it it is (row 2), without learning
the span's length in advance.

The paper's example (its Figure 2), x = [x1..x6], spans {x3} and {x5, x6}, Part B order {x5, x6}, {x3}:
    ids          x1 x2 M  x4 M | S  x5 x6 S  x3
    targets      -  -  -  -  - | x5 x6 E  x3 E
    position     0  1  2  3  4 | 4  4  4  2  2          (the paper counts from 1)
    block pos    0  0  0  0  0 | 1  2  3  1  2
    sep = 5

Three ways to choose the spans (`mode`):
  "span"        lengths ~ Poisson(3) truncated to 1..39, drawn until >= 15% of the tokens are covered;
                spans never overlap or touch; each becomes [MASK].
  "sentence"    whole sentences (ending in one of sentence_end_ids), drawn until >= 15%; each [sMASK].
  "generation"  one span at the end, its length uniform over 50%..100% of the text; [gMASK].
A sample of N tokens with m spans has N + 2m ids (m masks in Part A, m [sop]/[eop] in Part B).

Dimension letters: B batch, T padded length, N tokens of one text.
"""
import math
from dataclasses import dataclass, fields

import numpy as np

IGNORE_INDEX = -100
MODES = ("span", "sentence", "generation")


@dataclass(frozen=True)
class GLMSpecialIds:
    """The ids of GLM's special tokens. Build one from a dict with GLMSpecialIds.coerce(d)."""
    mask: int
    smask: int
    gmask: int
    sop: int
    eop: int
    pad: int

    def __post_init__(self):
        for f in fields(self):
            value = getattr(self, f.name)
            if not isinstance(value, (int, np.integer)) or value < 0:
                raise ValueError(f"special id {f.name}={value!r}: expected an integer >= 0")
        named = {name: getattr(self, name) for name in ("mask", "smask", "gmask", "sop", "eop")}
        if len(set(named.values())) < len(named):
            raise ValueError(f"special ids must differ from each other: {named}")

    @classmethod
    def coerce(cls, special):
        """A GLMSpecialIds from itself or a dict with keys mask, smask, gmask, sop, eop, pad."""
        if isinstance(special, cls):
            return special
        names = [f.name for f in fields(cls)]
        missing = [n for n in names if n not in special]
        if missing:
            raise ValueError(f"special ids miss {missing}: expected keys {names}")
        return cls(**{n: special[n] for n in names})

    def mask_for(self, mode):
        """[MASK] for "span", [sMASK] for "sentence", [gMASK] for "generation"."""
        return {"span": self.mask, "sentence": self.smask, "generation": self.gmask}[mode]


@dataclass
class GLMSample:
    """One text made into Part A + Part B. All arrays (L,) with L = N + 2 * len(spans)."""
    ids: np.ndarray                 # int64: Part A, then [sop] + span for each span of Part B
    targets: np.ndarray             # int64: IGNORE_INDEX in Part A, span + [eop] in Part B
    loss_mask: np.ndarray           # float32: 0 in Part A, 1 in Part B
    position_ids: np.ndarray        # int64
    block_position_ids: np.ndarray  # int64
    sep: int                        # len(Part A)
    spans: list                     # (start, end) in the original tokens, in Part B order


@dataclass
class GLMBatch:
    """Samples padded to a common length T: arrays (B, T), sep (B,)."""
    ids: np.ndarray                 # pad id on padding
    targets: np.ndarray             # IGNORE_INDEX on padding
    loss_mask: np.ndarray           # 0 on padding
    position_ids: np.ndarray        # 0 on padding
    block_position_ids: np.ndarray  # 0 on padding
    sep: np.ndarray                 # int64 (B,)


# ---------------------------------------------------------------------------------------- choosing spans

def poisson_length_pmf(lam=3.0, max_len=39):
    """p(L = k) for k = 1..max_len: Poisson(lam) restricted to 1..max_len and renormalized. (max_len,)"""
    if lam <= 0 or max_len < 1:
        raise ValueError(f"poisson_lambda={lam}, max_span={max_len}: expected lam > 0 and max_span >= 1")
    logp = [k * math.log(lam) - lam - math.lgamma(k + 1) for k in range(1, max_len + 1)]   # log(lam^k e^-lam / k!)
    p = np.exp(np.array(logp) - max(logp))                                # (max_len,)
    return p / p.sum()


def _mask_target(n_tokens, mask_ratio):
    """The fewest tokens that cover mask_ratio of n_tokens (at least one)."""
    if not 0.0 < mask_ratio <= 1.0:
        raise ValueError(f"mask_ratio={mask_ratio}: expected 0 < mask_ratio <= 1")
    return max(1, math.ceil(round(mask_ratio * n_tokens, 9)))   # round: 0.15 * 20 is 3.0000000000000004


def sample_spans(n_tokens, rng, mask_ratio=0.15, poisson_lambda=3.0, max_span=39):
    """Span mode: non-overlapping, non-touching spans covering >= mask_ratio of n_tokens. -> sorted [(start, end)]"""
    if mask_ratio > 0.5:
        raise ValueError(f"mask_ratio={mask_ratio}: span mode covers at most half the text "
                         f"(spans need an unmasked token between them)")
    target = _mask_target(n_tokens, mask_ratio)
    pmf = poisson_length_pmf(poisson_lambda, max_span)
    # Each span has >= 1 token, so `target` draws always suffice; keep the shortest prefix that covers it.
    lengths = rng.choice(len(pmf), size=target, p=pmf) + 1                  # (target,)
    m = int(np.searchsorted(np.cumsum(lengths), target)) + 1
    lengths = lengths[:m]
    lengths[-1] = _fit_last_length(lengths, n_tokens, target, pmf, rng)
    lengths = rng.permutation(lengths)                                       # (m,) left-to-right order
    # Place them: `slack` unmasked tokens are spare once each gap has its one separator.
    slack = n_tokens - int(lengths.sum()) - (m - 1)
    places = np.sort(rng.integers(0, slack + 1, size=m))                     # (m,) spare tokens before each
    starts = places + np.concatenate([[0], np.cumsum(lengths + 1)[:-1]])    # (m,)
    return [(int(s), int(s + n)) for s, n in zip(starts, lengths)]


def _fit_last_length(lengths, n_tokens, target, pmf, rng):
    """The last drawn span length, redrawn if the m spans and their m - 1 separators overflow the text.

    The spans before the last one cover fewer than `target` tokens (else the last was not drawn), so
    the last must cover at least need = target - (what they cover), and can take at most
    room = the tokens left once they and the m - 1 separators are placed. need <= room whenever
    mask_ratio <= 0.5. An overflowing length is redrawn from the same Poisson, restricted to need..room.
    """
    before = int(lengths[:-1].sum())
    need, room = target - before, n_tokens - before - (len(lengths) - 1)
    if lengths[-1] <= room:
        return lengths[-1]
    allowed = pmf[need - 1:room]                                             # p(L = need), ..., p(L = room)
    return need + rng.choice(len(allowed), p=allowed / allowed.sum())


def sentence_bounds(tokens, sentence_end_ids):
    """[(start, end)] of the sentences of tokens: each ends after a token in sentence_end_ids (the last may not)."""
    is_end = np.isin(tokens, np.asarray(list(sentence_end_ids), dtype=np.int64))   # (N,)
    ends = (np.flatnonzero(is_end) + 1).tolist()
    if not ends or ends[-1] != len(tokens):
        ends.append(len(tokens))
    return list(zip([0] + ends[:-1], ends))


def sample_sentence_spans(tokens, sentence_end_ids, rng, mask_ratio=0.15):
    """Sentence mode: whole sentences, in random order, until they cover >= mask_ratio. -> sorted [(start, end)]"""
    target = _mask_target(len(tokens), mask_ratio)
    sentences = sentence_bounds(tokens, sentence_end_ids)
    chosen, covered = [], 0
    for k in rng.permutation(len(sentences)).tolist():
        chosen.append(sentences[k])
        covered += sentences[k][1] - sentences[k][0]
        if covered >= target:
            break
    return sorted(chosen)


def sample_generation_span(n_tokens, rng, length_range=(0.5, 1.0)):
    """Generation mode: one span at the end, length uniform over length_range of n_tokens. -> [(start, n_tokens)]"""
    lo_frac, hi_frac = length_range
    if not 0.0 < lo_frac <= hi_frac <= 1.0:
        raise ValueError(f"generation_range={length_range}: expected 0 < low <= high <= 1")
    lo = max(1, math.ceil(round(lo_frac * n_tokens, 9)))
    hi = max(lo, math.floor(round(hi_frac * n_tokens, 9)))
    length = int(rng.integers(lo, hi + 1))
    return [(n_tokens - length, n_tokens)]


# ---------------------------------------------------------------------------------------- one sample

def _check_tokens(tokens, special):
    tokens = np.asarray(tokens)
    if tokens.ndim != 1 or tokens.size == 0 or not np.issubdtype(tokens.dtype, np.integer):
        raise ValueError(f"tokens must be a non-empty 1-D sequence of integer ids, got shape {tokens.shape} "
                         f"dtype {tokens.dtype}")
    if tokens.min() < 0:
        raise ValueError(f"tokens hold the negative id {int(tokens.min())}: token ids are >= 0")
    reserved = np.array([special.mask, special.smask, special.gmask, special.sop, special.eop])
    clash = np.flatnonzero(np.isin(tokens, reserved))
    if clash.size:
        raise ValueError(f"tokens hold special id {int(tokens[clash[0]])} at position {int(clash[0])}: "
                         f"the text may not contain mask/smask/gmask/sop/eop ids")
    return tokens.astype(np.int64, copy=False)


def _check_spans(spans, n_tokens, mode):
    if not spans:
        raise ValueError("spans is empty: give at least one (start, end)")
    ordered = sorted((int(s), int(e)) for s, e in spans)
    for s, e in ordered:
        if not 0 <= s < e <= n_tokens:
            raise ValueError(f"span ({s}, {e}) is not a non-empty range inside 0..{n_tokens}")
    for (s0, e0), (s1, e1) in zip(ordered, ordered[1:]):
        if s1 < e0:
            raise ValueError(f"spans ({s0}, {e0}) and ({s1}, {e1}) overlap")
        if mode == "span" and s1 == e0:
            raise ValueError(f"spans ({s0}, {e0}) and ({s1}, {e1}) touch: in span mode two [MASK]s in a row "
                             f"would hide where one span ends; leave a token between them")
    if mode == "generation" and (len(ordered) != 1 or ordered[0][1] != n_tokens):
        raise ValueError(f"generation mode takes one span that ends at the end of the text ({n_tokens}), "
                         f"got {ordered}")


def build_sample(tokens, spans, order, mask_id, special):
    """Assemble Part A and Part B for given spans (sorted, non-overlapping) and Part B order (a permutation)."""
    # Part A: the text between spans, with one mask where each span was.
    pieces, mask_pos, cursor, length = [], [0] * len(spans), 0, 0
    for k, (s, e) in enumerate(spans):
        pieces += [tokens[cursor:s], [mask_id]]
        length += s - cursor
        mask_pos[k] = length                                              # where span k's mask sits in A
        length += 1
        cursor = e
    pieces.append(tokens[cursor:])
    part_a = np.concatenate(pieces).astype(np.int64)                          # (sep,)
    sep = len(part_a)
    ids, targets, pos, block = [part_a], [np.full(sep, IGNORE_INDEX)], [np.arange(sep)], [np.zeros(sep, np.int64)]
    # Part B: each span as [sop] + span -> span + [eop], in the given order.
    for k in order:
        s, e = spans[k]
        ids += [[special.sop], tokens[s:e]]
        targets += [tokens[s:e], [special.eop]]
        pos.append(np.full(e - s + 1, mask_pos[k]))                           # all at the mask's position
        block.append(np.arange(1, e - s + 2))                                  # [sop] = 1, then 2, 3, ...
    ids = np.concatenate(ids).astype(np.int64)                                 # (L,)
    loss_mask = np.zeros(len(ids), np.float32)
    loss_mask[sep:] = 1.0
    return GLMSample(ids=ids, targets=np.concatenate(targets).astype(np.int64), loss_mask=loss_mask,
                     position_ids=np.concatenate(pos).astype(np.int64),
                     block_position_ids=np.concatenate(block).astype(np.int64),
                     sep=sep, spans=[spans[k] for k in order])


def glm_sample(tokens, special, mode="span", seed=0, spans=None, order=None, mask_ratio=0.15,
               poisson_lambda=3.0, max_span=39, sentence_end_ids=None, generation_range=(0.5, 1.0)):
    """Turn one text (token ids (N,)) into a GLM blank-infilling sample.

    special: GLMSpecialIds or a dict {mask, smask, gmask, sop, eop, pad}.
    mode: "span" | "sentence" (needs sentence_end_ids) | "generation".
    seed: an int, or a numpy Generator to draw from (a fresh np.random.default_rng(seed) otherwise).
    spans: explicit [(start, end)] (end exclusive) instead of random ones; order: their Part B order as
    indices into spans (default: a random permutation).
    """
    special = GLMSpecialIds.coerce(special)
    if mode not in MODES:
        raise ValueError(f"mode={mode!r}: expected one of {MODES}")
    tokens = _check_tokens(tokens, special)
    rng = np.random.default_rng(seed)
    if spans is None:
        if mode == "span":
            spans = sample_spans(len(tokens), rng, mask_ratio, poisson_lambda, max_span)
        elif mode == "sentence":
            if sentence_end_ids is None:
                raise ValueError("sentence mode needs sentence_end_ids (the ids that end a sentence, e.g. '.')")
            spans = sample_sentence_spans(tokens, sentence_end_ids, rng, mask_ratio)
        else:
            spans = sample_generation_span(len(tokens), rng, generation_range)
        sorted_spans, rank = spans, list(range(len(spans)))
    else:
        _check_spans(spans, len(tokens), mode)
        rank = sorted(range(len(spans)), key=lambda k: spans[k][0])           # given index, left to right
        sorted_spans = [(int(spans[k][0]), int(spans[k][1])) for k in rank]
    if order is None:
        order = rng.permutation(len(sorted_spans)).tolist()
    else:
        order = [int(k) for k in order]
        if sorted(order) != list(range(len(spans))):
            raise ValueError(f"order={order} is not a permutation of 0..{len(spans) - 1}")
        where = {given: i for i, given in enumerate(rank)}
        order = [where[k] for k in order]                                     # indices into sorted_spans
    return build_sample(tokens, sorted_spans, order, special.mask_for(mode), special)


# ---------------------------------------------------------------------------------------- a batch

def glm_collate(samples, pad_id, length=None):
    """Pad samples into a GLMBatch of (B, T) arrays; T = length, or the longest sample when None."""
    if not samples:
        raise ValueError("no samples to collate")
    longest = max(len(s.ids) for s in samples)
    T = longest if length is None else int(length)
    if T < longest:
        raise ValueError(f"length={T} is shorter than the longest sample ({longest} ids); "
                         f"a sample of N tokens with m spans needs N + 2m")
    B = len(samples)
    batch = GLMBatch(ids=np.full((B, T), pad_id, np.int64), targets=np.full((B, T), IGNORE_INDEX, np.int64),
                     loss_mask=np.zeros((B, T), np.float32), position_ids=np.zeros((B, T), np.int64),
                     block_position_ids=np.zeros((B, T), np.int64),
                     sep=np.array([s.sep for s in samples], np.int64))               # (B,)
    for b, s in enumerate(samples):
        L = len(s.ids)
        for name in ("ids", "targets", "loss_mask", "position_ids", "block_position_ids"):
            getattr(batch, name)[b, :L] = getattr(s, name)
    return batch


class GLMCollator:
    """Texts (lists of token ids) -> a padded GLMBatch, with the span choices drawn from one seed.

        collate = GLMCollator({"mask": 5, "smask": 6, "gmask": 7, "sop": 8, "eop": 9, "pad": 0})
        batch = collate(texts, seed=step)     # the same seed gives the same batch
    """

    def __init__(self, special, mode="span", length=None, mask_ratio=0.15, poisson_lambda=3.0, max_span=39,
                 sentence_end_ids=None, generation_range=(0.5, 1.0)):
        self.special = GLMSpecialIds.coerce(special)
        if mode not in MODES:
            raise ValueError(f"mode={mode!r}: expected one of {MODES}")
        if mode == "sentence" and sentence_end_ids is None:
            raise ValueError("sentence mode needs sentence_end_ids (the ids that end a sentence, e.g. '.')")
        self.mode, self.length = mode, length
        self.options = dict(mask_ratio=mask_ratio, poisson_lambda=poisson_lambda, max_span=max_span,
                            sentence_end_ids=sentence_end_ids, generation_range=generation_range)

    def __call__(self, texts, seed=0):
        """texts: a list of token-id sequences -> GLMBatch; one np.random.default_rng(seed) draws for all."""
        rng = np.random.default_rng(seed)
        samples = [glm_sample(t, self.special, self.mode, seed=rng, **self.options) for t in texts]
        return glm_collate(samples, self.special.pad, self.length)
