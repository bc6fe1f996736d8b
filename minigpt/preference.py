"""Preference tuning with DPO (直接偏好优化, Direct Preference Optimization; Rafailov et al. 2023).

Data: pairs of answers to the same prompt x, one preferred (y_w, "chosen") over the other (y_l, "rejected").
RLHF would fit a reward model to such pairs and then run PPO against it; DPO shows that the optimal policy
of that KL-regularized objective satisfies r(x, y) = beta * log(pi(y|x) / pi_ref(y|x)) + (a term of x alone),
so the policy itself is the reward model ("implicit reward") and the pairs can train it directly.

Forward. pi is the model being trained (the policy), pi_ref a frozen copy of where it started (after SFT).
For one pair, with log pi(y|x) = sum over the response tokens t of log softmax(z_t)[y_t]  (z_t: the logits
that predict token y_t):
    chosen reward    r_w = beta * (log pi(y_w|x) - log pi_ref(y_w|x))
    rejected reward  r_l = beta * (log pi(y_l|x) - log pi_ref(y_l|x))
    margin           h   = r_w - r_l
    loss             L   = mean over the N pairs of  -log sigmoid(h)  =  log(1 + exp(-h))   (softplus(-h))
-log sigmoid(h) is a logistic loss on the margin: it pushes the chosen answer's log-probability up and the
rejected one's down, RELATIVE to the reference; beta sets how far the policy may drift (small beta: far).
When pi == pi_ref, h = 0 and L = log 2 exactly.

Backward, by hand, from the loss down to the logits:
    dL/dh                   = -(1 - sigmoid(h)) / N  =  (sigmoid(h) - 1) / N     (d softplus(-h)/dh = -sigmoid(-h))
    dh/d log pi(y_w|x)      = +beta,      dh/d log pi(y_l|x) = -beta              (the reference terms are constants)
    d log pi(y|x) / d z_t   = onehot(y_t) - softmax(z_t)  at each response position t, 0 elsewhere
                              (d log_softmax(z)[y] / dz = onehot(y) - softmax(z))
so dlogits[b, t, :] = c_b * (onehot(y_t) - softmax(z_t)) on sequence b's response positions, with
c_b = beta * dL/dh for a chosen sequence and -beta * dL/dh for a rejected one, and 0 on prompt and padding.
The pairs that are already ranked right (h >> 0) get almost no gradient: sigmoid(h) - 1 -> 0.

The code splits this into a forward/backward pair for log pi(y|x) (sequence_logprobs) and the loss on the N
pairs of log-probabilities (dpo_loss); dpo_step runs a whole step on a Model.

What is logged besides the loss: the rewards r_w, r_l, the margins h, the accuracy (the fraction of pairs with
r_w > r_l, strictly: 0 at the start, when every reward is 0), and the KL divergence of the policy from the
reference on the response tokens: at each response position, sum_v pi(v) (log pi(v) - log pi_ref(v)) over
the whole vocabulary, averaged over positions. That is the exact KL of the next-token distributions given
the same prefix, cheap here because both models' logits are in hand (no sampling estimate is needed).

Dimension letters: N pairs, B sequences (2N: the chosen ones, then the rejected ones), T time, V vocabulary.
"""
import re
from typing import NamedTuple

import numpy as np

from minigpt.backend import get_xp
from minigpt.chat import _encode, get_template
from minigpt.data.synthetic import addition, reverse_task
from minigpt.layers.loss import log_softmax

IGNORE_INDEX = -100


# ---------------------------------------------------------------- log pi(y|x): a forward/backward pair
def sequence_logprobs(logits, targets, mask):
    """log pi(y|x) of each sequence: the sum, over its counted positions, of the target's log-probability.
    logits (B, T, V), targets int (B, T), mask (B, T) nonzero = counted (a response token)
    ->  logp (B,) in the logits' dtype, cache for sequence_logprobs_backward
    Targets at uncounted positions are never read (padding may hold -100)."""
    _check_sequences(logits, targets, mask)
    xp = get_xp(logits)
    B, T, V = logits.shape
    m = (xp.asarray(mask) != 0).astype(logits.dtype)                  # (B, T) 1 on response positions
    y = xp.where(m != 0, xp.asarray(targets), 0)                      # (B, T) uncounted targets point at class 0
    shifted = logits - logits.max(axis=-1, keepdims=True)             # (B, T, V) largest logit 0: no overflow
    e = xp.exp(shifted)                                               # (B, T, V)
    total = e.sum(axis=-1)                                            # (B, T)
    b, t = xp.arange(B)[:, None], xp.arange(T)[None, :]               # (B, 1), (1, T) index grids
    token_logp = shifted[b, t, y] - xp.log(total)                     # (B, T) log softmax(z_t)[y_t]
    logp = (token_logp * m).sum(axis=-1)                              # (B,) summed over the response
    probs = e / total[..., None]                                      # (B, T, V) softmax(z), for the backward
    return logp, (probs, y, m)


def sequence_logprobs_backward(dlogp, cache):
    """dlogp (B,) -> dlogits (B, T, V): dlogp[b] * (onehot(y_t) - softmax(z_t)) on counted positions, else 0."""
    probs, y, m = cache
    xp = get_xp(probs)
    B, T, V = probs.shape
    dlogp = xp.asarray(dlogp).astype(probs.dtype, copy=False)         # (B,)
    dlogits = -probs                                                  # (B, T, V) the -softmax(z) term
    b, t = xp.arange(B)[:, None], xp.arange(T)[None, :]
    dlogits[b, t, y] += 1                                             # (B, T, V) + onehot(y_t): undoes the pick of y_t
    dlogits *= (dlogp[:, None] * m)[..., None]                        # (B, T, V) undoes the masked sum over t
    return dlogits


def _check_sequences(logits, targets, mask):
    if logits.ndim != 3:
        raise ValueError(f"sequence_logprobs: logits must be (B, T, V), got shape {logits.shape}")
    for name, value in (("targets", targets), ("mask", mask)):
        if value.shape != logits.shape[:2]:
            raise ValueError(f"sequence_logprobs: {name} has shape {value.shape}, expected {logits.shape[:2]}")
    bad = targets[(mask != 0) & ((targets < 0) | (targets >= logits.shape[-1]))]
    if bad.size:
        raise ValueError(f"sequence_logprobs: target {int(bad[0])} at a counted position is out of range: "
                         f"expected 0 <= target < V = {logits.shape[-1]}")


# ---------------------------------------------------------------- the DPO loss on log-probabilities
def dpo_loss(policy_chosen_logps, policy_rejected_logps, ref_chosen_logps, ref_rejected_logps, beta=0.1):
    """The DPO loss of N pairs, each argument (N,) log pi(y|x) of the policy or the reference.
    ->  loss (a float), (dloss/dpolicy_chosen_logps (N,), dloss/dpolicy_rejected_logps (N,)), stats:
        chosen_rewards, rejected_rewards, margins (N,) arrays; accuracy, margin (the mean), floats."""
    _check_logps(policy_chosen_logps, policy_rejected_logps, ref_chosen_logps, ref_rejected_logps, beta)
    xp = get_xp(policy_chosen_logps)
    N = policy_chosen_logps.shape[0]
    chosen_rewards = beta * (policy_chosen_logps - ref_chosen_logps)             # (N,) r_w
    rejected_rewards = beta * (policy_rejected_logps - ref_rejected_logps)       # (N,) r_l
    h = chosen_rewards - rejected_rewards                                       # (N,) the margins
    loss = float(xp.logaddexp(0, -h).mean())                                    # mean -log sigmoid(h), stable
    dh = -xp.exp(-xp.logaddexp(0, h)) / N                                       # (N,) (sigmoid(h) - 1) / N
    stats = dict(chosen_rewards=chosen_rewards, rejected_rewards=rejected_rewards, margins=h,
                 accuracy=float((chosen_rewards > rejected_rewards).mean()), margin=float(h.mean()))
    return loss, (beta * dh, -beta * dh), stats               # dh/dlog pi(y_w|x) = beta, dh/dlog pi(y_l|x) = -beta


def _check_logps(*logps_and_beta):
    *logps, beta = logps_and_beta
    names = ("policy_chosen_logps", "policy_rejected_logps", "ref_chosen_logps", "ref_rejected_logps")
    for name, value in zip(names, logps):
        if getattr(value, "ndim", None) != 1 or value.shape != logps[0].shape or value.shape[0] == 0:
            raise ValueError(f"dpo_loss: {name} must be a 1-D array of N > 0 log-probabilities, the same shape as "
                             f"policy_chosen_logps {getattr(logps[0], 'shape', None)}; got "
                             f"{getattr(value, 'shape', type(value).__name__)}")
    if not beta > 0:
        raise ValueError(f"dpo_loss: beta={beta!r}, expected a number > 0")


def dpo_loss_from_logits(logits, ref_logits, targets, mask, beta=0.1):
    """The DPO loss of a PreferenceBatch's logits: rows 0..N-1 chosen, N..2N-1 rejected.
    logits, ref_logits (2N, T, V); targets int, mask (2N, T)
    ->  loss (float), dlogits (2N, T, V) (the policy's; the reference gets none), stats (dpo_loss's, and kl)"""
    xp = get_xp(logits)
    if logits.shape[0] % 2 or ref_logits.shape != logits.shape:
        raise ValueError(f"dpo_loss_from_logits: expected logits and ref_logits of one shape (2N, T, V), chosen rows "
                         f"then rejected rows; got {logits.shape} and {ref_logits.shape}")
    N = logits.shape[0] // 2
    logp, cache = sequence_logprobs(logits, targets, mask)                      # (2N,)
    ref_logp, _ = sequence_logprobs(ref_logits, targets, mask)                  # (2N,) constants
    loss, (dchosen, drejected), stats = dpo_loss(logp[:N], logp[N:], ref_logp[:N], ref_logp[N:], beta)
    dlogits = sequence_logprobs_backward(xp.concatenate([dchosen, drejected]), cache)   # (2N, T, V)
    stats["kl"] = response_kl(logits, ref_logits, mask)
    return loss, dlogits, stats


def response_kl(logits, ref_logits, mask):
    """KL(pi || pi_ref) of the next-token distributions, averaged over the counted positions (a float).
    logits, ref_logits (B, T, V), mask (B, T)"""
    xp = get_xp(logits)
    logp, ref_logp = log_softmax(logits), log_softmax(ref_logits)              # (B, T, V) each
    kl = (xp.exp(logp) * (logp - ref_logp)).sum(axis=-1)                        # (B, T) sum_v pi (log pi - log pi_ref)
    m = xp.asarray(mask) != 0
    return float(kl[m].mean()) if bool(m.any()) else 0.0


# ---------------------------------------------------------------- one step on a Model
def dpo_step(model, ref_model, batch, beta=0.1, **forward_kwargs):
    """One DPO forward and backward: adds the loss gradient into model.grads (call model.zero_grad() first,
    then step the optimizer). ref_model is only run forward, in eval mode (no dropout): it is never changed.
    batch: a PreferenceBatch (preference_batch). forward_kwargs go to both models' forward.
    -> loss (float), stats (chosen_rewards, rejected_rewards, margins, accuracy, margin, kl)."""
    logits = model.forward(batch.ids, **forward_kwargs)                        # (2N, T, V)
    was_training = ref_model.training
    try:
        ref_logits = ref_model.eval().forward(batch.ids, **forward_kwargs)     # (2N, T, V), no backward
    finally:
        ref_model.train(was_training)
    ref_logits = model.xp.asarray(ref_logits)                                   # on the policy's device
    loss, dlogits, stats = dpo_loss_from_logits(logits, ref_logits, batch.targets, batch.mask, beta)
    model.backward(dlogits)
    return loss, stats


# ---------------------------------------------------------------- batches
class PreferenceBatch(NamedTuple):
    """N pairs as 2N right-padded sequences: rows 0..N-1 prompt + chosen, rows N..2N-1 prompt + rejected.
    ids int64 (2N, T)      the tokens, without each sequence's last one; padding after the end
    targets int64 (2N, T)  ids shifted by one: targets[b, t] is the token after ids[b, t]; -100 where not counted
    mask bool (2N, T)      True where the target is a response token (so cross_entropy(..., targets) on rows
                           0..N-1 is the SFT loss of the chosen answers)"""
    ids: np.ndarray
    targets: np.ndarray
    mask: np.ndarray

    @property
    def n_pairs(self):
        return self.ids.shape[0] // 2


class Preference(NamedTuple):
    prompt: object            # a str, or (with a chat template) a list of messages that ends with the user
    chosen: str
    rejected: str


def preference_batch(examples, tokenizer, template=None, pad_id=0):
    """A PreferenceBatch from (prompt, chosen, rejected) triples (Preference or plain tuples).

    Without a template the prompt and each answer are encoded separately and joined (as examples_to_batch
    does): the prompt is a str, and log pi(y|x) counts exactly the answer's tokens. With a chat template
    (a name or a ChatTemplate; the tokenizer must have its tokens, see minigpt.chat.add_chat_tokens) the
    prompt is a str (one user message) or a list of messages ending with the user; the answer is the
    assistant's last turn, and log pi(y|x) counts what the template's loss mask counts for it (the answer and
    its end-of-turn token). Padding (pad_id, on the right) is never counted.
    """
    triples = [_as_preference(n, e) for n, e in enumerate(examples)]
    if not triples:
        raise ValueError("preference_batch: no examples")
    encode = _chat_rows if template is not None else _plain_rows
    template = get_template(template) if template is not None else None
    chosen = [encode(n, p.prompt, p.chosen, "chosen", tokenizer, template) for n, p in enumerate(triples)]
    rejected = [encode(n, p.prompt, p.rejected, "rejected", tokenizer, template) for n, p in enumerate(triples)]
    rows = chosen + rejected
    T = max(len(ids) for ids, _ in rows) - 1
    ids = np.full((len(rows), T), pad_id, dtype=np.int64)                     # (2N, T)
    targets = np.full((len(rows), T), IGNORE_INDEX, dtype=np.int64)           # (2N, T)
    mask = np.zeros((len(rows), T), dtype=bool)                               # (2N, T)
    for b, (seq, counted) in enumerate(rows):
        L = len(seq) - 1
        ids[b, :L] = seq[:-1]
        mask[b, :L] = counted[1:]                                             # target t is token t + 1
        targets[b, :L] = np.where(mask[b, :L], seq[1:], IGNORE_INDEX)
    return PreferenceBatch(ids, targets, mask)


def _as_preference(n, example):
    if isinstance(example, dict) or not hasattr(example, "__len__") or len(example) != 3:
        raise ValueError(f"example {n}: expected (prompt, chosen, rejected), got {example!r:.80}")
    prompt, chosen, rejected = example
    for name, value in (("chosen", chosen), ("rejected", rejected)):
        if not isinstance(value, str):
            raise ValueError(f"example {n}: the {name} answer must be a str, got {type(value).__name__}")
    return Preference(prompt, chosen, rejected)


def _plain_rows(n, prompt, answer, which, tokenizer, template):
    """prompt ids + answer ids, and 1 on the answer's tokens."""
    if not isinstance(prompt, str):
        raise ValueError(f"example {n}: without a chat template the prompt must be a str, got "
                         f"{type(prompt).__name__} (pass template= for a list of messages)")
    prompt_ids, answer_ids = tokenizer.encode(prompt), tokenizer.encode(answer)
    if not prompt_ids or not answer_ids:
        raise ValueError(f"example {n}: the prompt and the {which} answer must each encode to at least one token "
                         f"(prompt {prompt!r:.40}, {which} {answer!r:.40})")
    return prompt_ids + answer_ids, [0] * len(prompt_ids) + [1] * len(answer_ids)


def _chat_rows(n, prompt, answer, which, tokenizer, template):
    """The conversation with the answer as the assistant's last turn, and 1 on that turn's masked tokens."""
    messages = [{"role": "user", "content": prompt}] if isinstance(prompt, str) else list(prompt)
    messages.append({"role": "assistant", "content": answer})
    try:
        ids, owners = _encode(messages, tokenizer, template, add_generation_prompt=False)
    except ValueError as err:
        raise ValueError(f"example {n} ({which}): {err}") from err
    return ids, [int(o == len(messages) - 1) for o in owners]


# ---------------------------------------------------------------- a built-in preference set
def synthetic_preferences(n, seed=0):
    """n Preference triples from minigpt.data.synthetic's tasks, checkable with check_answer. In turn:
        wrong sum      "85+63="    chosen "148"       rejected "147" or "149" (off by one)
        not reversed   "eccaab|"   chosen "baacce"    rejected "eccaab" (a palindrome gets one letter changed)
        rambling       "85+63="    chosen "148"       rejected "148 because 85+63=148"
    """
    if n < 0:
        raise ValueError(f"n={n}: expected a number of examples >= 0")
    sums = addition(n, seed=[seed, 0])
    reversals = reverse_task(n, length=(2, 8), seed=[seed, 1])
    offsets = np.random.default_rng([seed, 2]).choice([-1, 1], size=n)          # (n,) the off-by-one direction
    out = []
    for i in range(n):
        ex, kind = (reversals if i % 3 == 1 else sums)[i], i % 3
        if kind == 0:
            total = int(ex.answer)
            wrong = total + 1 if total == 0 else total + int(offsets[i])
            out.append(Preference(ex.prompt, ex.answer, str(wrong)))
        elif kind == 1:
            out.append(Preference(ex.prompt, ex.answer, _not_reversed(ex.prompt[:-1])))
        else:
            out.append(Preference(ex.prompt, ex.answer, f"{ex.answer} because {ex.prompt}{ex.answer}"))
    return out


def _not_reversed(s):
    """s itself (the task undone), or, when s is a palindrome, s with its first letter moved on by one."""
    if s != s[::-1]:
        return s
    return chr(ord("a") + (ord(s[0]) - ord("a") + 1) % 26) + s[1:]


_SUM = re.compile(r"(\d+)\+(\d+)=")


def check_answer(prompt, answer):
    """Is answer right for a synthetic_preferences prompt ("a+b=" or "s|", the reversal task)?"""
    match = _SUM.fullmatch(prompt)
    if match:
        return answer == str(int(match[1]) + int(match[2]))
    if prompt.endswith("|") and len(prompt) > 1:
        return answer == prompt[:-1][::-1]
    raise ValueError(f"check_answer: {prompt!r} is neither an addition ('a+b=') nor a reversal ('s|') prompt")
