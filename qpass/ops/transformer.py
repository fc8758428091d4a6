"""Ops transformers need beyond the CNN set: the integer activation x activation matmul.

    qmatmul(a, b)   (a - za) @ (b - zb) with numpy matmul semantics over two run-time 8-bit
                    operands quantized per tensor (attention's Q @ K^T and P @ V), exact int32
                    accumulation. Without `multiplier` the result is the i32 accumulator; with it
                    (fuse-requant puts it there) the epilogue requantizes like qdense's:
                    clamp(rescale(acc) + z_out, clamp), per tensor.

The weighted products (x @ W with a constant W) are qdense; fold-fake-quant writes qmatmul for
matmuls whose operands are both dequantized activations. Integer semantics: docs/integer_semantics.md.
"""

from __future__ import annotations

from qpass.errors import IRError
from qpass.ir import fixed_point
from qpass.ir.fixed_point import TIR
from qpass.ir.opdef import OpDef, Trait, define_op
from qpass.ir.types import TensorType, dtype_range
from qpass.ops.integer import EPILOGUE, INTEGER, centered, epilogue, exact_matmul, result_bounds
from qpass.ops.nn import matmul_types

_INT32_MAX = 2**31 - 1


def _operand(t: TensorType) -> int:
    """The largest |q - z| of an 8-bit per-tensor quantized operand (refusing any other)."""
    if t.dtype not in ("i8", "u8", "i4", "u4") or t.quant is None:
        raise IRError(f"qmatmul takes 8-bit (or narrower) quantized operands, got {t}")
    if t.quant.axis is not None or t.quant.group_size is not None:
        raise IRError(f"qmatmul takes per-tensor quantized operands (one zero point each), got {t}")
    lo, hi = dtype_range(t.dtype, t.quant.bits)
    zp = int(t.quant.zero_point)
    return max(hi - zp, zp - lo)


def _qmatmul_types(types, attrs):
    a, b = types
    if a.rank < 2 or b.rank < 2:
        raise IRError(f"qmatmul takes operands of rank >= 2, got ranks {a.rank} and {b.rank}")
    depth = a.shape[-1]
    bound = _operand(a) * _operand(b) * depth
    if bound > _INT32_MAX:
        raise IRError(f"qmatmul: a reduction of {depth} products up to {_operand(a) * _operand(b)} could "
                      "overflow its int32 accumulator; keep the matmul float")
    shape = matmul_types([a.without_quant(), TensorType(b.shape, a.dtype)], {})[0].shape
    if "multiplier" in attrs:
        if "shift" not in attrs or "out_dtype" not in attrs:
            raise IRError("qmatmul: a requantizing epilogue needs multiplier, shift and out_dtype")
        if len(attrs["multiplier"]) != 1 or len(attrs["shift"]) != 1:
            raise IRError("qmatmul: its epilogue rescales per tensor (one multiplier and one shift)")
        return [TensorType(shape, attrs["out_dtype"])]
    return [TensorType(shape, "i32")]


def _qmatmul(op, a, b):
    """Exact (a - za) @ (b - zb) in int64, then the epilogue if the op has one."""
    acc = exact_matmul(centered(op.inputs[0], a), centered(op.inputs[1], b))
    return epilogue(op, acc, axis=-1)


def _batch_index(shape, out_rank, idx, row, col):
    """The index into an operand of `shape` for output batch index `idx[:-2]` (broadcast dims read 0)."""
    lead = out_rank - len(shape)
    batch = [0 if shape[k] == 1 else idx[lead + k] for k in range(len(shape) - 2)]
    return (*batch, row, col)


def _lower_qmatmul(low, op):
    """One TIR kernel: int32 products of the zero-point-centred operands summed over k (exact, see
    the bound type inference checks), then the fixed-point epilogue in int64 when there is one.
    b enters transposed (a Relax permute_dims of its last two axes), so both operands are read
    contiguously along k, the innermost loop: read with a stride, P @ V ran several times slower."""
    a, b = op.inputs
    za, zb = low.zero_point(a), low.zero_point(b)
    out = op.output.type
    depth, rank = a.type.shape[-1], out.rank
    requantizes = "multiplier" in op.attrs
    lo, hi = result_bounds(op) if requantizes else (0, 0)
    z_out = low.zero_point(op.output) if requantizes else 0

    def fn(ta, tb):
        from tvm import te
        k = te.reduce_axis((0, depth), name="k")

        def product(*idx):
            x = ta[_batch_index(a.type.shape, rank, idx, idx[-2], k)].astype("int32") - za
            y = tb[_batch_index(b.type.shape, rank, idx, idx[-1], k)].astype("int32") - zb
            return te.sum(x * y, axis=k)
        acc = te.compute(out.shape, product, name="qmatmul_acc")
        if not requantizes:
            return acc
        m, s = op.attrs["multiplier"][0], op.attrs["shift"][0]
        return te.compute(out.shape, lambda *i: fixed_point.requantize(acc(*i), m, s, z_out, lo, hi, arith=TIR)
                          .astype(low.dtype(out.dtype)), name="qmatmul")
    axes = list(range(b.type.rank - 2)) + [b.type.rank - 1, b.type.rank - 2]
    b_transposed = low.emit(low.relax.op.permute_dims(low.get(b), axes))
    low.set(op.output, low.emit_kernel(fn, [low.get(a), b_transposed], op.name, "plain", op=op.kind))


define_op(OpDef("qmatmul", infer=_qmatmul_types, inputs=2, optional_attrs=EPILOGUE,
                traits=INTEGER | {Trait.EPILOGUE}, kernel=_qmatmul, lower=_lower_qmatmul,
                doc="integer a @ b of two per-tensor quantized activations (exact zero points, i32 "
                    "accumulation), optional per-tensor requantizing epilogue"))
