"""MNASNet-1.0 (Tan et al. 2019, the B1 search result with depth multiplier 1.0).

Module names follow the common ImageNet layout (``layers.<i>...``, ``classifier.1``).
"""

from __future__ import annotations

from torch import Tensor, nn

from .common import init_weights

__all__ = ["MNASNet", "MNASInvertedResidual", "mnasnet"]

# Batch-norm momentum of the reference training recipe (1 - 0.9997); it only affects training.
_BN_MOMENTUM = 1 - 0.9997

# (output channels, kernel size, first stride, expansion, repeats) for each stack.
_STACKS: tuple[tuple[int, int, int, int, int], ...] = (
    (24, 3, 2, 3, 3),
    (40, 5, 2, 3, 3),
    (80, 5, 2, 6, 3),
    (96, 3, 1, 6, 2),
    (192, 5, 2, 6, 4),
    (320, 3, 1, 6, 1),
)


class MNASInvertedResidual(nn.Module):
    """1x1 expand + ReLU, kxk depthwise + ReLU, linear 1x1 project; residual when shapes allow."""

    def __init__(self, in_ch: int, out_ch: int, kernel_size: int, stride: int, expansion: int) -> None:
        super().__init__()
        mid = in_ch * expansion
        self.apply_residual = in_ch == out_ch and stride == 1
        self.layers = nn.Sequential(
            nn.Conv2d(in_ch, mid, 1, bias=False),
            nn.BatchNorm2d(mid, momentum=_BN_MOMENTUM),
            nn.ReLU(inplace=True),
            nn.Conv2d(mid, mid, kernel_size, stride, kernel_size // 2, groups=mid, bias=False),
            nn.BatchNorm2d(mid, momentum=_BN_MOMENTUM),
            nn.ReLU(inplace=True),
            nn.Conv2d(mid, out_ch, 1, bias=False),
            nn.BatchNorm2d(out_ch, momentum=_BN_MOMENTUM),
        )

    def forward(self, x: Tensor) -> Tensor:
        if self.apply_residual:
            return self.layers(x) + x
        return self.layers(x)


def _stack(
    in_ch: int, out_ch: int, kernel_size: int, stride: int, expansion: int, repeats: int
) -> nn.Sequential:
    blocks = [MNASInvertedResidual(in_ch, out_ch, kernel_size, stride, expansion)]
    blocks += [MNASInvertedResidual(out_ch, out_ch, kernel_size, 1, expansion) for _ in range(1, repeats)]
    return nn.Sequential(*blocks)


class MNASNet(nn.Module):
    """MNASNet-1.0: 32-channel stem, depthwise-separable 16, six inverted-residual stacks, 1x1 to 1280."""

    def __init__(self, num_classes: int = 1000, dropout: float = 0.2) -> None:
        super().__init__()
        layers: list[nn.Module] = [
            nn.Conv2d(3, 32, 3, 2, 1, bias=False),
            nn.BatchNorm2d(32, momentum=_BN_MOMENTUM),
            nn.ReLU(inplace=True),
            nn.Conv2d(32, 32, 3, 1, 1, groups=32, bias=False),
            nn.BatchNorm2d(32, momentum=_BN_MOMENTUM),
            nn.ReLU(inplace=True),
            nn.Conv2d(32, 16, 1, bias=False),
            nn.BatchNorm2d(16, momentum=_BN_MOMENTUM),
        ]
        in_ch = 16
        for out_ch, k, s, e, r in _STACKS:
            layers.append(_stack(in_ch, out_ch, k, s, e, r))
            in_ch = out_ch
        layers += [
            nn.Conv2d(in_ch, 1280, 1, bias=False),
            nn.BatchNorm2d(1280, momentum=_BN_MOMENTUM),
            nn.ReLU(inplace=True),
        ]
        self.layers = nn.Sequential(*layers)
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.flatten = nn.Flatten(1)
        self.classifier = nn.Sequential(nn.Dropout(dropout, inplace=True), nn.Linear(1280, num_classes))
        init_weights(self)

    def forward(self, x: Tensor) -> Tensor:
        return self.classifier(self.flatten(self.avgpool(self.layers(x))))


def mnasnet(num_classes: int = 1000) -> MNASNet:
    """MNASNet with depth multiplier 1.0."""
    return MNASNet(num_classes)
