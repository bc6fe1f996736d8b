"""The training loop: text in, a trained model (and its checkpoints, log and loss curve) out.

One step, for a batch of B windows of T tokens:

    lr      = cosine_lr(step, ...)                 linear warmup, cosine down to min_lr
    for each of `accumulate` micro-batches:        gradient accumulation: k micro-batches of B
        logits = model.forward(x)                  (B, T, V)
        loss, dlogits = cross_entropy(logits, y)   the mean next-token loss and its gradient
        model.backward(dlogits / k)                grads ADD up: the mean over k micro-batches
                                                   (each micro-batch in `shards` parts computed at once
                                                   on the CPU's cores: minigpt.parallel, the same sum)
    norm    = clip_grad_norm(grads, 1.0)           one global norm, scaled down when above 1
    opt.step(grads)                                AdamW

Two objectives:
    "clm"  causal language modelling (因果语言模型): predict every next token (GPT, LLaMA, ...);
    "glm"  GLM's autoregressive blank infilling: spans of each window are cut out, the model reads the
           rest bidirectionally (Part A) and writes the spans back (Part B); the loss is on Part B only
           (minigpt.data.glm). The default for the prefix-attention presets (glm, chatglm).

Everything that decides the next batch and the next weights is saved in each checkpoint (parameters,
AdamW's moments, the step, the data sampler's and dropout's random states), so a run stopped at step k
and resumed gives the same losses, bit for bit on the CPU, as a run that never stopped.

A run folder (out) holds: checkpoints/ (minigpt.checkpoint), log.jsonl (one JSON object per step and
per evaluation), loss.png (the curves), and the tokenizer inside each checkpoint.
"""
import dataclasses
import json
import math
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from minigpt import checkpoint, threads
from minigpt.config import ModelConfig
from minigpt.data.batches import BatchSampler, encode_tokens, sequential_batches, split_tokens
from minigpt.data.corpus import load_corpus
from minigpt.data.glm import IGNORE_INDEX, GLMBatch, GLMCollator
from minigpt.generate import fill_mask, generate
from minigpt.layers.loss import cross_entropy
from minigpt.model import Model
from minigpt.optim import AdamW, clip_grad_norm, cosine_lr
from minigpt.parallel import DataParallel
from minigpt.tokenizers import BPETokenizer, CharTokenizer

GLM_SPECIALS = {"mask": "[MASK]", "smask": "[sMASK]", "gmask": "[gMASK]", "sop": "<sop>", "eop": "<eop>",
                "pad": "<pad>"}


@dataclass
class TrainOptions:
    """Everything a run is made of. The defaults are the main job: the gpt2 preset with the character
    tokenizer on the built-in corpus, a few minutes on 2 CPU cores."""
    preset: str = "gpt2"
    data: str = "builtin"                 # "builtin", a UTF-8 file, or a folder of them
    tokenizer: str = "char"               # "char" or "bpe"
    bpe_vocab_size: int = 512
    objective: str | None = None          # "clm" | "glm"; None: "glm" for prefix-attention presets, else "clm"
    steps: int = 2000
    batch_size: int = 32
    seq_len: int = 64
    accumulate: int = 1                   # micro-batches per step
    shards: int = 2                       # each micro-batch split into shards computed at once (minigpt.parallel)
    lr: float = 3e-3                      # the peak of the schedule
    min_lr: float | None = None           # None: lr / 10
    warmup_steps: int | None = None       # None: steps // 20
    weight_decay: float = 0.1
    grad_clip: float = 1.0
    eval_every: int = 250
    eval_batches: int = 8
    checkpoint_every: int = 500
    seed: int = 0
    device: str = "cpu"
    out: str = "runs/gpt2-char"
    resume: bool = False
    sample_tokens: int = 200
    progress: bool = True                 # the tqdm bar
    model: dict = field(default_factory=dict)   # ModelConfig overrides (n_layer=, d_model=, dropout=, ...)


class TrainingDiverged(RuntimeError):
    """The loss became NaN or infinite: the run stops, the last good checkpoint stays."""


@dataclass
class Run:
    """A run in progress: what train() builds, steps and saves."""
    options: TrainOptions
    model: Model
    optimizer: AdamW
    tokenizer: object
    train_tokens: np.ndarray
    val_tokens: np.ndarray
    sampler: BatchSampler
    collator: GLMCollator | None
    parallel: DataParallel
    step: int = 0
    log_path: Path = None


# --- building a run --------------------------------------------------------------------------------
def _objective(options, config):
    objective = options.objective or ("glm" if config.attention == "prefix" else "clm")
    if objective not in ("clm", "glm"):
        raise ValueError(f"objective={objective!r}: expected 'clm' or 'glm'")
    if objective == "glm" and config.attention != "prefix":
        raise ValueError(f"objective='glm' needs a prefix-attention preset (glm, chatglm); {options.preset!r} "
                         f"has attention={config.attention!r}")
    return objective


def build_tokenizer(options, text):
    """A character tokenizer of the text's alphabet, or byte-level BPE trained on it; GLM's specials added."""
    specials = list(GLM_SPECIALS.values()) if options.objective == "glm" or options.preset in ("glm", "chatglm") \
        else []
    if options.tokenizer == "char":
        return CharTokenizer.from_text(text, special_tokens=specials)
    if options.tokenizer == "bpe":
        return BPETokenizer.train(text, vocab_size=options.bpe_vocab_size, special_tokens=specials or ["<|endoftext|>"])
    raise ValueError(f"tokenizer={options.tokenizer!r}: expected 'char' or 'bpe'")


def _model_config(options, tokenizer):
    return ModelConfig.preset(options.preset, **{"vocab_size": tokenizer.vocab_size,
                                                 "max_seq_len": options.seq_len, **options.model})


def _glm_collator(tokenizer, seq_len):
    special = {name: tokenizer.special_tokens[token] for name, token in GLM_SPECIALS.items()}
    return GLMCollator(special, length=seq_len)


def _text_len(seq_len):
    """GLM: a window of N tokens with m spans becomes N + 2m ids, m <= ceil(0.15 N): N + 2m <= seq_len."""
    return int((seq_len - 2) / 1.3)


def prepare(options):
    """Build (or resume) a Run: data, tokenizer, model, optimizer, sampler."""
    options = _check_options(options)
    text = load_corpus(options.data)
    saved = checkpoint.load(options.out) if options.resume else None
    tokenizer = saved.tokenizer if saved is not None else build_tokenizer(options, text)
    tokens = encode_tokens(text, tokenizer)
    train_tokens, val_tokens = split_tokens(tokens, 0.1)
    config = _model_config(options, tokenizer)                               # resume: restore() checks it
    objective = _objective(options, config)
    model = Model(config, seed=options.seed, device=options.device)
    optimizer = AdamW(model.params, lr=options.lr, betas=(0.9, 0.95), eps=1e-8, weight_decay=options.weight_decay)
    window = _text_len(options.seq_len) if objective == "glm" else options.seq_len
    sampler = BatchSampler(train_tokens, window, options.batch_size, seed=options.seed)
    collator = _glm_collator(tokenizer, options.seq_len) if objective == "glm" else None
    run = Run(options, model, optimizer, tokenizer, train_tokens, val_tokens, sampler, collator,
              DataParallel(model, options.shards),
              log_path=Path(options.out) / "log.jsonl")
    if saved is not None:
        _resume(run, saved)
    else:
        Path(options.out).mkdir(parents=True, exist_ok=True)
        run.log_path.write_text("")
    return run


def _check_options(options):
    for name in ("steps", "batch_size", "seq_len", "accumulate", "shards", "eval_every", "eval_batches",
                 "checkpoint_every"):
        value = getattr(options, name)
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"{name}={value!r}: expected an integer >= 1")
    if not (options.lr > 0 and math.isfinite(options.lr)):
        raise ValueError(f"lr={options.lr!r}: expected a positive number")
    if options.warmup_steps is None:
        options = dataclasses.replace(options, warmup_steps=options.steps // 20)
    if options.warmup_steps < 0 or options.warmup_steps > options.steps:
        raise ValueError(f"warmup_steps={options.warmup_steps}: expected 0 <= warmup_steps <= steps={options.steps}")
    return options


def _resume(run, saved):
    """Load the checkpoint (already read by prepare) into the run: weights, AdamW, step, the random states;
    drop log lines written after that checkpoint (they will be written again)."""
    state = checkpoint.restore(saved, run.model, run.optimizer).state
    run.step = int(state["step"])
    run.sampler.load_state_dict(state["sampler"])
    run.model.dropout_rng.bit_generator.state = state["dropout_rng"]
    lines = run.log_path.read_text().splitlines() if run.log_path.exists() else []
    kept = [line for line in lines if json.loads(line)["step"] <= run.step]
    run.log_path.write_text("".join(line + "\n" for line in kept))


def save(run):
    """A checkpoint of the run as it stands (after run.step steps)."""
    state = {"step": run.step, "sampler": run.sampler.state_dict(),
             "dropout_rng": run.model.dropout_rng.bit_generator.state,
             "options": dataclasses.asdict(run.options)}
    return checkpoint.save(run.options.out, run.model, run.optimizer, state, tokenizer=run.tokenizer)


# --- one step --------------------------------------------------------------------------------------
def _batch_loss(run, inputs, targets, grad_scale):
    """Forward, loss, and (grad_scale > 0) backward of one micro-batch of CLM windows or GLM samples, its
    shards computed at once (run.parallel). Returns the micro-batch's mean loss."""
    if run.collator is None:
        return run.parallel.forward_backward((inputs, targets), _clm_loss, grad_scale)
    # the window's text, blanked into Part A + Part B; the spans are drawn from the sampler's step, so
    # a resumed run draws the same ones
    batch = run.collator([list(row) + [last] for row, last in zip(inputs, targets[:, -1])],
                         seed=[run.options.seed, run.sampler.step])
    arrays = (batch.ids, batch.position_ids, batch.block_position_ids, batch.sep, batch.targets, batch.loss_mask)
    return run.parallel.forward_backward(arrays, _glm_shard_loss, grad_scale)


def _clm_loss(model, inputs, targets):
    """(loss, dlogits, tokens counted) of CLM windows."""
    loss, dlogits = cross_entropy(model.forward(inputs), targets)           # logits (B, T, V)
    return loss, dlogits, targets.size


def _glm_shard_loss(model, ids, position_ids, block_position_ids, sep, targets, loss_mask):
    """(loss, dlogits, tokens counted) of GLM samples: Part B's tokens."""
    batch = GLMBatch(ids=ids, targets=targets, loss_mask=loss_mask, position_ids=position_ids,
                     block_position_ids=block_position_ids, sep=sep)
    loss, dlogits = _glm_loss(model, batch)
    return loss, dlogits, int(((targets != IGNORE_INDEX) & (loss_mask != 0)).sum())


def _glm_loss(model, batch):
    """GLM's loss on Part B: forward with both position rows and the prefix mask."""
    logits = model.forward(batch.ids, position_ids=batch.position_ids, block_position_ids=batch.block_position_ids,
                           prefix_len=batch.sep)                             # (B, T, V)
    return cross_entropy(logits, batch.targets, loss_mask=batch.loss_mask)


def train_step(run):
    """One optimizer step: returns (loss, grad norm, lr)."""
    o = run.options
    lr = cosine_lr(run.step, o.lr, o.lr / 10 if o.min_lr is None else o.min_lr, o.warmup_steps, o.steps)
    run.optimizer.lr = lr
    run.model.train()
    run.model.zero_grad()
    loss = 0.0
    for _ in range(o.accumulate):
        inputs, targets = run.sampler.next_batch()
        loss += _batch_loss(run, inputs, targets, 1.0 / o.accumulate) / o.accumulate
    norm = clip_grad_norm(run.model.grads, o.grad_clip)
    if not (math.isfinite(loss) and math.isfinite(norm)):
        raise TrainingDiverged(f"step {run.step + 1}: the loss is {loss} and the gradient norm {norm}; stopping "
                               f"before the weights change (the last good checkpoint is {checkpoint.latest(o.out)})")
    run.optimizer.step(run.model.grads, run.parallel.map_keys)             # the updates on the shard threads
    run.step += 1
    return loss, norm, lr


def evaluate(run):
    """The mean loss over the first eval_batches batches of the validation tokens (the same every time)."""
    model, o = run.model.eval(), run.options
    losses = []
    window = run.sampler.seq_len
    for k, (inputs, targets) in enumerate(sequential_batches(run.val_tokens, window, o.batch_size)):
        if k == o.eval_batches:
            break
        if run.collator is not None:                                         # fixed span choices per batch
            batch = run.collator([list(r) + [t] for r, t in zip(inputs, targets[:, -1])], seed=[o.seed, 1 << 30, k])
            losses.append(_glm_loss(model, batch)[0])
        else:
            losses.append(cross_entropy(model.forward(inputs), targets)[0])
    return float(np.mean(losses))


# --- the loop ----------------------------------------------------------------------------------------
def _log(run, **record):
    with open(run.log_path, "a", encoding="utf-8") as f:
        f.write(json.dumps({"step": run.step, **record}) + "\n")


def _progress(run):
    if not run.options.progress:
        return None
    from tqdm import tqdm
    return tqdm(total=run.options.steps, initial=run.step, unit="step", dynamic_ncols=True)


def loop(run, stop_at=None):
    """Train from run.step to options.steps (or stop_at): log, evaluate, checkpoint. Ctrl-C saves a
    checkpoint and returns. Returns {"tokens_per_s", "seconds", "interrupted"}."""
    o = run.options
    bar, start, tokens, interrupted = _progress(run), time.perf_counter(), 0, False
    tokens_per_step = o.batch_size * run.sampler.seq_len * o.accumulate
    try:
        while run.step < (o.steps if stop_at is None else stop_at):
            loss, norm, lr = train_step(run)
            threads.refit_threads()                       # another process started or stopped? (every 5 s at most)
            tokens += tokens_per_step
            speed = tokens / (time.perf_counter() - start)
            _log(run, loss=loss, lr=lr, grad_norm=norm, tokens_per_s=speed)
            if bar is not None:
                bar.update(1)
                bar.set_postfix(loss=f"{loss:.3f}", lr=f"{lr:.2e}", tok_s=f"{speed:,.0f}")
            if run.step % o.eval_every == 0 or run.step == o.steps:
                _log(run, val_loss=evaluate(run))
            if run.step % o.checkpoint_every == 0 and run.step != stop_at:
                save(run)
    except KeyboardInterrupt:
        interrupted = True
    finally:
        if bar is not None:
            bar.close()
    save(run)
    seconds = time.perf_counter() - start
    return {"tokens_per_s": tokens / seconds if seconds else 0.0, "seconds": seconds, "interrupted": interrupted}


def read_log(path):
    """The log's records: (steps, losses) of the training steps and (steps, val_losses) of the evaluations."""
    records = [json.loads(line) for line in Path(path).read_text(encoding="utf-8").splitlines()]
    train = [(r["step"], r["loss"]) for r in records if "loss" in r]
    val = [(r["step"], r["val_loss"]) for r in records if "val_loss" in r]
    return train, val


def plot_log(log_path, title=None, folder=None):
    """loss.png (in folder, default viz.figure_dir()): a log's training and validation losses against the step."""
    from minigpt import viz
    train, val = read_log(log_path)
    curves = {"train": tuple(np.array(c) for c in zip(*train))}
    if val:
        curves["validation"] = tuple(np.array(c) for c in zip(*val))
    return viz.plot_curves(curves, "loss", ylabel="loss (nats per token)", title=title, folder=folder)


def plot_loss(run):
    """loss.png in the run folder: the training loss and the validation loss against the step."""
    return plot_log(run.log_path, title=f"{run.options.preset}: loss", folder=run.options.out)


def samples(run, n=2, seed=0):
    """A few texts the trained model writes (CLM: continuing the start of a validation window; GLM:
    filling a [MASK] in one)."""
    tok, o, model = run.tokenizer, run.options, run.model
    prompt_len = min(16, o.seq_len // 4)
    texts = []
    for k in range(n):
        prompt = [int(t) for t in run.val_tokens[k * o.seq_len: k * o.seq_len + prompt_len]]
        if run.collator is None:
            out = generate(model, prompt, max_new_tokens=o.sample_tokens, temperature=0.8, top_k=20, seed=seed + k)
            texts.append(tok.decode(out))
        else:
            sp = tok.special_tokens
            masked = prompt[:prompt_len // 2] + [sp[GLM_SPECIALS["mask"]]] + prompt[prompt_len // 2 + 4:]
            filled = fill_mask(model, masked, sp[GLM_SPECIALS["mask"]], sp[GLM_SPECIALS["sop"]],
                               sp[GLM_SPECIALS["eop"]], max_new_tokens=8)
            texts.append(f"{tok.decode(masked)}  ->  [MASK] = {tok.decode(filled)!r}")
    return texts


def train(options=None, stop_at=None, **overrides):
    """Train (or resume) a run; returns a summary dict (val_loss, tokens_per_s, seconds, samples, out)."""
    options = dataclasses.replace(options or TrainOptions(), **overrides)
    run = prepare(options)
    result = loop(run, stop_at=stop_at)
    result["step"] = run.step
    result["val_loss"] = evaluate(run)
    result["loss_png"] = str(plot_loss(run))
    result["samples"] = samples(run) if not result["interrupted"] and stop_at is None else []
    result["out"] = options.out
    return result
