"""minigpt.memory: a training step reuses the memory the previous step freed (no fresh pages to fault in)."""
import json
import subprocess
import sys

import pytest
from minigpt import memory

pytestmark = pytest.mark.skipif(memory._glibc() is None, reason="mallopt's settings exist only in glibc")

# Five steps of a small GPT through DataParallel; prints the minor page faults of each step (the first two compile
# the kernels and grow the heap to its working size). KEEP=0 turns minigpt.memory off before DataParallel applies it.
# One shard: the allocations then come in the same order every step. With two shard threads the order varies, and
# now and then a later step still sets a new high-water mark for the heap (measured on this model: 64 to 512 fresh
# pages in about one step in eight, at any step; 0 in the others), which a per-step bound cannot hold every time.
STEPS = """
import json, resource, sys
import numpy as np
import minigpt.memory
if sys.argv[1] == "0":
    minigpt.memory._kept = False                     # as if applied already: glibc keeps its own defaults
from minigpt import Model, ModelConfig
from minigpt.parallel import DataParallel
from minigpt.train import _clm_loss
cfg = ModelConfig.preset("gpt2", n_layer=2, d_model=128, n_head=4, vocab_size=256, max_seq_len=128, dropout=0.0,
                         attention_impl="reference")
model = Model(cfg, seed=0, dtype="float32")
parallel = DataParallel(model, 1)
ids = np.random.default_rng(0).integers(0, 256, size=(16, 129))
faults = []
for _ in range(5):
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    model.zero_grad()
    parallel.forward_backward((ids[:, :-1], ids[:, 1:]), _clm_loss)
    faults.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
print(json.dumps(faults))
"""


def faults_per_step(keep):
    out = subprocess.run([sys.executable, "-c", STEPS, "1" if keep else "0"], capture_output=True, text=True,
                         timeout=300)
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout.splitlines()[-1])[2:]                     # the steps after the first two


def test_keep_freed_memory_is_accepted_by_glibc_once_per_process():
    assert memory.keep_freed_memory() is True
    assert memory.keep_freed_memory() is True


def test_training_steps_fault_in_no_fresh_pages():
    """A step's arrays here are up to 4 MiB (the MLP's hidden layer, 1024 pages): with the settings a step faults
    in fewer pages than a quarter of one such array (measured: 0); with glibc's defaults (the control, so that this
    test can fail) thousands (measured: about 4,480)."""
    kept, default = faults_per_step(keep=True), faults_per_step(keep=False)
    assert max(kept) < 256, f"page faults per step with minigpt.memory: {kept}"
    assert min(default) > 10 * 256, f"page faults per step with glibc's defaults: {default} (the control)"
