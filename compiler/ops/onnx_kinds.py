"""Operator kinds the ONNX frontend maps onto: instance norm, gather at constant indices, float casts."""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from ..ir import Node, Shape
from .base import OpKind, _fail, _same, _unary, numel, register
from .norm import channelwise_shape

# --- kinds the ONNX frontend maps onto: instance norm, gather at constant indices, float casts ---------
_infer_instance_norm = channelwise_shape((3, 4, 5))


def _build_instance_norm(node: Node, shapes: list[Shape]) -> nn.Module:
    """``InstanceNorm{1,2,3}d`` by rank, with the frontend's scale and bias when it has them."""
    a = node.attrs
    cls = {3: nn.InstanceNorm1d, 4: nn.InstanceNorm2d, 5: nn.InstanceNorm3d}[len(shapes[0])]
    mod = cls(a["num_features"], eps=a.get("eps", 1e-5), affine=a.get("affine", True))
    with torch.no_grad():
        for key, value in node.tensors.items():
            getattr(mod, key).copy_(value.reshape(-1))
    return mod


register(
    OpKind(
        "instance_norm", _infer_instance_norm,
        params=lambda n, s: 2 * n.attrs["num_features"] if n.attrs.get("affine", True) else 0,
        flops=lambda n, s, o: 5 * numel(o), module=_build_instance_norm, weights=("weight", "bias"),
        loads_tensors=True,
    )
)


def take_along(x: torch.Tensor, dim: int, index: Sequence[int], index_shape: Sequence[int]) -> torch.Tensor:
    """``x`` read at constant ``index`` along ``dim`` (ONNX ``Gather``): ``index_shape`` replaces that axis."""
    # shape-free calls only, so torch.fx can re-trace the emitted code (it does when a compiled model is unpickled)
    picked = x.index_select(dim, x.new_tensor(index, dtype=torch.long))
    if not index_shape:
        return picked.squeeze(dim)
    return picked.unflatten(dim, tuple(index_shape)) if len(index_shape) > 1 else picked


def _infer_index_select(node: Node, shapes: list[Shape]) -> Shape:
    (x,) = shapes
    a = node.attrs
    dim = a["dim"]
    if not 0 < dim < len(x) or not a["index"] or any(not 0 <= i < x[dim] for i in a["index"]):
        raise _fail(node, f"indices {list(a['index'])} of axis {dim} are outside shape {list(x)}")
    if numel(tuple(a["index_shape"])) != len(a["index"]):
        raise _fail(node, f"{len(a['index'])} indices do not fill the index shape {list(a['index_shape'])}")
    return (*x[:dim], *a["index_shape"], *x[dim + 1 :])


register(
    OpKind(
        "index_select", _infer_index_select, function=take_along,
        kwargs=lambda n: {k: n.attrs[k] if k == "dim" else tuple(n.attrs[k]) for k in ("dim", "index", "index_shape")},
    )
)


def to_dtype(x: torch.Tensor, dtype: str) -> torch.Tensor:
    """``x`` as floating-point ``dtype`` (``"float32"``, ``"float16"``, ``"float64"``)."""
    return x.to(getattr(torch, dtype))


register(OpKind("cast", _same, flops=lambda n, s, o: numel(o), function=to_dtype,
                kwargs=lambda n: {"dtype": n.attrs["dtype"]}))
_unary("rsqrt", torch.rsqrt)  # 1 / sqrt(x): the inverse standard deviation a LayerNormalization may output
_unary("erf", torch.erf)  # exporters before opset 20 write GELU as x * (1 + erf(x / sqrt 2)) / 2
_unary("softplus", F.softplus)  # log(1 + exp(x)); Mish is x * tanh(softplus(x))
_unary("gelu_tanh", F.gelu, lambda n: {"approximate": "tanh"})
