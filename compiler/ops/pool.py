"""Operator kinds: max/average pooling, adaptive pooling and mean over axes."""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F

from ..ir import Node, Shape
from .base import OpKind, _fail, _need_rank, _pair, _spatial, numel, register


# --- pooling -----------------------------------------------------------------------------------
def _infer_pool(node: Node, shapes: list[Shape]) -> Shape:
    (x,) = shapes
    _need_rank(node, x, 4)
    a = node.attrs
    k, s, p = _pair(a["kernel_size"]), _pair(a["stride"]), _pair(a["padding"])
    d = _pair(a.get("dilation", 1))
    for i in range(2):
        if p[i] * 2 > k[i]:
            raise _fail(node, f"padding {p[i]} is more than half the kernel {k[i]}", "lower pad")
    ceil = a.get("ceil_mode", False)
    return (x[0], x[1], *(_spatial(node, x[i + 2], k[i], s[i], p[i], d[i], ceil) for i in range(2)))


def _pool_flops(node: Node, shapes: list[Shape], out: Shape) -> int:
    k = _pair(node.attrs["kernel_size"])
    return numel(out) * k[0] * k[1]


def _pool_kwargs(node: Node) -> dict[str, Any]:
    a = node.attrs
    kw = {
        "kernel_size": _pair(a["kernel_size"]), "stride": _pair(a["stride"]), "padding": _pair(a["padding"]),
        "ceil_mode": a.get("ceil_mode", False),
    }
    if node.kind == "max_pool2d":
        kw["dilation"] = _pair(a.get("dilation", 1))
    else:
        kw["count_include_pad"] = a.get("count_include_pad", True)
    return kw


register(OpKind("max_pool2d", _infer_pool, flops=_pool_flops, function=F.max_pool2d, kwargs=_pool_kwargs))
register(OpKind("avg_pool2d", _infer_pool, flops=_pool_flops, function=F.avg_pool2d, kwargs=_pool_kwargs))


def _infer_adaptive(node: Node, shapes: list[Shape]) -> Shape:
    (x,) = shapes
    _need_rank(node, x, 4)
    return (x[0], x[1], *_pair(node.attrs["output_size"]))


for _name, _fn in (("adaptive_avg_pool2d", F.adaptive_avg_pool2d), ("adaptive_max_pool2d", F.adaptive_max_pool2d)):
    register(
        OpKind(
            _name, _infer_adaptive, flops=lambda n, s, o: numel(s[0]), function=_fn,
            kwargs=lambda n: {"output_size": _pair(n.attrs["output_size"])},
        )
    )


def _infer_mean(node: Node, shapes: list[Shape]) -> Shape:
    (x,) = shapes
    dims = sorted(d % len(x) for d in node.attrs["dim"])
    if 0 in dims:
        raise _fail(node, "reducing over the batch dimension is not supported")
    if node.attrs.get("keepdim", False):
        return tuple(1 if i in dims else s for i, s in enumerate(x))
    return tuple(s for i, s in enumerate(x) if i not in dims)


register(
    OpKind(
        "mean", _infer_mean, flops=lambda n, s, o: numel(s[0]), function=torch.mean,
        kwargs=lambda n: {"dim": tuple(n.attrs["dim"]), "keepdim": n.attrs.get("keepdim", False)},
    )
)

