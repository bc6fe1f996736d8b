"""What the benchmarks share: one measurement per worker process, thread settings, resident memory.

Each benchmark runs every measurement in a fresh process of its own (the script calls itself with
--worker ...): Numba's and torch's OpenMP thread pools then never meet in one process (DESIGN.md
section 4), and each process's peak memory is its own. A worker prints one JSON line; the parent reads it.
"""
import json
import os
import subprocess
import sys
import threading
import time

THREAD_VARIABLES = ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "NUMBA_NUM_THREADS")


class RSSPeak:
    """Samples this process's resident set size every `interval` seconds while in a `with` block."""

    def __init__(self, interval=0.001):
        self.interval, self.peak, self._stop = interval, 0, threading.Event()

    @staticmethod
    def current():
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")

    def _sample(self):
        while not self._stop.is_set():
            self.peak = max(self.peak, self.current())
            time.sleep(self.interval)

    def __enter__(self):
        self.start = self.peak = self.current()
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, self.current())
        self.extra = self.peak - self.start


def peak_rss_bytes():
    """The highest resident set size this process has had (Linux's VmHWM)."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    return 0


def run_worker(script, args, threads=None, env=None):
    """Run `python script --worker args...` in a new process and return the dict it printed last, or
    {"error": its last line of stderr}. threads: the thread count for every BLAS / OpenMP / Numba pool."""
    env = dict(os.environ, **(env or {}))
    if threads is not None:
        env.update({name: str(threads) for name in THREAD_VARIABLES})
    proc = subprocess.run([sys.executable, script, "--worker", *map(str, args)], capture_output=True, text=True,
                          env=env)
    if proc.returncode != 0:
        return dict(error=(proc.stderr.strip().splitlines() or ["failed"])[-1])
    return json.loads(proc.stdout.strip().splitlines()[-1])


def median(values):
    values = sorted(values)
    mid = len(values) // 2
    return values[mid] if len(values) % 2 else (values[mid - 1] + values[mid]) / 2
