"""flash_cuda's kernels against the NumPy reference, in Numba's CUDA simulator on small shapes, and on a
real GPU (CuPy arrays) when there is one.

The simulator must be switched on (NUMBA_ENABLE_CUDASIM=1) before numba is first imported, and the
rest of the suite imports numba for the CPU kernels in the same pytest process. So the simulator tests
run in a child pytest process: test_cuda_kernels_in_the_simulator runs this file again with
NUMBA_ENABLE_CUDASIM=1 and MINIGPT_CUDASIM_CHILD=1, and only there are the simulator tests collected.
Nothing of the simulator reaches the parent process.

Errors: float32 max |kernel - reference| / max |reference| < 2e-5 (both sides in float32); L against the
log-sum-exp of the masked, scaled scores computed in float64.
"""
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from minigpt.kernels import MaskSpec, dense_mask

ROOT = Path(__file__).resolve().parents[1]
CHILD = os.environ.get("MINIGPT_CUDASIM_CHILD") == "1"

# name: (B, H, Hkv, T, S, D, spec, block_q, block_k)
SIM_CASES = {
    "causal-T11-mqa": (1, 2, 1, 11, 11, 8, MaskSpec(), 4, 4),
    "causal-T1": (2, 2, 2, 1, 1, 8, MaskSpec(), 4, 4),
    "causal-T20-default-tiles": (1, 2, 2, 20, 20, 16, MaskSpec(), None, None),
    "prefix-per-sample": (2, 2, 2, 9, 9, 16, MaskSpec(prefix=[0, 6]), 4, 8),
    "banded-W3": (1, 2, 1, 13, 13, 8, MaskSpec(local="banded", window=3), 4, 4),
    "sliding-W4-gqa": (1, 4, 2, 17, 17, 8, MaskSpec(local="sliding", window=4), 8, 4),
    "left-padding-prefix": (2, 2, 1, 10, 10, 8, MaskSpec(pad=[0, 3], prefix=[5, 0]), 4, 4),
    "decode-T1-S20": (2, 2, 1, 1, 20, 8, MaskSpec(q_offset=19, pad=[0, 4]), 4, 4),
    "decode-T3-S20-banded": (1, 2, 2, 3, 20, 8, MaskSpec(q_offset=17, local="banded", window=6), 4, 8),
}

GPU_CASES = {
    "causal-T129-D64-gqa": (2, 4, 2, 129, 129, 64, MaskSpec()),
    "causal-T200-D128": (1, 2, 2, 200, 200, 128, MaskSpec()),
    "sliding-padding": (2, 4, 1, 100, 100, 64, MaskSpec(local="sliding", window=17, pad=[0, 9])),
    "decode-T1-S300": (2, 4, 2, 1, 300, 64, MaskSpec(q_offset=299)),
}


def inputs(B, H, Hkv, T, S, D, seed=0):
    rng = np.random.default_rng(seed)
    return [rng.standard_normal(shape).astype(np.float32)
            for shape in [(B, H, T, D), (B, Hkv, S, D), (B, Hkv, S, D), (B, H, T, D)]]   # q, k, v, dO


def reference(q, k, v, do, mask):
    """out, L, dq, dk, dv (NumPy) of minigpt.layers.attention; L from float64 scores."""
    from minigpt.layers.attention import attention_backward, attention_forward
    out, cache = attention_forward(q, k, v, mask=mask[:, None])
    dq, dk, dv = attention_backward(do, cache)
    k64 = np.repeat(k.astype(np.float64), q.shape[1] // k.shape[1], axis=1)   # (B, H, S, D)
    s = q.astype(np.float64) @ k64.swapaxes(-1, -2) / np.sqrt(q.shape[-1])     # (B, H, T, S)
    s = np.where(mask[:, None], s, -np.inf)
    m = s.max(axis=-1, keepdims=True)
    L = (m + np.log(np.exp(s - m).sum(axis=-1, keepdims=True)))[..., 0]
    return out, L, dq, dk, dv


def relative_error(got, want):
    err = np.max(np.abs(np.asarray(got, np.float64) - want))
    largest = np.max(np.abs(want))
    return err / largest if largest > 0 else err                              # all-zero: one visible key


def check_case(B, H, Hkv, T, S, D, spec, to_device=np.asarray, to_host=np.asarray, **blocks):
    from minigpt.kernels.flash_cuda import flash_backward_cuda, flash_forward_cuda
    q, k, v, do = inputs(B, H, Hkv, T, S, D)
    want = reference(q, k, v, do, dense_mask(spec, B, T, S))
    q, k, v, do = (to_device(x) for x in (q, k, v, do))
    o, L = flash_forward_cuda(q, k, v, spec, **blocks)
    got = (o, L, *flash_backward_cuda(q, k, v, o, L, do, spec, **blocks))
    for name, a, b in zip(["out", "L", "dq", "dk", "dv"], got, want):
        a = to_host(a)
        assert a.dtype == np.float32 and a.shape == b.shape, (name, a.dtype, a.shape)
        assert relative_error(a, b) < 2e-5, (name, relative_error(a, b))


if CHILD:
    # ------------------------------------------------------------ in the child process: the simulator

    def test_the_simulator_is_on():
        from numba import config
        assert config.ENABLE_CUDASIM

    @pytest.mark.parametrize("case", list(SIM_CASES))
    def test_flash_cuda_matches_reference_in_simulator(case):
        B, H, Hkv, T, S, D, spec, block_q, block_k = SIM_CASES[case]
        check_case(B, H, Hkv, T, S, D, spec, block_q=block_q, block_k=block_k)

    def test_flash_cuda_bad_inputs_are_errors():
        from minigpt.kernels.flash_cuda import flash_forward_cuda
        q, k, v, _ = inputs(1, 2, 2, 4, 4, 8)
        with pytest.raises(ValueError, match="must be float32"):
            flash_forward_cuda(q.astype(np.float64), k, v, MaskSpec())
        big = np.zeros((1, 1, 4, 160), np.float32)
        with pytest.raises(ValueError, match="D=160 > 128"):
            flash_forward_cuda(big, big, big, MaskSpec())
        with pytest.raises(ValueError, match="48 KB of shared memory"):
            flash_forward_cuda(q, k, v, MaskSpec(), block_q=1024, block_k=1024)

else:
    # ------------------------------------------------------------ in the parent process

    def test_cuda_kernels_in_the_simulator():
        """Runs this file's simulator tests in a child pytest with NUMBA_ENABLE_CUDASIM=1."""
        env = dict(os.environ, NUMBA_ENABLE_CUDASIM="1", MINIGPT_CUDASIM_CHILD="1")
        proc = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", str(Path(__file__))],
                              cwd=ROOT, env=env, capture_output=True, text=True, timeout=900)
        report = proc.stdout[-6000:] + proc.stderr[-2000:]
        assert proc.returncode == 0, report
        assert f"{len(SIM_CASES) + 2} passed" in proc.stdout, report

    @pytest.mark.parametrize("case", list(GPU_CASES))
    def test_flash_cuda_matches_reference_on_gpu(case):
        from minigpt.backend import cupy_available
        if not cupy_available():
            pytest.skip("no CUDA GPU with CuPy here; the kernels are tested in the simulator instead")
        import cupy
        check_case(*GPU_CASES[case], to_device=cupy.asarray, to_host=cupy.asnumpy)
