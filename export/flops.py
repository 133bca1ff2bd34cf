"""Inference cost of a model, counted two independent ways so they can check each other.

`torch_flops` runs the module under torch's FlopCounterMode; `onnx_flops` reads the exported
graph (Conv and Gemm/MatMul nodes with their inferred shapes). Both count a multiply-add as 2
FLOPs and ignore element-wise ops, pooling and bias adds, so for the same network they agree
exactly, and the export can show that the student costs what a plain R3D-18 costs.
"""

from __future__ import annotations

import math
from collections import Counter

import onnx
import torch
from onnx import numpy_helper, shape_inference
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

# ops with multiply-adds that this counter does not handle (an R3D-18 has none of them)
UNCOUNTED_MAC_OPS = ("ConvTranspose", "ConvInteger", "MatMulInteger", "QLinearConv", "QLinearMatMul", "Einsum")


@torch.no_grad()
def torch_flops(module: nn.Module, input_shape: tuple[int, ...]) -> int:
    """FLOPs (2 x multiply-adds) of one forward of `module` on a zero tensor of `input_shape`."""
    was_training = module.training
    module.eval()
    with FlopCounterMode(display=False) as counter:
        module(torch.zeros(input_shape))
    module.train(was_training)
    return int(counter.get_total_flops())


def _with_batch(model: onnx.ModelProto, batch: int) -> onnx.ModelProto:
    """A copy whose first input has a fixed leading dimension, so every shape can be inferred."""
    fixed = onnx.ModelProto()
    fixed.CopyFrom(model)
    dim = fixed.graph.input[0].type.tensor_type.shape.dim[0]
    dim.Clear()
    dim.dim_value = batch
    return shape_inference.infer_shapes(fixed, strict_mode=True)


def _dims(value_info) -> list[int]:
    return [d.dim_value for d in value_info.type.tensor_type.shape.dim]


def onnx_flops(model: onnx.ModelProto, *, views: int = 1) -> int:
    """FLOPs (2 x multiply-adds) of the graph's Conv, Gemm and MatMul nodes for `views` inputs."""
    inferred = _with_batch(model, views)
    g = inferred.graph
    shapes = {vi.name: _dims(vi) for vi in (*g.input, *g.value_info, *g.output)}
    shapes.update({init.name: list(init.dims) for init in g.initializer})
    total = 0
    for node in g.node:
        if node.op_type == "Conv":
            weight = shapes[node.input[1]]  # (C_out, C_in / groups, k...)
            total += 2 * math.prod(shapes[node.output[0]]) * math.prod(weight[1:])
        elif node.op_type == "Gemm":
            attrs = {a.name: a.i for a in node.attribute}
            a, b = shapes[node.input[0]], shapes[node.input[1]]
            m, k = (a[1], a[0]) if attrs.get("transA", 0) else (a[0], a[1])
            n = b[0] if attrs.get("transB", 0) else b[1]
            total += 2 * m * k * n
        elif node.op_type == "MatMul":
            a, out = shapes[node.input[0]], shapes[node.output[0]]
            total += 2 * math.prod(out) * a[-1]
        elif node.op_type in UNCOUNTED_MAC_OPS:
            raise ValueError(f"onnx_flops does not count {node.op_type} nodes")
    return total


def onnx_parameters(model: onnx.ModelProto) -> int:
    """Numbers stored in the graph's initializers (BatchNorm is folded into the convs here)."""
    return sum(numpy_helper.to_array(init).size for init in model.graph.initializer)


def graph_signature(model: onnx.ModelProto) -> dict:
    """What a graph computes, without names: inputs, outputs, op counts and weight shapes.
    Two exports of the same architecture have equal signatures."""
    g = model.graph
    return {
        "inputs": [(vi.name, [d.dim_param or d.dim_value for d in vi.type.tensor_type.shape.dim]) for vi in g.input],
        "outputs": [(vi.name, [d.dim_param or d.dim_value for d in vi.type.tensor_type.shape.dim]) for vi in g.output],
        "ops": dict(sorted(Counter(n.op_type for n in g.node).items())),
        "weights": sorted(tuple(init.dims) for init in g.initializer),
    }
