"""Data parallelism on one machine's CPU cores: a batch in shards, computed at the same time on threads.

Why. NumPy runs each elementwise operation (GELU, the norms, the softmax, AdamW's updates) on ONE core, and
its BLAS splits every matmul across the cores at a price: the threads of a matmul wait for each other at
its end. Splitting the batch instead, and giving each shard a thread of its own, keeps every core busy with
its own part of the work all the time. A training step of benchmarks/train_step.py (4 layers, C = 256,
B = 8, T = 256, 2 cores) went from 424 to 234 ms forward + backward; `minigpt train`'s default from 84 to
49 ms (measured side by side). NumPy releases Python's GIL inside its array operations, so the threads do
run at the same time.

The maths is ordinary gradient accumulation. The loss of a step is the mean over all N counted tokens;
shard s has n_s of them and the mean loss_s over its own, so

    loss = sum_s (n_s / N) loss_s,        dL/dtheta = sum_s (n_s / N) dloss_s/dtheta.

Shard 0 runs on the model itself, every other shard on a replica: a Model that shares the parameter dict of
the original (nothing is copied) but has its own gradients and its own forward caches. Each shard's backward
is weighted by n_s / N, and the replicas' gradients are added into model.grads, in shard order.

The result does not depend on how many threads run: the split is fixed by `shards` (a run's setting), and
on a busy machine (minigpt.threads gives fewer free cores than shards) the shards simply take turns.
"""
from concurrent.futures import ThreadPoolExecutor

import numpy as np

from minigpt import memory, threads
from minigpt.kernels import get_kernels
from minigpt.model import Model


class DataParallel:
    """dp = DataParallel(model, shards=2); loss = dp.forward_backward(arrays, loss_fn, grad_scale)."""

    def __init__(self, model, shards=2):
        if isinstance(shards, bool) or not isinstance(shards, int) or shards < 1:
            raise ValueError(f"shards={shards!r}: expected an integer >= 1")
        self.model, self.shards = model, shards
        memory.keep_freed_memory()        # a step's freed arrays stay for the next step (minigpt/memory.py)
        self.replicas = [model] + [self._replica() for _ in range(shards - 1)]   # shard 0 runs on the model
        self._pool, self._pool_size = None, 0
        if shards > 1 and model.config.attention_impl in ("auto", "flash-cpu"):
            get_kernels("flash-cpu")      # import Numba here, once, not in two shard threads at the same time
        if shards > 1 and model._fused:   # likewise the fused norms, RoPE and activations (Model._fused)
            from minigpt.kernels import elementwise_cpu, norms_cpu, rope_cpu  # noqa: F401

    def _replica(self):
        """A Model on the same parameter dict (updates by the optimizer are seen at once), own grads and caches."""
        model = self.model
        replica = Model(model.config, device=model.device, dtype=model.dtype, params=model.params)
        replica.params = model.params
        return replica

    def forward_backward(self, arrays, loss_fn, grad_scale=1.0):
        """arrays: a tuple of arrays with the batch on axis 0 (None entries are passed as they are);
        loss_fn(model, *shard_arrays) -> (loss, dlogits, n), n the tokens its mean loss counts.
        Adds grad_scale times the gradient of the batch's mean loss into model.grads (grad_scale 0: no
        backward at all). Returns the batch's mean loss."""
        batch = next(len(a) for a in arrays if a is not None)
        pieces = [rows for rows in np.array_split(np.arange(batch), self.shards) if len(rows)]   # B < shards: fewer
        shards = [tuple(None if a is None else a[rows] for a in arrays) for rows in pieces]
        replicas = self.replicas[:len(shards)]
        self._follow_model(replicas)
        results = self._run(lambda replica, shard: loss_fn(replica, *shard), replicas, shards)
        total = sum(n for _, _, n in results)
        if grad_scale:
            weights = [grad_scale * n / total for _, _, n in results]
            self._run(lambda replica, item: replica.backward(item[0] * item[1]), replicas,
                      [(dlogits, weight) for (_, dlogits, _), weight in zip(results, weights)])
            self._add_grads(replicas[1:])
        return sum(loss * n for loss, _, n in results) / total

    def _follow_model(self, replicas):
        """Replicas train or evaluate as the model does; with dropout on, each shard draws its masks from a
        generator seeded from the model's own dropout stream (which checkpoints save), so a resumed run
        draws the same masks."""
        for replica in replicas:
            if replica is not self.model:
                replica.training = self.model.training
                if self.model.training and self.model.config.dropout > 0:
                    replica.dropout_rng = np.random.default_rng(self.model.dropout_rng.integers(2**63))

    def _add_grads(self, replicas):
        """model.grads (which already hold shard 0's) += the other replicas' grads, in shard order; theirs are
        zeroed for the next step. The keys are shared out among the shard threads."""
        def add(key):
            for replica in replicas:
                self.model.grads[key] += replica.grads[key]
                replica.grads[key][...] = 0
        self.map_keys(add, list(self.model.grads))

    def map_keys(self, work, keys):
        """work(key) for every key, the keys shared out among the shard threads (one after the other where
        the shards run so): for the per-parameter work of a step, the gradient sum and the optimizer's update
        (Optimizer.step's map_keys). NumPy releases the GIL inside each operation, so the threads overlap."""
        workers = self._workers(self.shards)
        if workers == 1:
            for key in keys:
                work(key)
            return
        self._pool_for(workers)
        list(self._pool.map(work, keys))

    def _run(self, work, replicas, items):
        """[work(replica, item) for each pair], one thread per shard up to one per core; each thread's BLAS and
        Numba get its share of the cores minigpt.threads found free, at least one.
        On a busy machine the shard threads still run at once: they never wait for each other inside a
        matmul, so sharing the cores with another process costs about the share (measured beside one busy
        process on 2 cores: 1.5x slower; running the shards in turn on the one free core: 1.9x)."""
        workers = self._workers(len(items))
        if workers == 1:
            return [work(replica, item) for replica, item in zip(replicas, items)]
        self._pool_for(workers)
        per_worker = max(1, (threads.current_threads() or threads.available_cores()) // workers)
        with threads.blas_limit(per_worker):
            futures = [self._pool.submit(_in_worker, per_worker, work, replica, item)
                       for replica, item in zip(replicas, items)]
            return [future.result() for future in futures]

    def _workers(self, n):
        """How many threads n pieces of work get: one each, up to one per core; one on a GPU."""
        on_cpu = self.model.device == "cpu" and threads.kernels_thread_safe()   # a GPU runs one shard at a time
        return min(n, threads.available_cores()) if on_cpu else 1

    def _pool_for(self, workers):
        """The thread pool, (re)made for this many workers."""
        if self._pool_size != workers:
            self._pool, self._pool_size = ThreadPoolExecutor(workers, thread_name_prefix="minigpt-shard"), workers


def _in_worker(n_threads, work, replica, item):
    """work(replica, item) in a shard thread, its Numba kernels on n_threads threads."""
    threads.numba_threads_here(n_threads)
    return work(replica, item)
