"""Quantization support shared by the built-in passes: observers, parameter choice, calibration data."""

# Float op kinds that fold-fake-quant turns into integer ops. `quantize` only fake-quantizes values
# that such an op produces or reads: elsewhere a quantize/dequantize pair would only add error.
TABLE_KINDS = frozenset({"relu", "clip", "sigmoid", "tanh", "hard_sigmoid", "hard_swish", "leaky_relu", "gelu",
                         "erf", "exp", "sqrt"})
MOVE_KINDS = frozenset({"reshape", "transpose", "max_pool2d", "slice", "identity"})
INTEGER_KINDS = frozenset({"conv2d", "dense", "add", "mul", "reduce_mean", "concat"}) | TABLE_KINDS | MOVE_KINDS
