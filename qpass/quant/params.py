"""Choosing quantization parameters from ranges (activations) and from data (weights)."""

from __future__ import annotations

from typing import Optional

import numpy as np

from qpass.ir.types import QuantParams, dtype_range

TINY = np.float32(1e-12)


def activation_params(lo: float, hi: float, dtype: str = "i8", symmetric: bool = False,
                      bits: Optional[int] = None) -> QuantParams:
    """Per-tensor parameters covering [lo, hi] (widened to include 0, so real zero is exact).

    A range of zero width (a constant tensor) gets scale 1: a documented fallback under which
    that constant (then 0) is represented exactly.
    """
    lo, hi = min(float(lo), 0.0), max(float(hi), 0.0)
    qmin, qmax = dtype_range(dtype, bits)
    if symmetric:
        bound = max(-lo, hi)
        scale = np.float32(bound / ((qmax - qmin) / 2)) if bound > 0 else np.float32(1.0)
        zp = 0 if qmin < 0 else (qmin + qmax + 1) // 2
    else:
        scale = np.float32((hi - lo) / (qmax - qmin)) if hi > lo else np.float32(1.0)
        zp = int(np.clip(np.rint(qmin - lo / float(scale)), qmin, qmax))
    return QuantParams(np.maximum(scale, TINY), np.int32(zp), bits=bits)


CLIP_GRID = np.linspace(0.5, 1.0, 51)


def _best_bounds(rows: np.ndarray, qmax: int, clip: str) -> np.ndarray:
    """Per row, the clipping bound: max |w| ("max"), or the one minimizing squared rounding error
    among fractions of it ("mse"; low-bit weights gain most from clipping their rare large values)."""
    bound = np.abs(rows).max(axis=1, initial=0.0)
    if clip == "max":
        return bound
    best, best_err = bound, np.full(len(rows), np.inf)
    for fraction in CLIP_GRID:
        step = np.maximum(bound * fraction / qmax, 1e-30)[:, None]
        err = np.sum((np.clip(np.rint(rows / step), -qmax, qmax) * step - rows) ** 2, axis=1)
        better = err < best_err
        best, best_err = np.where(better, bound * fraction, best), np.where(better, err, best_err)
    return best


def weight_params(w: np.ndarray, dtype: str = "i8", granularity: str = "per-channel", axis: int = 0,
                  group_size: Optional[int] = None, bits: Optional[int] = None, clip: str = "max") -> QuantParams:
    """Symmetric weight parameters (zero point 0) using the narrow range [-qmax, qmax].

    `clip`: "max" maps max |w| to qmax; "mse" picks, per channel (or tensor), the bound with the
    least squared rounding + clipping error.
    """
    _, qmax = dtype_range(dtype, bits)
    w = np.asarray(w, np.float64)
    if granularity == "per-tensor":
        scale = np.float32(_best_bounds(w.reshape(1, -1), qmax, clip)[0] / qmax)
        return QuantParams(np.maximum(scale, TINY), np.int32(0), bits=bits)
    moved = np.moveaxis(w, axis, 0)
    if granularity == "per-channel":
        bound = _best_bounds(moved.reshape(moved.shape[0], -1), qmax, clip)
        scale = np.maximum((bound / qmax).astype(np.float32), TINY)
        return QuantParams(scale, np.zeros_like(scale, np.int32), axis=axis, bits=bits)
    if granularity == "per-group":
        # groups run along `axis` (e.g. the input features of a dense weight)
        size = group_size or 32
        n = moved.shape[0]
        padded = np.pad(moved, [(0, -n % size)] + [(0, 0)] * (moved.ndim - 1))
        blocks = padded.reshape(-1, size, *moved.shape[1:])
        bound = np.abs(blocks).max(axis=1)                        # (groups, *rest)
        scale = np.maximum((bound / qmax).astype(np.float32), TINY)
        scale = np.moveaxis(scale, 0, axis)
        return QuantParams(scale, np.zeros_like(scale, np.int32), axis=axis, group_size=size, bits=bits)
    raise ValueError(f"unknown granularity {granularity!r}; use per-tensor, per-channel or per-group")


def quantize_array(x: np.ndarray, params: QuantParams, dtype: str) -> np.ndarray:
    """ONNX QuantizeLinear of `x` with `params` (float32 division, round half to even, clamp)."""
    scale, zp = params.broadcast(x.shape)
    qmin, qmax = dtype_range(dtype, params.bits)
    q = np.rint(np.asarray(x, np.float32) / scale) + zp
    return np.clip(q, qmin, qmax).astype(np.int64)


def dequantize_array(q: np.ndarray, params: QuantParams) -> np.ndarray:
    scale, zp = params.broadcast(q.shape)
    return ((q.astype(np.int64) - zp).astype(np.float32) * scale).astype(np.float32)
