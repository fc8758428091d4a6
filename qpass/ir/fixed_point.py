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


class NumpyArithmetic:
    """The integer operations the rules below use, on numpy arrays (int64)."""

    @staticmethod
    def int64(x):
        return np.asarray(x).astype(np.int64)

    minimum, maximum = staticmethod(np.minimum), staticmethod(np.maximum)


class TirArithmetic:
    """The same operations on TVM TIR expressions (int64), so compiled kernels apply the very
    rules the interpreter applies."""

    @staticmethod
    def int64(x):
        from tvm import tirx
        return tirx.const(int(x), "int64") if isinstance(x, (int, np.integer)) else x.astype("int64")

    @staticmethod
    def minimum(a, b):
        from tvm import tirx
        return tirx.min(a, b)

    @staticmethod
    def maximum(a, b):
        from tvm import tirx
        return tirx.max(a, b)


NUMPY = NumpyArithmetic()
TIR = TirArithmetic()


def rounding_shift(x, shift, arith=NUMPY):
    """(x + 2^(s-1)) >> s: x * 2^-s rounded to nearest, ties toward +infinity (arithmetic shift)."""
    s = arith.int64(shift)
    return (arith.int64(x) + (arith.int64(1) << (s - arith.int64(1)))) >> s


def multiply_by_quantized(x, multiplier, shift, arith=NUMPY):
    """x * m * 2^-s rounded to nearest, ties up; exact integer arithmetic (int64 result)."""
    return rounding_shift(arith.int64(x) * arith.int64(multiplier), shift, arith)


def clamp(x, lo, hi, arith=NUMPY):
    """x limited to [lo, hi]."""
    return arith.maximum(arith.minimum(x, arith.int64(hi)), arith.int64(lo))


def requantize(acc, multiplier, shift, zero_point, lo: int, hi: int, arith=NUMPY):
    """clamp(multiply_by_quantized(acc) + zero_point, lo, hi) as int64: the one requantize rule."""
    return clamp(multiply_by_quantized(acc, multiplier, shift, arith) + arith.int64(zero_point), lo, hi, arith)
