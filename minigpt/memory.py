"""Keep the memory a training step frees for the next step, instead of handing it back to the system.

Why. A NumPy training step allocates a fresh array for almost every intermediate (the MLP's hidden layer,
the attention's q, k, v, every gradient) and frees it a moment later. glibc's malloc gives a large freed
block back to the system (munmap for blocks above its mmap threshold; a trim of the heap's top once more
than its trim threshold lies free there, and the same per thread arena), so the next step's array of the
same size starts as fresh pages, and the kernel zero-fills every 4 KiB page on its first write (a "minor
page fault"). Measured on a 2-core machine, one shard of benchmarks/train_step.py's GPT-2 step (B = 4,
T = 256, one thread): 14,251 page faults per step, 36 to 56 ms of system time, 341 ms a step; with the
settings below 0 faults and 308 ms. For the LLaMA step with two shards: 45,114 faults, 426 ms; 0 and 345 ms.
With two shard threads the order of allocations varies from step to step, so now and then a step still sets a
new high-water mark for the heap and faults in a few hundred fresh pages (tests/test_memory.py has numbers).

What. Three of glibc's mallopt settings, for the whole process:
    M_ARENA_MAX       1        every thread allocates from the one main heap (a thread's own arena would
                               return its freed heaps to the system by its own rules); NumPy allocates a
                               few hundred arrays a step, so the shared lock costs nothing measurable
    M_MMAP_THRESHOLD  32 MiB   arrays up to 32 MiB (glibc's largest allowed value) come from the heap,
                               not from mmap; larger ones are still mapped and unmapped each time
    M_TRIM_THRESHOLD  1 GiB    the heap's top is handed back only when more than 1 GiB of it is free
The price: the process keeps its largest step's memory until it exits; its peak is the same.
Other C libraries (macOS, musl) have no such allocator behaviour to change: nothing is done there.
"""
import ctypes

M_TRIM_THRESHOLD, M_MMAP_THRESHOLD, M_ARENA_MAX = -1, -3, -8   # glibc's <malloc.h> parameter numbers
SETTINGS = ((M_ARENA_MAX, 1), (M_MMAP_THRESHOLD, 32 * 2**20), (M_TRIM_THRESHOLD, 2**30))

_kept = None


def keep_freed_memory():
    """Apply SETTINGS once per process (minigpt.parallel.DataParallel calls it: every training loop).
    Returns True when glibc accepted them, False on another C library."""
    global _kept
    if _kept is None:
        libc = _glibc()
        _kept = libc is not None and all(libc.mallopt(param, value) == 1 for param, value in SETTINGS)
    return _kept


def _glibc():
    """The process's C library through ctypes, if it is glibc (which has mallopt and these parameters)."""
    try:
        libc = ctypes.CDLL(None)
        libc.gnu_get_libc_version                                  # only glibc has it
        return libc
    except (OSError, AttributeError):
        return None
