"""Tensor types of the IR: dtype, static shape and an optional quantization annotation."""

from __future__ import annotations

import dataclasses
import hashlib
from typing import Optional

import numpy as np

from qpass.errors import IRError

# IR dtype name -> (numpy storage dtype, bits, signed, is_float).
# i4/u4 are held unpacked, one value per int8/uint8 element; targets pack them.
_DTYPES = {
    "f32": (np.float32, 32, True, True),
    "f16": (np.float16, 16, True, True),
    "i64": (np.int64, 64, True, False),
    "i32": (np.int32, 32, True, False),
    "i16": (np.int16, 16, True, False),
    "i8": (np.int8, 8, True, False),
    "u8": (np.uint8, 8, False, False),
    "i4": (np.int8, 4, True, False),
    "u4": (np.uint8, 4, False, False),
    "bool": (np.bool_, 1, False, False),        # comparison and logic results (ONNX bool), held as numpy bool_
}
DTYPES = tuple(_DTYPES)
_MAX_DIMENSION = np.iinfo(np.int64).max
_FROM_NUMPY = {np.dtype(np.float32): "f32", np.dtype(np.float16): "f16", np.dtype(np.int64): "i64",
               np.dtype(np.int32): "i32", np.dtype(np.int16): "i16", np.dtype(np.int8): "i8",
               np.dtype(np.uint8): "u8", np.dtype(np.bool_): "bool"}


def check_dtype(name: str) -> str:
    if name not in _DTYPES:
        raise IRError(f"unknown dtype '{name}'; the IR knows {', '.join(DTYPES)}")
    return name


def numpy_dtype(dtype: str) -> np.dtype:
    """The numpy dtype that stores values of IR dtype `dtype`."""
    return np.dtype(_DTYPES[check_dtype(dtype)][0])


def dtype_of_array(array: np.ndarray) -> str:
    """The IR dtype for a numpy array (i4/u4 are never inferred: they must be declared)."""
    try:
        return _FROM_NUMPY[np.dtype(array.dtype)]
    except KeyError:
        raise IRError(f"numpy dtype {array.dtype} has no IR dtype; convert it to one of "
                      f"{', '.join(str(d) for d in _FROM_NUMPY)}") from None


def is_float(dtype: str) -> bool:
    return _DTYPES[check_dtype(dtype)][3]


def dtype_bits(dtype: str) -> int:
    return _DTYPES[check_dtype(dtype)][1]


def dtype_range(dtype: str, bits: Optional[int] = None) -> tuple[int, int]:
    """Smallest and largest integer representable in `dtype` (narrowed to `bits` when given)."""
    _, width, signed, floating = _DTYPES[check_dtype(dtype)]
    if floating:
        raise IRError(f"dtype {dtype} is a float type and has no integer range")
    width = bits or width
    return (-(1 << (width - 1)), (1 << (width - 1)) - 1) if signed else (0, (1 << width) - 1)


def array_digest(array: np.ndarray) -> str:
    """Short, stable content hash of an array (dtype, shape and bytes)."""
    h = hashlib.sha256()
    h.update(f"{array.dtype.str}{array.shape}".encode())
    h.update(np.asarray(array, order="C").tobytes())
    return h.hexdigest()[:16]


def freeze(array) -> np.ndarray:
    """A read-only, contiguous copy-free view: IR arrays are immutable values."""
    array = np.asarray(array, order="C")
    if array.flags.writeable:
        array = array.view()
        array.flags.writeable = False
    return array


class MissingData:
    """Stand-in for array data printed by reference (`blob<digest>`) and not loaded: no .npz given.

    Such a graph prints, compares and verifies structurally; executing it needs the data.
    """

    __slots__ = ("digest",)

    def __init__(self, digest: str):
        self.digest = digest

    def __repr__(self) -> str:
        return f"MissingData({self.digest})"


def digest_of(data) -> str:
    return data.digest if isinstance(data, MissingData) else array_digest(data)


def _arrays_equal(a, b) -> bool:
    if isinstance(a, MissingData) or isinstance(b, MissingData):
        return digest_of(a) == digest_of(b)
    return a.dtype == b.dtype and a.shape == b.shape and a.tobytes() == b.tobytes()


@dataclasses.dataclass(frozen=True, eq=False)
class QuantParams:
    """How integers of a tensor map to reals: real = scale * (q - zero_point).

    Granularity follows ONNX QuantizeLinear: `axis is None` is per tensor (scalar scale);
    `axis` alone is per channel (scale has one entry per index of that axis); `axis` with
    `group_size` is per group (blocked): scale has the tensor's rank, with dimension `axis`
    divided into groups of `group_size`. `bits` may be narrower than the storage dtype.
    """

    scale: np.ndarray
    zero_point: np.ndarray
    axis: Optional[int] = None
    group_size: Optional[int] = None
    bits: Optional[int] = None

    def __post_init__(self):
        if isinstance(self.scale, MissingData) or isinstance(self.zero_point, MissingData):
            return
        object.__setattr__(self, "scale", freeze(np.asarray(self.scale, dtype=np.float32)))
        object.__setattr__(self, "zero_point", freeze(np.asarray(self.zero_point, dtype=np.int32)))
        if self.scale.shape != self.zero_point.shape:
            raise IRError(f"quantization scale shape {self.scale.shape} differs from zero point shape "
                          f"{self.zero_point.shape}; give one zero point per scale")
        if self.group_size is not None and self.axis is None:
            raise IRError("per-group quantization needs an axis along which the groups run")

    @property
    def granularity(self) -> str:
        if self.axis is None:
            return "per-tensor"
        return "per-channel" if self.group_size is None else "per-group"

    def __eq__(self, other) -> bool:
        return (isinstance(other, QuantParams) and self.axis == other.axis
                and self.group_size == other.group_size and self.bits == other.bits
                and _arrays_equal(self.scale, other.scale)
                and _arrays_equal(self.zero_point, other.zero_point))

    def __hash__(self) -> int:
        return hash((self.axis, self.group_size, self.bits, digest_of(self.scale)))

    def broadcast(self, shape: tuple[int, ...]) -> tuple[np.ndarray, np.ndarray]:
        """Scale and zero point broadcastable against a tensor of `shape`."""
        if isinstance(self.scale, MissingData) or isinstance(self.zero_point, MissingData):
            raise IRError("quantization parameters were printed by reference and not loaded; "
                          "load the .qir together with its .npz")
        if self.axis is None:
            return self.scale, self.zero_point
        axis = self.axis % len(shape)
        if self.group_size is None:
            view = [1] * len(shape)
            view[axis] = -1
            return self.scale.reshape(view), self.zero_point.reshape(view)
        reps = self.group_size
        scale = np.repeat(self.scale, reps, axis=axis)
        zp = np.repeat(self.zero_point, reps, axis=axis)
        index = [slice(None)] * len(shape)
        index[axis] = slice(0, shape[axis])
        return scale[tuple(index)], zp[tuple(index)]

    def check(self, shape: tuple[int, ...], dtype: str) -> Optional[str]:
        """A reason this annotation does not fit a tensor of `shape`/`dtype`, or None."""
        if is_float(dtype):
            return f"a quantization annotation needs an integer dtype, not {dtype}"
        if isinstance(self.scale, MissingData) or isinstance(self.zero_point, MissingData):
            return None
        if not np.all(np.isfinite(self.scale)) or np.any(self.scale <= 0):
            return "scales must be finite and positive"
        if self.bits is not None and not 1 < self.bits <= dtype_bits(dtype):
            return f"bits={self.bits} does not fit the storage dtype {dtype}"
        lo, hi = dtype_range(dtype, self.bits)
        if np.any(self.zero_point < lo) or np.any(self.zero_point > hi):
            return f"zero points must lie in [{lo}, {hi}] for {dtype}"
        if self.axis is None:
            return None if self.scale.ndim == 0 else "a per-tensor annotation needs a scalar scale"
        if not -len(shape) <= self.axis < len(shape):
            return f"axis {self.axis} is out of range for rank {len(shape)}"
        axis = self.axis % len(shape)
        if self.group_size is None:
            if self.scale.shape != (shape[axis],):
                return f"per-channel scale needs {shape[axis]} entries (axis {axis}), has {self.scale.shape}"
            return None
        expected = list(shape)
        expected[axis] = -(-shape[axis] // self.group_size)
        if self.scale.shape != tuple(expected):
            return f"per-group scale needs shape {tuple(expected)}, has {self.scale.shape}"
        return None


@dataclasses.dataclass(frozen=True)
class TensorType:
    """Static shape, IR dtype name and optional quantization annotation of a value."""

    shape: tuple[int, ...]
    dtype: str
    quant: Optional[QuantParams] = None

    def __post_init__(self):
        try:
            object.__setattr__(self, "shape", tuple(int(d) for d in self.shape))
        except (TypeError, ValueError, OverflowError):
            raise IRError(f"shape {self.shape!r} is not a tuple of integer dimensions") from None
        check_dtype(self.dtype)
        if any(d < 0 for d in self.shape):
            raise IRError(f"shape {self.shape} has a negative dimension; shapes must be static")
        if any(d > _MAX_DIMENSION for d in self.shape):
            raise IRError(f"shape {self.shape} has a dimension larger than 2**63 - 1")

    @property
    def rank(self) -> int:
        return len(self.shape)

    @property
    def size(self) -> int:
        return int(np.prod(self.shape, dtype=np.int64))

    @property
    def numpy_dtype(self) -> np.dtype:
        return numpy_dtype(self.dtype)

    def with_shape(self, shape) -> "TensorType":
        return dataclasses.replace(self, shape=tuple(shape))

    def with_dtype(self, dtype: str, quant: Optional[QuantParams] = None) -> "TensorType":
        return TensorType(self.shape, dtype, quant)

    def without_quant(self) -> "TensorType":
        return TensorType(self.shape, self.dtype)

    @staticmethod
    def of(array: np.ndarray, dtype: Optional[str] = None) -> "TensorType":
        return TensorType(array.shape, dtype or dtype_of_array(array))

    def __str__(self) -> str:
        return f"{self.dtype}[{','.join(map(str, self.shape))}]"
