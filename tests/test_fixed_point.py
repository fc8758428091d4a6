"""The fixed-point rescaling rule against an exact rational reference."""

from fractions import Fraction

import numpy as np
from hypothesis import given, settings, strategies as st

from qpass.ir.fixed_point import multiply_by_quantized, quantize_multiplier, requantize

multipliers = st.floats(min_value=1e-9, max_value=1e4, allow_nan=False, allow_infinity=False)
int32 = st.integers(-(2**31), 2**31 - 1)


@settings(max_examples=400, deadline=None)
@given(multipliers, st.lists(int32, min_size=1, max_size=16))
def test_rescale_is_exact_rounding_of_the_stored_multiplier(real, xs):
    m, s = quantize_multiplier(real)
    assert 2**29 <= int(m) < 2**31 or int(s) == 62
    got = multiply_by_quantized(np.array(xs), m, s)
    for x, y in zip(xs, got):
        exact = Fraction(x) * int(m) / 2 ** int(s)
        # round half toward +infinity: floor(exact + 1/2)
        assert y == (exact + Fraction(1, 2)).__floor__()


@settings(max_examples=300, deadline=None)
@given(multipliers)
def test_stored_multiplier_is_close_to_the_real_one(real):
    m, s = quantize_multiplier(real)
    approx = Fraction(int(m), 2 ** int(s))
    tolerance = Fraction(1, 2**30) if int(s) < 62 else Fraction(1, 2**20)
    assert abs(approx - Fraction(real)) <= Fraction(real) * tolerance + Fraction(1, 2**62)


@settings(max_examples=200, deadline=None)
@given(multipliers, st.lists(int32, min_size=1, max_size=8), st.integers(-128, 127))
def test_requantize_clamps_after_adding_the_zero_point(real, xs, zp):
    m, s = quantize_multiplier(real)
    got = requantize(np.array(xs), m, s, zp, -128, 127)
    want = np.clip(multiply_by_quantized(np.array(xs), m, s) + zp, -128, 127)
    assert np.array_equal(got, want) and got.min() >= -128 and got.max() <= 127


def test_ties_round_up():
    m, s = quantize_multiplier(0.5)
    assert list(multiply_by_quantized(np.array([-3, -1, 1, 3]), m, s)) == [-1, 0, 1, 2]


def test_per_channel_arrays_keep_their_shape():
    m, s = quantize_multiplier(np.array([[0.25, 3.0]]))
    assert m.shape == s.shape == (1, 2)
