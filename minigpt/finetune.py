r"""Fine-tuning a pretrained model into an assistant: instruction tuning (SFT) and preference tuning (DPO).

ChatGPT came out of three stages of training: pretraining, instruction fine-tuning, and reinforcement learning
from human feedback (预训练-指令微调-人类反馈强化学习). This module does the last two on the tiny models of this
library, starting from a run folder written by `minigpt train`:

    pretrained run  --sft-->  an assistant that answers in a chat template  --dpo-->  one that prefers good answers

Supervised fine-tuning (SFT, 指令微调). The data are conversations, lists of messages {"role", "content"}. Each is
written out in a chat template (minigpt.chat: special tokens mark the turns) and trained with the same next-token
loss as pretraining, but counted on the assistant's tokens only: with ids and mask from encode_chat,

    L_SFT = - (1 / n) * sum over t with mask[t+1] = 1 of  log p(ids[t+1] | ids[<= t])       n = number of counted t

(cross_entropy's ignore_index: targets are -100 where the mask is 0). Its gradient is cross-entropy's, restricted:

    dL_SFT / dz_t = (mask[t+1] / n) * (softmax(z_t) - onehot(ids[t+1]))           z_t: the logits at position t

so the model learns to WRITE answers, and gets no gradient for predicting the user's questions. Sequences of
different lengths are padded on the right; the padding is never counted.

Growing the vocabulary. A template's special tokens (<|user|>, <|assistant|>, <|end|>, ...) are new to a pretrained
tokenizer: add_chat_tokens gives them the next ids, V, V + 1, ..., so every old id keeps its meaning, and
grow_vocab gives the model a new row of the token embedding (and a new column of an untied output head) for each,
drawn from N(0, init_std) as at initialisation. Every old weight is copied unchanged, so on old tokens the grown
model computes exactly what the pretrained one did.

Direct preference optimization (DPO, minigpt.preference). The data are pairs of answers to one prompt, the chosen
y_w preferred over the rejected y_l. The loss, with pi the model being trained and pi_ref a frozen copy of where it
started (the SFT model):

    L_DPO = - mean log sigmoid( beta * [ log pi(y_w|x)/pi_ref(y_w|x) - log pi(y_l|x)/pi_ref(y_l|x) ] )

Its gradient is written by hand in minigpt.preference; lesson 29 derives it from the RLHF objective.

The built-in data (no download). Instructions made from minigpt.data.synthetic's tasks and the built-in corpus,
each with one right answer, so that a model's answers can be checked:

    add      "what is 85+63?"               -> "148"
    copy     "copy eccaab"                  -> "eccaab"
    reverse  "reverse eccaab"               -> "baacce"
    rule     "like xyz>zyx: dgef"           -> "fegd"    (a rule shown by one example, copy or reverse, drawn per
                                                         question: it is only in the prompt, 上下文学习)
    words    "first word: this freedom as"  -> "this"    (three words of the built-in corpus)

An instruction is held out (split "test") when the CRC-32 of its user text is 0 mod 10, so no held-out question is
ever trained on. The built-in preference pairs (builtin_preferences) ask the same questions and prefer the right
answer over the question's numbers or letters left as they were (the task not done), or a short answer over a
rambling one: the preference is checkable.

Files. SFT reads JSONL, one {"messages": [...]} per line, each conversation ending with the assistant; DPO reads
JSONL, one {"prompt": str or [messages ending with the user], "chosen": str, "rejected": str} per line. A bad line
is a ValueError naming the file and the line.

A fine-tuning run folder is a training run folder (minigpt.train): checkpoints/ (minigpt.checkpoint, with the
tokenizer, its state naming the template, the kind and the --init run), log.jsonl, so `minigpt sample --run`,
`minigpt chat --run` and `minigpt plot loss --run` work on it. A fine-tuning run is short and is not resumed: run it
again.

Dimension letters: B sequences, T time, V vocabulary, C channels, N preference pairs.
"""
import dataclasses
import json
import math
import re
import time
import zlib
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import NamedTuple

import numpy as np

from minigpt import checkpoint
from minigpt.backend import to_numpy
from minigpt.chat import add_chat_tokens, check_messages, encode_chat, get_template, stop_ids
from minigpt.data.corpus import builtin_corpus
from minigpt.data.synthetic import addition, copy_task, reverse_task
from minigpt.generate import generate_stream
from minigpt.layers.loss import cross_entropy
from minigpt.model import Model
from minigpt.optim import AdamW, clip_grad_norm, cosine_lr
from minigpt.preference import Preference, dpo_loss_from_logits, dpo_step, preference_batch, sequence_logprobs
from minigpt.train import TrainingDiverged

IGNORE_INDEX = -100
TASKS = ("add", "copy", "reverse", "rule", "words")
PREFERENCE_KINDS = ("not added", "not reversed", "rambling")
HELD_OUT = 10                     # one instruction in HELD_OUT is held out (by the CRC-32 of its user text)


# ---------------------------------------------------------------- the built-in instructions
class Instruction(NamedTuple):
    """One conversation to train on or to test with: its task ("add", ..., or "" when read from a file) and its
    messages, the last one the assistant's answer."""
    task: str
    messages: tuple

    @property
    def prompt(self):
        """The conversation without its answer: what the model is given."""
        return list(self.messages[:-1])

    @property
    def answer(self):
        return self.messages[-1]["content"]


def split_of(user_text):
    """"test" for one user text in HELD_OUT (CRC-32 % HELD_OUT == 0), else "train": the same on every machine."""
    return "test" if zlib.crc32(user_text.encode("utf-8")) % HELD_OUT == 0 else "train"


@lru_cache(maxsize=1)
def _corpus_words():
    """The built-in corpus as one list of its lower-case words of 2 to 7 letters (in order)."""
    return [w for w in re.findall(r"[a-z]+", builtin_corpus()) if 2 <= len(w) <= 7]


def _words_examples(n, seed):
    """n stretches of 3 consecutive corpus words: "first word: a b c" -> "a"."""
    words, rng = _corpus_words(), np.random.default_rng(seed)
    stretches = [words[s:s + 3] for s in rng.integers(0, len(words) - 3, size=n).tolist()]
    return [(f"first word: {' '.join(ws)}", ws[0]) for ws in stretches]


def _rule_examples(n, seed):
    """n strings to change by a rule shown by one example on the letters xyz, copy ("xyz>xyz") or reverse
    ("xyz>zyx"), drawn per question: "like xyz>zyx: dgef" -> "fegd". The rule is only in the prompt."""
    rng = np.random.default_rng(seed)
    queries = copy_task(n, length=(2, 6), seed=rng.integers(1 << 32))
    flips = rng.random(n) < 0.5                                                      # (n,) reverse or copy
    return [(f"like xyz>{'zyx' if flip else 'xyz'}: {q.answer}", q.answer[::-1] if flip else q.answer)
            for q, flip in zip(queries, flips.tolist())]


def _task_examples(task, n, seed):
    """n (user text, answer) pairs of one task."""
    if task == "add":
        return [(f"what is {e.prompt[:-1]}?", e.answer) for e in addition(n, digits=2, seed=seed)]
    if task == "copy":
        return [(f"copy {e.prompt[:-1]}", e.answer) for e in copy_task(n, length=(2, 8), seed=seed)]
    if task == "reverse":
        return [(f"reverse {e.prompt[:-1]}", e.answer) for e in reverse_task(n, length=(2, 8), seed=seed)]
    if task == "rule":
        return _rule_examples(n, seed)
    if task == "words":
        return _words_examples(n, seed)
    raise ValueError(f"unknown task {task!r}; expected one of {TASKS}")


def _split_examples(task, n, split, seed, chunk=512):
    """n (user, answer) pairs of a task in the split, drawn in chunks of a fixed size (so that the first k of n are the
    same for every n >= k) until there are enough."""
    out, attempt = [], 0
    while len(out) < n:
        batch = _task_examples(task, chunk, [seed, TASKS.index(task), attempt])
        out += [pair for pair in batch if split_of(pair[0]) == split]
        attempt += 1
        if attempt > 100 + n // 16:
            raise ValueError(f"task {task!r} cannot make {n} different {split!r} examples")
    return out[:n]


def builtin_instructions(n, split="train", seed=0, tasks=TASKS):
    """n Instructions from the built-in tasks, in turn (add, copy, reverse, rule, words, add, ...), all in split
    ("train" or "test": the held-out ones). Deterministic for a seed; a shorter list is a prefix of a longer one."""
    if split not in ("train", "test"):
        raise ValueError(f"split={split!r}: expected 'train' or 'test'")
    if n < 0 or not tasks or not set(tasks) <= set(TASKS):
        raise ValueError(f"n={n}, tasks={tasks!r}: expected n >= 0 and one or more of {TASKS}")
    per_task = {t: _split_examples(t, -(-n // len(tasks)), split, seed) for t in tasks}
    out = []
    for i in range(n):
        task = tasks[i % len(tasks)]
        user, answer = per_task[task][i // len(tasks)]
        out.append(Instruction(task, ({"role": "user", "content": user}, {"role": "assistant", "content": answer})))
    return out


def builtin_preferences(n, split="train", seed=0):
    """n Preference pairs asking the built-in questions, kinds in turn (PREFERENCE_KINDS), the task done over the
    task not done, and a short answer over a rambling one:
        not added     "what is 85+63?"   chosen "148"      rejected "8563" (the numbers side by side)
        not reversed  "reverse eccaab"   chosen "baacce"   rejected "eccaab" (a palindrome: one letter changed)
        rambling      "what is 85+63?"   chosen "148"      rejected "148 because 85+63=148"
    The prompt is a list of messages (one user message). Held out by the same rule as the instructions."""
    sums = builtin_instructions(-(-2 * n // 3) + 1, split, seed=1000 + seed, tasks=("add",))
    reversals = builtin_instructions(n // 3 + 1, split, seed=2000 + seed, tasks=("reverse",))
    out = []
    for i in range(n):
        kind = PREFERENCE_KINDS[i % 3]
        ex = reversals[i // 3] if kind == "not reversed" else sums[i // 3 * 2 + (kind == "rambling")]
        right, question = ex.answer, ex.prompt[0]["content"]
        if kind == "not added":
            wrong = question[8:-1].replace("+", "")                  # "what is 85+63?" -> "8563"
        elif kind == "not reversed":
            wrong = _not_reversed(right[::-1])
        else:
            wrong = f"{right} because {question[8:-1]}={right}"
        out.append(Preference(ex.prompt, right, wrong))
    return out


def _not_reversed(s):
    """s itself (the task not done), or, when s is a palindrome, s with its first letter moved on by one."""
    return s if s != s[::-1] else chr(ord("a") + (ord(s[0]) - ord("a") + 1) % 26) + s[1:]


def preference_kind(i):
    """The kind of builtin_preferences' pair i."""
    return PREFERENCE_KINDS[i % 3]


# ---------------------------------------------------------------- files
def _jsonl_records(path):
    """(line number, dict) for every non-blank line of a JSONL file; errors name the file and line."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such file (expected JSONL, one JSON object per line, or 'builtin')")
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except UnicodeDecodeError as err:
        raise ValueError(f"{path}: not UTF-8 text ({err})") from err
    records = []
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as err:
            raise ValueError(f"{path}:{number}: not JSON ({err.msg}, column {err.colno})") from err
        if not isinstance(record, dict):
            raise ValueError(f"{path}:{number}: expected a JSON object, got {type(record).__name__}")
        records.append((number, record))
    if not records:
        raise ValueError(f"{path}: no records (an empty file)")
    return records


def read_conversations(path, template="minimal"):
    """The Instructions of a JSONL file of {"messages": [...]}, each a conversation ending with the assistant,
    checked against the template's rules (a ValueError naming the file and the line)."""
    out = []
    for number, record in _jsonl_records(path):
        messages = record.get("messages")
        try:
            if messages is None:
                raise ValueError(f"expected a \"messages\" field, found {sorted(record)}")
            turns = check_messages(messages, template)
            if turns[-1][0] != "assistant":
                raise ValueError("the conversation must end with the assistant's answer (the one SFT learns)")
        except ValueError as err:
            raise ValueError(f"{path}:{number}: {err}") from err
        out.append(Instruction("", tuple({"role": m["role"], "content": m["content"]} for m in messages)))
    return out


def read_preferences(path, template="minimal"):
    """The Preferences of a JSONL file of {"prompt": str or [messages ending with the user], "chosen": str,
    "rejected": str} (a ValueError naming the file and the line)."""
    out = []
    for number, record in _jsonl_records(path):
        try:
            missing = [k for k in ("prompt", "chosen", "rejected") if k not in record]
            if missing:
                raise ValueError(f"missing field(s) {missing}")
            prompt = record["prompt"]
            messages = [{"role": "user", "content": prompt}] if isinstance(prompt, str) else prompt
            check_messages(messages, template, add_generation_prompt=True)
            for name in ("chosen", "rejected"):
                if not isinstance(record[name], str):
                    raise ValueError(f"{name!r} must be a str, got {type(record[name]).__name__}")
        except ValueError as err:
            raise ValueError(f"{path}:{number}: {err}") from err
        out.append(Preference(list(messages), record["chosen"], record["rejected"]))
    return out


# ---------------------------------------------------------------- the model: new tokens, copies
def grow_vocab(model, vocab_size, seed=0):
    """A new Model with vocab_size tokens (>= the model's): every parameter copied, plus, for each new token, a row
    of wte and (untied head) a column of lm_head drawn from N(0, init_std). The old model is left as it was.
        wte (V, C) -> (V', C)        lm_head (C, V) -> (C, V')        everything else: the same values"""
    config = model.config
    V, C = config.vocab_size, config.d_model
    if isinstance(vocab_size, bool) or not isinstance(vocab_size, int) or vocab_size < V:
        raise ValueError(f"vocab_size={vocab_size!r}: expected an int >= the model's vocab_size {V}")
    rng = np.random.default_rng([seed, 7])
    params = {key: np.array(to_numpy(value), copy=True) for key, value in model.params.items()}
    new_rows = rng.standard_normal((vocab_size - V, C)) * config.init_std              # (V' - V, C)
    params["wte"] = np.concatenate([params["wte"], new_rows.astype(params["wte"].dtype)])   # (V', C)
    if "lm_head" in params:
        new_cols = rng.standard_normal((C, vocab_size - V)) * config.init_std          # (C, V' - V)
        params["lm_head"] = np.concatenate([params["lm_head"], new_cols.astype(params["lm_head"].dtype)], axis=1)
    grown = dataclasses.replace(config, vocab_size=vocab_size)
    return Model(grown, device=model.device, dtype=model.dtype, params=params)


def copy_model(model):
    """An independent copy (its own arrays): the frozen reference of DPO."""
    params = {key: np.array(to_numpy(value), copy=True) for key, value in model.params.items()}
    return Model(model.config, device=model.device, dtype=model.dtype, params=params)


def chat_model(model, tokenizer, template="minimal", seed=0):
    """(model, tokenizer) that know the template's special tokens: add_chat_tokens, then grow_vocab when the
    tokenizer grew (the same objects back when it had them all)."""
    tokenizer = add_chat_tokens(tokenizer, template)
    if tokenizer.vocab_size <= model.config.vocab_size:
        return model, tokenizer                      # nothing new, or a model with spare rows (a padded vocabulary)
    return grow_vocab(model, tokenizer.vocab_size, seed), tokenizer


# ---------------------------------------------------------------- SFT batches
def encode_conversations(conversations, tokenizer, template, max_len=None):
    """[(ids, loss_mask)] of Instructions (or message lists); max_len: the model's context, an error past it."""
    rows = []
    for n, conv in enumerate(conversations):
        messages = conv.messages if isinstance(conv, Instruction) else conv
        try:
            ids, mask = encode_chat(list(messages), tokenizer, template)
        except ValueError as err:
            raise ValueError(f"conversation {n}: {err}") from err
        if max_len is not None and len(ids) - 1 > max_len:
            first = str(messages[0]["content"])[:30]
            raise ValueError(f"conversation {n} ({first!r}...) is {len(ids)} tokens, longer than the model's context "
                             f"of {max_len} + 1 (its max_seq_len): shorten it, or start from a model with a longer "
                             "context (minigpt train --seq-len)")
        rows.append((ids, mask))
    return rows


def sft_batch(rows, mask_prompt=True, pad_id=0):
    """Right-padded inputs and targets of encoded conversations [(ids, mask)]:
    inputs int64 (B, T) the tokens without each one's last; targets int64 (B, T) the next tokens, IGNORE_INDEX on
    padding and (mask_prompt) wherever the loss mask is 0, so only the assistant's tokens count."""
    T = max(len(ids) for ids, _ in rows) - 1
    inputs = np.full((len(rows), T), pad_id, dtype=np.int64)                  # (B, T)
    targets = np.full((len(rows), T), IGNORE_INDEX, dtype=np.int64)           # (B, T)
    for b, (ids, mask) in enumerate(rows):
        L = len(ids) - 1
        inputs[b, :L] = ids[:-1]
        counted = np.asarray(mask[1:], dtype=bool) if mask_prompt else np.ones(L, dtype=bool)   # target t: token t+1
        targets[b, :L] = np.where(counted, ids[1:], IGNORE_INDEX)
    return inputs, targets


# ---------------------------------------------------------------- options, runs
@dataclass
class FinetuneOptions:
    """A fine-tuning run. Defaults: SFT on the built-in instructions for the tiny presets (DPO: see DPO_DEFAULTS)."""
    steps: int = 2000
    batch_size: int = 32
    lr: float = 3e-3                      # the peak of the schedule
    min_lr: float | None = None           # None: lr / 10
    warmup_steps: int | None = None       # None: steps // 20
    weight_decay: float = 0.0             # none: decay would pull the weights to 0, away from the pretrained ones
    grad_clip: float = 1.0
    eval_every: int = 250
    eval_size: int = 128                  # held-out conversations (or pairs) for the validation loss
    checkpoint_every: int = 1000
    seed: int = 0
    template: str = "minimal"
    mask_prompt: bool = True              # SFT: the loss on the assistant's tokens only
    beta: float = 0.5                     # DPO: how far the policy may move from the reference (small: far)
    n_builtin: int = 20000                # built-in data: how many training examples (or pairs)
    tasks: tuple = TASKS                  # built-in SFT data: which tasks
    out: str | None = None                # the run folder (None: nothing written)
    progress: bool = False                # a tqdm bar
    device: str | None = None


DPO_DEFAULTS = dict(steps=200, batch_size=16, lr=1e-5, beta=0.5, n_builtin=3000, eval_every=50)


@dataclass
class FinetuneResult:
    """What sft() and dpo() return: the trained model and its tokenizer, the records of log.jsonl (history),
    the reference model (DPO), the seconds spent and the run folder (None when nothing was written)."""
    model: Model
    tokenizer: object
    template: str
    history: list = field(default_factory=list)
    ref_model: Model | None = None
    seconds: float = 0.0
    out: str | None = None
    init: str = ""

    def records(self, key):
        """(steps, values) of every history record that has key."""
        pairs = [(r["step"], r[key]) for r in self.history if key in r]
        return np.array([s for s, _ in pairs]), np.array([v for _, v in pairs])


def _check_options(options):
    for name in ("steps", "batch_size", "eval_every", "eval_size", "checkpoint_every", "n_builtin"):
        value = getattr(options, name)
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"{name}={value!r}: expected an integer >= 1")
    if not (options.lr > 0 and math.isfinite(options.lr)):
        raise ValueError(f"lr={options.lr!r}: expected a positive number")
    if not options.beta > 0:
        raise ValueError(f"beta={options.beta!r}: expected a number > 0")
    get_template(options.template)
    warmup = options.steps // 20 if options.warmup_steps is None else options.warmup_steps
    if not 0 <= warmup <= options.steps:
        raise ValueError(f"warmup_steps={warmup}: expected 0 <= warmup_steps <= steps={options.steps}")
    return dataclasses.replace(options, warmup_steps=warmup)


def load_init(init, template="minimal", seed=0, device=None):
    """(model, tokenizer, name) to start from: init is a run folder (its latest checkpoint) or a (model, tokenizer)
    pair; either way the model is a new one that has the template's tokens (the given model is not changed)."""
    if isinstance(init, (tuple, list)):
        model, tokenizer = init
        name = "(in memory)"
    else:
        saved = checkpoint.load(init, device=device)
        if saved.tokenizer is None:
            raise ValueError(f"{init}: the checkpoint holds no tokenizer, so its ids cannot be read")
        model, tokenizer, name = saved.model(device), saved.tokenizer, str(init)
    grown, tokenizer = chat_model(model, tokenizer, template, seed)
    return (copy_model(grown) if grown is model else grown), tokenizer, name


@dataclass
class _Job:
    """A fine-tuning run in progress."""
    kind: str
    options: FinetuneOptions
    model: Model
    tokenizer: object
    optimizer: AdamW
    init: str
    rng: np.random.Generator
    history: list = field(default_factory=list)
    step: int = 0
    data: str = "builtin"


def _start(kind, init, options):
    model, tokenizer, name = load_init(init, options.template, options.seed, options.device)
    optimizer = AdamW(model.params, lr=options.lr, betas=(0.9, 0.95), eps=1e-8, weight_decay=options.weight_decay)
    job = _Job(kind, options, model, tokenizer, optimizer, name, np.random.default_rng([options.seed, 11]))
    if options.out is not None:
        Path(options.out).mkdir(parents=True, exist_ok=True)
        (Path(options.out) / "log.jsonl").write_text("")
    return job


def _log(job, **record):
    record = {"step": job.step, **record}
    job.history.append(record)
    if job.options.out is not None:
        with open(Path(job.options.out) / "log.jsonl", "a", encoding="utf-8") as f:
            f.write(json.dumps(record) + "\n")


def _save(job):
    o = job.options
    if o.out is None:
        return None
    state = {"step": job.step, "kind": job.kind, "template": get_template(o.template).name, "init": job.init,
             "options": {"data": job.data, **{k: v for k, v in dataclasses.asdict(o).items()
                                                                     if k != "tasks"}, "tasks": list(o.tasks)}}
    return checkpoint.save(o.out, job.model, job.optimizer, state, tokenizer=job.tokenizer)


def _loop(job, step_fn, eval_fn):
    """Steps from job.step to options.steps: lr schedule, zero_grad, step_fn (forward + backward, returns the
    loss and a dict to log), clipping, AdamW; eval_fn at step 0, every eval_every steps and at the end; checkpoints."""
    o, start = job.options, time.perf_counter()
    bar = None
    if o.progress:
        from tqdm import tqdm
        bar = tqdm(total=o.steps, unit="step", dynamic_ncols=True)
    evaluation = eval_fn(job)                                               # step 0: where it starts
    if evaluation:
        _log(job, **evaluation)
    while job.step < o.steps:
        lr = cosine_lr(job.step, o.lr, o.lr / 10 if o.min_lr is None else o.min_lr, o.warmup_steps, o.steps)
        job.optimizer.lr = lr
        job.model.train()
        job.model.zero_grad()
        loss, extra = step_fn(job)
        norm = clip_grad_norm(job.model.grads, o.grad_clip)
        if not (math.isfinite(loss) and math.isfinite(norm)):
            raise TrainingDiverged(f"{job.kind} step {job.step + 1}: the loss is {loss}, the gradient norm {norm}; "
                                   "stopping before the weights change (try a smaller lr)")
        job.optimizer.step(job.model.grads)
        job.step += 1
        _log(job, loss=loss, lr=lr, grad_norm=norm, **extra)
        if bar is not None:
            bar.update(1)
            bar.set_postfix(loss=f"{loss:.3f}")
        evaluation = eval_fn(job) if job.step % o.eval_every == 0 or job.step == o.steps else {}
        if evaluation:
            _log(job, **evaluation)
        if job.step % o.checkpoint_every == 0 and job.step != o.steps:
            _save(job)
    if bar is not None:
        bar.close()
    _save(job)
    return time.perf_counter() - start


# ---------------------------------------------------------------- SFT
def load_instructions(data, template="minimal", n=20000, seed=0, tasks=TASKS):
    """(train, held-out) Instructions: data "builtin" (n training ones, 256 held out) or a JSONL file (all of it to
    train on, none held out)."""
    if data == "builtin":
        return builtin_instructions(n, "train", seed, tasks), builtin_instructions(256, "test", seed + 1, tasks)
    return read_conversations(data, template), []


def sft(init, data="builtin", options=None, **overrides):
    """Supervised fine-tuning (the module docstring): from init (a run folder or a (model, tokenizer) pair) on data
    ("builtin", a JSONL path, or a list of Instructions). options: FinetuneOptions, overrides: its fields.
    Logs {"loss", "lr", "grad_norm"} every step and {"val_loss"} (held-out answer loss) every eval_every steps.
    -> FinetuneResult."""
    o = _check_options(dataclasses.replace(options or FinetuneOptions(), **overrides))
    job = _start("sft", init, o)
    if isinstance(data, (list, tuple)):
        train, held_out = list(data), []
    else:
        train, held_out = load_instructions(data, o.template, o.n_builtin, o.seed, o.tasks)
        job.data = str(data)
    limit = job.model.config.max_seq_len if job.model.config.position_tables else None
    rows = encode_conversations(train, job.tokenizer, o.template, limit)
    val_rows = encode_conversations(held_out[:o.eval_size], job.tokenizer, o.template, limit)

    def step_fn(job):
        picks = job.rng.integers(0, len(rows), size=o.batch_size)                  # (B,) with replacement
        inputs, targets = sft_batch([rows[i] for i in picks], o.mask_prompt)
        loss, dlogits = cross_entropy(job.model.forward(inputs), targets)          # (B, T, V)
        job.model.backward(dlogits)
        return loss, {}

    def eval_fn(job):
        return {"val_loss": answer_loss(job.model, val_rows)} if val_rows else {}

    seconds = _loop(job, step_fn, eval_fn)
    return FinetuneResult(job.model.eval(), job.tokenizer, o.template, job.history, None, seconds, o.out, job.init)


def answer_loss(model, rows, batch_size=64):
    """The mean loss per assistant token of encoded conversations [(ids, mask)] (masked, whatever the training
    did), in eval mode."""
    was_training, total, count = model.training, 0.0, 0
    model.eval()
    try:
        for k in range(0, len(rows), batch_size):
            inputs, targets = sft_batch(rows[k:k + batch_size], mask_prompt=True)
            n = int((targets != IGNORE_INDEX).sum())
            total += cross_entropy(model.forward(inputs), targets)[0] * n
            count += n
    finally:
        model.train(was_training)
    return total / max(count, 1)


# ---------------------------------------------------------------- DPO
def load_pairs(data, template="minimal", n=3000, seed=0):
    """(train, held-out) Preferences: data "builtin" (n training pairs, 192 held out) or a JSONL file (all of it)."""
    if data == "builtin":
        return builtin_preferences(n, "train", seed), builtin_preferences(192, "test", seed + 1)
    return read_preferences(data, template), []


def dpo(init, data="builtin", options=None, **overrides):
    """Direct preference optimization from init (a run folder or a (model, tokenizer) pair, usually after SFT),
    which is also the frozen reference, on data ("builtin", a JSONL path, or a list of Preferences). DPO_DEFAULTS
    fill what options do not set. Logs {"loss", "accuracy", "margin", "kl", ...} every step and the same on the
    held-out pairs ("val_loss", "val_accuracy", "val_margin", "val_kl") every eval_every steps. -> FinetuneResult."""
    o = _check_options(dataclasses.replace(options or FinetuneOptions(**DPO_DEFAULTS), **overrides))
    job = _start("dpo", init, o)
    ref = copy_model(job.model).eval()
    if isinstance(data, (list, tuple)):
        train, held_out = list(data), []
    else:
        train, held_out = load_pairs(data, o.template, o.n_builtin, o.seed)
        job.data = str(data)
    preference_batch(train[:1], job.tokenizer, o.template)                        # fails early on a bad pair

    def step_fn(job):
        picks = job.rng.integers(0, len(train), size=o.batch_size)                # (N,) pairs
        batch = preference_batch([train[i] for i in picks], job.tokenizer, o.template)
        loss, stats = dpo_step(job.model, ref, batch, o.beta)
        return loss, {"accuracy": stats["accuracy"], "margin": stats["margin"], "kl": stats["kl"]}

    def eval_fn(job):
        if not held_out:
            return {}
        m = preference_metrics(job.model, ref, held_out[:o.eval_size], job.tokenizer, o.template, o.beta)
        return {"val_loss": m["loss"], "val_accuracy": m["accuracy"], "val_margin": m["margin"], "val_kl": m["kl"]}

    seconds = _loop(job, step_fn, eval_fn)
    return FinetuneResult(job.model.eval(), job.tokenizer, o.template, job.history, ref, seconds, o.out, job.init)


# ---------------------------------------------------------------- evaluation
def preference_metrics(model, ref_model, pairs, tokenizer, template="minimal", beta=0.1, batch_size=64):
    """How the policy ranks held-out pairs, in eval mode, averaged over the pairs:
        loss       the DPO loss
        accuracy   the fraction with r_w > r_l (DPO's implicit rewards r = beta log pi/pi_ref; 0 when pi = pi_ref)
        margin     the mean of r_w - r_l
        kl         KL(pi || pi_ref) per response token (minigpt.preference.response_kl)
        likelihood_accuracy  the fraction with log pi(y_w|x) > log pi(y_l|x): which answer the model itself finds
                             more likely (it needs no reference)
        chosen_logp, rejected_logp   the mean log pi of each answer"""
    sums = dict(loss=0.0, accuracy=0.0, margin=0.0, kl=0.0, likelihood_accuracy=0.0, chosen_logp=0.0,
                rejected_logp=0.0)
    for k in range(0, len(pairs), batch_size):
        chunk = pairs[k:k + batch_size]
        batch = preference_batch(chunk, tokenizer, template)
        logits, ref_logits = _eval_logits(model, batch.ids), _eval_logits(ref_model, batch.ids)   # (2N, T, V)
        loss, _, stats = dpo_loss_from_logits(logits, ref_logits, batch.targets, batch.mask, beta)
        logp = to_numpy(sequence_logprobs(logits, batch.targets, batch.mask)[0])                   # (2N,)
        N = len(chunk)
        values = dict(loss=loss, accuracy=stats["accuracy"], margin=stats["margin"], kl=stats["kl"],
                      likelihood_accuracy=float((logp[:N] > logp[N:]).mean()), chosen_logp=float(logp[:N].mean()),
                      rejected_logp=float(logp[N:].mean()))
        for key, value in values.items():
            sums[key] += value * N
    return {key: value / len(pairs) for key, value in sums.items()}


def _eval_logits(model, ids):
    was_training = model.training
    try:
        return model.eval().forward(ids)
    finally:
        model.train(was_training)


def answer(model, tokenizer, prompts, template="minimal", max_new_tokens=24, temperature=0.0, seed=0):
    """The model's answers to prompts (lists of messages ending with the user), all decoded together (greedy by
    default) in the template: a list of (text, ended) where ended says that the answer closed its turn with a stop
    token before max_new_tokens. Generation stops at any of the template's special tokens; one that is not a stop
    token leaves ended False."""
    template = get_template(template)
    ids = [encode_chat(p, tokenizer, template, add_generation_prompt=True)[0] for p in prompts]
    stops = set(stop_ids(tokenizer, template))
    specials = {tokenizer.special_tokens[s] for s in template.specials}
    room = max_new_tokens
    if model.config.position_tables:
        room = min(room, model.config.max_seq_len - max(len(i) for i in ids))
    tokens, ended, done = [[] for _ in ids], [False] * len(ids), [False] * len(ids)
    for step in generate_stream(model, ids, max(room, 0), temperature=temperature, seed=seed,
                                stop_tokens=sorted(specials)):
        for b, token in enumerate(np.atleast_1d(step).tolist()):
            if done[b]:
                continue
            if token in specials:
                done[b], ended[b] = True, token in stops
            else:
                tokens[b].append(token)
    return [(tokenizer.decode(t), e) for t, e in zip(tokens, ended)]


def task_accuracy(model, tokenizer, instructions, template="minimal", batch_size=128, max_new_tokens=None):
    """Greedy answers to held-out Instructions, scored by exact match with their answers:
    {"accuracy": the fraction right, "tasks": {task: fraction right}, "in_template": the fraction of answers that
    closed their turn with the template's stop token, "answers": [(text, ended)]}.
    An answer is right when it is exactly the expected text and it ended properly."""
    if not instructions:
        raise ValueError("task_accuracy: no instructions")
    limit = max_new_tokens or max(len(tokenizer.encode(ex.answer)) for ex in instructions) + 4
    answers = []
    for k in range(0, len(instructions), batch_size):
        chunk = instructions[k:k + batch_size]
        answers += answer(model, tokenizer, [ex.prompt for ex in chunk], template, limit)
    right = np.array([text == ex.answer and ended for (text, ended), ex in zip(answers, instructions)])
    tasks = {}
    for task in dict.fromkeys(ex.task for ex in instructions):
        tasks[task] = float(right[[ex.task == task for ex in instructions]].mean())
    return {"accuracy": float(right.mean()), "tasks": tasks,
            "in_template": float(np.mean([ended for _, ended in answers])), "answers": answers}


# ---------------------------------------------------------------- chatting
def run_template(run_dir):
    """The chat template a fine-tuning run recorded in its checkpoint (None for a pretraining run)."""
    return checkpoint.load(run_dir).state.get("template")


def fit_history(history, user, tokenizer, template, context, room):
    """The prompt for history (a list of messages: an optional system message, then user / assistant turns) plus a
    new user message, with the generation prompt: -> (ids, the messages kept). The oldest exchanges (a user message
    and its answer) are dropped until the prompt leaves room tokens of the context for the answer; a system
    message stays. ValueError when even the new message alone does not fit."""
    system = [m for m in history[:1] if m["role"] == "system"]
    turns = list(history[len(system):])
    while True:
        messages = system + turns + [{"role": "user", "content": user}]
        ids = encode_chat(messages, tokenizer, template, add_generation_prompt=True)[0]
        if len(ids) + room <= context:
            return ids, messages
        if not turns:
            raise ValueError(f"the message is {len(ids)} tokens with the template; with {room} kept for the answer "
                             f"that is more than the model's context of {context}: say less")
        turns = turns[2:]                                            # the oldest user message and its answer
