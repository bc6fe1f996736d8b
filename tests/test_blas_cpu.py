"""minigpt.kernels.blas_cpu.gemm, the BLAS product the flash kernels call, against NumPy's matmul: the gemm
of each library it can call (NumPy's own BLAS and SciPy's), and which one the kernels get."""
import itertools

import numpy as np
import pytest

from minigpt.kernels import blas_cpu


@pytest.fixture(params=["numpy", "scipy"])
def gemm(request):
    """blas_cpu's gemm on one library; NumPy's is missing where NumPy's BLAS is not OpenBLAS (MKL, ...)."""
    functions = blas_cpu.blas_functions(request.param)
    if functions is None:
        pytest.skip(f"no gemm of {request.param}'s BLAS here (blas_cpu uses {blas_cpu.LIBRARY}'s)")
    return blas_cpu.make_gemm(*functions)


def test_the_kernels_use_numpys_openblas_where_numpy_ships_it():
    """NumPy's wheels ship OpenBLAS built with 64-bit integers (numpy.show_config: scipy-openblas,
    USE64BITINT); there the kernels must find its gemm, the faster one at their sizes."""
    blas = np.__config__.CONFIG["Build Dependencies"]["blas"]
    if blas["name"] != "scipy-openblas" or "USE64BITINT" not in blas.get("openblas configuration", ""):
        pytest.skip(f"NumPy's BLAS here is {blas['name']}, not the OpenBLAS of NumPy's wheels")
    assert blas_cpu.LIBRARY == "numpy"
    assert blas_cpu.blas_functions("numpy")[2] == np.int64


def test_unknown_library_is_an_error():
    with pytest.raises(ValueError, match="'mkl'"):
        blas_cpu.blas_functions("mkl")


def stored(x, transposed, rng):
    """x kept as gemm reads it: x itself, or its transpose stored row by row (op = .T gives x back),
    and in either case a view into a wider array, so that the rows are further apart than their length."""
    data = np.ascontiguousarray(x.T) if transposed else x
    wide = rng.standard_normal((data.shape[0], data.shape[1] + 3)).astype(x.dtype)
    wide[:, 1:1 + data.shape[1]] = data
    return wide[:, 1:1 + data.shape[1]]                                     # rows 1 + data.shape[1] + 2 apart


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("trans_a, trans_b", list(itertools.product([False, True], repeat=2)))
def test_gemm_is_alpha_op_a_op_b_plus_beta_c(gemm, dtype, trans_a, trans_b):
    """Every transpose combination, strided rows, alpha and beta: equal to NumPy's product up to the
    rounding of a k = 37 term sum (float32 eps 1.2e-7 times k times the sizes of the terms)."""
    rng = np.random.default_rng(0)
    m, k, n = 5, 37, 6
    a, b = rng.standard_normal((m, k)).astype(dtype), rng.standard_normal((k, n)).astype(dtype)
    c = stored(rng.standard_normal((m, n)).astype(dtype), False, rng)
    expected = 0.5 * (a.astype(np.float64) @ b) + 2.0 * c
    gemm(0.5, stored(a, trans_a, rng), trans_a, stored(b, trans_b, rng), trans_b, 2.0, c)
    eps = np.finfo(dtype).eps
    bound = 2 * k * eps * (0.5 * np.abs(a).astype(np.float64) @ np.abs(b) + 2.0 * np.abs(expected))
    assert np.all(np.abs(c - expected) <= bound)


def test_gemm_with_beta_zero_ignores_what_c_held(gemm):
    """beta = 0: c is only written, so even NaNs in it are gone (BLAS does not compute 0 * NaN)."""
    a, b = np.ones((2, 3), np.float32), np.ones((3, 4), np.float32)
    c = np.full((2, 4), np.nan, np.float32)
    gemm(1.0, a, False, b, False, 0.0, c)
    assert np.array_equal(c, np.full((2, 4), 3.0, np.float32))


def test_gemm_bad_operands_are_errors(gemm):
    """Shapes that do not fit, mixed dtypes and rows that are not contiguous: errors, and c untouched."""
    a, b = np.ones((2, 3), np.float32), np.ones((3, 4), np.float32)
    c = np.zeros((2, 4), np.float32)
    with pytest.raises(ValueError, match="does not fit"):
        gemm(1.0, a, True, b, False, 0.0, c)
    with pytest.raises(ValueError, match="one dtype"):
        gemm(1.0, a.astype(np.float64), False, b, False, 0.0, c)
    with pytest.raises(ValueError, match="contiguous"):
        gemm(1.0, np.ones((2, 6), np.float32)[:, ::2], False, b, False, 0.0, c)
    assert not c.any()
