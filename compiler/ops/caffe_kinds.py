"""Operator kinds of prototxt forks and Caffe variants: ShuffleChannel, LRN within a channel."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ..ir import Node, Shape
from .base import OpKind, _fail, _need_rank, numel, register


# --- prototxt forks and Caffe variants: ShuffleChannel, LRN within a channel ---------------------
def channel_shuffle(x: torch.Tensor, groups: int) -> torch.Tensor:
    """ShuffleNet's channel shuffle: channel ``g * (C // groups) + i`` moves to ``i * groups + g``."""
    # shape-free calls only, so torch.fx can re-trace the emitted code (it does when a compiled model is unpickled)
    return x.unflatten(1, (groups, -1)).transpose(1, 2).flatten(1, 2)


def _infer_channel_shuffle(node: Node, shapes: list[Shape]) -> Shape:
    (x,) = shapes
    if not isinstance(x, tuple) or len(x) < 2:
        raise _fail(node, f"expects an input with channels, got shape {x}")
    groups = node.attrs["groups"]
    if groups <= 0 or x[1] % groups:
        raise _fail(node, f"groups {groups} does not divide the {x[1]} channels of shape {list(x)}")
    return x


register(
    OpKind(
        "channel_shuffle", _infer_channel_shuffle, function=channel_shuffle,
        kwargs=lambda n: {"groups": n.attrs["groups"]},
    )
)


def lrn_within_channel(x: torch.Tensor, size: int, alpha: float, beta: float) -> torch.Tensor:
    """Caffe's LRN WITHIN_CHANNEL: ``x * (1 + alpha * mean(x^2))^-beta``, the mean over the
    zero-padded ``size x size`` window of the same channel (always divided by ``size^2``)."""
    mean = F.avg_pool2d(x * x, size, stride=1, padding=(size - 1) // 2, count_include_pad=True)
    return x * (1 + alpha * mean).pow(-beta)


def _infer_lrn_within_channel(node: Node, shapes: list[Shape]) -> Shape:
    (x,) = shapes
    _need_rank(node, x, 4)
    size = node.attrs["size"]
    if size <= 0 or size % 2 == 0:
        raise _fail(node, f"size {size} must be odd and positive")
    return x


register(
    OpKind(
        "lrn_within_channel", _infer_lrn_within_channel,
        flops=lambda n, s, o: numel(o) * (n.attrs["size"] ** 2 + 5), function=lrn_within_channel,
        kwargs=lambda n: {"size": n.attrs["size"], "alpha": n.attrs["alpha"], "beta": n.attrs["beta"]},
    )
)

