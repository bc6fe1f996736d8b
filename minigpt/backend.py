"""The array backend: NumPy on the CPU, CuPy on a GPU.

This is the only module of minigpt that imports numpy (or cupy) to pick a backend.
Every layer asks `xp = get_xp(x)` and then writes `xp.exp(...)`, `xp.zeros(...)`:
the same code runs on whichever device its arrays live on.

The device is chosen once, where arrays are made (`Model(config, device="cuda")`,
or the environment variable MINIGPT_DEVICE); everything downstream follows the arrays.
"""
import functools
import os

import numpy as np

DEVICES = ("cpu", "cuda")
DTYPES = {"float32": np.float32, "float64": np.float64}


@functools.cache
def _cupy():
    """The cupy module when it is installed AND sees a working GPU, else None."""
    try:
        import cupy
        if cupy.cuda.runtime.getDeviceCount() < 1:
            return None
        return cupy
    except Exception:  # not installed, no driver, no device: all mean "no GPU backend"
        return None


def cupy_available():
    """True when CuPy is importable and a GPU answers."""
    return _cupy() is not None


def get_xp(*arrays):
    """The array module (numpy or cupy) that owns these arrays."""
    cupy = _cupy()
    if cupy is None:
        return np
    return cupy.get_array_module(*arrays)


def resolve_device(device=None):
    """'cpu' or 'cuda': the argument, else $MINIGPT_DEVICE, else 'cpu'. Checks that a GPU is there."""
    if device is None:
        device = os.environ.get("MINIGPT_DEVICE", "cpu")
    if device not in DEVICES:
        raise ValueError(f"device={device!r}: expected one of {DEVICES}")
    if device == "cuda" and not cupy_available():
        raise ValueError("device='cuda' needs CuPy and a working GPU; install minigpt[gpu] "
                         "on a machine with an NVIDIA GPU, or use device='cpu'")
    return device


def xp_for(device=None):
    """The array module for a device name: numpy for 'cpu', cupy for 'cuda'."""
    return _cupy() if resolve_device(device) == "cuda" else np


def resolve_dtype(dtype):
    """np.float32 / np.float64 from a name or a dtype; anything else is an error."""
    name = np.dtype(dtype).name if not isinstance(dtype, str) else dtype
    if name not in DTYPES:
        raise ValueError(f"dtype={dtype!r}: expected one of {tuple(DTYPES)}")
    return DTYPES[name]


def to_numpy(x):
    """A NumPy array from a NumPy or CuPy array (copies from the GPU when needed)."""
    cupy = _cupy()
    if cupy is not None and isinstance(x, cupy.ndarray):
        return cupy.asnumpy(x)
    return np.asarray(x)


def to_device(x, device=None, dtype=None):
    """Move (or convert) an array to the device, optionally casting its dtype."""
    if resolve_device(device) == "cpu":
        return np.asarray(to_numpy(x), dtype=dtype)
    return _cupy().asarray(x, dtype=dtype)


def erf(x):
    """The exact error function, elementwise, on the array's own device and dtype."""
    if get_xp(x) is np:
        from scipy.special import erf as _erf
    else:
        from cupyx.scipy.special import erf as _erf
    return _erf(x)


def is_integer_array(x):
    """True when x is an array of an integer dtype (token ids must be)."""
    return np.issubdtype(x.dtype, np.integer)
