"""How many CPU threads minigpt's matmuls and Numba kernels use: the cores no other process is using.

Why a policy at all. NumPy's BLAS (OpenBLAS) runs every large enough matmul on one thread per core, and
the threads of one matmul wait for each other at its end by spinning. When another process keeps one of
two cores busy, one of our two threads keeps losing its core for a whole scheduler time slice while the
other spins, and every matmul pays for it. Measured on a 2-core machine: lesson 18 took 6 s on an idle
machine, 46 to 189 s beside one busy process with two BLAS threads, 14 s with one.

The policy, set by the environment variable MINIGPT_THREADS:
    auto      (the default) use the cores other processes leave free, at least one: measured when minigpt
              is imported (over 50 ms) and again by the training loop every few seconds (refit_threads),
              from the machine's busy time in /proc/stat less this process's own CPU time;
    N         exactly N threads;
    off       leave NumPy's and Numba's own defaults (one thread per core).
On a system without /proc/stat (not Linux), "auto" uses every core.
The count applies to NumPy's BLAS (through threadpoolctl) and to Numba's parallel kernels.

OpenBLAS's idle threads. After a matmul, OpenBLAS's worker threads keep spinning, waiting for the next
one, for 2^28 CPU cycles (about 0.1 s) before they sleep. On 2 cores that spinning worker takes a core from
a Numba kernel that runs next on two threads: in a one-process training step (no shards) the flash kernels
took 1.8x their time alone. OPENBLAS_THREAD_TIMEOUT=20 (2^20 cycles, about 0.35 ms: back-to-back matmuls
still find their workers awake) took that step from 386-435 to 307 ms (LLaMA benchmark config, B = 8,
T = 256, 2 threads), GPT-2's from 434 to 345 ms; 2^4 cycles, sleeping at once, made it slower (430 ms).
OpenBLAS reads the variable once, when it loads, so minigpt sets it (unless you did) before it imports
NumPy: it takes effect when minigpt is imported before NumPy (the `minigpt` command, a script that starts
with `import minigpt`). Sharded training (minigpt.parallel) gives each shard one BLAS thread, which never
spins, and does not need it.
"""
import os
import sys
import time

os.environ.setdefault("OPENBLAS_THREAD_TIMEOUT", "20")   # see "OpenBLAS's idle threads" above; before NumPy loads

import numpy  # noqa: E402,F401  (loads NumPy's BLAS library: threadpoolctl finds only loaded ones)
from threadpoolctl import ThreadpoolController  # noqa: E402

SAMPLE_SECONDS = 0.05     # the window of the measurement made at import
REFIT_SECONDS = 5.0       # the training loop measures again after at least this long


def available_cores():
    """The cores this process may run on."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


class CoreMonitor:
    """How many cores other processes kept busy since the last look: /proc/stat's busy ticks of the whole
    machine, less this process's own CPU time, over the wall time between two looks."""

    def __init__(self):
        self.last = self._snapshot()

    @staticmethod
    def _snapshot():
        """(wall seconds, busy CPU seconds of the machine, CPU seconds of this process), or None."""
        try:
            with open("/proc/stat") as f:
                ticks = [int(n) for n in f.readline().split()[1:9]]  # user nice system idle iowait irq softirq
        except (OSError, ValueError):                                # steal (guest time is inside user already)
            return None
        busy = sum(ticks) - ticks[3] - ticks[4]                      # everything but idle and iowait
        own = os.times()
        return time.perf_counter(), busy / os.sysconf("SC_CLK_TCK"), own.user + own.system

    def others_busy(self):
        """Cores the other processes used on average since the last call (or creation); None without data."""
        now = self._snapshot()
        before, self.last = self.last, now
        if now is None or before is None or now[0] <= before[0]:
            return None
        wall, busy, own = (a - b for a, b in zip(now, before))
        return max(0.0, (busy - own) / wall)


def policy():
    """MINIGPT_THREADS as "auto", "off" or a positive int; anything else is an error that names it."""
    value = os.environ.get("MINIGPT_THREADS", "auto").strip().lower()
    if value in ("auto", "off"):
        return value
    if value.isdigit() and int(value) > 0:
        return int(value)
    raise ValueError(f"MINIGPT_THREADS={value!r}: expected 'auto', 'off' or a positive number of threads")


def threads_for(others_busy, cores):
    """The free cores, at least one: cores less the busy ones, rounded (a core half used by others counts)."""
    if others_busy is None:
        return cores
    return max(1, min(cores, cores - int(others_busy + 0.5)))


def use_threads(n):
    """n threads for NumPy's BLAS and for Numba's parallel kernels."""
    global _current
    _blas().limit(limits=n, user_api="blas")
    _current = n
    sync_numba()


def sync_numba():
    """Numba's parallel kernels (minigpt.kernels.flash_cpu calls this on import): a thread-safe threading
    layer with threads that sleep when idle, unless NUMBA_THREADING_LAYER says otherwise, and the chosen
    thread count. Does nothing before Numba is loaded.

    Why: Numba's default layer here, OpenMP, keeps its threads spinning for a while after a kernel returns,
    and on 2 cores they took the cores from the NumPy work that follows: `minigpt train`'s default step took
    116 ms with spinning threads and 67 to 71 ms with sleeping ones (OMP_WAIT_POLICY=passive, or Numba's
    "workqueue" layer). OpenMP with passive waiting is chosen over workqueue because workqueue aborts the
    process when two threads run a kernel at once, which minigpt.parallel's shards do."""
    numba = sys.modules.get("numba")
    if numba is None:
        return
    if "NUMBA_THREADING_LAYER" not in os.environ:
        os.environ.setdefault("OMP_WAIT_POLICY", "passive")   # read when OpenMP loads: at Numba's first launch
        numba.config.THREADING_LAYER = "threadsafe"          # TBB if installed, else OpenMP
    if _current is not None:
        numba.set_num_threads(min(_current, numba.config.NUMBA_NUM_THREADS))


def numba_threads_here(n):
    """n threads for the Numba kernels this thread launches (Numba's count is per calling thread)."""
    numba = sys.modules.get("numba")
    if numba is not None:
        numba.set_num_threads(min(n, numba.config.NUMBA_NUM_THREADS))


def kernels_thread_safe():
    """Can two threads run Numba kernels at once? Not on the "workqueue" layer (it aborts the process)."""
    numba = sys.modules.get("numba")
    return numba is None or str(numba.config.THREADING_LAYER).lower() != "workqueue"


def blas_limit(n):
    """A `with` block in which NumPy's BLAS uses n threads (minigpt.parallel: one thread's share of the cores)."""
    return _blas().limit(limits=n, user_api="blas")


def blas_threads_now():
    """{library file: its thread count now} for the BLAS libraries minigpt sets (NumPy's, loaded at import)."""
    return {lib.filepath: lib.num_threads for lib in _blas().lib_controllers}


def _blas():
    """threadpoolctl's view of the loaded BLAS libraries, found once (finding them reads every loaded library)."""
    global _controller
    if _controller is None:
        _controller = ThreadpoolController()
    return _controller


def current_threads():
    """The thread count the policy chose (None under MINIGPT_THREADS=off)."""
    return _current


def start():
    """Apply the policy once, at import: measure the other processes over SAMPLE_SECONDS under "auto"."""
    global _monitor
    chosen = policy()
    if chosen == "off":
        return
    if chosen == "auto":
        _monitor = CoreMonitor()
        time.sleep(SAMPLE_SECONDS)
        chosen = threads_for(_monitor.others_busy(), available_cores())
    use_threads(chosen)


def refit_threads():
    """Under "auto": measure again (since the last measurement, at least REFIT_SECONDS ago) and change the
    count if the machine got busier or freer. Returns the count in use. Cheap: reads /proc/stat."""
    if _monitor is None or _monitor.last is None or time.perf_counter() - _monitor.last[0] < REFIT_SECONDS:
        return _current
    chosen = threads_for(_monitor.others_busy(), available_cores())
    if chosen != _current:
        use_threads(chosen)
    return _current


_current = None
_monitor = None
_controller = None
