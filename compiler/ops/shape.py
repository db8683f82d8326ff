"""Operator kinds that reshape: flatten, reshape, narrow, crop, interpolate, pad."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F

from ..ir import Node, Shape
from .base import OpKind, _fail, _need_rank, _pair, numel, register


# --- reshaping ---------------------------------------------------------------------------------
def _infer_flatten(node: Node, shapes: list[Shape]) -> Shape:
    (x,) = shapes
    start = node.attrs.get("start_dim", 1) % len(x)
    end = node.attrs.get("end_dim", -1) % len(x)
    if start == 0:
        raise _fail(node, "flattening the batch dimension is not supported")
    return (*x[:start], numel(x[start : end + 1]), *x[end + 1 :])


register(
    OpKind(
        "flatten", _infer_flatten, function=torch.flatten,
        kwargs=lambda n: {"start_dim": n.attrs.get("start_dim", 1), "end_dim": n.attrs.get("end_dim", -1)},
    )
)


def reshape_keep_batch(x: torch.Tensor, shape: Sequence[int]) -> torch.Tensor:
    """Reshape every sample to ``shape``, keeping the batch dimension as it is."""
    return x.reshape(x.shape[0], *shape)


def _infer_reshape(node: Node, shapes: list[Shape]) -> Shape:
    (x,) = shapes
    shape = list(node.attrs["shape"])
    total = numel(x[1:])
    known = numel([d for d in shape if d != -1])
    if shape.count(-1) > 1 or (shape.count(-1) == 1 and total % known) or (-1 not in shape and known != total):
        raise _fail(node, f"cannot reshape a sample of shape {list(x[1:])} to {shape}")
    return (x[0], *(total // known if d == -1 else d for d in shape))


register(
    OpKind("reshape", _infer_reshape, function=reshape_keep_batch, kwargs=lambda n: {"shape": tuple(n.attrs["shape"])})
)


def _infer_narrow(node: Node, shapes: list[Shape]) -> Shape:
    (x,) = shapes
    a = node.attrs
    dim = a["dim"] % len(x)
    if dim == 0 or a["start"] < 0 or a["length"] <= 0 or a["start"] + a["length"] > x[dim]:
        raise _fail(node, f"slice [{a['start']}, {a['start'] + a['length']}) of axis {dim} is outside shape {list(x)}")
    return (*x[:dim], a["length"], *x[dim + 1 :])


register(
    OpKind(
        "narrow", _infer_narrow, function=torch.narrow,
        kwargs=lambda n: {"dim": n.attrs["dim"], "start": n.attrs["start"], "length": n.attrs["length"]},
    )
)


def crop_like(x: torch.Tensor, ref: torch.Tensor, axis: int, offsets: Sequence[int]) -> torch.Tensor:
    """Caffe ``Crop``: cut ``x`` to ``ref``'s size on every axis from ``axis`` on, at ``offsets``."""
    for i, dim in enumerate(range(axis, x.dim())):
        x = x.narrow(dim, offsets[i], ref.shape[dim])
    return x


def _infer_crop(node: Node, shapes: list[Shape]) -> Shape:
    x, ref = shapes
    axis, offsets = node.attrs["axis"] % len(x), node.attrs["offsets"]
    if axis == 0:
        raise _fail(node, "cropping the batch dimension is not supported")
    out = list(x)
    for i, dim in enumerate(range(axis, len(x))):
        if offsets[i] + ref[dim] > x[dim]:
            raise _fail(node, f"crop of {ref[dim]} at offset {offsets[i]} exceeds axis {dim} of size {x[dim]}")
        out[dim] = ref[dim]
    return tuple(out)


register(
    OpKind(
        "crop", _infer_crop, arity=(2, 2), function=crop_like,
        kwargs=lambda n: {"axis": n.attrs["axis"], "offsets": tuple(n.attrs["offsets"])},
    )
)


def _infer_interpolate(node: Node, shapes: list[Shape]) -> Shape:
    (x,) = shapes
    _need_rank(node, x, 4)
    a = node.attrs
    if a.get("size") is not None:
        return (x[0], x[1], *_pair(a["size"]))
    sf = a["scale_factor"]
    sf = (sf, sf) if isinstance(sf, (int, float)) else tuple(sf)
    return (x[0], x[1], *(int(math.floor(x[i + 2] * sf[i])) for i in range(2)))


def _interp_kwargs(node: Node) -> dict[str, Any]:
    a = node.attrs
    kw: dict[str, Any] = {"mode": a.get("mode", "nearest")}
    if a.get("size") is not None:
        kw["size"] = _pair(a["size"])
    else:
        kw["scale_factor"] = a["scale_factor"]
    if kw["mode"] in ("linear", "bilinear", "bicubic", "trilinear"):
        kw["align_corners"] = a.get("align_corners", False)
    return kw


register(
    OpKind(
        "interpolate", _infer_interpolate, flops=lambda n, s, o: 4 * numel(o), function=F.interpolate,
        kwargs=_interp_kwargs,
    )
)


def _infer_pad(node: Node, shapes: list[Shape]) -> Shape:
    (x,) = shapes
    pads = list(node.attrs["pad"])
    out = list(x)
    for i in range(len(pads) // 2):
        dim = len(x) - 1 - i
        out[dim] += pads[2 * i] + pads[2 * i + 1]
    if min(out) <= 0:
        raise _fail(node, f"padding {pads} leaves an empty output from {list(x)}")
    return tuple(out)


register(
    OpKind(
        "pad", _infer_pad, function=F.pad,
        kwargs=lambda n: {"pad": tuple(n.attrs["pad"]), "mode": n.attrs.get("mode", "constant"),
                          "value": n.attrs.get("value", 0.0)} if n.attrs.get("mode", "constant") == "constant"
        else {"pad": tuple(n.attrs["pad"]), "mode": n.attrs["mode"]},
    )
)

