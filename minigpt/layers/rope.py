"""Rotary position embedding (RoPE): encode a token's position by rotating its query and key.

Dimensions: B batch, H heads, T time, D head dim, R rotary dim (the first R of D are rotated), P = R // 2 pairs.

RoPE splits the first R channels of every head into P pairs (a, b) and turns pair i of the token at
position m by the angle m * inv_freq[i], with inv_freq[i] = theta^(-2i/R):

    a' = a cos - b sin
    b' = b cos + a sin

A rotation keeps lengths, and the dot product of a query rotated by angle m*f and a key rotated by n*f
only sees the difference (m - n)*f: attention scores depend on relative positions only.

Which channels form a pair is a convention, and checkpoints disagree:
    "half"        pair i = (i, i + R/2): HF LLaMA's rotate_half (GPT-NeoX style)
    "interleaved" pair i = (2i, 2i + 1): Meta's original LLaMA, ChatGLM2, GLM-4
Partial rotary (ChatGLM2, GLM-4 rotate R = D/2) rotates only the first R channels and passes the rest through.
ChatGLM-6B's 2D RoPE (rope2d_forward) rotates the first half of D by the token position and the second
half by the block position (GLM's two position ids), rotate-half pairing inside each half.

The backward of a rotation is the inverse rotation (angle -m*f): the same code with sin negated.
"""
import numbers
from typing import Any, NamedTuple

from minigpt.backend import get_xp, is_integer_array, resolve_dtype

PAIRINGS = ("half", "interleaved")


def rope_cos_sin(position_ids, rotary_dim, theta=10000.0, dtype="float32"):
    """cos and sin of every rotation angle, for explicit positions.
    position_ids int (T,) or (B, T), rotary_dim R (even)  ->  cos, sin (T, P) or (B, 1, T, P)
    Both shapes broadcast against x (B, H, T, D). Angles are computed in float64, then cast to dtype.
    """
    _check_cos_sin_args(position_ids, rotary_dim, theta)
    dtype = resolve_dtype(dtype)
    xp = get_xp(position_ids)
    exponent = xp.arange(0, rotary_dim, 2, dtype=xp.float64) / rotary_dim   # (P,)  2i / R
    inv_freq = 1.0 / xp.power(float(theta), exponent)                       # (P,)  theta^(-2i/R)
    angles = position_ids[..., None].astype(xp.float64) * inv_freq          # (T, P) or (B, T, P)
    if angles.ndim == 3:
        angles = angles[:, None]                                            # (B, 1, T, P): one per head
    return xp.cos(angles).astype(dtype), xp.sin(angles).astype(dtype)


def _rotate(x, cos, sin, rotary_dim, pairing):
    """Turn each pair (a, b) of x[..., :R] by its angle; channels R.. pass through unchanged."""
    if pairing == "half":
        first, second = slice(0, rotary_dim // 2), slice(rotary_dim // 2, rotary_dim)  # (i, i + P)
    else:
        first, second = slice(0, rotary_dim, 2), slice(1, rotary_dim, 2)               # (2i, 2i + 1)
    a, b = x[..., first], x[..., second]                                    # (B, H, T, P) each
    out = x.copy()                                                          # (B, H, T, D)
    out[..., first] = a * cos - b * sin
    out[..., second] = b * cos + a * sin
    return out


class RopeCache(NamedTuple):
    """What rope_backward needs: the angles (as cos and sin, in x's dtype) and which channels pair up."""
    cos: Any                                                                # (T, P) or (B|1, 1, T, P)
    sin: Any                                                                # same shape as cos
    rotary_dim: int                                                         # R = 2P
    pairing: str                                                            # "half" or "interleaved"


def rope_forward(x, cos, sin, rotary_dim=None, pairing="half"):
    """Rotate the first rotary_dim channels of every head by the angles in cos/sin.
    x (B, H, T, D), cos/sin (T, P), (B, T, P) or (B, 1, T, P) from rope_cos_sin
    rotary_dim R = 2P (default: inferred from cos)  ->  out (B, H, T, D), cache for rope_backward
    cos/sin are cast to x's dtype (as HF does), so float32 x stays float32.
    """
    rotary_dim = 2 * cos.shape[-1] if rotary_dim is None else rotary_dim
    _check_rope_args(x, cos, sin, rotary_dim, pairing)
    if x.ndim == 4 and cos.ndim == 3:
        cos, sin = cos[:, None], sin[:, None]                               # (B, 1, T, P)
    cos, sin = cos.astype(x.dtype, copy=False), sin.astype(x.dtype, copy=False)
    out = _rotate(x, cos, sin, rotary_dim, pairing)                         # (B, H, T, D)
    return out, RopeCache(cos, sin, rotary_dim, pairing)


def rope_backward(dout, cache):
    """dout (B, H, T, D) -> dx (B, H, T, D).
    out = R(angle) x with R orthogonal, so dx = R^T dout = R(-angle) dout: rotate back (sin -> -sin).
    """
    return _rotate(dout, cache.cos, -cache.sin, cache.rotary_dim, cache.pairing)


class Rope2DCache(NamedTuple):
    """What rope2d_backward needs: the RoPE cache of each half, and where the halves meet."""
    pos_cache: RopeCache                                                    # channels :D/2, by position_ids
    block_cache: RopeCache                                                  # channels D/2:, by block_position_ids
    half: int                                                               # D/2


def rope2d_forward(x, position_ids, block_position_ids, theta=10000.0):
    """ChatGLM-6B's 2D RoPE: the first half of each head by position_ids, the second half by
    block_position_ids, each half rotated in full (R = D/2) with rotate-half pairing.
    x (B, H, T, D) with D divisible by 4, position_ids / block_position_ids int (T,) or (B, T)
    ->  out (B, H, T, D), cache for rope2d_backward
    """
    xp = get_xp(x)
    position_ids, block_position_ids = xp.asarray(position_ids), xp.asarray(block_position_ids)   # on x's device
    _check_rope2d_args(x, position_ids, block_position_ids)
    half = x.shape[-1] // 2
    cos1, sin1 = rope_cos_sin(position_ids, half, theta, x.dtype)           # (T, D/4) or (B, 1, T, D/4)
    cos2, sin2 = rope_cos_sin(block_position_ids, half, theta, x.dtype)     # same shape
    out1, cache1 = rope_forward(x[..., :half], cos1, sin1, half, "half")    # (B, H, T, D/2)
    out2, cache2 = rope_forward(x[..., half:], cos2, sin2, half, "half")    # (B, H, T, D/2)
    out = xp.concatenate([out1, out2], axis=-1)                             # (B, H, T, D)
    return out, Rope2DCache(cache1, cache2, half)


def rope2d_backward(dout, cache):
    """dout (B, H, T, D) -> dx (B, H, T, D): each half rotated back by its own angles."""
    xp = get_xp(dout)
    half = cache.half
    dx1 = rope_backward(dout[..., :half], cache.pos_cache)                  # undoes out1
    dx2 = rope_backward(dout[..., half:], cache.block_cache)                # undoes out2
    return xp.concatenate([dx1, dx2], axis=-1)                              # (B, H, T, D)


# ---------------------------------------------------------------- input checks

def _check_rotary_dim(rotary_dim):
    """Python and NumPy integers pass (numbers.Integral); bools and floats do not."""
    if (isinstance(rotary_dim, bool) or not isinstance(rotary_dim, numbers.Integral)
            or rotary_dim < 2 or rotary_dim % 2):
        raise ValueError(f"rotary_dim={rotary_dim!r}: expected an even integer >= 2 (channels rotate in pairs)")


def _check_cos_sin_args(position_ids, rotary_dim, theta):
    _check_rotary_dim(rotary_dim)
    if not is_integer_array(position_ids) or position_ids.ndim not in (1, 2):
        raise ValueError(f"position_ids: expected an integer array of shape (T,) or (B, T), "
                         f"got dtype {position_ids.dtype} shape {position_ids.shape}")
    if not theta > 0:
        raise ValueError(f"theta={theta!r}: expected a positive base")


def _check_rope_args(x, cos, sin, rotary_dim, pairing):
    """cos/sin must fit x: one angle per pair of the R rotated channels, one row per position (and sample)."""
    if pairing not in PAIRINGS:
        raise ValueError(f"pairing={pairing!r}: expected one of {PAIRINGS}")
    if cos.shape != sin.shape:
        raise ValueError(f"cos {cos.shape} and sin {sin.shape} must have the same shape")
    _check_rotary_dim(rotary_dim)
    D = x.shape[-1]
    if rotary_dim > D:
        raise ValueError(f"rotary_dim={rotary_dim} is larger than the head dim D={D}")
    if cos.shape[-1] != rotary_dim // 2:
        raise ValueError(f"cos/sin have {cos.shape[-1]} angles per position, "
                         f"rotary_dim={rotary_dim} needs {rotary_dim // 2}")
    if cos.shape[-2] != x.shape[-2]:
        raise ValueError(f"cos/sin cover {cos.shape[-2]} positions, x has T={x.shape[-2]}")
    per_sample = cos.ndim == 4 or (cos.ndim == 3 and x.ndim == 4)           # (B, 1, T, P) or (B, T, P)
    if per_sample and cos.shape[0] not in (1, x.shape[0]):
        raise ValueError(f"cos/sin {cos.shape} are for a batch of {cos.shape[0]}, x {x.shape} has B={x.shape[0]}")


def _check_rope2d_args(x, position_ids, block_position_ids):
    D = x.shape[-1]
    if D % 4:
        raise ValueError(f"2D RoPE needs the head dim D divisible by 4 (two halves, each rotated "
                         f"in pairs), got D={D}")
    if position_ids.shape != block_position_ids.shape:
        raise ValueError(f"position_ids {position_ids.shape} and block_position_ids "
                         f"{block_position_ids.shape} must have the same shape")
