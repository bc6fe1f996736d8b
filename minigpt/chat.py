r"""Chat templates (对话模板): a conversation as the token ids a chat model reads, and which ids it learns.

A chat model reads one flat sequence of tokens. A chat template is the convention that flattens a
conversation, a list of messages {"role": "system" | "user" | "assistant", "content": str}, into that
sequence: special tokens mark where each turn starts, who speaks, and where the assistant's turn ends.
A model fine-tuned in one convention answers well only in that convention, so a template has to be
reproduced exactly, token for token, as its authors wrote it (tests/test_chat.py checks ours against
transformers' apply_chat_template running the published Jinja templates).

Why a loss mask. Supervised fine-tuning (SFT, 监督微调) trains on whole conversations but scores only the
assistant: the mask is 1 on the tokens the model must learn to WRITE (the assistant's answer, and the token
that ends its turn, so that it learns to stop) and 0 on everything it is only given to READ (the system
prompt, the user's turns, the role headers). With ids and mask from encode_chat:

    inputs, targets, counted = ids[:-1], ids[1:], mask[1:]       # token t+1 is predicted at position t
    loss, dlogits = cross_entropy(model.forward(inputs), targets, loss_mask=counted)

The formats, drawn as text. <|x|> is ONE special token, \n a newline, {system} {user} {answer} the contents;
the part under ^^^ is what the mask covers (the assistant's answer and its end of turn).

  llama3  Meta-Llama-3-8B-Instruct's tokenizer_config.json "chat_template" (contents are trimmed: `| trim`)
      <|begin_of_text|><|start_header_id|>system<|end_header_id|>\n\n{system}<|eot_id|>
      <|start_header_id|>user<|end_header_id|>\n\n{user}<|eot_id|>
      <|start_header_id|>assistant<|end_header_id|>\n\n{answer}<|eot_id|>       (no newlines between turns)
                                                       ^^^^^^^^^^^^^^^^^^
      generation prompt: <|start_header_id|>assistant<|end_header_id|>\n\n     stop: <|eot_id|>, <|end_of_text|>

  glm4    THUDM/glm-4-9b-chat's tokenizer_config.json "chat_template" (its tool-calling branch left out)
      [gMASK]<sop><|system|>\n{system}<|user|>\n{user}<|assistant|>\n{answer}<|user|>\n{user} ...
                                                                   ^^^^^^^^^^^^^^^^^^
      No token closes a turn: the next turn's role token does, and the model stops when it writes
      <|user|> (or <|observation|>, <|endoftext|>: generation_config.json's eos_token_id). So the mask takes
      the answer's "\n", the answer, and the <|user|> that follows it; after the LAST answer, encode_chat
      appends <|endoftext|> and masks it, as GLM-4's finetune_demo does (input_ids.append(eos_token_id)).
      The template skips messages whose content is empty; encode_chat refuses them instead.
      generation prompt: <|assistant|> (without the newline: the model writes it)

  chatglm ChatGLM-6B (THUDM/chatglm-6b, modeling_chatglm.py, ChatGLMForConditionalGeneration.chat/stream_chat,
          and ChatGLMTokenizer.build_inputs_with_special_tokens): numbered rounds, no roles, no system prompt
      one round:   {user}[gMASK]<sop>{answer}<eop>
      more rounds: [Round 0]\n问：{user}\n答：{answer}\n[Round 1]\n问：{user}\n答：[gMASK]<sop>{answer}<eop>
                                                                                               ^^^^^^^^^^^^^
      Earlier rounds are plain prompt text, and ChatGLM-6B reads its prompt (everything before <sop>)
      bidirectionally, so only the LAST answer is learned (ChatGLM-6B's ptuning/main.py also counts <sop>).
      This is the first ChatGLM-6B format: rounds from 0, one "\n" each, the bare query when there is no
      history (ptuning/main.py writes "[Round 0]" even then). ChatGLM2-6B's build_prompt differs:
      "[Round {i+1}]\n\n问：{q}\n\n答：{a}\n\n", rounds from 1.
      generation prompt: [gMASK]<sop> (always there after the last question)    stop: <eop>

  minimal for the tiny models trained here: every piece of structure is a special token, so a character
          tokenizer needs no extra characters
      <|system|>{system}<|end|><|user|>{user}<|end|><|assistant|>{answer}<|end|>
                                                                 ^^^^^^^^^^^^^^^
      generation prompt: <|assistant|>     stop: <|end|>

The rules a conversation must follow (anything else is a ValueError naming the message's index): a non-empty
list of messages, each a dict with a "role" and a str "content"; "system" only as message 0 (and not for
chatglm); then user, assistant, user, ... alternating, starting with the user. A conversation ends with the
assistant (for training) or with the user (for generation: add_generation_prompt=True then opens the
assistant's turn). No content may contain a special token's text (it would be read as the special token).

Tokenization. The whole conversation is rendered to one string and encoded once, exactly as
apply_chat_template does (a separately encoded piece can merge differently at its edges). Each token's
bytes are then lined up with the rendered text to find which message each token came from: a token is in
the mask when all its bytes belong to an assistant's answer region.
"""
import bisect
from dataclasses import dataclass, field

from minigpt.tokenizers import BPETokenizer, CharTokenizer

ROLES = ("system", "user", "assistant")


@dataclass(frozen=True)
class ChatTemplate:
    """How one format writes a conversation (data: encode_chat does the writing).

    begin              written once, before the first message
    header, end        {role: text} written before and after each message's content
    generation_prompt  what add_generation_prompt writes: the start of the assistant's turn. It is a prefix
                       of header["assistant"]; whatever the header writes after it, the model writes itself
                       (GLM-4's "\\n"), so it is in the mask
    stop               generation ends at any of these special tokens (the assistant's end of turn)
    final_stop         appended after a last answer when end["assistant"] is "" (GLM-4: <|endoftext|>)
    trim               contents are .strip()ped first (LLaMA-3's `| trim`)
    nonempty           empty contents are refused (GLM-4's template would silently drop the message)
    roles              the roles the format has
    rounds             ChatGLM-6B's numbered rounds instead of headers: (a past round, the last round,
                       the only round), str.format patterns with {n}, {user}, {answer}
    specials           every special token the format uses (add_chat_tokens adds them to a tokenizer)
    source             where the format was read from
    """
    name: str
    specials: tuple
    generation_prompt: str
    stop: tuple
    begin: str = ""
    header: dict = field(default_factory=dict)
    end: dict = field(default_factory=dict)
    final_stop: str = ""
    trim: bool = False
    nonempty: bool = False
    roles: tuple = ROLES
    rounds: tuple = None
    source: str = ""


def _each_role(text):
    return {role: text.format(role=role) for role in ROLES}


LLAMA3 = ChatTemplate(
    name="llama3",
    specials=("<|begin_of_text|>", "<|end_of_text|>", "<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>"),
    begin="<|begin_of_text|>",
    header=_each_role("<|start_header_id|>{role}<|end_header_id|>\n\n"),
    end=_each_role("<|eot_id|>"),
    generation_prompt="<|start_header_id|>assistant<|end_header_id|>\n\n",
    stop=("<|eot_id|>", "<|end_of_text|>"),
    trim=True,
    source="meta-llama/Meta-Llama-3-8B-Instruct tokenizer_config.json chat_template",
)

GLM4 = ChatTemplate(
    name="glm4",
    specials=("[gMASK]", "<sop>", "<|system|>", "<|user|>", "<|assistant|>", "<|observation|>", "<|endoftext|>"),
    begin="[gMASK]<sop>",
    header={"system": "<|system|>\n", "user": "<|user|>\n", "assistant": "<|assistant|>\n"},
    end=_each_role(""),
    generation_prompt="<|assistant|>",
    stop=("<|user|>", "<|observation|>", "<|endoftext|>"),
    final_stop="<|endoftext|>",
    nonempty=True,
    source="THUDM/glm-4-9b-chat tokenizer_config.json chat_template; finetune_demo/finetune.py (the final eos)",
)

CHATGLM = ChatTemplate(
    name="chatglm",
    specials=("[gMASK]", "<sop>", "<eop>"),
    generation_prompt="[gMASK]<sop>",
    stop=("<eop>",),
    end={"assistant": "<eop>"},
    roles=("user", "assistant"),
    rounds=("[Round {n}]\n问：{user}\n答：{answer}\n", "[Round {n}]\n问：{user}\n答：", "{user}"),
    source="THUDM/chatglm-6b modeling_chatglm.py chat(); tokenization_chatglm.py build_inputs_with_special_tokens",
)

MINIMAL = ChatTemplate(
    name="minimal",
    specials=("<|system|>", "<|user|>", "<|assistant|>", "<|end|>"),
    header={"system": "<|system|>", "user": "<|user|>", "assistant": "<|assistant|>"},
    end=_each_role("<|end|>"),
    generation_prompt="<|assistant|>",
    stop=("<|end|>",),
    source="minigpt's own, for the tiny models trained here",
)

TEMPLATES = {t.name: t for t in (LLAMA3, GLM4, CHATGLM, MINIMAL)}


def get_template(template):
    """A ChatTemplate from itself or its name ("llama3", "glm4", "chatglm", "minimal")."""
    if isinstance(template, ChatTemplate):
        return template
    if template not in TEMPLATES:
        raise ValueError(f"unknown chat template {template!r}; expected one of {sorted(TEMPLATES)}")
    return TEMPLATES[template]


# ---------------------------------------------------------------- tokenizers
def add_chat_tokens(tokenizer, template):
    """The tokenizer with the template's special tokens added, no existing id changed: the new ones take the
    next ids (vocab_size, vocab_size + 1, ...). Tokens it already has keep theirs. Returns the tokenizer
    itself when nothing is missing, else a new BPETokenizer / CharTokenizer (the old one is left as it was).
    Ordinary text encodes as before, unless it contains a new special token's text."""
    template = get_template(template)
    new = [s for s in template.specials if s not in tokenizer.special_tokens]
    if not new:
        return tokenizer
    old = [s for s, _ in sorted(tokenizer.special_tokens.items(), key=lambda item: item[1])]
    if isinstance(tokenizer, BPETokenizer):
        n = tokenizer.vocab_size
        vocab = {**tokenizer.vocab, **{n + k: s.encode("utf-8") for k, s in enumerate(new)}}
        return BPETokenizer(vocab, tokenizer.merges, {**tokenizer.special_tokens,
                                                      **{s: n + k for k, s in enumerate(new)}})
    if isinstance(tokenizer, CharTokenizer):
        # the old specials in id order, the unknown token among them, so that it keeps its id too
        return CharTokenizer(tokenizer.chars, old + new, tokenizer.unk_token)
    raise ValueError(f"add_chat_tokens: expected a BPETokenizer or CharTokenizer, got {type(tokenizer).__name__}")


def stop_ids(tokenizer, template):
    """The ids at which generation ends (minigpt.generate's stop_tokens) for this template."""
    template = get_template(template)
    _check_tokenizer(tokenizer, template)
    return [tokenizer.special_tokens[s] for s in template.stop]


def _check_tokenizer(tokenizer, template):
    missing = [s for s in template.specials if s not in tokenizer.special_tokens]
    if missing:
        raise ValueError(f"the tokenizer lacks the special token(s) {missing} of the {template.name!r} chat "
                         f"template; add them with minigpt.chat.add_chat_tokens(tokenizer, {template.name!r})")


# ---------------------------------------------------------------- checking a conversation
def check_messages(messages, template, add_generation_prompt=False, forbidden=()):
    """The conversation as a list of (role, content), after the rules in the module docstring; contents
    trimmed when the template trims. forbidden: strings no content may contain (special tokens)."""
    template = get_template(template)
    if isinstance(messages, (str, dict)) or not hasattr(messages, "__len__") or len(messages) == 0:
        raise ValueError(f"messages: expected a non-empty list of {{'role', 'content'}} dicts, got {messages!r:.80}")
    turns = [_check_message(i, m, template, forbidden) for i, m in enumerate(messages)]
    first = 1 if turns[0][0] == "system" else 0
    if first == len(turns):
        raise ValueError("messages: a system message alone is no conversation; add a user message")
    for i in range(first, len(turns)):
        expected = "user" if (i - first) % 2 == 0 else "assistant"
        if turns[i][0] != expected:
            raise ValueError(f"message {i}: role {turns[i][0]!r} where {expected!r} was expected (after an "
                             f"optional system message, user and assistant alternate, starting with the user)")
    if add_generation_prompt and turns[-1][0] == "assistant":
        raise ValueError(f"message {len(turns) - 1}: add_generation_prompt=True opens an assistant turn, but the "
                         "conversation already ends with the assistant")
    return turns


def _check_message(i, message, template, forbidden):
    if not isinstance(message, dict) or "role" not in message or "content" not in message:
        raise ValueError(f"message {i}: expected a dict with 'role' and 'content', got {message!r:.80}")
    role, content = message["role"], message["content"]
    if role not in template.roles:
        raise ValueError(f"message {i}: unknown role {role!r}; the {template.name!r} template has {template.roles}")
    if role == "system" and i != 0:
        raise ValueError(f"message {i}: a system message can only come first")
    if not isinstance(content, str):
        raise ValueError(f"message {i}: content must be a str, got {type(content).__name__}")
    if template.trim:
        content = content.strip()
    if template.nonempty and not content:
        raise ValueError(f"message {i}: empty content; the {template.name!r} template would drop the message")
    inside = [s for s in forbidden if s in content]
    if inside:
        raise ValueError(f"message {i}: the content contains the special token {inside[0]!r}, which would be "
                         "read as a control token, not as text")
    return role, content


# ---------------------------------------------------------------- rendering: (text, owner) segments
# owner = the index of the message whose answer the text is (it goes in the loss mask), or -1.
def _turn_segments(turns, template, add_generation_prompt):
    """The header formats (llama3, glm4, minimal)."""
    segments = [(template.begin, -1)]
    open_answer = None                               # an answer whose end of turn is the next turn's first token
    for i, (role, content) in enumerate(turns):
        header = template.header[role]
        if open_answer is not None:
            stop = next((s for s in template.stop if header.startswith(s)), "")
            segments += [(stop, open_answer)]
            header, open_answer = header[len(stop):], None
        if role == "assistant":
            prompt = template.generation_prompt
            segments += [(prompt, -1), (header[len(prompt):] + content + template.end[role], i)]
            open_answer = i if not template.end[role] else None
        else:
            segments += [(header + content + template.end[role], -1)]
    if open_answer is not None:
        segments += [(template.final_stop, open_answer)]
    if add_generation_prompt:
        segments += [(template.generation_prompt, -1)]
    return segments


def _round_segments(turns, template, add_generation_prompt):
    """ChatGLM-6B: past rounds as prompt text, the last question, [gMASK]<sop>, the last answer, <eop>."""
    past, last, alone = template.rounds
    pairs = [(turns[k][1], turns[k + 1][1] if k + 1 < len(turns) else None) for k in range(0, len(turns), 2)]
    text = "".join(past.format(n=n, user=q, answer=a) for n, (q, a) in enumerate(pairs[:-1]))
    question, answer = pairs[-1]
    text += (alone if len(pairs) == 1 else last).format(n=len(pairs) - 1, user=question)
    segments = [(text + template.generation_prompt, -1)]
    if answer is not None:
        segments += [(answer + template.end["assistant"], len(turns) - 1)]
    return segments


# ---------------------------------------------------------------- encoding
def encode_chat(messages, tokenizer, template, add_generation_prompt=False):
    """A conversation -> (ids, loss_mask): two lists of the same length, loss_mask 1 on the assistant's
    answers and their end-of-turn tokens, 0 elsewhere (the module docstring draws each format).

    tokenizer: a BPETokenizer or CharTokenizer that has the template's special tokens (add_chat_tokens).
    template: a ChatTemplate or its name. add_generation_prompt: end with the opening of the assistant's
    turn, for generation (the conversation must then end with the user).
    """
    ids, owners = _encode(messages, tokenizer, template, add_generation_prompt)
    return ids, [int(o >= 0) for o in owners]


def _encode(messages, tokenizer, template, add_generation_prompt):
    """-> (ids, owners): for each token, the index of the message whose answer it is in, or -1."""
    template = get_template(template)
    _check_tokenizer(tokenizer, template)
    forbidden = sorted(set(tokenizer.special_tokens) | set(template.specials))
    turns = check_messages(messages, template, add_generation_prompt, forbidden)
    render = _round_segments if template.rounds else _turn_segments
    segments = [(text, owner) for text, owner in render(turns, template, add_generation_prompt) if text]
    text = "".join(t for t, _ in segments)
    ids = tokenizer.encode(text)
    return ids, _token_owners(tokenizer, ids, text, segments)


def _token_owners(tokenizer, ids, text, segments):
    """Line each token's bytes up with the rendered text: the owner of a token all of whose bytes lie in one
    owned segment, else -1 (a token reaching over a segment's edge belongs to no answer)."""
    starts, owners, offset = [], [], 0
    for t, owner in segments:                        # byte offset where each segment starts
        starts.append(offset)
        owners.append(owner)
        offset += len(t.encode("utf-8"))
    out, position = [], 0
    for i in ids:
        size = len(_token_bytes(tokenizer, i))
        first = bisect.bisect_right(starts, position) - 1
        last = bisect.bisect_right(starts, position + size - 1) - 1
        out.append(owners[first] if first == last else -1)
        position += size
    if position != offset:
        raise ValueError("the tokenizer does not reproduce the conversation's text byte for byte (a character "
                         "outside a CharTokenizer's alphabet read as its unknown token?)")
    return out


def _token_bytes(tokenizer, i):
    if isinstance(tokenizer, BPETokenizer):
        return tokenizer.vocab[i]
    return tokenizer.decode([i]).encode("utf-8")
