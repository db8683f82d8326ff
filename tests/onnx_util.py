"""Helpers the ONNX tests share: small models from nodes, onnxruntime and IR runs, exports."""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import torch
from onnx import TensorProto, helper, numpy_helper
from torch import nn

from automtl.compiler.codegen import codegen
from automtl.compiler.frontends.onnx import from_onnx
from automtl.compiler.ir import Graph

RNG = np.random.default_rng(0)


def _ir_version(opset: int) -> int:
    """The oldest IR version that carries ``opset`` (the newest known when the table ends before it)."""
    known = [ir for _, ir, op, *_ in helper.VERSION_TABLE if op >= opset]
    return min(known) if known else max(ir for _, ir, *_ in helper.VERSION_TABLE)


def make_model(
    nodes: list,
    inputs: dict[str, Sequence],
    outputs: Sequence[str],
    inits: dict[str, np.ndarray] | None = None,
    opset: int = 17,
    dtype: int = TensorProto.FLOAT,
    out_dtype: int = TensorProto.FLOAT,
) -> onnx.ModelProto:
    """A one-graph ONNX model from nodes, input shapes (None/str for symbolic dims) and initializers.

    Outputs are declared without a shape (the frontend lets ONNX shape inference fill them in).
    """
    graph = helper.make_graph(
        nodes, "test",
        [helper.make_tensor_value_info(n, dtype, list(s)) for n, s in inputs.items()],
        [helper.make_tensor_value_info(o, out_dtype, None) for o in outputs],
        [numpy_helper.from_array(np.asarray(v), n) for n, v in (inits or {}).items()],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    model.ir_version = _ir_version(opset)
    return model


def w(*shape: int) -> np.ndarray:
    return RNG.standard_normal(shape).astype(np.float32)


def run_ort(model: onnx.ModelProto | str | Path, *xs: np.ndarray) -> list[np.ndarray]:
    src = model.SerializeToString() if isinstance(model, onnx.ModelProto) else str(model)
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    session = ort.InferenceSession(src, options, providers=["CPUExecutionProvider"])
    return session.run(None, {i.name: x for i, x in zip(session.get_inputs(), xs, strict=True)})


def run_ir(graph: Graph, *xs: np.ndarray) -> list[np.ndarray]:
    gm = codegen(graph).eval()
    with torch.no_grad():
        out = gm(*(torch.from_numpy(x) for x in xs))
    return [t.numpy() for t in (out if isinstance(out, tuple) else (out,))]


def assert_matches_ort(
    model: onnx.ModelProto, *shapes: Sequence[int], atol: float = 1e-5, dtype: type = np.float32
) -> Graph:
    """from_onnx + codegen computes what onnxruntime computes on the same model (values, shapes, types)."""
    xs = [RNG.standard_normal(s).astype(dtype) for s in shapes]
    graph = from_onnx(model)
    want, got = run_ort(model, *xs), run_ir(graph, *xs)
    assert len(want) == len(got)
    for a, b in zip(want, got, strict=True):
        assert a.shape == b.shape and a.dtype == b.dtype
        np.testing.assert_allclose(b, a, atol=atol, rtol=0)
    return graph


def kinds(graph: Graph) -> list[str]:
    return [n.kind for n in graph if n.kind != "input"]


def calibrate(model: nn.Module, shape: Sequence[int], seed: int = 0) -> nn.Module:
    """Eval-mode model with non-trivial BN: random affine parameters, statistics from random data."""
    torch.manual_seed(seed)
    bns = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    with torch.no_grad():
        for m in bns:
            m.weight.uniform_(0.3, 0.8)
            m.bias.normal_(0.0, 0.1)
            m.momentum = 1.0  # running stats := this batch's
        model.train()(torch.randn(8, *shape))
        for m in bns:
            m.momentum = 0.1
    return model.eval()


def torch_export(model: nn.Module, x: torch.Tensor, path: Path, dynamo: bool = False, **kwargs) -> Path:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if dynamo:
            torch.onnx.export(model, (x,), str(path), dynamo=True, input_names=["x"], verbose=False,
                              dynamic_shapes=({0: torch.export.Dim("N")},), **kwargs)
        else:
            torch.onnx.export(model, (x,), str(path), dynamo=False, input_names=["x"],
                              dynamic_axes={"x": {0: "N"}}, **kwargs)
    return path
