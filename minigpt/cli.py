"""The `minigpt` command line (also `python -m minigpt`).

    minigpt train      train a preset on a text (the main job: `minigpt train` with no arguments)
    minigpt sample     text from a trained run, or from a Hugging Face checkpoint folder
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
    _params_parser(commands)
    _plot_parser(commands)
    _gradcheck_parser(commands)
    return parser


def _train_parser(commands):
    from minigpt.train import TrainOptions
    d = TrainOptions()
    p = commands.add_parser("train", help="train a preset on a text (defaults: the main job)",
                            description="Train a preset. With no arguments: the gpt2 preset at its tiny size, "
                                        "character tokenizer, the built-in corpus, a few minutes on 2 CPU cores.")
    p.add_argument("--preset", default=d.preset, help=f"a tiny preset (default {d.preset})")
    p.add_argument("--data", default=d.data, help="'builtin', a UTF-8 text file, or a folder of them")
    p.add_argument("--tokenizer", default=d.tokenizer, choices=("char", "bpe"))
    p.add_argument("--bpe-vocab-size", type=int, default=d.bpe_vocab_size)
    p.add_argument("--objective", choices=("clm", "glm"), default=None,
                   help="default: glm for the glm / chatglm presets, clm for the rest")
    p.add_argument("--warmup-steps", type=int, default=None, help="default: steps / 20")
    for name, kind in (("steps", int), ("batch-size", int), ("seq-len", int), ("accumulate", int), ("lr", float),
                       ("weight-decay", float), ("eval-every", int),
                       ("checkpoint-every", int), ("seed", int)):
        attr = name.replace("-", "_")
        p.add_argument(f"--{name}", type=kind, default=getattr(d, attr), help=f"default {getattr(d, attr)}")
    p.add_argument("--device", default=d.device, choices=("cpu", "cuda"))
    p.add_argument("--out", default=None, help="the run folder (default runs/PRESET-TOKENIZER)")
    p.add_argument("--resume", action="store_true", help="continue the run in --out from its last checkpoint")
    p.add_argument("--set", action="append", default=[], metavar="FIELD=VALUE",
                   help="override a ModelConfig field of the preset, e.g. --set n_layer=2 --set dropout=0.1")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")


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


def cmd_train(args):
    from minigpt.train import TrainingDiverged, TrainOptions, train
    options = TrainOptions(
        preset=args.preset, data=args.data, tokenizer=args.tokenizer, bpe_vocab_size=args.bpe_vocab_size,
        objective=args.objective, steps=args.steps, batch_size=args.batch_size, seq_len=args.seq_len,
        accumulate=args.accumulate, lr=args.lr, warmup_steps=args.warmup_steps, weight_decay=args.weight_decay,
        eval_every=args.eval_every, checkpoint_every=args.checkpoint_every, seed=args.seed, device=args.device,
        out=args.out or f"runs/{args.preset}-{args.tokenizer}", resume=args.resume,
        progress=not args.no_progress, model=_overrides(args.set))
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

    from minigpt.train import read_log
    from minigpt.viz import plot_curves
    if not args.run:
        raise ValueError("plot loss needs --run (a run folder with log.jsonl)")
    log = Path(args.run) / "log.jsonl"
    if not log.is_file():
        raise ValueError(f"{log}: no such file (is {args.run} a run folder written by `minigpt train`?)")
    train, val = read_log(log)
    curves = {"train": tuple(np.array(c) for c in zip(*train))}
    if val:
        curves["validation"] = tuple(np.array(c) for c in zip(*val))
    return [plot_curves(curves, "loss", ylabel="loss (nats per token)")]


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


COMMANDS = {"train": cmd_train, "sample": cmd_sample, "params": cmd_params, "plot": cmd_plot,
            "gradcheck": cmd_gradcheck}
