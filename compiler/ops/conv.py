"""Operator kinds: the graph's inputs, identity, convolutions and linear layers."""

from __future__ import annotations

import torch
from torch import nn

from ..ir import Node, Shape
from .base import OpKind, _channels, _fail, _need_rank, _pair, _spatial, numel, register


# --- inputs and structural kinds ---------------------------------------------------------------
def _infer_input(node: Node, shapes: list[Shape]) -> Shape:
    shape = tuple(int(d) for d in node.attrs["shape"])
    if any(d <= 0 for d in shape):
        raise _fail(node, f"input shape {list(shape)} has a non-positive dimension")
    return shape


register(OpKind("input", _infer_input, arity=(0, 0)))
def identity(x: torch.Tensor) -> torch.Tensor:
    return x


register(OpKind("identity", lambda n, s: s[0], function=identity))


# --- convolution and linear --------------------------------------------------------------------
def _conv_dims(node: Node) -> tuple[tuple[int, int], ...]:
    a = node.attrs
    return _pair(a["kernel_size"]), _pair(a["stride"]), _pair(a["padding"]), _pair(a["dilation"])


def _infer_conv(node: Node, shapes: list[Shape]) -> Shape:
    (x,) = shapes
    _need_rank(node, x, 4)
    a = node.attrs
    _channels(node, x, a["in_channels"], "in_channels")
    if a["in_channels"] % a["groups"] or a["out_channels"] % a["groups"]:
        raise _fail(node, f"channels {a['in_channels']}->{a['out_channels']} not divisible by groups {a['groups']}")
    k, s, p, d = _conv_dims(node)
    return (x[0], a["out_channels"], *(_spatial(node, x[i + 2], k[i], s[i], p[i], d[i]) for i in range(2)))


def _group_kernel(node: Node, channels: str) -> int:
    """Weights of one kernel over one group of ``channels`` (``in_channels`` of a convolution, the
    ``out_channels`` of a transposed one): the multiply-adds per output (per input) position and channel."""
    a = node.attrs
    k = _pair(a["kernel_size"])
    return (a[channels] // a["groups"]) * k[0] * k[1]


def _bias_params(node: Node) -> int:
    return node.attrs["out_channels"] if node.attrs["bias"] else 0


def _conv_params(node: Node, shapes: list[Shape]) -> int:
    return node.attrs["out_channels"] * _group_kernel(node, "in_channels") + _bias_params(node)


def _conv_flops(node: Node, shapes: list[Shape], out: Shape) -> int:
    return 2 * numel(out) * _group_kernel(node, "in_channels")


def _build_conv(node: Node, shapes: list[Shape]) -> nn.Module:
    a = node.attrs
    k, s, p, d = _conv_dims(node)
    return nn.Conv2d(a["in_channels"], a["out_channels"], k, s, p, d, a["groups"], a["bias"])


register(
    OpKind(
        "conv2d", _infer_conv, params=_conv_params, flops=_conv_flops, module=_build_conv,
        searchable=True, weights=("weight", "bias"), fresh_output=True,
    )
)


def _infer_deconv(node: Node, shapes: list[Shape]) -> Shape:
    (x,) = shapes
    _need_rank(node, x, 4)
    a = node.attrs
    _channels(node, x, a["in_channels"], "in_channels")
    k, s, p, d = _conv_dims(node)
    op = _pair(a.get("output_padding", 0))
    out = tuple((x[i + 2] - 1) * s[i] - 2 * p[i] + d[i] * (k[i] - 1) + op[i] + 1 for i in range(2))
    if min(out) <= 0:
        raise _fail(node, f"output would be empty: spatial size {out}")
    return (x[0], a["out_channels"], *out)


def _deconv_params(node: Node, shapes: list[Shape]) -> int:
    return node.attrs["in_channels"] * _group_kernel(node, "out_channels") + _bias_params(node)


def _deconv_flops(node: Node, shapes: list[Shape], out: Shape) -> int:
    return 2 * numel(shapes[0]) * _group_kernel(node, "out_channels")


def _build_deconv(node: Node, shapes: list[Shape]) -> nn.Module:
    a = node.attrs
    k, s, p, d = _conv_dims(node)
    return nn.ConvTranspose2d(
        a["in_channels"], a["out_channels"], k, s, p, _pair(a.get("output_padding", 0)), a["groups"], a["bias"], d
    )


register(
    OpKind(
        "conv_transpose2d", _infer_deconv, params=_deconv_params, flops=_deconv_flops, module=_build_deconv,
        weights=("weight", "bias"),
    )
)


def _infer_linear(node: Node, shapes: list[Shape]) -> Shape:
    (x,) = shapes
    a = node.attrs
    if len(x) < 2 or x[-1] != a["in_features"]:
        raise _fail(node, f"expects {a['in_features']} input features but its input has shape {list(x)}")
    return (*x[:-1], a["out_features"])


register(
    OpKind(
        "linear", _infer_linear,
        params=lambda n, s: (n.attrs["in_features"] + bool(n.attrs["bias"])) * n.attrs["out_features"],
        flops=lambda n, s, o: 2 * numel(o) * n.attrs["in_features"],
        module=lambda n, s: nn.Linear(n.attrs["in_features"], n.attrs["out_features"], n.attrs["bias"]),
        weights=("weight", "bias"), fresh_output=True,
    )
)
