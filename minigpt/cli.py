"""The `minigpt` command line (also `python -m minigpt`).

    minigpt train      train a preset on a text (the main job: `minigpt train` with no arguments);
                       with --sft / --dpo DATA --init RUN: fine-tune a run into an assistant (minigpt.finetune)
    minigpt sample     text from a trained run, or from a Hugging Face checkpoint folder
    minigpt chat       talk to a fine-tuned run: the template applied, the answer streamed, /reset, /exit
    minigpt params     parameter and FLOP counts of a preset, without allocating a weight
    minigpt plot       masks, positional encodings, a run's attention maps or loss curve, as PNGs
    minigpt gradcheck  numerical gradient checks of a preset or a layer

A mistake in what you typed (an unknown preset, a missing file, a bad number) is one line on stderr
and exit status 2, not a traceback.
"""
import argparse
import sys

import numpy as np

import minigpt


def build_parser():
    parser = argparse.ArgumentParser(
        prog="minigpt",
        description="Decoder-only language models (GPT-1/2/3, LLaMA, GLM, ChatGLM, Mistral, Qwen3) from scratch "
                    "in NumPy.")
    parser.add_argument("--version", action="version", version=f"minigpt {minigpt.__version__}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")
    _train_parser(commands)
    _sample_parser(commands)
    _chat_parser(commands)
    _params_parser(commands)
    _plot_parser(commands)
    _gradcheck_parser(commands)
    return parser


def _train_parser(commands):
    from minigpt.train import TrainOptions
    d = TrainOptions()
    p = commands.add_parser("train", help="train a preset on a text (defaults: the main job), or fine-tune a run",
                            description="Train a preset. With no arguments: the gpt2 preset at its tiny size, "
                                        "character tokenizer, the built-in corpus, a few minutes on 2 CPU cores. "
                                        "With --sft or --dpo: fine-tune the run given by --init instead.")
    # None = not given: pretraining fills in TrainOptions' defaults, fine-tuning its own (_finetune_options)
    p.add_argument("--preset", default=None, help=f"a tiny preset (default {d.preset})")
    p.add_argument("--data", default=None, help=f"'builtin', a UTF-8 text file, or a folder of them (default {d.data})")
    p.add_argument("--tokenizer", default=None, choices=("char", "bpe"), help=f"default {d.tokenizer}")
    p.add_argument("--bpe-vocab-size", type=int, default=None, help=f"default {d.bpe_vocab_size}")
    p.add_argument("--objective", choices=("clm", "glm"), default=None,
                   help="default: glm for the glm / chatglm presets, clm for the rest")
    p.add_argument("--warmup-steps", type=int, default=None, help="default: steps / 20")
    fine = _finetune_defaults()
    for name, kind in (("steps", int), ("batch-size", int), ("seq-len", int), ("accumulate", int), ("shards", int),
                       ("lr", float), ("weight-decay", float), ("eval-every", int), ("checkpoint-every", int),
                       ("seed", int)):
        attr = name.replace("-", "_")
        extra = "" if attr in ("seq_len", "accumulate", "shards", "seed") else \
            f"; --sft {getattr(fine['sft'], attr)}, --dpo {getattr(fine['dpo'], attr)}"
        p.add_argument(f"--{name}", type=kind, default=None, help=f"default {getattr(d, attr)}{extra}")
    p.add_argument("--device", default=d.device, choices=("cpu", "cuda"))
    p.add_argument("--out", default=None, help="the run folder (default runs/PRESET-TOKENIZER; fine-tuning: "
                                               "the --init folder's name + -sft or -dpo)")
    p.add_argument("--resume", action="store_true", help="continue the run in --out from its last checkpoint")
    p.add_argument("--set", action="append", default=[], metavar="FIELD=VALUE",
                   help="override a ModelConfig field of the preset, e.g. --set n_layer=2 --set dropout=0.1")
    p.add_argument("--attention", choices=("reference", "flash-numpy", "flash-cpu", "flash-cuda", "auto"), default=None,
                   help="how attention is computed (default auto: the fused Numba kernel from 64 positions on "
                        "a CPU, the NumPy reference below)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    g = p.add_argument_group("fine-tuning (minigpt.finetune)")
    kind = g.add_mutually_exclusive_group()
    kind.add_argument("--sft", metavar="DATA", help="instruction tuning on DATA: 'builtin' (synthetic instructions) "
                                                     "or a JSONL file of {\"messages\": [...]}, one per line")
    kind.add_argument("--dpo", metavar="DATA", help="preference tuning (DPO) on DATA: 'builtin' or a JSONL file of "
                                                     "{\"prompt\", \"chosen\", \"rejected\"}")
    g.add_argument("--init", metavar="RUN", help="the run folder to start from (and, for --dpo, the frozen reference)")
    g.add_argument("--template", default=None, choices=sorted(_template_names()),
                   help="the chat template (default: the one --init was tuned with, else minimal)")
    g.add_argument("--beta", type=float, default=None, help=f"DPO's beta (default {fine['dpo'].beta})")


def _template_names():
    from minigpt.chat import TEMPLATES
    return TEMPLATES


def _finetune_defaults():
    from minigpt.finetune import DPO_DEFAULTS, FinetuneOptions
    return {"sft": FinetuneOptions(), "dpo": FinetuneOptions(**DPO_DEFAULTS)}


def _sample_parser(commands):
    p = commands.add_parser("sample", help="generate text from a trained run or a Hugging Face checkpoint")
    source = p.add_mutually_exclusive_group(required=True)
    source.add_argument("--run", help="a run folder written by `minigpt train`")
    source.add_argument("--hf", help="a Hugging Face checkpoint folder (config.json, *.safetensors, tokenizer)")
    p.add_argument("--prompt", default="\n")
    p.add_argument("--max-new-tokens", type=int, default=200)
    p.add_argument("--temperature", type=float, default=0.8)
    p.add_argument("--top-k", type=int, default=None)
    p.add_argument("--top-p", type=float, default=None)
    p.add_argument("--seed", type=int, default=0)


def _chat_parser(commands):
    p = commands.add_parser("chat", help="talk to a fine-tuned run (reads lines from standard input)",
                            description="A small chat loop: each line you type is a user message, the answer is "
                                        "streamed as the model writes it. The history is kept as long as it fits in "
                                        "the model's context (the oldest exchanges are dropped). /reset forgets the "
                                        "history, /exit (or end of input) ends.")
    p.add_argument("--run", required=True, help="a run folder written by `minigpt train --sft` (or --dpo)")
    p.add_argument("--template", default=None, choices=sorted(_template_names()),
                   help="default: the template the run was tuned with")
    p.add_argument("--system", default=None, help="a system message to start every conversation with")
    p.add_argument("--max-new-tokens", type=int, default=64, help="the longest answer (default 64; the context "
                                                                  "may allow less)")
    p.add_argument("--temperature", type=float, default=0.0, help="default 0: greedy, the model's best guess")
    p.add_argument("--top-k", type=int, default=None)
    p.add_argument("--top-p", type=float, default=None)
    p.add_argument("--seed", type=int, default=0)


def _params_parser(commands):
    p = commands.add_parser("params", help="parameter and FLOP counts of a preset (no weights allocated)")
    p.add_argument("--preset", required=True, help="any preset, e.g. gpt2-xl, gpt3-175b, llama3-8b")
    p.add_argument("--seq-len", type=int, default=None, help="for the FLOPs (default: the preset's max_seq_len)")


def _plot_parser(commands):
    p = commands.add_parser("plot", help="draw masks, position encodings, attention maps or a loss curve as PNG")
    p.add_argument("what", choices=("masks", "positions", "attention", "loss"))
    p.add_argument("--preset", default="gpt3", help="masks / positions: the preset to draw")
    p.add_argument("--run", help="attention / loss: the run folder")
    p.add_argument("--text", default=None, help="attention: the text to read (default: the start of the corpus)")
    p.add_argument("--seq-len", type=int, default=24)
    p.add_argument("--out", default=None, help="the folder for the PNGs (default $MINIGPT_FIGURES or ./figures)")


def _gradcheck_parser(commands):
    p = commands.add_parser("gradcheck", help="numerical gradient checks (float64 centered differences)")
    target = p.add_mutually_exclusive_group(required=True)
    target.add_argument("--preset", help="a whole tiny model of this preset")
    target.add_argument("--layer", help="one layer: " + ", ".join(sorted(_LAYER_CHECKS)))


def main(argv=None):
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 0
    try:
        return COMMANDS[args.command](args)
    except (ValueError, FileNotFoundError, NotADirectoryError) as err:
        print(f"minigpt {args.command}: error: {err}", file=sys.stderr)
        return 2


# --- train -------------------------------------------------------------------------------------------
def _overrides(pairs):
    """["n_layer=2", "dropout=0.1"] -> {"n_layer": 2, "dropout": 0.1} (ints, floats, true/false, else strings)."""
    out = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise ValueError(f"--set {pair!r}: expected FIELD=VALUE, e.g. n_layer=2")
        lowered = value.lower()
        if lowered in ("true", "false"):
            out[key] = lowered == "true"
            continue
        for kind in (int, float):
            try:
                out[key] = kind(value)
                break
            except ValueError:
                pass
        else:
            out[key] = value
    return out


_PRETRAIN_ONLY = ("preset", "data", "tokenizer", "bpe_vocab_size", "objective", "seq_len", "accumulate", "shards")
_FINETUNE_FIELDS = ("steps", "batch_size", "lr", "weight_decay", "eval_every", "checkpoint_every", "seed",
                    "warmup_steps", "beta")


def cmd_train(args):
    if args.sft is not None or args.dpo is not None:
        return _cmd_finetune(args)
    stray = [f"--{name}" for name in ("init", "template", "beta") if getattr(args, name) is not None]
    if stray:
        raise ValueError(f"{', '.join(stray)}: only with --sft or --dpo (fine-tuning a run)")
    from minigpt.train import TrainingDiverged, TrainOptions, train
    d = TrainOptions()

    def given(name):
        value = getattr(args, name)
        return getattr(d, name) if value is None else value

    options = TrainOptions(
        preset=given("preset"), data=given("data"), tokenizer=given("tokenizer"),
        bpe_vocab_size=given("bpe_vocab_size"),
        objective=args.objective, steps=given("steps"), batch_size=given("batch_size"), seq_len=given("seq_len"),
        accumulate=given("accumulate"), shards=given("shards"), lr=given("lr"), warmup_steps=args.warmup_steps,
        weight_decay=given("weight_decay"), eval_every=given("eval_every"), checkpoint_every=given("checkpoint_every"),
        seed=given("seed"), device=args.device, out=args.out or f"runs/{given('preset')}-{given('tokenizer')}",
        resume=args.resume, progress=not args.no_progress,
        model={**_overrides(args.set), **({"attention_impl": args.attention} if args.attention else {})})
    try:
        result = train(options)
    except TrainingDiverged as err:
        print(f"minigpt train: {err}", file=sys.stderr)
        return 1
    state = "interrupted (Ctrl-C), checkpoint saved" if result["interrupted"] else "done"
    print(f"\n{state}: step {result['step']}, validation loss {result['val_loss']:.4f} nats per token, "
          f"{result['tokens_per_s']:,.0f} tokens/s, {result['seconds']:.0f} s")
    print(f"run folder {result['out']} (checkpoints, log.jsonl, loss curve {result['loss_png']})")
    for k, text in enumerate(result["samples"]):
        print(f"\n--- sample {k + 1} ---\n{text}")
    return 0


def _finetune_options(args, kind):
    """FinetuneOptions from the flags: the kind's defaults, then what was given."""
    import dataclasses
    import os

    from minigpt import finetune
    if args.init is None:
        raise ValueError(f"--{kind} needs --init RUN: the run folder to fine-tune")
    stray = [f"--{name.replace('_', '-')}" for name in _PRETRAIN_ONLY if getattr(args, name) is not None]
    stray += ["--set"] * bool(args.set) + ["--resume"] * args.resume
    if stray:
        raise ValueError(f"{', '.join(stray)}: not used with --{kind} (the model, its tokenizer and its context "
                         f"come from --init {args.init})")
    fields = {name: getattr(args, name) for name in _FINETUNE_FIELDS if getattr(args, name) is not None}
    template = args.template or finetune.run_template(args.init) or "minimal"
    out = args.out or f"{os.path.normpath(args.init)}-{kind}"
    return dataclasses.replace(_finetune_defaults()[kind], template=template, out=out, progress=not args.no_progress,
                               device=args.device, **fields)


def _cmd_finetune(args):
    from minigpt import finetune
    from minigpt.train import TrainingDiverged
    kind, data = ("sft", args.sft) if args.sft is not None else ("dpo", args.dpo)
    options = _finetune_options(args, kind)
    try:
        result = (finetune.sft if kind == "sft" else finetune.dpo)(args.init, data, options)
    except TrainingDiverged as err:
        print(f"minigpt train: {err}", file=sys.stderr)
        return 1
    last = {k: v for r in result.history for k, v in r.items()}                 # the latest value of each key
    print(f"\ndone: {kind}, {options.steps} steps from {args.init}, {result.seconds:.0f} s; "
          f"last loss {last['loss']:.4f}")
    if kind == "dpo" and "val_accuracy" in last:
        print(f"held-out pairs: preference accuracy {last['val_accuracy']:.0%} (0% at the start, when the policy is "
              f"the reference), reward margin {last['val_margin']:.2f}, KL from the reference "
              f"{last['val_kl']:.3f} nats per answer token")
    elif "val_loss" in last:
        print(f"held-out answer loss {last['val_loss']:.4f} nats per answer token")
    if data == "builtin":
        _report_task_accuracy(args.init, result, options, kind)
    print(f"run folder {result.out} (checkpoints, log.jsonl); talk to it: minigpt chat --run {result.out}")
    return 0


def _report_task_accuracy(init, result, options, kind):
    """Greedy answers to 100 held-out built-in instructions, before (the --init model) and after."""
    from minigpt import finetune
    tests = finetune.builtin_instructions(100, "test", seed=options.seed + 1, tasks=options.tasks)
    before_model, before_tokenizer, _ = finetune.load_init(init, options.template, options.seed, options.device)
    rows = []
    for name, model, tokenizer in (("before", before_model, before_tokenizer),
                                   ("after", result.model, result.tokenizer)):
        acc = finetune.task_accuracy(model, tokenizer, tests, options.template)
        tasks = ", ".join(f"{task} {value:.0%}" for task, value in acc["tasks"].items())
        rows.append(f"  {name:>6}: {acc['accuracy']:.0%} right ({tasks}); {acc['in_template']:.0%} closed their turn")
    print(f"held-out built-in instructions, greedy answers (before and after {kind}):\n" + "\n".join(rows))


# --- sample ------------------------------------------------------------------------------------------
def _load_for_sampling(args):
    """(model, tokenizer) from --run or --hf."""
    from minigpt import checkpoint, tokenizers
    if args.run:
        saved = checkpoint.load(args.run)
        model = minigpt.Model(saved.config, dtype=saved.dtype, params=saved.params)
        return model, saved.tokenizer
    model = minigpt.hf.load(args.hf)
    try:
        return model, tokenizers.load(args.hf)
    except ValueError as err:
        raise ValueError(f"{args.hf}: no tokenizer files minigpt can read ({err})") from err


def cmd_sample(args):
    model, tokenizer = _load_for_sampling(args)
    prompt = tokenizer.encode(args.prompt)
    if not prompt:
        raise ValueError("--prompt: the prompt is empty once tokenized; give at least one character")
    print(tokenizer.decode(prompt), end="", flush=True)
    for token in minigpt.generate_stream(model, prompt, max_new_tokens=args.max_new_tokens, temperature=args.temperature,
                                         top_k=args.top_k, top_p=args.top_p, seed=args.seed):
        print(tokenizer.decode([token]), end="", flush=True)
    print()
    return 0


# --- chat --------------------------------------------------------------------------------------------
def _load_for_chat(args):
    """(model, tokenizer, template) of a fine-tuned run; the sampling flags checked before the first line is read."""
    from minigpt import checkpoint
    from minigpt.chat import stop_ids
    from minigpt.generate import _check_sampling
    _check_sampling(args.temperature, args.top_k, args.top_p, args.max_new_tokens)
    if args.max_new_tokens < 1:
        raise ValueError(f"--max-new-tokens {args.max_new_tokens}: expected at least 1")
    saved = checkpoint.load(args.run)
    template = args.template or saved.state.get("template")
    if template is None:
        raise ValueError(f"{args.run}: this run was not tuned for chat (its checkpoint names no chat template); "
                         f"tune it first: minigpt train --sft builtin --init {args.run}")
    if saved.tokenizer is None:
        raise ValueError(f"{args.run}: the checkpoint holds no tokenizer")
    stop_ids(saved.tokenizer, template)                                # the tokenizer has the template's tokens
    model = minigpt.Model(saved.config, dtype=saved.dtype, params=saved.params).eval()
    return model, saved.tokenizer, template


def _stream_answer(model, tokenizer, template, ids, args, turn):
    """Generate and print the answer token by token (stopping at any special token); returns its text."""
    from minigpt.chat import get_template
    specials = set(tokenizer.special_tokens.values())
    ends = sorted(tokenizer.special_tokens[s] for s in get_template(template).specials)
    budget = min(args.max_new_tokens, model.config.max_seq_len - len(ids))
    answer, shown = [], ""
    for token in minigpt.generate_stream(model, ids, budget, args.temperature, args.top_k, args.top_p,
                                         seed=args.seed + turn, stop_tokens=ends):
        if token in ends:
            break
        if token in specials:                        # another special token (<unk>, ...): not part of the text
            continue
        answer.append(token)
        text = tokenizer.decode(answer)
        if not text.endswith("\ufffd"):              # a character cut in the middle of its bytes: wait for the rest
            print(text[len(shown):], end="", flush=True)
            shown = text
    text = tokenizer.decode(answer)
    print(text[len(shown):], flush=True)
    return text


def _chat_turn(model, tokenizer, template, history, user, args, turn, interactive):
    """One exchange: fit the history in the context, stream the answer; returns the new history."""
    from minigpt.finetune import fit_history
    context = model.config.max_seq_len
    try:
        ids, messages = fit_history(history, user, tokenizer, template, context,
                                    room=min(args.max_new_tokens, context // 2))
    except ValueError as err:
        print(f"({err})", file=sys.stderr)
        return history
    if interactive:
        print("model> ", end="", flush=True)
    try:
        answer = _stream_answer(model, tokenizer, template, ids, args, turn)
    except KeyboardInterrupt:
        print("\n(interrupted: this exchange is forgotten)", file=sys.stderr)
        return history
    if not answer:                                   # an empty answer is kept out of the history
        return messages[:-1]
    return messages + [{"role": "assistant", "content": answer}]


def cmd_chat(args):
    model, tokenizer, template = _load_for_chat(args)
    interactive = sys.stdin.isatty()
    start = [{"role": "system", "content": args.system}] if args.system else []
    if interactive:
        print(f"chatting with {args.run} (the {template} template, a context of {model.config.max_seq_len} tokens); "
              "/reset forgets the history, /exit ends")
    history, turn = list(start), 0
    while True:
        try:
            line = input("you> " if interactive else "")
        except (EOFError, KeyboardInterrupt):
            if interactive:
                print()
            return 0
        user = line.strip()
        if user == "/exit":
            return 0
        if user == "/reset":
            history = list(start)
            print("(history cleared)", file=sys.stderr)
        elif user.startswith("/"):
            print(f"(unknown command {user!r}: /reset forgets the history, /exit ends)", file=sys.stderr)
        elif user:
            history = _chat_turn(model, tokenizer, template, history, user, args, turn, interactive)
            turn += 1


# --- params ------------------------------------------------------------------------------------------
def cmd_params(args):
    from minigpt.config import ModelConfig, flops_per_token, num_params
    config = ModelConfig.preset(args.preset)
    counts = num_params(config)
    T = args.seq_len or config.max_seq_len
    flops = flops_per_token(config, T)
    print(f"{args.preset}: L={config.n_layer} d_model={config.d_model} H={config.n_head} Hkv={config.n_kv_head} "
          f"d_ff={config.d_ff} V={config.vocab_size} max_seq_len={config.max_seq_len}")
    rows = [("parameters", f"{counts['total']:,}"), ("  embedding", f"{counts['embedding']:,}"),
            ("  non-embedding", f"{counts['non_embedding']:,}"),
            (f"training FLOPs per token (T={T})", f"{flops:.3e}"),
            ("  6N (Kaplan et al.)", f"{6 * counts['non_embedding']:.3e}")]
    width = max(len(name) for name, _ in rows)
    for name, value in rows:
        print(f"  {name:<{width}}  {value:>18}")
    return 0


# --- plot --------------------------------------------------------------------------------------------
def _plot_masks(args):
    from minigpt.config import ModelConfig
    from minigpt.masks import attention_mask
    from minigpt.viz import plot_mask
    config, T = ModelConfig.preset(args.preset), args.seq_len
    prefix = T // 3 if config.attention == "prefix" else None
    kinds = sorted({config.local_attention(i) or "dense" for i in range(config.n_layer)})
    paths = []
    for kind in kinds:
        local = None if kind == "dense" else kind
        mask = attention_mask(T, prefix_len=prefix, local=local, window=config.attn_window)   # (T, T)
        layers = [i for i in range(config.n_layer) if (config.local_attention(i) or "dense") == kind]
        paths.append(plot_mask(mask, f"{args.preset}: layers {layers} ({kind})", f"mask_{args.preset}_{kind}"))
    return paths


def _plot_positions(args):
    from minigpt.config import ModelConfig
    from minigpt.layers.positions import sinusoidal_encoding
    from minigpt.layers.rope import rope_cos_sin
    from minigpt.viz import plot_positional_encoding
    config, pos = ModelConfig.preset(args.preset), np.arange(args.seq_len)
    if config.rotary is not None:
        dim = config.rotary_dim if config.rotary == "rope" else config.head_dim // 2
        cos, _ = rope_cos_sin(pos, dim, config.rope_theta, "float64")               # (T, dim/2)
        return [plot_positional_encoding(cos, f"positions_{args.preset}_rope",
                                         title=f"{args.preset}: cos of RoPE's angles (position x pair)")]
    pe = sinusoidal_encoding(pos, config.d_model, "float64")                       # (T, C)
    return [plot_positional_encoding(pe, "positions_sinusoidal", title="the sinusoidal encoding (the learned "
                                     "tables of this preset start random)")]


def _plot_attention(args):
    from minigpt import checkpoint
    from minigpt.data.corpus import load_corpus
    from minigpt.viz import plot_attention
    if not args.run:
        raise ValueError("plot attention needs --run (a trained run folder)")
    saved = checkpoint.load(args.run)
    model, tok = minigpt.Model(saved.config, dtype=saved.dtype, params=saved.params).eval(), saved.tokenizer
    text = args.text if args.text is not None else load_corpus(saved.state["options"]["data"])
    ids = tok.encode(text)[:min(args.seq_len, model.config.max_seq_len)]
    model.forward(np.array([ids]))
    labels = [tok.decode([i]) for i in ids]
    paths = []
    for layer, probs in enumerate(model.attention_maps()):                         # (1, H, T, T) each
        for head in range(probs.shape[1]):
            paths.append(plot_attention(probs[0, head], labels, f"attention_layer{layer}_head{head}",
                                        title=f"layer {layer}, head {head}"))
    return paths


def _plot_loss(args):
    from pathlib import Path

    from minigpt.train import plot_log
    if not args.run:
        raise ValueError("plot loss needs --run (a run folder with log.jsonl)")
    log = Path(args.run) / "log.jsonl"
    if not log.is_file():
        raise ValueError(f"{log}: no such file (is {args.run} a run folder written by `minigpt train`?)")
    return [plot_log(log)]


def cmd_plot(args):
    import os
    if args.out:
        os.environ["MINIGPT_FIGURES"] = args.out
    plot = {"masks": _plot_masks, "positions": _plot_positions, "attention": _plot_attention, "loss": _plot_loss}
    for path in plot[args.what](args):
        print(f"saved {path}")
    return 0


# --- gradcheck ---------------------------------------------------------------------------------------
def _check_layer(name):
    """{gradient name: rel_error} of one layer on small random float64 inputs (B=3, T=7, C=12)."""
    from minigpt import layers as L
    from minigpt.gradcheck import check_gradients
    from minigpt.masks import causal_mask
    rng = np.random.default_rng(0)
    x, w, b = rng.standard_normal((3, 7, 12)), 1 + 0.1 * rng.standard_normal(12), 0.1 * rng.standard_normal(12)
    q, k = rng.standard_normal((3, 4, 7, 6)), rng.standard_normal((3, 2, 7, 6))
    cases = {
        "linear": (L.linear_forward, L.linear_backward, [x, rng.standard_normal((12, 5)), rng.standard_normal(5)]),
        "layernorm": (L.layernorm_forward, L.layernorm_backward, [x, w, b]),
        "rmsnorm": (L.rmsnorm_forward, L.rmsnorm_backward, [x, w]),
        "gelu": (L.gelu_forward, L.gelu_backward, [x]),
        "mlp": (L.mlp_forward, L.mlp_backward, [x, rng.standard_normal((12, 20)) / 4, rng.standard_normal(20),
                                                rng.standard_normal((20, 12)) / 4, rng.standard_normal(12)]),
        "attention": (lambda q, k, v: L.attention_forward(q, k, v, causal_mask(7)), L.attention_backward,
                      [q, k, rng.standard_normal((3, 2, 7, 6))]),
        "rope": (lambda x: L.rope_forward(x, *L.rope_cos_sin(np.arange(7), 6, dtype="float64")),
                 L.rope_backward, [q]),
    }
    forward, backward, inputs = cases[name]
    return check_gradients(forward, backward, inputs)


_LAYER_CHECKS = ("attention", "gelu", "layernorm", "linear", "mlp", "rmsnorm", "rope")


def cmd_gradcheck(args):
    from minigpt.config import ModelConfig
    from minigpt.gradcheck import check_model_gradients, move_off_init
    if args.layer:
        if args.layer not in _LAYER_CHECKS:
            raise ValueError(f"--layer {args.layer!r}: expected one of {', '.join(_LAYER_CHECKS)}")
        errors = _check_layer(args.layer)
    else:
        config = ModelConfig.preset(args.preset, n_layer=2, d_model=32, max_seq_len=8, vocab_size=50, attn_window=4)
        model = minigpt.Model(config, dtype="float64")
        move_off_init(model)
        rng = np.random.default_rng(0)
        ids, targets = rng.integers(0, 50, (2, 8)), rng.integers(0, 50, (2, 8))
        kwargs = {"prefix_len": np.array([3, 5])} if config.attention == "prefix" else {}
        errors = check_model_gradients(model, ids, targets, **kwargs)
    for name, err in errors.items():
        print(f"  {name:32s} rel_error {err:.1e}")
    worst = max(errors.values())
    print(f"worst rel_error {worst:.1e}: {'OK' if worst < 1e-6 else 'FAILED'} (float64, centered differences)")
    return 0 if worst < 1e-6 else 1


COMMANDS = {"train": cmd_train, "sample": cmd_sample, "chat": cmd_chat, "params": cmd_params, "plot": cmd_plot,
            "gradcheck": cmd_gradcheck}
