"""Small pieces every part of the ONNX frontend shares: the symbolic batch size, attribute and
tensor conversion, element types and node names."""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch


class _Batch:
    """The batch size inside folded shape arithmetic: unknown, but kept where it is."""

    def __repr__(self) -> str:
        return "N"


BATCH = _Batch()

# ONNX element types a computed tensor may have (the IR computes in floating point only)
FLOAT_TYPES = {1: "float32", 10: "float16", 11: "float64", 16: "bfloat16"}
TORCH_DTYPES = {"float32": torch.float32, "float16": torch.float16, "float64": torch.float64,
                "bfloat16": torch.bfloat16}


def attrs(node: Any) -> dict[str, Any]:
    """A node's attributes as Python values (strings decoded)."""
    from onnx import helper

    out: dict[str, Any] = {}
    for a in node.attribute:
        v = helper.get_attribute_value(a)
        if isinstance(v, bytes):
            v = v.decode(errors="replace")
        out[a.name] = v
    return out


def is_sym(v: Any) -> bool:
    """Whether a folded value is symbolic (an object array that may hold :data:`BATCH`)."""
    return isinstance(v, np.ndarray) and v.dtype == object


def settle(v: np.ndarray) -> np.ndarray:
    """A folded shape value: kept symbolic only while it still holds the batch size."""
    if any(e is BATCH for e in v.reshape(-1)):
        return v
    integer = all(isinstance(e, (int, np.integer)) for e in v.flat)
    return np.asarray(v.tolist(), dtype=np.int64 if integer else None)


def to_torch(value: np.ndarray, dtype: str = "float32") -> torch.Tensor:
    """A weight or constant as a torch tensor of ``dtype`` (float32 for weights)."""
    wide = np.float64 if dtype == "float64" else np.float32
    array = np.ascontiguousarray(value).astype(wide, copy=False)  # no second copy of a float32 weight
    if not array.flags.writeable:
        array = array.copy()
    return torch.from_numpy(array).to(TORCH_DTYPES[dtype])


def fmt(dims: Sequence[Any]) -> str:
    return "x".join(str(d) if d else "?" for d in dims)


# op types torch exports from a module (``/relu1/Relu``): the scope alone names them
MODULE_LIKE = {
    "Conv", "ConvTranspose", "BatchNormalization", "Gemm", "Relu", "LeakyRelu", "Clip", "Sigmoid", "Tanh",
    "HardSigmoid", "HardSwish", "Elu", "Gelu", "PRelu", "MaxPool", "AveragePool", "GlobalAveragePool",
    "GlobalMaxPool", "Flatten", "Dropout", "Softmax", "LogSoftmax", "Resize", "Upsample", "LayerNormalization",
    "InstanceNormalization", "GroupNormalization",
}


def clean_name(name: str, op_type: str) -> str:
    """``/layer1/layer1.0/relu/Relu`` -> ``layer1.0.relu``: torch scopes as a module path."""
    parts: list[str] = []
    for p in (p for p in name.strip("/").split("/") if p):
        if parts and p.startswith(parts[-1] + "."):
            parts[-1] = p
        else:
            parts.append(p)
    if len(parts) > 1 and op_type in MODULE_LIKE and re.fullmatch(rf"{op_type}(_\d+)?", parts[-1]):
        parts.pop()
    return ".".join(parts)
