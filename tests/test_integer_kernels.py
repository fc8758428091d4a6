"""The interpreter's integer kernels against plain int64 references written out loop by loop."""

import numpy as np
import pytest

from qpass.ir.fixed_point import multiply_by_quantized, quantize_multiplier
from qpass.interpreter import evaluate
from qpass.ir import QuantParams, TensorType


def q_type(array, dtype, scale, zp, axis=None):
    return TensorType(array.shape, dtype, QuantParams(np.asarray(scale, np.float32), np.asarray(zp, np.int32), axis))


def reference_conv(x, w, zx, zw, bias, stride, pad, groups):
    """Direct loops over (x - zx) * (w - zw), padding with the real zero."""
    n, c, h, wd = x.shape
    o, cg, kh, kw = w.shape
    xc = np.pad(x.astype(np.int64) - zx, ((0, 0), (0, 0), (pad, pad), (pad, pad)))
    wc = w.astype(np.int64) - np.asarray(zw).reshape(-1, 1, 1, 1)
    oh, ow = (h + 2 * pad - kh) // stride + 1, (wd + 2 * pad - kw) // stride + 1
    out = np.zeros((n, o, oh, ow), np.int64)
    per_group = o // groups
    for oc in range(o):
        g = oc // per_group
        for i in range(oh):
            for j in range(ow):
                window = xc[0, g * cg:(g + 1) * cg, i * stride:i * stride + kh, j * stride:j * stride + kw]
                out[0, oc, i, j] = np.sum(window * wc[oc]) + bias[oc]
    return out


@pytest.mark.parametrize("groups, channels, out_channels, stride, pad, x_dtype, w_dtype", [
    (1, 3, 5, 1, 1, "i8", "i8"), (2, 4, 6, 2, 0, "u8", "i8"), (6, 6, 6, 1, 1, "i8", "i4"), (1, 3, 4, 2, 1, "u8", "i4"),
])
def test_qconv2d_with_and_without_epilogue(groups, channels, out_channels, stride, pad, x_dtype, w_dtype):
    rng = np.random.default_rng(groups * 7 + channels)
    lo, hi = (-128, 127) if x_dtype == "i8" else (0, 255)
    x = rng.integers(lo, hi + 1, (1, channels, 7, 6)).astype(np.int8 if x_dtype == "i8" else np.uint8)
    x.flat[:4] = [lo, hi, lo, hi]                                       # extremes
    wlo, whi = (-8, 7) if w_dtype == "i4" else (-128, 127)
    w = rng.integers(wlo, whi + 1, (out_channels, channels // groups, 3, 3)).astype(np.int8)
    zx, zw = int(rng.integers(lo, hi)), rng.integers(-2, 3, out_channels)
    bias = rng.integers(-5000, 5000, out_channels).astype(np.int32)
    attrs = {"strides": [stride] * 2, "pads": [pad] * 4, "dilations": [1, 1], "groups": groups}
    types = [q_type(x, x_dtype, 0.1, zx), q_type(w, w_dtype, np.full(out_channels, 0.05), zw, axis=0),
             TensorType(bias.shape, "i32")]
    want = reference_conv(x, w, zx, zw, bias, stride, pad, groups)
    (acc,) = evaluate("qconv2d", [x, w, bias], attrs, input_types=types)
    assert acc.dtype == np.int32 and np.array_equal(acc, want)
    real = rng.uniform(0.001, 0.02, out_channels)
    m, s = quantize_multiplier(real)
    epilogue = {**attrs, "multiplier": m.tolist(), "shift": s.tolist(), "out_dtype": "i8", "clamp": [-100, 120],
                "axis": 1}
    out_type = TensorType(want.shape, "i8", QuantParams(np.float32(0.2), np.int32(-7)))
    (y,) = evaluate("qconv2d", [x, w, bias], epilogue, types=[out_type], input_types=types)
    expected = np.clip(multiply_by_quantized(want, m.reshape(1, -1, 1, 1), s.reshape(1, -1, 1, 1)) - 7, -100, 120)
    assert y.dtype == np.int8 and np.array_equal(y, expected)


def test_qdense_and_requantize():
    rng = np.random.default_rng(1)
    x = rng.integers(-128, 128, (2, 40)).astype(np.int8)
    w = rng.integers(-128, 128, (3, 40)).astype(np.int8)
    types = [q_type(x, "i8", 0.1, 5), q_type(w, "i8", [0.1, 0.2, 0.3], [0, 0, 0], axis=0)]
    (acc,) = evaluate("qdense", [x, w], {}, input_types=types)
    want = np.array([[sum((int(x[i, k]) - 5) * int(w[j, k]) for k in range(40)) for j in range(3)] for i in range(2)])
    assert np.array_equal(acc, want)
    m, s = quantize_multiplier([0.01, 0.02, 0.03])
    attrs = {"multiplier": m.tolist(), "shift": s.tolist(), "out_dtype": "i8", "axis": 1}
    out = TensorType((2, 3), "i8", QuantParams(np.float32(1.0), np.int32(3)))
    (y,) = evaluate("requantize", [acc.astype(np.int32)], attrs, types=[out], input_types=[TensorType((2, 3), "i32")])
    assert np.array_equal(y, np.clip(multiply_by_quantized(want, m, s) + 3, -128, 127))


def test_qadd_single_rounding_and_lut():
    a = np.arange(-128, 128, dtype=np.int8).reshape(16, 16)
    b = a[::-1].copy()
    ta, tb = q_type(a, "i8", 0.1, 3), q_type(b, "i8", 0.05, -2)
    out = TensorType(a.shape, "i8", QuantParams(np.float32(0.2), np.int32(1)))
    attrs = {"multiplier": [1 << 30, 1 << 29], "shift": [31], "out_dtype": "i8"}
    (y,) = evaluate("qadd", [a, b], attrs, types=[out], input_types=[ta, tb])
    total = (a.astype(np.int64) - 3) * (1 << 30) + (b.astype(np.int64) + 2) * (1 << 29)
    assert np.array_equal(y, np.clip(((total + (1 << 30)) >> 31) + 1, -128, 127))
    table = list(range(127, -129, -1))
    (z,) = evaluate("lut", [a], {"table": table, "out_dtype": "i8"}, types=[TensorType(a.shape, "i8")],
                    input_types=[ta])
    assert np.array_equal(z, -1 - a.astype(np.int64))


def test_qreduce_mean():
    x = np.random.default_rng(2).integers(-128, 128, (1, 3, 4, 5)).astype(np.int8)
    m, s = quantize_multiplier([0.5 / 20])
    out = TensorType((1, 3, 1, 1), "i8", QuantParams(np.float32(0.5), np.int32(0)))
    (y,) = evaluate("qreduce_mean", [x], {"axes": [2, 3], "keepdims": True, "multiplier": m.tolist(),
                                          "shift": s.tolist(), "out_dtype": "i8"},
                    types=[out], input_types=[q_type(x, "i8", 1.0, -4)])
    sums = (x.astype(np.int64) + 4).sum(axis=(2, 3), keepdims=True)
    assert np.array_equal(y, np.clip(multiply_by_quantized(sums, m[0], s[0]), -128, 127))
