"""The built-in ops, each defined once (qpass.ir.opdef.OpDef): name, operands, attributes, type
inference, traits, interpreter kernel and lowering to TVM side by side, one module per family:

    elementwise    relu, sigmoid, tanh, erf, sqrt, exp, hard_swish, leaky_relu, hard_sigmoid, gelu,
                   clip, add, sub, mul, div, pow, cast
    nn             conv2d, conv_transpose2d, dense, matmul, batch_norm, layer_norm, softmax,
                   max_pool2d, avg_pool2d, reduce_mean
    movement       identity, reshape, transpose, concat, split, slice, gather, pad, resize
    quantization   quantize, dequantize
    integer        qconv2d, qdense, requantize, qadd, qmul, qreduce_mean, lut
    math           neg, abs, sign, floor, ceil, round, sin, cos, log, reciprocal, softplus, mish,
                   elu, selu, celu, thresholded_relu, prelu, max, min, sum, mean, reduce_*, argmax,
                   argmin, expand, tile
    logic          equal, less, greater, less_equal, greater_equal, logical_not/and/or/xor, where
    common         helpers they share (inference checks, kernel pieces, layout names)

The registry (qpass.ir.opdef.OPS) imports the families on first lookup; nothing needs to import
them by hand. Float semantics follow ONNX; integer semantics are in docs/integer_semantics.md.
"""
