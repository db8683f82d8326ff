"""Operator kinds: batch norm, per-channel scale (Caffe ``Scale``) and local response norm."""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

from ..ir import Node, Shape
from .base import OpKind, _channels, _need_rank, numel, register


# --- normalisation -----------------------------------------------------------------------------
def channelwise_shape(ranks: tuple[int, ...]) -> Callable[[Node, list[Shape]], Shape]:
    """The shape rule of a per-channel kind (a norm, a scale): one input of one of ``ranks`` with
    ``num_features`` channels, and an output of the same shape."""

    def infer(node: Node, shapes: list[Shape]) -> Shape:
        (x,) = shapes
        _need_rank(node, x, ranks)
        _channels(node, x, node.attrs["num_features"], "num_features")
        return x

    return infer


_infer_channelwise = channelwise_shape((2, 3, 4))


def _build_bn(node: Node, shapes: list[Shape]) -> nn.Module:
    a = node.attrs
    cls = {2: nn.BatchNorm1d, 3: nn.BatchNorm1d, 4: nn.BatchNorm2d}[len(shapes[0])]
    return cls(a["num_features"], eps=a.get("eps", 1e-5), momentum=a.get("momentum", 0.1), affine=a.get("affine", True))


register(
    OpKind(
        "batch_norm", _infer_channelwise,
        params=lambda n, s: 2 * n.attrs["num_features"] if n.attrs.get("affine", True) else 0,
        flops=lambda n, s, o: 2 * numel(o),
        module=_build_bn,
        weights=("weight", "bias", "running_mean", "running_var"), fresh_output=True,
    )
)


class ChannelAffine(nn.Module):
    """``y = x * weight[c] + bias[c]`` per channel (a Caffe ``Scale`` not folded into a batch norm)."""

    def __init__(self, num_features: int, bias: bool = True) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(num_features))
        self.bias = nn.Parameter(torch.zeros(num_features)) if bias else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        view = (1, -1) + (1,) * (x.dim() - 2)
        y = x * self.weight.view(view)
        return y + self.bias.view(view) if self.bias is not None else y


register(
    OpKind(
        "scale", _infer_channelwise,
        params=lambda n, s: n.attrs["num_features"] * (2 if n.attrs.get("bias", True) else 1),
        flops=lambda n, s, o: 2 * numel(o),
        module=lambda n, s: ChannelAffine(n.attrs["num_features"], n.attrs.get("bias", True)),
        weights=("weight", "bias"),
    )
)

register(
    OpKind(
        "lrn", lambda n, s: s[0],
        flops=lambda n, s, o: numel(o) * (n.attrs["size"] + 3),
        module=lambda n, s: nn.LocalResponseNorm(n.attrs["size"], n.attrs["alpha"], n.attrs["beta"], n.attrs["k"]),
    )
)

