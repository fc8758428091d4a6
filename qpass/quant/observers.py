"""Range observers for calibration: each sees a stream of activation arrays and proposes a range.

Memory stays bounded: observers keep running statistics or a fixed-size histogram, never the
activations. Histograms cover [min, max] seen so far and are re-binned when the range grows.

- `minmax`: the extremes seen.
- `moving-average`: exponential moving average of each batch's min and max.
- `percentile`: the range holding the central `percentile` % of values.
- `mse`: the clipping range minimizing the expected quantization + clipping error.
- `entropy`: TensorRT's KL-divergence calibration (symmetric, on |x|).
"""

from __future__ import annotations

import numpy as np

BINS = 2048


class Observer:
    """Base: `observe(array)` per batch, then `range(bits, symmetric)` -> (lo, hi)."""

    def __init__(self):
        self.lo, self.hi = np.inf, -np.inf
        self.count = 0
        self.non_finite = False

    def observe(self, array: np.ndarray) -> None:
        array = np.asarray(array, np.float32)
        finite = array
        if not np.all(np.isfinite(array)):
            # An inf or NaN (an attention mask's -inf) has no code at any scale: the value stays float.
            self.non_finite = True
            finite = array[np.isfinite(array)]
        if finite.size == 0:
            return
        self.lo, self.hi = min(self.lo, float(finite.min())), max(self.hi, float(finite.max()))
        self.count += finite.size
        self._update(finite)

    def _update(self, array: np.ndarray) -> None:
        pass

    @property
    def seen(self) -> bool:
        """Whether the value has a range to quantize it with (it was observed, always finite)."""
        return self.count > 0 and not self.non_finite

    def range(self, bits: int = 8, symmetric: bool = False) -> tuple[float, float]:
        return self.lo, self.hi


class MinMax(Observer):
    pass


class MovingAverage(Observer):
    def __init__(self, momentum: float = 0.9):
        super().__init__()
        self.momentum = momentum
        self.avg: tuple[float, float] | None = None

    def _update(self, array):
        lo, hi = float(array.min()), float(array.max())
        if self.avg is None:
            self.avg = (lo, hi)
        else:
            m = self.momentum
            self.avg = (m * self.avg[0] + (1 - m) * lo, m * self.avg[1] + (1 - m) * hi)

    def range(self, bits=8, symmetric=False):
        return self.avg if self.avg is not None else (self.lo, self.hi)


def _wide_enough(lo: float, hi: float, bins: int) -> float:
    """An upper edge at least `hi` that gives `bins` bins of representable width over [lo, hi] (a value
    that barely varies, such as a dynamic quantization scale, has hi - lo below float resolution)."""
    return max(hi, lo + max(1e-8, 8 * bins * np.finfo(np.float32).eps * max(abs(lo), abs(hi))))


class Histogram(Observer):
    """A streaming histogram over [lo, hi], re-binned when the range widens."""

    def __init__(self, bins: int = BINS):
        super().__init__()
        self.bins = bins
        self.hist = np.zeros(bins, np.float64)
        self.edges: tuple[float, float] | None = None

    def _update(self, array):
        lo, hi = float(array.min()), float(array.max())
        if self.edges is None:
            self.edges = (lo, _wide_enough(lo, hi, self.bins))
        elif lo < self.edges[0] or hi > self.edges[1]:
            lo = min(lo, self.edges[0])
            self._rebin(lo, _wide_enough(lo, max(hi, self.edges[1]), self.bins))
        counts, _ = np.histogram(array, bins=self.bins, range=self.edges)
        self.hist += counts

    def _rebin(self, lo: float, hi: float) -> None:
        old_lo, old_hi = self.edges
        centers = old_lo + (np.arange(self.bins) + 0.5) * (old_hi - old_lo) / self.bins
        self.hist, _ = np.histogram(centers, bins=self.bins, range=(lo, hi), weights=self.hist)
        self.edges = (lo, hi)

    def centers(self) -> np.ndarray:
        lo, hi = self.edges
        return lo + (np.arange(self.bins) + 0.5) * (hi - lo) / self.bins

    def quantile(self, q: float) -> float:
        cdf = np.cumsum(self.hist)
        index = int(np.searchsorted(cdf, q * cdf[-1]))
        lo, hi = self.edges
        return lo + min(index + 1, self.bins) * (hi - lo) / self.bins if q > 0.5 else lo + index * (hi - lo) / self.bins


class Percentile(Histogram):
    def __init__(self, percentile: float = 99.99):
        super().__init__()
        self.percentile = percentile

    def range(self, bits=8, symmetric=False):
        if self.edges is None:
            return self.lo, self.hi
        tail = (100.0 - self.percentile) / 100.0
        lo = max(self.lo, self.quantile(tail / 2)) if self.lo < 0 else self.lo
        hi = min(self.hi, self.quantile(1 - tail / 2 if self.lo < 0 else 1 - tail))
        return lo, hi


def quantization_error(hist: np.ndarray, centers: np.ndarray, lo: float, hi: float, levels: int) -> float:
    """Expected squared error of quantizing values distributed as `hist` onto `levels` steps in [lo, hi]."""
    step = (hi - lo) / (levels - 1)
    q = np.clip(np.round((centers - lo) / step), 0, levels - 1) * step + lo
    return float(np.dot(hist, (centers - q) ** 2))


class MSE(Histogram):
    """Search clipping ranges inside [min, max] for the least expected squared quantization error.

    Thresholds run over a geometric grid (so one far outlier cannot hide the bulk); the two ends
    are refined one at a time after a joint search.
    """

    GRID = np.geomspace(1e-3, 1.0, 160)

    def range(self, bits=8, symmetric=False):
        if self.edges is None:
            return self.lo, self.hi
        centers, levels = self.centers(), 1 << bits

        def error(lo, hi):
            return quantization_error(self.hist, centers, lo, hi, levels) if hi > lo else np.inf

        if symmetric:
            bound = max(abs(self.lo), abs(self.hi))
            best = min(self.GRID, key=lambda f: error(-bound * f, bound * f))
            return -bound * best, bound * best
        lo0, hi0 = min(self.lo, 0.0), max(self.hi, 0.0)
        f = min(self.GRID, key=lambda f: error(lo0 * f, hi0 * f))
        lo, hi = lo0 * f, hi0 * f
        if hi0 > 0:
            hi = hi0 * min(self.GRID, key=lambda g: error(lo, hi0 * g))
        if lo0 < 0:
            lo = lo0 * min(self.GRID, key=lambda g: error(lo0 * g, hi))
        return lo, hi


class Entropy(Histogram):
    """TensorRT-style: choose |x| threshold minimizing KL(P || Q) with Q quantized to 2^(bits-1) bins."""

    def range(self, bits=8, symmetric=False):
        if self.edges is None:
            return self.lo, self.hi
        bound = max(abs(self.lo), abs(self.hi))
        magnitude, _ = np.histogram(np.abs(self.centers()), bins=self.bins, range=(0, bound), weights=self.hist)
        # Zeros (half of a ReLU's output) are exact at any scale; as a spike in the first bin they
        # would make the smallest threshold look best, so the first bin is left out.
        magnitude[0] = 0
        threshold = kl_threshold(magnitude, bound, 1 << (bits - 1))
        if self.lo >= 0:                                # one-sided (e.g. after ReLU)
            return self.lo, min(threshold, self.hi)
        return -threshold, threshold


def kl_threshold(hist: np.ndarray, bound: float, levels: int) -> float:
    """The |x| clipping threshold whose `levels`-bin quantized distribution is closest in KL divergence.

    For each candidate threshold (bin i), P is the histogram clipped at i with the outlier mass
    folded into its last bin, and Q is the unclipped slice merged into `levels` bins and spread
    back over its nonzero bins (TensorRT's calibration).
    """
    bins = len(hist)
    if hist.sum() == 0:
        return bound
    hist = hist.astype(np.float64)
    tails = np.cumsum(hist[::-1])[::-1]                 # tails[i] = mass at and beyond bin i
    best_i, best_kl = bins, np.inf
    for i in range(levels, bins + 1, max(1, bins // 512)):
        sliced = hist[:i]
        p = sliced.copy()
        if i < bins:
            p[-1] += tails[i]
        nonzero = sliced > 0
        edges = np.linspace(0, i, levels + 1).astype(np.int64)
        sums = np.add.reduceat(sliced, edges[:-1])
        counts = np.add.reduceat(nonzero.astype(np.float64), edges[:-1])
        q = np.repeat(np.divide(sums, counts, out=np.zeros_like(sums), where=counts > 0), np.diff(edges)) * nonzero
        if q.sum() == 0:
            continue
        p, q = p / p.sum(), q / q.sum()
        mask = p > 0
        kl = float(np.sum(p[mask] * np.log(p[mask] / np.maximum(q[mask], 1e-12))))
        if kl < best_kl:
            best_i, best_kl = i, kl
    return bound * best_i / bins


OBSERVERS = {"minmax": MinMax, "moving-average": MovingAverage, "percentile": Percentile, "mse": MSE,
             "entropy": Entropy}
