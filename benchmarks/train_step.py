"""One training step, minigpt against transformers on the same CPU: same config, same weights, same threads.

    python benchmarks/train_step.py [--configs gpt2 llama gpt2-T1024 main-job] [--threads 2] [--repeats 7]
                                    [--rounds 3] [--busy]

A step is forward + cross-entropy + backward + AdamW, in float32. Every side runs in a process of its
own (benchmarks/common.py): minigpt, transformers with attn_implementation="eager", and with "sdpa"
(torch.nn.functional.scaled_dot_product_attention). The weights are minigpt's, written by minigpt.hf.save
and read by transformers' from_pretrained; the first step's loss of every side is printed, and they agree.
Every process uses the same number of threads (--threads, default: all cores) for NumPy's BLAS, OpenMP,
Numba and torch. torch's processes run Numba (if minigpt's data preparation loads it: main-job) on its
"workqueue" threading layer, never on OpenMP: with Numba's OpenMP layer loaded in the same process, torch's
sdpa main-job step took 990 ms instead of 75 (2 cores, AMD EPYC; DESIGN.md section 4 describes the clash).

Configs (4 layers, C = 256, 8 heads, vocabulary 512):
    gpt2        the gpt2 preset, B = 8, T = 256
    llama       the llama preset with GQA (2 kv heads), B = 8, T = 256
    gpt2-T1024  the gpt2 preset, B = 2, T = 1024 (the same tokens per step, four times the attention)
    main-job    what `minigpt train` runs by default (the gpt2 preset at its tiny size, characters of the
                built-in corpus, B = 32, T = 64), stepped by minigpt.train.train_step itself against
                the same loop in torch (clipping, cosine learning rate, AdamW), reported in tokens/s over
                5 x --repeats steps after two warm-ups.

Rounds. A shared machine is noisy: another tenant's burst can slow one process by 20% for a minute, and
the sides run one after another. So the sides run round-robin, --rounds times each (a fresh process per
run), and each side's step time is the lowest of its per-process medians: the round least disturbed. The
spread of the rounds is printed too.

Printed per config: the median step time of --repeats steps after two warm-up steps (best round), the ratio
minigpt / torch, GFLOP/s and MFU (model FLOPs utilization: the step's matmul FLOPs, counted as
3 x forward with the full T x T attention, as in the PaLM paper, over a float32 matmul peak measured in
the same run with the same threads), the peak resident memory of each process (VmHWM: everything,
imports included) and the step's own extra (the resident set sampled during two more steps after the
timed ones, above where it stood before them), and where minigpt's time goes (cProfile's own-time per function, the
time of NumPy calls given to the function that made them, grouped by layer).

--busy: the same step beside a competing CPU-bound process (one busy Python loop), idle and busy, each
process under minigpt's default thread policy (minigpt.backend.blas_threads "auto"), and lesson 18 run
both ways: the slowdown factors. The competitor is started before and stopped after each measurement.
"""
import argparse
import cProfile
import json
import os
import pstats
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from common import RSSPeak, median, peak_rss_bytes, run_worker  # noqa: E402  (benchmarks/, this folder)

SIZE = dict(n_layer=4, d_model=256, n_head=8, vocab_size=512, dropout=0.0)
CONFIGS = {
    "gpt2": dict(preset="gpt2", B=8, T=256, model=SIZE),
    "llama": dict(preset="llama", B=8, T=256, model=dict(SIZE, n_kv_head=2)),
    "gpt2-T1024": dict(preset="gpt2", B=2, T=1024, model=SIZE),
    "main-job": dict(preset="gpt2", B=32, T=64, model=None),                # minigpt train's defaults
}
SIDES = ["minigpt", "minigpt-1shard", "torch-eager", "torch-sdpa"]
MAIN_JOB_SIDES = ["minigpt", "torch-eager", "torch-sdpa"]
PARTS = [  # (part of the step, the source files whose functions it is)
    ("matmuls (linear layers, head)", ("layers/linear.py",)),
    ("attention core", ("layers/attention.py", "kernels/flash_", "kernels/masking.py", "kernels/__init__.py")),
    ("MLP activation and gate", ("layers/activations.py", "layers/mlp.py", "kernels/elementwise_cpu.py")),
    ("norms", ("layers/norms.py", "kernels/norms_cpu.py")),
    ("RoPE", ("layers/rope.py", "kernels/rope_cpu.py")),
    ("embeddings, positions", ("layers/embedding.py", "layers/positions.py")),
    ("cross-entropy", ("layers/loss.py",)),
    ("AdamW, clipping", ("minigpt/optim.py", "kernels/adamw_cpu.py")),
]


# ---------------------------------------------------------------- the step, in each process

def build_config(name, main_job_vocab=None):
    from minigpt import ModelConfig
    spec = CONFIGS[name]
    model = spec["model"] if spec["model"] is not None else dict(vocab_size=main_job_vocab, dropout=0.0)
    return ModelConfig.preset(spec["preset"], max_seq_len=spec["T"], **model)


def batch(config, B, T, seed=0):
    """(inputs, targets) int64 (B, T): random tokens, the targets shifted by one."""
    import numpy as np
    ids = np.random.default_rng(seed).integers(0, config.vocab_size, size=(B, T + 1))
    return ids[:, :-1], ids[:, 1:]


def minigpt_step(weights_dir, shards):
    """The step closure of minigpt on the saved weights: the batch in `shards` shards computed at once, as
    `minigpt train` does (minigpt.parallel; shards=1: one forward and backward over the whole batch)."""
    from minigpt import hf
    from minigpt.optim import AdamW
    from minigpt.parallel import DataParallel
    from minigpt.train import _clm_loss
    model = hf.load(weights_dir)
    optimizer = AdamW(model.params, lr=1e-4, betas=(0.9, 0.95), eps=1e-8, weight_decay=0.1)
    parallel = DataParallel(model, shards)

    def step(x, y):
        model.zero_grad()
        loss = parallel.forward_backward((x, y), _clm_loss)                 # forward, loss, backward
        optimizer.step(model.grads, parallel.map_keys)
        return float(loss)

    return model, step


def torch_step(weights_dir, attention):
    """The same step in torch: transformers' model, F.cross_entropy, backward, torch.optim.AdamW."""
    import torch
    from transformers import AutoModelForCausalLM
    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", os.cpu_count())))
    model = AutoModelForCausalLM.from_pretrained(weights_dir, attn_implementation=attention, dtype=torch.float32)
    model.train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4, betas=(0.9, 0.95), eps=1e-8, weight_decay=0.1)

    def step(x, y):
        x, y = torch.from_numpy(x), torch.from_numpy(y)
        logits = model(input_ids=x, use_cache=False).logits                 # (B, T, V)
        loss = torch.nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]), y.reshape(-1))
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        return float(loss)

    return step


def matmul_peak(side, n=1024, repeats=5):
    """GFLOP/s of the best of `repeats` float32 (n, n) @ (n, n) matmuls, in NumPy or in torch."""
    import numpy as np
    a, b = (np.random.default_rng(i).standard_normal((n, n)).astype(np.float32) for i in (1, 2))
    if not side.startswith("minigpt"):
        import torch
        a, b = torch.from_numpy(a), torch.from_numpy(b)
    best = float("inf")
    for _ in range(repeats + 1):
        start = time.perf_counter()
        a @ b
        best = min(best, time.perf_counter() - start)
    return 2 * n ** 3 / best / 1e9


def step_flops(config, B, T):
    """Matmul FLOPs of one training step: 3 x forward (the backward does two matmuls per forward one), the
    forward 2 x tokens x weights of every matmul, plus 4 B T^2 C per layer for q k^T and probs v."""
    from minigpt.config import param_shapes
    matmul_weights = sum(s[0] * s[1] for k, s in param_shapes(config).items()
                         if len(s) == 2 and k.startswith("blocks."))
    head = config.d_model * config.vocab_size
    forward = 2 * B * T * (matmul_weights + head) + 4 * B * T * T * config.d_model * config.n_layer
    return 3 * forward


def time_steps(step, x, y, repeats):
    """(first loss, median seconds of `repeats` steps after two warm-ups, the extra RSS of two more steps).
    The resident set is sampled only in steps that are not timed: the sampler is a Python thread that reads
    /proc every millisecond, and while it watched the timed steps minigpt's step took 4-7% longer (LLaMA
    config: 298 -> 316 ms, GPT-2: 334 -> 348 ms, in one process), the sampler's share of the GIL and a core."""
    first = step(x, y)
    step(x, y)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        step(x, y)
        times.append(time.perf_counter() - start)
    with RSSPeak() as rss:
        for _ in range(2):
            step(x, y)
    return first, median(times), rss.extra


def worker(side, config_name, weights_dir, repeats, vocab):
    config = build_config(config_name, vocab)
    spec = CONFIGS[config_name]
    x, y = batch(config, spec["B"], spec["T"])
    if side.startswith("minigpt"):
        model, step = minigpt_step(weights_dir, shards=1 if side == "minigpt-1shard" else 2)
    else:
        step = torch_step(weights_dir, side.removeprefix("torch-"))
    first, seconds, step_extra = time_steps(step, x, y, repeats)
    result = dict(first_loss=first, seconds=seconds, step_extra=step_extra, peak_rss=peak_rss_bytes(),
                  peak_gflops=matmul_peak(side), flops=step_flops(config, spec["B"], spec["T"]))
    if side == "minigpt-1shard":                                           # one thread of work: cProfile sees it
        result["parts"] = breakdown(step, x, y)
    if side.startswith("minigpt"):
        result["attention_impl"] = model.config.attention_impl
    return result


# ---------------------------------------------------------------- where minigpt's time goes

def breakdown(step, x, y, repeats=3):
    """Seconds per part of the step (PARTS, plus "other": the model's own glue), from cProfile's own time
    per function over `repeats` steps, each C function's (NumPy's) time given to its Python callers."""
    profile = cProfile.Profile()
    profile.enable()
    for _ in range(repeats):
        step(x, y)
    profile.disable()
    stats = pstats.Stats(profile).stats      # (file, line, name) -> (calls, calls, own time, cumulative, callers)
    parts = dict.fromkeys([name for name, _ in PARTS] + ["other"], 0.0)
    for (filename, _, _), (_, _, own, _, callers) in stats.items():
        if filename == "~":                  # a C function: its time, split by who called it
            for (caller_file, _, _), (_, _, caller_share, _) in callers.items():
                parts[_part(caller_file)] += caller_share / repeats
        else:
            parts[_part(filename)] += own / repeats
    return parts


def _part(filename):
    path = filename.replace(os.sep, "/")
    return next((name for name, files in PARTS if any(f in path for f in files)), "other")


# ---------------------------------------------------------------- the main job: tokens/s

def main_job_worker(side, repeats):
    """Tokens/s of minigpt train's default run (minigpt.train.prepare + train_step), or the same in torch."""
    from minigpt.train import TrainOptions, prepare, train_step
    with tempfile.TemporaryDirectory() as out:
        run = prepare(TrainOptions(out=out, progress=False))
    o = run.options
    tokens = o.batch_size * o.seq_len
    if side == "minigpt":
        step = lambda: train_step(run)  # noqa: E731
    else:
        step = _torch_main_job(run, side.removeprefix("torch-"))
    step(), step()
    start = time.perf_counter()
    for _ in range(repeats):
        step()
    seconds = (time.perf_counter() - start) / repeats
    return dict(tokens_per_s=tokens / seconds, seconds=seconds, peak_rss=peak_rss_bytes(),
                vocab=run.model.config.vocab_size)


def _torch_main_job(run, attention):
    """minigpt.train.train_step's loop in torch: the same batches, cosine lr, clipping and AdamW."""
    import torch
    from transformers import AutoModelForCausalLM

    from minigpt import hf
    from minigpt.optim import cosine_lr
    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", os.cpu_count())))
    folder = tempfile.mkdtemp()
    hf.save(run.model, folder)
    model = AutoModelForCausalLM.from_pretrained(folder, attn_implementation=attention, dtype=torch.float32)
    model.train()
    o = run.options
    optimizer = torch.optim.AdamW(model.parameters(), lr=o.lr, betas=(0.9, 0.95), eps=1e-8,
                                  weight_decay=o.weight_decay)
    state = dict(step=0)

    def step():
        for group in optimizer.param_groups:
            group["lr"] = cosine_lr(state["step"], o.lr, o.lr / 10, o.warmup_steps or o.steps // 20, o.steps)
        x, y = (torch.from_numpy(a) for a in run.sampler.next_batch())
        logits = model(input_ids=x, use_cache=False).logits
        loss = torch.nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]), y.reshape(-1))
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), o.grad_clip)
        optimizer.step()
        state["step"] += 1

    return step


# ---------------------------------------------------------------- a busy machine

def busy_loop():
    """The competitor: one CPU-bound Python loop, until killed."""
    while True:
        pass


def with_competitor(measure):
    """measure() run beside one busy process."""
    competitor = subprocess.Popen([sys.executable, __file__, "--worker", "busy"])
    try:
        time.sleep(0.5)                                                     # let it take its core
        return measure()
    finally:
        competitor.kill()
        competitor.wait()


def lesson_seconds(number="18"):
    """Wall seconds of one default run of a lesson, as a student runs it (python lessons/NN_....py)."""
    lesson = next((ROOT / "lessons").glob(f"{number}_*.py"))
    start = time.perf_counter()
    proc = subprocess.run([sys.executable, lesson.name], cwd=lesson.parent, capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"{lesson.name} failed: {proc.stderr.strip().splitlines()[-1:]}")
    return time.perf_counter() - start


def busy_report(config_name, repeats, weights):
    """Idle vs beside a competitor: the minigpt step of config_name and lesson 18 (no thread override: the
    library's own policy decides)."""
    args = ["minigpt", config_name, weights[config_name], repeats, ""]
    rows = []
    idle = run_worker(__file__, args)
    busy = with_competitor(lambda: run_worker(__file__, args))
    rows.append((f"training step ({config_name})", idle.get("seconds"), busy.get("seconds")))
    rows.append(("lesson 18 (default run)", lesson_seconds(), with_competitor(lesson_seconds)))
    print(f"\nbeside one CPU-bound process ({os.cpu_count()} cores), minigpt's default thread policy:")
    print(f"{'':<28} {'idle s':>8} {'busy s':>8} {'slowdown':>9}")
    for name, a, b in rows:
        print(f"{name:<28} {a:>8.3f} {b:>8.3f} {b / a:>8.2f}x")


# ---------------------------------------------------------------- the parent

def save_weights(config_name, folder, vocab):
    from minigpt import Model, hf
    path = Path(folder) / config_name
    hf.save(Model(build_config(config_name, vocab), seed=0), path)
    return str(path)


def side_env(side):
    """Environment of a side's process: torch's sides keep Numba off OpenMP (see the module docstring)."""
    return {} if side.startswith("minigpt") else {"NUMBA_THREADING_LAYER": "workqueue"}


def round_robin(run_one, sides, rounds):
    """{side: its best run} after `rounds` rounds of run_one(side) for every side in turn; the best run is
    the one with the least seconds (an error if every run failed), and it records every round's seconds."""
    runs = {side: [] for side in sides}
    for _ in range(rounds):
        for side in sides:
            runs[side].append(run_one(side))
    best = {}
    for side, results in runs.items():
        ok = [r for r in results if "error" not in r]
        best[side] = dict(min(ok, key=lambda r: r["seconds"]), rounds=[r["seconds"] for r in ok]) if ok \
            else results[-1]
    return best


def _spread(r):
    """The rounds' step times as 'lo-hi' ms."""
    return f"{1e3 * min(r['rounds']):.0f}-{1e3 * max(r['rounds']):.0f}"


def report(config_name, results):
    spec, mg, serial = CONFIGS[config_name], results["minigpt"], results["minigpt-1shard"]
    print(f"\n{config_name}: preset {spec['preset']}, B={spec['B']} T={spec['T']}, "
          f"{mg['flops'] / 1e9:.1f} GFLOP per step; minigpt attention_impl={mg.get('attention_impl')!r}")
    print(f"{'side':<14} {'first loss':>10} {'step ms':>8} {'rounds ms':>10} {'x torch':>9} {'GFLOP/s':>8} "
          f"{'MFU':>5} {'peak MB':>8} {'step MB':>8}")
    for side, r in results.items():
        if "error" in r:
            print(f"{side:<14} failed: {r['error']}")
            continue
        ratios = "/".join(f"{r['seconds'] / results[t]['seconds']:.2f}" for t in ("torch-eager", "torch-sdpa")
                          if "seconds" in results.get(t, {}))
        achieved = r["flops"] / r["seconds"] / 1e9
        print(f"{side:<14} {r['first_loss']:>10.5f} {1e3 * r['seconds']:>8.1f} {_spread(r):>10} {ratios:>9} "
              f"{achieved:>8.1f} {achieved / r['peak_gflops']:>5.0%} {r['peak_rss'] / 2**20:>8.0f} "
              f"{r['step_extra'] / 2**20:>8.0f}")
    print(f"  (x torch: over eager / over sdpa; matmul peak {mg['peak_gflops']:.0f} GFLOP/s in NumPy; minigpt: "
          f"2 shards at once, as minigpt train; minigpt-1shard: the whole batch in one forward and backward)")
    print("  minigpt-1shard's step, by part: " + ", ".join(f"{name} {1e3 * s:.0f} ms" for name, s in
                                                      serial["parts"].items() if s >= 0.0005)
          + f" (step {1e3 * serial['seconds']:.0f} ms)")


def report_main_job(results):
    print("\nmain-job: `minigpt train`'s default run (gpt2 preset, characters, B=32, T=64)")
    print(f"{'side':<12} {'tokens/s':>10} {'step ms':>8} {'rounds ms':>10} {'peak MB':>8}")
    for side, r in results.items():
        if "error" in r:
            print(f"{side:<12} failed: {r['error']}")
            continue
        print(f"{side:<12} {r['tokens_per_s']:>10,.0f} {1e3 * r['seconds']:>8.1f} {_spread(r):>10} "
              f"{r['peak_rss'] / 2**20:>8.0f}")


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--configs", nargs="+", default=list(CONFIGS), choices=list(CONFIGS))
    parser.add_argument("--threads", type=int, default=os.cpu_count())
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--rounds", type=int, default=3, help="runs of every side, round-robin; the best counts")
    parser.add_argument("--busy", action="store_true", help="only the busy-machine comparison")
    parser.add_argument("--worker", nargs="+", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        if args.worker[0] == "busy":
            busy_loop()
        side, config_name, weights_dir, repeats, vocab = args.worker
        if config_name == "main-job":
            print(json.dumps(main_job_worker(side, int(repeats))))
        else:
            print(json.dumps(worker(side, config_name, weights_dir, int(repeats), int(vocab or 0) or None)))
        return
    print(f"training step: minigpt vs transformers, float32, {args.threads} threads each, {os.cpu_count()} cores; "
          f"median of {args.repeats} steps per process; every side in its own process, {args.rounds} rounds "
          f"round-robin, the best round counts")
    with tempfile.TemporaryDirectory() as folder:
        weights = {name: save_weights(name, folder, None) for name in args.configs if name != "main-job"}
        if args.busy:
            busy_report(next(iter(weights)), args.repeats, weights)
            return
        for name in args.configs:
            if name == "main-job":
                results = round_robin(lambda side: run_worker(__file__, [side, name, "-", 5 * args.repeats, ""],
                                                              args.threads, side_env(side)),  # short steps: 5x
                                      MAIN_JOB_SIDES, args.rounds)
                report_main_job(results)
                continue
            results = round_robin(lambda side: run_worker(__file__, [side, name, weights[name], args.repeats, ""],
                                                          args.threads, side_env(side)), SIDES, args.rounds)
            report(name, results)


if __name__ == "__main__":
    main()
