"""Fused kernels written with Numba, installed as `minigpt.kernels`: causal attention above all.

    masking.py        MaskSpec (the masks the kernels support, as a few numbers) and dense_mask
    flash_numpy.py    the flash-attention algorithm in plain NumPy: read this first
    flash_cpu.py      the same algorithm fused with Numba @njit(parallel=True): forward and backward
    flash_cuda.py     the same algorithm as Numba @cuda.jit kernels (runs in the CUDA simulator without a GPU)
    elementwise_cpu.py  GELU-tanh and SwiGLU's gate in one pass (a float32 model on a CPU uses them)
    norms_cpu.py      LayerNorm and RMSNorm in one pass per row (likewise)
    rope_cpu.py       RoPE in one pass (likewise)
    adamw_cpu.py      AdamW's update of a float32 param in one pass (minigpt.optim.AdamW uses it)
    blas_cpu.py       gemm for the kernels: C = alpha op(A) op(B) + beta C, straight from BLAS

Every implementation has the same pair of functions (the CUDA ones end in _cuda):

    O, L = flash_forward(q, k, v, spec, scale=None)
    dq, dk, dv = flash_backward(q, k, v, O, L, dO, spec, scale=None)

q (B, H, T, D), k and v (B, Hkv, S, D), spec a MaskSpec; L (B, H, T) is the log-sum-exp of each query
row's scaled, masked scores, all the backward needs besides the inputs and the output.

The same pair shaped like minigpt.layers.attention's (forward returns a cache, backward takes it):

    out, cache = flash_attention_forward(q, k, v, spec, scale=None, impl="flash-cpu")
    dq, dk, dv = flash_attention_backward(dout, cache)

Importing this package compiles nothing and imports neither Numba nor CUDA: each kernel module is
imported when first asked for (`get_kernels`, or an import of the module), and Numba compiles each
kernel on its first call.
"""
import importlib

from minigpt.backend import get_xp
from minigpt.kernels.masking import MaskSpec, dense_mask  # NumPy only

IMPLS = {
    "flash-numpy": ("flash_numpy", "flash_forward", "flash_backward"),
    "flash-cpu": ("flash_cpu", "flash_forward", "flash_backward"),
    "flash-cuda": ("flash_cuda", "flash_forward_cuda", "flash_backward_cuda"),
}

__all__ = ["MaskSpec", "dense_mask", "IMPLS", "get_kernels", "flash_attention_forward", "flash_attention_backward"]


def get_kernels(impl):
    """(forward, backward) of an implementation: "flash-numpy", "flash-cpu" or "flash-cuda"."""
    if impl not in IMPLS:
        raise ValueError(f"flash attention impl={impl!r}: expected one of {sorted(IMPLS)}")
    module, forward, backward = IMPLS[impl]
    module = importlib.import_module(f"minigpt.kernels.{module}")
    return getattr(module, forward), getattr(module, backward)


def flash_attention_forward(q, k, v, spec, scale=None, impl="flash-cpu"):
    """out (B, H, T, D), cache: attention_forward's shape of API over a flash kernel."""
    forward, _ = get_kernels(impl)
    xp = get_xp(q, k, v)
    q, k, v = (xp.ascontiguousarray(x) for x in (q, k, v))      # the layout the kernels read, kept in the cache:
    out, L = forward(q, k, v, spec, scale=scale)                   # the backward then copies none of them again
    return out, (impl, q, k, v, out, L, spec, scale)


def flash_attention_backward(dout, cache):
    """dq (B, H, T, D), dk (B, Hkv, S, D), dv (B, Hkv, S, D) from flash_attention_forward's cache."""
    impl, q, k, v, out, L, spec, scale = cache
    _, backward = get_kernels(impl)
    return backward(q, k, v, out, L, dout, spec, scale=scale)
