"""KV-cache generation, minigpt against transformers' generate on the same CPU: same weights, same threads.

    python benchmarks/generate.py [--configs gpt2 llama] [--batch 1 8] [--prompt 32] [--new 256] [--threads 2]

Greedy decoding with the KV cache on both sides: minigpt.generate(temperature=0) and transformers'
model.generate(do_sample=False, use_cache=True), from the same random prompt of --prompt tokens, for
exactly --new new tokens (no stop token; transformers' min_new_tokens makes it ignore its end-of-text id).
The weights are minigpt's (minigpt.hf.save, read by from_pretrained); the models are the ones of
benchmarks/train_step.py (4 layers, C = 256, 8 heads, vocabulary 512; llama with 2 kv heads), with room
for 512 positions. Both sides produce the same tokens, which is checked and printed.

Each side runs in a process of its own (benchmarks/common.py), with --threads threads for NumPy's BLAS,
Numba and torch. Printed: new tokens per second over the whole call (prefill included), the best of
--repeats calls after one warm-up, the ratio minigpt / transformers, and each process's peak resident
memory (VmHWM, imports included).
"""
import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from common import peak_rss_bytes, run_worker  # noqa: E402  (benchmarks/, this folder)

SIZE = dict(n_layer=4, d_model=256, n_head=8, vocab_size=512, max_seq_len=512, dropout=0.0)
CONFIGS = {"gpt2": dict(preset="gpt2", **SIZE), "llama": dict(preset="llama", **SIZE, n_kv_head=2)}
SIDES = ["minigpt", "transformers"]


def prompts(batch, length, vocab, seed=0):
    import numpy as np
    return np.random.default_rng(seed).integers(0, vocab, size=(batch, length))


def minigpt_generate(weights_dir):
    import minigpt
    model = minigpt.hf.load(weights_dir)
    return lambda ids, new: [row[ids.shape[1]:] for row in
                             minigpt.generate(model, ids, max_new_tokens=new, temperature=0.0)]


def transformers_generate(weights_dir):
    import torch
    from transformers import AutoModelForCausalLM
    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", os.cpu_count())))
    model = AutoModelForCausalLM.from_pretrained(weights_dir, dtype=torch.float32).eval()

    def generate(ids, new):
        with torch.no_grad():
            out = model.generate(torch.from_numpy(ids), max_new_tokens=new, min_new_tokens=new, do_sample=False,
                                 use_cache=True, pad_token_id=0)
        return [list(map(int, row[ids.shape[1]:])) for row in out]

    return generate


def worker(side, weights_dir, batch, prompt_len, new, repeats, vocab):
    generate = (minigpt_generate if side == "minigpt" else transformers_generate)(weights_dir)
    ids = prompts(batch, prompt_len, vocab)
    tokens = generate(ids, new)                                             # warm-up (and Numba's compile)
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        generate(ids, new)
        best = min(best, time.perf_counter() - start)
    return dict(seconds=best, tokens_per_s=batch * new / best, peak_rss=peak_rss_bytes(),
                tokens=[list(map(int, row)) for row in tokens])


def save_weights(name, folder):
    from minigpt import Model, ModelConfig, hf
    spec = dict(CONFIGS[name])
    path = Path(folder) / name
    hf.save(Model(ModelConfig.preset(spec.pop("preset"), **spec), seed=0), path)
    return str(path)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--configs", nargs="+", default=list(CONFIGS), choices=list(CONFIGS))
    parser.add_argument("--batch", type=int, nargs="+", default=[1, 8])
    parser.add_argument("--prompt", type=int, default=32)
    parser.add_argument("--new", type=int, default=256)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=os.cpu_count())
    parser.add_argument("--worker", nargs="+", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        side, weights_dir, *numbers = args.worker
        print(json.dumps(worker(side, weights_dir, *map(int, numbers))))
        return
    print(f"KV-cache generation, greedy: minigpt vs transformers' generate, float32, {args.threads} threads each, "
          f"{os.cpu_count()} cores; a {args.prompt}-token prompt, {args.new} new tokens; best of {args.repeats}")
    print(f"{'config':<7} {'batch':>5} {'side':<13} {'tokens/s':>9} {'seconds':>8} {'x transformers':>15} "
          f"{'peak MB':>8}  same tokens")
    with tempfile.TemporaryDirectory() as folder:
        for name in args.configs:
            weights = save_weights(name, folder)
            for batch in args.batch:
                results = {side: run_worker(__file__, [side, weights, batch, args.prompt, args.new, args.repeats,
                                                      SIZE["vocab_size"]], args.threads) for side in SIDES}
                reference = results["transformers"]
                for side, r in results.items():
                    if "error" in r:
                        print(f"{name:<7} {batch:>5} {side:<13} failed: {r['error']}")
                        continue
                    speed = (f"{r['tokens_per_s'] / reference['tokens_per_s']:.2f}"
                             if "tokens_per_s" in reference else "-")
                    same = "yes" if r.get("tokens") == reference.get("tokens") else "NO"
                    print(f"{name:<7} {batch:>5} {side:<13} {r['tokens_per_s']:>9,.0f} {r['seconds']:>8.2f} "
                          f"{speed:>15} {r['peak_rss'] / 2**20:>8.0f}  {same}")


if __name__ == "__main__":
    main()
