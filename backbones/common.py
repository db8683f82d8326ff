"""Helpers shared by the zoo's torch definitions."""

from __future__ import annotations

from torch import nn


def init_weights(model: nn.Module) -> None:
    """Standard initialisation: He-normal (fan-out) convolutions, unit/zero BN, small-normal linear layers."""
    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.BatchNorm2d):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)
        elif isinstance(m, nn.Linear):
            nn.init.normal_(m.weight, 0.0, 0.01)
            nn.init.zeros_(m.bias)
