"""Matrix products inside Numba kernels, straight from BLAS: C = alpha * op(A) @ op(B) + beta * C.

Why not np.dot. Inside a Numba kernel np.dot(a, b, out) calls BLAS's gemm too, but always with alpha = 1
and beta = 0: it cannot scale a product and it cannot add one into C. The flash kernels need both:
their backward pass adds every tile's dK, dV and dQ contributions into the gradients (dV += p^T dO), and
their scores carry the 1/sqrt(D) scale. With np.dot each product went to a workspace first and a loop
added it in. Here BLAS does the adding, and reads a transposed operand in place (no copy either).

Which BLAS. Two libraries can give a kernel its gemm, both found by their function's address, which ctypes
describes and Numba compiles a direct call to:
    "numpy"   NumPy's own BLAS, where it is the OpenBLAS that NumPy's wheels ship: built with 64-bit
              integers, its functions named scipy_sgemm_64_ (sgemm_64_ in older wheels). Looking the name
              up through NumPy's core extension module finds it in the library that module loaded.
    "scipy"   the BLAS SciPy exports for compiled code (scipy.linalg.cython_blas), 32-bit integers: the
              one Numba's own np.dot calls. Used where NumPy's BLAS is something else (MKL, Accelerate).
NumPy's is preferred. It is the library whose thread count minigpt.threads sets, and it was faster at the
flash kernels' sizes: one core, float32 (NumPy 2.4's OpenBLAS 0.3.31 against SciPy 1.17's 0.3.30, both
for Haswell, on an AMD EPYC), 128x64x32 75 against 68 GFLOP/s, 64x32x128 79 against 51, 32x64x128 75
against 46; the flash forward at B=4, H=8, T=256, D=32 took 4.3 ms instead of 5.1, the backward 7.5
instead of 8.7, with the same results to the last bit.

Row-major and column-major. BLAS is Fortran: it reads matrices column by column. A row-major (r, c)
matrix whose rows are ld numbers apart, read column by column, is its transpose: a column-major (c, r)
matrix with leading dimension ld. So the row-major product C = op(A) op(B) is, to BLAS, the column-major
product C^T = op(B)^T op(A)^T: we pass B before A, and n before m. The transpose flags stay as they are.

The Fortran interface takes every argument by address; the scalars go in small arrays for that.
"""
import ctypes

import numpy as np
from numba import njit

# gemm(transa, transb, m, n, k, alpha, a, lda, b, ldb, beta, c, ldc): thirteen pointers.
_GEMM_TYPE = ctypes.CFUNCTYPE(None, *[ctypes.c_void_p] * 13)
_N, _T = ord("N"), ord("T")                                                 # BLAS's flags: as is, transposed
NUMPY_NAMES = [("scipy_sgemm_64_", "scipy_dgemm_64_"), ("sgemm_64_", "dgemm_64_")]   # 64-bit integers


def blas_functions(library):
    """(sgemm, dgemm, the integer type of their sizes) of library "numpy" or "scipy"; None where
    that library has no gemm this module can call."""
    if library == "numpy":
        try:
            from numpy._core import _multiarray_umath                       # NumPy 2
        except ImportError:
            from numpy.core import _multiarray_umath                        # NumPy 1
        core = ctypes.CDLL(_multiarray_umath.__file__)                      # dlsym also searches what it loaded
        for single, double in NUMPY_NAMES:
            if hasattr(core, single) and hasattr(core, double):
                return (_GEMM_TYPE(ctypes.cast(getattr(core, single), ctypes.c_void_p).value),
                        _GEMM_TYPE(ctypes.cast(getattr(core, double), ctypes.c_void_p).value), np.int64)
        return None
    if library == "scipy":
        from numba.extending import get_cython_function_address
        return (_GEMM_TYPE(get_cython_function_address("scipy.linalg.cython_blas", "sgemm")),
                _GEMM_TYPE(get_cython_function_address("scipy.linalg.cython_blas", "dgemm")), np.int32)
    raise ValueError(f"blas_functions: library={library!r}: expected 'numpy' or 'scipy'")


def make_gemm(sgemm, dgemm, int_type):
    """A compiled gemm (below) that calls these BLAS functions, their sizes given as int_type."""

    @njit(fastmath=False, cache=False)
    def gemm(alpha, a, trans_a, b, trans_b, beta, c):
        """c = alpha * op(a) @ op(b) + beta * c, in place; op(x) is x.T when trans_x is True, else x.
        a, b, c: 2-D float32 (or all float64) arrays whose rows are contiguous (the last stride one number),
        e.g. slices of C-contiguous arrays. With beta = 0, c is only written (its old values are not read)."""
        m, n = c.shape
        k = a.shape[0] if trans_a else a.shape[1]
        if (a.shape[1] if trans_a else a.shape[0]) != m or (b.shape[1] if trans_b else b.shape[0]) != k \
                or (b.shape[0] if trans_b else b.shape[1]) != n:
            raise ValueError("gemm: op(a) (m, k) @ op(b) (k, n) does not fit c (m, n)")
        if a.itemsize != c.itemsize or b.itemsize != c.itemsize:
            raise ValueError("gemm: a, b and c must have one dtype (all float32 or all float64)")
        if a.strides[1] != a.itemsize or b.strides[1] != b.itemsize or c.strides[1] != c.itemsize:
            raise ValueError("gemm: every operand's rows must be contiguous (last stride = one element)")
        if m == 0 or n == 0:
            return
        flags = np.array([_T if trans_b else _N, _T if trans_a else _N], dtype=np.int8)   # b's flag first
        sizes = np.array([n, m, k,                                          # column-major C^T (n, m)
                          _leading_dim(b), _leading_dim(a), _leading_dim(c)], dtype=int_type)
        scalars = np.array([alpha, beta], dtype=c.dtype)
        blas = sgemm if c.itemsize == 4 else dgemm
        blas(flags[0:].ctypes, flags[1:].ctypes, sizes[0:].ctypes, sizes[1:].ctypes, sizes[2:].ctypes,
             scalars[0:].ctypes, b.ctypes, sizes[3:].ctypes, a.ctypes, sizes[4:].ctypes,
             scalars[1:].ctypes, c.ctypes, sizes[5:].ctypes)

    return gemm


@njit(fastmath=False, cache=False)
def _leading_dim(x):
    """Numbers from one row of x to the next (BLAS's lda): at least the row length, as BLAS requires
    even when there is only one row."""
    return max(x.strides[0] // x.itemsize, x.shape[1], 1)


_NUMPY_FUNCTIONS = blas_functions("numpy")
LIBRARY = "numpy" if _NUMPY_FUNCTIONS is not None else "scipy"            # the one the kernels use
gemm = make_gemm(*(_NUMPY_FUNCTIONS or blas_functions("scipy")))
