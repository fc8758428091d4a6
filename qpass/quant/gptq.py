"""GPTQ's weight rounding for one layer (Frantar et al., "GPTQ: Accurate Post-Training Quantization
for Generative Pre-trained Transformers", 2022), on fixed quantization parameters.

Given a layer's weight W [outputs, inputs] and its inputs' Hessian H = 2 X Xᵀ / rows, the weight is
quantized one input column at a time; each column's rounding error is spread over the columns not
yet quantized through the Cholesky factor of H⁻¹, so the layer's output error on X stays small.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import scipy.linalg


class HessianSum:
    """H = 2 XᵀX / rows and the mean row, one per weight group, accumulated batch by batch (memory:
    inputs², not rows)."""

    def __init__(self):
        self.sum = None
        self.row_sum = None
        self.rows = 0

    def add(self, rows: np.ndarray) -> None:
        """Add input rows [groups, rows, inputs]."""
        x = rows.astype(np.float64)
        product, total = x.transpose(0, 2, 1) @ x, x.sum(axis=1)
        self.sum = product if self.sum is None else self.sum + product
        self.row_sum = total if self.row_sum is None else self.row_sum + total
        self.rows += x.shape[1]

    def hessian(self) -> np.ndarray:
        """[groups, inputs, inputs]."""
        return 2 * self.sum / max(self.rows, 1)

    def mean(self) -> np.ndarray:
        """The mean input row, [groups, inputs]."""
        return self.row_sum / max(self.rows, 1)


@dataclasses.dataclass
class Rounded:
    """One weight group's integer levels and the damping that made H positive definite."""

    levels: np.ndarray
    damp: float


def _upper_inverse_factor(hessian: np.ndarray, damp: float, attempts: int = 4) -> tuple[np.ndarray, float]:
    """Upper Cholesky factor U of (H + damp · mean(diag H) · I)⁻¹ (Uᵀ U = H⁻¹); the damping grows 10x
    per failed attempt (a nearly singular H), at most `attempts` times."""
    size = len(hessian)
    mean_diagonal = float(np.mean(np.diag(hessian)))
    for attempt in range(attempts):
        factor = damp * 10 ** attempt
        damped = hessian + factor * mean_diagonal * np.eye(size)
        try:
            lower = scipy.linalg.cholesky(damped, lower=True)
            inverse = scipy.linalg.cho_solve((lower, True), np.eye(size))
            return scipy.linalg.cholesky(inverse, lower=False), factor
        except np.linalg.LinAlgError:
            continue
    raise np.linalg.LinAlgError(f"the Hessian is not positive definite even with damping {factor:g}")


def gptq_round(weight: np.ndarray, hessian: np.ndarray, scale: np.ndarray, zero_point: np.ndarray,
               bounds: tuple[int, int], damp: float = 0.01, block_size: int = 128,
               act_order: bool = False) -> Rounded:
    """Integer levels for `weight` [outputs, inputs] on the grid `scale`, `zero_point` (both
    [outputs, inputs], so per-tensor, per-channel and per-group parameters all fit), clamped to `bounds`.

    Columns go in order of decreasing H diagonal with `act_order` (the inputs with most energy first,
    while there are many columns left to absorb their error). Updates to columns beyond the current
    block of `block_size` are applied once per block (GPTQ's lazy batch update; same result).
    """
    outputs, inputs = weight.shape
    hessian = np.array(hessian, np.float64)
    dead = np.diag(hessian) == 0                     # an input that is always zero: no error to spread
    hessian[dead, dead] = 1.0
    order = np.argsort(-np.diag(hessian), kind="stable") if act_order else np.arange(inputs)
    w = np.array(weight, np.float64)[:, order]
    s, z = np.asarray(scale, np.float64)[:, order], np.asarray(zero_point, np.float64)[:, order]
    u, used_damp = _upper_inverse_factor(hessian[np.ix_(order, order)], damp)
    low, high = bounds
    levels = np.empty((outputs, inputs), np.int64)
    for start in range(0, inputs, block_size):
        end = min(start + block_size, inputs)
        block = w[:, start:end].copy()
        errors = np.zeros_like(block)
        for i in range(end - start):
            column, j = block[:, i], start + i
            level = np.clip(np.rint(column / s[:, j]) + z[:, j], low, high)
            levels[:, j] = level
            error = (column - (level - z[:, j]) * s[:, j]) / u[j, j]
            block[:, i:] -= np.outer(error, u[j, j:end])
            errors[:, i] = error
        w[:, end:] -= errors @ u[start:end, end:]
    result = np.empty_like(levels)
    result[:, order] = levels
    return Rounded(result, used_damp)


def output_error(weight: np.ndarray, quantized: np.ndarray, hessian: np.ndarray) -> float:
    """Mean squared output error over the rows H came from: tr((W - Q) H (W - Q)ᵀ) / 2 per row."""
    delta = np.asarray(weight, np.float64) - np.asarray(quantized, np.float64)
    return float(np.einsum("ok,kl,ol->", delta, hessian, delta)) / 2
