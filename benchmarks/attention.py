"""Causal attention, forward and forward+backward: the NumPy reference, flash-cpu (Numba) and torch SDPA.

    python benchmarks/attention.py [--T 1024 2048 4096] [--B 4] [--H 12] [--D 64] [--repeats 3] [--rounds 1]

Shapes: q, k, v (B, H, T, D) float32, causal mask, default B=4, H=12, D=64 at T = 1024, 2048, 4096.
Implementations: `reference` (minigpt.layers.attention, NumPy, keeps the (B, H, T, T) probabilities),
`flash-cpu` (minigpt.kernels.flash_cpu, Numba, tiled with an online softmax), `torch-sdpa`
(torch.nn.functional.scaled_dot_product_attention on the CPU, is_causal=True). With CuPy and a GPU
(or --gpu) also `flash-cuda` (minigpt.kernels.flash_cuda on CuPy arrays), `cupy-reference` (the
reference on CuPy arrays) and `torch-sdpa-cuda` (fp32).

Times: the best of --repeats runs after two warm-ups, one on small shapes (Numba compiles then) and one full size.
"fwd" is the forward alone (torch with autograd on, as in training), "fwd+bwd" one forward plus one
backward. GFLOP/s counts the forward as 4*B*H*T^2*D (two matmuls), halved for causal, and the backward
as 2.5 times the forward; the same nominal count for every implementation, so it compares times.

Threads (DESIGN.md section 4): right after a Numba parallel kernel ran on the OpenMP threading layer,
torch's OpenMP threads in the same process slowed four-fold. So every implementation is timed in a
process of its own (this script runs itself with --worker), and all use the machine's cores.

Peak extra memory of one forward+backward, beyond the inputs, measured in a second, fresh process
(after a warm-up on small shapes, with glibc's malloc told to return every freed block of 1 MiB or
more to the system, MALLOC_MMAP_THRESHOLD_, so that the resident set follows live memory), two ways:
    tracemalloc  the peak of what Python's tracemalloc sees: every NumPy array (the reference's
                 temporaries, flash-cpu's outputs and L); not Numba's in-kernel workspaces (a few
                 hundred KB per thread) and nothing of torch's, so "-" for torch;
    RSS          the peak of the process's resident set, sampled every millisecond from another thread,
                 minus its size just before the call: everything, the same way for every implementation
                 (the Numba kernels release the GIL, so the sampler runs while they do).
The reference at large T may need more memory than the machine has free: it then runs at a smaller
batch B' and its time and memory are scaled by B / B' (its work and arrays are linear in B), marked *.
"""
import argparse
import json
import math
import os
import subprocess
import sys
import time
import tracemalloc
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from common import RSSPeak  # noqa: E402  (benchmarks/, the script's own folder)

CPU_IMPLS = ["reference", "flash-cpu", "torch-sdpa"]
GPU_IMPLS = ["flash-cuda", "cupy-reference", "torch-sdpa-cuda"]
REFERENCE_BYTES_PER_SCORE = 6 * 4            # the reference holds ~6 float32 (B, H, T, T) arrays at its peak


# ---------------------------------------------------------------- measuring, inside a worker process

def make_impl(name, B, H, T, D, seed=0):
    """(forward, backward, sync) closures for one implementation on fresh float32 inputs."""
    import numpy as np
    rng = np.random.default_rng(seed)
    q, k, v, do = (rng.standard_normal((B, H, T, D)).astype(np.float32) for _ in range(4))
    if name.startswith("torch"):
        return _torch_impl(name, q, k, v, do)
    if name in ("flash-cuda", "cupy-reference"):
        import cupy
        q, k, v, do = (cupy.asarray(x) for x in (q, k, v, do))
        sync = cupy.cuda.Device().synchronize
    else:
        sync = lambda: None  # noqa: E731
    if name in ("reference", "cupy-reference"):
        from minigpt.layers.attention import attention_backward, attention_forward
        from minigpt.masks import causal_mask
        mask = causal_mask(T, xp=None if name == "reference" else cupy)
        state = {}
        forward = lambda: state.update(cache=attention_forward(q, k, v, mask=mask)[1])  # noqa: E731
        backward = lambda: attention_backward(do, state["cache"])  # noqa: E731
        return forward, backward, sync
    from minigpt.kernels import MaskSpec, get_kernels
    flash_forward, flash_backward = get_kernels(name)
    spec, state = MaskSpec(), {}
    forward = lambda: state.update(out=flash_forward(q, k, v, spec))  # noqa: E731
    backward = lambda: flash_backward(q, k, v, *state["out"], do, spec)  # noqa: E731
    return forward, backward, sync


def _torch_impl(name, q, k, v, do):
    import torch
    device = "cuda" if name.endswith("cuda") else "cpu"
    q, k, v = (torch.from_numpy(x).to(device).requires_grad_() for x in (q, k, v))
    do = torch.from_numpy(do).to(device)
    sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)
    state = {}

    def forward():
        for x in (q, k, v):
            x.grad = None
        state["out"] = torch.nn.functional.scaled_dot_product_attention(q, k, v, is_causal=True)

    return forward, lambda: state["out"].backward(do), sync


def run_worker(name, B, H, T, D, repeats):
    """Time one implementation in this process, or (repeats=0) measure its memory; a dict for the parent."""
    warm = make_impl(name, 1, 1, 64, D)                                     # compile, start thread pools
    warm[0](), warm[1](), warm[2]()
    forward, backward, sync = make_impl(name, B, H, T, D)
    if repeats == 0:
        return _memory(name, forward, backward, sync)
    best_fwd = best_total = math.inf
    for _ in range(repeats + 1):                                            # the first run is a warm-up
        start = time.perf_counter()
        forward(), sync()
        mid = time.perf_counter()
        backward(), sync()
        end = time.perf_counter()
        best_fwd, best_total = min(best_fwd, mid - start), min(best_total, end - start)
    return dict(fwd_s=best_fwd, total_s=best_total, threads=_threads(name))


def _memory(name, forward, backward, sync):
    """Peak extra memory of one forward+backward (see the module docstring)."""
    if name.endswith("cuda") or name == "cupy-reference":
        return _gpu_memory(name, forward, backward, sync)
    import gc
    gc.collect()
    tracemalloc.start()
    before = tracemalloc.get_traced_memory()[0]
    with RSSPeak() as rss:
        forward(), backward()
    traced = tracemalloc.get_traced_memory()[1] - before
    tracemalloc.stop()
    return dict(tracemalloc_bytes=None if name.startswith("torch") else traced, rss_bytes=rss.extra)


def _gpu_memory(name, forward, backward, sync):
    """torch: max_memory_allocated; CuPy: how far the memory pool grew (it keeps freed blocks)."""
    if name.startswith("torch"):
        import torch
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
        forward(), backward(), sync()
        return dict(tracemalloc_bytes=None, rss_bytes=torch.cuda.max_memory_allocated() - base)
    import cupy
    pool = cupy.get_default_memory_pool()
    pool.free_all_blocks()
    base = pool.total_bytes()
    forward(), backward(), sync()
    return dict(tracemalloc_bytes=None, rss_bytes=pool.total_bytes() - base)


def _threads(name):
    if name in GPU_IMPLS:
        return "GPU"
    if name.startswith("torch"):
        import torch
        return f"torch {torch.get_num_threads()}"
    if name.startswith("flash-cpu"):
        import numba
        return f"numba {numba.get_num_threads()} ({numba.threading_layer()})"
    return "BLAS"


# ---------------------------------------------------------------- the parent: one process per measurement

def measure(name, B, H, T, D, repeats, memory=True):
    """Two worker processes, one for the times and a fresh one for the memory; their results in one
    dict, with the batch scaling applied for the reference."""
    B_run = _reference_batch(B, H, T) if name == "reference" else B
    result = {}
    for worker_repeats in (repeats, 0) if memory else (repeats,):
        cmd = [sys.executable, __file__, "--worker", name, "--B", str(B_run), "--H", str(H), "--D", str(D),
               "--T", str(T), "--repeats", str(worker_repeats)]
        # In the memory process glibc's malloc returns every block >= 1 MiB to the system when it is freed
        # (a fixed mmap threshold), so the resident set follows what is alive instead of what malloc kept.
        env = dict(os.environ, MALLOC_MMAP_THRESHOLD_="1048576") if worker_repeats == 0 else None
        proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
        if proc.returncode != 0:
            return dict(error=(proc.stderr.strip().splitlines() or ["failed"])[-1])
        result.update(json.loads(proc.stdout.strip().splitlines()[-1]))
    factor = B / B_run
    for key in ("fwd_s", "total_s", "tracemalloc_bytes", "rss_bytes"):
        if result.get(key) is not None:
            result[key] *= factor
    result["scaled"] = B_run != B
    result["B_run"] = B_run
    return result


def _reference_batch(B, H, T):
    """The largest B' <= B whose reference run fits in 60% of the memory available now."""
    available = _available_bytes()
    per_sample = REFERENCE_BYTES_PER_SCORE * H * T * T
    return max(1, min(B, int(0.6 * available // per_sample))) if available else B


def _available_bytes():
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        return None


def gflops(B, H, T, D, seconds, backward):
    """Nominal GFLOP/s: forward 4*B*H*T^2*D halved for causal, backward 2.5x the forward."""
    forward = 4 * B * H * T * T * D / 2
    return (forward * (3.5 if backward else 1.0)) / seconds / 1e9


def print_table(rows, B, H, D):
    print(f"{'T':>5} {'impl':<16} {'fwd ms':>8} {'GFLOP/s':>8} {'fwd+bwd ms':>11} {'GFLOP/s':>8} "
          f"{'/torch':>7} {'/ref':>6} {'tracemalloc MB':>15} {'RSS MB':>8}  threads")
    for T, name, r in rows:
        if "error" in r:
            print(f"{T:>5} {name:<16} failed: {r['error']}")
            continue
        torch_r = next((x for t, n, x in rows if t == T and n.startswith("torch") and "error" not in x
                        and n.endswith("cuda") == name.endswith("cuda")), None)
        ref_r = next((x for t, n, x in rows if t == T and n.endswith("reference") and "error" not in x
                      and (n == "reference") == (name in CPU_IMPLS)), None)
        star = "*" if r.get("scaled") else " "
        traced = "-" if r["tracemalloc_bytes"] is None else f"{r['tracemalloc_bytes'] / 2**20:.0f}"
        print(f"{T:>5} {name + star:<16} {_ms(r['fwd_s']):>8} {gflops(B, H, T, D, r['fwd_s'], False):>8.1f} "
              f"{_ms(r['total_s']):>11} {gflops(B, H, T, D, r['total_s'], True):>8.1f} "
              f"{_ratio(r, torch_r):>7} {_ratio(r, ref_r):>6} {traced:>15} {r['rss_bytes'] / 2**20:>8.0f}"
              f"  {r['threads']}")


def _ms(seconds):
    return f"{1e3 * seconds:.0f}" if seconds >= 0.1 else f"{1e3 * seconds:.2f}"


def _ratio(r, base):
    return "-" if base is None else f"{r['total_s'] / base['total_s']:.2f}"


def print_growth(rows):
    Ts = sorted({T for T, _, _ in rows})
    if len(Ts) < 2:
        return
    lo, hi = Ts[0], Ts[-1]
    print(f"\npeak extra memory (RSS), T={hi} over T={lo} "
          f"(linear would be {hi / lo:.0f}x, quadratic {(hi / lo) ** 2:.0f}x):")
    for name in dict.fromkeys(n for _, n, _ in rows):
        a = next((r for T, n, r in rows if T == lo and n == name and "error" not in r), None)
        b = next((r for T, n, r in rows if T == hi and n == name and "error" not in r), None)
        if a and b and a["rss_bytes"] > 0:
            print(f"  {name:<16} {b['rss_bytes'] / a['rss_bytes']:.1f}x")


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--T", type=int, nargs="+", default=[1024, 2048, 4096])
    parser.add_argument("--B", type=int, default=4)
    parser.add_argument("--H", type=int, default=12)
    parser.add_argument("--D", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--rounds", type=int, default=1,
                        help="time every implementation this many times, in turn, each in a new process; keep "
                             "the best (on a machine other work also uses, this evens out who had the cores)")
    parser.add_argument("--impls", nargs="+", default=None, help=f"any of {CPU_IMPLS + GPU_IMPLS}")
    parser.add_argument("--gpu", action="store_true", help="also the GPU implementations")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        print(json.dumps(run_worker(args.worker, args.B, args.H, args.T[0], args.D, args.repeats)))
        return
    from minigpt.backend import cupy_available
    impls = args.impls or CPU_IMPLS + (GPU_IMPLS if args.gpu or cupy_available() else [])
    print(f"attention: B={args.B} H={args.H} D={args.D}, causal, float32; {os.cpu_count()} CPU cores; "
          f"best of {args.repeats} x {args.rounds} round(s); each implementation timed in its own process "
          f"(no Numba/torch thread clash)")
    rows = []
    for T in args.T:
        results = {name: measure(name, args.B, args.H, T, args.D, args.repeats) for name in impls}
        for _ in range(args.rounds - 1):                                    # more rounds: the best time of all
            for name in impls:
                again = measure(name, args.B, args.H, T, args.D, args.repeats, memory=False)
                for key in ("fwd_s", "total_s"):
                    if key in again and key in results[name]:
                        results[name][key] = min(results[name][key], again[key])
        rows += [(T, name, results[name]) for name in impls]
    print_table(rows, args.B, args.H, args.D)
    for T, name, r in rows:
        if r.get("scaled"):
            print(f"* {name} at T={T} ran at B={r['B_run']} (memory) and is scaled to B={args.B}: "
                  f"its time and memory are linear in B")
    print_growth(rows)


if __name__ == "__main__":
    main()
