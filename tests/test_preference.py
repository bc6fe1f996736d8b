"""DPO: float64 finite differences (log pi(y|x), the loss w.r.t. the logits, a whole Model's parameters through
dpo_step), parity with a PyTorch autograd version of the same loss, properties, batches, the synthetic set."""
import math

import numpy as np
import pytest

from minigpt.chat import add_chat_tokens, encode_chat
from minigpt.config import ModelConfig
from minigpt.gradcheck import check_gradients, move_off_init, numerical_gradient, rel_error, sample_indices
from minigpt.layers.loss import cross_entropy
from minigpt.model import Model
from minigpt.optim import AdamW
from minigpt.preference import (IGNORE_INDEX, Preference, PreferenceBatch, check_answer, dpo_loss,
                                dpo_loss_from_logits, dpo_step, preference_batch, response_kl, sequence_logprobs,
                                sequence_logprobs_backward, synthetic_preferences)
from minigpt.tokenizers import CharTokenizer

N, T, V = 3, 7, 11          # 3 pairs = 6 sequences, T odd, V prime


def random_case(seed=0, n=N, t=T, v=V, dtype=np.float64):
    """Policy and reference logits (2n, t, v), targets, and a mask with a prompt (0s), a response (1s), padding (0s)."""
    rng = np.random.default_rng(seed)
    logits = (2 * rng.standard_normal((2 * n, t, v))).astype(dtype)
    ref_logits = (logits + rng.standard_normal(logits.shape)).astype(dtype)
    targets = rng.integers(0, v, (2 * n, t))
    mask = np.zeros((2 * n, t), dtype=bool)
    for b in range(2 * n):
        start = int(rng.integers(0, t - 1))
        mask[b, start:int(rng.integers(start + 1, t + 1))] = True
    targets[~mask] = IGNORE_INDEX                      # uncounted targets are never read
    return logits, ref_logits, targets, mask


# ---------------------------------------------------------------- finite differences
@pytest.mark.parametrize("shape", [(6, 7, 11), (1, 1, 5), (2, 9, 3)])
def test_sequence_logprobs_gradient(shape):
    B, t, v = shape
    rng = np.random.default_rng(2)
    logits = 2 * rng.standard_normal(shape)
    targets = rng.integers(0, v, (B, t))
    mask = rng.random((B, t)) < 0.7
    mask[:, -1] = True                                          # every sequence counts at least one token
    errors = check_gradients(sequence_logprobs, lambda d, c: (sequence_logprobs_backward(d, c), None, None),
                             [logits, targets, mask], names=["logits", "targets", "mask"])
    assert errors["logits"] < 1e-6, errors


def test_sequence_logprobs_is_the_masked_sum_of_log_softmax():
    logits, _, targets, mask = random_case(3)
    logp, _ = sequence_logprobs(logits, targets, mask)
    z = logits - logits.max(-1, keepdims=True)
    log_softmax = z - np.log(np.exp(z).sum(-1, keepdims=True))
    expected = [sum(log_softmax[b, t, targets[b, t]] for t in range(T) if mask[b, t]) for b in range(2 * N)]
    np.testing.assert_allclose(logp, expected, rtol=1e-13, atol=1e-13)
    assert logp.dtype == np.float64
    assert sequence_logprobs(logits.astype(np.float32), targets, mask)[0].dtype == np.float32


@pytest.mark.parametrize("beta", [0.1, 0.5, 2.0])
def test_dpo_loss_gradient_wrt_the_logits(beta):
    logits, ref_logits, targets, mask = random_case(4)
    loss, dlogits, _ = dpo_loss_from_logits(logits, ref_logits, targets, mask, beta)
    idx, numeric = numerical_gradient(lambda: dpo_loss_from_logits(logits, ref_logits, targets, mask, beta)[0],
                                      logits)
    assert rel_error(dlogits.reshape(-1)[idx], numeric) < 1e-6


def test_dpo_loss_gradient_wrt_the_logps():
    rng = np.random.default_rng(5)
    logps = [rng.standard_normal(4) * 3 for _ in range(4)]
    _, (dchosen, drejected), _ = dpo_loss(*logps, beta=0.7)
    for k, analytic in ((0, dchosen), (1, drejected)):
        idx, numeric = numerical_gradient(lambda: dpo_loss(*logps, beta=0.7)[0], logps[k])
        assert rel_error(analytic, numeric) < 1e-6


def tiny_model(name, seed=0):
    cfg = ModelConfig.preset(name, n_layer=1, d_model=16, n_head=2, max_seq_len=T, vocab_size=V)
    return Model(cfg, seed=seed, dtype="float64")


@pytest.mark.parametrize("name", ["gpt2", "llama", "glm4"])
def test_dpo_step_parameter_gradients(name):
    """Perturb entries of every parameter tensor, recompute the DPO loss, compare with model.grads."""
    model, ref = tiny_model(name), tiny_model(name)
    move_off_init(model, 1)                                    # the policy has moved away from the reference
    _, _, targets, mask = random_case(6)
    ids = np.random.default_rng(7).integers(0, V, (2 * N, T))
    batch, beta = PreferenceBatch(ids, targets, mask), 0.5
    model.zero_grad()
    dpo_step(model, ref, batch, beta)
    ref_logits = ref.forward(ids)

    def loss():
        return dpo_loss_from_logits(model.forward(ids), ref_logits, targets, mask, beta)[0]

    rng = np.random.default_rng(8)
    for key, param in model.params.items():
        analytic = model.grads[key].reshape(-1)
        picks = np.union1d(sample_indices(param.size, 3, rng), rng.choice(np.flatnonzero(analytic), 3))
        idx, numeric = numerical_gradient(loss, param, h=1e-5, indices=picks)
        if np.abs(numeric).max() < 1e-9:                        # a gradient that is exactly zero (see gradcheck)
            assert np.abs(analytic[idx] - numeric).max() < 1e-9, key
        else:
            assert rel_error(analytic[idx], numeric) < 1e-6, key


# ---------------------------------------------------------------- PyTorch parity
def torch_dpo(torch, logits, ref_logits, targets, mask, beta):
    """The same loss written with autograd: log_softmax, gather, masked sum, -logsigmoid of the margin."""
    z = torch.tensor(logits, requires_grad=True)
    y = torch.tensor(np.where(mask, targets, 0))
    m = torch.tensor(mask, dtype=z.dtype)

    def logps(x):
        return (torch.log_softmax(x, -1).gather(-1, y[..., None]).squeeze(-1) * m).sum(-1)

    n = len(logits) // 2
    pi, pi_ref = logps(z), logps(torch.tensor(ref_logits))
    h = beta * ((pi[:n] - pi_ref[:n]) - (pi[n:] - pi_ref[n:]))
    loss = -torch.nn.functional.logsigmoid(h).mean()
    loss.backward()
    return loss.item(), z.grad.numpy()


@pytest.mark.parametrize("seed, beta", [(0, 0.1), (1, 1.0), (2, 5.0)])
def test_dpo_matches_torch_autograd(seed, beta):
    torch = pytest.importorskip("torch", reason="torch is not installed (extra: parity)")
    logits, ref_logits, targets, mask = random_case(seed)
    loss, dlogits, _ = dpo_loss_from_logits(logits, ref_logits, targets, mask, beta)
    torch_loss, torch_dlogits = torch_dpo(torch, logits, ref_logits, targets, mask, beta)
    assert abs(loss - torch_loss) < 1e-12
    assert np.abs(dlogits - torch_dlogits).max() < 1e-12


# ---------------------------------------------------------------- properties
def test_dpo_loss_is_log2_when_the_policy_is_the_reference():
    logits, _, targets, mask = random_case(9)
    loss, dlogits, stats = dpo_loss_from_logits(logits, logits.copy(), targets, mask, beta=0.3)
    assert abs(loss - math.log(2)) < 1e-15
    assert stats["accuracy"] == 0.0 and stats["margin"] == 0.0 and abs(stats["kl"]) < 1e-15
    assert np.abs(dlogits).max() > 0                           # the gradient is not zero: -beta/2N per pair


def test_dpo_swapping_chosen_and_rejected_flips_the_margin():
    logits, ref_logits, targets, mask = random_case(10)
    swap = np.r_[N:2 * N, 0:N]
    loss, dlogits, stats = dpo_loss_from_logits(logits, ref_logits, targets, mask, 0.5)
    loss2, dlogits2, stats2 = dpo_loss_from_logits(logits[swap], ref_logits[swap], targets[swap], mask[swap], 0.5)
    np.testing.assert_allclose(stats2["margins"], -stats["margins"], rtol=1e-12)
    h = stats["margins"]
    assert abs(loss2 - np.logaddexp(0, h).mean()) < 1e-12 and abs(loss - np.logaddexp(0, -h).mean()) < 1e-12
    assert stats["accuracy"] + stats2["accuracy"] == 1.0       # no ties with random logits


def test_dpo_gradient_is_zero_on_prompt_and_padding():
    logits, ref_logits, targets, mask = random_case(11)
    _, dlogits, _ = dpo_loss_from_logits(logits, ref_logits, targets, mask, 0.5)
    assert np.all(dlogits[~mask] == 0)
    assert np.all(np.abs(dlogits[mask]).sum(-1) > 0)
    np.testing.assert_allclose(dlogits.sum(-1), 0, atol=1e-16)  # onehot - softmax sums to 0 over the vocabulary


def test_dpo_loss_stats_and_extremes():
    pc, pr = np.array([0.0, -1.0, -2000.0]), np.array([-1.0, 0.0, 0.0])
    zero = np.zeros(3)
    loss, (dc, dr), stats = dpo_loss(pc, pr, zero, zero, beta=1.0)
    np.testing.assert_allclose(stats["margins"], [1.0, -1.0, -2000.0])
    assert stats["accuracy"] == pytest.approx(1 / 3) and np.isfinite(loss) and np.all(np.isfinite(dc))
    assert loss == pytest.approx((np.log1p(np.exp(-1)) + np.log1p(np.exp(1)) + 2000) / 3, rel=1e-14)
    np.testing.assert_array_equal(dc, -dr)
    assert dc[2] == pytest.approx(-1 / 3)                       # sigmoid(-2000) - 1 = -1, over N = 3


def test_response_kl_matches_its_definition():
    logits, ref_logits, _, mask = random_case(12)
    p = np.exp(logits) / np.exp(logits).sum(-1, keepdims=True)
    q = np.exp(ref_logits) / np.exp(ref_logits).sum(-1, keepdims=True)
    kl = (p * np.log(p / q)).sum(-1)
    assert response_kl(logits, ref_logits, mask) == pytest.approx(kl[mask].mean(), rel=1e-12)


def test_dpo_step_float32_keeps_the_dtype_and_leaves_the_reference_alone():
    cfg = ModelConfig.preset("llama", n_layer=1, d_model=16, n_head=2, max_seq_len=T, vocab_size=V, dropout=0.1)
    model, ref = Model(cfg, seed=0), Model(cfg, seed=0).train()
    before = {k: v.copy() for k, v in ref.params.items()}
    _, _, targets, mask = random_case(13)
    batch = PreferenceBatch(np.random.default_rng(0).integers(0, V, (2 * N, T)), targets, mask)
    model.zero_grad()
    loss, stats = dpo_step(model.eval(), ref, batch)
    assert abs(loss - math.log(2)) < 1e-6 and ref.training     # same weights, no dropout: h = 0
    assert all(g.dtype == np.float32 for g in model.grads.values())
    assert all(np.array_equal(before[k], ref.params[k]) for k in before)
    assert set(stats) == {"chosen_rewards", "rejected_rewards", "margins", "accuracy", "margin", "kl"}


# ---------------------------------------------------------------- batches
@pytest.fixture(scope="module")
def char():
    text = "".join(p.prompt + p.chosen + p.rejected for p in synthetic_preferences(60)) + "abcdefgh"
    return CharTokenizer.from_text(text)


def test_preference_batch_plain_layout(char):
    prefs = [("12+3=", "15", "16"), ("ab|", "ba", "ab because")]
    batch = preference_batch(prefs, char, pad_id=0)
    assert batch.n_pairs == 2 and batch.ids.shape == (4, len("ab|ab because") - 1)
    rows = [(p, a) for p, a, _ in prefs] + [(p, r) for p, _, r in prefs]
    for b, (prompt, answer) in enumerate(rows):
        seq = char.encode(prompt + answer)
        L = len(seq) - 1
        assert batch.ids[b, :L].tolist() == seq[:-1] and np.all(batch.ids[b, L:] == 0)
        assert char.decode(batch.targets[b][batch.mask[b]].tolist()) == answer
        assert np.all(batch.targets[b][~batch.mask[b]] == IGNORE_INDEX)
        assert batch.mask[b].sum() == len(answer) and batch.mask[b, len(prompt) - 1]   # first answer token
    loss, _ = cross_entropy(np.zeros((2, batch.ids.shape[1], char.vocab_size)), batch.targets[:2])
    assert loss == pytest.approx(math.log(char.vocab_size))    # rows 0..N-1 are an SFT batch as they are


def test_preference_batch_with_a_chat_template(char):
    tok = add_chat_tokens(char, "minimal")
    history = [{"role": "user", "content": "1+1="}, {"role": "assistant", "content": "2"},
               {"role": "user", "content": "2+2="}]
    batch = preference_batch([Preference(history, "4", "5"), ("ab|", "ba", "ab")], tok, template="minimal")
    for b, answer in enumerate(["4", "ba", "5", "ab"]):
        assert tok.decode(batch.targets[b][batch.mask[b]].tolist()) == answer + "<|end|>"   # not the earlier "2"
    ids, _ = encode_chat(history + [{"role": "assistant", "content": "4"}], tok, "minimal")
    assert batch.ids[0, :len(ids) - 1].tolist() == ids[:-1]


BAD_EXAMPLES = [
    ([], None, "no examples"),
    ([("1+1=", "2")], None, "example 0: expected \\(prompt, chosen, rejected\\)"),
    ([("1+1=", "2", "3"), ("1+1=", "2", 3)], None, "example 1: the rejected answer must be a str, got int"),
    ([("1+1=", "", "3")], None, "example 0: the prompt and the chosen answer must each encode"),
    ([([{"role": "user", "content": "a"}], "b", "c")], None, "example 0: without a chat template the prompt must"),
    ([([{"role": "robot", "content": "a"}], "b", "c")], "minimal", "example 0 \\(chosen\\): message 0: unknown role"),
]


@pytest.mark.parametrize("examples, template, match", BAD_EXAMPLES)
def test_preference_batch_bad_examples_name_the_example(char, examples, template, match):
    tok = add_chat_tokens(char, "minimal")
    with pytest.raises(ValueError, match=match):
        preference_batch(examples, tok, template=template)


def test_dpo_bad_input():
    logits, ref_logits, targets, mask = random_case(14)
    with pytest.raises(ValueError, match="beta=0"):
        dpo_loss_from_logits(logits, ref_logits, targets, mask, beta=0)
    with pytest.raises(ValueError, match="ref_rejected_logps must be a 1-D array"):
        dpo_loss(np.zeros(3), np.zeros(3), np.zeros(3), np.zeros(2))
    with pytest.raises(ValueError, match="chosen rows then rejected rows"):
        dpo_loss_from_logits(logits[:5], ref_logits[:5], targets[:5], mask[:5])
    with pytest.raises(ValueError, match="mask has shape"):
        sequence_logprobs(logits, targets, mask[:, :-1])
    bad = targets.copy()
    bad[mask] = V
    with pytest.raises(ValueError, match=f"target {V} at a counted position is out of range"):
        sequence_logprobs(logits, bad, mask)


# ---------------------------------------------------------------- the synthetic preference set
def test_synthetic_preferences_are_checkable_and_deterministic():
    prefs = synthetic_preferences(300, seed=3)
    assert prefs == synthetic_preferences(300, seed=3) and prefs != synthetic_preferences(300, seed=4)
    assert synthetic_preferences(0) == []
    for p in prefs:
        assert check_answer(p.prompt, p.chosen) and not check_answer(p.prompt, p.rejected), p
    kinds = [("+" in p.prompt, " because " in p.rejected) for p in prefs]
    assert kinds.count((True, False)) == kinds.count((False, False)) == kinds.count((True, True)) == 100
    sums = [p for p in prefs[::3]]
    assert {int(p.rejected) - int(p.chosen) for p in sums} == {-1, 1}
    with pytest.raises(ValueError, match="n=-1"):
        synthetic_preferences(-1)
    with pytest.raises(ValueError, match="neither an addition"):
        check_answer("hello", "x")


def test_dpo_training_prefers_the_right_answers(char):
    """A few AdamW steps of DPO on the synthetic set: from log 2 down, the chosen answers ranked first."""
    prefs = synthetic_preferences(12, seed=0)
    batch = preference_batch(prefs, char)
    cfg = ModelConfig.preset("llama", n_layer=1, d_model=32, n_head=2, max_seq_len=batch.ids.shape[1],
                             vocab_size=char.vocab_size)
    model, ref = Model(cfg, seed=0), Model(cfg, seed=0)
    opt = AdamW(model.params, lr=1e-2, weight_decay=0.0)
    losses = []
    for _ in range(25):
        model.zero_grad()
        loss, stats = dpo_step(model, ref, batch, beta=0.5)
        opt.step(model.grads)
        losses.append(loss)
    assert abs(losses[0] - math.log(2)) < 1e-6
    assert losses[-1] < 0.5 * losses[0] and stats["accuracy"] == 1.0 and stats["kl"] > 0
