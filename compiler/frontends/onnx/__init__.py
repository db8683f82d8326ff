"""ONNX frontend: an ``onnx.ModelProto`` (a path, bytes or a proto) -> IR :class:`Graph`.

Every ONNX node maps onto registry kinds; initializers become the node's ``tensors`` under the
torch module's state-dict keys (``weight``, ``bias``, ``running_mean`` ...). Values that do not
depend on the input are folded while reading: initializers, ``Constant`` nodes and anything
computed from them only, plus the shape arithmetic exporters emit (``Shape -> Gather ->
Unsqueeze -> Concat -> Reshape`` for ``x.view(x.size(0), -1)``), where the batch size is kept
symbolic and the rest must be static. Whatever has no exact torch equivalent is rejected with a
:class:`CompileError` naming the node, its op type and the model's opset; so is a model that
``onnx.checker`` rejects.

Modules: ``load`` (reading, the checker), ``reader`` (the pass over the graph), ``table`` (the
op table: claimed op types and their versions), the handlers (``nn_ops``, ``tensor_ops``,
``resize``) and ``symbolic`` (shape arithmetic).
"""

from __future__ import annotations

from typing import Any

from . import nn_ops, resize, symbolic, tensor_ops  # noqa: F401 - they register their handlers
from .common import BATCH
from .reader import MIN_OPSET, Reader, from_onnx, max_opset
from .table import HANDLERS, SUPPORTED_OPS, VERSIONS

__all__ = ["BATCH", "HANDLERS", "MIN_OPSET", "Reader", "SUPPORTED_OPS", "VERSIONS", "from_onnx", "max_opset"]


def __getattr__(name: str) -> Any:
    if name == "MAX_OPSET":  # the installed onnx package's newest opset, read when asked for
        return max_opset()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
