"""Fixed-point arithmetic shared by the interpreter and every backend: the one place that defines
how qpass rescales integers. See docs/integer_semantics.md.

A real multiplier M > 0 (e.g. s_in * s_w / s_out) is stored as an int32 `multiplier` m in
[2^30, 2^31) and a right `shift` s with M ~= m * 2^-s. Applying it to an integer x:

    requantize(x) = (x * m + 2^(s-1)) >> s          (int64 product, arithmetic shift)

i.e. x * M rounded to nearest with ties toward +infinity. The product of an int32 and m fits
in int64 (|x * m| < 2^62), so the rule is exact and the same on every target.
"""

from __future__ import annotations

import numpy as np

from qpass.errors import QpassError

MAX_SHIFT = 62


def quantize_multiplier(real) -> tuple[np.ndarray, np.ndarray]:
    """(multiplier int32, shift int32) arrays approximating each positive real multiplier.

    The relative error is below 2^-31 unless the multiplier is tiny (shift capped at 62) or
    larger than 2^31.
    """
    real = np.asarray(real, dtype=np.float64)
    shape, real = real.shape, real.reshape(-1)
    if not np.all(np.isfinite(real)) or np.any(real <= 0):
        raise QpassError(f"requantization multipliers must be finite and positive, got {real.ravel()[:4]}...")
    fraction, exponent = np.frexp(real)                 # real = fraction * 2^exponent, fraction in [0.5, 1)
    multiplier = np.round(fraction * (1 << 31)).astype(np.int64)
    carry = multiplier == (1 << 31)
    multiplier[carry] //= 2
    exponent = exponent + carry
    shift = 31 - exponent.astype(np.int64)
    if np.any(shift < 1):
        raise QpassError(f"a requantization multiplier of {real.max():.3g} is too large (>= 2^30); the scales "
                         "are inconsistent")
    too_far = shift > MAX_SHIFT
    if np.any(too_far):                                 # tiny multipliers: give up low bits of m instead
        drop = shift[too_far] - MAX_SHIFT
        multiplier[too_far] = (multiplier[too_far] + (1 << (drop - 1))) >> drop
        shift[too_far] = MAX_SHIFT
    return multiplier.astype(np.int32).reshape(shape), shift.astype(np.int32).reshape(shape)


def multiply_by_quantized(x: np.ndarray, multiplier, shift) -> np.ndarray:
    """x * m * 2^-s rounded to nearest, ties up; exact integer arithmetic (int64 result)."""
    x = np.asarray(x).astype(np.int64)
    m = np.asarray(multiplier, dtype=np.int64)
    s = np.asarray(shift, dtype=np.int64)
    return (x * m + (np.int64(1) << (s - 1))) >> s


def requantize(acc: np.ndarray, multiplier, shift, zero_point, lo: int, hi: int) -> np.ndarray:
    """clamp(multiply_by_quantized(acc) + zero_point, lo, hi) as int64."""
    return np.clip(multiply_by_quantized(acc, multiplier, shift) + np.asarray(zero_point, np.int64), lo, hi)


def round_half_even_divide(x, scale) -> np.ndarray:
    """x / scale rounded half to even, in float32 like ONNX QuantizeLinear."""
    return np.rint(np.asarray(x, np.float32) / np.asarray(scale, np.float32))
