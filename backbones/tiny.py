"""A small residual CNN for tests and examples (3x32x32 input, about 6k parameters)."""

from __future__ import annotations

from torch import Tensor, nn

from .common import init_weights
from .resnet import BasicBlock

__all__ = ["TinyCNN", "tiny_cnn"]


class TinyCNN(nn.Module):
    """conv3x3(3->8)-bn-relu, conv3x3/2(8->16)-bn-relu, one residual block (16), global pool, linear."""

    def __init__(self, num_classes: int = 10) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 8, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(8)
        self.relu1 = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(8, 16, 3, stride=2, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(16)
        self.relu2 = nn.ReLU(inplace=True)
        self.block = BasicBlock(16, 16)
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.flatten = nn.Flatten(1)
        self.fc = nn.Linear(16, num_classes)
        init_weights(self)

    def forward(self, x: Tensor) -> Tensor:
        x = self.relu1(self.bn1(self.conv1(x)))
        x = self.relu2(self.bn2(self.conv2(x)))
        x = self.block(x)
        return self.fc(self.flatten(self.avgpool(x)))


def tiny_cnn(num_classes: int = 10) -> TinyCNN:
    """The test network: two conv-bn-relu layers, a residual block, pool and a linear classifier."""
    return TinyCNN(num_classes)
