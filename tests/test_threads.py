"""The CPU thread policy (minigpt.threads): the free cores, measured; MINIGPT_THREADS; BLAS and Numba follow."""
import os
import subprocess
import sys
import time

import pytest
from minigpt import threads


@pytest.mark.parametrize("others, cores, expected", [
    (None, 2, 2), (0.0, 2, 2), (0.3, 2, 2), (0.6, 2, 1), (1.0, 2, 1), (2.0, 2, 1), (3.0, 16, 13), (0.0, 1, 1)])
def test_threads_for_uses_the_free_cores_and_at_least_one(others, cores, expected):
    assert threads.threads_for(others, cores) == expected


@pytest.mark.parametrize("value, expected", [("auto", "auto"), (" OFF ", "off"), ("3", 3)])
def test_policy_reads_minigpt_threads(monkeypatch, value, expected):
    monkeypatch.setenv("MINIGPT_THREADS", value)
    assert threads.policy() == expected


@pytest.mark.parametrize("value", ["0", "-1", "two", "1.5", ""])
def test_policy_refuses_what_it_cannot_use(monkeypatch, value):
    monkeypatch.setenv("MINIGPT_THREADS", value)
    with pytest.raises(ValueError, match=f"MINIGPT_THREADS={value.strip().lower()!r}: expected 'auto', 'off'"):
        threads.policy()


def blas_threads():
    """The thread counts of the BLAS libraries minigpt set (NumPy's: torch's MKL, loaded later, is not its own)."""
    return set(threads.blas_threads_now().values())


def test_use_threads_sets_the_blas_library():
    before = threads.current_threads()
    try:
        threads.use_threads(1)
        assert blas_threads() == {1} and threads.current_threads() == 1
        with threads.blas_limit(2):
            assert blas_threads() == {2}
        assert blas_threads() == {1}
    finally:
        threads.use_threads(before or threads.available_cores())


@pytest.mark.skipif(not os.path.exists("/proc/stat"), reason="the measurement reads Linux's /proc/stat")
def test_monitor_sees_another_busy_process_and_not_this_one():
    """One busy child process is about one core of "others"; this process's own busy loop is not counted.
    Bounds: the child may be scheduled out a little (>= 0.6), and others may run too (no upper bound but the
    cores); this process spinning for the same time must not raise the count by a whole core."""
    monitor = threads.CoreMonitor()
    child = subprocess.Popen([sys.executable, "-c", "while True: pass"])
    try:
        time.sleep(0.2)
        monitor.others_busy()                                              # start the window with the child running
        time.sleep(0.6)
        assert 0.6 <= monitor.others_busy() <= threads.available_cores() + 0.5
    finally:
        child.kill()
        child.wait()
    quiet = monitor.others_busy()                                          # child gone, ...
    end = time.perf_counter() + 0.5
    while time.perf_counter() < end:                                       # ... this process busy
        pass
    own_busy = monitor.others_busy()
    assert own_busy < quiet + 0.6, (quiet, own_busy)


def test_import_applies_the_policy_in_a_fresh_process():
    """MINIGPT_THREADS=1: after `import minigpt` NumPy's BLAS runs one thread; off: the library's default."""
    code = ("import minigpt; from threadpoolctl import threadpool_info; "
            "print(sorted({i['num_threads'] for i in threadpool_info() if i['user_api'] == 'blas'}))")
    env = {k: v for k, v in os.environ.items() if not k.endswith("_NUM_THREADS")}
    one = subprocess.run([sys.executable, "-c", code], env=dict(env, MINIGPT_THREADS="1"), capture_output=True,
                         text=True, check=True)
    assert one.stdout.strip() == "[1]"
    off = subprocess.run([sys.executable, "-c", code], env=dict(env, MINIGPT_THREADS="off"), capture_output=True,
                         text=True, check=True)
    assert off.stdout.strip() == f"[{os.cpu_count()}]"


def test_import_shortens_openblas_spinning_unless_the_user_set_it():
    """`import minigpt` before NumPy: OpenBLAS loads with OPENBLAS_THREAD_TIMEOUT=20 (its idle threads sleep
    after 2^20 cycles, not 2^28), read back from the library itself; a value the user set stays."""
    code = ("import ctypes, minigpt; from threadpoolctl import threadpool_info; "
            "print(sorted({ctypes.CDLL(i['filepath']).openblas_thread_timeout() "
            "for i in threadpool_info() if i['internal_api'] == 'openblas'}))")
    env = {k: v for k, v in os.environ.items() if k != "OPENBLAS_THREAD_TIMEOUT"}
    ours = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    assert ours.stdout.strip() == "[20]"
    theirs = subprocess.run([sys.executable, "-c", code], env=dict(env, OPENBLAS_THREAD_TIMEOUT="24"),
                            capture_output=True, text=True, check=True)
    assert theirs.stdout.strip() == "[24]"
