import ast
from pathlib import Path

import numpy as np
import pytest

from minigpt import backend

LAYERS = Path(__file__).resolve().parents[1] / "minigpt" / "layers"


def test_get_xp_numpy_arrays_give_numpy():
    assert backend.get_xp(np.zeros(3), np.ones(2)) is np


def test_layers_never_import_numpy_cupy_or_scipy():
    # scipy too: its functions take NumPy arrays only (GELU's erf goes through backend.erf)
    offenders = []
    for path in sorted(LAYERS.glob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                modules = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom):
                modules = [node.module or ""]
            else:
                continue
            offenders += [f"{path.name}: {m}" for m in modules if m.split(".")[0] in ("numpy", "cupy", "cupyx", "scipy")]
    assert not offenders, f"layers must use get_xp and backend.erf, not import numpy/cupy/scipy: {offenders}"


def test_resolve_device_unknown_is_error():
    with pytest.raises(ValueError, match="'tpu'"):
        backend.resolve_device("tpu")


def test_resolve_device_from_environment(monkeypatch):
    monkeypatch.setenv("MINIGPT_DEVICE", "cpu")
    assert backend.resolve_device() == "cpu"
    monkeypatch.setenv("MINIGPT_DEVICE", "gpu0")
    with pytest.raises(ValueError, match="gpu0"):
        backend.resolve_device()


@pytest.mark.skipif(backend.cupy_available(), reason="this machine has a GPU")
def test_cuda_without_gpu_is_clear_error():
    with pytest.raises(ValueError, match="CuPy and a working GPU"):
        backend.resolve_device("cuda")


def test_resolve_dtype():
    assert backend.resolve_dtype("float32") is np.float32
    assert backend.resolve_dtype(np.float64) is np.float64
    with pytest.raises(ValueError, match="float16"):
        backend.resolve_dtype("float16")


def test_erf_keeps_dtype_and_matches_known_values():
    x = np.array([0.0, 0.5, -1.0], dtype=np.float32)
    y = backend.erf(x)
    assert y.dtype == np.float32
    np.testing.assert_allclose(y, [0.0, 0.5204998778, -0.8427007929], rtol=1e-6)


def test_to_numpy_and_to_device_round_trip():
    x = np.arange(6, dtype=np.float64).reshape(2, 3)
    y = backend.to_device(x, "cpu", dtype=np.float32)
    assert y.dtype == np.float32
    np.testing.assert_array_equal(backend.to_numpy(y), x)
