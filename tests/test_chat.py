"""Chat templates: token-for-token parity with the published formats (transformers' apply_chat_template running
the Jinja templates as published; ChatGLM-6B's Python), the loss mask covers exactly the answers (hypothesis),
special tokens added without moving an id, bad conversations."""
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from minigpt.chat import (CHATGLM, GLM4, LLAMA3, MINIMAL, TEMPLATES, ChatTemplate, add_chat_tokens, encode_chat,
                          get_template, stop_ids)
from minigpt.data import load_corpus
from minigpt.tokenizers import BPETokenizer, CharTokenizer

EOT = "<|endoftext|>"
CHINESE = "今天天气很好。我们去公园散步吧！自然语言处理很有趣。问答"
CODE = 'def add(a, b):\n    """Add two numbers."""\n    return a + b  # 1 + 2 == 3\n\n\nprint(add(40, 2))\n'

# ---------------------------------------------------------------- the reference templates
# Meta-Llama-3-8B-Instruct, tokenizer_config.json "chat_template" (huggingface.co/meta-llama), verbatim.
LLAMA3_JINJA = (
    "{% set loop_messages = messages %}{% for message in loop_messages %}{% set content = '<|start_header_id|>' + "
    "message['role'] + '<|end_header_id|>\n\n'+ message['content'] | trim + '<|eot_id|>' %}{% if loop.index0 == 0 "
    "%}{% set content = bos_token + content %}{% endif %}{{ content }}{% endfor %}{% if add_generation_prompt %}"
    "{{ '<|start_header_id|>assistant<|end_header_id|>\n\n' }}{% endif %}")
# THUDM/glm-4-9b-chat, tokenizer_config.json "chat_template", verbatim except the branch for item['tools']
# (a tool-calling system prompt), which conversations without tools never enter.
GLM4_JINJA = (
    "[gMASK]<sop>{% for item in messages %}{% if item['content'] %}<|{{ item['role'] }}|>{{ item['metadata'] }}\n"
    "{{ item['content'] }}{% endif %}{% endfor %}{% if add_generation_prompt %}<|assistant|>{% endif %}")
# minigpt's own format, written as a Jinja template.
MINIMAL_JINJA = ("{% for m in messages %}<|{{ m['role'] }}|>{{ m['content'] }}<|end|>{% endfor %}"
                 "{% if add_generation_prompt %}<|assistant|>{% endif %}")
JINJA = {"llama3": LLAMA3_JINJA, "glm4": GLM4_JINJA, "minimal": MINIMAL_JINJA}


def chatglm6b_reference(hf, messages):
    """ChatGLM-6B's ids, from its published code (THUDM/chatglm-6b): the prompt as modeling_chatglm.py's
    chat() builds it from (query, history), then tokenization_chatglm.py's build_inputs_with_special_tokens:
    prompt ids + [gMASK] + <sop> (+ answer ids + <eop> when the answer is given, as ptuning/main.py trains)."""
    texts = [m["content"] for m in messages]
    history = [(texts[k], texts[k + 1]) for k in range(0, len(texts) - 1, 2)]
    answer = None
    if len(texts) % 2 == 0:                                # the conversation ends with an answer
        history, answer = history[:-1], texts[-1]
    query = texts[len(history) * 2]
    if not history:
        prompt = query
    else:
        prompt = ""
        for i, (old_query, response) in enumerate(history):
            prompt += "[Round {}]\n问：{}\n答：{}\n".format(i, old_query, response)
        prompt += "[Round {}]\n问：{}\n答：".format(len(history), query)
    special = hf.convert_tokens_to_ids
    ids = hf.encode(prompt, add_special_tokens=False) + [special("[gMASK]"), special("<sop>")]
    if answer is not None:
        ids += hf.encode(answer, add_special_tokens=False) + [special("<eop>")]
    return ids


def reference_ids(name, hf, messages, add_generation_prompt):
    """The published format's ids; GLM-4 plus the <|endoftext|> its finetune_demo appends after a last answer."""
    if name == "chatglm":
        return chatglm6b_reference(hf, messages)
    ids = hf.apply_chat_template(messages, tokenize=True, add_generation_prompt=add_generation_prompt,
                                 return_dict=False)
    if name == "glm4" and messages[-1]["role"] == "assistant":
        ids = ids + [hf.convert_tokens_to_ids("<|endoftext|>")]
    return list(ids)


# ---------------------------------------------------------------- fixtures
@pytest.fixture(scope="module")
def base():
    text = load_corpus("builtin")[:60_000] + "\n" + CHINESE * 3 + "\n" + CODE
    return BPETokenizer.train(text, vocab_size=420, special_tokens=[EOT])


@pytest.fixture(scope="module")
def chat_tokenizers(base, tmp_path_factory):
    """{template name: (minigpt tokenizer, transformers tokenizer read from its tokenizer.json)}."""
    transformers = pytest.importorskip("transformers", reason="transformers is not installed (extra: parity)")
    out = {}
    for name in TEMPLATES:
        tok = add_chat_tokens(base, name)
        folder = tok.save(tmp_path_factory.mktemp(name))
        hf = transformers.PreTrainedTokenizerFast(tokenizer_file=str(folder / "tokenizer.json"),
                                                  bos_token="<|begin_of_text|>" if name == "llama3" else None)
        hf.chat_template = JINJA.get(name)
        out[name] = tok, hf
    return out


def conversation(*turns, system=None):
    roles = ["user", "assistant"] * len(turns)
    messages = [{"role": r, "content": c} for r, c in zip(roles, turns)]
    return ([{"role": "system", "content": system}] if system is not None else []) + messages


CONVERSATIONS = [
    conversation("Hello"),
    conversation("What is the capital of France?", "Paris."),
    conversation("Hi", "Hello! How can I help?", system="You are a helpful assistant."),
    conversation("One", "Two", "Three", "Four", system="Count."),
    conversation("a+b?", "It depends.", "On what?"),
    conversation(CHINESE, "我很好 😀 thanks, 谢谢", "emoji 👨‍👩‍👧 flags 🇨🇳"),
    conversation("  leading and trailing  \n", "\n\n  a spaced answer \n\t", " x"),
    conversation(CODE, CODE + "\n# done\n"),
    conversation("'s 're 123 4567 !!", "<|endoftext partial <|eot_id", system=" sys \n"),
]


def cases(name):
    for n, messages in enumerate(CONVERSATIONS):
        if name == "chatglm" and messages[0]["role"] == "system":
            messages = messages[1:]
        for generation in (False, True):
            if not (generation and messages[-1]["role"] == "assistant"):
                yield pytest.param(name, messages, generation, id=f"{name}-{n}-{'gen' if generation else 'plain'}")


# ---------------------------------------------------------------- parity with the published formats
@pytest.mark.parametrize("name, messages, generation", [c for name in TEMPLATES for c in cases(name)])
def test_chat_ids_match_the_published_format(chat_tokenizers, name, messages, generation):
    tok, hf = chat_tokenizers[name]
    ids, mask = encode_chat(messages, tok, name, add_generation_prompt=generation)
    assert ids == reference_ids(name, hf, messages, generation)
    assert len(mask) == len(ids) and set(mask) <= {0, 1}


def test_chat_rendered_text_of_each_format(chat_tokenizers):
    messages = conversation("q1", " a1 ", "q2", "a2")
    expected = {
        "llama3": "<|begin_of_text|><|start_header_id|>user<|end_header_id|>\n\nq1<|eot_id|><|start_header_id|>"
                  "assistant<|end_header_id|>\n\na1<|eot_id|><|start_header_id|>user<|end_header_id|>\n\nq2"
                  "<|eot_id|><|start_header_id|>assistant<|end_header_id|>\n\na2<|eot_id|>",
        "glm4": "[gMASK]<sop><|user|>\nq1<|assistant|>\n a1 <|user|>\nq2<|assistant|>\na2<|endoftext|>",
        "chatglm": "[Round 0]\n问：q1\n答： a1 \n[Round 1]\n问：q2\n答：[gMASK]<sop>a2<eop>",
        "minimal": "<|user|>q1<|end|><|assistant|> a1 <|end|><|user|>q2<|end|><|assistant|>a2<|end|>",
    }
    for name, text in expected.items():
        tok = chat_tokenizers[name][0]
        assert tok.decode(encode_chat(messages, tok, name)[0]) == text, name
    tok = chat_tokenizers["chatglm"][0]
    assert tok.decode(encode_chat(conversation("q"), tok, "chatglm")[0]) == "q[gMASK]<sop>"


def test_chat_minimal_with_a_char_tokenizer_matches_jinja(tmp_path):
    transformers = pytest.importorskip("transformers", reason="transformers is not installed (extra: parity)")
    tok = add_chat_tokens(CharTokenizer.from_text("abcdefghij klmnop?!\n", [EOT]), "minimal")
    folder = tok.save(tmp_path)
    hf = transformers.PreTrainedTokenizerFast(tokenizer_file=str(folder / "tokenizer.json"))
    hf.chat_template = MINIMAL_JINJA
    for messages in (conversation("abc?", "def!"), conversation("a b", "c\nd", "e", system="go")):
        assert encode_chat(messages, tok, "minimal")[0] == reference_ids("minimal", hf, messages, False)
    ids, mask = encode_chat(conversation("ab", "cd"), tok, MINIMAL)
    assert tok.decode([i for i, m in zip(ids, mask) if m]) == "cd<|end|>"


# ---------------------------------------------------------------- the loss mask
def expected_answers(name, messages):
    """What the mask must cover, one string per run of masked tokens, from the format's definition."""
    answers = [(k, m["content"]) for k, m in enumerate(messages) if m["role"] == "assistant"]
    last = len(messages) - 1
    if name == "llama3":
        return [c.strip() + "<|eot_id|>" for _, c in answers]
    if name == "glm4":
        return ["\n" + c + ("<|endoftext|>" if k == last else "<|user|>") for k, c in answers]
    if name == "chatglm":
        return [c + "<eop>" for k, c in answers if k == last]
    return [c + "<|end|>" for _, c in answers]


def masked_runs(tok, ids, mask):
    runs, run = [], []
    for i, m in zip(ids + [None], mask + [0]):
        if m:
            run.append(i)
        elif run:
            runs.append(tok.decode(run))
            run = []
    return runs


def conversations(content):
    return st.tuples(st.lists(content, min_size=1, max_size=5), st.one_of(st.none(), content)).map(
        lambda pair: conversation(*pair[0], system=pair[1]))


ANY_TEXT = st.text(st.characters(blacklist_categories=("Cs",), blacklist_characters="<"), max_size=12)
PLAIN_TEXT = st.lists(st.sampled_from(list("ab xyz12.,!'\n\t") + ["今天", "好", "😀", "  ", "\r\n", "'s", "é"]),
                      min_size=1, max_size=4).map("".join)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
@pytest.mark.parametrize("name", sorted(TEMPLATES))
def test_chat_mask_covers_exactly_the_answers(chat_tokenizers, name, data):
    tok = chat_tokenizers[name][0]
    messages = data.draw(conversations(ANY_TEXT.filter(bool) if name == "glm4" else ANY_TEXT))
    if name == "chatglm" and messages[0]["role"] == "system":
        messages = messages[1:]
    ids, mask = encode_chat(messages, tok, name)
    assert masked_runs(tok, ids, mask) == expected_answers(name, messages)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
@pytest.mark.parametrize("name", sorted(TEMPLATES))
def test_chat_random_conversations_match_the_reference(chat_tokenizers, name, data):
    tok, hf = chat_tokenizers[name]
    messages = data.draw(conversations(PLAIN_TEXT))
    if name == "chatglm" and messages[0]["role"] == "system":
        messages = messages[1:]
    generation = messages[-1]["role"] == "user" and data.draw(st.booleans())
    assert encode_chat(messages, tok, name, generation)[0] == reference_ids(name, hf, messages, generation)


def test_chat_generation_prompt_is_not_in_the_mask(chat_tokenizers):
    for name in TEMPLATES:
        tok = chat_tokenizers[name][0]
        ids, mask = encode_chat(conversation("q", "a", "next"), tok, name, add_generation_prompt=True)
        assert tok.decode(ids).endswith(get_template(name).generation_prompt)
        messages = conversation("q", "a", "next")
        assert mask[-1] == 0 and masked_runs(tok, ids, mask) == expected_answers(name, messages)


def test_chat_stop_ids(chat_tokenizers):
    tok = chat_tokenizers["llama3"][0]
    assert stop_ids(tok, "llama3") == [tok.special_tokens["<|eot_id|>"], tok.special_tokens["<|end_of_text|>"]]
    tok = chat_tokenizers["glm4"][0]
    assert [tok.decode([i]) for i in stop_ids(tok, GLM4)] == ["<|user|>", "<|observation|>", "<|endoftext|>"]


# ---------------------------------------------------------------- adding the special tokens
ORDINARY = ["", "Hello, world! It's 2024.", CODE, CHINESE, "emoji 😀👍🏽", "<|start partial <|eot_id",
            "   \n\n\t "]


@pytest.mark.parametrize("name", sorted(TEMPLATES))
def test_chat_add_tokens_keeps_every_bpe_id(base, name, tmp_path):
    tok = add_chat_tokens(base, name)
    template = get_template(name)
    new = [s for s in template.specials if s not in base.special_tokens]
    assert tok.vocab_size == base.vocab_size + len(new)
    assert all(tok.vocab[i] == t for i, t in base.vocab.items())
    assert {s: tok.special_tokens[s] for s in base.special_tokens} == base.special_tokens
    assert [tok.special_tokens[s] for s in new] == list(range(base.vocab_size, tok.vocab_size))
    assert tok.merges == base.merges and base.vocab_size == 420            # the old tokenizer is untouched
    for text in ORDINARY:
        assert tok.encode(text) == base.encode(text)
    assert add_chat_tokens(tok, name) is tok                                # nothing left to add
    loaded = BPETokenizer.load(tok.save(tmp_path))
    assert loaded.special_tokens == tok.special_tokens and loaded.encode(CODE) == tok.encode(CODE)


def test_chat_add_tokens_to_two_templates_shares_the_common_ones(base):
    tok = add_chat_tokens(add_chat_tokens(base, "glm4"), "chatglm")
    assert tok.vocab_size == base.vocab_size + 6 + 1                        # glm4's new six, then <eop>
    assert tok.special_tokens["<eop>"] == tok.vocab_size - 1


def test_chat_add_tokens_keeps_every_char_id_and_the_unknown_token():
    base = CharTokenizer.from_text("banana cab!", [EOT], unk_token="<unk>")
    tok = add_chat_tokens(base, "minimal")
    assert base.chars == list(" !abcn") and base.special_tokens == {EOT: 6, "<unk>": 7}
    assert tok.special_tokens == {EOT: 6, "<unk>": 7, "<|system|>": 8, "<|user|>": 9, "<|assistant|>": 10,
                                  "<|end|>": 11}
    for text in ["banana", "cab! nab", f"a{EOT}b", "xyz"]:
        assert tok.encode(text) == base.encode(text)
    assert tok.unk_token == "<unk>"


def test_chat_add_tokens_refuses_other_tokenizers():
    with pytest.raises(ValueError, match="BPETokenizer or CharTokenizer"):
        add_chat_tokens(object.__new__(type("Other", (), {"special_tokens": {}})), "minimal")


# ---------------------------------------------------------------- bad input
def msg(role, content):
    return {"role": role, "content": content}


BAD = [
    ([], "non-empty list"),
    ("hello", "non-empty list"),
    ([msg("user", "a"), "text"], "message 1: expected a dict"),
    ([{"role": "user"}], "message 0: expected a dict with 'role' and 'content'"),
    ([msg("user", "a"), msg("robot", "b")], "message 1: unknown role 'robot'"),
    ([msg("user", 3)], "message 0: content must be a str, got int"),
    ([msg("assistant", "a")], "message 0: role 'assistant' where 'user' was expected"),
    ([msg("user", "a"), msg("user", "b")], "message 1: role 'user' where 'assistant' was expected"),
    ([msg("user", "a"), msg("system", "b")], "message 1: a system message can only come first"),
    ([msg("system", "a")], "a system message alone"),
    ([msg("user", "a <|end|> b")], r"message 0: the content contains the special token '<\|end\|>'"),
    ([msg("user", f"a{EOT}")], "message 0: the content contains the special token"),
]


@pytest.mark.parametrize("messages, match", BAD)
def test_chat_bad_conversations_name_the_message(chat_tokenizers, messages, match):
    with pytest.raises(ValueError, match=match):
        encode_chat(messages, chat_tokenizers["minimal"][0], "minimal")


def test_chat_format_specific_errors(chat_tokenizers, base):
    with pytest.raises(ValueError, match="message 1: add_generation_prompt=True opens an assistant turn"):
        encode_chat(conversation("q", "a"), chat_tokenizers["llama3"][0], "llama3", add_generation_prompt=True)
    with pytest.raises(ValueError, match=r"message 0: unknown role 'system'; the 'chatglm' template has"):
        encode_chat(conversation("q", system="s"), chat_tokenizers["chatglm"][0], CHATGLM)
    with pytest.raises(ValueError, match="message 2: empty content; the 'glm4' template would drop"):
        encode_chat(conversation("q", "a", ""), chat_tokenizers["glm4"][0], "glm4")
    with pytest.raises(ValueError, match=r"lacks the special token\(s\) \['<\|begin_of_text\|>'.*add_chat_tokens"):
        encode_chat(conversation("q"), base, LLAMA3)
    with pytest.raises(ValueError, match="unknown chat template 'chatml'"):
        encode_chat(conversation("q"), base, "chatml")


def test_chat_char_tokenizer_without_the_character_is_an_error():
    tok = add_chat_tokens(CharTokenizer.from_text("abc"), "minimal")
    with pytest.raises(ValueError, match="'z'"):
        encode_chat(conversation("abz"), tok, "minimal")
    unk = add_chat_tokens(CharTokenizer.from_text("abc", unk_token="<unk>"), "minimal")
    with pytest.raises(ValueError, match="byte for byte"):
        encode_chat(conversation("abz"), unk, "minimal")


def test_chat_templates_are_data():
    for template in TEMPLATES.values():
        assert isinstance(template, ChatTemplate) and template.source
        assert set(template.stop) <= set(template.specials)
        if template.header:
            assert template.header["assistant"].startswith(template.generation_prompt)
