"""minigpt.finetune: the built-in instructions and pairs, JSONL files, growing the vocabulary, SFT batches, sft() and
dpo() end to end on tiny models, the evaluation helpers and the chat history."""
import json
import re
import string

import numpy as np
import pytest

from minigpt import Model, ModelConfig, checkpoint
from minigpt.chat import add_chat_tokens, encode_chat
from minigpt.finetune import (IGNORE_INDEX, PREFERENCE_KINDS, TASKS, FinetuneOptions, Instruction, answer,
                              builtin_instructions, builtin_preferences, chat_model, copy_model, dpo,
                              encode_conversations, fit_history, grow_vocab, load_init, preference_kind,
                              preference_metrics, read_conversations, read_preferences, run_template, sft, sft_batch,
                              split_of, task_accuracy)
from minigpt.tokenizers import CharTokenizer

ALPHABET = string.ascii_lowercase + string.digits + " +?:>="


def tiny(preset="llama", **overrides):
    tok = CharTokenizer.from_text(ALPHABET)
    cfg = ModelConfig.preset(preset, **{"n_layer": 1, "d_model": 32, "n_head": 2, "vocab_size": tok.vocab_size,
                                        "max_seq_len": 48, **overrides})
    return Model(cfg, seed=0), tok


def user_text(ex):
    return ex.messages[0]["content"]


# ---------------------------------------------------------------- the built-in data
def test_builtin_instructions_rotate_tasks_and_are_right():
    data = builtin_instructions(50, "train", seed=3)
    assert [ex.task for ex in data[:5]] == list(TASKS)
    assert data == builtin_instructions(50, "train", seed=3)                       # deterministic
    for ex in data:
        user, right = user_text(ex), ex.answer
        assert [m["role"] for m in ex.messages] == ["user", "assistant"] and right
        if ex.task == "add":
            a, b = map(int, re.fullmatch(r"what is (\d+)\+(\d+)\?", user).groups())
            assert right == str(a + b)
        elif ex.task in ("copy", "reverse"):
            s = user.split(" ", 1)[1]
            assert right == (s if ex.task == "copy" else s[::-1])
        elif ex.task == "rule":
            shown, s = re.fullmatch(r"like xyz>(xyz|zyx): ([a-h]+)", user).groups()
            assert right == (s if shown == "xyz" else s[::-1])
        else:
            assert user.startswith("first word: ") and right == user.split()[2]


def test_held_out_instructions_are_never_trained_on():
    train = {user_text(ex) for ex in builtin_instructions(2000, "train")}
    test = {user_text(ex) for ex in builtin_instructions(300, "test", seed=1)}
    assert not train & test
    assert all(split_of(u) == "test" for u in test) and all(split_of(u) == "train" for u in train)
    with pytest.raises(ValueError, match="split='dev'"):
        builtin_instructions(3, "dev")


def test_builtin_preferences_prefer_the_task_done_and_the_short_answer():
    pairs = builtin_preferences(30, "train", seed=2)
    for i, (prompt, chosen, rejected) in enumerate(pairs):
        question = prompt[0]["content"]
        assert preference_kind(i) == PREFERENCE_KINDS[i % 3] and chosen != rejected
        if preference_kind(i) == "not added":
            a, b = map(int, re.fullmatch(r"what is (\d+)\+(\d+)\?", question).groups())
            assert chosen == str(a + b) and rejected == f"{a}{b}"
        elif preference_kind(i) == "not reversed":
            s = question.split(" ", 1)[1]
            assert chosen == s[::-1] and len(rejected) == len(s)
        else:
            assert rejected.startswith(chosen + " because ") and rejected.endswith("=" + chosen)
    held_out = builtin_preferences(30, "test", seed=2)
    assert not {p.prompt[0]["content"] for p in pairs} & {p.prompt[0]["content"] for p in held_out}


# ---------------------------------------------------------------- files
def write_lines(path, lines):
    path.write_text("".join((line if isinstance(line, str) else json.dumps(line)) + "\n" for line in lines))
    return path


def conversation(user="hi", assistant="hello"):
    return {"messages": [{"role": "user", "content": user}, {"role": "assistant", "content": assistant}]}


def test_read_conversations_and_preferences(tmp_path):
    path = write_lines(tmp_path / "sft.jsonl", [conversation(), "", conversation("copy ab", "ab")])
    data = read_conversations(path)
    assert [ex.answer for ex in data] == ["hello", "ab"] and data[0].prompt == [{"role": "user", "content": "hi"}]
    path = write_lines(tmp_path / "dpo.jsonl", [{"prompt": "hi", "chosen": "hello", "rejected": "go away"},
                                                {"prompt": [{"role": "user", "content": "hi"}], "chosen": "a",
                                                 "rejected": "b"}])
    pairs = read_preferences(path)
    assert pairs[0].prompt == [{"role": "user", "content": "hi"}] and pairs[1].rejected == "b"


@pytest.mark.parametrize("line, message", [
    ("{not json", r"bad\.jsonl:2: not JSON"),
    ("[1, 2]", r"bad\.jsonl:2: expected a JSON object"),
    ({"text": "hi"}, r"bad\.jsonl:2: expected a \"messages\" field"),
    ({"messages": [{"role": "user", "content": "hi"}]}, r"bad\.jsonl:2: the conversation must end with the assistant"),
    ({"messages": [{"role": "bot", "content": "hi"}]}, r"bad\.jsonl:2: message 0: unknown role 'bot'"),
])
def test_read_conversations_names_the_file_and_line(tmp_path, line, message):
    path = write_lines(tmp_path / "bad.jsonl", [conversation(), line])
    with pytest.raises(ValueError, match=message):
        read_conversations(path)


def test_read_preferences_names_the_file_and_line(tmp_path):
    path = write_lines(tmp_path / "bad.jsonl", [{"prompt": "hi", "chosen": "a"}])
    with pytest.raises(ValueError, match=r"bad\.jsonl:1: missing field\(s\) \['rejected'\]"):
        read_preferences(path)
    with pytest.raises(FileNotFoundError, match="nowhere.jsonl"):
        read_preferences(tmp_path / "nowhere.jsonl")
    with pytest.raises(ValueError, match="no records"):
        read_conversations(write_lines(tmp_path / "empty.jsonl", [""]))


# ---------------------------------------------------------------- growing the vocabulary
@pytest.mark.parametrize("preset", ["gpt2", "llama"])                      # tied and untied output head
def test_grow_vocab_copies_the_old_and_draws_the_new(preset):
    model, tok = tiny(preset)
    V, C = model.config.vocab_size, model.config.d_model
    before = {k: v.copy() for k, v in model.params.items()}
    grown = grow_vocab(model, V + 400, seed=1)
    assert grown.config.vocab_size == V + 400 and model.config.vocab_size == V
    assert all(np.array_equal(model.params[k], before[k]) for k in before)          # the old model is untouched
    for key, value in grown.params.items():
        if key in ("wte", "lm_head"):
            old = value[:V] if key == "wte" else value[:, :V]
            new = value[V:] if key == "wte" else value[:, V:]
            assert np.array_equal(old, before[key]) and new.shape in ((400, C), (C, 400))
            assert abs(new.std() - model.config.init_std) < 0.1 * model.config.init_std and abs(new.mean()) < 2e-3
        else:
            assert np.array_equal(value, before[key])
        assert not np.shares_memory(value, model.params[key])
    ids = np.array([[1, 5, 9, 2, 7]])
    assert np.allclose(grown.forward(ids)[..., :V], model.forward(ids), atol=1e-6)  # old tokens: the same model
    with pytest.raises(ValueError, match="vocab_size=3"):
        grow_vocab(model, 3)


def test_chat_model_adds_the_template_tokens_with_new_ids():
    model, tok = tiny()
    grown, tok2 = chat_model(model, tok, "minimal")
    V = tok.vocab_size
    assert [tok2.special_tokens[s] for s in ("<|system|>", "<|user|>", "<|assistant|>", "<|end|>")] == \
        list(range(V, V + 4))
    assert tok2.encode("what is 1+2?") == tok.encode("what is 1+2?") and grown.config.vocab_size == V + 4
    again_model, again_tok = chat_model(grown, tok2, "minimal")                        # nothing new: the same objects
    assert again_model is grown and again_tok is tok2


# ---------------------------------------------------------------- batches
def test_sft_batch_counts_the_assistant_tokens_only():
    _, tok = tiny()
    tok = add_chat_tokens(tok, "minimal")
    convs = [conversation("copy ab", "ab")["messages"], conversation("what is 1+2?", "3")["messages"]]
    rows = encode_conversations(convs, tok, "minimal")
    inputs, targets = sft_batch(rows)
    assert inputs.shape == targets.shape == (2, max(len(ids) for ids, _ in rows) - 1)
    for b, (ids, mask) in enumerate(rows):
        counted = targets[b] != IGNORE_INDEX
        assert tok.decode(targets[b][counted].tolist()) == ["ab", "3"][b] + "<|end|>"
        assert inputs[b, :len(ids) - 1].tolist() == ids[:-1] and not counted[len(ids) - 1:].any()
    _, all_targets = sft_batch(rows, mask_prompt=False)
    assert [(t != IGNORE_INDEX).sum() for t in all_targets] == [len(ids) - 1 for ids, _ in rows]   # no padding counted
    too_long = r"conversation 0 \('copy ab'\.\.\.\) is 13 tokens, longer than the model's context of 5"
    with pytest.raises(ValueError, match=too_long):
        encode_conversations(convs, tok, "minimal", max_len=5)


# ---------------------------------------------------------------- training
HELLO = [Instruction("", tuple(conversation()["messages"]))] * 4


def test_sft_learns_a_conversation_and_writes_a_run_folder(tmp_path):
    model, tok = tiny()
    result = sft((model, tok), HELLO, steps=60, lr=1e-2, batch_size=4, eval_every=30, out=str(tmp_path / "run"))
    assert model.config.vocab_size == tok.vocab_size                                   # the init is not changed
    losses = [r["loss"] for r in result.history if "loss" in r]
    assert len(losses) == 60 and losses[-1] < 0.05 < losses[0]
    assert answer(result.model, result.tokenizer, [[{"role": "user", "content": "hi"}]]) == [("hello", True)]
    saved = checkpoint.load(tmp_path / "run")
    assert saved.step == 60 and saved.state["kind"] == "sft" and run_template(tmp_path / "run") == "minimal"
    assert saved.tokenizer.special_tokens == result.tokenizer.special_tokens
    logged = [json.loads(line) for line in (tmp_path / "run" / "log.jsonl").read_text().splitlines()]
    assert logged == result.history


def test_sft_on_builtin_data_logs_a_held_out_loss():
    model, tok = tiny()
    result = sft((model, tok), "builtin", steps=4, batch_size=4, eval_every=2, eval_size=8, n_builtin=50)
    steps, val = result.records("val_loss")
    assert steps.tolist() == [0, 2, 4] and np.isfinite(val).all() and result.out is None


def test_dpo_moves_the_policy_and_keeps_the_reference(tmp_path):
    model, tok = tiny()
    pairs = builtin_preferences(12, "train")
    start = sft((model, tok), builtin_instructions(40, "train", tasks=("add", "reverse")), steps=20, batch_size=8)
    init_params = {k: v.copy() for k, v in start.model.params.items()}
    result = dpo((start.model, start.tokenizer), pairs, steps=25, batch_size=12, lr=1e-3, eval_every=25,
                 out=str(tmp_path / "dpo"))
    assert all(np.array_equal(result.ref_model.params[k], v) for k, v in init_params.items())
    first, last = result.history[0], result.history[-1]
    assert first["accuracy"] == 0.0 and first["kl"] == 0.0 and abs(first["loss"] - np.log(2)) < 1e-6
    metrics = preference_metrics(result.model, result.ref_model, pairs, result.tokenizer)
    assert metrics["accuracy"] >= 0.9 and metrics["margin"] > 0 and metrics["kl"] > 0 and last["loss"] < 0.5
    assert checkpoint.load(tmp_path / "dpo").state["kind"] == "dpo"


def test_options_are_checked():
    model, tok = tiny()
    with pytest.raises(ValueError, match="steps=0"):
        sft((model, tok), HELLO, steps=0)
    with pytest.raises(ValueError, match="beta=0"):
        dpo((model, tok), builtin_preferences(3), beta=0)
    with pytest.raises(ValueError, match="unknown chat template 'chatml'"):
        sft((model, tok), HELLO, options=FinetuneOptions(template="chatml"))
    with pytest.raises(FileNotFoundError, match="nowhere.jsonl"):
        sft((model, tok), "nowhere.jsonl")


# ---------------------------------------------------------------- evaluation, chat history
def test_task_accuracy_counts_exact_answers_that_close_their_turn():
    model, tok = tiny()
    result = sft((model, tok), HELLO, steps=60, lr=1e-2, batch_size=4)
    right = Instruction("greet", HELLO[0].messages)
    wrong = Instruction("other", ({"role": "user", "content": "hi"}, {"role": "assistant", "content": "bye"}))
    acc = task_accuracy(result.model, result.tokenizer, [right, wrong])
    assert acc["accuracy"] == 0.5 and acc["tasks"] == {"greet": 1.0, "other": 0.0} and acc["in_template"] == 1.0
    fresh, fresh_tok, _ = load_init((model, tok))
    assert task_accuracy(fresh, fresh_tok, [right], max_new_tokens=6)["accuracy"] == 0.0


def test_fit_history_drops_the_oldest_exchanges():
    _, tok = tiny()
    tok = add_chat_tokens(tok, "minimal")
    system = [{"role": "system", "content": "be brief"}]
    history = system + [{"role": "user", "content": "aaaa"}, {"role": "assistant", "content": "bbbb"},
                        {"role": "user", "content": "cccc"}, {"role": "assistant", "content": "dddd"}]
    ids, kept = fit_history(history, "eeee", tok, "minimal", context=100, room=10)
    assert kept == history + [{"role": "user", "content": "eeee"}]
    assert ids == encode_chat(kept, tok, "minimal", add_generation_prompt=True)[0]
    short = len(encode_chat(system + history[3:] + kept[-1:], tok, "minimal", add_generation_prompt=True)[0])
    ids, kept = fit_history(history, "eeee", tok, "minimal", context=short + 10, room=10)
    assert kept == system + history[3:] + [{"role": "user", "content": "eeee"}] and len(ids) == short
    with pytest.raises(ValueError, match="more than the model's context of 12"):
        fit_history(history, "eeee", tok, "minimal", context=12, room=10)


def test_copy_model_is_independent():
    model, _ = tiny()
    twin = copy_model(model)
    twin.params["wte"] += 1
    assert not np.allclose(twin.params["wte"], model.params["wte"])
