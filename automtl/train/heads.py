"""Default task heads: global-pool + linear for labels per image, a small conv head for per-pixel outputs."""

from __future__ import annotations

import math
from typing import Any

from torch import nn


def classification_head(in_channels: int, num_classes: int) -> nn.Sequential:
    """Global average pool, flatten and a linear layer: (N, C, H, W) features -> (N, classes) logits."""
    _check_positive("in_channels", in_channels)
    _check_positive("num_classes", num_classes)
    return nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(1), nn.Linear(in_channels, num_classes))


def dense_head(
    in_channels: int, out_channels: int, scale_factor: float = 1, hidden_channels: int | None = None
) -> nn.Sequential:
    """A small per-pixel head: 3x3 conv, BN, ReLU, 1x1 conv, then bilinear upsampling by ``scale_factor``.

    ``scale_factor`` is the feature map's stride relative to the input (e.g. 8 or 32), so the
    output has the input's resolution. ``hidden_channels`` defaults to ``min(in_channels, 256)``.
    """
    _check_positive("in_channels", in_channels)
    _check_positive("out_channels", out_channels)
    if not (isinstance(scale_factor, int | float) and scale_factor > 0 and math.isfinite(scale_factor)):
        raise ValueError(f"dense_head: scale_factor must be a positive number, got {scale_factor!r}")
    hidden = min(in_channels, 256) if hidden_channels is None else hidden_channels
    _check_positive("hidden_channels", hidden)
    layers: list[nn.Module] = [
        nn.Conv2d(in_channels, hidden, 3, padding=1, bias=False),
        nn.BatchNorm2d(hidden),
        nn.ReLU(inplace=True),
        nn.Conv2d(hidden, out_channels, 1),
    ]
    if scale_factor != 1:
        layers.append(nn.Upsample(scale_factor=scale_factor, mode="bilinear", align_corners=False))
    return nn.Sequential(*layers)


def _check_positive(field: str, value: Any) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise ValueError(f"{field} must be a positive int, got {value!r}")
