"""The ONNX operator table: which op types the frontend reads, up to which version, and how.

``VERSIONS`` lists every claimed op type with the newest version of it (the ``since_version``
of its schema) its handler was written for. A model may use any opset the installed ``onnx``
knows: an op whose version in that opset is newer than the one listed here is refused by name,
so a future change of an op's meaning is never read with the old one.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import numpy as np

    from .reader import Reader

Handler = Callable[["Reader", Any, dict[str, Any]], None]
Sym = Callable[["Reader", Any, list[Any]], "np.ndarray"]

VERSIONS: dict[str, int] = {
    # convolution, linear, normalisation
    "Conv": 22, "ConvTranspose": 22, "Gemm": 13, "MatMul": 13, "BatchNormalization": 15,
    "LayerNormalization": 17, "InstanceNormalization": 22, "GroupNormalization": 21,
    # activations
    "Relu": 14, "LeakyRelu": 16, "PRelu": 16, "Elu": 22, "Gelu": 20, "Sigmoid": 13, "Tanh": 13,
    "HardSigmoid": 22, "HardSwish": 22, "Clip": 13, "Softmax": 13, "LogSoftmax": 13, "Erf": 13, "Softplus": 22,
    # element-wise
    "Add": 14, "Sub": 14, "Mul": 14, "Div": 14, "Sum": 13, "Max": 13,
    # pooling and resizing
    "MaxPool": 22, "AveragePool": 22, "GlobalAveragePool": 22, "GlobalMaxPool": 22, "ReduceMean": 18,
    "Resize": 19, "Upsample": 10, "Pad": 25,
    # tensor plumbing
    "Concat": 13, "Split": 18, "Slice": 13, "Gather": 13, "Transpose": 25, "Expand": 13, "Flatten": 25,
    "Reshape": 25, "Squeeze": 25, "Unsqueeze": 25, "Identity": 25, "Dropout": 22, "Cast": 28, "CastLike": 25,
    # constants and shapes (folded while reading)
    "Constant": 25, "Shape": 25,
}
SUPPORTED_OPS = frozenset(VERSIONS)

HANDLERS: dict[str, Handler] = {}  # op type -> handler emitting IR nodes for it
SYMBOLIC: dict[str, Sym] = {}  # op type -> fold of shape arithmetic holding the batch size


def handles(*ops: str) -> Callable[[Handler], Handler]:
    """Register a handler for ``ops`` (each must be listed in :data:`VERSIONS`)."""

    def deco(fn: Handler) -> Handler:
        for op in ops:
            if op not in VERSIONS:
                raise ValueError(f"ONNX op {op} has a handler but no entry in VERSIONS")
            HANDLERS[op] = fn
        return fn

    return deco


def folds(*ops: str) -> Callable[[Sym], Sym]:
    """Register the symbolic (batch-size) fold of ``ops``."""

    def deco(fn: Sym) -> Sym:
        for op in ops:
            SYMBOLIC[op] = fn
        return fn

    return deco
