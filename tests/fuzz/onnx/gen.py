#!/usr/bin/python3
"""Writes the seeds of the kiln import fuzz harness (tests/fuzz/fuzz_onnx.c): small
ONNX models, built with onnx.helper (Debian's python3-onnx), covering the ops
`kiln import` maps and some it refuses. Run from anywhere; writes next to itself.
usage: tests/fuzz/onnx/gen.py
"""
import os

import numpy as np
from onnx import TensorProto, helper, numpy_helper, save

HERE = os.path.dirname(os.path.abspath(__file__))
rng = np.random.default_rng(0)


def w(name, *shape):
    return numpy_helper.from_array(rng.standard_normal(shape).astype(np.float32), name)


def model(name, nodes, inputs, outputs, inits):
    g = helper.make_graph(nodes, name, inputs, outputs, inits)
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 13)])
    save(m, os.path.join(HERE, name + ".onnx"))


def io(name, shape, t=TensorProto.FLOAT):
    return helper.make_tensor_value_info(name, t, shape)


# An MLP: Gemm + Relu + Gemm + Softmax, with a symbolic batch axis.
model("mlp", [
    helper.make_node("Gemm", ["x", "w1", "b1"], ["h"], transB=1),
    helper.make_node("Relu", ["h"], ["r"]),
    helper.make_node("MatMul", ["r", "w2"], ["m"]),
    helper.make_node("Add", ["m", "b2"], ["z"]),
    helper.make_node("Softmax", ["z"], ["y"], axis=-1),
], [io("x", ["batch", 4])], [io("y", ["batch", 3])],
    [w("w1", 8, 4), w("b1", 8), w("w2", 8, 3), w("b2", 3)])

# Embedding, layernorm, tanh and a reshape.
model("embed", [
    helper.make_node("Gather", ["table", "ids"], ["e"]),
    helper.make_node("LayerNormalization", ["e", "g", "b"], ["n"], axis=-1, epsilon=1e-5),
    helper.make_node("Tanh", ["n"], ["t"]),
    helper.make_node("Reshape", ["t", "shape"], ["y"]),
], [io("ids", [2, 3], TensorProto.INT64)], [io("y", [6, 5])],
    [w("table", 10, 5), w("g", 5), w("b", 5),
     numpy_helper.from_array(np.array([6, 5], np.int64), "shape")])

# Elementwise ops, a transpose, sigmoid.
model("elementwise", [
    helper.make_node("Mul", ["x", "s"], ["a"]),
    helper.make_node("Sub", ["a", "x"], ["b"]),
    helper.make_node("Div", ["b", "s"], ["c"]),
    helper.make_node("Sigmoid", ["c"], ["d"]),
    helper.make_node("Transpose", ["d"], ["y"], perm=[1, 0]),
], [io("x", [2, 3])], [io("y", [3, 2])], [w("s", 2, 3)])

# An op kiln import refuses.
model("refused", [helper.make_node("Erf", ["x"], ["y"])], [io("x", [2])], [io("y", [2])], [])
